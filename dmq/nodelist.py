"""
The rules that change a DMQ node list (the state half of Kamailio's
``notification_peer.c``): merging a received body, replies and timeouts,
operator changes, and the peer events they cause.

Pure code: no Twisted, no I/O, no clock.  Every method that needs the time
takes it as a ``now: float`` argument; :mod:`dmq.membership` and the
notification peer drive this module from the network and their timers.

Where Kamailio versions differ, the default here is Kamailio 5.6 (released
5.8, 6.0 and 6.1 behave the same on these points) and a flag selects the
newer behaviour:

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
that a node never reports the same event twice in a row.  What the methods
return (:class:`Event`, :class:`MergeResult`, :class:`TimeoutOutcome`) and the
:class:`TimeoutPolicy` they follow are defined in :mod:`dmq.changes`.
"""

from __future__ import annotations

from typing import Iterator, Optional, Union

from dmq.changes import Event, EventKind, MergeResult, TimeoutOutcome, TimeoutPolicy
from dmq.node import BodyLine, Node, NodeKey, NodeListError, NodeStatus, parse_lines
from dmq.sip.uri import SIPURI

__all__ = [
    "MAX_NODES",
    "MAX_NEW_PER_LIST",
    "NodeList",
    "NodeRef",
]


MAX_NODES = 512
"""Default cap on the nodes of a list (this one included): twice a 256-node cluster."""

PARSED_LINES = 32768
"""The most lines of received bodies kept parsed, over all senders (all are forgotten when there are more)."""

MAX_NEW_PER_LIST = 256
"""Default cap on the nodes one received list may add (a whole 256-node cluster joined at once)."""


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

    def __init__(
        self,
        local: Node,
        *,
        reactivate_disabled_from_body: bool = False,
        max_nodes: int = MAX_NODES,
        max_new_per_list: int = MAX_NEW_PER_LIST,
    ) -> None:
        """
        :param local: this node (``server_address``); it is marked local and
            active.
        :param reactivate_disabled_from_body: let a body line saying
            ``active`` bring back a disabled node (Kamailio's development
            branch after 6.1.4).  By default (5.6 to 6.1.4) a disabled node
            ignores every body line and only a reply to a request sent to it
            reactivates it.
        :param max_nodes: the most nodes the list holds (this one included);
            a received list adds none beyond it.
        :param max_new_per_list: the most nodes one received list may add.
        """
        local.local = True
        local.status = NodeStatus.ACTIVE
        self._local = local
        self._nodes: dict[NodeKey, Node] = {local.key: local}
        self._last_event: dict[NodeKey, EventKind] = {}
        self.reactivate_disabled_from_body = reactivate_disabled_from_body
        self.max_nodes = max_nodes
        self.max_new_per_list = max_new_per_list
        # The bodies format_body wrote, by the local node's status, until the list changes.
        self._bodies: dict[NodeStatus, bytes] = {}
        # The last body each sender sent, parsed (see _parse).
        self._parsed: dict[NodeKey, tuple[bytes, list[BodyLine]]] = {}
        self._unchanging: dict[NodeKey, int] = {}
        """Per listed sender whose last list (the one kept in ``_parsed``) changed nothing: the version after it."""
        self._parsed_lines = 0
        self.version = 0
        """Goes up at every change of the list (a node added or removed, a status changed)."""
        self._member_ips: frozenset[str] = frozenset()
        self._member_ips_version = -1
        # Nodes that timed out or were removed here: until when only they themselves
        # (their own list, their answer) may bring them back; see hold_out.
        self._held: dict[NodeKey, float] = {}

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
    def key_of(ref: NodeRef) -> NodeKey:
        """
        The key a node reference stands for.

        :raises NodeListError: when URI text is malformed or not ``sip:``.
        """
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
        return self._nodes.get(self.key_of(key_or_uri))

    def count_by_status(self) -> dict[NodeStatus, int]:
        """How many nodes (this one included) have each status, every status listed."""
        counts = dict.fromkeys(NodeStatus, 0)
        for node in self._nodes.values():
            counts[node.status] += 1
        return counts

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
        self._changed()
        if status is NodeStatus.ACTIVE and old is not NodeStatus.ACTIVE:
            self._emit(node, EventKind.PEER_UP, events)
        elif status is NodeStatus.NOT_ACTIVE and old is NodeStatus.ACTIVE:
            self._emit(node, EventKind.PEER_DOWN, events)
        elif status is NodeStatus.DISABLED and old is not NodeStatus.DISABLED:
            self._emit(node, EventKind.PEER_DISABLED, events)

    def _changed(self) -> None:
        self._bodies.clear()
        self.version += 1

    def member_ips(self) -> frozenset[str]:
        """The IP addresses of the remote nodes (any status), for telling members from strangers."""
        if self._member_ips_version != self.version:
            self._member_ips = frozenset(n.resolved_ip for n in self._nodes.values() if n.resolved_ip and not n.local)
            self._member_ips_version = self.version
        return self._member_ips

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
        self._held.pop(node.key, None)
        self._nodes[node.key] = node
        self._changed()
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
        self._changed()
        self._last_event.pop(listed.key, None)
        return True

    def hold_out(self, node: NodeRef, until: float) -> None:
        """
        Until ``until``, let only ``node`` itself bring it back.

        A node that just timed out here, or was removed, is still listed as
        active by the nodes that have not noticed yet (a partition cuts
        them off at different moments); their lists would bring it straight
        back, and nodes on one side of a partition would keep each other's
        stale view alive for good.  Until ``until`` (the time given to
        :meth:`merge_body`), a line of another sender neither adds it nor
        makes it active; its own list or its answer (:meth:`mark_reply`)
        does, and lifts the hold, as does :meth:`add`.
        """
        key = self.key_of(node)
        if key != self._local.key:
            self._held[key] = until
            self.version += 1  # a list that changed nothing before might now: merge it again

    def _held_out(self, key: NodeKey, now: float) -> bool:
        """Whether ``key`` is held out at ``now`` (a hold whose time is over is forgotten)."""
        until = self._held.get(key)
        if until is None:
            return False
        if now < until:
            return True
        del self._held[key]
        return False

    def set_status(self, node: NodeRef, status: NodeStatus) -> list[Event]:
        """
        Change a remote node's status by operator decision (``dmq.change_status``).

        Neither ``fail_count`` nor ``last_seen`` changes: the node said nothing.

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

    def merge_body(
        self, body: bytes, now: float, sender: Optional[Node] = None, trusted: bool = True
    ) -> MergeResult:
        """
        Apply a received node-list body (a request's or a 200 reply's).

        The body is validated whole first (:func:`~dmq.node.parse_lines`);
        then, line by line in body order (a repeated line sees the effect of
        the earlier one):

        - a node not in the list is added with the line's status (peer-up when
          active), unless the list holds :attr:`max_nodes` already, this body
          added :attr:`max_new_per_list`, nothing may be sent to its address
          (multicast, broadcast, unspecified), the body is not ``trusted``
          and the line does not name the ``sender``, or the node was removed
          a moment ago (:meth:`hold_out`) and the body is not its own
          (refused, counted);
        - a known node that timed out here a moment ago (:meth:`hold_out`)
          is not made active by another sender's line;
        - the local node's own line is ignored;
        - a line without any URI parameter leaves a known node's status alone
          (Kamailio only applies the status of a line that has parameters);
        - a known node held disabled ignores the line, except that with
          ``reactivate_disabled_from_body`` a line saying active brings it
          back (Kamailio after 6.1.4);
        - a body that is not ``trusted`` changes no node but its sender;
        - otherwise a different status is taken over (changed).

        :param now: the time, recorded as the sender's ``last_seen``.
        :param sender: the node the body came from (the From of a request,
            the node a request went to for a reply).
        :param trusted: whether the sender may vouch for other nodes: a
            member of the list, or a seed answering this node's join.  A
            stranger's body adds at most the stranger itself.
        :raises NodeListError: for a bad body; the list is then unchanged.
        """
        sender_key = sender.key if sender is not None else None
        if sender_key is not None and body and self._unchanged(sender_key, body):
            # The very list this sender sent last, which changed nothing, and the list
            # has not changed since: it changes nothing again (a settled cluster's pings).
            self._seen(sender_key, now)
            return MergeResult()
        lines = self._parse(body, sender_key)
        result = MergeResult()
        held = False
        nodes = self._nodes
        touched: set[NodeKey] = set()
        room = min(self.max_new_per_list, self.max_nodes - len(nodes))
        for line in lines:
            key = line.node.key
            if not trusted and key != sender_key:
                if key not in nodes:
                    result.refused += 1
                continue
            known = nodes.get(key)
            if known is None:
                if key != sender_key and self._held_out(key, now):
                    held = True
                    result.refused += 1
                    continue
                if room <= 0 or not line.node.sendable:
                    result.refused += 1
                    continue
                room -= 1
                added = self.add(line.node.copy(), result.events)
                result.added.append(added)
                touched.add(key)
                continue
            if known.local or not line.has_params or known.status is line.status:
                continue
            if line.status is NodeStatus.ACTIVE and key != sender_key and self._held_out(key, now):
                held = True
                continue
            if known.status is NodeStatus.DISABLED and not (
                self.reactivate_disabled_from_body and line.status is NodeStatus.ACTIVE
            ):
                continue
            self._set(known, line.status, result.events)
            if key not in touched:
                touched.add(key)
                result.changed.append(known)
        if sender_key is not None:
            self._seen(sender_key, now)
            if body and sender_key in nodes and not (held or result.refused or result.changed_anything):
                self._unchanging[sender_key] = self.version
            else:
                self._unchanging.pop(sender_key, None)
        return result

    def _unchanged(self, sender_key: NodeKey, body: bytes) -> bool:
        """Whether ``body`` is the list this sender sent last, which changed nothing, with no change since."""
        kept = self._parsed.get(sender_key)
        return kept is not None and kept[0] == body and self._unchanging.get(sender_key) == self.version

    def _seen(self, sender_key: NodeKey, now: float) -> None:
        """A list came from ``sender_key``: it is its own proof of life (hold lifted, ``last_seen`` now)."""
        if self._held.pop(sender_key, None) is not None:
            self.version += 1
        listed = self._nodes.get(sender_key)
        if listed is not None and not listed.local:
            listed.last_seen = now

    def _parse(self, body: bytes, sender_key: Optional[NodeKey]) -> list[BodyLine]:
        """
        The lines of ``body``: parsed once per sender and body.  In a settled
        cluster every node sends the same list again at every ping, and
        parsing is most of what merging costs; the bodies kept are bounded by
        :data:`PARSED_LINES` lines in all.
        """
        if sender_key is None or not body:
            return parse_lines(body)  # an empty body (a dmq node's answer to a ping) leaves the sender's list kept
        kept = self._parsed.get(sender_key)
        if kept is not None and kept[0] == body:
            return kept[1]
        lines = parse_lines(body)
        if kept is not None:
            self._parsed_lines -= len(kept[1])
        if self._parsed_lines + len(lines) > PARSED_LINES:
            self._parsed.clear()
            self._parsed_lines = 0
        self._parsed[sender_key] = (body, lines)
        self._parsed_lines += len(lines)
        return lines

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
        self._held.pop(listed.key, None)
        events: list[Event] = []
        listed.fail_count = 0
        listed.last_seen = now
        self._set(listed, NodeStatus.ACTIVE, events)
        return events

    def mark_timeout(self, node: Node, settings: TimeoutPolicy) -> TimeoutOutcome:
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

    def mark_message_timeout(self, node: Node, settings: TimeoutPolicy) -> TimeoutOutcome:
        """
        Record a 408 of a request on another channel (htable, usrloc, ...).

        Only fail counting (6.1) looks at these: an *active* node's
        ``fail_count`` goes up and it becomes not active when the count is
        greater than ``fail_count_threshold_not_active``; other traffic never
        disables or deletes a node.  Without fail counting nothing changes.
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

    def format_body(self, leaving: bool = False, limit: Optional[int] = None) -> bytes:
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
        :param limit: the most bytes the body may have: the local line and as
            many of the newest active nodes as fit (the local line is always
            there).
        """
        local_status = NodeStatus.DISABLED if leaving else NodeStatus.ACTIVE
        body = self._bodies.get(local_status)
        if body is None:
            lines = [n.line() for n in reversed(self.active())]
            lines.append(self._local.line(local_status))
            body = self._bodies[local_status] = "".join(f"{line}\r\n" for line in lines).encode("utf-8")
        if limit is None or len(body) <= limit:
            return body
        parts = body.split(b"\r\n")[:-1]
        kept = [parts[-1]]
        size = len(parts[-1]) + 2
        for part in parts[:-1]:
            size += len(part) + 2
            if size > limit:
                break
            kept.insert(len(kept) - 1, part)
        return b"".join(part + b"\r\n" for part in kept)
