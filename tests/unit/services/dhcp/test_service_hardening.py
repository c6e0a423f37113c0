"""The DHCP service under pressure: replies cut to the client's size, floods, odd requests."""

from __future__ import annotations

import dataclasses
import logging
import random
import socket
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from types import MappingProxyType

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netbootd.boot.client import BootClass
from netbootd.boot.inventory import Group, Inventory, Method, Profile, Selector
from netbootd.boot.leases import AddressRange, Lease, LeaseBook, LeaseState
from netbootd.boot.policy import BootPolicy
from netbootd.config import ConfigError, DhcpMode
from netbootd.logs.events import format_event, parse_event
from netbootd.proto.dhcp.codec import DhcpPacket, MessageType, Op, Opt, decode, encode, u16_option
from netbootd.services.dhcp.limits import DhcpLimits, LineBudget, Throttle
from netbootd.services.dhcp.service import DhcpService
from netbootd.services.dhcp.settings import DhcpSettings
from netbootd.services.machines import BootSetup, Machines, ServerAddress
from netbootd.transport.dhcp import DhcpServer, _Endpoint
from tests.helpers.config import parse
from tests.helpers.dhcp_clients import BIOS_PXE, request
from tests.helpers.dhcp_service import (
    Clock,
    MemoryStore,
    make_service,
    one_subnet,
    with_subnet_settings,
)


async def test_a_reply_too_big_for_the_client_is_trimmed_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    service, _, _ = make_service(bios="pxelinux.0")
    big = ((119, b"a" * 250), (120, b"b" * 250), (125, b"c" * 250))
    with_subnet_settings(service, options=big)
    discover = request(
        MessageType.DISCOVER,
        vendor_class=BIOS_PXE,
        arch=0,
        extra=(
            (Opt.PARAMETER_LIST, bytes([1, 3, 119, 120, 125, 66, 67])),
            (Opt.MAX_MESSAGE_SIZE, u16_option(576)),
        ),
    )
    with caplog.at_level(logging.INFO, logger="netbootd.dhcp"):
        reply = await service.handle(
            decode(encode(discover)), local_port=67, source=("0.0.0.0", 68)
        )
    assert reply is not None and reply.max_size == 576
    wire = encode(reply.packet, max_size=576)
    assert len(wire) <= 576 - 28
    sent = decode(wire)
    assert sent.get(Opt.BOOTFILE) == b"pxelinux.0" and sent.get(Opt.SERVER_ID) is not None
    assert sent.get(119) == b"a" * 250  # the client's first choice stays
    assert sent.get(125) is None  # its last goes first
    trimmed = [
        parse_event(r.getMessage()) for r in caplog.records if "reply-trimmed" in r.getMessage()
    ]
    assert len(trimmed) == 1
    _, fields = trimmed[0]
    left_out = [int(code) for code in fields["left_out"].split(",")]
    assert left_out[0] == 125 and all(sent.get(code) is None for code in left_out)
    assert service.counters["reply-trimmed"] == 1


# -- floods of new clients ---------------------------------------------------------------------

BIG_NET = IPv4Network("10.64.0.0/10")
BIG_POOL = AddressRange.parse("10.64.0.10-10.127.255.250")


def flood_service(limits: DhcpLimits) -> tuple[DhcpService, Clock]:
    clock = Clock()
    settings = DhcpSettings(
        mode=DhcpMode.AUTHORITATIVE,
        server=IPv4Address("10.64.0.1"),
        network=BIG_NET,
        subnets=one_subnet(BIG_NET, BIG_POOL, lease_time=600),
        limits=limits,
    )
    policy = BootPolicy({BootClass.BIOS: "pxelinux.0"}, IPv4Address("10.64.0.1"), 80)
    return DhcpService(settings, policy, LeaseBook(), MemoryStore(), clock), clock


async def lease_for(service: DhcpService, mac: str) -> IPv4Address | None:
    offer = await service.handle(request(MessageType.DISCOVER, mac=mac), local_port=67, source=SRC)
    if offer is None:
        return None
    ack = await service.handle(
        request(
            MessageType.REQUEST,
            mac=mac,
            requested=str(offer.packet.yiaddr),
            server_id="10.64.0.1",
        ),
        local_port=67,
        source=SRC,
    )
    assert ack is not None and ack.packet.message_type == MessageType.ACK
    return ack.packet.yiaddr


SRC = ("0.0.0.0", 68)


async def test_a_flood_of_new_macs_is_capped_and_every_client_is_served(
    caplog: pytest.LogCaptureFixture,
) -> None:
    service, clock = flood_service(DhcpLimits(max_offers=4096, max_offers_per_pool=1024))
    known = await lease_for(service, "52:54:00:00:00:01")
    assert known is not None
    rng = random.Random(7)
    answered = 0
    peak_book = peak_heap = 0
    with caplog.at_level(logging.WARNING, logger="netbootd.dhcp"):
        for i in range(50_000):
            clock.now += 0.002  # 500 DISCOVERs a second, 100 s in all
            mac = ":".join(f"{rng.randrange(256):02x}" for _ in range(6))
            reply = await service.handle(
                request(MessageType.DISCOVER, mac=mac, xid=i), local_port=67, source=SRC
            )
            answered += reply is not None
            peak_book = max(peak_book, len(service.book))
            peak_heap = max(peak_heap, service.book.pending_expiries)
            if i % 10_000 == 5_000:
                # The client that holds a lease renews and reboots in the middle of it all.
                assert await lease_for(service, "52:54:00:00:00:01") == known
    assert service.book.offers <= 1024
    assert peak_book <= 1024 + 1  # the open offers and the known client's lease
    assert peak_heap <= 2 * (1024 + 1) + 64
    # The cap bounds the offers held, not the clients answered: past it, each new client takes
    # the place of the oldest offer.
    assert answered == 50_000
    assert service.counters["refused-new-client"] == 0
    assert service.counters["offer-reclaimed"] > 40_000
    warnings = [r.getMessage() for r in caplog.records if "new-clients-refused" in r.getMessage()]
    assert warnings == []
    # During and after the flood, a newcomer gets a lease at once.
    assert await lease_for(service, "52:54:00:00:00:03") is not None
    clock.now += 61
    assert await lease_for(service, "52:54:00:00:00:02") is not None
    assert len(service.book) == 3


async def test_expired_offers_leave_the_book_even_without_caps() -> None:
    service, clock = flood_service(DhcpLimits(max_offers=10**9, max_offers_per_pool=10**9))
    for i in range(6_000):
        clock.now += 0.05
        mac = f"02:00:00:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}"
        await service.handle(request(MessageType.DISCOVER, mac=mac), local_port=67, source=SRC)
    # 300 s of 20 new clients a second: only the last minute's offers are held.
    assert len(service.book) <= 1201
    assert service.book.pending_expiries <= 2 * 1201 + 64


async def test_max_leases_caps_a_large_pool() -> None:
    service, clock = flood_service(DhcpLimits(max_leases=3))
    leased = [await lease_for(service, f"52:54:00:00:01:{i:02x}") for i in range(5)]
    assert [address is not None for address in leased] == [True, True, True, False, False]
    assert service.counters["refused-new-client"] == 2
    assert await lease_for(service, "52:54:00:00:01:00") == leased[0]  # known: served
    clock.now += 601  # the leases ran out: room again
    assert await lease_for(service, "52:54:00:00:01:04") is not None


def test_throttle_one_line_a_minute() -> None:
    throttle = Throttle(60)
    assert throttle.event(0.0) == 1
    assert [throttle.event(t) for t in (1.0, 2.0, 59.0)] == [None, None, None]
    assert throttle.event(60.0) == 4
    assert throttle.event(61.0) is None


def test_caps_from_the_config_file(tmp_path: Path) -> None:
    site = tmp_path / "site.toml"
    site.write_text("dhcp-max-offers = 64\ndhcp-max-offers-per-pool = 16\nmax-leases = 200\n")
    config = parse("--no-dhcp", "--root", str(tmp_path), "--config", str(site))
    assert (config.dhcp_max_offers, config.dhcp_max_offers_per_pool) == (64, 16)
    assert config.max_leases == 200
    default = parse("--no-dhcp", "--root", str(tmp_path))
    assert (default.dhcp_max_offers, default.max_leases) == (4096, None)
    site.write_text("max-leases = 0\n")
    with pytest.raises(ConfigError, match=r"max-leases: .*greater than or equal to 1"):
        parse("--no-dhcp", "--root", str(tmp_path), "--config", str(site))


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["put", "remove", "expire"]),
            st.integers(0, 7),  # an address; 0-3 are in the pool
            st.integers(0, 3),  # a client
            st.sampled_from(list(LeaseState)),
            st.floats(0, 100),
        ),
        max_size=60,
    )
)
def test_book_counts_follow_its_contents(
    steps: list[tuple[str, int, int, LeaseState, float]],
) -> None:
    pool = AddressRange.parse("10.0.0.0-10.0.0.3")
    book = LeaseBook()
    book.count(pool)
    now = 0.0
    for action, host, who, state, seconds in steps:
        address = IPv4Address(f"10.0.0.{host}")
        if action == "put":
            book.put(Lease(address, f"c{who}", "m", state, now + seconds))
        elif action == "remove":
            book.remove(address)
        else:
            now += seconds
            book.expire(now)
            assert all(lease.expires > now for lease in book if lease.state is LeaseState.OFFERED)
            in_pool = [lease for lease in book if lease.address in pool and lease.expires > now]
            assert book.count(pool).leases == len(in_pool)
        offered = [lease for lease in book if lease.state is LeaseState.OFFERED]
        assert book.offers == len(offered)
        assert book.count(pool).offers == sum(lease.address in pool for lease in offered)


# -- requests that break the protocol ------------------------------------------------------------


@given(st.text())
def test_log_fields_stay_on_one_printable_line(text: str) -> None:
    line = format_event("DISCOVER", vendor_class=text, mac="52:54:00:12:34:56")
    assert line.isprintable()
    assert parse_event(line) == ("DISCOVER", {"vendor_class": text, "mac": "52:54:00:12:34:56"})


@pytest.mark.parametrize(
    ("packet", "bad"),
    [
        (dataclasses.replace(request(MessageType.DISCOVER), op=Op.BOOTREPLY), "op"),
        (dataclasses.replace(request(MessageType.DISCOVER), chaddr=b""), "chaddr"),
        (request(MessageType.DISCOVER, giaddr="192.0.2.1"), "giaddr"),
        (request(MessageType.REQUEST, extra=((Opt.REQUESTED_IP, b"\x0a\x63"),)), "option"),
    ],
)
async def test_a_bad_request_is_one_warning_a_counter_and_silence(
    packet: DhcpPacket, bad: str, caplog: pytest.LogCaptureFixture
) -> None:
    service, _, _ = make_service(bios="pxelinux.0")
    with caplog.at_level(logging.DEBUG, logger="netbootd.dhcp"):
        reply = await service.handle(decode(encode(packet)), local_port=67, source=SRC)
    assert reply is None
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert parse_event(caplog.records[0].getMessage())[1]["reason"]
    assert service.counters[f"bad-request:{bad}"] == 1
    assert len(service.book) == 0
    # The next client is served.
    good = await service.handle(request(MessageType.DISCOVER), local_port=67, source=SRC)
    assert good is not None


async def test_a_client_named_by_its_identifier_alone_is_served() -> None:
    # InfiniBand (RFC 4390) sends no chaddr and names itself in option 61.
    service, _, _ = make_service()
    ib = dataclasses.replace(request(MessageType.DISCOVER, client_id=b"\xff" + bytes(19)), htype=32)
    reply = await service.handle(dataclasses.replace(ib, chaddr=b""), local_port=67, source=SRC)
    assert reply is not None and reply.packet.chaddr == b""


async def test_undecodable_text_is_served_and_logged_escaped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    service, _, _ = make_service(bios="pxelinux.0")
    odd = request(
        MessageType.DISCOVER,
        extra=((Opt.VENDOR_CLASS, b"PXEClient\xff\r\x1b[2J"), (Opt.HOST_NAME, b"\xc3\x28evil\n")),
    )
    with caplog.at_level(logging.INFO, logger="netbootd.dhcp"):
        reply = await service.handle(decode(encode(odd)), local_port=67, source=SRC)
    assert reply is not None
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and lines[0].isprintable()
    assert parse_event(lines[0])[1]["vendor_class"] == "PXEClient\ufffd\r\x1b[2J"


# -- --log-dhcp ----------------------------------------------------------------------------------


def _events(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, str]]:
    found = [parse_event(record.getMessage()) for record in caplog.records]
    return [fields for event, fields in found if event == name]


async def test_log_dhcp_tells_what_dnsmasq_log_dhcp_tells(
    caplog: pytest.LogCaptureFixture,
) -> None:
    service, _, _ = make_service(ipxe="boot.ipxe")
    service.settings = dataclasses.replace(service.settings, log_dhcp=True)
    groups = {"lab": Group("lab", Selector(macs=("52:54:00:*",)), "p")}
    inventory = Inventory(
        profiles={"p": Profile("p", Method.IPXE, kernel="vmlinuz")}, groups=groups
    )
    setup = BootSetup(inventory, MappingProxyType({}), Path("/nonexistent"))
    service.machines = Machines(setup, ServerAddress("10.99.0.1"))
    discover = request(
        MessageType.DISCOVER,
        vendor_class=BIOS_PXE,
        arch=0,
        ipxe=True,
        extra=((Opt.PARAMETER_LIST, bytes([1, 3, 6, 67])), (Opt.HOST_NAME, b"node7")),
    )
    with caplog.at_level(logging.INFO, logger="netbootd.dhcp"):
        reply = await service.handle(discover, local_port=67, source=SRC)
        relayed = await service.handle(
            request(MessageType.DISCOVER, mac="52:54:00:00:00:09", xid=2, giaddr="10.99.0.2"),
            local_port=67,
            source=("10.99.0.2", 67),
        )
    assert reply is not None and relayed is not None
    client = _events(caplog, "dhcp-client")[0]
    assert client["requested"] == "1:subnet-mask 3:router 6:dns-servers 67:bootfile"
    assert (client["vendor_class"], client["user_class"]) == (BIOS_PXE, "iPXE")
    assert client["host_name"] == "node7"
    tags = _events(caplog, "dhcp-tags")[0]
    assert (tags["client"], tags["arch"], tags["boot_class"]) == ("ipxe", "bios", "ipxe")
    assert (tags["group"], tags["profile"], tags["machine"]) == ("lab", "p", "-")
    assert tags["ipxe_features"] == "19,21"
    first, second = _events(caplog, "dhcp-reply")
    assert first["next_server"] == "10.99.0.1" and first["yiaddr"] == "10.99.0.100"
    assert (first["destination"], first["broadcast"]) == ("255.255.255.255:68", "yes")
    assert (second["destination"], second["broadcast"]) == ("10.99.0.2:67", "no")
    assert second["giaddr"] == "10.99.0.2"
    # Every option sent, by code and name with its value, one line each.
    lines = [record.getMessage() for record in caplog.records]
    sent = [line for line in lines if line.startswith("sent xid=0x1234abcd ")]
    assert len(sent) == len(reply.packet.options)
    assert f"sent xid=0x1234abcd 67 bootfile: {first['file']}" in sent


def test_line_budget_lets_a_burst_through_then_counts() -> None:
    budget = LineBudget(lines=3, seconds=10)
    assert [budget.allow(t) for t in (0.0, 1.0, 2.0, 3.0, 4.0)] == [0, 0, 0, None, None]
    assert budget.allow(10.0) == 2  # the next window's first line tells of the two held back
    assert budget.allow(10.5) == 0


async def test_a_burst_of_bad_requests_does_not_flood_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    service, _, clock = make_service()
    bad = dataclasses.replace(request(MessageType.DISCOVER), op=Op.BOOTREPLY)
    with caplog.at_level(logging.INFO, logger="netbootd.dhcp"):
        for _ in range(200):
            await service.handle(bad, local_port=67, source=SRC)
        clock.now += 10
        await service.handle(bad, local_port=67, source=SRC)
    lines = [parse_event(record.getMessage())[1] for record in caplog.records]
    assert len(lines) == 51
    assert lines[-1]["held_back"] == "150"
    assert service.counters["bad-request:op"] == 201


def test_junk_sent_fast_gets_a_burst_of_lines_then_a_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    service, _, _ = make_service()
    server = DhcpServer(service, "lo", (67,))
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock,
        caplog.at_level(logging.INFO, logger="netbootd.dhcp"),
    ):
        endpoint = _Endpoint(67, sock, server.received)  # never started: nothing is read
        for _ in range(300):
            server.received(endpoint, b"\x01" * 10, ("192.0.2.7", 68))
    assert server.counters["malformed"] == 300
    assert len([r for r in caplog.records if r.getMessage().startswith("malformed ")]) == 50


async def test_max_leases_holds_for_a_request_without_an_offer() -> None:
    service, _ = flood_service(DhcpLimits(max_leases=2))
    for i in range(2):
        assert await lease_for(service, f"52:54:00:00:02:{i:02x}") is not None
    # A renewal from a client the book does not know, for a free address: no new lease.
    straight = request(MessageType.REQUEST, mac="52:54:00:00:02:09", ciaddr="10.64.0.50")
    assert await service.handle(straight, local_port=67, source=SRC) is None
    assert service.counters["refused-new-client"] == 1
    assert service.book.of("mac:52:54:00:00:02:09") is None
