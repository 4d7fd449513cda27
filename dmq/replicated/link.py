"""
What a replicated peer asks of the service it is registered with, in one
place: the clock, the active nodes, the largest body a message may carry,
and sending one body to one node with the answer reduced to its status code.

::

    link = ServiceLink(peer, "application/json")
    link.now(); link.active_nodes(); link.max_body_size()
    link.send(node, body)                  # Deferred[int]: 200, 404, 408 ..., 503 when it could not go
    link.send_then(node, body, callback)   # the same without a Deferred: callback(code)
    link.every(10.0, peer.purge)           # a LoopingCall on the service's clock, stopped by stop_loops()
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any, Callable, Optional

from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from dmq.node import Node, NodeKey
from dmq.peer import Peer

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from dmq.interfaces import IPeerHost

__all__ = ["ServiceLink", "Outcome", "paired"]

log = Logger()

Outcome = tuple[Node, int]
"""A node and the status code it answered (408 for a timeout, 503 when not sent)."""


def paired(code: int, node: Node) -> Outcome:
    """``(node, code)``: a callback that turns a status code into an :data:`Outcome`."""
    return (node, code)


class ServiceLink:
    """
    A peer's view of its service.

    :param peer: the peer; the service is the one it is registered with.
    :param content_type: the ``Content-Type`` of what the peer sends.
    :param on_response: called with the node after each response the node
        sent (not after a local failure), before its code is looked at.
    """

    def __init__(
        self, peer: Peer, content_type: str, on_response: Optional[Callable[[Node], None]] = None
    ) -> None:
        self.peer = peer
        self.content_type = content_type
        self._on_response = on_response
        self._loops: list[LoopingCall] = []
        self._warned: set[tuple[NodeKey, int]] = set()

    @property
    def service(self) -> "IPeerHost":
        """The service (``RuntimeError`` when the peer is not registered)."""
        return self.peer.service

    @property
    def sending(self) -> bool:
        """Whether the peer may send: registered and running."""
        return self.peer.registered and bool(self.peer.running)

    @property
    def clock(self) -> "IReactorTime":
        """The service's clock."""
        return self.service.clock

    def now(self) -> float:
        """The clock's time, in seconds (epoch seconds with a real reactor)."""
        return float(self.service.clock.seconds())

    def now_ms(self) -> int:
        """The clock's time in whole milliseconds."""
        return int(self.service.clock.seconds() * 1000)

    def active_nodes(self) -> list[Node]:
        """Where a change for the whole cluster goes: the active nodes but this one (a fresh list)."""
        return self.service.targets()

    def max_body_size(self) -> int:
        """The largest body one datagram carries."""
        return self.service.max_body_size

    def send(self, node: Node, body: bytes) -> "Deferred[int]":
        """
        Send ``body`` on the peer's channel to ``node``.

        :returns: a Deferred firing with the status code of the node's
            answer (408 for a timeout), or 503 when it could not be sent;
            it never fails.  An answer other than 200 and 408 is logged, once
            per node and code.
        """
        d: Deferred[int] = Deferred()
        self.send_then(node, body, d.callback)
        return d

    def send_then(self, node: Node, body: bytes, then: Callable[[int], object]) -> None:
        """
        :meth:`send` without a Deferred: ``then`` is called once with the
        status code (before this returns when the message could not go).
        """
        try:
            self.service.send_message_then(
                self.peer, body, node, partial(self._answered, node, then), self.content_type
            )
        except Exception:
            log.failure("sending on {channel} to {uri} failed", channel=self.peer.channel, uri=str(node.uri))
            then(503)

    def _answered(self, node: Node, then: Callable[[int], object], response: Any) -> None:
        code = int(response.code)
        if self._on_response is not None:
            self._on_response(node)
        if code != 200 and code != 408 and (node.key, code) not in self._warned:
            # Once per node and code: the node refuses what we send.
            self._warned.add((node.key, code))
            log.warn(
                "node {uri} answered {code} {reason} to a message on {channel}",
                uri=str(node.uri),
                code=code,
                reason=getattr(response, "reason", ""),
                channel=self.peer.channel,
            )
        then(code)

    def every(self, interval: float, function: Callable[[], Any]) -> LoopingCall:
        """Call ``function`` every ``interval`` seconds of the service's clock (first after one interval)."""
        loop = LoopingCall(function)
        loop.clock = self.clock
        name = getattr(function, "__name__", "?")
        loop.start(interval, now=False).addErrback(
            lambda f: log.failure("{channel} loop {name} stopped", f, channel=self.peer.channel, name=name)
        )
        self._loops.append(loop)
        return loop

    def stop_loops(self) -> None:
        """Stop every loop :meth:`every` started."""
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops = []
