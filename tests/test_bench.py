"""The benchmark's tools work: the C load client compiles and counts answers, and ``bench/run.py`` runs.

These check the bench's machinery, never its figures (benchmarks are not assertions).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
from twisted.internet.task import Clock

from dmq.heap import CHECK_INTERVAL
from dmq.sip.transaction import TransactionLayer
from dmq.testing import FakeSIPTransport
from tests.helpers import free_address

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
sys.path.insert(0, str(BENCH))

from cluster import (  # noqa: E402
    ANSWER_KEPT_MS,
    CLIENT_FLAGS,
    CLIENT_SOURCE,
    T1_MS,
    DmqProcess,
    FloorProcess,
    join_as_member,
)
import scenarios  # noqa: E402
from scenarios import Plan, burst_memory, settle_seconds  # noqa: E402


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The load client, compiled with the bench's flags and warnings as errors."""
    binary = tmp_path_factory.mktemp("bench") / "kdmqload"
    subprocess.run(["gcc", *CLIENT_FLAGS, "-Werror", "-o", str(binary), str(CLIENT_SOURCE)], check=True)
    return binary


@pytest.fixture
def dmq_node() -> Iterator[DmqProcess]:
    """A lone dmq node with table ``t`` in a ``bench/node.py`` process."""
    node = DmqProcess([free_address()], htable=True)
    node.wait_listening()
    yield node
    node.stop()


def run(client: Path, *args: object) -> dict[str, float]:
    """Run the client and return its JSON line."""
    done = subprocess.run([str(client), *map(str, args)], capture_output=True, text=True, timeout=60, check=True)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def sets_and_unknowns(client: Path, server: DmqProcess) -> tuple[dict[str, float], dict[str, float]]:
    """From a member's address: 300 htable sets (the server's CPU read), then 200 requests on an unknown channel."""
    host, port = server.addresses[0]
    own_host = free_address()[0]
    own = f"{own_host}:{join_as_member(own_host, (host, port))}"
    sets = run(client, "--target", f"{host}:{port}", "--bind", own, "--kind", "htable", "--window", 8,
               "--count", 300, "--pids", ",".join(map(str, server.pids())))
    unknown = run(client, "--target", f"{host}:{port}", "--bind", own, "--kind", "channel", "--window", 8,
                  "--count", 200)
    return sets, unknown


def test_client_counts_htable_sets_and_unknown_channels(client: Path, dmq_node: DmqProcess) -> None:
    """From a member's address htable sets are answered 200 and unknown-channel requests 404, as the client counts."""
    sets, unknown = sets_and_unknowns(client, dmq_node)
    assert (sets["answered"], sets["code_200"], sets["lost"]) == (300, 300, 0)
    assert sets["server_cpu_s"] > 0
    assert (unknown["answered"], unknown["code_404"], unknown["code_200"]) == (200, 200, 0)


def test_the_yardstick_answers_the_client_as_a_node_does(client: Path) -> None:
    """``bench/floor.py`` takes the client's join, answers its htable sets 200 and an unknown channel 404."""
    floor = FloorProcess(free_address())
    try:
        floor.wait_listening()
        sets, unknown = sets_and_unknowns(client, floor)
    finally:
        floor.stop()
    assert (sets["answered"], sets["code_200"], sets["lost"]) == (300, 300, 0)
    assert (unknown["answered"], unknown["code_404"], unknown["code_200"]) == (200, 200, 0)
    assert floor.proc.returncode == 0


def test_the_yardstick_copies_what_an_answer_needs_and_keeps_the_set() -> None:
    """The answer carries the request's Via, From, To, Call-ID and CSeq (compact names too), nothing else of it."""
    from floor import Floor

    responder = Floor()
    body = b'{"action":2,"htname":"t","cname":"k7","type":2,"strval":"v","mode":0}'
    request = (b"KDMQ sip:htable@127.0.0.1:5060 SIP/2.0\r\nv: SIP/2.0/UDP 127.0.0.2:5060;branch=z9hG4bK1\r\n"
               b"f: <sip:a@127.0.0.2>;tag=1\r\nt: <sip:b@127.0.0.1>\r\ni: abc\r\nCSeq: 10 KDMQ\r\n"
               b"Max-Forwards: 1\r\nContent-Length: %d\r\n\r\n" % len(body)) + body
    answer = responder.answer(request)
    assert answer.split(b"\r\n") == [
        b"SIP/2.0 200 OK", b"v: SIP/2.0/UDP 127.0.0.2:5060;branch=z9hG4bK1", b"f: <sip:a@127.0.0.2>;tag=1",
        b"t: <sip:b@127.0.0.1>", b"i: abc", b"CSeq: 10 KDMQ", b"Content-Length: 0", b"", b""]
    assert responder.table == {("t", "k7"): "v"}
    other = responder.answer(request.replace(b"sip:htable@", b"sip:other@", 1))
    assert other.startswith(b"SIP/2.0 404 Not Found\r\n") and b"\r\ni: abc\r\n" in other


def test_client_refuses_a_missing_target(client: Path) -> None:
    """Without --target and --bind the client exits non-zero with a reason."""
    done = subprocess.run([str(client), "--count", "1"], capture_output=True, text=True)
    assert done.returncode == 2
    assert "--target and --bind are required" in done.stderr


def test_run_quick_convergence_prints_a_table() -> None:
    """``bench/run.py --quick --only convergence --no-write`` prints the convergence table of both implementations."""
    done = subprocess.run([sys.executable, str(BENCH / "run.py"), "--quick", "--only", "convergence", "--no-write"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    table = done.stdout.split("## Convergence", 1)[1]
    assert "| 3 |" in table and "| 5 |" in table
    assert "failed in this run" not in done.stdout


def inbound_run(rate: float, cpu: float, p50: float) -> dict[str, float]:
    """One client result of an inbound run, as ``kdmqload`` reports it."""
    return {"rate": rate, "p50_us": p50, "p99_us": 2 * p50, "server_cpu_us_per_request": cpu,
            "client_cpu_share": 0.2, "lost": 0, "other_codes": 0}


def test_report_adds_the_pypy_table_only_with_pypy_runs() -> None:
    """The inbound section gains a PyPy table, with per-repetition ratios to Kamailio, when PyPy ran."""
    import report

    kamailio = {"htable/32": [inbound_run(20000, 40, 100), inbound_run(30000, 30, 80)]}
    dmq = {"htable/32": [inbound_run(10000, 80, 200), inbound_run(12000, 60, 160)]}
    pypy = {"htable/32": [inbound_run(24000, 20, 50), inbound_run(36000, 24, 120)]}
    without = report.inbound_section({"runs": {"kamailio": kamailio, "dmq": dmq}})
    assert "PyPy" not in without
    with_pypy = report.inbound_section({"runs": {"kamailio": kamailio, "dmq": dmq, "pypy": pypy}})
    row = [line for line in with_pypy.split("PyPy req/s", 1)[1].splitlines() if line.startswith("| htable")][0]
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    # rate 24000/20000 and 36000/30000; p50 50/100 and 120/80; CPU 20/40 and 24/30
    assert cells[3] == "1.20, 1.20 (**1.20**)"
    assert cells[5] == "0.50, 1.50 (**1.00**)"
    assert cells[7] == "0.50, 0.80 (**0.65**)"


def test_report_adds_the_yardstick_table_only_with_yardstick_runs() -> None:
    """The yardstick's table gives its CPU against Kamailio's, and what dmq spends above it, per repetition."""
    import report

    kamailio = {"htable/32": [inbound_run(20000, 40, 100), inbound_run(30000, 30, 80)]}
    dmq = {"htable/32": [inbound_run(10000, 80, 200), inbound_run(12000, 60, 160)]}
    pypy = {"htable/32": [inbound_run(24000, 20, 50), inbound_run(36000, 24, 120)]}
    floor = {"htable/32": [inbound_run(50000, 12, 40), inbound_run(60000, 12, 30)]}
    assert "yardstick" not in report.inbound_section({"runs": {"kamailio": kamailio, "dmq": dmq, "pypy": pypy}})
    text = report.inbound_section({"runs": {"kamailio": kamailio, "dmq": dmq, "pypy": pypy, "floor": floor}})
    row = [line for line in text.split("yardstick req/s", 1)[1].splitlines() if line.startswith("| htable")][0]
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    # CPU 12/40 and 12/30; dmq above it: 80-12 and 60-12; PyPy: 20-12 and 24-12
    assert cells[2:] == ["55,000", "12", "0.30, 0.40 (**0.35**)", "58", "10"]


def test_targets_table_marks_each_target_met_or_not() -> None:
    """The targets section judges each ratio against its goal, per implementation."""
    import report

    kamailio = {key: [inbound_run(20000, 40, 100)] for key in ("htable/1", "htable/32", "channel/1", "channel/32")}
    dmq = {key: [inbound_run(10000, 80, 200)] for key in kamailio}
    pypy = {key: [inbound_run(16000, 30, 90)] for key in kamailio}
    text = report.targets_section({"inbound": {"runs": {"kamailio": kamailio, "dmq": dmq, "pypy": pypy}}})
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")]
            for line in text.splitlines() if line.startswith("| inbound") or line.startswith("| unknown")}
    assert rows["inbound htable set, CPU per message, 32 outstanding"][2:] == ["2.00× ✗", "0.75× ✓"]
    assert rows["inbound htable set, rate at 32 outstanding"][2:] == ["0.50× ✗", "0.80× ✓"]
    assert rows["inbound htable set, p50 latency at 1 outstanding"][2:] == ["2.00× ✗", "0.90× ✓"]


@pytest.mark.parametrize("kind", ["htable", "channel"])
def test_request_path_answers_every_request(kind: str) -> None:
    """``bench/requestpath.py`` feeds requests to an in-process node and reports CPU per request (it exits
    non-zero when a request goes unanswered)."""
    done = subprocess.run([sys.executable, str(BENCH / "requestpath.py"), "--kind", kind, "--requests", "300",
                           "--warmup", "50"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith(f"{kind}: ") and " µs of CPU per request " in done.stdout


def test_fanout_memory_table_and_target() -> None:
    """The fan-out memory readings make a table in MB and a target row judged against the 5% tolerance."""
    import report

    def reading(baseline: float, after: float) -> dict[str, float]:
        return {"fresh_kb": 10240.0, "baseline_kb": baseline, "burst_kb": 2 * baseline, "after_kb": after,
                "after2_kb": after * 1.1}

    memory = {"2": {"kamailio": reading(20480, 20480), "dmq": reading(40960, 42900), "pypy": reading(102400, 104448)}}
    lines = report.fanout_memory({"memory": memory, "burst": 20000, "burst_keys": 1000, "settle_s": {"2": 19.5},
                                  "answer_kept_s": 32.0})
    rows = {line.split("|")[2].strip(): [c.strip() for c in line.strip("|").split("|")]
            for line in "\n".join(lines).splitlines() if line.startswith("| 2 ")}
    assert rows["dmq"][2:] == ["10.0", "40.0", "80.0", "41.9", "46.1", "+4.7%", "+10.0%"]
    assert rows["dmq on PyPy"][-2] == "+2.0%"
    assert "20 s with 2" in "\n".join(lines)
    assert "plus 32 s, the time dmq keeps each answer" in "\n".join(lines)
    runs = {impl: {"2/load": [{"replicated_rate": 1000.0, "server_cpu_ms_per_set": 0.1}],
                   "2/light": [{"lag_p50_ms": 1.0}]} for impl in ("kamailio", "dmq", "pypy")}
    text = report.targets_section({"inbound": {"runs": {"kamailio": {}, "dmq": {}, "pypy": {}}},
                                   "fanout": {"runs": runs, "memory": memory}})
    row = [line for line in text.splitlines() if "memory after a burst" in line][0]
    assert [c.strip() for c in row.strip("|").split("|")][2:] == ["+4.7% ✓", "+2.0% ✓"]
    row = [line for line in text.splitlines() if "memory after a second burst" in line][0]
    assert [c.strip() for c in row.strip("|").split("|")][2:] == ["+10.0% ✗", "+10.0% ✗"]
    memory["2"]["dmq"]["after_kb"] = 43100.0
    text = report.targets_section({"inbound": {"runs": {"kamailio": {}, "dmq": {}, "pypy": {}}},
                                   "fanout": {"runs": runs, "memory": memory}})
    row = [line for line in text.splitlines() if "memory after a burst" in line][0]
    assert "✗" in row.split("|")[3]
    assert report.fanout_memory({}) == []


def test_the_burst_settle_outlasts_the_answers_a_dmq_node_keeps() -> None:
    """The wait after a burst covers dmq's Timer J at the bench's T1 (not 64*T1: dmq keeps answers at
    least 64*500 ms), as a node of the bench's settings keeps them, and the idle collection after it."""
    clock = Clock()
    layer = TransactionLayer(FakeSIPTransport(clock, ("udp",)), None, reactor=clock, t1=T1_MS / 1000)
    assert layer.completed_servers.lifetime * 1000 == ANSWER_KEPT_MS
    assert settle_seconds(20000, 2000) == 20000 / 2000 + ANSWER_KEPT_MS / 1000 + 2 * CHECK_INTERVAL + 4


def test_each_cluster_replicates_its_burst_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """After a cluster's burst the next cluster's waits until the first has had the time to replicate it
    at its own sets/s; readings come from each cluster's own processes."""
    events: list[tuple[str, object]] = []

    class FakeCluster:
        def __init__(self, pid: int) -> None:
            self.pid = pid
            self.addresses = [(f"127.0.0.{pid}", 5060), ("127.0.0.9", 5060)]

        def pids(self) -> list[int]:
            return [self.pid]

    def run_client(*args: object) -> dict[str, float]:
        events.append(("burst", args[1]))
        return {"rate": 5000.0, "elapsed_s": 4.0}

    monkeypatch.setattr(scenarios, "run_client", run_client)
    monkeypatch.setattr(scenarios, "memory_kb", lambda pids: (0, 1000 * pids[0]))
    monkeypatch.setattr(scenarios.time, "sleep", lambda seconds: events.append(("sleep", seconds)))
    clusters = {"slow": FakeCluster(1), "fast": FakeCluster(2)}
    readings = burst_memory(Plan(burst=20000), clusters, {"slow": 10, "fast": 20}, 60.0,  # type: ignore[arg-type]
                            {"slow": 1000.0, "fast": 10000.0})
    first_round = [("sleep", 60.0), ("burst", "127.0.0.1:5060"), ("sleep", 16.0),  # 20,000 sets at 1,000/s, 4 s gone
                   ("burst", "127.0.0.2:5060"), ("sleep", 0.0)]  # at 10,000/s: done within the client's 4 s
    assert events == first_round * 2 + [("sleep", 60.0)]
    assert readings["slow"]["baseline_kb"] == 1000.0 and readings["fast"]["after2_kb"] == 2000.0
