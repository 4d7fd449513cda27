"""Fixtures of the fault tests: the Kamailio builds of the interop tests, dmq nodes as processes, namespaces."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from ..interop.conftest import kamailio, kamailio_build  # noqa: F401  (the same builds as the interop tests)
from .harness import DmqProcess, Namespace


@pytest.fixture
def dmq_node(tmp_path: Path) -> Iterator[Callable[..., DmqProcess]]:
    """Factory: ``make(seeds, **kw)``, a started :class:`DmqProcess`; every one is stopped at teardown."""
    made: list[DmqProcess] = []

    def make(seeds: Any = (), start: bool = True, **kw: Any) -> DmqProcess:
        node = DmqProcess(tmp_path / f"dmq{len(made)}", [getattr(s, "uri", s) for s in seeds], **kw)
        made.append(node)
        if start:
            node.start()
        return node

    yield make
    for node in made:
        node.stop()


@pytest.fixture
def namespace() -> Iterator[Callable[..., Namespace]]:
    """Factory: ``make(hosts=None)``, a new network namespace; each is deleted (with its rules) at teardown."""
    made: list[Namespace] = []

    def make(hosts: dict[str, str] | None = None) -> Namespace:
        ns = Namespace(hosts)
        made.append(ns)
        return ns

    yield make
    for ns in made:
        ns.delete()
