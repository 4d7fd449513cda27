"""Kamailio's core_hash and core_case_hash, against values read from Kamailio 5.6.3 captures and a live 6.1.4 htable.dump."""

from __future__ import annotations

import pytest

from dmq.hashing import core_case_hash, core_hash


def test_dialog_h_entry_of_the_capture() -> None:
    """The h_entry Kamailio 5.6.3 gave Call-ID dlg1@127.0.0.1 (hash_size 4096) is 1108."""
    assert core_hash("dlg1@127.0.0.1", size=4096) == 1108


@pytest.mark.parametrize(
    "name, entry",
    [("n", 99), ("b", 110), ("c", 111), ("k", 102), ("ABCDEFGHIJ", 114), ("\u00e9-x\u00ff", 158), ("Alice", 221),
     ("a-much-longer-key-name-1234567", 248)],
)
def test_htable_slots_of_kamailio(name: str, entry: int) -> None:
    """The slot Kamailio 6.1.4's htable.dump showed each name in (size=8: 256 slots), non-ASCII bytes included."""
    assert core_case_hash(name, size=256) == entry


def test_case_and_second_string() -> None:
    """core_case_hash ignores ASCII case and core_hash does not; a second string changes the hash."""
    assert core_case_hash("ALICE") == core_case_hash("alice") == core_hash("alice")
    assert core_hash("ALICE") != core_hash("alice")
    assert core_hash("a", "b") != core_hash("a")
    assert 0 <= core_hash(b"\xff" * 9) < 2**32
