"""
The base of table-like peers (htable; usrloc and dialog the same way): the
life cycle that ties the shared parts together.

::

    class KVPeer(ReplicatedPeer):
        framing = Framing(b'{"items":[', b"]}")       # a sync answer: {"items":[item,item,...]}
        snapshot_format = "dmq-kv"

        def sync_request(self, scope):   return dumps({"action": "sync"})
        def snapshot(self):              return {"format": self.snapshot_format, "items": dict(self.data)}
        def restore_snapshot(self, doc): self.data.update(doc["items"]); return len(doc["items"])
        def handle_message(self, message):
            doc = parse_object(message.body)           # 400 unless a JSON object
            if wire_str(doc, "action") == "sync":
                self.answer_sync(requester(message), list(self.data), render)
            ...                                        # apply; then self.mark_changed()

        def put(self, key, value):
            self.data[key] = value                     # change locally, then send to every
            self.mark_changed()                        # active node, paced, in order per item
            return self.replicate("data", key, dumps({"action": "set", "k": key, "v": value}))

``docs/replicated.md`` has the whole example.

A :class:`ReplicatedPeer` owns a :class:`~dmq.replicated.link.ServiceLink`
(its only way to the service), an :class:`~dmq.fanout.Outbox` for
replication, a :class:`~dmq.replicated.sync.SyncAnswers` for sync answers
and, with ``persist_dir``, a :class:`~dmq.replicated.snapshot.Snapshot`.  It
asks for a sync when the node becomes ready (``init_sync``), loads the
snapshot at start, saves it when changed and at stop.
"""

from __future__ import annotations

import os
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Hashable, Iterable, Optional, Union

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure

from dmq.errors import ConfigurationError
from dmq.fanout import Batching, Outbox
from dmq.node import Node
from dmq.notification import SERVER_PRODUCT
from dmq.peer import Peer
from dmq.replicated.link import Outcome, ServiceLink
from dmq.replicated.snapshot import Snapshot
from dmq.replicated.sync import SYNC_MODES, SyncAnswers, request_sync
from dmq.replicated.wire import Framing

if TYPE_CHECKING:
    from dmq.service import DMQService

__all__ = ["ReplicatedPeer"]

log = Logger()


class _Outcomes:
    """
    What became of one change, each of its bodies at each of its nodes: it
    fires :attr:`deferred` with every ``(node, code)``, body by body and
    node by node (in the order of their keys), once the last comes in (a
    failure fails it at once).  It is the ``done`` of the change's first
    body in the outbox, which queues one item per body for all the nodes: a
    queued change costs a few objects, whatever the number of nodes.
    """

    __slots__ = ("deferred", "_results", "_missing")

    def __init__(self, nodes: int, bodies: int) -> None:
        self.deferred: Deferred[list[Outcome]] = Deferred()
        self._results: Optional[list[tuple[int, Node, int]]] = None  # made at the first answer
        self._missing = bodies * nodes
        if not self._missing:
            self.deferred.callback([])

    def __call__(self, node: Node, result: Union[int, Failure]) -> None:
        """The outcome of the first body at ``node``."""
        self.put(0, node, result)

    def put(self, body: int, node: Node, result: Union[int, Failure]) -> None:
        """The outcome of the ``body``-th body at ``node``."""
        if isinstance(result, Failure):
            if not self.deferred.called:
                self.deferred.errback(result)
            return
        results = self._results
        if results is None:
            results = self._results = []
        results.append((body, node, result))
        self._missing -= 1
        if not self._missing and not self.deferred.called:
            results.sort(key=lambda outcome: (outcome[0], outcome[1].key))
            self.deferred.callback([(node, code) for _, node, code in results])


class _Later:
    """The ``done`` of a change's second or later body: its outcomes go to the change's :class:`_Outcomes`."""

    __slots__ = ("outcomes", "body")

    def __init__(self, outcomes: _Outcomes, body: int) -> None:
        self.outcomes = outcomes
        self.body = body

    def __call__(self, node: Node, result: Union[int, Failure]) -> None:
        self.outcomes.put(self.body, node, result)


class ReplicatedPeer(Peer):
    """
    A peer that keeps data replicated across the cluster.

    Subclasses set :attr:`framing` (and :attr:`snapshot_format` when they
    persist), give :meth:`sync_request`, :meth:`handle_message` and, to
    persist, :meth:`snapshot` and :meth:`restore_snapshot`.

    :param channel: the channel (Kamailio's ``dmq_peer_id``).
    :param persist_dir: when given, a snapshot is kept in
        ``persist_dir/<channel>.json``: loaded at start, before the node
        syncs, and written atomically every ``persist_interval`` seconds
        when something changed, and at stop.
    :param init_sync: when the node becomes ready: ``"single"`` asks one
        active node (seeds first, the next one while one does not answer
        200), ``"all"`` every active node, ``"none"`` nobody.
    :param max_in_flight: most replication messages awaiting an answer.
    :param sync_window: most sync-answer messages awaiting an answer.
    :param sync_chunk_size: the size a sync-answer body stays below
        (default: what one datagram carries).
    :param persist_interval: seconds between snapshot checks.
    :ivar link: the peer's view of its service (clock, nodes, sending).
    """

    content_type = "application/json"
    framing: Framing
    """How items make one sync-answer message."""
    snapshot_format = ""
    """The ``"format"`` of the snapshot document."""
    batch_framing: Optional[Framing] = None
    """
    How several changes make one message to a node that takes it
    (:meth:`takes_batches`), when its queue has a backlog; ``None``: one
    change a message.  The peer's :meth:`handle_message` must apply it.
    """

    def __init__(
        self,
        channel: str,
        *,
        persist_dir: Optional[Union[str, os.PathLike[str]]] = None,
        init_sync: str = "single",
        max_in_flight: int = 64,
        sync_window: int = 2,
        sync_chunk_size: Optional[int] = None,
        persist_interval: float = 1.0,
    ) -> None:
        super().__init__(channel)
        if init_sync not in SYNC_MODES:
            raise ConfigurationError(f"init_sync must be one of {', '.join(SYNC_MODES)}, not {init_sync!r}")
        if max_in_flight < 1 or sync_window < 1:
            raise ConfigurationError("max_in_flight and sync_window must be at least 1")
        if sync_chunk_size is not None and sync_chunk_size <= len(self.framing.empty):
            raise ConfigurationError(f"sync_chunk_size must be above {len(self.framing.empty)}")
        self.persist_path: Optional[Path] = (
            Path(persist_dir) / f"{self.channel}.json" if persist_dir is not None else None
        )
        self.init_sync = init_sync
        self.sync_chunk_size = sync_chunk_size
        self.persist_interval = persist_interval
        self.replicated = 0
        """Changes sent to the cluster so far."""
        self.link = ServiceLink(self, self.content_type, on_response=self.on_response)
        framing = self.batch_framing
        batching = (
            Batching(
                framing.head,
                framing.tail,
                self.takes_batches,
                self.link.max_body_size,
                separator=framing.separator,
                numbered=framing.numbered,
            )
            if framing is not None
            else None
        )
        self._outbox = Outbox(None, max_in_flight, send_then=self.link.send_then, batching=batching)
        self._answers: SyncAnswers[Any] = SyncAnswers(
            self.link.send, sync_window, self._chunk_limit, self.framing, label=f"{self.channel} sync"
        )
        self._snapshot = (
            Snapshot(self.persist_path, self.snapshot_format, self.snapshot, writer=self._in_thread)
            if self.persist_path is not None
            else None
        )
        self._listeners: list[Callable[[Any], Any]] = []

    # -- what subclasses give -------------------------------------------------------------------

    def sync_request(self, scope: Optional[str]) -> bytes:
        """The body of a sync request (for ``scope``, a part of the data, when not ``None``)."""
        raise NotImplementedError

    def snapshot(self) -> dict[str, Any]:
        """The data as a JSON-able document with ``"format": snapshot_format``."""
        raise NotImplementedError

    def restore_snapshot(self, doc: dict[str, Any]) -> int:
        """
        Put back the data of a :meth:`snapshot` document; return how many
        items it loaded.

        :raises ValueError, TypeError, KeyError: for a document it cannot use.
        """
        raise NotImplementedError

    def takes_batches(self, node: Node) -> bool:
        """Whether ``node`` applies :attr:`batch_framing` messages: a dmq node (by its ``Server`` / ``User-Agent``)."""
        return (node.agent or "").startswith(SERVER_PRODUCT)

    def on_response(self, node: Node) -> None:
        """Called after each response a node gives to what this peer sent; the default does nothing."""

    # -- life cycle -----------------------------------------------------------------------------

    def startService(self) -> None:  # noqa: N802
        """Load the snapshot (before any sync can run) and start saving it when changed."""
        super().startService()
        self.load_snapshot()
        if self._snapshot is not None:
            self.link.every(self.persist_interval, self._snapshot.save_if_dirty)

    def stopService(self) -> "Deferred[Any]":  # noqa: N802
        """Stop the loops, drop queued sends and sync answers, and write the last snapshot."""
        super().stopService()
        self.link.stop_loops()
        self._outbox.drop_all()
        self._answers.stop()
        if self._snapshot is not None:
            return self._snapshot.flush()
        return defer.succeed(None)

    def init(self, service: "DMQService") -> "Deferred[list[Outcome]]":
        """Sync on join, as ``init_sync`` says."""
        return self.ask_for_sync(None, self.init_sync)

    # -- replication ----------------------------------------------------------------------------

    def replicate(self, group: Hashable, key: Optional[Hashable], *bodies: bytes) -> "Deferred[list[Outcome]]":
        """
        Send each body, in order, to every active node: paced by the outbox,
        in order per node and item (``key`` within ``group``; ``key``
        ``None`` stands for the whole group).

        :returns: a Deferred firing with every ``(node, code)`` (408 for a
            timeout, 503 when the peer stopped first); none when the peer is
            not running or no node is active.  It never fails.
        """
        if not self.link.sending:
            return defer.succeed([])
        targets = self.link.active_nodes()
        if not targets:
            return defer.succeed([])
        outcomes = _Outcomes(len(targets), len(bodies))
        post_all = self._outbox.post_all
        for index, body in enumerate(bodies):
            post_all(targets, body, _Later(outcomes, index) if index else outcomes, group=group, key=key)
        self.replicated += len(bodies)
        return outcomes.deferred

    @property
    def in_flight(self) -> int:
        """Messages sent and not answered yet (replication and sync answers)."""
        return self._outbox.in_flight + self._answers.in_flight

    @property
    def queued(self) -> int:
        """Replication messages waiting for a slot."""
        return self._outbox.queued

    @property
    def joined(self) -> int:
        """Replication messages that carried several changes (:attr:`batch_framing`)."""
        return self._outbox.joined

    @property
    def not_queued(self) -> int:
        """Replication messages not sent: their node's queue was full (:data:`~dmq.fanout.MAX_QUEUED`)."""
        return self._outbox.overflowed

    # -- sync -----------------------------------------------------------------------------------

    def ask_for_sync(self, scope: Optional[str], mode: str) -> "Deferred[list[Outcome]]":
        """Send :meth:`sync_request` as ``mode`` says (see :func:`~dmq.replicated.sync.request_sync`)."""
        return request_sync(
            self.link.active_nodes(), self.sync_request(scope), self.link.send, mode=mode, label=f"{self.channel} sync"
        )

    def answer_sync(self, node: Node, items: Iterable[Any], render: Callable[[Any], Optional[bytes]]) -> "Deferred[int]":
        """Send ``items`` to ``node`` in paced chunks (see :meth:`SyncAnswers.answer <dmq.replicated.sync.SyncAnswers.answer>`)."""
        return self._answers.answer(node, items, render)

    @property
    def sync_chunk_sizes(self) -> "deque[int]":
        """Body sizes of the most recent sync-answer messages sent (for checks and metrics)."""
        return self._answers.chunk_sizes

    def _chunk_limit(self) -> int:
        return self.sync_chunk_size or self.link.max_body_size()

    # -- changes ------------------------------------------------------------------------------

    def add_change_listener(self, listener: Callable[[Any], Any]) -> None:
        """Call ``listener(change)`` for every change of the data (the change's type is the peer's)."""
        self._listeners.append(listener)

    def remove_change_listener(self, listener: Callable[[Any], Any]) -> None:
        """Stop calling ``listener``."""
        self._listeners.remove(listener)

    @property
    def listened(self) -> bool:
        """Whether a change listener is registered (a peer may then skip building changes)."""
        return bool(self._listeners)

    def notify(self, change: Any) -> None:
        """Call every change listener with ``change``; one that fails is logged and the others still run."""
        for listener in list(self._listeners):
            try:
                listener(change)
            except Exception:
                log.failure("{channel} change listener failed", channel=self.channel)

    # -- persistence ----------------------------------------------------------------------------

    def mark_changed(self) -> None:
        """Note that the data changed: the snapshot is written at the next check."""
        if self._snapshot is not None:
            self._snapshot.dirty = True

    def _in_thread(self, f: Callable[..., Any], *args: Any) -> "Deferred[Any]":
        """``f(*args)`` in the reactor's thread pool (at once with a clock that has none, as in tests)."""
        reactor: Any = self.link.clock
        if not hasattr(reactor, "getThreadPool"):
            return defer.maybeDeferred(f, *args)
        return deferToThreadPool(reactor, reactor.getThreadPool(), f, *args)

    def save_snapshot(self) -> None:
        """Write the snapshot now, atomically (``RuntimeError`` without ``persist_dir``; ``OSError``)."""
        if self._snapshot is None:
            raise RuntimeError("no persist_dir")
        self._snapshot.save()

    def load_snapshot(self) -> int:
        """
        Load the snapshot file if there is one; return how many items it
        held.  An unreadable file is moved aside (``*.bad``) and the peer
        starts empty.
        """
        return self._snapshot.load(self.restore_snapshot) if self._snapshot is not None else 0
