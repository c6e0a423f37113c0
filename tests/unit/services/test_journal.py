"""Gathering the journal's events: cheap to tell, tied to their machine when taken."""

from __future__ import annotations

import json

from netbootd.boot.journal import BootEvent, Kind, Service
from netbootd.services import journal as journal_module
from netbootd.services.journal import Journal, resolve

MAC = "52:54:00:00:00:01"


def _ack(now: float, address: str) -> journal_module.DhcpRecord:
    file, why = "undionly.kpxe", "bios"
    return (now, MAC, "REQUEST", "ACK", address, file, why, "", "pxe", "bios", 67, "", "")


def test_a_transfer_gets_the_mac_of_the_dhcp_exchange_that_gave_its_address() -> None:
    times = iter([2.0, 3.0])
    journal = Journal(clock=lambda: next(times))
    journal.dhcp(_ack(1.0, "10.0.0.5"))
    journal.transfer(Service.TFTP, "10.0.0.5", {"file": "undionly.kpxe", "result": "ok"})
    journal.transfer(Service.HTTP, "10.0.0.9", {"file": "x", "result": "ok"})
    events = journal.take()
    assert [(e.service, e.kind, e.mac, e.address) for e in events] == [
        ("dhcp", "REQUEST", MAC, "10.0.0.5"),
        ("tftp", "transfer", MAC, "10.0.0.5"),
        ("http", "transfer", "", "10.0.0.9"),
    ]
    assert events[0].fields == {
        "decision": "ACK",
        "address": "10.0.0.5",
        "file": "undionly.kpxe",
        "why": "bios",
        "client": "pxe",
        "arch": "bios",
        "port": "67",
    }
    assert journal.take() == []
    assert journal.taken == 3


def test_past_the_cap_events_are_dropped_and_counted(monkeypatch) -> None:
    monkeypatch.setattr(journal_module, "MAX_PENDING", 2)
    journal = Journal(clock=lambda: 1.0)
    for _ in range(3):
        journal.inventory(Kind.INSTALLED, MAC, "web1")
    assert journal.dropped == 1
    assert len(journal.take()) == 2


def test_resolve_looks_each_address_up_once() -> None:
    asked: list[str] = []

    def lookup(address: str) -> str | None:
        asked.append(address)
        return MAC if address == "10.0.0.5" else None

    events = [
        BootEvent(1.0, "", "10.0.0.5", "http", "transfer", {}),
        BootEvent(2.0, "", "10.0.0.5", "http", "transfer", {}),
        BootEvent(3.0, "", "10.0.0.6", "http", "transfer", {}),
        BootEvent(4.0, "aa:bb:cc:dd:ee:ff", "10.0.0.6", "http", "transfer", {}),
    ]
    assert [e.mac for e in resolve(events, lookup)] == [MAC, MAC, "", "aa:bb:cc:dd:ee:ff"]
    assert asked == ["10.0.0.5", "10.0.0.6"]


def test_rows_made_in_the_writer_hold_what_take_gives() -> None:
    """The writer's rows (RowMaker) and take()'s events say the same, field for field; a
    transfer is tied to the MAC an ACK of its own batch gave its address."""
    records = [
        _ack(1.0, "10.0.0.5"),
        (2.0, MAC, "DISCOVER", "OFFER", "", "", "", "", "plain", "unknown", 4011, "10.0.0.1", ""),
        (3.0, MAC, "REQUEST", "ignored", "", "", "", 'why "not"\n', "pxe", "bios", 67, "", "m1"),
    ]
    transfer = BootEvent(1.5, "", "10.0.0.5", "tftp", "transfer", {"file": "a", "result": "ok"})
    journal = Journal()
    for record in records:
        journal.dhcp(record)
    journal.transfer(Service.TFTP, "10.0.0.5", {"file": "a", "result": "ok"})
    expected = journal.take()
    rows = journal_module.RowMaker().rows(records, [transfer], lambda _: None)
    assert [row[0] for row in rows] == [1.0, 1.5, 2.0, 3.0]
    made = [
        BootEvent(t, mac, address, service, kind, json.loads(text))
        for t, mac, address, service, kind, text in rows
    ]
    by_time = sorted(expected, key=lambda e: e.time)
    assert [(e.mac, e.address, e.service, e.kind, dict(e.fields)) for e in made[:1] + made[2:]] == [
        (e.mac, e.address, e.service, e.kind, dict(e.fields))
        for e in by_time
        if e.service == "dhcp"
    ]
    assert made[1].mac == MAC and made[1].fields == {"file": "a", "result": "ok"}
    # Encoded once, the repeating part is reused: the same record makes the same row.
    maker = journal_module.RowMaker()
    assert maker.dhcp_row(records[2]) == maker.dhcp_row(records[2])
