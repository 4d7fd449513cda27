"""
A process running one or more dmq nodes for the benchmarks, driven by ``bench/run.py``.

Every ``--node HOST:PORT`` is a :class:`dmq.DMQService` of its own, all in one reactor
(the large-cluster runs put many nodes in a few processes). Each node may carry an
:class:`dmq.peers.htable.HTablePeer` with table ``t`` (``--htable``), and answer the load
client's trigger (``--trigger``): ``MESSAGE sip:set@node`` with the key in ``X-Key`` and the
value as body sets the key through ``HTablePeer.set`` and is answered 200 at once, the way
the bench's Kamailio script answers it after ``$sht(t=>key) = value``.

The process writes lines on stdout, each with the reactor's wall-clock time:

- ``LISTENING <time>`` once every node's socket is bound;
- ``ACTIVE <index> <time> <active> <known>`` whenever a node's count of active other nodes
  (and of other nodes it knows) changes, pushed from the membership events;
- ``STATUS <index> <time> <status>`` whenever the status a node lists for ``--watch-uri``
  changes (``absent`` once it is no longer listed).

Like ``twistd dmq``, the process runs a :class:`dmq.heap.IdleCollector`.

It stops when its standard input closes.

Usage: ``python bench/node.py --node HOST:PORT [--node ...] [--seed URI ...]
[--ping-interval S] [--t1 S] [--t2 S] [--htable] [--trigger] [--watch-uri URI]``
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Optional

from twisted.internet import protocol, stdio

from dmq import DMQService
from dmq.heap import IdleCollector
from dmq.peers.htable import HTablePeer
from dmq.sip import make_response


def trigger_hook(peer: HTablePeer) -> Any:
    """A request hook that turns ``MESSAGE sip:set@...`` (key in ``X-Key``) into ``peer.set``."""

    def hook(request: Any, source: Any) -> Any:
        key = request.headers.get("X-Key")
        if request.method != "MESSAGE" or not key:
            return make_response(request, 404, "Not here")
        peer.set("t", key, request.body.decode("utf-8", "replace"))
        return make_response(request, 200)

    return hook


class Reporter:
    """Writes a node's membership changes as ``ACTIVE`` and ``STATUS`` lines."""

    def __init__(self, index: int, service: DMQService, reactor: Any, watch_uri: Optional[str]) -> None:
        """Report on ``service`` (the ``index``-th node of this process), and on ``watch_uri`` if given."""
        self.index = index
        self.service = service
        self.reactor = reactor
        self.watch_uri = watch_uri
        self.last_counts: Optional[tuple[int, int]] = None
        self.last_status: Optional[str] = None

    def changed(self, event: object = None) -> None:
        """Write what changed since the last line."""
        now = self.reactor.seconds()
        nodes = self.service.nodes
        counts = (len(nodes.active()), len(nodes.others()))
        if counts != self.last_counts:
            self.last_counts = counts
            print(f"ACTIVE {self.index} {now!r} {counts[0]} {counts[1]}", flush=True)
        if self.watch_uri is not None:
            node = nodes.get(self.watch_uri)
            status = node.status.value if node is not None else "absent"
            if status != self.last_status:
                self.last_status = status
                print(f"STATUS {self.index} {now!r} {status}", flush=True)


class StopOnEOF(protocol.Protocol):
    """Stops the reactor when standard input closes."""

    def __init__(self, reactor: Any) -> None:
        """Stop ``reactor``."""
        self.reactor = reactor

    def connectionLost(self, reason: object = None) -> None:  # noqa: N802
        """Standard input closed: stop."""
        if self.reactor.running:
            self.reactor.stop()


def main(argv: Optional[list[str]] = None) -> None:
    """Start the nodes and run until standard input closes."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").strip().splitlines()[0])
    parser.add_argument("--node", action="append", required=True, help="HOST:PORT of a node; repeatable")
    parser.add_argument("--seed", action="append", default=[], help="notification address (sip:HOST:PORT)")
    parser.add_argument("--ping-interval", type=float, default=5)
    parser.add_argument("--t1", type=float, default=0.5)
    parser.add_argument("--t2", type=float, default=4.0)
    parser.add_argument("--htable", action="store_true", help="replicate table t")
    parser.add_argument("--trigger", action="store_true", help="answer MESSAGE sip:set@ by setting a key")
    parser.add_argument("--watch-uri", help="report the status every node lists for this node")
    args = parser.parse_args(argv)

    from twisted.internet import defer, reactor

    services = []
    for index, hostport in enumerate(args.node):
        uri = f"sip:{hostport}"
        seeds = [seed for seed in args.seed if seed != uri]
        service = DMQService(uri, seeds, ping_interval=args.ping_interval, t1=args.t1, t2=args.t2, reactor=reactor)
        if args.htable:
            peer = HTablePeer(tables=["t"])
            service.register_peer(peer)
            if args.trigger:
                service.request_hook = trigger_hook(peer)
        reporter = Reporter(index, service, reactor, args.watch_uri)
        service.add_event_listener(reporter.changed)
        services.append((service, reporter))

    def listening(_: object) -> None:
        print(f"LISTENING {reactor.seconds()!r}", flush=True)
        for _service, reporter in services:
            reporter.changed()

    def failed(failure: Any) -> None:
        print("ERROR " + failure.getErrorMessage().replace("\n", " | "), flush=True)
        reactor.stop()

    for service, _reporter in services:
        service.startService()
    # One for the process, as twistd dmq runs it (collect_when_idle): the burst-memory readings
    # measure a node as it runs in service.
    linger = max(service.transactions.completed_servers.lifetime for service, _ in services)
    IdleCollector(reactor, linger=linger).startService()
    d = defer.gatherResults([service.when_listening() for service, _ in services], consumeErrors=True)
    d.addCallbacks(listening, failed)
    stdio.StandardIO(StopOnEOF(reactor), reactor=reactor)
    reactor.run()


if __name__ == "__main__":
    main()
