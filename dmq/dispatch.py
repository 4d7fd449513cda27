"""
Inbound requests of one node: each ``KDMQ`` to the peer of its channel, and
the peer's answer back as a SIP response.

:class:`Dispatcher` is the request handler the service gives its transaction
layer.  It checks the allow list, finds the channel's peer (404 without
one), hands it a :class:`~dmq.peer.DMQMessage`, and turns what the peer
returns (a :class:`~dmq.peer.PeerResponse`, a response, a code, ``None``, or
a Deferred of one of these; a :class:`~dmq.peer.PeerError`; any other
exception) into the response.  Only a peer that exchanges node lists keeps
its answer's body: Kamailio 5.6 reads any other 200 body as a node list.
Other methods go to the application's request hook, else 405.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from dmq.node import Node
from dmq.peer import DMQMessage, Peer, PeerError, PeerResponse
from dmq.sip.message import Request, Response, make_response
from dmq.sip.transaction import Source
from dmq.sip.uri import SIPURI, unescape

if TYPE_CHECKING:
    from dmq.service import DMQService

__all__ = ["ChannelStats", "Dispatcher", "as_peer_response", "failure_as_peer_response"]

log = Logger()

NOT_FOUND = "User Not Found"
"""The reason of the 404 for a channel without a peer, as every Kamailio release words it."""


@dataclass
class ChannelStats:
    """Message counts of one channel, for the metrics and ``dmq.stats``."""

    received: int = 0
    sent: int = 0
    answered: dict[int, int] = field(default_factory=dict)
    results: dict[int, int] = field(default_factory=dict)


class Dispatcher:
    """
    The request handler of a :class:`~dmq.service.DMQService`: reads its
    ``peers``, ``nodes``, ``allow``, ``request_hook`` and ``channel_stats``
    at every request.

    :param service: the node.
    :param server: the ``Server`` header of the answers.
    """

    def __init__(self, service: "DMQService", server: str) -> None:
        self.service = service
        self.server = server

    def stats(self, channel: str) -> ChannelStats:
        """The counters of ``channel`` (made on first use)."""
        table = self.service.channel_stats
        stats = table.get(channel)
        if stats is None:
            stats = table[channel] = ChannelStats()
        return stats

    def allowed(self, source: Source) -> bool:
        """Whether the allow list (if any) admits ``source``."""
        allow = self.service.allow
        if allow is None:
            return True
        try:
            ip = ipaddress.ip_address(source.address.host)
        except ValueError:
            return False
        return any(ip in network for network in allow)

    def handle_request(self, request: Request, source: Source) -> Any:
        """Answer ``request``: a :class:`Response`, or a Deferred of one when a handler answers later."""
        service = self.service
        if not self.allowed(source):
            log.info("refused {method} from {source}: not allowed", method=request.method, source=source.address)
            return make_response(request, 403, "Forbidden (source not allowed)", server=self.server)
        if request.method != "KDMQ":
            return self._other_method(request, source)
        uri = request.uri
        if not isinstance(uri, SIPURI) or not uri.user:
            return make_response(request, 404, NOT_FOUND, server=self.server)
        channel = unescape(uri.user)
        stats = self.stats(channel)
        stats.received += 1
        peer = service.peers.get(channel)
        if peer is None:
            stats.answered[404] = stats.answered.get(404, 0) + 1
            return make_response(request, 404, NOT_FOUND, server=self.server)
        from_uri = request.from_.uri
        node = None
        if isinstance(from_uri, SIPURI):
            node = service.nodes.get(from_uri)
            if node is not None:
                node.note_agent(request.headers.get("User-Agent"))
        message = DMQMessage(
            channel,
            request.body,
            request.content_type,
            node=node,
            from_uri=from_uri if isinstance(from_uri, SIPURI) else None,
            max_forwards=request.max_forwards,
            request=request,
            source=source,
        )
        keep_body = peer.exchanges_node_lists

        def respond(answer: PeerResponse) -> Response:
            stats.answered[answer.code] = stats.answered.get(answer.code, 0) + 1
            if node is None and isinstance(from_uri, SIPURI):
                # The message may have made its sender a member (a join).
                joined = service.nodes.get(from_uri)
                if joined is not None:
                    joined.note_agent(request.headers.get("User-Agent"))
            body = answer.body if keep_body else b""
            return make_response(
                request,
                answer.code,
                answer.reason,
                body=body,
                content_type=answer.content_type if body else None,
                headers=answer.headers,
                server=self.server,
            )

        # Called directly (no Deferred) unless the peer answers later.
        try:
            result = peer.handle_message(message)
        except Exception:
            return respond(failure_as_peer_response(Failure(), channel))
        if isinstance(result, Deferred):
            result.addCallbacks(as_peer_response, failure_as_peer_response, errbackArgs=(channel,))
            result.addCallback(respond)
            return result
        try:
            answer = as_peer_response(result)
        except Exception:
            answer = failure_as_peer_response(Failure(), channel)
        return respond(answer)

    def _other_method(self, request: Request, source: Source) -> Any:
        hook = self.service.request_hook
        not_allowed = make_response(request, 405, headers=[("Allow", "KDMQ")], server=self.server)
        if hook is None:
            return not_allowed
        d = defer.maybeDeferred(hook, request, source)
        return d.addCallback(lambda answer: answer if answer is not None else not_allowed)

    def process_message(
        self, channel: str, body: bytes, content_type: Optional[str], node: Optional[Node]
    ) -> "Deferred[PeerResponse]":
        """The answer of the local peer of ``channel`` to a message that did not come over the network."""
        peer: Optional[Peer] = self.service.peers.get(channel)
        if peer is None:
            return defer.succeed(PeerResponse(404, NOT_FOUND))
        message = DMQMessage(channel, body, content_type, node=node, from_uri=node.uri if node else None)
        d = defer.maybeDeferred(peer.handle_message, message)
        return d.addCallbacks(as_peer_response, failure_as_peer_response, errbackArgs=(channel,))


def as_peer_response(result: Any) -> PeerResponse:
    """
    What a peer's handler returned, as a :class:`PeerResponse`: ``None`` is a
    200, a :class:`Response` or a status code is taken as it is.

    :raises TypeError: for anything else.
    """
    if result is None:
        return PeerResponse()
    if isinstance(result, PeerResponse):
        return result
    if isinstance(result, Response):
        return PeerResponse(result.code, result.reason, result.body, result.content_type)
    if isinstance(result, int):
        return PeerResponse(result)
    raise TypeError(f"a peer handler returned {result!r}")


def failure_as_peer_response(failure: Failure, channel: str = "?") -> PeerResponse:
    """A :class:`PeerError` as its code and reason; any other failure logged and answered 500."""
    if failure.check(PeerError):
        return PeerResponse(failure.value.code, failure.value.reason)
    log.failure("peer {channel} failed on a message", failure, channel=channel)
    return PeerResponse(500, "Server Internal Error")
