"""A flood of 20,000 valid requests from one source in 10 s against a live node: a member's pings are all answered.

From a stranger, the rate limit answers most of the flood 503 with Retry-After; from a
member's host, every request is served. Either way every ping (a node-list request from
the member's own address) is answered within a generous liveness bound. The round trips
are figures for docs/reliability.md (``python -m tests.fuzz.flood``), never asserted here.
"""

from __future__ import annotations

import pytest

from ..helpers import assert_alive
from .flood import flood_with_pings
from .live import LiveNode, Member


@pytest.mark.parametrize("source", ["stranger", "member"])
def test_pings_are_answered_under_a_flood(node: LiveNode, member: Member, source: str) -> None:
    """20,000 htable sets in 10 s from one source; every ping meanwhile is answered; the node lives."""
    report = flood_with_pings(node, member, source, count=20000, seconds=10.0)
    print("\n".join(report.lines()))
    codes = report.flood["codes"]
    assert isinstance(codes, dict)
    assert report.flood["sent"] == 20000
    assert len(report.pings) > 10 and report.unanswered == 0
    if source == "stranger":
        # The rate limit answered most of it, each 503 with Retry-After, and counted them.
        assert codes.get("503", 0) > 10000 and report.flood["retry_after"] == codes["503"]
        assert report.refused["rate"] == codes["503"]
    else:
        assert report.refused["rate"] == 0 and codes.get("200", 0) > 0
    assert_alive(node.address)
