"""A seed given by host name moves to a new address over real name resolution (a namespace's /etc/hosts)."""

from __future__ import annotations

from typing import Any

from .scenarios import seed_moves


def test_node_follows_a_seed_that_moves(namespace: Any, dmq_node: Any) -> None:
    """After the seed's name moves, the node joins the new address, and the old one leaves its list (not two nodes)."""
    figures = seed_moves(namespace, dmq_node, ping_interval=1)
    assert figures.joined_seconds <= figures.old_gone_seconds, figures
