"""TFTP throughput: netbootd against atftpd, measured in the same run.

A 64 MiB file is fetched with the atftp client from a second namespace (joined to the server's
bridge by a veth pair) at each option set, from each server, byte-exact; then many clients fetch
at once and the aggregate is reported. Run as root: ``make bench-tftp``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from common import (
    MIB,
    Server,
    comparison_table,
    console,
    exact,
    have_root,
    make_workdir,
    random_file,
    report_runs,
    start,
)
from netbootd_lab.netns import Host, Lab, Namespace
from netbootd_lab.servers import netbootd_executable

OPTION_SETS: dict[str, tuple[str, ...]] = {
    "default (512)": (),
    "blksize 1468": ("blksize 1468",),
    "blksize 1468 + windowsize 8": ("blksize 1468", "windowsize 8"),
    "blksize 8192": ("blksize 8192",),
}


def servers(lab: Lab, root: Path, config: Path) -> list[Server]:
    netbootd = [
        str(netbootd_executable()),
        "serve",
        "--interface", lab.bridge,
        "--root", str(root),
        "--no-dhcp", "--no-http",
        # The default caps blksize at the interface MTU; the 8192 set needs the cap lifted,
        # as atftpd has none (its blocks leave as IP fragments).
        "--tftp-max-blksize", "65464",
        # Every bench client shares one address; the per-client cap is meant for real ones.
        "--config", str(config),
    ]  # fmt: skip
    atftpd = [
        shutil.which("atftpd") or "/usr/sbin/atftpd",
        "--daemon", "--no-fork", "--logfile", "/dev/null",
        "--bind-address", lab.server_ip, "--port", "69",
        "--maxthread", "200",
        str(root),
    ]  # fmt: skip
    return [Server("netbootd", netbootd), Server("atftpd", atftpd)]


def fetch(
    client: Namespace, server_ip: str, name: str, out: Path, options: Sequence[str]
) -> subprocess.Popen[bytes]:
    argv = ["atftp", "--get", "-r", name, "-l", str(out)]
    for option in options:
        argv += ["--option", option]
    argv += [server_ip, "69"]
    return subprocess.Popen(
        ["ip", "netns", "exec", client.name, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def single(
    client: Host, server_ip: str, *, size: int, expected: str, options: Sequence[str], out: Path
) -> float:
    """MB/s of one fetch, or raise if it failed or the copy differs."""
    out.unlink(missing_ok=True)
    began = time.perf_counter()
    proc = fetch(client, server_ip, "big.bin", out, options)
    output, _ = proc.communicate(timeout=600)
    elapsed = time.perf_counter() - began
    if not exact(proc, out, expected):
        raise RuntimeError(f"fetch failed or differs: {output.decode(errors='replace')[-500:]}")
    return size / elapsed / 1e6


def concurrent(
    client: Host,
    server_ip: str,
    *,
    clients: int,
    size: int,
    expected: str,
    options: Sequence[str],
    outdir: Path,
) -> tuple[float, int]:
    """Aggregate MB/s and the number of byte-exact copies."""
    for old in outdir.glob("c*.bin"):
        old.unlink()
    began = time.perf_counter()
    procs = [
        fetch(client, server_ip, "medium.bin", outdir / f"c{i}.bin", options)
        for i in range(clients)
    ]
    for proc in procs:
        proc.communicate(timeout=900)
    elapsed = time.perf_counter() - began
    copies = sum(1 for i, proc in enumerate(procs) if exact(proc, outdir / f"c{i}.bin", expected))
    return clients * size / elapsed / 1e6, copies


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mib", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3, help="fetches per set; the median counts")
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--client-mib", type=int, default=4)
    parser.add_argument("--only", choices=["netbootd", "atftpd"], default=None)
    args = parser.parse_args(argv)
    if not have_root("tftp"):
        return 2

    work, root = make_workdir("netbootd-bench-tftp-")
    size = args.size_mib * MIB
    big_sum = random_file(root / "big.bin", size)
    medium = args.client_mib * MIB
    medium_sum = random_file(root / "medium.bin", medium)
    outdir = work / "out"
    outdir.mkdir()

    results: dict[str, dict[str, float]] = {}
    aggregate: dict[str, tuple[float, int]] = {}
    try:
        with Lab(work / "lab") as lab:
            client = lab.add_host("client")
            config = work / "netbootd.toml"
            config.write_text(f"tftp-max-sessions-per-client = {args.clients + 10}\n")
            for server in servers(lab, root, config):
                if args.only and server.name != args.only:
                    continue
                proc = start(lab, server, work, udp_ports={69})
                try:
                    results[server.name] = {}
                    for label, options in OPTION_SETS.items():
                        rates = [
                            single(
                                client,
                                lab.server_ip,
                                size=size,
                                expected=big_sum,
                                options=options,
                                out=outdir / "o",
                            )
                            for _ in range(args.runs)
                        ]
                        rate = statistics.median(rates)
                        results[server.name][label] = rate
                        report_runs(server.name, label, rates, rate)
                    aggregate[server.name] = concurrent(
                        client,
                        lab.server_ip,
                        clients=args.clients,
                        size=medium,
                        expected=medium_sum,
                        options=("blksize 1468",),
                        outdir=outdir,
                    )
                    rate, copies = aggregate[server.name]
                    console.print(
                        f"{server.name:9} {args.clients} clients x {args.client_mib} MiB "
                        f"blksize 1468: {rate:.1f} MB/s aggregate, {copies} byte-exact"
                    )
                finally:
                    proc.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    rows = {
        label: {name: (got[label], f"{got[label]:.1f}") for name, got in results.items()}
        for label in OPTION_SETS
    }
    rows[f"{args.clients} clients x {args.client_mib} MiB, 1468"] = {
        name: (aggregate[name][0], f"{aggregate[name][0]:.1f} ({aggregate[name][1]} ok)")
        for name in results
    }
    title = f"TFTP, {args.size_mib} MiB with atftp, median of {args.runs} (MB/s)"
    console.print(comparison_table(title, "option set", "atftpd", rows))
    failed = any(copies != args.clients for _, copies in aggregate.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
