"""Every firmware boots from one netbootd with no --boot flags.

The root holds only ``boot.ipxe``, a kernel and an initrd. netbootd's defaults do the rest:
BIOS PXE gets ``undionly.kpxe`` and UEFI PXE ``snponly.efi`` over TFTP, UEFI HTTP Boot gets
``snponly.efi`` as a URL, all from the system's ipxe package; whatever then runs iPXE gets
``boot.ipxe`` over HTTP and never iPXE again. The script fetches the kernel and initrd next to
it; the guest prints its command line, which carries iPXE's ``${net0/mac}`` and
``${platform}``.

(a) SeaBIOS with the iPXE ROM of the e1000, (b) OVMF with EDK2's own PXE (a virtio card without
option ROM), (c) OVMF with iPXE's EFI ROM (e1000), (d) OVMF with EDK2's own HTTP Boot.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from netbootd_lab import BOOT_MARKER, Lab, LogEvent, NetbootdServer, start_vm
from netbootd_lab.payload import CMDLINE_PREFIX, INITRD_NAME, IPXE_SCRIPT_NAME, KERNEL_NAME
from netbootd_lab.prereq import IPXE_DIR
from netbootd_lab.vm import EDK2_NIC, IPXE_NIC, Firmware, UefiBoot

pytestmark = pytest.mark.e2e

BOOT_TIMEOUT = 240


@dataclass(frozen=True)
class Case:
    firmware: Firmware
    nic: str
    uefi_boot: UefiBoot
    platform: str  # iPXE's ${platform} once iPXE runs
    # The firmware's own first request, before iPXE runs: (client kind, boot file), or None
    # when the firmware is iPXE from the start. "{server}" stands for the server's address.
    first: tuple[str, str] | None


CASES = {
    "a-bios-ipxe-rom": Case(Firmware.BIOS, IPXE_NIC, UefiBoot.ALL, "pcbios", None),
    "b-uefi-pxe": Case(Firmware.UEFI, EDK2_NIC, UefiBoot.PXE4, "efi", ("pxe", "snponly.efi")),
    "c-uefi-ipxe-rom": Case(Firmware.UEFI, IPXE_NIC, UefiBoot.ALL, "efi", None),
    # Only HTTP Boot left on: EDK2 would try PXEv4 and PXEv6 first, minutes under TCG.
    "d-uefi-http-boot": Case(
        Firmware.UEFI, EDK2_NIC, UefiBoot.HTTP, "efi", ("uefi-http", "http://{server}/snponly.efi")
    ),
}


def _dhcp_answers(events: list[LogEvent], mac: str) -> list[LogEvent]:
    return [
        ev
        for ev in events
        if ev.svc == "dhcp" and ev.get("mac").lower() == mac and ev.get("decision") == "ACK"
    ]


def _http(events: list[LogEvent], path: str) -> list[tuple[str, str, str]]:
    return [
        (ev.get("method"), ev.get("status"), ev.get("bytes"))
        for ev in events
        if ev.svc == "http" and ev.event == "request" and ev.get("path") == "/" + path
    ]


def _check_http_boot(server: NetbootdServer, lab: Lab) -> None:
    """The offer said HTTPClient and named a URL; the firmware sent a HEAD, then a GET."""
    events = server.events()
    offers = [
        ev
        for ev in events
        if ev.svc == "dhcp" and ev.get("client") == "uefi-http" and ev.get("decision") == "OFFER"
    ]
    assert offers, "no offer to the HTTP Boot client"
    assert offers[0].get("vendor_class").startswith("HTTPClient:Arch:00016")
    xid = offers[0].get("xid")
    option_line = rf"netbootd\.dhcp sent xid={xid} (\d+) [\w-]+: (.*)$"
    sent = re.findall(option_line, server.log_text(), re.MULTILINE)
    assert ("60", "HTTPClient") in sent
    assert ("67", f"http://{lab.server_ip}/snponly.efi") in sent
    assert "66" not in {code for code, _ in sent}  # no TFTP server name for a URL
    methods = [method for method, _, _ in _http(events, "snponly.efi")]
    assert methods[:2] == ["HEAD", "GET"], methods


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_firmware_boots_with_defaults(
    case: Case, lab: Lab, ipxe_root: Path, tmp_path: Path, firmware_prerequisites: None
) -> None:
    server = NetbootdServer(
        lab,
        ipxe_root,
        state_dir=tmp_path / "state",
        log_path=lab.workdir / "netbootd.log",
        boot=(),
        extra_args=["--log-dhcp"],
    ).start()
    vm = start_vm(lab, firmware=case.firmware, nic=case.nic, uefi_boot=case.uefi_boot)

    seconds = vm.wait_for(BOOT_MARKER, timeout=BOOT_TIMEOUT)
    vm.wait_for(CMDLINE_PREFIX, timeout=10)
    print(f"\n{case.firmware}/{case.nic}: booted after {seconds:.1f} s")

    # The guest ran the kernel the script named, with iPXE's own view of the machine.
    cmdline = vm.kernel_cmdline()
    assert cmdline is not None
    args = cmdline.split()
    assert "netbootd.lab=ipxe" in args
    assert f"netbootd.mac={vm.mac}" in args
    assert f"netbootd.platform={case.platform}" in args

    events = server.events()
    acks = _dhcp_answers(events, vm.mac)
    script_url = f"http://{lab.server_ip}/{IPXE_SCRIPT_NAME}"
    answers = [(ev.get("client"), ev.get("file")) for ev in acks]
    expected = []
    if case.first is not None:
        kind, file = case.first
        expected.append((kind, file.format(server=lab.server_ip)))
    expected.append(("ipxe", script_url))
    assert answers == expected, [ev.line for ev in acks]

    # iPXE was loaded once at most: no chainloading loop. (EDK2 asks for the size over TFTP
    # first and ends that transfer at the OACK: a size query, not a load.)
    loader = IPXE_DIR / "snponly.efi"
    loads = [
        ev
        for ev in events
        if (
            ev.svc == "tftp"
            and ev.get("file").lstrip("/") == loader.name
            and ev.get("result") != "size query"
        )
        or (ev.svc == "http" and ev.get("path") == "/" + loader.name and ev.get("method") == "GET")
    ]
    assert len(loads) == (1 if case.first else 0), [ev.line for ev in loads]
    if case.first is not None:
        size = str(loader.stat().st_size)
        done = loads[0]
        assert done.get("bytes") == size
        assert done.get("result", "ok") == "ok" and done.get("status", "200") == "200"

    if case.first is not None and case.first[0] == "uefi-http":
        _check_http_boot(server, lab)

    # The script, then the kernel and initrd next to it, all over HTTP.
    assert ("GET", "200", str((ipxe_root / IPXE_SCRIPT_NAME).stat().st_size)) in _http(
        events, IPXE_SCRIPT_NAME
    )
    for name in (KERNEL_NAME, INITRD_NAME):
        size = str((ipxe_root / name).stat().st_size)
        assert ("GET", "200", size) in _http(events, name), name
