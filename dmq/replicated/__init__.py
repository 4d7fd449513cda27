"""
What table-like peers share (htable; usrloc and dialog are built the same
way): see ``docs/replicated.md``.

- :mod:`~dmq.replicated.wire`: compact JSON, field readers answering 400/500;
- :mod:`~dmq.replicated.link`: the peer's view of its service (clock, nodes, sending);
- :mod:`~dmq.replicated.sync`: asking for a sync on join, and answering one in paced chunks;
- :mod:`~dmq.replicated.snapshot`: an atomic JSON snapshot on disk;
- :mod:`~dmq.replicated.rpc`: RPC parameter scanning in Kamailio's manner;
- :mod:`~dmq.replicated.peer`: :class:`ReplicatedPeer`, the life cycle that ties them together.

Replication itself goes through a :class:`dmq.fanout.Outbox`.
"""

from dmq.replicated.link import Outcome, ServiceLink, paired
from dmq.replicated.peer import ReplicatedPeer
from dmq.replicated.rpc import rpc_args, rpc_call, rpc_int
from dmq.replicated.snapshot import Snapshot, write_atomically
from dmq.replicated.sync import SYNC_MODES, SyncAnswers, request_sync, requester
from dmq.replicated.wire import (
    INT_MAX,
    INT_MIN,
    Framing,
    bad_request,
    check_text,
    dumps,
    internal_error,
    parse_object,
    wire_int,
    wire_str,
)

__all__ = [
    "Outcome",
    "ServiceLink",
    "paired",
    "ReplicatedPeer",
    "rpc_args",
    "rpc_call",
    "rpc_int",
    "Snapshot",
    "write_atomically",
    "SYNC_MODES",
    "SyncAnswers",
    "request_sync",
    "requester",
    "INT_MAX",
    "INT_MIN",
    "Framing",
    "bad_request",
    "check_text",
    "dumps",
    "internal_error",
    "parse_object",
    "wire_int",
    "wire_str",
]
