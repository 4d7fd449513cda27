"""
One non-INVITE client transaction (RFC 3261 section 17.1.2), the states
transactions go through, and the counters of the transaction layer.

A :class:`ClientTransaction` belongs to a
:class:`~dmq.sip.transaction.TransactionLayer`, which starts it, feeds it the
responses that match it, runs the timer that serves transactions younger than
T1, and reads its timers (T1, T2, T4) and transport from the layer.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from dmq.errors import TransactionTimeout, TransportError
from dmq.sip.address import Address
from dmq.sip.fields import Headers
from dmq.sip.message import Message, Request, Response
from dmq.sip.parse import MAX_LINE_LENGTH, parse_message

if TYPE_CHECKING:
    from dmq.sip.transaction import TransactionLayer

__all__ = ["ClientTransaction", "State", "TransactionStats", "LazyResponse", "plain_answer", "server_of"]

log = Logger()


class State(enum.Enum):
    """Transaction states (RFC 3261 figures 6 and 8)."""

    TRYING = "trying"
    PROCEEDING = "proceeding"
    COMPLETED = "completed"
    TERMINATED = "terminated"


@dataclass
class TransactionStats:
    """Counters the metrics layer reads."""

    requests_sent: int = 0
    retransmissions: int = 0
    timeouts: int = 0
    transport_errors: int = 0
    responses_received: int = 0
    stray_responses: int = 0
    requests_received: int = 0
    retransmitted_requests: int = 0
    responses_sent: int = 0
    handler_errors: int = 0
    sent_over_tcp_for_size: int = 0
    too_large: int = 0
    by_code: dict[int, int] = field(default_factory=dict)


_VALUE = rb"[!-~](?:[ -~]*[!-~])?"
# A final or provisional answer with no body whose header lines are all
# written "Name: value" in printable ASCII: what Kamailio and dmq answer a KDMQ.
_PLAIN_ANSWER_RE = re.compile(
    rb"SIP/2\.0 ([1-6][0-9][0-9]) ([ -~]*)\r\n((?:[A-Za-z-]+: " + _VALUE + rb"\r\n){5,8})Content-Length: 0\r\n\r\n"
)
# The same with the lines in the order of dmq's requests (Kamailio copies
# them in the request's order), caught in one match: the Via line, and the
# From, CSeq and Call-ID lines as one piece of text.
_IN_REQUEST_ORDER_RE = re.compile(
    rb"SIP/2\.0 ([1-6][0-9][0-9]) ([ -~]*)(\r\nVia: (" + _VALUE + rb")\r\n)To: " + _VALUE
    + rb"(\r\nFrom: " + _VALUE + rb"\r\nCSeq: (" + _VALUE + rb")\r\nCall-ID: " + _VALUE + rb"\r\n)"
    + rb"(?:Server: (" + _VALUE + rb")\r\n)?Content-Length: 0\r\n\r\n"
)
# The lines an answer copies from its request (each must be the request's
# own line), and those it may add.
_COPIED = frozenset((b"Via", b"From", b"Call-ID", b"CSeq"))
_ADDED = frozenset((b"To", b"Server"))

PlainAnswer = tuple[int, str, bytes, bytes, Optional[str], tuple[bytes, ...]]
"""Code, reason, Via value, CSeq value, Server value, and the pieces copied from the request."""


def plain_answer(data: bytes) -> Optional[PlainAnswer]:
    """
    What the plainest shape of answer holds (see
    :meth:`TransactionLayer.response_datagram
    <dmq.sip.transaction.TransactionLayer.response_datagram>`): one each of
    ``Via``, ``From``, ``To``, ``Call-ID``, ``CSeq``, at most one ``Server``,
    in any order, then ``Content-Length: 0`` and no body.

    :returns: the status code, the reason phrase, the ``Via`` and ``CSeq``
        values, the ``Server`` value (or ``None``), and the pieces of text,
        each whole lines between CRLFs, that must be found in the request's
        header section (its ``Via``, ``From``, ``Call-ID`` and ``CSeq``
        lines); ``None`` for anything else (the general parser takes it).
    """
    if len(data) > MAX_LINE_LENGTH:
        return None  # within it no cap of the parser's can be exceeded
    m = _IN_REQUEST_ORDER_RE.fullmatch(data)
    if m is not None:
        code, reason, via_line, via, copied, cseq, server = m.groups()
        return (
            int(code), reason.decode("ascii"), via, cseq,
            server.decode("ascii") if server is not None else None, (via_line, copied),
        )
    m = _PLAIN_ANSWER_RE.fullmatch(data)
    if m is None:
        return None
    code, reason, block = m.groups()
    values: dict[bytes, bytes] = {}
    pieces = []
    for line in block.split(b"\r\n")[:-1]:
        name, _, value = line.partition(b": ")
        if (name not in _COPIED and name not in _ADDED) or name in values:
            return None
        values[name] = value
        if name in _COPIED:
            pieces.append(b"\r\n" + line + b"\r\n")
    if len(values) - (b"Server" in values) != 5:
        return None  # one of Via, From, To, Call-ID, CSeq is missing
    server = values.get(b"Server")
    return (
        int(code), reason.decode("ascii"), values[b"Via"], values[b"CSeq"],
        server.decode("ascii") if server is not None else None, tuple(pieces),
    )


def server_of(response: Response) -> Optional[str]:
    """The ``Server`` value of ``response`` (without a full parse of a :class:`LazyResponse`)."""
    if type(response) is LazyResponse:
        return response.server
    return response.headers.get("Server")


_HEADERS: Any = Message.__dict__["headers"]
_BODY: Any = Message.__dict__["_body"]
_CACHE: Any = Message.__dict__["_cache"]


class LazyResponse(Response):
    """
    A response known by its status line and ``Server`` header, parsed in
    full (by :func:`~dmq.sip.parse.parse_message`, which takes it: see
    :meth:`TransactionLayer.response_datagram
    <dmq.sip.transaction.TransactionLayer.response_datagram>`) only when
    anything else is read.  It compares, reads and serialises as the
    response the parser gives.

    :ivar server: the ``Server`` value, or ``None``.
    """

    __slots__ = ("_data", "server")

    def __init__(self, data: bytes, code: int, reason: str, server: Optional[str]) -> None:
        # Response.__init__ would build headers: they are left for _parse.
        self._data = data
        self.code = code
        self.reason = reason
        self.server = server

    def _parse(self) -> None:
        full = parse_message(self._data, max_size=len(self._data))
        _HEADERS.__set__(self, full.headers)
        _BODY.__set__(self, full._body)
        _CACHE.__set__(self, full._cache)

    @property
    def headers(self) -> Headers:
        """The headers (the response is parsed in full on first use)."""
        try:
            return _HEADERS.__get__(self, LazyResponse)
        except AttributeError:
            self._parse()
            return _HEADERS.__get__(self, LazyResponse)

    @headers.setter
    def headers(self, value: Headers) -> None:
        self._parse_once()
        _HEADERS.__set__(self, value)

    @property
    def _body(self) -> bytes:
        self._parse_once()
        return _BODY.__get__(self, LazyResponse)

    @_body.setter
    def _body(self, value: bytes) -> None:
        self._parse_once()
        _BODY.__set__(self, value)

    @property
    def _cache(self) -> dict[str, object]:
        self._parse_once()
        return _CACHE.__get__(self, LazyResponse)

    @_cache.setter
    def _cache(self, value: dict[str, object]) -> None:
        self._parse_once()
        _CACHE.__set__(self, value)

    def _parse_once(self) -> None:
        try:
            _HEADERS.__get__(self, LazyResponse)
        except AttributeError:
            self._parse()


class ClientTransaction:
    """
    A non-INVITE client transaction: one request to one address.

    Most transactions are answered within T1, so none starts timers of its
    own: the layer keeps them in one queue in the order they started, served
    by one timer (:meth:`TransactionLayer._sweep_young`).  Only a transaction
    still unanswered after T1 gets timers E (over UDP) and F.  An in-flight
    transaction holds its request's bytes, its key and address, and whom to
    tell; once it completes it drops the bytes, and only its key stays
    (Timer K, T4 over UDP).

    :ivar notify: called once with the outcome: the final :class:`Response`,
        or a :class:`~twisted.python.failure.Failure` of
        :class:`TransactionTimeout` or :class:`TransportError` (a Deferred's
        ``callback`` serves: given a Failure it runs the errbacks).
    """

    __slots__ = (
        "layer", "key", "request", "data", "address", "state", "notify",
        "_fallback", "_interval", "_started", "_timer_e", "_timer_f",
    )

    def __init__(
        self,
        layer: "TransactionLayer",
        key: tuple[str, str],
        request: Optional[Request],
        data: bytes,
        address: Address,
        notify: Callable[[Union[Response, Failure]], object],
        fallback: Optional[tuple[bytes, Address]] = None,
    ) -> None:
        self.layer = layer
        self.key = key
        self.request = request
        self.data = data
        self.address = address
        self.state = State.TRYING
        self.notify = notify
        self._fallback = fallback
        self._interval = layer.t1
        self._started = 0.0
        self._timer_e: Optional[IDelayedCall] = None
        self._timer_f: Optional[IDelayedCall] = None

    def start(self) -> None:
        """Send the request; the layer looks at it again after T1."""
        layer = self.layer
        self._started = started = layer.clock.seconds()
        layer._young(self, started)
        self._send()  # last: a send may fail at once and end the transaction

    def _send(self) -> None:
        address = self.address
        if address.transport == "udp":
            try:
                self.layer.transport.send_datagram(self.data, address)
            except Exception:
                self._on_transport_error(Failure())
            return
        self.layer.transport.send(self.data, address).addErrback(self._on_transport_error)

    def _after_t1(self) -> None:
        """Still unanswered T1 after it started: timer F for the rest of 64*T1, and over UDP a retransmission."""
        layer = self.layer
        remaining = self._started + 64 * layer.t1 - layer.clock.seconds()
        self._timer_f = layer.clock.callLater(max(0.0, remaining), self._on_timer_f)
        if not self.address.reliable:
            self._on_timer_e()

    def _on_timer_e(self) -> None:
        self._timer_e = None
        if self.state not in (State.TRYING, State.PROCEEDING):
            return
        self.layer.stats.retransmissions += 1
        self._send()
        if self.state is State.TRYING:
            self._interval = min(2 * self._interval, self.layer.t2)
        else:
            self._interval = self.layer.t2
        if self.state in (State.TRYING, State.PROCEEDING):
            self._timer_e = self.layer.clock.callLater(self._interval, self._on_timer_e)

    def _on_timer_f(self) -> None:
        self._timer_f = None
        if self.state in (State.TRYING, State.PROCEEDING):
            self.layer.stats.timeouts += 1
            self._terminate()
            self.notify(
                Failure(TransactionTimeout(f"no final response from {self.address} in {64 * self.layer.t1:g} s"))
            )

    def _on_transport_error(self, failure: Failure) -> None:
        if self.state not in (State.TRYING, State.PROCEEDING):
            return
        if self._fallback is not None:
            # A large request could not go over TCP: send it over UDP after all.
            data, address = self._fallback
            self._fallback = None
            log.debug(
                "TCP to {address} failed ({reason}); sending over UDP",
                address=self.address,
                reason=failure.getErrorMessage(),
            )
            self._cancel_timers()
            self.data, self.address = data, address
            self.state = State.TRYING
            self._interval = self.layer.t1
            self.start()
            return
        self.layer.stats.transport_errors += 1
        self._terminate()
        error = failure.value if isinstance(failure.value, TransportError) else TransportError(
            f"cannot send to {self.address}: {failure.getErrorMessage()}"
        )
        self.notify(Failure(error))

    def response_received(self, response: Response) -> None:
        """Handle a response matched to this transaction."""
        if self.state in (State.COMPLETED, State.TERMINATED):
            return  # a retransmitted final response, absorbed
        if response.code < 200:
            self.state = State.PROCEEDING
            return
        self._terminate()
        self.state = State.COMPLETED
        if not self.address.reliable:
            # Timer K: retransmitted copies of the response are absorbed for T4.
            self.layer.completed_clients.put(self.key, None)
        self.notify(response)

    def _cancel_timers(self) -> None:
        timer = self._timer_e
        if timer is not None:
            if timer.active():
                timer.cancel()
            self._timer_e = None
        timer = self._timer_f
        if timer is not None:
            if timer.active():
                timer.cancel()
            self._timer_f = None

    def _terminate(self) -> None:
        self._cancel_timers()
        self.state = State.TERMINATED
        self.data = b""  # nothing is sent any more: the bytes need not wait for the sweep of young transactions
        self.request = None
        self.layer._client_done(self)
