"""The package as it ships: what ``setup.py`` puts in a source distribution."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_distribution_carries_every_module(tmp_path: Path) -> None:
    """Every module of every ``dmq`` package and the twistd plugin are in the sdist (an install from
    it has them all, not only an editable install)."""
    # In a copy of its own: an sdist in the tree would reuse the file list of an earlier build.
    source = tmp_path / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "dropin.cache")
    for name in ("dmq", "twisted"):
        shutil.copytree(ROOT / name, source / name, ignore=ignore)
    for name in ("setup.py", "README.md"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path)], cwd=source, check=True,
                   capture_output=True)
    (archive,) = tmp_path.glob("*.tar.gz")
    with tarfile.open(archive) as tar:
        shipped = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    modules = {str(path.relative_to(ROOT)) for path in (ROOT / "dmq").rglob("*.py")}
    assert {"dmq/peers/usrloc/peer.py", "dmq/peers/dialog/peer.py", "dmq/sip/udp.py"} <= modules
    assert sorted(modules - shipped) == []
    assert "twisted/plugins/dmq_plugin.py" in shipped
