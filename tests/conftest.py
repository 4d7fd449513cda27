"""Shared fixtures: the reactor for tests over real loopback sockets."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture
def reactor() -> Any:
    """The global reactor pytest-twisted runs, for tests over real sockets."""
    from twisted.internet import reactor as _reactor

    return _reactor
