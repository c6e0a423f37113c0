"""What the benchmarks share: the work directory, random payloads, checks, starting a server.

The bench scripts run as ``PYTHONPATH=lab python bench/<name>.py``, so this directory is on
``sys.path`` and they import this module as ``common``.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from netbootd_lab.kea import LEASE_FILE, kea_dhcp4_config, kea_environment, kea_executable
from netbootd_lab.netns import Lab, LabError, Namespace, Process

MIB = 1024 * 1024
console = Console(width=120)  # wide enough for a run line when the output is a file


@dataclass
class Server:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)  # added to the bench's own environment


def have_root(bench: str) -> bool:
    """True when running as root; otherwise say why the bench cannot run."""
    if os.geteuid() != 0:
        console.print(f"bench/{bench} needs root (network namespaces)")
        return False
    return True


def make_workdir(prefix: str) -> tuple[Path, Path]:
    """A fresh work directory in /dev/shm and the ``root`` inside it, both world-readable."""
    work = Path(tempfile.mkdtemp(prefix=prefix, dir="/dev/shm"))
    root = work / "root"
    root.mkdir()
    os.chmod(work, 0o755)
    os.chmod(root, 0o755)
    return work, root


def random_file(path: Path, size: int) -> str:
    """Write ``size`` random bytes to ``path``, world-readable; return their sha256."""
    path.write_bytes(os.urandom(size))
    os.chmod(path, 0o644)
    return digest(path)


def digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(4 * MIB):
            h.update(chunk)
    return h.hexdigest()


def exact(proc: subprocess.Popen[bytes], out: Path, expected: str) -> bool:
    """The client exited 0 and left a copy with the expected sha256."""
    return proc.returncode == 0 and out.exists() and digest(out) == expected


def report_runs(server: str, label: str, rates: list[float], median: float) -> None:
    console.print(
        f"{server:9} {label:28} "
        + " ".join(f"{r:7.1f}" for r in rates)
        + f"  median {median:7.1f} MB/s"
    )


def tcp_ports_listening(ns: Namespace) -> set[int]:
    """TCP ports with a listening socket in ``ns`` (from ``ss -tln``)."""
    out = ns.ns_exec(["ss", "-H", "-t", "-l", "-n"], check=False).stdout
    ports = set()
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 4:
            port = fields[3].rsplit(":", 1)[-1]
            if port.isdigit():
                ports.add(int(port))
    return ports


def wait_tcp_ports(ns: Namespace, ports: Collection[int], timeout: float, watch: Process) -> None:
    """Wait until every port in ``ports`` listens; fail early if ``watch`` exits."""
    deadline = time.monotonic() + timeout
    missing = set(ports)
    while time.monotonic() < deadline:
        missing = set(ports) - tcp_ports_listening(ns)
        if not missing:
            return
        if not watch.alive():
            raise LabError(f"{watch.name} exited ({watch.returncode}) before listening on TCP")
        time.sleep(0.1)
    raise LabError(f"TCP ports {sorted(missing)} not listening after {timeout:.0f} s")


def kea_relay_server(
    lab: Lab, work: Path, state: Path, subnet: str, pool: tuple[str, str], *, name: str = "kea"
) -> Server:
    """Kea serving ``pool`` of ``subnet`` on the lab bridge, its leases in ``state``.

    Relayed requests arrive as unicast UDP to port 67: no raw socket needed."""
    config = kea_dhcp4_config(
        interface=lab.bridge,
        subnet=subnet,
        pool=pool,
        lease_file=state / LEASE_FILE,
        log_file=work / "kea-dhcp4.log",
        socket_type="udp",
    )
    conf = state / "kea-dhcp4.json"
    conf.write_text(json.dumps(config, indent=2))
    return Server(name, [kea_executable(), "-c", str(conf)], kea_environment(state))


def start(
    lab: Lab,
    server: Server,
    logdir: Path,
    *,
    udp_ports: Collection[int] = (),
    tcp_ports: Collection[int] = (),
) -> Process:
    """Start ``server`` in the lab, log to ``logdir/<name>.log``, and wait for its ports."""
    proc = lab.spawn(
        server.argv, logdir / f"{server.name}.log", name=server.name, env=server.env or None
    )
    if udp_ports:
        lab.wait_udp_ports(sorted(udp_ports), timeout=30, watch=proc)
    if tcp_ports:
        wait_tcp_ports(lab, tcp_ports, timeout=30, watch=proc)
    return proc


def comparison_table(
    title: str, first: str, peer: str, rows: dict[str, dict[str, tuple[float, str]]]
) -> Table:
    """A row per label, a column per server (cells are rate and text), and netbootd / peer.

    The ratio is left as "-" where the peer's rate is zero.
    """
    names = list(dict.fromkeys(name for cells in rows.values() for name in cells))
    table = Table(title=title)
    table.add_column(first)
    for name in names:
        table.add_column(name, justify="right")
    both = "netbootd" in names and peer in names
    if both:
        table.add_column(f"netbootd / {peer}", justify="right")
    for label, cells in rows.items():
        row = [label, *(cells[name][1] for name in names)]
        if both:
            ours, theirs = cells["netbootd"][0], cells[peer][0]
            row.append(f"{ours / theirs:.2f}" if theirs else "-")
        table.add_row(*row)
    return table
