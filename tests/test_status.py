"""The status page: its data, the rate sampler on the node's clock, the HTML (escaped), and serving it behind the token."""

from __future__ import annotations

import json
import re
from typing import Any, Optional

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers

from dmq import CallbackPeer, NodeStatus, Peer, PeerResponse
from dmq.control import ControlAPI, make_site
from dmq.service import SERVER_NAME
from dmq.sip.address import Address
from dmq.status import MAX_CHANNELS, MAX_EVENTS, SAMPLES, RateSampler, render_chart, render_page, status_data
from dmq.testing import FakeCluster, cluster_of

from .browser import Page

# Twisted's own Agent response transport lacks abortConnection; nothing to fix here.
pytestmark = pytest.mark.filterwarnings("ignore:Using readBody with a transport:DeprecationWarning")

HOSTILE = '<script>alert("agent")</script>"><img src=x onerror=alert(1)>&amp;'


class StatusPeer(Peer):
    """A peer reporting what ``status()`` returns (a table's sizes, as the htable peer does)."""

    def __init__(self, channel: str, report: Any) -> None:
        super().__init__(channel)
        self.report = report

    def handle_message(self, message: Any) -> PeerResponse:
        """Accept every message."""
        return PeerResponse(200)

    def status(self) -> Any:
        """The report given, or raise it when it is an exception."""
        if isinstance(self.report, Exception):
            raise self.report
        return self.report


def three(**kw: Any) -> FakeCluster:
    """Three nodes (5060 seeds the others) that have run long enough to list each other active and ping once."""
    cluster = cluster_of(5060, 5061, 5062, **kw)
    cluster.run(6, step=0.01)
    return cluster


class SamplerTests(SynchronousTestCase):
    """RateSampler: readings on the node's clock, rates per second, a bounded history, started and stopped."""

    def setUp(self) -> None:
        self.cluster = FakeCluster()
        self.svc = self.cluster.add(5060)
        self.sampler = RateSampler(self.svc, interval=5)
        self.clock = self.cluster.clock

    def test_reads_now_and_every_interval_until_stopped(self) -> None:
        """One reading at start, one per interval on the clock, none after stopService."""
        self.clock.advance(2)
        self.sampler.startService()
        self.clock.pump([5, 5, 5])
        self.assertEqual([t for t, _, _ in self.sampler.samples], [2.0, 7.0, 12.0, 17.0])
        self.sampler.stopService()
        self.clock.pump([5, 5])
        self.assertEqual(len(self.sampler.samples), 4)
        self.assertFalse(self.sampler.running)

    def test_rates_are_all_channels_per_second(self) -> None:
        """Received and sent of every channel, summed, divided by the time between readings."""
        self.sampler.startService()
        self.svc.dispatcher.stats("a").received += 10
        self.svc.dispatcher.stats("b").received += 5
        self.svc.dispatcher.stats("b").sent += 20
        self.clock.advance(5)
        self.svc.dispatcher.stats("a").sent += 5
        self.clock.advance(5)
        self.assertEqual(self.sampler.rates(), [(5.0, 3.0, 4.0), (10.0, 0.0, 1.0)])

    def test_keeps_the_last_readings(self) -> None:
        """After many intervals only the last SAMPLES readings are kept, the newest last."""
        self.sampler.startService()
        self.clock.pump([5] * (SAMPLES + 20))
        self.assertEqual(len(self.sampler.samples), SAMPLES)
        self.assertEqual(self.sampler.samples[-1][0], 5.0 * (SAMPLES + 20))

    def test_site_runs_the_sampler_while_it_listens(self) -> None:
        """make_site's sampler reads on the node's clock from the first port's start to the last one's stop."""
        site = make_site(ControlAPI(self.svc))
        (sampler,) = site.services  # type: ignore[attr-defined]
        self.assertIsInstance(sampler, RateSampler)
        self.clock.advance(5)
        self.assertEqual(len(sampler.samples), 0)
        site.doStart()
        site.doStart()  # a second port
        self.clock.pump([5, 5])
        self.assertEqual(len(sampler.samples), 3)
        site.doStop()
        self.clock.advance(5)
        self.assertEqual(len(sampler.samples), 4)
        site.doStop()
        self.clock.pump([5, 5])
        self.assertEqual(len(sampler.samples), 4)

    def test_no_status_page_without_the_control_api(self) -> None:
        """A site without the control API (metrics only) has no sampler and no page."""
        site = make_site(None, None, [])
        self.assertEqual(site.services, [])  # type: ignore[attr-defined]
        self.assertNotIn(b"", site.resource.children)


class DataTests(SynchronousTestCase):
    """status_data: the nodes, channels with errors, peers' own status, events newest first, rates."""

    def test_nodes(self) -> None:
        """Every node with its status, transport, agent, last ping round trip and fail count; this node first."""
        cluster = three()
        svc = cluster.nodes[5060]
        data = status_data(svc)
        self.assertEqual({n["uri"]: n["status"] for n in data["nodes"]}, {f"sip:127.0.0.1:{p}": s for p, s in cluster.view(5060).items()})
        self.assertEqual([n["local"] for n in data["nodes"]], [True, False, False])
        for entry in data["nodes"]:
            node = svc.nodes.get(entry["uri"])
            self.assertEqual(entry["rtt"], svc.rtt.get(node.key))
            self.assertEqual((entry["transport"], entry["agent"], entry["fail_count"]), ("udp", SERVER_NAME, 0))
        self.assertIsNone(data["nodes"][0]["rtt"])
        self.assertGreater(data["nodes"][1]["rtt"], 0)
        self.assertEqual((data["node"], data["ready"]), ("sip:127.0.0.1:5060", True))
        json.dumps(data)

    def test_channel_counts_and_errors(self) -> None:
        """Answers and results by code; errors count the 4xx-6xx of both, a timeout's local 408 included."""
        cluster = cluster_of(5060, 5061, 5062, t1=0.05)
        for port in (5060, 5061):
            cluster.nodes[port].register_peer(CallbackPeer("orders", lambda message: PeerResponse(200)))
        cluster.run(1, step=0.01)
        a = cluster.nodes[5060]
        a.bcast_message("orders", b"one")  # 5061 answers 200, 5062 has no such peer: 404
        cluster.run(1, step=0.01)
        cluster.network.drop = lambda source, target, data: target.port == 5061
        a.send_message("orders", b"two", a.nodes.get("sip:127.0.0.1:5061"))
        cluster.run(4, step=0.01)  # 64 * T1 = 3.2 s: a local 408
        orders = {c["channel"]: c for c in status_data(a)["channels"]}["orders"]
        self.assertEqual((orders["sent"], orders["results"], orders["errors"]), (3, {"200": 1, "404": 1, "408": 1}, 2))
        theirs = {c["channel"]: c for c in status_data(cluster.nodes[5062])["channels"]}["orders"]
        self.assertEqual((theirs["peer"], theirs["received"], theirs["answered"], theirs["errors"]), (False, 1, {"404": 1}, 1))

    def test_registered_channels_first_and_made_up_ones_capped(self) -> None:
        """Channels with a peer come first, then others by messages received; past MAX_CHANNELS they are only counted."""
        svc = FakeCluster().add(5060)
        svc.register_peer(CallbackPeer("zzz", lambda message: PeerResponse(200)))
        for i in range(MAX_CHANNELS + 5):
            svc.dispatcher.stats(f"made-up-{i}").received += i
        data = status_data(svc)
        names = [c["channel"] for c in data["channels"]]
        self.assertEqual(names[:3], ["notification_peer", "zzz", f"made-up-{MAX_CHANNELS + 4}"])
        self.assertEqual((len(names), data["channels_omitted"]), (MAX_CHANNELS, 7))

    def test_peer_status(self) -> None:
        """A peer's status() is shown as it returns it; a failing, odd or oversized one as an error; others by channel."""
        svc = FakeCluster().add(5060)
        svc.register_peer(StatusPeer("htable", {"tables": {"t": 12, "bans": 0}}))
        svc.register_peer(StatusPeer("broken", RuntimeError("no")))
        svc.register_peer(StatusPeer("odd", ["not", "an", "object"]))
        svc.register_peer(StatusPeer("opaque", {"when": object()}))
        svc.register_peer(StatusPeer("huge", {"k": "x" * 10000}))
        peers = {p.pop("channel"): p for p in status_data(svc)["peers"]}
        self.assertEqual(peers["htable"], {"status": {"tables": {"t": 12, "bans": 0}}})
        self.assertEqual(peers["notification_peer"], {})
        self.assertEqual(peers["broken"], {"error": "status() failed (see the log)"})
        self.assertEqual(peers["odd"], {"error": "status() returned list, not an object"})
        self.assertEqual(peers["opaque"], {"error": "status() returned something that is not JSON"})
        self.assertIn("characters of JSON", peers["huge"]["error"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_events_newest_first_and_capped(self) -> None:
        """The membership history, newest first, with its time, kind and node; at most MAX_EVENTS."""
        cluster = three(t1=0.05)
        svc = cluster.nodes[5060]
        cluster.kill(5062)
        cluster.run(10, step=0.01)  # the next ping times out after 64 * T1
        events = status_data(svc)["events"]
        self.assertEqual(events[0]["kind"], "peer-disabled")
        self.assertEqual(events[0]["node"], "sip:127.0.0.1:5062")
        self.assertEqual(events[0]["time"], svc.membership.history[-1][0])
        self.assertEqual({e["kind"] for e in events[1:]}, {"peer-up"})
        for i in range(MAX_EVENTS):
            svc.add_node(f"sip:127.0.0.9:{6000 + i}")
        events = status_data(svc)["events"]
        self.assertEqual(len(events), MAX_EVENTS)
        self.assertEqual(events[0]["node"], f"sip:127.0.0.9:{6000 + MAX_EVENTS - 1}")

    def test_rates_come_from_the_sampler(self) -> None:
        """The data's rates are the sampler's, with its interval; without a sampler there are none."""
        cluster = three()
        svc = cluster.nodes[5060]
        sampler = RateSampler(svc, interval=2)
        sampler.startService()
        cluster.run(10, step=0.01)
        rates = status_data(svc, sampler)["rates"]
        self.assertEqual(rates["interval"], 2)
        self.assertEqual([(s["time"], s["received"], s["sent"]) for s in rates["samples"]], sampler.rates())
        self.assertGreater(sum(s["received"] for s in rates["samples"]), 0)
        self.assertEqual(status_data(svc)["rates"]["samples"], [])


class RenderTests(SynchronousTestCase):
    """render_page and render_chart: what the page shows, escaped, and the token in its own links only."""

    def test_nodes_and_statuses(self) -> None:
        """Each node is a row with its status, transport, agent, ping round trip in ms and fail count; this node marked."""
        cluster = three()
        svc = cluster.nodes[5060]
        svc.set_node_status("sip:127.0.0.1:5062", NodeStatus.DISABLED)
        data = status_data(svc)
        page = Page(render_page(data))
        self.assertEqual({uri: n["status"] for uri, n in page.nodes.items()}, {n["uri"]: n["status"] for n in data["nodes"]})
        self.assertEqual(page.nodes["sip:127.0.0.1:5062"]["status"], "disabled")
        local = page.nodes["sip:127.0.0.1:5060"]["cells"]
        self.assertEqual(local, ["sip:127.0.0.1:5060 this node", "active", "udp", SERVER_NAME, "-", "0"])
        remote = page.nodes["sip:127.0.0.1:5061"]["cells"]
        self.assertEqual(remote[4], f"{data['nodes'][1]['rtt'] * 1000:.1f} ms")

    def test_network_text_is_escaped(self) -> None:
        """A hostile User-Agent and channel name from the network show as text: no tag of theirs reaches the page."""
        cluster = three()
        svc = cluster.nodes[5060]
        svc.register_peer(CallbackPeer("orders", lambda message: PeerResponse(200)))
        for n, channel in enumerate(("orders", "%3Cimg%20src%3Dx%3E")):
            request = (
                f"KDMQ sip:{channel}@127.0.0.1:5060 SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-hostile{n}\r\n"
                "From: <sip:127.0.0.1:5061>;tag=1\r\nTo: <sip:127.0.0.1:5060>\r\n"
                f"Call-ID: hostile{n}\r\nCSeq: 1 KDMQ\r\nMax-Forwards: 1\r\n"
                f"User-Agent: {HOSTILE}\r\nContent-Length: 0\r\n\r\n"
            ).encode()
            svc.transport.receive(request, Address("udp", "127.0.0.1", 5061))
        svc.register_peer(StatusPeer("htable", {"tables": {"<blink>t</blink>": "<i>12</i>"}}))
        html = render_page(status_data(svc))
        page = Page(html)
        self.assertEqual(page.nodes["sip:127.0.0.1:5061"]["cells"][3], HOSTILE)
        self.assertIn("<img src=x>", page.channels)
        self.assertEqual(page.peers["htable"], "tables <blink>t</blink> <i>12</i>")
        self.assertNotIn("script", page.tags)
        self.assertNotIn("img", page.tags)
        self.assertFalse({"blink", "i"} & set(page.tags))
        self.assertNotIn("<script", html)

    def test_htable_peer_status(self) -> None:
        """The htable peer's status (its tables and their live items) is shown in its peer row."""
        from dmq.peers.htable import HTablePeer

        cluster = FakeCluster()
        svc = cluster.add(5060, peers=[HTablePeer(["t", "bans"])])
        table = svc.get_peer("htable")
        for key in ("a", "b", "c"):
            table.set("t", key, key)
        cluster.run(1)
        self.assertEqual(Page(render_page(status_data(svc))).peers["htable"], "tables t 3 bans 0")

    def test_refresh_and_links_carry_the_token_only_when_given(self) -> None:
        """The page reloads every 5 s; a token given for it is kept, URL-quoted, in the reload and the JSON link."""
        data = status_data(FakeCluster().add(5060))
        page = Page(render_page(data))
        self.assertEqual((page.refresh, page.links), ("5", ["status.json"]))
        page = Page(render_page(data, token="a b&c/<"))
        self.assertEqual(page.refresh, "5; url=?token=a%20b%26c%2F%3C")
        self.assertEqual(page.links, ["status.json?token=a%20b%26c%2F%3C"])

    def test_no_external_assets(self) -> None:
        """The page loads nothing: no script, link, image, font or URL of another site."""
        cluster = three()
        sampler = RateSampler(cluster.nodes[5060])
        sampler.startService()
        cluster.run(20, step=0.01)
        html = render_page(status_data(cluster.nodes[5060], sampler))
        page = Page(html)
        self.assertFalse({"script", "link", "img", "iframe", "object", "embed"} & set(page.tags))
        self.assertIn("svg", page.tags)
        self.assertNotIn("@import", html)
        self.assertNotIn("url(", html)
        self.assertEqual(re.findall(r"https?://[^\"]*", html), ["http://www.w3.org/2000/svg"])

    def test_chart(self) -> None:
        """Two lines, one point per rate, scaled to a round peak; the newest point at the right edge."""
        rates = {"interval": 5.0, "samples": [{"time": 10.0 + 5 * i, "received": 3.0, "sent": 1.5} for i in range(4)]}
        page = Page(render_chart(rates, width=640, height=170))
        received, sent = page.polylines["received"], page.polylines["sent"]
        self.assertEqual((len(received), len(sent)), (4, 4))
        # plot area: x from 44 to 630, y from 10 (peak 5, the round ceiling of 3) to 148 (0)
        self.assertEqual(received[-1], (630.0, round(10 + 138 * (1 - 3 / 5), 1)))
        self.assertEqual(sent[-1][1], round(10 + 138 * (1 - 1.5 / 5), 1))
        self.assertLess(received[0][0], received[-1][0])
        self.assertIn(">5<", render_chart(rates))

    def test_chart_waits_for_two_readings(self) -> None:
        """With fewer than two rates the chart says it is collecting and draws no line."""
        page = Page(render_chart({"interval": 5.0, "samples": []}))
        self.assertEqual(page.polylines, {})
        self.assertIn("collecting", render_chart({"interval": 5.0, "samples": []}))


# -- over HTTP ----------------------------------------------------------------------------------


@pytest.fixture
def status_site(reactor: Any) -> Any:
    """Factory: the control site of a three-node FakeCluster's first node, listening on a free loopback port."""
    ports: list[Any] = []

    def make(token: Optional[str] = None) -> tuple[FakeCluster, str]:
        cluster = three()
        site = make_site(ControlAPI(cluster.nodes[5060]), token)
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        ports.append(port)
        return cluster, f"http://127.0.0.1:{port.getHost().port}"

    yield make
    for port in ports:
        pytest_twisted.blockon(defer.maybeDeferred(port.stopListening))


def get(reactor: Any, url: str, headers: Optional[dict[bytes, list[bytes]]] = None, method: bytes = b"GET") -> Deferred[Any]:
    """Request ``url``; fires with (response, body bytes)."""
    d = Agent(reactor).request(method, url.encode(), Headers(headers or {}), None)
    d.addCallback(lambda response: readBody(response).addCallback(lambda data: (response, data)))
    return d


@pytest_twisted.inlineCallbacks
def test_http_page_and_json(status_site: Any, reactor: Any) -> Any:
    """GET / is the HTML page (no cache, a strict content policy) and /status.json the same data as JSON."""
    cluster, base = status_site()
    response, body = yield get(reactor, base + "/")
    assert response.code == 200
    assert response.headers.getRawHeaders(b"content-type") == [b"text/html; charset=utf-8"]
    assert response.headers.getRawHeaders(b"cache-control") == [b"no-store"]
    assert b"default-src 'none'" in response.headers.getRawHeaders(b"content-security-policy")[0]
    page = Page(body.decode())
    assert {uri: n["status"] for uri, n in page.nodes.items()} == {f"sip:127.0.0.1:{p}": s for p, s in cluster.view(5060).items()}
    response, body = yield get(reactor, base + "/status.json")
    assert response.headers.getRawHeaders(b"content-type") == [b"application/json"]
    data = json.loads(body)
    assert data["node"] == "sip:127.0.0.1:5060"
    assert [n["uri"] for n in data["nodes"]] == list(page.nodes)


@pytest_twisted.inlineCallbacks
def test_http_other_paths_and_methods(status_site: Any, reactor: Any) -> Any:
    """POST / is 405; unknown paths stay 404 and GET /RPC 405."""
    cluster, base = status_site()
    response, _ = yield get(reactor, base + "/", method=b"POST")
    assert response.code == 405
    response, _ = yield get(reactor, base + "/status")
    assert response.code == 404
    response, _ = yield get(reactor, base + "/RPC")
    assert response.code == 405


@pytest_twisted.inlineCallbacks
def test_http_token(status_site: Any, reactor: Any) -> Any:
    """With a token, the page and the JSON need it in the header or the query; only a query token is kept in the page."""
    cluster, base = status_site(token="s3cr&t")
    for path in ("/", "/status.json", "/?token=wrong", "/?token=s3cr&t", "/?token=s3cr%26t&token=x"):
        response, _ = yield get(reactor, base + path)
        assert (path, response.code) == (path, 401)
        assert response.headers.getRawHeaders(b"www-authenticate") == [b'Bearer realm="dmq"']
    response, _ = yield get(reactor, base + "/", {b"authorization": [b"Bearer wrong"]})
    assert response.code == 401
    response, body = yield get(reactor, base + "/", {b"authorization": [b"Bearer s3cr&t"]})
    assert response.code == 200
    assert Page(body.decode()).refresh == "5"
    response, body = yield get(reactor, base + "/?token=s3cr%26t")
    assert response.code == 200
    page = Page(body.decode())
    assert (page.refresh, page.links) == ("5; url=?token=s3cr%26t", ["status.json?token=s3cr%26t"])
    assert len(page.nodes) == 3
    response, body = yield get(reactor, base + "/" + page.links[0])
    assert response.code == 200
    assert len(json.loads(body)["nodes"]) == 3


@pytest_twisted.inlineCallbacks
def test_http_rpc_takes_no_query_token(status_site: Any, reactor: Any) -> Any:
    """/RPC still wants the token in the Authorization header: ?token= does not open it."""
    from io import BytesIO

    from twisted.web.client import FileBodyProducer

    cluster, base = status_site(token="s3cret")
    body = FileBodyProducer(BytesIO(b'{"jsonrpc": "2.0", "method": "dmq.stats", "id": 1}'))
    response = yield Agent(reactor).request(b"POST", (base + "/RPC?token=s3cret").encode(), Headers({}), body)
    yield readBody(response)
    assert response.code == 401


@pytest_twisted.inlineCallbacks
def test_http_hostile_agent(status_site: Any, reactor: Any) -> Any:
    """A hostile agent string reaches the page escaped and the JSON as plain text."""
    cluster, base = status_site()
    cluster.nodes[5060].nodes.get("sip:127.0.0.1:5061").note_agent(HOSTILE)
    response, body = yield get(reactor, base + "/")
    assert b"<script" not in body and b"<img" not in body
    assert Page(body.decode()).nodes["sip:127.0.0.1:5061"]["cells"][3] == HOSTILE
    response, body = yield get(reactor, base + "/status.json")
    assert json.loads(body)["nodes"][1]["agent"] == HOSTILE


@pytest_twisted.inlineCallbacks
def test_http_sampler_follows_the_listener(reactor: Any) -> Any:
    """The sampler starts when the control site listens and stops with it."""
    cluster = three()
    site = make_site(ControlAPI(cluster.nodes[5060]))
    (sampler,) = site.services
    assert not sampler.running
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    assert sampler.running and len(sampler.samples) == 1
    yield port.stopListening()
    assert not sampler.running
