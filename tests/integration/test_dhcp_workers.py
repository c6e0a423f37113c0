"""DHCP workers over real sockets: ``--dhcp-workers 2`` in a namespace.

Clients broadcast (every worker hears a broadcast) and ask straight at the server's address
(the kernel picks the worker): either way each client is answered once, by the worker of its
MAC's last octet, from that worker's half of the pool, and the lease is on disk. What worker 1
learns of a machine reaches worker 0, which renders the machine's files over HTTP. A worker that
dies takes the server down with a line saying why; the first worker killed with SIGKILL takes
the others with it. Needs root.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import sys
import time
from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from netbootd.proto.dhcp.codec import MessageType, encode
from netbootd.store.journal import JournalStore
from netbootd_lab import Lab, LogEvent, NetbootdServer
from tests.helpers.dhcp_clients import BIOS_PXE, request

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
]

CLIENTS = 12

# argv[1]: the server's address, or "broadcast"; argv[2]: JSON [[discover hex, request hex
# template with 0.0.0.0 to fill], ...]. Prints JSON {xid: [offers, acks, address]}.
CLIENT = """
import json, socket, sys, time
target = "255.255.255.255" if sys.argv[1] == "broadcast" else sys.argv[1]
exchanges = [(bytes.fromhex(d), bytes.fromhex(r)) for d, r in json.loads(sys.argv[2])]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"eth0")  # where broadcasts leave
s.bind(("0.0.0.0", 68))
s.settimeout(0.2)
seen = {}
def collect(kind, until):
    while time.monotonic() < until:
        try:
            data, _ = s.recvfrom(4096)
        except socket.timeout:
            continue
        if data[0] != 2:
            continue
        xid = data[4:8].hex()
        entry = seen.setdefault(xid, [0, 0, ""])
        if kind == "offer":
            entry[0] += 1
            entry[2] = socket.inet_ntoa(data[16:20])
        else:
            entry[1] += 1
for discover, _ in exchanges:
    s.sendto(discover, (target, 67))
collect("offer", time.monotonic() + 3)
for discover, template in exchanges:
    xid = discover[4:8].hex()
    if xid in seen:
        asked = socket.inet_aton(seen[xid][2])
        s.sendto(template.replace(bytes([50, 4, 0, 0, 0, 0]), bytes([50, 4]) + asked), (target, 67))
collect("ack", time.monotonic() + 3)
print(json.dumps(seen))
"""


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    with Lab(tmp_path / "lab") as the_lab:
        yield the_lab


def _server(lab: Lab, tmp_path: Path, *extra: str) -> NetbootdServer:
    """netbootd with two DHCP workers, once both are ready; ``extra``: more flags (the
    default: no HTTP)."""
    root = tmp_path / "root"
    root.mkdir(exist_ok=True)
    server = NetbootdServer(
        lab,
        root,
        state_dir=tmp_path / "state",
        log_path=lab.workdir / "netbootd.log",
        dhcp_range=lab.dhcp_range(100, 139),
        boot=(),
        extra_args=["--dhcp-workers=2", "--no-tftp", *(extra or ["--no-http"])],
    )
    server.ports = (67,)
    server.start()
    server.wait_event(lambda ev: ev.event == "dhcp-workers", timeout=30)
    return server


def _exchanges(first_xid: int) -> list[list[str]]:
    found = []
    for n in range(CLIENTS):
        mac, xid = f"52:54:00:77:00:{n:02x}", first_xid + n
        # PXE clients: the journal records boot clients' transactions.
        discover = request(MessageType.DISCOVER, mac=mac, xid=xid, vendor_class=BIOS_PXE, arch=0)
        asked = request(
            MessageType.REQUEST,
            mac=mac,
            xid=xid,
            requested="0.0.0.0",
            server_id=None,
            vendor_class=BIOS_PXE,
            arch=0,
        )
        found.append([encode(discover).hex(), encode(asked).hex()])
    return found


def _worker_pids(server: NetbootdServer) -> dict[int, int]:
    pids = {0: server.process.pid} if server.process is not None else {}
    for ev in server.events():
        if ev.event == "dhcp-worker-ready":
            pids[int(ev.get("worker"))] = int(ev.get("pid"))
    return pids


def _counters(server: NetbootdServer) -> dict[str, dict[str, int]]:
    found = {}
    for ev in server.events():
        if ev.event == "counters" and ev.get("service") == "dhcp":
            pairs = (item.split("=") for item in ev.get("counts").split(","))
            found[ev.get("worker")] = {key: int(value) for key, value in pairs}
    return found


@pytest.mark.parametrize("target", ["broadcast", "unicast"])
def test_each_client_is_answered_once_by_its_worker(lab: Lab, tmp_path: Path, target: str) -> None:
    server = _server(lab, tmp_path)
    client = lab.add_host("clients")
    address = "broadcast" if target == "broadcast" else lab.server_ip
    ran = client.ns_exec(
        [sys.executable, "-c", CLIENT, address, json.dumps(_exchanges(0x77000000))],
        check=False,
        timeout=60,
    )
    assert ran.returncode == 0, ran.stderr
    seen = json.loads(ran.stdout)
    server.stop()

    assert len(seen) == CLIENTS, (seen, server.log_tail())
    assert all(offers == 1 and acks == 1 for offers, acks, _ in seen.values()), seen
    # Each from its worker's half of .100-.139: even last octets the first, odd the second.
    base = int(IPv4Address(lab.dhcp_range(100, 139)[0]))
    for xid, (_, _, given) in seen.items():
        half = (int(IPv4Address(given)) - base) // 20
        assert half == int(xid, 16) % 2, (xid, given)
    counters = _counters(server)
    assert {w: c.get("REQUEST:ACK") for w, c in counters.items()} == {"0": 6, "1": 6}
    db = sqlite3.connect(tmp_path / "state" / "leases.sqlite3")
    try:
        rows = db.execute("SELECT address, mac FROM leases").fetchall()
    finally:
        db.close()
    assert len(rows) == CLIENTS and len({a for a, _ in rows}) == CLIENTS
    # Each worker journals its own clients, into the one file.
    journal = JournalStore(tmp_path / "state" / "journal.sqlite3")
    acked = {
        (event.mac, event.address)
        for event in journal.events(limit=10_000)
        if event.kind == "REQUEST" and event.get("decision") == "ACK"
    }
    assert acked == {(mac, str(IPv4Address(address))) for address, mac in rows}, acked


def _ended(ev: LogEvent) -> bool:
    return ev.event == "dhcp-worker-ended"


def test_a_worker_that_dies_stops_the_server(lab: Lab, tmp_path: Path) -> None:
    server = _server(lab, tmp_path)
    pids = _worker_pids(server)
    os.kill(pids[1], signal.SIGKILL)
    line = server.wait_event(_ended, timeout=15)
    assert "DHCP worker 1 ended" in line.get("reason")
    assert server.process is not None
    assert server.process.wait(timeout=30) != 0


def test_the_workers_end_with_the_first(lab: Lab, tmp_path: Path) -> None:
    server = _server(lab, tmp_path)
    pids = _worker_pids(server)
    os.kill(pids[0], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and Path(f"/proc/{pids[1]}").exists():
        time.sleep(0.1)
    assert not Path(f"/proc/{pids[1]}").exists(), "worker 1 outlived worker 0"
    assert not lab.ns_exec(["ss", "-H", "-u", "-l", "-n", "sport = :67"]).stdout.strip()


SITE = """\
[profiles.probe]
method = "ipxe"
kernel = "vmlinuz"
template = "templates/probe.ipxe"

[machines.far]
mac = "52:54:00:77:01:01"
profile = "probe"
"""


def test_what_a_worker_learns_reaches_the_files(lab: Lab, tmp_path: Path) -> None:
    """Worker 1 answers the machine (its MAC ends in 01); the script worker 0 renders over
    HTTP knows what worker 1 learned over DHCP: the firmware is UEFI (option 93)."""
    inventory = tmp_path / "inventory"
    (inventory / "templates").mkdir(parents=True)
    (inventory / "site.toml").write_text(SITE)
    (inventory / "templates" / "probe.ipxe").write_text(
        "#!ipxe\necho machine={{ machine }} arch={{ arch }} platform={{ platform }}\n"
    )
    server = _server(lab, tmp_path, f"--inventory={inventory}")
    client = lab.add_host("uefi")
    mac = "52:54:00:77:01:01"
    discover = request(MessageType.DISCOVER, mac=mac, xid=0x77010101, arch=7)
    asked = request(MessageType.REQUEST, mac=mac, xid=0x77010101, arch=7, requested="0.0.0.0")
    exchange = json.dumps([[encode(discover).hex(), encode(asked).hex()]])
    ran = client.ns_exec(
        [sys.executable, "-c", CLIENT, lab.server_ip, exchange], check=False, timeout=60
    )
    assert ran.returncode == 0, ran.stderr
    assert [acks for _, acks, _ in json.loads(ran.stdout).values()] == [1], ran.stdout

    url = f"http://{lab.server_ip}/m/52-54-00-77-01-01/boot.ipxe"
    script = client.ns_exec(["curl", "-sf", url], check=False, timeout=30).stdout
    server.stop()
    assert "machine=far arch=efi-x64 platform=efi" in script, (script, server.log_tail())
    counters = _counters(server)
    assert counters["1"].get("REQUEST:ACK") == 1 and "REQUEST:ACK" not in counters["0"]
