"""``twistd dmq`` options build the bundled peers (``--htable ... --htable-persist DIR``, ``--usrloc --usrloc-persist DIR``), and the control API reaches them."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet.task import Clock
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from dmq.control import ControlAPI
from dmq.errors import RPCError
from dmq.peers import HTablePeer, HTableSpec
from dmq.peers.usrloc import UsrlocPeer
from dmq.tap import Options, build_node


def node_with(*args: str) -> Any:
    """The service tree of a ``twistd dmq`` command line (nothing listens)."""
    options = Options()
    options.parseOptions(["--server-address", "sip:127.0.0.1:5999", *args])
    assert options.config is not None
    return build_node(options.config, reactor=Clock(), probe=False)


class HTableTapTests(SynchronousTestCase):
    """The options wire the peer exactly as HTablePeer(tables=[specs], persist_dir=DIR)."""

    def test_htable_options_build_the_peer(self) -> None:
        """--htable t:expire=100 --htable u --htable-persist DIR registers one peer on channel htable with both tables and the snapshot in DIR."""
        folder = Path(tempfile.mkdtemp(prefix="dmq-htable-"))
        self.addCleanup(shutil.rmtree, folder, True)
        node = node_with("--htable", "t:expire=100", "--htable", "u", "--htable-persist", str(folder))
        peer = node.dmq.get_peer("htable")
        self.assertIsInstance(peer, HTablePeer)
        self.assertEqual([t.spec for t in peer.tables.values()], [HTableSpec("t", 100), HTableSpec("u", 0)])
        self.assertEqual(peer.persist_path, folder / "htable.json")
        self.assertEqual(peer.init_sync, "single")
        self.assertFalse(peer.last_modified)

    def test_no_htable_no_peer(self) -> None:
        """Without --htable there is no htable peer."""
        node = node_with()
        self.assertIsNone(node.dmq.get_peer("htable"))

    def test_control_api_reaches_the_peer(self) -> None:
        """The control API lists the htable.* methods and calls them on the peer (sets then get; a missing key is 500, as in Kamailio)."""
        node = node_with("--htable", "t")
        api = ControlAPI(node.dmq)
        names = self.successResultOf(api.call("system.listMethods"))
        for name in ("htable.get", "htable.sets", "htable.seti", "htable.setex", "htable.delete",
                     "htable.dump", "htable.listTables", "htable.dmqsync"):
            self.assertIn(name, names)
        self.assertEqual(self.successResultOf(api.call("htable.sets", ["t", "k", "v"])), "Ok. Key set to new value.")
        self.assertEqual(self.successResultOf(api.call("htable.get", ["t", "k"]))["item"]["value"], "v")
        failure = self.failureResultOf(api.call("htable.get", ["t", "missing"]), RPCError)
        self.assertEqual(failure.value.code, 500)


class UsrlocTapTests(SynchronousTestCase):
    """The options wire the peer exactly as UsrlocPeer(persist_dir=DIR)."""

    def setUp(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="dmq-usrloc-"))
        self.addCleanup(shutil.rmtree, self.folder, True)

    def test_usrloc_options_build_the_peer(self) -> None:
        """--usrloc --usrloc-persist DIR registers one peer on channel usrloc with its snapshot in DIR; without --usrloc there is none."""
        peer = node_with("--usrloc", "--usrloc-persist", str(self.folder)).dmq.get_peer("usrloc")
        self.assertIsInstance(peer, UsrlocPeer)
        self.assertEqual((peer.persist_path, peer.init_sync), (self.folder / "usrloc.json", "single"))
        self.assertIsNone(node_with().dmq.get_peer("usrloc"))

    def test_toml_turns_it_on_and_the_flag_overrides(self) -> None:
        """usrloc = true and usrloc_persist in the TOML file build the peer (the folder relative to the file); the flag alone also does."""
        toml = self.folder / "node.toml"
        toml.write_text('usrloc = true\nusrloc_persist = "state"\n')
        peer = node_with("--config", str(toml)).dmq.get_peer("usrloc")
        self.assertEqual(peer.persist_path, self.folder / "state" / "usrloc.json")
        toml.write_text("usrloc = false\n")
        self.assertIsNone(node_with("--config", str(toml)).dmq.get_peer("usrloc"))
        self.assertIsNotNone(node_with("--config", str(toml), "--usrloc").dmq.get_peer("usrloc"))

    def test_bad_settings(self) -> None:
        """A persist folder without --usrloc, a persist path that is a file, or usrloc = "maybe" are usage errors naming the setting."""
        afile = self.folder / "file"
        afile.write_text("")
        cases = [
            (("--usrloc-persist", str(self.folder)), "--usrloc-persist: needs --usrloc"),
            (("--usrloc", "--usrloc-persist", str(afile)), "not a folder"),
        ]
        toml = self.folder / "bad.toml"
        toml.write_text('usrloc = "maybe"\n')
        cases.append((("--config", str(toml)), "usrloc in"))
        for args, text in cases:
            with self.assertRaises(usage.UsageError, msg=args) as caught:
                node_with(*args)
            self.assertIn(text, str(caught.exception))

    def test_control_api_reaches_the_peer(self) -> None:
        """The control API lists the ul.* methods and calls them on the peer (ul.add then ul.lookup; an unknown AoR is 500, as in Kamailio)."""
        node = node_with("--usrloc")
        api = ControlAPI(node.dmq)
        names = self.successResultOf(api.call("system.listMethods"))
        self.assertTrue({"ul.dump", "ul.lookup", "ul.rm", "ul.rm_contact", "ul.add"} <= set(names))
        self.assertEqual(self.successResultOf(api.call("ul.add", ["location", "alice", "sip:alice@h", 60, 0.5, "", 0, 0, 0])), {})
        found = self.successResultOf(api.call("ul.lookup", ["location", "alice"]))
        self.assertEqual(found["Contacts"][0]["Contact"]["Address"], "sip:alice@h")
        failure = self.failureResultOf(api.call("ul.lookup", ["location", "bob"]), RPCError)
        self.assertEqual((failure.value.code, failure.value.message), (500, "AOR not found in location table"))
