"""
Giving a burst's memory back: :class:`IdleCollector` runs one full garbage
collection (:func:`release_memory`) once the process goes quiet after a burst
of work.

A burst (a replication storm, a resync) leaves garbage behind: the answers and
transactions it kept, the objects of every message.  CPython frees most of it
at once, but what sits in reference cycles waits for the collector's oldest
generation; PyPy's collector lets its heap grow to nearly twice the live data
before a major collection.  Either way the process can stay well above its
usual size long after the burst, until enough new work comes to trigger a
collection.  A full collection while the process is quiet costs a pause
nobody waits for.  Part of a burst's data outlives it on purpose: a node keeps
its answers for 64×T1 (32 s by default) to answer retransmissions, so the
collection waits that long into the quiet.  What the collection frees goes
back to the allocator, which keeps it for the next burst; where the C library
is glibc, :func:`release_memory` then asks it to give its free pages back to
the system (``malloc_trim``).  That matters most on PyPy, whose heap lives in
memory from ``malloc``.

The collector watches the process's own CPU time (one reading per interval;
nothing on the request path), so it serves every node of a process together,
however many there are.
"""

from __future__ import annotations

import gc
import sys
import time
from typing import Any, Callable, Optional

from twisted.application.internet import TimerService
from twisted.logger import Logger

from dmq.sip.transaction import T1

__all__ = ["IdleCollector", "CHECK_INTERVAL", "LINGER", "QUIET_SHARE", "malloc_trim", "release_memory"]

log = Logger()

CHECK_INTERVAL = 5.0
"""Seconds between two readings of the process's CPU time."""

QUIET_SHARE = 0.02
"""
An interval is quiet when the process spent at most this share of it on the CPU, busy above it.
A node on PyPy that receives a burst of 20,000 replicated sets spends about 0.3 s of CPU on them:
6% of one interval.
"""

LINGER = 64 * T1
"""Seconds a burst's data outlives it: how long a node keeps its answers (64×T1 with the default T1)."""


_NOT_LOOKED_UP: Any = object()
_trim: Any = _NOT_LOOKED_UP


def malloc_trim() -> Optional[Callable[[int], int]]:
    """
    glibc's ``malloc_trim``, or None where the C library has none (musl,
    macOS) or ctypes cannot load it.  Looked up on first use: ctypes is not
    imported by a node that never collects.
    """
    global _trim
    if _trim is _NOT_LOOKED_UP:
        _trim = None
        if sys.platform.startswith("linux"):
            try:
                import ctypes

                _trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
                if _trim is not None:
                    _trim.argtypes = [ctypes.c_size_t]
                    _trim.restype = ctypes.c_int
            except (ImportError, OSError):
                pass
    return _trim


def release_memory() -> None:
    """One full garbage collection, then the C library's free pages back to the system (glibc)."""
    gc.collect()
    trim = malloc_trim()
    if trim is not None:
        trim(0)


class IdleCollector(TimerService):
    """
    Runs one full garbage collection (:func:`release_memory`) once the
    process has been quiet for ``linger`` seconds after a burst.  An
    interval is busy when the process spent more than ``quiet_share`` of it
    on the CPU, quiet otherwise; a burst is one busy interval or more.  So
    it collects once after every burst, never during one, and never on a
    process that stays idle or evenly loaded (the interpreter's own
    collector keeps up with that).

    ``twistd dmq`` runs one (setting ``collect_when_idle``); an application
    that embeds :class:`~dmq.service.DMQService` may add one to its own
    service tree, one for the whole process.

    :param clock: the reactor (or a ``task.Clock`` in tests).
    :param interval: seconds between two readings (the timer's ``step``).
    :param quiet_share: the share of an interval above which it is busy.
    :param linger: seconds a burst's data outlives it; ``twistd dmq``
        passes how long its node keeps answers (64×T1, T1 at least 500 ms).
    :param cpu: the process's CPU seconds (default: ``time.process_time``).
    :param collect: the collection (default: :func:`release_memory`).
    :ivar collections: how many collections it has run.
    :ivar last_pause: the wall-clock seconds the last one took, or None.
    """

    def __init__(
        self,
        clock: Any,
        interval: float = CHECK_INTERVAL,
        quiet_share: float = QUIET_SHARE,
        linger: float = LINGER,
        cpu: Callable[[], float] = time.process_time,
        collect: Callable[[], Any] = release_memory,
    ) -> None:
        if interval <= 0 or linger < 0 or not 0 < quiet_share < 1:
            raise ValueError("interval must be positive, linger not negative, quiet_share between 0 and 1")
        super().__init__(interval, self.check)
        self.clock = clock
        self.quiet_share = quiet_share
        self.linger = linger
        self._cpu = cpu
        self._collect = collect
        self.collections = 0
        self.last_pause: Optional[float] = None
        self._last_reading = 0.0
        self._busy = False
        self._quiet_since = 0.0
        """When the last busy interval ended."""

    def startService(self) -> None:  # noqa: N802
        """Read the CPU time now and every :attr:`step` seconds."""
        self._last_reading = self._cpu()
        super().startService()

    def check(self) -> bool:
        """Take one reading; collect if a burst is over.  Returns whether it collected."""
        now = self._cpu()
        last_interval = now - self._last_reading
        self._last_reading = now
        seconds = float(self.clock.seconds())
        if last_interval > self.quiet_share * self.step:
            self._busy = True
            self._quiet_since = seconds
            return False
        if not self._busy or seconds - self._quiet_since < self.linger:
            return False
        started = time.perf_counter()
        self._collect()
        self.last_pause = time.perf_counter() - started
        self.collections += 1
        self._busy = False
        self._last_reading = self._cpu()  # the collection's own CPU time is not work
        log.debug("collected garbage after a burst: {ms:.1f} ms", ms=self.last_pause * 1000)
        return True
