"""``twistd dmq --dialog`` and its TOML keys build the dialog peer; the control API, dmqctl and the metrics reach it."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.task import Clock
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from dmq.control import ControlAPI
from dmq.ctl import _call_of, build_parser, format_dialogs
from dmq.metrics import make_registry
from dmq.peers.dialog import DialogPeer, DialogState
from dmq.tap import Options, build_node
from dmq.testing import cluster_of


def node_with(*args: str) -> Any:
    """The service tree of a ``twistd dmq`` command line (nothing listens)."""
    options = Options()
    options.parseOptions(["--server-address", "sip:127.0.0.1:5999", "--control", "none", *args])
    assert options.config is not None
    return build_node(options.config, reactor=Clock(), probe=False)


class TapTests(SynchronousTestCase):
    """The options wire the peer as DialogPeer(hash_size, profiles_with_value, profiles_no_value)."""

    def test_dialog_flag_builds_the_peer(self) -> None:
        """--dialog (no value) registers a DialogPeer on channel dialog with the defaults; without it there is none."""
        peer = node_with("--dialog").dmq.get_peer("dialog")
        self.assertIsInstance(peer, DialogPeer)
        self.assertEqual((peer.table.size, peer.profile_defs.has_value), (4096, {}))
        self.assertIsNone(node_with().dmq.get_peer("dialog"))

    def test_hash_size_and_profiles(self) -> None:
        """--dialog-hash-size and the repeatable profile options reach the peer; profiles split on ';' as Kamailio's."""
        peer = node_with("--dialog", "--dialog-hash-size", "1024", "--dialog-profiles-with-value", "caller;callee",
                         "--dialog-profiles-with-value", "trunk", "--dialog-profiles-no-value", "calls").dmq.get_peer("dialog")
        self.assertEqual(peer.table.size, 1024)
        self.assertEqual(peer.profile_defs.has_value, {"caller": True, "callee": True, "trunk": True, "calls": False})

    def test_toml_keys(self) -> None:
        """The TOML keys dialog, dialog_hash_size and the profile lists do the same."""
        folder = Path(tempfile.mkdtemp(prefix="dmq-dialog-"))
        self.addCleanup(shutil.rmtree, folder, True)
        (folder / "node.toml").write_text(
            'server_address = "sip:127.0.0.1:5999"\ncontrol = "none"\ndialog = true\ndialog_hash_size = 2048\n'
            'dialog_profiles_with_value = ["caller"]\ndialog_profiles_no_value = "calls"\n'
        )
        options = Options()
        options.parseOptions(["--config", str(folder / "node.toml")])
        assert options.config is not None
        peer = build_node(options.config, reactor=Clock(), probe=False).dmq.get_peer("dialog")
        self.assertEqual((peer.table.size, peer.profile_defs.has_value), (2048, {"caller": True, "calls": False}))

    def test_bad_settings_are_refused_with_the_option(self) -> None:
        """A hash size that is not a power of 2, a profile name with a space, a profile given twice: a UsageError naming the option."""
        for args, text in ((["--dialog-hash-size", "1000"], "--dialog-hash-size: 1000 is not a power of 2"),
                           (["--dialog-profiles-no-value", "a b"], "--dialog-profiles-no-value 'a b'"),
                           (["--dialog-hash-size", "0"], "must be at least 1")):
            with self.assertRaises(usage.UsageError) as caught:
                Options().parseOptions(["--dialog", *args])
            self.assertIn(text, str(caught.exception))
        with self.assertRaises(usage.UsageError) as caught:
            node_with("--dialog", "--dialog-profiles-no-value", "a", "--dialog-profiles-with-value", "a")
        self.assertIn("--dialog", str(caught.exception))

    def test_control_api_reaches_the_peer(self) -> None:
        """system.listMethods names dlg.list and dlg.profile_get_size; they answer from the peer."""
        node = node_with("--dialog", "--dialog-profiles-no-value", "calls")
        api = ControlAPI(node.dmq)
        names = self.successResultOf(api.call("system.listMethods"))
        self.assertIn("dlg.list", names)
        self.assertIn("dlg.profile_get_size", names)
        self.assertEqual(self.successResultOf(api.call("dlg.list")), [])
        self.assertEqual(self.successResultOf(api.call("dlg.profile_get_size", ["calls"])), 0)


class CtlTests(SynchronousTestCase):
    """dmqctl dlg list and dlg profile."""

    def test_commands_map_to_kamailios_methods(self) -> None:
        """dlg list -> dlg.list; dlg profile P [V] -> dlg.profile_get_size P [V]."""
        parser = build_parser()
        self.assertEqual(_call_of(parser.parse_args(["dlg", "list"])), ("dlg.list", []))
        self.assertEqual(_call_of(parser.parse_args(["dlg", "profile", "calls"])), ("dlg.profile_get_size", ["calls"]))
        self.assertEqual(_call_of(parser.parse_args(["dlg", "profile", "caller", "alice"])),
                         ("dlg.profile_get_size", ["caller", "alice"]))

    def test_dialog_table(self) -> None:
        """dlg list prints one row per dialog: id, state, Call-ID, from, to, duration; and says when there is none."""
        text = format_dialogs([{"h_entry": 1108, "h_id": 3367, "state": 4, "call-id": "dlg1@h", "from_uri": "sip:a@h",
                                "to_uri": "sip:b@h", "duration": 12}])
        header, row = text.splitlines()
        self.assertEqual(header.split(), ["ID", "STATE", "CALL-ID", "FROM", "TO", "DURATION"])
        self.assertEqual(row.split(), ["1108:3367", "4", "dlg1@h", "sip:a@h", "sip:b@h", "12"])
        self.assertEqual(format_dialogs([]), "no dialog\n")


class MetricsTests(SynchronousTestCase):
    """The dialog metrics, read at each scrape."""

    def test_dialogs_by_state_and_actions(self) -> None:
        """dmq_dialogs counts dialogs per state; the applied and sent counters count messages by action."""
        cluster = cluster_of(5060, 5061)
        a, b = DialogPeer(), DialogPeer()
        cluster.nodes[5060].register_peer(a)
        cluster.nodes[5061].register_peer(b)
        cluster.run(2)
        made = a.create("m1@h", "sip:a@h", "sip:b@h", "sip:b@h", "t")
        a.set_state(made, DialogState.CONFIRMED)
        a.create("m2@h", "sip:a@h", "sip:b@h", "sip:b@h", "t")
        cluster.run(0.5)
        found = {}
        for family in text_string_to_metric_families(generate_latest(make_registry(cluster.nodes[5061], process=False)).decode()):
            for sample in family.samples:
                found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        self.assertEqual(found[("dmq_dialogs", (("channel", "dialog"), ("state", "confirmed")))], 1)
        self.assertEqual(found[("dmq_dialogs", (("channel", "dialog"), ("state", "unconfirmed")))], 1)
        self.assertEqual(found[("dmq_dialog_actions_applied_total", (("action", "update"), ("channel", "dialog")))], 2)
        self.assertEqual(found[("dmq_dialog_actions_applied_total", (("action", "state"), ("channel", "dialog")))], 1)
        sender = {}
        for family in text_string_to_metric_families(generate_latest(make_registry(cluster.nodes[5060], process=False)).decode()):
            for sample in family.samples:
                sender[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        self.assertEqual(sender[("dmq_dialog_actions_sent_total", (("action", "update"), ("channel", "dialog")))], 2)

    def test_no_dialog_peer_no_dialog_metrics(self) -> None:
        """A node without a dialog peer has no dmq_dialog* metric."""
        cluster = cluster_of(5060)
        text = generate_latest(make_registry(cluster.nodes[5060], process=False)).decode()
        self.assertIn("dmq_nodes", text)
        self.assertNotIn("dmq_dialog", text)
