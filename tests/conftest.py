"""Shared fixtures (the reactor for tests over real loopback sockets), and one result line per Kamailio
version for every test that runs against a build (interop, fault and demo tests alike)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from .interop.conftest import BUILDS
from .interop.kamailio import KamailioBuild


@pytest.fixture
def reactor() -> Any:
    """The global reactor pytest-twisted runs, for tests over real sockets."""
    from twisted.internet import reactor as _reactor

    return _reactor


# -- one result line per Kamailio version -------------------------------------------------------

_build_of: dict[str, KamailioBuild] = {}
_outcomes: dict[str, str] = {}
_RANK = {"passed": 0, "skipped": 1, "xfailed": 1, "xpassed": 1, "failed": 2, "error": 3}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Note which build each test runs against."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        build = callspec.params.get("kamailio_build") if callspec is not None else None
        if isinstance(build, KamailioBuild):
            _build_of[item.nodeid] = build


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Keep the worst outcome of each phase of a test that runs against a build."""
    if report.nodeid not in _build_of:
        return
    if report.failed:
        outcome = "failed" if report.when == "call" else "error"
    elif report.skipped:
        outcome = "xfailed" if hasattr(report, "wasxfail") else "skipped"
    elif report.when == "call":
        outcome = "xpassed" if hasattr(report, "wasxfail") else "passed"
    else:
        return
    previous = _outcomes.get(report.nodeid)
    if previous is None or _RANK[outcome] > _RANK[previous]:
        _outcomes[report.nodeid] = outcome


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """One line per Kamailio build: ``Kamailio 6.1.4: 20 passed, 2 failed``."""
    if not _outcomes:
        return
    terminalreporter.section("Kamailio versions", sep="-")
    for build in BUILDS:
        counts = Counter(outcome for nodeid, outcome in _outcomes.items() if _build_of[nodeid] is build)
        if not counts:
            continue
        parts = [f"{counts['passed']} passed", f"{counts['failed']} failed"]
        parts += [f"{counts[kind]} {shown}" for kind, shown in
                  (("error", "errors"), ("skipped", "skipped"), ("xfailed", "xfailed"), ("xpassed", "xpassed"))
                  if counts[kind]]
        line = f"Kamailio {build.label}: {', '.join(parts)}"
        if build.missing:
            line += f" ({build.missing})"
        terminalreporter.write_line(line)
