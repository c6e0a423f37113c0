"""dhclient renews its lease at T1: a unicast REQUEST to netbootd, the same address again.

ISC dhclient has no signal that makes it renew, so its own configuration makes T1 arrive after
a few seconds (``supersede dhcp-renewal-time``); netbootd's lease stays as configured. Needs
root (network namespaces) and dhclient (isc-dhcp-client).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from netbootd_lab import Lab, NetbootdServer

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
    pytest.mark.skipif(shutil.which("dhclient") is None, reason="dhclient is not installed"),
]

RENEWAL_SECONDS = 3


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    with Lab(tmp_path / "lab") as the_lab:
        yield the_lab


def test_dhclient_renews_at_t1(lab: Lab, tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    server = NetbootdServer(
        lab,
        root,
        state_dir=tmp_path / "state",
        log_path=lab.workdir / "netbootd.log",
        dhcp_range=lab.dhcp_range(100, 110),
        boot=(),
        extra_args=["--no-http"],
    ).start()
    host = lab.add_host("dhclient")
    host.ip("addr", "flush", "dev", host.interface)
    mac = host.mac()
    conf = tmp_path / "dhclient.conf"
    conf.write_text(f"supersede dhcp-renewal-time {RENEWAL_SECONDS};\n")
    client = host.spawn(
        ["dhclient", "-4", "-d", "-v", "-cf", str(conf), "-lf", str(tmp_path / "leases"),
         "-pf", str(tmp_path / "dhclient.pid"), host.interface],
        lab.workdir / "dhclient.log",
    )  # fmt: skip

    def acks() -> list[str]:
        return [
            ev.get("address")
            for ev in server.events()
            if ev.svc == "dhcp" and ev.get("mac") == mac and ev.get("decision") == "ACK"
        ]

    deadline = time.monotonic() + 30
    while len(acks()) < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    client.stop()
    log = client.log_text()
    # The first ACK binds; each later one answers a renewal sent to netbootd's own address,
    # not broadcast (RFC 2131 §4.4.5, RENEWING), and gives the same address again.
    assert len(acks()) >= 3 and len(set(acks())) == 1, (acks(), log)
    address = acks()[0]
    renewals = log.count(
        f"DHCPREQUEST for {address} on {host.interface} to {lab.server_ip} port 67"
    )
    assert renewals >= 2, log
    assert server.alive()
