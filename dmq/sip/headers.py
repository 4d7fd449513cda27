"""
Structured SIP header values: ``Via`` and name-addr headers (``From``, ``To``,
``Contact``, ...), parsed and formatted per RFC 3261 section 25.

Pure code: no Twisted, no I/O.
"""

from __future__ import annotations

import re
from typing import Mapping, Optional, Union

from dmq.errors import SIPParseError
from dmq.sip.uri import (
    PLAIN_HOST_PATTERN,
    PLAIN_SIP_URI_PATTERN,
    PORT_PATTERN,
    SIPURI,
    _check_host,
    _check_port,
    match_sip_uri,
    split_params,
)

__all__ = [
    "Via", "NameAddr", "parse_vias", "parse_params", "format_params", "parse_uri", "check_uri", "plain_branch",
]

_TOKEN = r"[A-Za-z0-9\-.!%*_+`'~]+"
_QUOTED = r'"(?:[^"\\\r\n]|\\[\x00-\x09\x0b\x0c\x0e-\x7f])*"'
# gen-value; an unbracketed IPv6 address is admitted too (RFC 5118 4.5).
_GEN_VALUE = rf"(?:{_QUOTED}|\[[0-9A-Fa-f:.]+\]|[0-9A-Fa-f.]*:[0-9A-Fa-f:.]*|{_TOKEN})"
_PARAMS = rf"(?:[ \t]*;[ \t]*{_TOKEN}(?:[ \t]*=[ \t]*{_GEN_VALUE})?)*"

_PARAM_RE = re.compile(rf"[ \t]*;[ \t]*({_TOKEN})(?:[ \t]*=[ \t]*({_GEN_VALUE}))?")

_VIA_RE = re.compile(
    rf"({_TOKEN})[ \t]*/[ \t]*({_TOKEN})[ \t]*/[ \t]*({_TOKEN})[ \t]+"
    r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-]+)(?:[ \t]*:[ \t]*([0-9]{1,5}))?"
    rf"({_PARAMS})[ \t]*(,[ \t]*)?"
)

# The usual values in one regex that needs no further check: "SIP/2.0/UDP
# host:port;branch=..." and "<sip:...>;tag=...", token-valued parameters, no
# blanks, no quoted strings, no IPv6.  Anything else goes the general way.
_PLAIN_PARAMS = rf"(?:;{_TOKEN}(?:={_TOKEN})?)*"
_PLAIN_VIA_RE = re.compile(
    rf"SIP/2\.0/({_TOKEN}) ({PLAIN_HOST_PATTERN})(?::({PORT_PATTERN}))?({_PLAIN_PARAMS})"
)
# The commonest Via of all, one sent-by and a branch (and maybe rport), whose
# transaction key needs no Via object: see plain_branch.
_BRANCH_VIA_RE = re.compile(
    rf"SIP/2\.0/{_TOKEN} ({PLAIN_HOST_PATTERN})(?::({PORT_PATTERN}))?;branch=({_TOKEN})(?:;rport)?"
)
_PLAIN_NAME_ADDR_RE = re.compile(rf"<{PLAIN_SIP_URI_PATTERN}>(?P<header_params>{_PLAIN_PARAMS})")

_new_object = object.__new__

_ABSOLUTE_URI_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:[^\s<>\"]+")
_QUOTED_DISPLAY_RE = re.compile(rf"[ \t]*({_QUOTED})[ \t]*<([^<>]*)>({_PARAMS})[ \t]*")
# *(token LWS), written so that each blank run has one way to match: the
# naive (?:token[ \t]*)* backtracks exponentially when no "<...>" follows.
_TOKENS_DISPLAY_RE = re.compile(
    rf"[ \t]*((?:{_TOKEN}(?:[ \t]+{_TOKEN})*[ \t]*)?)<([^<>]*)>({_PARAMS})[ \t]*"
)
_ADDR_SPEC_RE = re.compile(rf"[ \t]*([^\s;<>\",?]+)({_PARAMS})[ \t]*")


def _lowered(params: Optional[Mapping[str, Optional[str]]]) -> dict[str, Optional[str]]:
    """A copy of ``params`` with the names lowercased, as the parser gives them."""
    return {name.lower(): value for name, value in params.items()} if params else {}


def parse_params(text: str) -> dict[str, Optional[str]]:
    """
    Parse ``;name=value;flag`` header parameters (already validated).

    Names are lowercased; values are kept as written (quoted strings keep
    their quotes); a parameter without ``=`` maps to ``None``.
    """
    if not text:
        return {}
    return {m.group(1).lower(): m.group(2) for m in _PARAM_RE.finditer(text)}


def format_params(params: Mapping[str, Optional[str]]) -> str:
    """Format header parameters as ``;name=value`` pairs."""
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())


def parse_uri(text: str) -> Union[SIPURI, str]:
    """
    Parse a URI: a :class:`SIPURI` for ``sip:``/``sips:``, else the checked
    ``absoluteURI`` text (``tel:``, ``mailto:``, ...).

    :raises SIPParseError: when it is neither.
    """
    m = check_uri(text)
    return text if m is None else SIPURI._from_match(m)


def check_uri(text: str) -> "Optional[re.Match[str]]":
    """
    Check the syntax of a URI without building it.

    :returns: the match of a SIP/SIPS URI (for :meth:`SIPURI._from_match`), or
        ``None`` for another well-formed absolute URI.
    :raises SIPParseError: when ``text`` is not a URI.
    """
    scheme = text[:5].lower()
    if scheme.startswith("sip:") or scheme == "sips:":
        return match_sip_uri(text)
    if _ABSOLUTE_URI_RE.fullmatch(text) is None:
        raise SIPParseError(f"malformed URI: {text!r}")
    return None


class Via:
    """
    One ``Via`` header value (RFC 3261 section 20.42).

    :ivar protocol: protocol name and version, normally ``"SIP/2.0"``.
    :ivar transport: the transport, uppercased (``"UDP"``, ``"TCP"``, ``"TLS"``).
    :ivar host: the sent-by host.
    :ivar port: the sent-by port or ``None``.
    :ivar params: parameters, names lowercased.
    """

    __slots__ = ("protocol", "transport", "host", "port", "params")

    def __init__(
        self,
        transport: str,
        host: str,
        port: Optional[int] = None,
        params: Optional[Mapping[str, Optional[str]]] = None,
        protocol: str = "SIP/2.0",
    ) -> None:
        self.protocol = protocol
        self.transport = transport.upper()
        self.host = host
        self.port = port
        self.params: dict[str, Optional[str]] = _lowered(params)

    @property
    def branch(self) -> Optional[str]:
        """The ``branch`` parameter, or ``None``."""
        return self.params.get("branch")

    @property
    def sent_by(self) -> str:
        """``host`` or ``host:port``."""
        return self.host if self.port is None else f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.protocol}/{self.transport} {self.sent_by}{format_params(self.params)}"

    def __repr__(self) -> str:
        return f"Via({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Via):
            return NotImplemented
        return str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))


def _plain_via(m: "re.Match[str]") -> Via:
    """The Via of a match of _PLAIN_VIA_RE."""
    transport, host, port, params = m.groups()
    via = _new_object(Via)
    via.protocol = "SIP/2.0"
    via.transport = transport.upper()
    via.host = host
    via.port = None if port is None else int(port)
    via.params = split_params(params) if params else {}
    return via


def parse_vias(value: str) -> list[Via]:
    """
    Parse one ``Via`` header value, which may hold several comma-separated
    via-parms.

    :raises SIPParseError: when the value is malformed.
    """
    m = _PLAIN_VIA_RE.fullmatch(value)
    if m is not None:
        return [_plain_via(m)]
    if "," in value and '"' not in value:
        # Without quoted strings every comma separates two vias.
        plain: list[Via] = []
        for part in value.split(","):
            m = _PLAIN_VIA_RE.fullmatch(part.strip(" \t"))
            if m is None:
                break
            plain.append(_plain_via(m))
        else:
            return plain
    return _parse_vias_general(value)


def _parse_vias_general(value: str) -> list[Via]:
    """:func:`parse_vias` without its fast paths, for any Via value."""
    vias: list[Via] = []
    pos, end = 0, len(value)
    match = _VIA_RE.match
    while True:
        while pos < end and value[pos] in " \t":
            pos += 1
        m = match(value, pos)
        if m is None:
            raise SIPParseError(f"malformed Via header: {value!r}")
        name, version, transport, host, port, params, comma = m.groups()
        vias.append(
            Via(
                transport,
                _check_host(host, "Via"),
                _check_port(port, "Via"),
                parse_params(params),
                protocol=f"{name}/{version}",
            )
        )
        pos = m.end()
        if comma is None:
            if pos != end:
                raise SIPParseError(f"malformed Via header: {value!r}")
            return vias
        if pos == end:
            raise SIPParseError(f"trailing comma in Via header: {value!r}")


def plain_branch(value: str) -> Optional[tuple[str, str]]:
    """
    The branch and sent-by of a ``Via`` value of the commonest shape,
    ``SIP/2.0/UDP host:port;branch=token``, maybe with ``;rport`` after:
    a well-formed Via, whose :class:`Via` would give the same.  ``None``
    for any other value, to be parsed with :func:`parse_vias`.
    """
    m = _BRANCH_VIA_RE.fullmatch(value)
    if m is None:
        return None
    host, port, branch = m.groups()
    return branch, host if port is None else f"{host}:{int(port)}"


class NameAddr:
    """
    A ``name-addr`` or ``addr-spec`` with header parameters, as in
    ``From``, ``To`` and ``Contact``.

    :ivar display_name: the display name as written (quoted strings keep
        their quotes), or ``None``.
    :ivar uri: a :class:`SIPURI`, or the text of another absolute URI.
    :ivar params: header parameters (``tag``, ``expires``, ...), names lowercased.
    """

    __slots__ = ("display_name", "uri", "params")

    def __init__(
        self,
        uri: Union[SIPURI, str],
        params: Optional[Mapping[str, Optional[str]]] = None,
        display_name: Optional[str] = None,
    ) -> None:
        self.display_name = display_name
        self.uri = uri
        self.params: dict[str, Optional[str]] = _lowered(params)

    @property
    def tag(self) -> Optional[str]:
        """The ``tag`` parameter, or ``None``."""
        return self.params.get("tag")

    @classmethod
    def parse(cls, value: str, header: str = "header") -> "NameAddr":
        """
        Parse a name-addr or addr-spec followed by parameters.

        :raises SIPParseError: naming ``header`` when it is malformed.
        """
        m = _PLAIN_NAME_ADDR_RE.fullmatch(value)
        if m is not None:
            name_addr = _new_object(cls)
            name_addr.display_name = None
            name_addr.uri = SIPURI._from_match(m)
            params = m.group("header_params")
            name_addr.params = split_params(params) if params else {}
            return name_addr
        return cls._parse_general(value, header)

    @classmethod
    def _parse_general(cls, value: str, header: str) -> "NameAddr":
        """:meth:`parse` without its fast path, for any value."""
        display: Optional[str]
        if value.lstrip(" \t").startswith('"'):
            m = _QUOTED_DISPLAY_RE.fullmatch(value)
            if m is None:
                raise SIPParseError(f"malformed {header} header: {value!r}")
            display, uri_text, params = m.groups()
        elif "<" in value:
            m = _TOKENS_DISPLAY_RE.fullmatch(value)
            if m is None:
                raise SIPParseError(f"malformed {header} header: {value!r}")
            display, uri_text, params = m.groups()
            display = display.rstrip(" \t") or None
        else:
            m = _ADDR_SPEC_RE.fullmatch(value)
            if m is None:
                raise SIPParseError(f"malformed {header} header: {value!r}")
            display = None
            uri_text, params = m.groups()
        try:
            uri = parse_uri(uri_text)
        except SIPParseError as e:
            raise SIPParseError(f"bad URI in {header} header: {e}") from None
        return cls(uri, parse_params(params), display)

    def __str__(self) -> str:
        prefix = f"{self.display_name} " if self.display_name else ""
        return f"{prefix}<{self.uri}>{format_params(self.params)}"

    def __repr__(self) -> str:
        return f"NameAddr({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, NameAddr):
            return NotImplemented
        return (self.display_name, self.uri, self.params) == (
            other.display_name,
            other.uri,
            other.params,
        )

    __hash__ = None  # type: ignore[assignment]
