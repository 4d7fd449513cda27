"""
Bundled DMQ peers: channel handlers that share data with Kamailio modules.

- :class:`~dmq.peers.htable.HTablePeer`: Kamailio's ``htable`` replication
  (channel ``htable``), with :class:`~dmq.peers.htable.HTableSpec` for its
  ``NAME[:expire=SECS]`` table specs.
- :class:`~dmq.peers.dialog.DialogPeer`: Kamailio's ``dialog`` replication
  (channel ``dialog``), with :class:`~dmq.peers.dialog.DialogState`.
- :class:`~dmq.peers.usrloc.UsrlocPeer`: Kamailio's ``dmq_usrloc`` location
  table (channel ``usrloc``).
"""

from dmq.peers.dialog import DialogPeer, DialogState
from dmq.peers.htable import Cell, Change, HTablePeer, HTableSpec, NoSuchTable
from dmq.peers.usrloc import UsrlocPeer

__all__ = ["Cell", "Change", "DialogPeer", "DialogState", "HTablePeer", "HTableSpec", "NoSuchTable", "UsrlocPeer"]
