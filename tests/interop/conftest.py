"""Fixtures for interoperability tests against real Kamailio nodes, once per Kamailio build.

``kamailio_build`` is parametrized over the builds :func:`find_builds` finds (Debian's 5.6
and the 6.1 build, or only ``$KAMAILIO``), so every test that starts Kamailio runs once per
build, with the version in its id (``[kamailio-5.6.3]``, ``[kamailio-6.1.4]``). A build that
is missing skips its tests, except under CI (``CI=true``), where that fails. ``kamailio``
is a factory that starts nodes, each on a loopback address of its own, and stops every one
of them at teardown. At the end of the run each version's results get a line of their own.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Any, Callable, Iterator, Optional, Sequence

import pytest
import pytest_twisted

from ..helpers import free_address
from .kamailio import KamailioBuild, NodeFactory, find_builds

BUILDS: list[KamailioBuild] = find_builds()


@pytest.fixture(scope="session", params=[pytest.param(b, id=b.id) for b in BUILDS])
def kamailio_build(request: pytest.FixtureRequest) -> KamailioBuild:
    """The Kamailio build of this run of the test; skips the test (fails it under ``CI=true``) when it is missing."""
    build: KamailioBuild = request.param
    if build.missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{build} (under CI=true every Kamailio build is required)", pytrace=False)
        pytest.skip(str(build))
    return build


@pytest.fixture
def kamailio(kamailio_build: KamailioBuild, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeFactory]:
    """The :class:`NodeFactory` of this test's build. Every node made is stopped at teardown,
    and teardown fails if one of them left a process behind."""
    factory = NodeFactory(kamailio_build, lambda: tmp_path_factory.mktemp("kamailio"))
    yield factory
    errors = []
    for node in reversed(factory.nodes):
        try:
            node.stop()
        except Exception as exc:  # keep stopping the others, then report
            errors.append(f"{node.uri}: {exc}")
    if errors:
        pytest.fail("could not stop Kamailio nodes: " + "; ".join(errors), pytrace=False)


@pytest.fixture
def python_node(reactor: Any) -> Iterator[Callable[..., Any]]:
    """Factory: ``make(seeds, address=None, peers=(), **service_kw)``, a started DMQService with ``peers``
    registered, on a loopback address of its own (or ``address``); every one is stopped at teardown."""
    from dmq import DMQService

    services: list[Any] = []

    def make(seeds: Sequence[str] = (), address: Optional[tuple[str, int]] = None, peers: Sequence[Any] = (),
             **kw: Any) -> Any:
        host, port = address or free_address("udp")
        kw.setdefault("ping_interval", 5)  # Kamailio's minimum
        kw.setdefault("t1", 0.25)  # a request times out after 16 s, well within Kamailio's ping rhythm
        svc = DMQService(f"sip:{host}:{port}", list(seeds), reactor=reactor, **kw)
        for peer in peers:
            svc.register_peer(peer)
        services.append(svc)
        svc.startService()
        return svc

    yield make
    for svc in services:
        if svc.running:
            pytest_twisted.blockon(svc.stopService())


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
