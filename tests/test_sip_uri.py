"""Unit tests for :mod:`dmq.sip.uri`: parsing, formatting and comparing SIP/SIPS URIs."""

from __future__ import annotations

import pytest

from dmq.sip import SIPURI, SIPParseError
from dmq.sip.uri import parse_host_port, unescape

# ---------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------


def test_parse_plain_sip_uri():
    """A user@host URI fills user and host and leaves the rest empty."""
    u = SIPURI.parse("sip:alice@atlanta.com")
    assert (u.scheme, u.user, u.password, u.host, u.port) == ("sip", "alice", None, "atlanta.com", None)
    assert (u.params, u.headers) == ({}, {})


def test_parse_sips_and_uppercase_scheme():
    """sips: is its own scheme; the scheme is matched case-insensitively and stored lowercased."""
    assert SIPURI.parse("sips:alice@atlanta.com").scheme == "sips"
    assert SIPURI.parse("SIP:alice@atlanta.com").scheme == "sip"
    assert SIPURI.parse("SiPs:alice@atlanta.com").scheme == "sips"


def test_parse_kamailio_channel_uri():
    """A KDMQ Request-URI gives the channel as user, the host and the port."""
    u = SIPURI.parse("sip:notification_peer@127.0.0.1:5171")
    assert (u.user, u.host, u.port) == ("notification_peer", "127.0.0.1", 5171)


def test_user_may_hold_semicolons():
    """A ';' before the '@' belongs to the user part, not to the parameters."""
    u = SIPURI.parse("sip:alice;day=tuesday@atlanta.com;lr")
    assert u.user == "alice;day=tuesday"
    assert u.host == "atlanta.com"
    assert u.params == {"lr": None}


def test_user_escapes_are_kept_as_written():
    """%HH escapes in the user part are kept in .user and decoded by unescape()."""
    u = SIPURI.parse("sip:%61lice%20smith@atlanta.com")
    assert u.user == "%61lice%20smith"
    assert unescape(u.user) == "alice smith"


@pytest.mark.parametrize("text", ["sip:a%4@x.com", "sip:a%zz@x.com", "sip:a%@x.com", "sip:x.com;p=%g1"])
def test_malformed_escapes_are_rejected(text):
    """A '%' not followed by two hex digits is a syntax error anywhere in the URI."""
    with pytest.raises(SIPParseError) as e:
        SIPURI.parse(text)
    assert e.value.code == 400


def test_password():
    """user:password@host splits at the first ':' of the userinfo."""
    u = SIPURI.parse("sip:alice:secretword@atlanta.com;transport=tcp")
    assert (u.user, u.password, u.host) == ("alice", "secretword", "atlanta.com")
    assert u.params == {"transport": "tcp"}
    assert str(u) == "sip:alice:secretword@atlanta.com;transport=tcp"


def test_empty_password():
    """An empty password is kept as '' (distinct from no password)."""
    u = SIPURI.parse("sip:alice:@atlanta.com")
    assert (u.user, u.password) == ("alice", "")
    assert str(u) == "sip:alice:@atlanta.com"


@pytest.mark.parametrize(
    "text, host, port",
    [
        ("sip:192.0.2.1", "192.0.2.1", None),
        ("sip:192.0.2.1:5060", "192.0.2.1", 5060),
        ("sip:255.255.255.255:0", "255.255.255.255", 0),
        ("sip:[2001:db8::1]", "[2001:db8::1]", None),
        ("sip:[2001:db8::1]:5061", "[2001:db8::1]", 5061),
        ("sip:[::ffff:192.0.2.1]:65535", "[::ffff:192.0.2.1]", 65535),
        ("sip:example.com", "example.com", None),
        ("sip:a-b--c.example.com:1", "a-b--c.example.com", 1),
        ("sip:example.com.", "example.com.", None),
        ("sip:localhost", "localhost", None),
        ("sip:x1.y2.z3", "x1.y2.z3", None),
    ],
)
def test_hosts_and_ports(text, host, port):
    """IPv4, bracketed IPv6 and host names parse, with the port after them."""
    u = SIPURI.parse(text)
    assert (u.host, u.port) == (host, port)
    assert str(u) == text


@pytest.mark.parametrize(
    "text",
    [
        "sip:256.1.1.1",  # octet out of range, and not a host name (top label starts with a digit)
        "sip:1.2.3",  # neither an IPv4 address nor a host name
        "sip:-bad.com",  # label starts with '-'
        "sip:bad-.com",  # label ends with '-'
        "sip:a..b",  # empty label
        "sip:[2001:db8::g]",  # not hex
        "sip:[2001:db8::1",  # unterminated reference
        "sip:2001:db8::1",  # IPv6 without brackets
        "sip:example.com:65536",  # port out of range
        "sip:example.com:123456",  # port too long
        "sip:example.com:",  # empty port
        "sip:example.com:5o60",  # not a number
        "sip:",  # no host
        "sip:alice@",  # no host after the user
        "sip:@example.com",  # empty user
        "sip:exa mple.com",  # space
        "sip:example.com;",  # empty parameter
        "sip:example.com;=x",  # parameter without a name
        "sip:example.com?",  # empty headers
        "sip:example.com?subject",  # header without '='
        "<sip:example.com>",  # angle brackets belong to the header, not the URI
        "sip:alice@example.com ",  # trailing space
        " sip:alice@example.com",  # leading space
        "sip:ex\u00e4mple.com",  # non-ASCII host
    ],
)
def test_malformed_uris_are_rejected_with_400(text):
    """Each malformed SIP URI raises SIPParseError with code 400."""
    with pytest.raises(SIPParseError) as e:
        SIPURI.parse(text)
    assert e.value.code == 400


@pytest.mark.parametrize("text", ["tel:+15551234567", "http://example.com/", "mailto:a@b.c", "sipx:a@b", "urn:x"])
def test_other_schemes_have_code_416(text):
    """A URI that is not sip:/sips: raises SIPParseError with code 416 (Unsupported URI Scheme)."""
    with pytest.raises(SIPParseError) as e:
        SIPURI.parse(text)
    assert e.value.code == 416


def test_error_is_a_value_error_with_a_message():
    """SIPParseError is a ValueError whose message quotes the offending URI."""
    with pytest.raises(ValueError, match="sip:bad uri"):
        SIPURI.parse("sip:bad uri")


def test_params():
    """URI parameters keep their order; names are lowercased, values kept as written, flags map to None."""
    u = SIPURI.parse("sip:127.0.0.1:5172;Transport=TCP;lr;status=active;maddr=239.255.255.1")
    assert list(u.params.items()) == [
        ("transport", "TCP"),
        ("lr", None),
        ("status", "active"),
        ("maddr", "239.255.255.1"),
    ]


def test_headers():
    """URI headers after '?' split at '&' and '='; values are kept escaped."""
    u = SIPURI.parse("sip:alice@atlanta.com;lr?subject=project%20x&priority=urgent")
    assert u.params == {"lr": None}
    assert u.headers == {"subject": "project%20x", "priority": "urgent"}
    assert str(u) == "sip:alice@atlanta.com;lr?subject=project%20x&priority=urgent"


def test_header_value_may_hold_a_uri():
    """A header value may contain ':' and escaped '@' (RFC 3261's own example)."""
    u = SIPURI.parse("sip:biloxi.com;transport=tcp;method=REGISTER?to=sip:bob%40biloxi.com")
    assert u.user is None
    assert u.params == {"transport": "tcp", "method": "REGISTER"}
    assert u.headers == {"to": "sip:bob%40biloxi.com"}


# ---------------------------------------------------------------------------
# Formatting
# ---------------------------------------------------------------------------


def test_str_is_canonical():
    """str() lowercases scheme and parameter names and drops leading zeros of the port; the rest stays."""
    u = SIPURI.parse("SIP:Alice@Example.COM:05060;Transport=TCP;LR")
    assert str(u) == "sip:Alice@Example.COM:5060;transport=TCP;lr"
    assert SIPURI.parse(str(u)) == u
    assert str(SIPURI.parse(str(u))) == str(u)


def test_repr_shows_the_text():
    """repr() names the class and the canonical text."""
    assert repr(SIPURI.parse("sip:a@b.c")) == "SIPURI('sip:a@b.c')"


@pytest.mark.parametrize(
    "kwargs, text",
    [
        ({"host": "127.0.0.1", "port": 5172, "params": {"status": "active"}}, "sip:127.0.0.1:5172;status=active"),
        (
            {"host": "127.0.0.1", "port": 5172, "params": {"transport": "tcp", "status": "active"}},
            "sip:127.0.0.1:5172;transport=tcp;status=active",
        ),
        ({"host": "[2001:db8::1]", "port": 5060, "params": {"status": "disabled"}}, "sip:[2001:db8::1]:5060;status=disabled"),
        ({"host": "127.0.0.1", "port": 5171, "user": "notification_peer"}, "sip:notification_peer@127.0.0.1:5171"),
        ({"host": "h.example", "user": "u", "password": "p", "scheme": "SIPS"}, "sips:u:p@h.example"),
        ({"host": "h.example", "params": {"lr": None}, "headers": {"subject": "x"}}, "sip:h.example;lr?subject=x"),
    ],
)
def test_constructor_and_str(kwargs, text):
    """A URI built from parts formats as expected (node-list lines included) and parses back equal."""
    u = SIPURI(**kwargs)
    assert str(u) == text
    assert SIPURI.parse(text) == u


def test_host_port():
    """host_port is host, or host:port when a port is set."""
    assert SIPURI("127.0.0.1").host_port == "127.0.0.1"
    assert SIPURI("[::1]", 5060).host_port == "[::1]:5060"


# ---------------------------------------------------------------------------
# transport and replace()
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, transport",
    [
        ("sip:h.example", "udp"),
        ("sips:h.example", "tls"),
        ("sip:h.example;transport=TCP", "tcp"),
        ("sip:h.example;transport=tls", "tls"),
        ("sips:h.example;transport=tcp", "tcp"),
        ("sip:h.example;transport=sctp", "sctp"),
    ],
)
def test_transport_property(text, transport):
    """transport is the lowercased transport parameter, else udp (tls for sips)."""
    assert SIPURI.parse(text).transport == transport


def test_replace_makes_a_changed_copy():
    """replace() returns a new URI with the changes; the original and its text stay as they were."""
    u = SIPURI.parse("sip:notification_peer@127.0.0.1:5171")
    assert str(u) == "sip:notification_peer@127.0.0.1:5171"  # fills the text cache
    v = u.replace(user="htable", port=5172, params={"transport": "tcp"})
    assert str(v) == "sip:htable@127.0.0.1:5172;transport=tcp"
    assert v.transport == "tcp"
    assert str(u) == "sip:notification_peer@127.0.0.1:5171"
    assert (u.user, u.port, u.params) == ("notification_peer", 5171, {})


def test_replace_copies_the_mappings():
    """The copy's params dict is its own: changing it does not change the original."""
    u = SIPURI.parse("sip:h.example;lr")
    v = u.replace()
    v.params["x"] = "1"
    assert u.params == {"lr": None}
    assert v == u  # 'x' appears in one URI only: ignored by comparison


def test_replace_rejects_unknown_fields():
    """replace() with a field SIPURI does not have is a TypeError, not a silent no-op."""
    with pytest.raises(TypeError):
        SIPURI.parse("sip:h.example").replace(colour="red")


# ---------------------------------------------------------------------------
# Comparison, RFC 3261 section 19.1.4, with the section's own examples
# ---------------------------------------------------------------------------

RFC_EQUAL = [
    ("sip:%61lice@atlanta.com;transport=TCP", "sip:alice@AtLanTa.CoM;Transport=tcp"),
    ("sip:carol@chicago.com", "sip:carol@chicago.com;newparam=5"),
    ("sip:carol@chicago.com", "sip:carol@chicago.com;security=on"),
    ("sip:carol@chicago.com;newparam=5", "sip:carol@chicago.com;security=on"),
    (
        "sip:biloxi.com;transport=tcp;method=REGISTER?to=sip:bob%40biloxi.com",
        "sip:biloxi.com;method=REGISTER;transport=tcp?to=sip:bob%40biloxi.com",
    ),
    (
        "sip:alice@atlanta.com?subject=project%20x&priority=urgent",
        "sip:alice@atlanta.com?priority=urgent&subject=project%20x",
    ),
]

RFC_UNEQUAL = [
    ("SIP:ALICE@AtLanTa.CoM;Transport=udp", "sip:alice@AtLanTa.CoM;Transport=UDP"),  # different usernames
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com:5060"),  # can resolve to different ports
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com;transport=udp"),  # can resolve to different transports
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com:6000;transport=tcp"),  # different port and transport
    ("sip:carol@chicago.com", "sip:carol@chicago.com?Subject=next%20meeting"),  # different header component
    ("sip:bob@phone21.boxesbybob.com", "sip:bob@192.0.2.4"),  # even if that is what the name resolves to
    # equality is not transitive:
    ("sip:carol@chicago.com;security=on", "sip:carol@chicago.com;security=off"),
]


@pytest.mark.parametrize("a, b", RFC_EQUAL)
def test_rfc3261_equivalent_uris(a, b):
    """The URI pairs RFC 3261 19.1.4 calls equivalent compare equal, both ways, with equal hashes."""
    x, y = SIPURI.parse(a), SIPURI.parse(b)
    assert x == y and y == x
    assert not (x != y)
    assert hash(x) == hash(y)


@pytest.mark.parametrize("a, b", RFC_UNEQUAL)
def test_rfc3261_unequal_uris(a, b):
    """The URI pairs RFC 3261 19.1.4 calls not equivalent compare unequal, both ways."""
    x, y = SIPURI.parse(a), SIPURI.parse(b)
    assert x != y and y != x
    assert not (x == y)


@pytest.mark.parametrize(
    "a, b",
    [
        ("sip:alice@atlanta.com", "sips:alice@atlanta.com"),  # scheme
        ("sip:alice@atlanta.com", "sip:atlanta.com"),  # user in one only
        ("sip:alice:x@atlanta.com", "sip:alice:y@atlanta.com"),  # password
        ("sip:atlanta.com;maddr=1.2.3.4", "sip:atlanta.com"),  # maddr in one only
        ("sip:atlanta.com;user=phone", "sip:atlanta.com"),  # user param in one only
        ("sip:atlanta.com;ttl=1", "sip:atlanta.com"),  # ttl in one only
        ("sip:atlanta.com;method=INVITE", "sip:atlanta.com"),  # method in one only
        ("sip:atlanta.com;lr", "sip:atlanta.com;lr=on"),  # flag against value
    ],
)
def test_other_significant_differences(a, b):
    """Scheme, userinfo, and the user/ttl/method/maddr/transport parameters all take part in comparison."""
    assert SIPURI.parse(a) != SIPURI.parse(b)


def test_uri_compares_unequal_to_other_types():
    """A SIPURI is never equal to its own text or to None."""
    u = SIPURI.parse("sip:a@b.c")
    assert u != "sip:a@b.c"
    assert u != None  # noqa: E711
    assert {u: 1}[SIPURI.parse("sip:a@B.C")] == 1  # usable as a dict key, host case-insensitive


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, host, port",
    [
        ("127.0.0.1", "127.0.0.1", None),
        ("127.0.0.1:5060", "127.0.0.1", 5060),
        ("[::1]:5061", "[::1]", 5061),
        ("[::1]", "[::1]", None),
        ("example.com:1", "example.com", 1),
    ],
)
def test_parse_host_port(text, host, port):
    """parse_host_port splits host and port, IPv6 references in brackets."""
    assert parse_host_port(text) == (host, port)


@pytest.mark.parametrize("text", ["[::1", "[::1]x", "h:", "h:99999", "h:1:2", "h:+1", "h:\u0661", "bad host", ""])
def test_parse_host_port_rejects(text):
    """parse_host_port raises SIPParseError for malformed host:port text."""
    with pytest.raises(SIPParseError):
        parse_host_port(text)
