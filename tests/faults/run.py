"""Run the fault scenarios longer than the tests do and print their figures (for docs/reliability.md).

``python -m tests.faults.run`` (as root, from the project folder, with the project's venv):
every scenario of :mod:`tests.faults.scenarios`; ``--only loss,kamailio-loss,partition,seeds,restarts`` picks
some, ``--sets N`` changes the sets per loss rate, ``--repeat N`` the runs of the others.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from ..interop.kamailio import NodeFactory, find_builds
from .harness import DmqProcess, Namespace
from .scenarios import kamailio_under_loss, kill_and_restart, partition_and_heal, replicate_under_loss, seed_moves

SCENARIOS = ("loss", "kamailio-loss", "partition", "seeds", "restarts")


@contextlib.contextmanager
def factories(folder: Path) -> Iterator[tuple[Callable[..., Namespace], Callable[..., DmqProcess]]]:
    """The ``namespace`` and ``dmq_node`` factories of the tests, cleaned up at the end of the block."""
    namespaces: list[Namespace] = []
    nodes: list[DmqProcess] = []

    def namespace(hosts: dict[str, str] | None = None) -> Namespace:
        namespaces.append(Namespace(hosts))
        return namespaces[-1]

    def dmq_node(seeds: Any = (), **kw: Any) -> DmqProcess:
        node = DmqProcess(folder / f"dmq{len(nodes)}", [getattr(s, "uri", s) for s in seeds], **kw)
        nodes.append(node)
        node.start()
        return node

    try:
        yield namespace, dmq_node
    finally:
        for node in nodes:
            node.stop()
        for ns in namespaces:
            ns.delete()


def spread(values: list[float]) -> str:
    """``median (min-max)`` of ``values``, in seconds."""
    return f"{statistics.median(values):.2f} s ({min(values):.2f}-{max(values):.2f})"


def main(argv: list[str] | None = None) -> int:
    """Run the scenarios asked for and print one Markdown block of figures per scenario."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(SCENARIOS))
    parser.add_argument("--sets", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = set(chosen) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    root = Path(tempfile.mkdtemp(prefix="dmq-faults-"))
    print(f"logs in {root}")
    run = 0

    def folder() -> Path:
        nonlocal run
        run += 1
        return root / f"run{run}"

    if "loss" in chosen:
        print("\n| loss | sets | messages | answered 200 | other answers | applied | lost | applied twice | "
              "retransmissions | absorbed | seconds | tables equal |\n|---|---|---|---|---|---|---|---|---|---|---|---|")
        for rate in (0.01, 0.05, 0.10, 0.20):
            with factories(folder()) as (namespace, dmq_node):
                f = replicate_under_loss(namespace, dmq_node, rate, sets=args.sets)
            print(f"| {rate:.0%} | {f.sets} | {f.messages} | {f.answered_200} | {f.answered_other} | {f.distinct} | {f.lost} | "
                  f"{f.applied - f.distinct} | {f.retransmissions} | {f.absorbed} | {f.seconds:.1f} | "
                  f"{'yes' if f.tables_equal else 'NO'} |", flush=True)
    if "kamailio-loss" in chosen:
        print("\n| Kamailio | loss | sets | arrived | handled | lost | handled twice | copies absorbed | seconds |\n"
              "|---|---|---|---|---|---|---|---|---|")
        for build in find_builds():
            if build.missing:
                continue
            for rate in (0.01, 0.05, 0.10, 0.20):
                kamailio = NodeFactory(build, lambda: Path(tempfile.mkdtemp(dir=root, prefix="k")))
                try:
                    with factories(folder()) as (namespace, dmq_node):
                        f = kamailio_under_loss(namespace, dmq_node, kamailio, rate, sets=args.sets)
                finally:
                    for node in kamailio.nodes:
                        node.stop()
                print(f"| {build.label} | {rate:.0%} | {f.sets} | {f.distinct} | {f.applied} | {f.lost} | "
                      f"{f.applied - f.distinct} | {f.absorbed} | {f.seconds:.1f} |", flush=True)
    if "partition" in chosen:
        split, converge, once = [], [], []
        for _ in range(args.repeat):
            with factories(folder()) as (namespace, dmq_node):
                p = partition_and_heal(namespace, dmq_node)
            split.append(p.split_seconds)
            converge.append(p.converge_seconds)
            once.append(p.applied_once and p.tables_equal)
        print(f"\npartition, {args.repeat} runs, ping interval {p.ping_interval} s, T1 100 ms: split noticed in "
              f"{spread(split)}; converged after healing in {spread(converge)}; changes of the short cut applied "
              f"once with equal tables in {sum(once)} of {len(once)} runs", flush=True)
    if "seeds" in chosen:
        joined, gone = [], []
        for _ in range(args.repeat):
            with factories(folder()) as (namespace, dmq_node):
                s = seed_moves(namespace, dmq_node)
            joined.append(s.joined_seconds)
            gone.append(s.old_gone_seconds)
        print(f"\nseed moved, {args.repeat} runs, ping interval {s.ping_interval} s, --seed-refresh 1, T1 100 ms: "
              f"new address joined in {spread(joined)}; old address gone in {spread(gone)}", flush=True)
    if "restarts" in chosen:
        for build in find_builds():
            if build.missing:
                print(f"\n{build}: skipped")
                continue
            kamailio = NodeFactory(build, lambda: Path(tempfile.mkdtemp(dir=root, prefix="k")))
            try:
                with factories(folder()) as (_, dmq_node):
                    r = kill_and_restart(dmq_node, kamailio, rounds=args.repeat)
            finally:
                for node in kamailio.nodes:
                    node.stop()
            dmq_rejoin, kam_rejoin = r.rejoin_seconds[0::2], r.rejoin_seconds[1::2]
            print(f"\nrestarts with Kamailio {build.label}, {args.repeat} rounds on {r.nodes} nodes: a crash noticed "
                  f"in {spread(r.detect_seconds)}; back with equal tables in {spread(dmq_rejoin)} (dmq) and "
                  f"{spread(kam_rejoin)} (Kamailio); changes applied once: {r.applied_once}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
