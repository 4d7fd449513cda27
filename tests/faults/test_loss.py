"""Datagram loss of 1% to 20% (iptables ``statistic`` in a namespace): every set answered 200 is applied once, tables end equal."""

from __future__ import annotations

from typing import Any

import pytest

from .scenarios import kamailio_under_loss, replicate_under_loss


@pytest.mark.parametrize("rate", [0.01, 0.05, 0.20])
def test_sets_under_loss_are_applied_exactly_once(namespace: Any, dmq_node: Any, rate: float) -> None:
    """Under random loss every message carrying the 100 sets gets a 200 and each set is applied exactly once on
    the peer (retransmissions absorbed)."""
    figures = replicate_under_loss(namespace, dmq_node, rate, sets=100)
    assert figures.answered_200 == figures.messages and figures.answered_other == 0, figures
    assert figures.distinct == figures.sets and figures.lost == 0, figures
    assert figures.applied == figures.distinct, figures  # no set handled twice
    assert figures.tables_equal, figures
    if rate >= 0.05:  # at 1% a run of 100 sets may lose nothing at all
        assert figures.retransmissions > 0, figures


def test_kamailio_retransmissions_under_loss_are_applied_once(namespace: Any, dmq_node: Any, kamailio: Any) -> None:
    """At 20% loss every set a Kamailio node replicates reaches the dmq node and is handled once, its retransmissions absorbed."""
    figures = kamailio_under_loss(namespace, dmq_node, kamailio, 0.20, sets=100)
    assert figures.lost == 0, figures
    assert figures.applied == figures.distinct == figures.sets, figures
    assert figures.absorbed > 0, figures  # answers were lost and Kamailio sent the same request again
