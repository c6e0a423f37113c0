"""A flood of DISCOVERs from made-up MACs over a real socket: capped, quiet, clients served.

netbootd runs with small caps on open offers; a second namespace sends DISCOVERs from random
MACs for several seconds while a real client (busybox udhcpc) that had a lease before the flood
gets it again, and a client new to the server gets one. Needs root.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from netbootd_lab import Host, Lab, NetbootdServer

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
    pytest.mark.skipif(shutil.which("busybox") is None, reason="busybox is not installed"),
]

# Sends DISCOVERs from random MACs at argv[2] a second for argv[3] seconds; prints the count.
FLOODER = """
import os, socket, sys, time
server, rate, seconds = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
sent, start = 0, time.monotonic()
while time.monotonic() - start < seconds:
    mac = b"\\x02" + os.urandom(5)
    head = bytes([1, 1, 6, 0]) + os.urandom(4) + bytes([0, 0, 0x80, 0]) + bytes(16)
    packet = head + mac + bytes(10 + 64 + 128) + bytes([99, 130, 83, 99, 53, 1, 1, 255])
    s.sendto(packet, (server, 67))
    sent += 1
    delay = start + sent / rate - time.monotonic()
    if delay > 0:
        time.sleep(delay)
print(sent)
"""

CAPS = "dhcp-max-offers = 40\ndhcp-max-offers-per-pool = 20\n"


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    with Lab(tmp_path / "lab") as the_lab:
        yield the_lab


def _udhcpc(host: Host) -> list[str]:
    return ["busybox", "udhcpc", "-n", "-q", "-i", host.interface, "-s", "/bin/true",
            "-t", "8", "-T", "1"]  # fmt: skip


def _counters(server: NetbootdServer) -> dict[str, int]:
    for event in server.events():
        if event.event == "counters" and event.get("service") == "dhcp":
            pairs = (item.split("=") for item in event.get("counts").split(","))
            return {key: int(value) for key, value in pairs}
    raise AssertionError(f"no DHCP counters in the log:\n{server.log_tail()}")


def test_a_flood_is_capped_and_known_and_new_clients_get_leases(lab: Lab, tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    config = tmp_path / "caps.toml"
    config.write_text(CAPS)
    server = NetbootdServer(
        lab,
        root,
        state_dir=tmp_path / "state",
        log_path=lab.workdir / "netbootd.log",
        dhcp_range=lab.dhcp_range(100, 199),
        extra_args=["--no-http", "--config", str(config)],
    ).start()
    client = lab.add_host("client")
    client.ip("addr", "flush", "dev", client.interface)
    client.ns_exec(_udhcpc(client), timeout=30)
    first = server.leased_address(client.mac())
    assert first is not None

    flooder = lab.add_host("flooder")
    flood = flooder.spawn(
        [sys.executable, "-c", FLOODER, lab.server_ip, "400", "8"], lab.workdir / "flood.log"
    )
    time.sleep(2)  # the caps are met by now
    client.ip("addr", "flush", "dev", client.interface)
    during = client.ns_exec(_udhcpc(client), timeout=30)
    assert "obtained" in during.stdout + during.stderr
    newcomer = lab.add_host("newcomer")
    newcomer.ip("addr", "flush", "dev", newcomer.interface)
    new = newcomer.ns_exec(_udhcpc(newcomer), timeout=30)
    assert "obtained" in new.stdout + new.stderr
    assert flood.alive()  # both during the flood
    flood.wait(timeout=30)
    sent = int(flood.log_text().split()[-1])
    assert sent > 2000
    assert server.alive()
    server.stop()

    acks = [ev for ev in server.events() if ev.get("mac") == client.mac() and ev.event == "REQUEST"]
    assert [ev.get("decision") for ev in acks] == ["ACK", "ACK"]
    assert server.leased_address(client.mac()) == first
    assert server.leased_address(newcomer.mac()) is not None
    counters = _counters(server)
    # Twenty offers open at most: past that, each new MAC takes the place of the oldest offer,
    # and nobody is refused.
    assert counters.get("DISCOVER:OFFER", 0) > 20 + 2
    assert counters.get("offer-reclaimed", 0) > counters.get("DISCOVER:OFFER", 0) - 40
    assert counters.get("refused-new-client", 0) == 0
    warnings = [ev for ev in server.events() if ev.event == "new-clients-refused"]
    assert warnings == [], [ev.line for ev in warnings]
    assert "Traceback" not in server.log_text()
