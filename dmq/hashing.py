"""
Kamailio's string hashes, which some DMQ bodies carry: the dialog module
files each dialog under ``core_hash(Call-ID, size)`` (its ``h_entry``) and
answers 500 to a dialog filed elsewhere; the htable module files a cell under
``core_case_hash(name)`` (the ``entry`` of ``htable.dump``).

The hash reads the string four bytes at a time as a big-endian word of
*signed* chars (C ``char`` on the platforms Kamailio runs on), folds each
word ``w`` in as ``h += w ^ (w >> 3)``, does the same with the last zero to
three bytes, mixes ``h + (h >> 11) + (h >> 13) + (h >> 23)`` and keeps the
low bits for a power-of-two table size; all in unsigned 32-bit arithmetic.
Pure code.
"""

from __future__ import annotations

from typing import Optional, Union

__all__ = ["core_hash", "core_case_hash"]

_MASK = 0xFFFFFFFF


def _signed(byte: int) -> int:
    return byte - 256 if byte > 127 else byte


def _fold(data: bytes, h: int) -> int:
    end = len(data)
    full = end - end % 4
    for i in range(0, full, 4):
        word = (
            (_signed(data[i]) << 24) + (_signed(data[i + 1]) << 16) + (_signed(data[i + 2]) << 8) + _signed(data[i + 3])
        ) & _MASK
        h = (h + (word ^ (word >> 3))) & _MASK
    word = 0
    for byte in data[full:]:
        word = ((word << 8) + _signed(byte)) & _MASK
    return (h + (word ^ (word >> 3))) & _MASK


def _bytes(text: Union[str, bytes]) -> bytes:
    return text.encode("utf-8") if isinstance(text, str) else text


def core_hash(first: Union[str, bytes], second: Optional[Union[str, bytes]] = None, size: int = 0) -> int:
    """
    Kamailio's ``core_hash(first, second, size)``: the hash of ``first``
    (and ``second``, when given), reduced to ``0 .. size - 1`` when ``size``
    (a power of two) is given.
    """
    h = _fold(_bytes(first), 0)
    if second is not None:
        h = _fold(_bytes(second), h)
    h = ((h + (h >> 11)) + ((h >> 13) + (h >> 23))) & _MASK
    return h & (size - 1) if size else h


def core_case_hash(first: Union[str, bytes], second: Optional[Union[str, bytes]] = None, size: int = 0) -> int:
    """Kamailio's ``core_case_hash``: :func:`core_hash` with ASCII letters taken as lower case."""
    lower = bytes.lower
    return core_hash(lower(_bytes(first)), None if second is None else lower(_bytes(second)), size)
