"""Tests for dmq.node and dmq.nodelist: node-list body codec, membership rules and events.

The wire examples are the bodies of two Kamailio 5.6.3 captures
(``shared/captures/kamailio-5.6.3/``): node 5172 joining node 5171 with
``req-KDMQ-notification_peer.sip`` and 5171's answer ``resp-200-KDMQ-body.sip``.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Optional

import pytest

from dmq.node import MAX_BODY_LINES, MAX_LINE_LENGTH, Node, NodeListError, NodeStatus, kamailio_version, parse_body, parse_lines
from dmq.changes import Event, EventKind, MergeResult, TimeoutOutcome, TimeoutPolicy
from dmq.nodelist import NodeList
from dmq.sip import SIPURI

ACTIVE = NodeStatus.ACTIVE
NOT_ACTIVE = NodeStatus.NOT_ACTIVE
DISABLED = NodeStatus.DISABLED
UP = EventKind.PEER_UP
DOWN = EventKind.PEER_DOWN
GONE = EventKind.PEER_DISABLED

# Body of req-KDMQ-notification_peer.sip: 127.0.0.1:5172 joining 127.0.0.1:5171.
JOIN_REQUEST_BODY = b"sip:127.0.0.1:5172;status=active\r\n"
# Body of resp-200-KDMQ-body.sip: 127.0.0.1:5171's answer to that request.
JOIN_REPLY_BODY = b"sip:127.0.0.1:5172;status=active\r\nsip:127.0.0.1:5171;status=active\r\n"

LOCAL = "sip:127.0.0.1:5060"
A = "sip:127.0.0.1:5061"
B = "sip:127.0.0.1:5062"
C = "sip:127.0.0.1:5063"


def node(uri: str, status: Optional[NodeStatus] = None, seed: bool = False) -> Node:
    """A remote node from URI text."""
    return Node.from_uri(uri, status=status, seed=seed)


def make_list(*remote: Node, reactivate: bool = False) -> NodeList:
    """A node list with local node LOCAL and ``remote`` added in order."""
    nodes = NodeList(Node.from_uri(LOCAL), reactivate_disabled_from_body=reactivate)
    for n in remote:
        nodes.add(n)
    return nodes


def line(uri: str, status: str = "active") -> bytes:
    """One body line with CRLF."""
    return f"{uri};status={status}\r\n".encode()


def kinds(events: list[Event]) -> list[tuple[EventKind, str]]:
    """Events as (kind, node URI) pairs."""
    return [(e.kind, str(e.node.uri)) for e in events]


def snapshot(nodes: NodeList) -> list[tuple[object, ...]]:
    """Everything observable about a node list."""
    return [(n.key, n.status, n.local, n.seed, n.fail_count, n.last_seen) for n in nodes]


# ---------------------------------------------------------------------------
# NodeStatus
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, status",
    [
        ("active", ACTIVE),
        ("not_active", NOT_ACTIVE),
        ("disabled", DISABLED),
        ("timeout", NOT_ACTIVE),
        ("pending", NOT_ACTIVE),
    ],
)
def test_from_wire_reads_the_five_statuses(text: str, status: NodeStatus) -> None:
    """Each status Kamailio 5.6 or 6.x writes maps to one NodeStatus."""
    assert NodeStatus.from_wire(text) is status


@pytest.mark.parametrize("text", ["", "Active", "ACTIVE", "up", "inactive", " active"])
def test_from_wire_rejects_unknown_text(text: str) -> None:
    """Any other status text, including another case, is a NodeListError naming it."""
    with pytest.raises(NodeListError, match="unknown node status"):
        NodeStatus.from_wire(text)


def test_node_list_error_is_a_value_error() -> None:
    """NodeListError is a ValueError, so generic handlers catch it."""
    assert issubclass(NodeListError, ValueError)


# ---------------------------------------------------------------------------
# Node
# ---------------------------------------------------------------------------


def test_node_defaults() -> None:
    """A node from a URI is active, remote, no seed, never failed, never seen."""
    n = node("sip:127.0.0.1:5060")
    assert (n.status, n.local, n.seed, n.fail_count, n.last_seen) == (
        ACTIVE,
        False,
        False,
        0,
        None,
    )
    assert (n.host, n.port, n.transport) == ("127.0.0.1", 5060, "udp")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("sip:127.0.0.1:5172", "sip:127.0.0.1:5172;status=active"),
        ("sip:127.0.0.1:5172;transport=tcp", "sip:127.0.0.1:5172;transport=tcp;status=active"),
        ("sip:127.0.0.1:5172;transport=TLS", "sip:127.0.0.1:5172;transport=tls;status=active"),
        ("sip:127.0.0.1:5172;transport=udp", "sip:127.0.0.1:5172;status=active"),
        ("sip:[2001:db8::1]:5060", "sip:[2001:db8::1]:5060;status=active"),
        ("sip:dmq.example.com:5060", "sip:dmq.example.com:5060;status=active"),
        ("sip:127.0.0.1", "sip:127.0.0.1;status=active"),
    ],
)
def test_node_line(text: str, expected: str) -> None:
    """A line is sip:host[:port], transport only for non-udp, then the status."""
    assert node(text).line() == expected


def test_node_line_with_another_status() -> None:
    """line(status) writes the given status instead of the node's."""
    n = node("sip:[2001:db8::1]:5060")
    assert n.line(DISABLED) == "sip:[2001:db8::1]:5060;status=disabled"
    assert n.status is ACTIVE


def test_node_line_never_writes_not_active() -> None:
    """not_active is never written: Kamailio 5.6.3 cannot read it."""
    with pytest.raises(ValueError, match="not_active"):
        node(A, NOT_ACTIVE).line()
    with pytest.raises(ValueError):
        node(A).line(NOT_ACTIVE)


def test_node_canonical_uri_drops_user_and_other_params() -> None:
    """from_uri keeps host, port and transport only (a server_address may carry a user)."""
    n = node("sip:notification_peer@127.0.0.1:5060;transport=tcp;lr;status=active")
    assert str(n.uri) == "sip:127.0.0.1:5060;transport=tcp"
    assert n.uri.user is None and "status" not in n.uri.params


def test_node_from_sipuri_object() -> None:
    """from_uri takes a parsed SIPURI as well as text."""
    n = Node.from_uri(SIPURI.parse("sip:10.0.0.1:5090;transport=tls"))
    assert n.key == ("10.0.0.1", "5090", "tls")


def test_node_from_uri_reads_status_param() -> None:
    """Without a status argument the URI's ;status= decides (5.6 words too)."""
    assert node("sip:10.0.0.1:5090;status=disabled").status is DISABLED
    assert node("sip:10.0.0.1:5090;status=pending").status is NOT_ACTIVE


def test_node_from_uri_status_argument_wins() -> None:
    """An explicit status argument overrides the URI's ;status=."""
    assert node("sip:10.0.0.1:5090;status=disabled", status=ACTIVE).status is ACTIVE


def test_node_from_uri_flags() -> None:
    """from_uri sets the local and seed flags it is given."""
    n = Node.from_uri(A, local=True, seed=True)
    assert n.local and n.seed


@pytest.mark.parametrize(
    "text",
    [
        "sips:127.0.0.1:5061",
        "tel:+1234",
        "127.0.0.1:5060",
        "sip:",
        "sip:bad_host:5060",
        "sip:[2001:db8::zz]:5060",
        "sip:127.0.0.1:0",
        "sip:127.0.0.1:70000",
        "sip:127.0.0.1:5060;transport=carrier-pigeon",
        "sip:127.0.0.1:5060;status",
        "sip:127.0.0.1:5060;status=up",
        "sip:" + "a" * 251 + ".com:5060",
    ],
)
def test_node_from_uri_rejects(text: str) -> None:
    """Non-sip schemes, bad hosts, ports, transports and statuses are NodeListErrors."""
    with pytest.raises(NodeListError):
        Node.from_uri(text)


@pytest.mark.parametrize("host", ["", "a b", "1.2.3.4:5", "u@h", "h;x=1"])
def test_node_constructor_rejects_bad_host(host: str) -> None:
    """The constructor takes a bare host only."""
    with pytest.raises(NodeListError):
        Node(host, 5060)


def test_missing_port_is_not_5060() -> None:
    """A node without a port keeps port None and is a different node from :5060."""
    bare, explicit = node("sip:127.0.0.1"), node("sip:127.0.0.1:5060")
    assert bare.port is None and str(bare.uri) == "sip:127.0.0.1"
    assert bare.key == ("127.0.0.1", "", "udp")
    assert bare.key != explicit.key


def test_localhost_is_not_127_0_0_1() -> None:
    """Hosts compare as text: localhost and 127.0.0.1 are different nodes."""
    assert node("sip:localhost:5060").key != node("sip:127.0.0.1:5060").key


def test_host_compares_case_sensitively() -> None:
    """Host names are compared as written, as Kamailio does."""
    assert node("sip:Dmq.example.com:5060").key != node("sip:dmq.example.com:5060").key


def test_transport_is_part_of_the_key() -> None:
    """The same host and port over tcp is another node."""
    assert node("sip:127.0.0.1:5060;transport=tcp").key == ("127.0.0.1", "5060", "tcp")
    assert node("sip:127.0.0.1:5060;transport=udp").key == node("sip:127.0.0.1:5060").key


@pytest.mark.parametrize(
    "text, ip",
    [
        ("sip:127.0.0.1:5060", "127.0.0.1"),
        ("sip:[2001:db8::1]:5060", "2001:db8::1"),
        ("sip:dmq.example.com:5060", None),
    ],
)
def test_resolved_ip(text: str, ip: Optional[str]) -> None:
    """An IP-literal host is its own resolved_ip (IPv6 without brackets); a name has none yet."""
    assert node(text).resolved_ip == ip


def test_node_repr() -> None:
    """repr names the URI, status and flags."""
    assert repr(Node.from_uri(A, local=True, seed=True)) == (
        "<Node sip:127.0.0.1:5061 active, local, seed>"
    )


def test_nodes_compare_by_identity() -> None:
    """Two Node objects of one address are distinct objects; keys find them in a list."""
    assert node(A) != node(A)
    assert node(A).key == node(A).key


# ---------------------------------------------------------------------------
# parse_body
# ---------------------------------------------------------------------------


def test_parse_capture_reply_body() -> None:
    """The Kamailio 5.6.3 join reply body parses to both nodes, active."""
    parsed = parse_body(JOIN_REPLY_BODY)
    assert [(n.key, s) for n, s in parsed] == [
        (("127.0.0.1", "5172", "udp"), ACTIVE),
        (("127.0.0.1", "5171", "udp"), ACTIVE),
    ]
    assert all(n.status is s for n, s in parsed)


def test_parse_capture_request_body() -> None:
    """The Kamailio 5.6.3 join request body is the joining node's own line."""
    [(n, status)] = parse_body(JOIN_REQUEST_BODY)
    assert str(n.uri) == "sip:127.0.0.1:5172" and status is ACTIVE


def test_parse_empty_body() -> None:
    """An empty body is an empty list."""
    assert parse_body(b"") == []


@pytest.mark.parametrize(
    "body",
    [
        b"sip:10.0.0.1:5060;status=active\r\nsip:10.0.0.2:5060;status=disabled\r\n",
        b"sip:10.0.0.1:5060;status=active\nsip:10.0.0.2:5060;status=disabled\n",
        b"sip:10.0.0.1:5060;status=active\r\nsip:10.0.0.2:5060;status=disabled",
        b"sip:10.0.0.1:5060;status=active\nsip:10.0.0.2:5060;status=disabled\r\n",
        b"sip:10.0.0.1:5060;status=active \t\r\nsip:10.0.0.2:5060;status=disabled\r\n",
    ],
)
def test_parse_line_ends(body: bytes) -> None:
    """CRLF, bare LF, no final line end and trailing white space all parse alike."""
    assert [(n.key[0], s) for n, s in parse_body(body)] == [
        ("10.0.0.1", ACTIVE),
        ("10.0.0.2", DISABLED),
    ]


@pytest.mark.parametrize(
    "status, expected",
    [
        ("active", ACTIVE),
        ("not_active", NOT_ACTIVE),
        ("disabled", DISABLED),
        ("timeout", NOT_ACTIVE),
        ("pending", NOT_ACTIVE),
    ],
)
def test_parse_reads_every_status(status: str, expected: NodeStatus) -> None:
    """Lines with any of the five wire statuses parse."""
    [(n, s)] = parse_body(line(A, status))
    assert s is expected and n.status is expected


def test_parse_line_without_status_is_active() -> None:
    """A line without ;status= means active."""
    [(n, s)] = parse_body(b"sip:10.0.0.1:5060;transport=tcp\r\n")
    assert s is ACTIVE and n.transport == "tcp"


def test_parse_ipv6_and_names_and_transports() -> None:
    """IPv6 references, host names and tcp/tls/sctp transports are read."""
    body = (
        b"sip:[2001:db8::1]:5060;status=disabled\r\n"
        b"sip:dmq-1.example.com:5090;transport=tls;status=active\r\n"
        b"sip:10.0.0.3:5060;transport=SCTP;status=active\r\n"
    )
    assert [n.key for n, _ in parse_body(body)] == [
        ("[2001:db8::1]", "5060", "udp"),
        ("dmq-1.example.com", "5090", "tls"),
        ("10.0.0.3", "5060", "sctp"),
    ]


def test_parse_ignores_user_part_and_unknown_params() -> None:
    """A user part and parameters other than transport/status are dropped."""
    [(n, s)] = parse_body(b"sip:peer@10.0.0.1:5060;lr;foo=bar;status=disabled\r\n")
    assert str(n.uri) == "sip:10.0.0.1:5060" and s is DISABLED


@pytest.mark.parametrize(
    "body, fault",
    [
        (b"sip:10.0.0.1;status=active\r\n", "no port"),
        (b"sips:10.0.0.1:5061;status=active\r\n", "not a sip: URI"),
        (b"tel:+123;status=active\r\n", "line 1"),
        (b"hello\r\n", "line 1"),
        (b"sip:10.0.0.1:5060;status=up\r\n", "unknown node status"),
        (b"sip:10.0.0.1:5060;status\r\n", "status without a value"),
        (b"sip:10.0.0.1:5060;transport=sctp2;status=active\r\n", "transport"),
        (b"sip:bad_host:5060;status=active\r\n", "line 1"),
        (b"sip:[2001:db8::zz]:5060;status=active\r\n", "line 1"),
        (b"sip:10.0.0.1:0;status=active\r\n", "port"),
        (b"sip:10.0.0.1:65536;status=active\r\n", "line 1"),
        (line(A) + b"sip:\xff:5060\r\n", "not UTF-8"),
        (b"sip:10.0.0.1:5060;x=" + b"a" * MAX_LINE_LENGTH + b"\r\n", "longer than"),
        (b"sip:" + b"a" * 251 + b".com:5060\r\n", "longer than 254"),
    ],
)
def test_parse_rejects_bad_lines(body: bytes, fault: str) -> None:
    """Each bad line makes the whole body a NodeListError naming line and fault."""
    with pytest.raises(NodeListError, match=fault):
        parse_body(body)


@pytest.mark.parametrize(
    "body",
    [
        b"\r\n",
        b"   \r\n",
        line(A) + b"\r\n" + line(B),
        line(A) + b"\r\n",
        line(A) + b"\n\n",
        b" \t" + line(A).rstrip(b"\r\n") + b"  \r\n\r\n" + line(B),
    ],
)
def test_parse_skips_blank_lines_and_white_space(body: bytes) -> None:
    """Blank lines and white space around a line are no fault: the lines that are there are read."""
    nodes = [n.key for n, _ in parse_body(body)]
    expected = [Node.from_uri(u).key for u in (A, B) if u.encode() in body]
    assert nodes == expected


def test_parse_error_names_the_bad_line() -> None:
    """The error says which line was wrong."""
    body = line(A) + line(B) + b"sip:10.0.0.9;status=active\r\n"
    with pytest.raises(NodeListError, match=r"node-list line 3: no port"):
        parse_body(body)


def test_parse_accepts_max_lines() -> None:
    """A body of exactly MAX_BODY_LINES lines is accepted."""
    body = b"".join(line(f"sip:10.0.{i // 250}.{i % 250 + 1}:5060") for i in range(MAX_BODY_LINES))
    assert len(parse_body(body)) == MAX_BODY_LINES


def test_parse_rejects_too_many_lines() -> None:
    """A body with more than MAX_BODY_LINES lines is refused."""
    body = line(A) * (MAX_BODY_LINES + 1)
    with pytest.raises(NodeListError, match="more than"):
        parse_body(body)


# ---------------------------------------------------------------------------
# format_body
# ---------------------------------------------------------------------------


def test_format_join_request_body_matches_capture() -> None:
    """A fresh node's list is exactly the body Kamailio 5.6.3 sends to join."""
    assert NodeList(Node.from_uri("sip:127.0.0.1:5172")).format_body() == JOIN_REQUEST_BODY


def test_format_join_reply_body_matches_capture() -> None:
    """After merging the join, 5171's body is byte for byte Kamailio's reply."""
    nodes = NodeList(Node.from_uri("sip:127.0.0.1:5171"))
    nodes.merge_body(JOIN_REQUEST_BODY, now=0.0)
    assert nodes.format_body() == JOIN_REPLY_BODY


def test_format_order_is_newest_first_then_local() -> None:
    """Remote active nodes newest first, the local line last, as Kamailio's list."""
    nodes = make_list(node(A), node(B), node(C))
    assert nodes.format_body() == line(C) + line(B) + line(A) + line(LOCAL)


def test_format_writes_only_active_remote_nodes() -> None:
    """not_active and disabled remote nodes are left out; the status is always written."""
    nodes = make_list(node(A), node(B, NOT_ACTIVE), node(C, DISABLED))
    assert nodes.format_body() == line(A) + line(LOCAL)


def test_format_leaving_writes_local_disabled() -> None:
    """When leaving, only the local line says disabled."""
    nodes = make_list(node(A))
    assert nodes.format_body(leaving=True) == line(A) + line(LOCAL, "disabled")


def test_format_transport_and_ipv6() -> None:
    """tcp/tls appear as ;transport=, udp never, IPv6 in brackets."""
    nodes = NodeList(Node.from_uri("sip:[2001:db8::1]:5060"))
    nodes.add(node("sip:10.0.0.1:5060;transport=tcp"))
    nodes.add(node("sip:10.0.0.2:5061;transport=tls"))
    nodes.add(node("sip:10.0.0.3:5060;transport=udp"))
    assert nodes.format_body() == (
        b"sip:10.0.0.3:5060;status=active\r\n"
        b"sip:10.0.0.2:5061;transport=tls;status=active\r\n"
        b"sip:10.0.0.1:5060;transport=tcp;status=active\r\n"
        b"sip:[2001:db8::1]:5060;status=active\r\n"
    )


def test_format_then_parse_round_trip() -> None:
    """parse_body(format_body()) names the local node and every active node."""
    nodes = make_list(node(A), node("sip:[::1]:5070;transport=tcp"), node(B, DISABLED))
    parsed = parse_body(nodes.format_body())
    assert {n.key for n, _ in parsed} == {n.key for n in nodes.active(include_local=True)}
    assert all(s is ACTIVE for _, s in parsed)


# ---------------------------------------------------------------------------
# NodeList: lookup, add, remove
# ---------------------------------------------------------------------------


def test_constructor_marks_local_active() -> None:
    """The local node given to the list is marked local and active."""
    local = Node.from_uri(LOCAL, status=NOT_ACTIVE)
    nodes = NodeList(local)
    assert nodes.local is local and local.local and local.status is ACTIVE
    assert list(nodes) == [local] and len(nodes) == 1


def test_iteration_local_first_then_insertion_order() -> None:
    """Iteration gives the local node, then the others as added."""
    a, b, c = node(C), node(A), node(B)
    nodes = make_list(a, b, c)
    assert list(nodes) == [nodes.local, a, b, c]
    assert nodes.others() == [a, b, c]
    assert len(nodes) == 4


def test_get_by_key_uri_text_and_node() -> None:
    """get finds a node by key, SIPURI, URI text (user part ignored) or an equal-key Node."""
    a = node("sip:127.0.0.1:5061;transport=tcp")
    nodes = make_list(a)
    assert nodes.get(("127.0.0.1", "5061", "tcp")) is a
    assert nodes.get(SIPURI.parse("sip:127.0.0.1:5061;transport=tcp")) is a
    assert nodes.get("sip:notification_peer@127.0.0.1:5061;transport=TCP") is a
    assert nodes.get(node("sip:127.0.0.1:5061;transport=tcp")) is a
    assert nodes.get("sip:127.0.0.1:5061") is None
    assert nodes.get(LOCAL) is nodes.local


def test_get_rejects_bad_uri_text() -> None:
    """get raises NodeListError for text that is no sip: URI."""
    with pytest.raises(NodeListError):
        make_list().get("not a uri")


def test_contains() -> None:
    """`in` works with a Node, key, SIPURI or text, and is False for anything else."""
    a = node(A)
    nodes = make_list(a)
    assert a in nodes and a.key in nodes and A in nodes and SIPURI.parse(A) in nodes
    assert B not in nodes and "garbage" not in nodes and 42 not in nodes


def test_add_without_duplicates() -> None:
    """Adding a node whose key is present returns the one already there, unchanged."""
    a = node(A)
    nodes = make_list(a)
    again = node(A, DISABLED)
    assert nodes.add(again) is a and a.status is ACTIVE and len(nodes) == 2
    assert nodes.add(node(LOCAL)) is nodes.local


def test_add_rejects_second_local() -> None:
    """A second local node cannot be added."""
    with pytest.raises(ValueError, match="local"):
        make_list().add(Node.from_uri(A, local=True))


def test_add_active_reports_peer_up() -> None:
    """add appends peer-up for a node added active, nothing for one added otherwise."""
    nodes, events = make_list(), list[Event]()
    nodes.add(node(A), events)
    nodes.add(node(B, NOT_ACTIVE), events)
    nodes.add(node(C, DISABLED), events)
    nodes.add(node(A), events)
    assert kinds(events) == [(UP, A)]


def test_remove() -> None:
    """remove drops a remote node by any reference and says whether it did."""
    a, b = node(A), node(B)
    nodes = make_list(a, b)
    assert nodes.remove(a) is True
    assert nodes.remove(B) is True
    assert nodes.remove(C) is False
    assert list(nodes) == [nodes.local]


def test_remove_never_the_local_node() -> None:
    """The local node cannot be removed."""
    nodes = make_list()
    assert nodes.remove(nodes.local) is False and nodes.remove(LOCAL) is False
    assert len(nodes) == 1


def test_active_and_others() -> None:
    """active() lists active remote nodes (local first on request), others() every remote one."""
    a, b, c = node(A), node(B, NOT_ACTIVE), node(C, DISABLED)
    nodes = make_list(a, b, c)
    assert nodes.active() == [a]
    assert nodes.active(include_local=True) == [nodes.local, a]
    assert nodes.others() == [a, b, c]


# ---------------------------------------------------------------------------
# merge_body
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "wire, status, events",
    [
        ("active", ACTIVE, [(UP, A)]),
        ("disabled", DISABLED, []),
        ("not_active", NOT_ACTIVE, []),
        ("timeout", NOT_ACTIVE, []),
        ("pending", NOT_ACTIVE, []),
    ],
)
def test_merge_adds_unknown_node_with_line_status(
    wire: str, status: NodeStatus, events: list[tuple[EventKind, str]]
) -> None:
    """An unknown node is added with its line's status; peer-up only when active."""
    nodes = make_list()
    result = nodes.merge_body(line(A, wire), now=1.0)
    [added] = result.added
    assert nodes.get(A) is added and added.status is status
    assert not added.local and not added.seed
    assert result.changed == [] and kinds(result.events) == events
    assert result.changed_anything


@pytest.mark.parametrize(
    "start, wire, end, events",
    [
        (ACTIVE, "disabled", DISABLED, [(GONE, A)]),
        (ACTIVE, "not_active", NOT_ACTIVE, [(DOWN, A)]),
        (ACTIVE, "timeout", NOT_ACTIVE, [(DOWN, A)]),
        (NOT_ACTIVE, "active", ACTIVE, [(UP, A)]),
        (NOT_ACTIVE, "disabled", DISABLED, [(GONE, A)]),
    ],
)
def test_merge_changes_known_node(
    start: NodeStatus, wire: str, end: NodeStatus, events: list[tuple[EventKind, str]]
) -> None:
    """A known node whose line has another status takes it over (changed)."""
    a = node(A, start)
    nodes = make_list(a)
    result = nodes.merge_body(line(A, wire), now=1.0)
    assert a.status is end and result.changed == [a] and result.added == []
    assert kinds(result.events) == events


def test_merge_same_status_changes_nothing() -> None:
    """A line repeating a known node's status is no change."""
    nodes = make_list(node(A))
    result = nodes.merge_body(line(A), now=1.0)
    assert not result.changed_anything and result.events == []


def test_merge_ignores_own_line() -> None:
    """The local node's line never changes it, even saying disabled."""
    nodes = make_list()
    result = nodes.merge_body(line(LOCAL, "disabled"), now=1.0)
    assert nodes.local.status is ACTIVE and not result.changed_anything
    assert result.events == []


def test_merge_line_without_params_leaves_known_status() -> None:
    """A parameterless line adds as active but does not change a known node (Kamailio)."""
    a = node(A, NOT_ACTIVE)
    nodes = make_list(a)
    result = nodes.merge_body(f"{A}\r\nsip:10.0.0.9:5060\r\n".encode(), now=1.0)
    assert a.status is NOT_ACTIVE and result.changed == []
    assert [n.key for n in result.added] == [("10.0.0.9", "5060", "udp")]


def test_merge_line_with_params_but_no_status_means_active() -> None:
    """A known node's line with parameters but no status sets it active."""
    a = node("sip:10.0.0.1:5060;transport=tcp", NOT_ACTIVE)
    nodes = make_list(a)
    result = nodes.merge_body(b"sip:10.0.0.1:5060;transport=tcp\r\n", now=1.0)
    assert a.status is ACTIVE and result.changed == [a]


@pytest.mark.parametrize("wire", ["active", "not_active", "timeout", "pending"])
def test_merge_does_not_revive_disabled_in_5_6_mode(wire: str) -> None:
    """By default (5.6) a disabled node ignores every body line."""
    a = node(A, DISABLED)
    nodes = make_list(a)
    result = nodes.merge_body(line(A, wire), now=1.0)
    assert a.status is DISABLED and not result.changed_anything and result.events == []


def test_merge_revives_disabled_in_6_x_mode() -> None:
    """With reactivate_disabled_from_body a line saying active brings a disabled node back."""
    a = node(A, DISABLED)
    nodes = make_list(a, reactivate=True)
    result = nodes.merge_body(line(A), now=1.0)
    assert a.status is ACTIVE and result.changed == [a]
    assert kinds(result.events) == [(UP, A)]


@pytest.mark.parametrize("wire", ["not_active", "timeout", "pending"])
def test_merge_6_x_mode_ignores_other_lines_for_disabled(wire: str) -> None:
    """In 6.x mode a disabled node still ignores every line but active."""
    a = node(A, DISABLED)
    nodes = make_list(a, reactivate=True)
    assert not nodes.merge_body(line(A, wire), now=1.0).changed_anything
    assert a.status is DISABLED


def test_ping_reply_revives_disabled_node() -> None:
    """In 5.6 mode only a reply from the node (mark_reply) makes a disabled node active."""
    a = node(A, DISABLED)
    nodes = make_list(a)
    nodes.merge_body(line(A), now=1.0)
    assert a.status is DISABLED
    assert kinds(nodes.mark_reply(a, now=2.0)) == [(UP, A)]
    assert a.status is ACTIVE


def test_merge_bad_body_changes_nothing() -> None:
    """One bad line refuses the whole body and leaves the list exactly as it was."""
    a, b = node(A), node(B, NOT_ACTIVE)
    nodes = make_list(a, b)
    before = snapshot(nodes)
    body = line(A, "disabled") + line(B) + line(C) + b"sip:10.0.0.1:5060;status=bogus\r\n"
    with pytest.raises(NodeListError, match="line 4"):
        nodes.merge_body(body, now=5.0, sender=a)
    assert snapshot(nodes) == before


def test_merge_bad_body_then_good_body_has_clean_events() -> None:
    """A refused body leaves no event history behind: the next good body reports normally."""
    nodes = make_list()
    with pytest.raises(NodeListError):
        nodes.merge_body(line(A) + b"sip:10.0.0.1;status=active\r\n", now=1.0)
    assert kinds(nodes.merge_body(line(A), now=2.0).events) == [(UP, A)]


def test_merge_empty_body_changes_nothing() -> None:
    """An empty body (a read-only query) adds and changes nothing."""
    nodes = make_list(node(A))
    before = snapshot(nodes)
    result = nodes.merge_body(b"", now=1.0)
    assert result == MergeResult() and not result.changed_anything
    assert snapshot(nodes) == before


def test_merge_records_sender_last_seen() -> None:
    """The sender's last_seen becomes now, found by key (a fresh Node object works)."""
    a = node(A)
    nodes = make_list(a)
    nodes.merge_body(line(A), now=7.5, sender=node("sip:notification_peer@127.0.0.1:5061"))
    assert a.last_seen == 7.5


def test_merge_sender_added_by_its_own_body() -> None:
    """A sender new to the list, added by its own line, gets last_seen too."""
    nodes = make_list()
    nodes.merge_body(JOIN_REQUEST_BODY, now=3.0, sender=node("sip:127.0.0.1:5172"))
    added = nodes.get("sip:127.0.0.1:5172")
    assert added is not None and added.last_seen == 3.0


def test_merge_unknown_or_local_sender_ignored() -> None:
    """A sender not in the list stays out; the local node gets no last_seen."""
    nodes = make_list()
    nodes.merge_body(line(A), now=3.0, sender=node(B))
    nodes.merge_body(line(A), now=3.0, sender=node(LOCAL))
    assert B not in nodes and nodes.local.last_seen is None


def test_removed_node_held_out_of_other_lists() -> None:
    """Until its hold ends a removed node comes back only by its own list; then any member's list adds it again."""
    nodes = make_list(node(A), node(B))
    nodes.remove(A)
    nodes.hold_out(A, until=10.0)
    result = nodes.merge_body(line(A), now=5.0, sender=node(B))
    assert A not in nodes and result.refused == 1 and not result.changed_anything
    nodes.merge_body(line(A), now=6.0, sender=node(A))
    assert nodes.get(A) is not None
    nodes.remove(A)
    nodes.hold_out(A, until=20.0)
    nodes.merge_body(line(A), now=20.0, sender=node(B))
    assert nodes.get(A) is not None


def test_operator_add_lifts_the_hold() -> None:
    """Adding a held node by hand lifts its hold: removed again later, a third party's list brings it back at once."""
    nodes = make_list(node(B))
    nodes.hold_out(A, until=10.0)
    nodes.add(node(A))
    nodes.remove(A)
    nodes.merge_body(line(A), now=1.0, sender=node(B))
    assert nodes.get(A) is not None


def test_merge_lines_apply_in_order() -> None:
    """A node named twice is added by its first line and changed by its second."""
    nodes = make_list()
    result = nodes.merge_body(line(A) + line(A, "disabled"), now=1.0)
    [a] = result.added
    assert a.status is DISABLED and result.changed == []
    assert kinds(result.events) == [(UP, A), (GONE, A)]


def test_merge_changed_lists_a_node_once() -> None:
    """A known node changed twice by one body is listed once in changed."""
    a = node(A)
    nodes = make_list(a)
    result = nodes.merge_body(line(A, "not_active") + line(A), now=1.0)
    assert result.changed == [a] and a.status is ACTIVE
    assert kinds(result.events) == [(DOWN, A), (UP, A)]


def test_merge_capture_reply_into_joining_node() -> None:
    """5172 merging 5171's captured reply adds 5171 and ignores its own line."""
    nodes = NodeList(Node.from_uri("sip:127.0.0.1:5172"))
    seed = nodes.add(node("sip:127.0.0.1:5171", NOT_ACTIVE, seed=True))
    nodes.mark_reply(seed, now=1.0)
    result = nodes.merge_body(JOIN_REPLY_BODY, now=1.0, sender=seed)
    assert not result.changed_anything
    assert [str(n.uri) for n in nodes] == ["sip:127.0.0.1:5172", "sip:127.0.0.1:5171"]
    assert seed.status is ACTIVE and seed.last_seen == 1.0


# ---------------------------------------------------------------------------
# mark_reply
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "start, events", [(ACTIVE, []), (NOT_ACTIVE, [(UP, A)]), (DISABLED, [(UP, A)])]
)
def test_mark_reply(start: NodeStatus, events: list[tuple[EventKind, str]]) -> None:
    """A 200 makes the node active, resets fail_count and records last_seen."""
    a = node(A, start)
    a.fail_count = 3
    nodes = make_list(a)
    assert kinds(nodes.mark_reply(a, now=9.0)) == events
    assert (a.status, a.fail_count, a.last_seen) == (ACTIVE, 0, 9.0)


def test_mark_reply_finds_node_by_key() -> None:
    """mark_reply with an equal-key Node updates the listed one."""
    a = node(A, NOT_ACTIVE)
    nodes = make_list(a)
    nodes.mark_reply(node(A), now=1.0)
    assert a.status is ACTIVE


def test_mark_reply_unknown_or_local_does_nothing() -> None:
    """A reply from a node no longer listed, or from the local node, changes nothing."""
    nodes = make_list()
    assert nodes.mark_reply(node(A, NOT_ACTIVE), now=1.0) == []
    assert A not in nodes
    assert nodes.mark_reply(nodes.local, now=1.0) == []
    assert nodes.local.last_seen is None


# ---------------------------------------------------------------------------
# mark_timeout
# ---------------------------------------------------------------------------

DEFAULT = TimeoutPolicy()
KEEP_INACTIVE = TimeoutPolicy(remove_inactive=False)
KEEP_DISABLED = TimeoutPolicy(keep_disabled=True)
COUNT = TimeoutPolicy(fail_count_enabled=True)
COUNT_KEEP = TimeoutPolicy(fail_count_enabled=True, keep_disabled=True)
COUNT_2_3 = TimeoutPolicy(
    fail_count_enabled=True, fail_count_threshold_not_active=2, fail_count_threshold_disabled=3
)
COUNT_NO_REMOVE = TimeoutPolicy(fail_count_enabled=True, remove_inactive=False)

# policy, seed, status before, fail_count before ->
#   removed, status after, fail_count after, events
TIMEOUT_CASES = [
    # 5.6 defaults
    (DEFAULT, False, ACTIVE, 0, False, DISABLED, 0, [GONE]),
    (DEFAULT, False, NOT_ACTIVE, 0, False, DISABLED, 0, [GONE]),
    (DEFAULT, False, DISABLED, 0, True, DISABLED, 0, []),
    (DEFAULT, True, ACTIVE, 0, False, NOT_ACTIVE, 0, [DOWN]),
    (DEFAULT, True, NOT_ACTIVE, 0, False, NOT_ACTIVE, 0, []),
    (DEFAULT, True, DISABLED, 0, False, NOT_ACTIVE, 0, []),
    # remove_inactive=0 (6.x)
    (KEEP_INACTIVE, False, ACTIVE, 0, False, NOT_ACTIVE, 0, [DOWN]),
    (KEEP_INACTIVE, False, NOT_ACTIVE, 0, False, NOT_ACTIVE, 0, []),
    (KEEP_INACTIVE, False, DISABLED, 0, True, DISABLED, 0, []),
    (KEEP_INACTIVE, True, ACTIVE, 0, False, NOT_ACTIVE, 0, [DOWN]),
    # keep_disabled (after 6.1.4)
    (KEEP_DISABLED, False, ACTIVE, 0, False, DISABLED, 0, [GONE]),
    (KEEP_DISABLED, False, DISABLED, 0, False, DISABLED, 0, []),
    (KEEP_DISABLED, True, DISABLED, 0, False, DISABLED, 0, []),
    (KEEP_DISABLED, True, ACTIVE, 0, False, NOT_ACTIVE, 0, [DOWN]),
    # fail counting, default thresholds 0 and 1
    (COUNT, False, ACTIVE, 0, False, NOT_ACTIVE, 1, [DOWN]),
    (COUNT, False, NOT_ACTIVE, 0, False, NOT_ACTIVE, 1, []),
    (COUNT, False, NOT_ACTIVE, 1, False, DISABLED, 2, [GONE]),
    (COUNT, False, DISABLED, 2, True, DISABLED, 2, []),
    (COUNT, True, ACTIVE, 0, False, NOT_ACTIVE, 1, [DOWN]),
    (COUNT, True, NOT_ACTIVE, 1, False, DISABLED, 2, [GONE]),
    (COUNT, True, DISABLED, 2, False, DISABLED, 3, []),
    (COUNT_KEEP, False, DISABLED, 2, False, DISABLED, 2, []),
    (COUNT_NO_REMOVE, False, NOT_ACTIVE, 1, False, DISABLED, 2, [GONE]),
    # fail counting, thresholds 2 and 3: strictly greater
    (COUNT_2_3, False, ACTIVE, 0, False, ACTIVE, 1, []),
    (COUNT_2_3, False, ACTIVE, 1, False, ACTIVE, 2, []),
    (COUNT_2_3, False, ACTIVE, 2, False, NOT_ACTIVE, 3, [DOWN]),
    (COUNT_2_3, False, NOT_ACTIVE, 2, False, NOT_ACTIVE, 3, []),
    (COUNT_2_3, False, NOT_ACTIVE, 3, False, DISABLED, 4, [GONE]),
    (COUNT_2_3, False, ACTIVE, 9, False, NOT_ACTIVE, 10, [DOWN]),
    (COUNT_2_3, False, DISABLED, 4, True, DISABLED, 4, []),
]


@pytest.mark.parametrize(
    "policy, seed, before, count, removed, after, count_after, events", TIMEOUT_CASES
)
def test_mark_timeout(
    policy: TimeoutPolicy,
    seed: bool,
    before: NodeStatus,
    count: int,
    removed: bool,
    after: NodeStatus,
    count_after: int,
    events: list[EventKind],
) -> None:
    """Each policy, seed flag, status and fail count leads to Kamailio's outcome for a 408."""
    a = node(A, before, seed=seed)
    a.fail_count = count
    nodes = make_list(a)
    outcome = nodes.mark_timeout(a, policy)
    assert outcome == TimeoutOutcome(removed, after, outcome.events)
    assert [e.kind for e in outcome.events] == events
    assert (A in nodes) is not removed
    assert a.status is after and a.fail_count == count_after


def test_timeout_sequence_5_6() -> None:
    """5.6: a silent node is disabled at the first 408 and deleted at the second."""
    a = node(A)
    nodes = make_list(a)
    first = nodes.mark_timeout(a, DEFAULT)
    second = nodes.mark_timeout(a, DEFAULT)
    assert kinds(first.events) == [(GONE, A)] and second.events == []
    assert second.removed and A not in nodes


def test_timeout_sequence_fail_count_defaults() -> None:
    """6.1 defaults: first 408 not_active, second disabled, third deletes."""
    a = node(A)
    nodes = make_list(a)
    outcomes = [nodes.mark_timeout(a, COUNT) for _ in range(3)]
    assert [(o.removed, o.status) for o in outcomes] == [
        (False, NOT_ACTIVE),
        (False, DISABLED),
        (True, DISABLED),
    ]
    assert [e.kind for o in outcomes for e in o.events] == [DOWN, GONE]


def test_timeout_steps_one_at_a_time() -> None:
    """A high not_active threshold delays both steps: disabled comes one 408 after not_active."""
    policy = TimeoutPolicy(
        fail_count_enabled=True, fail_count_threshold_not_active=5, fail_count_threshold_disabled=1
    )
    a = node(A)
    nodes = make_list(a)
    statuses = [nodes.mark_timeout(a, policy).status for _ in range(7)]
    assert statuses == [ACTIVE] * 5 + [NOT_ACTIVE, DISABLED]


def test_seed_is_never_deleted() -> None:
    """A seed keeps being timed out without ever leaving the list, in every mode."""
    for policy in (DEFAULT, KEEP_INACTIVE, KEEP_DISABLED, COUNT):
        s = node(A, seed=True)
        nodes = make_list(s)
        for t in range(5):
            assert not nodes.mark_timeout(s, policy).removed
        assert nodes.get(A) is s


def test_reply_resets_fail_count_between_timeouts() -> None:
    """A 200 between 408s starts the count again."""
    a = node(A)
    nodes = make_list(a)
    nodes.mark_timeout(a, COUNT)
    nodes.mark_reply(a, 2.0)
    assert nodes.mark_timeout(a, COUNT).status is NOT_ACTIVE
    assert a.fail_count == 1


def test_mark_timeout_unknown_or_local_does_nothing() -> None:
    """A 408 for a node no longer listed, or the local node, changes nothing."""
    nodes = make_list()
    gone = node(A, NOT_ACTIVE)
    assert nodes.mark_timeout(gone, DEFAULT) == TimeoutOutcome(False, NOT_ACTIVE, [])
    assert A not in nodes
    assert nodes.mark_timeout(nodes.local, DEFAULT) == TimeoutOutcome(False, ACTIVE, [])
    assert nodes.local.status is ACTIVE


def test_timeout_policy_defaults_and_frozen() -> None:
    """TimeoutPolicy defaults to Kamailio's modparam defaults and is immutable."""
    assert TimeoutPolicy() == TimeoutPolicy(
        remove_inactive=True,
        keep_disabled=False,
        fail_count_enabled=False,
        fail_count_threshold_not_active=0,
        fail_count_threshold_disabled=1,
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        TimeoutPolicy().remove_inactive = False  # type: ignore[misc]


# ---------------------------------------------------------------------------
# mark_message_timeout
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "policy, before, count, after, count_after, events",
    [
        (DEFAULT, ACTIVE, 0, ACTIVE, 0, []),
        (COUNT, ACTIVE, 0, NOT_ACTIVE, 1, [DOWN]),
        (COUNT, NOT_ACTIVE, 1, NOT_ACTIVE, 1, []),
        (COUNT, DISABLED, 2, DISABLED, 2, []),
        (COUNT_2_3, ACTIVE, 0, ACTIVE, 1, []),
        (COUNT_2_3, ACTIVE, 2, NOT_ACTIVE, 3, [DOWN]),
    ],
)
def test_mark_message_timeout(
    policy: TimeoutPolicy,
    before: NodeStatus,
    count: int,
    after: NodeStatus,
    count_after: int,
    events: list[EventKind],
) -> None:
    """Other channels' 408s only count against active nodes and never disable or delete."""
    a = node(A, before)
    a.fail_count = count
    nodes = make_list(a)
    outcome = nodes.mark_message_timeout(a, policy)
    assert not outcome.removed and outcome.status is after
    assert [e.kind for e in outcome.events] == events
    assert a.status is after and a.fail_count == count_after


def test_mark_message_timeout_unknown_or_local_does_nothing() -> None:
    """A message 408 for an unlisted node or the local node changes nothing."""
    nodes = make_list()
    assert nodes.mark_message_timeout(node(A), COUNT).events == []
    assert nodes.mark_message_timeout(nodes.local, COUNT).status is ACTIVE
    assert nodes.local.fail_count == 0


# ---------------------------------------------------------------------------
# set_status
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "start, status, events",
    [
        (ACTIVE, NOT_ACTIVE, [DOWN]),
        (ACTIVE, DISABLED, [GONE]),
        (NOT_ACTIVE, ACTIVE, [UP]),
        (NOT_ACTIVE, DISABLED, [GONE]),
        (DISABLED, ACTIVE, [UP]),
        (DISABLED, NOT_ACTIVE, []),
        (ACTIVE, ACTIVE, []),
    ],
)
def test_set_status(start: NodeStatus, status: NodeStatus, events: list[EventKind]) -> None:
    """An operator change sets the status and reports the transition's event."""
    a = node(A, start)
    nodes = make_list(a)
    assert [e.kind for e in nodes.set_status(A, status)] == events
    assert a.status is status


def test_set_status_leaves_fail_count_and_last_seen() -> None:
    """An operator change is not contact: fail_count and last_seen stay."""
    a = node(A, NOT_ACTIVE)
    a.fail_count, a.last_seen = 2, 5.0
    nodes = make_list(a)
    nodes.set_status(a, ACTIVE)
    assert (a.fail_count, a.last_seen) == (2, 5.0)


def test_set_status_refuses_local_and_unknown() -> None:
    """The local node's status cannot be set, nor that of a node not listed."""
    nodes = make_list()
    with pytest.raises(ValueError, match="local"):
        nodes.set_status(LOCAL, DISABLED)
    with pytest.raises(ValueError, match="not in the node list"):
        nodes.set_status(A, DISABLED)


# ---------------------------------------------------------------------------
# Events
# ---------------------------------------------------------------------------


def test_event_is_frozen() -> None:
    """Events are immutable values."""
    event = Event(UP, node(A))
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.kind = DOWN  # type: ignore[misc]


def test_event_kind_values() -> None:
    """Event kinds carry Kamailio's event route names."""
    assert [k.value for k in EventKind] == ["peer-up", "peer-down", "peer-disabled"]


def test_no_event_for_local_node() -> None:
    """Nothing that touches the local node reports an event."""
    nodes = make_list()
    events = nodes.merge_body(line(LOCAL, "disabled") + line(LOCAL), now=1.0).events
    events += nodes.mark_reply(nodes.local, 2.0)
    events += nodes.mark_timeout(nodes.local, DEFAULT).events
    assert events == []


def test_never_the_same_event_twice_in_a_row() -> None:
    """disabled -> not_active -> disabled reports peer-disabled once."""
    a = node(A)
    nodes = make_list(a)
    events = nodes.set_status(a, DISABLED)
    events += nodes.set_status(a, NOT_ACTIVE)
    events += nodes.set_status(a, DISABLED)
    assert kinds(events) == [(GONE, A)]


def test_peer_up_not_repeated_across_silent_paths() -> None:
    """A node added active then revived by reply does not report peer-up twice."""
    nodes = make_list()
    added = nodes.merge_body(line(A), now=1.0)
    a = added.added[0]
    a.status = NOT_ACTIVE  # changed behind the list's back: no peer-down was reported
    assert nodes.mark_reply(a, 2.0) == []
    assert kinds(added.events) == [(UP, A)]


def test_up_down_up_disabled_up_sequence() -> None:
    """A node's life reports each transition once, in order."""
    nodes = make_list()
    events = nodes.merge_body(line(A), now=0.0).events
    a = nodes.get(A)
    assert a is not None
    events += nodes.mark_timeout(a, KEEP_INACTIVE).events
    events += nodes.mark_reply(a, 2.0)
    events += nodes.merge_body(line(A, "disabled"), now=3.0).events
    events += nodes.merge_body(line(A), now=4.0).events
    events += nodes.mark_reply(a, 5.0)
    assert kinds(events) == [(UP, A), (DOWN, A), (UP, A), (GONE, A), (UP, A)]


def test_removal_while_active_reports_disabled() -> None:
    """Removing an active node reports peer-disabled."""
    nodes = make_list(node(A))
    events: list[Event] = []
    assert nodes.remove(A, events)
    assert kinds(events) == [(GONE, A)]


def test_removal_while_not_active_reports_disabled() -> None:
    """Removing a not-active node reports peer-disabled too (Kamailio's del_dmq_node)."""
    nodes = make_list(node(A, NOT_ACTIVE))
    events: list[Event] = []
    nodes.remove(A, events)
    assert kinds(events) == [(GONE, A)]


def test_removal_while_disabled_reports_nothing() -> None:
    """A disabled node already reported peer-disabled; removing it reports nothing more."""
    a = node(A)
    nodes = make_list(a)
    first = nodes.set_status(a, DISABLED)
    events: list[Event] = []
    nodes.remove(a, events)
    assert kinds(first) == [(GONE, A)] and events == []


def test_history_forgotten_after_removal() -> None:
    """A node removed and added again reports peer-up afresh."""
    nodes = make_list()
    events = nodes.merge_body(line(A), now=0.0).events
    nodes.remove(A, events)
    events += nodes.merge_body(line(A), now=1.0).events
    assert kinds(events) == [(UP, A), (GONE, A), (UP, A)]


def test_history_forgotten_after_timeout_deletion() -> None:
    """A node deleted by timeouts and seen again reports peer-up, not a duplicate."""
    nodes = make_list()
    events = nodes.merge_body(line(A), now=0.0).events
    a = nodes.get(A)
    assert a is not None
    events += nodes.mark_timeout(a, DEFAULT).events
    events += nodes.mark_timeout(a, DEFAULT).events
    assert A not in nodes
    events += nodes.merge_body(line(A), now=3.0).events
    assert kinds(events) == [(UP, A), (GONE, A), (UP, A)]


def test_events_name_the_listed_node() -> None:
    """An event carries the node object held by the list."""
    a = node(A, NOT_ACTIVE)
    nodes = make_list(a)
    [event] = nodes.mark_reply(node(A), now=1.0)
    assert event.node is a


def test_merge_events_for_several_nodes() -> None:
    """One body reports each node's event, in body order."""
    a, b = node(A), node(B, NOT_ACTIVE)
    nodes = make_list(a, b)
    body = line(A, "disabled") + line(B) + line(C)
    assert kinds(nodes.merge_body(body, now=1.0).events) == [(GONE, A), (UP, B), (UP, C)]


def test_after_disabled_only_peer_up_is_reported() -> None:
    """Even if a status is forced behind the list's back, peer-down never follows peer-disabled."""
    a = node(A)
    nodes = make_list(a)
    events = nodes.set_status(a, DISABLED)
    a.status = ACTIVE  # forced without the list: no peer-up was reported
    events += nodes.set_status(a, NOT_ACTIVE)
    events += nodes.set_status(a, ACTIVE)
    assert kinds(events) == [(GONE, A), (UP, A)]


def test_event_guard_skips_local_node() -> None:
    """The single event gate drops anything about the local node, whoever calls it."""
    nodes = make_list()
    events: list[Event] = []
    nodes._emit(nodes.local, UP, events)
    assert events == []


@pytest.mark.parametrize(
    "agent, version",
    [
        ("kamailio (5.6.3 (x86_64/linux))", (5, 6, 3)),
        ("kamailio (6.1.4 (x86_64/linux))", (6, 1, 4)),
        ("kamailio (6.2.0-dev0 (x86_64/linux))", (6, 2, 0)),
        ("dmq/0.1.0", None),
        ("", None),
        (None, None),
        ("kamailio", None),
    ],
)
def test_kamailio_version(agent: Optional[str], version: Optional[tuple[int, int, int]]) -> None:
    """The release is read from Kamailio's Server / User-Agent text; anything else gives None."""
    assert kamailio_version(agent) == version


def test_moved_names_still_import_from_dmq_node() -> None:
    """NodeList and its companions, now in dmq.nodelist, are still importable from dmq.node."""
    import dmq.node
    import dmq.nodelist

    for name in ("Event", "EventKind", "MergeResult", "NodeList", "TimeoutOutcome", "TimeoutPolicy"):
        assert getattr(dmq.node, name) is getattr(dmq.nodelist, name)
    with pytest.raises(AttributeError):
        dmq.node.NoSuchName  # noqa: B018


# ---------------------------------------------------------------------------
# Bounds and trust
# ---------------------------------------------------------------------------


def many(count: int, start: int = 1) -> bytes:
    """A body listing ``count`` made-up nodes on 10.9.x.y:5060."""
    return b"".join(line(f"sip:10.9.{i // 200}.{i % 200 + 1}:5060") for i in range(start, start + count))


def test_a_stranger_adds_at_most_itself() -> None:
    """An untrusted body adds its sender's own line only; the other lines are refused and counted, known nodes untouched."""
    nodes = make_list(node(A))
    body = line(B) + many(999) + line(A, "disabled")
    result = nodes.merge_body(body, now=1.0, sender=node(B), trusted=False)
    assert [str(n.uri) for n in result.added] == [B]
    assert result.refused == 999
    assert nodes.get(A).status is ACTIVE  # type: ignore[union-attr]
    assert len(nodes) == 3


def test_a_stranger_without_its_own_line_adds_nothing() -> None:
    """An untrusted body that does not name its sender adds nobody."""
    nodes = make_list()
    result = nodes.merge_body(many(3), now=1.0, sender=node(C), trusted=False)
    assert (result.added, result.refused, len(nodes)) == ([], 3, 1)


def test_caps_on_nodes_per_list_and_in_the_list() -> None:
    """A member's list adds at most max_new_per_list nodes and never grows the list past max_nodes; the rest is counted."""
    nodes = NodeList(Node.from_uri(LOCAL), max_nodes=10, max_new_per_list=4)
    first = nodes.merge_body(many(6), now=1.0)
    assert (len(first.added), first.refused, len(nodes)) == (4, 2, 5)
    second = nodes.merge_body(many(20, start=100), now=2.0)
    assert (len(second.added), second.refused, len(nodes)) == (4, 16, 9)
    third = nodes.merge_body(many(20, start=200), now=3.0)
    assert (len(third.added), third.refused, len(nodes)) == (1, 19, 10)


def test_default_caps_suit_a_256_node_cluster() -> None:
    """By default a list of 256 nodes is taken whole, and 1,000 made-up ones are cut at the cap."""
    nodes = make_list()
    assert len(nodes.merge_body(many(255), now=1.0).added) == 255
    result = nodes.merge_body(many(1000, start=300), now=2.0)
    assert len(nodes) <= nodes.max_nodes and result.refused >= 1000 - (nodes.max_nodes - 256)


@pytest.mark.parametrize(
    "uri", ["sip:224.0.0.1:5060", "sip:255.255.255.255:5060", "sip:0.0.0.0:5060", "sip:[ff02::1]:5060", "sip:[::]:5060"]
)
def test_addresses_nothing_is_sent_to_are_refused(uri: str) -> None:
    """Multicast, broadcast and unspecified addresses are never added, even from a member."""
    nodes = make_list()
    result = nodes.merge_body(line(uri) + line(A), now=1.0)
    assert [str(n.uri) for n in result.added] == [A]
    assert result.refused == 1
    assert not Node.from_uri(uri).sendable


def test_format_body_limit_keeps_the_local_line_and_the_newest() -> None:
    """A limited body keeps the local line last and as many of the newest active nodes as fit."""
    nodes = make_list(node(A), node(B), node(C))
    whole = nodes.format_body()
    assert nodes.format_body(limit=len(whole)) == whole
    local_only = nodes.format_body(limit=10)
    assert local_only == line(LOCAL)
    two = nodes.format_body(limit=len(line(C)) + len(line(LOCAL)))
    assert two == line(C) + line(LOCAL)


def test_format_body_follows_every_change() -> None:
    """The body follows additions, status changes and removals at once."""
    nodes = make_list(node(A))
    assert nodes.format_body() == line(A) + line(LOCAL)
    nodes.add(node(B))
    assert nodes.format_body() == line(B) + line(A) + line(LOCAL)
    nodes.set_status(node(A), DISABLED)
    assert nodes.format_body() == line(B) + line(LOCAL)
    nodes.remove(node(B))
    assert nodes.format_body() == line(LOCAL)


# ---------------------------------------------------------------------------
# The plain-line fast path and the parse cache
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "sip:127.0.0.1:5060;status=active",
        "sip:10.255.0.9:1;transport=tcp;status=disabled",
        "sip:192.168.1.1:65535;transport=tls;status=not_active",
        "sip:1.2.3.4:5060;status=timeout",  # the general path
        "sip:010.0.0.1:5060;status=active",  # leading zero: refused by both
        "sip:256.1.1.1:5060;status=active",  # not an IPv4 address: refused by both
        "sip:[::1]:5060;status=active",
    ],
)
def test_plain_lines_read_as_the_general_parser_reads_them(text: str) -> None:
    """A line the fast path takes gives the node, status and flags the general URI parser gives."""
    import dmq.node

    def outcome() -> object:
        try:
            return [(l.node.key, str(l.node.uri), l.node.resolved_ip, l.status, l.has_params) for l in parse_lines(text.encode())]
        except NodeListError as e:
            return str(e)

    fast = outcome()
    plain = dmq.node._PLAIN_LINE
    try:
        dmq.node._PLAIN_LINE = re.compile(r"(?!)")  # nothing matches: every line takes the general path
        general = outcome()
    finally:
        dmq.node._PLAIN_LINE = plain
    assert fast == general


def test_a_cached_body_adds_fresh_nodes() -> None:
    """A sender's unchanged body is parsed once; a node it names that left the list comes back as a new node."""
    nodes = make_list()
    sender = node(A)
    body = line(A) + line(B)
    first = nodes.merge_body(body, now=1.0, sender=sender)
    b = nodes.get(B)
    assert b is not None and b in first.added
    b.fail_count = 3
    nodes.remove(b)
    again = nodes.merge_body(body, now=2.0, sender=sender)
    b2 = nodes.get(B)
    assert b2 is not None and b2 is not b and b2.fail_count == 0 and b2 in again.added
    other = nodes.merge_body(line(C), now=3.0, sender=sender)
    assert [str(n.uri) for n in other.added] == [C]


def test_an_empty_answer_keeps_the_sender_list_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    """A dmq node answers pings with an empty body: that answer does not push its list out of the cache."""
    import dmq.nodelist

    nodes = make_list()
    sender = node(A)
    body = line(A) + line(B) + line(C)
    nodes.merge_body(body, now=1.0, sender=sender)
    parsed: list[bytes] = []
    real = dmq.nodelist.parse_lines
    monkeypatch.setattr(dmq.nodelist, "parse_lines", lambda b: parsed.append(b) or real(b))
    for i in range(3):
        nodes.merge_body(b"", now=2.0 + i, sender=sender)
        nodes.merge_body(body, now=2.5 + i, sender=sender)
    assert b"".join(parsed) == b""


def test_an_unchanged_list_that_changed_nothing_is_not_merged_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """A member's list merged once, with no change to the list since, is only its sender's proof of life;
    any change (a node removed here, a hold) makes the same list count again."""
    nodes = make_list()
    a = node(A)
    body = line(A) + line(B) + line(C)
    nodes.merge_body(body, now=1.0, sender=a)  # adds A, B and C
    nodes.merge_body(body, now=2.0, sender=a)  # changes nothing: remembered as such
    merged: list[bytes] = []
    real = NodeList._parse
    monkeypatch.setattr(NodeList, "_parse", lambda self, b, k: merged.append(b) or real(self, b, k))
    result = nodes.merge_body(body, now=3.0, sender=a)
    assert (merged, result.added, result.changed, result.refused) == ([], [], [], 0)
    listed_a = nodes.get(A)
    assert listed_a is not None and listed_a.last_seen == 3.0
    c = nodes.get(C)
    assert c is not None
    nodes.remove(c)
    again = nodes.merge_body(body, now=4.0, sender=a)
    assert merged == [body] and [str(n.uri) for n in again.added] == [C]
    b = nodes.get(B)
    assert b is not None
    nodes.set_status(b, NodeStatus.NOT_ACTIVE)
    nodes.hold_out(b, until=10.0)
    held = nodes.merge_body(body, now=5.0, sender=a)
    assert held.changed == [] and b.status is NodeStatus.NOT_ACTIVE
    back = nodes.merge_body(body, now=11.0, sender=a)  # the hold is over: A's line counts again
    assert back.changed == [b] and b.status is NodeStatus.ACTIVE
