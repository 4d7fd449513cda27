"""Snapshots on disk: atomic writes, loading with the format checked, an unreadable file moved aside."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from dmq.replicated.snapshot import Snapshot, write_atomically


class SnapshotTests(SynchronousTestCase):
    """One snapshot file in a fresh folder."""

    def setUp(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="dmq-snapshot-"))
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.path = self.dir / "state" / "kv.json"
        self.data: dict[str, Any] = {"a": 1}
        self.snapshot = Snapshot(self.path, "dmq-kv", lambda: {"format": "dmq-kv", "items": dict(self.data)})
        self.restored: list[dict[str, Any]] = []

    def restore(self, doc: dict[str, Any]) -> int:
        items = doc["items"]
        if not isinstance(items, dict):
            raise ValueError("items is not an object")
        self.restored.append(items)
        return len(items)

    def test_write_atomically(self) -> None:
        """The folder is created, the file replaced whole, and no temporary file stays behind."""
        write_atomically(self.path, b"one")
        write_atomically(self.path, b"two")
        self.assertEqual(self.path.read_bytes(), b"two")
        self.assertEqual(os.listdir(self.path.parent), ["kv.json"])

    def test_save_and_load(self) -> None:
        """What save writes (compact JSON), load hands to restore, which says how many items it took."""
        self.snapshot.dirty = True
        self.snapshot.save()
        self.assertEqual(self.path.read_bytes(), b'{"format":"dmq-kv","items":{"a":1}}')
        self.assertEqual((self.snapshot.dirty, self.snapshot.writes), (False, 1))
        self.snapshot.dirty = True
        self.assertEqual(self.snapshot.load(self.restore), 1)
        self.assertEqual(self.restored, [{"a": 1}])
        self.assertFalse(self.snapshot.dirty)

    def test_save_if_dirty(self) -> None:
        """save_if_dirty writes only after a change."""
        self.snapshot.save_if_dirty()
        self.assertFalse(self.path.exists())
        self.snapshot.dirty = True
        self.snapshot.save_if_dirty()
        self.snapshot.save_if_dirty()
        self.assertEqual(self.snapshot.writes, 1)

    def test_no_file(self) -> None:
        """Without a file, load restores nothing and answers 0."""
        self.assertEqual(self.snapshot.load(self.restore), 0)
        self.assertEqual(self.restored, [])

    def test_unreadable_files_moved_aside(self) -> None:
        """Broken JSON, another format, or a document restore refuses: the file goes to NAME.bad and load answers 0."""
        for content in (b'{"format":"dmq-kv","items":{', b'{"format":"other","items":{}}', b"[1]",
                        b'{"format":"dmq-kv","items":[1]}', b'{"format":"dmq-kv"}', b"\xff\xfe"):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_bytes(content)
            self.assertEqual(self.snapshot.load(self.restore), 0, content)
            self.assertFalse(self.path.exists())
            self.assertEqual((self.dir / "state" / "kv.json.bad").read_bytes(), content)
        self.assertEqual(self.restored, [])
        self.flushLoggedErrors()

    def test_write_failure_logged(self) -> None:
        """save raises OSError when the file cannot be written (and leaves no temporary file); save_logged logs it, answers False and keeps the change pending."""
        self.path.mkdir(parents=True)  # a folder where the file should be
        self.snapshot.dirty = True
        with self.assertRaises(OSError):
            self.snapshot.save()
        self.assertFalse(self.snapshot.save_logged())
        self.assertTrue(self.snapshot.dirty)
        self.assertEqual(self.snapshot.writes, 0)
        self.assertEqual(os.listdir(self.path.parent), ["kv.json"])  # no temporary file left


class WriterTests(SynchronousTestCase):
    """Writes handed to a writer (a thread pool in a node; here one whose writes finish when the test says)."""

    def setUp(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="dmq-snapshot-"))
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.path = self.dir / "kv.json"
        self.data: dict[str, Any] = {"a": 1}
        self.pending: list[tuple[Deferred[None], Any, tuple[Any, ...]]] = []
        self.snapshot = Snapshot(
            self.path, "dmq-kv", lambda: {"format": "dmq-kv", "items": dict(self.data)}, writer=self.writer
        )

    def writer(self, f: Any, *args: Any) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self.pending.append((d, f, args))
        return d

    def finish(self) -> None:
        """Run the oldest write handed to the writer, as its thread would, and fire its Deferred."""
        d, f, args = self.pending.pop(0)
        try:
            f(*args)
        except OSError as e:
            d.errback(e)
        else:
            d.callback(None)

    def test_the_writer_writes_the_state_of_the_moment_of_the_call(self) -> None:
        """The document is taken when save_if_dirty runs; the file appears when the writer has run."""
        self.snapshot.dirty = True
        done = self.snapshot.save_if_dirty()
        self.data["a"] = 2  # a change after the call is not in this write...
        self.assertFalse(self.path.exists())
        self.assertNoResult(done)
        self.finish()
        self.successResultOf(done)
        self.assertEqual(self.path.read_bytes(), b'{"format":"dmq-kv","items":{"a":1}}')
        self.assertEqual(self.snapshot.writes, 1)

    def test_one_write_at_a_time_and_flush_writes_the_last_change(self) -> None:
        """While a write is under way no second one starts; flush waits for it, then writes what changed since."""
        self.snapshot.dirty = True
        self.snapshot.save_if_dirty()
        self.data["a"] = 2
        self.snapshot.dirty = True
        self.snapshot.save_if_dirty()
        self.assertEqual(len(self.pending), 1)
        flushed = self.snapshot.flush()
        self.finish()
        self.assertEqual(len(self.pending), 1)  # the last change, handed over once the first write is done
        self.assertNoResult(flushed)
        self.finish()
        self.successResultOf(flushed)
        self.assertEqual(self.path.read_bytes(), b'{"format":"dmq-kv","items":{"a":2}}')
        self.assertEqual((self.snapshot.writes, self.snapshot.dirty), (2, False))

    def test_a_failed_write_is_logged_and_stays_pending(self) -> None:
        """A write that fails is logged; the change stays dirty and the next check tries again."""
        self.path.mkdir()  # a folder where the file should be
        self.snapshot.dirty = True
        done = self.snapshot.save_if_dirty()
        self.finish()
        self.successResultOf(done)
        self.assertEqual((self.snapshot.writes, self.snapshot.dirty), (0, True))
        self.path.rmdir()
        self.snapshot.save_if_dirty()
        self.finish()
        self.assertEqual(self.snapshot.writes, 1)
