"""The documentation site: it builds with warnings as errors, and the code it shows runs."""

from __future__ import annotations

import html
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

needs_sphinx = pytest.mark.skipif(
    sys.version_info < (3, 10)
    or (
        (importlib.util.find_spec("sphinx") is None or importlib.util.find_spec("myst_parser") is None)
        and os.environ.get("CI") != "true"
    ),
    reason="the docs build on Python 3.10+ (Sphinx 8; CI builds them on CPython) with sphinx and myst-parser "
    "installed (pip install -e '.[dev]')",
)

# Names every reader of the API reference looks for, by the public path they are documented under.
PUBLIC_NAMES = (
    "dmq.service.DMQService",
    "dmq.service.DMQService.replicate",
    "dmq.service.DMQService.is_from_node",
    "dmq.service.DMQService.add_event_listener",
    "dmq.peer.Peer",
    "dmq.peer.Peer.handle_message",
    "dmq.peer.Peer.init",
    "dmq.peer.PeerResponse",
    "dmq.peer.PeerError",
    "dmq.node.Node",
    "dmq.changes.EventKind",
    "dmq.nodelist.NodeList",
    "dmq.fanout.Outbox",
    "dmq.replicated.peer.ReplicatedPeer",
    "dmq.testing.FakeCluster",
    "dmq.peers.htable.HTablePeer",
    "dmq.sip.Request",
    "dmq.sip.parse_message",
)

_CAPTIONED = re.compile(r"```\{code-block\} python\n:caption: (?P<name>[\w.]+)\n\n(?P<code>.*?)\n```\n", re.S)


def captioned_blocks(page: Path) -> dict[str, str]:
    """The Python code blocks of a Markdown page that carry a file name as caption, by that name."""
    return {m["name"]: m["code"] + "\n" for m in _CAPTIONED.finditer(page.read_text(encoding="utf-8"))}


@needs_sphinx
def test_site_builds_with_warnings_as_errors(tmp_path: Path) -> None:
    """sphinx-build -W builds every page of docs/, and the API reference documents the public names."""
    out = tmp_path / "html"
    build = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
         "-d", str(tmp_path / "doctrees"), str(DOCS), str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    pages = sorted(p.stem for p in DOCS.glob("*.md"))
    missing = [page for page in pages if not (out / f"{page}.html").is_file()]
    assert not missing, f"pages not built: {missing}"
    api = (out / "api.html").read_text(encoding="utf-8")
    undocumented = [name for name in PUBLIC_NAMES if f'id="{name}"' not in api]
    assert not undocumented, f"missing from the API reference: {undocumented}"
    # The configuration reference lists every option twistd dmq --help shows, and every TOML key.
    reference = html.unescape((out / "configuration.html").read_text(encoding="utf-8"))
    helped = subprocess.run(
        [str(Path(sys.executable).with_name("twistd")), "dmq", "--help"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    ).stdout
    options = set(re.findall(r"^\s+(?:-\w, )?(--[a-z][a-z0-9-]*)", helped, re.M)) - {"--help", "--version", "--config"}
    assert len(options) > 30, helped
    assert sorted(o for o in options if o not in reference) == []
    from dmq.settings import SETTINGS

    assert sorted(s.key for s in SETTINGS if f">{s.key}<" not in reference) == []


def test_peer_page_example_passes(tmp_path: Path) -> None:
    """The peer and the test of docs/peers.md, written out as they stand, pass under pytest."""
    blocks = captioned_blocks(DOCS / "peers.md")
    assert set(blocks) == {"bans.py", "test_bans.py"}, sorted(blocks)
    for name, code in blocks.items():
        (tmp_path / name).write_text(code, encoding="utf-8")
    tests = len(re.findall(r"^    def test_", blocks["test_bans.py"], re.M))
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_bans.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"{tests} passed" in run.stdout, run.stdout
