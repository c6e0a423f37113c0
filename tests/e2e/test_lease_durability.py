"""kill -9 under load loses no acknowledged lease, and a restarted netbootd gives none away twice.

netbootd serves the lab bridge as the authoritative DHCP server, in one process and then with
two DHCP workers (the first of which gets the SIGKILL; the kernel then kills the other). A
relay agent on a second host (``dhcp_relay_load.py``) runs many DISCOVER/REQUEST exchanges at
once and writes down every ACK it receives. In each round, once enough ACKs have come back,
netbootd gets SIGKILL while requests are still in flight. Then:

* every acknowledged lease is in the lease database, bound to the MAC it was acknowledged to;
* every lease the database held before the round is still there, unchanged;
* after a restart on the same state directory, no new client is given an address an earlier
  client still holds, and no address goes to two clients;
* at the end, every earlier client asking for its address again (INIT-REBOOT) gets it back.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from netbootd_lab import Host, Lab, NetbootdServer
from netbootd_lab.netns import Process

pytestmark = pytest.mark.e2e

LOAD_SCRIPT = Path(__file__).with_name("dhcp_relay_load.py")
SUBNET = "10.99.0.0/21"  # room for every round's leases in one pool, with a wide margin
POOL = (10, 2009)  # offsets in the subnet: 2000 addresses
WINDOW = 32
# Round n gets SIGKILL once the relay has seen this many ACKs from its new clients.
KILL_AFTER = (300, 120, 450)
WAIT_SECONDS = 60.0

# (mac, address) pairs and address -> (client, mac, state, expires), as stored.
Acks = dict[str, str]
Stored = dict[str, tuple[str, str, str, float]]


@pytest.fixture
def lab(lab_prerequisites: None, tmp_path: Path) -> Iterator[Lab]:
    with Lab(tmp_path / "lab", subnet=SUBNET) as the_lab:
        yield the_lab


@dataclass
class Load:
    process: Process
    out: Path

    def lines(self) -> list[str]:
        try:
            text = self.out.read_text()
        except FileNotFoundError:
            return []
        # A line being written when the relay stopped has no newline yet: not counted.
        return text.split("\n")[:-1]

    def count(self) -> int:
        return len(self.lines())

    def acks(self) -> Acks:
        """The last ACKed address of each MAC."""
        acked: Acks = {}
        for line in self.lines():
            kind, mac, address = line.split()
            if kind == "ACK":
                acked[mac] = address
        return acked

    def naks(self) -> list[str]:
        return [line.split()[1] for line in self.lines() if line.startswith("NAK ")]

    def duplicate_addresses(self) -> dict[str, set[str]]:
        """Addresses ACKed to more than one MAC."""
        owners: dict[str, set[str]] = {}
        for line in self.lines():
            kind, mac, address = line.split()
            if kind == "ACK":
                owners.setdefault(address, set()).add(mac)
        return {address: macs for address, macs in owners.items() if len(macs) > 1}


def start_load(
    lab: Lab, host: Host, name: str, *, mac_prefix: str, reboot: Path | None = None
) -> Load:
    out = lab.workdir / f"{name}.acks"
    argv = [
        sys.executable, str(LOAD_SCRIPT),
        "--relay", str(host.address.ip),
        "--server", lab.server_ip,
        "--out", str(out),
        "--mac-prefix", mac_prefix,
        "--clients", "4000",
        "--window", str(WINDOW),
        "--timeout", "1.0",
        "--deadline", str(WAIT_SECONDS),
    ]  # fmt: skip
    if reboot is not None:
        argv += ["--reboot", str(reboot)]
    process = host.spawn(argv, lab.workdir / f"{name}.log", name=name)
    return Load(process, out)


def start_server(lab: Lab, root: Path, state: Path, round_no: int, workers: int) -> NetbootdServer:
    server = NetbootdServer(
        lab,
        root,
        state_dir=state,
        log_path=lab.workdir / f"netbootd-{round_no}.log",
        dhcp_range=lab.dhcp_range(*POOL),
        boot=(),
        extra_args=["--no-http", f"--dhcp-workers={workers}"],
    )
    server.start()
    assert server.process is not None
    if workers > 1:
        server.wait_event(lambda ev: ev.event == "dhcp-workers", timeout=30)
    # The spawned pid is netbootd itself: ``ip netns exec`` and the script's interpreter line
    # exec in place, without a fork.
    cmdline = Path(f"/proc/{server.process.pid}/cmdline").read_bytes().split(b"\0")
    assert any(arg.endswith(b"/netbootd") for arg in cmdline), cmdline
    assert b"serve" in cmdline, cmdline
    return server


def kill_when(server: NetbootdServer, load: Load, acks: int) -> tuple[int, float]:
    """SIGKILL netbootd once ``load`` has seen ``acks`` ACKs.

    Returns how many it had seen then, and the ACK rate since the first one.
    """
    assert server.process is not None
    deadline = time.monotonic() + WAIT_SECONDS
    first: float | None = None
    while (seen := load.count()) < acks:
        if first is None and seen:
            first = time.monotonic()
        assert server.alive(), f"netbootd exited ({server.process.returncode}) under load"
        assert load.process.alive(), f"load stopped after {seen} ACKs: {load.process.log_text()}"
        assert time.monotonic() < deadline, f"only {seen} ACKs after {WAIT_SECONDS:.0f} s"
        time.sleep(0.002)
    os.kill(server.process.pid, signal.SIGKILL)
    killed = time.monotonic()
    assert server.process.wait(10) == -signal.SIGKILL
    # The other DHCP workers die with the first (the kernel sends them SIGKILL).
    workers = [ev.get("pid") for ev in server.events() if ev.event == "dhcp-worker-ready"]
    gone = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() for pid in workers):
        assert time.monotonic() < gone, f"DHCP workers {workers} outlived the first"
        time.sleep(0.01)
    return seen, seen / (killed - (first or killed) + 1e-9)


def stored_leases(state: Path) -> Stored:
    """The lease table as the killed server left it on disk."""
    uri = f"file:{state / 'leases.sqlite3'}?mode=ro"
    db = sqlite3.connect(uri, uri=True)
    try:
        rows = db.execute("SELECT address, client, mac, state, expires FROM leases").fetchall()
    finally:
        db.close()
    return {
        str(IPv4Address(number)): (client, mac, lease_state, expires)
        for number, client, mac, lease_state, expires in rows
    }


@pytest.mark.parametrize("workers", [1, 2], ids=["one-process", "two-dhcp-workers"])
def test_kill_9_under_load_loses_no_acked_lease(lab: Lab, tmp_path: Path, workers: int) -> None:
    root = tmp_path / "root"
    root.mkdir()
    state = tmp_path / "state"
    host = lab.add_host("load")

    before: Stored = {}  # the database at the start of the round
    acked_all: Acks = {}  # every client ever acknowledged, with its last address
    server = start_server(lab, root, state, 0, workers)
    print()
    for round_no, kill_after in enumerate(KILL_AFTER, start=1):
        load = start_load(lab, host, f"load-{round_no}", mac_prefix=f"02:00:00:{round_no:02x}")
        at_kill, rate = kill_when(server, load, kill_after)
        time.sleep(0.2)  # replies already on the wire reach the relay, or never will
        load.process.stop()
        acks = load.acks()

        after = stored_leases(state)
        new = len(after) - len(before)
        print(
            f"round {round_no}: SIGKILL after {at_kill} ACKs ({rate:.0f}/s); {len(acks)} ACKs "
            f"in all, {new} new leases on disk ({new - len(acks)} stored but not acknowledged), "
            f"{len(after)} leases on disk"
        )

        # Nothing acknowledged is lost: the last ACK of each MAC is a bound lease of that MAC.
        lost = {
            mac: (address, after.get(address))
            for mac, address in acks.items()
            if after.get(address, ("", "", "", 0.0))[:3] != (f"mac:{mac}", mac, "bound")
        }
        assert not lost, f"acknowledged but not on disk as acked (ACK address, row): {lost}"
        # Nothing stored before is lost or changed.
        changed = {a: (row, after.get(a)) for a, row in before.items() if after.get(a) != row}
        assert not changed, f"leases of earlier rounds changed (before, after): {changed}"
        # No new client got an address an earlier one holds, nor two clients one address.
        taken = {mac: address for mac, address in acks.items() if address in before}
        assert not taken, f"new clients given addresses already leased: {taken}"
        assert not load.duplicate_addresses(), load.duplicate_addresses()
        assert not load.naks(), f"NAKs for new clients: {load.naks()}"

        acked_all.update(acks)
        before = after
        server = start_server(lab, root, state, round_no, workers)

    # Every client acknowledged before a kill gets its own address back after the last one.
    remembered = tmp_path / "remembered"
    remembered.write_text("".join(f"{mac} {address}\n" for mac, address in acked_all.items()))
    load = start_load(lab, host, "reboot", mac_prefix="02:00:00:ff", reboot=remembered)
    assert load.process.wait(WAIT_SECONDS + 10) == 0, load.process.log_text()
    again = load.acks()
    print(f"reboot: {len(again)} of {len(acked_all)} earlier clients got their address back")
    assert not load.naks(), f"NAKs for earlier clients: {load.naks()}"
    assert again == acked_all
    assert server.alive()
