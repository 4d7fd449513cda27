"""
Sync sessions of table-like peers: asking the cluster for its data, and
answering such a request.

::

    # asking, when the node joins (mode "single", "all" or "none")
    request_sync(link.active_nodes(), b'{"action":1}', link.send, mode="single", label="htable sync")

    # answering: the items go to the requester only, in chunks, paced
    answers = SyncAnswers(link.send, window=2, limit=link.max_body_size,
                          framing=Framing(b'{"cells":[', b"]}"), label="htable sync")
    answers.answer(requester(message), keys, render)   # render(key) -> JSON bytes, or None when gone

The chunks go through a :class:`~dmq.fanout.Outbox` of their own, whose
window paces every answer under way; requesters take turns.  Each chunk is
built when its turn comes, so an item changed since the request goes out as
it is then, and one deleted meanwhile is left out.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterable, Optional, TypeVar

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from dmq.errors import one_line
from dmq.fanout import Outbox, SendFunction
from dmq.node import Node, NodeKey, NodeListError, NodeStatus
from dmq.peer import DMQMessage
from dmq.replicated.link import Outcome, paired
from dmq.replicated.wire import Framing, bad_request

__all__ = ["SYNC_MODES", "SyncAnswers", "request_sync", "requester"]

log = Logger()

SYNC_MODES = ("single", "all", "none")
"""How a node asks for a sync: one node at a time, every node at once, or nobody."""

T = TypeVar("T")


def request_sync(
    nodes: list[Node], body: bytes, send: SendFunction, *, mode: str = "single", label: str = "sync"
) -> "Deferred[list[Outcome]]":
    """
    Send the sync request ``body``, as ``mode`` says: ``"single"`` asks one
    of ``nodes`` at a time, seeds first, until one answers 200 (a node no
    longer active by its turn is passed over); ``"all"`` asks every one at
    once; ``"none"`` asks nobody.  The data arrives later, as messages of
    its own.

    :returns: a Deferred firing with the ``(node, code)`` pairs of the
        requests sent (none when ``nodes`` is empty); it never fails.
    :raises ValueError: for an unknown ``mode``.
    """
    if mode not in SYNC_MODES:
        raise ValueError(f"sync mode must be one of {', '.join(SYNC_MODES)}, not {mode!r}")
    if mode == "none":
        return defer.succeed([])
    if not nodes:
        log.info("{label}: no active node to ask", label=label)
        return defer.succeed([])
    if mode == "all":
        log.info("{label}: asking all {count} active node(s)", label=label, count=len(nodes))
        return defer.gatherResults([send(node, body).addCallback(paired, node) for node in nodes])
    nodes = sorted(nodes, key=lambda n: not n.seed)
    outcomes: list[Outcome] = []

    def ask(index: int) -> Any:
        if index >= len(nodes):
            log.warn("{label}: no node answered the sync request", label=label)
            return outcomes
        node = nodes[index]
        if node.status is not NodeStatus.ACTIVE:
            return ask(index + 1)

        def answered(code: int) -> Any:
            outcomes.append((node, code))
            if code == 200:
                log.info("{label}: asked {uri}", label=label, uri=str(node.uri))
                return outcomes
            return ask(index + 1)

        return send(node, body).addCallback(answered)

    return defer.maybeDeferred(ask, 0)


def requester(message: DMQMessage) -> Node:
    """
    The node a sync request came from: the listed node, or else the node
    its From URI names (Kamailio's answer goes there too).

    :raises PeerError: 400 when neither names a node.
    """
    if message.node is not None:
        return message.node
    if message.from_uri is not None:
        try:
            return Node.from_uri(message.from_uri)
        except NodeListError:
            pass
    raise bad_request("sync request from no known node")


@dataclass(eq=False)
class _Session(Generic[T]):
    """One answer under way: the items still to send to ``node``."""

    node: Node
    items: deque[T]
    render: Callable[[T], Optional[bytes]]
    chunks: int = 0
    sent: int = 0
    in_flight: int = 0
    done: Deferred[int] = field(default_factory=Deferred)


class SyncAnswers(Generic[T]):
    """
    The sync answers under way, one per requester.

    :param send: sends one body to one node (fires with its status code).
    :param window: most answer messages awaiting an answer, over every
        requester.
    :param limit: returns the size a message stays below (read for each
        message); an item alone above it still goes, in a message of its own.
    :param framing: how items make a message.
    :param max_items: most items in one message (``None``: as many as fit).
    :param label: what log lines start with.
    :ivar requests: requests answered so far.
    :ivar chunks_sent: messages sent so far.
    :ivar items_sent: items sent so far.
    :ivar chunk_sizes: the body sizes of the last 1,000 messages.
    """

    def __init__(
        self,
        send: SendFunction,
        window: int,
        limit: Callable[[], int],
        framing: Framing,
        *,
        max_items: Optional[int] = None,
        label: str = "sync",
    ) -> None:
        if max_items is not None and max_items < 1:
            raise ValueError("max_items must be at least 1")
        self.outbox = Outbox(send, window)
        self.limit = limit
        self.framing = framing
        self.max_items = max_items
        self.label = label
        self.sessions: dict[NodeKey, _Session[T]] = {}
        self.requests = 0
        self.chunks_sent = 0
        self.items_sent = 0
        self.chunk_sizes: deque[int] = deque(maxlen=1000)

    @property
    def in_flight(self) -> int:
        """Answer messages sent and not answered yet."""
        return self.outbox.in_flight

    def answer(self, node: Node, items: Iterable[T], render: Callable[[T], Optional[bytes]]) -> "Deferred[int]":
        """
        Send ``items`` to ``node`` in messages (at least one, empty for no
        item).  A node that asks again while its answer is under way gets a
        fresh answer instead of two; a node that answers a message other than
        200 gets no more.

        :param items: what to send, as keys ``render`` takes.
        :param render: one item as JSON bytes, read when its message is
            built; ``None`` when it is gone meanwhile (it is left out).
        :returns: a Deferred firing with the number of messages sent, once
            every one was answered or the answer was given up.
        """
        old = self.sessions.pop(node.key, None)
        if old is not None:
            self._end(old, failed=True)
        session = _Session(node, deque(items), render)
        self.sessions[node.key] = session
        self.requests += 1
        log.info("{label}: sending {count} item(s) to {uri}", label=self.label, count=len(session.items), uri=str(node.uri))
        self._queue_chunk(session)
        return session.done

    def stop(self) -> None:
        """Give up every answer under way."""
        for session in list(self.sessions.values()):
            self._end(session, failed=True)
        self.outbox.drop_all()

    def _queue_chunk(self, session: _Session[T]) -> None:
        built = False

        def build() -> Optional[bytes]:
            nonlocal built
            if self.sessions.get(session.node.key) is not session:
                return None  # given up since it was queued
            built = True
            body, count = self._cut(session)
            session.chunks += 1
            session.sent += count
            session.in_flight += 1
            self.chunks_sent += 1
            self.items_sent += count
            self.chunk_sizes.append(len(body))
            if session.items:
                self._queue_chunk(session)
            return body

        def answered(code: int) -> None:
            if built:
                self._answered(code, session)

        self.outbox.send(session.node, build).addCallback(answered)

    def _cut(self, session: _Session[T]) -> tuple[bytes, int]:
        framing = self.framing
        parts: list[bytes] = []
        size = len(framing.empty)
        limit = self.limit()
        items = session.items
        while items and (self.max_items is None or len(parts) < self.max_items):
            rendered = session.render(items[0])
            if rendered is None:
                items.popleft()
                continue
            part = framing.member(len(parts) + 1, rendered)
            grown = size + len(part) + (len(framing.separator) if parts else 0)
            if parts and grown >= limit:
                break
            if not parts and grown >= limit:
                log.warn(
                    "{label}: item {item} alone is {size} bytes",
                    label=self.label,
                    item=one_line(repr(items[0]), 80),
                    size=grown,
                )
            parts.append(part)
            size = grown
            items.popleft()
        return framing.head + framing.separator.join(parts) + framing.tail, len(parts)

    def _answered(self, code: int, session: _Session[T]) -> None:
        session.in_flight -= 1
        if self.sessions.get(session.node.key) is not session:
            return
        if code != 200:
            log.warn(
                "{label}: {uri} answered {code}; {left} item(s) not sent",
                label=self.label,
                uri=str(session.node.uri),
                code=code,
                left=len(session.items),
            )
            self._end(session, failed=True)
        elif not session.items and session.in_flight == 0:
            self._end(session, failed=False)

    def _end(self, session: _Session[T], failed: bool) -> None:
        if self.sessions.get(session.node.key) is session:
            del self.sessions[session.node.key]
        session.items.clear()
        if not session.done.called:
            if not failed:
                log.info(
                    "{label}: sent {items} item(s) in {chunks} message(s) to {uri}",
                    label=self.label,
                    items=session.sent,
                    chunks=session.chunks,
                    uri=str(session.node.uri),
                )
            session.done.callback(session.chunks)
