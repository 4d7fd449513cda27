"""
What completed transactions leave behind for a while (RFC 3261 Timers J and
K): entries that each expire a fixed time after they were put, bounded in
number (and, given a weight, in total weight), forgotten by one timer on an
injected clock.
"""

from __future__ import annotations

from collections import deque
from typing import Callable, Generic, Hashable, Optional, TypeVar

from twisted.internet.interfaces import IDelayedCall, IReactorTime

__all__ = ["ExpiringMap"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class _Run:
    """Puts that expire together: the first was put at ``start``, the last expires at ``expires``."""

    __slots__ = ("start", "expires", "count")

    def __init__(self, expires: float) -> None:
        self.start = self.expires = expires
        self.count = 1


class ExpiringMap(Generic[K, V]):
    """
    A map whose entries live ``lifetime`` seconds from when they were put.

    Every entry lives the same time, so they expire in the order they were
    put: one queue of keys in that order and one timer for its head serve
    them all.  The queue holds no time per key: puts less than
    ``granularity`` apart share one expiry time (the latest of them), kept
    with their count in a second, short queue.  An entry costs the map one
    slot in a dict and one in a deque.

    :param clock: the ``IReactorTime`` that reads the time and runs the timer.
    :param lifetime: how long an entry lives, in seconds.
    :param limit: the most entries kept; past it the oldest go first, so that
        memory stays bounded under a flood.  ``None`` for no limit.
    :param weigh: the weight of a value (its size in bytes, say), to bound
        the total by ``max_weight`` as well: past it the oldest go first.
    :param max_weight: the most total weight kept (with ``weigh``).
    :param granularity: the least time between two runs of the timer, in
        seconds: an entry then lives between ``lifetime`` and ``lifetime +
        granularity``.  Under steady traffic the head of the queue expires
        every few milliseconds; without it the timer would wake the reactor
        for each entry.
    """

    def __init__(
        self,
        clock: IReactorTime,
        lifetime: float,
        limit: Optional[int] = None,
        weigh: Optional[Callable[[V], int]] = None,
        max_weight: int = 0,
        granularity: float = 0.0,
    ) -> None:
        self.clock = clock
        self.lifetime = lifetime
        self.granularity = granularity
        self.limit = limit
        self.weigh = weigh
        self.max_weight = max_weight
        self.weight = 0
        """The total weight of the entries kept (0 without ``weigh``)."""
        self._entries: dict[K, V] = {}
        self._order: deque[K] = deque()
        """The keys in the order they were put (a key put twice is in it twice)."""
        self._times: deque[_Run] = deque()
        """The runs of puts in ``_order``, oldest first."""
        self._sweeper: Optional[IDelayedCall] = None

    def put(self, key: K, value: V) -> None:
        """Keep ``value`` under ``key`` for :attr:`lifetime` seconds."""
        entries, weigh = self._entries, self.weigh
        if weigh is not None:
            self.weight += weigh(value) - (weigh(entries[key]) if key in entries else 0)
        entries[key] = value
        self._order.append(key)
        expires = self.clock.seconds() + self.lifetime
        times = self._times
        if times and expires - times[-1].start <= self.granularity:
            run = times[-1]
            run.expires = expires
            run.count += 1
        else:
            times.append(_Run(expires))
        if self.limit is not None:
            while len(entries) > self.limit and self._order:
                self._forget_oldest()
        if weigh is not None:
            while self.weight > self.max_weight and self._order:
                self._forget_oldest()
        self._schedule()

    def _forget_oldest(self) -> None:
        """Drop the oldest put from the queue, and its entry if that is still there."""
        self._forget(self._order.popleft())
        run = self._times[0]
        run.count -= 1
        if not run.count:
            self._times.popleft()

    def _forget(self, key: K) -> None:
        """Drop ``key``'s entry, if it is still there (a key put twice has two places in the queue)."""
        entries = self._entries
        if key in entries:
            value = entries.pop(key)
            if self.weigh is not None:
                self.weight -= self.weigh(value)

    def get(self, key: K) -> Optional[V]:
        """The value under ``key``, or ``None`` when there is none (any more)."""
        return self._entries.get(key)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        """Forget every entry and stop the timer."""
        self._entries.clear()
        self._order.clear()
        self._times.clear()
        self.weight = 0
        if self._sweeper is not None and self._sweeper.active():
            self._sweeper.cancel()
        self._sweeper = None

    def _schedule(self) -> None:
        if self._sweeper is None and self._times:
            delay = max(self.granularity, self._times[0].expires - self.clock.seconds())
            self._sweeper = self.clock.callLater(delay, self._sweep)

    def _sweep(self) -> None:
        """Forget the entries whose time ran out; wait for the next one."""
        self._sweeper = None
        now = self.clock.seconds()
        times, order, forget = self._times, self._order, self._forget
        while times and times[0].expires <= now:
            for _ in range(times.popleft().count):
                forget(order.popleft())
        if not times:
            # Emptied after a burst: a dict keeps the table it grew to until it is cleared.
            self._entries.clear()
        self._schedule()
