"""The UDP mutation fuzzer: mutated KDMQ requests against a live node, and the checks on its answers.

:func:`fuzz` sends ``count`` inputs from :mod:`tests.fuzz.mutate` to a :class:`LiveNode`
from a :class:`Member`'s sockets, one input in flight per socket. Every reply must be a
right answer to its input (:func:`tests.fuzz.live.reply_fault`); an input dmq's codec reads
as a request must be answered, exactly once. Between batches the member pings the node
(a node-list request from its own address) and the ping must be answered; the node's RSS
is read before and after. Inputs that fail a check are written to ``save_dir``, with the
node's and the member's addresses turned into placeholders (:func:`to_file`), so that a
file moved to ``tests/fuzz/regressions/`` is replayed by the suite.

Script mode, for the figures of ``docs/reliability.md``::

    .venv/bin/python -m tests.fuzz.run --count 50000 [--seed N] [--save DIR] [--stranger]

``DMQ_FUZZ_SEED`` and ``DMQ_FUZZ_COUNT`` set the seed and the count of the suite's run.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import select
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..helpers import free_address
from .live import LiveNode, Member, reply_fault
from .mutate import mutant, safe

BATCH = 250
"""Inputs between two health pings."""

SOCKETS = 32
"""Inputs in flight at once (one per member socket)."""

QUIET_WAIT = 0.25
"""Seconds an input dmq's codec refuses may go unanswered before its socket takes the next one."""

ANSWER_WAIT = 10.0
"""Seconds an input dmq's codec reads as a request has to be answered (a liveness bound on a loaded machine)."""

_BRANCH = re.compile(rb"(?i)branch\s*=\s*([^;,\s]*)")
"""The first branch parameter of an input: one sent before makes the node take the input for a retransmission."""

PLACEHOLDERS = (b"@NODE_HOST@", b"@NODE_PORT@", b"@MEMBER_HOST@", b"@MEMBER_PORT@")


def default_seed() -> int:
    return int(os.environ.get("DMQ_FUZZ_SEED") or random.SystemRandom().randrange(2**32))


def default_count(fallback: int = 3000) -> int:
    return int(os.environ.get("DMQ_FUZZ_COUNT") or fallback)


def to_file(data: bytes, node: LiveNode, member: Member) -> bytes:
    """``data`` with the node's and member's hosts and ports as placeholders."""
    for value, placeholder in zip((node.host, str(node.port), member.host, str(member.port)), PLACEHOLDERS):
        data = data.replace(value.encode(), placeholder)
    return data


def from_file(data: bytes, node: LiveNode, member: Member) -> bytes:
    """A saved input with the placeholders filled in for ``node`` and ``member``."""
    for value, placeholder in zip((node.host, str(node.port), member.host, str(member.port)), PLACEHOLDERS):
        data = data.replace(placeholder, value.encode())
    return data


def expects_answer(data: bytes) -> bool:
    """
    Whether dmq's codec reads ``data`` as a request that must be answered: not an ACK, and
    a top Via of SIP/2.0 that parses (what even an answer to a malformed request needs).
    """
    from dmq.sip import Request, SIPParseError, parse_message

    try:
        message = parse_message(data)
        return (isinstance(message, Request) and message.method != "ACK" and bool(message.vias)
                and message.vias[0].protocol.upper() == "SIP/2.0")
    except SIPParseError:
        return False


@dataclass
class Report:
    """What a run found."""

    seed: int
    tried: int = 0
    unsafe: int = 0
    reused: int = 0
    """Drawn inputs not sent because a mutation made their branch one sent before (a retransmission, answered as such)."""
    answered: int = 0
    late: int = 0
    wrong: list[tuple[bytes, str]] = field(default_factory=list)
    crashed: bool = False
    pings: list[Optional[float]] = field(default_factory=list)
    rss_before_kib: int = 0
    rss_after_kib: int = 0
    rss_samples: list[tuple[int, int]] = field(default_factory=list)
    """(inputs tried, RSS in KiB) after each batch."""
    seconds: float = 0.0
    saved: Optional[Path] = None

    @property
    def pings_lost(self) -> int:
        return sum(1 for rtt in self.pings if rtt is None)

    @property
    def rss_growth_kib(self) -> int:
        return self.rss_after_kib - self.rss_before_kib

    def lines(self) -> list[str]:
        rtts = sorted(rtt for rtt in self.pings if rtt is not None)
        worst = f"{rtts[-1] * 1000:.1f} ms" if rtts else "-"
        return [
            f"seed {self.seed}",
            f"inputs tried {self.tried} (not sent: {self.unsafe} drawn inputs naming other hosts, "
            f"{self.reused} reusing a branch)",
            f"answered {self.answered}, late answers {self.late}",
            f"crashes {int(self.crashed)}",
            f"wrong or missing replies {len(self.wrong)}",
            f"health pings {len(self.pings)}, unanswered {self.pings_lost}, slowest {worst}",
            f"RSS {self.rss_before_kib} KiB -> {self.rss_after_kib} KiB (growth {self.rss_growth_kib} KiB)",
            "RSS after " + ", ".join(f"{tried}: {kib // 1024} MiB" for tried, kib in self.rss_samples[9::10]),
            f"time {self.seconds:.1f} s",
            f"failing inputs saved in {self.saved}" if self.saved else "no failing input",
        ]


@dataclass
class _Sent:
    data: bytes
    expect: bool
    answered: bool = False


class _Slot:
    """One member socket and what was sent from it lately (a late reply may answer an earlier input)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.recent: list[_Sent] = []
        self.deadline = 0.0

    @property
    def busy(self) -> bool:
        return bool(self.recent) and not self.recent[-1].answered and time.monotonic() < self.deadline


def fuzz(node: LiveNode, member: Member, count: int, seed: int, save_dir: Optional[Path] = None,
         sender: Optional[Member] = None) -> Report:
    """
    Send ``count`` inputs drawn from ``seed``; what happened.

    :param sender: the sockets to send the inputs from, as from their first one's address:
        a stranger's, rate-limited (until a node-list input of its own makes it a member);
        by default ``member``'s. The health pings come from ``member``.
    """
    rng = random.Random(seed)
    report = Report(seed)
    sender = sender or member
    hosts = (node.host, sender.host)
    slots = [_Slot(sock) for sock in sender.sockets]
    by_fd = {slot.sock.fileno(): slot for slot in slots}
    report.rss_before_kib = node.rss_kib()
    started = time.monotonic()

    def fault(data: bytes, why: str) -> None:
        report.wrong.append((data, why))

    def take(slot: _Slot, reply: bytes) -> None:
        for sent in reversed(slot.recent):
            if reply_fault(sent.data, reply) is None:
                if sent.answered:
                    fault(sent.data, f"a second reply: {reply[:60]!r}")
                elif sent is not slot.recent[-1]:
                    report.late += 1
                else:
                    report.answered += 1
                sent.answered = True
                return
        current = slot.recent[-1]
        fault(current.data, f"{reply_fault(current.data, reply)}; reply {reply[:200]!r}")
        current.answered = True

    def poll(timeout: float) -> None:
        readable = select.select([member.sock, sender.sock, *(s.sock for s in slots)], [], [], max(0.0, timeout))[0]
        for sock in readable:
            replies = member.read(sock)
            slot = by_fd.get(sock.fileno())
            for reply in replies:
                if slot is None or not slot.recent:
                    fault(b"", f"a reply to no request: {reply[:200]!r}")
                elif not reply.startswith(b"SIP/2.0 1"):
                    take(slot, reply)

    def retire(slot: _Slot) -> None:
        if slot.recent and not slot.recent[-1].answered and slot.recent[-1].expect:
            fault(slot.recent[-1].data, f"no answer within {ANSWER_WAIT} s")
            slot.recent[-1].answered = True

    branches: set[bytes] = set()
    batch_end = 0
    while report.tried < count and not report.crashed:
        batch_end = min(count, batch_end + BATCH)
        while report.tried < batch_end:
            for slot in slots:
                if report.tried >= batch_end or slot.busy:
                    continue
                retire(slot)
                data = mutant(rng, node.address, (sender.host, sender.port))
                if not safe(data, hosts):
                    report.unsafe += 1
                    continue
                branch = _BRANCH.search(data)
                if branch is not None and branch.group(1) in branches:
                    report.reused += 1
                    continue
                if branch is not None:
                    branches.add(branch.group(1))
                expect = expects_answer(data)
                try:
                    slot.sock.sendto(data, node.address)
                except OSError:  # too long for one datagram
                    continue
                report.tried += 1
                slot.recent = [*slot.recent[-3:], _Sent(data, expect)]
                slot.deadline = time.monotonic() + (ANSWER_WAIT if expect else QUIET_WAIT)
            waits = [slot.deadline - time.monotonic() for slot in slots if slot.busy]
            poll(min(waits) if waits else 0.0)
        # Let the batch finish, then the health ping.
        while deadlines := [slot.deadline for slot in slots if slot.busy]:
            poll(min(deadlines) - time.monotonic())
        poll(0.05)
        for slot in slots:
            retire(slot)
        if not node.running:
            report.crashed = True
            for slot in slots:
                for sent in slot.recent:
                    fault(sent.data, "the node died")
            break
        report.pings.append(member.ping(node))
        report.rss_samples.append((report.tried, node.rss_kib()))
    report.seconds = time.monotonic() - started
    if node.running:
        report.rss_after_kib = node.rss_kib()
    failing = [data for data, _ in report.wrong if data]
    if failing:
        target = save_dir or Path(tempfile.mkdtemp(prefix="dmq-fuzz-"))
        target.mkdir(parents=True, exist_ok=True)
        for index, (data, why) in enumerate(report.wrong):
            if data:
                (target / f"seed{seed}-{index}.sip").write_bytes(to_file(data, node, member))
                (target / f"seed{seed}-{index}.txt").write_text(why + "\n")
        report.saved = target
    return report


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=default_count(50000))
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--save", type=Path, default=None, help="folder for failing inputs (default: a new tmp dir)")
    parser.add_argument("--stranger", action="store_true", help="send from an address that is no member (rate-limited)")
    args = parser.parse_args(argv)
    seed = default_seed() if args.seed is None else args.seed
    with tempfile.TemporaryDirectory() as workdir, Member(SOCKETS) as member, \
            Member(SOCKETS, host=free_address("udp")[0]) as stranger:
        node = LiveNode(member, Path(workdir))
        try:
            report = fuzz(node, member, args.count, seed, args.save, stranger if args.stranger else None)
        finally:
            node.stop()
    print("\n".join(report.lines()))
    return 0 if not report.wrong and not report.crashed and not report.pings_lost else 1


if __name__ == "__main__":
    sys.exit(main())
