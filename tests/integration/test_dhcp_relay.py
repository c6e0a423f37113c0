"""Subnets behind a real relay agent, config hosts and BOOTP clients, in a private lab network.

netbootd serves the lab bridge (10.99.0.0/24). ISC's ``dhcrelay`` runs on a second host of the
bridge and relays for a network of its own (10.0.5.0/24) with a client segment behind it,
adding relay agent information (option 82, ``-a``). Real clients (busybox udhcpc, dhclient,
bootpc) ask from either side. Needs root (network namespaces).
"""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import struct
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from netbootd.proto.dhcp.codec import HEADER_SIZE, MAGIC_COOKIE, DhcpPacket, Opt, decode
from netbootd_lab import Host, Lab, NetbootdServer
from netbootd_lab.netns import Process

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
]

needs = pytest.mark.skipif(
    shutil.which("dhcrelay") is None or shutil.which("busybox") is None,
    reason="dhcrelay (isc-dhcp-relay) or busybox is not installed",
)

CONFIG = """
log-dhcp = true

[[subnets]]
network = "10.99.0.0/24"
pools = ["10.99.0.100-10.99.0.110"]

[[subnets]]
network = "10.0.5.0/24"
pools = ["10.0.5.100-10.0.5.120", "10.0.5.200-10.0.5.210"]
routers = ["10.0.5.1"]
lease-time = 1200
dynamic-bootp = true

[[hosts]]
client-id = "ws-7"
address = "10.0.5.7"
hostname = "ws-7"

[[hosts]]
mac = "{bootp_mac}"
address = "10.99.0.50"
hostname = "old-timer"
boot-file = "pxelinux.0"
"""

UDHCPC_SCRIPT = """#!/bin/sh
case "$1" in
  deconfig) ip addr flush dev "$interface" ;;
  bound|renew)
    ip addr replace "$ip/$mask" dev "$interface"
    [ -n "$router" ] && ip route replace default via "${router%% *}"
    ;;
esac
echo "$1 $ip $serverid $lease" >> "$EVENTS"
"""

DHCLIENT_SCRIPT = """#!/bin/sh
# What dhclient learned, kept; the address applied; the machine's hostname left alone.
echo "$reason ip=$new_ip_address host=$new_host_name" >> {events}
case "$reason" in
  BOUND|RENEW|REBIND|REBOOT) ip addr replace "$new_ip_address/24" dev "$interface" ;;
esac
"""

RELAY_NET = "10.0.5.0/24"
RELAY_GIADDR = "10.0.5.1"
BOOTP_MAC = "52:54:00:b0:07:01"


@dataclass
class Relayed:
    lab: Lab
    netbootd: NetbootdServer
    relay: Host
    far: Host  # a client segment behind the relay
    dhcrelay: Process
    capture: Path  # what crossed between the relay and netbootd, as pcap


@pytest.fixture
def relayed(tmp_path: Path) -> Iterator[Relayed]:
    with Lab(tmp_path / "lab") as lab:
        root = tmp_path / "root"
        root.mkdir()
        (root / "pxelinux.0").write_bytes(b"\0" * 64)
        config = tmp_path / "netbootd.toml"
        config.write_text(CONFIG.format(bootp_mac=BOOTP_MAC))
        relay = lab.add_host("relay")  # eth0: 10.99.0.2 on the bridge
        far = lab.add_segment(relay, "far", f"{RELAY_GIADDR}/24")
        relay.ns_exec(["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
        # Replies to the relay (giaddr:67) and to renewing clients go by way of the relay host.
        lab.ip("route", "add", RELAY_NET, "via", str(relay.address.ip))
        netbootd = NetbootdServer(
            lab,
            root,
            state_dir=tmp_path / "state",
            log_path=lab.workdir / "netbootd.log",
            boot=["bios=pxelinux.0"],
            extra_args=["--no-http"],
            config=config,
        ).start()
        capture = lab.workdir / "relay.pcap"
        tcpdump = relay.spawn(
            [
                "tcpdump",
                "-i",
                relay.interface,
                "-U",
                "--immediate-mode",
                "-Z",
                "root",
                "-n",
                "-w",
                str(capture),
                "udp port 67",
            ],
            lab.workdir / "tcpdump.log",
        )
        dhcrelay = relay.spawn(
            ["dhcrelay", "-4", "-d", "--no-pid", "-a", "-D",
             "-id", far.bridge_port, "-iu", relay.interface, lab.server_ip],
            lab.workdir / "dhcrelay.log",
        )  # fmt: skip
        relay.wait_udp_ports([67], 10, watch=dhcrelay)
        _wait_file(capture)
        yield Relayed(lab, netbootd, relay, far, dhcrelay, capture)
        tcpdump.stop()


def _wait_file(path: Path, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def _address(host: Host) -> str | None:
    out = host.ip("-4", "-o", "addr", "show", "dev", host.interface)
    words = out.split()
    return words[words.index("inet") + 1].split("/")[0] if "inet" in words else None


def _wait_for(predicate, timeout: float = 20) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def _decisions(server: NetbootdServer, mac: str) -> list[tuple[str, str]]:
    return [
        (ev.event, ev.get("decision"))
        for ev in server.events()
        if ev.svc == "dhcp" and ev.get("mac") == mac
    ]


def _udhcpc(host: Host, tmp_path: Path, name: str) -> tuple[Process, Path]:
    script = tmp_path / "udhcpc.sh"
    script.write_text(UDHCPC_SCRIPT)
    script.chmod(0o755)
    events = tmp_path / f"{name}.events"
    client = host.spawn(
        ["busybox", "udhcpc", "-f", "-i", host.interface, "-s", str(script), "-t", "10",
         "-T", "1"],
        tmp_path / f"{name}.log",
        env={"EVENTS": str(events)},
    )  # fmt: skip
    return client, events


def read_pcap(path: Path) -> list[tuple[str, str, DhcpPacket, bytes]]:
    """(source, destination, packet, UDP payload) of each DHCP datagram in an Ethernet pcap."""
    data = path.read_bytes()
    magic = struct.unpack_from("<I", data)[0]
    order = "<" if magic == 0xA1B2C3D4 else ">"
    found = []
    offset = 24
    while offset + 16 <= len(data):
        length = struct.unpack_from(order + "I", data, offset + 8)[0]
        frame = data[offset + 16 : offset + 16 + length]
        offset += 16 + length
        ip = frame[14:]
        header = (ip[0] & 0x0F) * 4
        payload = ip[header + 8 :]
        source = socket.inet_ntoa(ip[12:16])
        destination = socket.inet_ntoa(ip[16:20])
        found.append((source, destination, decode(payload), payload))
    return found


def _last_option(payload: bytes) -> int:
    """The code of the last option before END in the options field."""
    i, last = HEADER_SIZE + len(MAGIC_COOKIE), -1
    while i < len(payload) and payload[i] != Opt.END:
        if payload[i] == Opt.PAD:
            i += 1
            continue
        last = payload[i]
        i += 2 + payload[i + 1]
    return last


@needs
def test_local_and_relayed_clients_get_their_subnets_pools(
    relayed: Relayed, tmp_path: Path
) -> None:
    netbootd, far = relayed.netbootd, relayed.far
    near = relayed.lab.add_host("near")
    near.ip("addr", "flush", "dev", near.interface)
    far_client, far_events = _udhcpc(far, tmp_path, "far")
    near_client, _ = _udhcpc(near, tmp_path, "near")
    far_mac, near_mac = far.mac(), near.mac()
    _wait_for(lambda: _address(far) is not None and _address(near) is not None)
    far_ip, near_ip = _address(far), _address(near)
    assert far_ip is not None and far_ip.startswith("10.0.5.1")  # 10.0.5.100-120
    assert near_ip is not None and near_ip.startswith("10.99.0.1")  # 10.99.0.100-110
    assert netbootd.leased_address(far_mac) == far_ip
    relayed_acks = [
        ev for ev in netbootd.events() if ev.get("mac") == far_mac and ev.get("decision") == "ACK"
    ]
    assert relayed_acks and all(ev.get("relay") == RELAY_GIADDR for ev in relayed_acks)

    # Option 82 went back to the relay in every reply, unchanged and last. The lease above
    # shows it already (dhcrelay -a -D drops a reply without it); the capture shows it on the
    # wire, whatever the relay does.
    crossed = read_pcap(relayed.capture)
    asked = [p for src, _, p, _ in crossed if src == str(relayed.relay.address.ip)]
    answered = [
        (p, raw)
        for src, dst, p, raw in crossed
        if src == relayed.lab.server_ip and dst == RELAY_GIADDR  # RFC 2131 §4.1: to giaddr
    ]
    assert asked and answered
    sent_82 = {p.xid: p.get(Opt.AGENT_INFO) for p in asked}
    assert all(value is not None for value in sent_82.values())  # dhcrelay -a added it
    for packet, raw in answered:
        assert packet.get(Opt.AGENT_INFO) == sent_82[packet.xid]
        assert _last_option(raw) == Opt.AGENT_INFO
    assert any(packet.message_type == 5 for packet, _ in answered)  # an ACK among them
    direct = [
        p for src, dst, p, _ in crossed if src == relayed.lab.server_ip and dst != RELAY_GIADDR
    ]
    assert direct and all(Opt.AGENT_INFO not in p for p in direct)  # the near client's: none
    log = netbootd.log_text()
    assert "sent xid=" in log and "82 agent-info: 1=" in log

    # Renewing: the client unicasts to netbootd by way of the relay host, no relay agent
    # involved (RFC 2131 §4.3.2); its address picks the subnet.
    before = _decisions(netbootd, far_mac).count(("REQUEST", "ACK"))
    os.kill(far_client.pid, 10)  # SIGUSR1: renew
    _wait_for(lambda: _decisions(netbootd, far_mac).count(("REQUEST", "ACK")) > before)
    _wait_for(lambda: "renew" in far_events.read_text())
    assert _address(far) == far_ip
    far_client.stop()
    near_client.stop()
    assert netbootd.alive() and relayed.dhcrelay.alive()
    with sqlite3.connect(netbootd.state_dir / "leases.sqlite3") as db:
        stored = {
            mac: str(IPv4Address(a)) for mac, a in db.execute("SELECT mac, address FROM leases")
        }
    assert stored == {far_mac: far_ip, near_mac: near_ip}


@pytest.mark.skipif(shutil.which("dhclient") is None, reason="dhclient is not installed")
@needs
def test_dhclient_with_a_client_id_gets_its_reserved_address_and_name(
    relayed: Relayed, tmp_path: Path
) -> None:
    far = relayed.far
    events = tmp_path / "dhclient.events"
    script = tmp_path / "dhclient.sh"
    script.write_text(DHCLIENT_SCRIPT.format(events=events))
    script.chmod(0o755)
    conf = tmp_path / "dhclient.conf"
    conf.write_text(
        'send dhcp-client-identifier "ws-7";\n'
        "request subnet-mask, broadcast-address, routers, host-name;\n"
    )
    leases = tmp_path / "dhclient.leases"
    got = far.ns_exec(
        ["dhclient", "-4", "-1", "-v", "-cf", str(conf), "-sf", str(script), "-lf", str(leases),
         "-pf", str(tmp_path / "dhclient.pid"), far.interface],
        timeout=60,
    )  # fmt: skip
    assert "bound to 10.0.5.7" in got.stderr, got.stderr
    assert _address(far) == "10.0.5.7"
    assert "BOUND ip=10.0.5.7 host=ws-7" in events.read_text()
    assert 'option host-name "ws-7";' in leases.read_text()
    far.ns_exec(["dhclient", "-x", "-pf", str(tmp_path / "dhclient.pid")], check=False)
    assert relayed.netbootd.alive()


BOOTP_SENDER = """
import socket, sys
# A BOOTREQUEST (RFC 951) with an RFC 1497 vendor area: the cookie, then END; no option 53.
mac = bytes.fromhex(sys.argv[1].replace(":", ""))
flags = 0x8000 if sys.argv[2:] == ["broadcast"] else 0  # RFC 1542: ask relays to broadcast
packet = bytes([1, 1, 6, 0]) + (0x5EED).to_bytes(4, "big") + bytes(2) + flags.to_bytes(2, "big")
packet += bytes(16) + mac + bytes(10)
packet += bytes(64 + 128) + bytes([99, 130, 83, 99, 255]) + bytes(59)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"eth0")
s.bind(("0.0.0.0", 68))
s.settimeout(10)
s.sendto(packet, ("255.255.255.255", 67))
reply, _ = s.recvfrom(2048)
sys.stdout.write(reply.hex())
"""


@needs
def test_bootp_clients_from_reservations_and_dynamic_bootp(
    relayed: Relayed, tmp_path: Path
) -> None:
    lab, netbootd = relayed.lab, relayed.netbootd
    host = lab.add_host("bootp")
    host.ip("link", "set", host.interface, "address", BOOTP_MAC)
    host.ip("addr", "flush", "dev", host.interface)
    raw = bytes.fromhex(
        host.ns_exec([sys.executable, "-c", BOOTP_SENDER, BOOTP_MAC], timeout=30).stdout
    )
    # The RFC 951 layout: 300 octets, the 64-octet vendor area after the header.
    assert len(raw) == 300
    reply = decode(raw)
    assert reply.op == 2 and reply.xid == 0x5EED and reply.message_type is None
    assert str(reply.yiaddr) == "10.99.0.50" and str(reply.siaddr) == lab.server_ip
    assert reply.file == b"pxelinux.0"
    assert raw[HEADER_SIZE : HEADER_SIZE + 4] == MAGIC_COOKIE
    assert reply.get(Opt.HOST_NAME) == b"old-timer"
    assert reply.get(Opt.SUBNET_MASK) == bytes([255, 255, 255, 0])

    # Behind the relay, dynamic BOOTP: a pool address, leased for good and stored.
    far = relayed.far
    remote = bytes.fromhex(
        far.ns_exec([sys.executable, "-c", BOOTP_SENDER, far.mac(), "broadcast"], timeout=30).stdout
    )
    dynamic = decode(remote)
    assert dynamic.message_type is None and str(dynamic.yiaddr).startswith("10.0.5.1")
    assert dynamic.get(Opt.ROUTER) == bytes([10, 0, 5, 1])
    with sqlite3.connect(netbootd.state_dir / "leases.sqlite3") as db:
        rows = list(db.execute("SELECT address, expires FROM leases WHERE mac = ?", (far.mac(),)))
    assert rows == [(int(dynamic.yiaddr), float("inf"))]

    # Another BOOTP client, without a reservation: ignored, with a reason, since the subnet
    # has no dynamic-bootp.
    stranger = lab.add_host("stranger")
    stranger.ip("addr", "flush", "dev", stranger.interface)
    silent = stranger.ns_exec(
        [sys.executable, "-c", BOOTP_SENDER, stranger.mac()], check=False, timeout=30
    )
    assert silent.returncode != 0  # timed out: no reply
    ignored = netbootd.wait_event(
        lambda ev: ev.event == "BOOTP" and ev.get("mac") == stranger.mac(), 10
    )
    assert "dynamic-bootp is off" in ignored.get("reason")

    # A relay agent for a network netbootd does not serve: silence, a reason and a count.
    lab.add_host("lost").ns_exec([sys.executable, "-c", LOST_RELAY, lab.server_ip])
    lost = netbootd.wait_event(lambda ev: ev.get("relay") == "10.0.9.1", 10)
    assert (lost.event, lost.get("decision")) == ("DISCOVER", "ignored")
    assert lost.get("reason") == "relayed from 10.0.9.1, which is in no served subnet"
    netbootd.stop()
    assert "bootp-unanswered=1" in netbootd.log_text()
    assert "relay-unknown-subnet=1" in netbootd.log_text()


@pytest.mark.skipif(shutil.which("bootpc") is None, reason="bootpc is not installed")
@needs
def test_bootpc_gets_its_reservation(relayed: Relayed) -> None:
    """A real BOOTP client (Debian's bootpc) with a reservation by MAC."""
    host = relayed.lab.add_host("bootpc")
    host.ip("link", "set", host.interface, "address", BOOTP_MAC)
    host.ip("addr", "flush", "dev", host.interface)
    # It broadcasts without binding to the device, as at boot, so it needs a route for the
    # limited broadcast.
    host.ip("route", "add", "255.255.255.255/32", "dev", host.interface)
    got = host.ns_exec(
        ["bootpc", "--dev", host.interface, "--returniffail", "--timeoutwait", "10"],
        check=False,
        timeout=30,
    )
    assert "IPADDR='10.99.0.50'" in got.stdout, got.stdout + got.stderr
    assert "NETMASK='255.255.255.0'" in got.stdout
    assert "BOOTFILE='pxelinux.0'" in got.stdout
    assert "HOSTNAME='old-timer'" in got.stdout
    assert f"SERVER='{relayed.lab.server_ip}'" in got.stdout


LOST_RELAY = """
import socket, sys
# A DISCOVER as a relay agent on 10.0.9.1 would forward it (RFC 2131 §4.1: giaddr set).
packet = bytes([1, 1, 6, 1]) + (0x1057).to_bytes(4, "big") + bytes(16)
packet += socket.inet_aton("10.0.9.1") + bytes.fromhex("525400000957") + bytes(10 + 64 + 128)
packet += bytes([99, 130, 83, 99, 53, 1, 1, 255])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.sendto(packet, (sys.argv[1], 67))
"""
