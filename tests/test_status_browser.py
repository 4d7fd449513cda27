"""The status page in a real browser: headless Chromium loads the page of a three-node cluster over loopback UDP.

Chromium is Debian's ``chromium`` package (``.ci/run`` installs it). Without it the test is
skipped, saying so; under ``CI=true`` a missing Chromium fails it.
"""

from __future__ import annotations

import os
from typing import Any, Iterator
from urllib.parse import quote

import pytest
import pytest_twisted
from twisted.internet import threads

from dmq import DMQService
from dmq.control import ControlAPI, make_site
from dmq.service import SERVER_NAME

from .browser import Page, chromium, run_chromium, start_cluster, stop_all

TOKEN = "browser t0ken/&"


@pytest.fixture
def chromium_binary() -> str:
    """The Chromium binary; skips the test without one (fails it under CI=true)."""
    binary = chromium()
    if binary is None:
        reason = "chromium is not installed (apt-get install chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; under CI=true it is required", pytrace=False)
        pytest.skip(reason)
    return binary


@pytest.fixture
def cluster(reactor: Any) -> Iterator[list[DMQService]]:
    """A list for the nodes a test starts; every node in it is stopped at teardown."""
    nodes: list[DMQService] = []
    yield nodes
    pytest_twisted.blockon(stop_all(nodes))


@pytest_twisted.inlineCallbacks
def test_chromium_shows_the_cluster(chromium_binary: str, cluster: list[DMQService], reactor: Any) -> Any:
    """Opened with ?token=, the page of a real three-node cluster shows in Chromium every node, active, with its agent and round trip."""
    nodes = yield start_cluster(reactor, cluster)
    first = nodes[0]
    port = reactor.listenTCP(0, make_site(ControlAPI(first), TOKEN), interface="127.0.0.1")
    try:
        url = f"http://127.0.0.1:{port.getHost().port}/?token={quote(TOKEN, safe='')}"
        dom = yield threads.deferToThread(run_chromium, chromium_binary, url, "--dump-dom")
    finally:
        yield port.stopListening()
    page = Page(dom)
    assert {uri: n["status"] for uri, n in page.nodes.items()} == {str(svc.nodes.local.uri): "active" for svc in nodes}
    for svc in nodes:
        cells = page.nodes[str(svc.nodes.local.uri)]["cells"]
        name, agent, rtt = cells[0], cells[3], cells[4]
        assert agent == SERVER_NAME
        if svc is first:
            assert name.endswith("this node") and rtt == "-"
        else:
            assert rtt.endswith(" ms")
    assert page.refresh == f"5; url=?token={quote(TOKEN, safe='')}"
    assert "svg" in page.tags
