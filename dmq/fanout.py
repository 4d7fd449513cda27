"""
Paced, per-node-ordered sending: the outbox of peers that fan messages out
to the cluster.

::

    outbox = Outbox(send, window=64)            # send(node, body) -> Deferred[int status code]
    outbox.send(node, b"...", group="t", key="a")   # ordered after earlier "t"/"a" items to node
    outbox.send(node, b"...", group="t")            # the whole group "t": waits for and holds back all of it
    outbox.send(node, lambda: build_chunk())        # a body built when its turn comes
    outbox.post(node, b"...", done, group="t")      # the same without a Deferred: done(code)
    outbox.post_all(nodes, b"...", done, group="t", key="a")  # one item to each node: done(node, code) for each

    batching = Batching(b'{"batch":[', b"]}", accepts=lambda node: True, limit=lambda: 1400)
    outbox = Outbox(send, window=64, batching=batching)   # a backlog for a node goes several bodies a message

An :class:`Outbox` hands messages to a send function with at most
``window`` of them awaiting an answer, so a burst cannot flood the nodes.
Per node, an item with an ordering key is not sent while an earlier item of
the same key to that node is in flight: Kamailio hands incoming DMQ
messages to several worker processes, so two messages in flight at once may
be applied in either order.  Nodes take turns for free slots.  A message
for several nodes (:meth:`Outbox.post_all`) is one item, queued by each of
them: a backlog costs a reference per node, not an item.

With :class:`Batching`, a node that takes joined messages has at most
``Batching.window`` messages in flight; what comes for it meanwhile waits,
and goes in one message when a slot frees: as many items as may be in
flight together (those :meth:`_Lane.take` hands out one after another, so
of distinct keys).  The node's answer is every item's answer; an answer
other than 200 and 408 sends the items again one by one, so that each gets
its own (a node that answered 400 to a joined message is sent no more of
them).  A node without a backlog gets every item alone, as soon as it may.

It knows nothing of channels or services: the send function is given, and
answers each message with a status code (408 for a timeout, and so on).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from functools import partial
from typing import Any, Callable, Hashable, Iterable, NamedTuple, Optional, Union

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from dmq.node import Node, NodeKey

__all__ = ["Outbox", "Batching", "SendFunction", "SendThenFunction", "Done", "NodeDone", "Body", "NOT_SENT", "MAX_QUEUED"]

log = Logger()

MAX_QUEUED = 10_000
"""Default: the most messages queued for one node; more for it are not queued (answered :data:`NOT_SENT`)."""

SendFunction = Callable[[Node, bytes], "Deferred[int]"]
"""Sends one body to one node; fires with the status code the node answered."""

Body = Union[bytes, Callable[[], Optional[bytes]]]
"""A body, or a callable that builds it when its turn comes (``None``: nothing to send any more)."""

NOT_SENT = 503
"""The code an item gets when it was never sent (dropped, or its body withdrawn)."""


Done = Callable[[Union[int, Failure]], object]
"""Told once what became of an item: the status code, or a failure (a Deferred's ``callback`` serves)."""

NodeDone = Callable[[Node, Union[int, Failure]], object]
"""Told once for each node what became of a message posted to several: the node, and its code or a failure."""

SendThenFunction = Callable[[Node, bytes, Callable[[int], object]], None]
"""Sends one body to one node and calls back with the status code the node answered."""


class Batching(NamedTuple):
    """
    How an :class:`Outbox` joins queued bodies for one node into one
    message: ``head``, the bodies joined by ``separator``, ``tail``; with
    ``numbered``, each body is an object's member named by its place from
    1 (``{"multi":{"1":b1,"2":b2}}``).

    :ivar accepts: whether a node takes such messages (asked when the
        node's queue starts anew).
    :ivar limit: the largest joined message, in bytes (asked each time).
    :ivar most: the most bodies in one message.
    :ivar window: the most messages in flight to a node that takes them.
    """

    head: bytes
    tail: bytes
    accepts: Callable[[Node], bool]
    limit: Callable[[], int]
    most: int = 16
    window: int = 4
    separator: bytes = b","
    numbered: bool = False

    def join(self, bodies: "list[bytes]") -> bytes:
        """The message of ``bodies``."""
        if self.numbered:
            bodies = [b'"%d":%s' % (index, body) for index, body in enumerate(bodies, 1)]
        return self.head + self.separator.join(bodies) + self.tail

    def grows(self, index: int, body: bytes) -> int:
        """How many bytes the ``index``-th body (from 1) adds to a message."""
        size = len(body) + (len(self.separator) if index > 1 else 0)
        return size + len(b'"%d":' % index) if self.numbered else size


BATCH_REFUSED = 400
"""A node that answers this to a joined message is not sent another (it does not know the form)."""


UNLIMITED = 1 << 62
"""The window of a node that gets its items one a message: the outbox's window alone counts."""


class _Item:
    """
    One queued message to one node, told ``done(code)`` (``group`` ``None``:
    unordered; ``key`` ``None``: the whole group).
    """

    __slots__ = ("body", "group", "key", "done")
    shared = False

    def __init__(self, body: Body, group: Optional[Hashable], key: Optional[Hashable], done: Any) -> None:
        self.body = body
        self.group = group
        self.key = key
        self.done = done


class _Shared(_Item):
    """One message to several nodes, each queueing the same item, told ``done(node, code)`` for each."""

    __slots__ = ()
    shared = True


def _tell(node: Node, item: _Item, result: "Union[int, Failure]") -> None:
    """Tell ``item``'s ``done`` what became of it at ``node``."""
    if item.shared:
        item.done(node, result)
    else:
        item.done(result)


class _Lane:
    """
    The messages for one node, and which keys and groups have one in
    flight; with ``window``, the most messages in flight to it, joined.
    """

    def __init__(self, node: Node, window: Optional[int] = None) -> None:
        self.node = node
        self.node_key = node.key
        self.joins = window is not None
        self.window = UNLIMITED if window is None else window
        self.sending = 0
        self.queue: deque[_Item] = deque()
        self.keys: dict[tuple[Hashable, Hashable], int] = {}
        self.groups: dict[Hashable, int] = {}
        self.walls: dict[Hashable, int] = {}
        self.overflowing = False

    def take(self, lookahead: int) -> Optional[_Item]:
        """
        The first of the first ``lookahead`` queued items that may go now:
        none in flight for its key (for its group, when it stands for the
        whole group), and no earlier queued item it must not overtake.
        """
        blocked_keys: set[tuple[Hashable, Hashable]] = set()
        blocked_groups: set[Hashable] = set()  # a whole-group item waits
        waiting_groups: set[Hashable] = set()  # some item of the group waits
        for index, item in enumerate(self.queue):
            if index >= lookahead:
                return None
            group = item.group
            if group is None:
                del self.queue[index]
                return item
            if group in blocked_groups:
                continue
            if item.key is None:
                if group not in self.groups and group not in waiting_groups:
                    del self.queue[index]
                    return item
                blocked_groups.add(group)
            else:
                key = (group, item.key)
                if key not in blocked_keys and key not in self.keys and group not in self.walls:
                    del self.queue[index]
                    return item
                blocked_keys.add(key)
            waiting_groups.add(group)
        return None

    def free_for(self, group: Optional[Hashable], key: Optional[Hashable]) -> bool:
        """Whether an item of ``group`` and ``key`` may go now on an empty queue."""
        if group is None:
            return True
        if key is None:
            return group not in self.groups
        return (group, key) not in self.keys and group not in self.walls

    def started(self, item: _Item, delta: int) -> None:
        """Count ``item`` in flight (``delta`` +1) or answered (-1)."""
        group = item.group
        if group is None:
            return
        _count(self.groups, group, delta)
        key = item.key
        if key is None:
            _count(self.walls, group, delta)
            return
        keys = self.keys
        name = (group, key)
        total = keys.get(name, 0) + delta
        if total:
            keys[name] = total
        else:
            del keys[name]

    @property
    def idle(self) -> bool:
        """Nothing queued and nothing in flight."""
        return not self.queue and not self.sending


def _count(counts: "dict[Any, int]", name: Hashable, delta: int) -> None:
    total = counts.get(name, 0) + delta
    if total:
        counts[name] = total
    else:
        del counts[name]


class Outbox:
    """
    Messages for nodes, sent with at most :attr:`window` awaiting an answer
    overall, in order per node and ordering key, nodes taking turns.

    :param send: sends one body to one node; its Deferred fires with the
        node's status code (a failure fails the item's Deferred).
    :param send_then: instead of ``send``, sends one body to one node and
        calls back with the node's status code, without a Deferred (it must
        not raise once it has called back).
    :param window: most messages awaiting an answer at a time (may be
        changed later; the next free slot heeds it).
    :param lookahead: how far down a node's queue to look for an item that
        may overtake blocked ones.
    :param max_queued: the most messages queued for one node (a node that
        answers slowly, or not at all, holds its queue): a message past it is
        not queued, its Deferred fires with :data:`NOT_SENT` at once, it is
        counted in :attr:`overflowed`, and a warning is logged when a node's
        queue fills (again once it has drained by half and fills anew).
    :param batching: how to join bodies for a node with a backlog into one
        message (see the module's text); ``None`` sends each alone.
    :ivar in_flight: messages sent and not answered yet.
    :ivar queued: messages waiting for a slot or for their key.
    :ivar overflowed: messages not queued because their node's queue was full.
    :ivar joined: messages sent that carried several items (with ``batching``).
    :ivar joined_items: the items those messages carried.
    """

    def __init__(
        self,
        send: Optional[SendFunction],
        window: int,
        *,
        lookahead: int = 256,
        max_queued: int = MAX_QUEUED,
        send_then: Optional[SendThenFunction] = None,
        batching: Optional[Batching] = None,
    ) -> None:
        if window < 1 or lookahead < 1 or max_queued < 1:
            raise ValueError("an outbox needs a window, a lookahead and a queue of at least 1")
        if (send is None) == (send_then is None):
            raise ValueError("an outbox needs one of send and send_then")
        self.window = window
        self.lookahead = lookahead
        self.max_queued = max_queued
        self.in_flight = 0
        self.queued = 0
        self.overflowed = 0
        self.joined = 0
        self.joined_items = 0
        self._send = send
        self._send_then = send_then
        self._batching = batching
        self._unbatched: set[NodeKey] = set()  # nodes that refused a joined message
        self._lanes: OrderedDict[NodeKey, _Lane] = OrderedDict()
        self._pumping = False

    def send(
        self, node: Node, body: Body, *, group: Optional[Hashable] = None, key: Optional[Hashable] = None
    ) -> "Deferred[int]":
        """
        Queue ``body`` for ``node`` and send what may go now.

        :param body: the bytes, or a callable that builds them when the
            item's turn comes (so they carry the data of that moment); it
            may return ``None`` to withdraw the item, which then uses no slot.
        :param group: the ordering group (a table, say); ``None`` sends the
            item in no particular order.
        :param key: the ordering key within ``group`` (an item name): the
            item waits for the node's answer to every earlier item of the
            same key.  ``None`` stands for the whole group: the item waits
            for every earlier item of the group and holds back later ones.
        :returns: a Deferred firing with the node's status code, or
            :data:`NOT_SENT` when the item was dropped or withdrawn.
        :raises ValueError: for a ``key`` without a ``group``.
        """
        d: Deferred[int] = Deferred()
        self.post(node, body, d.callback, group=group, key=key)
        return d

    def post(
        self,
        node: Node,
        body: Body,
        done: Done,
        *,
        group: Optional[Hashable] = None,
        key: Optional[Hashable] = None,
    ) -> None:
        """
        :meth:`send` without a Deferred: ``done`` is called once with the
        node's status code (:data:`NOT_SENT` for an item dropped or
        withdrawn, before this returns when its node's queue is full), or
        with a failure.

        :raises ValueError: for a ``key`` without a ``group``.
        """
        if group is None and key is not None:
            raise ValueError("an ordering key needs a group")
        self._offer(node, _Item(body, group, key, done))

    def post_all(
        self,
        nodes: Iterable[Node],
        body: Body,
        done: NodeDone,
        *,
        group: Optional[Hashable] = None,
        key: Optional[Hashable] = None,
    ) -> None:
        """
        :meth:`post` the same message to each of ``nodes``, as one item
        that each of them queues: ``done(node, result)`` is called once for
        each node, as :meth:`post` calls ``done(result)``.  A body built when
        its turn comes is built once for each node.

        :raises ValueError: for a ``key`` without a ``group``.
        """
        if group is None and key is not None:
            raise ValueError("an ordering key needs a group")
        item = _Shared(body, group, key, done)
        for node in nodes:
            self._offer(node, item)

    def _offer(self, node: Node, item: _Item) -> None:
        """Start ``item`` for ``node`` when nothing waits and it may go, else queue it."""
        lanes = self._lanes
        node_key = node.key
        lane = lanes.get(node_key)
        if (
            not self.queued
            and self.in_flight < self.window
            and not self._pumping
            and (lane is None or (lane.sending < lane.window and lane.free_for(item.group, item.key)))
        ):
            # Nothing waits anywhere and the item may go: what _pump would
            # do, without walking the lanes.  A served node goes to the back.
            if lane is None:
                lane = lanes[node_key] = self._lane(node)
            else:
                lane.node = node
                lanes.move_to_end(node_key)
                if lane.overflowing and self.max_queued // 2:
                    lane.overflowing = False  # its queue is empty: as in _enqueue
            self._pumping = True  # what the item's body or send queues waits for its turn, as in _pump
            try:
                self._start(lane, item)
            finally:
                self._pumping = False
            self._pump()
            return
        self._enqueue(node, item)

    def _enqueue(self, node: Node, item: _Item) -> None:
        """Queue the item (or refuse it, its node's queue full) and send what may go: the general way of :meth:`_offer`."""
        lanes = self._lanes
        node_key = node.key
        lane = lanes.get(node_key)
        if lane is None:
            # A new node has waited longest: it comes first in the next round.
            lane = lanes[node_key] = self._lane(node)
            lanes.move_to_end(node_key, last=False)
        else:
            lane.node = node
        if len(lane.queue) >= self.max_queued:
            self.overflowed += 1
            if not lane.overflowing:
                lane.overflowing = True
                log.warn(
                    "{count} messages queued for {uri}: more for it are not sent until its queue shrinks",
                    count=len(lane.queue),
                    uri=str(node.uri),
                )
            _tell(node, item, NOT_SENT)
            return
        if lane.overflowing and len(lane.queue) < self.max_queued // 2:
            lane.overflowing = False  # warned again only when it fills again after draining by half
        lane.queue.append(item)
        self.queued += 1
        self._pump()

    def _lane(self, node: Node) -> _Lane:
        """A new lane for ``node``: joining its items when it takes that."""
        batching = self._batching
        if batching is None or node.key in self._unbatched or not batching.accepts(node):
            return _Lane(node)
        return _Lane(node, batching.window)

    def drop_all(self) -> None:
        """Answer everything still queued with :data:`NOT_SENT` (what is in flight still completes)."""
        lanes, self._lanes = self._lanes, OrderedDict()
        self.queued = 0
        for lane in lanes.values():
            while lane.queue:
                _tell(lane.node, lane.queue.popleft(), NOT_SENT)

    def _pump(self) -> None:
        if self._pumping or not self.queued:
            return
        self._pumping = True
        try:
            progressed = True
            while progressed and self.in_flight < self.window:
                progressed = False
                # One item per node per round, and a served node goes to the
                # back: nodes share the window fairly.
                for node_key, lane in list(self._lanes.items()):
                    if self.in_flight >= self.window:
                        break
                    if lane.sending >= lane.window:
                        continue
                    item = lane.take(self.lookahead)
                    if item is None:
                        continue
                    progressed = True
                    self.queued -= 1
                    if self._lanes.get(node_key) is lane:
                        self._lanes.move_to_end(node_key)
                    if lane.joins and lane.queue and not callable(item.body):
                        assert self._batching is not None
                        self._start_batch(lane, item, self._batching)
                    else:
                        self._start(lane, item)
        finally:
            self._pumping = False

    def _start_batch(self, lane: _Lane, first: _Item, batching: Batching) -> None:
        """Send ``first`` with what else of ``lane``'s backlog may go with it, in one message."""
        body = first.body
        assert isinstance(body, bytes)
        limit = batching.limit()
        size = len(batching.head) + len(batching.tail) + batching.grows(1, body)
        items = [first]
        bodies = [body]
        lane.started(first, +1)  # so that take() holds back what must not go with it
        while len(items) < batching.most and lane.queue:
            item = lane.take(self.lookahead)
            if item is None:
                break
            more = item.body
            grows = 0 if callable(more) else batching.grows(len(items) + 1, more)
            if not grows or size + grows > limit:
                # It was free to go first: back at the head, it overtakes only what it could.
                lane.queue.appendleft(item)
                break
            assert isinstance(more, bytes)
            self.queued -= 1
            size += grows
            lane.started(item, +1)
            items.append(item)
            bodies.append(more)
        if len(items) == 1:
            lane.started(first, -1)
            self._start(lane, first)
            return
        self.in_flight += 1
        lane.sending += 1
        self.joined += 1
        self.joined_items += len(items)
        self._transmit(lane, batching.join(bodies), partial(self._batch_done, lane, items))

    def _batch_done(self, lane: _Lane, items: "list[_Item]", result: "Union[int, Failure]") -> None:
        self.in_flight -= 1
        lane.sending -= 1
        if isinstance(result, int) and result != 200 and result != 408:
            if result == BATCH_REFUSED and lane.node_key not in self._unbatched:
                self._unbatched.add(lane.node_key)
                lane.joins = False
                lane.window = UNLIMITED
                log.info("{uri} refused a joined message: it is sent one body a message", uri=str(lane.node.uri))
            # Each again on its own for its own answer, still counted in flight for its
            # key, so nothing overtakes it (a few more in flight than the windows, briefly).
            for item in items:
                self.in_flight += 1
                lane.sending += 1
                assert isinstance(item.body, bytes)
                self._transmit(lane, item.body, partial(self._done, lane, item))
            return
        for item in items:
            lane.started(item, -1)
        self._forget_if_idle(lane)
        node = lane.node
        for item in items:
            _tell(node, item, result)
        if self.queued:
            self._pump()

    def _start(self, lane: _Lane, item: _Item) -> None:
        body: Optional[bytes]
        if callable(item.body):
            try:
                body = item.body()
            except Exception:
                self._forget_if_idle(lane)
                _tell(lane.node, item, Failure())
                return
            if body is None:
                self._forget_if_idle(lane)
                _tell(lane.node, item, NOT_SENT)
                return
        else:
            body = item.body
        self.in_flight += 1
        lane.sending += 1
        lane.started(item, +1)
        self._transmit(lane, body, partial(self._done, lane, item))

    def _transmit(self, lane: _Lane, body: bytes, then: Callable[["Union[int, Failure]"], None]) -> None:
        """Send ``body`` to ``lane``'s node; ``then`` gets the status code or a failure, once."""
        send_then = self._send_then
        if send_then is not None:
            try:
                send_then(lane.node, body, then)
            except Exception:
                then(Failure())
            return
        assert self._send is not None
        try:
            sent: Deferred[int] = self._send(lane.node, body)
        except Exception:
            sent = defer.fail()
        if not isinstance(sent, Deferred):
            sent = defer.succeed(sent)
        sent.addBoth(then)

    def _done(self, lane: _Lane, item: _Item, result: "Union[int, Failure]") -> None:
        self.in_flight -= 1
        lane.sending -= 1
        lane.started(item, -1)
        self._forget_if_idle(lane)
        _tell(lane.node, item, result)
        if self.queued:
            self._pump()

    def _forget_if_idle(self, lane: _Lane) -> None:
        if lane.idle and self._lanes.get(lane.node_key) is lane:
            del self._lanes[lane.node_key]
