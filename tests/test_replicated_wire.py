"""The shared JSON helpers of table-like peers: compact encoding, field readers and their 400/500 answers."""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from dmq.peer import PeerError
from dmq.replicated.wire import (
    INT_MAX,
    INT_MIN,
    Framing,
    bad_request,
    check_text,
    dumps,
    internal_error,
    parse_object,
    wire_int,
    wire_str,
)


class EncodingTests(SynchronousTestCase):
    """dumps writes JSON as Kamailio's srjson does."""

    def test_compact_and_utf8(self) -> None:
        """No spaces after separators; non-ASCII stays UTF-8 instead of \\u escapes; key order kept."""
        self.assertEqual(dumps({"b": 1, "a": "é", "c": [1, 2]}), '{"b":1,"a":"é","c":[1,2]}'.encode())

    def test_framing(self) -> None:
        """A framing's empty message is its head and tail with nothing between."""
        self.assertEqual(Framing(b'{"cells":[', b"]}").empty, b'{"cells":[]}')
        self.assertEqual(Framing(b"[", b"]", b";").separator, b";")


class AnswerTests(SynchronousTestCase):
    """bad_request and internal_error build the answers Kamailio's peers give."""

    def test_codes_and_reasons(self) -> None:
        """400 Bad Request (reason) and 500 Server Internal Error (reason)."""
        bad, failed = bad_request("no cname"), internal_error("no table 'x'")
        self.assertEqual((bad.code, bad.reason), (400, "Bad Request (no cname)"))
        self.assertEqual((failed.code, failed.reason), (500, "Server Internal Error (no table 'x')"))


class ParseObjectTests(SynchronousTestCase):
    """parse_object accepts a non-empty JSON object and answers 400 for anything else."""

    def reason(self, body: bytes) -> str:
        with self.assertRaises(PeerError) as caught:
            parse_object(body)
        self.assertEqual(caught.exception.code, 400)
        return caught.exception.reason or ""

    def test_object(self) -> None:
        """An object comes back decoded, whatever its keys."""
        self.assertEqual(parse_object(b' {"action":1,"x":[true]} '), {"action": 1, "x": [True]})

    def test_refused(self) -> None:
        """Empty, non-UTF-8, invalid JSON, non-objects and {} are 400 with a reason naming the fault."""
        cases = [
            (b"", "empty body"),
            (b"  \r\n", "empty body"),
            (b"\xff{}", "not UTF-8"),
            (b"{nope", "invalid JSON: "),
            (b"[1]", "not a JSON object"),
            (b"42", "not a JSON object"),
            (b"{}", "empty JSON object"),
        ]
        for body, reason in cases:
            self.assertIn(reason, self.reason(body), body)

    def test_invalid_json_reason_is_one_bounded_line(self) -> None:
        """The JSON parser's message is cut to one printable line in the reason."""
        reason = self.reason(b"[" * 100_000)
        self.assertLessEqual(len(reason), len("Bad Request (invalid JSON: )") + 80)
        self.assertTrue(reason.isprintable())


class FieldTests(SynchronousTestCase):
    """wire_str and wire_int read one field the way Kamailio reads it."""

    def fault(self, reader: Any, doc: dict[str, Any], key: str) -> str:
        with self.assertRaises(PeerError) as caught:
            reader(doc, key)
        self.assertEqual(caught.exception.code, 400)
        return caught.exception.reason or ""

    def test_str(self) -> None:
        """A string is returned cut at a NUL (Kamailio's strlen); absent or null is None; other types and lone surrogates are 400."""
        self.assertEqual(wire_str({"k": "ab\x00cd"}, "k"), "ab")
        self.assertEqual(wire_str({"k": ""}, "k"), "")
        self.assertIsNone(wire_str({}, "k"))
        self.assertIsNone(wire_str({"k": None}, "k"))
        self.assertIn("k is not a string", self.fault(wire_str, {"k": 5}, "k"))
        self.assertIn("k is not valid UTF-8", self.fault(wire_str, {"k": "\ud800"}, "k"))

    def test_int(self) -> None:
        """Integers and whole floats are read; booleans, strings and fractions are 400; absent is None."""
        self.assertEqual(wire_int({"n": -7}, "n"), -7)
        self.assertEqual(wire_int({"n": 3.0}, "n"), 3)
        self.assertIsNone(wire_int({}, "n"))
        self.assertIn("n is not a number", self.fault(wire_int, {"n": True}, "n"))
        self.assertIn("n is not a number", self.fault(wire_int, {"n": "3"}, "n"))
        self.assertIn("n is not a whole number", self.fault(wire_int, {"n": 1.5}, "n"))

    def test_int_range_constants(self) -> None:
        """The range is that of a C int."""
        self.assertEqual((INT_MIN, INT_MAX), (-2147483648, 2147483647))

    def test_check_text(self) -> None:
        """Text with a NUL or a lone surrogate is a ValueError naming what it is; other text passes."""
        check_text("héllo", "value")
        for bad, reason in (("a\x00b", "value contains a NUL"), ("\udc80", "value is not valid UTF-8")):
            with self.assertRaises(ValueError) as caught:
                check_text(bad, "value")
            self.assertIn(reason, str(caught.exception))
