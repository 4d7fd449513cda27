"""
The JSON views of a node: one node as Kamailio's ``dmq.list_nodes`` shows
it, and the counters of a node as ``dmq.stats`` answers them.  The control
API and the status page read a node through these.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dmq.node import Node, key_uri

if TYPE_CHECKING:
    from dmq.service import DMQService

__all__ = ["node_entry", "service_stats"]


def node_entry(node: Node) -> dict[str, Any]:
    """
    One node as Kamailio's ``dmq.list_nodes`` shows it.

    ``host`` as written in the node's URI (an IPv6 reference keeps its
    brackets, as Kamailio's parsed URI host does), ``port`` as a string
    (empty when the URI has none), ``proto`` ``*`` for UDP (Kamailio prints
    the "unspecified" protocol of a URI without ``;transport=``) else the
    transport name, ``resolved_ip`` without brackets (empty while unknown),
    ``status``, ``last_notification`` in whole seconds of the clock (0 when
    nothing came from the node yet; Kamailio always prints 0), ``local`` 0 or
    1, and Kamailio 6.1's ``fail_count``; then this node's own ``agent``: the
    node's ``User-Agent`` / ``Server`` text (empty while unknown).
    """
    return {
        "host": node.host,
        "port": "" if node.port is None else str(node.port),
        "proto": "*" if node.transport == "udp" else node.transport,
        "resolved_ip": node.resolved_ip or "",
        "status": node.status.value,
        "last_notification": int(node.last_seen) if node.last_seen is not None else 0,
        "local": 1 if node.local else 0,
        "fail_count": node.fail_count,
        "agent": node.agent or "",
    }


def service_stats(service: "DMQService") -> dict[str, Any]:
    """
    The counters of a node, as ``dmq.stats`` answers them (JSON-able: status
    codes are string keys).
    """
    nodes = {"total": len(service.nodes)}
    nodes.update((status.value, count) for status, count in service.nodes.count_by_status().items())
    channels = {
        channel: {
            "received": stats.received,
            "sent": stats.sent,
            "answered": {str(code): n for code, n in sorted(stats.answered.items())},
            "results": {str(code): n for code, n in sorted(stats.results.items())},
        }
        for channel, stats in sorted(service.channel_stats.items())
    }
    t = service.transactions.stats
    transactions: dict[str, Any] = {
        name: getattr(t, name)
        for name in (
            "requests_sent",
            "retransmissions",
            "timeouts",
            "transport_errors",
            "responses_received",
            "stray_responses",
            "requests_received",
            "retransmitted_requests",
            "responses_sent",
            "handler_errors",
            "sent_over_tcp_for_size",
        )
    }
    transactions["responses_sent_by_code"] = {str(c): n for c, n in sorted(t.by_code.items())}
    transactions["client_open"] = len(service.transactions.clients)
    transactions["server_open"] = len(service.transactions.servers)
    transport = dict(service.transport.stats)
    transport["connections"] = service.transport.connection_count
    notification = service.notification
    return {
        "node": str(service.nodes.local.uri),
        "ready": service.ready,
        "nodes": nodes,
        "channels": channels,
        "transactions": transactions,
        "transport": transport,
        "ping_rtt": {key_uri(key): seconds for key, seconds in sorted(service.rtt.items())},
        "notification": {
            "joins": notification.joins,
            "pings": notification.pings,
            "refused_nodes": notification.refused_nodes,
        },
        "refused": dict(service.dispatcher.refused),
        "peers": {
            channel: dict(stats)
            for channel, stats in ((c, getattr(peer, "stats", None)) for c, peer in sorted(service.peers.items()))
            if isinstance(stats, dict)
        },
    }
