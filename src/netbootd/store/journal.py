"""The boot journal's database: the events of every machine's boot, in SQLite, bounded.

One file, ``journal.sqlite3`` in the state directory, apart from the lease database: the
journal is written far more often, may be dropped or lost without losing a lease, and is read by
the API while the server writes it. Every DHCP worker process appends its own events to the
same file; SQLite's write-ahead log lets the readers go on meanwhile, and ``busy_timeout`` makes
a writer wait its turn rather than fail.

Bounded two ways (:meth:`JournalStore.prune`): past ``max_events`` events the oldest go, and
events older than ``max_age`` seconds go. At about 250 octets an event on disk, the default of
200,000 events is some 50 MB: the whole boots of a few thousand machines.

Synchronous, and not safe to share between threads: the writer uses :meth:`append` and
:meth:`prune` from one thread; every read opens a connection of its own (:meth:`reader`), so
the API's threads never wait on the writer's connection. Nothing here reads a clock.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

from netbootd.boot.journal import BootEvent

DEFAULT_MAX_EVENTS = 200_000
DEFAULT_MAX_AGE = 7 * 86400.0  # a week
BUSY_TIMEOUT_MS = 5000  # how long a write waits for another process's to end

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    time REAL NOT NULL,
    mac TEXT NOT NULL,
    address TEXT NOT NULL,
    service TEXT NOT NULL,
    kind TEXT NOT NULL,
    fields TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_mac ON events (mac, id);
CREATE INDEX IF NOT EXISTS events_bound ON events (address, id) WHERE {bound};
"""
# Each index costs every insert, thousands a second under load: there are two. One finds a
# machine's events. The other finds who has an address, and holds only the messages a client
# has an address after (a transfer comes after its REQUEST was acknowledged, a BOOTP reply, an
# INFORM from a client with its own address), not a DISCOVER's offer. Nothing is looked up by
# time: ids grow with time, so the oldest events are the lowest ids.
BOUND_KINDS = ("REQUEST", "BOOTP", "INFORM")
_BOUND = f"mac != '' AND kind IN {BOUND_KINDS!r}"
_SCHEMA = _SCHEMA.format(bound=_BOUND)
_COLUMNS = "id, time, mac, address, service, kind, fields"
_INSERT_BATCH = (
    "INSERT INTO events (time, mac, address, service, kind, fields) SELECT "
    "json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]'), "
    "json_extract(value, '$[3]'), json_extract(value, '$[4]'), json_extract(value, '$[5]') "
    "FROM json_each(?) ORDER BY key"
)


# An event as the database stores it: time, MAC, address, service, kind, and its fields as
# one JSON object's text.
Row = tuple[float, str, str, str, str, str]


def event_row(event: BootEvent) -> Row:
    """``event`` as the database stores it."""
    fields = json.dumps(dict(event.fields))
    return (event.time, event.mac, event.address, event.service, event.kind, fields)


class JournalError(Exception):
    """The journal's database cannot be used; the message is one line for the operator."""


@dataclass(frozen=True, slots=True)
class SeenMachine:
    """A MAC the journal has events of: when it was last heard of, at which address."""

    mac: str
    first: float
    last: float
    address: str
    events: int


def _event(row: tuple[int, float, str, str, str, str, str]) -> BootEvent:
    ident, time, mac, address, service, kind, fields = row
    try:
        decoded = json.loads(fields)
    except ValueError:
        decoded = {}
    if not isinstance(decoded, dict):
        decoded = {}
    return BootEvent(time, mac, address, service, kind, decoded, ident)


class JournalStore:
    """The journal's SQLite file at ``path``."""

    def __init__(
        self,
        path: Path,
        *,
        max_events: int = DEFAULT_MAX_EVENTS,
        max_age: float = DEFAULT_MAX_AGE,
    ) -> None:
        self.path = path
        self.max_events = max_events
        self.max_age = max_age
        self._db: sqlite3.Connection | None = None

    def open(self) -> None:
        """Create the file and its table if they are not there; raise JournalError."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(
                self.path,
                timeout=BUSY_TIMEOUT_MS / 1000,
                isolation_level=None,
                check_same_thread=False,
            )
            db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            db.execute("PRAGMA journal_mode = WAL")
            # A lost last moment of the journal is no harm; a sync per batch would cost more.
            db.execute("PRAGMA synchronous = NORMAL")
            db.executescript(_SCHEMA)
            (check,) = db.execute("PRAGMA quick_check").fetchone()
        except (OSError, sqlite3.Error) as exc:
            raise JournalError(f"journal {self.path}: {exc}") from exc
        if check != "ok":
            db.close()
            raise JournalError(f"journal {self.path}: damaged: {check}")
        self._db = db

    def set_aside(self, suffix: str) -> Path:
        """Rename the file (and its write-ahead log) to ``<name>.<suffix>``, so that
        :meth:`open` starts a new one; where it went."""
        aside = self.path.with_name(f"{self.path.name}.{suffix}")
        for extra in ("", "-wal", "-shm"):
            source = self.path.with_name(self.path.name + extra)
            if source.exists():
                source.replace(aside.with_name(aside.name + extra))
        return aside

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _writer(self) -> sqlite3.Connection:
        if self._db is None:
            raise JournalError(f"journal {self.path}: not open")
        return self._db

    def append(self, events: Sequence[BootEvent]) -> None:
        """Store ``events``, in one transaction."""
        self.append_rows([event_row(event) for event in events])

    def append_rows(self, rows: Sequence[Row]) -> None:
        """Store events made into rows already (time, MAC, address, service, kind, and the
        fields as a JSON object), in one transaction."""
        if not rows:
            return
        # The whole batch is one statement over one JSON array, unpacked by SQLite itself:
        # executemany would take and give back the interpreter's lock for every row, and each
        # time it wants it back the event loop's thread must hand it over, thousands of times a
        # second under load. Here the lock is given up once, for the whole insert.
        batch = json.dumps(rows, check_circular=False)  # ASCII: any text, a lone surrogate too
        db = self._writer()
        try:
            with db:
                db.execute("BEGIN IMMEDIATE")
                db.execute(_INSERT_BATCH, (batch,))
        except sqlite3.Error as exc:
            raise JournalError(f"journal {self.path}: {exc}") from exc

    def prune(self, now: float) -> int:
        """Drop the events past ``max_events`` (the oldest) and those older than ``max_age``;
        how many went."""
        db = self._writer()
        try:
            with db:
                db.execute("BEGIN IMMEDIATE")
                (top,) = db.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()
                # The first event young enough to keep, looked for in the order of ids: the
                # walk stops there, having passed only the events it drops.
                cursor = db.execute(
                    "DELETE FROM events WHERE id <= ? OR id < coalesce("
                    "(SELECT id FROM events WHERE time >= ? ORDER BY id LIMIT 1), ?)",
                    (top - self.max_events, now - self.max_age, top + 1),
                )
                return int(cursor.rowcount)
        except sqlite3.Error as exc:
            raise JournalError(f"journal {self.path}: {exc}") from exc

    @contextmanager
    def reader(self) -> Iterator[sqlite3.Connection]:
        """A connection of its own, for one read (from any thread)."""
        try:
            db = sqlite3.connect(
                f"file:{self.path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_MS / 1000
            )
        except sqlite3.Error as exc:
            raise JournalError(f"journal {self.path}: {exc}") from exc
        with closing(db):
            try:
                yield db
            except sqlite3.Error as exc:
                raise JournalError(f"journal {self.path}: {exc}") from exc

    def events(
        self,
        *,
        mac: str | None = None,
        after: int = 0,
        since: float | None = None,
        limit: int = 1000,
        newest: bool = False,
    ) -> list[BootEvent]:
        """Events in order of id: those of ``mac`` (all, when None), with an id above
        ``after``, from time ``since`` on; at most ``limit``, the oldest of them, or with
        ``newest`` the newest of them (still in order)."""
        where = ["id > ?"]
        values: list[object] = [after]
        if mac is not None:
            where.append("mac = ?")
            values.append(mac)
        if since is not None:
            where.append("time >= ?")
            values.append(since)
        order = "DESC" if newest else "ASC"
        query = (
            f"SELECT {_COLUMNS} FROM events WHERE {' AND '.join(where)} "  # noqa: S608 (fixed parts)
            f"ORDER BY id {order} LIMIT ?"
        )
        values.append(limit)
        with self.reader() as db:
            rows = db.execute(query, values).fetchall()
        found = [_event(row) for row in rows]
        return found[::-1] if newest else found

    def last_id(self) -> int:
        with self.reader() as db:
            (top,) = db.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()
        return int(top)

    def machines(self, limit: int = 10_000) -> list[SeenMachine]:
        """The MACs with events, the latest heard of first."""
        query = (
            "SELECT mac, min(time), max(time), count(*), "
            "(SELECT address FROM events AS e WHERE e.mac = events.mac AND e.address != '' "
            "ORDER BY id DESC LIMIT 1) "
            "FROM events WHERE mac != '' GROUP BY mac ORDER BY max(time) DESC LIMIT ?"
        )
        with self.reader() as db:
            rows = db.execute(query, (limit,)).fetchall()
        return [
            SeenMachine(mac, first, last, address or "", count)
            for mac, first, last, count, address in rows
        ]

    def count(self) -> int:
        """How many events the journal holds."""
        with self.reader() as db:
            (found,) = db.execute("SELECT count(*) FROM events").fetchone()
        return int(found)

    def latest_by_mac(self, per_mac: int) -> dict[str, list[BootEvent]]:
        """Every MAC's latest ``per_mac`` events (oldest first), in one read: a list of
        machines with their verdicts, without a query per machine."""
        query = (
            f"SELECT {_COLUMNS} FROM (SELECT *, row_number() OVER "  # noqa: S608 (fixed parts)
            "(PARTITION BY mac ORDER BY id DESC) AS nth FROM events WHERE mac != '') "
            "WHERE nth <= ? ORDER BY id"
        )
        found: dict[str, list[BootEvent]] = {}
        with self.reader() as db:
            for row in db.execute(query, (per_mac,)):
                event = _event(row)
                found.setdefault(event.mac, []).append(event)
        return found

    def mac_for(self, address: str, since: float) -> str | None:
        """The MAC of the latest event from ``since`` on that names ``address`` with a MAC:
        who had that address then (a transfer carries the client's address only)."""
        db = self._writer()
        try:
            row = db.execute(
                f"SELECT mac FROM events WHERE address = ? AND {_BOUND} AND time >= ? "  # noqa: S608 (fixed)
                "ORDER BY id DESC LIMIT 1",
                (address, since),
            ).fetchone()
        except sqlite3.Error as exc:
            raise JournalError(f"journal {self.path}: {exc}") from exc
        return str(row[0]) if row is not None else None
