"""The dialog peer on a fake network and a task.Clock: dialogs made here and their replication, sync on join and its answer, expiry, RPC, status."""

from __future__ import annotations

import json
import random
from typing import Any, Iterable, Optional

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from dmq import DMQService
from dmq.control import ControlAPI
from dmq.errors import ConfigurationError
from dmq.peers.dialog import DialogChange, DialogPeer, DialogState, dialog_entry
from dmq.sip.message import Request
from dmq.testing import FakeCluster, rpc

EPOCH = 1_796_192_000.0
PROFILES = {"profiles_with_value": ["caller"], "profiles_no_value": ["calls"]}


class Cluster(FakeCluster):
    """Python nodes on 127.0.0.1, each with a DialogPeer, on one fake network and one clock at epoch time."""

    def __init__(self) -> None:
        clock = Clock()
        clock.advance(EPOCH)
        super().__init__(clock)
        self.peers: dict[int, DialogPeer] = {}

    def add(self, port: int, seeds: Iterable[int] = (), **peer_kw: Any) -> DialogPeer:  # type: ignore[override]
        svc = super().add(port, seeds, start=False)
        for key, value in PROFILES.items():
            peer_kw.setdefault(key, value)
        peer = DialogPeer(rng=random.Random(port), **peer_kw)
        svc.register_peer(peer)
        self.peers[port] = peer
        svc.startService()
        return peer

    def run(self, seconds: float, step: float = 0.005) -> None:
        """Advance the clock in small steps so messages and timers interleave."""
        super().run(seconds, step)


def dialog_bodies(svc: DMQService, port: Optional[int] = None) -> list[dict[str, Any]]:
    """The JSON of every KDMQ on the dialog channel ``svc`` sent (to ``port`` only, when given), in order."""
    found = []
    for sent in svc.transport.sent:
        message = sent.message
        if isinstance(message, Request) and message.method == "KDMQ" and message.uri.user == "dialog":
            if port is None or sent.address.port == port:
                found.append(json.loads(message.body))
    return found


def three() -> Cluster:
    """Three joined nodes 5171, 5172, 5173."""
    cluster = Cluster()
    cluster.add(5171)
    cluster.add(5172, [5171])
    cluster.add(5173, [5171])
    cluster.run(1)
    return cluster


def call(peer: DialogPeer, callid: str = "call-1@10.0.0.1", **kw: Any) -> Any:
    """A dialog made on ``peer``."""
    return peer.create(callid, "sip:alice@example.com", "sip:bob@example.com", "sip:bob@10.0.0.2", "atag",
                       cseq1="1", contact1="sip:alice@10.0.0.1", **kw)


class ConfigurationTests(SynchronousTestCase):
    """What the peer refuses to be built with."""

    def test_refused_settings(self) -> None:
        """An unknown sync answer mode, a zero default_timeout or a profile defined twice is refused."""
        with self.assertRaises(ConfigurationError):
            DialogPeer(sync_answer="some")
        with self.assertRaises(ConfigurationError):
            DialogPeer(default_timeout=0)
        with self.assertRaises(ConfigurationError):
            DialogPeer(profiles_with_value=["a"], profiles_no_value=["a;b"])
        self.assertEqual(DialogPeer(hash_size=1000).table.size, 512)


class LocalDialogTests(SynchronousTestCase):
    """Dialogs made on a Python node, replicated with the actions Kamailio sends."""

    def test_a_call_made_here_is_replicated_as_kamailio_replicates_one(self) -> None:
        """create, states 2, 3, 4 and 5 send an update, states 2 and 4, nothing for 3, then state 5 and a remove; the other nodes follow."""
        cluster = three()
        a, b = cluster.peers[5171], cluster.peers[5172]
        events: list[DialogChange] = []
        b.add_change_listener(events.append)
        made = call(a, vars={"color": "blue"}, profiles=[("caller", "alice"), ("calls", None)])
        cluster.run(0.1)
        copy = b.get_by_id(*made.key)
        assert copy is not None
        self.assertEqual((copy.callid, copy.state, copy.lifetime, copy.vars), (made.callid, 1, 43200, {"color": "blue"}))
        # Each link is put first as it comes, as in Kamailio: the receiver lists them the other way round.
        self.assertEqual([(p.name, p.value) for p in copy.profiles], [("calls", None), ("caller", "alice")])
        self.assertEqual(b.profile_size("caller", "alice"), 1)
        a.set_state(made, DialogState.EARLY)
        cluster.run(0.1)
        a.set_state(made, DialogState.CONFIRMED_NA, tag2="btag", contact2="sip:bob@10.0.0.2")
        cluster.run(0.1)
        a.set_state(made, DialogState.CONFIRMED)
        cluster.run(0.1)
        confirmed = b.get_by_id(*made.key)
        assert confirmed is not None
        self.assertEqual((confirmed.state, confirmed.callee.tag, confirmed.start_ts), (4, "btag", int(EPOCH) + 1))
        a.set_state(made, DialogState.DELETED)
        cluster.run(0.1)
        self.assertIsNone(a.get(made.callid))
        self.assertIsNone(b.get(made.callid))
        self.assertIsNone(cluster.peers[5173].get(made.callid))
        sent = [d for d in dialog_bodies(cluster.nodes[5171], 5172) if d["action"] != 4]
        self.assertEqual([(d["action"], d.get("state")) for d in sent], [(1, 1), (2, 2), (2, 4), (2, 5), (3, 5)])
        self.assertEqual(list(sent[2])[:4], ["action", "h_entry", "h_id", "state"])
        self.assertEqual([(e.old_state, e.state) for e in events], [(None, 1), (1, 2), (2, 4), (4, 5), (5, None)])
        self.assertEqual(set(cluster.nodes[5172].channel_stats["dialog"].answered), {200})
        self.assertEqual(a.sent["update"], 2)
        self.assertEqual(a.sent["remove"], 2)

    def test_a_state_must_move_forward(self) -> None:
        """set_state refuses a state not after the current one, an unknown dialog, and another node's dialog."""
        cluster = three()
        a, b = cluster.peers[5171], cluster.peers[5172]
        made = call(a)
        cluster.run(0.1)
        a.set_state(made.key, DialogState.CONFIRMED)
        with self.assertRaises(ValueError):
            a.set_state(made.key, DialogState.EARLY)
        with self.assertRaises(KeyError):
            a.set_state((1, 2), DialogState.CONFIRMED)
        with self.assertRaises(ValueError):
            b.set_state(made.key, DialogState.DELETED)
        with self.assertRaises(ValueError):
            call(a, callid="bad\x00id")
        with self.assertRaises(ValueError):
            call(a, callid="p@h", profiles=[("calls", "x")])
        with self.assertRaises(ValueError):
            call(a, callid="q@h", profiles=[("nope", None)])

    def test_variables_and_profiles_changed_later_are_sent_as_updates(self) -> None:
        """set_var and add_profile replicate the dialog as an update; the other node's dlg.list shows them."""
        cluster = three()
        a, b = cluster.peers[5171], cluster.peers[5172]
        made = call(a)
        a.set_var(made, "n", "1")
        a.add_profile(made, "calls")
        a.set_var(made, "n", "2")
        cluster.run(0.2)
        copy = b.get_by_id(*made.key)
        assert copy is not None
        self.assertEqual(copy.vars, {"n": "2"})
        self.assertEqual(b.profile_size("calls"), 1)
        self.assertEqual([d["action"] for d in dialog_bodies(cluster.nodes[5171], 5172) if d["action"] != 4], [1, 1, 1, 1])

    def test_remove_forgets_a_dialog_everywhere(self) -> None:
        """remove sends action 3: every node forgets the dialog."""
        cluster = three()
        a, c = cluster.peers[5171], cluster.peers[5173]
        made = call(a)
        cluster.run(0.1)
        self.assertIsNotNone(c.get(made.callid))
        a.remove(made)
        cluster.run(0.1)
        self.assertEqual((a.dialogs(), c.dialogs()), ([], []))


class SyncTests(SynchronousTestCase):
    """Asking for every dialog on join, and answering as Kamailio does."""

    def test_a_joining_node_gets_every_dialog_by_broadcast(self) -> None:
        """A node that joins sends {"action":4}; the node asked sends each dialog as an update to every active node, as Kamailio does."""
        cluster = Cluster()
        a = cluster.add(5171)
        cluster.add(5172, [5171])
        cluster.run(1)
        made = [call(a, callid=f"c{i}@h") for i in range(3)]
        a.set_state(made[0], DialogState.CONFIRMED)
        cluster.run(0.2)
        asked = a.applied["sync"]
        late = cluster.add(5173, [5171])
        cluster.run(1)
        self.assertEqual(sorted(d.callid for d in late.dialogs()), ["c0@h", "c1@h", "c2@h"])
        self.assertEqual(late.get("c0@h").state, DialogState.CONFIRMED)  # type: ignore[union-attr]
        self.assertEqual(dialog_bodies(cluster.nodes[5173]), [{"action": 4}])
        # The answer went to 5172 too: three updates after the earlier four messages.
        to_b = dialog_bodies(cluster.nodes[5171], 5172)
        self.assertEqual([d["action"] for d in to_b[-3:]], [1, 1, 1])
        self.assertEqual(a.applied["sync"], asked + 1)

    def test_answering_the_requester_only(self) -> None:
        """With sync_answer="requester" the updates go to the asking node only."""
        cluster = Cluster()
        a = cluster.add(5171, sync_answer="requester")
        cluster.add(5172, [5171])
        cluster.run(1)
        call(a)
        cluster.run(0.2)
        before = len(dialog_bodies(cluster.nodes[5171], 5172))
        late = cluster.add(5173, [5171])
        cluster.run(1)
        self.assertEqual(len(late.dialogs()), 1)
        self.assertEqual(len(dialog_bodies(cluster.nodes[5171], 5172)), before)

    def test_request_sync_again(self) -> None:
        """request_sync(all_nodes=True) asks every active node."""
        cluster = three()
        cluster.peers[5173].request_sync(all_nodes=True)
        cluster.run(0.2)
        self.assertEqual(dialog_bodies(cluster.nodes[5173]).count({"action": 4}), 3)


class ExpiryTests(SynchronousTestCase):
    """Lifetimes and Kamailio's early_timeout and end_timeout."""

    def test_a_confirmed_dialog_made_here_ends_after_its_lifetime(self) -> None:
        """A confirmed dialog of lifetime 30 s is ended (state 5, then a remove) at the first sweep after 30 s, everywhere."""
        cluster = three()
        a, b = cluster.peers[5171], cluster.peers[5172]
        made = call(a, lifetime=30)
        a.set_state(made, DialogState.CONFIRMED)
        cluster.run(29)
        self.assertEqual(b.get(made.callid).state, DialogState.CONFIRMED)  # type: ignore[union-attr]
        cluster.run(7)
        self.assertIsNone(a.get(made.callid))
        self.assertIsNone(b.get(made.callid))
        self.assertEqual([d["action"] for d in dialog_bodies(cluster.nodes[5171], 5172)][-2:], [2, 3])

    def test_another_nodes_dialog_ends_here_and_is_dropped_later(self) -> None:
        """A dialog of a node that fell silent ends here after its lifetime and is dropped end_timeout later; an early one after early_timeout."""
        cluster = three()
        a, b = cluster.peers[5171], cluster.peers[5172]
        long_call = call(a, lifetime=30)
        a.set_state(long_call, DialogState.CONFIRMED)
        ringing = call(a, callid="ringing@h")
        a.set_state(ringing, DialogState.EARLY)
        cluster.run(0.2)
        cluster.kill(5171)
        cluster.run(40)
        ended = b.get(long_call.callid)
        assert ended is not None
        self.assertEqual(ended.state, DialogState.DELETED)
        self.assertEqual(b.get("ringing@h").state, DialogState.EARLY)  # type: ignore[union-attr]
        cluster.run(300)
        self.assertEqual(b.dialogs(), [])


class RPCTests(SynchronousTestCase):
    """dlg.list and dlg.profile_get_size through the control API, and status()."""

    def test_dlg_list_in_kamailios_shape(self) -> None:
        """dlg.list lists each dialog with Kamailio's keys in its order; the callee is null until set; an ended one lists no profiles."""
        cluster = three()
        a, b = cluster.peers[5171], cluster.peers[5172]
        made = call(a, vars={"x": "1", "y": "2"}, profiles=[("calls", None), ("caller", "alice")])
        cluster.run(0.1)
        answer = rpc(ControlAPI(cluster.nodes[5172]), "dlg.list")
        [entry] = answer["result"]
        self.assertEqual(list(entry), ["h_entry", "h_id", "ref", "call-id", "from_uri", "to_uri", "state", "start_ts",
                                       "init_ts", "end_ts", "duration", "timeout", "lifetime", "dflags", "sflags",
                                       "iflags", "caller", "callee", "profiles", "variables"])
        self.assertEqual((entry["h_entry"], entry["h_id"], entry["call-id"], entry["state"]), (*made.key, made.callid, 1))
        self.assertEqual(entry["caller"], {"tag": "atag", "contact": "sip:alice@10.0.0.1", "cseq": "1", "route_set": "",
                                           "socket": None})
        self.assertEqual(entry["callee"], dict.fromkeys(["tag", "contact", "cseq", "route_set", "socket"]))
        # Listed newest first as Kamailio lists them; the owner lists the other way round.
        self.assertEqual(entry["profiles"], [{"caller": "alice"}, "calls"])
        self.assertEqual(entry["variables"], [{"x": "1"}, {"y": "2"}])
        own = rpc(ControlAPI(cluster.nodes[5171]), "dlg.list")["result"][0]
        self.assertEqual((own["profiles"], own["variables"]), (["calls", {"caller": "alice"}], [{"y": "2"}, {"x": "1"}]))
        a.set_state(made, DialogState.CONFIRMED)
        cluster.run(10)
        confirmed = dialog_entry(b.get(made.callid), cluster.clock.seconds())  # type: ignore[arg-type]
        self.assertEqual((confirmed["duration"], confirmed["timeout"]), (10, confirmed["start_ts"] + 43200))
        self.assertEqual(rpc(ControlAPI(cluster.nodes[5173]), "dlg.list", "ignored")["result"][0]["state"], 4)

    def test_dlg_profile_get_size_with_kamailios_answers(self) -> None:
        """dlg.profile_get_size counts a profile (by value when given), takes numbers as text, and answers 404 Profile not found for an unknown one."""
        cluster = three()
        a = cluster.peers[5171]
        call(a, callid="1@h", profiles=[("caller", "alice"), ("calls", None)])
        call(a, callid="2@h", profiles=[("caller", "bob"), ("calls", None)])
        call(a, callid="3@h", profiles=[("caller", "5")])
        cluster.run(0.1)
        api = ControlAPI(cluster.nodes[5172])
        self.assertEqual(rpc(api, "dlg.profile_get_size", "caller")["result"], 3)
        self.assertEqual(rpc(api, "dlg.profile_get_size", "caller", "alice")["result"], 1)
        self.assertEqual(rpc(api, "dlg.profile_get_size", "caller", 5)["result"], 1)
        self.assertEqual(rpc(api, "dlg.profile_get_size", "calls", "whatever")["result"], 2)
        self.assertEqual(rpc(api, "dlg.profile_get_size", "nope")["error"], {"code": 404, "message": "Profile not found: nope"})
        self.assertEqual(rpc(api, "dlg.profile_get_size", 123)["error"]["message"], "Profile not found: 123")
        self.assertEqual(rpc(api, "dlg.profile_get_size")["error"]["code"], 500)

    def test_status_counts_by_state(self) -> None:
        """status() gives the number of dialogs and how many are in each state."""
        cluster = three()
        a = cluster.peers[5171]
        call(a, callid="1@h")
        a.set_state(call(a, callid="2@h"), DialogState.EARLY)
        a.set_state(call(a, callid="3@h"), DialogState.CONFIRMED)
        cluster.run(0.1)
        expected = {"dialogs": 3, "by_state": {"unconfirmed": 1, "early": 1, "confirmed_na": 0, "confirmed": 1, "deleted": 0}}
        self.assertEqual(a.status(), expected)
        self.assertEqual(cluster.peers[5173].status(), expected)
