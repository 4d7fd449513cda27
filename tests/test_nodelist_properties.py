"""Property tests (hypothesis) for the node-list body parser and merge (dmq.node, dmq.nodelist).

(a) Any body, random bytes or a damaged valid one, is either parsed or refused with
    NodeListError: never another exception.
(b) Blank lines, white space around lines, LF or CRLF line ends and a missing last line
    end change nothing: the body parses to what its clean form parses to.
(c) A list's own body parses back to its active nodes and their statuses.
(d) Merging any body into a list respects the caps (max_nodes, max_new_per_list), adds at
    most the sender for a stranger, never adds an address nothing may be sent to, and a
    refused body leaves the list as it was.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dmq.node import Node, NodeListError, NodeStatus, key_uri, parse_lines
from dmq.nodelist import NodeList

_QUIET = [HealthCheck.too_slow, HealthCheck.data_too_large]


def _examples(n: int) -> settings:
    return settings(max_examples=n, deadline=None, suppress_health_check=_QUIET)


LOCAL = "sip:127.0.0.1:5060"

hosts = st.one_of(
    st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t))),
    st.sampled_from(["node-a.example", "b.example.", "[::1]", "[2001:db8::7]", "localhost"]),
)
ports = st.integers(1, 65535)
transports = st.sampled_from(["", ";transport=udp", ";transport=tcp", ";transport=tls", ";transport=TCP"])
statuses = st.sampled_from(["", ";status=active", ";status=not_active", ";status=disabled", ";status=pending"])
users = st.sampled_from(["", "notification_peer@", "u@"])
valid_lines = st.builds(lambda u, h, p, t, s: f"sip:{u}{h}:{p}{t}{s}", users, hosts, ports, transports, statuses)
NASTY = ["", " ", "\t", "\r", "\n", "\r\n", ";", ":", "@", "%", "<", ">", "\x00", "\xff", "é", "sip:", "status=", "=",
         "[", "]", "a" * 1100]


def _body(lines: list[str], ending: str = "\r\n") -> bytes:
    return "".join(f"{line}{ending}" for line in lines).encode("utf-8", "surrogateescape")


def _outcome(body: bytes) -> object:
    """The parsed (URI text, status) pairs, or NodeListError."""
    try:
        return [(str(line.node.uri), line.status, line.has_params) for line in parse_lines(body)]
    except NodeListError:
        return NodeListError


@_examples(300)
@given(st.binary(max_size=2000))
def test_any_bytes_parse_or_are_refused(body: bytes) -> None:
    """Random bytes: parsed, or NodeListError."""
    _outcome(body)


@_examples(300)
@given(st.lists(valid_lines, min_size=1, max_size=8),
       st.lists(st.tuples(st.integers(0, 10**6), st.sampled_from(NASTY)), min_size=1, max_size=4))
def test_damaged_bodies_parse_or_are_refused(lines: list[str], edits: list[tuple[int, str]]) -> None:
    """Valid bodies with text put in anywhere: parsed, or NodeListError; what parses, written again, reads the same."""
    text = "\r\n".join(lines)
    for position, nasty in edits:
        at = position % (len(text) + 1)
        text = text[:at] + nasty + text[at:]
    try:
        parsed = parse_lines(text.encode("utf-8", "surrogateescape"))
    except NodeListError:
        return
    again = parse_lines(_body([f"{key_uri(line.node.key)};status={line.status.value}" for line in parsed]))
    assert [(line.node.key, line.status) for line in again] == [(line.node.key, line.status) for line in parsed]


@_examples(300)
@given(
    st.lists(valid_lines, min_size=0, max_size=8),
    st.lists(st.tuples(st.sampled_from(["", " ", "\t", "  \t "]), st.sampled_from(["", " ", "\t", " \t"])),
             min_size=8, max_size=8),
    st.lists(st.integers(0, 3), min_size=9, max_size=9),
    st.sampled_from(["\r\n", "\n"]),
    st.booleans(),
)
def test_blank_lines_and_white_space_change_nothing(lines: list[str], pads: list[tuple[str, str]],
                                                    blanks: list[int], ending: str, last_ending: bool) -> None:
    """White space around lines, blank lines anywhere, LF or CRLF, no last line end: the clean body's parse."""
    clean = _outcome(_body(lines))
    parts: list[str] = []
    for index, line in enumerate(lines):
        parts += [pads[index][0] * (b % 2) for b in range(blanks[index])]
        parts.append(f"{pads[index][0]}{line}{pads[index][1]}")
    parts += [" \t"] * blanks[-1]
    text = ending.join(parts) + (ending if last_ending else "")
    assert _outcome(text.encode()) == clean


@_examples(150)
@given(st.lists(st.tuples(st.integers(1, 200), ports, st.sampled_from(list(NodeStatus))), max_size=30))
def test_a_list_reads_its_own_body_back(members: list[tuple[int, int, NodeStatus]]) -> None:
    """format_body parses back to the active remote nodes (newest first), then the local node."""
    nodes = NodeList(Node.from_uri(LOCAL))
    for last, port, status in members:
        nodes.add(Node.from_uri(f"sip:10.0.0.{last}:{port}", status=status))
    parsed = [(line.node.key, line.status) for line in parse_lines(nodes.format_body())]
    expected = [(n.key, NodeStatus.ACTIVE) for n in reversed(nodes.active())] + [(nodes.local.key, NodeStatus.ACTIVE)]
    assert parsed == expected


def _body_lines() -> st.SearchStrategy[list[str]]:
    near = st.builds(lambda last, port, s: f"sip:10.1.{last // 250}.{last % 250 + 1}:{port}{s}",
                     st.integers(0, 2000), st.sampled_from([5060, 5061]), statuses)
    return st.lists(st.one_of(near, valid_lines, st.sampled_from(["sip:224.0.0.1:5060", "sip:0.0.0.0:5060",
                                                                   "sip:255.255.255.255:5060", "not a uri"])),
                    max_size=60)


@_examples(200)
@given(_body_lines(), st.integers(2, 40), st.integers(1, 20), st.booleans(), st.integers(0, 30))
def test_merge_respects_caps_and_trust(lines: list[str], max_nodes: int, max_new: int, trusted: bool,
                                       known: int) -> None:
    """Any body: the list stays within its caps, a stranger adds at most itself, refused bodies change nothing."""
    nodes = NodeList(Node.from_uri(LOCAL), max_nodes=max_nodes, max_new_per_list=max_new)
    for index in range(min(known, max_nodes - 1)):
        nodes.add(Node.from_uri(f"sip:10.1.0.{index + 1}:5060"))
    sender = Node.from_uri(lines[0]) if lines and lines[0].startswith("sip:") else Node.from_uri("sip:10.2.0.1:5060")
    before = [(n.key, n.status) for n in nodes]
    size = len(nodes)
    try:
        result = nodes.merge_body(_body(lines), now=1.0, sender=sender, trusted=trusted)
    except NodeListError:
        assert [(n.key, n.status) for n in nodes] == before
        return
    assert len(nodes) <= max(max_nodes, size)
    assert len(result.added) <= max_new
    assert len(nodes) == size + len(result.added)
    assert all(n.sendable for n in result.added)
    if not trusted:
        assert {n.key for n in result.added} <= {sender.key}
        assert [(n.key, n.status) for n in nodes if n.key != sender.key] == [
            (key, status) for key, status in before if key != sender.key]
