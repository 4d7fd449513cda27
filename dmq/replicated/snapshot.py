"""
A peer's data kept on disk as one JSON file, written atomically.

::

    snapshot = Snapshot(Path(folder) / "usrloc.json", "dmq-usrloc", build=peer.snapshot,
                        writer=lambda f, *a: deferToThreadPool(reactor, reactor.getThreadPool(), f, *a))
    snapshot.load(peer.restore)        # at start: restore(doc) -> items loaded
    snapshot.dirty = True              # on every change
    snapshot.save_if_dirty()           # every few seconds: written by the writer (a thread)
    snapshot.flush()                   # on stop: the last write, once the one under way is done

A write goes to a temporary file in the same folder, is flushed and
fsynced, renamed over the old file, and the folder is fsynced: a crash
leaves the old or the new snapshot, never half of one.  The document is
built and serialised where the data lives (the reactor thread); the file is
written by ``writer``, so that a slow disk does not hold the reactor.  One
write runs at a time.  A file that cannot be read is moved aside
(``NAME.bad``) and the peer starts empty.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Optional

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from dmq.peer import PeerError
from dmq.replicated.wire import dumps

__all__ = ["Snapshot", "Writer", "write_atomically"]

Writer = Callable[..., "Deferred[Any]"]
"""Runs ``f(*args)`` somewhere (a thread pool) and fires with its result: ``writer(f, *args)``."""

log = Logger()


def write_atomically(path: Path, data: bytes) -> None:
    """
    Replace ``path`` by ``data``: a temporary file, fsync, rename, fsync of
    the folder (created if missing).

    :raises OSError: when the file cannot be written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    try:
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return  # a folder that cannot be opened cannot be fsynced; the rename stands
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Snapshot:
    """
    One snapshot file of a peer.

    :param path: the file.
    :param kind: the ``"format"`` the document carries (``"dmq-htable"``);
        a file of another format is refused on load.
    :param build: returns the document to write (a JSON-able dict with
        ``"format": kind``).
    :param writer: runs the file writes of :meth:`save_if_dirty` and
        :meth:`flush` (a thread pool); ``None``: they run in the caller.
    :ivar dirty: something changed since the last write or load.
    :ivar writes: snapshots written so far.
    """

    def __init__(
        self, path: Path, kind: str, build: Callable[[], dict[str, Any]], writer: Optional[Writer] = None
    ) -> None:
        self.path = path
        self.kind = kind
        self.dirty = False
        self.writes = 0
        self._build = build
        self._writer = writer
        self._writing: Optional[list["Deferred[None]"]] = None
        """Who waits for the write under way (``None``: no write is under way)."""

    def save(self) -> None:
        """
        Write the snapshot now (atomically).

        :raises OSError: when it cannot be written.
        """
        write_atomically(self.path, dumps(self._build()))
        self.dirty = False
        self.writes += 1

    def save_logged(self) -> bool:
        """:meth:`save`, with a failure logged instead of raised; whether it was written."""
        try:
            self.save()
        except OSError as e:
            log.error("cannot write the snapshot {path}: {error}", path=str(self.path), error=str(e))
            return False
        return True

    def save_if_dirty(self) -> "Deferred[None]":
        """
        Write the snapshot through the writer when something changed since
        the last write; fires when it is written (or not: a failure is
        logged, and the snapshot stays dirty).  While a write is under way,
        fires when that one is done and writes nothing more.
        """
        if self._writing is not None:
            return self._when_written()
        if not self.dirty:
            return defer.succeed(None)
        if self._writer is None:
            self.save_logged()
            return defer.succeed(None)
        data = dumps(self._build())
        self.dirty = False
        self._writing = []

        def written(_: Any) -> None:
            self.writes += 1

        def failed(failure: Failure) -> None:
            self.dirty = True
            log.error("cannot write the snapshot {path}: {error}", path=str(self.path), error=str(failure.value))

        def done(_: Any) -> None:
            waiting, self._writing = self._writing or [], None
            for d in waiting:
                d.callback(None)

        self._writer(write_atomically, self.path, data).addCallbacks(written, failed).addBoth(done)
        return self._when_written() if self._writing is not None else defer.succeed(None)

    def _when_written(self) -> "Deferred[None]":
        d: "Deferred[None]" = Deferred()
        assert self._writing is not None
        self._writing.append(d)
        return d

    def flush(self) -> "Deferred[None]":
        """The last write (on stop): waits for the write under way, then writes what changed since."""
        if self._writing is None:
            return self.save_if_dirty()
        return self._when_written().addCallback(lambda _: self.save_if_dirty())

    def load(self, restore: Callable[[dict[str, Any]], int]) -> int:
        """
        Read the file, if there is one, and hand its document to
        ``restore``, which applies it and returns how many items it loaded.

        :param restore: raises ``ValueError``, ``TypeError``, ``KeyError``
            or a :class:`~dmq.peer.PeerError` for a document it cannot use.
        :returns: what ``restore`` returned; 0 when there is no file, or
            when it is unreadable (it is then moved to ``NAME.bad``).
        """
        path = self.path
        if not path.exists():
            return 0
        try:
            doc = json.loads(path.read_bytes().decode("utf-8"))
            if not isinstance(doc, dict) or doc.get("format") != self.kind:
                raise ValueError(f"not a {self.kind} snapshot")
            loaded = restore(doc)
        except (OSError, ValueError, TypeError, KeyError, PeerError) as e:
            aside = path.with_name(path.name + ".bad")
            log.error(
                "snapshot {path} unreadable ({error}); moved to {aside}", path=str(path), error=str(e), aside=str(aside)
            )
            try:
                os.replace(path, aside)
            except OSError:
                pass  # the file went meanwhile: nothing to keep
            return 0
        self.dirty = False
        log.info("{count} item(s) loaded from {path}", count=loaded, path=str(path))
        return loaded
