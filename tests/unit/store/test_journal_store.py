"""The journal's database: events in and out, in order, bounded."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from netbootd.boot.journal import BootEvent
from netbootd.store.journal import JournalError, JournalStore


def _event(
    time: float,
    mac: str = "52:54:00:00:00:01",
    address: str = "",
    kind: str = "DISCOVER",
    **fields: str,
) -> BootEvent:
    return BootEvent(time, mac, address, "dhcp", kind, fields)


def test_events_come_back_in_order_with_their_fields(tmp_path: Path) -> None:
    store = JournalStore(tmp_path / "journal.sqlite3")
    store.open()
    store.append([_event(1.0, decision="OFFER"), _event(2.0, address="10.0.0.5", decision="ACK")])
    store.append([_event(3.0, mac="52:54:00:00:00:02")])
    events = store.events(mac="52:54:00:00:00:01")
    assert [(e.time, e.get("decision"), e.address) for e in events] == [
        (1.0, "OFFER", ""),
        (2.0, "ACK", "10.0.0.5"),
    ]
    assert [e.id for e in store.events()] == [1, 2, 3]
    assert [e.id for e in store.events(after=1, limit=1)] == [2]
    assert [e.id for e in store.events(newest=True, limit=2)] == [2, 3]
    assert store.last_id() == 3 and store.count() == 3
    store.close()


def test_machines_and_the_mac_of_an_address(tmp_path: Path) -> None:
    store = JournalStore(tmp_path / "journal.sqlite3")
    store.open()
    store.append(
        [
            _event(1.0, address="10.0.0.5", kind="REQUEST"),
            _event(5.0, mac="52:54:00:00:00:02", address="10.0.0.6", kind="REQUEST"),
            _event(6.0, mac="", address="10.0.0.7", kind="REQUEST"),
            _event(7.0, mac="52:54:00:00:00:03", address="10.0.0.8"),
        ]
    )
    seen = store.machines()
    assert [(m.mac, m.last, m.address, m.events) for m in seen] == [
        ("52:54:00:00:00:03", 7.0, "10.0.0.8", 1),
        ("52:54:00:00:00:02", 5.0, "10.0.0.6", 1),
        ("52:54:00:00:00:01", 1.0, "10.0.0.5", 1),
    ]
    assert store.mac_for("10.0.0.5", since=0) == "52:54:00:00:00:01"
    assert store.mac_for("10.0.0.5", since=2.0) is None  # too long ago to say
    assert store.mac_for("10.0.0.7", since=0) is None  # no event there named its MAC
    assert store.mac_for("10.0.0.8", since=0) is None  # only offered it: not the client's yet
    store.close()


def test_prune_keeps_the_newest_events_and_drops_the_old(tmp_path: Path) -> None:
    store = JournalStore(tmp_path / "journal.sqlite3", max_events=3, max_age=100.0)
    store.open()
    store.append([_event(float(t)) for t in range(10)])
    assert store.prune(now=50.0) == 7
    assert [e.time for e in store.events()] == [7.0, 8.0, 9.0]
    assert store.prune(now=108.5) == 2  # older than 100 s: 7 and 8
    assert [e.time for e in store.events()] == [9.0]
    assert store.prune(now=500.0) == 1  # all of them too old
    assert store.events() == []
    assert store.machines() == []  # nothing is left of the machine either
    store.close()


def test_a_second_writer_shares_the_file(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    first, second = JournalStore(path), JournalStore(path)
    first.open()
    second.open()
    first.append([_event(1.0)])
    second.append([_event(2.0)])
    assert [e.time for e in first.events()] == [1.0, 2.0]
    first.close()
    second.close()


def test_a_file_that_is_no_database_is_one_error(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    path.write_bytes(b"not a database, at all" * 100)
    store = JournalStore(path)
    with pytest.raises(JournalError, match=r"journal .*journal\.sqlite3"):
        store.open()


def test_damaged_fields_read_as_empty(tmp_path: Path) -> None:
    store = JournalStore(tmp_path / "journal.sqlite3")
    store.open()
    store.append([_event(1.0, decision="OFFER")])
    db = sqlite3.connect(tmp_path / "journal.sqlite3")
    db.execute("UPDATE events SET fields = '{broken'")
    db.commit()
    db.close()
    assert store.events()[0].fields == {}
    store.close()


def test_the_latest_events_of_every_mac_in_one_read(tmp_path: Path) -> None:
    store = JournalStore(tmp_path / "journal.sqlite3")
    store.open()
    a, b = "52:54:00:00:00:01", "52:54:00:00:00:02"
    store.append([_event(float(t), mac=a if t % 2 else b) for t in range(1, 8)])
    store.append([_event(9.0, mac="")])  # no MAC: no machine's
    latest = store.latest_by_mac(2)
    assert {mac: [e.time for e in events] for mac, events in latest.items()} == {
        a: [5.0, 7.0],
        b: [4.0, 6.0],
    }
    store.close()


def test_a_machines_events_among_others_and_after_a_prune(tmp_path: Path) -> None:
    store = JournalStore(tmp_path / "journal.sqlite3", max_events=5)
    store.open()
    one, two = "52:54:00:00:00:01", "52:54:00:00:00:02"
    store.append([_event(float(t), mac=one if t % 2 else two) for t in range(10)])
    assert [e.time for e in store.events(mac=one)] == [1.0, 3.0, 5.0, 7.0, 9.0]
    assert [e.time for e in store.events(mac=one, newest=True, limit=2)] == [7.0, 9.0]
    assert [e.time for e in store.events(mac=one, after=4)] == [5.0, 7.0, 9.0]
    assert store.events(mac="52:54:00:00:00:09") == []
    store.prune(now=10.0)  # the five newest are kept
    assert [e.time for e in store.events(mac=two)] == [6.0, 8.0]
    assert {m.mac for m in store.machines()} == {one, two}
    store.close()


def test_any_text_comes_back_as_it_went_in(tmp_path: Path) -> None:
    """A peer's text (a vendor class, a host name) may hold quotes, escapes, control
    characters, any script, or bytes that were not UTF-8 (a lone surrogate)."""
    odd = 'a "quoted" \\ back\nslash\x00\x1b[31m é漢字 \U0001f600 \udcff'
    store = JournalStore(tmp_path / "journal.sqlite3")
    store.open()
    store.append([_event(1.5, address="10.0.0.5", reason=odd), _event(2.25, machine="漢字")])
    first, second = store.events()
    assert (first.time, first.get("reason"), first.address) == (1.5, odd, "10.0.0.5")
    assert (second.time, second.get("machine")) == (2.25, "漢字")
    store.close()
