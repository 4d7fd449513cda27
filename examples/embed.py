"""
Embed a DMQ node in a Twisted program.

Creates a :class:`dmq.DMQService`, registers its own peer (the notice board
of ``custom_peer.py``), joins the cluster through a seed, broadcasts one
notice and prints what every node answered::

    python examples/embed.py --server-address sip:127.0.0.1:5070 \\
        --seed sip:127.0.0.1:5060 --message "hello"

With ``--stay`` it keeps running (and answering) until interrupted.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from twisted.internet import defer, task

from custom_peer import NoticeBoardPeer
from dmq import DMQService


def parse(argv: list[str]) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1] if __doc__ else None)
    parser.add_argument("--server-address", default="sip:127.0.0.1:5070", help="this node's address")
    parser.add_argument("--seed", action="append", default=[], help="a node to join through (repeatable)")
    parser.add_argument("--message", default="hello from embed.py", help="the notice to broadcast")
    parser.add_argument("--ping-interval", type=int, default=5)
    parser.add_argument("--join-timeout", type=float, default=10.0, help="seconds to wait for the first node list")
    parser.add_argument("--stay", action="store_true", help="keep running after the broadcast")
    return parser.parse_args(argv)


async def run(reactor: Any, args: argparse.Namespace) -> None:
    """Start the node, wait until it joined, broadcast, report, stop."""
    node = DMQService(args.server_address, args.seed, ping_interval=args.ping_interval, reactor=reactor)
    board = node.register_peer(NoticeBoardPeer())
    node.add_event_listener(lambda event: print(f"{event.kind.value}: {event.node.uri}", flush=True))
    node.startService()
    await node.when_listening()
    print(f"listening as {node.nodes.local.uri}", flush=True)
    if args.seed:
        ready = node.when_ready()
        ready.addTimeout(args.join_timeout, reactor)
        await ready
        print(f"joined: {len(node.nodes)} node(s) known", flush=True)
    results = await board.post(args.message)
    for peer_node, response in results:
        print(f"{peer_node.uri} answered {response.code} {response.reason}", flush=True)
    if args.stay:
        await defer.Deferred()  # until Ctrl-C
    await node.stopService()


def main(argv: list[str]) -> None:
    """Run :func:`run` under the reactor."""
    args = parse(argv)
    task.react(lambda reactor: defer.ensureDeferred(run(reactor, args)))


if __name__ == "__main__":
    main(sys.argv[1:])
