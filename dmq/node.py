"""
DMQ nodes: their addresses and statuses, and the node-list body codec
(Kamailio's ``dmqnode.c``).

Pure code: no Twisted, no I/O, no clock.  The rules that change a list of
nodes are in :mod:`dmq.nodelist`; the wire facts in ``docs/protocol.md``
sections 3 and 4.

:class:`~dmq.nodelist.NodeList` and the other names of :mod:`dmq.nodelist`
stay importable from here.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from typing import Any, NamedTuple, Optional, Union

from dmq.errors import ConfigurationError
from dmq.sip.uri import SIPURI, SIPParseError

__all__ = [
    "MAX_BODY_LINES",
    "MAX_LINE_LENGTH",
    "TRANSPORTS",
    "SPOKEN_TRANSPORTS",
    "BodyLine",
    "Node",
    "NodeKey",
    "NodeListError",
    "NodeStatus",
    "key_uri",
    "kamailio_version",
    "parse_body",
    "parse_lines",
    "server_address_uri",
]

MAX_BODY_LINES = 10_000
"""The most lines a node-list body may have; a longer body is refused whole."""

MAX_LINE_LENGTH = 1024
"""The longest node-list line accepted (a real one is under 300 characters)."""

MAX_AGENT = 120
"""The most characters of a node's ``User-Agent`` / ``Server`` text kept."""

MAX_HOST_LENGTH = 254
"""Kamailio refuses a node whose host is longer than this."""

TRANSPORTS = ("udp", "tcp", "tls", "sctp", "ws", "wss")
"""
Transport parameter values accepted in a node URI.  dmq itself speaks udp, tcp
and tls; the others are the protocols Kamailio knows, kept as read so that a
body from a mixed Kamailio cluster is not refused whole for one such node.
"""

SPOKEN_TRANSPORTS = ("udp", "tcp", "tls")
"""The transports dmq itself speaks (a node's own address and its seeds use one of them)."""

NodeKey = tuple[str, str, str]
"""A node's identity: (host as written, port as text or ``""``, transport)."""


class NodeListError(ValueError):
    """A node-list body, line or node URI is not acceptable; the message names the fault."""


class NodeStatus(enum.Enum):
    """The status of a node, with its 6.x wire spelling as the value."""

    ACTIVE = "active"
    NOT_ACTIVE = "not_active"
    DISABLED = "disabled"

    @classmethod
    def from_wire(cls, text: str) -> "NodeStatus":
        """
        Read a ``status=`` value as any Kamailio writes it.

        6.x writes ``active``, ``not_active`` and ``disabled``; 5.6 writes
        ``active``, ``disabled``, ``timeout`` and ``pending``, the last two read
        as :attr:`NOT_ACTIVE`.  Case matters, as in Kamailio.

        :raises NodeListError: for any other text.
        """
        try:
            return _WIRE_STATUSES[text]
        except KeyError:
            raise NodeListError(f"unknown node status {text!r}") from None


_WIRE_STATUSES: dict[str, NodeStatus] = {
    "active": NodeStatus.ACTIVE,
    "not_active": NodeStatus.NOT_ACTIVE,
    "disabled": NodeStatus.DISABLED,
    "timeout": NodeStatus.NOT_ACTIVE,
    "pending": NodeStatus.NOT_ACTIVE,
}


def _ip_of(host: str) -> Optional[str]:
    """The address of an IP-literal host (IPv6 without brackets), else ``None``."""
    try:
        if host.startswith("["):
            return str(ipaddress.IPv6Address(host[1:-1]))
        return str(ipaddress.IPv4Address(host))
    except ValueError:
        return None


class Node:
    """
    One DMQ node: its address, status and bookkeeping.

    The address (``host``, ``port``, ``transport``) is fixed for the life of a
    node; everything else is state that a :class:`NodeList` changes.  Nodes
    compare by identity: two nodes of the same address are the same node only
    inside one node list, where :attr:`key` finds it.

    :ivar status: the node's :class:`NodeStatus`.
    :ivar local: whether this is the node running this code (``server_address``).
    :ivar seed: whether the node is a configured ``notification_address``.
    :ivar fail_count: 408s counted since its last 200 (fail counting only).
    :ivar last_seen: when the last node-list request or reply came from it
        (Kamailio's ``last_notification``), or ``None``.
    :ivar resolved_ip: its IP address: the host itself when it is an IP
        literal (IPv6 without brackets), else ``None`` until something
        resolves it.
    :ivar agent: the ``User-Agent`` / ``Server`` text the node last sent
        (``kamailio (6.1.4 (x86_64/linux))``, ``dmq/0.1.0``), or ``None``.
    """

    __slots__ = (
        "_host",
        "_port",
        "_transport",
        "_uri",
        "status",
        "local",
        "seed",
        "fail_count",
        "last_seen",
        "resolved_ip",
        "agent",
    )

    def __init__(
        self,
        host: str,
        port: Optional[int],
        transport: str = "udp",
        *,
        status: NodeStatus = NodeStatus.ACTIVE,
        local: bool = False,
        seed: bool = False,
    ) -> None:
        """
        :param host: host name, IPv4 address or bracketed IPv6 reference, as
            written (compared case-sensitively).
        :param port: the port, or ``None`` when the address has none (which is
            not the same node as port 5060).
        :param transport: one of :data:`TRANSPORTS`.
        :raises NodeListError: when any part is malformed.
        """
        try:
            uri = SIPURI.parse(f"sip:{host}")
        except SIPParseError as e:
            raise NodeListError(f"bad node host {host!r}: {e}") from None
        if uri.host != host or uri.user is not None or uri.params:
            raise NodeListError(f"bad node host {host!r}")
        self._set_address(host, port, transport)
        self.status = status
        self.local = local
        self.seed = seed

    @classmethod
    def _of_uri(cls, uri: SIPURI, status: NodeStatus, resolved_ip: Optional[str] = None) -> "Node":
        """
        A node from a parsed ``sip:`` URI, whose host the URI parser has
        checked already (``resolved_ip``: the host, when it is known to be a
        canonical IPv4 address).
        """
        node = cls.__new__(cls)
        node._set_address(uri.host, uri.port, uri.transport, resolved_ip)
        node.status = status
        node.local = False
        node.seed = False
        return node

    def _set_address(self, host: str, port: Optional[int], transport: str, resolved_ip: Optional[str] = None) -> None:
        """Check and set the parts of the address that the host check leaves, and the fresh state."""
        if len(host) > MAX_HOST_LENGTH:
            raise NodeListError(f"node host longer than {MAX_HOST_LENGTH} characters")
        if port is not None and not 0 < port <= 65535:
            raise NodeListError(f"node port {port} out of range")
        transport = transport.lower()
        if transport not in TRANSPORTS:
            raise NodeListError(f"unknown node transport {transport!r}")
        self._host = host
        self._port = port
        self._transport = transport
        params: dict[str, Optional[str]] = {}
        if transport != "udp":
            params["transport"] = transport
        self._uri = SIPURI(host, port, params=params)
        self.fail_count = 0
        self.last_seen: Optional[float] = None
        self.resolved_ip: Optional[str] = resolved_ip or _ip_of(host)
        self.agent: Optional[str] = None

    @classmethod
    def from_uri(
        cls,
        uri_or_text: Union[SIPURI, str],
        status: Optional[NodeStatus] = None,
        local: bool = False,
        seed: bool = False,
    ) -> "Node":
        """
        Make a node from a ``sip:`` URI (a ``server_address``, a
        ``notification_address``, a node-list line, an RPC argument).

        A user part (``sip:notification_peer@host:port``) and any parameter
        but ``transport`` and ``status`` are dropped; the port may be missing.

        :param status: the status to give the node; ``None`` takes the URI's
            ``;status=`` when it has one, else :attr:`NodeStatus.ACTIVE`.
        :raises NodeListError: when the text is no SIP URI, the scheme is not
            ``sip`` or a part is not acceptable.
        """
        if isinstance(uri_or_text, SIPURI):
            uri = uri_or_text
            if uri.scheme != "sip":
                raise NodeListError(f"node URI {str(uri)!r}: not a sip: URI")
        else:
            uri = _sip_uri(uri_or_text, f"node URI {uri_or_text!r}")
        if status is None:
            status = _uri_status(uri, f"node URI {str(uri)!r}")
        return cls(uri.host, uri.port, uri.transport, status=status, local=local, seed=seed)

    @property
    def host(self) -> str:
        """The host as written (IPv6 in brackets)."""
        return self._host

    @property
    def port(self) -> Optional[int]:
        """The port, or ``None`` when the address has none."""
        return self._port

    @property
    def transport(self) -> str:
        """The transport, lowercase: ``udp`` unless the URI said otherwise."""
        return self._transport

    @property
    def uri(self) -> SIPURI:
        """The canonical URI ``sip:host[:port][;transport=...]`` (never ``transport=udp``)."""
        return self._uri

    @property
    def key(self) -> NodeKey:
        """Host, port and transport as text: what Kamailio compares to find a node."""
        return (self._host, "" if self._port is None else str(self._port), self._transport)

    def copy(self) -> "Node":
        """A new node of the same address and status, with none of this node's other state."""
        node = Node.__new__(Node)
        node._host, node._port, node._transport, node._uri = self._host, self._port, self._transport, self._uri
        node.resolved_ip = self.resolved_ip
        node.status = self.status
        node.local = node.seed = False
        node.fail_count = 0
        node.last_seen = None
        node.agent = None
        return node

    @property
    def sendable(self) -> bool:
        """
        Whether messages may go to this node's address: not a multicast,
        broadcast or unspecified address (a host name is taken as sendable;
        the transport checks what it resolves to).
        """
        if self.resolved_ip is None:
            return True
        ip = ipaddress.ip_address(self.resolved_ip)
        if ip.is_multicast or ip.is_unspecified:
            return False
        return not (isinstance(ip, ipaddress.IPv4Address) and ip == ipaddress.IPv4Address("255.255.255.255"))

    def note_agent(self, agent: Optional[str]) -> None:
        """Remember what software the node runs, from the ``User-Agent`` or ``Server`` it sent (if any)."""
        if agent:
            self.agent = agent[:MAX_AGENT]

    def line(self, status: Optional[NodeStatus] = None) -> str:
        """
        This node as a node-list body line, without the CRLF.

        ``sip:127.0.0.1:5172;transport=tcp;status=active``: the transport only
        when it is not udp, the status always.

        :param status: the status to write instead of :attr:`status`.
        :raises ValueError: for :attr:`NodeStatus.NOT_ACTIVE`, which nothing
            writes: Kamailio 5.6 cannot read it and stops answering.
        """
        status = self.status if status is None else status
        if status is NodeStatus.NOT_ACTIVE:
            raise ValueError("a node-list line is never written with status not_active")
        return f"{self._uri};status={status.value}"

    def __repr__(self) -> str:
        flags = "".join(
            f", {name}" for name, on in (("local", self.local), ("seed", self.seed)) if on
        )
        return f"<Node {self._uri} {self.status.value}{flags}>"


def server_address_uri(value: Union[str, SIPURI]) -> SIPURI:
    """
    Check a node's own address (``server_address``): a ``sip:`` URI with an
    explicit port and a transport dmq speaks, acceptable as a node.

    :raises ConfigurationError: naming the fault (without the setting's name).
    """
    try:
        uri = SIPURI.parse(value) if isinstance(value, str) else value
    except SIPParseError as e:
        raise ConfigurationError(f"not a SIP URI ({e})") from None
    if uri.scheme != "sip":
        raise ConfigurationError("use sip: (with ;transport=tls for TLS)")
    if uri.port is None:
        raise ConfigurationError("a port is needed")
    if uri.transport not in SPOKEN_TRANSPORTS:
        raise ConfigurationError(f"transport {uri.transport} is not supported ({', '.join(SPOKEN_TRANSPORTS)})")
    try:
        Node.from_uri(uri)
    except NodeListError as e:
        raise ConfigurationError(str(e)) from None
    return uri


_KAMAILIO_AGENT = re.compile(r"^kamailio \((\d+)\.(\d+)\.(\d+)")


def kamailio_version(agent: Optional[str]) -> Optional[tuple[int, int, int]]:
    """
    The release of a Kamailio node from its ``Server`` / ``User-Agent`` text
    (Kamailio writes ``kamailio (5.6.3 (x86_64/linux))``), or ``None`` when
    the text is not Kamailio's.
    """
    if not agent:
        return None
    match = _KAMAILIO_AGENT.match(agent)
    if match is None:
        return None
    major, minor, patch = (int(part) for part in match.groups())
    return (major, minor, patch)


class BodyLine(NamedTuple):
    """One parsed node-list line: the node it names, its status, whether it had parameters."""

    node: Node
    status: NodeStatus
    has_params: bool


_PLAIN_LINE = re.compile(
    r"sip:((?:(?:0|[1-9][0-9]{0,2})\.){3}(?:0|[1-9][0-9]{0,2})):([1-9][0-9]{0,4})"
    r"(?:;transport=(tcp|tls))?;status=(active|disabled|not_active)"
)
"""The lines nodes write (an IPv4 host, a port, maybe a transport, a status), read without the general URI parser."""


def _sip_uri(text: str, where: str) -> SIPURI:
    """``text`` parsed as a ``sip:`` URI (:class:`NodeListError` naming ``where`` otherwise)."""
    try:
        uri = SIPURI.parse(text)
    except SIPParseError as e:
        raise NodeListError(f"{where}: {e}") from None
    if uri.scheme != "sip":
        raise NodeListError(f"{where}: not a sip: URI: {text!r}")
    return uri


def _uri_status(uri: SIPURI, where: str) -> NodeStatus:
    """The status a node URI's ``;status=`` gives (active without one; :class:`NodeListError` naming ``where``)."""
    if "status" not in uri.params:
        return NodeStatus.ACTIVE
    wire = uri.params["status"]
    if wire is None:
        raise NodeListError(f"{where}: status without a value")
    try:
        return NodeStatus.from_wire(wire)
    except NodeListError as e:
        raise NodeListError(f"{where}: {e}") from None


def _parse_line(text: str, number: int) -> BodyLine:
    """Parse one node-list line (already stripped of its line end)."""
    m = _PLAIN_LINE.fullmatch(text)
    if m is not None:
        host, port_text, transport, wire = m.groups()
        port = int(port_text)
        if 0 < port <= 65535 and all(int(octet) <= 255 for octet in host.split(".")):
            status = _WIRE_STATUSES[wire]
            node = Node.__new__(Node)
            node._set_address(host, port, transport or "udp", host)
            node.status = status
            node.local = node.seed = False
            return BodyLine(node, status, True)
    where = f"node-list line {number}"
    if len(text) > MAX_LINE_LENGTH:
        raise NodeListError(f"{where} is longer than {MAX_LINE_LENGTH} characters")
    uri = _sip_uri(text, where)
    if uri.port is None:
        raise NodeListError(f"{where}: no port in {text!r}")
    status = _uri_status(uri, where)
    try:
        node = Node._of_uri(uri, status)
    except NodeListError as e:
        raise NodeListError(f"{where}: {e}") from None
    return BodyLine(node, status, bool(uri.params))


def parse_lines(body: bytes) -> list[BodyLine]:
    """
    Validate a whole node-list body and parse every line of it
    (:func:`parse_body` says what is accepted).

    :raises NodeListError: for the first bad line.
    """
    if not body:
        return []
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise NodeListError(f"node-list body is not UTF-8: {e}") from None
    lines = text.split("\n")
    if len(lines) > MAX_BODY_LINES + 1:
        raise NodeListError(f"node-list body has more than {MAX_BODY_LINES} lines")
    # White space around a line (the CR of a CRLF too) and blank lines are not faults.
    parsed = [_parse_line(stripped, n) for n, line in enumerate(lines, 1) if (stripped := line.strip(" \t\r"))]
    if len(parsed) > MAX_BODY_LINES:
        raise NodeListError(f"node-list body has more than {MAX_BODY_LINES} lines")
    return parsed


def parse_body(body: bytes) -> list[tuple[Node, NodeStatus]]:
    """
    Parse a node-list body (``notification_peer`` channel) as a whole.

    One ``sip:`` URI a line, each ending in CRLF (a bare LF, and no line end
    after the last line, are accepted too; blank lines and white space around
    a line are skipped, although Kamailio 5.6 never writes them and stops
    answering node lists when it reads one); the host an IP literal or a host
    name, the port explicit, the transport one of :data:`TRANSPORTS`, a user
    part and parameters other than ``transport`` and ``status`` ignored.  A
    line without ``;status=`` means active.  An empty body is an empty list.

    :returns: each line's node (a fresh :class:`Node` holding the line's
        status) and that status, in body order.
    :raises NodeListError: for the first bad line (unparsable URI, another
        scheme, no port, unknown status), for a body that is not UTF-8 or has
        more than :data:`MAX_BODY_LINES` lines.  Nothing is returned then.
    """
    return [(line.node, line.status) for line in parse_lines(body)]


def key_uri(key: NodeKey) -> str:
    """The URI text of a node key: ``sip:host[:port][;transport=...]`` (no ``transport=udp``)."""
    host, port, transport = key
    text = f"sip:{host}:{port}" if port else f"sip:{host}"
    return text if transport == "udp" else f"{text};transport={transport}"


_MOVED = ("Event", "EventKind", "MergeResult", "NodeList", "NodeRef", "TimeoutOutcome", "TimeoutPolicy")


def __getattr__(name: str) -> Any:
    """The names that moved to :mod:`dmq.nodelist`, still importable from here."""
    if name in _MOVED:
        import dmq.nodelist

        return getattr(dmq.nodelist, name)
    raise AttributeError(f"module 'dmq.node' has no attribute {name!r}")
