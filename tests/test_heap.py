"""The idle collector: one full collection after a burst, once the process is quiet."""

from __future__ import annotations

import gc
import platform
import sys
import weakref

import pytest
from twisted.internet.task import Clock

from dmq.heap import IdleCollector, malloc_trim, release_memory
from dmq.sip.transaction import T1


class Process:
    """A process whose CPU time the test advances, and which counts the collections asked of it."""

    def __init__(self) -> None:
        self.cpu_seconds = 100.0
        self.collected = 0

    def cpu(self) -> float:
        return self.cpu_seconds

    def collect(self) -> int:
        self.collected += 1
        self.cpu_seconds += 0.05  # a collection costs CPU time too
        return 0


def started(clock: Clock, process: Process, **kwargs: float) -> IdleCollector:
    """A running collector; by default it collects at the first quiet interval (no linger)."""
    kwargs.setdefault("linger", 0.0)
    collector = IdleCollector(clock, cpu=process.cpu, collect=process.collect, **kwargs)
    collector.startService()
    return collector


def run(clock: Clock, process: Process, busy_share: float, intervals: int, interval: float = 5.0) -> None:
    """``intervals`` intervals in which the process spends ``busy_share`` of the time on the CPU."""
    for _ in range(intervals):
        process.cpu_seconds += busy_share * interval
        clock.advance(interval)


def test_collects_once_after_a_burst_when_quiet() -> None:
    clock, process = Clock(), Process()
    collector = started(clock, process)
    run(clock, process, 0.9, 3)  # a 15 s burst: no collection while it lasts
    assert process.collected == 0
    run(clock, process, 0.01, 1)  # the first quiet interval
    assert process.collected == 1 and collector.collections == 1
    assert collector.last_pause is not None and collector.last_pause >= 0
    run(clock, process, 0.01, 20)  # quiet from then on: nothing more to give back
    assert process.collected == 1


def test_waits_for_the_burst_data_to_expire() -> None:
    """With ``linger``, the collection comes that long into the quiet; a busy interval restarts the wait."""
    clock, process = Clock(), Process()
    started(clock, process, linger=32.0)
    run(clock, process, 0.9, 2)
    run(clock, process, 0.0, 6)  # quiet for 30 s
    assert process.collected == 0
    run(clock, process, 0.5, 1)  # busy again: the burst goes on
    run(clock, process, 0.0, 6)
    assert process.collected == 0
    run(clock, process, 0.0, 1)  # quiet for 35 s
    assert process.collected == 1
    run(clock, process, 0.0, 20)
    assert process.collected == 1


def test_the_default_linger_is_how_long_answers_are_kept() -> None:
    assert IdleCollector(Clock()).linger == 64 * T1


def test_every_burst_gets_its_collection() -> None:
    clock, process = Clock(), Process()
    started(clock, process)
    for burst in range(1, 4):
        run(clock, process, 0.5, 2)
        run(clock, process, 0.0, 2)
        assert process.collected == burst


def test_never_during_sustained_load_nor_under_light_or_no_load() -> None:
    for busy_share in (0.5, 0.01, 0.0):  # always busy; light work, 5 s of CPU over 500 s; idle
        clock, process = Clock(), Process()
        started(clock, process)
        run(clock, process, busy_share, 100)
        assert process.collected == 0, busy_share


def test_a_small_burst_counts() -> None:
    """0.3 s of CPU in one interval (6%: a PyPy node receiving 20,000 sets) is a burst; 2% is not."""
    clock, process = Clock(), Process()
    started(clock, process)
    run(clock, process, 0.02, 1)
    run(clock, process, 0.0, 5)
    assert process.collected == 0
    run(clock, process, 0.06, 1)
    run(clock, process, 0.0, 1)
    assert process.collected == 1


def test_thresholds_are_settings() -> None:
    clock, process = Clock(), Process()
    started(clock, process, interval=1.0, quiet_share=0.5)
    run(clock, process, 0.6, 1, interval=1.0)  # 0.6 s of work: busy at 60%
    run(clock, process, 0.4, 1, interval=1.0)  # 40% busy counts as quiet at 50%
    assert process.collected == 1


def test_stop_ends_the_readings() -> None:
    clock, process = Clock(), Process()
    collector = started(clock, process)
    run(clock, process, 0.9, 2)
    collector.stopService()
    assert clock.getDelayedCalls() == []
    run(clock, process, 0.0, 3)
    assert process.collected == 0


@pytest.mark.parametrize(
    "kwargs", [{"interval": 0}, {"quiet_share": 0}, {"quiet_share": 1}, {"linger": -1}]
)
def test_bad_thresholds_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        IdleCollector(Clock(), **kwargs)


def test_by_default_it_collects_the_real_heap() -> None:
    """The default collection is a full one: a reference cycle made during the burst is freed."""
    clock, process = Clock(), Process()
    collector = IdleCollector(clock, cpu=process.cpu, linger=0)
    collector.startService()

    class Node:
        pass

    cycle = Node()
    cycle.self = cycle  # type: ignore[attr-defined]
    alive = weakref.ref(cycle)
    gc.disable()
    try:
        del cycle
        run(clock, process, 0.9, 1)
        if platform.python_implementation() == "CPython":  # PyPy's minor collections free young cycles anyway
            assert alive() is not None  # only a collection frees a cycle, and the burst is not over
        run(clock, process, 0.0, 1)
        assert collector.collections == 1 and alive() is None
    finally:
        gc.enable()
        collector.stopService()


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc's call")
def test_glibc_gives_free_pages_back() -> None:
    """On glibc, release_memory also trims malloc's heap: the call is found, and succeeds."""
    trim = malloc_trim()
    assert trim is not None and trim is malloc_trim()  # looked up once
    assert trim(0) in (0, 1)  # 1: memory was given back, 0: there was none to give
    release_memory()
    assert IdleCollector(Clock())._collect is release_memory
