"""Reading what a lab VM's /init printed from the console file QEMU is still writing."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from netbootd_lab.payload import BOOT_MARKER, CMDLINE_PREFIX
from netbootd_lab.vm import VM


class Running:
    def __init__(self, alive: bool) -> None:
        self._alive = alive

    def alive(self) -> bool:
        return self._alive


def vm_with_console(tmp_path: Path, text: str, *, alive: bool) -> VM:
    console = tmp_path / "console.log"
    console.write_text(text)
    vm = VM(None, "vm1", mac="52:54:00:00:00:01", tap="tap0", console_log=console)  # type: ignore[arg-type]
    vm.process = Running(alive)  # type: ignore[assignment]
    return vm


def test_a_half_written_command_line_is_waited_for(tmp_path: Path) -> None:
    head = f"SeaBIOS\r\n{BOOT_MARKER}\r\n{CMDLINE_PREFIX}initrd=initrd.img quiet netbootd.pro"
    vm = vm_with_console(tmp_path, head, alive=True)

    def finish_line() -> None:
        with vm.console_log.open("a") as console:  # as QEMU does: appended to, never rewritten
            console.write("file=alpha\r\n")

    rest = threading.Timer(0.3, finish_line)
    rest.start()
    started = time.monotonic()
    try:
        cmdline = vm.kernel_cmdline(timeout=10)
    finally:
        rest.join()
    assert cmdline == "initrd=initrd.img quiet netbootd.profile=alpha"
    assert time.monotonic() - started >= 0.25


def test_a_vm_that_ended_gives_what_it_printed(tmp_path: Path) -> None:
    vm = vm_with_console(tmp_path, f"{BOOT_MARKER}\n{CMDLINE_PREFIX}quiet netbootd.h", alive=False)
    assert vm.kernel_cmdline(timeout=10) == "quiet netbootd.h"


def test_no_command_line_before_the_marker(tmp_path: Path) -> None:
    vm = vm_with_console(tmp_path, f"{CMDLINE_PREFIX}quiet\n", alive=True)
    assert vm.kernel_cmdline(timeout=0.1) is None
    vm = vm_with_console(tmp_path, f"{BOOT_MARKER}\r\nbooting\r\n", alive=False)
    assert vm.kernel_cmdline() is None
