"""
dmq: Kamailio-compatible DMQ (distributed message queue) nodes for Twisted.

Nodes form a cluster, find each other through seed addresses, watch each
other with pings, and carry messages on named channels as SIP ``KDMQ``
requests over UDP, TCP and TLS.

The names below load their modules on first use, so that light tools (such
as ``dmqctl``) do not import Twisted's reactor machinery.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    # "import X as X": the names are this package's own (mypy --strict re-exports them).
    from dmq.node import Node as Node, NodeStatus as NodeStatus
    from dmq.changes import Event as Event, EventKind as EventKind
    from dmq.nodelist import NodeList as NodeList
    from dmq.peer import (
        CallbackPeer as CallbackPeer,
        DMQMessage as DMQMessage,
        Peer as Peer,
        PeerError as PeerError,
        PeerResponse as PeerResponse,
    )
    from dmq.service import DMQService as DMQService

__version__ = "0.1.0"

_EXPORTS = {
    "CallbackPeer": "dmq.peer",
    "DMQMessage": "dmq.peer",
    "DMQService": "dmq.service",
    "Event": "dmq.changes",
    "EventKind": "dmq.changes",
    "Node": "dmq.node",
    "NodeList": "dmq.nodelist",
    "NodeStatus": "dmq.node",
    "Peer": "dmq.peer",
    "PeerError": "dmq.peer",
    "PeerResponse": "dmq.peer",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'dmq' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
