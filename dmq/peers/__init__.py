"""
Bundled DMQ peers: channel handlers that share data with Kamailio modules.

- :class:`~dmq.peers.htable.HTablePeer`: Kamailio's ``htable`` replication
  (channel ``htable``), with :class:`~dmq.peers.htable.HTableSpec` for its
  ``NAME[:expire=SECS]`` table specs.
"""

from dmq.peers.htable import Cell, Change, HTablePeer, HTableSpec, NoSuchTable

__all__ = ["Cell", "Change", "HTablePeer", "HTableSpec", "NoSuchTable"]
