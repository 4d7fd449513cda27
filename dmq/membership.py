"""
:class:`Membership`: a node's list of nodes, and what follows from its changes.

The :class:`~dmq.nodelist.NodeList` holds the rules; this object applies them
to what happens on the wire and tells the rest of the node: it publishes the
peer-up / peer-down / peer-disabled events to listeners, records round trips,
turns the results of sent messages into reply and timeout rules (in one
place for every channel), makes the node ready once the first node list has
arrived, and carries out the operator's changes (``dmq.add``, ``dmq.remove``,
``dmq.change_status``).
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Iterable, Optional, Union

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from dmq.changes import Event, TimeoutPolicy
from dmq.node import Node, NodeKey, NodeStatus
from dmq.nodelist import NodeList, NodeRef
from dmq.sip.uri import SIPURI

__all__ = ["Membership", "EventListener", "HISTORY"]

log = Logger()

EventListener = Callable[[Event], Any]

HISTORY = 200
"""How many recent membership events a node keeps (for its status page)."""


class Membership:
    """
    The node list of one node and its consequences.

    :param nodes: the node list (its local node is this node).
    :param clock: the ``IReactorTime`` to read the time from.
    :param policy: what a timeout does (``remove_inactive``, fail counting).
    :param init_with_single: become ready also when no seed answers.
    :param on_ready: called once, when the node becomes ready (the service
        runs its peers' init hooks there).
    :param timeout_hold: for this many seconds after a node times out here
        or is removed, only the node itself (its own list, its answer) brings
        it back (:meth:`NodeList.hold_out`): the lists of nodes that have not
        noticed yet are stale on it.  The service gives the request timeout,
        64*T1.
    :ivar rtt: the last node-list round trip per node key, in seconds.
    :ivar ready: whether the first node list has arrived.
    :ivar history: the most recent events (at most :data:`HISTORY`), oldest
        first, each with the time it happened.
    """

    def __init__(
        self,
        nodes: NodeList,
        clock: Any,
        policy: TimeoutPolicy = TimeoutPolicy(),
        init_with_single: bool = False,
        on_ready: Optional[Callable[[], None]] = None,
        timeout_hold: float = 0.0,
    ) -> None:
        self.nodes = nodes
        self.timeout_hold = timeout_hold
        self.clock = clock
        self.policy = policy
        self.init_with_single = init_with_single
        self.on_ready = on_ready
        self.rtt: dict[NodeKey, float] = {}
        self.ready = False
        self.history: deque[tuple[float, Event]] = deque(maxlen=HISTORY)
        self._listeners: list[EventListener] = []
        self._ready_waiters: list[Deferred[None]] = []

    # -- events -----------------------------------------------------------------

    def add_event_listener(self, listener: EventListener) -> None:
        """Call ``listener(event)`` on each peer-up, peer-down, peer-disabled."""
        self._listeners.append(listener)

    def remove_event_listener(self, listener: EventListener) -> None:
        """Stop calling ``listener``."""
        self._listeners.remove(listener)

    def publish(self, events: Iterable[Event]) -> None:
        """Log each event and hand it to every listener (a failing listener is logged and skipped)."""
        for event in events:
            log.info("{kind}: {uri}", kind=event.kind.value, uri=str(event.node.uri))
            self.history.append((float(self.clock.seconds()), event))
            for listener in list(self._listeners):
                try:
                    listener(event)
                except Exception:
                    log.failure("event listener failed on {kind}", kind=event.kind.value)

    # -- readiness ----------------------------------------------------------------

    def when_ready(self) -> "Deferred[None]":
        """A new Deferred that fires once the first node list has arrived."""
        d: Deferred[None] = Deferred()
        if self.ready:
            d.callback(None)
        else:
            self._ready_waiters.append(d)
        return d

    def node_list_received(self) -> None:
        """A node list arrived: the first one makes the node ready."""
        if self.ready:
            return
        self.ready = True
        log.info("first node list received; {count} node(s) known", count=len(self.nodes))
        if self.on_ready is not None:
            self.on_ready()
        waiters, self._ready_waiters = self._ready_waiters, []
        for d in waiters:
            d.callback(None)

    def alone(self) -> None:
        """No seed, or none answered: ready anyway with ``init_with_single``."""
        if self.init_with_single:
            self.node_list_received()

    # -- results of sent messages --------------------------------------------------

    def result(self, node: Node, code: int, sent_at: float, node_list: bool) -> None:
        """
        Apply the final answer ``code`` that ``node`` gave (408: none) to a
        message sent at ``sent_at``.

        For a node-list request (a join, a ping, a broadcast) a 200 records
        the round trip and makes the node active (:meth:`NodeList.mark_reply`),
        and a 408 applies the timeout rules, unless the node has answered
        something sent later, or was removed and listed again since (then
        the timeout is stale: it concerns a node that is gone).  For any other
        channel only a 408 counts, and only with fail counting
        (:meth:`NodeList.mark_message_timeout`).
        """
        if not node_list:
            if code == 408:
                self.publish(self.nodes.mark_message_timeout(node, self.policy).events)
            return
        now = float(self.clock.seconds())
        if code == 200:
            self.rtt[node.key] = now - sent_at
            self.publish(self.nodes.mark_reply(node, now))
        elif code == 408:
            listed = self.nodes.get(node.key)
            if listed is not node:
                return  # removed (and perhaps listed again) since the request went: stale
            if listed.last_seen is not None and listed.last_seen >= sent_at:
                return  # the node answered something sent later: this timeout is stale
            outcome = self.nodes.mark_timeout(node, self.policy)
            self.nodes.hold_out(node, now + self.timeout_hold)
            self.publish(outcome.events)
            if outcome.removed:
                log.info("node {uri} removed after a timeout", uri=str(node.uri))

    # -- operator changes ------------------------------------------------------------

    def add_node(self, uri: Union[str, SIPURI]) -> Node:
        """
        Add a node by its URI (Kamailio's ``dmq.add``): active unless the URI
        carries ``;status=``.

        :raises NodeListError: when ``uri`` is no acceptable node URI.
        :raises ValueError: when the node is already in the list.
        """
        node = Node.from_uri(uri)
        if self.nodes.get(node) is not None:
            raise ValueError(f"node {node.uri} is already in the node list")
        events: list[Event] = []
        self.nodes.add(node, events)
        log.info("node {uri} added by the operator ({status})", uri=str(node.uri), status=node.status.value)
        self.publish(events)
        return node

    def remove_node(self, uri: NodeRef) -> bool:
        """
        Remove a remote node (Kamailio's ``dmq.remove``).

        :returns: whether a node was removed (never the local node).
        :raises NodeListError: when ``uri`` is no acceptable node URI.
        """
        events: list[Event] = []
        removed = self.nodes.remove(uri, events)
        if removed:
            self.nodes.hold_out(uri, float(self.clock.seconds()) + self.timeout_hold)
            log.info("node {uri} removed by the operator", uri=str(uri))
        self.publish(events)
        return removed

    def set_node_status(self, uri: NodeRef, status: NodeStatus) -> bool:
        """
        Change a remote node's status (Kamailio's ``dmq.change_status``).

        :returns: whether the status changed (false when it already was ``status``).
        :raises NodeListError: when ``uri`` is no acceptable node URI.
        :raises ValueError: for the local node or a node not in the list.
        """
        listed = self.nodes.get(uri)
        if listed is None:
            raise ValueError(f"node {uri} is not in the node list")
        if listed.local:
            raise ValueError("the status of the local node cannot be changed")
        if listed.status is status:
            return False
        events = self.nodes.set_status(listed, status)
        log.info("node {uri} set {status} by the operator", uri=str(listed.uri), status=status.value)
        self.publish(events)
        return True
