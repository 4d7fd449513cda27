"""Prometheus metrics read from the service, parsed back with prometheus_client's own parser."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import Agent, readBody

from dmq import CallbackPeer, DMQService
from dmq.metrics import DMQCollector, MetricsResource, make_registry
from dmq.peers.usrloc import UsrlocPeer
from dmq.testing import FakeSIPTransport, cluster_of


USRLOC = (("channel", "usrloc"),)

pytestmark = pytest.mark.filterwarnings("ignore:Using readBody with a transport:DeprecationWarning")


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition text as (name, sorted labels) -> value, via the official parser."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


class CollectorTests(SynchronousTestCase):
    """The collector turns the service's counters into metric families."""

    def setUp(self) -> None:
        self.pair = cluster_of(5060, 5061, 5062)
        for port in (5061, 5062):
            self.pair.nodes[port].register_peer(CallbackPeer("custom1", lambda m: None))
        self.pair.run(2)
        self.svc = self.pair.nodes[5060]
        self.registry = make_registry(self.svc, process=False)

    def scrape(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return samples(generate_latest(self.registry).decode())

    def test_node_counts_and_rtt(self) -> None:
        """Node counts by status and a ping round-trip time for each answering node."""
        self.pair.run(6)
        m = self.scrape()
        self.assertEqual(m[("dmq_nodes", (("status", "active"),))], 3)
        self.assertEqual(m[("dmq_nodes", (("status", "disabled"),))], 0)
        for port in (5061, 5062):
            rtt = m[("dmq_node_ping_rtt_seconds", (("node", f"sip:127.0.0.1:{port}"),))]
            self.assertGreater(rtt, 0)
            self.assertLess(rtt, 0.1)
            self.assertEqual(m[("dmq_node_fail_count", (("node", f"sip:127.0.0.1:{port}"),))], 0)

    def test_usrloc_contacts_and_updates(self) -> None:
        """With usrloc peers: the contacts and AoRs gauges, updates sent by the saving node and applied by the others; none without a peer."""
        self.assertFalse(any(name.startswith("dmq_usrloc") for name, _ in self.scrape()))
        peers = {port: self.pair.nodes[port].register_peer(UsrlocPeer()) for port in (5060, 5061)}
        self.pair.run(1)  # their join-time syncs are over
        peers[5060].save("alice", "sip:alice@a")
        peers[5060].save("alice", "sip:alice@b")
        peers[5060].save("bob", "sip:bob@a", expires=5)
        self.pair.run(0.5)
        other = samples(generate_latest(make_registry(self.pair.nodes[5061], process=False)).decode())
        self.assertEqual((other[("dmq_usrloc_updates_applied_total", USRLOC)], other[("dmq_usrloc_contacts", USRLOC)]), (3, 3))
        self.pair.run(6)  # bob expires
        m = self.scrape()
        self.assertEqual((m[("dmq_usrloc_contacts", USRLOC)], m[("dmq_usrloc_aors", USRLOC)]), (2, 1))
        self.assertEqual((m[("dmq_usrloc_updates_sent_total", USRLOC)], m[("dmq_usrloc_updates_applied_total", USRLOC)]), (3, 0))

    def test_messages_per_channel_and_code(self) -> None:
        """A broadcast shows as messages sent and 200 results on its channel; the peers' side counts answers."""
        self.svc.bcast_message("custom1", b"x")
        self.svc.send_message("nosuch", b"x", "sip:127.0.0.1:5061")
        self.pair.run(0.2)
        m = self.scrape()
        self.assertEqual(m[("dmq_messages_sent_total", (("channel", "custom1"),))], 2)
        self.assertEqual(m[("dmq_responses_received_total", (("channel", "custom1"), ("code", "200")))], 2)
        self.assertEqual(m[("dmq_responses_received_total", (("channel", "nosuch"), ("code", "404")))], 1)
        self.assertGreater(m[("dmq_messages_received_total", (("channel", "notification_peer"),))], 0)
        other = samples(generate_latest(make_registry(self.pair.nodes[5061], process=False)).decode())
        self.assertEqual(other[("dmq_messages_received_total", (("channel", "custom1"),))], 1)
        self.assertEqual(other[("dmq_responses_sent_total", (("channel", "custom1"), ("code", "200")))], 1)
        self.assertEqual(other[("dmq_responses_sent_total", (("channel", "nosuch"), ("code", "404")))], 1)
        self.assertGreater(other[("dmq_sip_responses_sent_total", (("code", "200"),))], 0)

    def test_retransmissions_timeouts_and_open_transactions(self) -> None:
        """A request to a silent node is retransmitted, stays open, then times out as a 408 result."""
        self.svc.send_message("custom1", b"x", "sip:127.0.0.1:5999")
        self.pair.run(1)
        m = self.scrape()
        self.assertEqual(m[("dmq_sip_transactions", (("kind", "client"),))], 1)
        self.assertGreater(m[("dmq_sip_retransmissions_total", ())], 0)
        self.assertEqual(m[("dmq_sip_timeouts_total", ())], 0)
        self.pair.run(33, step=0.5)
        self.pair.run(0.2)  # let the pings of the last step be answered
        m = self.scrape()
        self.assertEqual(m[("dmq_sip_timeouts_total", ())], 1)
        self.assertEqual(m[("dmq_responses_received_total", (("channel", "custom1"), ("code", "408")))], 1)
        self.assertEqual(m[("dmq_sip_transactions", (("kind", "client"),))], 0)

    def test_rejected_input_and_connections(self) -> None:
        """The transport's rejected count and connection gauge are exported."""
        self.svc.transport.stats = {"rejected": 3, "connections_opened": 2, "connections_refused": 1}
        m = self.scrape()
        self.assertEqual(m[("dmq_sip_rejected_total", ())], 3)
        self.assertEqual(m[("dmq_sip_connections_opened_total", ())], 2)
        self.assertEqual(m[("dmq_sip_connections_refused_total", ())], 1)
        self.assertEqual(m[("dmq_sip_connections", ())], 0)

    def test_values_are_read_at_each_scrape(self) -> None:
        """The collector keeps no state: a later scrape shows later counts."""
        before = self.scrape()[("dmq_messages_sent_total", (("channel", "notification_peer"),))]
        self.pair.run(6)
        after = self.scrape()[("dmq_messages_sent_total", (("channel", "notification_peer"),))]
        self.assertGreater(after, before)

    def test_registries_are_separate(self) -> None:
        """Two services in one process each get their own registry (no duplicate-name clash)."""
        make_registry(self.pair.nodes[5061])
        make_registry(self.pair.nodes[5062])
        self.assertEqual(DMQCollector(self.svc).describe(), [])


@pytest_twisted.inlineCallbacks
def test_metrics_over_http(reactor: Any) -> Any:
    """GET /metrics serves the text format, with process metrics, parseable by prometheus_client."""
    from dmq.control import make_site

    svc = DMQService("sip:127.0.0.1:5060", reactor=reactor, transport=FakeSIPTransport())
    site = make_site(None, None, [(b"metrics", MetricsResource(make_registry(svc)))])
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    try:
        response = yield Agent(reactor).request(b"GET", f"http://127.0.0.1:{port.getHost().port}/metrics".encode())
        body = yield readBody(response)
    finally:
        yield port.stopListening()
    assert response.code == 200
    assert response.headers.getRawHeaders(b"content-type")[0].startswith(b"text/plain; version=")
    m = samples(body.decode())
    assert m[("dmq_nodes", (("status", "active"),))] == 1
    assert ("process_cpu_seconds_total", ()) in m
