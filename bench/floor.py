"""
The yardstick of the inbound bench: about the least a Twisted program can do to answer a KDMQ.

For each datagram it splits off the body, copies the request's Via, From, To, Call-ID and
CSeq lines into the answer, and answers ``200 OK`` on the ``htable`` and ``notification_peer``
channels (after decoding an htable set's JSON body into a dict) or ``404 Not Found`` on any
other. It checks nothing else: no transaction layer (a retransmission is applied again), no syntax
checks, no membership, no metrics. What a dmq node spends per message above this program is
the price of what it does and this program does not.

The process writes ``LISTENING <time>`` on stdout once its socket is bound, and stops when
standard input closes (as ``bench/node.py`` does).

Usage: ``python bench/floor.py --node HOST:PORT``
"""

from __future__ import annotations

import argparse
import json
from typing import Any, Optional

from twisted.internet import protocol, stdio

from node import StopOnEOF

COPIED = (b"via:", b"v:", b"from:", b"f:", b"to:", b"t:", b"call-id:", b"i:", b"cseq:")
"""The header lines an answer copies from its request (RFC 3261 8.2.6.2), full and compact names."""
CHANNELS = (b"htable", b"notification_peer")
"""The channels answered 200; any other is answered 404."""


class Floor(protocol.DatagramProtocol):
    """Answers each KDMQ datagram: 200 on a known channel (an htable set kept in :attr:`table`), 404 otherwise."""

    def __init__(self) -> None:
        """Start with an empty table."""
        self.table: dict[tuple[str, str], Any] = {}

    def answer(self, data: bytes) -> bytes:
        """The answer to the request ``data``."""
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        uri = lines[0].split(b" ", 2)[1]
        channel = uri[4:].partition(b"@")[0] if uri.startswith(b"sip:") else b""
        copied = [line for line in lines[1:] if line.split(b":", 1)[0].strip().lower() + b":" in COPIED]
        if channel not in CHANNELS:
            return b"\r\n".join([b"SIP/2.0 404 Not Found", *copied, b"Content-Length: 0", b"", b""])
        if channel == b"htable" and body:
            action = json.loads(body)
            self.table[(action["htname"], action["cname"])] = action.get("strval", action.get("intval"))
        return b"\r\n".join([b"SIP/2.0 200 OK", *copied, b"Content-Length: 0", b"", b""])

    def datagramReceived(self, data: bytes, addr: Any) -> None:  # noqa: N802
        """Answer ``data`` to where it came from."""
        self.transport.write(self.answer(data), addr)


def main(argv: Optional[list[str]] = None) -> None:
    """Listen on ``--node`` and answer until standard input closes."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").strip().splitlines()[0])
    parser.add_argument("--node", required=True, help="HOST:PORT to answer on")
    args = parser.parse_args(argv)
    host, _, port = args.node.rpartition(":")

    from twisted.internet import reactor

    reactor.listenUDP(int(port), Floor(), interface=host)  # type: ignore[attr-defined]
    print(f"LISTENING {reactor.seconds()!r}", flush=True)  # type: ignore[attr-defined]
    stdio.StandardIO(StopOnEOF(reactor), reactor=reactor)
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
