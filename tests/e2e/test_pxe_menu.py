"""PXE boot menus on real firmware: the ROM shows netbootd's prompt, takes the first item when
the prompt times out, asks netbootd at port 4011 for that item, and boots its file.

(a) SeaBIOS with the iPXE ROM of the e1000 (iPXE reads PXE menus, src/usr/pxemenu.c): a
two-item menu (pxelinux, local disk) with a 2 s prompt boots pxelinux. (b) The same firmware
with a one-item menu and no prompt: no menu at all, the file straight away. (c) OVMF with EDK2's
own PXE (PxeBcBoot.c): a two-item menu (iPXE, local disk) with a 2 s prompt boots iPXE, which
then asks again as iPXE, is not offered iPXE again, and runs the script. (a) and (c) run once
with netbootd as the DHCP server and once as a proxyDHCP beside a site DHCP server (dnsmasq,
addresses only). Told a discovery multicast group, (a) (authoritative) and (c) (beside
dnsmasq) run once more: each firmware sends its choice to the group, where netbootd answers it.

netbootd runs with no ``--boot`` flags: without the menu, BIOS clients would get
``undionly.kpxe`` and never reach pxelinux, so a menu that is not sent fails (a) and (b).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from netbootd_lab import BOOT_MARKER, DnsmasqServer, Lab, LogEvent, NetbootdServer, start_vm
from netbootd_lab.payload import CMDLINE_PREFIX, KERNEL_NAME
from netbootd_lab.vm import EDK2_NIC, Firmware, UefiBoot

pytestmark = pytest.mark.e2e

BOOT_TIMEOUT = 240
PROMPT = "Press F8 for the netbootd menu"
GROUP = "239.255.40.11"  # PXE boot server discovery by multicast


def _dhcp(server: NetbootdServer, mac: str) -> list[LogEvent]:
    return [ev for ev in server.events() if ev.svc == "dhcp" and ev.get("mac").lower() == mac]


def _served(server: NetbootdServer, name: str) -> list[LogEvent]:
    return [
        ev
        for ev in server.events()
        if ev.svc == "tftp" and ev.get("file").lstrip("/") == name and ev.get("result") == "ok"
    ]


def _site_dhcp(lab: Lab, root: Path, tmp_path: Path) -> None:
    """The site's DHCP server, handing out addresses only; netbootd is the proxyDHCP."""
    DnsmasqServer(
        lab,
        root,
        state_dir=tmp_path / "site-state",
        log_path=lab.workdir / "site-dhcp.log",
        boot_file=None,
        host=lab.add_host("site"),
    ).start()


@pytest.mark.parametrize("setup", ["authoritative", "proxy", "authoritative-multicast"])
def test_bios_ipxe_rom_two_item_menu(
    setup: str, lab: Lab, pxelinux_root: Path, tmp_path: Path
) -> None:
    proxy, multicast = setup.startswith("proxy"), setup.endswith("multicast")
    if proxy:
        _site_dhcp(lab, pxelinux_root, tmp_path)
    server = NetbootdServer(
        lab,
        pxelinux_root,
        state_dir=tmp_path / "state",
        log_path=lab.workdir / "netbootd.log",
        boot=(),
        extra_args=[
            "--log-dhcp",
            "--pxe-service=bios,Linux through pxelinux,pxelinux.0",
            "--pxe-service=bios,Boot from the local disk,local",
            f"--pxe-prompt=bios,{PROMPT},2",
            *([f"--pxe-multicast={GROUP}"] if multicast else []),
        ],
        proxy=proxy,
    ).start()
    vm = start_vm(lab)

    seconds = vm.wait_for(BOOT_MARKER, timeout=BOOT_TIMEOUT)
    vm.wait_for(CMDLINE_PREFIX, timeout=10)
    print(f"\nBIOS iPXE ROM, PXE menu ({setup}), first item: booted after {seconds:.1f} s")
    cmdline = vm.kernel_cmdline()
    assert cmdline is not None and "netbootd.lab=pxelinux" in cmdline.split()
    assert PROMPT in vm.console_text(), vm.console_tail()

    events = _dhcp(server, vm.mac)
    offers = [ev for ev in events if ev.get("decision") in ("OFFER", "PROXY-OFFER")]
    assert offers and offers[0].get("menu") == "bios", [ev.line for ev in events]
    assert offers[0].get("file") == "-"
    items = [ev for ev in events if ev.get("decision") == "BOOT-ITEM-ACK"]
    assert items, [ev.line for ev in events]
    assert (items[0].get("item"), items[0].get("file"), items[0].get("port")) == (
        "1",
        "pxelinux.0",
        "4011",
    )
    # iPXE tries the group first when the offer names one (src/net/udp/dhcp.c), else asks
    # netbootd by unicast.
    assert items[0].get("to") == (GROUP if multicast else ""), items[0].line
    # --log-dhcp shows the menu decoded.
    assert "boot-menu=32769:'Linux through pxelinux';0:'Boot from the local disk'" in (
        server.log_text()
    )
    assert _served(server, "pxelinux.0") and _served(server, KERNEL_NAME)
    assert not _served(server, "undionly.kpxe")


def test_bios_one_item_menu_boots_without_prompt(
    lab: Lab, pxelinux_root: Path, tmp_path: Path
) -> None:
    server = NetbootdServer(
        lab,
        pxelinux_root,
        state_dir=tmp_path / "state",
        log_path=lab.workdir / "netbootd.log",
        boot=(),
        extra_args=["--pxe-service=bios,Linux through pxelinux,pxelinux.0"],
    ).start()
    vm = start_vm(lab)

    seconds = vm.wait_for(BOOT_MARKER, timeout=BOOT_TIMEOUT)
    vm.wait_for(CMDLINE_PREFIX, timeout=10)
    print(f"\nBIOS iPXE ROM, one-item menu: booted after {seconds:.1f} s")
    cmdline = vm.kernel_cmdline()
    assert cmdline is not None and "netbootd.lab=pxelinux" in cmdline.split()

    events = _dhcp(server, vm.mac)
    offers = [ev for ev in events if ev.get("decision") == "OFFER"]
    assert offers and offers[0].get("file") == "pxelinux.0", [ev.line for ev in events]
    assert offers[0].get("why") == "pxe-menu bios: its only item"
    assert not [ev for ev in events if ev.get("decision") == "BOOT-ITEM-ACK"]
    assert "Booting from PXE menu" not in vm.console_text()


@pytest.mark.parametrize("setup", ["authoritative", "proxy", "proxy-multicast"])
def test_uefi_edk2_pxe_menu(
    setup: str, lab: Lab, ipxe_root: Path, tmp_path: Path, firmware_prerequisites: None
) -> None:
    proxy, multicast = setup.startswith("proxy"), setup.endswith("multicast")
    if proxy:
        _site_dhcp(lab, ipxe_root, tmp_path)
    server = NetbootdServer(
        lab,
        ipxe_root,
        state_dir=tmp_path / "state",
        log_path=lab.workdir / "netbootd.log",
        boot=(),
        extra_args=[
            "--log-dhcp",
            "--pxe-service=uefi,iPXE over the network,snponly.efi",
            "--pxe-service=uefi,Boot from the local disk,local",
            f"--pxe-prompt=uefi,{PROMPT},2",
            *([f"--pxe-multicast={GROUP}"] if multicast else []),
        ],
        proxy=proxy,
    ).start()
    vm = start_vm(lab, firmware=Firmware.UEFI, nic=EDK2_NIC, uefi_boot=UefiBoot.PXE4)

    seconds = vm.wait_for(BOOT_MARKER, timeout=BOOT_TIMEOUT)
    vm.wait_for(CMDLINE_PREFIX, timeout=10)
    print(f"\nOVMF EDK2 PXE, PXE menu, first item: booted after {seconds:.1f} s")
    cmdline = vm.kernel_cmdline()
    assert cmdline is not None and "netbootd.lab=ipxe" in cmdline.split()
    assert PROMPT in vm.console_text(), vm.console_tail()

    events = _dhcp(server, vm.mac)
    firmware = [ev for ev in events if ev.get("client") == "pxe"]
    offers = [ev for ev in firmware if ev.get("decision") in ("OFFER", "PROXY-OFFER")]
    assert offers and offers[0].get("menu") == "uefi", [ev.line for ev in events]
    items = [ev for ev in firmware if ev.get("decision") == "BOOT-ITEM-ACK"]
    assert items, [ev.line for ev in events]
    assert (items[0].get("item"), items[0].get("file"), items[0].get("port")) == (
        "1",
        "snponly.efi",
        "4011",
    )
    # EDK2 multicasts its choice when the offer names a group (UefiPxeBcDxe), else unicasts it.
    assert items[0].get("to") == (GROUP if multicast else ""), items[0].line
    # iPXE, once loaded, is not offered the menu (whose network item is iPXE) again.
    chained = [
        ev
        for ev in events
        if ev.get("client") == "ipxe" and ev.get("decision") in ("ACK", "PROXY-OFFER", "PROXY-ACK")
    ]
    assert chained and not chained[-1].get("menu"), [ev.line for ev in events]
    assert chained[-1].get("file") == f"http://{lab.server_ip}/boot.ipxe"
