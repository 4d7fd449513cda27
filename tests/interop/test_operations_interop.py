"""Operating a node next to real Kamailio, each build in turn: `twistd dmq` joins its cluster, the control API answers as Kamailio's RPC."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

from twisted.internet.task import Clock

import signal
import time
from types import SimpleNamespace

from dmq import DMQService
from dmq.control import ControlAPI
from dmq.peers.htable import HTablePeer
from dmq.testing import FakeSIPTransport

from ..helpers import assert_alive, free_address, free_port, wait_until
from ..helpers import stop_process as stop
from .kamailio import KamailioRPCError, RawMember

TWISTD = str(Path(sys.executable).with_name("twistd"))
DMQCTL = str(Path(sys.executable).with_name("dmqctl"))
PING = 5  # seconds, Kamailio's minimum


def dmqctl_json(control: int, *command: str) -> Optional[Any]:
    """`dmqctl --json COMMAND` against the node's control port; the result, or None if it did not answer."""
    result = subprocess.run([DMQCTL, "--url", f"http://127.0.0.1:{control}/RPC", "--json", *command],
                            capture_output=True, text=True, timeout=30)
    return json.loads(result.stdout) if result.returncode == 0 else None


def view(nodes: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    """A node list as a set of (host, port, status)."""
    return {(n["host"], n["port"], n["status"]) for n in nodes}


def test_twistd_node_joins_kamailio_cluster(kamailio: Any, tmp_path: Path) -> None:
    """`twistd -n dmq` seeded with a Kamailio joins its 2-node cluster; dmqctl list-nodes shows what Kamailio's dmq.list_nodes shows."""
    k1 = kamailio(ping_interval=PING)
    k2 = kamailio([k1], ping_interval=PING)
    wait_until(lambda: k1.node_status(k2) == "active" and k2.node_status(k1) == "active", timeout=10)
    (host, sip), control = free_address("udp"), free_port("tcp")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    process = subprocess.Popen(
        [TWISTD, "-n", "--pidfile=", "dmq", "--server-address", f"sip:{host}:{sip}",
         "--notification-address", k1.uri, "--ping-interval", str(PING), "--control", f"tcp:{control}"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        addresses = [k1.address, k2.address, (host, sip)]
        expected = {(h, str(p), "active") for h, p in addresses}

        def converged() -> Optional[tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]]:
            ours = dmqctl_json(control, "list-nodes")
            if ours is None or view(ours) != expected:
                return None
            on_k1, on_k2 = k1.list_nodes(), k2.list_nodes()
            if view(on_k1) != expected or view(on_k2) != expected:
                return None
            return ours, on_k1, on_k2

        ours, on_k1, on_k2 = wait_until(converged, timeout=20, interval=0.3)
        assert view(ours) == view(on_k1) == view(on_k2)
        assert [(n["port"], n["local"]) for n in ours if n["local"]] == [(str(sip), 1)]
        assert [n["port"] for n in on_k1 if n["local"]] == [str(k1.port)]
        # Kamailio's keys and value types, plus dmq's agent and the fail_count that Kamailio lists from 6.1 on.
        kamailio_entry = on_k1[0]
        assert ("fail_count" in kamailio_entry) is (kamailio.version >= (6, 1))
        for entry in ours:
            assert set(entry) == set(kamailio_entry) | {"fail_count", "agent"}
            for key, value in kamailio_entry.items():
                assert type(entry[key]) is type(value), key
        # The table a person reads shows the same three nodes, this one local.
        table = subprocess.run([DMQCTL, "--url", f"http://127.0.0.1:{control}/RPC", "list-nodes"],
                               capture_output=True, text=True, timeout=30).stdout.splitlines()
        assert sorted(line.split()[0] for line in table[1:]) == sorted(f"sip:{h}:{p}" for h, p in addresses)
    finally:
        log = stop(process)
    assert b"Server Shut Down." in log, log[-2000:]
    assert_alive(k1, k2)


def test_rpc_answers_match_kamailio(kamailio: Any) -> None:
    """dmq.*, htable.* and an unknown method answer as Kamailio does: same results, same fault codes and texts."""
    k1 = kamailio(ping_interval=PING)
    # On k1's host (over a fake network: nothing listens there), so the local rows share host and resolved_ip.
    svc = DMQService(f"sip:{k1.host}:{free_port('udp', host=k1.host)}", reactor=Clock(), transport=FakeSIPTransport())
    svc.register_peer(HTablePeer(tables=["t"]))
    api = ControlAPI(svc)

    def ours(method: str, *params: Any) -> dict[str, Any]:
        call: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": 1}
        if params:
            call["params"] = list(params)
        answers: list[Any] = []
        api.handle(json.dumps(call).encode()).addCallback(answers.append)
        return json.loads(answers[0])

    def theirs(method: str, *params: Any) -> dict[str, Any]:
        try:
            return {"result": k1.rpc(method, *params)}
        except KamailioRPCError as e:
            return {"error": {"code": e.code, "message": e.message}}

    cases = [
        ("dmq.remove", "sip:127.0.0.9:4444"),  # not listed: still Ok
        ("dmq.remove", "garbage"),  # 500 Failure
        ("dmq.remove",),  # 500 Invalid Parameters
        ("no.such.method",),
        ("htable.get", "t", "nokey"),
        ("htable.get", "nosuch", "k"),
        ("htable.get", "t"),
        ("htable.get", "t", 5),
        ("htable.sets", "t", "a", "hello"),
        ("htable.get", "t", "a"),
        ("htable.seti", "t", "n", 5),
        ("htable.get", "t", "n"),
        ("htable.sets", "nosuch", "a", "b"),
        ("htable.sets", "t", "a"),
        ("htable.sets", "t", "k", 5, "extra"),
        ("htable.get", "t", "k"),
        ("htable.setex", "t", "zz", 100),
        ("htable.setxs", "t", "k"),
        ("htable.delete", "t", "nokey"),
        ("htable.delete", "t", "a"),
        ("htable.delete", "nosuch", "a"),
        ("htable.delete", "t"),
        ("htable.dump", "nosuch"),
        ("htable.dump",),
    ]
    if kamailio.version >= (5, 8):
        cases.append(("htable.dmqsync", "t"))
    # Where releases word a fault differently, dmq follows the newer: 5.6 drops a parenthesis here.
    older_texts = {"Not enough parameters (htable name & key name": "Not enough parameters (htable name & key name)"}
    for method, *params in cases:
        answer = ours(method, *params)
        answer.pop("jsonrpc")
        answer.pop("id")
        expected = theirs(method, *params)
        if "error" in expected:
            expected["error"]["message"] = older_texts.get(expected["error"]["message"], expected["error"]["message"])
        assert answer == expected, (method, params)
    local_ours = ours("dmq.list_nodes")["result"]
    local_theirs = k1.list_nodes()
    assert len(local_ours) == len(local_theirs) == 1
    # dmq adds agent, and fail_count, which Kamailio lists from 6.1 on.
    ours_only = {"agent"} if kamailio.version >= (6, 1) else {"agent", "fail_count"}
    assert {k: v for k, v in local_ours[0].items() if k != "port" and k not in ours_only} == {
        k: v for k, v in local_theirs[0].items() if k != "port"
    }
    # dump: the same slots with the same cells (dmq adds each cell's expire).
    dumped = ours("htable.dump", "t")["result"]
    for entry in dumped:
        for cell in entry["slot"]:
            cell.pop("expire")
    assert dumped == k1.rpc("htable.dump", "t", via="fifo")
    # listTables: Kamailio's keys and values for a plain table, plus dmq's item count.
    [table_ours] = ours("htable.listTables")["result"]
    [table_theirs] = k1.rpc("htable.listTables")
    assert {k: v for k, v in table_ours.items() if k != "items"} == table_theirs
    assert_alive(k1)


def test_sigterm_with_a_dead_member_exits_within_2s(kamailio: Any, tmp_path: Path) -> None:
    """SIGTERM to `twistd dmq` whose cluster has a dead member: the process exits within 2 s and Kamailio sees the leave."""
    k1 = kamailio(ping_interval=PING)
    (host, sip), control = free_address("udp"), free_port("tcp")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    process = subprocess.Popen(
        [TWISTD, "-n", "--pidfile=", "dmq", "--server-address", f"sip:{host}:{sip}",
         "--notification-address", k1.uri, "--ping-interval", str(PING), "--control", f"tcp:{control}"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        wait_until(lambda: k1.node_status(f"sip:{host}:{sip}") == "active", timeout=10, interval=0.1)
        with RawMember() as dead:
            dead.join(SimpleNamespace(address=(host, sip), uri=f"sip:{host}:{sip}"))  # type: ignore[arg-type]
        # The member's socket is closed: it will never answer again.
        listed = dmqctl_json(control, "list-nodes") or []
        assert (dead.host, str(dead.port), "active") in view(listed)
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=10)
        took = time.monotonic() - started
    finally:
        log = stop(process)
    assert took < 2.0, f"stopping took {took:.2f} s"
    assert b"Server Shut Down." in log, log[-2000:]
    wait_until(lambda: k1.node_status(f"sip:{host}:{sip}") in ("disabled", None), timeout=1, interval=0.05)
    assert_alive(k1)
