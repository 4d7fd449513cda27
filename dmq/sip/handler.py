"""
Calling a request handler that answers now or later: with a value, or with
a Deferred of one (the transaction layer calls its transaction user this
way).
"""

from __future__ import annotations

from typing import Callable, TypeVar, Union

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

__all__ = ["now_or_later"]

T = TypeVar("T")
R = TypeVar("R")


def now_or_later(
    call: Callable[[], Union[T, "Deferred[T]"]],
    on_result: Callable[[T], R],
    on_failure: Callable[[Failure], R],
) -> Union[R, "Deferred[R]"]:
    """
    Call ``call()`` and hand its answer to ``on_result``: at once when it
    returns a value (no Deferred is made on that path), when it fires when it
    returns a Deferred.  An exception raised by ``call`` or ``on_result``, or
    a failure of the Deferred, goes to ``on_failure`` instead.

    :returns: what ``on_result`` or ``on_failure`` returned, or a Deferred
        firing with it when ``call`` answered later.
    """
    try:
        result = call()
    except Exception:
        return on_failure(Failure())
    if isinstance(result, Deferred):
        return result.addCallback(on_result).addErrback(on_failure)
    try:
        return on_result(result)
    except Exception:
        return on_failure(Failure())
