"""QEMU guests for the lab: real firmware network-booting from a tap.

Two firmwares: SeaBIOS (QEMU's default) and OVMF, EDK2's UEFI build for QEMU. What network stack
the firmware uses follows from the card: an ``e1000`` carries iPXE's option ROM (its PXE or its
EFI build), ``virtio-net-pci,romfile=`` carries none, so OVMF uses EDK2's own PXE and HTTP Boot.

A :class:`VM` runs inside the lab namespace, so its only link is the tap on the lab bridge. Its
serial console goes to a file; :meth:`VM.wait_for` watches that file for a line. The guest is
expected to power itself off (``-no-reboot``, ``panic=-1``); a deadline kills it otherwise.
KVM does not work on the lab machines, hence ``-accel tcg``.
"""

from __future__ import annotations

import re
import shutil
import sys
import time
from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path

import netbootd_lab
from netbootd_lab.netns import Lab, LabError, Process
from netbootd_lab.payload import BOOT_MARKER, CMDLINE_PREFIX

QEMU = "qemu-system-x86_64"
MAC_PREFIX = "52:54:00:4e:42"

_ANSI = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|[@-Z\\-_a-z])")


OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")

# Network cards, as QEMU -device strings. EDK2_NIC has no option ROM, so OVMF boots it with its
# own network stack; bootindex makes it the first boot device.
IPXE_NIC = "e1000"
EDK2_NIC = "virtio-net-pci,romfile=,bootindex=1"


class Firmware(StrEnum):
    BIOS = "bios"  # SeaBIOS
    UEFI = "uefi"  # OVMF


class UefiBoot(StrEnum):
    """Which of EDK2's own network boot options stay on (fw_cfg ``opt/org.tianocore``)."""

    ALL = "all"  # PXEv4, PXEv6, HTTPv4, HTTPv6, in that order
    PXE4 = "pxe4"  # UEFI PXE over IPv4 only
    HTTP = "http"  # UEFI HTTP Boot only: no PXE attempts to time out first


def qemu_available() -> bool:
    return shutil.which(QEMU) is not None


def _from_marker(lines: list[str]) -> list[str]:
    """``lines`` from the one with the boot marker on; none before the guest's /init ran."""
    for index, line in enumerate(lines):
        if BOOT_MARKER in line:
            return lines[index:]
    return []


def clean_console(text: str) -> str:
    """Console bytes as plain text: escape sequences dropped, CR and backspace applied."""
    lines = []
    for raw in _ANSI.sub("", text).split("\n"):
        # A bare CR returns to column 0: what follows it overwrote what came before.
        visible = raw.rstrip("\r").rsplit("\r", 1)[-1]
        line: list[str] = []
        for char in visible:
            if char == "\b":
                if line:
                    line.pop()
            elif char.isprintable() or char == "\t":
                line.append(char)
        lines.append("".join(line).rstrip())
    return "\n".join(lines)


class VM:
    """One QEMU guest on a lab tap. Start with :meth:`Lab`-bound :func:`start_vm`."""

    def __init__(
        self,
        lab: Lab,
        name: str,
        *,
        mac: str,
        tap: str,
        console_log: Path,
        memory_mb: int = 512,
        nic: str = IPXE_NIC,
        firmware: Firmware = Firmware.BIOS,
        uefi_boot: UefiBoot = UefiBoot.ALL,
        extra_args: Sequence[str] = (),
    ):
        self.lab = lab
        self.name = name
        self.mac = mac
        self.tap = tap
        self.console_log = console_log
        self.memory_mb = memory_mb
        self.nic = nic
        self.firmware = firmware
        self.uefi_boot = uefi_boot
        self.extra_args = list(extra_args)
        self.process: Process | None = None
        self.started_at = 0.0

    def argv(self) -> list[str]:
        return [
            QEMU,
            "-name", self.name,
            "-machine", "pc",
            "-accel", "tcg",
            "-m", str(self.memory_mb),
            "-nographic",
            "-monitor", "none",
            "-serial", f"file:{self.console_log}",
            "-no-reboot",
            "-boot", "order=n",
            "-netdev", f"tap,id=n0,ifname={self.tap},script=no,downscript=no",
            "-device", f"{self.nic},netdev=n0,mac={self.mac}",
            *self.firmware_args(),
            *self.extra_args,
        ]  # fmt: skip

    @property
    def vars_file(self) -> Path:
        """This guest's own copy of the UEFI variable store."""
        return self.console_log.with_name(f"{self.name}.OVMF_VARS.fd")

    def firmware_args(self) -> list[str]:
        if self.firmware is Firmware.BIOS:
            return []
        args = [
            "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
            "-drive", f"if=pflash,format=raw,unit=1,file={self.vars_file}",
        ]  # fmt: skip
        switches = {
            UefiBoot.ALL: {},
            UefiBoot.PXE4: {"IPv6PXESupport": "n", "IPv6Support": "n"},
            UefiBoot.HTTP: {"IPv4PXESupport": "n", "IPv6PXESupport": "n", "IPv6Support": "n"},
        }[self.uefi_boot]
        for key, value in switches.items():
            args += ["-fw_cfg", f"name=opt/org.tianocore/{key},string={value}"]
        return args

    def start(self) -> VM:
        self.console_log.parent.mkdir(parents=True, exist_ok=True)
        self.console_log.write_bytes(b"")
        if self.firmware is Firmware.UEFI:
            shutil.copyfile(OVMF_VARS, self.vars_file)
        self.started_at = time.monotonic()
        self.process = self.lab.spawn(
            self.argv(), self.console_log.with_suffix(".qemu.log"), name=f"qemu-{self.name}"
        )
        return self

    # -- reading the console -----------------------------------------------------------------

    def console_text(self) -> str:
        try:
            return clean_console(self.console_log.read_bytes().decode(errors="replace"))
        except FileNotFoundError:
            return ""

    def console_lines(self) -> list[str]:
        return self.console_text().splitlines()

    def console_tail(self, lines: int = 40) -> str:
        return "\n".join(self.console_lines()[-lines:])

    def qemu_log(self) -> str:
        return self.process.log_text() if self.process else ""

    def alive(self) -> bool:
        return self.process is not None and self.process.alive()

    def elapsed(self) -> float:
        return time.monotonic() - self.started_at

    def wait_for(self, marker: str, timeout: float) -> float:
        """Wait until ``marker`` is on the console; return seconds since the VM started.

        Raises LabError on timeout or when QEMU exits without having printed the marker.
        """
        deadline = time.monotonic() + timeout
        while True:
            if marker in self.console_text():
                return self.elapsed()
            if not self.alive():
                # The guest may have printed the marker just before powering off.
                if marker in self.console_text():
                    return self.elapsed()
                rc = self.process.returncode if self.process else None
                raise LabError(
                    f"VM {self.name} exited (rc={rc}) after {self.elapsed():.1f} s "
                    f"without printing {marker!r}; qemu said: {self.qemu_log().strip()[-500:]}"
                )
            if time.monotonic() >= deadline:
                raise LabError(
                    f"VM {self.name}: no {marker!r} on the console after {timeout:.0f} s"
                )
            time.sleep(0.1)

    def booted_lines(self) -> list[str]:
        """Console lines from the boot marker on (what the guest's /init printed)."""
        return _from_marker(self.console_lines())

    def kernel_cmdline(self, timeout: float = 10.0) -> str | None:
        """The kernel command line the guest's /init printed, or None if it printed none.

        QEMU writes the console file as the guest prints, so the line may be read half
        written: a line with nothing after it yet is waited for, up to ``timeout`` seconds,
        until its line break comes or the VM ends."""
        deadline = time.monotonic() + timeout
        while True:
            alive = self.alive()
            text = self.console_text()
            booted = _from_marker(text.splitlines())
            found = (i for i, line in enumerate(booted) if line.startswith(CMDLINE_PREFIX))
            index = next(found, None)
            if index is None:
                return None
            whole = index < len(booted) - 1 or text.endswith("\n")
            if whole or not alive or time.monotonic() >= deadline:
                return booted[index][len(CMDLINE_PREFIX) :].strip()
            time.sleep(0.05)

    def wait_exit(self, timeout: float) -> int | None:
        return self.process.wait(timeout) if self.process else None

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


# The labs whose bridge already has a router answering solicitations, by namespace.
_routers: dict[str, Process] = {}


def answer_router_solicitations(lab: Lab) -> Process:
    """Start :mod:`netbootd_lab.radv` on the lab bridge, once per lab.

    iPXE would otherwise wait about 15 s for its IPv6 Router Solicitations to time out before
    booting; the advertisements offer nothing, so IPv4 booting goes on as before, only sooner.
    """
    running = _routers.get(lab.name)
    if running is None or not running.alive():
        package_parent = str(Path(netbootd_lab.__file__).resolve().parent.parent)
        running = lab.spawn(
            [sys.executable, "-m", "netbootd_lab.radv", lab.bridge],
            lab.workdir / "radv.log",
            name="radv",
            env={"PYTHONPATH": package_parent},
        )
        _routers[lab.name] = running
    return running


def start_vm(
    lab: Lab,
    *,
    name: str | None = None,
    memory_mb: int = 512,
    nic: str = IPXE_NIC,
    firmware: Firmware = Firmware.BIOS,
    uefi_boot: UefiBoot = UefiBoot.ALL,
    extra_args: Sequence[str] = (),
) -> VM:
    """Make a tap on the lab bridge and boot a VM from the network through it.

    Each VM of a lab gets its own MAC: ``52:54:00:4e:42:<n>``. The lab bridge gets a router
    that answers IPv6 solicitations (see :func:`answer_router_solicitations`).
    """
    answer_router_solicitations(lab)
    tap = lab.add_tap()
    index = int(tap.removeprefix("tap")) + 1
    if index > 0xFF:
        raise LabError("too many VMs in one lab")
    vm_name = name or f"vm{index}"
    vm = VM(
        lab,
        vm_name,
        mac=f"{MAC_PREFIX}:{index:02x}",
        tap=tap,
        console_log=lab.workdir / f"{vm_name}.console.log",
        memory_mb=memory_mb,
        nic=nic,
        firmware=firmware,
        uefi_boot=uefi_boot,
        extra_args=extra_args,
    )
    return vm.start()
