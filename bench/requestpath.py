"""
The CPU one dmq node spends per inbound KDMQ, measured in process.

One :class:`dmq.DMQService` (``sip:127.0.0.81:26060``) with an
:class:`~dmq.peers.htable.HTablePeer` (table ``t``) and one member node
(``sip:127.0.0.82:26061``) gets KDMQ requests in the load client's layout
(``bench/kdmqload.c``): htable sets of 1,000 keys in turn, answered 200, or requests
on a channel no peer serves, answered 404.  Its real UDP transport is listening,
but the socket of the port is swapped for a fake whose ``sendto`` counts the
answers: nothing reaches the network, and no system call is timed.  Each request
is handed to the UDP protocol's ``datagramReceived`` as the reactor would hand it.

After a warm-up (which lets PyPy's JIT compile the path), only the node's own work
is timed, with ``time.process_time``: CPU microseconds per request.  Every request
must be answered.  Run it with any interpreter that has dmq installed
(``.venv/bin/python`` or ``.venv-pypy/bin/python``).

Usage::

    python bench/requestpath.py [--kind htable|channel] [--requests 50000] [--warmup 20000]
                                [--profile] [--top 25]
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import socket
import sys
import time
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from twisted.internet import reactor  # noqa: E402

from dmq import DMQService  # noqa: E402
from dmq.peers.htable import HTablePeer  # noqa: E402

HOST, PORT = "127.0.0.81", 26060
MEMBER = ("127.0.0.82", 26061)


class CountingSocket:
    """Stands for the UDP port's socket: counts what would be sent."""

    family = socket.AF_INET

    def __init__(self) -> None:
        self.sent = 0

    def sendto(self, data: bytes, address: Any) -> int:
        self.sent += 1
        return len(data)

    def close(self) -> None:
        pass

    def fileno(self) -> int:
        return -1


def request(kind: str, seq: int) -> bytes:
    """Request ``seq`` of the load client's ``--kind``, from the member."""
    user = "htable" if kind == "htable" else "nochannel"
    body = ('{"action":2,"htname":"t","cname":"k%d","type":2,"strval":"%032d","mode":0}' % (seq % 1000, seq)
            if kind == "htable" else "")
    ctype = "application/json" if kind == "htable" else "text/plain"
    host, port = MEMBER
    return (f"KDMQ sip:{user}@{HOST}:{PORT} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bKrp.{seq};rport\r\n"
            f"From: <sip:{user}@{host}:{port}>;tag=rp\r\nTo: <sip:{user}@{HOST}:{PORT}>\r\n"
            f"Call-ID: {seq}.rp@{host}\r\nCSeq: 10 KDMQ\r\nMax-Forwards: 1\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n{body}").encode()


def measure(service: DMQService, args: argparse.Namespace) -> None:
    """Feed the requests and print the figure (and the profile)."""
    service.add_node(f"sip:{MEMBER[0]}:{MEMBER[1]}")
    protocol = service.transport._datagram
    fake = CountingSocket()
    protocol.transport.socket = fake
    receive = protocol.datagramReceived
    for seq in range(args.warmup):
        receive(request(args.kind, seq), MEMBER)
    datas = [request(args.kind, args.warmup + seq) for seq in range(args.requests)]
    before = fake.sent
    started = time.process_time()
    for data in datas:
        receive(data, MEMBER)
    spent = time.process_time() - started
    answered = fake.sent - before
    if answered != args.requests:
        raise SystemExit(f"{answered} of {args.requests} requests answered")
    implementation = sys.implementation.name
    print(f"{args.kind}: {spent / args.requests * 1e6:.1f} µs of CPU per request ({implementation}, "
          f"{args.requests:,} requests after {args.warmup:,} of warm-up)")
    if args.profile:
        datas = [request(args.kind, args.warmup + args.requests + seq) for seq in range(args.requests)]
        profile = cProfile.Profile()
        profile.enable()
        for data in datas:
            receive(data, MEMBER)
        profile.disable()
        pstats.Stats(profile).sort_stats("tottime").print_stats(args.top)


def main() -> None:
    """Start the node, measure once it listens, stop."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--kind", choices=("htable", "channel"), default="htable")
    parser.add_argument("--requests", type=int, default=50000)
    parser.add_argument("--warmup", type=int, default=20000)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    service = DMQService(f"sip:{HOST}:{PORT}", ping_interval=3600)
    service.register_peer(HTablePeer(tables=["t"]))
    failed: list[BaseException] = []

    def run() -> None:
        try:
            measure(service, args)
        except BaseException as e:  # reported after the reactor stops
            failed.append(e)
        reactor.stop()

    service.startService()
    reactor.callWhenRunning(lambda: service.when_listening().addCallback(lambda _: run()))
    reactor.run()
    if failed:
        raise failed[0]


if __name__ == "__main__":
    main()
