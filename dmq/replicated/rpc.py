"""
Parameter scanning for control (JSON-RPC) methods, in the manner of
Kamailio's ``rpc->scan``: every fault has code 500, a parameter of the
wrong type counts as missing, and extra parameters are ignored.

::

    def rpc_sets(*params):
        table, key, value = rpc_args(params, "ssv", "htable name, key name and value")
        rpc_call(peer.set, table, key, value)       # ValueError/TypeError -> 500 Invalid Parameters
        return "Ok. Key set to new value."
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable, Optional

from dmq.errors import RPCError, one_line
from dmq.replicated.wire import INT_MAX, INT_MIN

__all__ = ["rpc_args", "rpc_int", "rpc_call"]

_DIGITS = re.compile(r"\s*[-+]?\d{1,10}\s*")


def rpc_args(params: tuple[Any, ...], kinds: str, names: str) -> list[Any]:
    """
    The first ``len(kinds)`` of ``params``, one letter of ``kinds`` each:
    ``s`` a string, ``d`` a 32-bit integer (:func:`rpc_int`), ``v`` a
    value (a string, or any other JSON value written as JSON text).

    :param names: what the parameters are, for the fault text (Kamailio's
        ``Not enough parameters (names)``).
    :raises RPCError: 500 when a parameter is missing or, for ``s``, not a
        string; see :func:`rpc_int` for ``d``.
    """
    if len(params) < len(kinds):
        raise RPCError(500, f"Not enough parameters ({names})")
    values: list[Any] = []
    for kind, value in zip(kinds, params):
        if kind == "s" and not isinstance(value, str):
            raise RPCError(500, f"Not enough parameters ({names})")
        if kind == "d":
            value = rpc_int(value)
        elif kind == "v" and not isinstance(value, str):
            value = json.dumps(value)
        values.append(value)
    return values


def rpc_int(value: Any) -> int:
    """
    ``value`` as a 32-bit integer: an integer, or its digits as a string.

    :raises RPCError: 500 ``Invalid Parameters (...)`` for anything else
        (where Kamailio would quietly take 0 or a truncated number).
    """
    number: Optional[int] = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and _DIGITS.fullmatch(value):
        number = int(value)
    if number is None or not INT_MIN <= number <= INT_MAX:
        raise RPCError(500, f"Invalid Parameters (not a 32-bit integer: {one_line(repr(value), 80)})")
    return number


def rpc_call(function: Callable[..., Any], *args: Any, **kw: Any) -> Any:
    """
    ``function(*args, **kw)``, with a ``ValueError`` or ``TypeError`` it
    raises answered as ``500 Invalid Parameters (reason)``.
    """
    try:
        return function(*args, **kw)
    except (ValueError, TypeError) as e:
        raise RPCError(500, f"Invalid Parameters ({e})") from None
