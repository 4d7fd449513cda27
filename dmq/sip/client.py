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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Optional, Union

from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from dmq.errors import TransactionTimeout, TransportError
from dmq.sip.address import Address
from dmq.sip.message import Request, Response

if TYPE_CHECKING:
    from dmq.sip.transaction import TransactionLayer

__all__ = ["ClientTransaction", "State", "TransactionStats"]

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
