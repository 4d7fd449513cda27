"""
Non-INVITE SIP transactions (RFC 3261 sections 17.1.2 and 17.2.2).

The :class:`TransactionLayer` sits between the transports, which hand it every
parsed message, and the transaction user (the DMQ service), which it hands new
requests and from which it takes requests to send.  It retransmits over UDP,
absorbs retransmitted requests, and turns silence into a timeout, reading time
only from the ``IReactorTime`` it is given.

Client transaction timers: E (retransmit, T1 doubling up to T2, then T2 once a
provisional response arrived), F (give up after 64*T1: the request's Deferred
fails with :class:`~dmq.errors.TransactionTimeout`, code 408) and K (absorb
retransmitted responses for T4).  Over TCP and TLS nothing is retransmitted
and K is zero.  Server transaction timer: J (answer retransmissions with the
stored final response for 64*T1 over UDP, at least 64 times the default T1
whatever this node's own T1; zero over streams).

RFC 4320 is kept in mind: a non-INVITE server transaction never sends a 408,
and the client reports its own timeout rather than waiting for one.

One client transaction is a :class:`~dmq.sip.client.ClientTransaction`
(:mod:`dmq.sip.client`); this module holds the layer and the server side.
"""

from __future__ import annotations

from collections import deque
from typing import Callable, Hashable, Optional, Union

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from dmq.errors import MessageTooLarge, SIPParseError, TransactionTimeout, TransportError
from dmq.interfaces import IMessageHandler, ISIPTransport
# Source is imported from here by the layers above; it is defined with Address.
from dmq.sip.address import Address, Source
from dmq.sip.build import make_response, reason_with, via_over
from dmq.sip.client import ClientTransaction, LazyResponse, State, TransactionStats, plain_answer
from dmq.sip.handler import now_or_later
from dmq.sip.expiry import ExpiringMap
from dmq.sip.headers import plain_branch
from dmq.sip.message import Request, Response, untagged

__all__ = [
    "TransactionLayer",
    "ClientTransaction",
    "ServerTransaction",
    "Source",
    "TransactionStats",
    "State",
    "LARGE_REQUEST",
    "T1",
    "T2",
    "T4",
]

log = Logger()

MAGIC_COOKIE = "z9hG4bK"
T1 = 0.5
"""RFC 3261 timer T1 (seconds): the round-trip estimate; a request times out after 64*T1."""
T2 = 4.0
"""RFC 3261 timer T2 (seconds): the cap on the retransmission interval."""
T4 = 5.0
"""RFC 3261 timer T4 (seconds): how long the network may hold a message."""
MAX_COMPLETED = 20000
"""Default cap on completed server transactions kept for retransmissions (Timer J)."""
MAX_COMPLETED_BYTES = 16 << 20
"""Default cap on the bytes of the answers those keep (node-list answers may be 20 KB each)."""
MAX_VALID = 4096
"""The most ``To`` values and tagless ``From`` values remembered as well-formed (all are forgotten past it)."""
LARGE_REQUEST = 1300
"""Requests above this size go over TCP where the target has it (RFC 3261 18.1.1)."""

RequestHandler = Callable[[Request, "Source"], Union[Response, "Deferred[Response]"]]

ServerKey = Hashable
"""What identifies a server transaction: ``"branch sent-by method"`` (RFC 3261 17.2.3), or an RFC 2543 tuple."""

Remake = tuple[int, str, Optional[str]]
"""What makes an answer again from a copy of its request: see :meth:`~dmq.sip.message.Response.remake`."""

Kept = Union[bytes, Remake]
"""What Timer J keeps of an answer: its bytes, or what makes them again."""

MAX_REMAKES = 256
"""The most distinct :data:`Remake` tuples a transaction layer shares (past it, each answer keeps its own)."""


def _remember(known: set[str], text: str) -> None:
    """Add ``text`` to a set of values known to parse, bounded by :data:`MAX_VALID`."""
    if len(known) >= MAX_VALID:
        known.clear()
    known.add(text)


class ServerTransaction:
    """
    A non-INVITE server transaction: absorbs retransmissions of its request
    until the transaction user answers.  Once the final response is sent the
    layer keeps only its bytes (Timer J) to answer later retransmissions.
    """

    def __init__(self, layer: "TransactionLayer", key: ServerKey, request: Request, source: Source) -> None:
        self.layer = layer
        self.key = key
        self.request = request
        self.source = source
        self.state = State.TRYING
        self._last: Optional[bytes] = None

    def retransmission(self) -> None:
        """The request arrived again: resend the last provisional response, if any."""
        self.layer.stats.retransmitted_requests += 1
        if self._last is not None and self.state is State.PROCEEDING:
            self.layer._send_response(self._last, self.request, self.source)

    def respond(self, response: Response) -> None:
        """Send ``response``; a final one completes the transaction."""
        if self.state in (State.COMPLETED, State.TERMINATED):
            log.debug("late response {code} ignored", code=response.code)
            return
        layer = self.layer
        data, sent = layer._response_bytes(response, self.request, self.source)
        self._last = data
        layer._send_response(data, self.request, self.source)
        if response.code < 200:
            self.state = State.PROCEEDING
            return
        self.state = State.TERMINATED
        layer._server_done(self)
        if not self.source.address.reliable:
            # Timer J: retransmissions of the request get this answer again.
            layer.completed_servers.put(self.key, layer._kept(sent, data))


@implementer(IMessageHandler)
class TransactionLayer:
    """
    The controller the transports call, and the place the transaction user
    sends requests through.

    :param transport: the :class:`~dmq.interfaces.ISIPTransport` messages
        go out through.
    :param request_handler: called with each new request and its
        :class:`Source`; returns a :class:`Response` or a Deferred firing with
        one.  An exception or failure becomes a 500 (a
        :class:`~dmq.errors.SIPParseError` its own code, naming the fault).
    :param reactor: the ``IReactorTime`` all timers use.
    :param t1: RFC 3261 T1, the round-trip estimate (seconds).
    :param t2: the cap on the retransmission interval.
    :param t4: how long the network may hold a message.
    :param max_completed: how many completed server transactions are kept
        at most to answer retransmissions, and how many keys of answered
        client transactions (Timer K); the oldest are forgotten first.
    :param max_completed_bytes: the most bytes of answers they keep in all
        (the oldest are forgotten first).
    """

    def __init__(
        self,
        transport: ISIPTransport,
        request_handler: Optional[RequestHandler] = None,
        reactor: Optional[IReactorTime] = None,
        t1: float = T1,
        t2: float = T2,
        t4: float = T4,
        max_completed: int = MAX_COMPLETED,
        max_completed_bytes: int = MAX_COMPLETED_BYTES,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        if not (0 < t1 <= t2) or t4 <= 0:
            raise ValueError(f"timers need 0 < T1 <= T2 and T4 > 0 (got {t1}, {t2}, {t4})")
        self.clock: IReactorTime = reactor
        self.transport = transport
        self.request_handler = request_handler
        self.t1 = t1
        self.t2 = t2
        self.t4 = t4
        self.max_completed = max_completed
        self.stats = TransactionStats()
        self.clients: dict[tuple[str, str], ClientTransaction] = {}
        self.servers: dict[ServerKey, ServerTransaction] = {}
        # What completed transactions leave behind: for Timer J the final
        # answer (over UDP only: a retransmission comes from the address it
        # went to), for Timer K only the key.  Timer J must
        # outlast the *sender's* retransmissions, which run on its own T1: a
        # node with a short T1 still keeps answers for 64 times the default
        # T1 (32 s), or a late copy from a peer on the default would be
        # handled, and applied, a second time.
        # Their timers run at most every T1 (and T4 / 8): an entry lives up
        # to that much longer, and steady traffic wakes no timer per message.
        # An answer make_response made from the request alone is kept as what
        # makes it again, (code, reason, server), one tuple shared by all
        # such answers (its weight: 3); any other as its bytes.
        self.completed_servers: ExpiringMap[ServerKey, Kept] = ExpiringMap(
            reactor, 64 * max(t1, T1), max_completed, weigh=len, max_weight=max_completed_bytes,
            granularity=max(t1, T1),
        )
        self._remakes: dict[Remake, Remake] = {}
        # At most max_completed keys: past it a late copy of an old answer is a stray, and harmless.
        self.completed_clients: ExpiringMap[tuple[str, str], None] = ExpiringMap(
            reactor, t4, max_completed, granularity=t4 / 8
        )
        # Client transactions started less than T1 ago, oldest first, with
        # when each started: one timer for all of them (_sweep_young).
        self._young_queue: deque[tuple[float, ClientTransaction]] = deque()
        self._young_timer: Optional[IDelayedCall] = None
        self._valid_from: set[str] = set()
        """``From`` values known to parse with ``;tag=`` and any token after them."""
        self._valid_to: set[str] = set()
        """``To`` values known to parse."""

    # -- outbound ----------------------------------------------------------

    def request(self, request: Request, address: Address) -> "Deferred[Response]":
        """
        Send ``request`` to ``address`` in a new client transaction.

        A request above 1300 bytes for a UDP address goes over TCP when this
        node has TCP, falling back to UDP if the connection fails and the
        request fits the transport's datagram limit.  Without TCP, a request
        over that limit is not sent at all.

        :returns: a Deferred firing with the final response, or failing with
            :class:`TransactionTimeout` (408), :class:`MessageTooLarge` (513)
            or :class:`TransportError`.
        """
        key = self._client_key(request)
        if key in self.clients:
            raise ValueError(f"a transaction with branch {key[0]!r} is already running")
        data = request.to_bytes()
        fallback = None
        if address.transport == "udp":
            size = len(data)
            limit = self.transport.udp_max_size
            if size > LARGE_REQUEST and self.transport.supports("tcp"):
                if size <= limit:
                    fallback = (data, address)
                data = via_over(request, "tcp").to_bytes()
                address = Address("tcp", address.host, address.port)
                self.stats.sent_over_tcp_for_size += 1
            elif size > limit:
                self.stats.too_large += 1
                return fail(
                    MessageTooLarge(
                        f"{request.method} of {size} bytes to {address} is over the {limit}-byte datagram "
                        "limit, and TCP is not enabled on this node"
                    )
                )
        d: Deferred[Response] = Deferred()
        transaction = ClientTransaction(self, key, request, data, address, d.callback, fallback)
        self.clients[key] = transaction
        self.stats.requests_sent += 1
        transaction.start()
        return d

    def request_data(self, data: bytes, branch: str, method: str, address: Address) -> "Deferred[Response]":
        """
        Send a request already in bytes (a :class:`~dmq.sip.build.RequestTemplate`'s)
        to a UDP ``address`` in a new client transaction, as :meth:`request`
        does; ``data`` must fit a datagram and stay within
        :data:`LARGE_REQUEST` (else use :meth:`request`).

        :param branch: the branch of its top Via; ``method`` its CSeq method.
        """
        d: Deferred[Response] = Deferred()
        self.request_data_then(data, branch, method, address, d.callback)
        return d

    def request_data_then(
        self, data: bytes, branch: str, method: str, address: Address, notify: Callable[[Union[Response, Failure]], object]
    ) -> None:
        """
        :meth:`request_data` without a Deferred (the hot path of
        replication): ``notify`` is called once with the final response, or
        with a :class:`~twisted.python.failure.Failure` of
        :class:`TransactionTimeout` or :class:`TransportError`.  A send that
        fails at once calls it before this returns.

        :raises ValueError: when a transaction with this branch is running.
        """
        key = (branch, method)
        clients = self.clients
        if key in clients:
            raise ValueError(f"a transaction with branch {branch!r} is already running")
        transaction = ClientTransaction(self, key, None, data, address, notify)
        clients[key] = transaction
        self.stats.requests_sent += 1
        transaction.start()

    def _young(self, transaction: ClientTransaction, started: float) -> None:
        """Look at ``transaction`` again T1 after ``started`` (its own timers start then, if it is still running)."""
        self._young_queue.append((started, transaction))
        if self._young_timer is None:
            self._young_timer = self.clock.callLater(self.t1, self._sweep_young)

    def _sweep_young(self) -> None:
        """Hand every transaction started T1 ago or more and still running its own timers."""
        self._young_timer = None
        queue = self._young_queue
        # A little slack: the timer was set for the head's time, which float
        # arithmetic may put a hair after the clock's reading when it fires.
        due = self.clock.seconds() - self.t1 + 1e-9
        running = (State.TRYING, State.PROCEEDING)
        while queue and queue[0][0] <= due:
            started, transaction = queue.popleft()
            if (
                transaction.state in running
                and transaction._started == started
                and transaction._timer_f is None
                and self.clients.get(transaction.key) is transaction
            ):
                transaction._after_t1()
        if queue and self._young_timer is None:
            self._young_timer = self.clock.callLater(max(0.0, queue[0][0] + self.t1 - self.clock.seconds()), self._sweep_young)

    def _client_key(self, request: Request) -> tuple[str, str]:
        branch = request.branch
        if not branch:
            raise ValueError("a request to send needs a branch in its top Via")
        return (branch, request.cseq[1])

    def _client_done(self, transaction: ClientTransaction) -> None:
        clients = self.clients
        if clients.get(transaction.key) is transaction:
            del clients[transaction.key]
            if not clients and self._young_timer is not None:
                # Nothing runs any more: no timer stays behind for the queue.
                self._young_queue.clear()
                if self._young_timer.active():
                    self._young_timer.cancel()
                self._young_timer = None

    # -- inbound -----------------------------------------------------------

    def message_received(self, message: Union[Request, Response], source: Source) -> None:
        """
        Handle one parsed message from a transport.

        :raises SIPParseError: when a header needed here is malformed (the
            transport answers 400 or drops the message).
        """
        if isinstance(message, Response):
            self._response_received(message, source)
        else:
            self._request_received(message, source)

    def response_datagram(self, data: bytes) -> bool:
        """
        Take a UDP datagram that answers a running client transaction in the
        plainest shape without the general parser, and say whether it did.

        It takes an answer with no body whose ``Via``, ``From``, ``Call-ID``
        and ``CSeq`` lines are exactly those of the request (sent as bytes by
        :meth:`request_data`), with a ``To`` and perhaps a ``Server`` line
        (:func:`~dmq.sip.client.plain_answer`): what Kamailio and dmq answer
        a KDMQ.  The parser would take such an answer and match it to the same
        transaction, which gets a :class:`~dmq.sip.client.LazyResponse`
        that parses it in full only when more than its code, reason and
        ``Server`` is read.  Anything else (another shape, a stray, a late
        copy) is left to the general way: :meth:`message_received` after a
        full parse.
        """
        answer = plain_answer(data)
        if answer is None:
            return False
        code, reason, via, cseq, server, copied = answer
        at = via.find(b";branch=")
        if at < 0:
            return False
        end = via.find(b";", at + 8)
        key = (
            (via[at + 8 : end] if end >= 0 else via[at + 8 :]).decode("ascii"),
            cseq[cseq.find(b" ") + 1 :].decode("ascii"),
        )
        transaction = self.clients.get(key)
        if transaction is None or transaction.request is not None:
            return False
        sent = transaction.data
        head = sent.find(b"\r\n\r\n") + 2
        for piece in copied:
            if sent.find(piece, 0, head) < 0:
                return False  # not the request's own lines: the parser judges them
        self.stats.responses_received += 1
        transaction.response_received(LazyResponse(data, code, reason, server))
        return True

    def _response_received(self, response: Response, source: Source) -> None:
        self.stats.responses_received += 1
        vias = response.vias
        branch = vias[0].branch if vias else None
        key = (branch or "", response.cseq[1])
        transaction = self.clients.get(key)
        if transaction is None:
            if key in self.completed_clients:
                return  # a retransmitted final response (Timer K)
            self.stats.stray_responses += 1
            log.debug(
                "stray response {code} from {source} (branch {branch})",
                code=response.code,
                source=source.address,
                branch=branch,
            )
            return
        transaction.response_received(response)

    def _server_key(self, request: Request) -> ServerKey:
        method = "INVITE" if request.method == "ACK" else request.method
        vias = request.headers._index.get("via", ())
        if len(vias) == 1:
            plain = plain_branch(vias[0])
            if plain is not None and plain[0].startswith(MAGIC_COOKIE):
                # The usual request: one Via, checked by that match, and no Via object.
                return f"{plain[0]} {plain[1].lower()} {method}"
        top = request.vias[0]
        branch = top.branch
        if branch and branch.startswith(MAGIC_COOKIE):
            # One string rather than a tuple of three: a key may be kept for
            # 64*T1 with its answer, many thousands of them after a burst.
            # Neither a branch (a token) nor a sent-by holds a space.
            return f"{branch} {top.sent_by.lower()} {method}"
        # RFC 2543 peers: match on the request's identifying fields (17.2.3).
        return (
            str(request.uri),
            request.to.tag,
            request.from_.tag,
            request.call_id,
            request.cseq[0],
            str(top),
            method,
        )

    def _request_received(self, request: Request, source: Source) -> None:
        if request.method == "ACK":
            return  # no non-INVITE transaction takes an ACK; nothing answers one
        key = self._server_key(request)
        transaction = self.servers.get(key)
        if transaction is not None:
            transaction.retransmission()
            return
        done = self.completed_servers.get(key)
        if done is not None:
            self.stats.retransmitted_requests += 1
            if isinstance(done, bytes):
                data = done
            else:
                # Kept as what makes it: the copy of the request makes the same bytes.
                code, reason, server = done
                data = make_response(request, code, reason, server=server).to_bytes()
            # A resend that fails needs no word: the next retransmission tries again.
            self.transport.send(data, source.address, source.connection).addErrback(lambda f: None)
            return
        # Every answer copies From and To: a request whose From or To does not
        # parse is refused (SIPParseError: the transport answers 400) before a
        # handler sees it, so no answer carries a malformed one.
        index = request.headers._index
        # A node's requests to this one carry the same From but for the tag: a From that is
        # a known-good text then ";tag=" and a token is good, without a parse.
        head = untagged(index["from"][0])
        if head is None or head not in self._valid_from:
            request.from_  # noqa: B018
            if head is not None:
                _remember(self._valid_from, head)
        # ... and the same To: parsed once.
        to_text = index["to"][0]
        if to_text not in self._valid_to:
            request.to  # noqa: B018
            _remember(self._valid_to, to_text)
        self.stats.requests_received += 1
        handler = self.request_handler
        if handler is None:
            answer: Union[Response, Deferred[Response]] = make_response(request, 501)
        else:
            try:
                answer = handler(request, source)
            except Exception:
                answer = self._failure_response(Failure(), request, source)
        if type(answer) is Response and answer.code >= 200:
            # Answered at once (the usual case): no transaction object and no
            # Deferred; only the answer's bytes stay, for retransmissions.
            try:
                self._answer_now(key, request, source, answer)
            except Exception:
                self._answer_now(key, request, source, self._failure_response(Failure(), request, source))
            return
        transaction = ServerTransaction(self, key, request, source)
        self.servers[key] = transaction
        now_or_later(
            lambda: answer,
            transaction.respond,
            lambda failure: transaction.respond(self._failure_response(failure, request, source)),
        )

    def _answer_now(self, key: ServerKey, request: Request, source: Source, response: Response) -> None:
        """Send the final ``response`` to a request no server transaction holds, and keep it (Timer J)."""
        data, sent = self._response_bytes(response, request, source)
        address = source.address
        if address.reliable:
            self._send_response(data, request, source)
            return
        try:
            self.transport.send_datagram(data, address)
        except Exception as e:
            log.info("cannot send response to {address}: {reason}", address=address, reason=str(e))
        self.completed_servers.put(key, self._kept(sent, data))

    def _kept(self, response: Response, data: bytes) -> "Kept":
        """What Timer J keeps of ``response``, sent as ``data``: what makes it again when it can, else ``data``."""
        remake = response.remake()
        if remake is None:
            return data
        remakes = self._remakes
        shared = remakes.get(remake)
        if shared is None:
            shared = remake
            if len(remakes) < MAX_REMAKES:
                remakes[remake] = remake
        return shared

    def _response_bytes(self, response: Response, request: Request, source: Source) -> tuple[bytes, Response]:
        """``response`` as bytes (a 513 when it would not fit a datagram), counted; and the response they are."""
        data = response.to_bytes()
        limit = self.transport.udp_max_size
        if len(data) > limit and not source.address.reliable:
            self.stats.too_large += 1
            log.warn(
                "a {code} answer of {size} bytes to {source} is over the {limit}-byte datagram limit; answering 513",
                code=response.code,
                size=len(data),
                source=source.address,
                limit=limit,
            )
            response = make_response(request, 513, "Message Too Large")
            data = response.to_bytes()
        stats = self.stats
        stats.responses_sent += 1
        by_code = stats.by_code
        code = response.code
        by_code[code] = by_code.get(code, 0) + 1
        return data, response

    def _failure_response(self, failure: Failure, request: Request, source: Source) -> Response:
        """The answer to a request whose handler failed: the fault's own code for a SIPParseError, else 500."""
        self.stats.handler_errors += 1
        if failure.check(SIPParseError):
            error = failure.value
            log.info("bad request from {source}: {reason}", source=source.address, reason=str(error))
            return make_response(request, error.code, reason_with(error.code, str(error)))
        log.failure("handler failed on {method} from {source}", failure, method=request.method, source=source.address)
        return make_response(request, 500)

    def response_address(self, request: Request, source: Source) -> Address:
        """
        Where responses to ``request`` go: back to the source address over
        UDP (symmetric, as with ``rport``); over a stream, back over the
        connection, or else to the top Via's sent-by host and port.
        """
        address = source.address
        if not address.reliable:
            return address
        top = request.vias[0]
        host = top.params.get("received") or address.host
        port = top.port or 5060
        return Address(address.transport, host.strip("[]"), port)

    def _server_done(self, transaction: ServerTransaction) -> None:
        if self.servers.get(transaction.key) is transaction:
            del self.servers[transaction.key]

    def _send_response(self, data: bytes, request: Request, source: Source) -> None:
        address = self.response_address(request, source)
        self.transport.send(data, address, source.connection).addErrback(
            lambda f: log.info(
                "cannot send response to {address}: {reason}",
                address=address,
                reason=f.getErrorMessage(),
            )
        )

    def stop(self) -> None:
        """Cancel every timer; pending requests fail with a transport error."""
        for transaction in list(self.clients.values()):
            if transaction.state in (State.TRYING, State.PROCEEDING):
                transaction._terminate()
                transaction.notify(Failure(TransportError("transaction layer stopped")))
            else:
                transaction._terminate()
        self._young_queue.clear()
        if self._young_timer is not None and self._young_timer.active():
            self._young_timer.cancel()
        self._young_timer = None
        self.servers.clear()
        self.completed_servers.clear()
        self.completed_clients.clear()

