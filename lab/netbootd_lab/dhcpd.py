"""ISC dhcpd (isc-dhcp-server) as a site DHCP server in the lab: addresses only.

:class:`IscDhcpdServer` runs ``dhcpd -4`` in the foreground on a lab host, with its configuration,
lease file and pid file in a state directory. Its log (stderr, ``-d``) is read back as the same
:class:`LogEvent` values as netbootd's, Kea's and dnsmasq's; its lease file as it stands.
"""

from __future__ import annotations

import re
import shutil
import time
from dataclasses import dataclass
from ipaddress import IPv4Network
from pathlib import Path

from netbootd_lab.netns import Host, Lab, LabError
from netbootd_lab.servers import DHCP_PORT, BootServer, LogEvent

DHCPD = "dhcpd"
LEASE_FILE = "dhcpd.leases"
CONFIG_FILE = "dhcpd.conf"

# "DHCPACK on 10.77.0.100 to 52:54:00:12:34:56 via eth0", and its OFFER twin.
_DHCPD_REPLY = re.compile(
    r"DHCP(?P<kind>OFFER|ACK) on (?P<address>[\d.]+) to (?P<mac>[0-9a-f:]{17})"
)
# A lease block of the lease file: its address, then its hardware address and binding state.
_LEASE_BLOCK = re.compile(r"lease (?P<address>[\d.]+) \{(?P<body>[^}]*)\}", re.DOTALL)
_HARDWARE = re.compile(r"hardware ethernet (?P<mac>[0-9a-f:]{17});")
_BINDING = re.compile(r"^\s*binding state (?P<state>\w+);", re.MULTILINE)


def dhcpd_executable() -> str:
    return shutil.which(DHCPD) or f"/usr/sbin/{DHCPD}"


def dhcpd_config(network: IPv4Network, pool: tuple[str, str]) -> str:
    """Addresses from ``pool`` on ``network``, a 10-minute lease, nothing to boot from."""
    return (
        "authoritative;\n"
        "ddns-update-style none;\n"
        "ping-check false;\n"
        "default-lease-time 600;\n"
        "max-lease-time 600;\n"
        f"subnet {network.network_address} netmask {network.netmask} {{\n"
        f"  range {pool[0]} {pool[1]};\n"
        "}\n"
    )


@dataclass(frozen=True)
class DhcpdLease:
    address: str
    mac: str
    state: str  # "active", "free", ...


class IscDhcpdServer(BootServer):
    """dhcpd handing out addresses on the lab network from ``host``, nothing to boot from."""

    name = "dhcpd"
    ports = (DHCP_PORT,)

    def __init__(
        self,
        lab: Lab,
        *,
        state_dir: Path,
        log_path: Path,
        host: Host,
        dhcp_range: tuple[str, str] | None = None,
    ):
        super().__init__(lab, state_dir, log_path, where=host)
        self.state_dir = state_dir
        self.interface = host.interface
        self.dhcp_range = dhcp_range or lab.dhcp_range()

    @property
    def lease_file(self) -> Path:
        return self.state_dir / LEASE_FILE

    def argv(self) -> list[str]:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        config = self.state_dir / CONFIG_FILE
        config.write_text(dhcpd_config(self.lab.network, self.dhcp_range))
        self.lease_file.touch()
        return [
            dhcpd_executable(),
            "-4",
            "-f",
            "-d",
            "-cf",
            str(config),
            "-lf",
            str(self.lease_file),
            "-pf",
            str(self.state_dir / "dhcpd.pid"),
            self.interface,
        ]

    def start(self, timeout: float = 30) -> IscDhcpdServer:
        """Start dhcpd and wait until it says it is sending on its interface."""
        self.process = self.where.spawn(self.argv(), self.log_path, name=self.name)
        deadline = time.monotonic() + timeout
        while "Sending on" not in self.log_text():
            if not self.process.alive() or time.monotonic() >= deadline:
                state = "exited" if not self.process.alive() else "did not start in time"
                raise LabError(f"dhcpd {state}\n--- dhcpd log ---\n{self.log_tail()}")
            time.sleep(0.1)
        return self

    def events(self) -> list[LogEvent]:
        events = []
        for line in self.log_text().splitlines():
            if match := _DHCPD_REPLY.search(line):
                fields = {
                    "mac": match["mac"],
                    "address": match["address"],
                    "decision": match["kind"],
                }
                events.append(LogEvent("dhcp", match["kind"].lower(), fields, line))
        return events

    def leases(self) -> list[DhcpdLease]:
        """The lease file as it stands (dhcpd appends a block for every change)."""
        try:
            text = self.lease_file.read_text()
        except FileNotFoundError:
            return []
        found = []
        for block in _LEASE_BLOCK.finditer(text):
            hardware = _HARDWARE.search(block["body"])
            binding = _BINDING.search(block["body"])
            if hardware is not None:
                state = binding["state"] if binding is not None else "-"
                found.append(DhcpdLease(block["address"], hardware["mac"], state))
        return found
