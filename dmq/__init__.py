"""
dmq: Kamailio-compatible DMQ (distributed message queue) nodes for Twisted.

Nodes form a cluster, find each other through seed addresses, watch each
other with pings, and carry messages on named channels as SIP ``KDMQ``
requests over UDP, TCP and TLS.
"""

from dmq.node import Event, EventKind, Node, NodeList, NodeStatus
from dmq.peer import CallbackPeer, DMQMessage, Peer, PeerError, PeerResponse
from dmq.service import DMQService

__all__ = [
    "CallbackPeer",
    "DMQMessage",
    "DMQService",
    "Event",
    "EventKind",
    "Node",
    "NodeList",
    "NodeStatus",
    "Peer",
    "PeerError",
    "PeerResponse",
]
