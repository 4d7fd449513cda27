"""The fault scenarios, each a function that runs real processes and returns what it measured.

The tests (``tests/faults/test_*.py``) run them short and assert on the figures; ``python -m
tests.faults.run`` runs them longer and prints the figures for docs/reliability.md. Times
here are wall-clock figures for the docs, never asserted against a bound tighter than the
rule under test (two ping intervals for convergence).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

from ..helpers import assert_alive, free_address, wait_until
from .harness import DmqProcess, Namespace, tables_equal

__all__ = ["LossFigures", "PartitionFigures", "SeedMoveFigures", "htable_counts", "converged",
           "replicate_under_loss", "partition_and_heal", "seed_moves"]

NodeFactory = Callable[..., DmqProcess]


def htable_counts(node: DmqProcess) -> dict[str, Any]:
    """The htable channel's counters of ``node``, and its transactions' retransmission counters."""
    stats = node.stats()
    channel = stats["channels"].get("htable", {"received": 0, "sent": 0, "results": {}})
    return {
        "received": channel["received"],
        "sent": channel["sent"],
        "results": dict(channel["results"]),
        "retransmissions": stats["transactions"]["retransmissions"],
        "retransmitted_requests": stats["transactions"]["retransmitted_requests"],
    }


def converged(*nodes: Any) -> bool:
    """Whether every node lists every node (itself included) as active, and nothing else."""
    everyone = {node.uri: "active" for node in nodes}
    return all(node.list_nodes() == everyone for node in nodes)


def _delta(after: dict[str, Any], before: dict[str, Any], name: str) -> int:
    return int(after[name]) - int(before[name])


def _code_delta(after: dict[str, Any], before: dict[str, Any], code: str) -> int:
    return int(after["results"].get(code, 0)) - int(before["results"].get(code, 0))


@dataclass
class LossFigures:
    """What one run of :func:`replicate_under_loss` saw."""

    rate: float
    sets: int
    answered_200: int
    answered_other: int
    applied: int
    distinct: int
    lost: int
    retransmissions: int
    absorbed: int
    seconds: float
    tables_equal: bool


def replicate_under_loss(namespace: Callable[..., Namespace], dmq_node: NodeFactory, rate: float,
                         sets: int = 100) -> LossFigures:
    """
    Two dmq nodes in a namespace that drops ``rate`` of every UDP datagram; ``sets`` htable sets on one.

    Each set goes to the other node in a KDMQ that is retransmitted until answered (T1 500 ms,
    up to 32 s). Counted on the receiver: requests its htable peer got (after the
    transaction layer absorbed retransmissions) against distinct keys it holds, and on the
    sender: final answers per code. ``lost`` is sets answered 200 whose key is missing.
    """
    ns = namespace()
    a = dmq_node(namespace=ns, t1_ms=500)
    b = dmq_node([a], namespace=ns, t1_ms=500)
    wait_until(lambda: converged(a, b), timeout=15)
    before_a, before_b = htable_counts(a), htable_counts(b)
    ns.drop_at_random(rate)
    started = time.monotonic()
    keys = [f"loss-{rate:g}-{i}" for i in range(sets)]
    for i, key in enumerate(keys):
        a.rpc("htable.sets", "t", key, f"v{i}")

    def all_answered() -> dict[str, Any] | None:
        now = htable_counts(a)
        done = sum(now["results"].values()) - sum(before_a["results"].values())
        return now if done >= sets else None

    after_a = wait_until(all_answered, timeout=40, interval=0.2)
    seconds = time.monotonic() - started
    ns.flush()
    after_b = htable_counts(b)
    held = b.htable_items()
    present = [key for key in keys if key in held]
    ok = _code_delta(after_a, before_a, "200")
    answered = sum(after_a["results"].values()) - sum(before_a["results"].values())
    equal = tables_equal(a, b) is not None
    with ns.entered():
        assert_alive((a.host, a.port), (b.host, b.port))
    return LossFigures(
        rate=rate, sets=sets, answered_200=ok, answered_other=answered - ok,
        applied=_delta(after_b, before_b, "received"), distinct=len(present), lost=max(0, ok - len(present)),
        retransmissions=_delta(after_a, before_a, "retransmissions"),
        absorbed=_delta(after_b, before_b, "retransmitted_requests"), seconds=seconds, tables_equal=equal,
    )
