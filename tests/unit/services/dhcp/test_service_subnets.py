"""The DHCP service over several subnets, relayed requests, config hosts and BOOTP clients."""

from __future__ import annotations

import dataclasses
import logging
from ipaddress import IPv4Address, IPv4Network

import pytest

from netbootd.boot.client import BootClass
from netbootd.boot.hosts import parse_hosts
from netbootd.boot.inventory import Machine
from netbootd.boot.leases import AddressRange, LeaseBook, LeaseState
from netbootd.boot.policy import BootPolicy
from netbootd.boot.subnets import NetworkSettings, Subnet
from netbootd.config import DhcpMode
from netbootd.logs.events import parse_event
from netbootd.proto.dhcp.codec import HEADER_SIZE, MAGIC_COOKIE, MessageType, Op, Opt, encode
from netbootd.services.dhcp.limits import DhcpLimits
from netbootd.services.dhcp.service import DhcpService
from netbootd.services.dhcp.settings import DhcpSettings
from tests.helpers.dhcp_clients import BIOS_PXE, request
from tests.helpers.dhcp_service import SERVER, Clock, MemoryStore, ask, mtype, with_inventory

LOCAL_NET = IPv4Network("10.99.0.0/24")
LOCAL = Subnet(
    LOCAL_NET,
    (AddressRange.parse("10.99.0.100-10.99.0.101"),),
    NetworkSettings(routers=(SERVER,), lease_time=600),
    "[[subnets]] #1",
)
REMOTE = Subnet(
    IPv4Network("10.0.5.0/24"),
    (AddressRange.parse("10.0.5.100-10.0.5.101"), AddressRange.parse("10.0.5.150-10.0.5.150")),
    NetworkSettings(
        routers=(IPv4Address("10.0.5.1"),),
        lease_time=1200,
        options=((Opt.NTP, IPv4Address("10.0.5.2").packed),),
    ),
    "[[subnets]] #2",
)
RELAY = "10.0.5.1"
AGENT = bytes([1, 5]) + b"down0" + bytes([2, 6]) + bytes.fromhex("525400aabbcc")
HOSTS = parse_hosts(
    [
        {
            "client-id": "ws-7",
            "address": "10.0.5.7",
            "hostname": "ws-7",
            "boot-file": "special.0",
            "next-server": "10.0.5.3",
            "options": {"root-path": "10.0.5.3:/srv/ws-7"},
        },
        {"mac": "52:54:00:00:00:0b", "address": "10.0.5.11", "hostname": "old-bootp"},
        {"mac": "52:54:00:00:00:0c", "hostname": "named-only"},
    ]
)


def make_service(*, dynamic_bootp: bool = False) -> tuple[DhcpService, MemoryStore, Clock]:
    store, clock = MemoryStore(), Clock()
    remote = REMOTE
    if dynamic_bootp:
        remote = Subnet(
            REMOTE.network,
            REMOTE.pools,
            NetworkSettings(routers=REMOTE.settings.routers, dynamic_bootp=True),
            REMOTE.label,
        )
    settings = DhcpSettings(
        mode=DhcpMode.AUTHORITATIVE,
        server=SERVER,
        network=LOCAL_NET,
        subnets=(LOCAL, remote),
        hosts=HOSTS,
    )
    policy = BootPolicy({BootClass.BIOS: "pxelinux.0"}, SERVER, 80)
    return DhcpService(settings, policy, LeaseBook(), store, clock), store, clock


async def test_each_client_gets_an_address_of_its_own_subnet() -> None:
    service, store, _ = make_service()
    local = await ask(service, request(MessageType.DISCOVER, mac="52:54:00:00:00:01"))
    assert local is not None and local.packet.yiaddr == IPv4Address("10.99.0.100")
    assert local.packet.get(Opt.LEASE_TIME) == (600).to_bytes(4, "big")
    relayed = await ask(
        service,
        request(MessageType.DISCOVER, mac="52:54:00:00:00:02", giaddr=RELAY),
        source=(RELAY, 67),
    )
    assert relayed is not None
    p = relayed.packet
    assert p.yiaddr == IPv4Address("10.0.5.100")
    assert (relayed.address, relayed.port) == (IPv4Address(RELAY), 67)
    assert p.giaddr == IPv4Address(RELAY)
    assert p.get(Opt.SERVER_ID) == SERVER.packed  # our own address, on the interface
    assert p.get(Opt.ROUTER) == IPv4Address("10.0.5.1").packed
    assert p.get(Opt.LEASE_TIME) == (1200).to_bytes(4, "big")
    assert p.get(Opt.NTP) == IPv4Address("10.0.5.2").packed
    assert p.get(Opt.BROADCAST) == IPv4Address("10.0.5.255").packed
    ack = await ask(
        service,
        request(
            MessageType.REQUEST,
            mac="52:54:00:00:00:02",
            giaddr=RELAY,
            requested="10.0.5.100",
            server_id=str(SERVER),
        ),
        source=(RELAY, 67),
    )
    assert mtype(ack) == MessageType.ACK
    assert store.rows[IPv4Address("10.0.5.100")].expires == 1000.0 + 1200


async def test_the_second_pool_serves_when_the_first_is_full() -> None:
    service, _, _ = make_service()
    got = []
    for n in range(4):
        mac = f"52:54:00:00:01:{n:02x}"
        offer = await ask(service, request(MessageType.DISCOVER, mac=mac, giaddr=RELAY))
        got.append(str(offer.packet.yiaddr) if offer is not None else None)
    # Then, every pool full of offers, the oldest offer of the first pool.
    assert got == ["10.0.5.100", "10.0.5.101", "10.0.5.150", "10.0.5.100"]


async def test_a_relay_from_an_unknown_network_is_ignored_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    service, _, _ = make_service()
    with caplog.at_level(logging.INFO, logger="netbootd.dhcp"):
        reply = await ask(service, request(MessageType.DISCOVER, giaddr="10.0.9.1"))
    assert reply is None
    assert service.counters["relay-unknown-subnet"] == 1
    event, fields = parse_event(caplog.records[-1].getMessage())
    assert (event, fields["decision"], fields["relay"]) == ("DISCOVER", "ignored", "10.0.9.1")
    assert fields["reason"] == "relayed from 10.0.9.1, which is in no served subnet"


async def test_agent_info_comes_back_last_in_every_reply_to_the_relay() -> None:
    service, _, _ = make_service()
    extra = ((Opt.AGENT_INFO, AGENT),)
    offer = await ask(service, request(MessageType.DISCOVER, giaddr=RELAY, extra=extra))
    assert offer is not None and offer.packet.options[-1] == (Opt.AGENT_INFO, AGENT)
    nak = await ask(
        service,
        request(MessageType.REQUEST, giaddr=RELAY, requested="10.0.5.99", extra=extra),
    )
    assert mtype(nak) == MessageType.NAK
    assert nak is not None and nak.packet.options[-1] == (Opt.AGENT_INFO, AGENT)
    # On the wire too: option 82 is the last one before END.
    wire = encode(offer.packet)
    at = wire.index(bytes([Opt.AGENT_INFO, len(AGENT)]) + AGENT)
    assert wire[at + 2 + len(AGENT)] == Opt.END
    # Without option 82 in the request, none in the reply.
    plain = await ask(service, request(MessageType.DISCOVER, mac="52:54:00:00:00:09", giaddr=RELAY))
    assert plain is not None and Opt.AGENT_INFO not in plain.packet


async def test_a_client_id_host_gets_its_address_name_options_and_file() -> None:
    service, store, _ = make_service()
    ws7 = {"client_id": b"ws-7", "giaddr": RELAY, "vendor_class": BIOS_PXE, "arch": 0}
    offer = await ask(service, request(MessageType.DISCOVER, mac="52:54:00:00:00:07", **ws7))  # type: ignore[arg-type]
    assert offer is not None
    p = offer.packet
    assert p.yiaddr == IPv4Address("10.0.5.7")  # reserved, outside the pools
    assert p.get(Opt.HOST_NAME) == b"ws-7"
    assert p.get(Opt.ROOT_PATH) == b"10.0.5.3:/srv/ws-7"
    assert p.file == b"special.0" and p.get(Opt.BOOTFILE) == b"special.0"
    assert p.siaddr == IPv4Address("10.0.5.3")
    # The same client on another NIC is the same client: the identifier decides.
    again = await ask(service, request(MessageType.DISCOVER, mac="52:54:00:00:00:99", **ws7))  # type: ignore[arg-type]
    assert again is not None and again.packet.yiaddr == IPv4Address("10.0.5.7")
    nak = await ask(
        service,
        request(MessageType.REQUEST, mac="52:54:00:00:00:07", requested="10.0.5.100", **ws7),  # type: ignore[arg-type]
    )
    assert mtype(nak) == MessageType.NAK
    assert nak is not None and nak.packet.get(Opt.MESSAGE) == b"this client's address is 10.0.5.7"
    ack = await ask(
        service,
        request(
            MessageType.REQUEST,
            mac="52:54:00:00:00:07",
            requested="10.0.5.7",
            server_id=str(SERVER),
            **ws7,  # type: ignore[arg-type]
        ),
    )
    assert mtype(ack) == MessageType.ACK
    assert store.rows[IPv4Address("10.0.5.7")].client == "id:" + b"ws-7".hex(":")


async def test_a_reserved_address_is_never_given_to_another_client() -> None:
    service, _, _ = make_service()
    # 10.0.5.11 is a host's; another client asking for it gets a pool address, or a NAK.
    offer = await ask(service, request(MessageType.DISCOVER, giaddr=RELAY, requested="10.0.5.11"))
    assert offer is not None and offer.packet.yiaddr == IPv4Address("10.0.5.100")
    nak = await ask(service, request(MessageType.REQUEST, giaddr=RELAY, requested="10.0.5.11"))
    assert nak is not None and nak.packet.get(Opt.MESSAGE) == b"10.0.5.11 is not in the pool"


async def test_a_reservation_inside_a_pool_is_kept_out_of_it() -> None:
    service, _, _ = make_service()
    with_inventory(
        service, m=Machine("m", mac="52:54:00:00:00:0d", address=IPv4Address("10.0.5.100"))
    )
    offer = await ask(service, request(MessageType.DISCOVER, giaddr=RELAY))
    assert offer is not None and offer.packet.yiaddr == IPv4Address("10.0.5.101")
    nak = await ask(service, request(MessageType.REQUEST, giaddr=RELAY, requested="10.0.5.100"))
    assert nak is not None and nak.packet.get(Opt.MESSAGE) == b"10.0.5.100 is reserved for m"


async def test_a_host_without_an_address_gets_its_name_and_a_pool_address() -> None:
    service, _, _ = make_service()
    offer = await ask(service, request(MessageType.DISCOVER, mac="52:54:00:00:00:0c"))
    assert offer is not None and offer.packet.yiaddr == IPv4Address("10.99.0.100")
    assert offer.packet.get(Opt.HOST_NAME) == b"named-only"


async def test_a_host_reserved_on_another_subnet_is_not_offered_here(
    caplog: pytest.LogCaptureFixture,
) -> None:
    service, _, _ = make_service()
    with caplog.at_level(logging.WARNING, logger="netbootd.dhcp"):
        offer = await ask(service, request(MessageType.DISCOVER, client_id=b"ws-7"))
    assert offer is not None and offer.packet.yiaddr == IPv4Address("10.99.0.100")
    assert "reservation-unusable" in caplog.text


# -- BOOTP -------------------------------------------------------------------------------------


async def test_a_bootp_client_with_a_reservation_gets_a_bootreply() -> None:
    service, store, _ = make_service()
    bootp = request(None, mac="52:54:00:00:00:0b", giaddr=RELAY, extra=((Opt.AGENT_INFO, AGENT),))
    reply = await ask(service, bootp)
    assert reply is not None
    p = reply.packet
    assert p.op == Op.BOOTREPLY and p.message_type is None and Opt.SERVER_ID not in p
    assert p.yiaddr == IPv4Address("10.0.5.11") and p.siaddr == SERVER
    assert p.get(Opt.SUBNET_MASK) == IPv4Address("255.255.255.0").packed
    assert p.get(Opt.ROUTER) == IPv4Address("10.0.5.1").packed
    assert p.get(Opt.HOST_NAME) == b"old-bootp"
    assert p.options[-1] == (Opt.AGENT_INFO, AGENT)
    assert (reply.address, reply.port) == (IPv4Address(RELAY), 67)
    wire = encode(p)
    assert len(wire) == 300 and wire[HEADER_SIZE : HEADER_SIZE + 4] == MAGIC_COOKIE
    assert store.rows == {}  # a reservation needs no lease
    assert service.counters["BOOTP:BOOTREPLY"] == 1


async def test_a_bootp_client_with_a_boot_file_host_entry_gets_it() -> None:
    service, _, _ = make_service()
    reply = await ask(service, request(None, mac="52:54:00:00:00:07", client_id=b"ws-7"))
    assert reply is None  # ws-7's address is on the relayed subnet, not here
    reply = await ask(
        service, request(None, mac="52:54:00:00:00:07", client_id=b"ws-7", giaddr=RELAY)
    )
    assert reply is not None
    assert reply.packet.file == b"special.0" and reply.packet.siaddr == IPv4Address("10.0.5.3")


async def test_a_bootp_client_without_a_reservation_is_ignored_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    service, store, _ = make_service()
    with caplog.at_level(logging.INFO, logger="netbootd.dhcp"):
        reply = await ask(service, request(None, mac="52:54:00:00:00:42", giaddr=RELAY))
    assert reply is None and store.rows == {}
    assert service.counters["bootp-unanswered"] == 1
    event, fields = parse_event(caplog.records[-1].getMessage())
    assert (event, fields["decision"]) == ("BOOTP", "ignored")
    assert fields["reason"] == (
        "BOOTP request with no reservation on [[subnets]] #2 (10.0.5.0/24), and dynamic-bootp "
        "is off"
    )


async def test_dynamic_bootp_leases_a_pool_address_durably_for_ever() -> None:
    service, store, clock = make_service(dynamic_bootp=True)
    first = await ask(service, request(None, mac="52:54:00:00:00:42", giaddr=RELAY))
    assert first is not None and first.packet.yiaddr == IPv4Address("10.0.5.100")
    lease = store.rows[IPv4Address("10.0.5.100")]
    assert lease.state is LeaseState.BOUND and lease.expires == float("inf")
    clock.now += 10 * 365 * 86400
    again = await ask(service, request(None, mac="52:54:00:00:00:42", giaddr=RELAY))
    assert again is not None and again.packet.yiaddr == IPv4Address("10.0.5.100")
    other = await ask(service, request(None, mac="52:54:00:00:00:43", giaddr=RELAY))
    assert other is not None and other.packet.yiaddr == IPv4Address("10.0.5.101")


async def test_dynamic_bootp_meets_the_cap_on_leases() -> None:
    service, store, _ = make_service(dynamic_bootp=True)
    service.settings = dataclasses.replace(service.settings, limits=DhcpLimits(max_leases=1))
    first = await ask(service, request(None, mac="52:54:00:00:00:42", giaddr=RELAY))
    assert first is not None and first.packet.yiaddr == IPv4Address("10.0.5.100")
    # The first pool is at its cap: the next client gets the second pool's address.
    second = await ask(service, request(None, mac="52:54:00:00:00:43", giaddr=RELAY))
    assert second is not None and second.packet.yiaddr == IPv4Address("10.0.5.150")
    # A BOOTP lease is for good: a flood of made-up MACs must not take the pools with them.
    assert await ask(service, request(None, mac="52:54:00:00:00:44", giaddr=RELAY)) is None
    assert service.counters["refused-new-client"] == 1 and len(store.rows) == 2
    # The client it knows is still answered.
    assert await ask(service, request(None, mac="52:54:00:00:00:42", giaddr=RELAY)) is not None


async def test_dynamic_bootp_sends_no_reply_when_the_lease_cannot_be_stored() -> None:
    service, store, _ = make_service(dynamic_bootp=True)
    store.fail = True
    assert await ask(service, request(None, mac="52:54:00:00:00:42", giaddr=RELAY)) is None
    assert len(service.book) == 0


async def test_a_proxy_ignores_bootp() -> None:
    settings = DhcpSettings(mode=DhcpMode.PROXY, server=SERVER, network=LOCAL_NET)
    service = DhcpService(settings, BootPolicy({}, SERVER, 80))
    assert await ask(service, request(None)) is None
