"""The SQLite lease store: what is saved survives a reopen, as a restart would see it."""

from __future__ import annotations

import asyncio
import sqlite3
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


async def test_group_commit_keeps_every_lease_and_the_order(tmp_path: Path) -> None:
    path = tmp_path / "leases.sqlite3"
    store = SqliteLeaseStore(path)
    await store.open()
    leases = [
        Lease(
            IPv4Address(f"10.0.{i // 250}.{i % 250 + 1}"),
            f"mac:{i}",
            f"m{i}",
            LeaseState.BOUND,
            9e9,
        )
        for i in range(300)
    ]
    gone = Lease(IPv4Address("10.9.0.1"), "mac:gone", "g", LeaseState.BOUND, 9e9)
    moved = Lease(IPv4Address("10.9.0.2"), "mac:0", "m0", LeaseState.BOUND, 9e9)
    # All at once, as a burst of clients would; a save then a delete of one address, and a
    # client that moves, must land in the order they were asked for.
    await asyncio.gather(
        *(store.save(lease) for lease in leases),
        store.save(gone),
        store.delete(gone.address),
        store.save(moved),
    )
    assert store.written == 303
    assert store.batches < 100  # joined into few transactions
    await store.close()

    again = SqliteLeaseStore(path)
    await again.open()
    found = {lease.address: lease for lease in await again.load()}
    await again.close()
    assert gone.address not in found
    assert found[moved.address] == moved and leases[0].address not in found
    assert all(found[lease.address] == lease for lease in leases[1:])


async def test_a_failed_batch_fails_every_caller_in_it(tmp_path: Path) -> None:
    path = tmp_path / "leases.sqlite3"
    store = SqliteLeaseStore(path)
    await store.open()
    with sqlite3.connect(path) as other:  # the table goes from under the running store
        other.execute("DROP TABLE leases")
    lease = Lease(IPv4Address("10.0.0.1"), "mac:a", "a", LeaseState.BOUND, 9e9)
    results = await asyncio.gather(store.save(lease), store.save(lease), return_exceptions=True)
    assert all(isinstance(result, StoreError) for result in results), results
    await store.close()


async def test_the_store_thread_ends_with_close_after_the_writes_queued(tmp_path: Path) -> None:
    import threading

    def store_threads() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if t.name == "netbootd-leases"}

    before = store_threads()
    store = SqliteLeaseStore(tmp_path / "leases.sqlite3")
    await store.open()
    (thread,) = store_threads() - before
    lease = Lease(IPv4Address("10.0.0.1"), "mac:a", "a", LeaseState.BOUND, 9e9)
    saving = asyncio.ensure_future(store.save(lease))
    await asyncio.sleep(0)  # the write is queued, not yet done
    await store.close()
    assert saving.done() and saving.exception() is None
    thread.join(timeout=5)
    assert not thread.is_alive()
    again = SqliteLeaseStore(tmp_path / "leases.sqlite3")
    await again.open()
    assert await again.load() == [lease]
    await again.close()
