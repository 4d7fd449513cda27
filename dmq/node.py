"""
DMQ cluster membership: nodes, their statuses, the node-list body codec and
the rules that change a node list (Kamailio's ``dmqnode.c`` and the state half
of ``notification_peer.c``).

Pure code: no Twisted, no I/O, no clock.  Every method that needs the time
takes it as a ``now: float`` argument; the notification peer drives this
module from the network and its timers.

The wire facts are in ``docs/protocol.md`` sections 3 and 4.  Where Kamailio
versions differ, the default here is Kamailio 5.6 (the version the interop
tests run; released 6.0 and 6.1 behave the same on these points) and a flag
selects the newer behaviour:

- :class:`NodeList` ``reactivate_disabled_from_body``: a body line saying
  ``active`` brings a disabled node back;
- :class:`TimeoutPolicy` ``keep_disabled``: a timeout of a disabled node keeps
  it instead of deleting it.

Both, and the peer events, came to Kamailio's development branch after 6.1.4
(commit 559b07230b, "dmq: add peer up and down event routes"); no release up
to 6.1.4 has them.  ``remove_inactive`` (6.0) and the ``fail_count_*`` fields
(6.1) of :class:`TimeoutPolicy` are the modparams of the same names.

Every status change of a remote node may produce an :class:`Event` (that
branch's ``event_route[dmq:peer-up|peer-down|peer-disabled]``); the methods
that change a status return the events of that change, already filtered so
that a node never reports the same event twice in a row.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from dataclasses import dataclass, field
from typing import Iterator, Optional, Union

from dmq.errors import ConfigurationError
from dmq.sip.uri import SIPURI, SIPParseError

__all__ = [
    "MAX_BODY_LINES",
    "MAX_LINE_LENGTH",
    "TRANSPORTS",
    "Event",
    "EventKind",
    "MergeResult",
    "Node",
    "NodeKey",
    "NodeList",
    "NodeListError",
    "NodeStatus",
    "TimeoutOutcome",
    "TimeoutPolicy",
    "parse_body",
    "kamailio_version",
    "server_address_uri",
    "SPOKEN_TRANSPORTS",
]

MAX_BODY_LINES = 10_000
"""The most lines a node-list body may have; a longer body is refused whole."""

MAX_LINE_LENGTH = 1024
"""The longest node-list line accepted (a real one is under 300 characters)."""

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


class EventKind(enum.Enum):
    """What happened to a remote node, named as Kamailio's event routes."""

    PEER_UP = "peer-up"
    """A remote node became active, or was added as active."""
    PEER_DOWN = "peer-down"
    """A remote node went from active to not active."""
    PEER_DISABLED = "peer-disabled"
    """A remote node became disabled, or was removed while not disabled."""


@dataclass(frozen=True)
class Event:
    """One membership event about one remote node."""

    kind: EventKind
    node: "Node"


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
        self.status = status
        self.local = local
        self.seed = seed
        self.fail_count = 0
        self.last_seen: Optional[float] = None
        self.resolved_ip: Optional[str] = _ip_of(host)
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
        else:
            try:
                uri = SIPURI.parse(uri_or_text)
            except SIPParseError as e:
                raise NodeListError(f"bad node URI {uri_or_text!r}: {e}") from None
        if uri.scheme != "sip":
            raise NodeListError(f"node URI {str(uri)!r} is not a sip: URI")
        if status is None:
            status = NodeStatus.ACTIVE
            if "status" in uri.params:
                wire = uri.params["status"]
                if wire is None:
                    raise NodeListError(f"empty status in node URI {str(uri)!r}")
                status = NodeStatus.from_wire(wire)
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
    if isinstance(value, SIPURI):
        uri = value
    else:
        try:
            uri = SIPURI.parse(value)
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


@dataclass(frozen=True)
class _Line:
    """One parsed body line: the node it names, its status, whether it had params."""

    node: Node
    status: NodeStatus
    has_params: bool


def _parse_line(text: str, number: int) -> _Line:
    """Parse one node-list line (already stripped of its line end)."""
    where = f"node-list line {number}"
    if not text:
        raise NodeListError(f"{where} is empty")
    if len(text) > MAX_LINE_LENGTH:
        raise NodeListError(f"{where} is longer than {MAX_LINE_LENGTH} characters")
    try:
        uri = SIPURI.parse(text)
    except SIPParseError as e:
        raise NodeListError(f"{where}: {e}") from None
    if uri.scheme != "sip":
        raise NodeListError(f"{where}: not a sip: URI: {text!r}")
    if uri.port is None:
        raise NodeListError(f"{where}: no port in {text!r}")
    status = NodeStatus.ACTIVE
    if "status" in uri.params:
        wire = uri.params["status"]
        if wire is None:
            raise NodeListError(f"{where}: status without a value in {text!r}")
        try:
            status = NodeStatus.from_wire(wire)
        except NodeListError as e:
            raise NodeListError(f"{where}: {e}") from None
    try:
        node = Node(uri.host, uri.port, uri.transport, status=status)
    except NodeListError as e:
        raise NodeListError(f"{where}: {e}") from None
    return _Line(node, status, bool(uri.params))


def _parse_lines(body: bytes) -> list[_Line]:
    """Validate a whole body and parse every line of it."""
    if not body:
        return []
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise NodeListError(f"node-list body is not UTF-8: {e}") from None
    lines = text.split("\n")
    if lines[-1] == "":
        # The line end of the last line, not an empty line after it.
        lines.pop()
    if len(lines) > MAX_BODY_LINES:
        raise NodeListError(f"node-list body has more than {MAX_BODY_LINES} lines")
    # Kamailio trims trailing white space (and so the CR of a CRLF) from a line.
    return [_parse_line(line.rstrip(" \t\r"), n) for n, line in enumerate(lines, 1)]


def parse_body(body: bytes) -> list[tuple[Node, NodeStatus]]:
    """
    Parse a node-list body (``notification_peer`` channel) as a whole.

    One ``sip:`` URI a line, each ending in CRLF (a bare LF, and no line end
    after the last line, are accepted too); the host an IP literal or a host
    name, the port explicit, the transport one of :data:`TRANSPORTS`, a user
    part and parameters other than ``transport`` and ``status`` ignored.  A
    line without ``;status=`` means active.  An empty body is an empty list.

    :returns: each line's node (a fresh :class:`Node` holding the line's
        status) and that status, in body order.
    :raises NodeListError: for the first bad line (unparsable URI, another
        scheme, no port, unknown status, an empty line anywhere, trailing ones
        included), for a body that is not UTF-8 or has more than
        :data:`MAX_BODY_LINES` lines.  Nothing is returned then.
    """
    return [(line.node, line.status) for line in _parse_lines(body)]


@dataclass
class MergeResult:
    """
    What :meth:`NodeList.merge_body` did.

    :ivar added: nodes new to the list, in body order.
    :ivar changed: known nodes whose status the body changed (not those added).
    :ivar events: the events of both, in the order they happened.
    """

    added: list[Node] = field(default_factory=list)
    changed: list[Node] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)

    @property
    def changed_anything(self) -> bool:
        """Whether a node was added or changed (what makes a request re-broadcast)."""
        return bool(self.added or self.changed)


@dataclass(frozen=True)
class TimeoutPolicy:
    """
    What a 408 does to a node: Kamailio's dmq modparams of the same names.

    :ivar remove_inactive: a timed-out node becomes disabled (and is deleted
        at the next timeout); when false it only becomes not active.
    :ivar keep_disabled: a timeout of a disabled node keeps it disabled
        instead of deleting it (Kamailio's development branch after 6.1.4).
    :ivar fail_count_enabled: count 408s per node and let the thresholds
        decide (6.1).
    :ivar fail_count_threshold_not_active: active -> not active when the
        count is greater than this.
    :ivar fail_count_threshold_disabled: not active -> disabled when the
        count is greater than this.
    """

    remove_inactive: bool = True
    keep_disabled: bool = False
    fail_count_enabled: bool = False
    fail_count_threshold_not_active: int = 0
    fail_count_threshold_disabled: int = 1


@dataclass(frozen=True)
class TimeoutOutcome:
    """
    What :meth:`NodeList.mark_timeout` did.

    :ivar removed: whether the node was deleted from the list.
    :ivar status: the node's status afterwards (its last status if removed).
    :ivar events: the events of the change.
    """

    removed: bool
    status: NodeStatus
    events: list[Event]


NodeRef = Union[Node, NodeKey, SIPURI, str]
"""Anything a :class:`NodeList` can find a node by."""


class NodeList:
    """
    The nodes this node knows, the local one included, and the rules that
    change them.

    Iteration gives the local node first, then the others in the order they
    were added.  At most one node per :attr:`Node.key`.

    Events: every change of a remote node's status goes through one rule
    (Kamailio's ``update_dmq_node_status``): to active from anything else is
    peer-up, active to not active is peer-down, active or not active to
    disabled is peer-disabled, and removing a node that is not disabled is
    peer-disabled.  Of those, an event equal to the node's previous one is
    dropped, and after peer-disabled only peer-up is reported.  The local
    node never has events.  A node's history goes when it is removed, so a
    node that comes back starts afresh.
    """

    def __init__(self, local: Node, *, reactivate_disabled_from_body: bool = False) -> None:
        """
        :param local: this node (``server_address``); it is marked local and
            active.
        :param reactivate_disabled_from_body: let a body line saying
            ``active`` bring back a disabled node (Kamailio's development
            branch after 6.1.4).  By default (5.6 to 6.1.4) a disabled node
            ignores every body line and only a reply to a request sent to it
            reactivates it.
        """
        local.local = True
        local.status = NodeStatus.ACTIVE
        self._local = local
        self._nodes: dict[NodeKey, Node] = {local.key: local}
        self._last_event: dict[NodeKey, EventKind] = {}
        self.reactivate_disabled_from_body = reactivate_disabled_from_body

    # -- lookup -----------------------------------------------------------

    @property
    def local(self) -> Node:
        """The local node."""
        return self._local

    def __iter__(self) -> Iterator[Node]:
        """The local node, then the others in insertion order."""
        return iter(list(self._nodes.values()))

    def __len__(self) -> int:
        return len(self._nodes)

    def __contains__(self, item: object) -> bool:
        """Whether a node of that key is here (a Node, key, SIPURI or URI text)."""
        if not isinstance(item, (Node, tuple, SIPURI, str)):
            return False
        try:
            return self.get(item) is not None
        except NodeListError:
            return False

    @staticmethod
    def _key_of(ref: NodeRef) -> NodeKey:
        """The key a node reference stands for."""
        if isinstance(ref, Node):
            return ref.key
        if isinstance(ref, tuple):
            return ref
        if isinstance(ref, SIPURI) and ref.scheme == "sip":
            # The hot path (every inbound message): no Node built.
            port = "" if ref.port is None else str(ref.port)
            return (ref.host, port, ref.transport)
        return Node.from_uri(ref).key

    def get(self, key_or_uri: NodeRef) -> Optional[Node]:
        """
        The node of that address, or ``None``.

        :param key_or_uri: a :attr:`Node.key`, a :class:`Node` (found by its
            key), a :class:`SIPURI` or URI text (user part and parameters
            other than ``transport`` ignored).
        :raises NodeListError: when URI text is malformed or not ``sip:``.
        """
        return self._nodes.get(self._key_of(key_or_uri))

    def others(self) -> list[Node]:
        """Every node but the local one, in insertion order."""
        return [n for n in self._nodes.values() if not n.local]

    def active(self, include_local: bool = False) -> list[Node]:
        """
        The active remote nodes (what a broadcast goes to), in insertion order.

        :param include_local: put the local node first as well.
        """
        nodes = [n for n in self.others() if n.status is NodeStatus.ACTIVE]
        return [self._local, *nodes] if include_local else nodes

    # -- events -----------------------------------------------------------

    def _emit(self, node: Node, kind: EventKind, events: list[Event]) -> None:
        """Record ``kind`` for ``node`` unless it repeats or follows peer-disabled wrongly."""
        if node.local:
            return
        last = self._last_event.get(node.key)
        if last is kind:
            return
        if last is EventKind.PEER_DISABLED and kind is not EventKind.PEER_UP:
            return
        self._last_event[node.key] = kind
        events.append(Event(kind, node))

    def _set(self, node: Node, status: NodeStatus, events: list[Event]) -> None:
        """Change a listed node's status, emitting the event of the transition."""
        old, node.status = node.status, status
        if status is NodeStatus.ACTIVE and old is not NodeStatus.ACTIVE:
            self._emit(node, EventKind.PEER_UP, events)
        elif status is NodeStatus.NOT_ACTIVE and old is NodeStatus.ACTIVE:
            self._emit(node, EventKind.PEER_DOWN, events)
        elif status is NodeStatus.DISABLED and old is not NodeStatus.DISABLED:
            self._emit(node, EventKind.PEER_DISABLED, events)

    def _listed(self, node: Node) -> Optional[Node]:
        """The node of this list with ``node``'s key, if any."""
        return self._nodes.get(node.key)

    # -- changes ----------------------------------------------------------

    def add(self, node: Node, events: Optional[list[Event]] = None) -> Node:
        """
        Add a remote node unless one of its key is already here.

        A node added as active reports peer-up.

        :param events: a list to append the events of the change to (they are
            recorded in the node's history whether or not one is given).
        :returns: the node now in the list: ``node``, or the one already here
            (left unchanged).
        :raises ValueError: when ``node`` is marked local (a list has one
            local node, given to its constructor).
        """
        existing = self._nodes.get(node.key)
        if existing is not None:
            return existing
        if node.local:
            raise ValueError(f"cannot add a second local node {node!r}")
        self._nodes[node.key] = node
        if node.status is NodeStatus.ACTIVE:
            self._emit(node, EventKind.PEER_UP, [] if events is None else events)
        return node

    def remove(self, node: NodeRef, events: Optional[list[Event]] = None) -> bool:
        """
        Remove a remote node (operator ``dmq.remove``, or a timeout).

        Removing a node that is not disabled reports peer-disabled; its event
        history is then forgotten.

        :param node: the node, or anything :meth:`get` takes.
        :param events: a list to append the events of the change to.
        :returns: whether a node was removed (never the local node).
        """
        listed = self.get(node)
        if listed is None or listed.local:
            return False
        sink = [] if events is None else events
        if listed.status is not NodeStatus.DISABLED:
            self._emit(listed, EventKind.PEER_DISABLED, sink)
        del self._nodes[listed.key]
        self._last_event.pop(listed.key, None)
        return True

    def set_status(
        self, node: NodeRef, status: NodeStatus, now: Optional[float] = None
    ) -> list[Event]:
        """
        Change a remote node's status by operator decision (``dmq.change_status``).

        Neither ``fail_count`` nor ``last_seen`` changes: the node said
        nothing.  ``now`` is accepted for symmetry with the other changes and
        is not used.

        :returns: the events of the change (none when the status is the same).
        :raises ValueError: for the local node or a node not in the list (the
            RPC answers "Node is local" / "Node Not Found").
        """
        listed = self.get(node)
        if listed is None:
            raise ValueError(f"node {node!r} is not in the node list")
        if listed.local:
            raise ValueError("the status of the local node cannot be changed")
        events: list[Event] = []
        self._set(listed, status, events)
        return events

    def merge_body(self, body: bytes, now: float, sender: Optional[Node] = None) -> MergeResult:
        """
        Apply a received node-list body (a request's or a 200 reply's).

        The body is validated whole first (:func:`parse_body`); then, line by
        line in body order (a repeated line sees the effect of the earlier one):

        - a node not in the list is added with the line's status (peer-up when
          active);
        - the local node's own line is ignored;
        - a line without any URI parameter leaves a known node's status alone
          (Kamailio only applies the status of a line that has parameters);
        - a known node held disabled ignores the line, except that with
          ``reactivate_disabled_from_body`` a line saying active brings it
          back (Kamailio after 6.1.4);
        - otherwise a different status is taken over (changed).

        :param now: the time, recorded as the sender's ``last_seen``.
        :param sender: the node the body came from (the From of a request,
            the node a request went to for a reply), looked up by key after
            the merge; ignored when it is not in the list.
        :raises NodeListError: for a bad body; the list is then unchanged.
        """
        lines = _parse_lines(body)
        result = MergeResult()
        for line in lines:
            known = self._nodes.get(line.node.key)
            if known is None:
                self.add(line.node, result.events)
                result.added.append(line.node)
                continue
            if known.local or not line.has_params or known.status is line.status:
                continue
            if known.status is NodeStatus.DISABLED and not (
                self.reactivate_disabled_from_body and line.status is NodeStatus.ACTIVE
            ):
                continue
            self._set(known, line.status, result.events)
            if known not in result.added and known not in result.changed:
                result.changed.append(known)
        if sender is not None:
            listed = self._listed(sender)
            if listed is not None and not listed.local:
                listed.last_seen = now
        return result

    def mark_reply(self, node: Node, now: float) -> list[Event]:
        """
        Record a 200 to a node-list request (a join or a ping) from ``node``.

        The node becomes active whatever its status (the only way a disabled
        node comes back in 5.6), its fail count is reset, ``last_seen`` is
        ``now``.  Merging the reply's body is :meth:`merge_body`'s job.

        :returns: the events (peer-up when it was not active); none for a
            node not in the list or the local node.
        """
        listed = self._listed(node)
        if listed is None or listed.local:
            return []
        events: list[Event] = []
        listed.fail_count = 0
        listed.last_seen = now
        self._set(listed, NodeStatus.ACTIVE, events)
        return events

    def mark_timeout(self, node: Node, now: float, settings: TimeoutPolicy) -> TimeoutOutcome:
        """
        Record a 408 of a node-list request (join or ping) sent to ``node``.

        The first rule that applies decides:

        1. ``keep_disabled`` and the node is disabled: it stays disabled,
           uncounted (Kamailio's development branch after 6.1.4).
        2. Without fail counting, a seed (``notification_address``) becomes
           not active whatever its status, and is never deleted (5.6: the
           seed check comes first and sets ``pending``; 6.0 and 6.1 check
           for disabled first and would delete a seed held disabled).
        3. A disabled node is deleted (5.6, 6.0, 6.1), except a seed (fail
           counting on), which stays disabled: a seed is the way back in.
        4. With ``fail_count_enabled`` (6.1): ``fail_count`` goes up by one,
           then an active node becomes not active when
           ``fail_count > fail_count_threshold_not_active``, or a not-active
           node becomes disabled when
           ``fail_count > fail_count_threshold_disabled``.  Both comparisons
           are strict and one 408 moves a node at most one step, so with the
           defaults (0, 1) the first 408 makes it not active, the second
           disabled and the third deletes it (rule 3).  A seed follows the
           same steps here (6.1 has no seed rule in this mode) but stops at
           disabled.  Read from Kamailio 6.1's dmq docs ("change from active
           to not_active if 408 fail counts are greater than this threshold",
           "Move node to 'disabled' state on second fail") and its
           ``update_dmq_node_status_on_timeout``.
        5. Otherwise the node becomes disabled, or not active when
           ``remove_inactive`` is false (6.0 and later).

        A node not in the list, or the local node, is left alone.

        :param now: the time of the timeout (unused: a timeout is not contact).
        :returns: whether it was removed, its status afterwards, the events.
        """
        listed = self._listed(node)
        if listed is None or listed.local:
            return TimeoutOutcome(False, node.status, [])
        events: list[Event] = []
        status = listed.status
        if status is NodeStatus.DISABLED and settings.keep_disabled:
            pass
        elif listed.seed and not settings.fail_count_enabled:
            self._set(listed, NodeStatus.NOT_ACTIVE, events)
        elif status is NodeStatus.DISABLED:
            if listed.seed:
                listed.fail_count += 1
            else:
                self.remove(listed, events)
                return TimeoutOutcome(True, status, events)
        elif settings.fail_count_enabled:
            listed.fail_count += 1
            if (
                status is NodeStatus.NOT_ACTIVE
                and listed.fail_count > settings.fail_count_threshold_disabled
            ):
                self._set(listed, NodeStatus.DISABLED, events)
            elif (
                status is NodeStatus.ACTIVE
                and listed.fail_count > settings.fail_count_threshold_not_active
            ):
                self._set(listed, NodeStatus.NOT_ACTIVE, events)
        elif settings.remove_inactive:
            self._set(listed, NodeStatus.DISABLED, events)
        else:
            self._set(listed, NodeStatus.NOT_ACTIVE, events)
        return TimeoutOutcome(False, listed.status, events)

    def mark_message_timeout(
        self, node: Node, now: float, settings: TimeoutPolicy
    ) -> TimeoutOutcome:
        """
        Record a 408 of a request on another channel (htable, usrloc, ...).

        Only fail counting (6.1) looks at these: an *active* node's
        ``fail_count`` goes up and it becomes not active when the count is
        greater than ``fail_count_threshold_not_active``; other traffic never
        disables or deletes a node.  Without fail counting nothing changes.

        :param now: the time of the timeout (unused).
        """
        listed = self._listed(node)
        if listed is None or listed.local:
            return TimeoutOutcome(False, node.status, [])
        events: list[Event] = []
        if settings.fail_count_enabled and listed.status is NodeStatus.ACTIVE:
            listed.fail_count += 1
            if listed.fail_count > settings.fail_count_threshold_not_active:
                self._set(listed, NodeStatus.NOT_ACTIVE, events)
        return TimeoutOutcome(False, listed.status, events)

    # -- the body ---------------------------------------------------------

    def format_body(self, leaving: bool = False) -> bytes:
        """
        This list as a node-list body, exactly as Kamailio writes it.

        Kamailio keeps its nodes newest first with the local node, added at
        start-up, last; its body walks that list writing the local node and
        every active node.  So: the active remote nodes, newest first, then
        the local line (``active``, or ``disabled`` when ``leaving``), each
        line ending in CRLF, the status always written.  A Kamailio 5.6.3
        reply to a joining node shows this order.

        :param leaving: write the local node as disabled (the last message of
            a node that stops).
        """
        local_status = NodeStatus.DISABLED if leaving else NodeStatus.ACTIVE
        lines = [n.line() for n in reversed(self.active())]
        lines.append(self._local.line(local_status))
        return "".join(f"{line}\r\n" for line in lines).encode("utf-8")
