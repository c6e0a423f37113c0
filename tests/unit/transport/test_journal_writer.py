"""The journal's writer: batches stored off the event loop, tied to machines, never fatal."""

from __future__ import annotations

from pathlib import Path

from netbootd.boot.journal import Service
from netbootd.services.journal import Journal
from netbootd.store.journal import JournalStore
from netbootd.transport.journal import JournalWriter
from netbootd.transport.netif import neighbours

MAC = "52:54:00:00:00:01"


async def test_the_writer_stores_and_ties_transfers_to_the_neighbour_table(tmp_path: Path) -> None:
    journal = Journal()
    store = JournalStore(tmp_path / "journal.sqlite3")
    writer = JournalWriter(journal, store, neighbour_table=lambda: {"10.0.0.7": MAC})
    await writer.start()
    journal.transfer(Service.HTTP, "10.0.0.7", {"file": "vmlinuz", "result": "ok"})
    await writer.flush()
    assert [(e.mac, e.get("file")) for e in store.events()] == [(MAC, "vmlinuz")]
    journal.transfer(Service.HTTP, "10.0.0.8", {"file": "initrd.img", "result": "ok"})
    await writer.close()  # what is left is stored at close
    reopened = JournalStore(tmp_path / "journal.sqlite3")
    assert [(e.mac, e.get("file")) for e in reopened.events()] == [
        (MAC, "vmlinuz"),
        ("", "initrd.img"),
    ]
    assert writer.written == 2


async def test_a_database_that_cannot_be_written_loses_events_not_the_server(
    tmp_path: Path, caplog
) -> None:
    journal = Journal()
    store = JournalStore(tmp_path / "journal.sqlite3")
    writer = JournalWriter(journal, store, prunes=False)
    await writer.start()
    store.close()  # gone from under the writer
    journal.transfer(Service.TFTP, "10.0.0.7", {"file": "x", "result": "ok"})
    await writer.flush()
    assert writer.failed == 1
    assert "journal-write-failed" in caplog.text
    await writer.close()


def test_the_neighbour_table_is_read_for_complete_entries(tmp_path: Path) -> None:
    table = tmp_path / "arp"
    table.write_text(
        "IP address       HW type     Flags       HW address            Mask     Device\n"
        "10.0.0.7         0x1         0x2         52:54:00:AA:00:01     *        veth0\n"
        "10.0.0.8         0x1         0x0         00:00:00:00:00:00     *        veth0\n"
        "garbage\n"
    )
    assert neighbours(table) == {"10.0.0.7": "52:54:00:aa:00:01"}
    assert neighbours(tmp_path / "none") == {}


async def test_a_damaged_journal_is_set_aside_and_a_new_one_begun(tmp_path: Path, caplog) -> None:
    path = tmp_path / "journal.sqlite3"
    path.write_bytes(b"not a database, at all" * 100)
    journal = Journal()
    writer = JournalWriter(journal, JournalStore(path))
    await writer.start()
    journal.transfer(Service.TFTP, "10.0.0.7", {"file": "x", "result": "ok"})
    await writer.close()
    assert [e.get("file") for e in JournalStore(path).events()] == ["x"]
    aside = machine_names(tmp_path, ".damaged-")
    assert len(aside) == 1 and aside[0].startswith("journal.sqlite3.damaged-")
    assert "journal-set-aside" in caplog.text


def machine_names(directory: Path, part: str) -> list[str]:
    return [p.name for p in directory.iterdir() if part in p.name]
