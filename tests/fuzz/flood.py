"""A flood of valid KDMQ requests from one source, and a member's pings meanwhile.

:func:`send_flood` (run in a process of its own: ``python -m tests.fuzz.flood --send ...``)
sends ``count`` htable sets from one UDP socket, evenly over ``seconds``, and counts the
answers by status code. :func:`flood_with_pings` starts it against a :class:`LiveNode` and
meanwhile sends node-list requests from the member's own address, one at a time, and
records each round trip (None for one unanswered within the timeout).

Script mode, for the figures of ``docs/reliability.md``::

    .venv/bin/python -m tests.fuzz.flood [--source stranger|member] [--count 20000] [--seconds 10]
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..helpers import free_address
from .live import LiveNode, Member
from .mutate import request

PING_TIMEOUT = 2.0
"""Seconds a ping may take before it counts as unanswered (a liveness bound, not a speed target)."""

PING_GAP = 0.02
"""Seconds between the answer to one ping and the next ping."""


def send_flood(target: tuple[str, int], source: tuple[str, int], count: int, seconds: float,
               keys: int = 100) -> dict[str, object]:
    """Send ``count`` htable sets from ``source`` to ``target`` over ``seconds``; the answers' codes, counted."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind(source)
    sock.setblocking(False)
    source = sock.getsockname()
    codes: dict[str, int] = {}
    retry_after = 0

    def read() -> None:
        nonlocal retry_after
        while True:
            try:
                data = sock.recv(65535)
            except (BlockingIOError, ConnectionRefusedError):
                return
            if data.startswith(b"SIP/2.0 "):
                code = data[8:11].decode()
                codes[code] = codes.get(code, 0) + 1
                retry_after += b"\r\nRetry-After: " in data

    started = time.monotonic()
    for n in range(count):
        body = json.dumps({"action": 2, "htname": "t", "cname": f"flood{n % keys}", "type": 2, "strval": str(n),
                           "mode": 1}).encode()
        due = started + seconds * n / count
        while (wait := due - time.monotonic()) > 0:
            select.select([sock], [], [], wait)
            read()
        try:
            sock.sendto(request("htable", target, source, body, "application/json"), target)
        except BlockingIOError:
            pass
        read()
    sent_for = time.monotonic() - started
    deadline = time.monotonic() + 3.0
    while (left := deadline - time.monotonic()) > 0 and sum(codes.values()) < count:
        select.select([sock], [], [], left)
        read()
    return {"sent": count, "seconds": sent_for, "codes": codes, "retry_after": retry_after}


@dataclass
class FloodReport:
    source: str
    flood: dict[str, object] = field(default_factory=dict)
    pings: list[Optional[float]] = field(default_factory=list)
    refused: dict[str, int] = field(default_factory=dict)

    @property
    def unanswered(self) -> int:
        return sum(1 for rtt in self.pings if rtt is None)

    def percentile(self, q: float) -> Optional[float]:
        rtts = sorted(rtt for rtt in self.pings if rtt is not None)
        return rtts[min(len(rtts) - 1, int(q * len(rtts)))] if rtts else None

    def lines(self) -> list[str]:
        def ms(value: Optional[float]) -> str:
            return "-" if value is None else f"{value * 1000:.1f} ms"

        return [
            f"flood from a {self.source}: {self.flood.get('sent')} requests in {self.flood.get('seconds', 0):.1f} s, "
            f"answers by code {self.flood.get('codes')}, with Retry-After {self.flood.get('retry_after')}",
            f"node refused (503) {self.refused}",
            f"member pings {len(self.pings)}, unanswered {self.unanswered}, p50 {ms(self.percentile(0.5))}, "
            f"p99 {ms(self.percentile(0.99))}, max {ms(self.percentile(1.0))}",
        ]


def flood_with_pings(node: LiveNode, member: Member, source: str, count: int, seconds: float) -> FloodReport:
    """Flood ``node`` from a stranger's address or from the member's host (``source``) while the member pings it."""
    host = member.host if source == "member" else free_address("udp")[0]
    flooder = subprocess.Popen(
        [sys.executable, "-m", "tests.fuzz.flood", "--send", f"{node.host}:{node.port}", "--bind", host,
         "--count", str(count), "--seconds", str(seconds)],
        stdout=subprocess.PIPE, cwd=Path(__file__).parents[2],
    )
    report = FloodReport(source)
    try:
        while flooder.poll() is None:
            report.pings.append(member.ping(node, timeout=PING_TIMEOUT))
            time.sleep(PING_GAP)
        out, _ = flooder.communicate()
    finally:
        if flooder.poll() is None:
            flooder.kill()
            flooder.wait()
    report.flood = json.loads(out)
    report.refused = node.rpc("dmq.stats")["refused"]
    return report


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz.flood", description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", choices=["stranger", "member"], default="stranger")
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--send", help="(internal) flood HOST:PORT and print the answers' codes as JSON")
    parser.add_argument("--bind", help="(internal) the host to flood from")
    args = parser.parse_args(argv)
    if args.send:
        host, port = args.send.rsplit(":", 1)
        print(json.dumps(send_flood((host, int(port)), (args.bind, 0), args.count, args.seconds)))
        return 0
    with tempfile.TemporaryDirectory() as workdir, Member() as member:
        node = LiveNode(member, Path(workdir))
        try:
            report = flood_with_pings(node, member, args.source, args.count, args.seconds)
        finally:
            node.stop()
    print("\n".join(report.lines()))
    return 0 if report.unanswered == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
