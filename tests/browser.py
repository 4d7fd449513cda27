"""A headless Chromium, a small real cluster and a reader of the status page, to look at it as a browser does.

Used by ``tests/test_status.py``, ``tests/test_status_browser.py`` and ``tools/screenshot_status.py`` (which makes
``docs/status.png``). Chromium is Debian's ``chromium`` package; it runs in a subprocess with a
new, empty profile, so nothing of a previous run or of the machine's own profile is used.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from typing import Any, Callable, Iterable, Optional

from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks

from dmq import DMQService, Peer

from .helpers import free_address
from .interop.kamailio import eventually

__all__ = ["CHROMIUM_FLAGS", "Page", "chromium", "cluster_converged", "run_chromium", "start_cluster", "stop_all"]

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)
"""Headless, nothing fetched but the page itself; no sandbox, as tests may run as root."""


def chromium() -> Optional[str]:
    """The path of the Chromium binary, or None when it is not installed."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def run_chromium(binary: str, url: str, *args: str, timeout: float = 90.0) -> str:
    """Run headless Chromium on ``url`` with ``args`` (``--dump-dom``, ``--screenshot=...``); its stdout.

    Blocking: call it off the reactor thread (``deferToThread``). Raises
    :class:`subprocess.CalledProcessError` (with Chromium's stderr) when it fails.
    """
    with tempfile.TemporaryDirectory(prefix="dmq-chromium-") as profile:
        done = subprocess.run(
            [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, url],
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    if done.returncode != 0:
        raise subprocess.CalledProcessError(done.returncode, done.args, done.stdout, done.stderr)
    return done.stdout.decode("utf-8", "replace")


def cluster_converged(nodes: list[DMQService]) -> bool:
    """Whether every node lists every node active, and the first knows each other's agent and round trip."""
    want = {str(n.nodes.local.uri) for n in nodes}
    for svc in nodes:
        if {str(n.uri) for n in svc.nodes if n.status.value == "active"} != want:
            return False
    first = nodes[0]
    return all(n.agent and n.key in first.rtt for n in first.nodes.others())


@inlineCallbacks
def start_cluster(
    reactor: Any,
    nodes: list[DMQService],
    count: int = 3,
    timeout: float = 10.0,
    peers: Callable[[], Iterable[Peer]] = tuple,
    **kw: Any,
) -> Any:
    """Start ``count`` DMQService nodes over loopback UDP, each on a 127.x address of its own,
    the first the seed of the others; fire with ``nodes`` once :func:`cluster_converged`.

    Each node is appended to ``nodes`` as it starts, so the caller can stop them with
    :func:`stop_all` whatever happens. ``peers()`` gives the peers each node registers.
    Keyword arguments go to every :class:`DMQService` (``ping_interval`` 1 s and ``t1``
    0.1 s unless given).
    """
    kw.setdefault("ping_interval", 1)
    kw.setdefault("t1", 0.1)
    seeds: list[str] = []
    for _ in range(count):
        host, port = free_address("udp")
        svc = DMQService(f"sip:{host}:{port}", seeds, reactor=reactor, **kw)
        nodes.append(svc)
        for peer in peers():
            svc.register_peer(peer)
        svc.startService()
        yield svc.when_listening()
        seeds = seeds or [str(svc.nodes.local.uri)]
    yield eventually(lambda: cluster_converged(nodes), timeout=timeout, reactor=reactor)
    return nodes


def stop_all(nodes: list[DMQService]) -> "Deferred[Any]":
    """Stop every running node; fires when all have stopped."""
    return gatherResults([svc.stopService() for svc in nodes if svc.running])


class Page(HTMLParser):
    """What a browser would make of a status page (or a part of one, e.g. the chart).

    :ivar nodes: node URI -> ``{"status": data-status, "cells": [cell texts]}``.
    :ivar channels: the channel names of the channel rows.
    :ivar peers: peer channel -> the text of its status cell (texts of nested tags apart by a space).
    :ivar tags: every tag, in order.
    :ivar refresh: the ``content`` of the refresh ``<meta>``, or None.
    :ivar polylines: the chart lines by class (``received``, ``sent``): their points.
    :ivar links: the ``href`` of every ``<a>``.
    """

    def __init__(self, html: str) -> None:
        super().__init__()
        self.nodes: dict[str, dict[str, Any]] = {}
        self.channels: list[str] = []
        self.peers: dict[str, str] = {}
        self.tags: list[str] = []
        self.refresh: Optional[str] = None
        self.polylines: dict[str, list[tuple[float, float]]] = {}
        self.links: list[str] = []
        self._row: Optional[dict[str, Any]] = None
        self._cells: list[str] = []
        self._depth = 0
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, Optional[str]]]) -> None:
        """Note the tag; read the refresh, links and chart lines; open a node, channel or peer row."""
        a = dict(attrs)
        self.tags.append(tag)
        if tag == "meta" and a.get("http-equiv") == "refresh":
            self.refresh = a.get("content")
        if tag == "a":
            self.links.append(a.get("href") or "")
        if tag == "polyline":
            points = [tuple(float(v) for v in p.split(",")) for p in (a.get("points") or "").split()]
            self.polylines[a.get("class") or ""] = points  # type: ignore[assignment]
        if tag == "tr" and a.get("class") in ("node", "channel", "peer"):
            self._row = {"kind": a["class"], "attrs": a}
            self._cells = []
            self._depth = 0
        elif self._row is not None:
            if tag == "td" and self._depth == 0:
                self._cells.append("")
            if tag == "table":
                self._depth += 1

    def handle_endtag(self, tag: str) -> None:
        """Close a row (not one of a table nested in its cells) and file it."""
        if self._row is None:
            return
        if tag == "table":
            self._depth -= 1
        if tag == "tr" and self._depth == 0:
            row, cells = self._row, [" ".join(c.split()) for c in self._cells]
            self._row = None
            if row["kind"] == "node":
                self.nodes[row["attrs"]["data-uri"]] = {"status": row["attrs"]["data-status"], "cells": cells}
            elif row["kind"] == "channel":
                self.channels.append(row["attrs"]["data-channel"])
            else:
                self.peers[row["attrs"]["data-channel"]] = cells[1]

    def handle_data(self, data: str) -> None:
        """Collect the text of the current cell of a row."""
        if self._row is not None and self._cells:
            self._cells[-1] += " " + data
