"""HTTP throughput: netbootd against nginx (sendfile on), measured in the same run.

A 256 MiB file is fetched with curl from a second namespace (joined to the server's bridge by a
veth pair), from each server in turn, byte-exact by sha256; its rate is curl's own,
``%{size_download}`` over ``%{time_total}``, so starting the process does not count, and the
median of the runs is kept. Then 50 curl processes fetch a 16 MiB file at once: all are started,
held on a read of their config from stdin until every one is waiting there, and released
together; the aggregate is the total bytes over the wall time from the release to the last exit.
The servers never run at the same time. The target, netbootd at least 0.8 x nginx on the
single stream, is printed as pass or miss; only a broken run (a server that does not start, a
curl failure, a copy that differs) exits non-zero. Run as root: ``make bench-http``.
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
from netbootd_lab.netns import Host, Lab, LabError
from netbootd_lab.servers import netbootd_executable

PORT = 80
TARGET = 0.8  # netbootd / nginx on the single stream

NGINX_CONF = """\
user root;
daemon off;
master_process on;
worker_processes auto;
error_log stderr;
pid {dir}/nginx.pid;
events {{
    worker_connections 1024;
}}
http {{
    sendfile on;
    tcp_nopush on;
    default_type application/octet-stream;
    access_log {dir}/access.log;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen {ip}:{port};
        root {root};
    }}
}}
"""


def servers(lab: Lab, root: Path, work: Path) -> list[Server]:
    netbootd = [
        str(netbootd_executable()),
        "serve",
        "--interface", lab.bridge,
        "--root", str(root),
        "--no-dhcp", "--no-tftp",
        "--http-port", str(PORT),
    ]  # fmt: skip
    prefix = work / "nginx"
    prefix.mkdir()
    conf = prefix / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=prefix, ip=lab.server_ip, port=PORT, root=root))
    nginx = [
        shutil.which("nginx") or "/usr/sbin/nginx",
        "-p", str(prefix), "-c", str(conf),
        # Errors from before the config is read, too, go to the server log, not /var/log.
        "-e", "stderr",
    ]  # fmt: skip
    return [Server("netbootd", netbootd), Server("nginx", nginx)]


def fetch(client: Host, url: str, out: Path) -> subprocess.Popen[bytes]:
    """curl ``url`` to ``out`` in ``client``; it waits for its (empty) config on stdin."""
    argv = [
        "curl", "-q",  # no ~/.curlrc
        "--silent", "--show-error", "--fail",
        "--noproxy", "*",
        "--config", "-",
        "--output", str(out),
        "--write-out", "%{size_download} %{time_total}",
        url,
    ]  # fmt: skip
    return subprocess.Popen(
        ["ip", "netns", "exec", client.name, *argv],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def held(procs: Sequence[subprocess.Popen[bytes]], timeout: float) -> bool:
    """Wait until every process sits in a read of its stdin pipe; False if some never did."""
    deadline = time.monotonic() + timeout
    waiting = list(procs)
    while waiting and time.monotonic() < deadline:
        still = []
        for proc in waiting:
            try:
                wchan = Path(f"/proc/{proc.pid}/wchan").read_text()
            except OSError:
                wchan = ""  # gone already: its exit status tells
            if "pipe_read" not in wchan and proc.poll() is None:
                still.append(proc)
        waiting = still
        if waiting:
            time.sleep(0.02)
    return not waiting


def single(client: Host, url: str, *, size: int, expected: str, out: Path) -> float:
    """MB/s of one fetch by curl's clock, or raise if it failed or the copy differs."""
    out.unlink(missing_ok=True)
    proc = fetch(client, url, out)
    output, errors = proc.communicate(b"", timeout=600)
    if not exact(proc, out, expected):
        raise RuntimeError(f"curl failed or the copy differs: {errors.decode(errors='replace')}")
    got, seconds = output.decode().split()
    if int(got) != size:
        raise RuntimeError(f"curl counted {got} bytes, not {size}")
    return size / float(seconds) / 1e6


def concurrent(
    client: Host, url: str, *, clients: int, size: int, expected: str, outdir: Path
) -> tuple[float, int]:
    """Aggregate MB/s (wall clock, release to last exit) and the number of byte-exact copies."""
    for old in outdir.glob("c*.bin"):
        old.unlink()
    procs = [fetch(client, url, outdir / f"c{i}.bin") for i in range(clients)]
    try:
        if not held(procs, timeout=60):
            console.print("some curl never waited on stdin; releasing them all anyway")
        began = time.perf_counter()
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.close()
        for proc in procs:
            proc.wait(timeout=900)  # what curl prints is far less than a pipe holds
        elapsed = time.perf_counter() - began
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for proc in procs:
        assert proc.stderr is not None
        if errors := proc.stderr.read().decode(errors="replace").strip():
            console.print(f"curl: {errors}", markup=False)
    copies = sum(1 for i, proc in enumerate(procs) if exact(proc, outdir / f"c{i}.bin", expected))
    return clients * size / elapsed / 1e6, copies


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mib", type=int, default=256, help="the single-stream file")
    parser.add_argument("--runs", type=int, default=3, help="single-stream fetches; the median")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--client-mib", type=int, default=16, help="each client's file")
    parser.add_argument("--only", choices=["netbootd", "nginx"], default=None)
    args = parser.parse_args(argv)
    if not have_root("http"):
        return 2

    work, root = make_workdir("netbootd-bench-http-")
    size = args.size_mib * MIB
    big_sum = random_file(root / "big.bin", size)
    medium = args.client_mib * MIB
    medium_sum = random_file(root / "medium.bin", medium)
    outdir = work / "out"
    outdir.mkdir()

    results: dict[str, float] = {}
    aggregate: dict[str, tuple[float, int]] = {}
    current = ""
    try:
        with Lab(work / "lab") as lab:
            client = lab.add_host("client")
            base = f"http://{lab.server_ip}:{PORT}"
            for server in servers(lab, root, work):
                if args.only and server.name != args.only:
                    continue
                current = server.name
                proc = start(lab, server, work, tcp_ports={PORT})
                try:
                    rates = [
                        single(
                            client, f"{base}/big.bin", size=size, expected=big_sum, out=outdir / "o"
                        )
                        for _ in range(args.runs)
                    ]
                    results[server.name] = statistics.median(rates)
                    label = f"{args.size_mib} MiB, one stream"
                    report_runs(server.name, label, rates, results[server.name])
                    aggregate[server.name] = concurrent(
                        client,
                        f"{base}/medium.bin",
                        clients=args.clients,
                        size=medium,
                        expected=medium_sum,
                        outdir=outdir,
                    )
                    rate, copies = aggregate[server.name]
                    console.print(
                        f"{server.name:9} {args.clients} clients x {args.client_mib} MiB: "
                        f"{rate:.1f} MB/s aggregate, {copies} byte-exact"
                    )
                finally:
                    proc.stop()
    except (LabError, RuntimeError, subprocess.TimeoutExpired) as exc:
        console.print(f"bench/http_bench: {current or 'lab'}: {exc}", markup=False)
        log = work / f"{current}.log"
        if current and log.exists():
            tail = log.read_text(errors="replace").splitlines()[-20:]
            console.print("\n".join(tail), markup=False)
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)

    rows = {
        f"{args.size_mib} MiB, one stream": {
            name: (rate, f"{rate:.1f}") for name, rate in results.items()
        },
        f"{args.clients} clients x {args.client_mib} MiB": {
            name: (rate, f"{rate:.1f} ({copies} ok)") for name, (rate, copies) in aggregate.items()
        },
    }
    title = f"HTTP with curl, one stream median of {args.runs} (MB/s)"
    console.print(comparison_table(title, "load", "nginx", rows))
    if "netbootd" in results and "nginx" in results:
        ratio = results["netbootd"] / results["nginx"]
        verdict = "pass" if ratio >= TARGET else "miss"
        console.print(f"target: netbootd >= {TARGET} x nginx on one stream: {ratio:.2f}, {verdict}")
    failed = any(copies != args.clients for _, copies in aggregate.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
