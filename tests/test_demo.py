"""examples/demo.py (`make demo`): a cluster on loopback, its node lists and a replicated key, and a clean stop."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import free_address, wait_for_line
from tests.interop.kamailio import find_builds, group_processes

DEMO = Path(__file__).resolve().parent.parent / "examples" / "demo.py"

_HEADER = re.compile(r"^  (sip:\S+)  (Kamailio [\d.]+|dmq [\d.]+) +pid (\d+)", re.M)
_NODE_LIST = re.compile(r"^node list of (sip:\S+) \(.+?\):\n((?:  .*\n)+)", re.M)
_SET = re.compile(r"^htable greetings: hello set to '(.*)' on (sip:\S+)$", re.M)
_READ = re.compile(r"^  (sip:\S+) reads greetings\[hello\] = '(.*)'$", re.M)
_FOLDER = re.compile(r"configs and logs in (\S+)")


def demo_command(uris: list[str], *options: str) -> list[str]:
    """The demo run on the given node addresses."""
    return [sys.executable, str(DEMO), "--nodes", *(u.removeprefix("sip:") for u in uris), *options]


def three_addresses() -> list[str]:
    """Three node addresses on loopback, each on a host of its own."""
    return ["sip:%s:%d" % free_address("udp") for _ in range(3)]


def check_output(output: str, uris: list[str], kinds: list[str]) -> list[int]:
    """Assert the demo printed every node (of ``kinds``), every node list complete, and the key on every node.

    Returns the pids the demo named.
    """
    headers = _HEADER.findall(output)
    assert [(uri, label.split()[0]) for uri, label, _ in headers] == list(zip(uris, kinds)), output
    lists = dict(_NODE_LIST.findall(output))
    assert sorted(lists) == sorted(uris), output
    for uri, block in lists.items():
        rows = [line.split() for line in block.splitlines()]
        assert sorted(row[0] for row in rows) == sorted(uris), f"node list of {uri}:\n{block}"
        assert all(row[1] == "active" for row in rows), f"node list of {uri}:\n{block}"
        assert [row[0] for row in rows if "(this node)" in " ".join(row)] == [uri], f"node list of {uri}:\n{block}"
    [(value, setter)] = _SET.findall(output)
    assert setter == uris[0]
    assert sorted(_READ.findall(output)) == sorted((uri, value) for uri in uris), output
    return [int(pid) for _, _, pid in headers]


def assert_all_stopped(output: str, pids: list[int]) -> None:
    """No process of any node is left, and the demo's temp folder is gone."""
    left = {pid: group_processes(pid) for pid in pids}
    assert not any(left.values()), f"processes left: {left}"
    [folder] = _FOLDER.findall(output)
    assert not os.path.exists(folder), f"{folder} was not removed"


def run_once(command: list[str]) -> str:
    """Run the demo with --once; its output, after checking that it exited 0."""
    done = subprocess.run([*command, "--once"], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_demo_with_kamailio() -> None:
    """With Kamailio: two Kamailio nodes and a dmq node list each other, all read the key set on the first, all stop."""
    builds = [b for b in find_builds() if not b.missing][:2]
    if not builds:
        if os.environ.get("CI") == "true":
            pytest.fail("no usable Kamailio build (under CI=true one is required)", pytrace=False)
        pytest.skip("no usable Kamailio build")
    uris = three_addresses()
    options = [f"--kamailio={b.binary}:{b.module_dir}" for b in builds]
    output = run_once(demo_command(uris, *options))
    pids = check_output(output, uris, ["Kamailio", "Kamailio", "dmq"])
    versions = [label.split()[1] for _, label, _ in _HEADER.findall(output)][:2]
    assert set(versions) == {b.label for b in builds}, output
    assert_all_stopped(output, pids)


def test_demo_python_only() -> None:
    """Forced Python-only: three dmq nodes list each other, all read the key set on the first, all stop."""
    uris = three_addresses()
    output = run_once(demo_command(uris, "--python-only"))
    assert_all_stopped(output, check_output(output, uris, ["dmq", "dmq", "dmq"]))


def test_demo_stops_everything_on_ctrl_c() -> None:
    """Without --once the cluster keeps running until SIGINT (Ctrl-C), then every node is stopped by pid."""
    uris = three_addresses()
    process = subprocess.Popen(demo_command(uris, "--python-only"), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, bufsize=0)
    try:
        shown = wait_for_line(process, b"Ctrl-C stops it", timeout=120)
        assert process.poll() is None
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    output = (shown + rest).decode()
    assert process.returncode == 0, output
    pids = check_output(output, uris, ["dmq", "dmq", "dmq"])
    stopped = [line for line in output.splitlines() if line.startswith("stopped ")]
    assert stopped == [f"stopped {uri} (pid {pid})" for uri, pid in reversed(list(zip(uris, pids)))], output
    assert_all_stopped(output, pids)
