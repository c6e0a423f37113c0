"""A DHCP service in process for unit tests: an in-memory lease store, a clock the test sets,
the service built over one subnet, and asking it a question over the wire codec."""

from __future__ import annotations

import asyncio
import dataclasses
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from types import MappingProxyType
from typing import Any

from netbootd.boot.client import BootClass
from netbootd.boot.inventory import Inventory, Machine, Method, Profile
from netbootd.boot.leases import AddressRange, Lease, LeaseBook
from netbootd.boot.policy import BootPolicy
from netbootd.boot.subnets import NetworkSettings, Subnet
from netbootd.config import DhcpMode
from netbootd.proto.dhcp.codec import DhcpPacket, decode, encode
from netbootd.services.dhcp.service import DhcpService
from netbootd.services.dhcp.settings import DhcpSettings
from netbootd.services.dhcp.transaction import Reply
from netbootd.services.machines import BootSetup, Machines, ServerAddress
from netbootd.store.leases import StoreError

SERVER = IPv4Address("10.99.0.1")
NET = IPv4Network("10.99.0.0/24")
POOL = AddressRange.parse("10.99.0.100-10.99.0.101")
BCAST = IPv4Address("255.255.255.255")


class MemoryStore:
    def __init__(self) -> None:
        self.rows: dict[IPv4Address, Lease] = {}
        self.fail = False

    async def load(self) -> list[Lease]:
        return list(self.rows.values())

    def submit(self, change: Lease | IPv4Address) -> asyncio.Future[None]:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.fail:
            done.set_exception(StoreError("disk full"))
        elif isinstance(change, Lease):
            self.rows[change.address] = change
            done.set_result(None)
        else:
            self.rows.pop(change, None)
            done.set_result(None)
        return done

    async def close(self) -> None:
        pass


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def one_subnet(
    network: IPv4Network, pool: AddressRange | None = None, **settings: Any
) -> tuple[Subnet, ...]:
    """The subnets of a command line's ``--dhcp-range``: the interface's network, its pool,
    and the server-wide settings (``routers=...``, ``lease_time=...``)."""
    pools = (pool,) if pool is not None else ()
    return (Subnet(network, pools, NetworkSettings(**settings), "dhcp-range"),)


def make_service(
    mode: DhcpMode = DhcpMode.AUTHORITATIVE, **boot: str
) -> tuple[DhcpService, MemoryStore, Clock]:
    store, clock = MemoryStore(), Clock()
    authoritative = mode is DhcpMode.AUTHORITATIVE
    settings = DhcpSettings(
        mode=mode,
        server=SERVER,
        network=NET,
        subnets=one_subnet(NET, POOL, lease_time=600, routers=(SERVER,)) if authoritative else (),
    )
    policy = BootPolicy({BootClass(k): v for k, v in boot.items()}, SERVER, 80)
    service = DhcpService(settings, policy, LeaseBook(), store, clock)
    return service, store, clock


async def ask(
    service: DhcpService,
    packet: DhcpPacket,
    port: int = 67,
    source: tuple[str, int] = ("0.0.0.0", 68),
) -> Reply | None:
    reply = await service.handle(decode(encode(packet)), local_port=port, source=source)
    if reply is not None:
        # Every reply must survive the wire.
        assert decode(encode(reply.packet, max_size=reply.max_size)) == reply.packet
    return reply


def mtype(reply: Reply | None) -> int | None:
    assert reply is not None
    return reply.packet.message_type


def with_inventory(service: DhcpService, **machines: Machine) -> DhcpService:
    profiles = {"p": Profile("p", Method.IPXE, kernel="vmlinuz")}
    inventory = Inventory(profiles=profiles, machines=machines)
    setup = BootSetup(inventory, MappingProxyType({}), Path("/nonexistent"))
    service.machines = Machines(setup, ServerAddress(str(SERVER)))
    return service


def with_subnet_settings(service: DhcpService, **changes: Any) -> DhcpService:
    """``service`` with ``changes`` to what the clients of each of its subnets are told."""
    settings = service.settings
    subnets = tuple(
        dataclasses.replace(subnet, settings=dataclasses.replace(subnet.settings, **changes))
        for subnet in settings.subnets
    )
    service.settings = dataclasses.replace(settings, subnets=subnets)
    return service
