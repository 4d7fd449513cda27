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


class ExpiringMap(Generic[K, V]):
    """
    A map whose entries live ``lifetime`` seconds from when they were put.

    Every entry lives the same time, so they expire in the order they were
    put: one queue in that order and one timer for its head serve them all.

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
        self._expiry: deque[tuple[float, K]] = deque()
        self._sweeper: Optional[IDelayedCall] = None

    def put(self, key: K, value: V) -> None:
        """Keep ``value`` under ``key`` for :attr:`lifetime` seconds."""
        entries, expiry, weigh = self._entries, self._expiry, self.weigh
        if weigh is not None:
            self.weight += weigh(value) - (weigh(entries[key]) if key in entries else 0)
        entries[key] = value
        expiry.append((self.clock.seconds() + self.lifetime, key))
        if self.limit is not None:
            while len(entries) > self.limit and expiry:
                self._forget(expiry.popleft()[1])
        if weigh is not None:
            while self.weight > self.max_weight and expiry:
                self._forget(expiry.popleft()[1])
        self._schedule()

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
        self._expiry.clear()
        self.weight = 0
        if self._sweeper is not None and self._sweeper.active():
            self._sweeper.cancel()
        self._sweeper = None

    def _schedule(self) -> None:
        if self._sweeper is None and self._expiry:
            delay = max(self.granularity, self._expiry[0][0] - self.clock.seconds())
            self._sweeper = self.clock.callLater(delay, self._sweep)

    def _sweep(self) -> None:
        """Forget the entries whose time ran out; wait for the next one."""
        self._sweeper = None
        now = self.clock.seconds()
        expiry = self._expiry
        while expiry and expiry[0][0] <= now:
            self._forget(expiry.popleft()[1])
        self._schedule()
