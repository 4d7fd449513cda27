"""
The cell tests of htable's remove actions, as Kamailio runs them: POSIX
extended regexes the way ``regcomp(REG_EXTENDED|REG_ICASE|REG_NEWLINE)``
reads them, and ``strncmp``-style prefix, suffix and substring tests.
"""

from __future__ import annotations

import re
from typing import Callable

from dmq.peers.htable.table import Cell
from dmq.peers.htable.wire import Action

__all__ = ["compile_posix_regex", "matcher"]

# POSIX bracket classes Kamailio's regcomp() knows and Python's re does not.
_POSIX_CLASSES = {
    "[:alpha:]": "a-zA-Z",
    "[:digit:]": "0-9",
    "[:alnum:]": "a-zA-Z0-9",
    "[:upper:]": "A-Z",
    "[:lower:]": "a-z",
    "[:space:]": r" \t\n\r\f\v",
    "[:blank:]": r" \t",
    "[:xdigit:]": "0-9A-Fa-f",
    "[:punct:]": r"!-/:-@\[-`{-~",
}


def compile_posix_regex(pattern: str) -> "re.Pattern[str]":
    """
    Compile a POSIX extended regex the way Kamailio's ``sht_rm_name_re``
    does: case-insensitive, ``^``/``$`` at line breaks, unanchored search.
    POSIX bracket classes (``[[:digit:]]``) are translated.

    :raises ValueError: for an empty or invalid pattern.
    """
    if not pattern:
        raise ValueError("empty pattern")
    translated = pattern
    for posix, python in _POSIX_CLASSES.items():
        translated = translated.replace(posix, python)
    try:
        return re.compile(translated, re.IGNORECASE | re.MULTILINE)
    except re.error as e:
        raise ValueError(f"bad regex {pattern!r}: {e}") from None


def matcher(action: Action, pattern: str, by_value: bool) -> Callable[[str, Cell], bool]:
    """
    The cell test of a remove action (5 regex, 6 prefix, 7 suffix, 8
    substring), on names or, ``by_value``, on string values (integer cells
    never match by value, as in Kamailio).

    :raises ValueError: for an empty pattern or a bad regex.
    """
    if not pattern:
        raise ValueError("empty pattern")
    test: Callable[[str], bool]
    if action is Action.RM_CELL_RE:
        regex = compile_posix_regex(pattern)
        test = lambda text: regex.search(text) is not None  # noqa: E731
    elif action is Action.RM_CELL_SW:
        test = lambda text: text.startswith(pattern)  # noqa: E731
    elif action is Action.RM_CELL_EW:
        test = lambda text: text.endswith(pattern)  # noqa: E731
    elif action is Action.RM_CELL_IN:
        test = lambda text: pattern in text  # noqa: E731
    else:
        raise ValueError(f"action {int(action)} removes nothing")
    if by_value:
        return lambda key, cell: isinstance(cell.value, str) and test(cell.value)
    return lambda key, cell: test(key)
