"""Unit tests for the SIP codec (:mod:`dmq.sip.message`, ``parse``, ``build``): parsing, serialising, building.

The Kamailio 5.6.3 captures in ``tests/data/captures/`` (see the README there)
are the reference for what a real peer sends and answers.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from dmq.sip import (
    SIPURI,
    Headers,
    NameAddr,
    Request,
    Response,
    SIPParseError,
    Via,
    build_request,
    make_response,
    parse_message,
)
from dmq.sip.build import new_branch, new_call_id, new_tag, reason_with, response_tag, via_over, via_value
from dmq.sip.headers import parse_vias
from dmq.sip.message import REASONS
from dmq.sip.parse import MAX_HEADERS, MAX_LINE_LENGTH, MAX_MESSAGE_SIZE

CAPTURES = Path(__file__).parent / "data" / "captures"


def _capture(name: str) -> bytes:
    return (CAPTURES / name).read_bytes()


KDMQ = _capture("req-KDMQ-notification_peer.sip")

START = "KDMQ sip:htable@127.0.0.1:5171 SIP/2.0"
BASE = [
    "Via: SIP/2.0/UDP 127.0.0.1:5172;branch=z9hG4bKabc",
    "To: <sip:htable@127.0.0.1:5171>",
    "From: <sip:htable@127.0.0.1:5172>;tag=ftag",
    "CSeq: 10 KDMQ",
    "Call-ID: cid@127.0.0.1",
    "Max-Forwards: 1",
]


def _wire(headers: list[str] = BASE, body: bytes = b"", start: str = START, length: bool = True) -> bytes:
    """A datagram from a start line, header lines and a body (Content-Length added unless told)."""
    lines = [start, *headers]
    if length:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + body


def _without(name: str, headers: list[str] = BASE) -> list[str]:
    return [h for h in headers if h.split(":", 1)[0].lower() != name.lower()]


def _replace(name: str, line: str, headers: list[str] = BASE) -> list[str]:
    return [line if h.split(":", 1)[0].lower() == name.lower() else h for h in headers]


def _rejects(data: bytes, **kwargs: object) -> SIPParseError:
    with pytest.raises(SIPParseError) as e:
        parse_message(data, **kwargs)  # type: ignore[arg-type]
    return e.value


def _header_names(data: bytes) -> list[str]:
    head = data.split(b"\r\n\r\n", 1)[0].decode()
    return [line.split(":", 1)[0] for line in head.split("\r\n")[1:]]


# ---------------------------------------------------------------------------
# Kamailio captures
# ---------------------------------------------------------------------------

# file -> (channel, branch, From tag, body length, Content-Type, Max-Forwards, From port, R-URI port)
REQUESTS = {
    "req-KDMQ-custom1.sip": (
        "custom1", "z9hG4bK4a56.29340b13000000000000000000000000.0",
        "5fb54150b9e2bda49ab1a65fc865843c-ca7e7ad1", 5, "text/plain", 1, 5174, 5175,
    ),
    "req-KDMQ-dialog-action1.sip": (
        "dialog", "z9hG4bKd5e3.d3112621000000000000000000000000.0",
        "619805fc439b80688a7f2adad9bdaa33-2bedae89", 273, "application/json", 1, 5176, 5173,
    ),
    "req-KDMQ-dialog-action2.sip": (
        "dialog", "z9hG4bKc0e3.58b3a0a5000000000000000000000000.0",
        "619805fc439b80688a7f2adad9bdaa33-fa57ae89", 159, "application/json", 1, 5176, 5173,
    ),
    "req-KDMQ-dialog-action4.sip": (
        "dialog", "z9hG4bKcb27.a5b0fe36000000000000000000000000.0",
        "99fa84f0c1cb42ebfbcc7a271222ec4c-44c63698", 12, "application/json", 1, 5171, 5172,
    ),
    "req-KDMQ-htable-action1.sip": (
        "htable", "z9hG4bKab27.67129553000000000000000000000000.0",
        "99fa84f0c1cb42ebfbcc7a271222ec4c-5787be3d", 12, "application/json", 1, 5171, 5172,
    ),
    "req-KDMQ-htable-action2.sip": (
        "htable", "z9hG4bK4cb2.5dede666000000000000000000000000.0",
        "99fa84f0c1cb42ebfbcc7a271222ec4c-099ebe3d", 72, "application/json", 1, 5171, 5172,
    ),
    "req-KDMQ-htable-action3.sip": (
        "htable", "z9hG4bK3cb2.c14ed6c0000000000000000000000000.0",
        "99fa84f0c1cb42ebfbcc7a271222ec4c-1b37be3d", 68, "application/json", 1, 5171, 5172,
    ),
    "req-KDMQ-htable-cells.sip": (
        "htable", "z9hG4bK8c27.d3772b34000000000000000000000000.0",
        "99fa84f0c1cb42ebfbcc7a271222ec4c-2fa9be3d", 12, "application/json", 1, 5171, 5172,
    ),
    "req-KDMQ-notification_peer.sip": (
        "notification_peer", "z9hG4bK6828.d48e1f71000000000000000000000000.0",
        "91ba3fcf73499e2e0f9a65e1863126cd-3f2196d8", 34, "text/plain", 2, 5172, 5171,
    ),
    "req-KDMQ-usrloc-action1.sip": (
        "usrloc", "z9hG4bK9b81.013fea34000000000000000000000000.0",
        "99fa84f0c1cb42ebfbcc7a271222ec4c-89ecb88d", 302, "application/json", 1, 5171, 5172,
    ),
    "req-KDMQ-usrloc-action3.sip": (
        "usrloc", "z9hG4bK9b27.4ae2a0b0000000000000000000000000.0",
        "99fa84f0c1cb42ebfbcc7a271222ec4c-566fb88d", 12, "application/json", 1, 5171, 5172,
    ),
}

# file -> (code, reason, CSeq, branch, From tag, To tag, body length, Content-Type)
RESPONSES = {
    "resp-100-INVITE.sip": (
        100, "trying -- your call is important to us", (1, "INVITE"), "z9hG4bKinv1", "atag", None, 0, None,
    ),
    "resp-200-KDMQ-body.sip": (
        200, "OK", (10, "KDMQ"), "z9hG4bK6828.d48e1f71000000000000000000000000.0",
        "91ba3fcf73499e2e0f9a65e1863126cd-3f2196d8", "1afc6679c74375aea5aa9a92fe5ad760.242732fc", 68, "text/plain",
    ),
    "resp-200-KDMQ.sip": (
        200, "OK", (10, "KDMQ"), "z9hG4bK88fa.ae652335000000000000000000000000.0",
        "91ba3fcf73499e2e0f9a65e1863126cd-26748fbb", "1afc6679c74375aea5aa9a92fe5ad760.96482ba9", 0, None,
    ),
    "resp-200-MESSAGE.sip": (
        200, "OK", (1, "MESSAGE"), "z9hG4bK77", "1", "7c093cefbd294a24a3036664eb0f845f.c0b7a1c9", 0, None,
    ),
    "resp-200-REGISTER.sip": (
        200, "OK", (1, "REGISTER"), "z9hG4bK84167983", "abc", "1afc6679c74375aea5aa9a92fe5ad760.31bda25a", 0, None,
    ),
    "resp-400-KDMQ.sip": (
        400, "Bad Request", (1, "KDMQ"), "z9hG4bK249599548", "2199055",
        "1afc6679c74375aea5aa9a92fe5ad760.a7a28a2b", 0, None,
    ),
    "resp-404-KDMQ.sip": (
        404, "User Not Found", (1, "KDMQ"), "z9hG4bK440286019", "7707690",
        "1afc6679c74375aea5aa9a92fe5ad760.cbc3599d", 0, None,
    ),
    "resp-408-BYE.sip": (
        408, "Request Timeout", (2, "BYE"), "z9hG4bKbye1", "atag", "btag", 0, None,
    ),
}

ALL_CAPTURES = sorted(REQUESTS) + sorted(RESPONSES)


def test_every_capture_is_in_a_table():
    """The tables name exactly the capture files on disk."""
    assert sorted(p.name for p in CAPTURES.glob("*.sip")) == sorted(ALL_CAPTURES)


def test_captures_are_byte_exact():
    """Every capture still has the SHA-256 recorded when it was copied in."""
    sums = dict(reversed(line.split()) for line in (CAPTURES / "SHA256SUMS").read_text().splitlines())
    assert sorted(sums) == sorted(ALL_CAPTURES)
    for name, digest in sums.items():
        assert hashlib.sha256(_capture(name)).hexdigest() == digest, name


@pytest.mark.parametrize("name", ALL_CAPTURES)
def test_capture_round_trips_byte_for_byte(name):
    """Each capture parses (strictly) and to_bytes() gives back exactly the captured bytes."""
    data = _capture(name)
    message = parse_message(data, strict=True)
    assert message.to_bytes() == data
    assert bytes(message) == data


@pytest.mark.parametrize("name", sorted(REQUESTS))
def test_capture_request_fields(name):
    """Each captured KDMQ request has the channel as R-URI user and the expected CSeq, branch, tag and body."""
    channel, branch, from_tag, length, ctype, max_forwards, from_port, to_port = REQUESTS[name]
    r = parse_message(_capture(name), strict=True)
    assert isinstance(r, Request)
    assert r.method == "KDMQ"
    assert isinstance(r.uri, SIPURI)
    assert (r.uri.user, r.uri.host, r.uri.port) == (channel, "127.0.0.1", to_port)
    assert r.to.uri == r.uri and r.to.tag is None
    assert (r.from_.uri.user, r.from_.uri.host, r.from_.uri.port) == (channel, "127.0.0.1", from_port)
    assert r.from_.tag == from_tag
    assert r.cseq == (10, "KDMQ")
    assert r.branch == branch
    assert [(v.transport, v.host, v.port) for v in r.vias] == [("UDP", "127.0.0.1", from_port)]
    assert r.call_id.endswith("@127.0.0.1")
    assert r.max_forwards == max_forwards
    assert r.content_type == ctype
    assert r.content_length == len(r.body) == length
    assert r.headers.get("User-Agent") == "kamailio (5.6.3 (x86_64/linux))"
    if ctype == "application/json":
        assert isinstance(json.loads(r.body), dict)


def test_capture_node_list_body():
    """The node-list request carries its node list as bytes, line by line with CRLF."""
    r = parse_message(KDMQ)
    assert r.body == b"sip:127.0.0.1:5172;status=active\r\n"
    assert SIPURI.parse(r.body.decode().strip()).params == {"status": "active"}


@pytest.mark.parametrize("name", sorted(RESPONSES))
def test_capture_response_fields(name):
    """Each captured Kamailio reply has the expected status, CSeq, branch, tags and body."""
    code, reason, cseq, branch, from_tag, to_tag, length, ctype = RESPONSES[name]
    r = parse_message(_capture(name), strict=True)
    assert isinstance(r, Response)
    assert (r.code, r.reason) == (code, reason)
    assert r.cseq == cseq
    assert r.vias[0].branch == branch
    assert (r.from_.tag, r.to.tag) == (from_tag, to_tag)
    assert r.content_length == len(r.body) == length
    assert r.content_type == ctype
    assert r.max_forwards is None
    assert r.headers.get("Server") == "kamailio (5.6.3 (x86_64/linux))"


# ---------------------------------------------------------------------------
# Header names: compact forms, case, folding
# ---------------------------------------------------------------------------

COMPACT = {
    "i": "Call-ID",
    "m": "Contact",
    "e": "Content-Encoding",
    "l": "Content-Length",
    "c": "Content-Type",
    "f": "From",
    "s": "Subject",
    "k": "Supported",
    "t": "To",
    "v": "Via",
}


@pytest.mark.parametrize("short, long", sorted(COMPACT.items()))
def test_compact_form_maps_to_long_name(short, long):
    """A header written in compact form is found under its long name, in either case, and vice versa."""
    h = Headers([(short, "x")])
    assert h.get(long) == "x"
    assert h.get(long.upper()) == "x"
    assert h.get(short.upper()) == "x"
    assert long.lower() in h
    assert h.keys() == [long.lower()]


def test_compact_message_parses():
    """A message written entirely in compact forms parses, with every typed accessor working."""
    body = b"hello"
    data = (
        "KDMQ sip:custom1@127.0.0.1:5171 SIP/2.0\r\n"
        "v: SIP/2.0/UDP 127.0.0.1:5172;branch=z9hG4bKc\r\n"
        "t: <sip:custom1@127.0.0.1:5171>\r\n"
        "f: <sip:custom1@127.0.0.1:5172>;tag=ft\r\n"
        "i: compact@127.0.0.1\r\n"
        "CSeq: 3 KDMQ\r\n"
        "m: <sip:127.0.0.1:5172>\r\n"
        "e: identity\r\n"
        "s: a subject\r\n"
        "k: path\r\n"
        "c: text/plain\r\n"
        "l: 5\r\n\r\n"
    ).encode() + body
    r = parse_message(data, strict=True)
    assert r.branch == "z9hG4bKc"
    assert (r.to.uri.user, r.from_.tag, r.call_id, r.cseq) == ("custom1", "ft", "compact@127.0.0.1", (3, "KDMQ"))
    assert (r.content_type, r.content_length, r.body) == ("text/plain", 5, body)
    for short, long in COMPACT.items():
        assert r.headers.get(long) is not None, long
        assert r.headers.get(long) == r.headers.get(short)
    assert r.to_bytes() == data  # names are kept as written


def test_compact_and_long_forms_are_one_header():
    """'v' and 'Via' lines form one list; 'i' after 'Call-ID' is a duplicate Call-ID."""
    data = _wire(BASE + ["v: SIP/2.0/TCP 10.0.0.1;branch=z9hG4bK2"])
    r = parse_message(data)
    assert r.headers.getall("VIA") == [BASE[0][5:], "SIP/2.0/TCP 10.0.0.1;branch=z9hG4bK2"]
    assert [v.host for v in r.vias] == ["127.0.0.1", "10.0.0.1"]
    _rejects(_wire(BASE + ["i: other@host"]))


def test_header_names_are_case_insensitive():
    """Header names in any case are recognised, and lookups accept any case."""
    headers = ["vIA: SIP/2.0/UDP 127.0.0.1:5172;branch=z9hG4bKx", "TO: <sip:a@b.c>", "from: <sip:a@b.c>;tag=1",
               "cseq: 10 KDMQ", "CALL-id: q@w", "max-FORWARDS: 7"]
    r = parse_message(_wire(headers, b"abc", length=False) .replace(b"\r\n\r\n", b"\r\nCONTENT-length: 3\r\n\r\n"))
    assert (r.call_id, r.cseq, r.max_forwards, r.content_length) == ("q@w", (10, "KDMQ"), 7, 3)
    assert r.headers.get("call-ID") == "q@w"
    assert r.headers.get("Content-Length") == "3"
    assert "Max-Forwards" in r.headers and "MAX-FORWARDS" in r.headers


def test_duplicate_detected_across_spellings():
    """'CSeq' and 'CSEQ' are the same header, so both together are a duplicate."""
    _rejects(_wire(BASE + ["CSEQ: 10 KDMQ"]))


def test_space_before_colon():
    """'Name : value' is the header 'Name' (RFC 3261 allows whitespace before the colon)."""
    r = parse_message(_wire(_replace("Call-ID", "Call-ID   \t: spaced@host")))
    assert r.call_id == "spaced@host"


@pytest.mark.parametrize("name", ["Bad Name", "Bad@Name", "", "K\u00e9y", "\u212a"])
def test_malformed_header_names_are_rejected(name):
    """A header name that is not a token (spaces, '@', empty, non-ASCII) is an error."""
    _rejects(_wire(BASE + [f"{name}: value"]))


def test_line_without_colon_is_rejected():
    """A header line with no colon is an error."""
    _rejects(_wire(BASE + ["NoColonHere"]))


def test_folded_lines_are_unfolded():
    """Continuation lines (leading SP/HT) join the previous line, each line break becoming a space."""
    headers = BASE + ["X-Empty:\r\n value", "X-Blank: a\r\n \r\n\t b"]
    r = parse_message(_wire(_replace("CSeq", "CSeq: 10\r\n KDMQ", headers)), strict=True)
    assert r.headers.get("X-Empty") == "value"
    assert " ".join(r.headers.get("X-Blank").split()) == "a b"  # a blank-only continuation line too
    assert r.cseq == (10, "KDMQ")
    out = r.to_bytes()
    assert b"\r\n " not in out and b"\r\n\t" not in out
    assert parse_message(out) == r
    folded = parse_message(_wire(BASE + ["Subject: first\r\n second \r\n\tthird"]))
    assert " ".join(folded.headers.get("Subject").split()) == "first second third"
    assert "\n" not in folded.headers.get("Subject")


def test_folded_via_and_from():
    """Folding inside structured headers (Via, From) is transparent to their parsers."""
    headers = _replace("Via", "Via: SIP/2.0/UDP\r\n 127.0.0.1:5172\r\n\t;branch=z9hG4bKf")
    headers = _replace("From", "From: <sip:htable@127.0.0.1:5172>\r\n ;tag=ftag", headers)
    r = parse_message(_wire(headers), strict=True)
    assert (r.vias[0].host, r.vias[0].port, r.branch) == ("127.0.0.1", 5172, "z9hG4bKf")
    assert r.from_.tag == "ftag"


def test_continuation_of_the_start_line_is_rejected():
    """A continuation line right after the start line is an error: only header fields fold."""
    _rejects(_wire([" folded"] + BASE))


def test_folding_and_bare_lf_together():
    """A folded header in a bare-LF message is unfolded like a CRLF one."""
    data = _wire(BASE + ["Subject: a\r\n b"]).replace(b"\r\n", b"\n")
    assert " ".join(parse_message(data).headers.get("Subject").split()) == "a b"


def test_bare_lf_line_ends_are_accepted():
    """A message with bare LF line ends parses like its CRLF form."""
    data = _wire(BASE, b"body")
    r = parse_message(data.replace(b"\r\n", b"\n"))
    assert r == parse_message(data)
    assert r.body == b"body"


def test_lf_head_before_crlf_in_body():
    """With bare-LF headers, a CRLF CRLF inside the body does not end the header section early."""
    head = _wire(BASE, b"", length=False).replace(b"\r\n", b"\n")
    data = head[:-1] + b"Content-Length: 8\n\n" + b"a\r\n\r\nb\r\n"
    r = parse_message(data, strict=True)
    assert r.body == b"a\r\n\r\nb\r\n"
    assert r.cseq == (10, "KDMQ")


def test_leading_crlf_keepalives_are_skipped():
    """CRLFs before the start line (keep-alives) are ignored."""
    assert parse_message(b"\r\n\r\n" + KDMQ) == parse_message(KDMQ)


# ---------------------------------------------------------------------------
# Body and Content-Length
# ---------------------------------------------------------------------------

UTF8_BODY = "h\u00e9llo w\u00f6rld \u2713".encode("utf-8")


def test_content_length_counts_bytes():
    """A UTF-8 body's Content-Length is its byte count, not its character count."""
    assert len(UTF8_BODY) == 17 and len(UTF8_BODY.decode()) == 13
    r = parse_message(_wire(BASE, UTF8_BODY))
    assert (r.content_length, r.body) == (17, UTF8_BODY)
    built = build_request("KDMQ", SIPURI.parse("sip:a@127.0.0.1"), from_uri=SIPURI.parse("sip:a@127.0.0.2"),
                          via_transport="udp", via_sent_by="127.0.0.2", body=UTF8_BODY)
    assert built.headers.get("Content-Length") == "17"
    assert parse_message(built.to_bytes()).body == UTF8_BODY


def test_body_is_bytes_even_when_not_utf8():
    """A body that is not UTF-8 is kept byte-exact."""
    body = bytes(range(256))
    r = parse_message(_wire(BASE, body))
    assert r.body == body
    assert r.to_bytes().endswith(body)


def test_bytes_after_content_length_are_ignored():
    """In a datagram, bytes after Content-Length octets are not part of the message."""
    r = parse_message(_wire(BASE, b"hello") + b"trailing junk")
    assert r.body == b"hello"
    assert not r.to_bytes().endswith(b"junk")


def test_body_shorter_than_content_length_is_an_error():
    """A datagram whose body is shorter than Content-Length is rejected."""
    e = _rejects(_wire(BASE, b"hello")[:-1])
    assert "Content-Length" in str(e)


def test_missing_content_length_means_rest_of_datagram():
    """Without Content-Length the body is everything after the blank line."""
    r = parse_message(_wire(BASE, b"all of\r\nthis\r\n", length=False))
    assert r.body == b"all of\r\nthis\r\n"
    assert r.content_length == 14
    assert r.headers.get("Content-Length") is None


def test_zero_content_length_with_trailing_bytes():
    """Content-Length 0 gives an empty body whatever follows."""
    assert parse_message(_wire(BASE, b"") + b"INVITE sip:x SIP/2.0\r\n").body == b""


@pytest.mark.parametrize("value", ["abc", "-1", "+5", "5 5", "0x10", "\u0665", ""])
def test_malformed_content_length(value):
    """A Content-Length that is not a plain decimal number is rejected."""
    _rejects(_wire(BASE + [f"Content-Length: {value}"], length=False))


def test_no_blank_line_is_an_error():
    """A datagram without the blank line that ends the headers is rejected."""
    _rejects(_wire(BASE)[:-2])
    _rejects(b"KDMQ sip:a@b SIP/2.0")


# ---------------------------------------------------------------------------
# Start line
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        "KDMQ  sip:htable@127.0.0.1:5171 SIP/2.0",  # double space
        "KDMQ sip:htable@127.0.0.1:5171  SIP/2.0",
        " KDMQ sip:htable@127.0.0.1:5171 SIP/2.0",
        "KDMQ sip:htable@127.0.0.1:5171 SIP/2.0 ",
        "KDMQ\tsip:htable@127.0.0.1:5171\tSIP/2.0",
        "KDMQ sip:htable@127.0.0.1:5171",  # no version
        "KDMQ",
        "sip:htable@127.0.0.1:5171 SIP/2.0",
        "KDMQ sip:htable@127.0.0.1:5171 SIP/2.0 extra",
        "KD@MQ sip:htable@127.0.0.1:5171 SIP/2.0",  # not a token
        "KD:MQ sip:htable@127.0.0.1:5171 SIP/2.0",
        "KD\u00c4MQ sip:htable@127.0.0.1:5171 SIP/2.0",  # non-ASCII
        "KDMQ <sip:htable@127.0.0.1:5171> SIP/2.0",  # name-addr form
        "KDMQ sip:htable@127.0.0.1:5171?subject=x SIP/2.0",  # headers in a Request-URI
        "KDMQ sip:htable@127.0.0.1:99999 SIP/2.0",
        "KDMQ not-a-uri SIP/2.0",
        "KDMQ sip:htable@127.0.0.1:5171 HTTP/1.1",
        "KDMQ sip:htable@127.0.0.1:5171 SIP/2.0x",
        "KDMQ sip:htable@127.0.0.1:5171 SIP/2",
        "KDMQ sip:htable@127.0.0.1:5171 \u017fIP/2.0",  # long s, upper() is 'S'
        "KDMQ sip:htable@127.0.0.1:5171 S\u0131P/2.0",  # dotless i, upper() is 'I'
        "garbage",
        "",
        "\x00\xff",
    ],
)
def test_request_line_faults(line):
    """Each malformed request line raises SIPParseError with code 400."""
    e = _rejects(_wire(BASE, start=line))
    assert e.code == 400


@pytest.mark.parametrize("version", ["SIP/3.0", "SIP/1.0", "SIP/2.1", "sip/20.0"])
def test_unsupported_version_is_505(version):
    """A well-formed but unsupported SIP version is rejected with code 505, in requests and responses."""
    assert _rejects(_wire(BASE, start=f"KDMQ sip:htable@127.0.0.1:5171 {version}")).code == 505
    assert _rejects(_wire(BASE, start=f"{version} 200 OK")).code == 505


def test_version_is_case_insensitive():
    """'sip/2.0' is SIP/2.0 (RFC 3261 7.1); the message is written back as received."""
    data = _wire(BASE, start="KDMQ sip:htable@127.0.0.1:5171 sip/2.0")
    assert parse_message(data).method == "KDMQ"
    assert parse_message(_wire(BASE, start="sip/2.0 200 OK")).code == 200


def test_method_is_case_sensitive():
    """A lowercase method is a different (extension) method: its CSeq must say the same."""
    e = _rejects(_wire(BASE, start="kdmq sip:htable@127.0.0.1:5171 SIP/2.0"))
    assert "CSeq" in str(e)
    r = parse_message(_wire(_replace("CSeq", "CSeq: 10 kdmq"), start="kdmq sip:htable@127.0.0.1:5171 SIP/2.0"))
    assert (r.method, r.cseq) == ("kdmq", (10, "kdmq"))


def test_unusual_token_method_and_other_uri_schemes():
    """A method may use every token character; a Request-URI may be any absolute URI."""
    method = "X-.!%*_+`'~9"
    r = parse_message(_wire(_replace("CSeq", f"CSeq: 1 {method}"), start=f"{method} tel:+15551234 SIP/2.0"))
    assert (r.method, r.uri) == (method, "tel:+15551234")
    assert r.to_bytes().startswith(f"{method} tel:+15551234 SIP/2.0\r\n".encode())


def test_request_uri_with_escapes_and_ipv6():
    """A Request-URI with %-escapes or an IPv6 reference parses and is written back unchanged."""
    data = _wire(BASE, start="KDMQ sip:ht%61ble@[2001:db8::1]:5060;transport=tcp SIP/2.0")
    r = parse_message(data)
    assert (r.uri.user, r.uri.host, r.uri.port, r.uri.transport) == ("ht%61ble", "[2001:db8::1]", 5060, "tcp")
    assert r.to_bytes() == data


@pytest.mark.parametrize(
    "line, code, reason",
    [
        ("SIP/2.0 200 OK", 200, "OK"),
        ("SIP/2.0 404 Not Found Peer ID", 404, "Not Found Peer ID"),
        ("SIP/2.0 100 ", 100, ""),
        ("SIP/2.0 100", 100, ""),
        ("SIP/2.0 699 x", 699, "x"),
    ],
)
def test_status_lines(line, code, reason):
    """A status line gives code and reason phrase (which may be empty or contain spaces)."""
    r = parse_message(_wire(BASE, start=line))
    assert (r.code, r.reason) == (code, reason)


@pytest.mark.parametrize(
    "line",
    ["SIP/2.0 20 OK", "SIP/2.0 2000 OK", "SIP/2.0 099 Low", "SIP/2.0 700 High", "SIP/2.0 abc OK",
     "SIP/2.0 \u0662\u0660\u0660 OK", "SIP/2.0", "SIP/2.0  200 OK", "SIP/2.0x 200 OK"],
)
def test_status_line_faults(line):
    """A status code that is not three ASCII digits in 100-699 is rejected."""
    assert _rejects(_wire(BASE, start=line)).code == 400


# ---------------------------------------------------------------------------
# CSeq, Max-Forwards, Call-ID
# ---------------------------------------------------------------------------


def test_cseq_32_bit_limit():
    """CSeq 2**32-1 is the largest sequence number; 2**32 and 11-digit numbers are rejected."""
    assert parse_message(_wire(_replace("CSeq", "CSeq: 4294967295 KDMQ"))).cseq == (4294967295, "KDMQ")
    assert parse_message(_wire(_replace("CSeq", "CSeq: 0 KDMQ"))).cseq == (0, "KDMQ")
    assert "32 bits" in str(_rejects(_wire(_replace("CSeq", "CSeq: 4294967296 KDMQ"))))
    _rejects(_wire(_replace("CSeq", "CSeq: 99999999999 KDMQ")))


@pytest.mark.parametrize("value", ["10", "KDMQ", "10 KDMQ extra", "-1 KDMQ", "1.5 KDMQ", "10 KD@MQ", "ten KDMQ", ""])
def test_malformed_cseq(value):
    """A CSeq that is not 'number method' is rejected."""
    _rejects(_wire(_replace("CSeq", f"CSeq: {value}")))


def test_cseq_method_must_match_request_method():
    """A request whose CSeq method differs from its method is rejected; a response may carry any."""
    e = _rejects(_wire(_replace("CSeq", "CSeq: 10 INVITE")))
    assert "INVITE" in str(e) and "KDMQ" in str(e)
    r = parse_message(_wire(_replace("CSeq", "CSeq: 10 INVITE"), start="SIP/2.0 200 OK"))
    assert r.cseq == (10, "INVITE")


def test_cseq_whitespace_and_leading_zeros():
    """CSeq allows several spaces or tabs between number and method, and leading zeros."""
    assert parse_message(_wire(_replace("CSeq", "CSeq: 0010 \t KDMQ"))).cseq == (10, "KDMQ")


@pytest.mark.parametrize("value, expected", [("0", 0), ("1", 1), ("70", 70), ("255", 255), ("0255", 255)])
def test_max_forwards_range(value, expected):
    """Max-Forwards 0 to 255 are accepted and read as an int."""
    assert parse_message(_wire(_replace("Max-Forwards", f"Max-Forwards: {value}"))).max_forwards == expected


@pytest.mark.parametrize("value", ["256", "-1", "+1", "1a", "", "1 2", "\u0661", "99999999999999999999"])
def test_max_forwards_out_of_range_or_malformed(value):
    """Max-Forwards outside 0-255 or not a plain number is rejected."""
    assert "Max-Forwards" in str(_rejects(_wire(_replace("Max-Forwards", f"Max-Forwards: {value}"))))


def test_max_forwards_may_be_absent():
    """Max-Forwards is optional: absent means None."""
    assert parse_message(_wire(_without("Max-Forwards"))).max_forwards is None


@pytest.mark.parametrize("value", ["", "a b", "a@b@c", "@host", "id@", "caf\u00e9"])
def test_malformed_call_id(value):
    """A Call-ID that is not word[@word] is rejected."""
    _rejects(_wire(_replace("Call-ID", f"Call-ID: {value}")))


# ---------------------------------------------------------------------------
# Duplicates and mandatory headers
# ---------------------------------------------------------------------------

SINGLE = {
    "Call-ID": "Call-ID: other@host",
    "CSeq": "CSeq: 10 KDMQ",
    "From": "From: <sip:x@127.0.0.1>;tag=2",
    "To": "To: <sip:x@127.0.0.1>",
    "Max-Forwards": "Max-Forwards: 1",
    "Content-Type": "Content-Type: text/plain",
}


@pytest.mark.parametrize("name", sorted(SINGLE))
def test_single_value_header_duplicated(name):
    """Each single-value header appearing twice is rejected, naming the header."""
    headers = BASE + ["Content-Type: text/plain"] if name == "Content-Type" else BASE
    e = _rejects(_wire(headers + [SINGLE[name]]))
    assert name in str(e)


def test_content_length_duplicated():
    """Two Content-Length headers are rejected, even when they agree."""
    _rejects(_wire(BASE + ["Content-Length: 0"]))
    _rejects(_wire(BASE + ["l: 0"]))


def test_multi_value_headers_may_repeat():
    """Via, Contact, Route and unknown headers may appear more than once."""
    extra = ["Via: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK2", "Route: <sip:a@b>", "Route: <sip:c@d>", "X-A: 1", "X-A: 2"]
    r = parse_message(_wire(BASE + extra))
    assert len(r.vias) == 2
    assert r.headers.getall("Route") == ["<sip:a@b>", "<sip:c@d>"]
    assert r.headers.getall("x-a") == ["1", "2"]


@pytest.mark.parametrize("name", ["Via", "From", "To", "Call-ID", "CSeq"])
def test_missing_mandatory_header(name):
    """A request or response without Via, From, To, Call-ID or CSeq is rejected, naming it."""
    e = _rejects(_wire(_without(name)))
    assert name in str(e)
    e = _rejects(_wire(_without(name), start="SIP/2.0 200 OK"))
    assert name in str(e)


# ---------------------------------------------------------------------------
# Caps
# ---------------------------------------------------------------------------


def test_default_caps():
    """The default caps are 1 MiB, 128 header lines and 16 KiB a line."""
    assert (MAX_MESSAGE_SIZE, MAX_HEADERS, MAX_LINE_LENGTH) == (1 << 20, 128, 16384)


def test_max_size():
    """A message longer than max_size is rejected with code 413; one of exactly max_size is not."""
    parse_message(KDMQ, max_size=len(KDMQ))
    assert _rejects(KDMQ, max_size=len(KDMQ) - 1).code == 413
    big = _wire(BASE, b"x" * MAX_MESSAGE_SIZE)
    assert _rejects(big).code == 413


def test_max_headers():
    """More than max_headers header lines are rejected; exactly max_headers are accepted."""
    count = len(_header_names(KDMQ))
    assert count == 9
    parse_message(KDMQ, max_headers=count)
    assert _rejects(KDMQ, max_headers=count - 1).code == 413
    many = _wire(BASE + [f"X-H{i}: {i}" for i in range(MAX_HEADERS)])
    _rejects(many)


def test_max_line():
    """A line longer than max_line characters is rejected, the start line included; folding counts unfolded."""
    longest = max(len(line) for line in KDMQ.split(b"\r\n\r\n")[0].split(b"\r\n"))
    parse_message(KDMQ, max_line=longest)
    assert _rejects(KDMQ, max_line=longest - 1).code == 413
    long_start = _wire(BASE, start="KDMQ sip:" + "a" * 100 + "@127.0.0.1 SIP/2.0")
    assert _rejects(long_start, max_line=100).code == 413
    folded = _wire(BASE + ["Subject: " + "\r\n ".join(["word"] * 30)])
    assert parse_message(folded, max_line=160)
    _rejects(folded, max_line=100)


# ---------------------------------------------------------------------------
# make_response
# ---------------------------------------------------------------------------


def _names(message: Request | Response) -> list[str]:
    return [name for name, _ in message.headers]


def test_make_response_copies_the_request_headers():
    """The response copies every Via in order, From, To (plus a tag), Call-ID and CSeq."""
    extra = ["Via: SIP/2.0/TCP 10.0.0.1:5060;branch=z9hG4bK2, SIP/2.0/UDP 10.0.0.2;branch=z9hG4bK3"]
    request = parse_message(_wire(BASE + extra, b"body"))
    response = make_response(request, 200)
    assert (response.code, response.reason) == (200, "OK")
    assert _names(response) == ["Via", "Via", "From", "To", "Call-ID", "CSeq", "Server", "Content-Length"]
    assert response.headers.getall("Via") == request.headers.getall("Via")
    assert [v.branch for v in response.vias] == ["z9hG4bKabc", "z9hG4bK2", "z9hG4bK3"]
    assert response.headers.get("From") == request.headers.get("From")
    assert response.headers.get("To").startswith(request.headers.get("To") + ";tag=")
    assert response.headers.get("Call-ID") == request.headers.get("Call-ID")
    assert response.headers.get("CSeq") == "10 KDMQ"
    assert (response.body, response.headers.get("Content-Length")) == (b"", "0")
    assert response.headers.get("Content-Type") is None


def test_make_response_parses_back():
    """The response serialises to a message that parses strictly to an equal Response."""
    request = parse_message(KDMQ)
    response = make_response(request, 200, body=b"sip:127.0.0.1:5171;status=active\r\n", content_type="text/plain")
    again = parse_message(response.to_bytes(), strict=True)
    assert again == response
    assert (again.code, again.cseq, again.call_id, again.to.tag) == (200, (10, "KDMQ"), request.call_id, response.to.tag)
    assert again.from_.tag == request.from_.tag
    assert again.content_type == "text/plain"
    assert again.content_length == 34


def test_to_tag_added_once():
    """A To-tag is added when the request's To has none, and then only one tag parameter is present."""
    response = make_response(parse_message(KDMQ), 404)
    assert response.to.tag
    assert response.headers.get("To").count(";tag=") == 1
    assert response.to.uri == parse_message(KDMQ).to.uri


def test_existing_to_tag_is_kept():
    """A request whose To already has a tag (in any case or spacing) gets it back unchanged."""
    for to in ["To: <sip:a@b.c>;tag=mine", "To: <sip:a@b.c> ; TAG = mine", "To: sip:a@b.c;tag=mine"]:
        request = parse_message(_wire(_replace("To", to)))
        response = make_response(request, 200)
        assert response.headers.get("To") == to.split(": ", 1)[1]


def test_uri_parameter_named_tag_is_not_a_to_tag():
    """';tag=' inside the <> is a URI parameter, so a To-tag is still added."""
    request = parse_message(_wire(_replace("To", "To: <sip:a@b.c;tag=uri>")))
    response = make_response(request, 200)
    assert response.to.tag is not None and response.to.tag != "uri"


def test_no_to_tag_on_100():
    """A 100 Trying gets no To-tag."""
    request = parse_message(KDMQ)
    response = make_response(request, 100)
    assert response.headers.get("To") == request.headers.get("To")
    assert response.to.tag is None
    assert response.reason == "Trying"


def test_same_tag_for_a_retransmission():
    """Two parses of the same request (a retransmission) get the same To-tag; another request gets another."""
    first = make_response(parse_message(KDMQ), 200)
    again = make_response(parse_message(KDMQ), 200)
    assert first.to.tag == again.to.tag == response_tag(parse_message(KDMQ))
    assert first.to_bytes() == again.to_bytes()
    other = parse_message(KDMQ.replace(b"z9hG4bK6828", b"z9hG4bK6829"))
    assert make_response(other, 200).to.tag != first.to.tag
    final = make_response(parse_message(KDMQ), 500)
    assert final.to.tag == first.to.tag


def test_explicit_to_tag():
    """to_tag= overrides the derived tag."""
    assert make_response(parse_message(KDMQ), 200, to_tag="abc").to.tag == "abc"


def test_content_type_only_with_a_body():
    """Content-Type is written only when there is a body to describe."""
    request = parse_message(KDMQ)
    assert make_response(request, 200, content_type="text/plain").headers.get("Content-Type") is None
    assert make_response(request, 200, body=b"x").headers.get("Content-Type") is None
    with_body = make_response(request, 200, body=b"x", content_type="text/plain")
    assert with_body.headers.get("Content-Type") == "text/plain"


def test_response_content_length_counts_bytes():
    """The response's Content-Length is the byte length of its body."""
    response = make_response(parse_message(KDMQ), 200, body=UTF8_BODY, content_type="text/plain; charset=utf-8")
    assert response.headers.get("Content-Length") == "17"
    assert parse_message(response.to_bytes(), strict=True).body == UTF8_BODY


def test_reason_extra_headers_and_server():
    """reason= overrides the default phrase, headers= are added, server=None omits Server."""
    request = parse_message(KDMQ)
    response = make_response(request, 404, "User Not Found", headers=[("X-A", "1"), ("Supported", "path")],
                             server=None)
    assert response.reason == "User Not Found"
    assert response.headers.get("x-a") == "1" and response.headers.get("k") == "path"
    assert "Server" not in response.headers
    assert make_response(request, 599).reason == ""
    assert make_response(request, 408).reason == REASONS[408] == "Request Timeout"
    assert make_response(request, 200).headers.get("Server") == "dmq"


def test_response_start_line():
    """A response is written as 'SIP/2.0 code reason'."""
    data = make_response(parse_message(KDMQ), 202, "Accepted DMQ").to_bytes()
    assert data.startswith(b"SIP/2.0 202 Accepted DMQ\r\nVia: SIP/2.0/UDP 127.0.0.1:5172;branch=")
    assert data.endswith(b"Content-Length: 0\r\n\r\n")


def test_make_response_needs_the_mandatory_headers():
    """make_response on a request built without Via/From/To/Call-ID/CSeq raises SIPParseError."""
    with pytest.raises(SIPParseError):
        make_response(Request("KDMQ", SIPURI.parse("sip:a@b.c")), 200)


def test_response_accessors_match_request():
    """The response's typed accessors agree with the request's."""
    request = parse_message(KDMQ)
    response = make_response(request, 200)
    assert (response.call_id, response.cseq) == (request.call_id, request.cseq)
    assert response.vias == request.vias
    assert response.from_ == request.from_
    assert response.max_forwards is None


# ---------------------------------------------------------------------------
# build_request
# ---------------------------------------------------------------------------


def _kamailio_like() -> Request:
    """The node-list request of the capture, rebuilt with its ids."""
    return build_request(
        "KDMQ",
        SIPURI.parse("sip:notification_peer@127.0.0.1:5171"),
        from_uri=SIPURI.parse("sip:notification_peer@127.0.0.1:5172"),
        via_transport="udp",
        via_sent_by="127.0.0.1:5172",
        body=b"sip:127.0.0.1:5172;status=active\r\n",
        content_type="text/plain",
        max_forwards=2,
        call_id="2e407f504be308b4-8372@127.0.0.1",
        branch="z9hG4bK6828.d48e1f71000000000000000000000000.0",
        from_tag="91ba3fcf73499e2e0f9a65e1863126cd-3f2196d8",
        user_agent="kamailio (5.6.3 (x86_64/linux))",
    )


def test_build_request_has_kamailio_layout():
    """build_request writes the header order of Kamailio's KDMQ requests."""
    names = _names(_kamailio_like())
    assert names == _header_names(KDMQ)
    assert names == ["Via", "To", "From", "CSeq", "Call-ID", "Content-Length", "User-Agent", "Max-Forwards",
                     "Content-Type"]


def test_build_request_reproduces_the_capture():
    """Given the capture's ids, build_request produces the captured bytes exactly."""
    assert _kamailio_like().to_bytes() == KDMQ


def test_build_request_parses_back():
    """A built request parses strictly to an equal request with the same fields."""
    uri = SIPURI.parse("sip:htable@10.0.0.2:5060;transport=tcp")
    built = build_request("KDMQ", uri, from_uri=SIPURI.parse("sip:htable@10.0.0.1:5060;transport=tcp"),
                          via_transport="tcp", via_sent_by="10.0.0.1:5060", body=b'{"action":1}',
                          content_type="application/json", max_forwards=1, cseq=42,
                          headers=[("X-Extra", "yes")])
    r = parse_message(built.to_bytes(), strict=True)
    assert r == built
    assert (r.method, r.uri, r.to.uri) == ("KDMQ", uri, uri)
    assert r.vias[0].transport == "TCP" and r.vias[0].sent_by == "10.0.0.1:5060"
    assert r.branch.startswith("z9hG4bK") and r.branch == built.branch
    assert r.from_.tag == built.from_.tag and r.to.tag is None
    assert r.call_id.endswith("@10.0.0.1") and r.call_id == built.call_id
    assert (r.cseq, r.max_forwards, r.content_type) == ((42, "KDMQ"), 1, "application/json")
    assert r.headers.get("X-Extra") == "yes"
    assert _names(r)[-2:] == ["X-Extra", "Content-Type"]
    assert r.body == b'{"action":1}'


def test_build_request_fresh_ids_and_options():
    """Each request gets a new branch, tag and Call-ID; no body means no Content-Type; to_uri is used."""
    uri = SIPURI.parse("sip:htable@10.0.0.2")
    a = build_request("KDMQ", uri, from_uri=uri, via_transport="udp", via_sent_by="10.0.0.1",
                      content_type="text/plain", user_agent=None)
    b = build_request("KDMQ", uri, from_uri=uri, via_transport="udp", via_sent_by="10.0.0.1",
                      to_uri=SIPURI.parse("sip:other@10.0.0.3"))
    assert a.branch != b.branch and a.from_.tag != b.from_.tag and a.call_id != b.call_id
    assert "User-Agent" not in a.headers and b.headers.get("User-Agent") == "dmq"
    assert a.headers.get("Content-Length") == "0"
    assert b.to.uri == SIPURI.parse("sip:other@10.0.0.3") and b.uri == uri
    assert a.max_forwards == 70


def test_new_ids():
    """new_branch has the magic cookie; tags, branches and Call-IDs do not repeat."""
    branches = {new_branch() for _ in range(100)}
    assert len(branches) == 100 and all(b.startswith("z9hG4bK") and len(b) > 7 + 16 for b in branches)
    assert len({new_tag() for _ in range(100)}) == 100
    call_ids = {new_call_id("127.0.0.1") for _ in range(100)}
    assert len(call_ids) == 100 and all(c.endswith("@127.0.0.1") for c in call_ids)


def test_via_value_layout():
    """via_value writes SIP/2.0/<TRANSPORT> sent-by;branch=..., with a new branch unless given."""
    assert via_value("tcp", "10.0.0.1:5060", "z9hG4bKx") == "SIP/2.0/TCP 10.0.0.1:5060;branch=z9hG4bKx"
    fresh = [parse_vias(via_value("udp", "[::1]:5060"))[0] for _ in range(2)]
    assert [(v.transport, v.host, v.port) for v in fresh] == [("UDP", "[::1]", 5060)] * 2
    assert fresh[0].branch.startswith("z9hG4bK") and fresh[0].branch != fresh[1].branch
    with pytest.raises(SIPParseError):
        via_value("udp", "10.0.0.1\r\nX: injected")


def test_via_over_changes_only_the_top_via_transport():
    """via_over copies a request with its top Via naming another transport; the rest, other Vias included, stays."""
    built = _kamailio_like()
    built.headers.add("Via", "SIP/2.0/UDP 10.9.9.9;branch=z9hG4bKlower")
    moved = via_over(built, "tcp")
    assert [(v.transport, v.sent_by, v.branch) for v in moved.vias] == [
        ("TCP", "127.0.0.1:5172", built.branch), ("UDP", "10.9.9.9", "z9hG4bKlower")]
    assert moved.to_bytes() == built.to_bytes().replace(b"SIP/2.0/UDP 127.0.0.1:5172", b"SIP/2.0/TCP 127.0.0.1:5172")
    assert built.vias[0].transport == "UDP"


def test_reason_with_detail():
    """reason_with adds the fault to the code's phrase (or a given one) as one bounded printable line."""
    assert reason_with(400, "CSeq method 'X'") == "Bad Request (CSeq method 'X')"
    assert reason_with("Forbidden", "") == "Forbidden"
    assert reason_with(413, "a\r\n\tb\x00") == "Request Entity Too Large (a b?)"
    long = reason_with(400, "x" * 500)
    assert long.startswith("Bad Request (x") and long.endswith("...)") and len(long) < 140


# ---------------------------------------------------------------------------
# Headers
# ---------------------------------------------------------------------------


def test_headers_get_and_getall():
    """get returns the first value or the default; getall every value in order, as a new list."""
    h = Headers([("Route", "<sip:a>"), ("X", "1"), ("route", "<sip:b>")])
    assert h.get("ROUTE") == "<sip:a>"
    assert h.get("missing") is None and h.get("missing", "d") == "d"
    values = h.getall("Route")
    assert values == ["<sip:a>", "<sip:b>"]
    values.append("changed")
    assert h.getall("Route") == ["<sip:a>", "<sip:b>"]
    assert h.getall("missing") == []


def test_headers_add_appends():
    """add appends a line at the end, name kept as written."""
    h = Headers([("Via", "a")])
    h.add("v", "b")
    h.add("X-New", "c")
    assert list(h) == [("Via", "a"), ("v", "b"), ("X-New", "c")]
    assert h.getall("via") == ["a", "b"]
    assert len(h) == 3


def test_headers_set_replaces_in_place():
    """set replaces every line of a name by one, where the first was; a new name goes last."""
    h = Headers([("Route", "1"), ("X", "x"), ("route", "2"), ("Y", "y")])
    h.set("ROUTE", "new")
    assert list(h) == [("Route", "new"), ("X", "x"), ("Y", "y")]
    assert h.getall("route") == ["new"]
    h.set("Z", "z")
    assert list(h)[-1] == ("Z", "z")


def test_headers_remove():
    """remove drops every line of a name (any spelling); removing an absent name is a no-op."""
    h = Headers([("Via", "a"), ("X", "x"), ("v", "b")])
    h.remove("VIA")
    assert list(h) == [("X", "x")]
    assert "via" not in h and h.get("v") is None
    h.remove("absent")
    assert list(h) == [("X", "x")]


def test_headers_contains_and_equality():
    """'in' accepts any spelling; Headers compare by long lowercased name and value, in order."""
    a = Headers([("Call-ID", "x"), ("Via", "v")])
    b = Headers([("i", "x"), ("VIA", "v")])
    assert "call-id" in a and "I" in a and 42 not in a  # type: ignore[operator]
    assert a == b
    assert a != Headers([("Via", "v"), ("Call-ID", "x")])
    assert a != Headers([("Call-ID", "x"), ("Via", "other")])


def test_editing_parsed_headers_changes_the_bytes():
    """Headers of a parsed message can be edited; to_bytes writes the edits and keeps the rest."""
    r = parse_message(KDMQ)
    r.headers.set("Max-Forwards", "1")
    r.headers.add("X-Added", "yes")
    r.headers.remove("User-Agent")
    out = r.to_bytes()
    assert b"Max-Forwards: 1\r\n" in out and b"X-Added: yes\r\n" in out and b"User-Agent" not in out
    assert out.startswith(KDMQ.split(b"\r\n", 1)[0])
    again = parse_message(out)
    assert again.max_forwards == 1 and again.body == r.body


def test_setting_body_updates_content_length():
    """Assigning .body rewrites Content-Length to the new byte length."""
    r = parse_message(KDMQ)
    r.body = UTF8_BODY
    assert r.headers.get("Content-Length") == "17"
    assert r.content_length == 17
    again = parse_message(r.to_bytes(), strict=True)
    assert again.body == UTF8_BODY
    r.body = b""
    assert parse_message(r.to_bytes()).body == b""


# ---------------------------------------------------------------------------
# Lazily parsed headers and validate()
# ---------------------------------------------------------------------------

LAZY_FAULTS = {
    "vias": ("Via", "Via: garbage"),
    "from_": ("From", "From: <sip:x@127.0.0.1;tag=1"),
    "to": ("To", "To: <sip:bad host>"),
    "content_type": ("Content-Type", "Content-Type: text"),
}


@pytest.mark.parametrize("accessor", sorted(LAZY_FAULTS))
def test_lazy_headers_fail_on_access_and_in_validate(accessor):
    """A malformed Via/From/To/Content-Type passes parse_message, but its accessor, validate() and strict=True raise."""
    name, line = LAZY_FAULTS[accessor]
    headers = _replace(name, line) if name != "Content-Type" else BASE + [line]
    data = _wire(headers)
    message = parse_message(data)
    with pytest.raises(SIPParseError) as e:
        getattr(message, accessor)
    assert name in str(e.value) or "Content-Type" in str(e.value)
    with pytest.raises(SIPParseError):
        message.validate()
    _rejects(data, strict=True)


def test_bad_request_uri_is_caught_eagerly():
    """The Request-URI is checked by parse_message itself, not left for first access."""
    _rejects(_wire(BASE, start="KDMQ sip:bad@host@x SIP/2.0"))


def test_check_on_a_built_message():
    """Message.check runs the eager checks on a message built by hand."""
    good = Request("KDMQ", SIPURI.parse("sip:a@b.c"), Headers([
        ("Via", "SIP/2.0/UDP b.c;branch=z9hG4bK1"), ("From", "<sip:a@b.c>;tag=1"), ("To", "<sip:a@b.c>"),
        ("Call-ID", "x@y"), ("CSeq", "1 KDMQ")]))
    good.check()
    good.validate()
    bad = Request("KDMQ", SIPURI.parse("sip:a@b.c"), Headers([("Call-ID", "x@y")]))
    with pytest.raises(SIPParseError, match="Via"):
        bad.check()
    wrong = Request("KDMQ", SIPURI.parse("sip:a@b.c"), Headers(list(good.headers)))
    wrong.headers.set("CSeq", "1 INVITE")
    with pytest.raises(SIPParseError, match="CSeq"):
        wrong.check()


def test_typed_values():
    """Parsed structured headers come back as Via and NameAddr objects with their parts."""
    r = parse_message(KDMQ)
    via = r.vias[0]
    assert isinstance(via, Via)
    assert (via.protocol, via.transport, via.sent_by) == ("SIP/2.0", "UDP", "127.0.0.1:5172")
    assert isinstance(r.from_, NameAddr) and r.from_.display_name is None
    assert str(r.to) == "<sip:notification_peer@127.0.0.1:5171>"
    assert repr(r) == "<Request KDMQ sip:notification_peer@127.0.0.1:5171 (34 body bytes)>"


def test_messages_compare_by_content():
    """Equal bytes give equal messages; a changed body or header makes them differ."""
    a, b = parse_message(KDMQ), parse_message(KDMQ)
    assert a == b
    b.body = b"other"
    assert a != b
    assert a != make_response(a, 200)
    c = parse_message(KDMQ)
    c.headers.add("X", "1")
    assert a != c


# ---------------------------------------------------------------------------
# Nothing built through the API can inject lines or fail its own checks
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name, value", [("X", "a\r\nVia: evil"), ("X", "a\nb"), ("X", "a\rb"), ("Bad Name", "v"),
                                         ("X:Y", "v"), ("", "v"), ("K\u00e9y", "v")])
def test_headers_refuse_injection(name, value):
    """Headers.add/set refuse a non-token name or a value with a line break."""
    h = Headers([("Via", "x")])
    with pytest.raises(SIPParseError):
        h.add(name, value)
    with pytest.raises(SIPParseError):
        h.set(name, value)
    assert list(h) == [("Via", "x")]


def test_make_response_refuses_injection():
    """Reason, tag, Content-Type, Server and extra headers with line breaks are refused."""
    request = parse_message(KDMQ)
    for kwargs in [{"reason": "OK\r\nX: y"}, {"to_tag": "t\r\n"}, {"server": "s\n"},
                   {"body": b"x", "content_type": "text/plain\r\nX: y"}, {"headers": [("X", "a\r\nb")]},
                   {"headers": [("X Y", "a")]}]:
        with pytest.raises(SIPParseError):
            make_response(request, 200, **kwargs)


def test_make_response_extra_header_values_read_back_alike():
    """An extra header value is written and indexed the way it parses back (blanks at the ends dropped)."""
    response = make_response(parse_message(KDMQ), 200, headers=[("X-A", "  padded  ")])
    assert response.headers.get("X-A") == "padded"
    assert parse_message(response.to_bytes()).headers.get("X-A") == "padded"
    assert ("X-A", "padded") in list(response.headers)


@pytest.mark.parametrize(
    "kwargs",
    [{"max_forwards": 256}, {"max_forwards": -1}, {"cseq": 2**32}, {"call_id": "a b"}, {"branch": "z9\r\nX: y"},
     {"user_agent": "ua\n"}, {"headers": [("X", "a\nb")]}, {"via_sent_by": "h\r\n"}],
)
def test_build_request_refuses_what_would_not_parse(kwargs):
    """build_request raises SIPParseError instead of building a request the parser would reject."""
    uri = SIPURI.parse("sip:htable@10.0.0.2")
    arguments = {"from_uri": uri, "via_transport": "udp", "via_sent_by": "10.0.0.1", **kwargs}
    with pytest.raises(SIPParseError):
        build_request("KDMQ", uri, **arguments)
    with pytest.raises(SIPParseError):
        build_request("KD MQ", uri, from_uri=uri, via_transport="udp", via_sent_by="10.0.0.1")


@pytest.mark.parametrize("header", ["Content-Length", "Max-Forwards"])
def test_numbers_with_thousands_of_digits(header: str) -> None:
    """A number header of 5,000 digits is a SIPParseError, not Python's int() digit-limit error."""
    data = KDMQ.replace(f"{header}: ".encode(), f"{header}: {'9' * 5000}".encode(), 1)
    with pytest.raises(SIPParseError):
        message = parse_message(data)
        message.content_length
        message.max_forwards


def test_names_kept_where_other_modules_import_them():
    """The codec's names moved to other modules are still importable from where the rest of dmq imports them."""
    import dmq.errors
    import dmq.sip
    import dmq.sip.address
    import dmq.sip.build
    import dmq.sip.message
    import dmq.sip.parse
    import dmq.sip.tls
    import dmq.sip.transaction
    import dmq.sip.transport
    import dmq.sip.udp
    import dmq.sip.uri

    for name in ("build_request", "make_response", "new_branch", "new_tag", "new_call_id", "response_tag"):
        assert getattr(dmq.sip.message, name) is getattr(dmq.sip.build, name)
    for name in ("parse_message", "MAX_MESSAGE_SIZE", "MAX_HEADERS", "MAX_LINE_LENGTH"):
        assert getattr(dmq.sip.message, name) is getattr(dmq.sip.parse, name)
    assert dmq.sip.uri.SIPParseError is dmq.sip.SIPParseError is dmq.errors.SIPParseError
    assert dmq.sip.transaction.Source is dmq.sip.address.Source
    assert dmq.sip.transport.TLSSettings is dmq.sip.tls.TLSSettings
    assert dmq.sip.transport.error_response is dmq.sip.build.error_response
    assert dmq.sip.transport.MAX_DATAGRAM is dmq.sip.udp.MAX_DATAGRAM
    with pytest.raises(AttributeError):
        dmq.sip.message.no_such_name  # noqa: B018
