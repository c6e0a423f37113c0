"""perfdhcp (Kea's DHCP load generator) as a relay agent on a lab host, and its final report.

``perfdhcp -4 -l <host address> <server>`` sends every request with ``giaddr`` set to the host's
own address, from port 67, and expects the replies there: a relay agent (RFC 1542) in front of
as many clients as ``-R`` says. It must run on another host than the server: Linux drops
packets whose source address is local to the receiving namespace.

Shared by ``bench/dhcp_bench.py`` (a ladder of rates) and the integration tests (a short run
that must complete every exchange).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from netbootd_lab.netns import Host, LabError

# perfdhcp's exit status when it ran and some exchanges did not complete.
INCOMPLETE = 3


@dataclass(frozen=True)
class Exchange:
    """One half of the 4-way exchange as perfdhcp counts it."""

    sent: int
    received: int
    drops: int

    @property
    def drop_percent(self) -> float:
        return 100.0 * self.drops / self.sent if self.sent else 0.0


@dataclass(frozen=True)
class Report:
    """perfdhcp's final statistics: the two halves, and its completed rate."""

    offer: Exchange  # DISCOVER-OFFER
    ack: Exchange  # REQUEST-ACK
    completed: float  # 4-way exchanges per second, perfdhcp's "Rate:"


_RATE = re.compile(r"^Rate: ([\d.]+) 4-way exchanges/second", re.MULTILINE)
_SECTION = re.compile(r"\*\*\*Statistics for: ([A-Z-]+)\*\*\*(.*?)(?=\*\*\*|\Z)", re.DOTALL)


def _count(body: str, label: str) -> int:
    match = re.search(rf"^{label}: (\d+)$", body, re.MULTILINE)
    if match is None:
        raise ValueError(f"no '{label}' in perfdhcp's statistics")
    return int(match[1])


def parse_report(output: str) -> Report:
    """The final report in perfdhcp's output; ValueError if it is not there."""
    sections = {
        name: Exchange(
            _count(body, "sent packets"), _count(body, "received packets"), _count(body, "drops")
        )
        for name, body in _SECTION.findall(output)
    }
    if "DISCOVER-OFFER" not in sections:
        raise ValueError("no DISCOVER-OFFER statistics in perfdhcp's output")
    completed = _RATE.search(output)
    return Report(
        sections["DISCOVER-OFFER"],
        sections.get("REQUEST-ACK", Exchange(0, 0, 0)),
        float(completed[1]) if completed else 0.0,
    )


def run_perfdhcp(
    client: Host,
    server_ip: str,
    *,
    rate: int,
    seconds: int,
    clients: int,
    extra: tuple[str, ...] = (),
) -> str:
    """Run perfdhcp on ``client`` as a relay at ``rate``; its output, or LabError if it failed."""
    argv = [
        "perfdhcp", "-4",
        "-l", str(client.address.ip),
        "-R", str(clients),
        "-r", str(rate),
        "-p", str(seconds),
        *extra,
        server_ip,
    ]  # fmt: skip
    proc = client.ns_exec(argv, check=False, timeout=seconds + 60)
    if proc.returncode not in (0, INCOMPLETE):
        raise LabError(f"perfdhcp exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
    return proc.stdout
