"""A DISCOVER or DECLINE flood from made-up MACs against an authoritative pool: new clients
still get an address, offers are held briefly, and a reply that cannot be sent holds nothing."""

from __future__ import annotations

import logging
import random
import socket
from ipaddress import IPv4Address, IPv4Network

import pytest

from netbootd.boot.client import BootClass
from netbootd.boot.leases import AddressRange, LeaseBook, LeaseState
from netbootd.boot.policy import BootPolicy
from netbootd.config import DhcpMode
from netbootd.proto.dhcp.codec import DhcpPacket, MessageType
from netbootd.services.dhcp.authoritative import OFFER_HOLD_SECONDS
from netbootd.services.dhcp.limits import DhcpLimits
from netbootd.services.dhcp.service import DhcpService
from netbootd.services.dhcp.settings import DhcpSettings
from netbootd.transport.dhcp import DhcpServer, _Endpoint
from tests.helpers.dhcp_clients import request
from tests.helpers.dhcp_service import Clock, MemoryStore, one_subnet

NET = IPv4Network("10.66.0.0/24")
SERVER = "10.66.0.1"
POOL = AddressRange.parse("10.66.0.100-10.66.0.131")  # 32 addresses
SRC = ("0.0.0.0", 68)


def flood_service(
    pool: AddressRange = POOL, limits: DhcpLimits | None = None
) -> tuple[DhcpService, Clock]:
    clock = Clock()
    settings = DhcpSettings(
        mode=DhcpMode.AUTHORITATIVE,
        server=IPv4Address(SERVER),
        network=NET,
        subnets=one_subnet(NET, pool, lease_time=600),
        limits=limits or DhcpLimits(),
    )
    policy = BootPolicy({BootClass.BIOS: "pxelinux.0"}, IPv4Address(SERVER), 80)
    return DhcpService(settings, policy, LeaseBook(), MemoryStore(), clock), clock


def random_mac(rng: random.Random) -> str:
    return "02:" + ":".join(f"{rng.randrange(256):02x}" for _ in range(5))


async def send(service: DhcpService, packet: DhcpPacket) -> DhcpPacket | None:
    reply = await service.handle(packet, local_port=67, source=SRC)
    return None if reply is None else reply.packet


async def flood(service: DhcpService, clock: Clock, rng: random.Random, count: int) -> int:
    """``count`` DISCOVERs from made-up MACs, a millisecond apart; how many got an OFFER."""
    offered = 0
    for _ in range(count):
        clock.now += 0.001
        offered += (
            await send(service, request(MessageType.DISCOVER, mac=random_mac(rng))) is not None
        )
    return offered


async def request_offer(service: DhcpService, mac: str, offer: DhcpPacket) -> DhcpPacket | None:
    selecting = request(MessageType.REQUEST, mac=mac, requested=str(offer.yiaddr), server_id=SERVER)
    return await send(service, selecting)


async def test_a_pool_full_of_offers_to_made_up_macs_still_leases_to_a_new_client() -> None:
    service, clock = flood_service()
    rng = random.Random(1)
    assert await flood(service, clock, rng, 500) == 500  # 32 addresses, every DISCOVER answered
    assert service.book.count(POOL).offers == 32
    mac = "52:54:00:00:00:01"
    offer = await send(service, request(MessageType.DISCOVER, mac=mac))
    assert offer is not None and offer.yiaddr in POOL
    # The flood goes on between the OFFER and the REQUEST: the newest offer is the last taken.
    await flood(service, clock, rng, 20)
    ack = await request_offer(service, mac, offer)
    assert ack is not None and ack.message_type == MessageType.ACK
    assert ack.yiaddr == offer.yiaddr
    assert service.counters["offer-reclaimed"] == 500 - 32 + 1 + 20


async def test_the_offer_caps_bound_what_is_held_not_who_is_answered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    big = AddressRange.parse("10.66.0.2-10.66.0.254")
    limits = DhcpLimits(max_offers=64, max_offers_per_pool=16)
    service, clock = flood_service(big, limits)
    rng = random.Random(2)
    with caplog.at_level(logging.WARNING, logger="netbootd.dhcp"):
        assert await flood(service, clock, rng, 1000) == 1000
        offer = await send(service, request(MessageType.DISCOVER, mac="52:54:00:00:00:02"))
    assert offer is not None
    assert service.book.offers == 16
    assert service.counters["refused-new-client"] == 0
    assert not [r for r in caplog.records if "new-clients-refused" in r.getMessage()]
    ack = await request_offer(service, "52:54:00:00:00:02", offer)
    assert ack is not None and ack.message_type == MessageType.ACK


async def test_a_pool_full_of_leases_is_still_refused() -> None:
    service, clock = flood_service(AddressRange.parse("10.66.0.100-10.66.0.101"))
    for n in range(2):
        mac = f"52:54:00:00:01:{n:02x}"
        offer = await send(service, request(MessageType.DISCOVER, mac=mac))
        assert offer is not None
        assert await request_offer(service, mac, offer) is not None
    assert await flood(service, clock, random.Random(3), 10) == 0
    assert service.counters["pool-full"] == 10


async def test_an_offer_is_held_briefly() -> None:
    service, clock = flood_service()
    offer = await send(service, request(MessageType.DISCOVER, mac="52:54:00:00:00:03"))
    assert offer is not None
    assert OFFER_HOLD_SECONDS <= 30
    clock.now += OFFER_HOLD_SECONDS - 1
    assert service.book.holder(offer.yiaddr, clock.now) == "mac:52:54:00:00:00:03"
    clock.now += 2
    assert service.book.holder(offer.yiaddr, clock.now) is None
    # The client that asks late still gets the address, nobody having taken it meanwhile.
    ack = await request_offer(service, "52:54:00:00:00:03", offer)
    assert ack is not None and ack.message_type == MessageType.ACK


async def test_a_decline_flood_leaves_the_pool_usable() -> None:
    service, clock = flood_service()
    rng = random.Random(4)
    for _ in range(200):  # each made-up client declines what it is offered
        clock.now += 0.001
        mac = random_mac(rng)
        offer = await send(service, request(MessageType.DISCOVER, mac=mac))
        assert offer is not None
        decline = request(
            MessageType.DECLINE, mac=mac, requested=str(offer.yiaddr), server_id=SERVER
        )
        assert await send(service, decline) is None
    assert service.book.declined(POOL) == 32  # the whole pool quarantined, for a lease time
    mac = "52:54:00:00:00:04"
    offer = await send(service, request(MessageType.DISCOVER, mac=mac))
    assert offer is not None  # the oldest quarantine, the pool having nothing else
    ack = await request_offer(service, mac, offer)
    assert ack is not None and ack.message_type == MessageType.ACK
    assert service.counters["quarantine-reclaimed"] >= 1


async def test_quarantines_are_capped_per_pool_oldest_ended_first() -> None:
    big = AddressRange.parse("10.66.0.2-10.66.0.254")
    service, clock = flood_service(big, DhcpLimits(max_declined_per_pool=8))
    rng = random.Random(5)
    declined = []
    for _ in range(50):
        clock.now += 0.001
        mac = random_mac(rng)
        offer = await send(service, request(MessageType.DISCOVER, mac=mac))
        assert offer is not None
        declined.append(offer.yiaddr)
        decline = request(
            MessageType.DECLINE, mac=mac, requested=str(offer.yiaddr), server_id=SERVER
        )
        await send(service, decline)
    assert service.book.declined(big) == 8
    assert service.counters["quarantine-ended"] == 42
    held = [a for a in declined if service.book.holder(a, clock.now) == ""]
    assert held == declined[-8:]  # the newest kept


async def test_an_offer_that_cannot_be_sent_holds_no_address() -> None:
    service, _ = flood_service(AddressRange.parse("10.66.0.100-10.66.0.100"))
    server = DhcpServer(service, "lo", (67,))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.close()  # every send fails
    endpoint = _Endpoint(67, sock, server.received)
    server._answer(endpoint, request(MessageType.DISCOVER, mac="02:00:00:00:00:01"), SRC, 0.0)
    assert server.counters["send-failed"] == 1
    assert service.counters["offer-unsent"] == 1
    assert service.book.at(IPv4Address("10.66.0.100")) is None
    # The only address goes to the next client, not to a reclaim of an offer nobody heard.
    offer = await send(service, request(MessageType.DISCOVER, mac="52:54:00:00:00:05"))
    assert offer is not None and offer.yiaddr == IPv4Address("10.66.0.100")
    assert service.counters["offer-reclaimed"] == 0


async def test_an_unsent_offer_of_a_clients_own_lease_keeps_the_lease() -> None:
    service, _ = flood_service()
    mac = "52:54:00:00:00:06"
    offer = await send(service, request(MessageType.DISCOVER, mac=mac))
    assert offer is not None and await request_offer(service, mac, offer) is not None
    again = await service.handle(request(MessageType.DISCOVER, mac=mac), local_port=67, source=SRC)
    assert again is not None
    service.unsent(again)
    lease = service.book.at(offer.yiaddr)
    assert lease is not None and lease.state is LeaseState.BOUND
