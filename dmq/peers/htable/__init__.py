"""
The ``htable`` peer: replicated key/value tables shared with Kamailio's
``htable`` module.  See ``docs/htable.md``.

- :mod:`~dmq.peers.htable.table`: table specs, cells, last-write-wins (no I/O);
- :mod:`~dmq.peers.htable.match`: the tests of remove actions (POSIX regexes);
- :mod:`~dmq.peers.htable.wire`: the JSON bodies, built and read;
- :mod:`~dmq.peers.htable.peer`: :class:`HTablePeer`;
- :mod:`~dmq.peers.htable.rpc`: the ``htable.*`` control methods.
"""

from dmq.peers.htable.match import compile_posix_regex, matcher
from dmq.peers.htable.peer import INIT_SYNC_MODES, ChangeListener, HTablePeer, TableSpecs
from dmq.peers.htable.rpc import KAMAILIO_SLOTS, HTableRPC
from dmq.peers.htable.table import TYPE_INT, TYPE_STR, Cell, Change, HTable, HTableSpec, NoSuchTable, Value
from dmq.peers.htable.wire import (
    CHANNEL,
    CONTENT_TYPE,
    EMPTY_CELLS,
    LAST_MODIFIED_SINCE,
    Action,
    cell_json,
    delete_body,
    expire_body,
    remove_body,
    set_body,
    sync_body,
)
from dmq.replicated.link import Outcome
from dmq.replicated.wire import INT_MAX, INT_MIN

__all__ = [
    "Action",
    "Cell",
    "cell_json",
    "Change",
    "ChangeListener",
    "CHANNEL",
    "compile_posix_regex",
    "CONTENT_TYPE",
    "delete_body",
    "EMPTY_CELLS",
    "expire_body",
    "HTable",
    "HTablePeer",
    "HTableRPC",
    "HTableSpec",
    "INIT_SYNC_MODES",
    "INT_MAX",
    "INT_MIN",
    "KAMAILIO_SLOTS",
    "LAST_MODIFIED_SINCE",
    "matcher",
    "NoSuchTable",
    "Outcome",
    "remove_body",
    "set_body",
    "sync_body",
    "TableSpecs",
    "TYPE_INT",
    "TYPE_STR",
    "Value",
]
