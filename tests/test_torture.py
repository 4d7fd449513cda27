"""Torture tests for the SIP codec: the messages of RFC 4475 and RFC 5118.

The messages live in ``tests/data/torture/`` exactly as the RFCs' bit-exact
archives (Appendix A of each RFC) hold them; ``SHA256SUMS`` there pins every
byte.  ``EXPECTED`` below says, per message, whether ``parse_message`` must
reject it with ``SIPParseError`` or accept it, and for accepted ones which
fields must come out how.

Two things about the archives, both documented in the data README:

* RFC 4475's archive holds one file no section of the RFC describes,
  ``test.dat``.  It is kept (it is part of the archive) and must be rejected.
* RFC 5118's archive is not wire format: its lines end in a bare LF, the two
  section 4.10 messages lack the empty line that ends the header section, and
  two of the three bodies disagree with their Content-Length.  ``_wire_5118``
  turns each file into the message it describes (CRLF line ends, header
  section closed, Content-Length counted from the body) and changes nothing
  else, so these tests are about IPv6 and not about how the archive was made.
"""

from __future__ import annotations

import hashlib
import random
import re
from pathlib import Path
from collections.abc import Callable
from typing import Union
from urllib.parse import unquote

import pytest

from dmq.sip import SIPURI, Request, Response, SIPParseError, parse_message

DATA = Path(__file__).parent / "data" / "torture"


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------


def _raw(key: str) -> bytes:
    """The archived bytes of message ``key`` ("rfc4475/wsinv")."""
    return (DATA / f"{key}.dat").read_bytes()


def _wire_5118(raw: bytes) -> bytes:
    """An RFC 5118 archive file as the datagram it describes (see module doc)."""
    data = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if b"\r\n\r\n" not in data:
        data += b"\r\n"
    head, _, body = data.partition(b"\r\n\r\n")
    lines = []
    for line in head.split(b"\r\n"):
        name = line.split(b":", 1)[0].strip().lower()
        if b":" in line and name in (b"content-length", b"l"):
            line = line.split(b":", 1)[0] + b": " + str(len(body)).encode()
        lines.append(line)
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def _wire(key: str) -> bytes:
    """The datagram handed to the parser for message ``key``."""
    raw = _raw(key)
    return _wire_5118(raw) if key.startswith("rfc5118/") else raw


def _body_of(key: str) -> bytes:
    """Everything after the first empty line of the datagram for ``key``."""
    return _wire(key).split(b"\r\n\r\n", 1)[1]


def _header_names(data: bytes) -> list[str]:
    """Distinct header names of a datagram's header section, first-seen order."""
    head = data.split(b"\r\n\r\n", 1)[0]
    names: list[str] = []
    seen: set[str] = set()
    for line in head.split(b"\r\n")[1:]:
        if not line or line[:1] in (b" ", b"\t") or b":" not in line:
            continue
        name = line.split(b":", 1)[0].strip().decode("latin-1")
        if name.lower() not in seen:
            seen.add(name.lower())
            names.append(name)
    return names


# ---------------------------------------------------------------------------
# Helpers for the checkers
# ---------------------------------------------------------------------------


def _req(m: object) -> Request:
    assert isinstance(m, Request), f"expected a Request, got {type(m).__name__}"
    return m


def _resp(m: object) -> Response:
    assert isinstance(m, Response), f"expected a Response, got {type(m).__name__}"
    return m


def _sip(uri: object) -> SIPURI:
    assert isinstance(uri, SIPURI), f"expected a SIPURI, got {uri!r}"
    return uri


def _user(uri: object) -> str | None:
    """The user part of a SIP URI with %HH escapes expanded (raw or decoded both fine)."""
    user = _sip(uri).user
    return None if user is None else unquote(user)


def _dn(name_addr: object) -> str | None:
    """A display name without its quotes and quoted-pair escapes (either form accepted)."""
    dn = name_addr.display_name  # type: ignore[attr-defined]
    if dn is not None and len(dn) >= 2 and dn[0] == '"' and dn[-1] == '"':
        dn = re.sub(r"\\(.)", r"\1", dn[1:-1], flags=re.S)
    return dn


def _sdp_ok(m: object, key: str, length: int) -> None:
    """The message carries the datagram's SDP body of ``length`` octets."""
    assert m.content_type == "application/sdp"  # type: ignore[attr-defined]
    assert m.content_length == length  # type: ignore[attr-defined]
    assert m.body == _body_of(key)[:length]  # type: ignore[attr-defined]
    assert len(m.body) == length  # type: ignore[attr-defined]
    assert m.body.startswith(b"v=0\r\n")  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------
# Checkers for accepted messages, RFC 4475
# ---------------------------------------------------------------------------


def _wsinv(m: object) -> None:
    r = _req(m)
    assert r.method == "INVITE"
    u = _sip(r.uri)
    assert (u.scheme, _user(u), u.host, u.port) == ("sip", "vivekg", "chair-dnrc.example.com", None)
    assert "unknownparam" in u.params
    assert r.call_id == "wsinv.ndaksdj@192.0.2.1"
    assert r.cseq == (9, "INVITE")  # "0009" folded onto "INVITE"
    assert r.max_forwards == 68  # "0068"
    # "Via" (folded, LWS around the slashes) then "v" with two comma-separated values
    assert [(v.transport, v.host, v.port, v.branch) for v in r.vias] == [
        ("UDP", "192.0.2.2", None, "390skdjuw"),
        ("TCP", "spindle.example.com", None, "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", None, "z9hG4bK30239"),
    ]
    assert _dn(r.to) is None
    assert (_user(r.to.uri), r.to.uri.host, r.to.tag) == ("vivekg", "chair-dnrc.example.com", "1918181833n")
    assert _dn(r.from_) == 'J Rosenberg \\"'
    assert (_user(r.from_.uri), r.from_.uri.host, r.from_.tag) == ("jdrosen", "example.com", "98asjd8")
    assert r.headers.get("Subject") == ""  # "s :" with an empty value
    assert " ".join(r.headers.get("NewFangledHeader").split()) == "newfangled value continued newfangled value"
    assert r.headers.get("UnknownHeaderWithUnusualValue") == ";;,,;;,;"
    assert r.headers.get("route") is not None
    assert r.headers.get("m") is not None and r.headers.get("Contact") == r.headers.get("m")
    _sdp_ok(r, "rfc4475/wsinv", 150)


INTMETH = "!interesting-Method0123456789_*+`.%indeed'~"
INTMETH_USER = "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"


def _intmeth(m: object) -> None:
    r = _req(m)
    assert r.method == INTMETH  # % is no escape in a method
    assert r.cseq == (139122385, INTMETH)
    u = _sip(r.uri)
    assert _user(u) == INTMETH_USER  # userinfo holds ? / ; , : which must not split the URI
    assert u.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    assert (u.host, u.port, u.params, u.headers) == ("example.com", None, {}, {})
    assert [(v.transport, v.host, v.branch) for v in r.vias] == [("TCP", "host1.example.com", "z9hG4bK-.!%66*_+`'~")]
    assert _dn(r.to) == "BEL:\x07 NUL:\x00 DEL:\x7f"  # quoted-pairs of control characters
    assert (_user(r.to.uri), r.to.uri.host) == (INTMETH_USER, "example.com")
    assert _dn(r.from_) == "token1~` token2'+_ token3*%!.-"  # several tokens, unquoted
    assert r.from_.tag == "_token~1'+`*%!-."
    assert "fromparam''~+*_!.-%" in r.from_.params
    assert r.call_id == "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"
    assert r.max_forwards == 255
    assert r.headers.get("extensionHeader-!.%*+_`'~") is not None
    assert (r.content_length, r.body) == (0, b"")


def _esc01(m: object) -> None:
    r = _req(m)
    assert r.method == "INVITE"
    assert (_user(r.uri), r.uri.host) == ("sips:user@example.com", "example.net")
    assert _user(r.to.uri) == "user"  # %75se%72
    assert _user(r.from_.uri) == "I have spaces"
    assert r.from_.tag == "938"
    assert r.call_id == "esc01.239409asdfakjkn23onasd0-3234"  # compact "i"
    assert r.max_forwards == 87
    assert r.headers.get("Contact") is not None
    _sdp_ok(r, "rfc4475/esc01", 150)  # compact "C" for Content-Type


def _escnull(m: object) -> None:
    r = _req(m)
    assert r.method == "REGISTER"
    assert _user(r.to.uri) == "null-\x00-null"
    assert _user(r.from_.uri) == "null-\x00-null"
    assert r.from_.tag == "839923423"
    assert r.cseq == (14398234, "REGISTER")
    assert len(r.headers.getall("Contact")) == 2
    assert (r.content_length, r.body) == (0, b"")  # "L:0"


def _esc02(m: object) -> None:
    r = _req(m)
    assert r.method == "RE%47IST%45R"  # not REGISTER
    assert r.cseq == (29344, "RE%47IST%45R")
    assert _dn(r.to) == "%Z%45" and _dn(r.from_) == "%Z%45"
    assert r.from_.tag == "f232jadfj23"
    assert [(v.transport, v.branch) for v in r.vias] == [("TCP", "z9hG4bK209%fzsnel234")]
    assert len(r.headers.getall("Contact")) == 2  # two Contacts, not three
    assert r.headers.getall("C%6Fntact") == ["<sip:alias2@host2.example.com>"]
    assert (r.content_length, r.body) == (0, b"")


def _lwsdisp(m: object) -> None:
    r = _req(m)
    assert r.method == "OPTIONS"
    assert _dn(r.from_) == "caller"  # no LWS between display name and <
    assert (_user(r.from_.uri), r.from_.uri.host, r.from_.tag) == ("caller", "example.com", "323")
    assert _dn(r.to) is None


def _longreq(m: object) -> None:
    r = _req(m)
    assert r.method == "INVITE"
    assert _dn(r.to) == "I have a user name of " + "extreme" * 10 + " proportion"
    to_uri = _sip(r.to.uri)
    assert (to_uri.host, to_uri.port) == ("example.com", 6000)
    assert to_uri.params["unknownparam1"] == "very" + "long" * 20 + "value"
    assert to_uri.params["longparam" + "name" * 25] == "shortvalue"
    assert ("very" + "long" * 25 + "ParameterNameWithNoValue").lower() in to_uri.params
    assert r.to.tag is None
    assert (_user(r.from_.uri), r.from_.uri.host) == ("amazinglylongcallername" * 5, "example.net")
    assert r.from_.tag == "12" + "982" * 50 + "424"
    assert r.from_.params["unknownheaderparam" + "name" * 20] == "unknowheaderparam" + "value" * 15
    assert ("unknownValueless" + "paramname" * 10).lower() in r.from_.params
    assert r.call_id == "longreq.one" + "really" * 20 + "longcallid"
    assert r.cseq == (3882340, "INVITE")
    long_name = "Unknown-" + "Long" * 20 + "-Name"
    long = "long" * 20
    assert r.headers.get(long_name) == (
        f"unknown-{long}-value; unknown-{long}-parameter-name = unknown-{long}-parameter-value"
    )
    # 33 Via lines in every spelling (Via, v, V, ViA, "V  :", ...) plus one with a long branch
    assert len(r.vias) == 34
    assert [v.host for v in r.vias[:33]] == [f"sip{n}.example.com" for n in range(33, 0, -1)]
    assert all(v.transport == "TCP" and v.branch is None for v in r.vias[:33])
    last = r.vias[33]
    assert (last.host, last.params["received"]) == ("host.example.com", "192.0.2.5")
    assert last.branch == "very" + "long" * 50 + "branchvalue"
    assert r.max_forwards == 70
    assert r.headers.get("Contact") == "<sip:" + "amazinglylongcallername" * 5 + "@host5.example.net>"
    _sdp_ok(r, "rfc4475/longreq", 150)  # compact "l"


def _dblreq(m: object) -> None:
    r = _req(m)
    assert r.method == "REGISTER"  # only the first message of the datagram
    assert r.call_id == "dblreq.0ha0isndaksdj99sdfafnl3lk233412"  # compact "I"
    assert r.cseq == (8, "REGISTER")
    assert r.max_forwards == 8
    assert [v.branch for v in r.vias] == ["z9hG4bKkdjuw23492"]
    assert (r.content_length, r.body) == (0, b"")  # the trailing INVITE is noise
    assert b"INVITE" not in r.to_bytes()


def _semiuri(m: object) -> None:
    r = _req(m)
    u = _sip(r.uri)
    assert _user(u) == "user;par=u@example.net"  # the ; belongs to the user part
    assert (u.host, u.port, u.params) == ("example.com", None, {})
    assert r.max_forwards == 3
    assert r.headers.get("Accept") is not None  # folded over three lines


def _transports(m: object) -> None:
    r = _req(m)
    assert [(v.transport, v.host) for v in r.vias] == [
        ("UDP", "t1.example.com"),
        ("SCTP", "t2.example.com"),
        ("TLS", "t3.example.com"),
        ("UNKNOWN", "t4.example.com"),
        ("TCP", "t5.example.com"),
    ]
    assert r.call_id == "transports.kijh4akdnaqjkwendsasfdj"


def _mpart01(m: object) -> None:
    r = _req(m)
    assert r.method == "MESSAGE"
    assert (_user(r.uri), r.uri.host) == ("kumiko", "example.org")
    v = r.vias[0]
    assert (v.transport, v.host, v.port) == ("UDP", "127.0.0.1", 5070)
    assert v.branch == "z9hG4bK-d87543-4dade06d0bdb11ee-1--d87543-"
    assert "rport" in v.params
    assert r.cseq == (1, "MESSAGE")
    assert r.call_id == "3d9485ad0c49859b@Zmx1ZmZ5LW1hYy0xNi5sb2NhbA.."
    assert r.content_type is not None and r.content_type.lower().startswith("multipart/mixed")
    assert r.content_length == 553
    assert r.body == _body_of("rfc4475/mpart01")  # binary part with NULs and bare LFs
    assert len(r.body) == 553 and b"\x00" in r.body
    assert r.body.endswith(b"--7a9cbec02ceef655--\r\n")


def _unreason(m: object) -> None:
    r = _resp(m)
    assert r.code == 200
    status_line = _raw("rfc4475/unreason").split(b"\r\n", 1)[0]
    assert r.reason == status_line[len(b"SIP/2.0 200 "):].decode("utf-8")  # non-ASCII UTF-8
    assert r.reason.startswith("= 2**3 * 5**2 ")
    assert r.call_id == "unreason.1234ksdfak3j2erwedfsASdf"
    assert r.cseq == (35, "INVITE")
    assert (r.from_.tag, r.to.tag) == ("11141343", "2229")
    assert r.max_forwards is None
    _sdp_ok(r, "rfc4475/unreason", 154)


def _noreason(m: object) -> None:
    r = _resp(m)
    assert (r.code, r.reason) == (100, "")
    assert r.cseq == (35, "INVITE")
    assert (r.from_.tag, r.to.tag) == ("39ansfi3", "902jndnke3")
    assert r.body == b""


def _baddate(m: object) -> None:
    r = _req(m)
    assert r.headers.get("Date") == "Fri, 01 Jan 2010 16:00:00 EST"  # carried, not judged
    _sdp_ok(r, "rfc4475/baddate", 150)


def _regbadct(m: object) -> None:
    r = _req(m)
    assert r.method == "REGISTER"
    assert r.headers.get("Contact") == "sip:user@example.com?Route=%3Csip:sip.example.com%3E"


def _badbranch(m: object) -> None:
    r = _req(m)
    assert [v.branch for v in r.vias] == ["z9hG4bK"]  # magic cookie with nothing after it
    assert r.cseq == (8, "OPTIONS")


def _unkscm(m: object) -> None:
    r = _req(m)
    assert not isinstance(r.uri, SIPURI)
    assert str(r.uri) == "nobodyKnowsThisScheme:totallyopaquecontent"
    assert r.max_forwards == 3


def _novelsc(m: object) -> None:
    r = _req(m)
    assert not isinstance(r.uri, SIPURI)
    assert str(r.uri) == "soap.beep://192.0.2.103:3002"


def _unksm2(m: object) -> None:
    r = _req(m)
    assert r.method == "REGISTER"
    assert not isinstance(r.to.uri, SIPURI) and str(r.to.uri) == "isbn:2983792873"
    assert r.to.tag is None
    assert not isinstance(r.from_.uri, SIPURI) and str(r.from_.uri) == "http://www.example.com"
    assert r.from_.tag == "3234233"
    assert r.headers.get("Contact") == "<name:John_Smith>"


def _bext01(m: object) -> None:
    r = _req(m)
    assert "nothingSupportsThisEither" in ",".join(r.headers.getall("Require"))
    assert "norDoAnyProxiesSupportThis" in ",".join(r.headers.getall("Proxy-Require"))
    assert [(v.transport, v.host) for v in r.vias] == [("TLS", "fold-and-staple.example.com")]


def _invut(m: object) -> None:
    r = _req(m)
    assert r.content_type == "application/unknownformat"
    assert r.content_length == 40
    assert r.body == b'<audio>\r\n <pcmu port="443"/>\r\n</audio>\r\n'


def _regaut01(m: object) -> None:
    r = _req(m)
    assert r.headers.get("Authorization") == "NoOneKnowsThisScheme opaque-data=here"
    assert (r.content_length, r.body) == (0, b"")  # "Content-Length:0", no space


def _bcast(m: object) -> None:
    r = _resp(m)
    assert (r.code, r.reason) == (200, "OK")
    assert [(v.host, v.branch) for v in r.vias] == [
        ("192.0.2.198", "z9hG4bK1324923"),
        ("255.255.255.255", "z9hG4bK1saber23"),
    ]
    _sdp_ok(r, "rfc4475/bcast", 154)


def _zeromf(m: object) -> None:
    r = _req(m)
    assert r.max_forwards == 0
    assert r.cseq == (39234321, "OPTIONS")


def _cparam01(m: object) -> None:
    r = _req(m)
    assert r.headers.get("Contact") == "sip:+19725552222@gw1.example.net;unknownparam"
    assert r.from_.tag == "DkfVgjkrtMwaerKKpe"


def _cparam02(m: object) -> None:
    r = _req(m)
    assert r.headers.get("Contact") == "<sip:+19725552222@gw1.example.net;unknownparam>"
    assert r.from_.tag == "838293"


def _regescrt(m: object) -> None:
    r = _req(m)
    assert r.headers.get("Contact") == "<sip:user@example.com?Route=%3Csip:sip.example.com%3E>"  # "M:"
    assert (r.content_length, r.body) == (0, b"")  # "L:0"


def _sdp01(m: object) -> None:
    r = _req(m)
    assert r.headers.get("Accept") == "text/nobodyKnowsThis"
    _sdp_ok(r, "rfc4475/sdp01", 150)


def _inv2543(m: object) -> None:
    r = _req(m)
    assert r.method == "INVITE"
    assert r.body == _body_of("rfc4475/inv2543")  # no Content-Length: rest of the datagram
    assert len(r.body) == 105
    assert r.max_forwards is None
    assert [(v.host, v.branch) for v in r.vias] == [("iftgw.example.com", None)]
    assert r.from_.tag is None
    assert _user(r.from_.uri) == "+13035551111"
    assert r.from_.uri.params.get("user") == "phone"  # inside <>: a URI parameter
    assert r.to.tag is None
    assert (_user(r.to.uri), r.to.uri.host) == ("+16505552222", "ss1.example.net")
    assert r.to.params.get("user") == "phone"  # addr-spec form: a header parameter
    assert "user" not in r.to.uri.params
    assert r.cseq == (56, "INVITE")
    assert r.call_id == "inv2543.1717@ift.client.example.com"


# ---------------------------------------------------------------------------
# Checkers for accepted messages, RFC 5118
# ---------------------------------------------------------------------------


def _ipv6_good(m: object) -> None:
    r = _req(m)
    u = _sip(r.uri)
    assert (u.user, u.host, u.port) == (None, "[2001:db8::10]", None)
    assert [(v.host, v.port, v.branch) for v in r.vias] == [("[2001:db8::9:1]", None, "z9hG4bKas3-111")]
    assert r.headers.get("Contact") == '"Caller" <sip:caller@[2001:db8::1]>'
    assert r.cseq == (98176, "REGISTER")


def _port_ambiguous(m: object) -> None:
    u = _sip(_req(m).uri)
    assert (u.host, u.port) == ("[2001:db8::10:5070]", None)  # 5070 is inside the brackets


def _port_unambiguous(m: object) -> None:
    u = _sip(_req(m).uri)
    assert (u.host, u.port) == ("[2001:db8::10]", 5070)


def _via_received_with_delim(m: object) -> None:
    r = _req(m)
    assert r.method == "BYE"
    v = r.vias[0]
    assert (v.host, v.port, v.branch) == ("[2001:db8::9:1]", None, "z9hG4bKas3-111")
    assert v.params["received"] in ("[2001:db8::9:255]", "2001:db8::9:255")
    assert r.to.tag == "bd76ya"


def _via_received_no_delim(m: object) -> None:
    r = _req(m)
    assert _sip(r.uri).host == "[2001:db8::10]"
    v = r.vias[0]
    assert (v.host, v.port) == ("[2001:db8::9:1]", None)
    assert v.params["received"] == "2001:db8::9:255"
    assert v.branch == "z9hG4bKas3"  # the colons of the bare address did not end the params


def _ipv6_in_sdp(m: object) -> None:
    r = _req(m)
    u = _sip(r.uri)
    assert (u.user, u.host, u.port) == ("user", "[2001:db8::10]", None)
    assert _sip(r.to.uri).host == "[2001:db8::10]"
    assert [v.host for v in r.vias] == ["[2001:db8::20]"]
    _sdp_ok(r, "rfc5118/ipv6-in-sdp", len(_body_of("rfc5118/ipv6-in-sdp")))
    assert b"c=IN IP6 2001:db8::20\r\n" in r.body


def _mult_ip_in_header(m: object) -> None:
    r = _req(m)
    assert r.method == "BYE"
    assert [(v.transport, v.host, v.port) for v in r.vias] == [
        ("UDP", "[2001:db8::9:1]", 6050),
        ("UDP", "192.0.2.1", None),
        ("TCP", "[2001:db8::9:255]", None),
    ]
    assert r.vias[2].branch == "z9hG4bK451jj"
    assert r.vias[2].params["received"] == "192.0.2.200"
    assert r.to.tag == "9817--94"


def _mult_ip_in_sdp(m: object) -> None:
    r = _req(m)
    assert _sip(r.uri).host == "[2001:db8::10]"
    assert r.headers.get("Contact") == '"Caller" <sip:caller@[2001:db8::9:1]>'
    _sdp_ok(r, "rfc5118/mult-ip-in-sdp", len(_body_of("rfc5118/mult-ip-in-sdp")))
    assert b"c=IN IP4 192.0.2.1\r\n" in r.body and b"c=IN IP6 2001:db8::1\r\n" in r.body


def _ipv4_mapped_ipv6(m: object) -> None:
    r = _req(m)
    assert [(v.host, v.port) for v in r.vias] == [("[::ffff:192.0.2.10]", 19823), ("[::ffff:192.0.2.2]", None)]
    assert r.headers.get("Contact") == '"T. desk phone" <sip:ted@[::ffff:192.0.2.2]>'
    _sdp_ok(r, "rfc5118/ipv4-mapped-ipv6", len(_body_of("rfc5118/ipv4-mapped-ipv6")))
    assert b"c=IN IP6 ::ffff:192.0.2.2\r\n" in r.body


def _ipv6_abnf_3_colons(m: object) -> None:
    r = _req(m)
    hosts = ("[2001:db8:::192.0.2.1]", "[2001:db8::192.0.2.1]")  # kept as sent, or corrected
    u = _sip(r.uri)
    assert (_user(u), u.host.lower(), u.port) in [("user", h, None) for h in hosts]
    assert _sip(r.to.uri).host.lower() in hosts
    assert r.cseq == (689, "OPTIONS")


def _ipv6_abnf_2_colons(m: object) -> None:
    r = _req(m)
    u = _sip(r.uri)
    assert (_user(u), u.host, u.port) == ("user", "[2001:db8::192.0.2.1]", None)
    assert _sip(r.to.uri).host == "[2001:db8::192.0.2.1]"
    assert r.cseq == (689, "OPTIONS")


# ---------------------------------------------------------------------------
# The verdicts.  name -> ("reject", why) or ("accept", checker)
# ---------------------------------------------------------------------------

Verdict = tuple[str, Union[str, Callable[[object], None]]]

EXPECTED: dict[str, Verdict] = {
    # --- RFC 4475 3.1.1: valid messages ------------------------------------
    # 3.1.1.1 folding everywhere, LWS around ":" ";" "=" "/", compact and odd-case
    # names, leading zeros, empty Subject, unknown header with a ";;,,;;,;" value.
    "rfc4475/wsinv": ("accept", _wsinv),
    # 3.1.1.2 every token character in method/branch/tag, quoted NUL/BEL/DEL,
    # ?/;, in the URI user part, UTF-8 in an extension header. Unknown method is fine.
    "rfc4475/intmeth": ("accept", _intmeth),
    # 3.1.1.3 valid %HH escapes in the Request-URI, To, From and Contact URIs.
    "rfc4475/esc01": ("accept", _esc01),
    # 3.1.1.4 %00 in URI user parts must not truncate anything.
    "rfc4475/escnull": ("accept", _escnull),
    # 3.1.1.5 % that is not an escape: method RE%47IST%45R, header C%6Fntact.
    "rfc4475/esc02": ("accept", _esc02),
    # 3.1.1.6 no LWS between display name and "<": RFC says accept (3261 grammar bug).
    "rfc4475/lwsdisp": ("accept", _lwsdisp),
    # 3.1.1.7 very long display name, params, tag, Call-ID, branch; 34 Vias.
    "rfc4475/longreq": ("accept", _longreq),
    # 3.1.1.8 a UDP datagram with an INVITE after the REGISTER: noise, ignored.
    "rfc4475/dblreq": ("accept", _dblreq),
    # 3.1.1.9 ";par=u%40example.net" is part of the Request-URI's user.
    "rfc4475/semiuri": ("accept", _semiuri),
    # 3.1.1.10 Via transports UDP, SCTP, TLS, UNKNOWN, TCP.
    "rfc4475/transports": ("accept", _transports),
    # 3.1.1.11 multipart body with NULs and bare LFs: framed by Content-Length.
    "rfc4475/mpart01": ("accept", _mpart01),
    # 3.1.1.12 reason phrase with non-ASCII UTF-8.
    "rfc4475/unreason": ("accept", _unreason),
    # 3.1.1.13 empty reason phrase ("SIP/2.0 100 ").
    "rfc4475/noreason": ("accept", _noreason),
    # --- RFC 4475 3.1.2: invalid messages ----------------------------------
    # 3.1.2.1
    "rfc4475/badinv01": ("reject", "Via value with empty params and values: 192.0.2.15;;,;,,"),
    # 3.1.2.2
    "rfc4475/clerr": ("reject", "Content-Length 9999 larger than the datagram's body"),
    # 3.1.2.3
    "rfc4475/ncl": ("reject", "negative Content-Length"),
    # 3.1.2.4
    "rfc4475/scalar02": ("reject", "CSeq number > 2**32-1 (and Max-Forwards 300)"),
    # 3.1.2.5: a response, but the CSeq rule is the same
    "rfc4475/scalarlg": ("reject", "CSeq number > 2**32-1 in a response"),
    # 3.1.2.6
    "rfc4475/quotbal": ("reject", "unterminated quoted display name in To"),
    # 3.1.2.7
    "rfc4475/ltgtruri": ("reject", "Request-URI enclosed in <>"),
    # 3.1.2.8
    "rfc4475/lwsruri": ("reject", "LWS inside the Request-URI"),
    # 3.1.2.9
    "rfc4475/lwsstart": ("reject", "double SP between Request-Line elements"),
    # 3.1.2.10
    "rfc4475/trws": ("reject", "SP after SIP/2.0 in the Request-Line"),
    # 3.1.2.11: RFC 3261 19.1.1 Table 1 forbids headers in a Request-URI
    "rfc4475/escruri": ("reject", "escaped headers (?Route=...) in the Request-URI"),
    # 3.1.2.12: invalid only in the Date value, which the codec does not interpret;
    # the RFC itself says not to reject unless Date matters to the element.
    "rfc4475/baddate": ("accept", _baddate),
    # 3.1.2.13: the defect is in Contact (addr-spec with ?headers but no <>); Contact
    # is not interpreted by the codec, so it is carried unchanged.
    "rfc4475/regbadct": ("accept", _regbadct),
    # 3.1.2.14
    "rfc4475/badaspec": ("reject", "spaces inside <> of the To addr-spec"),
    # 3.1.2.15 (the file also lacks the empty line ending the headers)
    "rfc4475/baddn": ("reject", "unquoted display names with non-token characters (comma)"),
    # 3.1.2.16
    "rfc4475/badvers": ("reject", "SIP/7.0: only SIP/2.0 is accepted"),
    # 3.1.2.17
    "rfc4475/mismatch01": ("reject", "CSeq method INVITE differs from request method OPTIONS"),
    # 3.1.2.18
    "rfc4475/mismatch02": ("reject", "CSeq method INVITE differs from request method NEWMETHOD"),
    # 3.1.2.19
    "rfc4475/bigcode": ("reject", "status code 4294967301 outside 100-699"),
    # --- RFC 4475 3.2 / 3.3 / 3.4: semantics -------------------------------
    # 3.2.1 branch is just the magic cookie: transaction-layer matter, parses fine.
    "rfc4475/badbranch": ("accept", _badbranch),
    # 3.3.1
    "rfc4475/insuf": ("reject", "mandatory Call-ID, From and To missing"),
    # 3.3.2 unknown Request-URI scheme: a 416 is the application's call.
    "rfc4475/unkscm": ("accept", _unkscm),
    # 3.3.3 registered but atypical scheme (soap.beep).
    "rfc4475/novelsc": ("accept", _novelsc),
    # 3.3.4 isbn:/http:/name: URIs in To, From, Contact.
    "rfc4475/unksm2": ("accept", _unksm2),
    # 3.3.5 unsupported Require/Proxy-Require: a 420 is the application's call.
    "rfc4475/bext01": ("accept", _bext01),
    # 3.3.6 unknown Content-Type: a 415 is the application's call.
    "rfc4475/invut": ("accept", _invut),
    # 3.3.7 unknown Authorization scheme: Authorization is not interpreted.
    "rfc4475/regaut01": ("accept", _regaut01),
    # 3.3.8
    "rfc4475/multi01": ("reject", "Call-ID, CSeq, To, From and Max-Forwards each twice"),
    # 3.3.9
    "rfc4475/mcl01": ("reject", "two conflicting Content-Length headers"),
    # 3.3.10 broadcast address in a Via of a response: dropping it is the proxy's job.
    "rfc4475/bcast": ("accept", _bcast),
    # 3.3.11 Max-Forwards 0 is legal; a 483 is the proxy's call.
    "rfc4475/zeromf": ("accept", _zeromf),
    # 3.3.12 contact-param on an addr-spec Contact (Contact is not interpreted).
    "rfc4475/cparam01": ("accept", _cparam01),
    # 3.3.13 url-parameter inside <> in Contact.
    "rfc4475/cparam02": ("accept", _cparam02),
    # 3.3.14 escaped header inside <> in Contact (compact "M").
    "rfc4475/regescrt": ("accept", _regescrt),
    # 3.3.15 Accept without application/sdp: a 406 is the application's call.
    "rfc4475/sdp01": ("accept", _sdp01),
    # 3.4.1 RFC 2543 style: no branch, no From tag, no Max-Forwards, no Content-Length.
    "rfc4475/inv2543": ("accept", _inv2543),
    # In the archive but in no section: "INVITE sip:alan@jasomi.com" has no SIP-Version
    # (and there is no Via or CSeq).
    "rfc4475/test": ("reject", "Request-Line without SIP-Version; no Via, no CSeq"),
    # --- RFC 5118 (IPv6) ---------------------------------------------------
    # 4.1 IPv6 references in Request-URI, Via and Contact.
    "rfc5118/ipv6-good": ("accept", _ipv6_good),
    # 4.2 the only invalid one: "sip:2001:db8::10" without [] in the Request-URI.
    "rfc5118/ipv6-bad": ("reject", "IPv6 address without [] in the Request-URI"),
    # 4.3 [2001:db8::10:5070] is one address and no port: well-formed.
    "rfc5118/port-ambiguous": ("accept", _port_ambiguous),
    # 4.4 [2001:db8::10]:5070 is address plus port.
    "rfc5118/port-unambiguous": ("accept", _port_unambiguous),
    # 4.5 received=[...] is outside 3261's grammar, but RFC 5118 says accept both forms.
    "rfc5118/via-received-param-with-delim": ("accept", _via_received_with_delim),
    # 4.5 received=2001:db8::9:255, as 3261's grammar has it.
    "rfc5118/via-received-param-no-delim": ("accept", _via_received_no_delim),
    # 4.6 IPv6 in the SDP body (the body is opaque to the codec).
    "rfc5118/ipv6-in-sdp": ("accept", _ipv6_in_sdp),
    # 4.7 IPv6 and IPv4 Vias mixed, port after "]".
    "rfc5118/mult-ip-in-header": ("accept", _mult_ip_in_header),
    # 4.8 IPv4 and IPv6 c= lines in one SDP body.
    "rfc5118/mult-ip-in-sdp": ("accept", _mult_ip_in_sdp),
    # 4.9 IPv4-mapped IPv6 addresses in Via, Contact and SDP.
    "rfc5118/ipv4-mapped-ipv6": ("accept", _ipv4_mapped_ipv6),
    # 4.10 "[2001:db8:::192.0.2.1]": 3261's ABNF bug; RFC 5118 says "must tolerate".
    "rfc5118/ipv6-bug-abnf-3-colons": ("accept", _ipv6_abnf_3_colons),
    # 4.10 the correct two-colon form.
    "rfc5118/ipv6-correct-abnf-2-colons": ("accept", _ipv6_abnf_2_colons),
}

ALL = sorted(EXPECTED)
ACCEPTED = [k for k in ALL if EXPECTED[k][0] == "accept"]
REJECTED = [k for k in ALL if EXPECTED[k][0] == "reject"]


# ---------------------------------------------------------------------------
# The data
# ---------------------------------------------------------------------------


def test_every_file_has_a_verdict_and_every_verdict_a_file():
    """The table covers exactly the .dat files on disk, 50 + 12 of them."""
    on_disk = sorted(f"{p.parent.name}/{p.stem}" for p in DATA.glob("rfc*/*.dat"))
    assert on_disk == ALL
    assert sum(k.startswith("rfc4475/") for k in ALL) == 50
    assert sum(k.startswith("rfc5118/") for k in ALL) == 12
    assert all(v[0] in ("accept", "reject") for v in EXPECTED.values())


def test_data_files_are_byte_exact():
    """Every .dat file still has the SHA-256 recorded when it left the RFC archive."""
    sums = {}
    for line in (DATA / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        sums[name.lstrip("*")] = digest
    assert sorted(sums) == sorted(f"{k}.dat" for k in ALL)
    for name, digest in sums.items():
        assert hashlib.sha256((DATA / name).read_bytes()).hexdigest() == digest, name


def test_archive_line_endings():
    """RFC 4475 files are CRLF (mpart01's binary part aside); RFC 5118's are bare LF."""
    for key in ALL:
        raw = _raw(key)
        if key.startswith("rfc5118/"):
            assert b"\r" not in raw, key
            assert _wire(key).count(b"\r\n") == raw.count(b"\n") + (b"\n\n" not in raw), key
        elif key != "rfc4475/mpart01":
            assert b"\n" not in raw.replace(b"\r\n", b""), key


def test_sip_parse_error_is_a_value_error():
    """SIPParseError is the ValueError subclass the callers catch."""
    assert issubclass(SIPParseError, ValueError)


# ---------------------------------------------------------------------------
# Verdicts
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("key", REJECTED)
def test_rejected(key):
    """Each message the table rejects raises SIPParseError and nothing else."""
    with pytest.raises(SIPParseError):
        parse_message(_wire(key), strict=True)


def test_baddn_is_rejected_for_its_display_names():
    """baddn stays rejected when the empty line its archive file lacks is supplied."""
    data = _raw("rfc4475/baddn")
    assert not data.endswith(b"\r\n\r\n")
    with pytest.raises(SIPParseError):
        parse_message(data + b"\r\n", strict=True)


@pytest.mark.parametrize("key", ACCEPTED)
def test_accepted(key):
    """Each message the table accepts parses, and its highlighted fields are right."""
    check = EXPECTED[key][1]
    assert callable(check)
    check(parse_message(_wire(key), strict=True))


# ---------------------------------------------------------------------------
# Round trip
# ---------------------------------------------------------------------------


def _via_tuple(v: object) -> tuple:
    return (v.transport, v.host, v.port, dict(v.params), v.branch)  # type: ignore[attr-defined]


def _name_addr_tuple(na: object) -> tuple:
    return (_dn(na), str(na.uri), dict(na.params), na.tag)  # type: ignore[attr-defined]


def _same_message(a: object, b: object, names: list[str]) -> None:
    assert type(a) is type(b)
    if isinstance(a, Request):
        assert (b.method, str(b.uri)) == (a.method, str(a.uri))  # type: ignore[attr-defined]
    else:
        assert (b.code, b.reason) == (a.code, a.reason)  # type: ignore[attr-defined]
    for name in names:
        assert b.headers.getall(name) == a.headers.getall(name), name  # type: ignore[attr-defined]
    assert b.body == a.body  # type: ignore[attr-defined]
    assert (b.call_id, b.cseq, b.max_forwards) == (a.call_id, a.cseq, a.max_forwards)  # type: ignore[attr-defined]
    assert (b.content_length, b.content_type) == (a.content_length, a.content_type)  # type: ignore[attr-defined]
    assert [_via_tuple(v) for v in b.vias] == [_via_tuple(v) for v in a.vias]  # type: ignore[attr-defined]
    assert _name_addr_tuple(b.from_) == _name_addr_tuple(a.from_)  # type: ignore[attr-defined]
    assert _name_addr_tuple(b.to) == _name_addr_tuple(a.to)  # type: ignore[attr-defined]


@pytest.mark.parametrize("key", ACCEPTED)
def test_round_trip(key):
    """Re-parsing to_bytes() of an accepted message gives the same message."""
    data = _wire(key)
    first = parse_message(data)
    again = parse_message(first.to_bytes())
    _same_message(first, again, _header_names(data))


@pytest.mark.parametrize("key", ACCEPTED)
def test_serialization_is_a_fixed_point(key):
    """Serializing the re-parsed message gives the same bytes again."""
    once = parse_message(_wire(key), strict=True).to_bytes()
    assert parse_message(once).to_bytes() == once


# ---------------------------------------------------------------------------
# Damaged messages: SIPParseError or success, never another exception
# ---------------------------------------------------------------------------


def _parse_or_parse_error(data: bytes) -> None:
    try:
        parse_message(data)
    except SIPParseError:
        pass


@pytest.mark.parametrize("key", ALL)
def test_truncations_raise_only_parse_errors(key):
    """Every prefix of a message parses or raises SIPParseError, nothing else."""
    data = _wire(key)
    step = 1 if len(data) <= 1500 else 5
    cuts = set(range(0, len(data), step))
    cuts.update(i + d for i in range(len(data)) if data[i : i + 1] in b"\r\n:;<>\"" for d in (0, 1))
    for cut in sorted(cuts):
        _parse_or_parse_error(data[:cut])


NASTY = [b"\x00", b"\xff", b"\xc3", b"\r", b"\n", b" ", b"\t", b":", b";", b",", b"=", b"<", b">", b'"',
         b"\\", b"[", b"]", b"@", b"?", b"%", b"/", b"0", b"9", b"-"]


@pytest.mark.parametrize("key", ALL)
def test_mutations_raise_only_parse_errors(key):
    """Random byte replacements, insertions and deletions raise only SIPParseError."""
    data = _wire(key)
    rnd = random.Random(key)
    for _ in range(300):
        pos = rnd.randrange(len(data))
        kind = rnd.randrange(3)
        if kind == 0:
            mutated = data[:pos] + rnd.choice(NASTY) + data[pos + 1 :]
        elif kind == 1:
            mutated = data[:pos] + rnd.choice(NASTY) * rnd.choice((1, 2, 11)) + data[pos:]
        else:
            mutated = data[:pos] + data[pos + rnd.randrange(1, 8) :]
        _parse_or_parse_error(mutated)


# ---------------------------------------------------------------------------
# SIPURI on its own: the RFC 5118 references
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, user, host, port",
    [
        ("sip:[2001:db8::10]", None, "[2001:db8::10]", None),
        ("sip:[2001:db8::10:5070]", None, "[2001:db8::10:5070]", None),
        ("sip:[2001:db8::10]:5070", None, "[2001:db8::10]", 5070),
        ("sip:caller@[2001:db8::1]", "caller", "[2001:db8::1]", None),
        ("sip:ted@[::ffff:192.0.2.2]", "ted", "[::ffff:192.0.2.2]", None),
        ("sip:user@[2001:db8::192.0.2.1]", "user", "[2001:db8::192.0.2.1]", None),
    ],
)
def test_sipuri_ipv6_references(text, user, host, port):
    """SIPURI.parse keeps IPv6 references in brackets and reads the port after them."""
    uri = SIPURI.parse(text)
    assert (uri.scheme, uri.user, uri.host, uri.port) == ("sip", user, host, port)


@pytest.mark.parametrize(
    "text",
    [
        "sip:2001:db8::10",  # RFC 5118 4.2: IPv6 address without []
        "sip:[2001:db8::10",  # unterminated reference
        "sip:user@example.com; lr",  # RFC 4475 lwsruri: LWS inside the URI
        "<sip:user@example.com>",  # RFC 4475 ltgtruri: <> around it
    ],
)
def test_sipuri_rejects_malformed(text):
    """SIPURI.parse raises SIPParseError for the malformed URIs of the torture RFCs."""
    with pytest.raises(SIPParseError):
        SIPURI.parse(text)
