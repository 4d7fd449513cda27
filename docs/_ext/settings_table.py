"""
A Sphinx extension that writes the configuration reference from the settings
table itself (:data:`dmq.settings.SETTINGS`), so the page lists every option
of ``twistd dmq`` and every TOML key with its default and the Kamailio
modparam it mirrors, and cannot fall behind them.

A page holds a ``{dmq-settings}`` directive; the table replaces it when the
site is built.
"""

from __future__ import annotations

from typing import Any

from docutils import nodes
from docutils.parsers.rst import Directive

from dmq.settings import SETTINGS, Setting

KINDS = {
    "str": "text",
    "int": "integer",
    "ms": "milliseconds",
    "bool": "0 or 1",
    "flag": "flag",
    "list": "repeatable",
    "path": "path",
}


def _default(setting: Setting) -> str:
    default = setting.default
    if default in (None, "", []):
        return "-"
    if setting.kind in ("bool", "flag"):
        return str(int(bool(default)))
    return str(default)


def _cell(text: str, literal: bool = False) -> nodes.entry:
    entry = nodes.entry()
    paragraph = nodes.paragraph()
    paragraph += nodes.literal(text=text) if literal and text != "-" else nodes.Text(text)
    entry += paragraph
    return entry


class SettingsTable(Directive):
    """``{dmq-settings}``: one row per setting (option, TOML key, kind, default, modparam, meaning)."""

    has_content = False

    def run(self) -> list[Any]:
        headers = ("option", "TOML key", "kind", "default", "Kamailio modparam", "meaning")
        table = nodes.table(classes=["dmq-settings"])
        group = nodes.tgroup(cols=len(headers))
        table += group
        for width in (18, 16, 9, 12, 18, 40):
            group += nodes.colspec(colwidth=width)
        head = nodes.thead()
        row = nodes.row()
        for title in headers:
            row += _cell(title)
        head += row
        group += head
        body = nodes.tbody()
        for setting in SETTINGS:
            row = nodes.row()
            row += _cell(f"--{setting.option}" if setting.cli else "-", literal=True)
            row += _cell(setting.key, literal=True)
            row += _cell(KINDS.get(setting.kind, setting.kind))
            row += _cell(_default(setting), literal=True)
            row += _cell(str(setting.modparam) if setting.modparam else "-")
            row += _cell(setting.help)
            body += row
        group += body
        return [table]


def setup(app: Any) -> dict[str, Any]:
    """Register the directive."""
    app.add_directive("dmq-settings", SettingsTable)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
