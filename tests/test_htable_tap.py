"""``twistd dmq --htable ... --htable-persist DIR`` builds the htable peer, and the control API reaches it."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from dmq.control import ControlAPI
from dmq.errors import RPCError
from dmq.peers import HTablePeer, HTableSpec
from dmq.tap import Options, build_node


def node_with(*args: str) -> Any:
    """The service tree of a ``twistd dmq`` command line (nothing listens)."""
    options = Options()
    options.parseOptions(["--server-address", "sip:127.0.0.1:5999", *args])
    assert options.config is not None
    return build_node(options.config, reactor=Clock(), probe=False)


class TapTests(SynchronousTestCase):
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
