"""Real processes for fault tests: dmq nodes run by ``twistd -n dmq``, and network namespaces with iptables.

:class:`DmqProcess` is one dmq node in a process of its own (so that it can be killed
with SIGKILL), reached through its JSON-RPC control API. :class:`Namespace` is a
network namespace this process creates and deletes: nodes run in it under
``ip netns exec``, its iptables rules drop datagrams at random (``statistic``) or by
source address (a partition), and :meth:`Namespace.entered` lets this thread's own
sockets (RPC, probes) live in it for a while. Nothing here touches iptables or
addresses outside a namespace it created.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator, Sequence

from ..helpers import free_address, free_port, wait_until
from ..interop.kamailio import group_processes

__all__ = ["DmqProcess", "Namespace", "TWISTD", "require_root_tools", "tables_equal"]

TWISTD = str(Path(sys.executable).with_name("twistd"))

_CLONE_NEWNET = 0x40000000


def require_root_tools() -> None:
    """Fail (never skip) unless this runs as root with ``ip`` and ``iptables``: the fault tests need both."""
    missing = [tool for tool in ("ip", "iptables") if shutil.which(tool) is None]
    assert not missing, f"fault tests need {' and '.join(missing)} (apt-get install iptables iproute2)"
    assert os.geteuid() == 0, "fault tests need root (network namespaces and iptables)"


class Namespace:
    """
    A network namespace of this test (``ip netns add``), its loopback up, deleted by :meth:`delete`.

    ``hosts`` (name -> address) fills ``/etc/netns/NAME/hosts``, which ``ip netns exec``
    shows its commands as ``/etc/hosts``; :meth:`set_host` rewrites it in place, so that
    commands already running see the change.
    """

    def __init__(self, hosts: dict[str, str] | None = None) -> None:
        require_root_tools()
        self.name = f"dmqf{secrets.token_hex(4)}"
        self.etc = Path("/etc/netns") / self.name
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        try:
            self.run("ip", "link", "set", "lo", "up")
            if hosts is not None:
                self.etc.mkdir(parents=True)
                self._hosts = dict(hosts)
                self._write_hosts()
        except BaseException:
            self.delete()
            raise

    def _write_hosts(self) -> None:
        lines = ["127.0.0.1 localhost"] + [f"{address} {name}" for name, address in self._hosts.items()]
        with open(self.etc / "hosts", "r+" if (self.etc / "hosts").exists() else "w") as hosts:
            hosts.seek(0)
            hosts.write("\n".join(lines) + "\n")
            hosts.truncate()

    def set_host(self, name: str, address: str) -> None:
        """Make ``name`` resolve to ``address`` in this namespace from now on (the file keeps its inode)."""
        self._hosts[name] = address
        self._write_hosts()

    def command(self, *argv: str) -> list[str]:
        """``argv`` run inside this namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside this namespace; CalledProcessError when it fails."""
        return subprocess.run(self.command(*argv), check=True, capture_output=True, text=True)

    def iptables(self, *rule: str) -> None:
        """Run ``iptables RULE...`` in this namespace (and only there)."""
        self.run("iptables", *rule)

    def drop_at_random(self, probability: float) -> None:
        """Drop that share of every UDP datagram in the namespace (each crosses INPUT once on loopback)."""
        self.iptables("-A", "INPUT", "-p", "udp", "-m", "statistic", "--mode", "random",
                      "--probability", f"{probability:.4f}", "-j", "DROP")

    def partition(self, side: Sequence[str], other: Sequence[str]) -> None:
        """Drop every UDP datagram between the addresses of ``side`` and those of ``other`` (both ways)."""
        for a in side:
            for b in other:
                for source, target in ((a, b), (b, a)):
                    self.iptables("-A", "INPUT", "-p", "udp", "-s", source, "-d", target, "-j", "DROP")

    def flush(self) -> None:
        """Remove every iptables rule of the namespace (heals a partition, ends the loss)."""
        self.iptables("-F", "INPUT")

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """Within the block, sockets this thread opens belong to this namespace (``setns``); back after."""
        libc = ctypes.CDLL(None, use_errno=True)
        with open("/proc/thread-self/ns/net") as home, open(f"/run/netns/{self.name}") as target:
            if libc.setns(target.fileno(), _CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns into the test's namespace failed")
            try:
                yield
            finally:
                if libc.setns(home.fileno(), _CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns back to the test process's namespace failed")

    def wrap(self, binary: str, folder: Path) -> str:
        """A script in ``folder`` that runs ``binary`` with its arguments inside this namespace (same pid)."""
        script = Path(folder) / f"{Path(binary).name}-in-{self.name}"
        script.write_text(f'#!/bin/sh\nexec ip netns exec {self.name} {binary} "$@"\n')
        script.chmod(0o755)
        return str(script)

    def delete(self) -> None:
        """Delete the namespace (its rules go with it) and its /etc/netns folder."""
        subprocess.run(["ip", "netns", "delete", self.name], check=False, capture_output=True)
        shutil.rmtree(self.etc, ignore_errors=True)


class DmqProcess:
    """
    One dmq node run by ``twistd -n dmq`` (in ``namespace`` when given) with htable ``t`` and a control API.

    ``seeds`` are notification addresses (``sip:HOST:PORT``; a host name is looked up by the
    node). ``options`` are more ``twistd dmq`` options, ``("--t1", "100")`` and the like.
    RPC goes over HTTP to the control API, from inside the namespace when there is one.
    """

    def __init__(self, directory: Path, seeds: Sequence[str] = (), *, address: tuple[str, int] | None = None,
                 namespace: Namespace | None = None, ping_interval: float = 1, t1_ms: int = 100,
                 options: Sequence[str] = ()) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.host, self.port = address or free_address("udp")
        self.control_port = free_port("tcp", self.host) if namespace is None else 8060
        self.seeds = list(seeds)
        self.namespace = namespace
        self.ping_interval = ping_interval
        self.t1_ms = t1_ms
        self.options = list(options)
        self.log_path = self.directory / f"dmq-{self.host}-{self.port}.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        """The node's ``sip:HOST:PORT``."""
        return f"sip:{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        """Whether the twistd process lives."""
        return self._proc is not None and self._proc.poll() is None

    def __repr__(self) -> str:
        return f"<dmq node {self.uri}{' in ' + self.namespace.name if self.namespace else ''}>"

    def command(self) -> list[str]:
        """The twistd command line."""
        argv = [TWISTD, "-n", "--pidfile=", "dmq", "--server-address", self.uri,
                "--control", f"tcp:{self.control_port}:interface={self.host}",
                "--ping-interval", f"{self.ping_interval:g}", "--t1", str(self.t1_ms), "--htable", "t"]
        for seed in self.seeds:
            argv += ["--notification-address", seed]
        argv += self.options
        return self.namespace.command(*argv) if self.namespace else argv

    def start(self, timeout: float = 30.0) -> None:
        """Start the node and wait until its control API answers."""
        assert not self.running, f"{self!r} is already running"
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== start {time.strftime('%H:%M:%S')} =====\n".encode())
            log.flush()
            self._proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=log,
                                          stderr=subprocess.STDOUT, cwd=self.directory, env=env,
                                          start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            assert self.running, f"{self!r} exited at start:\n{self.log_tail()}"
            try:
                self.rpc("dmq.list_nodes", timeout=1)
                return
            except OSError:
                pass
            assert time.monotonic() < deadline, f"{self!r}: no control API within {timeout}s:\n{self.log_tail()}"
            time.sleep(0.1)

    def _signal_group(self, sig: int) -> None:
        assert self._proc is not None
        try:
            os.killpg(self._proc.pid, sig)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        """SIGKILL the node, as a crash would: no leave message."""
        if self._proc is None:
            return
        self._signal_group(signal.SIGKILL)
        self._proc.wait()
        wait_until(lambda: not group_processes(self._proc.pid), timeout=10)  # type: ignore[union-attr]

    def stop(self) -> None:
        """SIGTERM the node (it leaves the cluster), SIGKILL what is left after 10 s."""
        if self._proc is None or self._proc.poll() is not None:
            return
        self._signal_group(signal.SIGTERM)
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        self.kill()

    def log_tail(self, lines: int = 30) -> str:
        """The last lines the node logged."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    # -- control API ----------------------------------------------------------------------------

    def rpc(self, method: str, *params: Any, timeout: float = 5.0) -> Any:
        """Call ``method`` on the control API; the ``result`` (AssertionError on an ``error``)."""
        body = json.dumps({"jsonrpc": "2.0", "method": method, "params": list(params), "id": 1}).encode()
        request = urllib.request.Request(f"http://{self.host}:{self.control_port}/RPC", data=body,
                                         headers={"Content-Type": "application/json"})
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with contextlib.ExitStack() as stack:
            if self.namespace is not None:
                stack.enter_context(self.namespace.entered())
            with opener.open(request, timeout=timeout) as answer:
                reply = json.loads(answer.read())
        assert "error" not in reply, f"{self!r} {method}: {reply['error']}"
        return reply["result"]

    def list_nodes(self) -> dict[str, str]:
        """``sip:HOST:PORT`` -> status of every node this one lists, itself included."""
        return {f"sip:{n['host']}:{n['port']}": n["status"] for n in self.rpc("dmq.list_nodes")}

    def htable_items(self, table: str = "t") -> dict[str, Any]:
        """The cells of ``table`` as {name: value}."""
        return {cell["name"]: cell["value"] for slot in self.rpc("htable.dump", table) for cell in slot["slot"]}

    def stats(self) -> dict[str, Any]:
        """``dmq.stats``: the node's counters."""
        stats: dict[str, Any] = self.rpc("dmq.stats")
        return stats


def tables_equal(*nodes: Any, table: str = "t") -> dict[str, Any] | None:
    """The table all ``nodes`` (dmq processes or Kamailio nodes) hold when they hold the same one, else None."""
    items = [node.htable_items(table) for node in nodes]
    return items[0] if all(i == items[0] for i in items[1:]) else None
