"""Property tests (hypothesis) for the SIP codec.

(a) Generated valid requests and responses survive ``parse_message(m.to_bytes())``
    unchanged, field by field.
(b) Any input, random or a damaged valid message, makes the parser, its
    ``strict`` mode and every lazy accessor raise nothing but ``SIPParseError``;
    whatever parses serialises to bytes that parse to the same message.
(c) Adversarial sizes: a line of up to max_line characters aimed at each
    regex of the codec, up to max_headers such lines, and whole messages up
    to the caps (max_size bytes) make the parser and every lazy accessor
    raise nothing but SIPParseError; inputs at the caps get the outcome the
    caps say (parsed, or refused with 413 or 400).
(d) Each fast path of the codec (plain request line, SIP URI, Via, name-addr,
    CSeq, Max-Forwards) accepts exactly what the general path accepts, with
    the same result.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from typing import Callable, Optional, Union

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from dmq.sip import SIPURI, Headers, Request, Response, SIPParseError, parse_message
from dmq.sip.fields import canonical_key
from dmq.sip.parse import MAX_HEADERS, MAX_LINE_LENGTH, MAX_MESSAGE_SIZE

# Example counts: about 7,000 examples in all, the file in about 20 s.  Drawing
# a whole message costs hypothesis some 10 ms here, random bytes far less.
_QUIET = [HealthCheck.too_slow, HealthCheck.data_too_large]


def _examples(n: int) -> settings:
    return settings(max_examples=n, deadline=None, suppress_health_check=_QUIET)


# ---------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------

def chars(alphabet: str, min_size: int = 0, max_size: int = 10) -> st.SearchStrategy[str]:
    """
    Text over ``alphabet``, drawn as one byte string: much cheaper for
    hypothesis than st.text, which draws each character on its own.
    """
    return st.binary(min_size=min_size, max_size=max_size).map(
        lambda b: "".join([alphabet[x % len(alphabet)] for x in b])
    )


def unicode_text(max_size: int, exclude: str = "\r\n") -> st.SearchStrategy[str]:
    """Text of any code points but surrogates and ``exclude``, drawn as one byte string."""

    def decode(b: bytes) -> str:
        out = []
        for i in range(0, len(b) - 1, 2):
            c = chr((b[i] << 8 | b[i + 1]) % 0x3000 if b[i] & 1 else b[i + 1] % 0x80)
            if c not in exclude:
                out.append(c)
        return "".join(out)

    return st.binary(max_size=2 * max_size).map(decode)


TOKEN_CHARS = string.ascii_letters + string.digits + "-.!%*_+`'~"
UNRESERVED = string.ascii_letters + string.digits + "-_.!~*'()"
WORD_CHARS = TOKEN_CHARS + "()<>:\\\"/[]?{}"

token = chars(TOKEN_CHARS, 1, 10)
lower_token = chars(string.ascii_lowercase + string.digits + "-.!*_+`'~", 1, 8)
methods = st.one_of(st.sampled_from(["KDMQ", "OPTIONS", "INVITE", "MESSAGE", "REGISTER", "BYE"]), token)

ALNUM = string.ascii_letters + string.digits
ipv4 = st.integers(0, 2**32 - 1).map(lambda n: ".".join(str((n >> s) & 255) for s in (24, 16, 8, 0)))
hostname = st.builds(
    lambda labels, top, dashes, dot: ".".join([*labels, top[0] + "-" * dashes + top[1:] if len(top) > 1 else top]) + dot,
    st.lists(chars(ALNUM, 1, 5), max_size=3),
    chars(ALNUM, 0, 5).map(lambda t: "x" + t),
    st.integers(0, 2),
    st.sampled_from(["", "."]),
)
ipv6 = st.ip_addresses(v=6).map(lambda a: f"[{a}]")
hosts = st.one_of(ipv4, hostname, ipv6)
ports = st.none() | st.integers(0, 65535)


def _escaped(alphabet: str, min_size: int, max_size: int) -> st.SearchStrategy[str]:
    """Text of ``chars`` with up to two %HH escapes put in."""

    def put(text: str, escapes: list[tuple[int, int]]) -> str:
        pieces = list(text)
        for at, byte in escapes:
            pieces.insert(at % (len(pieces) + 1), f"%{byte:02X}")
        return "".join(pieces)

    return st.builds(
        put,
        chars(alphabet, min_size, max_size),
        st.lists(st.tuples(st.integers(0, 99), st.integers(0, 255)), max_size=2),
    )


users = _escaped(UNRESERVED + "&=+$,;?/", 1, 10)
passwords = _escaped(UNRESERVED + "&=+$,", 0, 6)
pchars = _escaped(UNRESERVED + "[]/:&+$", 1, 8)
uri_params = st.dictionaries(
    _escaped(string.ascii_lowercase + string.digits + "-_.!~*'()[]/:&+$", 1, 8),
    st.none() | pchars,
    max_size=3,
)
uri_headers = st.dictionaries(_escaped(UNRESERVED + "[]/?:+$", 1, 6), _escaped(UNRESERVED + "[]/?:+$", 0, 6), max_size=2)


@st.composite
def sip_uris(draw: Callable, headers: bool = False) -> SIPURI:
    """A SIP or SIPS URI built from parts (URI headers only when asked for)."""
    user = draw(st.none() | users)
    return SIPURI(
        draw(hosts),
        draw(ports),
        user=user,
        password=None if user is None else draw(st.none() | passwords),
        params=draw(uri_params),
        headers=draw(uri_headers) if headers else None,
        scheme=draw(schemes),
    )


other_uris = st.sampled_from(["tel:+15551234567", "urn:service:sos", "mailto:alice@example.com", "im:bob@x"])

quoted_text = st.builds(
    lambda text, pairs: '"' + "".join(c + "\\" + p for c, p in zip(text, pairs)) + text[len(pairs):] + '"',
    unicode_text(12, exclude='"\\\r\n'),
    chars(string.printable.replace("\r", "").replace("\n", ""), 0, 4),
)
display_names = st.one_of(
    st.none(), quoted_text, st.lists(token, min_size=1, max_size=3).map(" ".join)
)
header_values = unicode_text(30).map(lambda s: s.strip(" \t"))

header_params = st.dictionaries(lower_token.filter(lambda n: n != "tag"), st.none() | token, max_size=2)
via_counts = st.integers(1, 3)
via_extras = st.sampled_from(["", ";rport", ";received=192.0.2.1", ";ttl=1", ';x="a;b"', ";maddr=[::1]"])
via_transports = st.sampled_from(["UDP", "TCP", "TLS", "SCTP", "udp"])
via_commas = st.sampled_from([",", ", ", " , "])
content_types = st.sampled_from(["text/plain", "application/json", "application/sdp"])
content_type_params = st.sampled_from(["", ";charset=utf-8", ' ; q="x\\"y"'])
schemes = st.sampled_from(["sip", "sips", "SIP"])
reasons = unicode_text(20)
call_id_words = chars(WORD_CHARS, 1, 12)
extra_headers = None  # defined below, once extra_names is

SPELLINGS = {
    "via": ["Via", "v", "VIA", "via", "V"],
    "from": ["From", "f", "FROM", "from"],
    "to": ["To", "t", "TO", "to"],
    "call-id": ["Call-ID", "i", "call-id", "CALL-ID", "Call-Id"],
    "cseq": ["CSeq", "cseq", "CSEQ"],
    "max-forwards": ["Max-Forwards", "max-forwards", "MAX-FORWARDS"],
    "content-length": ["Content-Length", "l", "content-length", "L"],
    "content-type": ["Content-Type", "c", "content-type"],
}
RESERVED_KEYS = set(SPELLINGS)
extra_names = st.one_of(
    st.sampled_from(["Subject", "s", "Contact", "m", "Route", "Supported", "k", "User-Agent", "Server", "X-A"]),
    token,
).filter(lambda name: canonical_key(name) not in RESERVED_KEYS)


extra_headers = st.lists(st.tuples(extra_names, header_values), max_size=4)
SPELLING_STRATEGIES = {key: st.sampled_from(names) for key, names in SPELLINGS.items()}


def _spelling(draw: Callable, key: str) -> str:
    return draw(SPELLING_STRATEGIES[key])


@dataclass
class Expected:
    """What the generated message must parse to, besides equality."""

    branches: list[str] = field(default_factory=list)
    from_uri: Union[SIPURI, str, None] = None
    from_tag: Optional[str] = None
    from_display: Optional[str] = None
    to_uri: Union[SIPURI, str, None] = None
    to_tag: Optional[str] = None
    call_id: str = ""
    cseq: tuple[int, str] = (0, "")
    max_forwards: Optional[int] = None
    content_type: Optional[str] = None


@st.composite
def name_addr(draw: Callable, tag: bool) -> tuple[str, Union[SIPURI, str], Optional[str], Optional[str]]:
    """A From/To value: (text, URI, tag, display name as written)."""
    uri: Union[SIPURI, str] = draw(st.one_of(sip_uris(headers=True), other_uris))
    display = draw(display_names)
    tag_value = draw(token) if tag else None
    params = ""
    if tag_value is not None:
        params += f";tag={tag_value}"
    for name, value in draw(header_params).items():
        params += f";{name}" if value is None else f";{name}={value}"
    # An addr-spec cannot hold ',', ';' or '?' (RFC 3261 20).
    bracket = display is not None or any(c in str(uri) for c in ",;?") or draw(st.booleans())
    if bracket:
        text = f"{display} <{uri}>{params}" if display else f"<{uri}>{params}"
    else:
        text = f"{uri}{params}"
    return text, uri, tag_value, display


@st.composite
def vias(draw: Callable) -> tuple[list[str], list[str]]:
    """Via header values (some holding several comma-separated vias) and their branches."""
    values, branches = [], []
    for _ in range(draw(via_counts)):
        branch = "z9hG4bK" + draw(token)
        host, port = draw(hosts), draw(ports)
        sent_by = host if port is None else f"{host}:{port}"
        params = f";branch={branch}"
        params += draw(via_extras)
        transport = draw(via_transports)
        via = f"SIP/2.0/{transport} {sent_by}{params}"
        if values and draw(st.booleans()):
            values[-1] += draw(via_commas) + via
        else:
            values.append(via)
        branches.append(branch)
    return values, branches


@st.composite
def messages(draw: Callable) -> tuple[Union[Request, Response], Expected]:
    """A valid request or response built through the API, with what it must parse to."""
    expected = Expected()
    is_request = draw(st.booleans())
    method = draw(methods)
    items: list[tuple[str, str]] = []
    via_values, expected.branches = draw(vias())
    items += [(_spelling(draw, "via"), v) for v in via_values]
    text, expected.from_uri, expected.from_tag, expected.from_display = draw(name_addr(tag=True))
    items.append((_spelling(draw, "from"), text))
    text, expected.to_uri, expected.to_tag, _ = draw(name_addr(tag=not is_request and draw(st.booleans())))
    items.append((_spelling(draw, "to"), text))
    expected.call_id = draw(call_id_words)
    if draw(st.booleans()):
        expected.call_id += "@" + draw(call_id_words)
    items.append((_spelling(draw, "call-id"), expected.call_id))
    number = draw(st.integers(0, 2**32 - 1))
    cseq_method = method if is_request else draw(methods)
    expected.cseq = (number, cseq_method)
    items.append((_spelling(draw, "cseq"), f"{number} {cseq_method}"))
    if draw(st.booleans()):
        expected.max_forwards = draw(st.integers(0, 255))
        items.append((_spelling(draw, "max-forwards"), str(expected.max_forwards)))
    body = draw(st.binary(max_size=200))
    if draw(st.booleans()):
        expected.content_type = draw(content_types) + draw(content_type_params)
        items.append((_spelling(draw, "content-type"), expected.content_type))
    items += draw(extra_headers)
    items = list(draw(st.permutations(items)))
    # Any order of header lines, but the Via values keep theirs.
    in_order = iter(via_values)
    items = [(n, next(in_order)) if canonical_key(n) == "via" else (n, v) for n, v in items]
    if draw(st.integers(0, 4)):  # Content-Length present four times in five
        items.append((_spelling(draw, "content-length"), str(len(body))))
    headers = Headers(items)
    message: Union[Request, Response]
    if is_request:
        uri: Union[SIPURI, str] = draw(st.one_of(sip_uris(), other_uris))
        message = Request(method, uri, headers, body)
    else:
        message = Response(draw(st.integers(100, 699)), draw(reasons), headers, body)
    return message, expected


# ---------------------------------------------------------------------------
# (a) Round trip
# ---------------------------------------------------------------------------


@_examples(200)
@given(messages())
def test_round_trip(generated):
    """A generated valid message parses (strictly) back to an equal message with the same fields."""
    message, expected = generated
    data = message.to_bytes()
    parsed = parse_message(data, strict=True)
    assert parsed == message
    assert parsed.to_bytes() == data
    assert type(parsed) is type(message)
    if isinstance(message, Request):
        assert parsed.method == message.method
        assert str(parsed.uri) == str(message.uri)
        if isinstance(message.uri, SIPURI):
            assert parsed.uri == message.uri
        assert parsed.branch == expected.branches[0]
    else:
        assert (parsed.code, parsed.reason) == (message.code, message.reason)
    assert [v.branch for v in parsed.vias] == expected.branches
    assert parsed.call_id == expected.call_id
    assert parsed.cseq == expected.cseq
    assert parsed.max_forwards == expected.max_forwards
    assert parsed.from_.tag == expected.from_tag
    assert parsed.from_.display_name == expected.from_display
    assert parsed.from_.uri == expected.from_uri
    assert parsed.to.tag == expected.to_tag
    assert parsed.to.uri == expected.to_uri
    assert parsed.body == message.body
    assert parsed.content_length == len(message.body)
    assert parsed.content_type == expected.content_type


@_examples(200)
@given(sip_uris(headers=True))
def test_uri_round_trip(uri):
    """str() of any SIP URI parses back to an equal URI with the same text."""
    parsed = SIPURI.parse(str(uri))
    assert parsed == uri
    assert str(parsed) == str(uri)
    assert (parsed.scheme, parsed.user, parsed.password, parsed.host.lower(), parsed.port) == (
        uri.scheme, uri.user, uri.password, uri.host.lower(), uri.port)
    assert parsed.params == uri.params and parsed.headers == uri.headers


# ---------------------------------------------------------------------------
# (b) Only SIPParseError, and whatever parses round-trips
# ---------------------------------------------------------------------------

ACCESSORS = ("vias", "from_", "to", "content_type", "uri", "call_id", "cseq", "max_forwards", "content_length",
             "branch", "body")


def _exercise(data: bytes) -> Optional[Union[Request, Response]]:
    """Parse ``data`` plainly and strictly, touch every accessor; let only SIPParseError out."""
    try:
        parse_message(data, strict=True)
    except SIPParseError as e:
        assert isinstance(e.code, int) and 400 <= e.code <= 599
        assert str(e)
    try:
        message = parse_message(data)
    except SIPParseError:
        return None
    for name in ACCESSORS:
        try:
            getattr(message, name)
        except SIPParseError:
            pass
        except AttributeError:
            assert name in ("uri", "branch") and isinstance(message, Response)
    try:
        message.validate()
    except SIPParseError:
        pass
    return message


def _reparse_is_stable(message: Union[Request, Response]) -> None:
    """What parsed serialises to bytes that parse to an equal message, and to the same bytes."""
    data = message.to_bytes()
    again = parse_message(data)
    assert again == message
    assert again.to_bytes() == data


@_examples(1500)
@given(st.binary(max_size=2000))
def test_arbitrary_bytes(data):
    """Random bytes raise only SIPParseError, in plain and strict mode and from every accessor."""
    message = _exercise(data)
    if message is not None:
        _reparse_is_stable(message)


FRAGMENTS = [
    b"KDMQ ", b"SIP/2.0 ", b"SIP/2.0", b" SIP/2.0\r\n", b"200 OK", b"sip:", b"sips:", b"tel:", b"user@",
    b"127.0.0.1", b"[::1]", b"[", b"]", b":5060", b":", b";", b"=", b";tag=", b";branch=z9hG4bK", b";lr",
    b"<", b">", b'"', b"\\", b"%", b"%41", b"@", b",", b"?", b"&", b" ", b"\t", b"\r\n", b"\n", b"\r",
    b"\r\n\r\n", b"\r\n ", b"Via: ", b"v: ", b"SIP/2.0/UDP ", b"From: ", b"To: ", b"t: ", b"Call-ID: ",
    b"CSeq: ", b"1 KDMQ", b"Max-Forwards: ", b"70", b"256", b"Content-Length: ", b"l: ", b"5", b"99999999999",
    b"Content-Type: ", b"text/plain", b"hello", b"\xff", b"\xc3\xa9", b"\xe2\x84\xaa", b"\x00", b"a", b"-",
]


@_examples(1200)
@given(st.binary(max_size=60).map(lambda b: b"".join([FRAGMENTS[x % len(FRAGMENTS)] for x in b])))
def test_sip_like_fragments(data):
    """Random sequences of SIP fragments raise only SIPParseError; what parses round-trips."""
    message = _exercise(data)
    if message is not None:
        _reparse_is_stable(message)


NASTY = [b"\x00", b"\xff", b"\xc3", b"\r", b"\n", b"\r\n", b" ", b"\t", b":", b";", b",", b"=", b"<", b">",
         b'"', b"\\", b"[", b"]", b"@", b"?", b"%", b"/", b"0", b"9", b"-", b"\r\n ", b"\r\n\r\n"]


def _mutate(data: bytes, edits: list[tuple[int, int, bytes, int]]) -> bytes:
    """``data`` with each edit applied: a byte replaced (kind 0), inserted ``count`` times (1), ``count`` bytes
    deleted (2), or ``count`` bytes repeated 50 times (3)."""
    for position, kind, nasty, count in edits:
        at = position % (len(data) + 1)
        if kind == 0:
            data = data[:at] + nasty + data[at + 1 :]
        elif kind == 1:
            data = data[:at] + nasty * count + data[at:]
        elif kind == 2:
            data = data[:at] + data[at + count :]
        else:
            data = data[:at] + data[at : at + count] * 50 + data[at + count :]
    return data


@_examples(200)
@given(messages(), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 3), st.sampled_from(NASTY),
                                      st.integers(1, 12)), min_size=1, max_size=6))
def test_mutated_messages(generated, edits):
    """Valid messages with bytes replaced, inserted, deleted or repeated raise only SIPParseError."""
    message = _exercise(_mutate(generated[0].to_bytes(), edits))
    if message is not None:
        _reparse_is_stable(message)




@_examples(200)
@given(messages(), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 2), st.sampled_from(NASTY),
                                      st.integers(1, 12)), min_size=1, max_size=6))
def test_error_answers_are_well_formed(generated, edits):
    """The stateless answer to a request the parser refuses is None or a response whose every line is clean."""
    from dmq.sip.build import error_response, reason_with

    data = _mutate(generated[0].to_bytes(), edits)
    try:
        parse_message(data, strict=True)
        return
    except SIPParseError as e:
        code = e.code
        answer = error_response(data, code, reason_with(code, str(e)))
    if answer is None:
        return
    head, blank, body = answer.partition(b"\r\n\r\n")
    assert blank and body == b""
    lines = head.split(b"\r\n")
    assert lines[0].startswith(b"SIP/2.0 %d " % code)
    for line in lines:
        assert not any(c < 0x20 and c != 0x09 or c == 0x7F for c in line), line
    assert lines[-1] == b"Content-Length: 0"
    assert any(line.startswith(b"Via: SIP/2.0/") for line in lines[1:])


# ---------------------------------------------------------------------------
# (c) Adversarial sizes
# ---------------------------------------------------------------------------


START = "KDMQ sip:htable@127.0.0.1:5171 SIP/2.0"
HEADERS = {
    "via": "Via: SIP/2.0/UDP 127.0.0.1:5172;branch=z9hG4bKabc",
    "to": "To: <sip:htable@127.0.0.1:5171>",
    "from": "From: <sip:htable@127.0.0.1:5172>;tag=ftag",
    "cseq": "CSeq: 10 KDMQ",
    "call-id": "Call-ID: cid@127.0.0.1",
    "max-forwards": "Max-Forwards: 1",
    "content-type": "Content-Type: text/plain",
}

# Where the long text goes: the start line ("start") or a header line replacing
# (or, for "extra", added to) the template's.
SLOTS: dict[str, tuple[str, str]] = {
    "ruri": ("start", "KDMQ sip:{} SIP/2.0"),
    "ruri-user": ("start", "KDMQ sip:{}@h.example SIP/2.0"),
    "ruri-password": ("start", "KDMQ sip:u:{}@h.example SIP/2.0"),
    "ruri-host": ("start", "KDMQ sip:u@{} SIP/2.0"),
    "ruri-ipv6": ("start", "KDMQ sip:[{}] SIP/2.0"),
    "ruri-params": ("start", "KDMQ sip:h.example;{} SIP/2.0"),
    "ruri-headers": ("start", "KDMQ sip:h.example?{} SIP/2.0"),
    "ruri-other": ("start", "KDMQ x:{} SIP/2.0"),
    "method": ("start", "{} sip:h.example SIP/2.0"),
    "version": ("start", "KDMQ sip:h.example {}"),
    "status": ("start", "SIP/2.0 {}"),
    "reason": ("start", "SIP/2.0 200 {}"),
    "via": ("via", "Via: {}"),
    "via-host": ("via", "Via: SIP/2.0/UDP {}"),
    "via-port": ("via", "Via: SIP/2.0/UDP h:{}"),
    "via-params": ("via", "Via: SIP/2.0/UDP h;{}"),
    "via-value": ("via", "Via: SIP/2.0/UDP h;branch={}"),
    "via-quoted": ("via", 'Via: SIP/2.0/UDP h;x="{}"'),
    "from": ("from", "From: {}"),
    "from-display": ("from", "From: {}<sip:a@b.example>;tag=1"),
    "from-quoted": ("from", 'From: "{}" <sip:a@b.example>;tag=1'),
    "from-uri": ("from", "From: <{}>;tag=1"),
    "from-addr-spec": ("from", "From: sip:{}"),
    "to-params": ("to", "To: <sip:a@b.example>;{}"),
    "to-uri-params": ("to", "To: <sip:a@b.example;{}>"),
    "call-id": ("call-id", "Call-ID: {}"),
    "cseq": ("cseq", "CSeq: {}"),
    "cseq-space": ("cseq", "CSeq: 1{}KDMQ"),
    "max-forwards": ("max-forwards", "Max-Forwards: {}"),
    "content-length": ("extra", "Content-Length: {}"),
    "content-type": ("content-type", "Content-Type: {}"),
    "content-type-params": ("content-type", "Content-Type: text/plain;{}"),
    "content-type-quoted": ("content-type", 'Content-Type: text/plain;a="{}'),
    "header-name": ("extra", "{}: v"),
    "header-value": ("extra", "X: {}"),
    "fold": ("extra", "Subject: a{}b"),
}
UNITS = ["a", "A1", ";", "%", "%4", "%41", ";a", "a;", "a=", ";a=b", "=", ":", "1:", "a:", "::", "[", "]", "[::1]",
         "\\", '\\"', '"', "\\\\", " ", "\t", " \t", "a ", "<", ">", "<>", "@", "a@", ".", "1.", "a.", "-", "a-",
         "-a", "?", "&", "a=b&", ",", "SIP/2.0/UDP h,", "0", "9", "\xff", "\u00e9", "\r\n ", "\r\n\t", "/", "a/",
         "tag=", ";tag=x", "sip:", "1 ", "(", ")", "{", "}", "'", "`", "*", "~"]
TAILS = ["", "!", "\x00", "<", ">", '"', "@", ";", ":", " x", "\\", "=", ",", "\r\n x", " SIP/2.0", "]"]


@_examples(250)
@given(
    st.sampled_from(sorted(SLOTS)),
    st.sampled_from(UNITS),
    st.one_of(st.integers(1, 40), st.sampled_from([500, 2000, 8000, MAX_LINE_LENGTH])),
    st.sampled_from(TAILS),
)
def test_adversarial_long_lines(slot, unit, count, tail):
    """A line of up to max_line characters of one repeated unit, in any slot, raises only SIPParseError."""
    where, template = SLOTS[slot]
    room = MAX_LINE_LENGTH - len(template) - len(tail)
    text = template.format(unit * max(1, min(count, room // len(unit))) + tail)
    start, headers = START, dict(HEADERS)
    if slot in ("status", "reason"):
        start = text
    elif where == "start":
        start = text
    elif where == "extra":
        headers["extra"] = text
    else:
        headers[where] = text
    data = ("\r\n".join([start, *headers.values()]) + "\r\n\r\n").encode("utf-8", "surrogateescape")
    message = _exercise(data)
    if message is not None:
        _reparse_is_stable(message)


@_examples(80)
@given(
    st.sampled_from(sorted(SLOTS)),
    st.sampled_from(UNITS),
    st.sampled_from(TAILS),
    st.integers(1, MAX_HEADERS - 10),
)
def test_many_adversarial_lines(slot, unit, tail, lines):
    """Up to the header-count cap of long adversarial lines (about 16 KiB each) raise only SIPParseError."""
    _, template = SLOTS[slot]
    room = min(MAX_LINE_LENGTH, MAX_MESSAGE_SIZE // (lines + 8)) - len(template) - len(tail) - 2
    text = template.format(unit * max(1, room // len(unit)) + tail)
    if not text.startswith(("Via:", "From:", "To:", "Call-ID:", "CSeq:", "Max-Forwards:", "Content-")):
        text = "X-" + text if ":" in text.split(" ", 1)[0] else "X: " + text
    data = ("\r\n".join([START, *HEADERS.values(), *[text] * lines]) + "\r\n\r\n").encode("utf-8", "surrogateescape")
    assume(len(data) <= MAX_MESSAGE_SIZE)
    outcome = _outcome(parse_message, data)
    assert outcome is SIPParseError or isinstance(outcome, (Request, Response))


def _wire(*lines: str, body: bytes = b"") -> bytes:
    return ("\r\n".join([START, *HEADERS.values(), *lines]) + "\r\n\r\n").encode() + body


PARSED = "parsed"
# Each case: the input, about max_size bytes in the worst shape for one step
# of the parser, and what the caps say of it: parsed, or the code refusing it.
SIZE_CAP_CASES = {
    # Under max_size: the body is kept whole, with or without Content-Length.
    "body of 1 MiB": (_wire("Content-Length: 1048000", body=b"x" * 1048000), PARSED),
    "body without Content-Length": (_wire(body=b"\r\n" * 524000), PARSED),
    # CRLFs before the start line are skipped (RFC 3261 7.5).
    "CRLFs before the start line": (b"\r\n" * 524000 + _wire(), PARSED),
    # Continuation lines count against max_headers.
    "many continuation lines": (_wire("Subject: x" + "\r\n y" * 262000), 413),
    "blank continuation lines": (_wire("Subject: x" + "\r\n\t" * 349000), 413),
    # Unfolded, the blanks become one space: a short line.
    "long blank run before a fold": (_wire("Subject: x" + " " * 1040000 + "\r\n y"), PARSED),
    # Within max_headers lines and max_line characters each.
    "many header lines": (_wire(*["X: " + "y" * 8000] * 120), PARSED),
    "bare LF lines": (("\n".join([START, *HEADERS.values(), *["X: " + "y" * 8000] * 120]) + "\n\n").encode(), PARSED),
    # The header section ends at the first LF CR LF: no header at all.
    "LF LF only": (b"KDMQ sip:a@b SIP/2.0" + b"\n\r" * 524000, 400),
    "no blank line": (b"KDMQ sip:a@b SIP/2.0\r\n" + b"X: y\r\n" * 174000, 400),
    # Over max_line.
    "one huge line": (_wire("X: " + "y" * 1048000), 413),
    "huge start line": (_wire().replace(b"sip:htable", b"sip:" + b"a" * 1048000, 1), 413),
}


@pytest.mark.parametrize("name", sorted(SIZE_CAP_CASES))
def test_messages_at_the_size_cap(name):
    """An input of about max_size bytes in the worst shape for one parser step gets the outcome the caps say."""
    data, expected = SIZE_CAP_CASES[name]
    assert len(data) <= MAX_MESSAGE_SIZE
    try:
        outcome: object = parse_message(data)
    except SIPParseError as e:
        outcome = e.code
    assert (PARSED if isinstance(outcome, (Request, Response)) else outcome) == expected


# ---------------------------------------------------------------------------
# (d) Every fast path agrees with the general path it short-cuts
# ---------------------------------------------------------------------------


def _pieces(fragments: list[str], max_size: int = 24) -> st.SearchStrategy[str]:
    """Strings glued from ``fragments``, drawn as one byte string."""
    return st.binary(max_size=max_size).map(lambda b: "".join([fragments[x % len(fragments)] for x in b]))


URI_PIECES = ["sip:", "sips:", "SIP:", "a", "Z", "0", "1", "9", "255", "256", "127.0.0.1", "example.com", ".", "-",
              "@", ":", "5060", "65535", "65536", "99999", "0000", ";", "=", "lr", "transport=tcp", "?", "&", "h=v",
              "%", "%41", "%4", "[", "]", "::1", "_", "~", "!", "'", "(", ")", "*", "+", "$", ",", "/", " ", "<", "\u00e9"]
uri_texts = st.one_of(
    _pieces(URI_PIECES), st.tuples(st.sampled_from(["sip:", "sips:"]), _pieces(URI_PIECES)).map("".join)
)
# Near-valid SIP URIs from a few cheap draws, for the equivalence tests.
uri_samples = st.tuples(
    st.sampled_from(["sip:", "sips:", "SIP:"]),
    st.sampled_from(["", "alice@", "a.b-c@", "u:p@", "%41@", "a;b@", "@"]),
    st.sampled_from(["127.0.0.1", "h.example", "[::1]", "a-b.c", "256.1.1.1", "h.example.", "1.2.3", "-h"]),
    st.sampled_from(["", ":5060", ":65535", ":65536", ":0", ":"]),
    st.sampled_from(["", ";lr", ";transport=tcp", ";a=%41", ";a=b;c", "?h=v", ";"]),
).map("".join)
GROUPS = ("scheme", "user", "password", "host", "port", "params", "headers")


def _outcome(func: Callable, *args: object) -> object:
    """What ``func`` returns, or the SIPParseError class when it raises one."""
    try:
        return func(*args)
    except SIPParseError:
        return SIPParseError


@_examples(800)
@given(st.one_of(uri_texts, uri_samples))
def test_plain_uri_path_agrees(text):
    """match_sip_uri accepts exactly what its general path accepts, with the same parts."""
    from dmq.sip.uri import _match_sip_uri_general, match_sip_uri

    fast, general = _outcome(match_sip_uri, text), _outcome(_match_sip_uri_general, text)
    if fast is SIPParseError or general is SIPParseError:
        assert fast is general
    else:
        assert fast.group(*GROUPS) == general.group(*GROUPS)


VIA_PIECES = ["SIP/2.0/", "SIP/2.0/UDP ", "sip/2.0/", "UDP", "TCP", " ", "\t", "127.0.0.1", "h.example", "[::1]",
              ":", "5060", "70000", ";", "branch=", "z9hG4bK", "x", "=", '"q;,"', ",", ", ", "-", ".", "rport",
              "received=", "1.2.3.4", "/", "!", "%", "é"]


def _via_tuples(vias: object) -> object:
    if vias is SIPParseError:
        return vias
    return [(v.protocol, v.transport, v.host, v.port, v.params) for v in vias]  # type: ignore[attr-defined]


@_examples(800)
@given(st.one_of(_pieces(VIA_PIECES), st.lists(st.sampled_from([
    "SIP/2.0/UDP 127.0.0.1:5172;branch=z9hG4bKa", "SIP/2.0/TCP h.example;rport", "SIP/2.0/UDP [::1]:5060",
    'SIP/2.0/UDP h;x="a,b"', "SIP/2.0/UDP h:99999", "SIP/2.0/UDP h;branch=x;BRANCH=y", "SIP / 2.0 / UDP h",
    " SIP/2.0/UDP h ", "SIP/2.0/UDP h;", "", "SIP/2.0/UDP -h"]), min_size=1, max_size=4).map(",".join)))
def test_plain_via_paths_agree(value):
    """parse_vias gives what its general path gives, or both raise SIPParseError."""
    from dmq.sip.headers import _parse_vias_general, parse_vias

    assert _via_tuples(_outcome(parse_vias, value)) == _via_tuples(_outcome(_parse_vias_general, value))


BRANCH_VIA_PIECES = ["SIP/2.0/UDP ", "SIP/2.0/tcp ", "SIP/2.0/", "127.0.0.1", "H.Example", "[::1]", ":", "5060",
                     "05060", "65535", "65536", ";branch=", ";BRANCH=", "z9hG4bK", "x.1", ";rport", ";rport=1", ";",
                     "=", " ", ",", '"', "é"]


@_examples(800)
@given(st.one_of(_pieces(BRANCH_VIA_PIECES, 12), st.sampled_from([
    "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK5b8c.1", "SIP/2.0/UDP h:05060;branch=z9hG4bKa;rport",
    "SIP/2.0/UDP h;branch=a;branch=b", "SIP/2.0/UDP h;rport;branch=a", "SIP/2.0/UDP h;branch=a;received=1.2.3.4"])))
def test_plain_branch_agrees_with_the_via(value):
    """plain_branch gives the branch and sent-by of the one Via parse_vias gives, or None; never for a bad Via."""
    from dmq.sip.headers import parse_vias, plain_branch

    plain = plain_branch(value)
    vias = _outcome(parse_vias, value)
    if plain is not None:
        assert vias is not SIPParseError and len(vias) == 1
        assert plain == (vias[0].branch, vias[0].sent_by)
    elif vias is not SIPParseError and len(vias) == 1 and set(vias[0].params) == {"branch"}:
        # Only an unusual spelling of a one-branch Via goes the long way.
        assert value != f"SIP/2.0/{vias[0].transport} {vias[0].sent_by};branch={vias[0].branch}"


@_examples(600)
@given(st.one_of(
    st.builds(lambda uri, params, tag: f"<{uri}>{params}{tag}", uri_samples,
              st.sampled_from(["", ";x", ";x=y", ';x="y"']),
              st.sampled_from(["", ";tag=1", ";tag=a-b.c", ";tag=", ";tag=%", ";tag=a b", ";TAG=1", ";tag=<"])),
    st.sampled_from(["<sip:a@h;tag=1>", "<sip:a@h;tag=1>;tag=2", "sip:a@h;tag=1", '"x;tag=1" <sip:h>;tag=2'])))
def test_untagged_names_the_same_address(value):
    """Two From values that untagged maps alike name the same URI and parameters, but for the tag."""
    from dmq.sip.headers import NameAddr
    from dmq.sip.message import untagged

    head = untagged(value)
    if head is None:
        return
    other = f"{head};tag=other"
    parsed, again = _outcome(NameAddr.parse, value, "From"), _outcome(NameAddr.parse, other, "From")
    if parsed is SIPParseError:
        assert again is SIPParseError
        return
    assert again is not SIPParseError and str(parsed.uri) == str(again.uri)
    assert {k: v for k, v in parsed.params.items() if k != "tag"} == {k: v for k, v in again.params.items() if k != "tag"}
    assert again.params["tag"] == "other"


NAME_ADDR_PIECES = ["<", ">", "sip:", "sips:", "tel:+1", "a", "@", "127.0.0.1", "h.example", ":", "5060", ";",
                    "tag=", "x", "=", "lr", '"', "\\", " ", "Bob", "%41", "?", "h=v", "[::1]", ",", "é"]


def _name_addr_tuple(na: object) -> object:
    if na is SIPParseError:
        return na
    uri = na.uri  # type: ignore[attr-defined]
    parts = (uri.scheme, uri.user, uri.password, uri.host, uri.port, uri.params, uri.headers) if isinstance(
        uri, SIPURI) else uri
    return (na.display_name, parts, na.params)  # type: ignore[attr-defined]


@_examples(600)
@given(st.one_of(_pieces(NAME_ADDR_PIECES), st.builds(
    lambda uri, params: f"<{uri}>{params}", uri_samples,
    st.sampled_from(["", ";tag=1", ";tag=a-b.c", ";x", ";x=y;tag=z", "; tag=1", ';x="y"', ";tag=%"]))))
def test_plain_name_addr_path_agrees(value):
    """NameAddr.parse gives what its general path gives, or both raise SIPParseError."""
    from dmq.sip.headers import NameAddr

    assert _name_addr_tuple(_outcome(NameAddr.parse, value, "To")) == _name_addr_tuple(
        _outcome(NameAddr._parse_general, value, "To"))


START_PIECES = ["KDMQ", "INVITE", "kdmq", "%", " ", "  ", "sip:", "sips:", "tel:+1", "a", "@", "127.0.0.1", ":",
                "5060", "70000", ";lr", "?h=v", "%41", "[::1]", " SIP/2.0", " SIP/3.0", " sip/2.0", "SIP/2.0 ",
                "200", " OK", "\u00e9"]


@_examples(600)
@given(st.one_of(_pieces(START_PIECES), st.builds(lambda m, u: f"{m} {u} SIP/2.0", methods, uri_samples)))
def test_plain_request_line_path_agrees(line):
    """A request line the fast path takes gives the same method and URI by the general path."""
    from dmq.sip.parse import _PLAIN_REQUEST_LINE_RE, _parse_start_line

    m = _PLAIN_REQUEST_LINE_RE.fullmatch(line)
    if m is not None:
        general = _parse_start_line(line)
        assert isinstance(general, Request)
        assert (general.method, general._uri_text) == m.group(1, 2)
        assert str(general.uri) == str(SIPURI._from_match(m))


@_examples(400)
@given(st.builds(lambda u: f"KDMQ {u} SIP/2.0", st.one_of(uri_samples, st.sampled_from(
    ["tel:+1234", "sip:%41b@h", "sips:u@h;lr", "urn:service:sos"]))))
def test_uri_user_is_the_built_uris_user(line):
    """Request.uri_user, read off the parse, is the user of the URI built from it (None for another scheme)."""
    from dmq.sip.parse import parse_message

    data = f"{line}\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKx\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:b@h>\r\n" \
           "Call-ID: c\r\nCSeq: 1 KDMQ\r\nContent-Length: 0\r\n\r\n"
    request = _outcome(parse_message, data.encode())
    if request is SIPParseError:
        return
    read_off = request.uri_user
    uri = request.uri
    assert read_off == (uri.user if isinstance(uri, SIPURI) else None)
    assert request.uri_user == read_off  # and the same once the URI is built
    request.uri = SIPURI("h", user="other")
    assert request.uri_user == "other"


CSEQ_PIECES = ["0", "1", "9", "4294967295", "4294967296", "0000000000", " ", "\t", "KDMQ", "kdmq", "INVITE", "-",
               "+", "\u0661", "x"]


@_examples(600)
@given(_pieces(CSEQ_PIECES, 6), _pieces(["0", "1", "2", "5", "9", "25", "255", "256", "+", "-", " ", "\u0661"], 4))
def test_cseq_and_max_forwards_rules(cseq, max_forwards):
    """CSeq and Max-Forwards are accepted exactly as their grammar and ranges say."""
    import re

    cseq, max_forwards = cseq.strip(" \t"), max_forwards.strip(" \t")
    m = re.fullmatch(r"([0-9]{1,10})[ \t]+([A-Za-z0-9\-.!%*_+`'~]+)", cseq)
    cseq_ok = m is not None and m.group(2) == "KDMQ" and int(m.group(1)) <= 0xFFFFFFFF
    mf_ok = re.fullmatch(r"[0-9]+", max_forwards) is not None and int(max_forwards) <= 255
    headers = dict(HEADERS, cseq=f"CSeq: {cseq}", **{"max-forwards": f"Max-Forwards: {max_forwards}"})
    data = ("\r\n".join([START, *headers.values()]) + "\r\n\r\n").encode()
    result = _outcome(parse_message, data)
    assert (result is not SIPParseError) == (cseq_ok and mf_ok)
    if result is not SIPParseError:
        assert result.cseq == (int(m.group(1)), "KDMQ")
        assert result.max_forwards == int(max_forwards)
