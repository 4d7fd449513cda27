"""The live node of the hardening tests: ``twistd -n dmq`` seeded with a member of 32 sockets."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from .live import LiveNode, Member
from .run import SOCKETS


@pytest.fixture
def member() -> Iterator[Member]:
    """A member: its node address and :data:`~tests.fuzz.run.SOCKETS` more sockets on a loopback host of its own."""
    with Member(SOCKETS) as member:
        yield member


@pytest.fixture
def node(member: Member, tmp_path: Path) -> Iterator[LiveNode]:
    """A ``twistd -n dmq`` node that joined through ``member``; stopped at teardown, and it must not have died."""
    live = LiveNode(member, tmp_path)
    try:
        yield live
    finally:
        died = not live.running
        log = live.stop()
    assert not died, f"the node died: {log}"
