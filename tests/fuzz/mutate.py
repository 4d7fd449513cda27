"""Valid KDMQ seed requests and the mutations the fuzzer applies to them.

Every input is drawn from one :class:`random.Random`: a seed request (htable set, delete
and sync, node-list join and ping, usrloc and dialog JSON, an empty query), built fresh
with new Call-ID, tags and branch, then damaged by one to three mutations: byte flips,
truncation, a header repeated or removed, a huge value, a wrong Content-Length or CSeq,
a JSON field of the wrong type, bytes put in, the SIP version changed.

:func:`safe` keeps the fuzzer from making the node send anywhere but the test's own two
loopback hosts: an input is sent only when every ``sip:`` URI in it names one of them by
IP (a damaged URI may name any host, and a member's node list adds what it names).
"""

from __future__ import annotations

import json
import random
import re
import secrets
from typing import Callable

JSON_SEEDS: dict[str, list[dict[str, object]]] = {
    "htable": [
        {"action": 2, "htname": "t", "cname": "k", "type": 2, "strval": "hello", "mode": 1},
        {"action": 3, "htname": "t", "cname": "n", "type": 0, "intval": 100, "mode": 0},
        {"action": 4, "htname": "t", "cname": "k"},
        {"action": 1},
        {"action": 2, "htname": "t", "cname": "e", "type": 2, "strval": "v", "mode": 1, "expire": 30},
    ],
    "usrloc": [
        {"action": 1, "aor": "alice", "ruid": "uloc-1", "c": "sip:alice@{member}:5179", "received": "", "path": "",
         "callid": "reg1@{member}", "user_agent": "fuzz", "instance": "", "expires": 1795660204, "cseq": 1,
         "flags": 0, "cflags": 0, "q": -1, "last_modified": 1795659604, "methods": 4294967295, "reg_id": 0,
         "server_id": 0},
        {"action": 2, "aor": "alice", "ruid": "uloc-1"},
        {"action": 3},
    ],
    "dialog": [
        {"action": 1, "h_entry": 1108, "h_id": 3367, "init_ts": 1795659719, "callid": "dlg1@{member}",
         "from_uri": "sip:alice@{member}", "to_uri": "sip:bob@{member}", "req_uri": "sip:bob@{member}:5177",
         "tag1": "atag", "cseq1": "1", "route_set1": "", "contact1": "sip:alice@{member}:5179", "state": 1},
        {"action": 2, "h_entry": 1108, "h_id": 3367, "callid": "dlg1@{member}", "state": 5},
        {"action": 4},
    ],
}

NASTY = [b"\x00", b"\xff", b"\r\n", b"\n", b"\r", b" ", b"\t", b":", b";", b",", b"<", b">", b"\"", b"\\", b"%",
         b"=", b"@", b"[", b"]", b"{", b"}", b"0", b"-1", b"9" * 12, b"\r\n\r\n", b"\r\n ", b"\xc3\x28", b"\xe9"]
WRONG_TYPES: list[object] = [None, True, 0, -1, 2**63, 1.5, "", "x", "1", [], [1], {}, {"a": 1}]
HEADERS = [b"Via", b"From", b"To", b"Call-ID", b"CSeq", b"Max-Forwards", b"Content-Type", b"Content-Length"]


def token() -> str:
    return secrets.token_hex(8)


def request(channel: str, node: tuple[str, int], member: tuple[str, int], body: bytes,
            content_type: str = "text/plain", max_forwards: int = 1) -> bytes:
    """A KDMQ request on ``channel`` from the member's address to the node, fresh tokens."""
    (nhost, nport), (mhost, mport) = node, member
    lines = [
        f"KDMQ sip:{channel}@{nhost}:{nport} SIP/2.0",
        f"Via: SIP/2.0/UDP {mhost}:{mport};branch=z9hG4bK{token()};rport",
        f"From: <sip:{channel}@{mhost}:{mport}>;tag={token()}",
        f"To: <sip:{channel}@{nhost}:{nport}>",
        f"Call-ID: {token()}@{mhost}",
        "CSeq: 10 KDMQ",
        f"Max-Forwards: {max_forwards}",
        "User-Agent: dmq-fuzz",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def seed_request(rng: random.Random, node: tuple[str, int], member: tuple[str, int]) -> bytes:
    """One valid request drawn from the seeds, sent as from the member's node address."""
    mhost, mport = member
    kind = rng.choice(["htable", "htable", "usrloc", "dialog", "join", "ping", "query", "list"])
    if kind in JSON_SEEDS:
        template = rng.choice(JSON_SEEDS[kind])
        body = json.dumps(template).replace("{member}", mhost).encode()
        return request(kind, node, member, body, "application/json")
    if kind == "query":
        return request("notification_peer", node, member, b"")
    own = f"sip:{mhost}:{mport};status=active\r\n".encode()
    if kind == "ping":
        return request("notification_peer", node, member, own)
    if kind == "join":
        return request("notification_peer", node, member, own, max_forwards=2)
    others = b"".join(f"sip:{mhost}:{rng.randrange(1024, 65536)};status={rng.choice(['active', 'disabled'])}"
                      f"\r\n".encode() for _ in range(rng.randrange(1, 6)))
    return request("notification_peer", node, member, own + others)


def _split(data: bytes) -> tuple[list[bytes], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    return head.split(b"\r\n"), body


def _join(lines: list[bytes], body: bytes) -> bytes:
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def flip(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randrange(1, 8)):
        at = rng.randrange(len(out))
        out[at] = rng.randrange(256) if rng.random() < 0.5 else out[at] ^ (1 << rng.randrange(8))
    return bytes(out)


def truncate(rng: random.Random, data: bytes) -> bytes:
    return data[: rng.randrange(len(data))]


def insert(rng: random.Random, data: bytes) -> bytes:
    at = rng.randrange(len(data) + 1)
    return data[:at] + rng.choice(NASTY) * rng.randrange(1, 4) + data[at:]


def delete(rng: random.Random, data: bytes) -> bytes:
    at = rng.randrange(len(data))
    return data[:at] + data[at + rng.randrange(1, 16):]


def duplicate_header(rng: random.Random, data: bytes) -> bytes:
    lines, body = _split(data)
    at = rng.randrange(1, len(lines)) if len(lines) > 1 else 0
    lines.insert(rng.randrange(1, len(lines) + 1), lines[at])
    return _join(lines, body)


def remove_header(rng: random.Random, data: bytes) -> bytes:
    lines, body = _split(data)
    if len(lines) > 1:
        del lines[rng.randrange(1, len(lines))]
    return _join(lines, body)


def huge_value(rng: random.Random, data: bytes) -> bytes:
    lines, body = _split(data)
    size = rng.choice([300, 5000, 20000, 60000])
    if rng.random() < 0.3:
        return _join(lines, body + b"x" * size)
    at = rng.randrange(len(lines))
    name, colon, value = lines[at].partition(b":")
    filler = rng.choice([b"a", b"9", b";x=y", b"%41", b" ", b"<"])
    lines[at] = name + colon + value + filler * (size // len(filler)) if colon else lines[at] + filler * size
    return _join(lines, body)


def _set_header(rng: random.Random, data: bytes, name: bytes, values: list[bytes]) -> bytes:
    lines, body = _split(data)
    value = rng.choice(values)
    for at, line in enumerate(lines):
        if line.lower().startswith(name.lower() + b":"):
            lines[at] = name + b": " + value
            return _join(lines, body)
    lines.append(name + b": " + value)
    return _join(lines, body)


def bad_content_length(rng: random.Random, data: bytes) -> bytes:
    length = len(_split(data)[1])
    return _set_header(rng, data, b"Content-Length", [
        str(length + rng.choice([-5, -1, 1, 100, 70000])).encode(), b"-1", b"x", b"", b"99999999999999999999",
        b"1e3", b" 0 ", b"0x10", str(length).encode() + b", 3"])


def bad_cseq(rng: random.Random, data: bytes) -> bytes:
    return _set_header(rng, data, b"CSeq", [
        b"10", b"KDMQ", b"-1 KDMQ", b"10 INVITE", b"4294967296 KDMQ", b"10 KDMQ extra", b"x KDMQ", b"", b"10  kdmq",
        b"99999999999999999999999 KDMQ", b"1\tKDMQ"])


def bad_header_value(rng: random.Random, data: bytes) -> bytes:
    name = rng.choice(HEADERS)
    return _set_header(rng, data, name, [b"", b"<", b">", b"sip:", b";", b"\x00", b"SIP/2.0/", b"999",
                                         b"-", b"\xff\xfe", b"<sip:x@" + b"1" * 300 + b">"])


def wrong_sip_version(rng: random.Random, data: bytes) -> bytes:
    lines, body = _split(data)
    method, _, rest = lines[0].partition(b" ")
    uri, _, _ = rest.rpartition(b" ")
    lines[0] = method + b" " + uri + b" " + rng.choice([b"SIP/3.0", b"SIP/1.0", b"SIP/2.1", b"HTTP/1.1", b"SIP/",
                                                          b"sip/2.0", b"SIP/2.0 x"])
    return _join(lines, body)


def wrong_json_type(rng: random.Random, data: bytes) -> bytes:
    lines, body = _split(data)
    try:
        document = json.loads(body)
    except ValueError:
        return data
    if not isinstance(document, dict) or not document:
        return data
    key = rng.choice(sorted(document))
    document[key] = rng.choice(WRONG_TYPES)
    if rng.random() < 0.2:
        document = rng.choice([[document], "s", 1, None])
    new_body = json.dumps(document).encode()
    lines = [b"Content-Length: %d" % len(new_body) if line.lower().startswith(b"content-length:") else line
             for line in lines]
    return _join(lines, new_body)


def swap_method(rng: random.Random, data: bytes) -> bytes:
    lines, body = _split(data)
    _, _, rest = lines[0].partition(b" ")
    lines[0] = rng.choice([b"ACK", b"OPTIONS", b"kdmq", b"INVITE", b"BYE", b"K\x00MQ", b""]) + b" " + rest
    return _join(lines, body)


MUTATORS: list[Callable[[random.Random, bytes], bytes]] = [
    flip, flip, truncate, insert, delete, duplicate_header, remove_header, huge_value, bad_content_length,
    bad_cseq, bad_header_value, wrong_sip_version, wrong_json_type, wrong_json_type, swap_method,
]


def mutant(rng: random.Random, node: tuple[str, int], member: tuple[str, int]) -> bytes:
    """A seed request damaged by one to three mutations."""
    data = seed_request(rng, node, member)
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        if data:
            data = rng.choice(MUTATORS)(rng, data)
    return data


_SIP_URI = re.compile(rb"(?i)sips?:(?:[^@\s;>]*@)?([^\s:;>?@]*)")


def safe(data: bytes, hosts: tuple[str, ...]) -> bool:
    """Whether every ``sip:`` URI of ``data`` names one of ``hosts`` by IP (the input may then be sent)."""
    allowed = {host.encode() for host in hosts}
    return all(m.group(1) in allowed for m in _SIP_URI.finditer(data))
