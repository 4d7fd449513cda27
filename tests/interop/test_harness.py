"""Checks that the Kamailio harness itself works: nodes cluster, script channels, probes, clean stops."""

from __future__ import annotations

import os
import socket

from twisted.internet.task import Clock
from twisted.python.failure import Failure

from ..helpers import assert_alive, free_address, probe_host
from .kamailio import (
    NodeFactory,
    RawMember,
    eventually,
    group_processes,
    liveness_probe,
    parse_sip,
    wait_until,
)


def test_two_nodes_list_each_other_active(kamailio: NodeFactory) -> None:
    """A node seeded with another joins it and both list each other active, each on its own address."""
    first = kamailio()
    second = kamailio(seeds=[first.uri])
    wait_until(lambda: first.node_status(second) == "active" and second.node_status(first) == "active",
               timeout=5.0)
    assert len(first.list_nodes()) == 2
    assert len(second.list_nodes()) == 2
    assert first.host != second.host
    assert [n["local"] for n in first.list_nodes() if (n["host"], str(n["port"])) == (first.host, str(first.port))] == [1]
    assert_alive(first, second)


def test_empty_body_probe_does_not_join(kamailio: NodeFactory) -> None:
    """The empty-body node-list probe gets a 200 but leaves Kamailio's node list unchanged."""
    node = kamailio()
    before = node.list_nodes()
    for _ in range(3):
        assert liveness_probe(node.host, node.port)
    assert node.list_nodes() == before
    assert len(before) == 1


def test_probe_of_nothing_is_false() -> None:
    """The probe answers False quickly when no node listens on the port."""
    with RawMember() as silent:  # a bound socket that never answers
        assert not liveness_probe(silent.host, silent.port, timeout=0.2)


def test_bcast_and_send_reach_a_raw_member(kamailio: NodeFactory) -> None:
    """MESSAGE to bcast/send makes Kamailio send a KDMQ on custom1 to a raw UDP member."""
    node = kamailio()
    with RawMember() as member:
        answer = member.join(node)
        assert f"{member.uri};status=active\r\n".encode() in parse_sip(answer)[2]
        wait_until(lambda: node.node_status(member) == "active")

        assert node.bcast(b"hello") == 200
        request = member.receive("custom1")
        first_line, headers, body = parse_sip(request)
        assert first_line == f"KDMQ sip:custom1@{member.host}:{member.port} SIP/2.0"
        assert headers["from"].startswith(f"<sip:custom1@{node.host}:{node.port}>;tag=")
        assert headers["content-type"] == "text/plain"
        assert headers["max-forwards"] == "1"
        assert body == b"hello"

        assert node.send_to(member.uri, b"just you") == 200
        assert parse_sip(member.receive("custom1"))[2] == b"just you"
        assert node.message("other", b"") == 404
    assert_alive(node)


def test_stop_and_kill_leave_no_process(kamailio: NodeFactory) -> None:
    """stop() and kill() leave no Kamailio process (nor zombie) behind; restart() reuses the port."""
    node = kamailio()
    pgid = node.pid
    assert pgid is not None and len(group_processes(pgid)) > 3
    node.stop()
    assert group_processes(pgid, include_zombies=True) == []
    assert not os.path.exists(f"/proc/{pgid}")

    node.start()
    pgid = node.pid
    assert pgid is not None
    node.kill()
    assert group_processes(pgid, include_zombies=True) == []
    assert not liveness_probe(node.host, node.port, timeout=0.2)

    node.restart()
    assert node.rpc("core.uptime")["uptime"] >= 0
    assert liveness_probe(node.host, node.port)


def test_free_address_hands_out_a_host_per_node() -> None:
    """free_address gives each call a 127.x host of its own (never 127.0.0.1 nor the probe host), with a bindable port."""
    addresses = [free_address("udp+tcp") for _ in range(20)]
    hosts = [host for host, _ in addresses]
    assert len(set(hosts)) == len(hosts)
    assert len({port for _, port in addresses}) == len(addresses)
    assert "127.0.0.1" not in hosts and probe_host() not in hosts
    for host, port in addresses:
        assert host.startswith("127.")
        for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
            with socket.socket(socket.AF_INET, kind) as sock:
                sock.bind((host, port))


def test_eventually_fires_with_value_or_times_out() -> None:
    """eventually() fires with the first truthy value, or fails naming the last value."""
    clock = Clock()
    values = iter([0, 0, "ready"])
    fired: list[object] = []
    eventually(lambda: next(values), timeout=1.0, interval=0.1, reactor=clock).addCallback(fired.append)
    clock.pump([0.1, 0.1])
    assert fired == ["ready"]

    failures: list[BaseException] = []

    def record(failure: Failure) -> None:
        """Keep the failure's exception."""
        assert failure.value is not None
        failures.append(failure.value)

    eventually(lambda: [], timeout=0.3, interval=0.1, reactor=clock).addErrback(record)
    clock.pump([0.1] * 4)
    assert len(failures) == 1 and isinstance(failures[0], AssertionError)
    assert "last value: []" in str(failures[0])
