"""
Turn the scenarios' results into ``docs/benchmarks.md`` tables and ``docs/bench/*.png`` plots.

Every table shows medians over the repetitions; a ratio column lists dmq / Kamailio for each
repetition (the two ran back to back), then its median.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

Row = list[str]


NAMES = {"kamailio": "Kamailio", "dmq": "dmq", "pypy": "dmq on PyPy", "floor": "yardstick (bench/floor.py)"}
"""How the report names each implementation of the runs."""


def median(values: Sequence[float]) -> float:
    """The median (NaN for none)."""
    return statistics.median(values) if values else float("nan")


def num(value: float, digits: int = 0) -> str:
    """A number with thousands separators."""
    return f"{value:,.{digits}f}"


def ratios(dmq: Sequence[float], kamailio: Sequence[float]) -> str:
    """Per-repetition dmq / Kamailio, then the median in bold."""
    pairs = [d / k for d, k in zip(dmq, kamailio) if k]
    if not pairs:
        return "n/a"
    return ", ".join(f"{r:.2f}" for r in pairs) + f" (**{median(pairs):.2f}**)"


def table(head: Row, rows: list[Row], right_from: int = 1) -> str:
    """A markdown table, columns from ``right_from`` on aligned right."""
    align = ["---" if i < right_from else "---:" for i in range(len(head))]
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def field(runs: Sequence[dict[str, Any]], key: str) -> list[float]:
    """``key`` of every run."""
    return [float(run[key]) for run in runs]


# -- sections ------------------------------------------------------------------------------


def inbound_keys(runs: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(key, label, outstanding) of an implementation's inbound runs: htable sets first, then by window."""
    keys = sorted(runs, key=lambda k: (k.split("/")[0] != "htable", int(k.split("/")[1])))
    return [(key, "htable set (200)" if key.startswith("htable/") else "unknown channel (404)", key.split("/")[1])
            for key in keys]


def inbound_section(r: dict[str, Any]) -> str:
    """Inbound KDMQ: rate, latency, server and client CPU."""
    runs = r["runs"]
    rows = []
    for key, label, window in inbound_keys(runs["dmq"]):
        k, d = runs["kamailio"][key], runs["dmq"][key]
        rows.append([
            label, window,
            num(median(field(k, "rate"))), num(median(field(d, "rate"))), ratios(field(d, "rate"), field(k, "rate")),
            f"{median(field(k, 'p50_us')):,.0f} / {median(field(k, 'p99_us')):,.0f}",
            f"{median(field(d, 'p50_us')):,.0f} / {median(field(d, 'p99_us')):,.0f}",
            num(median(field(k, "server_cpu_us_per_request"))), num(median(field(d, "server_cpu_us_per_request"))),
            ratios(field(d, "server_cpu_us_per_request"), field(k, "server_cpu_us_per_request")),
            f"{median(field(k, 'client_cpu_share')) * 100:.0f}% / {median(field(d, 'client_cpu_share')) * 100:.0f}%",
        ])
    lost = sum(int(run["lost"]) for impl in runs.values() for rs in impl.values() for run in rs)
    other = sum(int(run["other_codes"]) for impl in runs.values() for rs in impl.values() for run in rs)
    return "\n".join([
        "## Inbound KDMQ",
        "",
        "One lone node of each; the client keeps 1 or 32 requests outstanding for the measured seconds (after",
        "a warm-up): `KDMQ sip:htable@` carrying a Kamailio htable set (1,000 keys in turn, 32-byte values,",
        "answered 200) and `KDMQ sip:nochannel@` with no body (no such channel: answered 404). Server CPU is",
        "user + system time of every process of the node (Kamailio: all 11 of `children=2`) over the measured",
        "interval, per answered request. Latency is per request, send to answer, in microseconds. Before",
        "each run the client's address joins the node as a member (a node-list KDMQ; the client answers the",
        "node's pings), as KDMQ traffic comes from members and dmq answers strangers at most 50 times a second.",
        "",
        table(["request", "outstanding", "Kamailio req/s", "dmq req/s", "rate dmq / Kamailio (per rep, median)",
               "Kamailio p50 / p99 µs", "dmq p50 / p99 µs", "Kamailio CPU µs/req", "dmq CPU µs/req",
               "CPU dmq / Kamailio", "client CPU (K / dmq runs)"], rows, 2),
        "",
        f"Requests given up on (no answer within 1 s): {lost}; answers other than 200/404: {other}.",
        *pypy_inbound(runs),
        *floor_inbound(runs),
    ])


def pypy_inbound(runs: dict[str, Any]) -> list[str]:
    """The inbound figures of dmq on PyPy against Kamailio's of the same run (none without PyPy runs)."""
    if "pypy" not in runs:
        return []
    rows = []
    for key, label, window in inbound_keys(runs["pypy"]):
        k, p = runs["kamailio"][key], runs["pypy"][key]
        rows.append([
            label, window,
            num(median(field(p, "rate"))), ratios(field(p, "rate"), field(k, "rate")),
            f"{median(field(p, 'p50_us')):,.0f} / {median(field(p, 'p99_us')):,.0f}",
            ratios(field(p, "p50_us"), field(k, "p50_us")),
            num(median(field(p, "server_cpu_us_per_request"))),
            ratios(field(p, "server_cpu_us_per_request"), field(k, "server_cpu_us_per_request")),
        ])
    return pypy_table("The same package on PyPy (`make run-pypy`), in the same run, against the Kamailio figures above:",
                      ["request", "outstanding", "PyPy req/s", "rate PyPy / Kamailio", "PyPy p50 / p99 µs",
                       "p50 PyPy / Kamailio", "PyPy CPU µs/req", "CPU PyPy / Kamailio"], rows, 2)


def floor_inbound(runs: dict[str, Any]) -> list[str]:
    """
    The yardstick (``bench/floor.py``, a minimal Twisted responder on CPython) against Kamailio, and
    what dmq spends per message above it (per repetition; none without yardstick runs).
    """
    if "floor" not in runs:
        return []
    others = [impl for impl in ("dmq", "pypy") if impl in runs]
    rows = []
    for key, label, window in inbound_keys(runs["floor"]):
        k, f = runs["kamailio"][key], runs["floor"][key]
        floor_cpu = field(f, "server_cpu_us_per_request")
        rows.append([
            label, window,
            num(median(field(f, "rate"))), num(median(floor_cpu)),
            ratios(floor_cpu, field(k, "server_cpu_us_per_request")),
            *(num(median([d - y for d, y in zip(field(runs[impl][key], "server_cpu_us_per_request"), floor_cpu)]))
              for impl in others),
        ])
    return [
        "", "The yardstick, in the same run: `bench/floor.py`, a minimal Twisted responder on CPython. It copies",
        "the request's Via, From, To, Call-ID and CSeq into its answer and decodes an htable set into a dict,",
        "and checks nothing (no transaction layer, no syntax checks, no membership, no metrics). The last",
        "columns are what a dmq node spends per message above it (median of the per-repetition differences):",
        "the price of parsing and checking the whole request, absorbing retransmissions, dispatching to a",
        "peer, keeping its table as Kamailio does, and counting.", "",
        table(["request", "outstanding", "yardstick req/s", "yardstick CPU µs/req", "CPU yardstick / Kamailio",
               *(f"{NAMES[impl]} above it, µs/req" for impl in others)], rows, 2),
    ]


def pypy_table(intro: str, head: Row, rows: list[Row], right_from: int = 1) -> list[str]:
    """The lines of a PyPy table under its one-line introduction."""
    return ["", intro, "", table(head, rows, right_from)]


def fanout_section(r: dict[str, Any]) -> str:
    """Fan-out: replicated sets/s end to end, lag to the last node, CPU per set."""
    runs = r["runs"]
    rows = []
    sizes = sorted({int(k.split("/")[0]) for k in runs["dmq"]})
    for n in sizes:
        k, d = runs["kamailio"][f"{n}/load"], runs["dmq"][f"{n}/load"]
        kl, dl = runs["kamailio"][f"{n}/light"], runs["dmq"][f"{n}/light"]
        rows.append([
            str(n),
            num(median(field(k, "replicated_rate"))), num(median(field(d, "replicated_rate"))),
            ratios(field(d, "replicated_rate"), field(k, "replicated_rate")),
            f"{median(field(k, 'lag_p50_ms')):.1f} / {median(field(k, 'lag_p99_ms')):.1f}",
            f"{median(field(d, 'lag_p50_ms')):.1f} / {median(field(d, 'lag_p99_ms')):.1f}",
            f"{median(field(kl, 'lag_p50_ms')):.2f} / {median(field(kl, 'lag_p99_ms')):.2f}",
            f"{median(field(dl, 'lag_p50_ms')):.2f} / {median(field(dl, 'lag_p99_ms')):.2f}",
            f"{median(field(k, 'server_cpu_ms_per_set')):.3f}", f"{median(field(d, 'server_cpu_ms_per_set')):.3f}",
            f"{median(field(k, 'client_cpu_share')) * 100:.0f}% / {median(field(d, 'client_cpu_share')) * 100:.0f}%",
        ])
    incomplete = [f"{NAMES[impl]}, {key.replace('/', ' receivers, ')}, rep {i + 1}: "
                  f"{run['keys_everywhere']:,} of {run['sent']:,} (the watcher saw {run['sniffed_requests']:,} KDMQs,"
                  f" matched {run['sniffed_answers']:,} answers and could not match {run['unmatched_answers']:,})"
                  for impl, per in runs.items() for key, rs in per.items()
                  for i, run in enumerate(rs) if run["keys_everywhere"] < run["sent"]]
    peaks = r.get("kamailio_shm_peak_kb", {})
    drops = sum(int(run["sniff_drops"]) for per in runs.values() for rs in per.values() for run in rs)
    sets = runs["dmq"][f"{sizes[0]}/load"][0]["sent"]
    light = runs["dmq"][f"{sizes[0]}/light"][0]["sent"]
    return "\n".join([
        "## Fan-out: one set reaching 1, 2 and 4 other nodes",
        "",
        f"A cluster of a sender and N receivers (each node its own process, converged first). The C client",
        f"sends {sets:,} sets, 32 outstanding, as `MESSAGE sip:set@sender` (key in `X-Key`, value as body).",
        "Kamailio's script answers it with `$sht(t=>$hdr(X-Key)) = $rb` (replicated by htable's",
        "`dmqreplicate=1`); the dmq sender's request hook calls `HTablePeer.set` (the public API). Both",
        "answer the trigger at once. Kamailio sends one KDMQ per set and receiver. dmq does the same until a",
        "receiver (a dmq node) has 4 messages unanswered; the sets that queue for it meanwhile go together in",
        "the next message, `{\"batch\":[...]}`, up to 16 or one datagram (dmq's default, the same in every",
        "run). The same path for both: SIP trigger in, the table's own replication out; neither goes through",
        "JSON-RPC. The trigger is sent from the first receiver's IP address (another port): a member's",
        "address, which dmq does not rate-limit.",
        "",
        "The client watches the loopback interface (a packet socket, kernel timestamps, filtered to the",
        "receivers' addresses) for each replication KDMQ to a receiver and that receiver's 200 answer, which",
        "both send after applying the set (every set of a batch). A set has reached every node when the last",
        "receiver answered the message carrying it.",
        "Replicated sets/s = sets / (first set sent until the last receiver answered the last one). Lag = from",
        f"sending a set to the last receiver's answer, under the load above and with 1 outstanding ({light} sets,",
        "light load). CPU is every process of the cluster per set, over the same interval.",
        "",
        table(["receivers", "Kamailio sets/s", "dmq sets/s", "dmq / Kamailio (per rep, median)",
               "Kamailio lag p50 / p99 ms", "dmq lag p50 / p99 ms", "Kamailio light lag p50 / p99 ms",
               "dmq light lag p50 / p99 ms", "Kamailio CPU ms/set", "dmq CPU ms/set", "client CPU (K / dmq)"],
              rows),
        "",
        "Sets that reached every receiver, where some did not: " + ("; ".join(incomplete) or "none") + ".",
        f"Packets the watcher dropped: {drops}. Peak of the Kamailio sender's shared memory (`core.shmmem`"
        f" `max_used`, of {r['kamailio_shm_mb']} MB): "
        + ", ".join(f"{peaks[n] / 1024:,.0f} MB with {n} receivers" for n in sorted(peaks, key=int)) + ".",
        *pypy_fanout(runs, sizes),
        *fanout_memory(r),
    ])


def burst_growth(reading: dict[str, float], second: bool = False) -> float:
    """
    What a burst left behind, in %: memory once its transactions are over, above the baseline (the
    first burst) or above the reading after the first burst (``second``).
    """
    if second:
        return (reading["after2_kb"] / reading["after_kb"] - 1) * 100
    return (reading["after_kb"] / reading["baseline_kb"] - 1) * 100


def fanout_memory(r: dict[str, Any]) -> list[str]:
    """Each fan-out cluster's memory before and after two bursts (none where the run did not measure it)."""
    memory = r.get("memory")
    if not memory:
        return []
    keys = ("fresh_kb", "baseline_kb", "burst_kb", "after_kb", "after2_kb")
    rows = [[n, NAMES[impl], *(f"{reading[k] / 1024:,.1f}" for k in keys),
             f"{burst_growth(reading):+.1f}%", f"{burst_growth(reading, True):+.1f}%"]
            for n in sorted(memory, key=int) for impl, reading in memory[n].items()]
    return [
        "",
        "### Memory after a burst",
        "",
        "Each cluster's memory, PSS summed over all its processes (Kamailio's shared memory counted once),",
        "in MB: fresh (converged, before any load); baseline (after the warm-up and the reps above, once",
        f"their transactions were over); just after a burst of {r['burst']:,} more sets, 32 outstanding;",
        "once the burst's transactions were over (the time the slowest of the three clusters takes to",
        f"replicate a burst at its sets/s above, plus {r['answer_kept_s']:g} s, the time dmq keeps each answer "
        "for retransmissions, plus two 5 s readings of the idle collector, plus 4 s: "
        + ", ".join(f"{r['settle_s'][n]:.0f} s with {n}" for n in sorted(r["settle_s"], key=int)) + ");",
        "and the same after a second, identical burst. Each cluster's burst runs alone: the next cluster's",
        "starts once this one has had the time to replicate it at its sets/s above. The bursts cycle over",
        f"{r['burst_keys']:,} keys the warm-up set, so the tables hold the same keys throughout: what stays",
        "above the baseline is what a burst left behind. The dmq processes run the idle collector of",
        "`twistd dmq` (`dmq.heap.IdleCollector`): one full garbage collection once a process has been",
        "quiet after a burst for as long as its node keeps answers.",
        "",
        table(["receivers", "implementation", "fresh MB", "baseline MB", "just after the burst MB",
               "after MB", "after a second burst MB", "after / baseline", "after second / after first"], rows, 2),
    ]


def pypy_fanout(runs: dict[str, Any], sizes: list[int]) -> list[str]:
    """The fan-out figures of dmq on PyPy against Kamailio's of the same run (none without PyPy runs)."""
    if "pypy" not in runs:
        return []
    rows = []
    for n in sizes:
        k, p = runs["kamailio"][f"{n}/load"], runs["pypy"][f"{n}/load"]
        pl = runs["pypy"][f"{n}/light"]
        rows.append([
            str(n), num(median(field(p, "replicated_rate"))), ratios(field(p, "replicated_rate"), field(k, "replicated_rate")),
            f"{median(field(p, 'lag_p50_ms')):.1f} / {median(field(p, 'lag_p99_ms')):.1f}",
            f"{median(field(pl, 'lag_p50_ms')):.2f} / {median(field(pl, 'lag_p99_ms')):.2f}",
            f"{median(field(p, 'server_cpu_ms_per_set')):.3f}",
            ratios(field(p, "server_cpu_ms_per_set"), field(k, "server_cpu_ms_per_set")),
        ])
    return pypy_table("dmq on PyPy, in the same run, against the Kamailio figures above:",
                      ["receivers", "PyPy sets/s", "PyPy / Kamailio", "PyPy lag p50 / p99 ms",
                       "PyPy light lag p50 / p99 ms", "PyPy CPU ms/set", "CPU PyPy / Kamailio"], rows)


def convergence_section(r: dict[str, Any], large: Optional[dict[str, Any]]) -> str:
    """Convergence of 3, 5, 8 nodes (both) and of the large dmq clusters."""
    runs = r["runs"]
    rows = []
    for size in sorted(runs["dmq"], key=int):
        k, d = runs["kamailio"][size], runs["dmq"][size]
        rows.append([size, f"{median(k) * 1000:,.1f}", f"{median(d) * 1000:,.1f}",
                     ", ".join(f"{x * 1000:.1f}" for x in k), ", ".join(f"{x * 1000:.1f}" for x in d)])
    return "\n".join([
        "## Convergence",
        "",
        "N nodes (with table `t`, so the htable sync on join runs on both) started one after another, each",
        "seeded with the first; the next starts once the previous answers (Kamailio its RPC, dmq its socket).",
        "Timed from the moment the last node's UDP socket is bound (seen in `/proc/net/udp`, read every",
        "millisecond) until every node lists every other as active. Kamailio's lists are read with",
        "`dmq.list_nodes` over its JSON-RPC socket every 10 ms (the time taken is the start of the poll that",
        "found them all active); dmq nodes report each change of their active count as it happens",
        "(membership events).",
        "",
        table(["nodes", "Kamailio ms (median)", "dmq ms (median)", "Kamailio per rep", "dmq per rep"], rows),
    ])


def failure_section(r: dict[str, Any], timeout_ms: int, ping: int) -> str:
    """Failure detection."""
    k = [x["detect_s"] for x in r["runs"]["kamailio"]]
    d = [x["detect_s"] for x in r["runs"]["dmq"]]
    rows = [["Kamailio", f"{median(k):.2f}", ", ".join(f"{x:.2f}" for x in k)],
            ["dmq", f"{median(d):.2f}", ", ".join(f"{x:.2f}" for x in d)]]
    return "\n".join([
        "## Failure detection",
        "",
        f"A converged cluster of {r['size']} nodes; one node is SIGKILLed (its whole process group) after a",
        "random wait (the same for both implementations in a repetition), so it dies at a random phase of",
        f"the {ping} s ping interval. Timed until every other node lists it as not active, disabled or gone.",
        f"A ping times out after {timeout_ms / 1000:g} s on both (see the settings), so expect",
        f"{timeout_ms / 1000:g} to {timeout_ms / 1000 + ping:g} s. Kamailio is polled every 20 ms; dmq",
        "nodes report the change as it happens.",
        "",
        table(["", "seconds (median)", "per rep"], rows),
        "",
        f"dmq / Kamailio per rep: {ratios(d, k)}.",
    ])


def compared_rows(k: list[dict[str, Any]], d: list[dict[str, Any]],
                  measures: list[tuple[str, str, float]]) -> list[list[str]]:
    """One row per (label, key, scale): Kamailio's median, dmq's median, and the per-repetition ratios."""
    rows = []
    for label, key, scale in measures:
        kamailio, dmq = [x * scale for x in field(k, key)], [x * scale for x in field(d, key)]
        rows.append([label, num(median(kamailio)), num(median(dmq)), ratios(dmq, kamailio)])
    return rows


def memory_section(r: dict[str, Any], burst: int) -> str:
    """Idle memory and memory after a burst."""
    k, d = r["runs"]["kamailio"], r["runs"]["dmq"]
    measures = [("idle RSS", "idle_rss_kb", 1.0), ("idle PSS", "idle_pss_kb", 1.0),
                (f"RSS after {burst:,} sets", "rss_kb", 1.0), (f"PSS after {burst:,} sets", "pss_kb", 1.0)]
    rows = compared_rows(k, d, measures)
    return "\n".join([
        "## Memory",
        "",
        f"A lone node with table `t`, idle for 1 s, then {burst:,} htable sets of distinct keys (32-byte",
        "values, 32 outstanding), read 1 s later. Summed over every process of the node from",
        "`/proc/<pid>/smaps_rollup`: RSS counts shared pages once per process (Kamailio:",
        f"{int(median(field(k, 'processes')))} processes sharing its `-m 256` pool), PSS splits them, so PSS",
        "is the fair sum. Kilobytes. The client joins as a member first, as in the inbound runs.",
        "",
        table(["", "Kamailio KiB", "dmq KiB", "dmq / Kamailio (per rep, median)"], rows),
        *pypy_rows(r["runs"], measures, "KiB"),
    ])


def pypy_rows(runs: dict[str, Any], measures: list[tuple[str, str, float]], unit: str = "") -> list[str]:
    """``measures`` of dmq on PyPy against Kamailio's of the same run (none without PyPy runs)."""
    if "pypy" not in runs:
        return []
    suffix = f" {unit}" if unit else ""
    return pypy_table("dmq on PyPy, in the same run:",
                      ["", f"Kamailio{suffix}", f"PyPy{suffix}", "PyPy / Kamailio (per rep, median)"],
                      compared_rows(runs["kamailio"], runs["pypy"], measures))


def startup_section(r: dict[str, Any]) -> str:
    """Start-up time and a plain node's memory."""
    k, d = r["runs"]["kamailio"], r["runs"]["dmq"]
    measures = [("exec to SIP socket bound, ms", "listen_s", 1000.0), ("idle RSS, KiB", "rss_kb", 1.0),
                ("idle PSS, KiB", "pss_kb", 1.0)]
    rows = compared_rows(k, d, measures)
    return "\n".join([
        "## Start-up and a plain node",
        "",
        "A node as an operator starts it: `twistd -n dmq --server-address sip:HOST:PORT --control none` (no",
        "peer, no TLS: what a plain node does not use is not imported), and the bench's Kamailio node",
        f"({int(median(field(k, 'processes')))} processes, table `t`, `-m 256`). Time from starting the",
        "process to its UDP socket appearing in `/proc/net/udp`; memory of all its processes 1 s later.",
        "",
        table(["", "Kamailio", "dmq", "dmq / Kamailio (per rep, median)"], rows),
        *pypy_rows(r["runs"], measures),
    ])


def large_section(r: dict[str, Any]) -> str:
    """Large dmq clusters."""
    ping = r["ping_interval"]
    rows = []
    failed = []
    for size in sorted(r["runs"], key=int):
        failed += [f"{size} nodes: {x['error']}" for x in r["runs"][size] if "error" in x]
        runs = [x for x in r["runs"][size] if "error" not in x]
        if not runs:
            continue
        rows.append([
            size, str(runs[0]["processes"]), f"{median(field(runs, 'converge_s')) * 1000:,.0f}",
            f"{median(field(runs, 'cpu_ms_per_node_interval')):.1f}",
            f"{median(field(runs, 'cpu_share')) * 100:.0f}%",
            num(median(field(runs, "packets_per_node_interval"))),
            num(median(field(runs, "bytes_per_node_interval"))),
            f"{median(field(runs, 'retransmitted_share')) * 100:.1f}%",
            ", ".join(f"{x * 1000:,.0f}" for x in field(runs, "converge_s")),
            ", ".join(f"{int(x.get('status_changes', -1))} in {x.get('stable_intervals', 0):.1f}" for x in runs),
        ])
    good = [x for runs in r["runs"].values() for x in runs if "error" not in x]
    drops = sum(int(x["sniff_drops"]) for x in good)
    unstable = sum(1 for x in good if not x["still_converged"])
    return "\n".join([
        "## Large dmq clusters",
        "",
        "dmq only (Kamailio 5.6's node list does not fit the larger sizes in one datagram). Many nodes per",
        "process: the nodes are dealt round-robin over max(2, N/16) `bench/node.py` processes (one reactor",
        "each, a `DMQService` per node and no htable, every node on its own loopback address); the first",
        "process holds the seed and starts first, the others together once it is bound. Convergence is timed",
        "from the last process's sockets bound until every node lists all others as active. Then, after",
        f"one more ping interval, steady state is measured over whole ping intervals: CPU of all processes,",
        "and the datagrams and UDP payload bytes the nodes send (the client's packet socket, counting each",
        "datagram once), per node per ping interval, and the share of requests sent again (same branch).",
        "",
        f"Settings: ping interval {ping:g} s and dmq's default T1 of {r['t1_ms']} ms (a request times out after",
        f"{64 * r['t1_ms'] / 1000:g} s). Every ping carries the whole node list, as Kamailio's do; a dmq node",
        "answers another dmq node's ping with an empty 200 (it gets that node's list in its own pings), so a",
        "node sends 2 × (N − 1) datagrams per interval when nothing is retransmitted, half of them a list that",
        "grows with N. Stability: the number of times any node's count of active or known others changed",
        "after the cluster converged, over the intervals from convergence to the end of the measurement",
        "(0 means no status changed anywhere).",
        "",
        table(["nodes", "processes", "convergence ms (median)", "CPU ms / node / interval", "CPU (of one core)",
               "datagrams / node / interval", "bytes / node / interval", "requests retransmitted",
               "convergence per rep (ms)", "status changes after convergence, per rep (in intervals)"], rows),
        "",
        f"Datagrams the watcher dropped: {drops}; runs where a node lost a member during the measurement: {unstable}."
        + (" Failed runs: " + "; ".join(failed) + "." if failed else ""),
    ])


def codec_section(r: dict[str, Any]) -> str:
    """The codec table (from ``bench/codec.py``)."""
    rows = [["dmq parse + build response", num(r["dmq_ops_per_s"])],
            ["dmq parse only", num(r["parse_only_ops_per_s"])]]
    if "twisted_parse_only_ops_per_s" in r:
        rows.append(["Twisted `MessagesParser`, parse only", num(r["twisted_parse_only_ops_per_s"])])
    rows.append(["minimal hand parser + response", num(r["minimal_ops_per_s"])])
    return "\n".join([
        "## SIP codec (`bench/codec.py`)",
        "",
        "Parse a captured Kamailio KDMQ node-list request and build the 200 response bytes, one core, best of",
        "many short rounds of process time; yardsticks: a minimal hand parser that checks almost nothing and",
        "Twisted's old `twisted.protocols.sip` parser.",
        "",
        table(["measure", "operations/s"], rows),
    ])


# -- the targets ---------------------------------------------------------------------------


BURST_TOLERANCE = 5.0
"""How far above its baseline (in %) a cluster's memory may stay after a burst and still count as back."""


def per_rep_median(mine: Sequence[float], kamailio: Sequence[float]) -> float:
    """The median of the per-repetition ratios (NaN when none)."""
    return median([m / k for m, k in zip(mine, kamailio) if k])


def targets_section(results: dict[str, Any]) -> str:
    """Each performance target against this run's figures, for dmq on CPython and (where it ran) PyPy."""
    impls = ["dmq"] + (["pypy"] if "pypy" in results.get("inbound", {}).get("runs", {}) else [])
    rows: list[Row] = []

    def ratio_row(label: str, goal: str, limit: float, at_most: bool,
                  figure: Callable[[str], float], fmt: str = "{:.2f}×") -> None:
        cells = [label, goal]
        for impl in impls:
            try:
                value = figure(impl)
            except (KeyError, IndexError):
                cells.append("not measured")
                continue
            if value != value:  # NaN: not run for this implementation
                cells.append("–")
                continue
            met = value <= limit if at_most else value >= limit
            cells.append(fmt.format(value) + (" ✓" if met else " ✗"))
        rows.append(cells)

    if "inbound" in results:
        runs = results["inbound"]["runs"]

        def inbound(key: str, measure: str) -> Callable[[str], float]:
            return lambda impl: per_rep_median(field(runs[impl][key], measure), field(runs["kamailio"][key], measure))

        for window in ("1", "32"):
            ratio_row(f"inbound htable set, CPU per message, {window} outstanding", "≤ 0.8× Kamailio", 0.8, True,
                      inbound(f"htable/{window}", "server_cpu_us_per_request"))
        ratio_row("inbound htable set, rate at 32 outstanding", "≥ 0.7× Kamailio", 0.7, False,
                  inbound("htable/32", "rate"))
        ratio_row("inbound htable set, p50 latency at 1 outstanding", "≤ 1.0× Kamailio", 1.0, True,
                  inbound("htable/1", "p50_us"))
        for window in ("1", "32"):
            ratio_row(f"unknown channel (404), CPU per message, {window} outstanding", "≤ 0.8× Kamailio", 0.8, True,
                      inbound(f"channel/{window}", "server_cpu_us_per_request"))
    if "fanout" in results:
        runs = results["fanout"]["runs"]
        sizes = sorted({int(k.split("/")[0]) for k in runs["dmq"]})

        def fan(key: str, measure: str) -> Callable[[str], float]:
            return lambda impl: per_rep_median(field(runs[impl][key], measure), field(runs["kamailio"][key], measure))

        for n in (x for x in sizes if x >= 2):
            ratio_row(f"fan-out to {n}: replicated sets/s", "≥ 1.0× Kamailio", 1.0, False, fan(f"{n}/load", "replicated_rate"))
            ratio_row(f"fan-out to {n}: CPU per replicated set", "≤ 1.0× Kamailio", 1.0, True,
                      fan(f"{n}/load", "server_cpu_ms_per_set"))
            ratio_row(f"fan-out to {n}: lag to the last node at idle (p50)", "≤ 5 ms", 5.0, True,
                      lambda impl, n=n: median(field(runs[impl][f"{n}/light"], "lag_p50_ms")), "{:.2f} ms")
            memory = results["fanout"].get("memory", {})
            if str(n) in memory:
                ratio_row(f"fan-out to {n}: memory after a burst, once its transactions are over",
                          f"within {BURST_TOLERANCE:.0f}% of the baseline", BURST_TOLERANCE, True,
                          lambda impl, n=n: burst_growth(memory[str(n)][impl]), "{:+.1f}%")
                ratio_row(f"fan-out to {n}: memory after a second burst",
                          f"within {BURST_TOLERANCE:.0f}% of that after the first", BURST_TOLERANCE, True,
                          lambda impl, n=n: burst_growth(memory[str(n)][impl], True), "{:+.1f}%")
    if "startup" in results:
        runs = results["startup"]["runs"]
        ratio_row("idle RSS of a plain node", "≤ 45 MB", 45.0, True,
                  lambda impl: median(field(runs[impl], "rss_kb")) / 1024, "{:.0f} MB")
    if "large" in results:
        large = {size: [x for x in rs if "error" not in x] for size, rs in results["large"]["runs"].items()}
        for size in ("64", "128"):
            if large.get(size):
                ratio_row(f"{size} dmq nodes converge", "within 1 s" if size == "64" else "reported", 1.0 if size == "64" else 1e9,
                          True, lambda impl, size=size: median(field(large[size], "converge_s")) if impl == "dmq" else float("nan"),
                          "{:.2f} s")
        if large.get("64"):
            ratio_row("64 dmq nodes: status changes after converging", "0", 0, True,
                      lambda impl: max(int(x.get("status_changes", -1)) for x in large["64"]) if impl == "dmq"
                      else float("nan"), "{:.0f}")
    if not rows:
        return ""
    head = ["target", "goal", "dmq (CPython)"] + (["dmq on PyPy"] if "pypy" in impls else [])
    return "\n".join([
        "## Against the targets",
        "",
        "Each performance target of the project against this run (ratios: median of the per-repetition",
        "ratios to Kamailio; ✓ met, ✗ not met). The large clusters ran on CPython only.",
        "",
        table(head, rows, 2),
    ])


# -- plots -----------------------------------------------------------------------------------


def plots(results: dict[str, Any], folder: Path) -> list[tuple[str, Path]]:
    """Draw the PNG plots of the results present; (caption, path) of each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    drawn: list[tuple[str, Path]] = []
    colours = {"kamailio": "tab:blue", "dmq": "tab:orange", "pypy": "tab:green", "floor": "tab:gray"}

    def save(fig: Any, name: str, caption: str) -> None:
        path = folder / name
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        drawn.append((caption, path))

    if "inbound" in results:
        runs = results["inbound"]["runs"]
        fig, ax = plt.subplots(figsize=(6.4, 4))
        for impl in runs:
            for kind, style in (("htable", "-o"), ("channel", "--s")):
                keys = sorted((k for k in runs[impl] if k.startswith(kind + "/")), key=lambda k: int(k.split("/")[1]))
                xs = [int(k.split("/")[1]) for k in keys]
                ys = [median(field(runs[impl][k], "rate")) for k in keys]
                label = f"{NAMES[impl]}, {'htable set' if kind == 'htable' else 'unknown channel'}"
                ax.plot(xs, ys, style, color=colours[impl], label=label)
        ax.set_xscale("log", base=2)
        ax.set_xticks([1, 32], ["1", "32"])
        ax.set_xlabel("outstanding requests")
        ax.set_ylabel("requests/s (median)")
        ax.set_title("Inbound KDMQ: rate against outstanding requests")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize="small")
        save(fig, "inbound-rate.png", "Inbound rate against outstanding requests")

    if "fanout" in results:
        runs = results["fanout"]["runs"]
        fig, (left, right) = plt.subplots(1, 2, figsize=(9, 4))
        for impl in runs:
            sizes = sorted({int(k.split("/")[0]) for k in runs[impl]})
            left.plot(sizes, [median(field(runs[impl][f"{n}/load"], "replicated_rate")) for n in sizes], "-o",
                      color=colours[impl], label=NAMES[impl])
            right.plot(sizes, [median(field(runs[impl][f"{n}/load"], "lag_p99_ms")) for n in sizes], "-o",
                       color=colours[impl], label=f"{NAMES[impl]}, 32 outstanding")
            right.plot(sizes, [median(field(runs[impl][f"{n}/light"], "lag_p99_ms")) for n in sizes], "--s",
                       color=colours[impl], label=f"{NAMES[impl]}, 1 outstanding")
        for axis in (left, right):
            axis.set_xticks(sizes)
        left.set_xlabel("receivers")
        left.set_ylabel("replicated sets/s (median)")
        left.set_ylim(bottom=0)
        left.set_title("Fan-out rate")
        left.legend()
        right.set_xlabel("receivers")
        right.set_ylabel("lag to the last node, p99 (ms)")
        right.set_yscale("log")
        right.set_title("Fan-out lag")
        right.legend(fontsize="small")
        save(fig, "fanout.png", "Fan-out against receivers")

    if "convergence" in results or "large" in results:
        fig, ax = plt.subplots(figsize=(6.4, 4))
        ticks: list[int] = []
        if "convergence" in results:
            runs = results["convergence"]["runs"]
            for impl in ("kamailio", "dmq"):
                sizes = sorted(runs[impl], key=int)
                ticks += [int(s) for s in sizes]
                ax.plot([int(s) for s in sizes], [median(runs[impl][s]) * 1000 for s in sizes], "-o",
                        color=colours[impl], label=f"{NAMES[impl]}, one process per node")
        if "large" in results:
            runs = {size: [x for x in rs if "error" not in x] for size, rs in results["large"]["runs"].items()}
            sizes = sorted((s for s in runs if runs[s]), key=int)
            ticks += [int(s) for s in sizes]
            ax.plot([int(s) for s in sizes], [median(field(runs[s], "converge_s")) * 1000 for s in sizes], "--s",
                    color=colours["dmq"], label="dmq, many nodes per process")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ticks = sorted(set(ticks))
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.set_xlabel("cluster size (nodes)")
        ax.set_ylabel("convergence (ms, median)")
        ax.set_title("Convergence against cluster size")
        ax.legend()
        save(fig, "convergence.png", "Convergence against cluster size")
    return drawn


SectionRenderer = Callable[[dict[str, Any]], str]
