"""A BIOS machine network-boots Linux through pxelinux from netbootd alone.

SeaBIOS runs the iPXE option ROM of the e1000 card; iPXE gets an address and ``pxelinux.0``
from netbootd's DHCP, pxelinux walks its config lookup order over netbootd's TFTP, then loads
the kernel and initramfs. The guest's /init prints a marker and its kernel command line.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from netbootd_lab import (
    BOOT_MARKER,
    Lab,
    NetbootdServer,
    is_subsequence,
    pxelinux_config_lookups,
    start_vm,
)
from netbootd_lab.payload import CMDLINE_PREFIX, INITRD_NAME, KERNEL_NAME

pytestmark = pytest.mark.e2e

BOOT_TIMEOUT = 150


def test_bios_pxelinux_boot(lab: Lab, pxelinux_root: Path, tmp_path: Path) -> None:
    server = NetbootdServer(
        lab,
        pxelinux_root,
        state_dir=tmp_path / "state",
        log_path=lab.workdir / "netbootd.log",
        boot=["bios=pxelinux.0"],
    ).start()
    vm = start_vm(lab)

    seconds = vm.wait_for(BOOT_MARKER, timeout=BOOT_TIMEOUT)
    vm.wait_for(CMDLINE_PREFIX, timeout=10)
    print(f"\nBIOS pxelinux boot from netbootd: marker after {seconds:.1f} s")

    cmdline = vm.kernel_cmdline()
    assert cmdline is not None
    assert "netbootd.lab=pxelinux" in cmdline.split()
    assert f"BOOTIF=01-{vm.mac.replace(':', '-')}" in cmdline.split()

    events = server.events()
    answers = [
        (ev.event, ev.get("decision"))
        for ev in events
        if ev.svc == "dhcp" and ev.get("mac").lower() == vm.mac
    ]
    assert ("DISCOVER", "OFFER") in answers
    assert ("REQUEST", "ACK") in answers

    address = server.leased_address(vm.mac)
    assert address is not None, "netbootd logged no ACK with an address for the VM"
    assert ipaddress.IPv4Address(address) in lab.network

    requested = server.tftp_files()
    expected = [
        "pxelinux.0",
        "ldlinux.c32",
        *pxelinux_config_lookups(vm.mac, address),
        KERNEL_NAME,
        INITRD_NAME,
    ]
    assert is_subsequence(expected, requested), f"TFTP requests in order: {requested}"

    for name in (KERNEL_NAME, INITRD_NAME):
        done = [
            ev
            for ev in events
            if ev.svc == "tftp" and ev.get("file").lstrip("/") == name and ev.get("result") == "ok"
        ]
        assert done, f"no successful TFTP transfer of {name}"
        assert done[-1].get("bytes") == str((pxelinux_root / name).stat().st_size)
