"""The dialog peer's table and wire: h_entry and h_id as Kamailio files dialogs, profiles, Kamailio's bodies both ways (its captures byte for byte), and its answers to every action."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from dmq import DMQService
from dmq.errors import ConfigurationError
from dmq.hashing import core_hash
from dmq.interfaces import IPeer
from dmq.peer import PeerResponse
from dmq.peers.dialog import (
    DialogChange,
    DialogPeer,
    DialogState,
    DialogTable,
    ProfileLink,
    Profiles,
    hash_table_size,
    parse_body,
    parse_fields,
    parse_profiles,
    state_body,
    update_body,
)
from dmq.sip.message import parse_message
from dmq.testing import FakeSIPTransport

DATA = Path(__file__).parent / "data"
EPOCH = 1_796_192_000.0


def capture_body(name: str) -> bytes:
    """The body of a Kamailio capture: the shared set's (``captures/``) or the dialog set's (``dialog/``)."""
    folder = "dialog" if name.startswith("req-KDMQ-dialog-update-confirmed") else "captures"
    message = parse_message((DATA / folder / name).read_bytes())
    return message.body


def lone(**peer_kw: Any) -> tuple[DMQService, DialogPeer]:
    """A started node alone on a fake transport, its clock at epoch time, with a DialogPeer."""
    clock = Clock()
    clock.advance(EPOCH)
    svc = DMQService("sip:127.0.0.1:5172", reactor=clock, transport=FakeSIPTransport(clock, ("udp",)))
    peer_kw.setdefault("profiles_with_value", ["caller", "callee"])
    peer_kw.setdefault("profiles_no_value", ["calls"])
    peer = DialogPeer(rng=random.Random(1), **peer_kw)
    svc.register_peer(peer)
    svc.startService()
    return svc, peer


def process(peer: DialogPeer, body: Any) -> PeerResponse:
    """Run ``body`` (bytes, or an object to encode) through the peer's node; return the answer."""
    if not isinstance(body, bytes):
        body = json.dumps(body).encode()
    result: list[PeerResponse] = []
    peer.service.process_message("dialog", body, "application/json").addCallback(result.append)
    assert result, "no answer at once"
    return result[0]


def new_call(callid: str, h_id: int = 77, state: int = 1, size: int = 4096, **extra: Any) -> dict[str, Any]:
    """An update for a new dialog, as a Kamailio node sends it."""
    return {"action": 1, "h_entry": core_hash(callid, size=size), "h_id": h_id, "init_ts": int(EPOCH), "callid": callid,
            "from_uri": "sip:a@h", "to_uri": "sip:b@h", "req_uri": "sip:b@10.0.0.2", "tag1": "t1", "cseq1": "5",
            "route_set1": "", "contact1": "sip:a@10.0.0.1", "state": state, **extra}


class TableTests(SynchronousTestCase):
    """Filing dialogs as Kamailio's dialog module files them."""

    def test_h_entry_is_core_hash_of_the_callid(self) -> None:
        """A new dialog's h_entry is core_hash(callid) modulo the table size: 1108 for the captured call's dlg1@127.0.0.1."""
        table = DialogTable(rng=random.Random(3))
        dialog = table.new("dlg1@127.0.0.1", "sip:a@h", "sip:b@h", "sip:b@h")
        self.assertEqual(dialog.h_entry, 1108)
        self.assertEqual(json.loads(capture_body("req-KDMQ-dialog-action1.sip"))["h_entry"], 1108)
        small = DialogTable(hash_size=16, rng=random.Random(3))
        self.assertEqual(small.new("x@h", "", "", "").h_entry, core_hash("x@h", size=16))

    def test_hash_size_is_rounded_down_to_a_power_of_two(self) -> None:
        """hash_size as Kamailio takes it: 1000 -> 512, 4096 stays, 0 -> 1; a non-integer is refused."""
        self.assertEqual([hash_table_size(n) for n in (1000, 4096, 4097, 1, 0, -5)], [512, 4096, 4096, 1, 1, 1])
        self.assertEqual(DialogTable(hash_size=1000).size, 512)
        with self.assertRaises(ConfigurationError):
            hash_table_size("4096")  # type: ignore[arg-type]

    def test_h_id_counts_per_entry_from_a_random_start(self) -> None:
        """Each entry's first id is 1 + a random number below 3 * size; the next ones follow by one, per entry."""
        rng = random.Random(11)
        expected_start = random.Random(11).randrange(3 * 4096)
        table = DialogTable(rng=rng)
        ids = [table.new("same@h", "", "", "").h_id for _ in range(3)]
        self.assertEqual(ids, [expected_start + 1, expected_start + 2, expected_start + 3])
        other = table.new("other@h", "", "", "")
        self.assertNotEqual(other.h_entry, ids[0])
        self.assertTrue(1 <= other.h_id <= 3 * 4096)

    def test_h_id_start_and_step(self) -> None:
        """With h_id_step 3 and h_id_start 2 an entry's ids are 2 + 3k: apart from another node's with another start."""
        table = DialogTable(h_id_start=2, h_id_step=3, rng=random.Random(5))
        ids = [table.new("c@h", "", "", "").h_id for _ in range(3)]
        self.assertEqual({i % 3 for i in ids}, {2})
        self.assertEqual([b - a for a, b in zip(ids, ids[1:])], [3, 3])

    def test_a_received_dialog_keeps_its_ids_and_uses_one_of_the_entry(self) -> None:
        """A dialog from another node keeps its h_id; the entry's counter moves on as in Kamailio; an id in use is passed over."""
        twin = DialogTable(rng=random.Random(9))
        table = DialogTable(rng=random.Random(9))
        entry = table.entry_of("c@h")
        first = twin.new("c@h", "", "", "").h_id
        received = table.receive(entry, first + 1, "c@h", "", "", "")
        self.assertEqual(received.key, (entry, first + 1))
        # The counter used first; the next is first + 1, taken by the received dialog: passed over.
        self.assertEqual(table.new("c@h", "", "", "").h_id, first + 2)
        with self.assertRaises(ValueError):
            table.receive(entry + 1, 5, "c@h", "", "", "")

    def test_lookup_and_listing_order(self) -> None:
        """get() finds by h_entry:h_id (never id 0 or an entry outside the table); iteration is by entry, then filing order."""
        table = DialogTable(hash_size=8, rng=random.Random(2))
        made = [table.new(f"call-{i}", "", "", "") for i in range(12)]
        listed = list(table)
        self.assertEqual(sorted(listed, key=lambda d: d.h_entry), listed)
        self.assertIs(table.get(*made[4].key), made[4])
        self.assertIsNone(table.get(made[4].h_entry, 0))
        self.assertIsNone(table.get(99, made[4].h_id))
        self.assertEqual(table.by_callid("call-3"), [made[3]])
        self.assertTrue(table.remove(made[3]))
        self.assertFalse(table.remove(made[3]))
        self.assertEqual(table.by_callid("call-3"), [])

    def test_profiles(self) -> None:
        """Profiles split on ';', a name twice is refused, a link needs a value exactly when its profile has values."""
        profiles = Profiles(["caller;callee"], ["calls"])
        self.assertTrue(profiles.accepts(ProfileLink("caller", "alice")))
        self.assertFalse(profiles.accepts(ProfileLink("caller")))
        self.assertFalse(profiles.accepts(ProfileLink("calls", "x")))
        self.assertFalse(profiles.accepts(ProfileLink("nope")))
        with self.assertRaises(ConfigurationError):
            Profiles(["a"], ["a"])


class WireTests(SynchronousTestCase):
    """Kamailio's bodies read and written, with its captures."""

    def test_captures_are_byte_exact(self) -> None:
        """The dialog captures still have their recorded SHA-256."""
        folder = DATA / "dialog"
        for line in (folder / "SHA256SUMS").read_text().splitlines():
            digest, name = line.split()
            self.assertEqual(hashlib.sha256((folder / name).read_bytes()).hexdigest(), digest, name)

    def test_the_5_6_repeated_keys_read_as_kamailio_reads_them(self) -> None:
        """Kamailio 5.6.3's update of a confirmed call repeats the caller's leg; read, it equals 6.1.4's, the last copy counting."""
        old = capture_body("req-KDMQ-dialog-update-confirmed-5.6.3.sip")
        self.assertEqual(old.count(b'"tag1"'), 2)
        self.assertEqual(old.count(b'"contact1"'), 2)
        new = capture_body("req-KDMQ-dialog-update-confirmed-6.1.4.sip")
        self.assertEqual(new.count(b'"tag1"'), 1)
        a, b = parse_fields(parse_body(old)), parse_fields(parse_body(new))
        same = ("action", "state", "tag1", "tag2", "cseq1", "cseq2", "route_set1", "route_set2", "lifetime", "vars")
        self.assertEqual([getattr(a, k) for k in same], [getattr(b, k) for k in same])
        self.assertEqual((a.state, a.tag1, a.cseq1, a.vars), (4, "atag", "1", {"n": "2", "color": "blue"}))
        self.assertTrue(a.contact1 and a.contact2)
        # Kamailio's reader assigns each occurrence in turn: the last one stands, as json keeps it.
        doubled = b'{"action":1,"tag1":"first","tag1":"last","vars":{"k":"1"},"vars":{"k":"2"}}'
        fields = parse_fields(parse_body(doubled))
        self.assertEqual(fields.tag1, "last")
        self.assertEqual(fields.vars, {"k": "1"})  # vars is looked up: the first one

    def test_the_new_call_capture_re_encodes_with_61s_lifetime(self) -> None:
        """The captured update of a new call, applied and written again, is the same bytes plus 6.1's "lifetime"."""
        svc, peer = lone()
        body = capture_body("req-KDMQ-dialog-action1.sip")
        self.assertEqual(process(peer, body).code, 200)
        dialog = peer.get("dlg1@127.0.0.1")
        assert dialog is not None
        self.assertEqual((dialog.h_entry, dialog.h_id, dialog.state, dialog.init_ts), (1108, 3367, DialogState.UNCONFIRMED, 1795659719))
        self.assertEqual(update_body(dialog), body[:-1] + b',"lifetime":0}')
        self.assertEqual(process(peer, capture_body("req-KDMQ-dialog-action2.sip")).code, 200)
        early = peer.get_by_id(1108, 3367)
        assert early is not None
        self.assertEqual((early.state, early.lifetime, early.start_ts), (DialogState.EARLY, 43200, 0))
        self.assertEqual(state_body(early), capture_body("req-KDMQ-dialog-action2.sip"))

    def test_the_confirmed_capture_applies_and_re_encodes_as_a_kamailio_receiver_would(self) -> None:
        """The 6.1.4 update of a confirmed call makes a confirmed dialog with both legs, vars and profiles; written again, vars and profiles come in reverse (each linked first), as a Kamailio receiver sends them."""
        svc, peer = lone()
        body = capture_body("req-KDMQ-dialog-update-confirmed-6.1.4.sip")
        self.assertEqual(process(peer, body).code, 200)
        dialog = peer.get("dlg1@127.0.0.1")
        assert dialog is not None
        self.assertEqual(dialog.state, DialogState.CONFIRMED)
        self.assertEqual((dialog.callee.tag, dialog.callee.cseq, dialog.caller.contact), ("btag", "0", "sip:alice@127.188.64.105:51651"))
        self.assertEqual([(p.name, p.value) for p in dialog.profiles], [("caller", "alice"), ("calls", None)])
        self.assertEqual(dialog.expires, dialog.start_ts + 43200)
        doc = json.loads(body)
        doc["vars"] = dict(list(doc["vars"].items())[::-1])
        inner = json.loads(doc["profiles"])
        inner["profiles"].reverse()
        doc["profiles"] = json.dumps(inner, separators=(",", ":"))
        self.assertEqual(update_body(dialog), json.dumps(doc, separators=(",", ":")).encode())

    def test_the_5_6_confirmed_capture_gives_the_same_dialog(self) -> None:
        """The 5.6.3 update (repeated keys) makes the same dialog as 6.1.4's, up to the addresses of the call."""
        results = []
        for version in ("5.6.3", "6.1.4"):
            svc, peer = lone()
            self.assertEqual(process(peer, capture_body(f"req-KDMQ-dialog-update-confirmed-{version}.sip")).code, 200)
            dialog = peer.get("dlg1@127.0.0.1")
            assert dialog is not None
            results.append((dialog.state, dialog.caller.tag, dialog.caller.cseq, dialog.callee.tag, dialog.lifetime,
                            dialog.vars, [(p.name, p.value) for p in dialog.profiles]))
        self.assertEqual(results[0], results[1])

    def test_profiles_json_and_kamailios_leniency(self) -> None:
        """The profiles string: unknown profiles and items of the wrong shape are left out; text that is not JSON gives none."""
        text = json.dumps({"profiles": [{"name": "calls", "puid": "p1"}, {"name": "caller", "value": "alice", "expires": 5},
                                        {"value": "x"}, {"name": 7}, "junk"]})
        self.assertEqual(parse_profiles(text), [ProfileLink("calls", None, "p1"), ProfileLink("caller", "alice", "", 5)])
        self.assertEqual(parse_profiles("{nope"), [])
        self.assertEqual(parse_profiles('{"profiles":5}'), [])


class InboundTests(SynchronousTestCase):
    """Every action and Kamailio's answers, compared with Kamailio 5.6.3 and 6.1.4 (tests/interop/test_dialog_interop.py)."""

    def test_interface(self) -> None:
        """The peer provides IPeer."""
        verifyObject(IPeer, DialogPeer())

    def test_wrong_h_entry_gets_500_and_files_nothing(self) -> None:
        """An update filed under an entry that is not its Call-ID's hash (another hash_size) gets 500; nothing is kept."""
        svc, peer = lone()
        answer = process(peer, new_call("x1@h", h_entry=7))
        self.assertEqual(answer.code, 500)
        self.assertIn("hash", answer.reason or "")
        self.assertEqual(process(peer, new_call("x1@h", h_entry=5000)).code, 500)
        self.assertEqual(peer.dialogs(), [])
        self.assertEqual(peer.refused, {500: 2})

    def test_state_or_remove_of_an_unknown_dialog_gets_500(self) -> None:
        """A state or a remove for a dialog this node does not have gets 500, as does h_id 0."""
        svc, peer = lone()
        self.assertEqual(process(peer, {"action": 2, "h_entry": 5, "h_id": 77, "state": 4}).code, 500)
        self.assertEqual(process(peer, {"action": 3, "h_entry": 5, "h_id": 77, "state": 5}).code, 500)
        process(peer, new_call("c@h"))
        self.assertEqual(process(peer, {"action": 2, "h_entry": core_hash("c@h", size=4096), "h_id": 0, "state": 4}).code, 500)

    def test_bad_bodies_get_400(self) -> None:
        """Not JSON, empty, a number of the wrong type or range, a string field that is not one, vars not of strings: 400 with the reason."""
        svc, peer = lone()
        for body in (b'{"action":2,', b"", b"\xff\xfe", b"[1,2]"):
            self.assertEqual(process(peer, body).code, 400, body)
        cases = [{"action": "2"}, {"action": 1.5}, {"h_id": -1}, {"h_entry": 2**32}, {"callid": 5},
                 {"vars": {"a": 1}}, {"vars": "x"}, {"action": 9}]
        for doc in cases:
            answer = process(peer, doc)
            self.assertEqual(answer.code, 400, doc)
            self.assertTrue((answer.reason or "").startswith("Bad Request ("), answer.reason)
        self.assertEqual(process(peer, {"action": 1, "h_entry": 0, "h_id": 4, "state": 1}).code, 400)  # no callid
        self.assertEqual(process(peer, new_call("nul@h", tag1="a\x00b")).code, 200)
        self.assertEqual(peer.get("nul@h").caller.tag, "a")  # type: ignore[union-attr]  # cut, as strlen cuts it

    def test_none_and_unknown_keys_are_fine(self) -> None:
        """Action 0 and a body with keys Kamailio does not know (a later release's) get 200."""
        svc, peer = lone()
        self.assertEqual(process(peer, {"action": 0}).code, 200)
        self.assertEqual(process(peer, b"{}").code, 200)
        self.assertEqual(process(peer, new_call("k@h", iflags=3, last_modified=12, extra={"x": [1]})).code, 200)
        self.assertIsNotNone(peer.get("k@h"))

    def test_state_machine_from_kamailio(self) -> None:
        """States 1, 2, 4, 5 and a remove, as a call through Kamailio sends them; listeners see each one; a backward state is ignored."""
        svc, peer = lone()
        seen: list[DialogChange] = []
        peer.add_change_listener(seen.append)
        entry = core_hash("c@h", size=4096)
        self.assertEqual(process(peer, new_call("c@h", profiles=json.dumps({"profiles": [{"name": "calls"}]}))).code, 200)
        self.assertEqual(peer.profile_size("calls"), 1)
        self.assertEqual(process(peer, {"action": 2, "h_entry": entry, "h_id": 77, "state": 2, "start_ts": 0,
                                        "lifetime": 120, "tag1": "t1", "cseq1": "5", "route_set1": "", "contact1": "c"}).code, 200)
        confirmed = {"action": 2, "h_entry": entry, "h_id": 77, "state": 4, "start_ts": int(EPOCH), "lifetime": 120,
                     "tag1": "t1", "cseq1": "5", "route_set1": "", "contact1": "c", "tag2": "t2", "cseq2": "0",
                     "route_set2": "<sip:p;lr>", "contact2": "sip:b@10.0.0.2"}
        self.assertEqual(process(peer, confirmed).code, 200)
        self.assertEqual(process(peer, {"action": 2, "h_entry": entry, "h_id": 77, "state": 2}).code, 200)
        self.assertEqual(peer.stale, 1)
        dialog = peer.get("c@h")
        assert dialog is not None
        self.assertEqual((dialog.state, dialog.callee.route_set, dialog.expires), (4, "<sip:p;lr>", EPOCH + 120))
        self.assertEqual(process(peer, {"action": 2, "h_entry": entry, "h_id": 77, "state": 5}).code, 200)
        ended = peer.get("c@h")
        assert ended is not None
        self.assertEqual((ended.state, ended.end_ts, ended.profiles), (5, int(EPOCH), []))
        self.assertEqual(peer.profile_size("calls"), 0)
        self.assertEqual(process(peer, {"action": 3, "h_entry": entry, "h_id": 77, "state": 5}).code, 200)
        self.assertIsNone(peer.get("c@h"))
        self.assertEqual([(c.old_state, c.state, c.origin) for c in seen],
                         [(None, 1, None), (1, 2, None), (2, 4, None), (4, 5, None), (5, None, None)])
        self.assertEqual(peer.applied["update"], 1)
        self.assertEqual(peer.applied["state"], 4)
        self.assertEqual(peer.applied["remove"], 1)

    def test_state_3_is_not_taken(self) -> None:
        """States 1 and 3 get 500 unless backward (Kamailio handles 2, 4, 5): a new dialog updated in state 3 is kept in state 1; an early one ignores state 1."""
        svc, peer = lone()
        self.assertEqual(process(peer, new_call("s3@h", state=3, vars={"v1": "x"})).code, 500)
        kept = peer.get("s3@h")
        assert kept is not None
        self.assertEqual((kept.state, kept.vars), (DialogState.UNCONFIRMED, {"v1": "x"}))
        self.assertEqual(process(peer, {"action": 2, "h_entry": kept.h_entry, "h_id": kept.h_id, "state": 3}).code, 500)
        self.assertEqual(process(peer, {"action": 2, "h_entry": kept.h_entry, "h_id": kept.h_id, "state": 1}).code, 500)
        self.assertEqual(process(peer, {"action": 2, "h_entry": kept.h_entry, "h_id": kept.h_id, "state": 2}).code, 200)
        self.assertEqual(process(peer, {"action": 2, "h_entry": kept.h_entry, "h_id": kept.h_id, "state": 1}).code, 200)
        self.assertEqual(peer.get("s3@h").state, DialogState.EARLY)  # type: ignore[union-attr]

    def test_an_update_of_a_known_dialog_replaces_profiles_and_sets_vars(self) -> None:
        """An update of a known dialog sets its variables (a known one in place), replaces its profiles, and leaves its state when it is the same."""
        svc, peer = lone()
        process(peer, new_call("u@h", vars={"a": "1", "b": "2"}, profiles=json.dumps({"profiles": [{"name": "calls"}]})))
        process(peer, new_call("u@h", vars={"b": "3", "c": "4"},
                               profiles=json.dumps({"profiles": [{"name": "caller", "value": "x"}, {"name": "nope"}]})))
        dialog = peer.get("u@h")
        assert dialog is not None
        self.assertEqual(dialog.vars, {"a": "1", "b": "3", "c": "4"})
        self.assertEqual(dialog.vars_listed(), [("c", "4"), ("b", "3"), ("a", "1")])
        self.assertEqual([p.name for p in dialog.profiles], ["caller"])
        self.assertEqual((peer.profile_size("calls"), peer.profile_size("caller", "x")), (0, 1))
        process(peer, new_call("u@h"))
        self.assertEqual(peer.get("u@h").profiles, [])  # type: ignore[union-attr]

    def test_a_different_hash_size_agrees_with_itself(self) -> None:
        """With hash_size 1024 an update hashed for 1024 applies and one hashed for 4096 (another entry) gets 500."""
        svc, peer = lone(hash_size=1024)
        self.assertEqual(process(peer, new_call("hs@h", size=1024)).code, 200)
        callid = next(c for c in (f"hs{i}@h" for i in range(100)) if core_hash(c, size=4096) >= 1024)
        self.assertEqual(process(peer, new_call(callid, size=4096)).code, 500)
