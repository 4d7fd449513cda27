"""
The notification peer: cluster membership on the wire (protocol.md section 4).

It joins through the seeds (``notification_address``), answers node-list
requests with this node's list and re-broadcasts what it learnt, pings every
known node every ``ping_interval`` seconds, and says when this node leaves.
The membership state and its rules live in :class:`dmq.nodelist.NodeList`,
and what their changes cause (events, readiness, the reply and timeout rules
applied to the answers) in :class:`dmq.membership.Membership`; this module
drives them from the network and a ``LoopingCall`` on the service's clock,
through the service's :class:`~dmq.interfaces.IPeerHost` side only.
"""

from __future__ import annotations

import ipaddress
import random
from typing import Any, Callable, Iterable, Optional, Union

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from dmq.errors import one_line
from dmq.node import Node, NodeListError, NodeStatus
from dmq.peer import DMQMessage, Peer, PeerError, PeerResponse
from dmq.seeds import Resolver, Seeds
from dmq.sip.message import Response
from dmq.sip.uri import SIPURI

__all__ = [
    "NotificationPeer", "DEFAULT_CHANNEL", "JOIN_MAX_FORWARDS", "HOP_BUDGET", "AMPLIFICATION", "SEED_REFRESH",
    "REBROADCAST_GAP",
]

log = Logger()

DEFAULT_CHANNEL = "notification_peer"
JOIN_MAX_FORWARDS = 2
"""Max-Forwards of the join request; pings and other traffic use 1."""
HOP_BUDGET = 2
"""The most Max-Forwards a received node-list request is taken to have: at most one re-broadcast follows."""
AMPLIFICATION = 3
"""A stranger's node-list request gets an answer of at most this many times its size."""
SERVER_PRODUCT = "dmq/"
"""How the ``User-Agent`` of a dmq node begins (``dmq/0.1.0``)."""
SEED_REFRESH = 10
"""Default: seeds given by host name are resolved again every this many ping intervals."""
REBROADCAST_GAP = 0.25
"""Seconds between two re-broadcasts at least: the changes of a burst of requests go out together."""


class NotificationPeer(Peer):
    """
    Membership: join, merge, re-broadcast, pings, timeouts, leave.

    :param channel: the ``notification_channel``.
    :param seeds: the ``notification_address`` URIs.
    :param ping_interval: seconds between pings (Kamailio's minimum is 5).
    :param multi_notify: resolve the first seed's host name (SRV, then A,
        then AAAA) and use every address found as a seed.
    :param resolver: looks up seeds given by host name: a callable taking a
        name and returning a Deferred list of IP addresses (default: the
        system resolver, and SRV with ``multi_notify``, in the reactor's
        thread pool; see :mod:`dmq.resolve`).
    :param join_retry: seconds between join attempts while no seed answers.
    :param seed_refresh: resolve seeds given by host name again every this
        many ping intervals (0: only before a join attempt, and whenever the
        node is alone).
    """

    exchanges_node_lists = True

    def __init__(
        self,
        channel: str = DEFAULT_CHANNEL,
        seeds: Iterable[Union[str, SIPURI]] = (),
        ping_interval: float = 60,
        multi_notify: bool = False,
        resolver: Optional[Resolver] = None,
        join_retry: Optional[float] = None,
        seed_refresh: int = SEED_REFRESH,
    ) -> None:
        super().__init__(channel)
        self.seed_uris = [s if isinstance(s, SIPURI) else SIPURI.parse(s) for s in seeds]
        self.ping_interval = ping_interval
        self.multi_notify = multi_notify
        self.resolver = resolver
        self.join_retry = join_retry if join_retry is not None else min(ping_interval, 5.0)
        self.seed_refresh = seed_refresh
        self._ticks = 0
        self._pinger: Optional[LoopingCall] = None
        self._first_ping: Optional[IDelayedCall] = None
        self._retry: Optional[IDelayedCall] = None
        self._joining = False
        self._rebroadcast: Optional[IDelayedCall] = None
        self._rebroadcast_at = float("-inf")
        self._rebroadcast_hops = 0
        self.joins = 0
        self.rebroadcasts = 0
        self.pings = 0
        self.refused_nodes = 0

    # -- life cycle -------------------------------------------------------------

    def startService(self) -> None:  # noqa: N802
        """Add the seeds, join, start pinging."""
        super().startService()
        service = self.service
        clock = service.clock
        resolver = self.resolver
        if resolver is None:
            from dmq.resolve import resolve_all

            def resolver(name: str) -> "Deferred[list[str]]":
                return resolve_all(name, srv=self.multi_notify, reactor=service.reactor)

        self._seeds = Seeds(self.seed_uris, service.nodes, resolver, self.multi_notify, self._check_own_ip)
        self._seeds.add_addresses()
        clock.callLater(0, self.join)
        self._pinger = LoopingCall(self._tick)
        self._pinger.clock = clock
        # Nodes started together would ping in step, every node at once: the first
        # ping comes at a random point of the second half of the first interval.
        self._first_ping = clock.callLater(self.ping_interval * random.uniform(0.5, 1.0), self._start_pinging)

    def _start_pinging(self) -> None:
        self._first_ping = None
        if self._pinger is not None and not self._pinger.running:
            loop = self._pinger.start(self.ping_interval, now=True)
            loop.addErrback(lambda f: log.failure("the ping loop stopped", f))

    def stopService(self) -> "Deferred[Any]":  # noqa: N802
        """Stop pinging and tell the active nodes this node leaves."""
        super().stopService()
        self.stop_pinging()
        return self.leave()

    def stop_pinging(self) -> None:
        """Stop the ping loop and any pending join attempt."""
        if self._first_ping is not None and self._first_ping.active():
            self._first_ping.cancel()
        self._first_ping = None
        if self._pinger is not None and self._pinger.running:
            self._pinger.stop()
        self._pinger = None
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        if self._rebroadcast is not None and self._rebroadcast.active():
            self._rebroadcast.cancel()
        self._rebroadcast = None

    def _check_own_ip(self, seed: Node) -> None:
        """
        Warn when ``seed`` is on this node's IP address (another port):
        Kamailio 5.8 and later find an unknown node of a node list by IP
        alone, so a Kamailio seed there would never list this node.  A host
        name is looked up in the reactor's resolver thread.
        """
        local = self.service.nodes.local

        def ip_of(host: str) -> "Deferred[Optional[str]]":
            ip = _ip(host.strip("[]"))
            if ip is not None:
                return defer.succeed(ip)
            d: Deferred[Any] = defer.maybeDeferred(self.service.reactor.resolve, host)
            return d.addCallbacks(_ip, lambda _: None)

        def compare(ips: list[Optional[str]]) -> None:
            seed_ip, own_ip = ips
            if seed_ip is not None and seed_ip == own_ip:
                log.warn(
                    "seed {seed} is on this node's own IP address {ip}: Kamailio 5.8 and later tell nodes apart "
                    "by IP and would never list this node; give each node its own IP address",
                    seed=str(seed.uri),
                    ip=own_ip,
                )

        defer.gatherResults([ip_of(seed.host), ip_of(local.host)]).addCallback(compare)

    # -- join -------------------------------------------------------------------

    def seeds(self) -> list[Node]:
        """The seed nodes in the list."""
        return [n for n in self.service.nodes if n.seed and not n.local]

    def join(self) -> "Deferred[bool]":
        """
        Resolve the seeds given by host name again, then send this node's
        list to every seed (Max-Forwards 2) and merge the answers.  Fires
        with whether a seed answered 200; while none does, another attempt
        follows after ``join_retry`` seconds.
        """
        self._retry = None
        self._joining = True
        if self._seeds.named:
            return self._seeds.refresh().addCallback(lambda _: self._join_seeds())
        return self._join_seeds()

    def _join_seeds(self) -> "Deferred[bool]":
        service = self.service
        seeds = self.seeds()
        if not seeds:
            self._joining = False
            service.membership.alone()
            if self._seeds.named:
                self._retry_later()
            return defer.succeed(False)
        self.joins += 1
        body = self._own_list()
        attempts = [self._exchange(node, body, JOIN_MAX_FORWARDS) for node in seeds]
        d = defer.gatherResults(attempts)

        def done(results: list[bool]) -> bool:
            self._joining = False
            joined = any(results)
            if not joined:
                service.membership.alone()
                self._retry_later()
            return joined

        return d.addCallback(done)

    def _retry_later(self) -> None:
        if self.running and (self._retry is None or not self._retry.active()):
            log.info("no seed answered; joining again in {s} s", s=self.join_retry)
            self._retry = self.service.clock.callLater(self.join_retry, self.join)

    # -- exchanges ----------------------------------------------------------------

    def _exchange(self, node: Node, body: bytes, max_forwards: int) -> "Deferred[bool]":
        """
        Send ``body`` to ``node`` and merge the body of a 200.  Fires with
        whether the node answered 200.  (The service has applied the reply or
        timeout rules to the node before this runs.)
        """
        d = self.service.send_message(self, body, node, "text/plain", max_forwards=max_forwards)

        def answered(response: Response) -> bool:
            if response.code == 200:
                listed = self.service.nodes.get(node.key)
                self._merge(response.body, node, from_request=False, trusted=listed is not None or node.seed)
                return True
            if response.code != 408:
                log.info(
                    "node {uri} answered the node list with {code} {reason}",
                    uri=str(node.uri),
                    code=response.code,
                    reason=response.reason,
                )
            return False

        return d.addCallback(answered)

    def _merge(self, body: bytes, sender: Optional[Node], from_request: bool, trusted: bool = True) -> Any:
        service = self.service
        try:
            result = service.nodes.merge_body(body, service.clock.seconds(), sender, trusted)
        except NodeListError as e:
            log.warn(
                "bad node list from {sender}: {reason}",
                sender=str(sender.uri) if sender is not None else "?",
                reason=str(e),
            )
            if from_request:
                raise PeerError(400, f"Bad Request (node list: {one_line(str(e))})") from None
            return None
        service.membership.publish(result.events)
        if result.refused:
            self.refused_nodes += result.refused
            log.debug(
                "refused {count} node(s) of a list from {sender}",
                count=result.refused,
                sender=str(sender.uri) if sender is not None else "?",
            )
        for node in result.added:
            log.info("node {uri} joined ({status})", uri=str(node.uri), status=node.status.value)
        service.membership.node_list_received()
        return result

    def _tick(self) -> None:
        # The loop must not wait for answers: a silent node takes 64*T1.
        self._ticks += 1
        if self.seed_refresh and self._ticks % self.seed_refresh == 0 and self._seeds.named:
            self._seeds.refresh()
        self.ping()

    def ping(self) -> "Deferred[list[bool]]":
        """
        Send this node's list (Max-Forwards 1) to every known node, whatever
        its status; when the list holds only this node, join instead.

        Every list this node sends, here and elsewhere, is cut to the
        service's ``max_body_size`` (this node's line and the newest nodes
        that fit), so that it always goes in one datagram.
        """
        others = self.service.nodes.others()
        if not others:
            if self._joining or (self._retry is not None and self._retry.active()):
                return defer.succeed([])
            return self.join().addCallback(lambda joined: [joined])
        self.pings += 1
        body = self._own_list()
        return defer.gatherResults([self._exchange(node, body, 1) for node in others])

    def broadcast(
        self, max_forwards: int = 1, leaving: bool = False, except_node: Optional[Node] = None
    ) -> "Deferred[list[bool]]":
        """
        Send this node's list to every active node but this one (and
        ``except_node``); replies are merged and timeouts applied as for a
        ping.
        """
        service = self.service
        body = self._own_list(leaving)
        targets = service.targets(except_node)
        return defer.gatherResults([self._exchange(node, body, max_forwards) for node in targets])

    def _own_list(self, leaving: bool = False) -> bytes:
        """This node's list as it sends it: cut to the service's ``max_body_size`` (one datagram)."""
        service = self.service
        return service.nodes.format_body(leaving=leaving, limit=service.max_body_size)

    def rebroadcast(self, max_forwards: int, except_node: Optional[Node] = None) -> None:
        """
        Send this node's list on to the active nodes after a received request
        changed it: at once, unless one went less than
        :data:`REBROADCAST_GAP` seconds ago; then one more goes when the gap
        is over, carrying every change made meanwhile.  A burst of joins or
        leaves causes a few re-broadcasts per second, not one per change.

        ``except_node`` (a stranger, which gets the whole list on its own)
        is left out of a re-broadcast that goes at once.  A later one goes
        to it too: the list it got then lacks the nodes that joined after
        it, and it is a member by then.
        """
        self._rebroadcast_hops = max(self._rebroadcast_hops, max_forwards)
        if self._rebroadcast is not None:
            return
        clock = self.service.clock
        wait = self._rebroadcast_at + REBROADCAST_GAP - clock.seconds()
        if wait > 0:
            self._rebroadcast = clock.callLater(wait, self._send_rebroadcast, None)
        else:
            self._send_rebroadcast(except_node)

    def _send_rebroadcast(self, except_node: Optional[Node]) -> None:
        self._rebroadcast = None
        self._rebroadcast_at = self.service.clock.seconds()
        hops, self._rebroadcast_hops = self._rebroadcast_hops, 0
        self.rebroadcasts += 1
        body = self._own_list()
        for node in self.service.targets(except_node):
            self._exchange(node, body, hops)

    def leave(self) -> "Deferred[Any]":
        """
        Tell every active node that this node leaves (own line
        ``status=disabled``, Max-Forwards 1), so they drop it at once.
        Fires when all answered or timed out; a stopping service waits for
        that at most its ``stop_timeout``.
        """
        return self.broadcast(1, leaving=True)

    # -- inbound ------------------------------------------------------------------

    def handle_message(self, message: DMQMessage) -> PeerResponse:
        """
        A node-list request: merge it, re-broadcast what changed
        (:meth:`rebroadcast`), answer 200 with this node's list.  An empty body is a read-only query.

        A sender that is not a member (its From names no listed node) adds at
        most itself, is left out of the re-broadcast, and its answer is cut
        to :data:`AMPLIFICATION` times the size of its request (this node's
        line always fits): one datagram from a stranger never makes this
        node send much, nor to more than the address it claims.  The
        re-broadcast goes with Max-Forwards - 1, the received value first
        clamped to :data:`HOP_BUDGET`, so a request causes at most one.

        A ping (Max-Forwards 1) from a member that is a dmq node is answered
        200 with no body: that node gets this node's list in this node's own
        pings, and the answer only tells it that this node lives, which halves
        what a large cluster sends and parses.  Kamailio nodes, joins and
        strangers always get the list.
        """
        service = self.service
        member = message.node
        if message.body.strip():
            sender = member
            if sender is None and message.from_uri is not None:
                try:
                    sender = Node.from_uri(message.from_uri)
                except NodeListError:
                    sender = None
            result = self._merge(message.body, sender, from_request=True, trusted=member is not None)
            hops = min(message.max_forwards if message.max_forwards is not None else 1, HOP_BUDGET)
            if result is not None and result.changed_anything and hops > 1:
                self.rebroadcast(hops - 1, except_node=None if member is not None else sender)
            if member is None and result is not None and result.added:
                # The stranger is a member now: its answer was cut, so the whole list
                # follows as a request of its own, once, to the one address it claims.
                joined = result.added[0]
                body = self._own_list()
                service.clock.callLater(0, self._exchange, joined, body, 1)
        if member is not None and message.max_forwards == 1 and (member.agent or "").startswith(SERVER_PRODUCT):
            # A dmq member's ping: it gets this node's list in this node's own pings, and merges the
            # answer only to learn that this node lives; Kamailio nodes and joins always get the list.
            return PeerResponse(200)
        limit = service.max_body_size
        if member is None and message.request is not None:
            limit = min(limit, (AMPLIFICATION - 1) * len(message.request.to_bytes()))
        return PeerResponse(200, body=service.nodes.format_body(limit=limit), content_type="text/plain")


def _ip(text: str) -> Optional[str]:
    """``text`` as a normalised IP address, or ``None`` when it is none."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None
