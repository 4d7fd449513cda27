"""Malformed KDMQ requests, each with the answer RFC 3261 (and the DMQ channel) asks for.

Every case is a valid request from a member (:func:`tests.fuzz.mutate.request`) with one
fault put in; ``code`` is the status it must get, or None where nothing can be answered
(no Via to answer to, not a request at all). ``header`` names a header the answer must
carry with that value. A case whose answer is an error must change nothing in the node.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable, Optional

from .mutate import request

Address = tuple[str, int]
Build = Callable[[Address, Address], bytes]


def _json(document: object) -> bytes:
    return json.dumps(document).encode()


HT_SET = {"action": 2, "htname": "t", "cname": "k", "type": 2, "strval": "v", "mode": 1}


def htable(body: bytes, content_type: str = "application/json") -> Build:
    return lambda node, member: request("htable", node, member, body, content_type)


def nodes(body: bytes) -> Build:
    return lambda node, member: request("notification_peer", node, member, body)


def edit(build: Build, old: bytes, new: bytes) -> Build:
    """``build`` with the first ``old`` replaced by ``new`` (which must be there)."""

    def built(node: Address, member: Address) -> bytes:
        data = build(node, member)
        assert old in data, (old, data)
        return data.replace(old, new, 1)

    return built


def add_header(build: Build, line: bytes) -> Build:
    return edit(build, b"User-Agent:", line + b"\r\nUser-Agent:")


def own_line(build: Callable[[bytes], Build], tail: bytes = b"") -> Build:
    """A node-list request whose body is the member's own line, then ``tail``."""
    return lambda node, member: build(b"sip:%s:%d;status=active\r\n" % (member[0].encode(), member[1]) + tail)(
        node, member)


@dataclass(frozen=True)
class Case:
    build: Build
    code: Optional[int]
    header: Optional[tuple[str, str]] = None


GOOD = htable(_json(HT_SET))

CASES: dict[str, Case] = {
    # The start line.
    "SIP/3.0": Case(edit(GOOD, b" SIP/2.0\r\n", b" SIP/3.0\r\n"), 505),
    "SIP/1.0": Case(edit(GOOD, b" SIP/2.0\r\n", b" SIP/1.0\r\n"), 505),
    "SIP/2.00": Case(edit(GOOD, b" SIP/2.0\r\n", b" SIP/2.00\r\n"), 505),
    "no SIP version": Case(edit(GOOD, b" SIP/2.0\r\n", b"\r\n"), None),
    "tel: Request-URI": Case(edit(GOOD, b"KDMQ sip:htable@", b"KDMQ tel:+15550100;x="), 416),
    "Request-URI without a channel": Case(edit(GOOD, b"KDMQ sip:htable@", b"KDMQ sip:"), 404),
    "unknown channel": Case(edit(GOOD, b"KDMQ sip:htable@", b"KDMQ sip:nosuchpeer@"), 404),
    "malformed Request-URI": Case(edit(GOOD, b"KDMQ sip:htable@", b"KDMQ sip:htable@@"), 400),
    "method in lower case": Case(edit(GOOD, b"KDMQ sip:", b"kdmq sip:"), 400),
    "another method": Case(edit(edit(GOOD, b"KDMQ sip:", b"OPTIONS sip:"), b"10 KDMQ", b"10 OPTIONS"), 405,
                           ("Allow", "KDMQ")),
    "ACK": Case(edit(edit(GOOD, b"KDMQ sip:", b"ACK sip:"), b"10 KDMQ", b"10 ACK"), None),
    "a response": Case(lambda node, member: GOOD(node, member).replace(
        GOOD(node, member).split(b"\r\n", 1)[0], b"SIP/2.0 200 OK", 1), None),
    # Mandatory headers.
    "no Via": Case(edit(GOOD, b"Via: ", b"X-Via: "), None),
    "Via of no SIP version": Case(edit(GOOD, b"Via: SIP/2.0/UDP", b"Via: SIP/UDP"), None),
    "no From": Case(edit(GOOD, b"From: ", b"X-From: "), 400),
    "no To": Case(edit(GOOD, b"To: ", b"X-To: "), 400),
    "no Call-ID": Case(edit(GOOD, b"Call-ID: ", b"X-Call-ID: "), 400),
    "no CSeq": Case(edit(GOOD, b"CSeq: ", b"X-CSeq: "), 400),
    "two Call-IDs": Case(add_header(GOOD, b"Call-ID: other@x"), 400),
    "two From headers": Case(add_header(GOOD, b"From: <sip:a@127.0.0.1>;tag=2"), 400),
    "malformed From": Case(edit(GOOD, b"From: <sip:", b"From: <bad sip:"), 400),
    "malformed To": Case(edit(GOOD, b"To: <sip:", b"To: <sip:a@b>x<sip:"), 400),
    "To holding a bare CR": Case(edit(GOOD, b"Call-ID:", b"\rX: y\r\nCall-ID:"), 400),
    # CSeq and Max-Forwards.
    "CSeq method differs": Case(edit(GOOD, b"CSeq: 10 KDMQ", b"CSeq: 10 INVITE"), 400),
    "CSeq over 32 bits": Case(edit(GOOD, b"CSeq: 10 KDMQ", b"CSeq: 4294967296 KDMQ"), 400),
    "CSeq without a number": Case(edit(GOOD, b"CSeq: 10 KDMQ", b"CSeq: KDMQ"), 400),
    "negative CSeq": Case(edit(GOOD, b"CSeq: 10 KDMQ", b"CSeq: -1 KDMQ"), 400),
    "Max-Forwards 256": Case(edit(GOOD, b"Max-Forwards: 1", b"Max-Forwards: 256"), 400),
    "Max-Forwards not a number": Case(edit(GOOD, b"Max-Forwards: 1", b"Max-Forwards: one"), 400),
    "Max-Forwards 0": Case(edit(GOOD, b"Max-Forwards: 1", b"Max-Forwards: 0"), 200),
    # Content-Length and sizes.
    "Content-Length past the body": Case(edit(GOOD, b"Content-Length: ", b"Content-Length: 9"), 400),
    "negative Content-Length": Case(edit(GOOD, b"Content-Length: 7", b"Content-Length: -7"), 400),
    "two Content-Lengths": Case(add_header(GOOD, b"Content-Length: 0"), 400),
    "Content-Length not a number": Case(edit(GOOD, b"Content-Length: 7", b"Content-Length: 0x7"), 400),
    "header line over 16 KiB": Case(add_header(GOOD, b"X-Long: " + b"a" * 17000), 413),
    "over 128 header lines": Case(add_header(GOOD, b"X: y\r\n" * 130), 413),
    "no blank line after the headers": Case(lambda node, member: GOOD(node, member).split(b"\r\n\r\n")[0], 400),
    "NUL in a header name": Case(add_header(GOOD, b"X\x00Y: z"), 400),
    "header line without a colon": Case(add_header(GOOD, b"NoColonHere"), 400),
    "continuation line after the start line": Case(edit(GOOD, b"\r\nVia: ", b"\r\n folded\r\nVia: "), 400),
    # Extensions and encodings (RFC 3261 8.2.2.3, 8.2.3).
    "Require of an unknown extension": Case(add_header(GOOD, b"Require: foo"), 420, ("Unsupported", "foo")),
    "Content-Encoding gzip": Case(add_header(GOOD, b"Content-Encoding: gzip"), 415, ("Accept-Encoding", "identity")),
    "Proxy-Require is for proxies": Case(add_header(GOOD, b"Proxy-Require: foo"), 200),
    # Liberal where it costs nothing.
    "folded header": Case(edit(GOOD, b"User-Agent: dmq-fuzz", b"User-Agent: dmq\r\n fuzz"), 200),
    "compact header names": Case(edit(edit(GOOD, b"Call-ID: ", b"i: "), b"Content-Length: ", b"l: "), 200),
    "bare LF line ends": Case(lambda node, member: GOOD(node, member).replace(b"\r\n", b"\n"), 200),
    "CRLFs before the start line": Case(lambda node, member: b"\r\n\r\n" + GOOD(node, member), 200),
    # The htable channel.
    "htable: not JSON": Case(htable(b"{action: 2"), 400),
    "htable: not an object": Case(htable(b"[2]"), 400),
    "htable: a number where a string belongs": Case(htable(_json({**HT_SET, "strval": 5})), 400),
    "htable: a string where a number belongs": Case(htable(_json({**HT_SET, "action": "2"})), 400),
    "htable: unknown action": Case(htable(_json({**HT_SET, "action": 99})), 400),
    "htable: no table name": Case(htable(_json({k: v for k, v in HT_SET.items() if k != "htname"})), 400),
    "htable: huge action number": Case(htable(_json({**HT_SET, "action": 2**64})), 400),
    "htable: not UTF-8": Case(htable(b'{"action": 2, "htname": "t", "cname": "\xff", "type": 2, "strval": "v"}'), 400),
    "htable: empty body": Case(htable(b""), 400),
    # The usrloc and dialog channels.
    "usrloc: a number where a string belongs": Case(
        lambda node, member: request("usrloc", node, member, _json({"action": 1, "aor": 5, "ruid": "r"}),
                                     "application/json"), 400),
    "dialog: a string where a number belongs": Case(
        lambda node, member: request("dialog", node, member, _json({"action": 1, "h_entry": "x", "h_id": 1}),
                                     "application/json"), 400),
    # The node-list channel.
    "node list: a line that is no URI": Case(own_line(nodes, b"not a uri\r\n"), 400),
    "node list: another scheme": Case(own_line(nodes, b"tel:+1555\r\n"), 400),
    "node list: no port": Case(own_line(nodes, b"sip:127.0.0.1;status=active\r\n"), 400),
    "node list: unknown status": Case(own_line(nodes, b"sip:127.0.0.1:5060;status=asleep\r\n"), 400),
    "node list: not UTF-8": Case(own_line(nodes, b"sip:\xff:5060\r\n"), 400),
    "node list: a line over 1 KiB": Case(own_line(nodes, b"sip:127.0.0.1:5060;x=" + b"a" * 1100 + b"\r\n"), 400),
    "node list: blank lines and white space": Case(own_line(nodes, b"\r\n   \r\n\t\r\n"), 200),
    "node list: empty (a query)": Case(nodes(b""), 200),
}
