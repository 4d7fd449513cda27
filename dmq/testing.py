"""
Fakes for testing code built on dmq without a network or a running reactor.

- :class:`FakeSIPTransport`: stands in for :class:`dmq.sip.transport.SIPTransport`
  under a :class:`~dmq.sip.transaction.TransactionLayer`; records what is sent
  and lets a test deliver messages or fail sends.
- :class:`FakeNetwork`: joins several fake transports by address so that
  whole nodes can talk to each other on a :class:`twisted.internet.task.Clock`,
  with loss and partitions under the test's control.
- :class:`FakeCluster`: complete :class:`~dmq.service.DMQService` nodes on
  such a network, started, stepped through time, and killed by the test;
  :func:`cluster_of` makes one with a few nodes.
- :func:`rpc` and :func:`rpc_raw`: a JSON-RPC call through a
  :class:`~dmq.control.ControlAPI` without HTTP, answered at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional, Union

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from zope.interface import implementer

from dmq.errors import MessageTooLarge, TransportError
from dmq.interfaces import ISIPTransport
from dmq.sip.address import UDP_MAX_SIZE, Address
from dmq.sip.message import Request, Response
from dmq.sip.parse import parse_message
from dmq.sip.transaction import Source
from dmq.sip.uri import SIPParseError

__all__ = ["Sent", "FakeSIPTransport", "FakeNetwork", "FakeCluster", "cluster_of", "rpc", "rpc_raw"]


@dataclass
class Sent:
    """One message a fake transport was asked to send."""

    data: bytes
    address: Address
    connection: Any = None
    time: float = 0.0

    @property
    def message(self) -> Union[Request, Response]:
        """The sent bytes, parsed."""
        return parse_message(self.data)


@implementer(ISIPTransport)
class FakeSIPTransport:
    """
    A transport that keeps what it is asked to send.

    :param clock: where :attr:`Sent.time` is read from (optional).
    :param transports: the transport names :meth:`supports` admits.
    :ivar sent: every :class:`Sent`, oldest first.
    :ivar fail: when set, a callable ``(address) -> bool``; sends for which it
        returns true fail with :class:`TransportError`.
    :ivar udp_max_size: datagrams above this fail with
        :class:`~dmq.errors.MessageTooLarge`, as on a real transport.
    """

    def __init__(
        self,
        clock: Any = None,
        transports: tuple[str, ...] = ("udp",),
        controller: Any = None,
        address: Optional[Address] = None,
    ) -> None:
        self.clock = clock
        self.transports = transports
        self.controller = controller
        self.address = address
        self.sent: list[Sent] = []
        self.fail: Optional[Callable[[Address], bool]] = None
        self.network: Optional["FakeNetwork"] = None
        self.udp_max_size = UDP_MAX_SIZE
        self.stats: dict[str, int] = {"rejected": 0, "connections_opened": 0, "connections_refused": 0}
        self.connection_count = 0
        self.tls_port: Optional[int] = None

    def supports(self, transport_name: str) -> bool:
        """Whether ``transport_name`` is one of :attr:`transports`."""
        return transport_name in self.transports

    def listen(self) -> "Deferred[None]":
        """Nothing to listen on: fires at once."""
        return defer.succeed(None)

    def stop(self) -> "Deferred[None]":
        """Leave the network, if on one."""
        if self.network is not None and self.address is not None:
            self.network.detach(self.address)
        return defer.succeed(None)

    def send(self, data: bytes, address: Address, connection: Any = None) -> "Deferred[None]":
        """Record the send; fail it if :attr:`fail` says so; deliver on a network."""
        now = self.clock.seconds() if self.clock is not None else 0.0
        self.sent.append(Sent(data, address, connection, now))
        if self.fail is not None and self.fail(address):
            return defer.fail(TransportError(f"cannot send to {address} (fake failure)"))
        if address.transport == "udp" and len(data) > self.udp_max_size:
            return defer.fail(MessageTooLarge(f"{len(data)} bytes for {address}: over the datagram limit"))
        if self.network is not None:
            self.network.deliver(self, data, address)
        return defer.succeed(None)

    def send_datagram(self, data: bytes, address: Address) -> None:
        """:meth:`send` over UDP at once: raises what its Deferred would fail with."""
        result: list[Failure] = []
        self.send(data, address).addErrback(result.append)
        if result:
            result[0].raiseException()

    def receive(self, data: Union[bytes, Request, Response], source: Union[Source, Address]) -> None:
        """Deliver a message to the controller as if it came from ``source``."""
        if isinstance(source, Address):
            source = Source(source)
        message = parse_message(data) if isinstance(data, bytes) else data
        self.controller.message_received(message, source)

    def messages(self) -> list[Union[Request, Response]]:
        """Every sent message, parsed."""
        return [s.message for s in self.sent]

    def clear(self) -> None:
        """Forget what was sent."""
        del self.sent[:]


@dataclass
class FakeNetwork:
    """
    Connects fake transports by address: a message arrives ``latency``
    seconds after it is sent on ``clock``, or at once when there is no clock.

    :ivar drop: a callable ``(source, target, data) -> bool``; true drops the
        message (loss, partitions).
    """

    clock: Any = None
    latency: float = 0.001
    transports: dict[tuple[str, int], FakeSIPTransport] = field(default_factory=dict)
    drop: Optional[Callable[[Address, Address, bytes], bool]] = None
    delivered: int = 0
    dropped: int = 0

    def attach(self, transport: FakeSIPTransport, address: Address) -> None:
        """Make ``transport`` reachable at ``address`` (host and port)."""
        transport.address = address
        transport.network = self
        self.transports[(address.host, address.port)] = transport

    def detach(self, address: Address) -> None:
        """Make the node at ``address`` unreachable (as if it died)."""
        transport = self.transports.pop((address.host, address.port), None)
        if transport is not None:
            transport.network = None

    def deliver(self, sender: FakeSIPTransport, data: bytes, target: Address) -> None:
        """Hand ``data`` to the transport at ``target``, unless dropped."""
        receiver = self.transports.get((target.host, target.port))
        source_address = sender.address
        if receiver is None or source_address is None or receiver.controller is None:
            self.dropped += 1
            return
        if self.drop is not None and self.drop(source_address, target, data):
            self.dropped += 1
            return
        source = Address(target.transport, source_address.host, source_address.port)
        if self.clock is None:
            self._arrive(receiver, data, source)
        else:
            self.clock.callLater(self.latency, self._arrive, receiver, data, source)

    def _arrive(self, receiver: FakeSIPTransport, data: bytes, source: Address) -> None:
        if receiver.network is not self or receiver.controller is None:
            self.dropped += 1
            return
        self.delivered += 1
        if source.transport == "udp" and data[:8] == b"SIP/2.0 ":
            # As the UDP transport does: a plain answer may skip the parse.
            take = getattr(receiver.controller, "response_datagram", None)
            if take is not None and take(data):
                return
        try:
            message = parse_message(data)
            receiver.controller.message_received(message, Source(source))
        except SIPParseError:
            self.dropped += 1


class FakeCluster:
    """
    Complete DMQ nodes on 127.0.0.1, each a :class:`~dmq.service.DMQService`
    on a :class:`FakeSIPTransport`, all on one :class:`FakeNetwork` and one
    clock.  Nothing touches a socket or the global reactor.

    :ivar nodes: the services by port.
    :ivar events: every membership event each node reported, by port.
    """

    def __init__(self, clock: Any = None, latency: float = 0.001) -> None:
        if clock is None:
            from twisted.internet.task import Clock

            clock = Clock()
        self.clock = clock
        self.network = FakeNetwork(clock=clock, latency=latency)
        self.nodes: dict[int, Any] = {}
        self.events: dict[int, list[Any]] = {}

    def add(
        self,
        port: int,
        seeds: Iterable[Union[int, str]] = (),
        start: bool = True,
        peers: Iterable[Any] = (),
        host: str = "127.0.0.1",
        **kw: Any,
    ) -> Any:
        """
        A node on ``host``:``port`` seeded with ``seeds`` (ports of nodes on
        127.0.0.1, or notification address URIs), with ``peers`` registered;
        other keyword arguments go to :class:`~dmq.service.DMQService`
        (``ping_interval`` defaults to 5 s).  Its events are recorded in
        :attr:`events`.  Started unless ``start`` is false.  Ports name the
        nodes here, so each node has its own.
        """
        from dmq.service import DMQService

        transport = FakeSIPTransport(self.clock, ("udp",))
        kw.setdefault("ping_interval", 5)
        svc = DMQService(
            f"sip:{host}:{port}",
            [s if isinstance(s, str) else f"sip:127.0.0.1:{s}" for s in seeds],
            reactor=self.clock,
            transport=transport,
            **kw,
        )
        self.network.attach(transport, Address("udp", host, port))
        self.nodes[port] = svc
        self.events[port] = []
        svc.add_event_listener(self.events[port].append)
        for peer in peers:
            svc.register_peer(peer)
        if start:
            svc.startService()
        return svc

    def view(self, port: int) -> dict[int, str]:
        """Port -> status of every node the node on ``port`` knows, itself included."""
        return {node.port: node.status.value for node in self.nodes[port].nodes}

    def run(self, seconds: float, step: float = 0.001) -> None:
        """Advance the clock in ``step`` increments so messages and timers interleave."""
        for _ in range(int(round(seconds / step))):
            self.clock.advance(step)

    def kill(self, port: int) -> None:
        """The node on ``port`` vanishes without a word (its timers stop too)."""
        svc = self.nodes[port]
        local = svc.nodes.local
        self.network.detach(Address("udp", local.host.strip("[]"), port))
        svc.notification.stop_pinging()
        svc.transactions.stop()


def cluster_of(*ports: int, **kw: Any) -> FakeCluster:
    """
    A :class:`FakeCluster` with a node on each of ``ports`` (127.0.0.1), each
    but the first seeded with the first; keyword arguments go to every
    :meth:`FakeCluster.add`.  Nothing has run yet.
    """
    cluster = FakeCluster()
    first = ports[0]
    for port in ports:
        cluster.add(port, () if port == first else (first,), **kw)
    return cluster


def rpc_raw(api: Any, body: bytes) -> Any:
    """
    The decoded answer of a :class:`~dmq.control.ControlAPI` to a raw
    JSON-RPC request body (``None`` when nothing is answered).

    :raises AssertionError: when the answer is not ready at once (a method
        waiting for the network: advance the clock and use ``api.handle``).
    """
    import json

    results: list[Any] = []
    api.handle(body).addCallback(results.append)
    assert results, "the answer is not ready"
    return None if results[0] is None else json.loads(results[0])


def rpc(api: Any, method: str, *params: Any, named: Optional[dict[str, Any]] = None) -> Any:
    """One JSON-RPC call through a :class:`~dmq.control.ControlAPI` (see :func:`rpc_raw`): the decoded answer."""
    import json

    call: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": 7}
    if named is not None:
        call["params"] = named
    elif params:
        call["params"] = list(params)
    return rpc_raw(api, json.dumps(call).encode())

