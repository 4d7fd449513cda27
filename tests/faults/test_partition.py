"""A partition (iptables -j DROP by source address in a namespace) and its healing, on three dmq processes."""

from __future__ import annotations

from typing import Any

from .scenarios import partition_and_heal


def test_partition_heals(namespace: Any, dmq_node: Any) -> None:
    """Changes made during a short partition arrive once after it; after a long one membership converges within 2 ping intervals."""
    figures = partition_and_heal(namespace, dmq_node, ping_interval=2, short=2.0, sets=20)
    assert figures.applied_once, figures
    assert figures.tables_equal, figures
    assert figures.converge_seconds <= 2 * figures.ping_interval, figures
