"""
The ``usrloc`` peer: the location table (AoRs and their registered
contacts) shared with Kamailio's ``dmq_usrloc`` module.  See ``docs/usrloc.md``.

- :mod:`~dmq.peers.usrloc.table`: contacts, the table and its update rules, ruids (no I/O);
- :mod:`~dmq.peers.usrloc.wire`: the JSON bodies, built and read;
- :mod:`~dmq.peers.usrloc.peer`: :class:`UsrlocPeer`;
- :mod:`~dmq.peers.usrloc.rpc`: the ``ul.*`` control methods.
"""

from dmq.peers.usrloc.peer import UsrlocPeer
from dmq.peers.usrloc.rpc import SLOTS, UsrlocRPC, contact_info
from dmq.peers.usrloc.table import METHODS_ALL, Q_UNSET, Contact, ContactChange, Location, RuidMaker
from dmq.peers.usrloc.wire import CHANNEL, CONTENT_TYPE, MULTI, Action, contact_json, sync_body

__all__ = [
    "Action",
    "CHANNEL",
    "CONTENT_TYPE",
    "Contact",
    "ContactChange",
    "Location",
    "METHODS_ALL",
    "MULTI",
    "Q_UNSET",
    "RuidMaker",
    "SLOTS",
    "UsrlocPeer",
    "UsrlocRPC",
    "contact_info",
    "contact_json",
    "sync_body",
]
