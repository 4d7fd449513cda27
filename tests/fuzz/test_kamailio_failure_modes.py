"""Kamailio 5.6.3's failure modes (issue 11), tried on a live dmq node.

Kamailio 5.6.3, measured: one datagram carrying a bad node-list line leaves it deaf to DMQ
for good; an htable message with a number where a string belongs kills it; a 1,000-node
list is accepted, after which it cannot answer node-list requests. Here each is sent to a
``twistd dmq`` node, which must answer it clearly and keep answering node-list requests.
The made-up nodes are ports of the test's own loopback hosts, so whatever the node does
with them stays on this machine's addresses of the test.
"""

from __future__ import annotations

import json
from typing import Iterable

from ..helpers import assert_alive, free_address
from .live import LiveNode, Member
from .mutate import request

MAX_NEW_PER_LIST = 256
MAX_NODES = 512


def listed(node: LiveNode) -> set[tuple[str, str]]:
    return {(n["host"], n["port"]) for n in node.rpc("dmq.list_nodes")}


def refused_nodes(node: LiveNode) -> int:
    return int(node.rpc("dmq.stats")["notification"]["refused_nodes"])


def lines(host: str, ports: Iterable[int]) -> bytes:
    """Node-list lines for ``host`` on ``ports``."""
    return b"".join(b"sip:%s:%d;status=active\r\n" % (host.encode(), port) for port in ports)


def made_up(first: int, count: int, but: int) -> list[int]:
    """``count`` ports from ``first`` on, ``but`` left out."""
    return [port for port in range(first, first + count + 1) if port != but][:count]


def status_of(reply: bytes | None) -> int:
    assert reply is not None, "no answer"
    return int(reply.split(b" ", 2)[1])


def test_a_bad_node_list_line_leaves_the_node_answering(node: LiveNode, member: Member) -> None:
    """One datagram with a bad node-list line is answered 400; node-list requests are still answered and later lists taken."""
    own = lines(member.host, [member.port])
    bad = request("notification_peer", node.address, (member.host, member.port), own + b"sip:not a node\r\n")
    before = listed(node)
    reply = member.exchange(bad, node.address)
    assert status_of(reply) == 400 and b"node-list line 2" in reply  # type: ignore[operator]
    assert listed(node) == before
    assert member.ping(node) is not None
    assert_alive(node.address)
    later = request("notification_peer", node.address, (member.host, member.port), own + lines(member.host, [1, 2]))
    assert status_of(member.exchange(later, node.address)) == 200
    assert listed(node) == before | {(member.host, "1"), (member.host, "2")}


def test_a_number_where_a_string_belongs_is_a_clear_400(node: LiveNode, member: Member) -> None:
    """An htable set whose strval is a number is answered 400 naming the field; nothing is set, the node goes on."""
    bad = {"action": 2, "htname": "t", "cname": "k", "type": 2, "strval": 5, "mode": 1}
    reply = member.exchange(request("htable", node.address, (member.host, member.port), json.dumps(bad).encode(),
                                    "application/json"), node.address)
    assert status_of(reply) == 400 and b"strval is not a string" in reply  # type: ignore[operator]
    assert node.rpc("htable.dump", "t") == []
    good = dict(bad, strval="five")
    reply = member.exchange(request("htable", node.address, (member.host, member.port), json.dumps(good).encode(),
                                    "application/json"), node.address)
    assert status_of(reply) == 200
    assert [item["value"] for table in node.rpc("htable.dump", "t") for item in table.get("slot", [])] == ["five"]
    assert member.ping(node) is not None
    assert_alive(node.address)


def test_a_member_list_of_1000_nodes_is_cut_at_the_caps(node: LiveNode, member: Member) -> None:
    """A member's 1,000-node lists add at most 256 nodes each and 512 in all; the rest are refused and counted."""
    before, refused = len(listed(node)), refused_nodes(node)
    sent = 0
    for first in (20000, 21000, 22000):
        body = lines(member.host, [member.port, *made_up(first, 1000, but=member.port)])
        reply = member.exchange(request("notification_peer", node.address, (member.host, member.port), body),
                                node.address, timeout=5.0)
        assert status_of(reply) == 200
        sent += 1000
        count = len(listed(node))
        assert count - before <= MAX_NEW_PER_LIST * (sent // 1000) and count <= MAX_NODES
        assert member.ping(node) is not None
        assert_alive(node.address)
    assert count == MAX_NODES
    assert refused_nodes(node) - refused == sent - (count - before)


def test_a_stranger_list_of_1000_nodes_adds_at_most_the_stranger(node: LiveNode, member: Member) -> None:
    """A 1,000-node list from a non-member adds the sender alone (its own line); the 999 others are refused."""
    with Member(host=free_address("udp")[0]) as stranger:
        before, refused = listed(node), refused_nodes(node)
        body = lines(stranger.host, [stranger.port, *made_up(30000, 999, but=stranger.port)])
        reply = stranger.exchange(request("notification_peer", node.address, (stranger.host, stranger.port), body,
                                          max_forwards=70), node.address)
        assert status_of(reply) == 200
        assert listed(node) == before | {(stranger.host, str(stranger.port))}
        assert refused_nodes(node) - refused == 999
        # Its answer is cut to a few times the request's size.
        assert len(reply) <= 3 * len(body) + 1000  # type: ignore[arg-type]
    assert member.ping(node) is not None
    assert_alive(node.address)
