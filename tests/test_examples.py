"""The examples: the custom peer on a fake network, and embed.py joining a node run from dmq.tac."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from dmq.control import ControlAPI
from dmq.testing import cluster_of, rpc
from tests.helpers import free_port, stop_process as stop, wait_until

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
sys.path.insert(0, str(EXAMPLES))

from custom_peer import NoticeBoardPeer  # noqa: E402

PYTHON = sys.executable
TWISTD = str(Path(sys.executable).with_name("twistd"))
DMQCTL = str(Path(sys.executable).with_name("dmqctl"))


class NoticeBoardTests(SynchronousTestCase):
    """The notice-board peer of examples/custom_peer.py."""

    def setUp(self) -> None:
        self.pair = cluster_of(5060, 5061)
        self.boards = {port: svc.register_peer(NoticeBoardPeer()) for port, svc in self.pair.nodes.items()}
        self.pair.run(1)

    def test_post_replicates(self) -> None:
        """A notice posted on one node is kept there and reaches the other, which answers 200."""
        d = self.boards[5060].post("hello")
        self.pair.run(0.1)
        [(node, response)] = self.successResultOf(d)
        self.assertEqual((node.port, response.code), (5061, 200))
        self.assertEqual(list(self.boards[5061].notices), [{"from": "sip:127.0.0.1:5060", "text": "hello"}])
        self.assertEqual(list(self.boards[5060].notices), [{"from": "sip:127.0.0.1:5060", "text": "hello"}])

    def test_rpc_methods(self) -> None:
        """notices.post and notices.list work through the control API."""
        api = ControlAPI(self.pair.nodes[5061])
        d = api.handle(json.dumps({"jsonrpc": "2.0", "method": "notices.post", "params": ["hi"], "id": 1}).encode())
        self.pair.run(0.1)
        self.assertEqual(json.loads(self.successResultOf(d))["result"], [{"node": "sip:127.0.0.1:5060", "code": 200}])
        self.assertEqual(rpc(ControlAPI(self.pair.nodes[5060]), "notices.list")["result"], [{"from": "sip:127.0.0.1:5061", "text": "hi"}])

    def test_bad_body(self) -> None:
        """A notice that is not UTF-8 is answered 400."""
        d = self.pair.nodes[5060].send_message("notices", b"\xff\xfe", "sip:127.0.0.1:5061")
        self.pair.run(0.1)
        self.assertEqual(self.successResultOf(d).code, 400)
        self.assertEqual(list(self.boards[5061].notices), [])


def test_embed_joins_a_tac_node(tmp_path: Path) -> None:
    """embed.py joins a node run by `twistd -ny dmq.tac`, broadcasts, gets 200, and the tac node keeps the notice."""
    tac_port, embed_port, control = free_port("udp+tcp"), free_port("udp+tcp"), free_port("tcp")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(DMQ_SERVER_ADDRESS=f"sip:127.0.0.1:{tac_port}", DMQ_CONTROL=f"tcp:{control}:interface=127.0.0.1", DMQ_PING_INTERVAL="5")
    url = f"http://127.0.0.1:{control}/RPC"
    tac = subprocess.Popen([TWISTD, "-n", "--pidfile=", "-y", str(EXAMPLES / "dmq.tac")], cwd=tmp_path, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: subprocess.run([DMQCTL, "--url", url, "list-nodes"], capture_output=True).returncode == 0,
                   timeout=30, interval=0.2)
        embed = subprocess.run(
            [PYTHON, str(EXAMPLES / "embed.py"), "--server-address", f"sip:127.0.0.1:{embed_port}",
             "--seed", f"sip:127.0.0.1:{tac_port}", "--message", "hello from the test"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
        )
        assert embed.returncode == 0, embed.stderr
        assert f"sip:127.0.0.1:{tac_port} answered 200 OK" in embed.stdout.splitlines()
        listed = subprocess.run([DMQCTL, "--url", url, "--json", "call", "notices.list"], capture_output=True, text=True)
        assert json.loads(listed.stdout) == [{"from": f"sip:127.0.0.1:{embed_port}", "text": "hello from the test"}]
    finally:
        log = stop(tac)
    assert b"Server Shut Down." in log
