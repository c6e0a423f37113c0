"""A legitimate client's time to a lease during and after a flood of DISCOVERs from made-up MACs,
netbootd against Kea (kea-dhcp4) in the same run.

A second namespace, joined to the server's bridge by a veth pair, plays a relay agent (its
address is the giaddr; replies come back to its port 67, no raw socket needed). From it, a
flooder sends DISCOVERs from random MACs at a steady rate for ``--seconds`` and never asks
for what it is offered, as an attacker or a broken client would, against a pool smaller than
the flood's MACs. Legitimate clients start at a quarter, half and three quarters of the flood
and at its end; each does DISCOVER-OFFER-REQUEST-ACK, sending its DISCOVER again each second
without an answer (a shorter wait than RFC 2131 §4.1's 4 s, so that the figure is the server's,
not the client's backoff), and the time from its first DISCOVER to its ACK is its figure.

``--baseline SRC`` adds a netbootd run from another source tree (``SRC/netbootd``), to compare
a change with what came before in the same run. netbootd runs from source (the Python build).
Run as root: ``make bench-dhcp-flood``.
"""

from __future__ import annotations

import argparse
import json
import random
import select
import shutil
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
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
from netbootd_lab.netns import Lab, LabError

SUBNET = "10.96.0.0/16"
POOL = ("10.96.1.1", "10.96.1.200")
RELAY_ADDRESS = "10.96.0.2"  # the flooding relay's address, the giaddr of all it sends
SERVER_ADDRESS = "10.96.0.1"  # the lab's bridge address, where the server runs
PEER = "kea"
DHCP_PORT = 67
RETRY_SECONDS = 1.0
GIVE_UP_SECONDS = 90.0  # past an offer hold of a minute after the flood, with a margin

# DHCP message types (RFC 2132 §9.6) and the BOOTP fixed header (RFC 2131 §2).
DISCOVER, OFFER, REQUEST, ACK, NAK = 1, 2, 3, 5, 6
COOKIE = b"\x63\x82\x53\x63"


def message(kind: int, xid: int, mac: bytes, giaddr: bytes, extra: bytes = b"") -> bytes:
    """A relayed BOOTREQUEST of message type ``kind`` (hops 1, broadcast bit clear)."""
    header = struct.pack(
        "!BBBBIHH4s4s4s4s16s64s128s",
        1, 1, 6, 1, xid, 0, 0,
        b"\0" * 4, b"\0" * 4, b"\0" * 4, giaddr,
        mac.ljust(16, b"\0"), b"", b"",
    )  # fmt: skip
    return header + COOKIE + bytes([53, 1, kind]) + extra + b"\xff"


def reply_of(data: bytes) -> tuple[int, int, bytes, bytes | None] | None:
    """(xid, message type, yiaddr, server identifier) of a BOOTREPLY, or None."""
    if len(data) < 241 or data[0] != 2 or data[236:240] != COOKIE:
        return None
    xid = int.from_bytes(data[4:8], "big")
    kind, server, i = 0, None, 240
    while i < len(data) and data[i] != 255:
        if data[i] == 0:
            i += 1
            continue
        if i + 1 >= len(data):
            break
        code, size = data[i], data[i + 1]
        value = data[i + 2 : i + 2 + size]
        if code == 53 and size == 1:
            kind = value[0]
        elif code == 54 and size == 4:
            server = value
        i += 2 + size
    return xid, kind, data[16:20], server


@dataclass
class Probe:
    """One legitimate client: DISCOVER until an OFFER, REQUEST it, until an ACK."""

    start: float
    mac: bytes
    xid: int
    sent_at: float = 0.0
    first_discover: float = 0.0
    offer: tuple[bytes, bytes] | None = None  # (yiaddr, server id)
    done: float | None = None
    naks: int = 0
    discovers: int = 0
    history: list[str] = field(default_factory=list)

    def due(self, now: float) -> bool:
        return self.done is None and now >= self.start and now - self.sent_at >= RETRY_SECONDS


def run_clients(
    server: str, relay: str, *, rate: int, seconds: float, starts: Sequence[float]
) -> dict[str, object]:
    """The flood and the legitimate clients, from inside the relay's namespace."""
    giaddr = socket.inet_aton(relay)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind((relay, DHCP_PORT))
    sock.setblocking(False)
    rng = random.Random(20)
    probes = [
        Probe(at, bytes([0x52, 0x54, 0, 0xF1, 0, n]), 0x5EED0000 + n) for n, at in enumerate(starts)
    ]
    by_xid = {probe.xid: probe for probe in probes}
    destination = (server, DHCP_PORT)
    begin = time.monotonic()
    flood_sent = flood_offers = 0
    while True:
        now = time.monotonic() - begin
        if all(p.done is not None for p in probes) or now > starts[-1] + GIVE_UP_SECONDS:
            break
        # The flood: as many DISCOVERs as the rate asks for by now.
        while now < seconds and flood_sent < rate * now:
            mac = bytes([2, *rng.randbytes(5)])
            flood = message(DISCOVER, rng.getrandbits(31), mac, giaddr)
            try:
                sock.sendto(flood, destination)
            except BlockingIOError:
                break
            flood_sent += 1
        for probe in probes:
            if not probe.due(now):
                continue
            if probe.offer is None:
                if not probe.discovers:
                    probe.first_discover = now
                probe.discovers += 1
                packet = message(DISCOVER, probe.xid, probe.mac, giaddr)
            else:
                yiaddr, server_id = probe.offer
                options = bytes([50, 4]) + yiaddr + bytes([54, 4]) + server_id
                packet = message(REQUEST, probe.xid, probe.mac, giaddr, options)
            probe.sent_at = now
            sock.sendto(packet, destination)
        select.select([sock], [], [], 0.001)
        while True:
            try:
                data = sock.recv(4096)
            except BlockingIOError:
                break
            parsed = reply_of(data)
            if parsed is None:
                continue
            xid, kind, yiaddr, server_id = parsed
            probe = by_xid.get(xid)
            if probe is None:
                flood_offers += kind == OFFER
                continue
            at = time.monotonic() - begin
            if kind == OFFER and probe.offer is None and server_id is not None:
                probe.offer = (yiaddr, server_id)
                probe.sent_at = -RETRY_SECONDS  # REQUEST at once
            elif kind == ACK and probe.offer is not None and probe.done is None:
                probe.done = at
            elif kind == NAK:
                probe.naks += 1
                probe.offer = None
                probe.sent_at = -RETRY_SECONDS
            probe.history.append(f"{at:.3f} type {kind}")
    sock.close()
    return {
        "flood_sent": flood_sent,
        "flood_offers": flood_offers,
        "clients": [
            {
                "start": p.start,
                "seconds": None if p.done is None else p.done - p.first_discover,
                "discovers": p.discovers,
                "naks": p.naks,
            }
            for p in probes
        ],
    }


def client_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", required=True)
    parser.add_argument("--relay", required=True)
    parser.add_argument("--rate", type=int, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--starts", required=True)
    args = parser.parse_args(argv)
    starts = [float(part) for part in args.starts.split(",")]
    result = run_clients(
        args.server, args.relay, rate=args.rate, seconds=args.seconds, starts=starts
    )
    print(json.dumps(result))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=20, help="length of the flood")
    parser.add_argument("--rate", type=int, default=500, help="flood DISCOVERs per second")
    parser.add_argument("--baseline", type=Path, help="a source tree to run as netbootd-before")
    parser.add_argument("--only", help="one server: netbootd, netbootd-before or kea")
    args = parser.parse_args(argv)
    if not have_root("dhcp_flood"):
        return 2
    here = Path(__file__).resolve()
    sources = {"netbootd": here.parents[1] / "src"}
    if args.baseline is not None:
        sources["netbootd-before"] = args.baseline.resolve()
    names = [*sources, PEER]
    if args.only:
        names = [name for name in names if name == args.only]
    seconds = args.seconds
    starts = [seconds / 4, seconds / 2, 3 * seconds / 4, float(seconds)]
    labels = ["during, at 1/4", "during, at 1/2", "during, at 3/4", "after, at the end"]
    work, root = make_workdir("netbootd-bench-dhcp-flood-")
    results: dict[str, dict[str, object]] = {}
    current = ""
    try:
        with Lab(work / "lab", subnet=SUBNET) as lab:
            relay = lab.add_host("flood", f"{RELAY_ADDRESS}/{lab.network.prefixlen}")
            for name in names:
                current = name
                state = work / "state" / name
                state.mkdir(parents=True)
                if name == PEER:
                    server = kea_relay_server(lab, work, state, SUBNET, POOL, name=name)
                else:
                    argv_ = [
                        sys.executable, "-m", "netbootd", "serve",
                        "--interface", lab.bridge,
                        "--root", str(root),
                        "--dhcp-range", "-".join(POOL),
                        "--state-dir", str(state),
                        "--no-tftp", "--no-http",
                    ]  # fmt: skip
                    env = {
                        "PYTHONPATH": str(sources[name]),
                        "NETBOOTD_EXPECT_COMPILED": "0",
                        "PYTHONUNBUFFERED": "1",
                    }
                    server = Server(name, argv_, env)
                proc = start(lab, server, work, udp_ports={DHCP_PORT})
                try:
                    clients = [
                        sys.executable, str(here), "--clients",
                        "--server", SERVER_ADDRESS, "--relay", RELAY_ADDRESS,
                        "--rate", str(args.rate), "--seconds", str(seconds),
                        "--starts", ",".join(str(s) for s in starts),
                    ]  # fmt: skip
                    timeout = seconds + GIVE_UP_SECONDS + 60
                    out = relay.ns_exec(clients, timeout=timeout).stdout
                    if not proc.alive():
                        raise LabError(f"{name} exited ({proc.returncode}) during the flood")
                finally:
                    proc.stop()
                results[name] = json.loads(out.strip().splitlines()[-1])
                report: dict[str, object] = results[name]
                console.print(
                    f"{name:16} flood sent {report['flood_sent']}, offered "
                    f"{report['flood_offers']}; clients {report['clients']}",
                    markup=False,
                )
                shutil.rmtree(state, ignore_errors=True)
    except (LabError, OSError, subprocess.SubprocessError, ValueError) as exc:
        console.print(f"bench/dhcp_flood: {current or 'lab'}: {exc}", markup=False)
        log = work / f"{current}.log"
        if current and log.exists():
            console.print("\n".join(log.read_text(errors="replace").splitlines()[-20:]))
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)

    rows: dict[str, dict[str, tuple[float, str]]] = {}
    for index, label in enumerate(labels):
        cells = {}
        for name, report in results.items():
            found = report["clients"]
            assert isinstance(found, list)
            took = found[index]["seconds"]
            value = GIVE_UP_SECONDS if took is None else float(took)
            cells[name] = (value, "none" if took is None else f"{took:.3f} s")
        rows[f"client {label}"] = cells
    pool_size = int.from_bytes(socket.inet_aton(POOL[1]), "big") - int.from_bytes(
        socket.inet_aton(POOL[0]), "big"
    )
    title = (
        f"time to a lease, {args.rate} random-MAC DISCOVERs/s for {seconds} s, "
        f"pool of {pool_size + 1}"
    )
    console.print(comparison_table(title, "client starts", PEER, rows))
    console.print(
        f"cells: seconds from the first DISCOVER to the ACK (none: no lease within "
        f"{GIVE_UP_SECONDS:.0f} s); the ratio is of times, lower is better"
    )
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--clients"]:
        sys.exit(client_main(sys.argv[2:]))
    sys.exit(main())
