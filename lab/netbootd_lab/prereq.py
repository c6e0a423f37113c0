"""What the lab needs from the machine, checked up front so a missing piece reads as one line."""

from __future__ import annotations

import os
import shutil

from netbootd_lab.payload import BUSYBOX, LDLINUX_C32, PXELINUX_0, find_kernel
from netbootd_lab.vm import QEMU


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
