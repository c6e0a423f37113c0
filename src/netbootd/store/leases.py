"""Durable leases: the :class:`LeaseStore` interface and its SQLite implementation.

A bound lease is on disk (committed, fsync'd by SQLite with ``synchronous=FULL``) before
``save`` returns, so the DHCP service can send the ACK only after the lease is safe. Writes are
group-committed: every save or delete that arrives while a transaction is being written, or
within BATCH_INTERVAL of the last one's start, joins the next one, so a burst of clients costs
one fsync per batch, not one per lease, and each caller still returns only once its own
change is durable. Writes keep their order. SQLite calls run on one dedicated thread: they
never block the event loop, and the connection is only ever used from that thread. The loop
hands it work through a queue and hears back through ``call_soon_threadsafe``, one call each
way per batch. Offers are not stored: they are promises of a few seconds.

Several processes (DHCP workers) may keep their leases in one file, each its own addresses:
their transactions take turns through an exclusive lock on ``leases.sqlite3.lock``.

A damaged file is never taken for an empty one. :meth:`SqliteLeaseStore.open` runs SQLite's
``quick_check`` (each page and b-tree is read once; it skips only the comparison of indexes
with their table: 70 ms for a file of 100,000 leases) and checks that the file holds
netbootd's lease table, or no table yet; :meth:`~SqliteLeaseStore.load` checks that every row
reads as a lease. Each failure is a :class:`DamagedStoreError`, for the operator to move the
file aside. What is new is said so (:attr:`SqliteLeaseStore.found`): no file, a file of 0 bytes
(which SQLite itself takes for a new database) or one with no tables yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import queue
import sqlite3
import threading
from collections.abc import Callable
from enum import StrEnum
from ipaddress import IPv4Address
from pathlib import Path
from typing import Protocol, TypeVar

from netbootd.boot.leases import Lease, LeaseState

_T = TypeVar("_T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS leases (
    address   INTEGER PRIMARY KEY,
    client    TEXT NOT NULL,
    mac       TEXT NOT NULL,
    state     TEXT NOT NULL,
    expires   REAL NOT NULL,
    hostname  TEXT
);
CREATE INDEX IF NOT EXISTS leases_client ON leases (client);
"""


_LOCK_FLAGS = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
BUSY_TIMEOUT_MS = 10_000  # how long a write waits for another process's transaction
# A batch begins at least this long after the one before it: a busy server's changes join
# fewer, larger transactions (fewer fsyncs, fewer wake-ups of the store's thread), and an ACK
# waits at most this much longer for its lease to be on disk.
BATCH_INTERVAL = 0.001


class LeaseStore(Protocol):
    async def load(self) -> list[Lease]: ...

    def submit(self, change: Lease | IPv4Address) -> asyncio.Future[None]:
        """Queue a lease to keep, or an address to forget; the future is done once the change
        is durable, or fails with :class:`StoreError`."""
        ...

    async def close(self) -> None: ...


class StoreError(Exception):
    """The lease database cannot be opened or written; the message is for the operator."""


class DamagedStoreError(StoreError):
    """The file is not a sound lease database: corrupt, not SQLite, or another program's."""


class Found(StrEnum):
    """What :meth:`SqliteLeaseStore.open` found at the database's path."""

    LEASES = "leases"  # a lease database, checked
    NO_FILE = "no-file"  # nothing: a new database is made
    EMPTY_FILE = "empty-file"  # 0 bytes, made a new database (a crash may have emptied it)
    NO_TABLES = "no-tables"  # an SQLite file with no tables, made a lease database


# SQLite's primary result codes for a file that is no (sound) database.
_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26


class SqliteLeaseStore:
    """Leases in one SQLite file under the state directory."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._writer_thread: threading.Thread | None = None  # started with the first job
        self._db: sqlite3.Connection | None = None
        self._turns = -1  # the lock file's descriptor, open while the database is
        self._pending: list[tuple[Lease | IPv4Address, asyncio.Future[None]]] = []
        self._writing: list[tuple[Lease | IPv4Address, asyncio.Future[None]]] | None = None
        self._held = False  # a batch waits for BATCH_INTERVAL to pass (see _write_soon)
        self._last_batch = -BATCH_INTERVAL  # when the last batch began, in loop time
        self.batches = 0  # transactions written
        self.written = 0  # changes in them
        self.found = Found.LEASES  # what open() found

    @property
    def path(self) -> Path:
        return self._path

    def _start(self, job: Callable[[], None]) -> None:
        """Queue ``job`` for the store's thread, which runs jobs one at a time, in order."""
        if self._writer_thread is None:
            self._writer_thread = threading.Thread(
                target=self._serve, name="netbootd-leases", daemon=True
            )
            self._writer_thread.start()
        self._jobs.put(job)

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            job()

    async def _run(self, work: Callable[[], _T]) -> _T:
        """``work()`` on the store's thread, its result or exception returned here."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[_T] = loop.create_future()

        def job() -> None:
            try:
                result = work()
            except Exception as exc:  # handed to the caller, who sees it
                _tell(loop, _fail, done, exc)
            else:
                _tell(loop, _succeed, done, result)

        self._start(job)
        return await done

    async def open(self) -> None:
        def work() -> None:
            try:
                self._path.parent.mkdir(parents=True, exist_ok=True)
                found = _before_open(self._path)
                db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            except (OSError, sqlite3.Error) as exc:
                raise StoreError(f"cannot open lease database {self._path}: {exc}") from exc
            try:
                # DHCP workers share the file, each writing its own clients' leases. They take
                # turns through a lock file (see _write); should SQLite still find the
                # database busy (another program reading it, say), it waits this long.
                db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
                _check(db, self._path)
                if found is Found.LEASES and not _tables(db):
                    found = Found.NO_TABLES
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=FULL")
                db.executescript(_SCHEMA)
            except sqlite3.Error as exc:
                db.close()
                if exc.sqlite_errorcode & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
                    raise _damaged(self._path, str(exc)) from exc
                raise StoreError(f"cannot open lease database {self._path}: {exc}") from exc
            except BaseException:
                db.close()
                raise
            self.found = found
            lock = self._path.with_name(self._path.name + ".lock")
            try:
                self._turns = os.open(lock, _LOCK_FLAGS)
            except OSError as exc:
                db.close()
                raise StoreError(f"cannot open lease database lock file {lock}: {exc}") from exc
            self._db = db

        await self._run(work)

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("lease store used before open()")
        return self._db

    async def load(self) -> list[Lease]:
        def work() -> list[Lease]:
            try:
                return _leases(self._conn())
            except (sqlite3.DatabaseError, ValueError) as exc:
                # quick_check found the pages sound; a row that is no lease is damage too.
                raise _damaged(self._path, str(exc)) from exc

        return await self._run(work)

    async def save(self, lease: Lease) -> None:
        """Persist ``lease`` durably before returning."""
        await self.submit(lease)

    async def delete(self, address: IPv4Address) -> None:
        await self.submit(address)

    def submit(self, change: Lease | IPv4Address) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._pending.append((change, done))
        if self._writing is None and not self._held:
            self._write_soon(loop)
        return done

    def _write_soon(self, loop: asyncio.AbstractEventLoop) -> None:
        """Write what is pending now, or once BATCH_INTERVAL has passed since the last batch
        began: under load the changes of that interval join one transaction."""
        wait = self._last_batch + BATCH_INTERVAL - loop.time()
        if wait <= 0:
            self._write_next(loop)
        else:
            self._held = True
            loop.call_later(wait, self._write_held, loop)

    def _write_held(self, loop: asyncio.AbstractEventLoop) -> None:
        self._held = False
        if self._writing is None and self._pending:
            self._write_next(loop)

    def _write_next(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start writing what is pending as one transaction."""
        self._last_batch = loop.time()
        batch, self._pending = self._pending, []
        self._writing = batch
        changes = [change for change, _ in batch]

        def job() -> None:
            try:
                self._write(changes)
            except Exception as exc:  # SQLite's, a full disk: told to each caller
                _tell(loop, self._written, loop, exc)
            else:
                _tell(loop, self._written, loop, None)

        self._start(job)

    def _written(self, loop: asyncio.AbstractEventLoop, failure: Exception | None) -> None:
        """The batch in flight is durable, or failed: tell its callers, then write the next."""
        batch, self._writing = self._writing or [], None
        if failure is None:
            self.batches += 1
            self.written += len(batch)
            for _, done in batch:
                if not done.done():  # a caller that gave up (shutdown) is not told
                    done.set_result(None)
        else:
            # A caller left waiting would hold its transaction, and shutdown, for ever.
            error = StoreError(f"cannot write lease database {self._path}: {failure}")
            for _, done in batch:
                if not done.done():
                    done.set_exception(error)
        if self._pending and not self._held:
            self._write_soon(loop)

    def _write(self, changes: list[Lease | IPv4Address]) -> None:
        """One transaction for the whole batch, in order. Runs on the store's thread.

        Writers of other processes (DHCP workers) take turns with this one through an
        exclusive lock on the lock file: the kernel wakes the next writer the moment the lock
        is free, where SQLite's own wait for a busy database sleeps and polls, up to 100 ms.
        """
        db = self._conn()
        fcntl.flock(self._turns, fcntl.LOCK_EX)
        try:
            self._transaction(db, changes)
        finally:
            fcntl.flock(self._turns, fcntl.LOCK_UN)

    @staticmethod
    def _transaction(db: sqlite3.Connection, changes: list[Lease | IPv4Address]) -> None:
        with db:
            db.execute("BEGIN IMMEDIATE")
            for change in changes:
                if isinstance(change, IPv4Address):
                    db.execute("DELETE FROM leases WHERE address = ?", (int(change),))
                    continue
                # The old row of this client goes, the new one comes.
                db.execute(
                    "DELETE FROM leases WHERE client = ? AND address != ? AND state != ?",
                    (change.client, int(change.address), LeaseState.DECLINED.value),
                )
                db.execute(
                    "INSERT OR REPLACE INTO leases VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        int(change.address),
                        change.client,
                        change.mac,
                        change.state.value,
                        change.expires,
                        change.hostname,
                    ),
                )

    async def close(self) -> None:
        # What is queued lands first: the close job runs after every write queued before it.
        waiting = [done for _, done in (self._writing or []) + self._pending]
        await asyncio.gather(*waiting, return_exceptions=True)

        def work() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None
                os.close(self._turns)

        try:
            await self._run(work)
        finally:
            if self._writer_thread is not None:
                self._jobs.put(None)  # the thread ends once the queue is worked through
                self._writer_thread = None


_SELECT = "SELECT address, client, mac, state, expires, hostname FROM leases ORDER BY address"


def _leases(db: sqlite3.Connection) -> list[Lease]:
    return [
        Lease(IPv4Address(a), client, mac, LeaseState(state), expires, hostname)
        for a, client, mac, state, expires, hostname in db.execute(_SELECT)
    ]


def _before_open(path: Path) -> Found:
    """What is at ``path`` before SQLite opens it: nothing, 0 bytes, or a file to check."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return Found.NO_FILE
    return Found.EMPTY_FILE if size == 0 else Found.LEASES


_COLUMNS = ("address", "client", "mac", "state", "expires", "hostname")


def _tables(db: sqlite3.Connection) -> list[str]:
    """The file's own tables (SQLite's, like sqlite_stat1 after an ANALYZE, are not)."""
    rows = db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
    return [name for (name,) in rows if not name.startswith("sqlite_")]


def _check(db: sqlite3.Connection, path: Path) -> None:
    """Raise :class:`DamagedStoreError` unless ``db`` is sound and holds leases, or nothing.

    ``quick_check`` rather than ``integrity_check``: it reads every page and b-tree as the full
    check does, in linear time, and skips only cross-checking each index against its table.
    """
    problems = [row[0] for row in db.execute("PRAGMA quick_check(1)")]
    if problems != ["ok"]:
        found = " ".join(problems[0].split()) if problems else "no answer"  # one line
        raise _damaged(path, f"quick_check: {found}")
    tables = _tables(db)
    if not tables:
        return  # a new database, about to get its table
    if "leases" not in tables:
        raise _damaged(path, f"no lease table, but {', '.join(sorted(tables))}")
    columns = tuple(row[1] for row in db.execute("PRAGMA table_info(leases)"))
    if columns != _COLUMNS:
        raise _damaged(path, f"the lease table has columns {', '.join(columns)}")


def _damaged(path: Path, why: str) -> DamagedStoreError:
    return DamagedStoreError(
        f"lease database {path} is damaged or not netbootd's ({why}); move it aside "
        f"(mv {path} {path}.damaged) to start with no leases, or put back a good copy"
    )


def read_leases(path: Path) -> list[Lease]:
    """The leases in the file at ``path``, by address, read without writing to it (beside a
    running server too, whose transactions it does not hold up). Raises
    :class:`FileNotFoundError` when there is no such file and :class:`StoreError` when it
    cannot be read as a lease database."""
    if not path.is_file():
        raise FileNotFoundError(path)
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise StoreError(f"{path}: {exc}") from exc
    try:
        db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        return _leases(db)
    except (sqlite3.Error, ValueError) as exc:
        raise StoreError(f"{path}: not a lease database ({exc})") from exc
    finally:
        db.close()


def _succeed(done: asyncio.Future[_T], result: _T) -> None:
    if not done.done():
        done.set_result(result)


def _fail(done: asyncio.Future[_T], error: Exception) -> None:
    if not done.done():
        done.set_exception(error)


def _tell(loop: asyncio.AbstractEventLoop, callback: Callable[..., None], *args: object) -> None:
    """Run ``callback(*args)`` on ``loop``, from the store's thread; nothing if the loop has
    closed meanwhile (the process is ending, and nobody waits for the answer)."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(callback, *args)
