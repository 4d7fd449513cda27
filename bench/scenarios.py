"""
The benchmark scenarios. Each returns plain data (lists of per-repetition figures per
implementation) that ``bench/report.py`` turns into tables and plots.

Kamailio and dmq run with the same settings (``bench/cluster.py``), are driven by the same C
client, and alternate repetition by repetition (Kamailio first in even repetitions, dmq first
in odd ones), so a burst of other load on the machine hits both alike.
"""

from __future__ import annotations

import random
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

from dmq.heap import CHECK_INTERVAL

from cluster import (
    ANSWER_KEPT_MS,
    KAMAILIO_SHM_MB,
    PING_INTERVAL,
    PYPY_PYTHON,
    BenchKamailio,
    BindWatcher,
    DmqProcess,
    FloorProcess,
    TwistdNode,
    join_as_member,
    memory_kb,
    new_addresses,
    run_client,
)

IMPLS = ("kamailio", "dmq") + (("pypy",) if PYPY_PYTHON is not None else ())
"""Kamailio, dmq on CPython, and dmq on PyPy where ``.venv-pypy`` is installed."""
INBOUND_IMPLS = IMPLS + ("floor",)
"""The inbound scenario adds its yardstick: ``bench/floor.py``, a minimal Twisted responder on CPython."""
TIMING_IMPLS = ("kamailio", "dmq")
"""Where CPU speed does not matter (convergence, failure detection): Kamailio and dmq on CPython."""
Results = dict[str, Any]

BURST_KEYS = 1000
"""The keys the fan-out memory burst cycles over: the first of those the warm-up set, so no table grows."""


@dataclass
class Plan:
    """How long and how often: the full plan, or ``--quick``."""

    reps: int = 3
    seconds: float = 3.0
    warmup: float = 0.5
    fanout_sets: int = 5000
    lag_sets: int = 300
    burst: int = 20000
    receivers: Sequence[int] = (1, 2, 4)
    small_clusters: Sequence[int] = (3, 5, 8)
    large_clusters: Sequence[int] = (16, 32, 64, 128)
    steady_intervals: int = 5
    """Ping intervals of steady state measured in the large clusters (after one interval of settling)."""
    large_reps: int = 2
    """Repetitions of each large cluster (dmq only: nothing to alternate with)."""
    large_ping_interval: float = 10
    large_t1_ms: int = 500
    """dmq's own default T1 (a timeout of 32 s): the large clusters are not compared with Kamailio."""
    failure_nodes: int = 4
    jit_warmup: float = 5.0
    """Seconds of untimed load every node gets before the inbound reps (PyPy's JIT compiles the request
    path in its first seconds of load; a node in service is past that)."""
    jit_warmup_sets: int = 15000
    """Untimed sets every fan-out cluster gets before its reps, for the same reason."""

    @classmethod
    def quick(cls) -> "Plan":
        """Fewer and shorter repetitions, for trying the bench out."""
        return cls(reps=2, seconds=1.0, warmup=0.2, fanout_sets=1000, lag_sets=100, receivers=(1, 2),
                   small_clusters=(3, 5), large_clusters=(16, 32), steady_intervals=1, large_reps=1,
                   failure_nodes=3, jit_warmup=2.0, jit_warmup_sets=3000)


def alternate(reps: int, impls: Sequence[str] = IMPLS) -> Iterator[tuple[int, str]]:
    """(repetition, implementation) pairs, the order of the implementations swapped every repetition."""
    for rep in range(reps):
        for impl in (impls if rep % 2 == 0 else tuple(reversed(impls))):
            yield rep, impl


def uri(address: tuple[str, int]) -> str:
    """``sip:HOST:PORT``."""
    return f"sip:{address[0]}:{address[1]}"


def hostport(address: tuple[str, int]) -> str:
    """``HOST:PORT``."""
    return f"{address[0]}:{address[1]}"


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.01) -> Any:
    """Poll ``predicate`` until it returns something true; TimeoutError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout}s")
        time.sleep(interval)


class Cluster:
    """A cluster of one implementation: nodes seeded with the first one, started one after another."""

    def __init__(self, impl: str, workdir: Path, size: int, *, htable: bool = True, trigger: bool = False,
                 watch: Optional[tuple[str, int]] = None) -> None:
        """Describe ``size`` nodes on addresses of their own; :meth:`start` starts them."""
        self.impl = impl
        self.workdir = workdir
        self.addresses = new_addresses(size)
        self.htable = htable
        self.trigger = trigger
        self.watch = watch
        self.kamailio: list[BenchKamailio] = []
        self.dmq: list[DmqProcess] = []

    @property
    def seed(self) -> str:
        """The first node's URI, every other node's seed."""
        return uri(self.addresses[0])

    def start(self) -> float:
        """Start the nodes one after another; return when the last node's socket was bound."""
        watcher = BindWatcher([self.addresses[-1]])
        try:
            for index, address in enumerate(self.addresses):
                seeds = [self.seed] if index else []
                if self.impl == "kamailio":
                    node = BenchKamailio(self.workdir / f"k{index}", address, seeds)
                    self.kamailio.append(node)
                    node.start()
                elif self.impl == "floor":
                    floor = FloorProcess(address)
                    self.dmq.append(floor)
                    floor.wait_listening()
                else:
                    proc = DmqProcess([address], seeds, htable=self.htable, trigger=self.trigger and index == 0,
                                      watch_uri=uri(self.watch) if self.watch else None,
                                      python=PYPY_PYTHON if self.impl == "pypy" else None)
                    self.dmq.append(proc)
                    proc.wait_listening()
            return watcher.when(self.addresses[-1])
        finally:
            watcher.stop()

    def converged(self, timeout: float = 60, skip: Sequence[int] = ()) -> float:
        """Wait until every node lists every other as active; return when (Kamailio: polled every 10 ms)."""
        expected = len(self.addresses) - 1
        if self.impl == "kamailio":
            def all_active() -> Optional[float]:
                now = time.time()
                return now if all(n.active_others() == expected for n in self.kamailio) else None
            return float(wait_for(all_active, timeout, "Kamailio cluster convergence"))
        return float(wait_for(lambda: self._dmq_converged(expected), timeout, "dmq cluster convergence"))

    def _dmq_converged(self, expected: int) -> Optional[float]:
        times = [p.converged_at(expected) for p in self.dmq]
        return None if any(t is None for t in times) else max(t for t in times if t is not None)

    def pids(self, indexes: Optional[Sequence[int]] = None) -> list[int]:
        """The processes of the nodes (all, or those at ``indexes``)."""
        nodes: Sequence[Any] = self.kamailio if self.impl == "kamailio" else self.dmq
        chosen = nodes if indexes is None else [nodes[i] for i in indexes]
        return [pid for node in chosen for pid in node.pids()]

    def kill(self, index: int) -> float:
        """SIGKILL node ``index``; return when."""
        if self.impl == "kamailio":
            at = time.time()
            self.kamailio[index].kill()
            return at
        return self.dmq[index].kill()

    def stop(self) -> None:
        """Stop every node."""
        for node in reversed(self.kamailio):
            node.stop()
        for proc in reversed(self.dmq):
            proc.stop()


def _client_host() -> str:
    """A loopback host of its own for the load client."""
    return new_addresses(1)[0][0]


# -- inbound KDMQ ----------------------------------------------------------------------------


def inbound(plan: Plan, workdir: Path) -> Results:
    """
    One lone node of each kind, and the yardstick (``bench/floor.py``); htable sets (200) and an
    unknown channel (404) at 1 and 32 outstanding.
    """
    clusters = {impl: Cluster(impl, workdir / f"in-{impl}", 1) for impl in INBOUND_IMPLS}
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {impl: {} for impl in INBOUND_IMPLS}
    client = _client_host()
    commands = []
    try:
        for cluster in clusters.values():
            cluster.start()
            port = join_as_member(client, cluster.addresses[0])
            for kind in ("htable", "channel"):
                run_client("--target", hostport(cluster.addresses[0]), "--bind", f"{client}:{port}", "--kind", kind,
                           "--window", 32, "--seconds", plan.jit_warmup / 2, "--keys", 1000, "--prefix", "warm")
        for rep, impl in alternate(plan.reps, INBOUND_IMPLS):
            cluster = clusters[impl]
            pids = ",".join(map(str, cluster.pids()))
            for kind in ("htable", "channel"):
                for window in (1, 32):
                    port = join_as_member(client, cluster.addresses[0])
                    args = ["--target", hostport(cluster.addresses[0]), "--bind", f"{client}:{port}", "--kind", kind,
                            "--window", window, "--seconds", plan.seconds, "--warmup", plan.warmup,
                            "--keys", 1000, "--prefix", f"in{rep}k", "--pids", pids]
                    runs[impl].setdefault(f"{kind}/{window}", []).append(run_client(*args))
                    if rep == 0:
                        commands.append((impl, args))
    finally:
        for cluster in clusters.values():
            cluster.stop()
    return {"runs": runs, "commands": commands}


# -- fan-out ---------------------------------------------------------------------------------


def fanout(plan: Plan, workdir: Path) -> Results:
    """A set on one node reaching 1, 2, 4 others: end-to-end rate, lag to the last node, CPU per set."""
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {impl: {} for impl in IMPLS}
    shm_peaks: dict[str, int] = {}
    memory: dict[str, dict[str, dict[str, float]]] = {}
    settle: dict[str, float] = {}
    commands = []
    for receivers in plan.receivers:
        clusters = {impl: Cluster(impl, workdir / f"fan{receivers}-{impl}", receivers + 1, trigger=True)
                    for impl in IMPLS}
        try:
            for cluster in clusters.values():
                cluster.start()
                cluster.converged()
            time.sleep(1.0)  # the join-time syncs settle
            fresh = {impl: memory_kb(cluster.pids())[1] for impl, cluster in clusters.items()}
            for impl, cluster in clusters.items():
                watch = ",".join(hostport(a) for a in cluster.addresses[1:])
                run_client("--target", hostport(cluster.addresses[0]), "--bind", cluster.addresses[1][0], "--kind",
                           "trigger", "--window", 32, "--count", plan.jit_warmup_sets, "--prefix", "warm", "--watch",
                           watch, "--settle", 10)
            for rep, impl in alternate(plan.reps):
                cluster = clusters[impl]
                watch = ",".join(hostport(a) for a in cluster.addresses[1:])
                # The trigger comes from the first receiver's IP (another port): a member's address, as
                # dmq answers at most 50 requests/s from strangers; the sender does not replicate to it.
                client = cluster.addresses[1][0]
                pids = ",".join(map(str, cluster.pids()))
                for label, window, count in (("load", 32, plan.fanout_sets), ("light", 1, plan.lag_sets)):
                    args = ["--target", hostport(cluster.addresses[0]), "--bind", client, "--kind", "trigger",
                            "--window", window, "--count", count, "--prefix", f"f{rep}{label}k",
                            "--watch", watch, "--pids", pids, "--settle", 10]
                    result = run_client(*args)
                    runs[impl].setdefault(f"{receivers}/{label}", []).append(result)
                    if rep == 0 and receivers == plan.receivers[-1]:
                        commands.append((impl, args))
            # Each cluster's median sets/s; the slowest may still be replicating a burst for up to sets / that.
            rates = {impl: sorted(float(x["replicated_rate"]) for x in runs[impl][f"{receivers}/load"])[plan.reps // 2]
                     for impl in clusters}
            settle[str(receivers)] = settle_seconds(plan.burst, min(rates.values()))
            memory[str(receivers)] = burst_memory(plan, clusters, fresh, settle[str(receivers)], rates)
            shm = clusters["kamailio"].kamailio[0].rpc("core.shmmem")
            shm_peaks[str(receivers)] = int(shm["max_used"]) // 1024
        finally:
            for cluster in clusters.values():
                cluster.stop()
    return {"runs": runs, "commands": commands, "kamailio_shm_peak_kb": shm_peaks, "kamailio_shm_mb": KAMAILIO_SHM_MB,
            "memory": memory, "burst": plan.burst, "burst_keys": min(BURST_KEYS, plan.jit_warmup_sets),
            "settle_s": settle, "answer_kept_s": ANSWER_KEPT_MS / 1000}


def settle_seconds(sets: int, rate: float) -> float:
    """
    Seconds after a burst of ``sets`` by which every transaction it started is over, in a cluster
    that replicates ``rate`` sets/s: its replication may go on for up to ``sets / rate`` after the
    last trigger is answered, then dmq keeps each answer for ``ANSWER_KEPT_MS`` and sweeps every T1;
    its idle collector (``dmq.heap``) runs up to two of its reading intervals after that.
    """
    return sets / max(rate, 1.0) + ANSWER_KEPT_MS / 1000 + 2 * CHECK_INTERVAL + 4


def burst_memory(plan: Plan, clusters: dict[str, Cluster], fresh: dict[str, int],
                 settle: float, rates: dict[str, float]) -> dict[str, dict[str, float]]:
    """
    Each fan-out cluster's memory (PSS of all its processes, KiB): ``fresh`` (converged, before any
    load), ``baseline`` (after the warm-up and the reps, their transactions over), ``burst`` (just
    after ``plan.burst`` more sets, 32 outstanding, over keys the warm-up set), ``after`` (the
    burst's transactions over too: ``settle`` seconds later), and ``after2`` (the same once more after a second, identical
    burst). The tables hold the same keys throughout, so whatever ``after`` keeps above
    ``baseline`` is what the burst left behind, and ``after2`` above ``after`` what a burst adds
    each time. Each cluster's burst runs alone: the next cluster's starts once this one has had
    the time to replicate it at its sets/s in ``rates``, so that no burst is replicated while
    another cluster's burst takes the CPU.
    """
    readings = {impl: {"fresh_kb": float(fresh[impl])} for impl in clusters}
    for suffix in ("", "2"):
        time.sleep(settle)
        for impl, cluster in clusters.items():
            readings[impl]["after_kb" if suffix else "baseline_kb"] = float(memory_kb(cluster.pids())[1])
            burst = run_client("--target", hostport(cluster.addresses[0]), "--bind", cluster.addresses[1][0],
                               "--kind", "trigger", "--window", 32, "--count", plan.burst,
                               "--keys", min(BURST_KEYS, plan.jit_warmup_sets), "--prefix", "warm")
            readings[impl][f"burst{suffix}_kb"] = float(memory_kb(cluster.pids())[1])
            readings[impl][f"burst{suffix}_rate"] = float(burst["rate"])
            time.sleep(max(0.0, plan.burst / max(rates[impl], 1.0) - float(burst["elapsed_s"])))
    time.sleep(settle)
    for impl, cluster in clusters.items():
        readings[impl]["after2_kb"] = float(memory_kb(cluster.pids())[1])
    return readings


# -- convergence and failure detection --------------------------------------------------------


def convergence(plan: Plan, workdir: Path) -> Results:
    """Clusters of 3, 5, 8 started one after another: from the last socket bound to all listing all active."""
    runs: dict[str, dict[str, list[float]]] = {impl: {} for impl in TIMING_IMPLS}
    for size in plan.small_clusters:
        for rep, impl in alternate(plan.reps, TIMING_IMPLS):
            cluster = Cluster(impl, workdir / f"conv{size}-{rep}-{impl}", size)
            try:
                bound = cluster.start()
                runs[impl].setdefault(str(size), []).append(cluster.converged() - bound)
            finally:
                cluster.stop()
    return {"runs": runs}


def failure(plan: Plan, workdir: Path) -> Results:
    """SIGKILL one node of a converged cluster: time until every other node lists it as not active."""
    runs: dict[str, list[dict[str, float]]] = {impl: [] for impl in TIMING_IMPLS}
    # a random phase against the ping timers, the same for both implementations in a repetition
    rng = random.Random(7)
    phases = [rng.uniform(0, PING_INTERVAL) for _ in range(plan.reps)]
    size = plan.failure_nodes
    for rep, impl in alternate(plan.reps, TIMING_IMPLS):
        cluster = Cluster(impl, workdir / f"fail-{rep}-{impl}", size)
        victim = size - 1
        cluster.watch = cluster.addresses[victim]
        try:
            cluster.start()
            cluster.converged()
            time.sleep(1.0 + phases[rep])
            killed = cluster.kill(victim)
            observers = range(victim)
            if impl == "kamailio":
                def all_noticed() -> Optional[float]:
                    now = time.time()
                    statuses = [cluster.kamailio[i].node_status(cluster.addresses[victim]) for i in observers]
                    return now if all(s != "active" for s in statuses) else None
                detected = float(wait_for(all_noticed, 120, "Kamailio failure detection", interval=0.02))
            else:
                detected = float(wait_for(
                    lambda: (all(cluster.dmq[i].detected_at(0, killed) for i in observers)
                             and max(cluster.dmq[i].detected_at(0, killed) or 0.0 for i in observers)),
                    120, "dmq failure detection"))
            runs[impl].append({"detect_s": detected - killed})
        finally:
            cluster.stop()
    return {"runs": runs, "size": size}


# -- memory ----------------------------------------------------------------------------------


def memory(plan: Plan, workdir: Path) -> Results:
    """A lone node's RSS and PSS (all processes) idle, then after a burst of 20,000 sets of distinct keys."""
    runs: dict[str, list[dict[str, Any]]] = {impl: [] for impl in IMPLS}
    client = _client_host()
    command = None
    for rep, impl in alternate(plan.reps):
        cluster = Cluster(impl, workdir / f"mem-{rep}-{impl}", 1)
        try:
            cluster.start()
            time.sleep(1.0)
            idle = memory_kb(cluster.pids())
            port = join_as_member(client, cluster.addresses[0])
            args = ["--target", hostport(cluster.addresses[0]), "--bind", f"{client}:{port}", "--kind", "htable",
                    "--window", 32, "--count", plan.burst, "--prefix", f"m{rep}k", "--pids",
                    ",".join(map(str, cluster.pids()))]
            burst = run_client(*args)
            command = command or args
            time.sleep(1.0)
            after = memory_kb(cluster.pids())
            runs[impl].append({"idle_rss_kb": idle[0], "idle_pss_kb": idle[1], "rss_kb": after[0],
                               "pss_kb": after[1], "burst_rate": burst["rate"], "lost": burst["lost"],
                               "processes": len(cluster.pids())})
        finally:
            cluster.stop()
    return {"runs": runs, "command": command}


def startup(plan: Plan, workdir: Path) -> Results:
    """A plain node as an operator starts it: time from exec to its SIP socket bound, and its idle memory."""
    runs: dict[str, list[dict[str, Any]]] = {impl: [] for impl in IMPLS}
    for rep, impl in alternate(plan.reps):
        address = new_addresses(1)[0]
        watcher = BindWatcher([address])
        began = time.time()
        node: Any
        if impl != "kamailio":
            node = TwistdNode(workdir / f"start-{rep}-{impl}", address, PYPY_PYTHON if impl == "pypy" else None)
        else:
            node = BenchKamailio(workdir / f"start-{rep}-k", address)
            node.start()
        try:
            bound = watcher.when(address, timeout=60)
            time.sleep(1.0)
            rss, pss = memory_kb(node.pids())
            runs[impl].append({"listen_s": bound - began, "rss_kb": rss, "pss_kb": pss, "processes": len(node.pids())})
        finally:
            watcher.stop()
            node.stop()
    return {"runs": runs}


# -- large dmq clusters ---------------------------------------------------------------------


def processes_for(size: int) -> int:
    """How many processes a large cluster is spread over: 2 (one per core), more above 32 nodes."""
    return max(2, size // 16)


def large(plan: Plan, workdir: Path) -> Results:
    """dmq clusters of 16-128 nodes, many nodes per process: convergence, steady CPU and traffic per ping."""
    runs: dict[str, list[dict[str, Any]]] = {}
    command = None
    for size in plan.large_clusters:
        for rep in range(plan.large_reps):
            addresses = new_addresses(size)
            count = processes_for(size)
            groups = [addresses[i::count] for i in range(count)]
            seed = uri(addresses[0])
            procs: list[DmqProcess] = []
            try:
                ping = plan.large_ping_interval
                first = DmqProcess(groups[0], [seed], ping_interval=ping, t1_ms=plan.large_t1_ms)
                procs.append(first)
                first.wait_listening()
                procs += [DmqProcess(group, [seed], ping_interval=ping, t1_ms=plan.large_t1_ms)
                          for group in groups[1:]]
                bound = max(p.wait_listening(60) for p in procs)
                try:
                    converged = float(wait_for(
                        lambda: (all(p.converged_at(size - 1) for p in procs)
                                 and max(p.converged_at(size - 1) or 0.0 for p in procs)),
                        120, f"{size}-node convergence", interval=0.05))
                except TimeoutError:
                    runs.setdefault(str(size), []).append({"error": "did not converge within 120 s"})
                    continue
                time.sleep(ping)  # one interval of steady state before measuring
                pids = ",".join(str(pid) for p in procs for pid in p.pids())
                args = ["--sniff-seconds", plan.steady_intervals * ping,
                        "--hosts", ",".join(a[0] for a in addresses), "--pids", pids]
                traffic = run_client(*args)
                command = command or args
                intervals = traffic["elapsed_s"] / ping
                runs.setdefault(str(size), []).append({
                    "converge_s": converged - bound,
                    "processes": count,
                    "cpu_ms_per_node_interval": traffic["server_cpu_s"] * 1000 / size / intervals,
                    "packets_per_node_interval": traffic["packets"] / size / intervals,
                    "bytes_per_node_interval": traffic["bytes"] / size / intervals,
                    "retransmitted_share": traffic["retransmissions"] / max(1, traffic["requests"]),
                    "cpu_share": traffic["server_cpu_s"] / traffic["elapsed_s"],
                    "sniff_drops": traffic["sniff_drops"],
                    "still_converged": all(p.converged_at(size - 1) for p in procs),
                    "status_changes": sum(p.changes_after(converged) for p in procs),
                    "stable_intervals": (time.time() - converged) / ping,
                })
            finally:
                for proc in procs:
                    proc.stop()
    return {"runs": runs, "command": command, "ping_interval": plan.large_ping_interval, "t1_ms": plan.large_t1_ms}


SCENARIOS: dict[str, Callable[[Plan, Path], Results]] = {
    "inbound": inbound,
    "fanout": fanout,
    "convergence": convergence,
    "failure": failure,
    "memory": memory,
    "startup": startup,
    "large": large,
}


def run(names: Sequence[str], plan: Plan, progress: Callable[[str], None]) -> dict[str, Results]:
    """Run the named scenarios in a scratch folder; their results by name."""
    workdir = Path(tempfile.mkdtemp(prefix="dmq-bench-"))
    results: dict[str, Results] = {}
    try:
        for name in names:
            began = time.monotonic()
            progress(f"{name} ...")
            try:
                results[name] = SCENARIOS[name](plan, workdir)
            except Exception as e:  # one scenario failing still leaves the others' figures
                results[name] = {"error": f"{type(e).__name__}: {e}"}
                progress(f"{name} failed: {results[name]['error']}")
            results[name]["seconds"] = round(time.monotonic() - began, 1)
            progress(f"{name} done in {results[name]['seconds']} s")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return results
