"""Helpers shared by the test modules: free ports, a loopback address per node, the liveness check, a send function answered by hand.

Nothing here depends on the ``dmq`` package, so the Kamailio harness
(:mod:`tests.interop.kamailio`) can use it and stay an independent witness.

Every DMQ node of a test (Kamailio or Python) gets its own loopback address from
:func:`free_address`: from 5.8 on, Kamailio finds an unknown node of a received node list
by IP alone, so two nodes on 127.0.0.1 never learn each other. All of 127.0.0.0/8 reaches
the loopback interface on Linux.
"""

from __future__ import annotations

import ipaddress
import secrets
import select
import signal
import socket
import struct
import subprocess
import threading
import time
from typing import Any, Callable, Iterable, TypeVar

from twisted.internet.defer import Deferred

__all__ = [
    "ManualSend", "assert_alive", "free_address", "free_port", "probe_host", "stop_process", "wait_for_line",
    "wait_until",
]

T = TypeVar("T")

_PROTOS: dict[str, tuple[int, ...]] = {
    "udp": (socket.SOCK_DGRAM,),
    "tcp": (socket.SOCK_STREAM,),
    "udp+tcp": (socket.SOCK_DGRAM, socket.SOCK_STREAM),
    "both": (socket.SOCK_DGRAM, socket.SOCK_STREAM),
}

# Hosts are drawn from 127.1.0.0 up to 127.254.255.255: 127.0.x.x holds 127.0.0.1 (kept for
# probes and for tests on one address), 127.0.0.53 and Debian's 127.0.1.1 hostname entry.
_FIRST_HOST = int(ipaddress.IPv4Address("127.1.0.0"))
_LAST_HOST = int(ipaddress.IPv4Address("127.254.255.255"))

_lock = threading.Lock()
_handed_out_ports: set[int] = set()
_handed_out_hosts: set[str] = set()
_next_host: int | None = None
_probe_host: str | None = None


def _ephemeral_range() -> tuple[int, int]:
    """Return the kernel's ephemeral port range (``ip_local_port_range``)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as ports:
            low, high = (int(field) for field in ports.read().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999


def _kinds(proto: str) -> tuple[int, ...]:
    """The socket types ``proto`` names; ValueError for an unknown one."""
    if proto not in _PROTOS:
        raise ValueError(f"unknown proto {proto!r}: use udp, tcp or udp+tcp")
    return _PROTOS[proto]


def _bindable(host: str, port: int, kind: int) -> bool:
    """Tell whether ``host``:``port`` can be bound with socket type ``kind``."""
    with socket.socket(socket.AF_INET, kind) as sock:
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _pick_port(host: str, kinds: Iterable[int]) -> int:
    """A port bindable on ``host`` for every kind in ``kinds``, never handed out before; caller holds the lock.

    Ports are drawn at random below the kernel's ephemeral range (from 20000 up), so the
    ephemeral sockets tests open meanwhile cannot take a port before its node binds it.
    """
    kinds = tuple(kinds)
    low = _ephemeral_range()[0]
    first, last = (20000, low - 1) if low > 21000 else (low, 65535)
    for _ in range(500):
        port = first + secrets.randbelow(last - first + 1)
        if port in _handed_out_ports:
            continue
        if all(_bindable(host, port, kind) for kind in kinds):
            _handed_out_ports.add(port)
            return port
    raise RuntimeError(f"no free port found on {host}")


def free_port(proto: str = "udp", host: str = "127.0.0.1") -> int:
    """Pick a port of ``host`` (127.0.0.1 by default) that is free right now.

    ``proto`` is ``"udp"``, ``"tcp"``, or ``"udp+tcp"`` (also ``"both"``) for a port that is
    free for both at once. A port is never handed out twice by one process, on any host.
    """
    kinds = _kinds(proto)
    with _lock:
        return _pick_port(host, kinds)


def _hosts_in_use() -> set[str]:
    """The IPv4 addresses some socket on this machine is bound to (from /proc/net)."""
    used: set[str] = set()
    for table in ("udp", "tcp"):
        try:
            with open(f"/proc/net/{table}") as rows:
                next(rows, None)
                for row in rows:
                    fields = row.split()
                    if len(fields) > 1:
                        raw = int(fields[1].partition(":")[0], 16)
                        used.add(socket.inet_ntoa(struct.pack("=I", raw)))
        except (OSError, ValueError):
            continue
    return used


def _new_host() -> str:
    """A 127.x.y.z host no socket is bound to and this process never handed out; caller holds the lock.

    Hosts follow each other from a random start, so that pytest runs going on at the same
    time on this machine use hosts far apart; the /proc check skips any that is taken anyway.
    """
    global _next_host
    if _next_host is None:
        _next_host = _FIRST_HOST + secrets.randbelow(_LAST_HOST - _FIRST_HOST)
    in_use = _hosts_in_use()
    for _ in range(10_000):
        number = _next_host
        _next_host = _FIRST_HOST if number >= _LAST_HOST else number + 1
        if number & 0xFF in (0, 255):
            continue
        host = str(ipaddress.IPv4Address(number))
        if host in _handed_out_hosts or host in in_use:
            continue
        _handed_out_hosts.add(host)
        return host
    raise RuntimeError("no free loopback host found")


def free_address(proto: str = "udp") -> tuple[str, int]:
    """A (host, port) for one test node: a 127.x.y.z host of its own and a port free on it for ``proto``.

    No host is handed out twice by one process (nor 127.0.0.1), so every node a test starts
    has an IP no other node of the run has; its port is also one no other node of the run has.
    ``proto`` is as for :func:`free_port`.
    """
    kinds = _kinds(proto)
    with _lock:
        for _ in range(20):
            host = _new_host()
            try:
                return host, _pick_port(host, kinds)
            except RuntimeError:
                continue
    raise RuntimeError(f"no free {proto} address found on loopback")


def probe_host() -> str:
    """The 127.x.y.z host this process sends probes and RPC-by-SIP requests from (no node gets it)."""
    global _probe_host
    with _lock:
        if _probe_host is None:
            _probe_host = _new_host()
        return _probe_host


def assert_alive(*nodes: Any, timeout: float = 1.0) -> None:
    """Assert that every node still runs and answers a fresh node-list query within ``timeout`` s.

    A node is a Kamailio node of the harness (anything with ``host``, ``port`` and
    ``running``: a node that is not running fails at once) or a (host, port) pair. The query
    is :func:`tests.interop.kamailio.liveness_probe`.
    """
    from tests.interop.kamailio import liveness_probe

    for node in nodes:
        if isinstance(node, tuple):
            host, port = node
        else:
            assert node.running, f"{node!r} died"
            host, port = node.host, node.port
        assert liveness_probe(host, port, timeout), f"DMQ node {host}:{port} did not answer a node-list query"


def stop_process(process: "subprocess.Popen[bytes]", timeout: float = 15.0) -> bytes:
    """SIGTERM a process a test started, SIGKILL it if it lingers; its output."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        out, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, _ = process.communicate()
    return out or b""


def wait_until(predicate: Callable[[], T], timeout: float = 5.0, interval: float = 0.05) -> T:
    """Poll ``predicate`` (blocking) until it returns a truthy value and return that value.

    Raises AssertionError naming the last value when ``timeout`` seconds pass first.
    Exceptions raised by ``predicate`` propagate at once.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition not met within {timeout}s; last value: {value!r}")
        time.sleep(interval)


class ManualSend:
    """
    A send function ``(node, body) -> Deferred[int]`` (what :class:`dmq.fanout.Outbox`
    takes) that keeps every message and its Deferred for the test to answer.

    :ivar sent: ``(node, body, Deferred)`` of every message, in the order sent.
    """

    def __init__(self) -> None:
        self.sent: list[tuple[Any, bytes, Deferred[int]]] = []

    def __call__(self, node: Any, body: bytes) -> "Deferred[int]":
        d: Deferred[int] = Deferred()
        self.sent.append((node, body, d))
        return d

    def bodies(self, node: Any = None) -> list[bytes]:
        """What went out so far (to ``node`` only, when given)."""
        return [body for n, body, _ in self.sent if node is None or n is node]

    def answer(self, body: bytes, code: int = 200) -> None:
        """Answer ``code`` to the one message sent with ``body`` that is still unanswered."""
        [d] = [d for _, b, d in self.sent if b == body and not d.called]
        d.callback(code)


def wait_for_line(process: "subprocess.Popen[bytes]", marker: bytes, timeout: float) -> bytes:
    """Read ``process``'s output until a line holds ``marker`` and return what was read, that line included.

    AssertionError when the process exits or ``timeout`` s pass first.

    ``process`` must have been started with ``bufsize=0``, so that select() sees every line not read yet.
    """
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    seen = []
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"no {marker!r} line within {timeout}s: {seen}"
        if select.select([process.stdout], [], [], left)[0]:
            line = process.stdout.readline()
            assert line, f"the process exited: {seen}"
            seen.append(line)
            if marker in line:
                return b"".join(seen)
