"""Non-INVITE client and server transactions on a fake clock and a fake transport."""

from __future__ import annotations

import gc
import platform
from typing import Callable

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from dmq.errors import MessageTooLarge, SIPParseError, TransactionTimeout, TransportError
from dmq.interfaces import IMessageHandler, ISIPTransport
from dmq.sip import SIPURI, build_request, make_response, parse_message
from dmq.sip.address import Address
from dmq.sip.expiry import ExpiringMap
from dmq.sip.handler import now_or_later
from dmq.sip.message import Request, Response
from dmq.sip.transaction import LARGE_REQUEST, Source, TransactionLayer
from dmq.testing import FakeSIPTransport

PEER = Address("udp", "127.0.0.1", 5071)
PEER_TCP = Address("tcp", "127.0.0.1", 5071)
LOCAL = SIPURI.parse("sip:notification_peer@127.0.0.1:5070")


def kdmq(body: bytes = b"sip:127.0.0.1:5070;status=active\r\n", transport: str = "UDP") -> Request:
    """A node-list KDMQ from 127.0.0.1:5070 to 127.0.0.1:5071."""
    return build_request(
        "KDMQ",
        SIPURI.parse("sip:notification_peer@127.0.0.1:5071"),
        from_uri=LOCAL,
        via_transport=transport,
        via_sent_by="127.0.0.1:5070",
        body=body,
        content_type="text/plain",
        max_forwards=1,
    )


def make_layer(transports: tuple[str, ...] = ("udp",), handler=None, **kw):
    clock = Clock()
    transport = FakeSIPTransport(clock, transports)
    layer = TransactionLayer(transport, handler, reactor=clock, **kw)
    transport.controller = layer
    return clock, transport, layer


class ClientTransactionTests(SynchronousTestCase):
    """The client side: retransmissions, timeouts, matching."""

    def test_interfaces(self) -> None:
        """The layer and the fake transport provide their interfaces."""
        _, transport, layer = make_layer()
        verifyObject(ISIPTransport, transport)
        verifyObject(IMessageHandler, layer)

    def test_udp_retransmission_schedule_and_timeout(self) -> None:
        """An unanswered UDP request is sent at 0, .5, 1.5, 3.5, 7.5 ... 31.5 s and fails with 408 at 32 s."""
        clock, transport, layer = make_layer()
        d = layer.request(kdmq(), PEER)
        clock.pump([0.5] * 63)  # up to 31.5 s
        self.assertNoResult(d)
        clock.advance(0.5)
        failure = self.failureResultOf(d, TransactionTimeout)
        self.assertEqual(failure.value.code, 408)
        times = [round(s.time, 6) for s in transport.sent]
        self.assertEqual(times, [0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5])
        self.assertEqual(len({s.data for s in transport.sent}), 1)
        self.assertEqual(layer.stats.timeouts, 1)
        self.assertEqual(layer.clients, {})
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_one_timer_for_young_transactions(self) -> None:
        """Requests in flight less than T1 share one timer; answered ones leave none; late ones get E and F at T1."""
        clock, transport, layer = make_layer()
        requests = [kdmq() for _ in range(50)]
        ds = [layer.request(request, PEER) for request in requests]
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        clock.advance(0.25)
        for request in requests[:49]:
            transport.receive(make_response(request, 200).to_bytes(), PEER)
        self.assertEqual([self.successResultOf(d).code for d in ds[:49]], [200] * 49)
        self.assertNoResult(ds[49])
        self.assertEqual(len(layer.clients), 1)
        clock.advance(0.25)  # T1: the last one is retransmitted and gets timers of its own
        self.assertEqual(len(transport.sent), 51)
        self.assertEqual(transport.sent[-1].data, transport.sent[49].data)
        self.assertEqual(len(clock.getDelayedCalls()), 3)  # E, F and Timer K's sweep of the answered ones
        transport.receive(make_response(requests[49], 200).to_bytes(), PEER)
        self.assertEqual(self.successResultOf(ds[49]).code, 200)
        clock.advance(layer.t4)
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual(layer.clients, {})

    def test_answered_client_keys_capped(self) -> None:
        """Past max_completed, the keys of the oldest answered client transactions go first (a late copy is a stray)."""
        clock, transport, layer = make_layer(max_completed=3)
        requests = [kdmq() for _ in range(5)]
        for request in requests:
            layer.request(request, PEER)
            transport.receive(make_response(request, 200).to_bytes(), PEER)
        self.assertEqual(len(layer.completed_clients), 3)
        transport.receive(make_response(requests[-1], 200).to_bytes(), PEER)
        self.assertEqual(layer.stats.stray_responses, 0)
        transport.receive(make_response(requests[0], 200).to_bytes(), PEER)
        self.assertEqual(layer.stats.stray_responses, 1)

    def test_request_data(self) -> None:
        """A request given as bytes is sent, retransmitted and matched like one given as a Request."""
        clock, transport, layer = make_layer()
        request = kdmq()
        d = layer.request_data(request.to_bytes(), request.branch or "", "KDMQ", PEER)
        clock.advance(0.5)
        self.assertEqual([s.data for s in transport.sent], [request.to_bytes()] * 2)
        transport.receive(make_response(request, 202).to_bytes(), PEER)
        self.assertEqual(self.successResultOf(d).code, 202)
        d = layer.request_data(request.to_bytes(), request.branch or "", "KDMQ", PEER)
        clock.pump([0.5] * 64)
        self.failureResultOf(d, TransactionTimeout)
        self.assertEqual(len(transport.sent), 2 + 11)  # sent at 0, .5, 1.5, 3.5, 7.5, ... 31.5 s

    def test_tcp_sends_once_and_times_out(self) -> None:
        """Over TCP the request is sent once, never retransmitted, and still times out at 64*T1."""
        clock, transport, layer = make_layer(("udp", "tcp"))
        d = layer.request(kdmq(transport="TCP"), PEER_TCP)
        clock.advance(31.9)
        self.assertEqual(len(transport.sent), 1)
        self.assertNoResult(d)
        clock.advance(0.1)
        self.failureResultOf(d, TransactionTimeout)

    def test_custom_timers(self) -> None:
        """T1 and T2 set the schedule: T1=1/8, T2=1/4 gives sends at 0, 1/8, 3/8, 5/8, ... and 408 at 8 s."""
        clock, transport, layer = make_layer(t1=0.125, t2=0.25)
        d = layer.request(kdmq(), PEER)
        clock.pump([0.125] * 63)
        self.assertNoResult(d)
        clock.advance(0.125)
        self.failureResultOf(d, TransactionTimeout)
        times = [s.time for s in transport.sent]
        self.assertEqual(times[:5], [0, 0.125, 0.375, 0.625, 0.875])
        self.assertEqual(times[-1], 7.875)

    def test_final_response_completes(self) -> None:
        """A 200 fires the Deferred, stops retransmissions, and Timer K absorbs a retransmitted 200."""
        clock, transport, layer = make_layer()
        request = kdmq()
        d = layer.request(request, PEER)
        clock.advance(0.5)
        self.assertEqual(len(transport.sent), 2)
        response = make_response(request, 200)
        transport.receive(response.to_bytes(), PEER)
        result = self.successResultOf(d)
        self.assertEqual(result.code, 200)
        transport.receive(response.to_bytes(), PEER)  # retransmitted final response
        self.assertEqual(layer.stats.stray_responses, 0)
        clock.advance(40)
        self.assertEqual(len(transport.sent), 2)
        self.assertEqual(layer.clients, {})

    def test_timer_k_then_stray(self) -> None:
        """After Timer K (T4) the transaction is gone and a late copy of the response is a stray."""
        clock, transport, layer = make_layer()
        request = kdmq()
        d = layer.request(request, PEER)
        response = make_response(request, 200).to_bytes()
        transport.receive(response, PEER)
        self.successResultOf(d)
        self.assertEqual(layer.clients, {})
        clock.advance(4.9)
        self.assertEqual(len(layer.completed_clients), 1)
        clock.advance(0.1)
        self.assertEqual(len(layer.completed_clients), 0)
        transport.receive(response, PEER)
        self.assertEqual(layer.stats.stray_responses, 1)

    def test_provisional_then_t2_interval(self) -> None:
        """After a 1xx the request is retransmitted every T2 until the final response."""
        clock, transport, layer = make_layer()
        request = kdmq()
        d = layer.request(request, PEER)
        transport.receive(make_response(request, 100).to_bytes(), PEER)
        clock.pump([0.5] * 20)
        times = [round(s.time, 6) for s in transport.sent]
        self.assertEqual(times, [0, 0.5, 4.5, 8.5])
        self.assertNoResult(d)
        transport.receive(make_response(request, 404).to_bytes(), PEER)
        self.assertEqual(self.successResultOf(d).code, 404)

    def test_response_matching_needs_branch_and_method(self) -> None:
        """A response with another branch or CSeq method does not complete the transaction."""
        clock, transport, layer = make_layer()
        request = kdmq()
        d = layer.request(request, PEER)
        wrong_branch = make_response(request, 200)
        wrong_branch.headers.set("Via", "SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKother")
        transport.receive(wrong_branch.to_bytes(), PEER)
        wrong_method = make_response(request, 200)
        wrong_method.headers.set("CSeq", "10 OPTIONS")
        transport.receive(wrong_method.to_bytes(), PEER)
        self.assertNoResult(d)
        self.assertEqual(layer.stats.stray_responses, 2)
        transport.receive(make_response(request, 200).to_bytes(), PEER)
        self.successResultOf(d)

    def test_transport_error_fails_at_once(self) -> None:
        """A send that fails with a transport error fails the request at once, with no timers left."""
        clock, transport, layer = make_layer(("udp", "tcp"))
        transport.fail = lambda address: True
        d = layer.request(kdmq(transport="TCP"), PEER_TCP)
        failure = self.failureResultOf(d, TransportError)
        self.assertEqual(failure.value.code, 503)
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual(layer.clients, {})

    def test_large_request_goes_over_tcp(self) -> None:
        """A request above 1300 bytes for a UDP address goes over TCP, with a TCP Via, once."""
        clock, transport, layer = make_layer(("udp", "tcp"))
        body = b"x" * (LARGE_REQUEST + 1)
        d = layer.request(kdmq(body=body), PEER)
        self.assertEqual(len(transport.sent), 1)
        sent = transport.sent[0]
        self.assertEqual(sent.address, PEER_TCP)
        self.assertEqual(sent.message.vias[0].transport, "TCP")
        clock.advance(5)
        self.assertEqual(len(transport.sent), 1)
        request = sent.message
        assert isinstance(request, Request)
        transport.receive(make_response(request, 200).to_bytes(), PEER_TCP)
        self.assertEqual(self.successResultOf(d).code, 200)

    def test_large_request_falls_back_to_udp(self) -> None:
        """When TCP to the node fails, a large request is sent over UDP after all."""
        clock, transport, layer = make_layer(("udp", "tcp"))
        transport.fail = lambda address: address.transport == "tcp"
        request = kdmq(body=b"y" * 2000)
        d = layer.request(request, PEER)
        self.assertEqual([s.address for s in transport.sent], [PEER_TCP, PEER])
        self.assertEqual(transport.sent[1].message.vias[0].transport, "UDP")
        clock.advance(0.5)
        self.assertEqual(len(transport.sent), 3)
        transport.receive(make_response(request, 200).to_bytes(), PEER)
        self.successResultOf(d)

    def test_large_request_stays_udp_without_tcp(self) -> None:
        """Without TCP a large request goes over UDP."""
        clock, transport, layer = make_layer(("udp",))
        layer.request(kdmq(body=b"z" * 2000), PEER)
        self.assertEqual(transport.sent[0].address, PEER)

    def test_request_over_the_datagram_limit_without_tcp_is_refused(self) -> None:
        """Without TCP, a request above the datagram limit is not sent: it fails at once with 513."""
        clock, transport, layer = make_layer(("udp",))
        transport.udp_max_size = 4000
        d = layer.request(kdmq(body=b"z" * 4000), PEER)
        failure = self.failureResultOf(d, MessageTooLarge)
        self.assertEqual(failure.value.code, 513)
        self.assertIn("4000-byte datagram limit", str(failure.value))
        self.assertEqual(transport.sent, [])
        self.assertEqual(layer.stats.too_large, 1)
        self.assertEqual(layer.clients, {})

    def test_request_over_the_datagram_limit_never_falls_back_to_udp(self) -> None:
        """A request above the datagram limit goes over TCP only: when TCP fails it fails, no datagram is sent."""
        clock, transport, layer = make_layer(("udp", "tcp"))
        transport.udp_max_size = 4000
        transport.fail = lambda address: address.transport == "tcp"
        d = layer.request(kdmq(body=b"z" * 4000), PEER)
        self.failureResultOf(d, TransportError)
        self.assertEqual([s.address for s in transport.sent], [PEER_TCP])
        clock.advance(40)
        self.assertEqual(len(transport.sent), 1)

    def test_request_at_the_datagram_limit_goes_over_udp(self) -> None:
        """Without TCP, a request of exactly the limit is sent, and retransmitted, as it is."""
        clock, transport, layer = make_layer(("udp",))
        size = len(kdmq(body=b"z" * 3000).to_bytes())
        transport.udp_max_size = size
        layer.request(kdmq(body=b"z" * 3000), PEER)
        clock.advance(0.5)
        self.assertEqual([len(s.data) for s in transport.sent], [size, size])

    def test_duplicate_branch_refused(self) -> None:
        """Sending two requests with the same branch is a programming error."""
        clock, transport, layer = make_layer()
        request = kdmq()
        layer.request(request, PEER)
        with pytest.raises(ValueError):
            layer.request(request, PEER)

    def test_stop_fails_pending(self) -> None:
        """Stopping the layer fails pending requests and leaves no timer."""
        clock, transport, layer = make_layer()
        d = layer.request(kdmq(), PEER)
        layer.stop()
        self.failureResultOf(d, TransportError)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_bad_timers_refused(self) -> None:
        """T1 above T2 or a non-positive timer is refused."""
        with pytest.raises(ValueError):
            make_layer(t1=5, t2=4)
        with pytest.raises(ValueError):
            make_layer(t4=0)


class ServerTransactionTests(SynchronousTestCase):
    """The server side: dispatch, retransmission absorption, Timer J."""

    def test_response_and_retransmissions(self) -> None:
        """A retransmitted request gets the stored final response byte for byte, the handler runs once."""
        calls = []

        def handler(request: Request, source: Source) -> Response:
            calls.append(request)
            return make_response(request, 200)

        clock, transport, layer = make_layer(handler=handler)
        data = kdmq().to_bytes()
        transport.receive(data, PEER)
        transport.receive(data, PEER)
        transport.receive(data, PEER)
        self.assertEqual(len(calls), 1)
        self.assertEqual(len(transport.sent), 3)
        self.assertEqual(len({s.data for s in transport.sent}), 1)
        response = transport.sent[0].message
        assert isinstance(response, Response)
        self.assertEqual(response.code, 200)
        self.assertIsNotNone(response.to.tag)
        self.assertEqual(transport.sent[0].address, PEER)
        self.assertEqual(layer.stats.retransmitted_requests, 2)

    def test_retransmissions_get_the_same_bytes_however_the_answer_was_made(self) -> None:
        """A retransmission gets the first answer byte for byte: a plain one kept as what makes it again, one
        changed after make_response (a header added or set, a body) or answered later kept as its bytes."""

        def added(request: Request, source: Source) -> Response:
            response = make_response(request, 200, "Fine", server="x")
            response.headers.add("X-Extra", "1")
            return response

        def set_header(request: Request, source: Source) -> Response:
            response = make_response(request, 200)
            response.headers.set("Server", "other")
            return response

        def with_body(request: Request, source: Source) -> Response:
            response = make_response(request, 200, server=None)
            response.body = b"late body"
            return response

        def later(request: Request, source: Source) -> "Deferred[Response]":
            d: Deferred[Response] = Deferred()
            clock.callLater(1, d.callback, make_response(request, 202, "Later"))
            return d

        cases = [
            (lambda r, s: make_response(r, 404, "User Not Found", server="kamailio"), tuple, b" 404 User Not Found\r\n"),
            (lambda r, s: make_response(r, 200, server=None), tuple, b"\r\nContent-Length: 0\r\n"),
            (added, bytes, b"\r\nX-Extra: 1\r\n"),
            (set_header, bytes, b"\r\nServer: other\r\n"),
            (with_body, bytes, b"\r\n\r\nlate body"),
            (later, tuple, b" 202 Later\r\n"),
        ]
        for handler, kept_as, part in cases:
            clock, transport, layer = make_layer(handler=handler)
            data = kdmq().to_bytes()
            transport.receive(data, PEER)
            clock.advance(1)
            transport.receive(data, PEER)
            transport.receive(data, PEER)
            self.assertEqual(len(transport.sent), 3, part)
            self.assertEqual(len({s.data for s in transport.sent}), 1, part)
            self.assertIn(part, transport.sent[0].data)
            [kept] = layer.completed_servers._entries.values()
            self.assertIsInstance(kept, kept_as, part)

    def test_answer_at_once_makes_no_transaction(self) -> None:
        """A handler answering at once gets no server transaction; its answer goes out and stays for retransmissions."""
        seen: list[int] = []
        layer_box: list[TransactionLayer] = []

        def handler(request: Request, source: Source) -> Response:
            seen.append(len(layer_box[0].servers))
            return make_response(request, 200)

        clock, transport, layer = make_layer(handler=handler)
        layer_box.append(layer)
        data = kdmq().to_bytes()
        transport.receive(data, PEER)
        self.assertEqual(seen, [0])
        self.assertEqual(layer.servers, {})
        self.assertEqual(len(layer.completed_servers), 1)
        transport.receive(data, PEER)
        self.assertEqual(seen, [0])
        self.assertEqual([s.data for s in transport.sent[1:]], [transport.sent[0].data])
        self.assertEqual(layer.stats.by_code, {200: 1})

    def test_failing_send_of_an_answer_at_once(self) -> None:
        """An answer that cannot be sent is logged and still kept: a retransmission gets it again."""
        clock, transport, layer = make_layer(handler=lambda request, source: make_response(request, 200))
        transport.fail = lambda address: True
        data = kdmq().to_bytes()
        transport.receive(data, PEER)
        transport.fail = None
        transport.receive(data, PEER)
        self.assertEqual(len(transport.sent), 2)
        self.assertEqual(transport.sent[0].data, transport.sent[1].data)
        self.assertEqual(layer.stats.requests_received, 1)

    def test_retransmission_before_final_is_absorbed(self) -> None:
        """Before the handler answers, a retransmission gets nothing; the answer then goes out once."""
        pending: Deferred[Response] = Deferred()
        clock, transport, layer = make_layer(handler=lambda request, source: pending)
        request = kdmq()
        data = request.to_bytes()
        transport.receive(data, PEER)
        transport.receive(data, PEER)
        self.assertEqual(transport.sent, [])
        pending.callback(make_response(parse_message(data), 202))  # type: ignore[arg-type]
        self.assertEqual(len(transport.sent), 1)
        transport.receive(data, PEER)
        self.assertEqual(len(transport.sent), 2)

    def test_timer_j(self) -> None:
        """Over UDP the server transaction lives 64*T1 after its final response, then a copy is new."""
        calls = []
        clock, transport, layer = make_layer(
            handler=lambda request, source: calls.append(1) or make_response(request, 200)
        )
        data = kdmq().to_bytes()
        transport.receive(data, PEER)
        clock.advance(31.9)
        transport.receive(data, PEER)
        self.assertEqual(len(calls), 1)
        self.assertEqual(len(layer.completed_servers), 1)
        clock.advance(0.1)
        self.assertEqual(len(layer.completed_servers), 0)
        self.assertEqual(clock.getDelayedCalls(), [])
        transport.receive(data, PEER)
        self.assertEqual(len(calls), 2)

    def test_timer_j_covers_a_peer_on_the_default_t1(self) -> None:
        """With a short own T1, answers are still kept 64 times the default T1 (32 s): a late copy is not applied twice."""
        calls = []
        clock, transport, layer = make_layer(
            handler=lambda request, source: calls.append(1) or make_response(request, 200), t1=0.05, t2=0.4
        )
        data = kdmq().to_bytes()
        transport.receive(data, PEER)
        clock.advance(31.5)  # a peer on T1 = 0.5 s sends its last copy at 31.5 s
        transport.receive(data, PEER)
        self.assertEqual(len(calls), 1)
        self.assertEqual(transport.messages()[-1].code, 200)
        self.assertEqual(len(transport.sent), 2)
        clock.advance(0.5)
        self.assertEqual(len(layer.completed_servers), 0)

    def test_completed_transactions_capped(self) -> None:
        """Past max_completed, the oldest completed transactions are forgotten first."""
        calls = []
        clock, transport, layer = make_layer(
            handler=lambda request, source: calls.append(1) or make_response(request, 200), max_completed=3
        )
        requests = [kdmq().to_bytes() for _ in range(5)]
        for data in requests:
            transport.receive(data, PEER)
        self.assertEqual(len(layer.completed_servers), 3)
        transport.receive(requests[-1], PEER)  # still known: answered from memory
        self.assertEqual(len(calls), 5)
        transport.receive(requests[0], PEER)  # forgotten: handled as new
        self.assertEqual(len(calls), 6)

    def test_answer_over_the_datagram_limit_becomes_513(self) -> None:
        """An answer too large for a datagram is replaced by 513 Message Too Large, also for retransmissions."""
        handler = lambda r, s: make_response(r, 200, body=b"n" * 5000, content_type="text/plain")  # noqa: E731
        clock, transport, layer = make_layer(handler=handler)
        transport.udp_max_size = 4000
        data = kdmq().to_bytes()
        transport.receive(data, PEER)
        transport.receive(data, PEER)
        answers = [s.message for s in transport.sent]
        self.assertEqual([a.code for a in answers], [513, 513])  # type: ignore[union-attr]
        self.assertEqual(answers[0].reason, "Message Too Large")  # type: ignore[union-attr]
        self.assertEqual(layer.stats.too_large, 1)

    def test_reliable_state_freed(self) -> None:
        """Over TCP the server transaction is freed as soon as the final response is sent."""
        clock, transport, layer = make_layer(("udp", "tcp"), handler=lambda r, s: make_response(r, 200))
        transport.receive(kdmq(transport="TCP").to_bytes(), Source(PEER_TCP, connection="conn"))
        self.assertEqual(layer.servers, {})
        self.assertEqual(len(layer.completed_servers), 0)
        self.assertEqual(transport.sent[0].connection, "conn")
        self.assertEqual(transport.sent[0].address, Address("tcp", "127.0.0.1", 5070))

    def test_handler_exception_is_500(self) -> None:
        """A handler that raises gets the request answered 500, and the failure is logged."""

        def handler(request: Request, source: Source) -> Response:
            raise RuntimeError("boom")

        clock, transport, layer = make_layer(handler=handler)
        transport.receive(kdmq().to_bytes(), PEER)
        self.assertEqual(transport.sent[0].message.code, 500)  # type: ignore[union-attr]
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(layer.stats.handler_errors, 1)

    def test_bad_lazy_header_is_400(self) -> None:
        """A handler that trips over a malformed header answers 400 naming it."""

        def handler(request: Request, source: Source) -> Response:
            request.content_type  # noqa: B018
            return make_response(request, 200)

        clock, transport, layer = make_layer(handler=handler)
        data = kdmq().to_bytes().replace(b"Content-Type: text/plain", b"Content-Type: text/<plain>")
        transport.receive(data, PEER)
        response = transport.sent[0].message
        assert isinstance(response, Response)
        self.assertEqual(response.code, 400)
        self.assertIn("Content-Type", response.reason)

    def test_bad_from_or_to_is_refused_before_the_handler(self) -> None:
        """A request whose From or To does not parse reaches no handler: SIPParseError (the transport answers 400)."""
        seen: list[Request] = []

        def handler(request: Request, source: Source) -> Response:
            seen.append(request)
            return make_response(request, 200)

        clock, transport, layer = make_layer(handler=handler)
        for header in (b"From: <", b"To: <"):
            data = kdmq().to_bytes().replace(header + b"sip:", header + b"bad sip:")
            with self.assertRaises(SIPParseError) as caught:
                transport.receive(data, PEER)
            self.assertIn(header[:-3].decode(), str(caught.exception))
        self.assertEqual((seen, transport.sent, layer.stats.requests_received), ([], [], 0))

    def test_known_from_without_its_tag_is_judged_as_a_parse_would(self) -> None:
        """
        A From remembered as good without its tag spares later requests the parse; every From
        is still let through or refused exactly as its own parse says, whatever came before.
        """
        from dmq.sip.headers import NameAddr

        heads = ['<sip:htable@127.0.0.1:5171>', '"Node" <sip:dmq@10.0.0.1>', "sip:dmq@10.0.0.1",
                 "<sip:a@b>;x=1", "<sip:a@b;tag=q>", "<sip:a@b>;tag=1", "<sip:a@b", "<>", '"open <sip:a@b>',
                 "<sip:a@b> junk", "sip:a@b?x=1", "", "<sip:a@b>;", "<sip:a@b>;tag=", "bad sip:a@b"]
        tags = ["99fa84f0c1cb42eb-099ebe3d", "1.2-3", "x~y'z", "", "a b", "a;b", '"q"', "a>", "a,b", "é"]
        froms = [head + sep + tag for head in heads for tag in tags for sep in (";tag=", ";TAG=", " ;tag=")]
        froms += heads

        def parses(value: str) -> bool:
            try:
                NameAddr.parse(value, "From")
            except SIPParseError:
                return False
            return True

        template = kdmq().to_bytes()
        start = template.index(b"From: ") + 6
        end = template.index(b"\r\n", start)
        clock, transport, layer = make_layer(handler=lambda r, s: make_response(r, 200))
        # Twice over, so that the second round meets every head already remembered.
        for round_ in range(2):
            for i, value in enumerate(froms):
                data = template[:start] + value.encode() + template[end:]
                data = data.replace(b";branch=z9hG4bK", b";branch=z9hG4bK%d.%d." % (round_, i), 1)
                try:
                    request = parse_message(data)
                except SIPParseError:
                    continue  # refused before the transaction layer
                try:
                    layer.message_received(request, Source(PEER))
                    accepted = True
                except SIPParseError:
                    accepted = False
                self.assertEqual(accepted, parses(request.headers._index["from"][0]), value)
        self.assertTrue(layer._valid_from)

    def test_no_handler_is_501(self) -> None:
        """Without a transaction user every request is answered 501."""
        clock, transport, layer = make_layer()
        transport.receive(kdmq().to_bytes(), PEER)
        self.assertEqual(transport.sent[0].message.code, 501)  # type: ignore[union-attr]

    def test_ack_is_ignored(self) -> None:
        """An ACK starts no transaction and gets no answer."""
        clock, transport, layer = make_layer(handler=lambda r, s: make_response(r, 200))
        ack = kdmq().to_bytes().replace(b"KDMQ sip:", b"ACK sip:").replace(b"10 KDMQ", b"10 ACK")
        transport.receive(ack, PEER)
        self.assertEqual(transport.sent, [])
        self.assertEqual(layer.servers, {})

    def test_rfc2543_matching(self) -> None:
        """Requests without the magic cookie match on Call-ID, CSeq, tags and Via."""
        calls = []
        clock, transport, layer = make_layer(
            handler=lambda request, source: calls.append(1) or make_response(request, 200)
        )
        data = kdmq().to_bytes()
        old = data.replace(b"branch=z9hG4bK", b"branch=old")
        transport.receive(old, PEER)
        transport.receive(old, PEER)
        self.assertEqual(len(calls), 1)
        other = old.replace(b"CSeq: 10 KDMQ", b"CSeq: 11 KDMQ")
        transport.receive(other, PEER)
        self.assertEqual(len(calls), 2)

    def test_handler_deferred_failure_is_500(self) -> None:
        """A handler whose Deferred fails gets the request answered 500 when it fails."""
        pending: Deferred[Response] = Deferred()
        clock, transport, layer = make_layer(handler=lambda request, source: pending)
        transport.receive(kdmq().to_bytes(), PEER)
        self.assertEqual(transport.sent, [])
        pending.errback(RuntimeError("later boom"))
        self.assertEqual(transport.sent[0].message.code, 500)  # type: ignore[union-attr]
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_parse_error_keeps_its_code_and_names_the_fault(self) -> None:
        """A SIPParseError from the handler answers its own code, the fault in the reason on one line."""

        def handler(request: Request, source: Source) -> Response:
            raise SIPParseError("too big\r\nto tell", code=413)

        clock, transport, layer = make_layer(handler=handler)
        transport.receive(kdmq().to_bytes(), PEER)
        response = transport.sent[0].message
        assert isinstance(response, Response)
        self.assertEqual((response.code, response.reason), (413, "Request Entity Too Large (too big to tell)"))


class NowOrLaterTests(SynchronousTestCase):
    """now_or_later: one way to call a handler that answers now or later."""

    def test_value_answers_at_once(self) -> None:
        """A value goes to on_result at once, and what that returns comes back without a Deferred."""
        self.assertEqual(now_or_later(lambda: 2, lambda v: v * 10, lambda f: -1), 20)

    def test_deferred_answers_when_it_fires(self) -> None:
        """A Deferred's result goes to on_result when it fires; a failure of it to on_failure."""
        ok: Deferred[int] = Deferred()
        d = now_or_later(lambda: ok, lambda v: v * 10, lambda f: -1)
        assert isinstance(d, Deferred)
        self.assertNoResult(d)
        ok.callback(3)
        self.assertEqual(self.successResultOf(d), 30)
        bad: Deferred[int] = Deferred()
        d = now_or_later(lambda: bad, lambda v: v * 10, lambda f: f.getErrorMessage())
        bad.errback(ValueError("no"))
        self.assertEqual(self.successResultOf(d), "no")

    def test_raises_go_to_on_failure(self) -> None:
        """A raise in the call or in on_result goes to on_failure, on either path."""

        def boom() -> int:
            raise KeyError("call")

        def bad_result(value: int) -> str:
            raise KeyError(f"result {value}")

        self.assertEqual(now_or_later(boom, str, lambda f: f.getErrorMessage()), "'call'")
        self.assertEqual(now_or_later(lambda: 1, bad_result, lambda f: f.getErrorMessage()), "'result 1'")
        later: Deferred[int] = Deferred()
        d = now_or_later(lambda: later, bad_result, lambda f: f.getErrorMessage())
        later.callback(2)
        self.assertEqual(self.successResultOf(d), "'result 2'")


class ExpiringMapTests(SynchronousTestCase):
    """ExpiringMap: what completed transactions leave behind, on the clock."""

    def test_entries_expire_in_order(self) -> None:
        """Each entry lives its lifetime from when it was put; then no timer is left."""
        clock = Clock()
        kept: ExpiringMap[str, int] = ExpiringMap(clock, 10.0)
        kept.put("a", 1)
        clock.advance(4)
        kept.put("b", 2)
        clock.advance(5.9)
        self.assertEqual((kept.get("a"), kept.get("b"), len(kept)), (1, 2, 2))
        clock.advance(0.1)
        self.assertNotIn("a", kept)
        self.assertEqual(kept.get("b"), 2)
        clock.advance(4)
        self.assertEqual((len(kept), clock.getDelayedCalls()), (0, []))

    def test_granularity_spaces_the_timer_under_steady_traffic(self) -> None:
        """With a granularity the timer runs at most that often, and every entry lives its lifetime and at most
        the granularity more."""
        clock = Clock()
        kept: ExpiringMap[int, None] = ExpiringMap(clock, 10.0, granularity=1.0)
        runs = 0
        sweep = kept._sweep

        def counted() -> None:
            nonlocal runs
            runs += 1
            sweep()

        kept._sweep = counted  # type: ignore[method-assign]
        put_at: dict[int, float] = {}
        gone_at: dict[int, float] = {}
        for key in range(3000):  # one entry every 10 ms for 30 s, then 15 s of quiet
            put_at[key] = clock.seconds()
            kept.put(key, None)
            clock.advance(0.01)
            gone_at.update((k, clock.seconds()) for k in put_at if k not in gone_at and k not in kept)
        for _ in range(150):
            clock.advance(0.1)
            gone_at.update((k, clock.seconds()) for k in put_at if k not in gone_at and k not in kept)
        self.assertEqual((len(kept), len(gone_at)), (0, 3000))
        lives = [gone_at[k] - put_at[k] for k in put_at]
        self.assertGreaterEqual(min(lives), 10.0)
        self.assertLessEqual(max(lives), 11.0 + 0.1)  # + one step of this loop
        self.assertLessEqual(runs, 32)  # about one a second while entries expire, not one per entry (3,000)

    def test_completed_answers_wake_no_timer_per_message(self) -> None:
        """A node answering a steady stream keeps each answer for Timer J (64*T1), with its timer running about
        once per T1 rather than once per answer."""
        clock, transport, layer = make_layer(handler=lambda r, s: make_response(r, 200))
        runs = 0
        sweep = layer.completed_servers._sweep

        def counted() -> None:
            nonlocal runs
            runs += 1
            sweep()

        layer.completed_servers._sweep = counted  # type: ignore[method-assign]
        first = kdmq().to_bytes()
        transport.receive(first, PEER)
        for _ in range(4000):  # one request every 10 ms for 40 s
            clock.advance(0.01)
            transport.receive(kdmq().to_bytes(), PEER)
        self.assertLessEqual(runs, (40 - 32) / 0.5 + 2)  # one per answer would be 800
        answered = len(transport.sent)
        transport.receive(first, PEER)  # 40 s on: gone, so handled (and answered) anew
        self.assertEqual(len(transport.sent), answered + 1)
        self.assertEqual(layer.stats.retransmitted_requests, 0)

    def test_weight_limit_forgets_the_oldest(self) -> None:
        """With a weight, past max_weight the oldest entries go first; expiry and replacing keep the total right."""
        clock = Clock()
        kept: ExpiringMap[int, bytes] = ExpiringMap(clock, 10.0, weigh=len, max_weight=100)
        for key in range(5):
            kept.put(key, b"x" * 30)
            clock.advance(1)
        self.assertEqual(([key in kept for key in range(5)], kept.weight), ([False, False, True, True, True], 90))
        kept.put(4, b"x" * 5)
        self.assertEqual(kept.weight, 65)
        clock.advance(10)
        self.assertEqual((len(kept), kept.weight), (0, 0))

    def test_large_answers_are_kept_up_to_a_byte_budget(self) -> None:
        """Completed server transactions keep at most max_completed_bytes of answers; the newest stay."""
        clock, transport, layer = make_layer(handler=lambda r, s: make_response(r, 200, body=b"x" * 1000))
        layer.completed_servers.max_weight = 10_000
        for _ in range(30):
            transport.receive(kdmq().to_bytes(), PEER)
        self.assertLessEqual(layer.completed_servers.weight, 10_000)
        self.assertGreater(len(layer.completed_servers), 5)
        self.assertEqual(len(transport.sent), 30)

    def test_puts_within_the_granularity_share_one_expiry_time(self) -> None:
        """Puts less than the granularity apart share one time: 3,000 puts over 30 s keep about 30, and
        entries forgotten past the limit leave the times of the others right."""
        clock = Clock()
        kept: ExpiringMap[int, None] = ExpiringMap(clock, 10.0, limit=500, granularity=1.0)
        for key in range(3000):
            kept.put(key, None)
            clock.advance(0.01)
        self.assertLessEqual(len(kept._times), 11)  # the last 5 s of puts, past the limit of 500
        self.assertEqual(sum(run.count for run in kept._times), len(kept._order))
        self.assertEqual([key in kept for key in (2499, 2500, 2999)], [False, True, True])
        clock.advance(10.0 - 5.0)  # the oldest kept entry (put at 25 s) is 10 s old
        self.assertIn(2999, kept)
        clock.advance(6.0)
        self.assertEqual((len(kept), len(kept._order), len(kept._times), clock.getDelayedCalls()), (0, 0, 0, []))

    @pytest.mark.skipif(platform.python_implementation() != "CPython", reason="tracemalloc is CPython's")
    def kept_cost(self, answer: Callable[[Request, Source], Response]) -> tuple[float, TransactionLayer]:
        """Bytes Timer J keeps per request answered by ``answer`` (2,000 measured), and the layer."""
        import tracemalloc  # CPython's alone: PyPy has no _tracemalloc

        clock, transport, layer = make_layer(handler=answer)
        requests = [kdmq().to_bytes() for _ in range(3000)]
        for data in requests[:1000]:
            transport.receive(data, PEER)
        sent = len(transport.sent)
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for data in requests[1000:]:
                transport.receive(data, PEER)
            transport.sent.clear()
            gc.collect()
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        self.assertEqual((sent, len(layer.completed_servers)), (1000, 3000))
        return grown / 2000, layer

    @pytest.mark.skipif(platform.python_implementation() != "CPython", reason="tracemalloc is CPython's")
    def test_an_answer_kept_for_retransmissions_costs_little(self) -> None:
        """What Timer J keeps per answered request: for a plain answer (make_response from the request alone)
        no bytes, at most 250 bytes of key and bookkeeping (its bytes alone are over 300); for an answer with
        a body, its bytes and at most 250 more."""
        plain, layer = self.kept_cost(lambda r, s: make_response(r, 404, "User Not Found", server="kamailio"))
        kept = layer.completed_servers.get(next(reversed(layer.completed_servers._entries)))
        self.assertEqual(kept, (404, "User Not Found", "kamailio"))
        self.assertLessEqual(plain, 250)
        with_body, layer = self.kept_cost(lambda r, s: make_response(r, 200, body=b"x" * 100, content_type="text/plain"))
        answer = layer.completed_servers.get(next(reversed(layer.completed_servers._entries)))
        assert isinstance(answer, bytes)
        self.assertGreater(len(answer), 300)
        self.assertLessEqual(with_body, len(answer) + 250)

    @pytest.mark.skipif(platform.python_implementation() != "CPython", reason="tracemalloc is CPython's")
    def test_a_map_emptied_after_a_burst_gives_its_memory_back(self) -> None:
        """Once a burst's 20,000 entries have expired, the map holds no more than before it (the
        table its dict grew to included)."""
        import tracemalloc  # CPython's alone: PyPy has no _tracemalloc

        clock = Clock()
        kept: ExpiringMap[int, None] = ExpiringMap(clock, 10.0, granularity=0.5)
        keys = list(range(1_000_000, 1_020_000))  # made before measuring: the caller's, not the map's
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for key in keys:
                kept.put(key, None)
            grown = tracemalloc.get_traced_memory()[0] - before
            clock.advance(11.0)
            gc.collect()
            left = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        self.assertEqual(len(kept), 0)
        self.assertGreater(grown, 500_000)
        self.assertLess(left, 32_768)  # without giving the table back: some 600 KB

    def test_limit_forgets_the_oldest(self) -> None:
        """Past the limit the oldest entries go first; clear forgets all and stops the timer."""
        clock = Clock()
        kept: ExpiringMap[int, None] = ExpiringMap(clock, 10.0, limit=2)
        for key in range(4):
            kept.put(key, None)
        self.assertEqual([key in kept for key in range(4)], [False, False, True, True])
        kept.clear()
        self.assertEqual((len(kept), clock.getDelayedCalls()), (0, []))
