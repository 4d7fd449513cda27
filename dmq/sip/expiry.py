"""
What completed transactions leave behind for a while (RFC 3261 Timers J and
K): entries that each expire a fixed time after they were put, bounded in
number, forgotten by one timer on an injected clock.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, Hashable, Optional, TypeVar

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
    """

    def __init__(self, clock: IReactorTime, lifetime: float, limit: Optional[int] = None) -> None:
        self.clock = clock
        self.lifetime = lifetime
        self.limit = limit
        self._entries: dict[K, V] = {}
        self._expiry: deque[tuple[float, K]] = deque()
        self._sweeper: Optional[IDelayedCall] = None

    def put(self, key: K, value: V) -> None:
        """Keep ``value`` under ``key`` for :attr:`lifetime` seconds."""
        entries, expiry = self._entries, self._expiry
        entries[key] = value
        expiry.append((self.clock.seconds() + self.lifetime, key))
        if self.limit is not None:
            while len(entries) > self.limit and expiry:
                entries.pop(expiry.popleft()[1], None)
        self._schedule()

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
        if self._sweeper is not None and self._sweeper.active():
            self._sweeper.cancel()
        self._sweeper = None

    def _schedule(self) -> None:
        if self._sweeper is None and self._expiry:
            delay = max(0.0, self._expiry[0][0] - self.clock.seconds())
            self._sweeper = self.clock.callLater(delay, self._sweep)

    def _sweep(self) -> None:
        """Forget the entries whose time ran out; wait for the next one."""
        self._sweeper = None
        now = self.clock.seconds()
        expiry = self._expiry
        while expiry and expiry[0][0] <= now:
            self._entries.pop(expiry.popleft()[1], None)
        self._schedule()
