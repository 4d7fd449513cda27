"""dmqctl: command to method mapping, output, exit statuses, against running nodes (in-process and twistd)."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import pytest
import pytest_twisted
from twisted.internet import defer, threads
from twisted.internet.utils import getProcessOutputAndValue

from dmq import CallbackPeer, DMQService, Peer
from dmq.control import ControlAPI, make_site
from dmq.ctl import build_parser, format_nodes, main, parse_param, _call_of
from dmq.errors import RPCError
from dmq.peers.usrloc import UsrlocPeer
from tests.helpers import wait_until
from tests.interop.kamailio import eventually
from tests.helpers import free_port

DMQCTL = str(Path(sys.executable).with_name("dmqctl"))
TWISTD = str(Path(sys.executable).with_name("twistd"))


@pytest.mark.parametrize(
    "text, value",
    [("5", 5), ("1.5", 1.5), ("true", True), ("null", None), ('{"a": 1}', {"a": 1}), ("[1]", [1]),
     ("hello", "hello"), ("s:5", "5"), ("i:5", 5), ("s:", ""), ("sip:127.0.0.1:5060", "sip:127.0.0.1:5060")],
)
def test_call_params(text: str, value: Any) -> None:
    """call PARAMs are JSON when they parse as JSON, else strings; s: and i: force the type as in kamcmd."""
    assert parse_param(text) == value


@pytest.mark.parametrize(
    "argv, method, params",
    [
        (["list-nodes"], "dmq.list_nodes", []),
        (["add", "sip:127.0.0.1:5061"], "dmq.add", ["sip:127.0.0.1:5061"]),
        (["remove", "sip:127.0.0.1:5061"], "dmq.remove", ["sip:127.0.0.1:5061"]),
        (["change-status", "sip:127.0.0.1:5061", "not_active"], "dmq.change_status", ["sip:127.0.0.1:5061", "not_active"]),
        (["send", "custom1", "sip:127.0.0.1:5061", "hi"], "dmq.send_message", ["custom1", "sip:127.0.0.1:5061", "hi", "text/plain"]),
        (["bcast", "custom1", "hi", "--content-type", "application/json"], "dmq.bcast_message", ["custom1", "hi", "application/json"]),
        (["stats"], "dmq.stats", []),
        (["call", "core.uptime"], "core.uptime", []),
        (["call", "htable.seti", "t", "k", "5"], "htable.seti", ["t", "k", 5]),
        (["htable", "get", "t", "k"], "htable.get", ["t", "k"]),
        (["htable", "sets", "t", "k", "123"], "htable.sets", ["t", "k", "123"]),
        (["htable", "seti", "t", "k", "123"], "htable.seti", ["t", "k", 123]),
        (["htable", "setex", "t", "k", "60"], "htable.setex", ["t", "k", 60]),
        (["htable", "delete", "t", "k"], "htable.delete", ["t", "k"]),
        (["htable", "dump", "t"], "htable.dump", ["t"]),
        (["htable", "list"], "htable.listTables", []),
        (["htable", "sync"], "htable.dmqsync", []),
        (["htable", "sync", "t"], "htable.dmqsync", ["t"]),
        (["ul", "show", "alice"], "ul.lookup", ["location", "alice"]),
        (["ul", "dump"], "ul.dump", []),
        (["ul", "dump", "--brief"], "ul.dump", ["brief"]),
        (["ul", "rm", "alice"], "ul.rm", ["location", "alice"]),
        (["ul", "rm-contact", "alice", "sip:alice@h"], "ul.rm_contact", ["location", "alice", "sip:alice@h"]),
    ],
)
def test_commands_map_to_kamailio_methods(argv: list[str], method: str, params: list[Any]) -> None:
    """Each command calls the Kamailio-named method with its params (htable.sets keeps a string, seti an integer)."""
    assert _call_of(build_parser().parse_args(argv)) == (method, params)


def test_usage_errors_exit_2() -> None:
    """A bad command line exits 2 with argparse's message on stderr."""
    err = io.StringIO()
    assert main(["change-status", "sip:127.0.0.1:5061", "sleepy"], io.StringIO(), err) == 2
    assert "invalid choice: 'sleepy'" in err.getvalue()
    assert main(["htable", "seti", "t", "k", "five"], io.StringIO(), io.StringIO()) == 2
    assert main([], io.StringIO(), io.StringIO()) == 2


def test_unreachable_node_exits_3() -> None:
    """Nothing listening: exit 3 and a message naming the URL."""
    port = free_port("tcp")
    err = io.StringIO()
    assert main(["--url", f"http://127.0.0.1:{port}/RPC", "list-nodes"], io.StringIO(), err) == 3
    assert err.getvalue() == f"dmqctl: cannot reach http://127.0.0.1:{port}/RPC: Connection refused\n"


def test_node_table() -> None:
    """list-nodes prints one row per node with URI, status and whether it is local."""
    text = format_nodes([
        {"host": "127.0.0.1", "port": "5061", "proto": "tcp", "resolved_ip": "127.0.0.1", "status": "active",
         "last_notification": 17, "local": 0, "fail_count": 2, "agent": "kamailio (6.1.4 (x86_64/linux))"},
        {"host": "127.0.0.1", "port": "5060", "proto": "*", "resolved_ip": "127.0.0.1", "status": "active",
         "last_notification": 0, "local": 1, "fail_count": 0, "agent": "dmq/0.1.0"},
    ])
    lines = text.splitlines()
    assert lines[0].split() == ["NODE", "STATUS", "LOCAL", "IP", "LAST_SEEN", "FAILS", "AGENT"]
    seen = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(17))
    assert lines[1].split() == ["sip:127.0.0.1:5061;transport=tcp", "active", "127.0.0.1", seen, "2",
                                "kamailio", "(6.1.4", "(x86_64/linux))"]
    assert lines[2].split() == ["sip:127.0.0.1:5060", "active", "yes", "127.0.0.1", "-", "0", "dmq/0.1.0"]


# -- against running nodes ---------------------------------------------------------------------


class RecordingHTable(Peer):
    """Stands in for the htable peer: records the htable.* calls dmqctl makes."""

    channel = "htable"

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def rpc_methods(self) -> dict[str, Callable[..., Any]]:
        def method(name: str) -> Callable[..., Any]:
            def call(*params: Any) -> Any:
                self.calls.append((name, params))
                if name == "htable.get" and params[1] == "missing":
                    raise RPCError(404, "key not found")
                return {"name": params[1], "value": params[2]} if len(params) > 2 else "Ok"
            return call

        return {n: method(n) for n in ("htable.get", "htable.sets", "htable.seti", "htable.delete", "htable.listTables")}


@pytest.fixture
def cluster(reactor: Any) -> Iterator[dict[str, Any]]:
    """Two real nodes on loopback UDP, B seeded with A, B with a custom1 peer; A's control API on a free port."""
    a = DMQService(f"sip:127.0.0.1:{free_port('udp+tcp')}", reactor=reactor, ping_interval=1)
    b = DMQService(f"sip:127.0.0.1:{free_port('udp+tcp')}", [str(a.nodes.local.uri)], reactor=reactor, ping_interval=1)
    received: list[bytes] = []
    b.register_peer(CallbackPeer("custom1", lambda m: received.append(m.body)))
    htable = a.register_peer(RecordingHTable())
    token_site = make_site(ControlAPI(a), "tok")
    port = reactor.listenTCP(0, make_site(ControlAPI(a)), interface="127.0.0.1")
    token_port = reactor.listenTCP(0, token_site, interface="127.0.0.1")
    a.startService()
    b.startService()
    pytest_twisted.blockon(eventually(lambda: len(a.nodes.active()) == 1 and len(b.nodes.active()) == 1, timeout=5, reactor=reactor))
    yield {
        "a": a, "b": b, "received": received, "htable": htable,
        "url": f"http://127.0.0.1:{port.getHost().port}/RPC",
        "token_url": f"http://127.0.0.1:{token_port.getHost().port}/RPC",
    }
    for listening in (port, token_port):
        pytest_twisted.blockon(defer.maybeDeferred(listening.stopListening))
    for svc in (b, a):
        pytest_twisted.blockon(svc.stopService())


def dmqctl(*argv: str) -> "defer.Deferred[tuple[int, str, str]]":
    """Run dmq.ctl.main in a thread (it blocks on HTTP while the reactor serves); (status, stdout, stderr)."""

    def run() -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        status = main(list(argv), out, err)
        return status, out.getvalue(), err.getvalue()

    return threads.deferToThread(run)


@pytest_twisted.inlineCallbacks
def test_list_nodes_against_a_node(cluster: dict[str, Any]) -> Any:
    """list-nodes shows both nodes, the node asked marked local; --json is dmq.list_nodes' result."""
    a, b, url = cluster["a"], cluster["b"], cluster["url"]
    status, out, err = yield dmqctl("--url", url, "list-nodes")
    assert (status, err) == (0, "")
    rows = [line.split() for line in out.splitlines()[1:]]
    assert [(r[0], r[1]) for r in rows] == [(str(b.nodes.local.uri), "active"), (str(a.nodes.local.uri), "active")]
    assert rows[1][2] == "yes" and rows[0][2] != "yes"
    status, out, _ = yield dmqctl("list-nodes", "--json", "--url", url)
    nodes = json.loads(out)
    assert [(n["port"], n["local"]) for n in nodes] == [(str(b.nodes.local.port), 0), (str(a.nodes.local.port), 1)]


@pytest_twisted.inlineCallbacks
def test_membership_commands(cluster: dict[str, Any]) -> Any:
    """add, change-status and remove print Kamailio's answers and change the node list; errors exit 1."""
    a, url = cluster["a"], cluster["url"]
    assert (yield dmqctl("--url", url, "add", "sip:127.0.0.1:5999"))[:2] == (0, "Ok. DMQ node added.\n")
    assert a.nodes.get("sip:127.0.0.1:5999") is not None
    status, out, err = yield dmqctl("--url", url, "add", "sip:127.0.0.1:5999")
    assert (status, out, err) == (1, "", "dmqctl: dmq.add: error 500: Node is already added\n")
    status, out, _ = yield dmqctl("--url", url, "change-status", "sip:127.0.0.1:5999", "disabled")
    assert (status, out) == (0, "Ok. DMQ node status changed.\n")
    assert (yield dmqctl("--url", url, "remove", "sip:127.0.0.1:5999"))[:2] == (0, "Ok. DMQ node removed.\n")
    assert a.nodes.get("sip:127.0.0.1:5999") is None


@pytest_twisted.inlineCallbacks
def test_send_bcast_and_stats(cluster: dict[str, Any]) -> Any:
    """send and bcast deliver over SIP and print each node's answer; stats prints counters."""
    b, url = cluster["b"], cluster["url"]
    status, out, _ = yield dmqctl("--url", url, "bcast", "custom1", "to all")
    assert status == 0
    assert out.splitlines()[1].split() == [str(b.nodes.local.uri), "200", "OK"]
    status, out, _ = yield dmqctl("--url", url, "send", "custom1", str(b.nodes.local.uri), "just you")
    assert status == 0 and out.splitlines()[1].split()[1] == "200"
    assert cluster["received"] == [b"to all", b"just you"]
    status, out, _ = yield dmqctl("--url", url, "stats")
    assert "channels.custom1.sent: 2" in out.splitlines()
    assert "nodes.active: 2" in out.splitlines()


@pytest_twisted.inlineCallbacks
def test_htable_commands_reach_peer_methods(cluster: dict[str, Any]) -> Any:
    """dmqctl htable ... calls the htable.* methods a peer offers; a peer's RPCError exits 1 with its message."""
    url, htable = cluster["url"], cluster["htable"]
    status, out, _ = yield dmqctl("--url", url, "htable", "sets", "t", "k", "123")
    assert status == 0 and "value: 123" in out
    yield dmqctl("--url", url, "htable", "seti", "t", "n", "7")
    yield dmqctl("--url", url, "htable", "list")
    assert htable.calls == [("htable.sets", ("t", "k", "123")), ("htable.seti", ("t", "n", 7)), ("htable.listTables", ())]
    status, out, err = yield dmqctl("--url", url, "htable", "get", "t", "missing")
    assert (status, err) == (1, "dmqctl: htable.get: error 404: key not found\n")
    status, _, err = yield dmqctl("--url", url, "htable", "dump", "t")
    assert (status, err) == (1, "dmqctl: htable.dump: error 500: Method Not Found\n")


@pytest_twisted.inlineCallbacks
def test_ul_commands_against_usrloc_peers(cluster: dict[str, Any], reactor: Any) -> Any:
    """dmqctl ul show/dump prints the contacts as a table, ul rm removes them on every node, and an unknown AoR exits 1 with Kamailio's text."""
    a, b, url = cluster["a"], cluster["b"], cluster["url"]
    mine, theirs = a.register_peer(UsrlocPeer()), b.register_peer(UsrlocPeer())
    mine.save("alice", "sip:alice@10.0.0.1", expires=600, q=0.5, user_agent="phone")
    mine.save("alice", "sip:alice@10.0.0.2", expires=600, q=1.0)
    mine.save("bob", "sip:bob@10.0.0.3", expires=600)
    yield eventually(lambda: len(theirs.lookup("alice")) == 2, timeout=5, reactor=reactor)
    status, out, _ = yield dmqctl("--url", url, "ul", "show", "alice")
    assert status == 0
    lines = [line.split() for line in out.splitlines()]
    assert lines[0] == ["AOR", "CONTACT", "EXPIRES", "Q", "RUID", "USER_AGENT"]
    assert [(r[0], r[1], r[3]) for r in lines[1:]] == [("alice", "sip:alice@10.0.0.2", "1"), ("alice", "sip:alice@10.0.0.1", "0.5")]
    assert lines[2][4] == mine.lookup("alice")[1].ruid and lines[2][5] == "phone"
    status, out, _ = yield dmqctl("--url", url, "ul", "dump")
    assert status == 0 and sorted(line.split()[0] for line in out.splitlines()[1:]) == ["alice", "alice", "bob"]
    status, out, _ = yield dmqctl("--url", url, "ul", "dump", "--brief")
    assert sorted(out.split()) == ["alice", "bob"]
    assert (yield dmqctl("--url", url, "ul", "rm", "alice"))[0] == 0
    yield eventually(lambda: theirs.lookup("alice") == [], timeout=5, reactor=reactor)
    status, out, err = yield dmqctl("--url", url, "ul", "show", "alice")
    assert (status, out, err) == (1, "", "dmqctl: ul.lookup: error 500: AOR not found in location table\n")


@pytest_twisted.inlineCallbacks
def test_token(cluster: dict[str, Any]) -> Any:
    """A node with a token refuses dmqctl without it (exit 3, says so) and serves it with --token or $DMQCTL_TOKEN."""
    url = cluster["token_url"]
    status, _, err = yield dmqctl("--url", url, "stats")
    assert status == 3 and "token" in err
    status, out, _ = yield dmqctl("--url", url, "--token", "tok", "stats")
    assert status == 0 and "nodes.total: 2" in out


@pytest_twisted.inlineCallbacks
def test_console_script(cluster: dict[str, Any]) -> Any:
    """The installed dmqctl script runs (DMQCTL_URL from the environment) and prints JSON with --json."""
    env = {**os.environ, "DMQCTL_URL": cluster["url"]}
    out, err, status = yield getProcessOutputAndValue(DMQCTL, ["list-nodes", "--json"], env=env)
    assert status == 0, err
    assert sorted(n["local"] for n in json.loads(out)) == [0, 1]


def test_twistd_node_lists_itself(tmp_path: Path) -> None:
    """`twistd -n dmq` (what make run starts) serves the control API; dmqctl list-nodes shows the node as local."""
    sip, control = free_port("udp+tcp"), free_port("tcp")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    process = subprocess.Popen(
        [TWISTD, "-n", "--pidfile=", "dmq", "--server-address", f"sip:127.0.0.1:{sip}", "--control", f"tcp:{control}"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
    )
    try:
        def listed() -> Optional[str]:
            result = subprocess.run([DMQCTL, "--url", f"http://127.0.0.1:{control}/RPC", "list-nodes"],
                                    capture_output=True, text=True, timeout=30)
            return result.stdout if result.returncode == 0 else None

        out = wait_until(listed, timeout=30, interval=0.2)
        assert out.splitlines()[1].split()[:3] == [f"sip:127.0.0.1:{sip}", "active", "yes"]
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            log, _ = process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            log, _ = process.communicate()
    assert process.returncode == -signal.SIGTERM  # twistd ends with the signal it got, after a clean stop
    assert b"Server Shut Down." in log
    assert b"control API listening on tcp:%d:interface=127.0.0.1" % control in log
