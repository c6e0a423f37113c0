"""proxyDHCP on the DHCP server's own host: the DHCP server keeps port 67 to itself.

dnsmasq (addresses only) runs in the lab namespace and holds port 67; netbootd ``--proxy`` on
the same interface must leave that port alone, say so in one line, and serve port 4011 (PXE 2.1
§2.2.3). Were both to share the port, the kernel would hand each unicast request to one of
them, whichever it picks, and a client's renewal could go to netbootd instead of the server
that leased its address; the site server must go on serving its clients as before. Needs root
(network namespaces), dnsmasq and busybox (udhcpc).
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from netbootd_lab import DnsmasqServer, Lab, NetbootdServer

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
    pytest.mark.skipif(
        shutil.which("dnsmasq") is None or shutil.which("busybox") is None,
        reason="dnsmasq or busybox is not installed",
    ),
]


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    with Lab(tmp_path / "lab") as the_lab:
        yield the_lab


# Applies the lease to the interface, so that a renewal can be sent from the leased address.
UDHCPC_SCRIPT = """#!/bin/sh
case "$1" in
  deconfig) ip addr flush dev "$interface" ;;
  bound|renew) ip addr replace "$ip/$mask" dev "$interface" ;;
esac
"""


def udp_port_owners(lab: Lab, port: int) -> str:
    out = lab.ns_exec(["ss", "-H", "-u", "-l", "-n", "-p"]).stdout
    return "\n".join(line for line in out.splitlines() if f":{port} " in line)


def test_port_67_stays_with_the_dhcp_server(lab: Lab, tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    site = DnsmasqServer(
        lab,
        root,
        state_dir=tmp_path / "site-state",
        log_path=lab.workdir / "dnsmasq.log",
        boot_file=None,
    ).start()
    server = NetbootdServer(
        lab,
        root,
        state_dir=tmp_path / "state",
        log_path=lab.workdir / "netbootd.log",
        boot=(),
        extra_args=["--no-http"],
        proxy=True,
    ).start()

    # One line says why port 67 is not ours; 4011 is.
    held = [ev for ev in server.events() if ev.event == "port-held"]
    assert [ev.get("port") for ev in held] == ["67"], server.log_tail()
    assert "PXEClient" in held[0].get("effect")
    assert "netbootd" not in udp_port_owners(lab, 67)
    assert "netbootd" in udp_port_owners(lab, 4011)

    # A client's unicast renewal reaches the server that leased its address.
    host = lab.add_host("client")
    host.ip("addr", "flush", "dev", host.interface)
    script = tmp_path / "udhcpc.sh"
    script.write_text(UDHCPC_SCRIPT)
    script.chmod(0o755)
    client = host.spawn(
        ["busybox", "udhcpc", "-f", "-i", host.interface, "-s", str(script), "-t", "5",
         "-T", "1"],
        lab.workdir / "udhcpc.log",
    )  # fmt: skip
    mac = host.mac()

    def acks() -> list[str]:
        return [
            ev.get("address")
            for ev in site.events()
            if ev.get("decision") == "ACK" and ev.get("mac") == mac
        ]

    deadline = time.monotonic() + 20
    # Bound: the server acknowledged, and the client has taken the lease (its script ran).
    while not (acks() and "obtained" in client.log_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert acks(), site.log_tail()
    assert "obtained" in client.log_text(), client.log_text()
    os.kill(client.pid, signal.SIGUSR1)  # renew: a unicast REQUEST to dnsmasq's address
    deadline = time.monotonic() + 10
    while len(acks()) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(acks()) == 2 and len(set(acks())) == 1, site.log_tail()
    assert f"sending renew to server {lab.server_ip}" in client.log_text()  # unicast, not broadcast
    assert server.alive() and site.alive()


# What a DHCP server that shares its port does (dnsmasq, for one): bind
# 0.0.0.0:67 on the interface with SO_REUSEADDR. Exits 0 when the bind succeeds.
SHARING_BIND = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, sys.argv[1].encode())
try:
    s.bind(("0.0.0.0", 67))
except OSError as exc:
    sys.exit(str(exc))
"""


@pytest.mark.parametrize("proxy", [True, False], ids=["proxy", "authoritative"])
def test_a_dhcp_server_started_later(proxy: bool, lab: Lab, tmp_path: Path) -> None:
    """netbootd first, with port 67 free: it serves the port. A DHCP server started on this
    host afterwards that asks to share the port can bind it beside a proxy (rather than fail
    to start), but not beside an authoritative netbootd, where two servers would answer."""
    root = tmp_path / "root"
    root.mkdir()
    server = NetbootdServer(
        lab,
        root,
        state_dir=tmp_path / "state",
        log_path=lab.workdir / "netbootd.log",
        boot=(),
        extra_args=["--no-http"],
        proxy=proxy,
    ).start()
    assert "netbootd" in udp_port_owners(lab, 67)
    assert not [ev for ev in server.events() if ev.event == "port-held"]
    later = lab.ns_exec([sys.executable, "-c", SHARING_BIND, lab.bridge], check=False)
    if proxy:
        assert later.returncode == 0, later.stderr
    else:
        assert "Address already in use" in later.stderr
    assert server.alive()
