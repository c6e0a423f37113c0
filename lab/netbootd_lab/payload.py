"""What the lab VMs boot: a tiny initramfs, the Debian kernel, and a pxelinux boot root.

The initramfs is a gzip'd newc cpio written here byte by byte around ``/bin/busybox`` (from
busybox-static). Its ``/init`` prints :data:`BOOT_MARKER`, then ``cmdline: <kernel command
line>``, and powers the VM off, so a test reads the whole verdict from the serial console.

This module only builds files on the local disk; it starts no process and touches no network.
"""

from __future__ import annotations

import gzip
import ipaddress
import re
import shutil
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

BOOT_MARKER = "NETBOOTD-LAB-BOOTED"
CMDLINE_PREFIX = "cmdline: "

BUSYBOX = Path("/bin/busybox")
PXELINUX_0 = Path("/usr/lib/PXELINUX/pxelinux.0")
LDLINUX_C32 = Path("/usr/lib/syslinux/modules/bios/ldlinux.c32")

KERNEL_NAME = "vmlinuz"
INITRD_NAME = "initrd.img"

# The guest's /init. `sleep 1` lets the UART drain what was written before the power goes.
INIT_SCRIPT = f"""#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
echo {BOOT_MARKER}
echo "{CMDLINE_PREFIX}$(/bin/busybox cat /proc/cmdline)"
/bin/busybox sleep 1
/bin/busybox poweroff -f
"""

_NEWC_MAGIC = b"070701"


@dataclass(frozen=True)
class _CpioEntry:
    name: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


def _newc_record(ino: int, entry: _CpioEntry) -> bytes:
    name = entry.name.encode() + b"\0"
    fields = (
        ino,
        entry.mode,
        0,  # uid
        0,  # gid
        2 if stat.S_ISDIR(entry.mode) else 1,  # nlink
        0,  # mtime: fixed, so the archive is reproducible
        len(entry.data),
        0,  # devmajor
        0,  # devminor
        entry.rdev[0],
        entry.rdev[1],
        len(name),
        0,  # check
    )
    header = _NEWC_MAGIC + b"".join(f"{value:08X}".encode() for value in fields)
    record = header + name
    record += b"\0" * (-len(record) % 4)
    record += entry.data
    record += b"\0" * (-len(record) % 4)
    return record


def newc_archive(entries: Iterable[_CpioEntry]) -> bytes:
    """Serialise entries as a newc ("070701") cpio archive, trailer included."""
    out = bytearray()
    ino = 0
    for ino, entry in enumerate(entries, start=1):
        out += _newc_record(ino, entry)
    out += _newc_record(ino + 1, _CpioEntry("TRAILER!!!", 0))
    return bytes(out)


def build_initramfs(dest: Path, busybox: Path = BUSYBOX) -> Path:
    """Write the lab initramfs (gzip'd newc cpio) to ``dest`` and return it."""
    entries = [
        _CpioEntry("bin", stat.S_IFDIR | 0o755),
        _CpioEntry("dev", stat.S_IFDIR | 0o755),
        _CpioEntry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)),
        _CpioEntry("proc", stat.S_IFDIR | 0o755),
        _CpioEntry("bin/busybox", stat.S_IFREG | 0o755, busybox.read_bytes()),
        _CpioEntry("init", stat.S_IFREG | 0o755, INIT_SCRIPT.encode()),
    ]
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(gzip.compress(newc_archive(entries), compresslevel=6, mtime=0))
    return dest


def _version_key(path: Path) -> list[int | str]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def find_kernel(boot_dir: Path = Path("/boot")) -> Path | None:
    """The newest ``vmlinuz-*`` in ``boot_dir``, or None."""
    kernels = sorted(boot_dir.glob("vmlinuz-*"), key=_version_key)
    return kernels[-1] if kernels else None


def pxelinux_default_config(marker_arg: str) -> str:
    """``pxelinux.cfg/default``: boot the lab kernel at once, console on the first serial port.

    ``IPAPPEND 2`` makes pxelinux add ``BOOTIF=01-<mac>`` to the kernel arguments, which lets a
    test check that the command line came through this very config.
    """
    return (
        "SERIAL 0 115200\n"
        "DEFAULT lab\n"
        "PROMPT 0\n"
        "TIMEOUT 0\n"
        "LABEL lab\n"
        f"  KERNEL {KERNEL_NAME}\n"
        f"  APPEND initrd={INITRD_NAME} console=ttyS0 panic=-1 quiet {marker_arg}\n"
        "  IPAPPEND 2\n"
    )


def build_pxelinux_root(
    root: Path,
    *,
    initramfs: Path,
    kernel: Path,
    marker_arg: str = "netbootd.lab=pxelinux",
) -> Path:
    """Fill ``root`` with a BIOS pxelinux tree. Files are copies, never symlinks.

    Layout: ``pxelinux.0``, ``ldlinux.c32``, ``vmlinuz``, ``initrd.img``,
    ``pxelinux.cfg/default``.
    """
    root.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(PXELINUX_0, root / "pxelinux.0")
    shutil.copyfile(LDLINUX_C32, root / "ldlinux.c32")
    shutil.copyfile(kernel, root / KERNEL_NAME)
    shutil.copyfile(initramfs, root / INITRD_NAME)
    (root / "pxelinux.cfg").mkdir(exist_ok=True)
    (root / "pxelinux.cfg" / "default").write_text(pxelinux_default_config(marker_arg))
    return root


IPXE_SCRIPT_NAME = "boot.ipxe"


def ipxe_script(marker_arg: str) -> str:
    """``boot.ipxe``: fetch the lab kernel and initramfs next to the script and boot them.

    The names are relative, so iPXE resolves them against the script's own URL (HTTP or TFTP).
    ``initrd=`` names the initramfs for the EFI stub (iPXE on UEFI needs it); ``netbootd.mac``
    carries iPXE's own idea of the MAC into the guest's command line.
    """
    return (
        "#!ipxe\n"
        f"kernel {KERNEL_NAME} initrd={INITRD_NAME} console=ttyS0 panic=-1 quiet "
        f"{marker_arg} netbootd.mac=${{net0/mac}} netbootd.platform=${{platform}}\n"
        f"initrd {INITRD_NAME}\n"
        "boot\n"
    )


def build_ipxe_root(
    root: Path,
    *,
    initramfs: Path,
    kernel: Path,
    marker_arg: str = "netbootd.lab=ipxe",
) -> Path:
    """Fill ``root`` with what an iPXE boot needs and nothing more: a script, kernel, initrd.

    No boot loader is put there: the iPXE binaries come from the system's ipxe package, which
    netbootd serves as if they were in the root.
    """
    root.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(kernel, root / KERNEL_NAME)
    shutil.copyfile(initramfs, root / INITRD_NAME)
    (root / IPXE_SCRIPT_NAME).write_text(ipxe_script(marker_arg))
    return root


def pxelinux_config_lookups(mac: str, address: str) -> list[str]:
    """The config names pxelinux tries, in order, for a client MAC and leased address.

    ``01-<mac with dashes>`` (ARP type 1), then the address in upper-case hex with one digit
    dropped at a time (``0A630064``, ``0A63006``, ... ``0``), then ``default``. A UUID-named
    lookup that pxelinux may do first is not included.
    """
    hexaddr = f"{int(ipaddress.IPv4Address(address)):08X}"
    names = ["01-" + mac.lower().replace(":", "-")]
    names += [hexaddr[:length] for length in range(8, 0, -1)]
    names.append("default")
    return [f"pxelinux.cfg/{name}" for name in names]


def is_subsequence(wanted: Iterable[str], seen: Iterable[str]) -> bool:
    """True when every item of ``wanted`` appears in ``seen`` in the same order."""
    remaining = iter(seen)
    return all(any(item == other for other in remaining) for item in wanted)
