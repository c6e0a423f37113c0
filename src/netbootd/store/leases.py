"""Durable leases: the :class:`LeaseStore` interface and its SQLite implementation.

A bound lease is on disk (committed, fsync'd by SQLite with ``synchronous=FULL``) before
``save`` returns, so the DHCP service can send the ACK only after the lease is safe. SQLite calls
run on one dedicated thread: they never block the event loop, and the connection is only ever
used from that thread. Offers are not stored: they are promises of a few seconds.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
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


class LeaseStore(Protocol):
    async def load(self) -> list[Lease]: ...

    async def save(self, lease: Lease) -> None:
        """Persist ``lease`` durably before returning."""

    async def delete(self, address: IPv4Address) -> None: ...

    async def close(self) -> None: ...


class StoreError(Exception):
    """The lease database cannot be opened or written; the message is for the operator."""


class SqliteLeaseStore:
    """Leases in one SQLite file under the state directory."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="netbootd-leases")
        self._db: sqlite3.Connection | None = None

    @property
    def path(self) -> Path:
        return self._path

    async def _run(self, work: Callable[[], _T]) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, work)

    async def open(self) -> None:
        def work() -> None:
            try:
                self._path.parent.mkdir(parents=True, exist_ok=True)
                db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=FULL")
                db.executescript(_SCHEMA)
            except (OSError, sqlite3.Error) as exc:
                raise StoreError(f"cannot open lease database {self._path}: {exc}") from exc
            self._db = db

        await self._run(work)

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("lease store used before open()")
        return self._db

    async def load(self) -> list[Lease]:
        def work() -> list[Lease]:
            rows = self._conn().execute(
                "SELECT address, client, mac, state, expires, hostname FROM leases"
            )
            return [
                Lease(IPv4Address(a), client, mac, LeaseState(state), expires, hostname)
                for a, client, mac, state, expires, hostname in rows
            ]

        return await self._run(work)

    async def save(self, lease: Lease) -> None:
        def work() -> None:
            db = self._conn()
            with db:  # one transaction: the old row of this client goes, the new one comes
                db.execute("BEGIN IMMEDIATE")
                db.execute(
                    "DELETE FROM leases WHERE client = ? AND address != ? AND state != ?",
                    (lease.client, int(lease.address), LeaseState.DECLINED.value),
                )
                db.execute(
                    "INSERT OR REPLACE INTO leases VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        int(lease.address),
                        lease.client,
                        lease.mac,
                        lease.state.value,
                        lease.expires,
                        lease.hostname,
                    ),
                )

        try:
            await self._run(work)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot write lease database {self._path}: {exc}") from exc

    async def delete(self, address: IPv4Address) -> None:
        def work() -> None:
            self._conn().execute("DELETE FROM leases WHERE address = ?", (int(address),))

        try:
            await self._run(work)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot write lease database {self._path}: {exc}") from exc

    async def close(self) -> None:
        def work() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        await self._run(work)
        self._executor.shutdown(wait=True)
