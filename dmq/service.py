"""
:class:`DMQService`: one DMQ node, the public API of dmq.

The service owns the transports, the transaction layer, the node list, the
notification peer and the registered peers (each an ``IService`` child named
by its channel).  It dispatches every inbound ``KDMQ`` by its Request-URI
user to the peer of that channel and sends peers' messages to one node or to
all active ones::

    svc = DMQService(server_address="sip:127.0.0.1:5060",
                     notification_addresses=["sip:127.0.0.1:5061"])
    svc.register_peer(MyPeer("custom1"))
    svc.startService()
"""

from __future__ import annotations

import ipaddress
from typing import Any, Callable, Iterable, Optional, Union, cast

from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from dmq import __version__
from dmq.dispatch import ChannelStats, Dispatcher
from dmq.errors import ConfigurationError, DMQError, MessageTooLarge
from dmq.interfaces import IPeer, IPeerHost
from dmq.membership import EventListener, Membership
from dmq.node import Node, NodeKey, NodeStatus, server_address_uri
from dmq.nodelist import MAX_NEW_PER_LIST, MAX_NODES, NodeList, TimeoutPolicy
from dmq.notification import DEFAULT_CHANNEL, SEED_REFRESH, SERVER_PRODUCT, NotificationPeer
from dmq.peer import Peer, PeerResponse
from dmq.sip.address import UDP_HARD_LIMIT, UDP_MAX_SIZE, Address
from dmq.sip.build import RequestTemplate, build_request, make_response, via_value
from dmq.sip.client import server_of
from dmq.sip.message import Request, Response
from dmq.sip.parse import parse_message
from dmq.sip.transaction import LARGE_REQUEST, T1, T2, T4, Source, TransactionLayer
from dmq.sip.transport import SIPTransport, TLSSettings
from dmq.sip.uri import SIPURI

__all__ = ["DMQService", "ChannelStats", "SERVER_NAME", "HEADER_ROOM"]

log = Logger()

SERVER_NAME = f"{SERVER_PRODUCT}{__version__}"
"""The ``Server`` / ``User-Agent`` value."""

MAX_TEMPLATES = 4096
"""The most KDMQ templates kept (one per channel, node and kind); all are forgotten past it."""

STOP_TIMEOUT = 1.0
"""Default seconds a stopping node waits for answers to its leave announcement."""

HEADER_ROOM = 1024
"""Bytes kept for the start line and headers of a KDMQ when sizing a body to fit a datagram."""

RequestHook = Callable[[Request, Source], Union[Response, "Deferred[Response]", None]]


@implementer(IPeerHost)
class DMQService(MultiService):
    """
    A DMQ node.

    :param server_address: this node's address, as other nodes see it
        (``sip:host:port[;transport=tcp|tls]``); Kamailio's ``server_address``.
    :param notification_addresses: seed nodes to join through.
    :param notification_channel: the node-list channel.
    :param ping_interval: seconds between pings.
    :param remove_inactive: a node that stops answering becomes disabled
        (and is removed at the next timeout); when false, not active.
    :param fail_count_enabled: count timeouts per node (Kamailio 6.1).
    :param fail_count_threshold_not_active: timeouts before not active.
    :param fail_count_threshold_disabled: timeouts before disabled.
    :param init_with_single: run the peers' init hooks also when this node
        is alone (no seed, or no seed answered the first join).
    :param multi_notify: turn every address of the first seed's host name
        into a seed.
    :param seed_refresh: resolve seeds given by host name again every this
        many ping intervals (also before every join attempt and whenever the
        node is alone; 0: only then).
    :param max_nodes: the most nodes the node list holds, this one
        included; a received list adds none beyond it.
    :param max_nodes_per_list: the most nodes one received list may add.
    :param resolver: looks host names of seeds up: ``name -> Deferred list of
        IP addresses`` (default: the system resolver in a thread).
    :param listen: the interface to listen on (default: the host of
        ``server_address``; Kamailio's ``server_socket``).
    :param udp: listen on UDP.
    :param tcp: listen on TCP on the same port.
    :param tls: TLS settings, to listen on ``tls_port`` and speak TLS.
    :param stop_timeout: seconds :meth:`stopService` waits for the peers
        (the leave announcement's answers) before it stops the transactions
        and the transports anyway.
    :param t1: SIP timer T1 (seconds); the timeout of a request is 64*T1.
    :param udp_max_size: the largest datagram this node sends (bytes).  A
        larger message goes over TCP when this node has TCP, else it is
        refused here (513); Kamailio 5.8 and later drop datagrams of
        32,767 bytes or more.
    :param allow: when given, only requests from these networks (CIDR
        strings or addresses) are served; others get 403.
    :param request_hook: handles requests other than KDMQ (e.g. REGISTER);
        without one they get 405.
    :param reactor: the reactor (default: the global one).
    """

    def __init__(
        self,
        server_address: Union[str, SIPURI] = "sip:127.0.0.1:5060",
        notification_addresses: Iterable[Union[str, SIPURI]] = (),
        notification_channel: str = DEFAULT_CHANNEL,
        ping_interval: float = 60,
        remove_inactive: bool = True,
        fail_count_enabled: bool = False,
        fail_count_threshold_not_active: int = 0,
        fail_count_threshold_disabled: int = 1,
        init_with_single: bool = False,
        multi_notify: bool = False,
        seed_refresh: int = SEED_REFRESH,
        max_nodes: int = MAX_NODES,
        max_nodes_per_list: int = MAX_NEW_PER_LIST,
        listen: Optional[str] = None,
        udp: bool = True,
        tcp: bool = False,
        tls: Optional[TLSSettings] = None,
        tls_port: Optional[int] = None,
        t1: float = T1,
        t2: float = T2,
        t4: float = T4,
        stop_timeout: float = STOP_TIMEOUT,
        idle_timeout: float = 300.0,
        max_connections: int = 1024,
        udp_max_size: int = UDP_MAX_SIZE,
        allow: Optional[Iterable[str]] = None,
        request_hook: Optional[RequestHook] = None,
        resolver: Any = None,
        reactor: Any = None,
        transport: Any = None,
    ) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.reactor = reactor
        self.clock = reactor
        try:
            self.server_address = server_address_uri(server_address)
        except ConfigurationError as e:
            raise ConfigurationError(f"server_address: {e}") from None
        local = Node.from_uri(self.server_address, status=NodeStatus.ACTIVE, local=True)
        if ping_interval <= 0:
            raise ConfigurationError("ping_interval must be positive")
        if not HEADER_ROOM * 2 <= udp_max_size <= UDP_HARD_LIMIT:
            raise ConfigurationError(f"udp_max_size must be between {HEADER_ROOM * 2} and {UDP_HARD_LIMIT}")
        local.agent = SERVER_NAME
        self.nodes = NodeList(local, max_nodes=max_nodes, max_new_per_list=max_nodes_per_list)
        policy = TimeoutPolicy(
            remove_inactive=remove_inactive,
            fail_count_enabled=fail_count_enabled,
            fail_count_threshold_not_active=fail_count_threshold_not_active,
            fail_count_threshold_disabled=fail_count_threshold_disabled,
        )
        self.membership = Membership(
            self.nodes, reactor, policy, init_with_single, on_ready=self._run_inits, timeout_hold=64 * t1
        )
        self.stop_timeout = stop_timeout
        self.request_hook = request_hook
        self.allow = [ipaddress.ip_network(a, strict=False) for a in allow] if allow else None
        host = listen or local.host.strip("[]")
        local_transport = local.transport
        if transport is None:
            transport = SIPTransport(
                None,
                reactor,
                host=host,
                port=local.port or 5060,
                udp=udp,
                tcp=tcp or local_transport == "tcp",
                tls=tls,
                tls_port=tls_port if tls_port is not None else (local.port if local_transport == "tls" else None),
                idle_timeout=idle_timeout,
                max_connections=max_connections,
                udp_max_size=udp_max_size,
            )
        else:
            transport.udp_max_size = udp_max_size
        self.transport = transport
        self.dispatcher = Dispatcher(self, SERVER_NAME)
        self.transactions = TransactionLayer(
            transport, self.dispatcher.handle_request, reactor=reactor, t1=t1, t2=t2, t4=t4
        )
        transport.controller = self.transactions
        self.peers: dict[str, Peer] = {}
        self.channel_stats: dict[str, ChannelStats] = {}
        self._initialized = False
        self._templates: dict[tuple[Any, ...], tuple[Optional[RequestTemplate], Address]] = {}
        self.notification = NotificationPeer(
            notification_channel,
            notification_addresses,
            ping_interval=ping_interval,
            multi_notify=multi_notify,
            resolver=resolver,
            seed_refresh=seed_refresh,
        )
        self.register_peer(self.notification)

    # -- life cycle ---------------------------------------------------------------

    def startService(self) -> None:  # noqa: N802
        """Listen, then start the peers (the notification peer joins)."""
        self._listening = defer.maybeDeferred(self.transport.listen)

        def listening(_: object) -> None:
            log.info(
                "DMQ node {uri} listening ({transports})",
                uri=str(self.nodes.local.uri),
                transports=", ".join(t for t in ("udp", "tcp", "tls") if self.transport.supports(t)),
            )
            MultiService.startService(self)

        def failed(failure: Any) -> Any:
            log.failure("cannot listen for {uri}", failure, uri=str(self.server_address))
            return failure

        self._listening.addCallbacks(listening, failed)

    def stopService(self) -> "Deferred[Any]":  # noqa: N802
        """
        Stop the peers (the node says it leaves), then the transactions and
        the transports.  Fires within ``stop_timeout`` seconds and the time
        the listeners take to close, whether or not the other nodes answer.
        """
        peers = defer.maybeDeferred(MultiService.stopService, self) if self.running else defer.succeed(None)
        d = _by_deadline(peers, self.stop_timeout, self.clock)
        d.addBoth(lambda _: self.transactions.stop())
        d.addBoth(lambda _: self.transport.stop())
        return d

    def when_listening(self) -> "Deferred[None]":
        """A new Deferred that fires when the listeners are up (or fails why not)."""
        d: Deferred[None] = Deferred()

        def relay(result: Any) -> Any:
            if isinstance(result, Failure):
                d.errback(result)
                return None
            d.callback(None)
            return result

        self._listening.addBoth(relay)
        return d

    # -- peers ---------------------------------------------------------------------

    def register_peer(self, peer: Peer) -> Peer:
        """
        Register ``peer`` for its channel and make it a child service.

        :raises ValueError: when the channel is taken.
        """
        IPeer(peer)
        if peer.channel in self.peers:
            raise ValueError(f"channel {peer.channel!r} already has a peer")
        self.peers[peer.channel] = peer
        peer.service = self
        peer.setServiceParent(self)
        if self._initialized:
            self._init_peer(peer)
        return peer

    def unregister_peer(self, peer: Peer) -> "Deferred[Any]":
        """Remove ``peer``; its channel answers 404 afterwards."""
        if self.peers.get(peer.channel) is not peer:
            return defer.succeed(None)
        del self.peers[peer.channel]
        return defer.maybeDeferred(peer.disownServiceParent)

    def get_peer(self, channel: str) -> Optional[Peer]:
        """The peer of ``channel``, or ``None``."""
        return self.peers.get(channel)

    # -- membership ------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Whether the first node list has arrived (the peers' init hooks ran)."""
        return self.membership.ready

    @property
    def rtt(self) -> dict[NodeKey, float]:
        """The last node-list round trip per node key, in seconds."""
        return self.membership.rtt

    @property
    def policy(self) -> TimeoutPolicy:
        """What a timeout does to a node (``remove_inactive``, fail counting)."""
        return self.membership.policy

    def when_ready(self) -> "Deferred[None]":
        """A new Deferred that fires once the first node list has arrived."""
        return self.membership.when_ready()

    def add_event_listener(self, listener: EventListener) -> None:
        """Call ``listener(event)`` on each peer-up, peer-down, peer-disabled."""
        self.membership.add_event_listener(listener)

    def remove_event_listener(self, listener: EventListener) -> None:
        """Stop calling ``listener``."""
        self.membership.remove_event_listener(listener)

    def add_node(self, uri: Union[str, SIPURI]) -> Node:
        """Add a node by its URI (Kamailio's ``dmq.add``); see :meth:`Membership.add_node`."""
        return self.membership.add_node(uri)

    def remove_node(self, uri: Union[str, SIPURI, Node]) -> bool:
        """Remove a remote node (Kamailio's ``dmq.remove``); see :meth:`Membership.remove_node`."""
        return self.membership.remove_node(uri)

    def set_node_status(self, uri: Union[str, SIPURI, Node], status: NodeStatus) -> bool:
        """Change a remote node's status (``dmq.change_status``); see :meth:`Membership.set_node_status`."""
        return self.membership.set_node_status(uri, status)

    def _run_inits(self) -> None:
        if self._initialized:
            return
        self._initialized = True
        for peer in list(self.peers.values()):
            self._init_peer(peer)

    def _init_peer(self, peer: Peer) -> None:
        d = defer.maybeDeferred(peer.init, self)
        d.addErrback(lambda f: log.failure("init of peer {channel} failed", f, channel=peer.channel))

    # -- sending -----------------------------------------------------------------------

    @property
    def max_body_size(self) -> int:
        """The largest body a KDMQ can carry in one datagram (peers cut their messages to it)."""
        return int(self.transport.udp_max_size) - HEADER_ROOM

    def _channel_of(self, peer: Union[Peer, str]) -> str:
        return peer if isinstance(peer, str) else peer.channel

    def _target(self, node: Union[Node, SIPURI, str]) -> Node:
        if isinstance(node, Node):
            return node
        listed = self.nodes.get(node)
        if listed is not None:
            return listed
        return Node.from_uri(node)

    def targets(self, except_node: Optional[Union[Node, SIPURI, str]] = None) -> list[Node]:
        """
        Where a message for the whole cluster goes: every active node but this
        one (and ``except_node``), in node-list order.  Every broadcast and
        replication of this node and its peers takes its targets from here.
        """
        nodes = self.nodes.active()
        if except_node is None:
            return nodes
        skip = self._target(except_node).key
        return [n for n in nodes if n.key != skip]

    def build_kdmq(
        self,
        channel: str,
        node: Node,
        body: bytes,
        content_type: Optional[str],
        max_forwards: int = 1,
        ids: Optional[tuple[str, str, str]] = None,
    ) -> tuple[Request, Address]:
        """
        The KDMQ request for ``channel`` to ``node``, and where it goes.

        :param ids: its branch, From-tag and Call-ID (new ones when not given).
        """
        branch, from_tag, call_id = ids if ids is not None else (None, None, None)
        local = self.nodes.local
        params: dict[str, Optional[str]] = {}
        if node.transport != "udp":
            params["transport"] = node.transport
        target = SIPURI(node.host, node.port, user=channel, params=params)
        own_params: dict[str, Optional[str]] = {}
        if local.transport != "udp":
            own_params["transport"] = local.transport
        from_uri = SIPURI(local.host, local.port, user=channel, params=own_params)
        address = Address.from_uri(target)
        if address.transport == "tls" and node.port is None:
            address = Address("tls", address.host, 5061)
        sent_by_port = local.port
        if address.transport == "tls" and self.transport.supports("tls") and local.transport != "tls":
            sent_by_port = self.transport.tls_port or local.port
        request = build_request(
            "KDMQ",
            target,
            from_uri=from_uri,
            via_transport=address.transport,
            via_sent_by=f"{local.host}:{sent_by_port}",
            body=body,
            content_type=content_type,
            max_forwards=max_forwards,
            user_agent=SERVER_NAME,
            branch=branch,
            from_tag=from_tag,
            call_id=call_id,
        )
        return request, address

    def _kdmq_template(
        self, channel: str, node: Node, content_type: Optional[str], max_forwards: int
    ) -> tuple[Optional[RequestTemplate], Address]:
        """
        The template of KDMQs for ``channel`` to ``node`` over UDP (``None``
        over a stream or for names it cannot hold), and where they go; made
        once per channel, node and kind.
        """
        key = (channel, node.key, content_type, max_forwards)
        entry = self._templates.get(key)
        if entry is None:
            marks = (RequestTemplate.BRANCH_MARK, RequestTemplate.TAG_MARK, RequestTemplate.CALL_ID_MARK)
            request, address = self.build_kdmq(channel, node, b"", content_type, max_forwards, marks)
            template = None
            if address.transport == "udp":
                try:
                    template = RequestTemplate(request, self.nodes.local.host)
                except ValueError:
                    template = None
            if len(self._templates) >= MAX_TEMPLATES:
                self._templates.clear()
            entry = self._templates[key] = (template, address)
        return entry

    def send_message(
        self,
        peer: Union[Peer, str],
        body: bytes,
        node: Union[Node, SIPURI, str],
        content_type: Optional[str] = "text/plain",
        max_forwards: int = 1,
    ) -> "Deferred[Response]":
        """
        Send ``body`` on ``peer``'s channel to one node.

        :returns: a Deferred firing with the node's final response; a timeout
            or transport failure fires with a local 408 response (as
            Kamailio's ``tm`` reports it), whose reason says which.
        """
        d: Deferred[Response] = Deferred()
        self.send_message_then(peer, body, node, d.callback, content_type, max_forwards)
        return d

    def send_message_then(
        self,
        peer: Union[Peer, str],
        body: bytes,
        node: Union[Node, SIPURI, str],
        then: Callable[[Response], object],
        content_type: Optional[str] = "text/plain",
        max_forwards: int = 1,
    ) -> None:
        """
        :meth:`send_message` without a Deferred (the hot path of
        replication): ``then`` is called once with the node's final response,
        or the local 408 (or 513) that stands for a failure.  A send that
        fails at once calls it before this returns.
        """
        channel = peer if isinstance(peer, str) else peer.channel
        sender = self.peers.get(channel)
        node_list = sender is not None and sender.exchanges_node_lists
        target = node if isinstance(node, Node) else self._target(node)
        stats = self.channel_stats.get(channel) or self.dispatcher.stats(channel)
        stats.sent += 1
        sent_at = self.clock.seconds()
        template, address = self._kdmq_template(channel, target, content_type, max_forwards)
        sent: Union[Request, bytes]

        def counted(result: Union[Response, Failure]) -> None:
            response = self._local_failure(result, sent) if isinstance(result, Failure) else result
            code = response.code
            try:
                results = stats.results
                results[code] = results.get(code, 0) + 1
                target.note_agent(server_of(response))
                if self.running:  # a stopping node cuts its transactions short: no verdict on anyone
                    self.membership.result(target, code, sent_at, node_list)
            except Exception:
                log.failure("recording a {code} from {uri} failed", code=code, uri=str(target.uri))
            then(response)

        if template is not None and template.size + len(body) <= min(LARGE_REQUEST, self.transport.udp_max_size):
            # The usual case: the request joined as bytes from the node's template.
            sent, branch = template.render(body)
            self.transactions.request_data_then(sent, branch, "KDMQ", address, counted)
        else:
            request, address = self.build_kdmq(channel, target, body, content_type, max_forwards)
            sent = request
            self.transactions.request(request, address).addBoth(counted)

    def _local_failure(self, failure: Any, request: Union[Request, bytes]) -> Response:
        """
        The final response a failed send stands for: 513 for a message too
        large to send, else 408 (as Kamailio's ``tm`` reports a request that
        got no answer), the reason saying why.

        :param request: the request, or its bytes (parsed only here).
        """
        if isinstance(request, bytes):
            request = cast(Request, parse_message(request))
        error = failure.value
        if not isinstance(error, DMQError):
            log.failure("sending {method} failed", failure, method=request.method)
        if isinstance(error, MessageTooLarge):
            log.warn("not sent: {reason}", reason=str(error))
            return make_response(request, 513, f"Message Too Large ({error})", server=None)
        reason = "Request Timeout" if getattr(error, "code", 408) == 408 else f"Request Timeout ({error})"
        return make_response(request, 408, reason, server=None)

    def bcast_message(
        self,
        peer: Union[Peer, str],
        body: bytes,
        content_type: Optional[str] = "text/plain",
        except_node: Optional[Union[Node, SIPURI, str]] = None,
        max_forwards: int = 1,
    ) -> "Deferred[list[tuple[Node, Response]]]":
        """
        Send ``body`` on ``peer``'s channel to every active node but this one
        (and ``except_node``).

        :returns: a Deferred firing with ``(node, final response)`` for every
            target (408 for a timeout), in node-list order.
        """
        ds: list[Deferred[tuple[Node, Response]]] = []
        for node in self.targets(except_node):
            d = self.send_message(peer, body, node, content_type, max_forwards)
            ds.append(d.addCallback(_from_node, node))
        return defer.gatherResults(ds)

    def replicate(self, request: Request, skip_loop_test: bool = False) -> "Deferred[list[tuple[Node, Response]]]":
        """
        Forward a SIP request to every active node but this one (Kamailio's
        ``dmq_t_replicate``): same method, headers and body, the node's
        address as Request-URI, a new Via of this node's.  Unless
        ``skip_loop_test``, a request that came from a node of the bus is not
        replicated again (fires with an empty list).
        """
        if not skip_loop_test:
            top = request.vias[0] if request.vias else None
            if top is not None and self.is_from_node(top.params.get("received") or top.host):
                return defer.succeed([])
        local = self.nodes.local
        ds: list[Deferred[tuple[Node, Response]]] = []
        for node in self.targets():
            address = Address.from_uri(node.uri)
            copy = Request(request.method, node.uri, None, request.body)
            copy.headers.add("Via", via_value(address.transport, f"{local.host}:{local.port}"))
            for name, value in request.headers:
                key = name.lower()
                if key in ("via", "v", "content-length", "l", "max-forwards", "route", "record-route"):
                    continue
                copy.headers.add(name, value)
            copy.headers.add("Max-Forwards", "1")
            copy.headers.add("Content-Length", str(len(request.body)))
            d = self.transactions.request(copy, address)
            d.addErrback(self._local_failure, copy)
            ds.append(d.addCallback(_from_node, node))
        return defer.gatherResults(ds)

    def is_from_node(self, address: Union[str, Source, Request, Address]) -> bool:
        """
        Whether ``address`` (an IP or host, a :class:`Source`, an
        :class:`Address` or a request's top Via host) belongs to a node of
        the bus other than this one (Kamailio's ``dmq_is_from_node``).
        """
        if isinstance(address, Request):
            top = address.vias[0]
            host = top.params.get("received") or top.host
        elif isinstance(address, Source):
            host = address.address.host
        elif isinstance(address, Address):
            host = address.host
        else:
            host = address
        host = host.strip("[]")
        for node in self.nodes.others():
            if node.host.strip("[]") == host or node.resolved_ip == host:
                return True
        return False

    def process_message(
        self,
        channel: str,
        body: bytes,
        content_type: Optional[str] = "text/plain",
        node: Optional[Node] = None,
    ) -> "Deferred[PeerResponse]":
        """
        Hand a message to the local peer of ``channel`` without the network
        (Kamailio's ``dmq_process_custom``).

        :returns: a Deferred firing with the peer's answer (404 when no peer).
        """
        return self.dispatcher.process_message(channel, body, content_type, node)


def _by_deadline(d: "Deferred[Any]", seconds: float, clock: Any) -> "Deferred[None]":
    """
    A new Deferred that fires (with ``None``) when ``d`` does or after
    ``seconds``, whichever comes first; a failure of ``d`` is logged.
    """
    done: Deferred[None] = Deferred()

    def fire() -> None:
        if not done.called:
            done.callback(None)

    timer = clock.callLater(seconds, fire)

    def finished(result: Any) -> None:
        if isinstance(result, Failure):
            log.failure("stopping a peer failed", result)
        if timer.active():
            timer.cancel()
        fire()

    d.addBoth(finished)
    return done


def _from_node(response: Response, node: Node) -> tuple[Node, Response]:
    return (node, response)
