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
