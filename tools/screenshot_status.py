"""Make ``docs/status.png``: the status page of a three-node cluster, as headless Chromium shows it.

    make status-screenshot                                   # about two minutes
    .venv/bin/python tools/screenshot_status.py --seconds 30 --out /tmp/status.png

Starts three DMQService nodes over loopback UDP, each on a 127.x address of its own, each
with an htable peer (tables ``t`` and ``bans``) and an ``orders`` channel; sends a varying
stream of messages so that the rate chart has something to draw; takes the third node down
and up again half-way so that the timeline has events; then screenshots the first node's
page (1200x800) with Debian's ``chromium``.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from twisted.internet import task, threads  # noqa: E402
from twisted.internet.defer import ensureDeferred  # noqa: E402

from dmq import CallbackPeer, DMQService, Peer, PeerResponse  # noqa: E402
from dmq.control import ControlAPI, make_site  # noqa: E402
from dmq.peers.htable import HTablePeer  # noqa: E402
from tests.browser import chromium, cluster_converged, run_chromium, start_cluster, stop_all  # noqa: E402
from tests.interop.kamailio import eventually  # noqa: E402


def peers() -> list[Peer]:
    """The peers of every node: a replicated table and an application channel."""
    return [HTablePeer(["t", "bans"]), CallbackPeer("orders", lambda message: PeerResponse(200))]


async def screenshot(reactor: Any, out: Path, seconds: float) -> None:
    """Run the cluster for ``seconds`` with traffic and one node's restart, then screenshot the first node's page."""
    binary = chromium()
    if binary is None:
        raise SystemExit("chromium is not installed (apt-get install chromium)")
    nodes: list[DMQService] = []
    port = None
    try:
        await start_cluster(reactor, nodes, peers=peers)
        first = nodes[0]
        port = reactor.listenTCP(0, make_site(ControlAPI(first)), interface="127.0.0.1")
        started = reactor.seconds()
        sent = 0

        def traffic() -> None:
            # A slow wave of messages: a few per tick, more and then fewer.
            nonlocal sent
            elapsed = reactor.seconds() - started
            for _ in range(int(2 + 2 * math.sin(elapsed / 12))):
                sent += 1
                table = first.get_peer("htable")
                assert isinstance(table, HTablePeer)
                table.set("t", f"caller-{sent % 40}", sent)
                nodes[1].bcast_message("orders", f"order {sent}".encode())

        loop = task.LoopingCall(traffic)
        loop.clock = reactor
        loop.start(0.1)
        await task.deferLater(reactor, seconds / 2, lambda: None)
        third = nodes[2]
        local = third.nodes.local
        await third.stopService()
        await task.deferLater(reactor, 3, lambda: None)
        again = DMQService(str(local.uri), [str(first.nodes.local.uri)], reactor=reactor, ping_interval=1, t1=0.1)
        for peer in peers():
            again.register_peer(peer)
        nodes[2] = again
        again.startService()
        await eventually(lambda: cluster_converged(nodes), timeout=10, reactor=reactor)
        await task.deferLater(reactor, seconds / 2, lambda: None)
        loop.stop()
        url = f"http://127.0.0.1:{port.getHost().port}/"
        await threads.deferToThread(run_chromium, binary, url, f"--screenshot={out}", "--window-size=1200,800")
        print(f"wrote {out}")
    finally:
        if port is not None:
            await port.stopListening()
        await stop_all(nodes)


def main() -> None:
    """Parse the arguments and run."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "status.png", help="where the PNG goes")
    parser.add_argument("--seconds", type=float, default=120, help="how long the cluster runs before the screenshot")
    args = parser.parse_args()
    task.react(lambda reactor: ensureDeferred(screenshot(reactor, args.out.resolve(), args.seconds)))


if __name__ == "__main__":
    main()
