"""Boot servers run inside a lab namespace: netbootd itself, and dnsmasq as a reference peer.

Each server writes its log to a file; :meth:`BootServer.events` reads it back as
:class:`LogEvent` values. netbootd lines are parsed with :func:`netbootd.logs.events.parse_event`;
dnsmasq lines are mapped onto the same shape (``dhcp``/``tftp`` events with ``file``,
``result``, ``address`` fields) so that a test can hold both to the same expectations.
A server counts as started once its UDP ports are bound in the namespace, whatever it prints.
"""

from __future__ import annotations

import contextlib
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from netbootd.logs.events import parse_event
from netbootd_lab.netns import Host, Lab, LabError, Namespace, Process

DHCP_PORT = 67
TFTP_PORT = 69
PXE_PORT = 4011

# Service lines ("netbootd.tftp transfer ...") and the server's own ("netbootd ready ...",
# svc "app").
_NETBOOTD_LINE = re.compile(r" netbootd(?:\.(?P<svc>dhcp|tftp|http))? (?P<msg>.*)$")
_TIMESTAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


@dataclass(frozen=True)
class LogEvent:
    """One event from a server log: ``svc`` is dhcp, tftp, http, or app for the server's own."""

    svc: str
    event: str
    fields: dict[str, str] = field(default_factory=dict)
    line: str = ""
    time: datetime | None = None

    def get(self, key: str, default: str = "") -> str:
        return self.fields.get(key, default)


def parse_netbootd_line(line: str) -> LogEvent | None:
    match = _NETBOOTD_LINE.search(line.rstrip("\n"))
    if match is None:
        return None
    event, fields = parse_event(match["msg"])
    stamp = _TIMESTAMP.match(line)
    when = datetime.strptime(stamp[1], "%Y-%m-%d %H:%M:%S,%f") if stamp else None
    return LogEvent(match["svc"] or "app", event, fields, line.rstrip("\n"), when)


def parse_netbootd_log(text: str) -> list[LogEvent]:
    return [ev for ev in map(parse_netbootd_line, text.splitlines()) if ev is not None]


def netbootd_executable() -> Path:
    """The ``netbootd`` console script of the running interpreter's environment."""
    return Path(sys.executable).parent / "netbootd"


class BootServer:
    """A server process in the lab with a log file. Subclasses say how to start and parse."""

    name = "server"
    ports: tuple[int, ...] = (DHCP_PORT, TFTP_PORT)

    def __init__(self, lab: Lab, root: Path, log_path: Path, where: Namespace | None = None):
        self.lab = lab
        self.root = root
        self.log_path = log_path
        self.where: Namespace = where or lab  # the namespace the server runs in
        self.process: Process | None = None

    def argv(self) -> list[str]:
        raise NotImplementedError

    def events(self) -> list[LogEvent]:
        raise NotImplementedError

    def start(self, timeout: float = 30) -> BootServer:
        """Start the server and wait until its UDP ports are bound."""
        self.process = self.where.spawn(
            self.argv(), self.log_path, name=self.name, env={"PYTHONUNBUFFERED": "1"}
        )
        try:
            self.where.wait_udp_ports(self.ports, timeout, watch=self.process)
        except LabError as exc:
            raise LabError(f"{exc}\n--- {self.name} log ---\n{self.log_tail()}") from None
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.alive()

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def tftp_files(self) -> list[str]:
        """Every file name asked for over TFTP, in log order, without a leading slash."""
        return [
            ev.get("file").lstrip("/")
            for ev in self.events()
            if ev.svc == "tftp" and ev.get("file")
        ]

    def leased_address(self, mac: str) -> str | None:
        """The address the last ACK for ``mac`` gave, as the log tells it."""
        address = None
        for ev in self.events():
            if (
                ev.svc == "dhcp"
                and ev.get("decision") == "ACK"
                and ev.get("mac").lower() == mac.lower()
            ):
                address = ev.get("address") or address
        return address

    def wait_event(self, predicate: Callable[[LogEvent], bool], timeout: float) -> LogEvent:
        """Wait for the first event matching ``predicate``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for ev in self.events():
                if predicate(ev):
                    return ev
            time.sleep(0.1)
        raise LabError(f"no matching {self.name} event after {timeout:.0f} s")


class NetbootdServer(BootServer):
    """``netbootd serve`` on the lab bridge, authoritative DHCP over the lab range."""

    name = "netbootd"

    def __init__(
        self,
        lab: Lab,
        root: Path,
        *,
        state_dir: Path,
        log_path: Path,
        dhcp_range: tuple[str, str] | None = None,
        boot: Sequence[str] = ("bios=pxelinux.0",),
        extra_args: Sequence[str] = (),
        proxy: bool = False,
        config: Path | None = None,
    ):
        """With ``config`` (a TOML file), the pools are the file's unless ``dhcp_range`` adds
        the interface's."""
        super().__init__(lab, root, log_path)
        self.state_dir = state_dir
        self.config = config
        self.range_flag = config is None or dhcp_range is not None
        self.dhcp_range = dhcp_range or lab.dhcp_range()
        self.boot = list(boot)
        self.extra_args = list(extra_args)
        self.proxy = proxy  # proxyDHCP beside another DHCP server instead of a pool
        if proxy:
            self.ports = (DHCP_PORT, PXE_PORT, TFTP_PORT)

    def argv(self) -> list[str]:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            str(netbootd_executable()),
            "serve",
            "--interface", self.lab.bridge,
            "--root", str(self.root),
            "--state-dir", str(self.state_dir),
        ]  # fmt: skip
        if self.config is not None:
            argv += ["--config", str(self.config)]
        if self.proxy:
            argv += ["--proxy"]
        elif self.range_flag:
            argv += ["--dhcp-range", "-".join(self.dhcp_range)]
        for spec in self.boot:
            argv += ["--boot", spec]
        return argv + self.extra_args

    def events(self) -> list[LogEvent]:
        return parse_netbootd_log(self.log_text())


# dnsmasq's own log phrasing, mapped onto netbootd-style events.
_DNSMASQ_DHCP = re.compile(
    r"dnsmasq-dhcp(?:\[\d+\])?: (?:\d+ )?DHCP(?P<kind>DISCOVER|OFFER|REQUEST|ACK|NAK)"
    r"\([^)]*\) (?:(?P<address>\d+\.\d+\.\d+\.\d+) )?(?P<mac>[0-9a-f:]{17})"
)
_DNSMASQ_SENT = re.compile(r"dnsmasq-tftp(?:\[\d+\])?: sent (?P<path>\S+) to (?P<client>\S+)")
_DNSMASQ_MISSING = re.compile(r"dnsmasq-tftp(?:\[\d+\])?: file (?P<path>\S+) not found")


class DnsmasqServer(BootServer):
    """dnsmasq as DHCP + TFTP server for the same boot root: the reference to compare with."""

    name = "dnsmasq"

    def __init__(
        self,
        lab: Lab,
        root: Path,
        *,
        state_dir: Path,
        log_path: Path,
        dhcp_range: tuple[str, str] | None = None,
        boot_file: str | None = "pxelinux.0",
        host: Host | None = None,
    ):
        """dnsmasq in the lab namespace, or on ``host`` as a site's DHCP server.

        With ``boot_file=None`` it serves addresses only (no boot file, no TFTP), as a home
        router or a site DHCP server beside a proxyDHCP does.
        """
        super().__init__(lab, root, log_path, where=host)
        self.state_dir = state_dir
        self.dhcp_range = dhcp_range or lab.dhcp_range()
        self.boot_file = boot_file
        self.interface = host.interface if host is not None else lab.bridge
        if boot_file is None:
            self.ports = (DHCP_PORT,)

    def argv(self) -> list[str]:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            "dnsmasq",
            "--no-daemon",
            "--conf-file=/dev/null",
            "--user=root",
            "--pid-file=",
            "--port=0",
            f"--interface={self.interface}",
            "--bind-interfaces",
            f"--dhcp-range={self.dhcp_range[0]},{self.dhcp_range[1]}",
            "--log-dhcp",
            "--log-facility=-",
            f"--dhcp-leasefile={self.state_dir / 'dnsmasq.leases'}",
        ]
        if self.boot_file is not None:
            argv += [f"--dhcp-boot={self.boot_file}", "--enable-tftp", f"--tftp-root={self.root}"]
        return argv

    def _relative(self, path: str) -> str:
        root = str(self.root).rstrip("/") + "/"
        return path[len(root) :] if path.startswith(root) else path

    def events(self) -> list[LogEvent]:
        events = []
        for line in self.log_text().splitlines():
            if match := _DNSMASQ_DHCP.search(line):
                kind = match["kind"]
                fields = {"mac": match["mac"], "address": match["address"] or ""}
                if kind in ("OFFER", "ACK", "NAK"):
                    request = "DISCOVER" if kind == "OFFER" else "REQUEST"
                    events.append(LogEvent("dhcp", request, {**fields, "decision": kind}, line))
            elif match := _DNSMASQ_SENT.search(line):
                name = self._relative(match["path"])
                fields = {"file": name, "result": "ok", "client": match["client"]}
                # dnsmasq does not log sizes; the file it sent is the one in the root.
                with contextlib.suppress(OSError):
                    fields["bytes"] = str((self.root / name).stat().st_size)
                events.append(LogEvent("tftp", "transfer", fields, line))
            elif match := _DNSMASQ_MISSING.search(line):
                fields = {"file": self._relative(match["path"]), "result": "not found"}
                events.append(LogEvent("tftp", "transfer", fields, line))
        return events
