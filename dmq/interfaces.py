"""
The zope interfaces of dmq, in one place.

Implementations declare them with ``@implementer``; the tests check every
implementation and every fake in :mod:`dmq.testing` with ``verifyObject``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional, Union

from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from dmq.node import Node
    from dmq.peer import DMQMessage, HandlerResult, Peer
    from dmq.service import DMQService
    from dmq.sip.address import Address
    from dmq.sip.message import Request, Response
    from dmq.sip.transaction import Source
    from dmq.sip.uri import SIPURI

__all__ = ["ISIPTransport", "IMessageHandler", "IPeer", "IMessageSender", "IPeerHost"]


class ISIPTransport(Interface):
    """What the transaction layer needs from the transports."""

    controller = Attribute("The object whose message_received(message, source) gets every parsed message.")
    udp_max_size = Attribute(
        "The largest datagram sent (bytes); a larger one fails with MessageTooLarge."
    )
    stats = Attribute("A dict of counters (rejected input, connections opened and refused), for metrics.")
    connection_count = Attribute("How many stream (TCP/TLS) connections are open now.")
    tls_port = Attribute("The port TLS listens on when TLS is on.")

    def listen() -> Deferred[None]:
        """Start every listener; fires when all listen, fails when one cannot."""

    def stop() -> Deferred[None]:
        """Stop listening and close every connection."""

    def supports(transport_name: str) -> bool:
        """Whether this node can send over ``udp``, ``tcp`` or ``tls``."""

    def send(data: bytes, address: Address, connection: Any = None) -> Deferred[None]:
        """
        Send bytes to an :class:`~dmq.sip.address.Address` (over ``connection``
        when it is given and open).  Returns a Deferred that fails with
        :class:`~dmq.errors.TransportError` when the bytes cannot be sent.
        """

    def send_datagram(data: bytes, address: Address) -> None:
        """
        Send bytes to a UDP :class:`~dmq.sip.address.Address` at once; raises
        :class:`~dmq.errors.TransportError` (:class:`~dmq.errors.MessageTooLarge`
        over the datagram limit) when they cannot be sent.
        """


class IMessageHandler(Interface):
    """The controller transports hand parsed messages to."""

    def message_received(message: Union[Request, Response], source: Source) -> None:
        """Handle one parsed message from a :class:`~dmq.sip.transaction.Source`."""


class IPeer(Interface):
    """
    A DMQ peer: the handler of one channel (Kamailio's ``dmq`` peer), and an
    ``IService`` child of the :class:`~dmq.service.DMQService`.
    """

    channel = Attribute("The channel name (the Request-URI user part of its KDMQ messages).")
    exchanges_node_lists = Attribute(
        "True only for the node-list channel: its answers keep their bodies and the results of what it sends "
        "follow the node-list rules."
    )
    registered = Attribute("Whether the peer is registered; registration sets its ``service`` (an IPeerHost).")

    def handle_message(message: DMQMessage) -> HandlerResult:
        """
        Handle an inbound :class:`~dmq.peer.DMQMessage`; return a
        :class:`~dmq.peer.PeerResponse` (or a Deferred of one), or None for
        a 200 with no body.  An exception answers 500.
        """

    def init(service: DMQService) -> Optional[Deferred[Any]]:
        """
        Run once, after the node received its first node list (sync on
        join); may return a Deferred.
        """


class IMessageSender(Interface):
    """Sending on the bus: what a peer uses to reach other nodes."""

    def send_message(
        peer: Union[Peer, str], body: bytes, node: Union[Node, SIPURI, str], content_type: str = "text/plain"
    ) -> Deferred[Response]:
        """Send to one node; a Deferred firing with the final response (408 on timeout)."""

    def bcast_message(
        peer: Union[Peer, str],
        body: bytes,
        content_type: str = "text/plain",
        except_node: Optional[Union[Node, SIPURI, str]] = None,
    ) -> Deferred[list[tuple[Node, Response]]]:
        """Send to every active node but this one; a Deferred firing with every node's result."""

    def targets(except_node: Optional[Union[Node, SIPURI, str]] = None) -> list[Node]:
        """Every active node but this one (and ``except_node``): where cluster-wide messages go."""


class IPeerHost(IMessageSender):
    """
    What a peer may use of the node it is registered with (a
    :class:`~dmq.service.DMQService`), besides sending.
    """

    clock = Attribute("The IReactorTime every timer of the node runs on.")
    reactor = Attribute("The reactor (name resolution runs in its thread pool).")
    nodes = Attribute("The node list (a dmq.nodelist.NodeList).")
    membership = Attribute(
        "The dmq.membership.Membership: events, readiness, and the reply and timeout rules."
    )
    max_body_size = Attribute("The largest body a KDMQ carries in one datagram (bytes).")

    def send_message_then(
        peer: Union[Peer, str],
        body: bytes,
        node: Union[Node, SIPURI, str],
        then: Callable[[Response], object],
        content_type: str = "text/plain",
        max_forwards: int = 1,
    ) -> None:
        """Send to one node and call ``then`` with the final response (a local 408 on timeout), without a Deferred."""
