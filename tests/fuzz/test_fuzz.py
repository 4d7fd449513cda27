"""The UDP mutation fuzzer against a live node (``DMQ_FUZZ_SEED``, ``DMQ_FUZZ_COUNT``), and its regressions replayed."""

from __future__ import annotations

from pathlib import Path

import pytest

from ..helpers import assert_alive, free_address
from .live import LiveNode, Member, reply_fault
from .run import ANSWER_WAIT, SOCKETS, Report, default_count, default_seed, expects_answer, from_file, fuzz

REGRESSIONS = Path(__file__).parent / "regressions"
RSS_BOUND_KIB = 30 * 1024
"""The most the node's resident memory may grow over a run."""


def assert_well(report: Report, node: LiveNode, count: int) -> None:
    """Every input sent, no crash, no wrong or missing reply, every ping answered, RSS bounded, the node alive."""
    summary = "\n".join(report.lines())
    print(summary)
    assert report.tried == count, summary
    assert not report.crashed, f"{summary}\n{node.log_tail()}"
    assert not report.wrong, f"{summary}\nfirst: {report.wrong[0][1]}"
    assert report.pings and report.pings_lost == 0, summary
    assert report.rss_growth_kib < RSS_BOUND_KIB, summary
    assert_alive(node.address)


def test_mutated_requests_leave_the_node_well(node: LiveNode, member: Member, tmp_path: Path) -> None:
    """Thousands of mutated KDMQ requests from a member: the node stays up, every reply is right, pings are answered."""
    seed, count = default_seed(), default_count()
    print(f"fuzzing with DMQ_FUZZ_SEED={seed} DMQ_FUZZ_COUNT={count}")
    assert_well(fuzz(node, member, count, seed, tmp_path / "failing"), node, count)


def test_mutated_requests_from_a_stranger(node: LiveNode, member: Member, tmp_path: Path) -> None:
    """The same from an address that is no member (rate-limited, until its own node list makes it one)."""
    seed, count = default_seed(), default_count() // 3
    print(f"fuzzing with DMQ_FUZZ_SEED={seed} DMQ_FUZZ_COUNT={count * 3}")
    with Member(SOCKETS, host=free_address("udp")[0]) as stranger:
        report = fuzz(node, member, count, seed, tmp_path / "failing", sender=stranger)
    assert_well(report, node, count)


@pytest.mark.parametrize("name", sorted(p.name for p in REGRESSIONS.glob("*.sip")))
def test_regressions_are_answered_right(node: LiveNode, member: Member, name: str) -> None:
    """An input the fuzzer once found answered wrongly is answered right (or, unreadable, left unanswered)."""
    data = from_file((REGRESSIONS / name).read_bytes(), node, member)
    reply = member.exchange(data, node.address, timeout=ANSWER_WAIT if expects_answer(data) else 0.5,
                            sock=member.sockets[0])
    if reply is None:
        assert not expects_answer(data), "no answer"
    else:
        assert reply_fault(data, reply) is None, reply
    assert member.ping(node) is not None
