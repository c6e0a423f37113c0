"""A machine's boot steps in the journal, from real clients in a lab network.

udhcpc gets an address as a PXE client would; from that address atftp and curl fetch what a
boot fetches, and ask for what is not there. The journal holds each step: the DHCP exchange
with its decision and address, each transfer with its role, size and result, tied to the MAC
the DHCP ACK gave that address to. Needs root (network namespaces).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from netbootd.boot.journal import BootEvent
from netbootd.store.journal import JournalStore
from netbootd_lab import Host, Lab, NetbootdServer

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
]

LOADER = b"\x90" * 40_000
KERNEL = os.urandom(300_000)
UDHCPC_SCRIPT = """#!/bin/sh
case "$1" in
  deconfig) ip addr flush dev "$interface" ;;
  bound|renew) ip addr replace "$ip/$mask" dev "$interface" ;;
esac
"""


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    with Lab(tmp_path / "lab") as the_lab:
        yield the_lab


def _address(host: Host) -> str | None:
    words = host.ip("-4", "-o", "addr", "show", "dev", host.interface).split()
    return words[words.index("inet") + 1].split("/")[0] if "inet" in words else None


def _journal(server: NetbootdServer, wanted: int) -> list[BootEvent]:
    """The journal's events once ``wanted`` are stored (the writer flushes a few times a
    second)."""
    store = JournalStore(server.state_dir / "journal.sqlite3")
    deadline = time.monotonic() + 10
    events: list[BootEvent] = []
    while time.monotonic() < deadline:
        if store.path.exists():
            events = store.events(limit=10_000)
            if len(events) >= wanted:
                return events
        time.sleep(0.1)
    raise AssertionError(f"{wanted} events expected: {events}\n{server.log_tail()}")


def test_a_boot_lands_in_the_journal_step_by_step(lab: Lab, tmp_path: Path) -> None:
    assert shutil.which("busybox") and shutil.which("atftp") and shutil.which("curl")
    root = tmp_path / "root"
    root.mkdir()
    (root / "pxelinux.0").write_bytes(LOADER)
    (root / "vmlinuz").write_bytes(KERNEL)
    server = NetbootdServer(
        lab,
        root,
        state_dir=tmp_path / "state",
        log_path=lab.workdir / "netbootd.log",
        dhcp_range=lab.dhcp_range(100, 110),
        boot=["bios=pxelinux.0"],
    ).start()
    host = lab.add_host("pxe")
    host.ip("addr", "flush", "dev", host.interface)
    mac = host.mac()
    script = tmp_path / "udhcpc.sh"
    script.write_text(UDHCPC_SCRIPT)
    script.chmod(0o755)
    client = host.spawn(
        ["busybox", "udhcpc", "-f", "-i", host.interface, "-s", str(script), "-t", "5", "-T", "1",
         "-V", "PXEClient:Arch:00000:UNDI:002001"],
        lab.workdir / "udhcpc.log",
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while _address(host) is None and time.monotonic() < deadline:
            time.sleep(0.1)
        address = _address(host)
        assert address is not None, server.log_tail()
        ip = lab.server_ip
        fetched = tmp_path / "fetched"
        got = host.ns_exec(
            ["atftp", "--get", "-r", "pxelinux.0", "-l", str(fetched), ip], check=False, timeout=30
        )
        assert got.returncode == 0, got.stdout + got.stderr
        host.ns_exec(["atftp", "--get", "-r", "nothere.0", "-l", "/dev/null", ip], check=False)
        kernel = host.ns_exec(
            ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"http://{ip}/vmlinuz"],
            check=False,
            timeout=30,
        )
        missing = host.ns_exec(
            ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"http://{ip}/initrd.img"],
            check=False,
            timeout=30,
        )
        assert (kernel.stdout, missing.stdout) == ("200", "404")
        events = [e for e in _journal(server, 6) if e.mac == mac or e.address == address]
    finally:
        client.stop()
        server.stop()

    dhcp = [(e.kind, e.get("decision"), e.address) for e in events if e.service == "dhcp"]
    assert ("DISCOVER", "OFFER", address) in dhcp and ("REQUEST", "ACK", address) in dhcp, dhcp
    offer = next(e for e in events if e.get("decision") == "OFFER")
    assert (offer.get("file"), offer.get("client"), offer.get("arch")) == (
        "pxelinux.0",
        "pxe",
        "bios",
    )
    transfers = {(e.service, e.get("file")): e for e in events if e.kind == "transfer"}
    assert set(transfers) == {
        ("tftp", "pxelinux.0"),
        ("tftp", "nothere.0"),
        ("http", "vmlinuz"),
        ("http", "initrd.img"),
    }, transfers
    # Every transfer came from the address the ACK gave: each is tied to that MAC.
    assert all(e.mac == mac and e.address == address for e in transfers.values()), transfers
    loader = transfers["tftp", "pxelinux.0"].fields
    assert (loader["role"], loader["result"], loader["bytes"], loader["size"]) == (
        "loader",
        "ok",
        str(len(LOADER)),
        str(len(LOADER)),
    )
    assert transfers["tftp", "nothere.0"].get("result") == "not found"
    http = transfers["http", "vmlinuz"].fields
    assert (http["role"], http["result"], http["status"], http["bytes"]) == (
        "kernel",
        "ok",
        "200",
        str(len(KERNEL)),
    )
    lost = transfers["http", "initrd.img"]
    assert (lost.get("role"), lost.get("status"), lost.get("result")) == (
        "initrd",
        "404",
        "not found",
    )
    # In time order, as they happened: the exchange first, then the files.
    assert [e.id for e in events] == sorted(e.id for e in events)
    assert events[0].service == "dhcp"
