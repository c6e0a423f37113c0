"""``/metrics`` of a real server in a namespace, after real DHCP exchanges and file fetches.

The page parses as Prometheus text; its outcome counters are the ones SIGUSR1 logs; the DHCP
answer-time histogram counts every answer sent; the lease gauges count the leases given; with
two DHCP workers the counts cover both workers' clients. Needs root.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from netbootd_lab import Lab, NetbootdServer
from netbootd_lab.netns import Host
from tests.integration.test_dhcp_workers import CLIENT, CLIENTS, _exchanges

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
]

KERNEL = os.urandom(300_000)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    with Lab(tmp_path / "lab") as the_lab:
        yield the_lab


def _server(lab: Lab, tmp_path: Path, workers: int) -> NetbootdServer:
    root = tmp_path / "root"
    root.mkdir(exist_ok=True)
    (root / "vmlinuz").write_bytes(KERNEL)
    server = NetbootdServer(
        lab,
        root,
        state_dir=tmp_path / "state",
        log_path=lab.workdir / "netbootd.log",
        dhcp_range=lab.dhcp_range(100, 139),
        boot=(),
        extra_args=[f"--dhcp-workers={workers}"] if workers > 1 else [],
    )
    server.start()
    if workers > 1:
        server.wait_event(lambda ev: ev.event == "dhcp-workers", timeout=30)
    return server


def _exchange(client: Host) -> dict[str, list[int | str]]:
    ran = client.ns_exec(
        [sys.executable, "-c", CLIENT, "broadcast", json.dumps(_exchanges(0x66000000))],
        check=False,
        timeout=60,
    )
    assert ran.returncode == 0, ran.stderr
    seen: dict[str, list[int | str]] = json.loads(ran.stdout)
    return seen


def _scrape(lab: Lab, client: Host) -> dict[str, list[Sample]]:
    got = client.ns_exec(
        ["curl", "-sf", "-D", "/dev/stderr", f"http://{lab.server_ip}/metrics"],
        check=False,
        timeout=30,
    )
    assert got.returncode == 0, got.stderr
    assert "content-type: text/plain; version=" in got.stderr.lower()
    return {family.name: family.samples for family in text_string_to_metric_families(got.stdout)}


def _value(samples: list[Sample], name: str, **labels: str) -> float:
    found = [s.value for s in samples if s.name == name and s.labels == labels]
    assert len(found) == 1, (name, labels, samples)
    return found[0]


def _logged_counters(server: NetbootdServer, since: int) -> dict[str, dict[str, int]]:
    """The ``counters`` lines logged after the first ``since`` events, summed over workers."""
    found: dict[str, dict[str, int]] = {}
    for ev in server.events()[since:]:
        if ev.event != "counters" or ev.get("counts") == "-":
            continue
        into = found.setdefault(ev.get("service"), {})
        for item in ev.get("counts").split(","):
            key, value = item.rsplit("=", 1)
            into[key] = into.get(key, 0) + int(value)
    return found


def _outcomes(samples: dict[str, list[Sample]]) -> dict[str, dict[str, int]]:
    found: dict[str, dict[str, int]] = {}
    for sample in samples["netbootd_outcomes"]:
        assert sample.name == "netbootd_outcomes_total"
        into = found.setdefault(sample.labels["service"], {})
        into[sample.labels["outcome"]] = int(sample.value)
    return found


@pytest.mark.parametrize("workers", [1, 2])
def test_metrics_after_real_exchanges_and_fetches(lab: Lab, tmp_path: Path, workers: int) -> None:
    server = _server(lab, tmp_path, workers)
    client = lab.add_host("clients")
    seen = _exchange(client)
    assert len(seen) == CLIENTS and all(acks == 1 for _, acks, _ in seen.values()), seen
    fetched = client.ns_exec(
        ["curl", "-sf", "-o", "/dev/null", "-w", "%{size_download}",
         f"http://{lab.server_ip}/vmlinuz"],
        check=False, timeout=30,
    )  # fmt: skip
    assert fetched.stdout == str(len(KERNEL)), fetched.stderr
    tftp = client.ns_exec(
        ["curl", "-sf", "-o", "/dev/null", "-w", "%{size_download}",
         f"tftp://{lab.server_ip}/vmlinuz"],
        check=False, timeout=30,
    )  # fmt: skip
    assert tftp.stdout == str(len(KERNEL)), tftp.stderr
    time.sleep(2.5)  # the workers' next reports, and the transfers' journal batch

    metrics = _scrape(lab, client)
    before = len(server.events())
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = [ev for ev in server.events()[before:] if ev.event == "counters"]
        if {ev.get("worker", "0") for ev in lines if ev.get("service") == "dhcp"} == {
            str(w) for w in range(workers)
        } or (workers == 1 and lines):
            break
        time.sleep(0.1)
    time.sleep(0.3)
    logged = _logged_counters(server, before)
    scraped = _outcomes(metrics)
    server.stop()

    # The counters are SIGUSR1's, all of them, summed over the workers (the metrics page is an
    # operator's route, not a file served: it counts in none of them).
    assert scraped == logged, server.log_tail()
    assert scraped["dhcp"]["DISCOVER:OFFER"] == CLIENTS
    assert scraped["dhcp"]["REQUEST:ACK"] == CLIENTS
    assert scraped["http"]["served"] == 1

    answered = metrics["netbootd_dhcp_answer_seconds"]
    count = _value(answered, "netbootd_dhcp_answer_seconds_count")
    assert count == scraped["dhcp"]["sent"] == 2 * CLIENTS
    assert _value(answered, "netbootd_dhcp_answer_seconds_bucket", le="+Inf") == count
    assert 0 < _value(answered, "netbootd_dhcp_answer_seconds_sum") < count
    assert _value(metrics["netbootd_dhcp_workers"], "netbootd_dhcp_workers") == workers

    pool = "-".join(lab.dhcp_range(100, 139))
    leases = metrics["netbootd_leases"]
    labels = {"subnet": str(lab.network), "pool": pool}
    assert _value(leases, "netbootd_leases", **labels, state="bound") == CLIENTS
    assert _value(leases, "netbootd_leases", **labels, state="offered") == 0
    assert _value(metrics["netbootd_pool_addresses"], "netbootd_pool_addresses", **labels) == 40

    assert _value(metrics["netbootd_journal_dropped"], "netbootd_journal_dropped_total") == 0
    assert _value(metrics["netbootd_journal_readable"], "netbootd_journal_readable") == 1
    # What the journal's database holds, read here on its own: the services' journal events
    # (each transfer's, each DHCP transaction's) as the server stored them.
    db = sqlite3.connect(tmp_path / "state" / "journal.sqlite3")
    try:
        stored = db.execute("SELECT count(*) FROM events").fetchone()[0]
        machines = db.execute("SELECT count(DISTINCT mac) FROM events WHERE mac != ''").fetchone()
        transfers = dict(
            db.execute(
                "SELECT service, count(*) FROM events WHERE kind = 'transfer' "
                "AND json_extract(fields, '$.result') = 'ok' GROUP BY service"
            ).fetchall()
        )
    finally:
        db.close()
    assert _value(metrics["netbootd_journal_events"], "netbootd_journal_events") == stored
    boots = metrics["netbootd_boots"]
    verdicts = ("booted", "stalled", "in-progress")
    assert sum(_value(boots, "netbootd_boots", verdict=v) for v in verdicts) == machines[0]
    rates = metrics["netbootd_transfer_rate_megabytes_per_second"]
    for service in ("tftp", "http"):
        count = _value(rates, "netbootd_transfer_rate_megabytes_per_second_count", service=service)
        assert count == transfers.get(service, 0)
