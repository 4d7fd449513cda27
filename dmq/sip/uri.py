"""
SIP and SIPS URIs (RFC 3261 section 19.1): parse, format and compare.

Pure code: no Twisted, no I/O.  A :class:`SIPURI` is immutable in spirit (the
attributes are plain, but nothing in this package mutates a URI after it is
made); use :meth:`SIPURI.replace` to derive a changed copy.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Mapping, Optional
from urllib.parse import unquote

from dmq.errors import SIPParseError

__all__ = [
    "SIPParseError",
    "SIPURI",
    "SIP_URI_PATTERN",
    "PLAIN_SIP_URI_PATTERN",
    "PLAIN_HOST_PATTERN",
    "PORT_PATTERN",
    "match_sip_uri",
    "check_uri_match",
    "parse_host_port",
    "split_params",
    "unescape",
]


# RFC 3261 section 25.1 character sets (inside a regex class); "%" admits
# escapes, whose form is checked separately.
_UNRESERVED = r"A-Za-z0-9\-_.!~*'()%"
_USER = f"[{_UNRESERVED}&=+$,;?/]+"
_PASSWORD = f"[{_UNRESERVED}&=+$,]*"
_PCHARS = rf"[{_UNRESERVED}\[\]/:&+$]+"
_HNV = rf"[{_UNRESERVED}\[\]/?:+$]*"

SIP_URI_PATTERN = (
    r"(?P<scheme>[Ss][Ii][Pp][Ss]?):"
    rf"(?:(?P<user>{_USER})(?::(?P<password>{_PASSWORD}))?@)?"
    r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-]+)"
    r"(?::(?P<port>[0-9]{1,5}))?"
    rf"(?P<params>(?:;{_PCHARS}(?:={_PCHARS})?)*)"
    rf"(?:\?(?P<headers>{_HNV}={_HNV}(?:&{_HNV}={_HNV})*))?"
)
"""The syntax of a SIP/SIPS URI as a regex with named groups (no anchors)."""
_SIP_URI_RE = re.compile(SIP_URI_PATTERN)

# IPv4 with octets 0-255, or an RFC 3261 hostname; both written so that the
# regex engine never backtracks more than linearly.
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_HOSTNAME = (
    r"(?:[A-Za-z0-9]+(?:-+[A-Za-z0-9]+)*\.)*[A-Za-z][A-Za-z0-9]*(?:-+[A-Za-z0-9]+)*\.?"
)
_IPV4 = rf"{_OCTET}(?:\.{_OCTET}){{3}}"
PLAIN_HOST_PATTERN = rf"{_IPV4}|{_HOSTNAME}"
"""An IPv4 address or a host name: a host needing no check beyond the regex."""
_HOST_RE = re.compile(PLAIN_HOST_PATTERN)

# The same SIP URI grammar restricted to what needs no check beyond the regex:
# no %-escapes, no headers, an IPv4 address or host name (IPv6 references go
# through ipaddress), a port of at most 65535.  Anything this does not match
# is judged by SIP_URI_PATTERN and its checks; both accept the same URIs.
_PLAIN = r"A-Za-z0-9\-_.!~*'()"
PORT_PATTERN = r"[0-9]{1,4}|[0-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]"
"""A port, 0 to 65535 (leading zeros allowed)."""
PLAIN_SIP_URI_PATTERN = (
    r"(?P<scheme>[Ss][Ii][Pp][Ss]?):"
    rf"(?:(?P<user>[{_PLAIN}&=+$,;?/]+)(?::(?P<password>[{_PLAIN}&=+$,]*))?@)?"
    rf"(?P<host>{PLAIN_HOST_PATTERN})"
    rf"(?::(?P<port>{PORT_PATTERN}))?"
    rf"(?P<params>(?:;[{_PLAIN}\[\]/:&+$]+(?:=[{_PLAIN}\[\]/:&+$]+)?)*)"
    # A headers group that never takes part ((?!) never matches), so that
    # SIPURI._from_match reads the groups of either pattern alike.
    r"(?:(?P<headers>)(?!))?"
)
"""
A subset of :data:`SIP_URI_PATTERN` (no escapes, no headers, no IPv6) whose
matches are valid SIP URIs without the further checks of :func:`match_sip_uri`.
"""
_PLAIN_SIP_URI_RE = re.compile(PLAIN_SIP_URI_PATTERN)

_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*")
_BAD_ESCAPE_RE = re.compile(r"%(?![0-9A-Fa-f]{2})")

# Parameters that must match whenever either URI carries them (19.1.4).
_SIGNIFICANT_PARAMS = ("user", "ttl", "method", "maddr", "transport")


def unescape(text: str) -> str:
    """Decode ``%HH`` escapes (the only escaping RFC 3261 URIs use)."""
    if "%" not in text:
        return text
    return unquote(text, errors="surrogateescape")


def _check_host(host: str, where: str) -> str:
    """Validate a host (hostname, IPv4 address or bracketed IPv6 reference)."""
    if host[:1] == "[":
        try:
            # RFC 5118 4.8: accept the ":::" form RFC 3261's ABNF allowed.
            ipaddress.IPv6Address(host[1:-1].replace(":::", "::"))
        except ValueError:
            raise SIPParseError(f"bad IPv6 reference {host!r} in {where}") from None
    elif _HOST_RE.fullmatch(host) is None:
        raise SIPParseError(f"bad host {host!r} in {where}")
    return host


def _check_port(port: Optional[str], where: str) -> Optional[int]:
    """Turn a port string into an int, checking its range."""
    if port is None:
        return None
    value = int(port)
    if value > 65535:
        raise SIPParseError(f"port {value} out of range in {where}")
    return value


def parse_host_port(text: str, where: str = "host") -> tuple[str, Optional[int]]:
    """
    Parse ``host[:port]`` (IPv6 references in brackets).

    :raises SIPParseError: when either part is malformed.
    """
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise SIPParseError(f"unterminated IPv6 reference in {where}")
        host, rest = text[: end + 1], text[end + 1 :]
    else:
        host, sep, rest = text.partition(":")
        rest = sep + rest
    if rest:
        if not rest.startswith(":") or not rest[1:].isdigit() or not rest[1:].isascii():
            raise SIPParseError(f"bad port in {where}: {text!r}")
        port: Optional[int] = _check_port(rest[1:], where)
    else:
        port = None
    return _check_host(host, where), port


def match_sip_uri(text: str) -> "re.Match[str]":
    """
    Check the syntax of a SIP or SIPS URI without building it.

    :returns: the regex match, for :meth:`SIPURI._from_match`.
    :raises SIPParseError: naming what is wrong.
    """
    m = _PLAIN_SIP_URI_RE.fullmatch(text)
    if m is not None:
        return m
    return _match_sip_uri_general(text)


def _match_sip_uri_general(text: str) -> "re.Match[str]":
    """:func:`match_sip_uri` without its fast path, for any SIP URI."""
    m = _SIP_URI_RE.fullmatch(text)
    if m is None:
        scheme, colon, _ = text.partition(":")
        if scheme.lower() not in ("sip", "sips"):
            if colon and _SCHEME_RE.fullmatch(scheme):
                raise SIPParseError(f"not a SIP URI: {text!r}", code=416)
            raise SIPParseError(f"not a URI: {text!r}")
        raise SIPParseError(f"malformed SIP URI: {text!r}")
    if "%" in text and _BAD_ESCAPE_RE.search(text):
        raise SIPParseError(f"bad %-escape in SIP URI: {text!r}")
    check_uri_match(m)
    return m


def check_uri_match(m: "re.Match[str]") -> None:
    """The checks of a SIP URI that its regex cannot express (host, port)."""
    _check_host(m.group("host"), "URI")
    port = m.group("port")
    if port is not None and int(port) > 65535:
        raise SIPParseError(f"port {port} out of range in URI")


def split_params(text: str) -> dict[str, Optional[str]]:
    """
    Split ``;a=b;c`` into an ordered dict with lowercased names: for
    parameters already checked to hold no blanks and no quoted strings.
    """
    params: dict[str, Optional[str]] = {}
    for item in text.split(";")[1:]:
        name, sep, value = item.partition("=")
        params[name.lower()] = value if sep else None
    return params


def _format_params(params: Mapping[str, Optional[str]]) -> str:
    """Format an ordered mapping as ``;name=value`` pairs."""
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())


class SIPURI:
    """
    A ``sip:`` or ``sips:`` URI.

    :ivar scheme: ``"sip"`` or ``"sips"`` (lowercase).
    :ivar user: the user part as written (escapes kept), or ``None``.
    :ivar password: the password as written, or ``None``.
    :ivar host: host name, IPv4 address, or IPv6 reference in brackets.
    :ivar port: the port, or ``None`` when the URI has none.
    :ivar params: URI parameters; names lowercased, values as written
        (``None`` for a parameter without a value such as ``lr``).
    :ivar headers: URI headers (after ``?``), names and values as written.
    """

    __slots__ = ("scheme", "user", "password", "host", "port", "params", "headers", "_text")

    def __init__(
        self,
        host: str,
        port: Optional[int] = None,
        user: Optional[str] = None,
        password: Optional[str] = None,
        params: Optional[Mapping[str, Optional[str]]] = None,
        headers: Optional[Mapping[str, str]] = None,
        scheme: str = "sip",
    ) -> None:
        self.scheme = scheme.lower()
        self.user = user
        self.password = password
        self.host = host
        self.port = port
        # Lowercased here as the parser does, so that a built URI and its
        # parsed text compare and format alike.
        self.params: dict[str, Optional[str]] = (
            {name.lower(): value for name, value in params.items()} if params else {}
        )
        self.headers: dict[str, str] = dict(headers) if headers else {}
        self._text: Optional[str] = None

    @classmethod
    def parse(cls, text: str) -> "SIPURI":
        """
        Parse a SIP or SIPS URI.

        :raises SIPParseError: naming what is wrong, when ``text`` is not one.
        """
        return cls._from_match(match_sip_uri(text))

    @classmethod
    def _from_match(cls, m: "re.Match[str]") -> "SIPURI":
        """Build a URI from a match that :func:`match_sip_uri` has checked."""
        scheme, user, password, host, port, params, headers = m.group(
            "scheme", "user", "password", "host", "port", "params", "headers"
        )
        uri = cls.__new__(cls)
        uri.scheme = scheme.lower()
        uri.user = user
        uri.password = password
        uri.host = host
        uri.port = None if port is None else int(port)
        uri.params = split_params(params) if params else {}
        uri.headers = dict(h.split("=", 1) for h in headers.split("&")) if headers else {}
        uri._text = None
        return uri

    @property
    def transport(self) -> str:
        """The ``transport`` parameter lowercased, ``"udp"`` when absent (``"tls"`` for sips)."""
        value = self.params.get("transport")
        if value:
            return value.lower()
        return "tls" if self.scheme == "sips" else "udp"

    @property
    def host_port(self) -> str:
        """``host`` or ``host:port`` as written in the URI."""
        return self.host if self.port is None else f"{self.host}:{self.port}"

    def replace(self, **changes: object) -> "SIPURI":
        """Return a copy with the given attributes changed."""
        values: dict[str, object] = {
            "scheme": self.scheme,
            "user": self.user,
            "password": self.password,
            "host": self.host,
            "port": self.port,
            "params": self.params,
            "headers": self.headers,
        }
        values.update(changes)
        return SIPURI(**values)  # type: ignore[arg-type]

    def __str__(self) -> str:
        text = self._text
        if text is None:
            parts = [self.scheme, ":"]
            if self.user is not None:
                parts.append(self.user)
                if self.password is not None:
                    parts.append(":" + self.password)
                parts.append("@")
            parts.append(self.host)
            if self.port is not None:
                parts.append(f":{self.port}")
            if self.params:
                parts.append(_format_params(self.params))
            if self.headers:
                parts.append("?" + "&".join(f"{k}={v}" for k, v in self.headers.items()))
            text = self._text = "".join(parts)
        return text

    def __repr__(self) -> str:
        return f"SIPURI({str(self)!r})"

    def _key(self) -> tuple[object, ...]:
        return (self.scheme, self.host.lower(), self.port)

    def __hash__(self) -> int:
        return hash(self._key())

    def __eq__(self, other: object) -> bool:
        """Compare as RFC 3261 section 19.1.4 says."""
        if not isinstance(other, SIPURI):
            return NotImplemented
        if self._key() != other._key():
            return False
        if (self.user is None) != (other.user is None):
            return False
        if self.user is not None and unescape(self.user) != unescape(other.user or ""):
            return False
        if unescape(self.password or "") != unescape(other.password or ""):
            return False
        mine, theirs = self.params, other.params
        for name in _SIGNIFICANT_PARAMS:
            if (name in mine) != (name in theirs):
                return False
        for name in mine.keys() & theirs.keys():
            a, b = mine[name], theirs[name]
            if (a is None) != (b is None):
                return False
            if a is not None and unescape(a).lower() != unescape(b or "").lower():
                return False
        if {k.lower(): unescape(v) for k, v in self.headers.items()} != {
            k.lower(): unescape(v) for k, v in other.headers.items()
        }:
            return False
        return True

    def __ne__(self, other: object) -> bool:
        result = self.__eq__(other)
        return result if result is NotImplemented else not result
