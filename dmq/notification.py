"""
The notification peer: cluster membership on the wire (protocol.md section 4).

It joins through the seeds (``notification_address``), answers node-list
requests with this node's list and re-broadcasts what it learnt, pings every
known node every ``ping_interval`` seconds, and applies the 408 rules when a
node stops answering.  The membership state and its rules live in
:class:`dmq.nodelist.NodeList`; this module drives it from the network and a
``LoopingCall`` on the service's clock.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional, Union

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from dmq.errors import one_line
from dmq.node import Node, NodeListError, NodeStatus
from dmq.nodelist import TimeoutPolicy
from dmq.peer import DMQMessage, Peer, PeerError, PeerResponse
from dmq.sip.message import Response
from dmq.sip.uri import SIPURI

if TYPE_CHECKING:
    from dmq.service import DMQService

__all__ = ["NotificationPeer", "DEFAULT_CHANNEL", "JOIN_MAX_FORWARDS", "MAX_SEEDS"]

log = Logger()

DEFAULT_CHANNEL = "notification_peer"
JOIN_MAX_FORWARDS = 2
"""Max-Forwards of the join request; pings and other traffic use 1."""
MAX_SEEDS = 30
"""The most addresses ``multi_notify`` turns into seeds."""

Resolver = Callable[[str], "Deferred[list[str]]"]


class NotificationPeer(Peer):
    """
    Membership: join, merge, re-broadcast, pings, timeouts, leave.

    :param channel: the ``notification_channel``.
    :param seeds: the ``notification_address`` URIs.
    :param ping_interval: seconds between pings (Kamailio's minimum is 5).
    :param policy: what a 408 does (``remove_inactive``, fail counting).
    :param multi_notify: resolve the first seed's host name (SRV, then A,
        then AAAA) and use every address found as a seed.
    :param resolver: for ``multi_notify``: a callable taking a host name and
        returning a Deferred list of IP addresses (default: dnspython in a
        thread, see :mod:`dmq.resolve`).
    :param join_retry: seconds between join attempts while no seed answers.
    """

    description = "node-list exchange (cluster membership)"

    def __init__(
        self,
        channel: str = DEFAULT_CHANNEL,
        seeds: Iterable[Union[str, SIPURI]] = (),
        ping_interval: float = 60,
        policy: TimeoutPolicy = TimeoutPolicy(),
        multi_notify: bool = False,
        resolver: Optional[Resolver] = None,
        join_retry: Optional[float] = None,
    ) -> None:
        super().__init__(channel)
        self.seed_uris = [s if isinstance(s, SIPURI) else SIPURI.parse(s) for s in seeds]
        self.ping_interval = ping_interval
        self.policy = policy
        self.multi_notify = multi_notify
        self.resolver = resolver
        self.join_retry = join_retry if join_retry is not None else min(ping_interval, 5.0)
        self._pinger: Optional[LoopingCall] = None
        self._retry: Optional[IDelayedCall] = None
        self._joining = False
        self.joins = 0
        self.pings = 0

    # -- life cycle -------------------------------------------------------------

    @property
    def svc(self) -> "DMQService":
        """The service (this peer is useless without one)."""
        return self._svc()

    def startService(self) -> None:  # noqa: N802
        """Add the seeds, join, start pinging."""
        super().startService()
        svc = self.svc
        for uri in self.seed_uris:
            self._add_seed(uri)
        if self.multi_notify and self.seed_uris:
            d = self._resolve_seeds(self.seed_uris[0])
            d.addCallback(lambda _: self.join())
        else:
            svc.clock.callLater(0, self.join)
        self._pinger = LoopingCall(self._tick)
        self._pinger.clock = svc.clock
        loop = self._pinger.start(self.ping_interval, now=False)
        loop.addErrback(lambda f: log.failure("the ping loop stopped", f))

    def stopService(self) -> "Deferred[Any]":  # noqa: N802
        """Stop pinging and tell the active nodes this node leaves."""
        super().stopService()
        self.stop_pinging()
        return self.leave()

    def stop_pinging(self) -> None:
        """Stop the ping loop and any pending join attempt."""
        if self._pinger is not None and self._pinger.running:
            self._pinger.stop()
        self._pinger = None
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None

    def _add_seed(self, uri: SIPURI) -> Optional[Node]:
        svc = self.svc
        try:
            node = Node.from_uri(uri, status=NodeStatus.NOT_ACTIVE, seed=True)
        except NodeListError as e:
            log.error("ignoring notification address {uri}: {reason}", uri=str(uri), reason=str(e))
            return None
        if node.key == svc.nodes.local.key:
            log.info("ignoring notification address {uri}: it is this node", uri=str(uri))
            return None
        listed = svc.nodes.add(node)
        listed.seed = True
        self._check_own_ip(listed)
        return listed

    def _check_own_ip(self, seed: Node) -> None:
        """
        Warn when ``seed`` is on this node's IP address (another port):
        Kamailio 5.8 and later find an unknown node of a node list by IP
        alone, so a Kamailio seed there would never list this node.  A host
        name is looked up in the reactor's resolver thread.
        """
        local = self.svc.nodes.local

        def ip_of(host: str) -> "Deferred[Optional[str]]":
            ip = _ip(host.strip("[]"))
            if ip is not None:
                return defer.succeed(ip)
            d: Deferred[Any] = defer.maybeDeferred(self.svc.reactor.resolve, host)
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

    def _resolve_seeds(self, uri: SIPURI) -> "Deferred[None]":
        from dmq.resolve import resolve_all

        resolver = self.resolver or resolve_all
        d = defer.maybeDeferred(resolver, uri.host)

        def found(addresses: list[str]) -> None:
            for address in addresses[:MAX_SEEDS]:
                host = f"[{address}]" if ":" in address else address
                self._add_seed(uri.replace(host=host, user=None))
            log.info(
                "multi_notify: {name} gave {count} seed(s)", name=uri.host, count=min(len(addresses), MAX_SEEDS)
            )

        return d.addCallbacks(
            found,
            lambda f: log.warn("multi_notify: cannot resolve {name}: {reason}", name=uri.host, reason=f.getErrorMessage()),
        )

    # -- join -------------------------------------------------------------------

    def seeds(self) -> list[Node]:
        """The seed nodes in the list."""
        return [n for n in self.svc.nodes if n.seed and not n.local]

    def join(self) -> "Deferred[bool]":
        """
        Send this node's list to every seed (Max-Forwards 2) and merge the
        answers.  Fires with whether a seed answered 200; while none does,
        another attempt follows after ``join_retry`` seconds.
        """
        svc = self.svc
        self._retry = None
        seeds = self.seeds()
        if not seeds:
            svc._alone()
            return defer.succeed(False)
        self.joins += 1
        self._joining = True
        body = svc.nodes.format_body()
        attempts = [self._exchange(node, body, JOIN_MAX_FORWARDS) for node in seeds]
        d = defer.gatherResults(attempts)

        def done(results: list[bool]) -> bool:
            self._joining = False
            joined = any(results)
            if not joined:
                svc._alone()
                if self.running and (self._retry is None or not self._retry.active()):
                    log.info("no seed answered; joining again in {s} s", s=self.join_retry)
                    self._retry = svc.clock.callLater(self.join_retry, self.join)
            return joined

        return d.addCallback(done)

    # -- exchanges ----------------------------------------------------------------

    def _exchange(self, node: Node, body: bytes, max_forwards: int) -> "Deferred[bool]":
        """Send ``body`` to ``node``; apply the reply (200 merges, 408 times out)."""
        svc = self.svc
        sent_at = svc.clock.seconds()
        d = svc.send_message(self, body, node, "text/plain", max_forwards=max_forwards)

        def answered(response: Response) -> bool:
            now = svc.clock.seconds()
            if response.code == 200:
                svc._record_rtt(node, now - sent_at)
                svc._emit(svc.nodes.mark_reply(node, now))
                self._merge(response.body, node, now, from_request=False)
                return True
            if response.code == 408:
                if not self.running:
                    return False  # stopping: the transactions were cut short, nobody timed out
                listed = svc.nodes.get(node.key)
                if listed is not None and listed.last_seen is not None and listed.last_seen >= sent_at:
                    # The node answered something sent later: this timeout is stale.
                    return False
                outcome = svc.nodes.mark_timeout(node, now, self.policy)
                svc._emit(outcome.events)
                if outcome.removed:
                    log.info("node {uri} removed after a timeout", uri=str(node.uri))
            else:
                log.info(
                    "node {uri} answered the node list with {code} {reason}",
                    uri=str(node.uri),
                    code=response.code,
                    reason=response.reason,
                )
            return False

        return d.addCallback(answered)

    def _merge(self, body: bytes, sender: Optional[Node], now: float, from_request: bool) -> Any:
        svc = self.svc
        try:
            result = svc.nodes.merge_body(body, now, sender)
        except NodeListError as e:
            log.warn(
                "bad node list from {sender}: {reason}",
                sender=str(sender.uri) if sender is not None else "?",
                reason=str(e),
            )
            if from_request:
                raise PeerError(400, f"Bad Request (node list: {one_line(str(e))})") from None
            return None
        svc._emit(result.events)
        for node in result.added:
            log.info("node {uri} joined ({status})", uri=str(node.uri), status=node.status.value)
        svc._node_list_received()
        return result

    def _tick(self) -> None:
        # The loop must not wait for answers: a silent node takes 64*T1.
        self.ping()

    def ping(self) -> "Deferred[list[bool]]":
        """
        Send this node's list (Max-Forwards 1) to every known node, whatever
        its status; when the list holds only this node, join instead.
        """
        svc = self.svc
        others = svc.nodes.others()
        if not others:
            if self._joining or (self._retry is not None and self._retry.active()):
                return defer.succeed([])
            return self.join().addCallback(lambda joined: [joined])
        self.pings += 1
        body = svc.nodes.format_body()
        return defer.gatherResults([self._exchange(node, body, 1) for node in others])

    def broadcast(self, max_forwards: int = 1, leaving: bool = False) -> "Deferred[list[bool]]":
        """
        Send this node's list to every active node but this one; replies are
        merged and timeouts applied as for a ping.
        """
        svc = self.svc
        body = svc.nodes.format_body(leaving=leaving)
        return defer.gatherResults([self._exchange(node, body, max_forwards) for node in svc.nodes.active()])

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
        A node-list request: merge it, re-broadcast what changed (with
        Max-Forwards - 1, to every active node but this one), answer 200 with
        this node's list.  An empty body is a read-only query.
        """
        svc = self.svc
        if message.body.strip():
            now = svc.clock.seconds()
            sender = message.node
            if sender is None and message.from_uri is not None:
                try:
                    sender = Node.from_uri(message.from_uri)
                except NodeListError:
                    sender = None
            result = self._merge(message.body, sender, now, from_request=True)
            forwards = (message.max_forwards if message.max_forwards is not None else 1) - 1
            if result is not None and result.changed_anything and forwards > 0:
                self.broadcast(forwards)
        return PeerResponse(200, body=svc.nodes.format_body(), content_type="text/plain")


def _ip(text: str) -> Optional[str]:
    """``text`` as a normalised IP address, or ``None`` when it is none."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None
