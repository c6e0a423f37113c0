"""The metrics page over fake counts: the exact exposition lines, the workers' reports added
in, the journal read in a thread at most every few seconds."""

from __future__ import annotations

import time
from pathlib import Path

from prometheus_client import generate_latest

from netbootd.api import metrics
from netbootd.api.metrics import ServerCollector, boots_by_verdict, registry
from netbootd.api.view import OperatorView
from netbootd.boot.journal import BootEvent
from netbootd.services.metrics import Histogram, PoolUse, WorkerReport
from netbootd.store.journal import JournalStore
from tests.helpers.config import parse

BOUNDS = (0.001, 0.01)


def _page(view: OperatorView) -> list[str]:
    return generate_latest(registry(ServerCollector(view))).decode().splitlines()


def _view(**fields: object) -> OperatorView:
    return OperatorView(config=parse("--no-dhcp", "--root", "/"), started=0.0, **fields)  # type: ignore[arg-type]


def test_exposition_of_this_process_and_the_workers_reports() -> None:
    report = WorkerReport(
        1,
        {"dhcp": {"DISCOVER:OFFER": 2, "sent": 2}},
        Histogram(BOUNDS, (1, 1, 0), 0.006),
        (PoolUse("10.0.0.0/24", "10.0.0.100-10.0.0.139", 40, bound=3, offered=1),),
        {"dropped": 0, "failed": 4, "written": 10},
    )
    view = _view(
        counters=lambda: {
            "dhcp": {"DISCOVER:OFFER": 3, "bad-request:option": 1, "sent": 3},
            "tftp": {"sent": 2},
        },
        answer_times=lambda: Histogram(BOUNDS, (2, 0, 1), 1.5),
        pools=lambda: [PoolUse("10.0.0.0/24", "10.0.0.100-10.0.0.139", 40, bound=1, declined=2)],
        workers=lambda: [report],
    )
    lines = _page(view)
    expected = [
        'netbootd_outcomes_total{outcome="DISCOVER:OFFER",service="dhcp"} 5.0',
        'netbootd_outcomes_total{outcome="bad-request:option",service="dhcp"} 1.0',
        'netbootd_outcomes_total{outcome="sent",service="dhcp"} 5.0',
        'netbootd_outcomes_total{outcome="sent",service="tftp"} 2.0',
        "# TYPE netbootd_dhcp_answer_seconds histogram",
        'netbootd_dhcp_answer_seconds_bucket{le="0.001"} 3.0',
        'netbootd_dhcp_answer_seconds_bucket{le="0.01"} 4.0',
        'netbootd_dhcp_answer_seconds_bucket{le="+Inf"} 5.0',
        "netbootd_dhcp_answer_seconds_count 5.0",
        "netbootd_dhcp_answer_seconds_sum 1.506",
        'netbootd_leases{pool="10.0.0.100-10.0.0.139",state="bound",subnet="10.0.0.0/24"} 4.0',
        'netbootd_leases{pool="10.0.0.100-10.0.0.139",state="offered",subnet="10.0.0.0/24"} 1.0',
        'netbootd_leases{pool="10.0.0.100-10.0.0.139",state="declined",subnet="10.0.0.0/24"} 2.0',
        'netbootd_pool_addresses{pool="10.0.0.100-10.0.0.139",subnet="10.0.0.0/24"} 40.0',
        "netbootd_dhcp_workers 2.0",
    ]
    for line in expected:
        assert line in lines, (line, lines)
    # No journal: none of its metrics, nor transfer rates (which are read from its events).
    assert not [line for line in lines if "journal" in line or "transfer_rate" in line]
    assert any(
        line.startswith("# HELP netbootd_transfer_rate") for line in _page(
            _view(transfer_rates=lambda: {"tftp": Histogram.empty(BOUNDS)})
        )
    )  # fmt: skip


def test_transfer_rates_are_labelled_by_service() -> None:
    view = _view(
        transfer_rates=lambda: {
            "tftp": Histogram(BOUNDS, (0, 1, 0), 0.004),
            "http": Histogram(BOUNDS, (0, 0, 2), 900.0),
        }
    )
    lines = _page(view)
    name = "netbootd_transfer_rate_megabytes_per_second"
    for line in (
        f'{name}_bucket{{le="0.01",service="tftp"}} 1.0',
        f'{name}_bucket{{le="+Inf",service="http"}} 2.0',
        f'{name}_sum{{service="http"}} 900.0',
        f'{name}_count{{service="tftp"}} 1.0',
    ):
        assert line in lines, (line, lines)
    help_line = next(line for line in lines if line.startswith(f"# HELP {name}"))
    assert "journal = false" in help_line


def _events(mac: str, start: float, *kinds: tuple[str, str, dict[str, str]]) -> list[BootEvent]:
    return [
        BootEvent(start + n, mac, "10.0.0.7", service, kind, fields)
        for n, (service, kind, fields) in enumerate(kinds)
    ]


def test_boots_by_verdict_take_each_machines_latest_attempt() -> None:
    now = 1_000_000.0
    ok = {"result": "ok", "bytes": "100", "seconds": "0.1"}
    booted = _events(
        "52:54:00:00:00:01", now - 30,
        ("dhcp", "DISCOVER", {"decision": "OFFER", "address": "10.0.0.7", "client": "pxe"}),
        ("tftp", "transfer", {**ok, "file": "vmlinuz", "role": "kernel"}),
        ("tftp", "transfer", {**ok, "file": "initrd.img", "role": "initrd"}),
    )  # fmt: skip
    waiting = _events(
        "52:54:00:00:00:02", now - 5,
        ("dhcp", "DISCOVER", {"decision": "OFFER", "address": "10.0.0.8", "client": "pxe"}),
    )  # fmt: skip
    found = boots_by_verdict([booted, waiting], now)
    assert found == {"booted": 1, "stalled": 0, "in-progress": 1}


async def test_the_journal_is_read_at_most_every_few_seconds(tmp_path: Path) -> None:
    store = JournalStore(tmp_path / "journal.sqlite3")
    store.open()
    now = time.time()
    store.append(
        _events(
            "52:54:00:00:00:03", now - 1,
            ("dhcp", "DISCOVER", {"decision": "OFFER", "address": "10.0.0.9", "client": "pxe"}),
        )
    )  # fmt: skip
    clock = [100.0]
    view = _view(journal=store, journal_counts=lambda: {"dropped": 1, "failed": 0, "written": 1})
    wall = [now]
    collector = ServerCollector(view, clock=lambda: wall[0], monotonic=lambda: clock[0])
    reads = []
    original = collector.read_journal

    def counted() -> metrics.JournalReading:
        reads.append(clock[0])
        return original()

    collector.read_journal = counted  # type: ignore[method-assign]
    await collector.refresh()
    store.append(_events("52:54:00:00:00:04", now, ("dhcp", "DISCOVER", {"decision": "OFFER"})))
    clock[0] += metrics.JOURNAL_CACHE / 2
    await collector.refresh()
    lines = generate_latest(registry(collector)).decode().splitlines()
    assert reads == [100.0]
    assert "netbootd_journal_events 1.0" in lines
    assert 'netbootd_boots{verdict="in-progress"} 1.0' in lines
    assert "netbootd_journal_dropped_total 1.0" in lines
    assert "netbootd_journal_readable 1.0" in lines
    clock[0] += metrics.JOURNAL_CACHE
    await collector.refresh()
    assert len(reads) == 2
    lines = generate_latest(registry(collector)).decode().splitlines()
    assert "netbootd_journal_events 2.0" in lines
    assert 'netbootd_boots{verdict="in-progress"} 2.0' in lines
    # A day on, both machines are out of the window: forgotten, though still stored.
    wall[0] += metrics.BOOT_WINDOW + 10
    clock[0] += metrics.JOURNAL_CACHE
    await collector.refresh()
    lines = generate_latest(registry(collector)).decode().splitlines()
    assert "netbootd_journal_events 2.0" in lines
    assert [line for line in lines if line.startswith("netbootd_boots{")] == [
        f'netbootd_boots{{verdict="{v}"}} 0.0' for v in ("booted", "stalled", "in-progress")
    ]
    store.close()
