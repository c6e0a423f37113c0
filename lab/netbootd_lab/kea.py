"""Kea (kea-dhcp4) as a site DHCP server in the lab: addresses only, leases in a memfile CSV.

:func:`kea_dhcp4_config` builds the configuration that the end-to-end tests and
``bench/dhcp_bench.py`` share; :class:`KeaServer` runs it on a lab host (or in the lab namespace)
beside netbootd, with its log read back as the same :class:`LogEvent` values as netbootd's and
dnsmasq's, and its lease file readable as it stands.

With ``pxe_client=True`` Kea says ``PXEClient`` (option 60) in its answers to PXE clients, as
PXE 2.1 §2.2.3 wants of a DHCP server whose host also runs the proxyDHCP (on port 4011 only).
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from netbootd_lab.netns import Host, Lab, LabError
from netbootd_lab.servers import DHCP_PORT, BootServer, LogEvent

KEA_DHCP4 = "kea-dhcp4"
LEASE_FILE = "kea-leases4.csv"
CONFIG_FILE = "kea-dhcp4.json"

# Kea's client class for PXE firmware: the vendor class starts with "PXEClient".
_PXE_CLASS = "PXE"
_PXE_TEST = "substring(option[60].hex,0,9) == 'PXEClient'"


def kea_executable() -> str:
    return shutil.which(KEA_DHCP4) or f"/usr/sbin/{KEA_DHCP4}"


def kea_environment(state: Path) -> dict[str, str]:
    """Where Kea writes its pid and lock files: the state directory, not /run."""
    return {"KEA_PIDFILE_DIR": str(state), "KEA_LOCKFILE_DIR": str(state)}


def kea_dhcp4_config(
    *,
    interface: str,
    subnet: str,
    pool: tuple[str, str],
    lease_file: Path,
    log_file: Path,
    socket_type: str = "raw",
    valid_lifetime: int = 3600,
    pxe_client: bool = False,
) -> dict[str, Any]:
    """A ``Dhcp4`` configuration: one subnet, one pool, memfile leases persisted to a CSV.

    ``socket_type`` is ``raw`` for clients on the segment (they have no address to answer to
    yet) and ``udp`` when every request comes through a relay.
    """
    dhcp4: dict[str, Any] = {
        "interfaces-config": {"interfaces": [interface], "dhcp-socket-type": socket_type},
        "authoritative": True,
        "lease-database": {
            "type": "memfile",
            "persist": True,
            "name": str(lease_file),
            "lfc-interval": 0,
        },
        "valid-lifetime": valid_lifetime,
        "subnet4": [{"subnet": subnet, "pools": [{"pool": " - ".join(pool)}]}],
        "loggers": [
            {
                "name": "kea-dhcp4",
                "output_options": [{"output": str(log_file)}],
                "severity": "INFO",
            }
        ],
    }
    if pxe_client:
        dhcp4["client-classes"] = [
            {
                "name": _PXE_CLASS,
                "test": _PXE_TEST,
                "option-data": [
                    {"name": "vendor-class-identifier", "data": "PXEClient", "always-send": True}
                ],
            }
        ]
    return {"Dhcp4": dhcp4}


@dataclass(frozen=True)
class KeaLease:
    """One row of Kea's memfile lease CSV."""

    address: str
    mac: str
    expire: int
    state: int


# Kea's log lines for what it offered and what it allocated (message ids, then the client).
_KEA_LEASE = re.compile(
    r"(?P<id>DHCP4_LEASE_ADVERT|DHCP4_LEASE_ALLOC|DHCP4_RELEASE) "
    r"\[hwtype=\d+ (?P<mac>[0-9a-f:]{17})\].*?(?:lease|address) (?P<address>\d+\.\d+\.\d+\.\d+)"
)
_KEA_STARTED = "DHCP4_STARTED"
_KEA_SOCKET_FAILED = "DHCPSRV_OPEN_SOCKET_FAIL"
_KEA_EVENTS = {
    "DHCP4_LEASE_ADVERT": ("DISCOVER", "OFFER"),
    "DHCP4_LEASE_ALLOC": ("REQUEST", "ACK"),
    "DHCP4_RELEASE": ("RELEASE", "released"),
}


class KeaServer(BootServer):
    """kea-dhcp4 handing out addresses on the lab network, nothing to boot from."""

    name = "kea"
    ports = (DHCP_PORT,)

    def __init__(
        self,
        lab: Lab,
        *,
        state_dir: Path,
        log_path: Path,
        dhcp_range: tuple[str, str] | None = None,
        host: Host | None = None,
        pxe_client: bool = False,
    ):
        """Kea on ``host`` (a site's DHCP server), or in the lab namespace itself."""
        super().__init__(lab, state_dir, log_path, where=host)
        self.state_dir = state_dir
        self.dhcp_range = dhcp_range or lab.dhcp_range()
        self.interface = host.interface if host is not None else lab.bridge
        self.pxe_client = pxe_client
        # Kea writes its own log file; what it prints on stdout goes to a second one.
        self.kea_log = log_path.with_name(f"{log_path.stem}.kea{log_path.suffix}")

    @property
    def lease_file(self) -> Path:
        return self.state_dir / LEASE_FILE

    def argv(self) -> list[str]:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        config = kea_dhcp4_config(
            interface=self.interface,
            subnet=str(self.lab.network),
            pool=self.dhcp_range,
            lease_file=self.lease_file,
            log_file=self.kea_log,
            pxe_client=self.pxe_client,
        )
        path = self.state_dir / CONFIG_FILE
        path.write_text(json.dumps(config, indent=2))
        return [kea_executable(), "-c", str(path)]

    def start(self, timeout: float = 30) -> KeaServer:
        """Start Kea and wait until it says it started with its socket open.

        Port 67 being bound proves nothing when another server on the host holds it too, and
        Kea starts even when it could open no socket: its log says which.
        """
        self.process = self.where.spawn(
            self.argv(), self.log_path, name=self.name, env=kea_environment(self.state_dir)
        )
        deadline = time.monotonic() + timeout
        while True:
            text = self.log_text()
            failed = [line for line in text.splitlines() if _KEA_SOCKET_FAILED in line]
            if failed:
                raise LabError(f"kea could not open its socket: {failed[0]}")
            if _KEA_STARTED in text:
                return self
            if not self.process.alive() or time.monotonic() >= deadline:
                state = "exited" if not self.process.alive() else "did not start in time"
                raise LabError(f"kea {state}\n--- kea log ---\n{self.log_tail()}")
            time.sleep(0.1)

    def log_text(self) -> str:
        """Kea's own log, then what it printed (start-up errors go there)."""
        try:
            own = self.kea_log.read_text(errors="replace")
        except FileNotFoundError:
            own = ""
        return own + super().log_text()

    def events(self) -> list[LogEvent]:
        events = []
        for line in self.log_text().splitlines():
            if match := _KEA_LEASE.search(line):
                event, decision = _KEA_EVENTS[match["id"]]
                fields = {"mac": match["mac"], "address": match["address"], "decision": decision}
                events.append(LogEvent("dhcp", event, fields, line))
        return events

    def leases(self) -> list[KeaLease]:
        """The lease file as it stands (Kea appends a row for every change)."""
        try:
            text = self.lease_file.read_text()
        except FileNotFoundError:
            return []
        return [
            KeaLease(row["address"], row["hwaddr"], int(row["expire"]), int(row["state"]))
            for row in csv.DictReader(text.splitlines())
            if row.get("address")
        ]
