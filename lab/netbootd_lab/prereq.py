"""What the lab needs from the machine, checked up front so a missing piece reads as one line."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from netbootd_lab.payload import BUSYBOX, LDLINUX_C32, PXELINUX_0, find_kernel
from netbootd_lab.vm import OVMF_CODE, OVMF_VARS, QEMU

# What the firmware matrix boots from: the ipxe package's binaries (served by netbootd as if in
# the root) and the iPXE ROMs QEMU puts on its cards (ipxe-qemu).
IPXE_DIR = Path("/usr/lib/ipxe")
IPXE_ROMS = (Path("/usr/lib/ipxe/qemu/pxe-e1000.rom"), Path("/usr/lib/ipxe/qemu/efi-e1000.rom"))
GRUB_NET_EFI = Path("/usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed")


def missing_prerequisites() -> list[str]:
    """Reasons the lab cannot run here; empty when it can."""
    reasons = []
    if os.geteuid() != 0:
        reasons.append("needs root (network namespaces, taps)")
    for tool, package in (
        ("ip", "iproute2"),
        ("ss", "iproute2"),
        (QEMU, "qemu-system-x86"),
    ):
        if shutil.which(tool) is None:
            reasons.append(f"{tool} not found (package {package})")
    if find_kernel() is None:
        reasons.append("no /boot/vmlinuz-* (package linux-image-amd64)")
    for path, package in (
        (BUSYBOX, "busybox-static"),
        (PXELINUX_0, "pxelinux"),
        (LDLINUX_C32, "syslinux-common"),
    ):
        if not path.is_file():
            reasons.append(f"{path} missing (package {package})")
    if not os.path.exists("/dev/net/tun"):
        reasons.append("/dev/net/tun missing (no tap devices)")
    return reasons


def missing_firmware_prerequisites() -> list[str]:
    """Reasons the UEFI and iPXE boots cannot run here, on top of :func:`missing_prerequisites`."""
    reasons = []
    for path, package in (
        (OVMF_CODE, "ovmf"),
        (OVMF_VARS, "ovmf"),
        (IPXE_DIR / "undionly.kpxe", "ipxe"),
        (IPXE_DIR / "snponly.efi", "ipxe"),
        *((rom, "ipxe-qemu") for rom in IPXE_ROMS),
        (GRUB_NET_EFI, "grub-efi-amd64-signed"),
    ):
        if not path.is_file():
            reasons.append(f"{path} missing (package {package})")
    return reasons
