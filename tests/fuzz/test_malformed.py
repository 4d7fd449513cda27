"""The corpus of malformed KDMQ requests (tests/fuzz/corpus.py) against a live node: each gets its answer and
changes nothing, and the node still answers a member's ping and a stranger's node-list query after each."""

from __future__ import annotations

from typing import Any, Iterator

import pytest

from ..helpers import assert_alive
from .corpus import CASES
from .live import LiveNode, Member, framing_fault, reply_fault


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveNode, Member]]:
    """One node for the whole corpus (every case must leave it as it found it)."""
    with Member(1) as member:
        node = LiveNode(member, tmp_path_factory.mktemp("corpus"))
        try:
            yield node, member
        finally:
            died = not node.running
            log = node.stop()
        assert not died, log


def state(node: LiveNode) -> Any:
    """What a malformed request must not change: the node list and the shared data."""
    return (sorted((n["host"], n["port"], n["status"]) for n in node.rpc("dmq.list_nodes")),
            node.rpc("htable.dump", "t"), node.rpc("ul.dump"), node.rpc("dlg.list"))


@pytest.mark.parametrize("name", sorted(CASES))
def test_malformed_request_gets_its_answer(live: tuple[LiveNode, Member], name: str) -> None:
    """The case's status code (or no answer where none can be given), a well-formed reply, nothing changed."""
    node, member = live
    case = CASES[name]
    data = case.build(node.address, (member.host, member.port))
    before = state(node)
    reply = member.exchange(data, node.address, timeout=2.0 if case.code is not None else 0.5,
                            sock=member.sockets[0])
    if case.code is None:
        assert reply is None, reply
    else:
        assert reply is not None, "no answer"
        assert framing_fault(reply) is None, reply
        assert reply.split(b" ", 2)[1] == str(case.code).encode(), reply
        if case.code >= 300:
            assert reply_fault(data, reply) is None, reply
            assert state(node) == before
        if case.header is not None:
            name_, value = case.header
            assert f"\r\n{name_}: {value}\r\n".encode() in reply, reply
    assert member.ping(node) is not None, "a member's ping went unanswered"
    assert_alive(node.address)
