"""DMQService and the notification peer, several nodes on a fake network and a fake clock."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from dmq import CallbackPeer, DMQService, EventKind, PeerError, PeerResponse
from dmq.interfaces import IMessageSender, IPeer, IPeerHost
from dmq.peer import DMQMessage
from dmq.sip import SIPURI, build_request, make_response, parse_message
from dmq.sip.address import Address
from dmq.sip.message import Request, Response
from dmq.testing import FakeCluster, FakeSIPTransport


def request_to(
    port: int,
    method: str = "KDMQ",
    user: str = "notification_peer",
    body: bytes = b"",
    host: str = "127.0.0.1",
    from_port: int = 5999,
    **extra: Any,
) -> Request:
    """A request for the node on ``port``, as sent from ``host``:``from_port`` (``extra``: more of build_request's keywords)."""
    target = f"sip:{user}@127.0.0.1:{port}" if user else f"sip:127.0.0.1:{port}"
    return build_request(
        method,
        SIPURI.parse(target),
        from_uri=SIPURI.parse(f"sip:{user or 'alice'}@{host}:{from_port}"),
        via_transport="UDP",
        via_sent_by=f"{host}:{from_port}",
        body=body,
        content_type="text/plain" if body else None,
        **extra,
    )


def answer(svc: DMQService, request: Request, host: str = "127.0.0.1") -> Response:
    """Deliver ``request`` to ``svc`` from ``host``:5999; the response it sent back."""
    transport: FakeSIPTransport = svc.transport
    transport.receive(request.to_bytes(), Address("udp", host, 5999))
    response = transport.sent[-1].message
    assert isinstance(response, Response)
    return response


def chain_of_three(third_seed: int, settle: float) -> FakeCluster:
    """Nodes on 5060, 5061 (seeded with 5060) and 5062 (seeded with ``third_seed``), run for ``settle`` s."""
    cluster = FakeCluster()
    cluster.add(5060)
    cluster.add(5061, seeds=(5060,))
    cluster.add(5062, seeds=(third_seed,))
    cluster.run(settle)
    return cluster


def joined_pair(settle: float) -> tuple[FakeCluster, DMQService]:
    """A cluster of the node on 5060 and one on 5061 seeded with it, run for ``settle`` s; and the first node."""
    cluster = FakeCluster()
    a = cluster.add(5060)
    cluster.add(5061, seeds=(5060,))
    cluster.run(settle)
    return cluster, a


class MembershipTests(SynchronousTestCase):
    """Join, merge, re-broadcast, ping, timeouts, leave, on three nodes."""

    def test_interfaces(self) -> None:
        """The service and its peers provide their interfaces."""
        cluster = FakeCluster()
        svc = cluster.add(5060)
        verifyObject(IMessageSender, svc)
        verifyObject(IPeerHost, svc)
        verifyObject(IPeer, svc.notification)

    def test_three_nodes_converge(self) -> None:
        """A seeded chain A <- B <- C ends with every node knowing every other as active."""
        cluster = chain_of_three(third_seed=5061, settle=5.1)  # one ping interval
        everyone = {5060: "active", 5061: "active", 5062: "active"}
        for port in (5060, 5061, 5062):
            self.assertEqual(cluster.view(port), everyone)
            self.assertEqual(len(list(cluster.nodes[port].nodes)), 3)
        self.assertTrue(cluster.nodes[5061].ready)
        self.assertTrue(cluster.nodes[5062].ready)

    def test_agents_are_recorded(self) -> None:
        """Each node records the User-Agent / Server of the nodes it hears from; its own is SERVER_NAME."""
        from dmq.service import SERVER_NAME

        cluster, a = joined_pair(0.1)
        self.assertTrue(SERVER_NAME.startswith("dmq/"))
        self.assertEqual([n.agent for n in a.nodes], [SERVER_NAME, SERVER_NAME])
        b_in_a = a.nodes.get("sip:127.0.0.1:5061")
        assert b_in_a is not None
        b_in_a.agent = None
        request = request_to(5060, from_port=5061, user_agent="kamailio (6.1.4 (x86_64/linux))")
        self.assertEqual(answer(a, request).code, 200)
        self.assertEqual(b_in_a.agent, "kamailio (6.1.4 (x86_64/linux))")

    def test_peer_up_events(self) -> None:
        """Each node reports peer-up once for each other node, never for itself."""
        cluster = chain_of_three(third_seed=5061, settle=12)
        for port in (5060, 5061, 5062):
            ups = sorted(e.node.port for e in cluster.events[port] if e.kind is EventKind.PEER_UP)
            self.assertEqual(ups, sorted({5060, 5061, 5062} - {port}))

    def test_death_and_return(self) -> None:
        """A killed node is disabled after one ping timeout, removed after the next, and rejoins when back."""
        cluster = chain_of_three(third_seed=5061, settle=5.1)
        cluster.kill(5062)
        # next ping at 10 s, its 408 at 10 + 32 s
        cluster.run(37)
        self.assertEqual(cluster.view(5060).get(5062), "disabled")
        kinds = [e.kind for e in cluster.events[5060] if e.node.port == 5062]
        self.assertEqual(kinds, [EventKind.PEER_UP, EventKind.PEER_DISABLED])
        cluster.run(5)
        self.assertNotIn(5062, cluster.view(5060))
        # it comes back
        del cluster.nodes[5062]
        cluster.add(5062, seeds=(5061,))
        cluster.run(6)
        for port in (5060, 5061, 5062):
            self.assertEqual(cluster.view(port), {5060: "active", 5061: "active", 5062: "active"})

    def test_thirty_node_cluster(self) -> None:
        """Thirty nodes, all seeded with the first, converge: node lists Kamailio 5.6 could not answer (1 KB cap)."""
        cluster = FakeCluster()
        ports = list(range(16000, 16030))
        cluster.add(ports[0])
        for port in ports[1:]:
            cluster.add(port, seeds=(ports[0],))
        cluster.run(5.5, step=0.05)
        everyone = {port: "active" for port in ports}
        for port in ports:
            self.assertEqual(cluster.view(port), everyone)
        body = cluster.nodes[ports[0]].nodes.format_body()
        self.assertGreater(len(body), 1024)
        self.assertEqual(body.count(b"\r\n"), 30)

    def test_stale_timeout_ignored(self) -> None:
        """A timeout of a ping sent before the node answered a later one does not disable it."""
        cluster = FakeCluster()
        cluster.add(5060)
        cluster.add(5061, seeds=(5060,))
        cluster.run(0.1)
        doomed: set[str] = set()

        def drop(source: Address, target: Address, data: bytes) -> bool:
            message = parse_message(data)
            if target.port != 5061 or not isinstance(message, Request):
                return False
            if not doomed and cluster.clock.seconds() >= 5:
                doomed.add(message.branch or "")
            return message.branch in doomed

        cluster.network.drop = drop  # every copy of A's ping at 5 s is lost
        cluster.run(40)  # later pings are answered; the lost one times out at 37 s
        self.assertEqual(cluster.view(5060), {5060: "active", 5061: "active"})
        self.assertEqual([e.kind for e in cluster.events[5060]], [EventKind.PEER_UP])

    def test_late_answers_are_not_deaths(self) -> None:
        """A starved node that answers seconds late (retransmissions, answers within 64*T1) is never disabled or removed."""
        cluster = chain_of_three(third_seed=5060, settle=1)
        cluster.network.latency = 6.0  # 12 s to answer: past T2, far inside the 32 s timeout
        cluster.run(90, step=0.01)
        for port in (5060, 5061, 5062):
            self.assertEqual(set(cluster.view(port).values()), {"active"})
            self.assertEqual({e.kind for e in cluster.events[port]}, {EventKind.PEER_UP})
        self.assertGreater(cluster.nodes[5060].transactions.stats.retransmissions, 0)
        self.assertEqual(cluster.nodes[5060].transactions.stats.timeouts, 0)

    def test_seed_never_deleted(self) -> None:
        """A dead seed becomes not active but stays in the list, and the node keeps trying it."""
        cluster = FakeCluster()
        cluster.add(5060)
        cluster.add(5061, seeds=(5060,))
        cluster.run(0.1)
        cluster.kill(5060)
        cluster.run(120)
        self.assertEqual(cluster.view(5061), {5061: "active", 5060: "not_active"})

    def test_remove_inactive_false(self) -> None:
        """With remove_inactive off a silent node becomes not active and stays."""
        cluster = FakeCluster()
        cluster.add(5060, remove_inactive=False)
        cluster.add(5061, seeds=(5060,))
        cluster.run(0.1)
        cluster.kill(5061)
        cluster.run(110)
        self.assertEqual(cluster.view(5060), {5060: "active", 5061: "not_active"})
        kinds = [e.kind for e in cluster.events[5060]]
        self.assertEqual(kinds, [EventKind.PEER_UP, EventKind.PEER_DOWN])

    def test_join_retries_until_seed_answers(self) -> None:
        """A node whose seed is not there yet keeps joining and gets ready when the seed appears."""
        cluster = FakeCluster()
        b = cluster.add(5061, seeds=(5060,), t1=0.05)
        cluster.run(10)
        self.assertFalse(b.ready)
        cluster.add(5060)
        cluster.run(10)
        self.assertTrue(b.ready)
        self.assertEqual(cluster.view(5061), {5061: "active", 5060: "active"})

    def test_graceful_leave(self) -> None:
        """A node that stops tells the others, which see it disabled at once."""
        cluster = FakeCluster()
        cluster.add(5060)
        b = cluster.add(5061, seeds=(5060,))
        cluster.run(0.1)
        d = b.stopService()
        cluster.run(0.1)
        self.successResultOf(d)
        self.assertEqual(cluster.view(5060), {5060: "active", 5061: "disabled"})

    def test_stop_with_a_dead_member_is_bounded(self) -> None:
        """With a dead member, stopping fires after stop_timeout (1 s), the live node sees the leave, no timeout is applied."""
        cluster = FakeCluster()
        a = cluster.add(5060)
        b = cluster.add(5061, seeds=(5060,))
        cluster.add(5062, seeds=(5060,))
        cluster.run(5.1)
        cluster.kill(5062)
        d = b.stopService()
        cluster.run(0.9)
        self.assertNoResult(d)
        self.assertEqual(cluster.view(5060)[5061], "disabled")
        cluster.run(0.11)
        self.successResultOf(d)
        self.assertEqual(b.transactions.clients, {})
        self.assertEqual(cluster.view(5061)[5062], "active")  # cut short, not timed out
        self.assertEqual(a.nodes.get("sip:127.0.0.1:5061").status.value, "disabled")  # type: ignore[union-attr]

    def test_seed_on_own_ip_is_warned_about(self) -> None:
        """A seed on this node's own IP (another port) draws a start-up warning; one on another IP does not."""
        from twisted.logger import formatEvent, globalLogPublisher

        warnings: list[str] = []

        def observer(event: dict[str, Any]) -> None:
            if "own IP" in formatEvent(event):
                warnings.append(formatEvent(event))

        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        clock_cluster = FakeCluster()
        DMQService("sip:127.0.0.2:5060", ["sip:127.0.0.3:5060"], reactor=clock_cluster.clock,
                   transport=FakeSIPTransport(clock_cluster.clock)).startService()
        self.assertEqual(warnings, [])
        DMQService("sip:127.0.0.2:5060", ["sip:127.0.0.2:5061"], reactor=clock_cluster.clock,
                   transport=FakeSIPTransport(clock_cluster.clock)).startService()
        self.assertEqual(len(warnings), 1)
        self.assertIn("seed sip:127.0.0.2:5061 is on this node's own IP address 127.0.0.2", warnings[0])

    def test_kdmq_from_template(self) -> None:
        """A KDMQ joined from a node's template is byte for byte the one build_kdmq makes with the same ids."""
        from twisted.internet.task import Clock

        clock = Clock()
        service = DMQService("sip:127.0.0.2:5060", reactor=clock, transport=FakeSIPTransport(clock))
        node = service.add_node("sip:127.0.0.3:5062")
        template, address = service._kdmq_template("htable", node, "application/json", 1)
        assert template is not None
        body = '{"k":"ä"}'.encode()
        data, branch = template.render(body)
        parsed = parse_message(data, strict=True)
        assert isinstance(parsed, Request)
        request, same_address = service.build_kdmq(
            "htable", node, body, "application/json", 1, (branch, parsed.from_.tag or "", parsed.call_id)
        )
        self.assertEqual(data, request.to_bytes())
        self.assertEqual(address, same_address)
        self.assertNotEqual(template.render(body)[1], branch)
        tcp = service.add_node("sip:127.0.0.4:5062;transport=tcp")
        self.assertIsNone(service._kdmq_template("htable", tcp, "application/json", 1)[0])

    def test_a_stranger_cannot_vouch_for_others(self) -> None:
        """One datagram from a non-member listing 1,000 made-up nodes adds only its sender; nothing goes to a made-up address."""
        cluster, a = joined_pair(0.1)
        a.transport.clear()
        made_up = b"".join(f"sip:10.9.{i // 200}.{i % 200 + 1}:5060;status=active\r\n".encode() for i in range(1000))
        body = b"sip:127.0.0.1:5999;status=active\r\n" + made_up
        response = answer(a, request_to(5060, body=body))
        self.assertEqual(response.code, 200)
        self.assertEqual(sorted(cluster.view(5060)), [5060, 5061, 5999])
        self.assertEqual(a.notification.refused_nodes, 1000)
        cluster.run(10, step=0.01)  # two ping intervals
        hosts = {sent.address.host for sent in a.transport.sent}
        self.assertEqual(hosts, {"127.0.0.1"})

    def test_caps_are_settings(self) -> None:
        """max_nodes and max_nodes_per_list bound what a member's list adds; the rest is refused and counted."""
        cluster = FakeCluster()
        a = cluster.add(5060, max_nodes=8, max_nodes_per_list=3)
        cluster.add(5061, seeds=(5060,))
        cluster.run(0.1)
        own = b"sip:127.0.0.1:5999;status=active\r\n"
        self.assertEqual(answer(a, request_to(5060, body=own)).code, 200)  # joins: a member from now on
        made_up = b"".join(f"sip:10.9.0.{i + 1}:5060;status=active\r\n".encode() for i in range(10))
        body = own + made_up
        self.assertEqual(answer(a, request_to(5060, body=body)).code, 200)
        self.assertEqual(len(a.nodes), 3 + 3)
        self.assertEqual(a.notification.refused_nodes, 7)
        answer(a, request_to(5060, body=body.replace(b"10.9.0.", b"10.9.1.")))
        self.assertEqual(len(a.nodes), 8)

    def test_stranger_answer_is_cut_and_it_gets_no_rebroadcast(self) -> None:
        """A stranger's join gets a 200 at most 3 times its size (own line last); the re-broadcast skips it; the whole list follows once."""
        cluster = FakeCluster()
        a = cluster.add(5060)
        members = [cluster.add(port, seeds=(5060,)) for port in range(5061, 5091)]
        cluster.run(5.1)
        self.assertEqual(len(cluster.view(5060)), 31)
        a.transport.clear()
        request = request_to(5060, body=b"sip:127.0.0.1:5999;status=active\r\n")
        request.headers.set("Max-Forwards", "70")
        response = answer(a, request)
        size = len(request.to_bytes())
        self.assertLessEqual(len(response.to_bytes()), 3 * size + 100)
        self.assertLess(len(response.body), len(a.nodes.format_body()))
        self.assertTrue(response.body.endswith(b"sip:127.0.0.1:5060;status=active\r\n"))
        rebroadcast = [s for s in a.transport.sent if isinstance(s.message, Request)]
        self.assertEqual({s.address.port for s in rebroadcast}, {m.nodes.local.port for m in members})
        self.assertEqual({s.message.max_forwards for s in rebroadcast}, {1})
        # Then, once, the whole list goes to the new member in a request of its own.
        cluster.run(0.01)
        to_joiner = [s.message for s in a.transport.sent if isinstance(s.message, Request) and s.address.port == 5999]
        self.assertEqual(len(to_joiner), 1)
        self.assertEqual(to_joiner[0].body, a.nodes.format_body())

    def test_a_burst_of_changes_is_rebroadcast_together(self) -> None:
        """Ten changing requests from a member within 0.1 s cause two re-broadcasts (at once, then after the gap), the second with every change."""
        from dmq.notification import REBROADCAST_GAP

        cluster, a = joined_pair(0.5)
        a.transport.clear()
        before = a.notification.rebroadcasts
        for i in range(10):
            request = request_to(
                5060,
                from_port=5061,
                body=f"sip:127.0.0.1:5061;status=active\r\nsip:127.0.0.1:{6000 + i};status=active\r\n".encode(),
                max_forwards=2,
            )
            a.transport.receive(request.to_bytes(), Address("udp", "127.0.0.1", 5061))
            cluster.clock.advance(0.01)
        self.assertEqual(a.notification.rebroadcasts - before, 1)
        cluster.clock.advance(REBROADCAST_GAP)
        self.assertEqual(a.notification.rebroadcasts - before, 2)
        to_b = [s.message for s in a.transport.sent if isinstance(s.message, Request) and s.address.port == 5061]
        self.assertEqual(len(to_b), 2)
        self.assertEqual(to_b[-1].body.count(b"\r\n"), 12)  # a, b and the ten new nodes
        self.assertEqual({m.max_forwards for m in to_b}, {1})

    def test_a_burst_of_joins_converges_within_the_gap(self) -> None:
        """32 nodes joining one seed at once all list each other long before the first ping: the strangers that
        joined during the gap get the later re-broadcast, which names the nodes that joined after them."""
        from dmq.notification import REBROADCAST_GAP

        cluster = FakeCluster()
        cluster.add(6000, ping_interval=10)
        cluster.run(0.05)
        ports = [6000 + i for i in range(32)]
        for port in ports[1:]:
            cluster.add(port, seeds=(6000,), ping_interval=10)
        cluster.run(REBROADCAST_GAP + 0.25, step=0.01)
        self.assertEqual([len(cluster.view(port)) for port in ports], [32] * 32)
        self.assertEqual({status for port in ports for status in cluster.view(port).values()}, {"active"})
        self.assertEqual(sum(cluster.nodes[port].notification.pings for port in ports), 0)

    def test_node_lists_fit_one_datagram(self) -> None:
        """With a small udp_max_size, pings, broadcasts and answers carry a list cut to max_body_size: 60 nodes stay active."""
        cluster = FakeCluster()
        a = cluster.add(5060, udp_max_size=2048)
        others = [cluster.add(port, seeds=(5060,), udp_max_size=2048) for port in range(5061, 5120)]
        cluster.run(12, step=0.01)  # two ping intervals
        self.assertGreater(len(a.nodes.format_body()), a.max_body_size)
        requests = [s for s in a.transport.sent if isinstance(s.message, Request)]
        self.assertTrue(requests)
        self.assertLessEqual(max(len(s.data) for s in requests), 2048)
        self.assertEqual(set(cluster.view(5060).values()), {"active"})
        self.assertEqual(len(cluster.view(5060)), 60)
        self.assertEqual(a.transactions.stats.too_large, 0)
        self.assertEqual(sum(o.transactions.stats.too_large for o in others), 0)

    def test_dmq_member_pings_get_an_empty_answer(self) -> None:
        """A ping (Max-Forwards 1) from a dmq member is answered 200 with no body; from a Kamailio member, with the list."""
        cluster, a = joined_pair(0.1)

        def ping(agent: str) -> Response:
            request = request_to(
                5060, from_port=5061, body=b"sip:127.0.0.1:5061;status=active\r\n", max_forwards=1, user_agent=agent
            )
            return answer(a, request)

        from dmq.service import SERVER_NAME

        quiet = ping(SERVER_NAME)
        self.assertEqual((quiet.code, quiet.body), (200, b""))
        full = ping("kamailio (5.6.3 (x86_64/linux))")
        self.assertEqual((full.code, full.body), (200, a.nodes.format_body()))

    def test_member_answer_is_whole(self) -> None:
        """A member's node-list query gets the whole list."""
        cluster = FakeCluster()
        a = cluster.add(5060)
        for port in range(5061, 5071):
            cluster.add(port, seeds=(5060,))
        cluster.run(5.1)
        request = request_to(5060, from_port=5061)
        self.assertEqual(answer(a, request).body, a.nodes.format_body())

    def test_empty_body_is_read_only(self) -> None:
        """A node-list request with an empty body changes nothing and gets the list back."""
        cluster = FakeCluster()
        a = cluster.add(5060)
        response = answer(a, request_to(5060))
        self.assertEqual(response.code, 200)
        self.assertEqual(response.body, b"sip:127.0.0.1:5060;status=active\r\n")
        self.assertEqual(len(list(a.nodes)), 1)
        self.assertFalse(a.ready)

    def test_bad_body_is_400_and_changes_nothing(self) -> None:
        """A node list with one bad line is answered 400 naming it, and the list is unchanged."""
        cluster = FakeCluster()
        a = cluster.add(5060)
        body = b"sip:127.0.0.1:5999;status=active\r\nsip:127.0.0.1:5998;status=bogus\r\n"
        response = answer(a, request_to(5060, body=body))
        self.assertEqual(response.code, 400)
        self.assertIn("node list", response.reason)
        self.assertEqual(len(list(a.nodes)), 1)


class ChannelTests(SynchronousTestCase):
    """Dispatch by channel, answers, broadcast and send."""

    def setUp(self) -> None:
        self.cluster = FakeCluster()
        self.a = self.cluster.add(5060)
        self.b = self.cluster.add(5061, seeds=(5060,))
        self.c = self.cluster.add(5062, seeds=(5060,))
        self.received: list[tuple[int, DMQMessage]] = []
        for port, svc in ((5061, self.b), (5062, self.c)):
            svc.register_peer(CallbackPeer("custom1", lambda m, port=port: self.received.append((port, m))))
        self.cluster.run(0.5)  # joins at once; the second re-broadcast follows REBROADCAST_GAP later

    def test_bcast_reaches_every_other_node(self) -> None:
        """A broadcast reaches every other active node once and each answers 200 with no body."""
        d = self.b.bcast_message("custom1", b"hello", "text/plain")
        self.cluster.run(0.1)
        results = self.successResultOf(d)
        codes = {node.port: response.code for node, response in results}
        self.assertEqual(codes, {5060: 404, 5062: 200})
        self.assertEqual([(p, m.body) for p, m in self.received], [(5062, b"hello")])
        self.assertEqual(self.received[0][1].node.port, 5061)  # type: ignore[union-attr]
        for _, response in results:
            self.assertEqual(response.body, b"")

    def test_unknown_channel_404(self) -> None:
        """A message on a channel nobody serves is answered 404 User Not Found, as every Kamailio release answers it."""
        d = self.b.send_message("nosuch", b"x", self.a.nodes.local.uri)
        self.cluster.run(0.1)
        response = self.successResultOf(d)
        self.assertEqual((response.code, response.reason), (404, "User Not Found"))

    def test_peer_bodies_are_dropped(self) -> None:
        """A non-node-list peer's answer body never goes on the wire (Kamailio would read it as a node list)."""
        self.a.register_peer(CallbackPeer("chatty", lambda m: PeerResponse(200, body=b"{}", content_type="application/json")))
        d = self.b.send_message("chatty", b"x", self.a.nodes.local.uri)
        self.cluster.run(0.1)
        response = self.successResultOf(d)
        self.assertEqual((response.code, response.body, response.content_type), (200, b"", None))

    def test_handler_errors(self) -> None:
        """A PeerError answers its code and reason; another exception answers 500 and is logged."""

        def handler(message: DMQMessage) -> None:
            if message.body == b"bad":
                raise PeerError(400, "Bad Request (no)")
            raise RuntimeError("boom")

        self.a.register_peer(CallbackPeer("picky", handler))
        d1 = self.b.send_message("picky", b"bad", self.a.nodes.local.uri)
        d2 = self.b.send_message("picky", b"worse", self.a.nodes.local.uri)
        self.cluster.run(0.1)
        self.assertEqual(self.successResultOf(d1).reason, "Bad Request (no)")
        self.assertEqual(self.successResultOf(d2).code, 500)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_deferred_handler(self) -> None:
        """A handler may answer later through a Deferred."""
        pending: Deferred[Any] = Deferred()
        self.a.register_peer(CallbackPeer("slow", lambda m: pending))
        d = self.b.send_message("slow", b"x", self.a.nodes.local.uri)
        self.cluster.run(0.1)
        self.assertNoResult(d)
        pending.callback(PeerResponse(202))
        self.cluster.run(0.1)
        self.assertEqual(self.successResultOf(d).code, 202)

    def test_timeout_is_408(self) -> None:
        """A message to a vanished node fires with a local 408."""
        self.cluster.kill(5062)
        d = self.b.send_message("custom1", b"x", self.c.nodes.local.uri)
        self.cluster.run(33, step=0.5)
        self.assertEqual(self.successResultOf(d).code, 408)

    def test_too_large_for_a_datagram_is_513(self) -> None:
        """Without TCP, a message over udp_max_size fires at once with a local 513 naming the limit; nothing is sent."""
        big = self.cluster.add(5063, udp_max_size=4096)
        sent_before = len(big.transport.sent)
        d = big.send_message("custom1", b"x" * 4000, self.b.nodes.local.uri)
        response = self.successResultOf(d)
        self.assertEqual(response.code, 513)
        self.assertIn("4096-byte datagram limit", response.reason)
        self.assertEqual(len(big.transport.sent), sent_before)
        self.assertEqual(big.channel_stats["custom1"].results, {513: 1})
        self.assertEqual(big.max_body_size, 4096 - 1024)

    def test_except_node(self) -> None:
        """bcast_message skips except_node."""
        d = self.a.bcast_message("custom1", b"y", except_node=self.b.nodes.local)
        self.cluster.run(0.1)
        self.assertEqual([n.port for n, _ in self.successResultOf(d)], [5062])

    def test_non_kdmq_405_or_hook(self) -> None:
        """A non-KDMQ request gets 405 with Allow, or what the application hook answers."""
        response = answer(self.a, request_to(5060, "REGISTER", user=""))
        self.assertEqual((response.code, response.headers.get("Allow")), (405, "KDMQ"))
        self.a.request_hook = lambda req, source: make_response(req, 200)
        self.assertEqual(answer(self.a, request_to(5060, "REGISTER", user="")).code, 200)

    def test_allow_list(self) -> None:
        """With an allow list, a request from another address gets 403."""
        svc = self.cluster.add(5070, allow=["127.0.0.2/32"])
        self.assertEqual(answer(svc, request_to(5070)).code, 403)
        self.assertEqual(answer(svc, request_to(5070, host="127.0.0.2"), host="127.0.0.2").code, 200)

    def test_unregister_peer(self) -> None:
        """After unregister_peer its channel answers 404, and a removed event listener hears nothing more."""
        peer = self.c.get_peer("custom1")
        assert peer is not None
        self.successResultOf(self.c.unregister_peer(peer))
        d = self.b.send_message("custom1", b"x", self.c.nodes.local.uri)
        self.cluster.run(0.1)
        self.assertEqual(self.successResultOf(d).code, 404)
        heard: list[Any] = []
        self.a.add_event_listener(heard.append)
        self.a.remove_event_listener(heard.append)
        self.cluster.kill(5062)
        self.cluster.run(38, step=0.05)  # first timeout at 34.5-37 s, the second (removal) from 39.5 s
        self.assertEqual(heard, [])
        self.assertEqual(self.cluster.view(5060).get(5062), "disabled")

    def test_process_message_locally(self) -> None:
        """process_message hands a message to a local peer without the network."""
        d = self.b.process_message("custom1", b"local")
        self.assertEqual(self.successResultOf(d).code, 200)
        self.assertEqual([(p, m.body) for p, m in self.received], [(5061, b"local")])
        self.assertEqual(self.successResultOf(self.b.process_message("nosuch", b"")).code, 404)

    def test_is_from_node(self) -> None:
        """is_from_node knows the hosts of other nodes."""
        self.assertTrue(self.a.is_from_node("127.0.0.1"))
        self.assertFalse(self.a.is_from_node("127.0.0.9"))

    def test_init_runs_once_when_ready(self) -> None:
        """A peer's init hook runs once, after the first node list, also for peers registered later."""
        calls: list[int] = []
        cluster = FakeCluster()
        cluster.add(5060)
        b = cluster.add(5061, seeds=(5060,), start=False)
        b.register_peer(CallbackPeer("early", lambda m: None, init=lambda svc: calls.append(1)))
        ready = b.when_ready()
        b.startService()
        self.assertEqual(calls, [])
        cluster.run(12)
        self.assertEqual(calls, [1])
        self.successResultOf(ready)
        b.register_peer(CallbackPeer("late", lambda m: None, init=lambda svc: calls.append(2)))
        self.assertEqual(calls, [1, 2])

    def test_init_with_single(self) -> None:
        """With init_with_single a lone node is ready at once; without it, it waits."""
        cluster = FakeCluster()
        alone = cluster.add(5060, init_with_single=True)
        waiting = cluster.add(5061)
        cluster.run(0.1)
        self.assertTrue(alone.ready)
        self.assertFalse(waiting.ready)

    def test_replicate(self) -> None:
        """replicate forwards a request to every other active node, but not one from a node (loop check)."""
        seen: list[Request] = []
        self.a.request_hook = lambda req, source: (seen.append(req), None)[1]
        self.c.request_hook = lambda req, source: (seen.append(req), None)[1]
        register = build_request(
            "REGISTER",
            SIPURI.parse("sip:127.0.0.1:5061"),
            from_uri=SIPURI.parse("sip:alice@10.1.1.1:5999"),
            via_transport="UDP",
            via_sent_by="10.1.1.1:5999",
        )
        d = self.b.replicate(register)
        self.cluster.run(0.1)
        self.assertEqual(sorted(n.port for n, _ in self.successResultOf(d)), [5060, 5062])
        self.assertEqual([r.method for r in seen], ["REGISTER", "REGISTER"])
        self.assertEqual(seen[0].call_id, register.call_id)
        # a replicated request arriving at c came from a node: not replicated again
        self.assertEqual(self.successResultOf(self.c.replicate(seen[-1])), [])


def _stranger_datagrams() -> dict[str, tuple[str, bytes, int]]:
    """Datagrams an outsider on 127.0.0.9:5999 might send: (channel, body, Max-Forwards)."""
    import json

    made_up = b"".join(f"sip:10.9.{i // 200}.{i % 200 + 1}:5060;status=active\r\n".encode() for i in range(1000))
    own = b"sip:127.0.0.9:5999;status=active\r\n"
    return {
        "node list naming 1,000 others": ("notification_peer", own + made_up, 70),
        "node list without its own line": ("notification_peer", made_up, 70),
        "node-list query": ("notification_peer", b"", 70),
        "htable sync request": ("htable", json.dumps({"action": 1}).encode(), 70),
        "htable set": ("htable", json.dumps({"action": 2, "htname": "t", "cname": "k", "type": 2, "strval": "v",
                                             "mode": 1}).encode(), 70),
        "usrloc sync request": ("usrloc", json.dumps({"action": 3}).encode(), 70),
        "dialog sync request": ("dialog", json.dumps({"action": 4}).encode(), 70),
    }


class OutsiderTests(SynchronousTestCase):
    """No single datagram from a non-member makes a node send to more than one new address: the one it claims."""

    def test_one_datagram_reaches_at_most_the_claimed_sender(self) -> None:
        """Whatever an outsider sends, in two ping intervals the node sends to no address but its members and the claimed sender."""
        from dmq.peers.dialog import DialogPeer
        from dmq.peers.htable import HTablePeer
        from dmq.peers.usrloc import UsrlocPeer

        for name, (channel, body, max_forwards) in _stranger_datagrams().items():
            with self.subTest(name):
                cluster = FakeCluster()
                a = cluster.add(5060, peers=[HTablePeer(tables=["t"]), UsrlocPeer(), DialogPeer()])
                for port in (5061, 5062):
                    cluster.add(port, seeds=(5060,), peers=[HTablePeer(tables=["t"]), UsrlocPeer(), DialogPeer()])
                cluster.run(6, step=0.01)
                a.transport.clear()
                request = build_request(
                    "KDMQ", SIPURI.parse(f"sip:{channel}@127.0.0.1:5060"),
                    from_uri=SIPURI.parse(f"sip:{channel}@127.0.0.9:5999"), via_transport="UDP",
                    via_sent_by="127.0.0.9:5999", body=body,
                    content_type="application/json" if body.startswith(b"{") else "text/plain",
                    max_forwards=max_forwards,
                )
                a.transport.receive(request.to_bytes(), Address("udp", "127.0.0.9", 5999))
                cluster.run(10, step=0.01)
                destinations = {(s.address.host, s.address.port) for s in a.transport.sent}
                members = {("127.0.0.1", 5061), ("127.0.0.1", 5062)}
                self.assertLessEqual(destinations - members, {("127.0.0.9", 5999)})
