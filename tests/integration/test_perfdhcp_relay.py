"""perfdhcp as a relay agent on a second host: every relayed 4-way exchange completes.

perfdhcp (Kea's load generator) runs in its own namespace on the lab network and relays for
many clients at once (``giaddr`` = its address, replies to its port 67). netbootd answers from
its pool; each client gets one address of its own, written to the lease store, and no address
goes to two clients. Needs root (network namespaces) and perfdhcp (kea-admin).
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from netbootd_lab import Lab, NetbootdServer
from netbootd_lab.perfdhcp import parse_report, run_perfdhcp

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
    pytest.mark.skipif(shutil.which("perfdhcp") is None, reason="perfdhcp is not installed"),
]

CLIENTS = 40
RATE = 20  # 4-way exchanges per second
SECONDS = 3


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    with Lab(tmp_path / "lab") as the_lab:
        yield the_lab


def test_relayed_clients_each_get_an_address(lab: Lab, tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    pool = lab.dhcp_range(100, 199)
    server = NetbootdServer(
        lab,
        root,
        state_dir=tmp_path / "state",
        log_path=lab.workdir / "netbootd.log",
        dhcp_range=pool,
        boot=(),
        extra_args=["--no-http"],
    ).start()
    relay = lab.add_host("perf")
    giaddr = str(relay.address.ip)

    output = run_perfdhcp(relay, lab.server_ip, rate=RATE, seconds=SECONDS, clients=CLIENTS)
    report = parse_report(output)
    assert report.offer.sent >= RATE * SECONDS * 0.9, output
    assert (report.offer.drops, report.ack.drops) == (0, 0), output
    assert report.ack.received == report.ack.sent == report.offer.received, output
    server.stop()

    # Every ACK went through the relay, and each client kept one address of its own.
    acks = [ev for ev in server.events() if ev.svc == "dhcp" and ev.get("decision") == "ACK"]
    assert len(acks) == report.ack.received
    assert {ev.get("relay") for ev in acks} == {giaddr}
    by_mac: dict[str, set[str]] = {}
    for ev in acks:
        by_mac.setdefault(ev.get("mac"), set()).add(ev.get("address"))
    assert len(by_mac) == min(CLIENTS, len(acks))
    assert all(len(addresses) == 1 for addresses in by_mac.values()), by_mac

    with sqlite3.connect(server.state_dir / "leases.sqlite3") as db:
        rows = db.execute("SELECT mac, address FROM leases").fetchall()
    stored = {mac: ipaddress.IPv4Address(address) for mac, address in rows}
    assert {mac: {str(address)} for mac, address in stored.items()} == by_mac
    assert len(set(stored.values())) == len(stored)  # no address held twice
    first, last = (ipaddress.IPv4Address(end) for end in pool)
    assert all(first <= address <= last for address in stored.values())
