"""The floors of dmq: every runtime import points down (or sideways within a floor), and nothing imports in a circle."""

from __future__ import annotations

import ast
import fnmatch
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "dmq"

FLOORS: list[list[str]] = [
    ["dmq", "dmq.errors", "dmq.interfaces", "dmq.hashing"],
    ["dmq.sip.uri"],
    ["dmq.sip.address"],
    ["dmq.sip.headers"],
    ["dmq.sip.fields"],
    ["dmq.sip.message"],
    ["dmq.sip.parse", "dmq.sip.build"],
    ["dmq.sip"],
    ["dmq.sip.handler", "dmq.sip.expiry"],
    ["dmq.sip.tls", "dmq.sip.udp", "dmq.sip.stream"],
    ["dmq.sip.transport"],
    ["dmq.sip.client"],
    ["dmq.sip.transaction"],
    ["dmq.node"],
    ["dmq.changes"],
    ["dmq.nodelist"],
    ["dmq.resolve"],
    ["dmq.peer"],
    ["dmq.fanout"],
    ["dmq.membership", "dmq.seeds"],
    ["dmq.notification", "dmq.dispatch"],
    ["dmq.replicated.wire", "dmq.replicated.rpc", "dmq.replicated.snapshot"],
    ["dmq.replicated.link", "dmq.replicated.sync"],
    ["dmq.replicated.peer", "dmq.replicated"],
    ["dmq.service"],
    ["dmq.peers.*.table", "dmq.peers.*.match", "dmq.peers.*.wire"],
    ["dmq.peers.*.rpc", "dmq.peers.*.peer"],
    ["dmq.peers.*", "dmq.peers"],
    ["dmq.views"],
    ["dmq.testing", "dmq.control", "dmq.status", "dmq.metrics", "dmq.manhole", "dmq.heap"],
    ["dmq.settings"],
    ["dmq.config"],
    ["dmq.tap"],
    ["dmq.ctl"],
]
"""The floors, bottom first; a module may import from its own floor and the floors below."""

ALIASES = {("dmq.node", "dmq.nodelist"): "names that moved to dmq.nodelist stay importable from dmq.node"}
"""Upward imports made only to keep an old import path working."""


def module_name(path: Path) -> str:
    """The dotted name of a module file of the package."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def floor_of(name: str) -> int:
    """The index of the floor ``name`` is on; fails for a module no floor lists."""
    for index, patterns in enumerate(FLOORS):
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns):
            return index
    raise AssertionError(f"{name} is on no floor: add it to FLOORS in {__file__}")


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def runtime_imports(tree: ast.AST, package: str) -> Iterator[str]:
    """The dmq modules a module imports when it runs (anywhere but under ``if TYPE_CHECKING:``)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _type_checking(node):
            yield from (name for child in node.orelse for name in runtime_imports(child, package))
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                yield candidate if (PACKAGE.parent / (candidate.replace(".", "/") + ".py")).exists() or (
                    PACKAGE.parent / candidate.replace(".", "/") / "__init__.py"
                ).exists() else base
        else:
            yield from runtime_imports(node, package)


def modules() -> dict[str, set[str]]:
    """Every module of the package and the dmq modules it imports at run time."""
    found: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = module_name(path)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        found[name] = {target for target in runtime_imports(tree, package) if target.split(".")[0] == "dmq"}
    return found


def test_every_module_is_on_a_floor() -> None:
    """FLOORS places every module of the package (a new module must be given its floor)."""
    for name in modules():
        floor_of(name)


def test_imports_point_down() -> None:
    """No module imports, at run time, from a floor above its own (TYPE_CHECKING imports do not count)."""
    upward = []
    for name, targets in modules().items():
        for target in targets:
            if floor_of(target) > floor_of(name) and (name, target) not in ALIASES:
                upward.append(f"{name} (floor {floor_of(name)}) imports {target} (floor {floor_of(target)})")
    assert upward == []


def test_no_import_cycles() -> None:
    """The runtime imports between modules form no cycle (same-floor imports included)."""
    graph = {name: {t for t in targets if t != name and (name, t) not in ALIASES} for name, targets in modules().items()}
    state: dict[str, int] = {}

    def visit(name: str, trail: list[str]) -> None:
        state[name] = 1
        for target in graph.get(name, ()):
            if state.get(target) == 1:
                raise AssertionError("import cycle: " + " -> ".join(trail + [name, target]))
            if state.get(target) is None:
                visit(target, trail + [name])
        state[name] = 2

    for name in graph:
        if name not in state:
            visit(name, [])


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    """runtime_imports finds imports in functions and ignores those under TYPE_CHECKING."""
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from dmq.service import DMQService\n"
        "def f():\n    from dmq.tap import Options\n"
        "import dmq.node\n"
    )
    found = set(runtime_imports(ast.parse(source), "dmq"))
    assert {"dmq.tap", "dmq.node"} <= found
    assert "dmq.service" not in found
    assert floor_of("dmq.tap") > floor_of("dmq.node")
