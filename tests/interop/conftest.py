"""Fixtures for interoperability tests against real Kamailio 5.6 nodes.

``kamailio`` is a factory that starts nodes on free ports and stops every one of them at
teardown; ``assert_alive`` checks a node with the KDMQ liveness probe. Without a
``kamailio`` binary the tests are skipped, except under CI (``CI=true``), where that fails.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterator, Sequence

import pytest

from .kamailio import KamailioNode, assert_alive as _assert_alive, find_kamailio, free_port

NodeFactory = Callable[..., KamailioNode]


@pytest.fixture(scope="session")
def kamailio_binary() -> str:
    """Path of the kamailio binary; skips the test (fails it under ``CI=true``) when there is none."""
    binary = find_kamailio()
    if binary is None:
        message = "kamailio binary not found (apt-get install kamailio)"
        if os.environ.get("CI") == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return binary


@pytest.fixture
def kamailio(kamailio_binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeFactory]:
    """Factory ``kamailio(seeds=[...], **kw) -> KamailioNode``: a started node on its own free port.

    Keyword arguments go to :class:`KamailioNode` (``port`` may be given; ``start=False``
    returns the node unstarted). Every node made is stopped at teardown, and teardown fails
    if one of them left a process behind.
    """
    nodes: list[KamailioNode] = []

    def make(seeds: Sequence[str | KamailioNode] = (), *, port: int | None = None,
             start: bool = True, **options: Any) -> KamailioNode:
        """Create (and by default start) one node."""
        transports = options.get("transports", ("udp",))
        if port is None:
            port = free_port("udp+tcp" if "tcp" in transports else "udp")
        node = KamailioNode(tmp_path_factory.mktemp("kamailio"), port, seeds,
                            binary=kamailio_binary, **options)
        nodes.append(node)
        if start:
            node.start()
        return node

    yield make
    errors = []
    for node in reversed(nodes):
        try:
            node.stop()
        except Exception as exc:  # keep stopping the others, then report
            errors.append(f"{node.uri}: {exc}")
    if errors:
        pytest.fail("could not stop Kamailio nodes: " + "; ".join(errors), pytrace=False)


@pytest.fixture
def assert_alive() -> Callable[..., None]:
    """The :func:`tests.interop.kamailio.assert_alive` check: ``assert_alive(node, timeout=1.0)``."""
    return _assert_alive
