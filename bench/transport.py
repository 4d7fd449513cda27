"""
Transport and transaction benchmark over UDP loopback.

1. ``dmq -> dmq``: requests per second through a client transaction layer
   (this process) and a server transaction layer (a dmq node in a second
   process), with a window of outstanding requests.
2. Server capacity, side by side: a lean raw-socket client (pre-built
   requests, no parsing) keeps a window of KDMQ node-list queries (empty body:
   read-only, answered 200 with the node list) in flight to one server, first
   a dmq node, then a Kamailio 5.6 node with one UDP worker; both answer the
   same requests with the same kind of answer.

Usage: ``python bench/transport.py [--seconds S] [--window W] [--json]``
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)


def free_port() -> int:
    """A UDP port free on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(port: int) -> None:
    """Run a lone dmq node on ``port`` until killed (the server side)."""
    from twisted.internet import reactor

    from dmq import DMQService

    svc = DMQService(f"sip:127.0.0.1:{port}", reactor=reactor)
    svc.startService()
    reactor.run()


def start_dmq_server(port: int) -> subprocess.Popen[bytes]:
    """Start :func:`serve` in a child process and wait until it answers."""
    proc = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--serve", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_answering(port)
    return proc


def query(port: int, i: int, local_port: int) -> bytes:
    """A KDMQ empty-body node-list query numbered ``i``."""
    return (
        f"KDMQ sip:notification_peer@127.0.0.1:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{local_port};branch=z9hG4bKbench{i:x}\r\n"
        f"To: <sip:notification_peer@127.0.0.1:{port}>\r\n"
        f"From: <sip:notification_peer@127.0.0.1:{local_port}>;tag=b{i:x}\r\n"
        "CSeq: 10 KDMQ\r\n"
        f"Call-ID: bench-{i:x}@127.0.0.1\r\n"
        "Content-Length: 0\r\n"
        "Max-Forwards: 1\r\n"
        "Content-Type: text/plain\r\n\r\n"
    ).encode()


def wait_answering(port: int, timeout: float = 10.0) -> None:
    """Poll ``port`` with a query until a 200 comes back."""
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(0.2)
        i = 0
        while time.monotonic() < deadline:
            i += 1
            s.sendto(query(port, 10**9 + i, s.getsockname()[1]), ("127.0.0.1", port))
            try:
                if s.recv(65535).startswith(b"SIP/2.0 200"):
                    return
            except socket.timeout:
                pass
    raise RuntimeError(f"nothing answers on port {port}")


def lean_client(port: int, seconds: float, window: int) -> dict[str, float]:
    """
    Keep ``window`` queries in flight to ``port`` for ``seconds``; count the
    200s.  Every request has its own branch and Call-ID.
    """
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.bind(("127.0.0.1", 0))
    local = s.getsockname()[1]
    s.settimeout(1.0)
    target = ("127.0.0.1", port)
    count = 200000
    requests = [query(port, i, local) for i in range(count)]
    sent = answered = 0
    for _ in range(window):
        s.sendto(requests[sent % count], target)
        sent += 1
    start = time.perf_counter()
    end = start + seconds
    lost = 0
    while True:
        try:
            data = s.recv(65535)
        except socket.timeout:
            lost += 1
            for _ in range(window):  # refill a window lost to drops
                s.sendto(requests[sent % count], target)
                sent += 1
            continue
        if data.startswith(b"SIP/2.0 200"):
            answered += 1
        now = time.perf_counter()
        if now >= end:
            break
        s.sendto(requests[sent % count], target)
        sent += 1
    elapsed = time.perf_counter() - start
    s.close()
    return {"requests_per_s": answered / elapsed, "stalls": lost}


def layer_to_layer(port: int, seconds: float, window: int) -> dict[str, float]:
    """Requests per second through dmq's client and server transaction layers."""
    from twisted.internet import reactor

    from dmq.sip import SIPURI, build_request
    from dmq.sip.address import Address
    from dmq.sip.transaction import TransactionLayer
    from dmq.sip.transport import SIPTransport

    local_port = free_port()
    transport = SIPTransport(None, reactor, host="127.0.0.1", port=local_port)
    layer = TransactionLayer(transport, None, reactor=reactor)
    transport.controller = layer
    target = Address("udp", "127.0.0.1", port)
    uri = SIPURI.parse(f"sip:notification_peer@127.0.0.1:{port}")
    own = SIPURI.parse(f"sip:notification_peer@127.0.0.1:{local_port}")
    result: dict[str, float] = {}
    done = [0, 0]

    def one() -> Any:
        request = build_request(
            "KDMQ", uri, from_uri=own, via_transport="UDP", via_sent_by=f"127.0.0.1:{local_port}", max_forwards=1
        )
        d = layer.request(request, target)
        d.addCallback(finished)
        return d

    def finished(response: Any) -> None:
        done[0] += 1
        if response.code != 200:
            done[1] += 1
        if "elapsed" not in result:
            one()

    def go() -> None:
        d = transport.listen()

        def started(_: object) -> None:
            result["start"] = time.perf_counter()
            result["cpu0"] = time.process_time()
            for _ in range(window):
                one()
            reactor.callLater(seconds, stop)

        d.addCallback(started)

    def stop() -> None:
        result["elapsed"] = time.perf_counter() - result["start"]
        result["cpu"] = time.process_time() - result["cpu0"]
        result["completed"] = done[0]
        reactor.callLater(0.5, reactor.stop)

    reactor.callWhenRunning(go)
    reactor.run()
    return {
        "requests_per_s": result["completed"] / result["elapsed"],
        "client_cpu_share": result["cpu"] / result["elapsed"],
        "errors": done[1],
    }


def kamailio_server(port: int, directory: str) -> Any:
    """A Kamailio 5.6 node with one UDP worker on ``port`` (or None without Kamailio)."""
    from tests.interop.kamailio import KamailioNode, find_kamailio

    if find_kamailio() is None:
        return None
    node = KamailioNode(directory, port, children=1, debug=1, shm_mb=256, ping_interval=60)
    node.start()
    return node


def pss_kb(pids: list[int]) -> int:
    """Proportional set size of the given processes together, in KiB (shared pages split)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
        except OSError:
            continue
    return total


def main() -> dict[str, Any]:
    """Run both parts and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--layers-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return {}
    if args.layers_only:
        port = free_port()
        server = start_dmq_server(port)
        try:
            print(json.dumps(layer_to_layer(port, args.seconds, args.window)))
        finally:
            server.kill()
            server.wait()
        return {}
    results: dict[str, Any] = {}
    # 1. through both transaction layers (own process: the reactor runs once)
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--layers-only", "--seconds", str(args.seconds),
         "--window", str(args.window)],
        capture_output=True, text=True, check=True,
    )
    results["dmq_layers"] = json.loads(out.stdout.strip().splitlines()[-1])
    # 2. server capacity: dmq node vs Kamailio node, same lean client
    port = free_port()
    server = start_dmq_server(port)
    try:
        idle = pss_kb([server.pid])
        results["dmq_server"] = lean_client(port, args.seconds, args.window)
        results["dmq_server"]["pss_kb"] = pss_kb([server.pid])
        results["dmq_server"]["idle_pss_kb"] = idle
    finally:
        server.kill()
        server.wait()
    from tests.interop.kamailio import group_processes

    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        node = kamailio_server(port, tmp)
        if node is not None:
            try:
                wait_answering(port)
                idle = pss_kb(group_processes(node.pid))
                results["kamailio_server"] = lean_client(port, args.seconds, args.window)
                results["kamailio_server"]["pss_kb"] = pss_kb(group_processes(node.pid))
                results["kamailio_server"]["idle_pss_kb"] = idle
            finally:
                node.stop()
            results["server_ratio_dmq_to_kamailio"] = (
                results["dmq_server"]["requests_per_s"] / results["kamailio_server"]["requests_per_s"]
            )
            results["memory_ratio_dmq_to_kamailio"] = (
                results["dmq_server"]["pss_kb"] / results["kamailio_server"]["pss_kb"]
            )
    if args.json:
        print(json.dumps(results))
    else:
        print(f"dmq client layer -> dmq server layer : {results['dmq_layers']['requests_per_s']:10,.0f} req/s")
        print(f"lean client -> dmq node              : {results['dmq_server']['requests_per_s']:10,.0f} req/s"
              f"  (PSS {results['dmq_server']['pss_kb']:,} KiB)")
        if "kamailio_server" in results:
            print(f"lean client -> Kamailio (1 worker)   : {results['kamailio_server']['requests_per_s']:10,.0f} req/s"
                  f"  (PSS {results['kamailio_server']['pss_kb']:,} KiB)")
            print(f"dmq / Kamailio throughput            : {results['server_ratio_dmq_to_kamailio']:10.2f}")
    return results


if __name__ == "__main__":
    main()
