"""
Run every benchmark and write the figures to ``docs/benchmarks.md``.

Each benchmark is a script in this folder that prints one JSON object with
``--json``; Kamailio figures are measured in the same run, so the ratios hold
on whatever machine this runs on.

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
from typing import Any, Callable

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OUTPUT = os.path.join(ROOT, "docs", "benchmarks.md")


def run_script(name: str, *args: str) -> dict[str, Any]:
    """Run ``bench/<name>.py --json`` and return its JSON object."""
    command = [sys.executable, os.path.join(HERE, f"{name}.py"), "--json", *args]
    out = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"{name} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def kamailio_version() -> str:
    """``kamailio -v`` first line, or a note that it is missing."""
    try:
        out = subprocess.run(["kamailio", "-v"], capture_output=True, text=True)
    except OSError:
        return "not installed"
    return out.stdout.splitlines()[0] if out.stdout else "unknown"


def fmt(value: float, digits: int = 0) -> str:
    """A number with thousands separators."""
    return f"{value:,.{digits}f}"


def codec_section(r: dict[str, Any]) -> str:
    """The codec table."""
    lines = [
        "## SIP codec (`bench/codec.py`)",
        "",
        "Parse a captured Kamailio KDMQ node-list request and build the 200 response bytes, on one core,",
        "best of many short rounds of process time. Yardsticks measured in the same run: a minimal hand",
        "parser that checks almost nothing (plus a hand-built response), and Twisted's old",
        "`twisted.protocols.sip` parser (parse only).",
        "",
        "| measure | operations/s |",
        "|---|---:|",
        f"| dmq parse + build response | {fmt(r['dmq_ops_per_s'])} |",
        f"| dmq parse only | {fmt(r['parse_only_ops_per_s'])} |",
    ]
    if "twisted_parse_only_ops_per_s" in r:
        lines.append(f"| Twisted `MessagesParser`, parse only | {fmt(r['twisted_parse_only_ops_per_s'])} |")
    lines.append(f"| minimal hand parser + response | {fmt(r['minimal_ops_per_s'])} |")
    lines += [
        "",
        f"dmq parse + response runs at {r['ratio_to_minimal']:.2f}x the minimal parser while checking every rule",
        "of the codec (start line, version, Request-URI, CSeq, Max-Forwards, Content-Length, Call-ID,",
        "duplicate and mandatory headers); Via, From and To are parsed when first used.",
    ]
    return "\n".join(lines)


def transport_section(r: dict[str, Any]) -> str:
    """The transport table."""
    lines = [
        "## Transport and transactions over UDP loopback (`bench/transport.py`)",
        "",
        "1. dmq's client transaction layer (one process) sending KDMQ node-list queries to a dmq node",
        "   (another process), 64 requests in flight: every request goes through both transaction layers.",
        "2. Server capacity: one lean raw-socket client keeps 64 KDMQ node-list queries (empty body,",
        "   answered 200 with the node list) in flight to one server: a dmq node, then a Kamailio node",
        "   with one UDP worker. Memory is the proportional set size of the server's processes before",
        "   and after the run (Kamailio: its processes' share of the shared memory pool included). After",
        "   the run dmq still holds the answers of the last 20,000 requests for retransmissions (Timer J);",
        "   Kamailio's DMQ answers statelessly. Most of dmq's idle figure is CPython and Twisted: importing",
        "   the reactor alone takes a process from about 9 MB to about 44 MB resident here.",
        "",
        "| measure | dmq | Kamailio 5.6 | dmq / Kamailio |",
        "|---|---:|---:|---:|",
        f"| client layer -> server layer, requests/s | {fmt(r['dmq_layers']['requests_per_s'])} | | |",
    ]
    if "kamailio_server" in r:
        lines.append(
            f"| server capacity, requests/s | {fmt(r['dmq_server']['requests_per_s'])} | "
            f"{fmt(r['kamailio_server']['requests_per_s'])} | {r['server_ratio_dmq_to_kamailio']:.2f} |"
        )
        lines.append(
            f"| server memory (PSS) idle, KiB | {fmt(r['dmq_server']['idle_pss_kb'])} | "
            f"{fmt(r['kamailio_server']['idle_pss_kb'])} | "
            f"{r['dmq_server']['idle_pss_kb'] / r['kamailio_server']['idle_pss_kb']:.2f} |"
        )
        lines.append(
            f"| server memory (PSS) after the run, KiB | {fmt(r['dmq_server']['pss_kb'])} | "
            f"{fmt(r['kamailio_server']['pss_kb'])} | {r['memory_ratio_dmq_to_kamailio']:.2f} |"
        )
    else:
        lines.append(f"| server capacity, requests/s | {fmt(r['dmq_server']['requests_per_s'])} | (no Kamailio) | |")
    return "\n".join(lines)


def htable_section(r: dict[str, Any]) -> str:
    """The htable table: Python nodes and Kamailio nodes under the same load."""
    lines = [
        "## Replicated htable (`bench/htable.py`)",
        "",
        f"One node sets {r['keys']:,} keys in a replicated table; the others receive them. Python: a",
        "dmq node with `HTablePeer` sending to dmq nodes (each in its own process). Kamailio: the same",
        "number of Kamailio 5.6 nodes with a `dmqreplicate=1` table, loaded through `htable.sets` over",
        "JSON-RPC. Best of the rounds; method in `docs/htable.md`.",
        "",
        "| receivers | implementation | replicated sets/s | all keys everywhere (s) | last key after the last set (s) | CPU ms per 1,000 sets |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    ratios = []
    for n in sorted(r.get("python", {}), key=int):
        for impl in ("python", "kamailio"):
            f = r.get(impl, {}).get(n)
            if f:
                lines.append(
                    f"| {n} | {'dmq' if impl == 'python' else 'Kamailio 5.6'} | {fmt(f['replicated_rate'])} | "
                    f"{f['all_keys_everywhere_s']} | {f['last_key_s']} | {fmt(f['cpu_ms_per_1000_sets'])} |"
                )
        k = r.get("kamailio", {}).get(n)
        if k:
            ratios.append(f"{n} receivers: {r['python'][n]['replicated_rate'] / k['replicated_rate']:.2f}")
    if ratios:
        lines += ["", "Replicated sets/s, dmq / Kamailio: " + "; ".join(ratios) + "."]
    return "\n".join(lines)


BENCHES: dict[str, tuple[Callable[[bool], list[str]], Callable[[dict[str, Any]], str]]] = {
    "codec": (lambda quick: ["--seconds", "0.2" if quick else "0.5"], codec_section),
    "transport": (lambda quick: ["--seconds", "2" if quick else "5"], transport_section),
    "htable": (lambda quick: ["--quick"] if quick else [], htable_section),
}


def main() -> None:
    """Run the benchmarks and write the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--quick", action="store_true", help="shorter runs")
    parser.add_argument("--only", nargs="*", choices=sorted(BENCHES), help="run only these")
    parser.add_argument("--no-write", action="store_true", help="print instead of writing docs/benchmarks.md")
    args = parser.parse_args()
    names = args.only or list(BENCHES)
    sections = []
    for name in names:
        if not os.path.exists(os.path.join(HERE, f"{name}.py")):
            continue
        arguments, render = BENCHES[name]
        print(f"running {name} ...", flush=True)
        result = run_script(name, *arguments(args.quick))
        sections.append(render(result))
        print(render(result), flush=True)
    header = "\n".join(
        [
            "# Benchmarks",
            "",
            "Written by `make bench` (`bench/run.py`); every ratio compares figures measured in the same run",
            "on the same machine. The machine is shared and noisy: read the figures as orders of magnitude",
            "and the ratios as the comparison.",
            "",
            f"- date: {datetime.date.today().isoformat()}",
            f"- machine: {platform.machine()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}",
            f"- Python {platform.python_version()}; {kamailio_version()}",
        ]
    )
    report = header + "\n\n" + "\n\n".join(sections) + "\n"
    if args.no_write:
        print(report)
    else:
        with open(OUTPUT, "w", encoding="utf-8") as f:
            f.write(report)
        print(f"wrote {OUTPUT}")


if __name__ == "__main__":
    main()
