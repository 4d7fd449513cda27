"""
What the benchmark scenarios stand on: the C load client, dmq node processes, Kamailio nodes
with the bench's trigger route, and the readings from ``/proc`` (CPU, memory, bound sockets).

Kamailio nodes come from the interop harness (:class:`tests.interop.kamailio.KamailioNode`:
``-DD -E``, a config in a temp folder, stopped by pid); dmq nodes are ``bench/node.py``
processes, each in a process group of its own, so both are measured the same way: every
process of the group, read from ``/proc/<pid>/stat`` and ``/proc/<pid>/smaps_rollup``.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from tests.interop.kamailio import (  # noqa: E402
    KamailioNode,
    RawMember,
    default_build,
    free_address,
    group_processes,
)

BUILD = ROOT / "build" / "bench"
PYPY_VENV_PYTHON = ROOT / ".venv-pypy" / "bin" / "python"
PYPY_PYTHON: Optional[Path] = PYPY_VENV_PYTHON if PYPY_VENV_PYTHON.exists() else None
"""The interpreter of the PyPy runs (``make .venv-pypy/.installed``); None: no PyPy rows."""
CLIENT_SOURCE = HERE / "kdmqload.c"
CLIENT = BUILD / "kdmqload"
CLIENT_FLAGS = ["-O2", "-Wall", "-Wextra"]

#: Settings both implementations run with (Kamailio's names; dmq's equivalents in ``NodeSettings``).
PING_INTERVAL = 5
T1_MS = 125
T2_MS = 4000
TIMEOUT_MS = 64 * T1_MS
"""A transaction's timeout: dmq's is 64*T1; Kamailio gets ``fr_timer`` = the same."""
ANSWER_KEPT_MS = 64 * max(T1_MS, 500)
"""How long dmq keeps each answer for retransmissions (Timer J): 64 times its T1, and never less than
64 times the RFC's 500 ms, as a peer on the default T1 retransmits for that long."""
KAMAILIO_TABLE = "t=>size=12;dmqreplicate=1;"
KAMAILIO_CHILDREN = 2
KAMAILIO_SHM_MB = 256

TRIGGER_ROUTE = """
    if (is_method("MESSAGE") && $rU == "set") {
        $sht(t=>$hdr(X-Key)) = $rb;
        sl_send_reply("200", "OK");
        exit;
    }"""


# -- the load client ------------------------------------------------------------------------


def build_client() -> Path:
    """Compile ``bench/kdmqload.c`` into ``build/bench/kdmqload`` unless the binary is newer."""
    BUILD.mkdir(parents=True, exist_ok=True)
    if not CLIENT.exists() or CLIENT.stat().st_mtime < CLIENT_SOURCE.stat().st_mtime:
        subprocess.run(["gcc", *CLIENT_FLAGS, "-o", str(CLIENT), str(CLIENT_SOURCE)], check=True)
    return CLIENT


def client_command(*args: Any) -> list[str]:
    """The command line of one client run (for the report and for :func:`run_client`)."""
    return [str(CLIENT), *(str(a) for a in args)]


def run_client(*args: Any, timeout: float = 300) -> dict[str, Any]:
    """Run the client with ``args`` and return its JSON line."""
    done = subprocess.run(client_command(*args), capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"kdmqload {' '.join(map(str, args))} failed: {done.stderr.strip()}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def join_as_member(host: str, node: tuple[str, int]) -> int:
    """Make a UDP port of ``host`` a member of ``node``'s cluster; return the port, free for the client.

    The node lists the address as an active member from then on (and pings it: the client answers).
    dmq answers at most 50 requests/s from an address that is not a member, Kamailio any number;
    in a cluster the KDMQ traffic comes from members, so the load client is made one.
    """
    with RawMember(host) as member:
        member.join(_Target(node))  # type: ignore[arg-type]
        return member.port


class _Target:
    """What :meth:`RawMember.join` needs to know of a node: its address and URI."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.address = address
        self.uri = f"sip:{address[0]}:{address[1]}"


# -- /proc readings -------------------------------------------------------------------------


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU seconds of the given processes (a vanished one counts 0)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                raw = f.read()
        except OSError:
            continue
        fields = raw[raw.rfind(b")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])
    return total / ticks


def memory_kb(pids: Iterable[int]) -> tuple[int, int]:
    """Resident and proportional set sizes of the given processes together, in KiB."""
    rss = pss = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1])
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1])
        except OSError:
            continue
    return rss, pss


def bound_udp() -> set[tuple[str, int]]:
    """The (host, port) pairs UDP sockets are bound to on this machine (IPv4)."""
    found = set()
    with open("/proc/net/udp") as rows:
        next(rows, None)
        for row in rows:
            local = row.split(None, 2)[1]
            address, _, port = local.partition(":")
            found.add((socket.inet_ntoa(struct.pack("=I", int(address, 16))), int(port, 16)))
    return found


class BindWatcher:
    """Notes when each of some UDP addresses is first bound, reading ``/proc/net/udp`` every ms."""

    def __init__(self, addresses: Iterable[tuple[str, int]]) -> None:
        """Watch ``addresses`` from now on."""
        self.pending = set(addresses)
        self.seen: dict[tuple[str, int], float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while self.pending and not self._stop.is_set():
            bound = bound_udp()
            now = time.time()
            for address in list(self.pending):
                if address in bound:
                    self.seen[address] = now
                    self.pending.discard(address)
            time.sleep(0.001)

    def when(self, address: tuple[str, int], timeout: float = 30) -> float:
        """The time ``address`` was first seen bound (waits for it)."""
        deadline = time.monotonic() + timeout
        while address not in self.seen:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{address} was not bound within {timeout}s")
            time.sleep(0.002)
        return self.seen[address]

    def stop(self) -> None:
        """Stop watching."""
        self._stop.set()


def machine_load() -> str:
    """The load averages and how many processes run, from ``/proc/loadavg``."""
    with open("/proc/loadavg") as f:
        return f.read().strip()


# -- dmq nodes --------------------------------------------------------------------------------


class DmqProcess:
    """A ``bench/node.py`` process (one or more dmq nodes) in a process group of its own."""

    def __init__(
        self,
        addresses: Sequence[tuple[str, int]],
        seeds: Sequence[str] = (),
        *,
        htable: bool = False,
        trigger: bool = False,
        watch_uri: Optional[str] = None,
        ping_interval: float = PING_INTERVAL,
        t1_ms: int = T1_MS,
        python: Optional[Path] = None,
    ) -> None:
        """
        Start the process with a node on each of ``addresses``; :meth:`wait_listening` waits for them.

        :param python: the interpreter (default: this one; :data:`PYPY_PYTHON` for the PyPy runs).
        """
        self.addresses = list(addresses)
        argv = [str(python or sys.executable), str(HERE / "node.py"), "--ping-interval", str(ping_interval),
                "--t1", str(t1_ms / 1000), "--t2", str(T2_MS / 1000)]
        for host, port in self.addresses:
            argv += ["--node", f"{host}:{port}"]
        for seed in seeds:
            argv += ["--seed", seed]
        if htable:
            argv.append("--htable")
        if trigger:
            argv.append("--trigger")
        if watch_uri:
            argv += ["--watch-uri", watch_uri]
        self._spawn(argv)

    def _spawn(self, argv: list[str]) -> None:
        """Run ``argv`` in a process group of its own and follow the lines it writes."""
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True, cwd=ROOT, start_new_session=True)
        self.lines: "queue.Queue[str]" = queue.Queue()
        self.active: dict[int, list[tuple[float, int]]] = {}
        self.status: dict[int, list[tuple[float, str]]] = {}
        self.listening: Optional[float] = None
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    @property
    def uris(self) -> list[str]:
        """The nodes' ``sip:HOST:PORT``."""
        return [f"sip:{h}:{p}" for h, p in self.addresses]

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            word, _, rest = line.strip().partition(" ")
            parts = rest.split()
            with self._lock:
                if word == "LISTENING":
                    self.listening = float(parts[0])
                elif word == "ACTIVE":
                    self.active.setdefault(int(parts[0]), []).append((float(parts[1]), int(parts[2])))
                elif word == "STATUS":
                    self.status.setdefault(int(parts[0]), []).append((float(parts[1]), parts[2]))
            self.lines.put(line.strip())

    def wait_listening(self, timeout: float = 30) -> float:
        """Wait until every node of the process is bound; return when that was."""
        deadline = time.monotonic() + timeout
        while self.listening is None:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dmq nodes {self.addresses} did not start")
            time.sleep(0.005)
        return self.listening

    def changes_after(self, since: float) -> int:
        """How many times a node of the process changed its count of active or known others after ``since``."""
        with self._lock:
            return sum(1 for history in self.active.values() for when, _ in history if when > since)

    def converged_at(self, expected: int) -> Optional[float]:
        """When the last node of the process came to list ``expected`` active others (None: not yet)."""
        with self._lock:
            times = []
            for index in range(len(self.addresses)):
                history = self.active.get(index, [])
                if not history or history[-1][1] != expected:
                    return None
                # the start of the final run of ``expected``
                at = history[-1][0]
                for when, count in reversed(history):
                    if count != expected:
                        break
                    at = when
                times.append(at)
            return max(times)

    def detected_at(self, index: int, since: float) -> Optional[float]:
        """When node ``index`` first listed the watched node as anything but active after ``since`` (None: not yet)."""
        with self._lock:
            for when, status in self.status.get(index, []):
                if when >= since and status != "active":
                    return when
        return None

    def pids(self) -> list[int]:
        """The processes of the group."""
        return group_processes(self.proc.pid)

    def kill(self) -> float:
        """SIGKILL the process group; return when."""
        at = time.time()
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        return at

    def stop(self) -> None:
        """Close standard input (the nodes stop), SIGKILL after 5 s."""
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.kill()


class FloorProcess(DmqProcess):
    """``bench/floor.py``: the inbound bench's yardstick, a minimal Twisted responder on CPython."""

    def __init__(self, address: tuple[str, int]) -> None:
        """Start it on ``address``; :meth:`wait_listening` waits for its socket."""
        self.addresses = [address]
        self._spawn([sys.executable, str(HERE / "floor.py"), "--node", f"{address[0]}:{address[1]}"])


class TwistdNode:
    """``twistd -n dmq`` as an operator runs it: a plain node with no peer, no control API, no TLS."""

    def __init__(self, directory: Path, address: tuple[str, int], python: Optional[Path] = None) -> None:
        """Start it on ``address``, from ``directory`` (its working folder), with the ``twistd`` beside
        ``python`` (default: this interpreter)."""
        directory.mkdir(parents=True, exist_ok=True)
        twistd = Path(python or sys.executable).parent / "twistd"
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        self.proc = subprocess.Popen(
            [str(twistd), "-n", "--pidfile=", "dmq", "--server-address", f"sip:{address[0]}:{address[1]}",
             "--control", "none"],
            cwd=directory, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def pids(self) -> list[int]:
        """The processes of the node."""
        return group_processes(self.proc.pid)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s."""
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(5)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


# -- Kamailio nodes ---------------------------------------------------------------------------


class BenchKamailio(KamailioNode):
    """A harness node with the bench's settings and a trigger: ``MESSAGE sip:set@`` sets ``$sht(t=>X-Key)``."""

    def __init__(self, directory: Path, address: tuple[str, int], seeds: Sequence[str] = ()) -> None:
        """A node on ``address`` (not started) with the timers and table the dmq nodes have too."""
        super().__init__(
            directory, address[1], list(seeds), host=address[0], build=default_build(),
            ping_interval=PING_INTERVAL, fr_timer_ms=TIMEOUT_MS, tables=(KAMAILIO_TABLE,),
            extra_modparams=[("tm", "retr_timer1", T1_MS), ("tm", "retr_timer2", T2_MS)],
            shm_mb=KAMAILIO_SHM_MB, debug=1, children=KAMAILIO_CHILDREN,
        )

    def config_text(self) -> str:
        """The harness config with the trigger route first in ``request_route``."""
        text = super().config_text()
        return text.replace("request_route {", "request_route {" + TRIGGER_ROUTE, 1)

    def pids(self) -> list[int]:
        """The processes of the node."""
        assert self.pid is not None
        return group_processes(self.pid)

    def active_others(self) -> int:
        """How many other nodes this node lists as active."""
        return sum(1 for n in self.list_nodes() if not n.get("local") and n.get("status") == "active")


def kamailio_version() -> str:
    """The version of the Kamailio the bench runs."""
    return default_build().label


def new_addresses(count: int) -> list[tuple[str, int]]:
    """``count`` loopback addresses, each on a host of its own."""
    return [free_address("udp") for _ in range(count)]
