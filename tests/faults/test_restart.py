"""kill -9 and restart inside a mixed cluster (two dmq processes, two Kamailio nodes), against each Kamailio build."""

from __future__ import annotations

from typing import Any

from ..helpers import assert_alive
from .scenarios import kill_and_restart


def test_kill_and_restart_in_a_mixed_cluster(dmq_node: Any, kamailio: Any) -> None:
    """A SIGKILLed dmq node and a SIGKILLed Kamailio node each restart, rejoin, sync what they missed; sets applied once."""
    figures = kill_and_restart(dmq_node, kamailio, rounds=1, sets=20)
    assert figures.applied_once, figures
    assert figures.keys == 20 * 3, figures  # before, while the dmq node was down, while Kamailio was down
    assert len(figures.rejoin_seconds) == 2
    assert_alive(*kamailio.nodes)
