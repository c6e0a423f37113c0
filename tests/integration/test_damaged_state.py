"""Damaged state is never silent: a lease database that is corrupt, not SQLite or another
program's stops the start with one line saying what to do; one that is new is said to be; the
ready line counts the leases; uploads cut short by the last run are removed at start.

The store is opened in process; ``netbootd serve`` runs in a network namespace of its own
(``unshare --net``, gone with the process), so that its port 67 is no one else's.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from netbootd.boot.leases import Lease, LeaseState
from netbootd.store.leases import DamagedStoreError, Found, SqliteLeaseStore

SCHEMA = """
CREATE TABLE leases (
    address INTEGER PRIMARY KEY, client TEXT NOT NULL, mac TEXT NOT NULL,
    state TEXT NOT NULL, expires REAL NOT NULL, hostname TEXT
);
CREATE INDEX leases_client ON leases (client);
"""


def _database(path: Path, rows: int = 3000, state: str = "bound") -> None:
    db = sqlite3.connect(path)
    db.executescript(SCHEMA)
    db.executemany(
        "INSERT INTO leases VALUES (?, ?, ?, ?, ?, ?)",
        [(0x0A000000 + i, f"mac:{i:012x}", f"{i:012x}", state, 9e9, None) for i in range(rows)],
    )
    db.commit()
    db.close()


def _damaged_index(path: Path) -> None:
    """A database whose leases all read back, but whose client index is broken: what a torn
    write leaves, and what a plain SELECT of the table never notices."""
    _database(path)
    db = sqlite3.connect(path)
    (root,) = db.execute(
        "SELECT rootpage FROM sqlite_master WHERE name = 'leases_client'"
    ).fetchone()
    (page_size,) = db.execute("PRAGMA page_size").fetchone()
    db.close()
    data = bytearray(path.read_bytes())
    end = root * page_size  # the index's root page, whose cells lie at its end
    data[end - 600 : end - 8] = bytes(592)
    path.write_bytes(bytes(data))


async def _open(path: Path) -> SqliteLeaseStore:
    store = SqliteLeaseStore(path)
    try:
        await store.open()
        await store.load()
    except BaseException:
        await store.close()
        raise
    return store


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        ("garbage", "file is not a database"),
        ("index", "quick_check: "),
        ("other-program", "no lease table, but settings"),
        ("other-columns", "the lease table has columns address, who"),
        ("bad-row", "'expired' is not a valid LeaseState"),
    ],
)
async def test_a_damaged_database_is_refused_saying_what_to_do(
    tmp_path: Path, damage: str, why: str
) -> None:
    path = tmp_path / "leases.sqlite3"
    if damage == "garbage":
        path.write_bytes(random.Random(7).randbytes(16384))
    elif damage == "index":
        _damaged_index(path)
    elif damage == "other-program":
        sqlite3.connect(path).executescript("CREATE TABLE settings (k, v);").close()
    elif damage == "other-columns":
        sqlite3.connect(path).executescript("CREATE TABLE leases (address, who);").close()
    else:
        _database(path, rows=3, state="expired")
    before = path.read_bytes()
    with pytest.raises(DamagedStoreError) as caught:
        await _open(path)
    message = str(caught.value)
    assert message.startswith(f"lease database {path} is damaged or not netbootd's (")
    assert why in message
    assert message.endswith(
        f"move it aside (mv {path} {path}.damaged) to start with no leases, or put back a good copy"
    )
    assert "\n" not in message
    # Left as it was found, for the operator to look at (a readable file is in WAL mode now).
    if damage == "bad-row":
        rows = sqlite3.connect(path).execute("SELECT state FROM leases").fetchall()
        assert rows == [("expired",)] * 3
    else:
        assert path.read_bytes() == before


@pytest.mark.parametrize(
    ("make", "found"),
    [
        (lambda path: None, Found.NO_FILE),
        (lambda path: path.write_bytes(b""), Found.EMPTY_FILE),
        (
            lambda path: sqlite3.connect(path).executescript("PRAGMA user_version = 1;"),
            Found.NO_TABLES,
        ),
        (lambda path: _database(path, rows=2), Found.LEASES),
    ],
)
async def test_what_open_found_is_said(
    tmp_path: Path, make: Callable[[Path], object], found: Found
) -> None:
    path = tmp_path / "leases.sqlite3"
    make(path)
    store = await _open(path)
    try:
        assert store.found is found
        lease = Lease(IPv4Address("10.9.0.1"), "mac:x", "x", LeaseState.BOUND, 9e9)
        await store.save(lease)  # and it is a lease database now
    finally:
        await store.close()
    assert (await _open(path)).found is Found.LEASES


# --- netbootd serve -------------------------------------------------------------------------

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="a network namespace of its own needs root and unshare",
)


class Serve:
    """``netbootd serve`` in authoritative mode on the loopback of a namespace of its own."""

    def __init__(self, tmp_path: Path, *flags: str) -> None:
        self.state = tmp_path / "state"
        self.root = tmp_path / "root"
        self.uploads = tmp_path / "uploads"
        for directory in (self.state, self.root, self.uploads):
            directory.mkdir(exist_ok=True)
        self.log = tmp_path / "stderr.log"
        self.argv = [
            "unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$@"', "sh",
            sys.executable, "-m", "netbootd", "serve", "--interface", "lo",
            "--dhcp-range", "127.0.0.100-127.0.0.200", "--no-http",
            "--root", str(self.root), "--state-dir", str(self.state),
            "--tftp-upload-dir", str(self.uploads), "--log-format", "json", *flags,
        ]  # fmt: skip
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        with self.log.open("wb") as err:
            self.process = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stderr=err, env=env
            )

    def text(self) -> str:
        return self.log.read_text()

    def events(self) -> list[dict[str, str]]:
        """The JSON lines written so far."""
        lines = self.text().splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def event(self, name: str) -> dict[str, str]:
        [found] = [line for line in self.events() if line.get("event") == name]
        return found

    def wait_ready(self, timeout: float = 30) -> dict[str, str]:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if '"event": "ready"' in self.text():
                return self.event("ready")
            if self.process.poll() is not None:
                raise AssertionError(f"netbootd ended ({self.process.returncode}):\n{self.text()}")
            time.sleep(0.05)
        raise AssertionError(f"no ready line in:\n{self.text()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            if self.process.wait(timeout=30) is None:
                self.process.kill()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Serve]]:
    started: list[Serve] = []

    def make(*flags: str) -> Serve:
        server = Serve(tmp_path, *flags)
        started.append(server)
        return server

    yield make
    for server in started:
        if server.process is not None and server.process.poll() is None:
            server.process.kill()
            server.process.wait()


@needs_root
def test_serve_refuses_a_damaged_database_in_one_line(serve: Callable[..., Serve]) -> None:
    server = serve()
    path = server.state / "leases.sqlite3"
    _damaged_index(path)
    server.start()
    assert server.process is not None
    assert server.process.wait(timeout=30) == 1
    lines = server.text().splitlines()
    assert '"event": "ready"' not in server.text(), lines
    assert lines[-1].startswith(
        f"netbootd: cannot start: lease database {path} is damaged or not netbootd's (quick_check: "
    )
    assert lines[-1].endswith(f"move it aside (mv {path} {path}.damaged) to start with no "
                              "leases, or put back a good copy")  # fmt: skip
    assert not any("Traceback" in line for line in lines), lines


@needs_root
def test_the_ready_line_counts_the_leases(serve: Callable[..., Serve]) -> None:
    server = serve()
    db_path = server.state / "leases.sqlite3"
    db = sqlite3.connect(db_path)
    db.executescript(SCHEMA)
    rows = [
        (int(IPv4Address("127.0.0.101")), "mac:a", "a", "bound", 9e9, None),
        (int(IPv4Address("127.0.0.102")), "mac:b", "b", "bound", 9e9, "b"),
        (int(IPv4Address("127.0.0.103")), "mac:c", "c", "declined", 9e9, None),
    ]
    db.executemany("INSERT INTO leases VALUES (?, ?, ?, ?, ?, ?)", rows)
    db.commit()
    db.close()
    server.start()
    ready = server.wait_ready()
    server.stop()
    assert (ready["leases"], ready["declined"]) == ("2", "1")
    assert "lease-database-new" not in server.text()


@needs_root
def test_an_empty_database_file_starts_new_and_says_so(serve: Callable[..., Serve]) -> None:
    server = serve()
    (server.state / "leases.sqlite3").write_bytes(b"")
    server.start()
    ready = server.wait_ready()
    server.stop()
    assert (ready["leases"], ready["declined"]) == ("0", "0")
    new = server.event("lease-database-new")
    assert (new["level"], new["found"]) == ("WARNING", "empty-file")
    assert new["path"] == str(server.state / "leases.sqlite3")


@needs_root
def test_upload_leftovers_are_removed_at_start(serve: Callable[..., Serve]) -> None:
    server = serve()
    (server.uploads / "sub").mkdir()
    leftovers = [
        server.uploads / ".dump.bin.0123456789abcdef.part",
        server.uploads / "sub" / ".core.fedcba9876543210.part",
    ]
    kept = [
        server.uploads / "dump.bin",  # a finished upload
        server.uploads / ".notes.part",  # not a name uploads make
        server.uploads / ".x.0123456789ABCDEF.part",  # nor this (upper case)
    ]
    for path in leftovers + kept:
        path.write_bytes(b"x")
    server.start()
    server.wait_ready()
    server.stop()
    assert [path for path in leftovers if path.exists()] == []
    assert [path for path in kept if path.exists()] == kept
    removed = server.event("upload-leftovers-removed")
    assert (removed["dir"], removed["files"]) == (str(server.uploads), "2")
