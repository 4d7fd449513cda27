"""
The seeds of a node (Kamailio's ``notification_address``): the nodes it joins
through, kept current when they are given by host name.

A seed given by IP address is a node of the list from the start.  A seed
given by host name becomes the node(s) of the address(es) the name resolves
to: its first address, or with ``multi_notify`` every address of the first
seed's name (SRV targets first, at most :data:`MAX_SEEDS`).  :meth:`refresh`
resolves the names again (the notification peer calls it before every join
attempt, whenever the node is alone, and every few ping intervals); an
address the name no longer gives stops being a seed, so a node that moved to
a new address times out at the old one and leaves the list instead of
staying there twice.  A lookup that finds nothing changes nothing (a DNS
outage does not drop the seeds).
"""

from __future__ import annotations

import ipaddress
from typing import Callable, Optional

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from dmq.node import Node, NodeKey, NodeListError, NodeStatus
from dmq.nodelist import NodeList
from dmq.sip.uri import SIPURI

__all__ = ["MAX_SEEDS", "Resolver", "Seeds"]

log = Logger()

MAX_SEEDS = 30
"""The most addresses ``multi_notify`` turns into seeds (as Kamailio)."""

Resolver = Callable[[str], "Deferred[list[str]]"]
"""A host name -> a Deferred list of its IP addresses (empty when it has none)."""


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


class Seeds:
    """
    The configured notification addresses and the seed nodes they give.

    :param uris: the ``notification_address`` URIs, in order.
    :param nodes: the node list the seed nodes live in.
    :param resolver: looks host names up (off the reactor thread).
    :param multi_notify: every address of the first seed's name is a seed.
    :param on_added: called with each node that becomes a seed.
    """

    def __init__(
        self,
        uris: list[SIPURI],
        nodes: NodeList,
        resolver: Optional[Resolver],
        multi_notify: bool = False,
        on_added: Optional[Callable[[Node], None]] = None,
    ) -> None:
        self.uris = uris
        self.nodes = nodes
        self.resolver = resolver
        self.multi_notify = multi_notify
        self.on_added = on_added
        self._given: dict[int, set[NodeKey]] = {}
        self.lookups = 0

    @property
    def named(self) -> bool:
        """Whether some seed is given by host name (and so needs :meth:`refresh`)."""
        return any(not _is_ip(uri.host) for uri in self.uris)

    def current(self) -> list[Node]:
        """The seed nodes of the list."""
        return [n for n in self.nodes if n.seed and not n.local]

    def add_addresses(self) -> None:
        """Make the seeds given by IP address nodes of the list (at once, no lookup)."""
        for index, uri in enumerate(self.uris):
            if _is_ip(uri.host):
                self._update(index, uri, [uri.host.strip("[]")])

    def refresh(self) -> "Deferred[None]":
        """Resolve the seeds given by host name again and update their nodes; fires when all are done."""
        lookups = []
        for index, uri in enumerate(self.uris):
            if _is_ip(uri.host):
                continue
            if self.multi_notify and index > 0:
                log.warn("multi_notify: only the first notification address is resolved; {uri} is not", uri=str(uri))
                continue
            lookups.append(self._lookup(index, uri))
        return defer.gatherResults(lookups).addCallback(lambda _: None)

    def _lookup(self, index: int, uri: SIPURI) -> "Deferred[None]":
        if self.resolver is None:
            log.warn("cannot resolve the notification address {uri}: no resolver", uri=str(uri))
            return defer.succeed(None)
        self.lookups += 1
        d = defer.maybeDeferred(self.resolver, uri.host)

        def found(addresses: list[str]) -> None:
            if not addresses:
                log.warn("the notification address {uri} resolves to nothing now; its seeds stay", uri=str(uri))
                return
            self._update(index, uri, addresses[:MAX_SEEDS] if self.multi_notify else addresses[:1])

        def failed(failure: object) -> None:
            log.warn("cannot resolve the notification address {uri}: {reason}", uri=str(uri), reason=str(failure))

        return d.addCallbacks(found, failed)

    def _update(self, index: int, uri: SIPURI, addresses: list[str]) -> None:
        """Make ``addresses`` the seeds given by ``uri``; those it gave before and not now stop being seeds."""
        keys: set[NodeKey] = set()
        for address in addresses:
            host = f"[{address}]" if ":" in address else address
            try:
                node = Node(host, uri.port, uri.transport, status=NodeStatus.NOT_ACTIVE, seed=True)
            except NodeListError as e:
                log.error("ignoring notification address {uri} ({address}): {reason}", uri=str(uri), address=address, reason=str(e))
                continue
            if node.key == self.nodes.local.key:
                log.info("ignoring notification address {uri}: it is this node", uri=str(uri))
                continue
            listed = self.nodes.get(node.key)
            if listed is None:
                listed = self.nodes.add(node)
            keys.add(listed.key)
            if not listed.seed or listed is node:
                listed.seed = True
                if uri.host.strip("[]") != address:
                    log.info("notification address {uri} is {address}", uri=str(uri), address=address)
                if self.on_added is not None:
                    self.on_added(listed)
        for key in self._given.get(index, set()) - keys:
            gone = self.nodes.get(key)
            if gone is not None and not any(key in given for i, given in self._given.items() if i != index):
                gone.seed = False
                log.info(
                    "{uri} no longer resolves to {node}: it is no longer a seed, and leaves the list once it stops answering",
                    uri=str(uri),
                    node=str(gone.uri),
                )
        self._given[index] = keys
