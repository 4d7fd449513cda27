"""
Prometheus metrics of a node, read from the service at each scrape.

:class:`DMQCollector` is a ``prometheus_client`` collector: it keeps no
counters of its own but turns the service's (``channel_stats``,
``transactions.stats``, ``transport.stats``, the node list, ``rtt``) into
metric families whenever the registry is collected.  :class:`MetricsResource`
serves a registry in the text format at ``/metrics`` with ``twisted.web``,
collecting in the reactor thread (the service is not thread-safe, so the
WSGI-in-a-thread resource ``prometheus_client`` ships is not used).

The metrics (all prefixed ``dmq_``):

=========================================  =======  ======================================
name                                       type     labels
=========================================  =======  ======================================
messages_received_total                    counter  channel
messages_sent_total                        counter  channel
responses_sent_total                       counter  channel, code (answers to received)
responses_received_total                   counter  channel, code (results of sent; 408 on timeout)
sip_requests_sent_total                    counter
sip_requests_received_total                counter
sip_responses_sent_total                   counter  code
sip_responses_received_total               counter
sip_retransmissions_total                  counter  (requests re-sent by timer E)
sip_retransmitted_requests_total           counter  (duplicates received)
sip_timeouts_total                         counter  (timer F)
sip_transport_errors_total                 counter
sip_stray_responses_total                  counter
sip_handler_errors_total                   counter
sip_rejected_total                         counter  (unparsable input)
sip_connections_opened_total               counter
sip_connections_refused_total              counter
sip_transactions                           gauge    kind (client, server): open now
sip_connections                            gauge    open TCP/TLS connections
nodes                                      gauge    status
node_ping_rtt_seconds                      gauge    node: last node-list round trip
node_fail_count                            gauge    node
node_info                                  gauge    node, agent: 1 per remote node (its software)
requests_refused_total                     counter  reason (rate, pending, timeout): answered 503
nodes_refused_total                        counter  node-list lines not added
dialogs                                    gauge    channel, state: dialogs of the dialog peer
dialog_actions_applied_total               counter  channel, action: dialog messages applied
dialog_actions_sent_total                  counter  channel, action: dialog messages sent (per node)
dialog_messages_refused_total              counter  channel, code: dialog messages answered 400/500
usrloc_contacts                            gauge    channel: live contacts of the usrloc peer
usrloc_aors                                gauge    channel: AoRs with a live contact
usrloc_updates_applied_total               counter  channel: updates and removes applied from DMQ
usrloc_updates_sent_total                  counter  channel: local changes sent to the cluster
=========================================  =======  ======================================
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from twisted.web.resource import Resource
from twisted.web.server import Request

from dmq.node import key_uri

if TYPE_CHECKING:
    from dmq.service import DMQService

__all__ = ["DMQCollector", "MetricsResource", "make_registry"]

_TRANSACTION_COUNTERS = (
    ("requests_sent", "sip_requests_sent", "SIP requests sent (first transmissions)."),
    ("requests_received", "sip_requests_received", "New SIP requests received."),
    ("responses_received", "sip_responses_received", "SIP responses received."),
    ("retransmissions", "sip_retransmissions", "Requests retransmitted by timer E."),
    ("retransmitted_requests", "sip_retransmitted_requests", "Retransmitted requests received."),
    ("timeouts", "sip_timeouts", "Client transactions that timed out (timer F)."),
    ("transport_errors", "sip_transport_errors", "Requests that could not be sent."),
    ("stray_responses", "sip_stray_responses", "Responses matching no transaction."),
    ("handler_errors", "sip_handler_errors", "Requests whose handler failed (answered 500)."),
)

_TRANSPORT_COUNTERS = (
    ("rejected", "sip_rejected", "Unparsable SIP input dropped or answered with an error."),
    ("connections_opened", "sip_connections_opened", "TCP/TLS connections opened."),
    ("connections_refused", "sip_connections_refused", "TCP/TLS connections refused at the limit."),
)


class DMQCollector:
    """
    A ``prometheus_client`` collector reading one :class:`~dmq.service.DMQService`.

    :param service: the node.
    :param prefix: the metric name prefix.
    """

    def __init__(self, service: "DMQService", prefix: str = "dmq") -> None:
        self.service = service
        self.prefix = prefix

    def _name(self, name: str) -> str:
        return f"{self.prefix}_{name}"

    def collect(self) -> Iterator[Metric]:
        """Every metric family, read from the service now."""
        svc = self.service
        received = CounterMetricFamily(self._name("messages_received"), "DMQ requests received per channel.", labels=["channel"])
        sent = CounterMetricFamily(self._name("messages_sent"), "DMQ requests sent per channel.", labels=["channel"])
        answered = CounterMetricFamily(
            self._name("responses_sent"), "Answers to received DMQ requests per channel and code.", labels=["channel", "code"]
        )
        results = CounterMetricFamily(
            self._name("responses_received"),
            "Final results of sent DMQ requests per channel and code (408 on timeout).",
            labels=["channel", "code"],
        )
        for channel, stats in sorted(svc.channel_stats.items()):
            received.add_metric([channel], stats.received)
            sent.add_metric([channel], stats.sent)
            for code, count in sorted(stats.answered.items()):
                answered.add_metric([channel, str(code)], count)
            for code, count in sorted(stats.results.items()):
                results.add_metric([channel, str(code)], count)
        yield from (received, sent, answered, results)

        tstats = svc.transactions.stats
        for attribute, name, documentation in _TRANSACTION_COUNTERS:
            yield CounterMetricFamily(self._name(name), documentation, value=getattr(tstats, attribute))
        by_code = CounterMetricFamily(self._name("sip_responses_sent"), "SIP responses sent per code.", labels=["code"])
        for code, count in sorted(tstats.by_code.items()):
            by_code.add_metric([str(code)], count)
        yield by_code
        open_transactions = GaugeMetricFamily(
            self._name("sip_transactions"), "Open SIP transactions.", labels=["kind"]
        )
        open_transactions.add_metric(["client"], len(svc.transactions.clients))
        open_transactions.add_metric(["server"], len(svc.transactions.servers))
        yield open_transactions

        transport_stats = svc.transport.stats
        for key, name, documentation in _TRANSPORT_COUNTERS:
            yield CounterMetricFamily(self._name(name), documentation, value=transport_stats.get(key, 0))
        yield GaugeMetricFamily(
            self._name("sip_connections"), "Open TCP/TLS connections.", value=svc.transport.connection_count
        )

        refused = CounterMetricFamily(
            self._name("requests_refused"),
            "Requests answered 503: a stranger over its rate, a channel full, a peer too slow.",
            labels=["reason"],
        )
        for reason, count in sorted(svc.dispatcher.refused.items()):
            refused.add_metric([reason], count)
        yield refused
        yield CounterMetricFamily(
            self._name("nodes_refused"),
            "Node-list lines not added: over a cap, an address nothing is sent to, or vouched for by a stranger.",
            value=svc.notification.refused_nodes,
        )
        nodes = GaugeMetricFamily(self._name("nodes"), "Nodes in the node list by status (this node included).", labels=["status"])
        for status, count in svc.nodes.count_by_status().items():
            nodes.add_metric([status.value], count)
        yield nodes
        fail_counts = GaugeMetricFamily(self._name("node_fail_count"), "Timeouts counted per remote node.", labels=["node"])
        for node in svc.nodes.others():
            fail_counts.add_metric([str(node.uri)], node.fail_count)
        yield fail_counts
        info = GaugeMetricFamily(
            self._name("node_info"),
            "Each remote node with the User-Agent / Server text it sends (empty while unknown); always 1.",
            labels=["node", "agent"],
        )
        for node in svc.nodes.others():
            info.add_metric([str(node.uri), node.agent or ""], 1)
        yield info
        rtt = GaugeMetricFamily(
            self._name("node_ping_rtt_seconds"), "Round-trip time of the last answered node-list request per node.", labels=["node"]
        )
        for node_key, seconds in sorted(svc.rtt.items()):
            rtt.add_metric([key_uri(node_key)], seconds)
        yield rtt
        yield from self._dialog_metrics()
        yield from self._usrloc_metrics()

    def _dialog_metrics(self) -> Iterator[Metric]:
        """The dialog peers' dialogs by state and their message counters (nothing without a dialog peer)."""
        from dmq.peers.dialog import DialogPeer

        peers = [p for p in self.service.peers.values() if isinstance(p, DialogPeer)]
        if not peers:
            return
        dialogs = GaugeMetricFamily(self._name("dialogs"), "Dialogs by state.", labels=["channel", "state"])
        applied = CounterMetricFamily(
            self._name("dialog_actions_applied"), "Dialog messages applied, by action.", labels=["channel", "action"]
        )
        sent = CounterMetricFamily(
            self._name("dialog_actions_sent"), "Dialog messages sent (once per node), by action.", labels=["channel", "action"]
        )
        refused = CounterMetricFamily(
            self._name("dialog_messages_refused"), "Dialog messages answered with an error, by code.", labels=["channel", "code"]
        )
        for peer in peers:
            for state, count in peer.table.count_by_state().items():
                dialogs.add_metric([peer.channel, state.label], count)
            for action, count in peer.applied.items():
                applied.add_metric([peer.channel, action], count)
            for action, count in peer.sent.items():
                sent.add_metric([peer.channel, action], count)
            for code, count in sorted(peer.refused.items()):
                refused.add_metric([peer.channel, str(code)], count)
        yield from (dialogs, applied, sent, refused)

    def _usrloc_metrics(self) -> Iterator[Metric]:
        """The usrloc peers' table sizes and update counters (nothing without a usrloc peer)."""
        from dmq.peers.usrloc import UsrlocPeer

        peers = [p for p in self.service.peers.values() if isinstance(p, UsrlocPeer)]
        if not peers:
            return
        contacts = GaugeMetricFamily(self._name("usrloc_contacts"), "Live contacts in the location table.", labels=["channel"])
        aors = GaugeMetricFamily(self._name("usrloc_aors"), "AoRs with a live contact.", labels=["channel"])
        applied = CounterMetricFamily(
            self._name("usrloc_updates_applied"), "Contact updates and removes from other nodes applied.", labels=["channel"]
        )
        sent = CounterMetricFamily(
            self._name("usrloc_updates_sent"), "Local contact changes sent to the cluster (once per change).", labels=["channel"]
        )
        for peer in peers:
            status, stats = peer.status(), peer.stats
            contacts.add_metric([peer.channel], status["contacts"])
            aors.add_metric([peer.channel], status["aors"])
            applied.add_metric([peer.channel], stats["applied"])
            sent.add_metric([peer.channel], stats["replicated"])
        yield from (contacts, aors, applied, sent)

    def describe(self) -> list[Metric]:
        """Nothing up front: the families are known only when collected."""
        return []


def make_registry(service: "DMQService", process: bool = True) -> CollectorRegistry:
    """
    A registry of its own (never the global one, so several services in one
    process do not clash) with the node's collector and, when ``process``,
    the process, platform and garbage-collector metrics.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DMQCollector(service))
    if process:
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
    return registry


class MetricsResource(Resource):
    """``GET /metrics``: the registry in Prometheus' text format."""

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self.registry = registry

    def render_GET(self, request: Request) -> bytes:  # noqa: N802
        """Collect and answer."""
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        data: Any = generate_latest(self.registry)
        return bytes(data)
