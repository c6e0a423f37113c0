"""End-to-end lab for netbootd: private network namespaces, QEMU guests and boot payloads.

Shared by the end-to-end tests and by ``make demo``. Everything runs inside namespaces the lab
creates and removes again; nothing touches the machine's real network.
"""

from netbootd_lab.kea import KeaServer
from netbootd_lab.netns import Host, Lab, LabError, Process
from netbootd_lab.payload import (
    BOOT_MARKER,
    build_initramfs,
    build_pxelinux_root,
    find_kernel,
    is_subsequence,
    pxelinux_config_lookups,
)
from netbootd_lab.servers import DnsmasqServer, LogEvent, NetbootdServer
from netbootd_lab.vm import VM, start_vm

__all__ = [
    "BOOT_MARKER",
    "VM",
    "DnsmasqServer",
    "Host",
    "KeaServer",
    "Lab",
    "LabError",
    "LogEvent",
    "NetbootdServer",
    "Process",
    "build_initramfs",
    "build_pxelinux_root",
    "find_kernel",
    "is_subsequence",
    "pxelinux_config_lookups",
    "start_vm",
]
