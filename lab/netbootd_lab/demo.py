"""``make demo``: watch a virtual BIOS machine network-boot Linux from netbootd.

Builds a pxelinux boot root, starts netbootd in a private network namespace, powers on a QEMU
machine on the lab bridge and shows, as they happen, the DHCP exchange, every file fetched
over TFTP or HTTP with its size, time and speed, and the moment the kernel runs. Then it prints
what the machine printed and the total boot time, and removes everything it created.

Nothing outside the lab namespace is touched and no LAN is needed. Exit code: 0 when the
machine booted, 1 (with the reason) when it did not, 130 when interrupted.

Run: ``PYTHONPATH=lab .venv/bin/python -m netbootd_lab.demo [--server dnsmasq] [--keep]``
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import FrameType

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from netbootd_lab.netns import Lab, LabError
from netbootd_lab.payload import (
    BOOT_MARKER,
    CMDLINE_PREFIX,
    INITRD_NAME,
    KERNEL_NAME,
    build_initramfs,
    build_pxelinux_root,
    find_kernel,
)
from netbootd_lab.prereq import missing_prerequisites
from netbootd_lab.servers import BootServer, DnsmasqServer, LogEvent, NetbootdServer
from netbootd_lab.vm import VM, start_vm

POLL_SECONDS = 0.2


class BootFailedError(Exception):
    """The boot did not complete; the message says where it stopped."""


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024 or unit == "MiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} MiB"


@dataclass
class BootProgress:
    """What the demo has seen so far, fed from the server log and the VM console."""

    vm_started: datetime
    seen: int = 0
    offered: str | None = None
    acked: str | None = None
    files_ok: list[str] = field(default_factory=list)
    files_missing: list[str] = field(default_factory=list)
    bytes_total: int = 0
    transfer_seconds: float = 0.0
    kernel_up: float | None = None

    def at(self, event: LogEvent) -> float:
        """Seconds from VM power-on to the event (the time it was logged, or now)."""
        when = event.time or datetime.now()
        return max(0.0, (when - self.vm_started).total_seconds())

    def phase(self, console: str) -> str:
        if self.kernel_up is not None:
            return "kernel up"
        if INITRD_NAME in self.files_ok:
            return "Linux is booting (the kernel unpacks the initramfs and starts /init)"
        if "pxelinux.cfg/default" in self.files_ok:
            return f"pxelinux is fetching {KERNEL_NAME} and {INITRD_NAME}"
        if self.files_ok:
            return "pxelinux is looking for its configuration"
        if self.acked:
            # Measured: iPXE also solicits an IPv6 router and waits ~15 s, as the lab has none.
            return "iPXE has its address and waits for an IPv6 router (the lab has none)"
        if self.offered:
            return "iPXE is requesting the offered address"
        if "iPXE" in console:
            return "iPXE is asking for an address (DHCP)"
        return "the firmware (SeaBIOS) is starting"


class Demo:
    """One demo run: a work directory, a lab, a server, a VM, and what the person sees."""

    def __init__(self, console: Console, *, server_kind: str, timeout: float, keep: bool):
        self.console = console
        self.server_kind = server_kind
        self.timeout = timeout
        self.keep = keep
        self.workdir = Path(tempfile.mkdtemp(prefix="netbootd-demo-"))

    # -- output ------------------------------------------------------------------------------

    def say(self, seconds: float | None, who: str, what: Text | str, style: str = "") -> None:
        stamp = f"{seconds:6.1f}s" if seconds is not None else " " * 7
        line = Text.assemble((stamp, "dim"), "  ", (f"{who:<6}", f"bold {style}"), " ")
        line.append(what if isinstance(what, Text) else Text(what))
        self.console.print(line, highlight=False)

    def report_event(self, event: LogEvent, progress: BootProgress) -> None:
        seconds = progress.at(event)
        if event.svc == "dhcp":
            self.report_dhcp(event, seconds, progress)
        elif event.svc in ("tftp", "http"):
            self.report_transfer(event, seconds, progress)

    def report_dhcp(self, event: LogEvent, seconds: float, progress: BootProgress) -> None:
        decision = event.get("decision") or "-"
        address = event.get("address")
        text = Text()
        text.append(f"{event.event:<8} → ")
        text.append(f"{decision:<5}", "bold green" if decision in ("OFFER", "ACK") else "red")
        if address:
            text.append(f" {address}")
        if event.get("file"):
            text.append(f"  file {event.get('file')}", "cyan")
        client = ", ".join(v for v in (event.get("client"), event.get("arch")) if v)
        if client:
            text.append(f"  ({client})", "dim")
        self.say(seconds, "DHCP", text, "blue")
        if decision == "OFFER":
            progress.offered = address
        elif decision == "ACK":
            progress.acked = address

    def report_transfer(self, event: LogEvent, seconds: float, progress: BootProgress) -> None:
        name = (event.get("file") or event.get("path")).lstrip("/")
        if event.svc == "http":
            result = event.get("status")
            ok = result in ("200", "206") and event.get("result", "ok") == "ok"
        else:
            result = event.get("result")
            ok = result == "ok"
            if result == "size query":
                return  # the firmware only asked how big the file is
        text = Text(f"{name:<34}", "cyan" if ok else "dim")
        if ok:
            size = int(event.get("bytes") or 0)
            took = float(event.get("seconds") or 0)
            text.append(f"{_size(size):>10}")
            if event.get("seconds"):
                text.append(f" {took:6.2f}s")
            if event.get("rate"):
                text.append(f" {event.get('rate'):>10}")
            progress.files_ok.append(name)
            progress.bytes_total += size
            progress.transfer_seconds += took
        else:
            text.append(f"{result or 'failed'}", "dim")
            progress.files_missing.append(name)
        self.say(seconds, event.svc.upper(), text, "magenta")

    def status(self, vm: VM, progress: BootProgress) -> Group:
        console_lines = [line for line in vm.console_lines() if line.strip()]
        last = console_lines[-1] if console_lines else ""
        spinner = Spinner("dots", text=Text.assemble(
            (f"{vm.elapsed():5.1f}s  ", "bold"), progress.phase(vm.console_text())
        ))  # fmt: skip
        return Group(spinner, Text(f"   console: {last}", "dim", no_wrap=True, overflow="ellipsis"))

    # -- the run -----------------------------------------------------------------------------

    def prepare_root(self) -> Path:
        kernel = find_kernel()
        if kernel is None:
            raise BootFailedError("no kernel in /boot")
        initramfs = build_initramfs(self.workdir / "initramfs.cpio.gz")
        root = build_pxelinux_root(self.workdir / "root", initramfs=initramfs, kernel=kernel)
        self.say(None, "setup", f"boot root {root}: pxelinux, {kernel.name}, busybox initramfs")
        return root

    def start_server(self, lab: Lab, root: Path) -> BootServer:
        server: BootServer
        if self.server_kind == "dnsmasq":
            server = DnsmasqServer(
                lab, root, state_dir=self.workdir / "state", log_path=self.workdir / "server.log"
            )
        else:
            server = NetbootdServer(
                lab, root, state_dir=self.workdir / "state", log_path=self.workdir / "server.log"
            )
        server.start()
        first, last = lab.dhcp_range()
        self.say(
            None,
            "setup",
            f"{server.name} serves DHCP {first} to {last} and TFTP on {lab.bridge} "
            f"{lab.server_ip}, in namespace {lab.name}",
        )
        return server

    def watch_boot(self, server: BootServer, vm: VM) -> BootProgress:
        progress = BootProgress(vm_started=datetime.now())
        with Live(self.status(vm, progress), console=self.console, transient=True) as live:
            while True:
                events = server.events()
                for event in events[progress.seen :]:
                    self.report_event(event, progress)
                progress.seen = len(events)
                if BOOT_MARKER in vm.console_text():
                    progress.kernel_up = vm.elapsed()
                    self.say(progress.kernel_up, "VM", Text("kernel up", "bold green"), "green")
                    break
                if not vm.alive():
                    raise BootFailedError(self.diagnose(server, vm, progress, "the VM stopped"))
                if not server.alive():
                    raise BootFailedError(
                        self.diagnose(server, vm, progress, f"{server.name} exited")
                    )
                if vm.elapsed() > self.timeout:
                    raise BootFailedError(
                        self.diagnose(server, vm, progress, f"no boot after {self.timeout:.0f} s")
                    )
                live.update(self.status(vm, progress))
                time.sleep(POLL_SECONDS)
        return progress

    def diagnose(self, server: BootServer, vm: VM, progress: BootProgress, what: str) -> str:
        if progress.offered is None:
            where = f"the VM got no DHCP offer from {server.name}"
        elif progress.acked is None:
            where = "the VM got an offer but no ACK"
        elif not progress.files_ok:
            where = "the VM has an address but fetched no file over TFTP"
        elif INITRD_NAME not in progress.files_ok:
            where = f"the boot stopped after fetching {progress.files_ok[-1]}"
            if progress.files_missing:
                where += f"; the last file asked for and not found was {progress.files_missing[-1]}"
        else:
            where = "the kernel and initramfs were fetched but /init never printed its marker"
        return f"{what}: {where}."

    def show_result(self, vm: VM, progress: BootProgress) -> None:
        with contextlib.suppress(LabError):
            vm.wait_for(CMDLINE_PREFIX, timeout=10)
        vm.wait_exit(10)
        printed = "\n".join(vm.booted_lines()).strip()
        self.console.print(
            Panel(Text(printed), title="what the VM printed", border_style="green", expand=False)
        )
        summary = Table.grid(padding=(0, 2))
        summary.add_row(
            "boot time", f"[bold]{progress.kernel_up or 0:.1f} s[/] from power-on to /init"
        )
        files = f"{len(progress.files_ok)} fetched, {_size(progress.bytes_total)}"
        if progress.transfer_seconds:
            files += f" in {progress.transfer_seconds:.1f} s of transfer"
        summary.add_row("files", files)
        summary.add_row("kernel line", vm.kernel_cmdline() or "(not printed)")
        self.console.print(summary)

    def run(self) -> int:
        self.console.rule("[bold]netbootd demo: a BIOS machine boots Linux over the network")
        root = self.prepare_root()
        with Lab(self.workdir / "lab") as lab:
            server = self.start_server(lab, root)
            vm = start_vm(lab)
            self.say(None, "setup", f"VM {vm.name} powered on (SeaBIOS + iPXE, MAC {vm.mac})")
            try:
                progress = self.watch_boot(server, vm)
            except BootFailedError:
                self.show_tails(server, vm)
                raise
            self.show_result(vm, progress)
        self.console.print("[green]cleaned up:[/] VM stopped, namespace and links removed")
        return 0

    def show_tails(self, server: BootServer, vm: VM) -> None:
        self.console.print(Panel(Text(vm.console_tail(25)), title="VM console (last lines)"))
        self.console.print(
            Panel(Text(server.log_tail(25)), title=f"{server.name} log (last lines)")
        )

    def cleanup(self) -> None:
        if self.keep:
            self.console.print(f"[dim]kept {self.workdir}[/]")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="netbootd_lab.demo", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--server",
        choices=("netbootd", "dnsmasq"),
        default="netbootd",
        help="the boot server to watch (dnsmasq: the reference, for comparison)",
    )
    parser.add_argument("--timeout", type=float, default=150, help="seconds allowed for the boot")
    parser.add_argument("--keep", action="store_true", help="keep the work directory and logs")
    args = parser.parse_args(argv)
    console = Console()

    reasons = missing_prerequisites()
    if reasons:
        console.print("[red]The demo cannot run here:[/] " + "; ".join(reasons))
        return 1

    # Started in the background by a shell, SIGINT may arrive ignored; the demo still wants it.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)
    demo = Demo(console, server_kind=args.server, timeout=args.timeout, keep=args.keep)
    try:
        return demo.run()
    except BootFailedError as exc:
        console.print(f"[bold red]The machine did not boot:[/] {exc}")
        return 1
    except LabError as exc:
        console.print(f"[bold red]The lab failed:[/] {exc}")
        return 1
    except KeyboardInterrupt:
        console.print("[yellow]interrupted; lab removed[/]")
        return 130
    finally:
        demo.cleanup()


if __name__ == "__main__":
    sys.exit(main())
