"""
Run the benchmarks, dmq against Kamailio in the same run, and write ``docs/benchmarks.md``.

The C load client (``bench/kdmqload.c``) is compiled into ``build/bench/``; the scenarios are in
``bench/scenarios.py``, the nodes and readings in ``bench/cluster.py``, tables and plots in
``bench/report.py``. The plots go to ``docs/bench/*.png``, the raw figures to
``docs/bench/results.json``.

Usage: ``python bench/run.py [--quick] [--only NAME ...] [--no-write]``
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import cluster  # noqa: E402
import report  # noqa: E402
import scenarios  # noqa: E402

ROOT = cluster.ROOT
OUTPUT = ROOT / "docs" / "benchmarks.md"
PLOTS = ROOT / "docs" / "bench"
NAMES = [*scenarios.SCENARIOS, "codec"]


def codec(quick: bool) -> dict[str, Any]:
    """Run ``bench/codec.py --json`` and return its figures."""
    began = time.monotonic()
    command = [sys.executable, str(cluster.HERE / "codec.py"), "--json", "--rounds", "5" if quick else "20"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=True)
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "seconds": round(time.monotonic() - began, 1)}


def cpu_model() -> str:
    """The CPU's model name, from ``/proc/cpuinfo``."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def versions() -> str:
    """Python, Twisted, dmq and Kamailio versions."""
    import twisted

    import dmq

    pypy = ""
    if cluster.PYPY_PYTHON is not None:
        probe = ("import sys, platform, twisted; print(platform.python_version(), "
                 "'.'.join(map(str, sys.pypy_version_info[:3])), twisted.__version__)")
        out = subprocess.run([str(cluster.PYPY_PYTHON), "-c", probe], capture_output=True, text=True).stdout.split()
        if len(out) == 3:
            pypy = f"PyPy {out[1]} (Python {out[0]}, Twisted {out[2]}), "
    return (f"Python {platform.python_version()}, Twisted {twisted.__version__}, {pypy}dmq {dmq.__version__}, "
            f"Kamailio {cluster.kamailio_version()} (`{cluster.default_build().binary}`), "
            f"gcc {subprocess.run(['gcc', '-dumpfullversion'], capture_output=True, text=True).stdout.strip()}")


def revision() -> str:
    """The checkout's commit, marked when the tree has changes."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=ROOT).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + (" with uncommitted changes" if git("status", "--porcelain", "--untracked-files=no") else "")


def shown(args: list[Any]) -> str:
    """A client command line as the report shows it."""
    return " ".join(["build/bench/kdmqload", *map(str, args)])


def header(plan: scenarios.Plan, quick: bool, load: tuple[str, str], seconds: float, niceness: int,
           tree: str) -> str:
    """Machine, versions, settings and commands."""
    return "\n".join([
        "# Benchmarks",
        "",
        "Written by `make bench` (`bench/run.py`), which overwrites this page. dmq and Kamailio run with the",
        "same settings on the same machine in the same run, driven by the same C load client, alternating",
        "repetition by repetition (Kamailio first in even repetitions, dmq first in odd ones). Tables show",
        "medians; ratios are dmq / Kamailio for each repetition, then their median in bold. Where PyPy is",
        "installed (`make .venv-pypy/.installed`), the same dmq code also runs on PyPy in the inbound, fan-out,",
        "memory and start-up scenarios, in the same alternation, with its own tables; every node of those",
        f"scenarios first gets untimed load ({plan.jit_warmup:g} s inbound, {plan.jit_warmup_sets:,} sets fan-out),",
        "so that PyPy's JIT has compiled the request path, as in a node that has been in service a while.",
        "",
        f"- date: {datetime.date.today().isoformat()}{' (`--quick`)' if quick else ''}; "
        f"{plan.reps} repetitions; the run took {seconds / 60:.1f} min",
        f"- machine: {cpu_model()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}",
        f"- {versions()}; this tree at {tree}",
        f"- load average (1, 5, 15 min; running/total tasks) before: `{load[0]}`, after: `{load[1]}`;"
        f" niceness {niceness}. The machine is shared: other work ran beside the bench, so absolute figures",
        "  are noisy; the per-repetition ratios compare runs made seconds apart.",
        "",
        "## How it runs",
        "",
        "```sh",
        "make bench                        # = nice -n -5 .venv/bin/python bench/run.py (installs the bench extra)",
        ".venv/bin/python bench/run.py --quick --only inbound --no-write   # a short try, printed only",
        f"gcc {' '.join(cluster.CLIENT_FLAGS)} -o build/bench/kdmqload bench/kdmqload.c   # done by run.py",
        "# one node's own work in process, no system calls timed (any interpreter, e.g. .venv-pypy/bin/python):",
        ".venv/bin/python bench/requestpath.py --kind htable   # CPU per inbound KDMQ",
        ".venv/bin/python bench/sendpath.py                    # CPU per replicated set, 1, 2 and 4 receivers",
        "```",
        "",
        "Every node listens on a loopback address of its own (`tests/helpers.py` `free_address`, 127.x.y.z).",
        "Kamailio nodes are the interop harness's (`tests/interop/kamailio.py` `KamailioNode`:",
        f"`kamailio -f node.cfg -DD -E -Y run -m {cluster.KAMAILIO_SHM_MB}`, config in a temp folder, stopped by",
        "pid) plus one route for the fan-out trigger; dmq nodes are `bench/node.py` processes",
        "(`DMQService` + `HTablePeer`, one reactor). The inbound scenario also measures a yardstick,",
        "`bench/floor.py`: a minimal Twisted responder that answers without checking anything. The same",
        "settings on both implementations:",
        "",
        report.table(["setting", "Kamailio 5.6", "dmq"], [
            ["ping interval", f"`dmq` `ping_interval={cluster.PING_INTERVAL}`",
             f"`ping_interval={cluster.PING_INTERVAL}`"],
            ["retransmission T1 / T2", f"`tm` `retr_timer1={cluster.T1_MS}`, `retr_timer2={cluster.T2_MS}`",
             f"`t1={cluster.T1_MS / 1000:g}`, `t2={cluster.T2_MS / 1000:g}`"],
            ["transaction timeout", f"`tm` `fr_timer={cluster.TIMEOUT_MS}`",
             f"64 × T1 = {cluster.TIMEOUT_MS / 1000:g} s"],
            ["table", f"`htable` `{cluster.KAMAILIO_TABLE}`, `enable_dmq=1`, `dmq_init_sync=1`",
             "`HTablePeer(tables=[\"t\"])` (sync on join)"],
            ["processes", f"`children={cluster.KAMAILIO_CHILDREN}` (UDP workers), 2 DMQ workers; 11 in all",
             "one process, one thread"],
            ["logging", "`debug=1` to a file", "no log observer"],
        ], right_from=3),
        "",
        "The load client `build/bench/kdmqload` (C, one thread) keeps a window of requests outstanding over",
        "UDP, matches answers by Call-ID, times each request, and reads the servers' CPU from",
        "`/proc/<pid>/stat` of every process at the start and end of the measured interval; its own CPU is",
        "reported beside (as a share of one core). Examples of the commands it ran (addresses and pids",
        "differ every run):",
        "",
    ])


def commands_block(results: dict[str, Any]) -> str:
    """The client commands of the first repetition, one per scenario and implementation."""
    lines = []
    for name in ("inbound", "fanout"):
        seen = set()
        for impl, args in results.get(name, {}).get("commands", []):
            key = (impl, args[args.index("--kind") + 1])
            if key not in seen:
                seen.add(key)
                lines.append(f"# {name}, {impl}\n{shown(args)}")
    for name in ("memory", "large"):
        args = results.get(name, {}).get("command")
        if args:
            lines.append(f"# {name}\n{shown(args)}")
    return "```sh\n" + "\n".join(lines) + "\n```" if lines else ""


def render(results: dict[str, Any], plan: scenarios.Plan, quick: bool, load: tuple[str, str], seconds: float,
           niceness: int, drawn: list[tuple[str, Path]], tree: str) -> str:
    """The whole page."""
    parts = [header(plan, quick, load, seconds, niceness, tree), commands_block(results)]
    for name, result in results.items():
        if "error" in result:
            parts.append(f"## {name}\n\nThis scenario failed in this run: {result['error']}")
    results = {name: result for name, result in results.items() if "error" not in result}
    parts.append(report.targets_section(results))
    if "inbound" in results:
        parts.append(report.inbound_section(results["inbound"]))
    if "fanout" in results:
        parts.append(report.fanout_section(results["fanout"]))
    if "convergence" in results:
        parts.append(report.convergence_section(results["convergence"], results.get("large")))
    if "failure" in results:
        parts.append(report.failure_section(results["failure"], cluster.TIMEOUT_MS, cluster.PING_INTERVAL))
    if "memory" in results:
        parts.append(report.memory_section(results["memory"], plan.burst))
    if "startup" in results:
        parts.append(report.startup_section(results["startup"]))
    if "large" in results:
        parts.append(report.large_section(results["large"]))
    if "codec" in results:
        parts.append(report.codec_section(results["codec"]))
    if drawn:
        parts.append("## Plots\n\n" + "\n\n".join(f"![{caption}]({path.relative_to(OUTPUT.parent)})"
                                                  for caption, path in drawn))
    timings = ", ".join(f"{name} {r['seconds']:.0f} s" for name, r in results.items() if "seconds" in r)
    parts.append(f"Time per scenario: {timings}. Raw figures: `docs/bench/results.json`.")
    return "\n\n".join(p for p in parts if p) + "\n"


def main() -> None:
    """Run the scenarios and write (or print) the report."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").strip().splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer and shorter repetitions")
    parser.add_argument("--only", nargs="+", choices=NAMES, help="run only these scenarios")
    parser.add_argument("--no-write", action="store_true", help="print the report instead of writing docs/")
    args = parser.parse_args()
    plan = scenarios.Plan.quick() if args.quick else scenarios.Plan()
    names = args.only or NAMES
    cluster.build_client()
    began = time.monotonic()
    load_before = cluster.machine_load()
    tree = revision()  # before the run writes its own files

    def progress(text: str) -> None:
        print(f"[{time.monotonic() - began:6.0f} s] {text}", file=sys.stderr, flush=True)

    results: dict[str, Any] = scenarios.run([n for n in names if n != "codec"], plan, progress)
    if "codec" in names:
        results["codec"] = codec(args.quick)
    seconds = time.monotonic() - began
    load = (load_before, cluster.machine_load())
    if args.no_write:
        print(render(results, plan, args.quick, load, seconds, os.nice(0), [], tree))
        return
    drawn = report.plots(results, PLOTS)
    with open(PLOTS / "results.json", "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1)
    OUTPUT.write_text(render(results, plan, args.quick, load, seconds, os.nice(0), drawn, tree), encoding="utf-8")
    progress(f"wrote {OUTPUT.relative_to(ROOT)} and {len(drawn)} plots")


if __name__ == "__main__":
    main()
