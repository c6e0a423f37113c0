"""Real DHCP clients against netbootd in a private lab network: get, renew, reboot, release.

netbootd serves the lab bridge; each client runs in a second namespace joined to the bridge by a
veth, as a separate machine would. Needs root (network namespaces).
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from netbootd_lab import DnsmasqServer, Host, Lab, LogEvent, NetbootdServer

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
]

UDHCPC_SCRIPT = """#!/bin/sh
# Applies what udhcpc learned, as a distribution's script would.
case "$1" in
  deconfig) ip addr flush dev "$interface" ;;
  bound|renew) ip addr replace "$ip/$mask" dev "$interface" ;;
esac
echo "$1 $ip $serverid $lease" >> "$EVENTS"
"""


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    with Lab(tmp_path / "lab") as the_lab:
        yield the_lab


@pytest.fixture
def netbootd(lab: Lab, tmp_path: Path) -> NetbootdServer:
    root = tmp_path / "root"
    root.mkdir()
    (root / "pxelinux.0").write_bytes(b"\0" * 64)
    return NetbootdServer(
        lab,
        root,
        state_dir=tmp_path / "state",
        log_path=lab.workdir / "netbootd.log",
        dhcp_range=lab.dhcp_range(100, 110),
        boot=["bios=pxelinux.0"],
        extra_args=["--no-http"],
    ).start()


def client_host(lab: Lab, label: str) -> Host:
    host = lab.add_host(label)
    host.ip("addr", "flush", "dev", host.interface)
    return host


def host_address(host: Host) -> str | None:
    out = host.ip("-4", "-o", "addr", "show", "dev", host.interface)
    for word_index, word in enumerate(out.split()):
        if word == "inet":
            return out.split()[word_index + 1].split("/")[0]
    return None


def dhcp_events(server: NetbootdServer, mac: str) -> list[tuple[str, str]]:
    return [
        (ev.event, ev.get("decision"))
        for ev in server.events()
        if ev.svc == "dhcp" and ev.get("mac") == mac
    ]


def wait_for(
    server: NetbootdServer, mac: str, wanted: tuple[str, str], count: int = 1
) -> list[LogEvent]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if dhcp_events(server, mac).count(wanted) >= count:
            return server.events()
        time.sleep(0.1)
    raise AssertionError(f"{wanted} x{count} not seen for {mac}: {dhcp_events(server, mac)}")


def stored_leases(server: NetbootdServer) -> dict[str, str]:
    with sqlite3.connect(server.state_dir / "leases.sqlite3") as db:
        return dict(db.execute("SELECT mac, state FROM leases"))


@pytest.mark.skipif(shutil.which("busybox") is None, reason="busybox is not installed")
def test_udhcpc_lease_renew_release(lab: Lab, netbootd: NetbootdServer, tmp_path: Path) -> None:
    host = client_host(lab, "udhcpc")
    mac = host.mac()
    script = tmp_path / "udhcpc.sh"
    script.write_text(UDHCPC_SCRIPT)
    script.chmod(0o755)
    events_file = tmp_path / "udhcpc.events"
    client = host.spawn(
        ["busybox", "udhcpc", "-f", "-i", host.interface, "-s", str(script), "-t", "5", "-T", "1",
         "-V", "PXEClient:Arch:00000:UNDI:002001"],
        lab.workdir / "udhcpc.log",
        env={"EVENTS": str(events_file)},
    )  # fmt: skip
    wait_for(netbootd, mac, ("REQUEST", "ACK"))
    deadline = time.monotonic() + 10
    while host_address(host) is None and time.monotonic() < deadline:
        time.sleep(0.1)
    address = host_address(host)
    assert address is not None and address.startswith("10.99.0.1")
    assert stored_leases(netbootd) == {mac: "bound"}

    os.kill(client.pid, signal.SIGUSR1)  # renew: a unicast REQUEST with ciaddr set
    wait_for(netbootd, mac, ("REQUEST", "ACK"), count=2)
    renew = [
        ev
        for ev in netbootd.events()
        if ev.svc == "dhcp" and ev.get("mac") == mac and ev.event == "REQUEST"
    ][-1]
    assert renew.get("address") == address

    os.kill(client.pid, signal.SIGUSR2)  # release
    wait_for(netbootd, mac, ("RELEASE", "released"))
    assert stored_leases(netbootd) == {}
    client.stop()
    assert "bound" in events_file.read_text()
    assert netbootd.alive()


@pytest.mark.skipif(shutil.which("dhclient") is None, reason="dhclient is not installed")
def test_dhclient_lease_reboot_release(lab: Lab, netbootd: NetbootdServer, tmp_path: Path) -> None:
    host = client_host(lab, "dhclient")
    mac = host.mac()
    leases = tmp_path / "dhclient.leases"
    base = ["dhclient", "-4", "-lf", str(leases), "-pf", str(tmp_path / "dhclient.pid")]
    got = host.ns_exec([*base, "-1", "-v", host.interface], timeout=60)
    assert "bound to" in got.stderr, got.stderr
    address = host_address(host)
    assert address is not None
    assert ("DISCOVER", "OFFER") in dhcp_events(netbootd, mac)
    assert ("REQUEST", "ACK") in dhcp_events(netbootd, mac)

    # A reboot: the client asks for its remembered address without a server identifier
    # (RFC 2131 INIT-REBOOT) and gets it back.
    host.ns_exec([*base, "-x", host.interface], check=False, timeout=30)
    host.ip("addr", "flush", "dev", host.interface)
    again = host.ns_exec([*base, "-1", "-v", host.interface], timeout=60)
    assert "bound to" in again.stderr, again.stderr
    assert host_address(host) == address

    host.ns_exec([*base, "-r", "-v", host.interface], timeout=30)
    wait_for(netbootd, mac, ("RELEASE", "released"))
    assert stored_leases(netbootd) == {}
    assert netbootd.alive()


def test_restart_keeps_leases(lab: Lab, netbootd: NetbootdServer, tmp_path: Path) -> None:
    """An acknowledged lease survives a restart: the same client gets the same address."""
    host = client_host(lab, "again")
    mac = host.mac()
    udhcpc = ["busybox", "udhcpc", "-n", "-q", "-i", host.interface, "-s", "/bin/true",
              "-t", "5", "-T", "1"]  # fmt: skip
    host.ns_exec(udhcpc, timeout=30)
    first = netbootd.leased_address(mac)
    assert first is not None
    netbootd.stop()
    # A clean stop reports what every service did.
    assert "counters service=dhcp" in netbootd.log_text()
    assert "REQUEST:ACK=1" in netbootd.log_text()
    other = client_host(lab, "other")
    restarted = NetbootdServer(
        lab,
        netbootd.root,
        state_dir=netbootd.state_dir,
        log_path=lab.workdir / "netbootd-2.log",
        dhcp_range=netbootd.dhcp_range,
        extra_args=["--no-http"],
    ).start()
    other.ns_exec(udhcpc, timeout=30)  # a newcomer must not get the first client's address
    host.ns_exec(udhcpc, timeout=30)
    assert restarted.leased_address(mac) == first
    assert restarted.leased_address(other.mac()) not in (None, first)


JUNK_SENDER = """
import socket, sys
junk = [
    b"",                                   # empty
    b"\\x01",                              # runt
    b"\\x01\\x01\\x06\\x00" + b"\\x00" * 232 + b"BAD!",   # bad cookie
    b"\\x03\\x01\\x06\\x00" + b"\\x00" * 232 + bytes([99, 130, 83, 99]),  # op 3
    b"\\x01\\x01\\x06\\x00" + b"\\x00" * 232 + bytes([99, 130, 83, 99, 53, 200, 1]),  # truncated
    bytes(range(256)) * 4,
]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"eth0")
for target in (sys.argv[1], "255.255.255.255"):
    for datagram in junk:
        s.sendto(datagram, (target, 67))
"""


def test_malformed_datagrams_do_not_stop_the_service(
    lab: Lab, netbootd: NetbootdServer, tmp_path: Path
) -> None:
    sender = lab.add_host("junk")
    sender.ns_exec([sys.executable, "-c", JUNK_SENDER, lab.server_ip])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        malformed = [ev for ev in netbootd.events() if ev.event == "malformed"]
        if len(malformed) >= 12:
            break
        time.sleep(0.1)
    # Six kinds of junk, unicast and broadcast: each refused with exactly one line.
    assert len(malformed) == 12, netbootd.log_tail()
    assert all(ev.get("error") for ev in malformed)
    host = client_host(lab, "after")
    got = host.ns_exec(
        ["busybox", "udhcpc", "-n", "-q", "-i", host.interface, "-s", "/bin/true", "-t", "5"],
        timeout=30,
    )
    assert "obtained" in got.stdout + got.stderr
    assert "Traceback" not in netbootd.log_text()
    assert netbootd.alive()


@pytest.mark.skipif(
    shutil.which("busybox") is None or shutil.which("dnsmasq") is None,
    reason="busybox or dnsmasq is not installed",
)
def quiet_netbootd(lab: Lab, tmp_path: Path, probe_interval: float) -> NetbootdServer:
    """netbootd with probes for other servers every ``probe_interval`` seconds (0: never)."""
    root = tmp_path / "root"
    root.mkdir(exist_ok=True)
    config = tmp_path / "netbootd.toml"
    config.write_text(f"dhcp-probe-interval = {probe_interval}\n")
    return NetbootdServer(
        lab,
        root,
        state_dir=tmp_path / "state",
        log_path=lab.workdir / "netbootd.log",
        dhcp_range=lab.dhcp_range(100, 110),
        extra_args=["--no-http"],
        config=config,
    )


def start_rogue(lab: Lab, tmp_path: Path) -> tuple[DnsmasqServer, Host]:
    rogue_host = lab.add_host("rogue")
    rogue = DnsmasqServer(
        lab,
        tmp_path / "root",
        state_dir=tmp_path / "rogue-state",
        log_path=lab.workdir / "rogue.log",
        boot_file=None,
        host=rogue_host,
        dhcp_range=lab.dhcp_range(150, 160),
    ).start()
    return rogue, rogue_host


def named_servers(netbootd: NetbootdServer, timeout: float) -> list[LogEvent]:
    deadline = time.monotonic() + timeout
    named: list[LogEvent] = []
    while not named and time.monotonic() < deadline:
        named = [ev for ev in netbootd.events() if ev.event == "other-dhcp-server"]
        time.sleep(0.1)
    return named


def test_another_server_unicasting_its_offers_is_found_by_the_probe(
    lab: Lab, tmp_path: Path
) -> None:
    rogue, rogue_host = start_rogue(lab, tmp_path)
    netbootd = quiet_netbootd(lab, tmp_path, probe_interval=1).start()
    # No client at all: only netbootd's own probe can draw an answer from the other server.
    named = named_servers(netbootd, timeout=15)
    rogue_ip = str(rogue_host.address.ip)
    assert [ev.get("server") for ev in named] == [rogue_ip]
    assert named[0].get("client") == "netbootd's probe"
    assert named[0].get("sent") == "OFFER"
    time.sleep(2.5)  # a few more probes
    netbootd.stop()
    (counts,) = [
        ev.get("counts")
        for ev in netbootd.events()
        if ev.event == "counters" and ev.get("service") == "dhcp"
    ]
    counters = dict(item.split("=") for item in counts.split(","))
    assert int(counters["probe-sent"]) >= 2
    assert int(counters["own-probe"]) >= 2  # each probe came back to netbootd, unanswered
    ours = [ev for ev in netbootd.events() if ev.event == "DISCOVER"]
    assert ours == []  # netbootd never answered (nor even logged) its own probe
    # The other server offered to the probe and was never asked for the address.
    assert [ev.get("decision") for ev in rogue.events() if ev.svc == "dhcp"].count("ACK") == 0


def test_another_dhcp_server_on_the_segment_is_named(lab: Lab, tmp_path: Path) -> None:
    netbootd = quiet_netbootd(lab, tmp_path, probe_interval=0).start()
    rogue, rogue_host = start_rogue(lab, tmp_path)
    host = client_host(lab, "udhcpc")
    # Several DISCOVERs and REQUESTs, asking for broadcast replies (-B) as PXE firmware does:
    # both servers answer each one, and the other server's answers reach netbootd's host.
    for _ in range(3):
        client = host.spawn(
            ["busybox", "udhcpc", "-f", "-q", "-n", "-B", "-i", host.interface, "-t", "3",
             "-T", "1", "-s", "/bin/true"],
            lab.workdir / "udhcpc.log",
        )  # fmt: skip
        client.wait(timeout=15)
    named = named_servers(netbootd, timeout=10)
    rogue_ip = str(rogue_host.address.ip)
    assert [ev.get("server") for ev in named] == [rogue_ip]  # named once, never ourselves
    assert named[0].get("client") == host.mac()
    assert named[0].get("sent") in {"OFFER", "ACK"}
    assert rogue.alive() and netbootd.alive()
