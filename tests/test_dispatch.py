"""Dispatch: a slow or stuck peer affects only its own channel; strangers are rate-limited (FakeCluster, task.Clock)."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from dmq import CallbackPeer, PeerResponse
from dmq.sip import SIPURI, build_request
from dmq.sip.address import Address
from dmq.sip.message import Request, Response
from dmq.testing import FakeCluster


def kdmq(channel: str, host: str = "127.0.0.1", port: int = 5061) -> Request:
    """A KDMQ for the node on 127.0.0.1:5060 on ``channel``, as sent from ``host``:``port``."""
    return build_request(
        "KDMQ",
        SIPURI.parse(f"sip:{channel}@127.0.0.1:5060"),
        from_uri=SIPURI.parse(f"sip:{channel}@{host}:{port}"),
        via_transport="UDP",
        via_sent_by=f"{host}:{port}",
        body=b"x",
        content_type="text/plain",
    )


def two_nodes() -> tuple[FakeCluster, Any]:
    """A converged FakeCluster of the node on 127.0.0.1:5060 (returned) and a member on 5061."""
    cluster = FakeCluster()
    svc = cluster.add(5060)
    cluster.add(5061, seeds=(5060,))
    cluster.run(0.1)
    return cluster, svc


class DispatchTests(SynchronousTestCase):
    """One node on 127.0.0.1:5060 with a member on 5061; requests delivered by hand."""

    def setUp(self) -> None:
        self.cluster, self.svc = two_nodes()
        self.stuck: list[Deferred[Any]] = []

        def stuck(message: Any) -> Deferred[Any]:
            d: Deferred[Any] = Deferred()
            self.stuck.append(d)
            return d

        self.svc.register_peer(CallbackPeer("stuck", stuck))
        self.svc.register_peer(CallbackPeer("quick", lambda m: PeerResponse(200)))
        self.svc.transport.clear()

    def deliver(self, request: Request, host: str = "127.0.0.1", port: int = 5061) -> list[Response]:
        """Deliver ``request`` from ``host``:``port``; the responses sent to that address so far."""
        transport = self.svc.transport
        transport.receive(request.to_bytes(), Address("udp", host, port))
        return [s.message for s in transport.sent if isinstance(s.message, Response) and s.address.host == host]

    def test_a_stuck_peer_gets_503_and_others_go_on(self) -> None:
        """A peer that never answers gets its request answered 503 with Retry-After after 2 s; another channel answers at once meanwhile."""
        self.deliver(kdmq("stuck"))
        quick = self.deliver(kdmq("quick"))
        self.assertEqual([r.code for r in quick], [200])
        self.cluster.clock.advance(2.0)
        answers = self.deliver(kdmq("quick"))
        stuck_answers = [r for r in answers if r.call_id != quick[0].call_id and r.code == 503]
        self.assertEqual(len(stuck_answers), 1)
        self.assertEqual(stuck_answers[0].headers.get("Retry-After"), "1")
        self.assertEqual(self.svc.dispatcher.refused["timeout"], 1)
        self.stuck[0].callback(PeerResponse(200))  # too late: dropped
        self.assertEqual(self.svc.dispatcher.pending["stuck"], 0)

    def test_a_full_channel_answers_503_at_once(self) -> None:
        """With max_pending unanswered requests on a channel, the next one is answered 503 at once."""
        self.svc.dispatcher.max_pending = 3
        for _ in range(3):
            self.deliver(kdmq("stuck"))
        answers = self.deliver(kdmq("stuck"))
        self.assertEqual([r.code for r in answers], [503])
        self.assertIn("busy", answers[0].reason)
        self.assertEqual(self.svc.dispatcher.refused["pending"], 1)

    def test_strangers_are_rate_limited_members_are_not(self) -> None:
        """A stranger gets its burst, then 503s, then its rate again a second later; a member sending as much gets no 503."""
        for _ in range(150):
            self.deliver(kdmq("quick", host="127.0.0.77", port=5999), host="127.0.0.77", port=5999)
        codes = [r.code for r in self.deliver(kdmq("quick", host="127.0.0.77"), host="127.0.0.77", port=5999)]
        self.assertEqual(codes.count(200), 100)
        self.assertEqual(codes.count(503), 51)
        self.cluster.clock.advance(1.0)
        before = len(codes)
        for _ in range(60):
            self.deliver(kdmq("quick", host="127.0.0.77", port=5999), host="127.0.0.77", port=5999)
        later = [r.code for r in self.deliver(kdmq("quick", host="127.0.0.77"), host="127.0.0.77", port=5999)][before:]
        self.assertEqual(later.count(200), 50)
        for _ in range(300):
            self.deliver(kdmq("quick"))
        member = [r.code for r in self.deliver(kdmq("quick"))]
        self.assertNotIn(503, member)


class SenderTests(SynchronousTestCase):
    """Which node a message comes from: its From URI, parsed once per sender, whatever the From-tag."""

    def setUp(self) -> None:
        self.cluster, self.svc = two_nodes()
        self.seen: list[Any] = []
        self.svc.register_peer(CallbackPeer("see", lambda m: self.seen.append(m) or PeerResponse(200)))

    def send(self, from_value: str) -> None:
        request = kdmq("see")
        request.headers.set("From", from_value)
        self.svc.transport.receive(request.to_bytes(), Address("udp", "127.0.0.1", 5061))

    def test_each_sender_is_parsed_once_and_told_apart(self) -> None:
        """Messages of a member with new tags share one From URI and find the member; others find theirs, or none."""
        member = self.svc.nodes.get("sip:127.0.0.1:5061")
        self.send("<sip:see@127.0.0.1:5061>;tag=a")
        self.send("<sip:see@127.0.0.1:5061>;tag=b")
        self.send("<sip:see@127.0.0.1:5062>;tag=a")
        self.send("sip:see@127.0.0.1:5061;tag=c")
        self.send("<sip:see@127.0.0.1:5062;tag=x>")  # a URI parameter, not a From-tag
        self.send("<sip:see@127.0.0.1:5061;transport=tcp>;tag=a")
        nodes = [m.node for m in self.seen]
        self.assertEqual(nodes, [member, member, None, member, None, None])
        self.assertIs(self.seen[0].from_uri, self.seen[1].from_uri)
        self.assertEqual([m.from_uri.port for m in self.seen], [5061, 5061, 5062, 5061, 5062, 5061])
        self.assertEqual(self.seen[4].from_uri.params, {"tag": "x"})
        self.assertEqual(self.seen[5].from_uri.transport, "tcp")

    def test_the_remembered_senders_are_bounded(self) -> None:
        """Past MAX_SENDERS From values the dispatcher forgets them all and goes on finding nodes."""
        from dmq import dispatch

        self.patch(dispatch, "MAX_SENDERS", 3)
        for port in range(6000, 6005):
            self.send(f"<sip:see@127.0.0.9:{port}>;tag=a")
        self.assertLessEqual(len(self.svc.dispatcher._senders), 3)
        self.send("<sip:see@127.0.0.1:5061>;tag=z")
        self.assertIs(self.seen[-1].node, self.svc.nodes.get("sip:127.0.0.1:5061"))


class ChannelCountTests(SynchronousTestCase):
    """Made-up channel names cannot grow the counters without bound."""

    def test_made_up_channels_share_one_counter_past_the_cap(self) -> None:
        """Past MAX_CHANNELS, channels without a peer are counted together; a registered channel keeps its own."""
        from dmq.dispatch import MAX_CHANNELS, OTHER_CHANNELS

        cluster = FakeCluster()
        svc = cluster.add(5060)
        svc.dispatcher.stranger_burst = 10**6  # this sender is no member: let it send them all at once
        for i in range(MAX_CHANNELS + 50):
            svc.transport.receive(kdmq(f"made-up-{i}").to_bytes(), Address("udp", "127.0.0.1", 5061))
        self.assertEqual(len(svc.channel_stats), MAX_CHANNELS + 1)
        self.assertGreaterEqual(svc.channel_stats[OTHER_CHANNELS].received, 50)
        svc.register_peer(CallbackPeer("late", lambda m: None))
        svc.transport.receive(kdmq("late").to_bytes(), Address("udp", "127.0.0.1", 5061))
        self.assertEqual(svc.channel_stats["late"].received, 1)


class RFC3261RefusalTests(SynchronousTestCase):
    """What a request needs that no peer does is refused as RFC 3261 8.2 says, before any peer sees it."""

    def setUp(self) -> None:
        self.cluster = FakeCluster()
        self.svc = self.cluster.add(5060)
        self.seen: list[Any] = []
        self.svc.register_peer(CallbackPeer("quick", lambda m: self.seen.append(m) or PeerResponse(200)))

    def answer(self, data: bytes) -> Response:
        self.svc.transport.clear()
        self.svc.transport.receive(data, Address("udp", "127.0.0.1", 5061))
        [sent] = self.svc.transport.sent
        assert isinstance(sent.message, Response)
        return sent.message

    def test_another_uri_scheme_is_416(self) -> None:
        """A KDMQ whose Request-URI is not sip: or sips: is answered 416 Unsupported URI Scheme."""
        data = kdmq("quick").to_bytes().replace(b"KDMQ sip:quick@127.0.0.1:5060", b"KDMQ tel:+15550100", 1)
        self.assertEqual(self.answer(data).code, 416)
        self.assertEqual(self.seen, [])

    def test_an_unknown_required_extension_is_420_naming_it(self) -> None:
        """Require: an option tag (none is supported) gets 420 Bad Extension with the tags in Unsupported."""
        request = kdmq("quick")
        request.headers.add("Require", "foo, bar")
        response = self.answer(request.to_bytes())
        self.assertEqual((response.code, response.headers.get("Unsupported")), (420, "foo, bar"))
        self.assertEqual(self.seen, [])

    def test_a_content_encoding_other_than_identity_is_415(self) -> None:
        """Content-Encoding: gzip gets 415 with Accept-Encoding: identity; identity is read as usual."""
        request = kdmq("quick")
        request.headers.add("Content-Encoding", "gzip")
        response = self.answer(request.to_bytes())
        self.assertEqual((response.code, response.headers.get("Accept-Encoding")), (415, "identity"))
        self.assertEqual(self.seen, [])
        plain = kdmq("quick")
        plain.headers.add("Content-Encoding", "identity")
        self.assertEqual(self.answer(plain.to_bytes()).code, 200)
        self.assertEqual(len(self.seen), 1)

    def test_proxy_require_is_ignored(self) -> None:
        """Proxy-Require is for proxies: the node (the request's UAS) answers as usual."""
        request = kdmq("quick")
        request.headers.add("Proxy-Require", "foo")
        self.assertEqual(self.answer(request.to_bytes()).code, 200)
