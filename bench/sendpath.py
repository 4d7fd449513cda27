"""
The CPU the sending side of one dmq node spends per replicated htable set, measured in process.

One :class:`dmq.DMQService` (``sip:127.0.0.91:27060``) with an
:class:`~dmq.peers.htable.HTablePeer` (table ``t``) and 1, 2 or 4 other active nodes
(``127.0.0.92`` to ``127.0.0.95``) sets keys with ``HTablePeer.set``.  Its real UDP
transport is listening, but the socket of the port is swapped for a fake whose
``sendto`` keeps the datagrams: nothing reaches the network.  Every KDMQ the node
sends is answered with a 200 built as Kamailio builds one (the request's ``Via``,
``From``, ``To`` with a tag, ``Call-ID`` and ``CSeq``, a ``Server`` header and
``Content-Length: 0``), handed to the UDP protocol's ``datagramReceived`` from the
receiver's address, as the reactor would.

Sets go in batches that fit the peer's window (so every message goes out at once):
the node's sets, then the answers are built (not timed), then fed back.  Only the
node's own work is timed, with ``time.process_time``: the figure is CPU microseconds
per replicated set (one set reaching every other node), with the reactor never
running and the clock a :class:`twisted.internet.task.Clock`.  Each run checks that
every message was answered 200 and matched its transaction.

Usage::

    python bench/sendpath.py [--receivers 1,2,4] [--sets 20000] [--batch 16]
                             [--profile] [--top 25] [--sort tottime]

``--profile`` runs the timed loop again under cProfile and prints its top functions
(the profiled run is slower; the figures come from the run without it).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import os
import pstats
import socket
import sys
import time
from typing import Any, Callable, Optional

from twisted.internet import reactor
from twisted.internet.task import Clock

from dmq import DMQService
from dmq.peers.htable import HTablePeer
from dmq.sip.transport import SIPTransport

HOST = "127.0.0.91"
PORT = 27060
RECEIVERS = ["127.0.0.92", "127.0.0.93", "127.0.0.94", "127.0.0.95"]
RECEIVER_PORT = 5060
SERVER = b"kamailio (5.6.3 (x86_64/linux))"
_COPIED = {b"via", b"v", b"from", b"f", b"call-id", b"i", b"cseq"}
_TO = {b"to", b"t"}


def kamailio_answer(request: bytes, to_tag: bytes) -> bytes:
    """The 200 Kamailio's ``sl`` sends to ``request``: its identifying headers copied, a To-tag added."""
    head = request[: request.index(b"\r\n\r\n")]
    lines = head.split(b"\r\n")
    out = [b"SIP/2.0 200 OK"]
    for line in lines[1:]:
        name = line[: line.index(b":")].strip().lower()
        if name in _COPIED:
            out.append(line)
        elif name in _TO:
            out.append(line + b";tag=" + to_tag)
    out.append(b"Server: " + SERVER)
    out.append(b"Content-Length: 0")
    return b"\r\n".join(out) + b"\r\n\r\n"


class RecordingSocket:
    """Stands in for the UDP port's socket: keeps every datagram sent, sends none."""

    family = socket.AF_INET

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple[str, int]]] = []

    def sendto(self, data: bytes, address: tuple[str, int]) -> int:
        """Keep ``data`` and where it was going."""
        self.sent.append((data, address))
        return len(data)


class SendPath:
    """One sending node and its fake socket, with ``receivers`` other active nodes."""

    def __init__(self, receivers: int) -> None:
        self.clock = Clock()
        transport = SIPTransport(None, reactor, host=HOST, port=PORT, clock=self.clock)
        self.service = DMQService(
            server_address=f"sip:{HOST}:{PORT}", ping_interval=3600, reactor=self.clock, transport=transport
        )
        self.peer = HTablePeer(tables=["t"])
        self.service.register_peer(self.peer)
        self.service.startService()
        self.transport = transport
        datagram = transport._datagram
        assert datagram is not None and datagram.transport is not None
        self.protocol = datagram
        self.port: Any = datagram.transport
        self.real_socket = self.port.socket
        self.socket = RecordingSocket()
        self.port.socket = self.socket
        for host in RECEIVERS[:receivers]:
            self.service.add_node(f"sip:{host}:{RECEIVER_PORT}")
        self.receivers = receivers
        self.codes: dict[int, int] = {}
        self._serial = 0

    def close(self) -> None:
        """Give the port its socket back and stop listening."""
        self.port.socket = self.real_socket
        self.service.stopService()
        self.clock.advance(10)
        # The reactor never runs: close the socket now rather than on its next turn.
        if getattr(self.port, "socket", None) is not None:
            self.port.connectionLost()

    def _count(self, outcomes: list[tuple[Any, int]]) -> None:
        codes = self.codes
        for _node, code in outcomes:
            codes[code] = codes.get(code, 0) + 1

    def sets(self, count: int) -> None:
        """``count`` sets of new keys (what is timed)."""
        peer_set = self.peer.set
        count_codes = self._count
        serial = self._serial
        for i in range(serial, serial + count):
            peer_set("t", f"k{i}", "v").addCallback(count_codes)
        self._serial = serial + count

    def answers(self) -> list[tuple[bytes, tuple[str, int]]]:
        """The answers to every datagram sent since the last call (not timed)."""
        sent = self.socket.sent
        self.socket.sent = []
        out = []
        for data, address in sent:
            tag = b"%08x" % (hash(data) & 0xFFFFFFFF)
            out.append((kamailio_answer(data, tag), address))
        return out

    def feed(self, answers: list[tuple[bytes, tuple[str, int]]]) -> None:
        """Hand each answer to the UDP protocol as the reactor would (what is timed)."""
        received = self.protocol.datagramReceived
        for data, address in answers:
            received(data, address)

    def run(self, total: int, batch: int, profiler: Optional[cProfile.Profile] = None) -> float:
        """Replicate ``total`` sets; return the CPU seconds the node spent on them."""
        spent = 0.0
        clock = time.process_time
        done = 0
        while done < total:
            n = min(batch, total - done)
            if profiler is not None:
                profiler.enable()
            t0 = clock()
            self.sets(n)
            t1 = clock()
            if profiler is not None:
                profiler.disable()
            answers = self.answers()
            if len(answers) != n * self.receivers:
                raise RuntimeError(f"{len(answers)} datagrams sent for {n} sets to {self.receivers} nodes")
            if profiler is not None:
                profiler.enable()
            t2 = clock()
            self.feed(answers)
            t3 = clock()
            if profiler is not None:
                profiler.disable()
            spent += (t1 - t0) + (t3 - t2)
            done += n
        return spent

    def check(self, total: int) -> None:
        """Every message was answered 200 and matched its transaction; nothing is left in flight."""
        stats = self.service.transactions.stats
        expected = total * self.receivers
        if self.codes != {200: expected}:
            raise RuntimeError(f"outcomes {self.codes}, expected {expected} times 200")
        if stats.stray_responses or self.service.transactions.clients or self.peer.in_flight:
            raise RuntimeError("stray responses, or transactions left running")


def measure(receivers: int, sets: int, batch: int, warmup: int = 2000) -> tuple[float, SendPath]:
    """CPU microseconds per replicated set with ``receivers`` other nodes."""
    path = SendPath(receivers)
    path.run(warmup, batch)
    gc.collect()
    spent = path.run(sets, batch)
    path.check(warmup + sets)
    return spent / sets * 1e6, path


def main(argv: Optional[list[str]] = None) -> int:
    """Print the CPU per replicated set for each receiver count (and the profiles when asked)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--receivers", default="1,2,4", help="comma-separated receiver counts (1-4)")
    parser.add_argument("--sets", type=int, default=20000, help="timed sets per receiver count")
    parser.add_argument("--batch", type=int, default=16, help="sets per batch (batch*receivers <= 64)")
    parser.add_argument("--repeat", type=int, default=1, help="timed runs per count (the best is shown)")
    parser.add_argument("--profile", action="store_true", help="also print a cProfile top list per count")
    parser.add_argument("--top", type=int, default=25, help="functions in the profile list")
    parser.add_argument("--sort", default="tottime", help="profile sort key (tottime, cumulative, ...)")
    args = parser.parse_args(argv)
    counts = [int(c) for c in args.receivers.split(",")]
    for n in counts:
        if not 1 <= n <= len(RECEIVERS) or args.batch * n > 64:
            parser.error(f"{n} receivers with batches of {args.batch}: needs 1-4 receivers and batch*receivers <= 64")
    print(f"python {sys.version.split()[0]}, pid {os.getpid()}, {args.sets} sets per run")
    for n in counts:
        best = None
        for _ in range(args.repeat):
            us, path = measure(n, args.sets, args.batch)
            path.close()
            best = us if best is None else min(best, us)
        assert best is not None
        print(f"receivers={n}: {best:7.1f} us CPU per replicated set, {best / n:6.1f} us per message")
        if args.profile:
            path = SendPath(n)
            path.run(2000, args.batch)
            profiler = cProfile.Profile()
            path.run(args.sets, args.batch, profiler)
            path.close()
            stats = pstats.Stats(profiler)
            calls = sum(s[1] for s in stats.stats.values())  # type: ignore[attr-defined]
            print(f"  profile: {calls / args.sets:.0f} function calls per set")
            stats.sort_stats(args.sort).print_stats(args.top)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
