"""
htable replication benchmark: replicated sets per second from one node to 2
and to 4 others, and the time until the last node has the last key, for
Python nodes and, side by side, for the same load through Kamailio 5.6 nodes.

Every node is its own process on loopback (UDP):

- **Python**: one sender process runs a :class:`~dmq.DMQService` with an
  :class:`~dmq.peers.HTablePeer` and calls ``peer.set()`` for ``--count``
  distinct keys (in batches of 100 per reactor turn, as an application
  would); each receiver process has its own service and peer and writes the
  time (its reactor clock, epoch seconds) at which its table holds all keys.
- **Kamailio**: one sender node receives the same sets as ``htable.sets``
  JSON-RPC calls from ``--clients`` client threads over the ``jsonrpcs``
  datagram socket (``dgram_workers`` = clients); the receiver nodes are
  polled with ``htable.stats`` every 10 ms until they hold all keys.
  Nodes run with ``-m 512`` (shared memory: each replication holds memory
  for a few seconds after its answer).

Figures per run: ``issue_rate`` (sets the sender accepted per second),
``replicated_rate`` (keys divided by the time from the first set until the
last node holds all keys), ``last_key_s`` (time from the last set issued until
the last node holds all keys), and for Python ``acked_rate`` (sets whose
replication every node answered, per second).  The script prints a JSON
object (``--json`` for only that) and a short table.

Usage: ``python bench/htable.py [--count N] [--nodes 2,4] [--clients 2]
[--no-kamailio] [--no-python] [--json]``
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

VALUE = "v" * 32
PING = 5
KEY_FORMAT = "k{:06d}"


# -- CPU time -------------------------------------------------------------------------------


def _own_cpu() -> float:
    """User + system CPU seconds of this process."""
    t = os.times()
    return t.user + t.system


def _cpu_of(pids: list[int]) -> float:
    """User + system CPU seconds of the given processes (from /proc; vanished ones count 0)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                raw = f.read()
        except OSError:
            continue
        fields = raw[raw.rfind(b")") + 2:].split()
        total += int(fields[11]) + int(fields[12])
    return total / ticks


# -- the Python node processes ------------------------------------------------------------


def _python_sender(args: argparse.Namespace) -> None:
    """Child process: wait for ``--nodes`` active nodes, set ``--count`` keys, report times as JSON."""
    from twisted.internet import defer, reactor, task

    from dmq import DMQService
    from dmq.peers import HTablePeer

    svc = DMQService(f"sip:127.0.0.1:{args.port}", [], reactor=reactor, ping_interval=PING)
    kw = {"max_in_flight": args.window} if args.window else {}
    peer = HTablePeer(tables=["t"], init_sync="none", **kw)
    svc.register_peer(peer)
    svc.startService()
    print("LISTENING", flush=True)

    async def run() -> None:
        while len(svc.nodes.active()) < args.nodes:
            await task.deferLater(reactor, 0.01, lambda: None)
        await task.deferLater(reactor, 0.5, lambda: None)  # the receivers' own join syncs settle
        started = reactor.seconds()
        cpu_started = _own_cpu()
        pending = []
        for first in range(0, args.count, 100):
            for i in range(first, min(first + 100, args.count)):
                pending.append(peer.set("t", KEY_FORMAT.format(i), VALUE))
            await task.deferLater(reactor, 0, lambda: None)
        issued = reactor.seconds()
        results = await defer.gatherResults(pending)
        acked = reactor.seconds()
        cpu = _own_cpu() - cpu_started
        codes: dict[str, int] = {}
        for outcomes in results:
            for _, code in outcomes:
                codes[str(code)] = codes.get(str(code), 0) + 1
        print("RESULT " + json.dumps({"started": started, "issued": issued, "acked": acked, "codes": codes,
                                      "retransmissions": svc.transactions.stats.retransmissions, "cpu": cpu}),
              flush=True)
        reactor.stop()

    d = defer.Deferred.fromCoroutine(run())
    d.addErrback(lambda f: print("ERROR " + f.getTraceback().replace("\n", " | "), flush=True))
    reactor.run()


def _python_receiver(args: argparse.Namespace) -> None:
    """Child process: join the sender; print the time at which all ``--count`` keys are here."""
    from twisted.internet import reactor

    from dmq import DMQService
    from dmq.peers import Change, HTablePeer

    svc = DMQService(f"sip:127.0.0.1:{args.port}", [f"sip:127.0.0.1:{args.seed}"], reactor=reactor, ping_interval=PING)
    peer = HTablePeer(tables=["t"])
    svc.register_peer(peer)
    cells = peer.tables["t"].cells
    done: list[float] = []
    first: list[float] = []

    def changed(change: Change) -> None:
        if not first:
            first.append(_own_cpu())
        if not done and len(cells) >= args.count:
            done.append(reactor.seconds())
            print(f"ALL {done[0]!r} {_own_cpu() - first[0]!r}", flush=True)

    peer.add_change_listener(changed)
    svc.startService()
    print("LISTENING", flush=True)
    # Run until the orchestrator closes stdin.
    from twisted.internet import protocol, stdio

    class StopOnEOF(protocol.Protocol):
        def connectionLost(self, reason: Any = None) -> None:  # noqa: N802
            if reactor.running:
                reactor.stop()

    stdio.StandardIO(StopOnEOF(), reactor=reactor)
    reactor.run()


class _Child:
    """A child process whose stdout lines are collected by a thread."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT
        )
        self.lines: "queue.Queue[str]" = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def expect(self, prefix: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {prefix!r} line within {timeout}s")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line.startswith("ERROR"):
                raise RuntimeError(line)
            if line.startswith(prefix):
                return line[len(prefix):].strip()

    def stop(self) -> None:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def run_python(nodes: int, count: int, window: Optional[int]) -> dict[str, Any]:
    """One Python run: a sender and ``nodes`` receivers, each a process."""
    from tests.interop.kamailio import free_port

    me = [sys.executable, os.path.abspath(__file__)]
    sender_port = free_port("udp")
    children: list[_Child] = []
    try:
        sender = _Child([*me, "_sender", "--port", str(sender_port), "--nodes", str(nodes),
                         "--count", str(count)] + (["--window", str(window)] if window else []))
        children.append(sender)
        sender.expect("LISTENING", 10)
        receivers = []
        for _ in range(nodes):
            receiver = _Child([*me, "_receiver", "--port", str(free_port("udp")), "--seed", str(sender_port),
                               "--count", str(count)])
            children.append(receiver)
            receivers.append(receiver)
        result = json.loads(sender.expect("RESULT", 120))
        done = [r.expect("ALL", 60).split() for r in receivers]
        arrived = [float(at) for at, _ in done]
        cpu = result["cpu"] + sum(float(c) for _, c in done)
    finally:
        for child in children:
            child.stop()
    return _figures(count, result["started"], result["issued"], max(arrived), acked=result["acked"],
                    extra={"cpu_ms_per_1000_sets": round(cpu * 1000 / count * 1000),
                           "sender_cpu_ms_per_1000_sets": round(result["cpu"] * 1000 / count * 1000),
                           "codes": result["codes"], "retransmissions": result["retransmissions"],
                           "max_in_flight": window or _default_window()})


def _default_window() -> int:
    import inspect

    from dmq.peers import HTablePeer

    return int(inspect.signature(HTablePeer).parameters["max_in_flight"].default)


# -- Kamailio ---------------------------------------------------------------------------------


class _RPCClient:
    """A JSON-RPC client on the jsonrpcs datagram socket, one socket kept for all calls."""

    def __init__(self, path: Path, directory: Path) -> None:
        self.path = str(path)
        self.own = str(directory / f"c-{os.getpid()}-{secrets.token_hex(3)}.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.own)
        self.sock.settimeout(5)
        self.ids = 0

    def call(self, method: str, *params: Any) -> Any:
        self.ids += 1
        self.sock.sendto(json.dumps({"jsonrpc": "2.0", "method": method, "params": list(params), "id": self.ids}).encode(), self.path)
        reply = json.loads(self.sock.recv(1 << 16))
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result")

    def close(self) -> None:
        self.sock.close()
        Path(self.own).unlink(missing_ok=True)


def _table_size(client: _RPCClient) -> int:
    stats = client.call("htable.stats")
    stats = stats if isinstance(stats, list) else [stats]
    return sum(int(s["all"]) for s in stats if s.get("name") == "t")


def run_kamailio(nodes: int, count: int, clients: int, workdir: Path) -> dict[str, Any]:
    """One Kamailio run: a sender node loaded over RPC and ``nodes`` receiver nodes."""
    from tests.interop.kamailio import KamailioNode, free_port, group_processes

    kw = dict(ping_interval=PING, tables=("t=>size=12;dmqreplicate=1;",), shm_mb=512,
              extra_modparams=[("jsonrpcs", "dgram_workers", clients)])
    started_nodes: list[KamailioNode] = []
    rpc: list[_RPCClient] = []
    try:
        sender = KamailioNode(workdir / "k0", free_port("udp"), **kw)  # type: ignore[arg-type]
        sender.start()
        started_nodes.append(sender)
        receivers = []
        for i in range(nodes):
            node = KamailioNode(workdir / f"k{i + 1}", free_port("udp"), [sender], **kw)  # type: ignore[arg-type]
            node.start()
            started_nodes.append(node)
            receivers.append(node)
        deadline = time.monotonic() + 2 * PING + 5
        while sum(1 for n in sender.list_nodes() if n.get("status") == "active" and not n.get("local")) < nodes:
            if time.monotonic() > deadline:
                raise TimeoutError("Kamailio receivers did not become active")
            time.sleep(0.05)
        time.sleep(0.5)
        loaders = [_RPCClient(sender.rpc_socket, sender.socket_dir) for _ in range(clients)]
        pollers = [_RPCClient(r.rpc_socket, r.socket_dir) for r in receivers]
        rpc.extend(loaders + pollers)
        arrived: list[Optional[float]] = [None] * nodes
        errors: list[str] = []
        stop = threading.Event()

        def poll(index: int) -> None:
            while not stop.is_set():
                try:
                    if _table_size(pollers[index]) >= count:
                        arrived[index] = time.time()
                        return
                except Exception as e:  # keep polling; report at the end
                    errors.append(f"poll: {e}")
                time.sleep(0.01)

        def load(part: int) -> None:
            try:
                for i in range(part, count, clients):
                    loaders[part].call("htable.sets", "t", KEY_FORMAT.format(i), VALUE)
            except Exception as e:
                errors.append(f"load: {e}")

        pids = [pid for node in started_nodes for pid in group_processes(node.pid)]  # type: ignore[arg-type]
        sender_pids = group_processes(sender.pid)  # type: ignore[arg-type]
        poll_threads = [threading.Thread(target=poll, args=(i,), daemon=True) for i in range(nodes)]
        load_threads = [threading.Thread(target=load, args=(i,), daemon=True) for i in range(clients)]
        for t in poll_threads:
            t.start()
        cpu_started = _cpu_of(pids)
        sender_cpu_started = _cpu_of(sender_pids)
        started = time.time()
        for t in load_threads:
            t.start()
        for t in load_threads:
            t.join()
        issued = time.time()
        for t in poll_threads:
            t.join(60)
        cpu = _cpu_of(pids) - cpu_started
        sender_cpu = _cpu_of(sender_pids) - sender_cpu_started
        stop.set()
        if errors or None in arrived:
            raise RuntimeError(f"Kamailio run incomplete: arrived={arrived} errors={errors[:3]}")
        for node in started_nodes:
            if not node.running:
                raise RuntimeError(f"{node} died:\n{node.log_tail()}")
        return _figures(count, started, issued, max(a for a in arrived if a is not None),
                        extra={"cpu_ms_per_1000_sets": round(cpu * 1000 / count * 1000),
                               "sender_cpu_ms_per_1000_sets": round(sender_cpu * 1000 / count * 1000),
                               "rpc_clients": clients, "shm_mb": 512})
    finally:
        for client in rpc:
            client.close()
        for node in reversed(started_nodes):
            node.stop()


# -- figures ------------------------------------------------------------------------------------


def _figures(count: int, started: float, issued: float, last: float, acked: Optional[float] = None,
             extra: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    figures: dict[str, Any] = {
        "keys": count,
        "issue_rate": round(count / (issued - started)),
        "replicated_rate": round(count / (last - started)),
        "all_keys_everywhere_s": round(last - started, 3),
        "last_key_s": round(max(0.0, last - issued), 3),
    }
    if acked is not None:
        figures["acked_rate"] = round(count / (acked - started))
    figures.update(extra or {})
    return figures


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="role")
    s = sub.add_parser("_sender")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--nodes", type=int, required=True)
    s.add_argument("--count", type=int, required=True)
    s.add_argument("--window", type=int, default=None)
    r = sub.add_parser("_receiver")
    r.add_argument("--port", type=int, required=True)
    r.add_argument("--seed", type=int, required=True)
    r.add_argument("--count", type=int, required=True)
    parser.add_argument("--count", type=int, default=4000, help="keys set per run (default 4000)")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each configuration; the best is reported (default 2)")
    parser.add_argument("--nodes", default="2,4", help="receiver counts, comma-separated (default 2,4)")
    parser.add_argument("--clients", type=int, default=2, help="RPC client threads loading Kamailio (default 2)")
    parser.add_argument("--window", type=int, default=None, help="Python max_in_flight (default: the peer's)")
    parser.add_argument("--no-kamailio", action="store_true", help="skip the Kamailio runs")
    parser.add_argument("--no-python", action="store_true", help="skip the Python runs")
    parser.add_argument("--json", action="store_true", help="print only the JSON object")
    args = parser.parse_args(argv)
    if args.role == "_sender":
        _python_sender(args)
        return 0
    if args.role == "_receiver":
        _python_receiver(args)
        return 0

    from tests.interop.kamailio import find_kamailio

    counts = [int(n) for n in args.nodes.split(",") if n.strip()]
    report: dict[str, Any] = {"keys": args.count, "rounds": args.rounds, "cpus": os.cpu_count(), "python": {}, "kamailio": {}}
    kamailio = None if args.no_kamailio else find_kamailio()
    if not args.no_kamailio and kamailio is None:
        report["kamailio_skipped"] = "no kamailio binary"
    began = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="bench-htable-"))
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
    try:
        # Rounds interleave the configurations, so a burst of other load hits them alike.
        for round_ in range(args.rounds):
            for n in counts:
                if not args.no_python:
                    runs.setdefault(("python", n), []).append(run_python(n, args.count, args.window))
                if kamailio is not None:
                    runs.setdefault(("kamailio", n), []).append(
                        run_kamailio(n, args.count, args.clients, workdir / f"r{round_}n{n}")
                    )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    for (impl, n), results in runs.items():
        best = dict(max(results, key=lambda f: f["replicated_rate"]))
        best["replicated_rates"] = [f["replicated_rate"] for f in results]
        report[impl][str(n)] = best
    report["seconds"] = round(time.monotonic() - began, 1)
    print(json.dumps(report, indent=None if args.json else 2))
    if not args.json:
        print()
        print(f"{'nodes':>5} {'impl':<9} {'issued/s':>9} {'replicated/s':>13} {'all keys (s)':>13} "
              f"{'last key (s)':>13} {'CPU ms/1000':>12}")
        for n in counts:
            for impl in ("python", "kamailio"):
                f = report[impl].get(str(n))
                if f:
                    print(f"{n:>5} {impl:<9} {f['issue_rate']:>9} {f['replicated_rate']:>13} "
                          f"{f['all_keys_everywhere_s']:>13} {f['last_key_s']:>13} {f['cpu_ms_per_1000_sets']:>12}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
