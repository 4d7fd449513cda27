"""
The ``dialog`` peer: the calls of a cluster, shared with Kamailio's dialog
module (``enable_dmq``).  See ``docs/dialog.md``.

- :mod:`~dmq.peers.dialog.table`: dialogs, states, the hash table, profiles (no I/O);
- :mod:`~dmq.peers.dialog.wire`: the JSON bodies, built and read;
- :mod:`~dmq.peers.dialog.peer`: :class:`DialogPeer`;
- :mod:`~dmq.peers.dialog.rpc`: ``dlg.list`` and ``dlg.profile_get_size``.
"""

from dmq.peers.dialog.peer import SYNC_ANSWER_MODES, DialogChange, DialogPeer, DialogRef
from dmq.peers.dialog.rpc import DialogRPC, dialog_entry
from dmq.peers.dialog.table import CALLEE, CALLER, DEFAULT_HASH_SIZE, DEFAULT_LIFETIME, Dialog, DialogKey, DialogState
from dmq.peers.dialog.table import DialogTable, Leg, ProfileLink, Profiles, hash_table_size
from dmq.peers.dialog.wire import (
    CHANNEL,
    CONTENT_TYPE,
    Action,
    Fields,
    parse_body,
    parse_fields,
    parse_profiles,
    profiles_json,
    remove_body,
    state_body,
    sync_body,
    update_body,
)

__all__ = [
    "Action",
    "CALLEE",
    "CALLER",
    "CHANNEL",
    "CONTENT_TYPE",
    "DEFAULT_HASH_SIZE",
    "DEFAULT_LIFETIME",
    "Dialog",
    "DialogChange",
    "DialogKey",
    "DialogPeer",
    "DialogRPC",
    "DialogRef",
    "DialogState",
    "DialogTable",
    "Fields",
    "Leg",
    "ProfileLink",
    "Profiles",
    "SYNC_ANSWER_MODES",
    "dialog_entry",
    "hash_table_size",
    "parse_body",
    "parse_fields",
    "parse_profiles",
    "profiles_json",
    "remove_body",
    "state_body",
    "sync_body",
    "update_body",
]
