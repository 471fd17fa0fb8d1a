"""SQLite connections for the feedback store: one writer behind a lock, one read-only connection per thread.

Gradio and FastAPI run handlers in worker threads, and a sqlite3 connection must not be shared between
threads. Writes go through a single connection guarded by a lock, each in a ``BEGIN IMMEDIATE``
transaction (so a second process, such as a training job, waits instead of failing halfway); reads open a
read-only connection the first time a thread reads. WAL mode lets readers run while the writer writes.
"""

from __future__ import annotations

import secrets
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

from sqlite_utils import Database

from feedback.errors import CorruptStore, DiskFull, WriterBusy
from feedback.schema.migrations import applied_migrations, apply_migrations

_CORRUPTION_CODES = {11, 26}  # SQLITE_CORRUPT, SQLITE_NOTADB
_SQLITE_FULL = 13
_SQLITE_BUSY = 5


def _is_corruption(exc: sqlite3.DatabaseError) -> bool:
    """A damaged file, not a locked or unreadable one (those are OperationalErrors, and pass through)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in _CORRUPTION_CODES
    return not isinstance(exc, sqlite3.OperationalError)


def _is_disk_full(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF == _SQLITE_FULL
    return "disk is full" in str(exc)  # raised without a code (a test's injected fault): SQLite's message


@contextmanager
def _disk_full_as_error(path: Path) -> Iterator[None]:
    """SQLITE_FULL becomes DiskFull, which the hub answers with 507 (issue 7: a full disk)."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        if _is_disk_full(exc):
            raise DiskFull(path) from exc
        raise


def _commit(db: Database) -> None:
    """COMMIT; if it fails (a full disk), roll back whatever SQLite left open, so the writer can begin the
    next transaction: SQLite may keep a transaction open after a failed COMMIT, and BEGIN would then fail
    for every later write."""
    try:
        db.commit()
    except BaseException:
        if db.conn.in_transaction:
            db.rollback()
        raise


def new_id(prefix: str) -> str:
    """A random id such as ``gen-3f9a0c1d2b4e5f60``."""
    return f"{prefix}-{secrets.token_hex(8)}"


class StoreConnections:
    """Owns the database file's connections; the :class:`~feedback.store.Store` methods build on it."""

    def __init__(self, path: str | Path, *, timeout: float = 30.0) -> None:
        """Open (or create) the database at ``path``, switch it to WAL and apply pending migrations.

        ``timeout`` is how many seconds a write waits for another process's write to finish.
        """
        if str(path) == ":memory:":
            raise ValueError("the feedback store needs a file path: per-thread readers cannot share :memory:")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._timeout = timeout
        self._write_lock = threading.Lock()
        self._batch_thread: int | None = None  # the thread inside batch(), if any
        # The writer crosses threads, but only ever inside _write_lock.
        self._writer = Database(
            sqlite3.connect(self.path, timeout=timeout, check_same_thread=False), execute_plugins=False
        )
        try:
            self._writer.execute("PRAGMA journal_mode=WAL")
            self._writer.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable except on power loss
            self._writer.execute("PRAGMA foreign_keys=ON")
            with self._write_lock:
                self.migrations_applied: list[str] = apply_migrations(self._writer)
        except sqlite3.DatabaseError as exc:
            self._writer.close()
            if _is_corruption(exc):
                raise CorruptStore(self.path, str(exc)) from exc
            raise
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._closed = False

    def check_integrity(self) -> None:
        """Read every page (``PRAGMA quick_check``); raise CorruptStore naming the file if any is damaged.
        Seconds for a large file: the hub runs it once at start-up."""
        try:
            with self._write_lock:
                rows = self._writer.execute("PRAGMA quick_check").fetchall()
        except sqlite3.DatabaseError as exc:
            if _is_corruption(exc):
                raise CorruptStore(self.path, str(exc)) from exc
            raise
        problems = [row[0] for row in rows if row[0] != "ok"]
        if problems:
            raise CorruptStore(self.path, "; ".join(problems[:3]))

    @property
    def migrations(self) -> list[str]:
        """Names of every migration the file has applied, in order."""
        return applied_migrations(self._read())

    def close(self) -> None:
        """Close every connection. The store must not be used afterwards."""
        self._closed = True
        with self._write_lock:
            self._writer.close()
        with self._readers_lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _read(self) -> Database:
        """This thread's read-only connection, opened on first use."""
        db = getattr(self._local, "db", None)
        if db is None:
            if self._closed:
                raise RuntimeError(f"the feedback store at {self.path} is closed")
            uri = f"file:{quote(str(self.path.resolve()))}?mode=ro"
            # check_same_thread=False only so close() can close it; one thread uses it.
            conn = sqlite3.connect(uri, uri=True, timeout=self._timeout, check_same_thread=False)
            with self._readers_lock:
                self._readers.append(conn)
            db = self._local.db = Database(conn, execute_plugins=False)
        return db

    @contextmanager
    def batch(self, *, wait: bool = True) -> Iterator[None]:
        """Group the writes made by this thread inside the block into one transaction and one commit.

        Each write still succeeds or fails on its own (a savepoint each): a write that raises leaves the
        others in place. Nothing is durable, or visible to readers, before the block ends. Used to write
        votes that arrive together at the cost of one commit (hub/write_batcher.py).

        With ``wait=False`` the block does not wait for the writer: if another thread holds it, or another
        process (a training job, a CLI command) holds the database's write lock, it raises
        :class:`WriterBusy` before anything is written. An event loop can write in place when the writer is
        free and hand the batch to a thread only when it is not.
        """
        if not self._write_lock.acquire(blocking=wait):
            raise WriterBusy(self.path)
        try:
            with _disk_full_as_error(self.path):
                db = self._writer
                self._begin_immediate(db, wait)
                self._batch_thread = threading.get_ident()
                try:
                    yield
                except BaseException:
                    db.rollback()
                    raise
                finally:
                    self._batch_thread = None
                _commit(db)
        finally:
            self._write_lock.release()

    def _begin_immediate(self, db: Database, wait: bool) -> None:
        if wait:
            db.conn.execute("BEGIN IMMEDIATE")
            return
        db.conn.execute("PRAGMA busy_timeout = 0")
        try:
            db.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorcode", 0) & 0xFF == _SQLITE_BUSY:
                raise WriterBusy(self.path) from exc
            raise
        finally:
            db.conn.execute(f"PRAGMA busy_timeout = {int(self._timeout * 1000)}")

    @contextmanager
    def _write(self) -> Iterator[Database]:
        """The writer connection inside one transaction; commits on success, rolls back on error.

        Inside :meth:`batch` (on the thread that opened it) the transaction is the batch's and this write
        is a savepoint of it."""
        if self._batch_thread == threading.get_ident():
            db = self._writer
            with _disk_full_as_error(self.path):
                db.conn.execute("SAVEPOINT write")
                try:
                    yield db
                except BaseException:
                    db.conn.execute("ROLLBACK TO write")
                    db.conn.execute("RELEASE write")
                    raise
                db.conn.execute("RELEASE write")
            return
        with self._write_lock, _disk_full_as_error(self.path):
            db = self._writer
            db.conn.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.rollback()
                raise
            _commit(db)
