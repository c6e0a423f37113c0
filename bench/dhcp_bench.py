"""DHCP rate: netbootd, in one process and with a DHCP worker per core, against Kea (kea-dhcp4,
memfile leases persisted), in the same run.

perfdhcp runs in a second namespace (joined to the server's bridge by a veth pair) as a relay
agent: its address is the giaddr, on the lab network, so both servers answer it from their
pool. Each step holds one rate of 4-way exchanges (DISCOVER-OFFER, REQUEST-ACK) for a few
seconds, against a server started afresh with an empty lease state, so that earlier steps do
not fill the pool; the servers take turns at each rate and never run at the same time.
netbootd keeps its durable SQLite leases and logs each transaction, as it does in service;
Kea writes its leases to a CSV file and logs at INFO, as it does by default. Both keep their
state and logs in the work directory (tmpfs).

A step is clean when perfdhcp sent what the rate asks for and under 2.5 % of the DISCOVERs and
of the REQUESTs went unanswered; each server's figure is its highest clean rate. The target,
netbootd at least Kea, is printed as pass or miss; only a broken run (a server that does not
start or dies, perfdhcp failing) exits non-zero. Run as root: ``make bench-dhcp``.

netbootd keeps its boot journal (each boot client's transaction an event; perfdhcp's clients
say they are PXE clients, so every one is journaled), as it does by default;
``netbootd-no-journal`` is the same server with ``journal = false``, so the journal's cost is
the ratio of the two, in the same run (its target: within 10 %). ``--journal``
runs those two alone.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from common import (
    Server,
    comparison_table,
    console,
    have_root,
    kea_relay_server,
    make_workdir,
    start,
)
from netbootd_lab.kea import LEASE_FILE
from netbootd_lab.netns import Host, Lab, LabError, Process
from netbootd_lab.perfdhcp import Exchange, parse_report, run_perfdhcp
from netbootd_lab.servers import DHCP_PORT, netbootd_executable

SUBNET = "10.96.0.0/16"
POOL = ("10.96.1.0", "10.96.254.254")
CLIENT_ADDRESS = "10.96.0.2"  # perfdhcp's address, the giaddr of everything it sends
DEFAULT_RATES = "250,500,1000,2000,3000,4000,5000,6000,7000,8000,10000"
MAX_DROPS = 2.5  # percent, for DISCOVER-OFFER and for REQUEST-ACK
MIN_SENT = 0.975  # of rate x seconds: perfdhcp really offered the rate
WORKERS = os.cpu_count() or 2  # netbootd-workers: a DHCP worker per core
SERVERS = ("netbootd", "netbootd-no-journal", "netbootd-workers", "kea")
# perfdhcp's clients say they are BIOS PXE clients (options 60 and 93, as a PXE ROM sends
# them): netbootd hands each a boot file, and its journal records each of their transactions.
PXE_CLIENT = (
    "-o", "60," + b"PXEClient:Arch:00000:UNDI:002001".hex(),
    "-o", "93,0000",
)  # fmt: skip
PEER = "kea"
NO_JOURNAL = "netbootd-no-journal"
JOURNAL_TARGET = 0.90  # the rate with the journal, at least this of the rate without


@dataclass(frozen=True)
class Step:
    server: str
    rate: int
    seconds: int
    completed: float  # 4-way exchanges per second, perfdhcp's "Rate:"
    offer: Exchange  # DISCOVER-OFFER
    ack: Exchange  # REQUEST-ACK

    @property
    def held(self) -> bool:
        return self.offer.sent >= MIN_SENT * self.rate * self.seconds

    @property
    def worst(self) -> float:
        if self.offer.sent and not self.offer.received:
            return 100.0
        return max(self.offer.drop_percent, self.ack.drop_percent)

    @property
    def clean(self) -> bool:
        return self.held and self.worst < MAX_DROPS


def parse_perfdhcp(output: str, server: str, rate: int, seconds: int) -> Step:
    """The step as perfdhcp's final report tells it; ValueError if the report is not there."""
    report = parse_report(output)
    return Step(server, rate, seconds, report.completed, report.offer, report.ack)


def kea_outside_lab() -> list[int]:
    """Pids of kea-dhcp4 processes in this machine's own network namespace."""
    here = os.readlink("/proc/self/ns/net")
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() != "kea-dhcp4":
                continue
            if os.readlink(entry / "ns" / "net") == here:
                found.append(int(entry.name))
        except OSError:
            continue  # gone meanwhile
    return found


def netbootd_server(
    lab: Lab, root: Path, state: Path, workers: int = 1, *, journal: bool = True
) -> Server:
    argv = [
        str(netbootd_executable()),
        "serve",
        "--interface", lab.bridge,
        "--root", str(root),
        "--dhcp-range", "-".join(POOL),
        "--state-dir", str(state),
        "--no-tftp", "--no-http",
    ]  # fmt: skip
    env = {"PYTHONUNBUFFERED": "1"}
    if workers > 1:
        argv += ["--dhcp-workers", str(workers)]
        return Server("netbootd-workers", argv, env)
    if not journal:
        config = state / "no-journal.toml"
        config.write_text("journal = false\n")
        return Server(NO_JOURNAL, [*argv, "--config", str(config)], env)
    return Server("netbootd", argv, env)


def journal_events(state: Path) -> int | None:
    """Events in the server's boot journal once it has stopped; None when it keeps none."""
    path = state / "journal.sqlite3"
    if not path.exists():
        return None
    try:
        db = sqlite3.connect(path)
        try:
            (count,) = db.execute("SELECT count(*) FROM events").fetchone()
        finally:
            db.close()
        return int(count)
    except sqlite3.Error:
        return None


def leases_on_disk(server: str, state: Path) -> int | None:
    """Distinct leased addresses in the server's lease file once it has stopped."""
    try:
        if server.startswith("netbootd"):
            db = sqlite3.connect(state / "leases.sqlite3")
            try:
                (count,) = db.execute("SELECT count(*) FROM leases").fetchone()
            finally:
                db.close()
            return int(count)
        lines = (state / LEASE_FILE).read_text().splitlines()[1:]
        return len({line.split(",", 1)[0] for line in lines if line})
    except (OSError, sqlite3.Error):
        return None


def netbootd_counters(log: Path) -> str:
    """The DHCP counters netbootd logs when it stops (each worker's, with several)."""
    found = re.findall(
        r'netbootd counters service=dhcp counts="?([^"\n]*)"?(?: worker=(\d+))?', log.read_text()
    )
    if not found:
        return "-"
    shown = (f"worker {worker}: {counts}" if worker else counts for counts, worker in found)
    return " | ".join(shown)


def wait_for_workers(log: Path, proc: Process, timeout: float = 30) -> None:
    """Until netbootd says all its DHCP workers are ready (each binds port 67 in turn)."""
    deadline = time.monotonic() + timeout
    while "dhcp-workers workers=" not in log.read_text(errors="replace"):
        if not proc.alive() or time.monotonic() > deadline:
            raise LabError(f"the DHCP workers did not start:\n{log.read_text()[-1500:]}")
        time.sleep(0.1)


def step(
    lab: Lab, client: Host, server: Server, work: Path, *, rate: int, seconds: int, clients: int
) -> Step:
    """One rate against a freshly started server; raise if the server fails or dies."""
    proc = start(lab, server, work, udp_ports={DHCP_PORT})
    try:
        if server.name == "netbootd-workers":
            wait_for_workers(work / f"{server.name}.log", proc)
        output = run_perfdhcp(
            client, lab.server_ip, rate=rate, seconds=seconds, clients=clients, extra=PXE_CLIENT
        )
        if not proc.alive():
            raise LabError(f"{server.name} exited ({proc.returncode}) during the step")
    finally:
        proc.stop()
    try:
        return parse_perfdhcp(output, server.name, rate, seconds)
    except ValueError as exc:
        raise RuntimeError(f"{exc}:\n{output[-1500:]}") from None


def report_step(result: Step, extra: str) -> None:
    verdict = "clean" if result.clean else ("short" if not result.held else "drops")
    offer, ack = result.offer, result.ack
    console.print(
        f"{result.server:16} {result.rate:>6}/s  "
        f"DO {offer.sent:>5}/{offer.received:<5} {offer.drop_percent:5.1f} %  "
        f"RA {ack.sent:>5}/{ack.received:<5} {ack.drop_percent:5.1f} %  "
        f"{result.completed:7.1f}/s {verdict}  {extra}",
        markup=False,
    )


def median_step(tries: Sequence[Step]) -> Step:
    """Of a server's runs at one rate, the one of median completed rate: a run the rest of
    the machine slowed down (another process on the CPUs) counts no more than one that ran
    alone."""
    ordered = sorted(tries, key=lambda s: s.completed)
    return ordered[(len(ordered) - 1) // 2]


def highest_clean(steps: Sequence[Step]) -> int:
    return max((s.rate for s in steps if s.clean), default=0)


def parse_rates(text: str) -> list[int]:
    rates = sorted({int(part) for part in text.split(",") if part.strip()})
    if not rates or rates[0] <= 0:
        raise argparse.ArgumentTypeError("rates must be positive integers, comma-separated")
    return rates


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--rates",
        type=parse_rates,
        default=parse_rates(DEFAULT_RATES),
        help=f"4-way exchanges per second, one step each (default {DEFAULT_RATES})",
    )
    parser.add_argument("--seconds", type=int, default=5, help="length of each step")
    parser.add_argument("--clients", type=int, default=60000, help="distinct MACs (perfdhcp -R)")
    parser.add_argument("--only", choices=SERVERS, default=None)
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="runs of each server at each rate, in turn; the median of them counts",
    )
    parser.add_argument(
        "--journal",
        action="store_true",
        help="only netbootd with its boot journal and without: the journal's cost",
    )
    args = parser.parse_args(argv)
    pool_size = int(ipaddress.IPv4Address(POOL[1])) - int(ipaddress.IPv4Address(POOL[0])) + 1
    if not 0 < args.clients < pool_size:
        parser.error(f"--clients must be below the pool size ({pool_size})")
    if not have_root("dhcp_bench"):
        return 2
    if pids := kea_outside_lab():
        console.print(
            f"bench/dhcp_bench: kea-dhcp4 is running outside the lab (pid {pids[0]}); "
            "stop it first (systemctl stop kea-dhcp4-server)"
        )
        return 1

    names = [name for name in SERVERS if not args.only or name == args.only]
    if args.journal:
        names = ["netbootd", NO_JOURNAL]
    work, root = make_workdir("netbootd-bench-dhcp-")
    results: dict[str, list[Step]] = {name: [] for name in names}
    current = ""
    try:
        with Lab(work / "lab", subnet=SUBNET) as lab:
            client = lab.add_host("perf", f"{CLIENT_ADDRESS}/{lab.network.prefixlen}")
            for rate in args.rates:
                runs: dict[str, list[Step]] = {name: [] for name in names}
                for name in [name for _ in range(max(args.repeat, 1)) for name in names]:
                    current = name
                    state = work / "state" / f"{name}-{rate}-{len(runs[name])}"
                    state.mkdir(parents=True)
                    if name == "netbootd":
                        server = netbootd_server(lab, root, state)
                    elif name == NO_JOURNAL:
                        server = netbootd_server(lab, root, state, journal=False)
                    elif name == "netbootd-workers":
                        server = netbootd_server(lab, root, state, WORKERS)
                    else:
                        server = kea_relay_server(lab, work, state, SUBNET, POOL)
                    result = step(
                        lab,
                        client,
                        server,
                        work,
                        rate=rate,
                        seconds=args.seconds,
                        clients=args.clients,
                    )
                    runs[name].append(result)
                    leases = leases_on_disk(name, state)
                    extra = f"leases {leases if leases is not None else '-'}"
                    if name.startswith("netbootd"):
                        events = journal_events(state)
                        extra += f", journal events {events if events is not None else 'off'}"
                    report_step(result, extra)
                    if name.startswith("netbootd"):
                        counters = netbootd_counters(work / f"{name}.log")
                        console.print(f"{'':18}counters {counters}", markup=False)
                    shutil.rmtree(state, ignore_errors=True)
                for name, tries in runs.items():
                    results[name].append(median_step(tries))
    except (LabError, RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        console.print(f"bench/dhcp_bench: {current or 'lab'}: {exc}", markup=False)
        log = work / f"{current}.log"
        if current and log.exists():
            tail = log.read_text(errors="replace").splitlines()[-20:]
            console.print("\n".join(tail), markup=False)
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)

    rows: dict[str, dict[str, tuple[float, str]]] = {}
    for index, rate in enumerate(args.rates):
        cells = {}
        for name, steps in results.items():
            s = steps[index]
            text = f"{s.completed:,.0f} ({s.worst:.1f} %)" + ("" if s.held else " short")
            cells[name] = (s.completed, text)
        rows[f"{rate:,}/s"] = cells
    top = {name: highest_clean(steps) for name, steps in results.items()}
    rows["highest clean rate"] = {
        name: (float(rate), f"{rate:,}" if rate else "none") for name, rate in top.items()
    }
    title = f"DHCP with perfdhcp, {args.seconds} s per rate"
    if args.repeat > 1:
        title += f", the median of {args.repeat} runs"
    console.print(comparison_table(title, "offered", PEER, rows))
    console.print(
        "cells: 4-way exchanges/s completed (worst drop %); clean: the rate was sent "
        f"and under {MAX_DROPS} % dropped"
    )
    for name, rate in top.items():
        if rate and rate == args.rates[-1]:
            console.print(f"{name} was clean at the top of the ladder: its limit is higher")
    for name in names:
        if name == PEER or PEER not in top:
            continue
        ours, theirs = top[name], top[PEER]
        ratio = f"{ours / theirs:.2f}" if theirs else "-"
        verdict = "pass" if ours >= theirs else "miss"
        console.print(
            f"target: {name} >= Kea on the highest clean rate: "
            f"{ours:,} vs {theirs:,} ({ratio}), {verdict}"
        )
    if "netbootd" in results and NO_JOURNAL in results:
        report_journal_cost(results["netbootd"], results[NO_JOURNAL], top)
    return 0


def report_journal_cost(
    journaled: Sequence[Step], bare: Sequence[Step], top: dict[str, int]
) -> None:
    """The journal's cost: netbootd's rates with it against without, in this same run.

    The ladder's steps are coarse, so beside the highest clean rates this compares the most
    each completed at under the drop limit, and what each completed at the rates the server
    without the journal could no longer serve clean (the same offered load past its limit).
    """
    ours, theirs = top["netbootd"], top[NO_JOURNAL]
    if theirs:
        console.print(
            f"journal: highest clean rate with it {ours:,}, without {theirs:,} "
            f"({ours / theirs:.2f})"
        )
    for j, b in zip(journaled, bare, strict=True):
        if b.clean:
            continue
        share = j.completed / b.completed if b.completed else 0.0
        console.print(
            f"journal: at {j.rate:,}/s offered, completed {j.completed:,.0f}/s with it, "
            f"{b.completed:,.0f}/s without ({share:.2f})"
        )
    peak_with = max((s.completed for s in journaled if s.worst < MAX_DROPS), default=0.0)
    peak_without = max((s.completed for s in bare if s.worst < MAX_DROPS), default=0.0)
    share = peak_with / peak_without if peak_without else 0.0
    verdict = "pass" if share >= JOURNAL_TARGET else "miss"
    console.print(
        f"target: the rate with the journal within {100 - JOURNAL_TARGET * 100:.0f} % of the "
        f"rate without (the most completed under {MAX_DROPS} % drops): {peak_with:,.0f} vs "
        f"{peak_without:,.0f}/s ({share:.2f}), {verdict}"
    )


if __name__ == "__main__":
    sys.exit(main())
