"""
Dialogs as Kamailio's dialog module keeps them: the record, its state
machine, the hash table that files a dialog under ``h_entry`` (the hash of
its Call-ID) and ``h_id`` (a counter per entry), and the dialog profiles.

Plain Python with no I/O and no clock: times are passed in (epoch seconds).

::

    table = DialogTable(hash_size=4096, rng=random.Random(7))
    dialog = table.new(callid, from_uri, to_uri, req_uri)     # filed, with a fresh h_id
    dialog.legs[CALLER].set("atag", "", "sip:alice@10.0.0.1", "1")
    table.get(dialog.h_entry, dialog.h_id) is dialog
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass, field, replace
from typing import Iterable, Iterator, Optional

from dmq.errors import ConfigurationError
from dmq.hashing import core_hash

__all__ = [
    "CALLER",
    "CALLEE",
    "DEFAULT_HASH_SIZE",
    "DEFAULT_LIFETIME",
    "DialogState",
    "Leg",
    "ProfileLink",
    "Dialog",
    "DialogKey",
    "DialogTable",
    "Profiles",
    "hash_table_size",
]

CALLER = 0
"""The caller's leg (Kamailio's ``DLG_CALLER_LEG``: ``tag1``, ``cseq1``, ...)."""
CALLEE = 1
"""The callee's leg (``tag2``, ``cseq2``, ...)."""

DEFAULT_HASH_SIZE = 4096
"""Kamailio's ``hash_size`` modparam default."""

DEFAULT_LIFETIME = 43200
"""Kamailio's ``default_timeout`` modparam default: seconds a confirmed dialog lives."""

DialogKey = tuple[int, int]
"""``(h_entry, h_id)``: what names a dialog across the cluster."""


class DialogState(enum.IntEnum):
    """Kamailio's dialog states (``DLG_STATE_*``)."""

    UNCONFIRMED = 1
    EARLY = 2
    CONFIRMED_NA = 3
    """Confirmed by a 2xx, no ACK yet."""
    CONFIRMED = 4
    DELETED = 5

    @property
    def label(self) -> str:
        """The state's name in lower case (``confirmed_na``)."""
        return self.name.lower()


def hash_table_size(size: int) -> int:
    """
    ``size`` as Kamailio's dialog module takes its ``hash_size``: below 1
    becomes 1, and a size that is not a power of two is rounded down to one.

    :raises ConfigurationError: for a size that is not an integer.
    """
    if isinstance(size, bool) or not isinstance(size, int):
        raise ConfigurationError(f"hash_size must be an integer, not {size!r}")
    if size < 1:
        return 1
    return 1 << (size.bit_length() - 1)


@dataclass
class Leg:
    """
    One side of a dialog; a field is ``None`` until the leg is first set
    (Kamailio lists it as ``null`` then).
    """

    tag: Optional[str] = None
    cseq: Optional[str] = None
    route_set: Optional[str] = None
    contact: Optional[str] = None

    def set(self, tag: str, route_set: str, contact: str, cseq: str) -> None:
        """
        Set the leg as Kamailio's ``dlg_set_leg_info`` does: a missing CSeq
        becomes ``"0"``, an empty route set keeps the one known.
        """
        self.tag = tag
        self.cseq = cseq or "0"
        if route_set or self.route_set is None:
            self.route_set = route_set
        self.contact = contact


@dataclass(frozen=True)
class ProfileLink:
    """
    A dialog's membership of a profile: the profile's name, the value (for
    a profile with values), and Kamailio's unique id and extras.
    """

    name: str
    value: Optional[str] = None
    puid: str = ""
    expires: int = 0
    flags: int = 0


@dataclass
class Dialog:
    """
    One dialog.

    :ivar h_entry: the hash-table entry: ``core_hash(callid)`` modulo the table size.
    :ivar h_id: the id within the entry, given by the node that made the dialog.
    :ivar state: a :class:`DialogState`.
    :ivar init_ts: when it was made (epoch seconds).
    :ivar start_ts: when it was confirmed (0 before).
    :ivar end_ts: when it ended (0 before).
    :ivar lifetime: seconds it lives once confirmed.
    :ivar legs: the caller's and the callee's :class:`Leg`.
    :ivar vars: the dialog variables, in the order they were first set.
    :ivar profiles: the profile links, in Kamailio's list order.
    :ivar sflags: script flags (kept, not replicated: Kamailio does not send them).
    :ivar local: made by this node (its owner replicates its changes).
    :ivar expires: when a confirmed dialog ends by itself (epoch seconds, 0: not running).
    :ivar seen: when this node first had it (the clock's time).
    """

    h_entry: int
    h_id: int
    callid: str
    from_uri: str
    to_uri: str
    req_uri: str
    state: DialogState = DialogState.UNCONFIRMED
    init_ts: int = 0
    start_ts: int = 0
    end_ts: int = 0
    lifetime: int = 0
    legs: tuple[Leg, Leg] = field(default_factory=lambda: (Leg(), Leg()))
    vars: dict[str, str] = field(default_factory=dict)
    profiles: list[ProfileLink] = field(default_factory=list)
    sflags: int = 0
    local: bool = False
    expires: float = 0.0
    seen: float = 0.0

    @property
    def key(self) -> DialogKey:
        """``(h_entry, h_id)``."""
        return (self.h_entry, self.h_id)

    @property
    def caller(self) -> Leg:
        """The caller's leg."""
        return self.legs[CALLER]

    @property
    def callee(self) -> Leg:
        """The callee's leg."""
        return self.legs[CALLEE]

    def copy(self) -> "Dialog":
        """A copy that shares nothing mutable with this dialog."""
        return replace(
            self,
            legs=(replace(self.legs[0]), replace(self.legs[1])),
            vars=dict(self.vars),
            profiles=list(self.profiles),
        )

    def set_var(self, key: str, value: str) -> None:
        """Set a variable: a known one keeps its place, a new one is added last."""
        self.vars[key] = value

    def vars_listed(self) -> list[tuple[str, str]]:
        """The variables in Kamailio's list order (newest first), as it lists and sends them."""
        return list(reversed(self.vars.items()))


class Profiles:
    """
    The dialog profiles a node knows (Kamailio's ``profiles_with_value`` and
    ``profiles_no_value``): a link to a profile not defined here, or with a
    value it should not have, is left out, as Kamailio leaves it out.

    :param with_value: profile names, each item may hold several separated by ``;``.
    :param no_value: likewise.
    :raises ConfigurationError: for a name given twice or not a name.
    """

    def __init__(self, with_value: Iterable[str] = (), no_value: Iterable[str] = ()) -> None:
        self.has_value: dict[str, bool] = {}
        for names, valued in ((with_value, True), (no_value, False)):
            for item in names:
                for name in item.split(";"):
                    name = name.strip()
                    if not name:
                        continue
                    if name in self.has_value:
                        raise ConfigurationError(f"dialog profile {name!r} is defined twice")
                    if any(c.isspace() for c in name):
                        raise ConfigurationError(f"dialog profile {name!r}: a name has no spaces")
                    self.has_value[name] = valued

    def __contains__(self, name: object) -> bool:
        return name in self.has_value

    def accepts(self, link: ProfileLink) -> bool:
        """Whether ``link`` names a known profile, with a value exactly when the profile has values."""
        valued = self.has_value.get(link.name)
        return valued is not None and valued == (link.value is not None)

    def size(self, dialogs: Iterable[Dialog], name: str, value: Optional[str] = None) -> int:
        """
        How many links ``name`` has (those with ``value`` only, when given and
        the profile has values), as Kamailio's ``get_profile_size`` counts:
        a dialog that ended holds none.

        :raises KeyError: when the profile is not defined.
        """
        valued = self.has_value[name]
        match_value = valued and value is not None
        count = 0
        for dialog in dialogs:
            if dialog.state >= DialogState.DELETED:
                continue
            for link in dialog.profiles:
                if link.name == name and (not match_value or link.value == value):
                    count += 1
        return count


class DialogTable:
    """
    The dialogs of a node, filed as Kamailio files them.

    A new dialog gets ``h_entry = core_hash(callid, size)`` and the entry's
    next ``h_id``: each entry counts from a random start below three times
    the table size (``h_id_start``, ``h_id_step``: Kamailio's modparams of
    those names, to keep the ids of several nodes apart).  A dialog received
    from another node keeps its ids, and uses up one of the entry's own, as
    in Kamailio.  An id in use in the entry is passed over.

    :param hash_size: the table size (see :func:`hash_table_size`).
    :param h_id_start: the first id of an entry (with ``h_id_step`` above 1).
    :param h_id_step: the distance between two ids of an entry.
    :param rng: the random source of the entries' start ids.
    """

    def __init__(
        self,
        hash_size: int = DEFAULT_HASH_SIZE,
        h_id_start: int = 0,
        h_id_step: int = 1,
        rng: Optional[random.Random] = None,
    ) -> None:
        self.size = hash_table_size(hash_size)
        self.h_id_start = max(h_id_start, 0)
        self.h_id_step = max(h_id_step, 1)
        self._rng = rng or random.Random()
        self._next_id: dict[int, int] = {}
        self._dialogs: dict[DialogKey, Dialog] = {}
        self._order: dict[DialogKey, int] = {}
        self._by_callid: dict[str, list[DialogKey]] = {}
        self._linked = 0

    def __len__(self) -> int:
        return len(self._dialogs)

    def __iter__(self) -> Iterator[Dialog]:
        """The dialogs in Kamailio's listing order: by entry, then in the order they were filed."""
        keys = sorted(self._dialogs, key=lambda k: (k[0], self._order[k]))
        return iter([self._dialogs[k] for k in keys])

    def entry_of(self, callid: str) -> int:
        """The ``h_entry`` of ``callid`` in this table."""
        return core_hash(callid, size=self.size)

    def get(self, h_entry: int, h_id: int) -> Optional[Dialog]:
        """The dialog ``h_entry:h_id``; ``None`` for id 0 or an entry outside the table, as in Kamailio."""
        if h_id == 0 or not 0 <= h_entry < self.size:
            return None
        return self._dialogs.get((h_entry, h_id))

    def by_callid(self, callid: str) -> list[Dialog]:
        """The dialogs with ``callid``, oldest first."""
        return [self._dialogs[k] for k in self._by_callid.get(callid, ())]

    def _take_id(self, h_entry: int) -> int:
        """The entry's next id, as Kamailio's ``link_dlg`` counts (0 is never given)."""
        step = self.h_id_step
        counter = self._next_id.get(h_entry)
        if counter is None:
            spread = self._rng.randrange(3 * self.size)
            counter = self.h_id_start + step * (spread + 1) if step > 1 else spread
        if step > 1:
            if counter == 0 or counter + step > 0xFFFFFFFF:
                counter = self.h_id_start + step
            h_id, counter = counter, counter + step
        else:
            h_id, counter = (counter + 1) & 0xFFFFFFFF or 1, counter + 1
        self._next_id[h_entry] = counter & 0xFFFFFFFF
        return h_id

    def new(self, callid: str, from_uri: str, to_uri: str, req_uri: str) -> Dialog:
        """File a new dialog made here: its entry from ``callid``, the entry's next free id."""
        h_entry = self.entry_of(callid)
        h_id = self._take_id(h_entry)
        while (h_entry, h_id) in self._dialogs:
            h_id = self._take_id(h_entry)
        dialog = Dialog(h_entry, h_id, callid, from_uri, to_uri, req_uri, local=True)
        self._link(dialog)
        return dialog

    def receive(self, h_entry: int, h_id: int, callid: str, from_uri: str, to_uri: str, req_uri: str) -> Dialog:
        """
        File a dialog another node made, under its ids (one of the entry's own
        ids is used up, as Kamailio's ``link_dlg`` does).

        :raises ValueError: when ``h_entry`` is not the hash of ``callid`` here
            (the nodes' hash sizes differ), or the ids are taken.
        """
        expected = self.entry_of(callid)
        if h_entry != expected:
            raise ValueError(
                f"h_entry {h_entry} is not the hash of the callid ({expected} with hash_size {self.size}): "
                "the nodes' hash sizes differ"
            )
        if h_id == 0 or (h_entry, h_id) in self._dialogs:
            raise ValueError(f"dialog id {h_entry}:{h_id} cannot be filed")
        self._take_id(h_entry)
        dialog = Dialog(h_entry, h_id, callid, from_uri, to_uri, req_uri)
        self._link(dialog)
        return dialog

    def _link(self, dialog: Dialog) -> None:
        self._linked += 1
        self._dialogs[dialog.key] = dialog
        self._order[dialog.key] = self._linked
        self._by_callid.setdefault(dialog.callid, []).append(dialog.key)

    def remove(self, dialog: Dialog) -> bool:
        """Take ``dialog`` out of the table; whether it was there."""
        key = dialog.key
        if self._dialogs.get(key) is not dialog:
            return False
        del self._dialogs[key]
        del self._order[key]
        keys = self._by_callid[dialog.callid]
        keys.remove(key)
        if not keys:
            del self._by_callid[dialog.callid]
        return True

    def count_by_state(self) -> dict[DialogState, int]:
        """How many dialogs are in each state (every state listed)."""
        counts = dict.fromkeys(DialogState, 0)
        for dialog in self._dialogs.values():
            counts[dialog.state] += 1
        return counts
