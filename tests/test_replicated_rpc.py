"""RPC parameter scanning in Kamailio's manner: every fault 500, a wrong type counts as missing, extras ignored."""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from dmq.errors import RPCError
from dmq.replicated.rpc import rpc_args, rpc_call, rpc_int


class RPCArgsTests(SynchronousTestCase):
    """rpc_args takes the first parameters by kind."""

    def fault(self, function: Any, *args: Any) -> RPCError:
        with self.assertRaises(RPCError) as caught:
            function(*args)
        self.assertEqual(caught.exception.code, 500)
        return caught.exception

    def test_kinds(self) -> None:
        """s is a string, d an integer (digits accepted), v a string or any JSON value written as JSON text."""
        self.assertEqual(rpc_args(("t", "42", " -7 "), "sdd", "x"), ["t", 42, -7])
        self.assertEqual(rpc_args(("a", {"k": [1]}, 5), "svv", "x"), ["a", '{"k": [1]}', "5"])

    def test_extra_parameters_ignored(self) -> None:
        """Parameters beyond the kinds asked for are left alone."""
        self.assertEqual(rpc_args(("t", "k", "extra", 1), "ss", "x"), ["t", "k"])

    def test_missing_and_wrong_type_read_alike(self) -> None:
        """Too few parameters, or a non-string where a string is due, is 500 Not enough parameters (names)."""
        for params in (("t",), ("t", 5), (None, "k")):
            self.assertEqual(self.fault(rpc_args, params, "ss", "table and key").message, "Not enough parameters (table and key)")

    def test_integers(self) -> None:
        """rpc_int takes 32-bit integers and their digits; anything else is 500 Invalid Parameters, bounded."""
        self.assertEqual(rpc_int(2**31 - 1), 2**31 - 1)
        self.assertEqual(rpc_int("-2147483648"), -(2**31))
        for bad in ("x1", "1.5", 12.5, True, None, 2**31, "99999999999", "1 2"):
            self.assertTrue(self.fault(rpc_int, bad).message.startswith("Invalid Parameters (not a 32-bit integer: "), bad)
        self.assertLess(len(self.fault(rpc_int, "x" * 500).message), 140)

    def test_call(self) -> None:
        """rpc_call returns the result, and turns ValueError or TypeError into 500 Invalid Parameters (reason); other errors pass."""
        self.assertEqual(rpc_call(lambda a, b=0: a + b, 1, b=2), 3)

        def refuse(kind: type[Exception]) -> None:
            raise kind("no NUL please")

        for kind in (ValueError, TypeError):
            self.assertEqual(self.fault(rpc_call, refuse, kind).message, "Invalid Parameters (no NUL please)")
        with self.assertRaises(KeyError):
            rpc_call(refuse, KeyError)
