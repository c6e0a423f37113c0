"""The SQLite lease store: what is saved survives a reopen, as a restart would see it."""

from __future__ import annotations

from ipaddress import IPv4Address
from pathlib import Path

import pytest

from netbootd.boot.leases import Lease, LeaseState
from netbootd.store.leases import SqliteLeaseStore, StoreError


async def test_save_reopen_delete(tmp_path: Path) -> None:
    path = tmp_path / "state" / "leases.sqlite3"
    store = SqliteLeaseStore(path)
    await store.open()
    a = Lease(IPv4Address("10.0.0.10"), "mac:aa", "aa", LeaseState.BOUND, 123.5, "host-a")
    b = Lease(IPv4Address("10.0.0.11"), "mac:bb", "bb", LeaseState.DECLINED, 99.0)
    await store.save(a)
    await store.save(b)
    # A client that moves to another address leaves no row behind at the old one.
    moved = Lease(IPv4Address("10.0.0.12"), "mac:aa", "aa", LeaseState.BOUND, 200.0)
    await store.save(moved)
    await store.close()

    again = SqliteLeaseStore(path)
    await again.open()
    assert sorted(await again.load(), key=lambda lease: lease.address) == [b, moved]
    await again.delete(moved.address)
    assert await again.load() == [b]
    await again.close()


async def test_unwritable_state_dir_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    store = SqliteLeaseStore(blocker / "leases.sqlite3")
    with pytest.raises(StoreError, match="cannot open lease database"):
        await store.open()
    await store.close()
