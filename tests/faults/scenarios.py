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

__all__ = ["LossFigures", "PartitionFigures", "RestartFigures", "SeedMoveFigures", "converged", "htable_counts",
           "kamailio_under_loss", "kill_and_restart", "partition_and_heal", "replicate_under_loss", "seed_moves", "view"]

NodeFactory = Callable[..., DmqProcess]


def htable_counts(node: DmqProcess) -> dict[str, Any]:
    """The htable channel's counters of ``node``, and its transactions' retransmission counters."""
    stats = node.stats()
    channel = stats["channels"].get("htable", {"received": 0, "sent": 0, "results": {}})
    peer = stats["peers"]["htable"]
    return {
        "received": channel["received"],
        "sent": channel["sent"],
        "results": dict(channel["results"]),
        "applied": peer["applied"],
        "replicated": peer["replicated"],
        "retransmissions": stats["transactions"]["retransmissions"],
        "retransmitted_requests": stats["transactions"]["retransmitted_requests"],
    }


def _delta(after: dict[str, Any], before: dict[str, Any], name: str) -> int:
    return int(after[name]) - int(before[name])


def _code_delta(after: dict[str, Any], before: dict[str, Any], code: str) -> int:
    return int(after["results"].get(code, 0)) - int(before["results"].get(code, 0))


@dataclass
class LossFigures:
    """What one run of :func:`replicate_under_loss` saw."""

    rate: float
    sets: int
    messages: int
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

    Each set goes to the other node in a KDMQ (several in one, when they queue up) that is
    retransmitted until answered (T1 500 ms, up to 32 s). Counted on the receiver: the sets its
    htable peer applied (after the transaction layer absorbed retransmissions) against distinct
    keys it holds, and on the sender: messages sent and their final answers per code. ``lost`` is
    sets whose messages were all answered 200 but whose key is missing.
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
        # Every set handed to the outbox and every message sent answered: nothing waits any more.
        now = htable_counts(a)
        answered = sum(now["results"].values()) - sum(before_a["results"].values())
        return now if _delta(now, before_a, "replicated") >= sets and answered == _delta(now, before_a, "sent") else None

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
        rate=rate, sets=sets, messages=_delta(after_a, before_a, "sent"), answered_200=ok, answered_other=answered - ok,
        applied=_delta(after_b, before_b, "applied"), distinct=len(present),
        lost=sets - len(present) if ok == answered else 0,
        retransmissions=_delta(after_a, before_a, "retransmissions"),
        absorbed=_delta(after_b, before_b, "retransmitted_requests"), seconds=seconds, tables_equal=equal,
    )


def kamailio_under_loss(namespace: Callable[..., Namespace], dmq_node: NodeFactory, kamailio: Callable[..., Any],
                        rate: float, sets: int = 100) -> LossFigures:
    """
    A Kamailio node and a dmq node in a namespace that drops ``rate`` of every UDP datagram; ``sets``
    htable sets on Kamailio (over its RPC socket, not dropped), each replicated to the dmq node.

    Kamailio retransmits each KDMQ (T1 500 ms, up to ``fr_timer``, 30 s here as by default) with
    the same branch; the dmq node must handle each set once whatever reaches it. Counted on the
    dmq node only: requests its htable channel handled and distinct keys it holds (so
    ``answered_200`` is the keys it holds: Kamailio's own answers are not counted).
    """
    ns = namespace()
    d = dmq_node(namespace=ns, t1_ms=500)
    k = kamailio([d.uri], start=False, fr_timer_ms=30000)
    k.binary = ns.wrap(k.build.binary, k.directory)
    k.start()
    wait_until(lambda: converged(d, k), timeout=20, interval=0.2)
    before = htable_counts(d)
    ns.drop_at_random(rate)
    started = time.monotonic()
    keys = [f"kloss-{rate:g}-{i}" for i in range(sets)]
    for i, key in enumerate(keys):
        k.rpc("htable.sets", "t", key, f"v{i}")

    def all_arrived() -> bool:
        return tables_equal(d, k) is not None and len(d.htable_items()) == sets

    wait_until(all_arrived, timeout=40, interval=0.2)
    seconds = time.monotonic() - started
    ns.flush()
    after = htable_counts(d)
    present = [key for key in keys if key in d.htable_items()]
    with ns.entered():
        assert_alive(k, (d.host, d.port))
    return LossFigures(
        rate=rate, sets=sets, messages=_delta(after, before, "received"), answered_200=len(present), answered_other=0,
        applied=_delta(after, before, "applied"),
        distinct=len(present), lost=sets - len(present), retransmissions=0,
        absorbed=_delta(after, before, "retransmitted_requests"), seconds=seconds, tables_equal=True,
    )


def view(node: Any) -> dict[str, str]:
    """``sip:HOST:PORT`` -> status of every node ``node`` lists (a dmq process or a Kamailio node)."""
    if isinstance(node, DmqProcess):
        return node.list_nodes()
    return {f"sip:{row['host']}:{row['port']}": row["status"] for row in node.list_nodes()}


def converged(*nodes: Any) -> bool:
    """Whether every node (dmq or Kamailio) lists exactly these nodes, itself included, all active."""
    everyone = {node.uri: "active" for node in nodes}
    return all(view(node) == everyone for node in nodes)


@dataclass
class RestartFigures:
    """What :func:`kill_and_restart` saw: seconds from each kill until a dmq node saw the victim
    not active, and from each restart to a converged cluster with equal tables."""

    nodes: int
    applied_once: bool
    rejoin_seconds: list[float]
    detect_seconds: list[float]
    keys: int


def kill_and_restart(dmq_node: NodeFactory, kamailio: Callable[..., Any], rounds: int = 1,
                     sets: int = 20) -> RestartFigures:
    """
    A cluster of two dmq and two Kamailio nodes; each round SIGKILLs a dmq node and a Kamailio
    node in turn, makes ``sets`` changes while it is down, waits until a dmq node no longer
    lists it active (the crash was noticed), restarts it on the same address,
    and waits until every node lists every other as active and all tables are equal (the
    restarted node syncs at start-up). Before the first kill, ``sets`` changes made on a
    Kamailio node reach each dmq node exactly once (counted by its htable peer).
    """
    a = dmq_node(ping_interval=1)
    k1 = kamailio([a.uri])
    b = dmq_node([a], ping_interval=1)
    k2 = kamailio([a.uri])
    cluster = (a, k1, b, k2)
    wait_until(lambda: converged(*cluster), timeout=30, interval=0.5)
    before = [htable_counts(n) for n in (a, b)]
    for i in range(sets):
        k1.rpc("htable.sets", "t", f"before-{i}", f"v{i}")
    wait_until(lambda: tables_equal(*cluster) and len(a.htable_items()) == sets, timeout=15, interval=0.2)
    after = [htable_counts(n) for n in (a, b)]
    applied_once = all(_delta(x, y, "applied") == sets for x, y in zip(after, before))
    timings: list[float] = []
    detections: list[float] = []
    for round_ in range(rounds):
        for victim, writer in ((b, k1), (k2, a)):
            victim.kill()
            killed = time.monotonic()
            for i in range(sets):
                writer.rpc("htable.sets", "t", f"down-{round_}-{victim.port}-{i}", f"v{i}")
            watcher = a if victim is not a else b
            wait_until(lambda: view(watcher).get(victim.uri) != "active", timeout=20, interval=0.2)
            detections.append(time.monotonic() - killed)
            victim.start()
            started = time.monotonic()
            wait_until(lambda: converged(*cluster) and tables_equal(*cluster), timeout=30, interval=0.2)
            timings.append(time.monotonic() - started)
    assert_alive(*[(n.host, n.port) for n in cluster])
    return RestartFigures(nodes=len(cluster), applied_once=applied_once, rejoin_seconds=timings,
                          detect_seconds=detections, keys=len(a.htable_items()))


@dataclass
class PartitionFigures:
    """What :func:`partition_and_heal` saw."""

    ping_interval: float
    short_partition: float
    applied_once: bool
    tables_equal: bool
    split_seconds: float
    converge_seconds: float


def partition_and_heal(namespace: Callable[..., Namespace], dmq_node: NodeFactory, ping_interval: int = 2,
                       short: float = 2.0, sets: int = 20) -> PartitionFigures:
    """
    Three dmq nodes in a namespace (T1 100 ms: a request gives up after 6.4 s), cut in two: A | B, C.

    First a short partition (``short`` s, under the request timeout): ``sets`` changes on A and
    on B meanwhile are retransmitted through it once it heals, and each node applies each
    change it should get exactly once (its htable peer counts). Then a long one: A removes
    B and C, B and C hold A (their seed) as not active. Measured: seconds until that split,
    and from healing until every node lists all three as active again.
    """
    ns = namespace()
    a = dmq_node(namespace=ns, ping_interval=ping_interval)
    b = dmq_node([a], namespace=ns, ping_interval=ping_interval)
    c = dmq_node([a], namespace=ns, ping_interval=ping_interval)
    nodes = (a, b, c)
    wait_until(lambda: converged(*nodes), timeout=20, interval=0.2)
    before = [htable_counts(n) for n in nodes]
    ns.partition([a.host], [b.host, c.host])
    for i in range(sets):
        a.rpc("htable.sets", "t", f"short-a-{i}", f"v{i}")
        b.rpc("htable.sets", "t", f"short-b-{i}", f"v{i}")
    time.sleep(short)
    ns.flush()
    wait_until(lambda: tables_equal(*nodes) and len(a.htable_items()) == 2 * sets, timeout=20, interval=0.2)
    after = [htable_counts(n) for n in nodes]
    applied = [_delta(x, y, "applied") for x, y in zip(after, before)]
    applied_once = applied == [sets, sets, 2 * sets]
    ns.partition([a.host], [b.host, c.host])
    cut = time.monotonic()
    wait_until(lambda: set(a.list_nodes()) == {a.uri} and b.list_nodes().get(a.uri) == "not_active"
               and c.list_nodes().get(a.uri) == "not_active", timeout=40, interval=0.2)
    split = time.monotonic() - cut
    ns.flush()
    healed = time.monotonic()
    wait_until(lambda: converged(*nodes), timeout=10 * ping_interval, interval=0.05)
    converge = time.monotonic() - healed
    equal = tables_equal(*nodes) is not None
    with ns.entered():
        assert_alive(*[(n.host, n.port) for n in nodes])
    return PartitionFigures(ping_interval=ping_interval, short_partition=short, applied_once=applied_once,
                            tables_equal=equal, split_seconds=split, converge_seconds=converge)


@dataclass
class SeedMoveFigures:
    """What :func:`seed_moves` saw: seconds from the hosts-file edit until the node lists the seed's new
    address as active and the moved seed lists the node, and until the old address has left its list."""

    ping_interval: float
    joined_seconds: float
    old_gone_seconds: float


def seed_moves(namespace: Callable[..., Namespace], dmq_node: NodeFactory, ping_interval: int = 1) -> SeedMoveFigures:
    """
    A node whose seed is a host name (``/etc/hosts`` of a namespace, read through ``ip netns exec``).

    The seed process is SIGKILLed and another starts on a new address; the name is moved
    there. The node (``--seed-refresh 1``) resolves the name again, pings the new address,
    and the old one, no longer a seed, times out and leaves its list: no node stays twice.
    """
    (old_host, port), (new_host, _) = free_address("udp"), free_address("udp")
    name = "seed.dmq.test"
    ns = namespace({name: old_host})
    seed = dmq_node(namespace=ns, address=(old_host, port), ping_interval=ping_interval)
    node = dmq_node([f"sip:{name}:{port}"], namespace=ns, ping_interval=ping_interval,
                    options=("--seed-refresh", "1"))
    wait_until(lambda: converged(seed, node), timeout=20, interval=0.2)
    moved = dmq_node(namespace=ns, address=(new_host, port), ping_interval=ping_interval)
    seed.kill()
    ns.set_host(name, new_host)
    edited = time.monotonic()
    wait_until(lambda: node.list_nodes().get(moved.uri) == "active" and moved.list_nodes().get(node.uri) == "active",
               timeout=20, interval=0.1)
    joined = time.monotonic() - edited
    wait_until(lambda: converged(moved, node), timeout=30, interval=0.1)
    gone = time.monotonic() - edited
    with ns.entered():
        assert_alive((node.host, node.port), (moved.host, moved.port))
    return SeedMoveFigures(ping_interval=ping_interval, joined_seconds=joined, old_gone_seconds=gone)
