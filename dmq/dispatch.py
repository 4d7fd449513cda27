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

A peer affects only its own channel: one that raises answers 500; one that
has not answered within :data:`HANDLER_TIMEOUT` seconds is answered ``503``
for it (its late answer is dropped), and a channel with
:data:`MAX_PENDING` requests unanswered answers ``503`` at once.  Requests
from addresses that are no node of the list are limited to
:data:`STRANGER_RATE` a second per address (with bursts of
:data:`STRANGER_BURST`); past that they are answered ``503``.  Every 503
carries ``Retry-After`` and is counted in :attr:`Dispatcher.refused`.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from dmq.node import Node, NodeKey, NodeListError
from dmq.nodelist import NodeList
from dmq.peer import DMQMessage, Peer, PeerError, PeerResponse
from dmq.sip.build import make_response
from dmq.sip.handler import now_or_later
from dmq.sip.message import Request, Response, untagged
from dmq.sip.transaction import Source
from dmq.sip.uri import SIPURI, unescape

if TYPE_CHECKING:
    from dmq.service import DMQService

__all__ = ["ChannelStats", "Dispatcher", "as_peer_response", "failure_as_peer_response"]

log = Logger()

NOT_FOUND = "User Not Found"
"""The reason of the 404 for a channel without a peer, as every Kamailio release words it."""

HANDLER_TIMEOUT = 2.0
"""Seconds a peer has to answer before its request is answered 503 (well inside a sender's 64*T1)."""

MAX_PENDING = 256
"""The most unanswered requests one channel may hold; more are answered 503 at once."""

STRANGER_RATE = 50.0
"""Requests a second one address that is no node of the list may send before it is answered 503."""

STRANGER_BURST = 100
"""How many requests such an address may send at once."""

MAX_SOURCES = 4096
"""The most stranger addresses tracked at once (all are forgotten when there are more)."""

MAX_CHANNELS = 256
"""The most channels counted one by one; the rest, when they have no peer, share :data:`OTHER_CHANNELS`."""

OTHER_CHANNELS = "(other)"
"""The counters of the channels past :data:`MAX_CHANNELS` that have no peer."""

MAX_SENDERS = 4096
"""The most ``From`` addresses whose URI and node key are remembered (all are forgotten when there are more)."""

RETRY_AFTER = 1
"""The Retry-After of a 503, in seconds."""


Sender = tuple[Optional[SIPURI], Optional[NodeKey]]
"""What :meth:`Dispatcher._sender` tells of a request's ``From``: its SIP URI and the key of the node it names."""


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
        self.handler_timeout = HANDLER_TIMEOUT
        self.max_pending = MAX_PENDING
        self.stranger_rate = STRANGER_RATE
        self.stranger_burst = STRANGER_BURST
        self.pending: dict[str, int] = {}
        """Unanswered requests per channel."""
        self.refused: dict[str, int] = {"rate": 0, "pending": 0, "timeout": 0}
        """Requests answered 503, by reason: a stranger over its rate, a channel full, a peer too slow."""
        self._buckets: dict[str, list[float]] = {}
        self._senders: dict[str, Sender] = {}

    def stats(self, channel: str) -> ChannelStats:
        """
        The counters of ``channel`` (made on first use).  Past
        :data:`MAX_CHANNELS` channels, one without a peer is counted under
        :data:`OTHER_CHANNELS`: made-up channel names cannot grow the table.
        """
        table = self.service.channel_stats
        stats = table.get(channel)
        if stats is None:
            if len(table) >= MAX_CHANNELS and channel not in self.service.peers:
                channel = OTHER_CHANNELS
                stats = table.get(channel)
                if stats is not None:
                    return stats
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
        host = source.address.host
        if host not in service.nodes.member_ips() and not self._within_rate(host):
            self.refused["rate"] += 1
            return self._overloaded(request, "too many requests from this address")
        if request.method != "KDMQ":
            return self._other_method(request, source)
        user = request.uri_user
        if user is None and not isinstance(request.uri, SIPURI):
            return make_response(request, 416, server=self.server)
        refusal = self._unsupported(request)
        if refusal is not None:
            return refusal
        if not user:
            return make_response(request, 404, NOT_FOUND, server=self.server)
        channel = unescape(user)
        stats = self.stats(channel)
        stats.received += 1
        peer = service.peers.get(channel)
        if peer is None:
            stats.answered[404] = stats.answered.get(404, 0) + 1
            return make_response(request, 404, NOT_FOUND, server=self.server)
        from_uri, key = self._sender(request)
        node = None
        if key is not None:
            node = service.nodes.get(key)
            if node is not None:
                node.note_agent(request.headers.get("User-Agent"))
        message = DMQMessage(
            channel,
            request.body,
            request.content_type,
            node=node,
            from_uri=from_uri,
            max_forwards=request.max_forwards,
            request=request,
            source=source,
        )
        keep_body = peer.exchanges_node_lists

        def respond(answer: PeerResponse) -> Response:
            stats.answered[answer.code] = stats.answered.get(answer.code, 0) + 1
            if node is None and key is not None:
                # The message may have made its sender a member (a join).
                joined = service.nodes.get(key)
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

        answer = now_or_later(
            lambda: peer.handle_message(message),
            as_peer_response,
            lambda failure: failure_as_peer_response(failure, channel),
        )
        if isinstance(answer, Deferred):
            return self._answer_later(answer, channel, request, respond)
        return respond(answer)

    def _sender(self, request: Request) -> "Sender":
        """
        The From URI of ``request`` (``None`` unless a SIP URI) and the key
        of the node it names (``None`` when it names none).  Both are the
        same for every request of one sender but for the From-tag, so they
        are remembered by the rest of the From value: a node's messages
        parse its From once.
        """
        head = untagged(request.headers.get("From") or "")
        if head is not None:
            known = self._senders.get(head)
            if known is not None:
                return known
        uri = request.from_.uri
        sender: Sender = (None, None)
        if isinstance(uri, SIPURI):
            try:
                sender = (uri, NodeList.key_of(uri))
            except NodeListError:
                sender = (uri, None)
        if head is not None:
            if len(self._senders) >= MAX_SENDERS:
                self._senders.clear()
            self._senders[head] = sender
        return sender

    def _answer_later(
        self,
        result: "Deferred[PeerResponse]",
        channel: str,
        request: Request,
        respond: Callable[[PeerResponse], Response],
    ) -> "Deferred[Response]":
        """The response to a request whose peer answers later: its answer, or 503 when it takes too long."""
        pending = self.pending.get(channel, 0)
        if pending >= self.max_pending:
            self.refused["pending"] += 1
            result.addErrback(lambda _: None)
            return defer.succeed(self._overloaded(request, f"channel {channel} is busy"))
        self.pending[channel] = pending + 1
        answer: Deferred[Response] = Deferred()

        def too_late() -> None:
            self.refused["timeout"] += 1
            log.warn(
                "peer {channel} did not answer within {seconds} s; answered 503", channel=channel, seconds=self.handler_timeout
            )
            answer.callback(self._overloaded(request, f"peer {channel} did not answer in time"))

        timer = self.service.clock.callLater(self.handler_timeout, too_late)

        def done(peer_answer: PeerResponse) -> None:
            self.pending[channel] -= 1
            if timer.active():
                timer.cancel()
                answer.callback(respond(peer_answer))

        result.addCallback(done)
        return answer

    def _unsupported(self, request: Request) -> Optional[Response]:
        """
        The answer RFC 3261 (8.2.2.3, 8.2.3) asks for when ``request`` needs
        what no peer does: 420 naming the option tags of its ``Require``
        (this node supports none), 415 for a ``Content-Encoding`` other than
        ``identity``; None for a request without either.
        """
        headers = request.headers
        if "Require" not in headers and "Content-Encoding" not in headers:
            return None  # the usual case
        required = [tag.strip() for value in headers.getall("Require") for tag in value.split(",") if tag.strip()]
        if required:
            return make_response(request, 420, headers=[("Unsupported", ", ".join(required))], server=self.server)
        encodings = [code.strip().lower() for value in headers.getall("Content-Encoding") for code in value.split(",")]
        if any(code not in ("", "identity") for code in encodings):
            return make_response(request, 415, headers=[("Accept-Encoding", "identity")], server=self.server)
        return None

    def _overloaded(self, request: Request, why: str) -> Response:
        return make_response(
            request,
            503,
            f"Service Unavailable ({why})",
            headers=[("Retry-After", str(RETRY_AFTER))],
            server=self.server,
        )

    def _within_rate(self, host: str) -> bool:
        """Take one request from ``host``'s token bucket; false when it is empty."""
        now = float(self.service.clock.seconds())
        bucket = self._buckets.get(host)
        if bucket is None:
            if len(self._buckets) >= MAX_SOURCES:
                self._buckets.clear()
            bucket = self._buckets[host] = [float(self.stranger_burst), now]
        tokens = min(float(self.stranger_burst), bucket[0] + (now - bucket[1]) * self.stranger_rate)
        bucket[1] = now
        if tokens < 1.0:
            bucket[0] = tokens
            return False
        bucket[0] = tokens - 1.0
        return True

    def _other_method(self, request: Request, source: Source) -> Any:
        hook = self.service.request_hook
        if hook is None:
            return self._not_allowed(request)
        answer = hook(request, source)  # an exception is the transaction layer's 500
        if isinstance(answer, Deferred):
            return answer.addCallback(lambda later: later if later is not None else self._not_allowed(request))
        return answer if answer is not None else self._not_allowed(request)

    def _not_allowed(self, request: Request) -> Response:
        return make_response(request, 405, headers=[("Allow", "KDMQ")], server=self.server)

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
