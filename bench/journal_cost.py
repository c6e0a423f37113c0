"""The boot journal's CPU cost per DHCP exchange, in process: the service with and without it.

perfdhcp's rates (bench/dhcp_bench.py) are the figure that counts, but on a machine shared with
other work they move with the load. This measures the CPU time (all threads of the process) of
answering the same 4-way exchanges (DISCOVER-OFFER, REQUEST-ACK, leases on SQLite) with and
without the journal, the journal's writer storing every event as it does in service, in turns
and several times, and prints the ratio of the rates that CPU time allows. No root, no network.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from netbootd.boot.leases import AddressRange, LeaseBook
from netbootd.boot.policy import BootPolicy
from netbootd.boot.subnets import NetworkSettings, Subnet
from netbootd.config import DhcpMode
from netbootd.proto.dhcp.codec import DhcpPacket, MessageType, Op, Opt, decode, encode
from netbootd.services.dhcp.service import DhcpService
from netbootd.services.dhcp.settings import DhcpSettings
from netbootd.services.dhcp.transaction import Pending, Reply
from netbootd.services.journal import Journal
from netbootd.store.journal import JournalStore
from netbootd.store.leases import SqliteLeaseStore
from netbootd.transport.journal import JournalWriter

SERVER = IPv4Address("10.96.0.1")
NET = IPv4Network("10.96.0.0/16")
POOL = AddressRange.parse("10.96.1.0-10.96.254.254")
BATCH = 100  # exchanges answered before their leases are waited for


def _packet(mtype: MessageType, n: int, requested: IPv4Address | None = None) -> bytes:
    # A BIOS PXE client's (options 60 and 93): the journal records boot clients.
    options: list[tuple[int, bytes]] = [
        (Opt.MESSAGE_TYPE, bytes([mtype])),
        (Opt.VENDOR_CLASS, b"PXEClient:Arch:00000:UNDI:002001"),
        (Opt.CLIENT_ARCH, b"\x00\x00"),
    ]
    if requested is not None:
        options += [(Opt.REQUESTED_IP, requested.packed), (Opt.SERVER_ID, SERVER.packed)]
    chaddr = bytes([0x52, 0x54, 0, n >> 16 & 255, n >> 8 & 255, n & 255])
    return encode(DhcpPacket(op=Op.BOOTREQUEST, xid=n, chaddr=chaddr, options=tuple(options)))


async def _run(clients: int, journal: bool, work: Path) -> float:
    """CPU seconds for ``clients`` exchanges, the journal's writer included."""
    store = SqliteLeaseStore(work / "leases.sqlite3")
    await store.open()
    await store.load()
    subnet = Subnet(NET, (POOL,), NetworkSettings(lease_time=600, routers=(SERVER,)), "bench")
    settings = DhcpSettings(
        mode=DhcpMode.AUTHORITATIVE, server=SERVER, network=NET, subnets=(subnet,)
    )
    service = DhcpService(settings, BootPolicy({}, SERVER, 80), LeaseBook(), store)
    writer = None
    if journal:
        service.journal = Journal()
        writer = JournalWriter(service.journal, JournalStore(work / "journal.sqlite3"))
        await writer.start()
    discovers = [_packet(MessageType.DISCOVER, n) for n in range(clients)]
    source = ("10.96.0.2", 67)
    started = time.process_time()
    # In batches, as the transport has them: the ACKs of a batch wait for one commit.
    for first in range(0, clients, BATCH):
        asked = []
        for n in range(first, min(first + BATCH, clients)):
            offer = service.answer(decode(discovers[n]), local_port=67, source=source)
            assert isinstance(offer, Reply)
            asked.append(_packet(MessageType.REQUEST, n, offer.packet.yiaddr))
        pending = [service.answer(decode(raw), local_port=67, source=source) for raw in asked]
        assert all(isinstance(p, Pending) for p in pending)
        await asyncio.wait([p.durable for p in pending if isinstance(p, Pending)])
        for p in pending:
            assert isinstance(p, Pending)
            ack = p.finish()
            assert ack is not None and ack.packet.message_type == MessageType.ACK
    if writer is not None:
        await writer.close()  # what is left is stored: all of it is counted
    spent = time.process_time() - started
    await store.close()
    if writer is not None:
        assert writer.written == 2 * clients, writer.written
    return spent


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=20_000, help="exchanges in each run")
    parser.add_argument("--rounds", type=int, default=5, help="runs of each, in turn")
    args = parser.parse_args(argv)
    spent: dict[bool, list[float]] = {True: [], False: []}
    for journal in (False, True):  # a first run of each, not counted: imports, caches
        with tempfile.TemporaryDirectory(dir="/dev/shm") as work:
            asyncio.run(_run(min(args.clients, 2000), journal, Path(work)))
    for _ in range(args.rounds):
        for journal in (False, True):
            with tempfile.TemporaryDirectory(dir="/dev/shm") as work:
                spent[journal].append(asyncio.run(_run(args.clients, journal, Path(work))))
    bare = statistics.median(spent[False])
    kept = statistics.median(spent[True])
    print(f"exchanges per CPU second, median of {args.rounds} runs of {args.clients:,}:")
    print(f"  without the journal {args.clients / bare:10,.0f}/s")
    print(f"  with the journal    {args.clients / kept:10,.0f}/s")
    print(
        f"  journal: {bare / kept:.2f} of the rate without "
        f"({1e6 * (kept - bare) / args.clients:.1f} us CPU per exchange, 2 events)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
