"""The DHCP service in process: RFC 2131 exchanges, proxyDHCP, replies, logs."""

from __future__ import annotations

import logging
from ipaddress import IPv4Address

import pytest

from netbootd.boot.inventory import Machine
from netbootd.boot.leases import Lease, LeaseState
from netbootd.config import DhcpMode
from netbootd.logs.events import parse_event
from netbootd.proto.dhcp.codec import MessageType, Op, Opt, decode_ip, decode_u32
from tests.helpers.dhcp_clients import BIOS_PXE, UEFI_HTTP, UUID_OPTION, request
from tests.helpers.dhcp_service import (
    BCAST,
    POOL,
    SERVER,
    ask,
    make_service,
    mtype,
    with_inventory,
    with_subnet_settings,
)


async def test_bios_pxe_discover_request_ack() -> None:
    service, store, _ = make_service(bios="pxelinux.0")
    offer = await ask(
        service, request(MessageType.DISCOVER, vendor_class=BIOS_PXE, arch=0, uuid=True)
    )
    assert mtype(offer) == MessageType.OFFER
    assert offer is not None
    p = offer.packet
    assert p.op == Op.BOOTREPLY and p.xid == 0x1234ABCD
    assert p.yiaddr == IPv4Address("10.99.0.100")
    assert p.siaddr == SERVER
    assert p.file == b"pxelinux.0"
    assert p.get(Opt.BOOTFILE) == b"pxelinux.0"
    assert p.get(Opt.TFTP_SERVER) == b"10.99.0.1"
    assert decode_ip(p.get(Opt.SERVER_ID) or b"") == SERVER
    assert decode_ip(p.get(Opt.SUBNET_MASK) or b"") == IPv4Address("255.255.255.0")
    assert decode_ip(p.get(Opt.ROUTER) or b"") == SERVER
    assert decode_u32(p.get(Opt.LEASE_TIME) or b"") == 600
    assert p.get(Opt.VENDOR_CLASS) == b"PXEClient"
    assert p.get(Opt.CLIENT_UUID) == UUID_OPTION
    assert (offer.address, offer.port) == (BCAST, 68)
    assert store.rows == {}  # an offer is not a lease

    ack = await ask(
        service,
        request(
            MessageType.REQUEST,
            vendor_class=BIOS_PXE,
            arch=0,
            requested="10.99.0.100",
            server_id="10.99.0.1",
        ),
    )
    assert mtype(ack) == MessageType.ACK
    assert ack is not None and ack.packet.yiaddr == IPv4Address("10.99.0.100")
    lease = store.rows[IPv4Address("10.99.0.100")]
    assert lease.state is LeaseState.BOUND and lease.expires == 1600.0


async def test_second_client_gets_another_address_and_full_pool_is_silent() -> None:
    service, _, _ = make_service()
    first = await ask(service, request(MessageType.DISCOVER, mac="02:00:00:00:00:01"))
    second = await ask(service, request(MessageType.DISCOVER, mac="02:00:00:00:00:02"))
    assert first is not None and second is not None
    assert first.packet.yiaddr != second.packet.yiaddr
    # A pool full of offers gives a new client the oldest of them.
    third = await ask(service, request(MessageType.DISCOVER, mac="02:00:00:00:00:03"))
    assert third is not None and third.packet.yiaddr == first.packet.yiaddr
    assert service.counters["offer-reclaimed"] == 1
    # A pool full of leases is silent.
    for mac, offer in (("02:00:00:00:00:02", second), ("02:00:00:00:00:03", third)):
        address = str(offer.packet.yiaddr)
        ack = await ask(
            service, request(MessageType.REQUEST, mac=mac, requested=address, server_id="10.99.0.1")
        )
        assert mtype(ack) == MessageType.ACK
    assert await ask(service, request(MessageType.DISCOVER, mac="02:00:00:00:00:04")) is None
    assert service.counters["DISCOVER:ignored"] == 1


async def test_full_pool_warns_once_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    service, _, clock = make_service()
    for n in (1, 2):  # both addresses of the pool bound
        mac = f"02:00:00:00:00:0{n}"
        offer = await ask(service, request(MessageType.DISCOVER, mac=mac))
        assert offer is not None
        address, server = str(offer.packet.yiaddr), "10.99.0.1"
        ack = await ask(
            service,
            request(MessageType.REQUEST, mac=mac, requested=address, server_id=server),
        )
        assert mtype(ack) == MessageType.ACK
    caplog.set_level(logging.WARNING, logger="netbootd.dhcp")

    def warnings() -> list[dict[str, str]]:
        found = [parse_event(r.getMessage()) for r in caplog.records]
        return [fields for event, fields in found if event == "pool-full"]

    for n in range(20):  # a flood of new MACs
        assert (
            await ask(service, request(MessageType.DISCOVER, mac=f"02:00:00:00:01:{n:02x}")) is None
        )
    assert service.counters["pool-full"] == 20
    assert [w["turned_away"] for w in warnings()] == ["1"]
    clock.now += 61
    assert await ask(service, request(MessageType.DISCOVER, mac="02:00:00:00:02:00")) is None
    # The next line says how many were turned away since the last one.
    assert [w["turned_away"] for w in warnings()] == ["1", "20"]
    assert warnings()[1]["mac"] == "02:00:00:00:02:00"


async def test_plain_client_gets_no_boot_file() -> None:
    service, _, _ = make_service()
    offer = await ask(service, request(MessageType.DISCOVER))
    assert offer is not None
    assert offer.packet.file == b"" and offer.packet.get(Opt.BOOTFILE) is None
    assert offer.packet.get(Opt.VENDOR_CLASS) is None


async def test_request_for_another_server_drops_our_offer() -> None:
    service, _, _ = make_service()
    await ask(service, request(MessageType.DISCOVER))
    reply = await ask(
        service,
        request(MessageType.REQUEST, requested="10.99.0.100", server_id="10.99.0.254"),
    )
    assert reply is None
    assert service.book.at(IPv4Address("10.99.0.100")) is None


@pytest.mark.parametrize(
    ("requested", "reason"),
    [
        ("10.99.1.5", "not on this network"),
        ("10.99.0.50", "not in the pool"),
        ("10.99.0.101", "10.99.0.101 is not this client's: no record of it"),
    ],
)
async def test_init_reboot_nak(requested: str, reason: str) -> None:
    service, _, _ = make_service()
    nak = await ask(service, request(MessageType.REQUEST, requested=requested))
    assert mtype(nak) == MessageType.NAK
    assert nak is not None and (nak.address, nak.port) == (BCAST, 68)
    assert reason in (nak.packet.get(Opt.MESSAGE) or b"").decode()
    assert nak.packet.yiaddr == IPv4Address(0)


async def test_init_reboot_gets_back_only_the_clients_own_address() -> None:
    service, _, _ = make_service()
    await ask(service, request(MessageType.DISCOVER))
    ack = await ask(
        service, request(MessageType.REQUEST, requested="10.99.0.100", server_id="10.99.0.1")
    )
    assert mtype(ack) == MessageType.ACK
    # Back from a reboot, asking for its own address: ACK; for another one: NAK, so that it
    # starts over with a DISCOVER at once (RFC 2131 §4.3.2).
    again = await ask(service, request(MessageType.REQUEST, requested="10.99.0.100"))
    assert mtype(again) == MessageType.ACK
    wrong = await ask(service, request(MessageType.REQUEST, requested="10.99.0.101"))
    assert mtype(wrong) == MessageType.NAK
    assert b"its lease is 10.99.0.100" in (wrong.packet.get(Opt.MESSAGE) or b"")  # type: ignore[union-attr]


async def test_address_of_another_client_is_naked() -> None:
    service, _, _ = make_service()
    await ask(service, request(MessageType.DISCOVER, mac="02:00:00:00:00:01"))
    nak = await ask(
        service,
        request(MessageType.REQUEST, mac="02:00:00:00:00:02", requested="10.99.0.100"),
    )
    assert mtype(nak) == MessageType.NAK


async def test_renew_release_and_reuse() -> None:
    service, store, clock = make_service()
    await ask(service, request(MessageType.DISCOVER))
    await ask(service, request(MessageType.REQUEST, requested="10.99.0.100", server_id="10.99.0.1"))
    clock.now += 300
    renew = await ask(
        service, request(MessageType.REQUEST, ciaddr="10.99.0.100"), source=("10.99.0.100", 68)
    )
    assert mtype(renew) == MessageType.ACK
    assert renew is not None and (renew.address, renew.port) == (IPv4Address("10.99.0.100"), 68)
    assert store.rows[IPv4Address("10.99.0.100")].expires == clock.now + 600
    await ask(service, request(MessageType.RELEASE, ciaddr="10.99.0.100", server_id="10.99.0.1"))
    assert store.rows == {}
    other = await ask(service, request(MessageType.DISCOVER, mac="02:00:00:00:00:09"))
    assert other is not None and other.packet.yiaddr == IPv4Address("10.99.0.100")


async def test_decline_quarantines_the_address() -> None:
    service, store, _ = make_service()
    await ask(service, request(MessageType.DISCOVER))
    await ask(service, request(MessageType.REQUEST, requested="10.99.0.100", server_id="10.99.0.1"))
    await ask(service, request(MessageType.DECLINE, requested="10.99.0.100", server_id="10.99.0.1"))
    assert store.rows[IPv4Address("10.99.0.100")].state is LeaseState.DECLINED
    again = await ask(service, request(MessageType.DISCOVER))
    assert again is not None and again.packet.yiaddr == IPv4Address("10.99.0.101")
    # The client's new offer does not take the quarantine away: the address stays out.
    held = service.book.at(IPv4Address("10.99.0.100"))
    assert held is not None and held.state is LeaseState.DECLINED
    # .101 is offered, .100 quarantined: the oldest offer goes to a new client first, then,
    # the pool otherwise full, the quarantined address.
    other = await ask(service, request(MessageType.DISCOVER, mac="02:00:00:00:00:09"))
    assert other is not None and other.packet.yiaddr == IPv4Address("10.99.0.101")
    ack = await ask(
        service,
        request(
            MessageType.REQUEST,
            mac="02:00:00:00:00:09",
            requested="10.99.0.101",
            server_id="10.99.0.1",
        ),
    )
    assert mtype(ack) == MessageType.ACK
    last = await ask(service, request(MessageType.DISCOVER, mac="02:00:00:00:00:0a"))
    assert last is not None and last.packet.yiaddr == IPv4Address("10.99.0.100")
    assert service.counters["quarantine-reclaimed"] == 1


async def test_a_broken_option_57_costs_no_lease() -> None:
    service, store, _ = make_service()
    await ask(service, request(MessageType.DISCOVER))
    broken = request(
        MessageType.REQUEST,
        requested="10.99.0.100",
        server_id="10.99.0.1",
        extra=((Opt.MAX_MESSAGE_SIZE, b"\x05\xdc\x00"),),
    )
    assert await ask(service, broken) is None
    assert store.rows == {}  # refused before anything was written
    assert service.counters["bad-request:option"] == 1


async def test_a_nak_through_a_relay_asks_for_broadcast() -> None:
    service, _, _ = make_service()
    nak = await ask(
        service, request(MessageType.REQUEST, requested="10.99.0.50", giaddr="10.99.0.2")
    )
    assert mtype(nak) == MessageType.NAK and nak is not None
    assert nak.packet.broadcast  # RFC 2131 §4.3.2: the relay must broadcast it to the client
    assert (nak.address, nak.port) == (IPv4Address("10.99.0.2"), 67)


async def test_no_ack_when_the_lease_cannot_be_stored() -> None:
    service, store, _ = make_service()
    await ask(service, request(MessageType.DISCOVER))
    store.fail = True
    reply = await ask(
        service, request(MessageType.REQUEST, requested="10.99.0.100", server_id="10.99.0.1")
    )
    assert reply is None
    assert service.book.at(IPv4Address("10.99.0.100")) is not None  # the offer is kept


async def test_relayed_discover_goes_back_to_the_relay() -> None:
    service, _, _ = make_service()
    offer = await ask(service, request(MessageType.DISCOVER, giaddr="10.99.0.2"))
    assert offer is not None and (offer.address, offer.port) == (IPv4Address("10.99.0.2"), 67)
    foreign = await ask(service, request(MessageType.DISCOVER, giaddr="192.0.2.1"))
    assert foreign is None


async def test_inform_gets_options_without_lease() -> None:
    service, _, _ = make_service()
    ack = await ask(
        service, request(MessageType.INFORM, ciaddr="10.99.0.7"), source=("10.99.0.7", 68)
    )
    assert mtype(ack) == MessageType.ACK
    assert ack is not None and ack.packet.yiaddr == IPv4Address(0)
    assert ack.packet.get(Opt.LEASE_TIME) is None
    assert ack.address == IPv4Address("10.99.0.7")


async def test_bootp_and_replies_are_ignored() -> None:
    service, _, _ = make_service()
    assert await ask(service, request(None)) is None
    reply_shaped = request(MessageType.DISCOVER)
    from dataclasses import replace

    assert await ask(service, replace(reply_shaped, op=Op.BOOTREPLY)) is None


async def test_malformed_option_content_is_ignored() -> None:
    service, _, _ = make_service()
    bad = request(MessageType.REQUEST, extra=((Opt.REQUESTED_IP, b"\x0a\x63"),))
    assert await ask(service, bad) is None
    assert service.counters["REQUEST:ignored"] == 1


async def test_uefi_http_boot_gets_url_and_httpclient() -> None:
    service, _, _ = make_service()
    offer = await ask(service, request(MessageType.DISCOVER, vendor_class=UEFI_HTTP, arch=16))
    assert offer is not None
    assert offer.packet.get(Opt.VENDOR_CLASS) == b"HTTPClient"
    assert offer.packet.get(Opt.BOOTFILE) == b"http://10.99.0.1/snponly.efi"
    assert offer.packet.get(Opt.TFTP_SERVER) is None


async def test_proxy_offers_boot_information_only() -> None:
    service, store, _ = make_service(DhcpMode.PROXY)
    offer = await ask(
        service, request(MessageType.DISCOVER, vendor_class=BIOS_PXE, arch=0, uuid=True)
    )
    assert mtype(offer) == MessageType.OFFER
    assert offer is not None
    p = offer.packet
    assert p.yiaddr == IPv4Address(0)
    assert p.get(Opt.LEASE_TIME) is None and p.get(Opt.SUBNET_MASK) is None
    assert p.get(Opt.VENDOR_CLASS) == b"PXEClient"
    assert p.get(Opt.CLIENT_UUID) == UUID_OPTION
    assert p.get(Opt.VENDOR_SPECIFIC) == b"\x06\x01\x08\xff"
    assert p.file == b"undionly.kpxe"
    # The site server's job: REQUEST on 67 and non-PXE clients are not ours.
    assert await ask(service, request(MessageType.REQUEST, vendor_class=BIOS_PXE)) is None
    to_site = request(MessageType.REQUEST, vendor_class=BIOS_PXE, server_id="10.99.0.254")
    assert await ask(service, to_site) is None
    assert await ask(service, request(MessageType.DISCOVER)) is None
    # A REQUEST on 67 that names this server (it took the proxy offer as a server's): the boot
    # information again, and no address.
    to_us = request(
        MessageType.REQUEST, vendor_class=BIOS_PXE, arch=0, uuid=True, server_id=str(SERVER)
    )
    again = await ask(service, to_us)
    assert mtype(again) == MessageType.ACK and again is not None
    assert again.packet.yiaddr == IPv4Address(0) and again.packet.get(Opt.LEASE_TIME) is None
    assert again.packet.file == b"undionly.kpxe"
    assert again.packet.get(Opt.CLIENT_UUID) == UUID_OPTION
    ack = await ask(
        service,
        request(MessageType.REQUEST, vendor_class=BIOS_PXE, arch=0, ciaddr="10.99.0.57"),
        port=4011,
        source=("10.99.0.57", 4011),
    )
    assert mtype(ack) == MessageType.ACK
    assert ack is not None and (ack.address, ack.port) == (IPv4Address("10.99.0.57"), 4011)
    assert ack.packet.file == b"undionly.kpxe"
    assert store.rows == {}


async def test_proxy_offers_http_boot_clients_their_url() -> None:
    """EDK2's HTTP Boot takes the site server's offer for its address and a proxy offer with
    no address, HTTPClient and an IP-expressed URL for its boot file (UEFI 2.x §24.7.2.1)."""
    service, store, _ = make_service(DhcpMode.PROXY)
    offer = await ask(service, request(MessageType.DISCOVER, vendor_class=UEFI_HTTP, arch=16))
    assert mtype(offer) == MessageType.OFFER and offer is not None
    p = offer.packet
    assert p.yiaddr == IPv4Address(0)
    assert decode_ip(p.get(Opt.SERVER_ID) or b"") == SERVER
    assert p.get(Opt.VENDOR_CLASS) == b"HTTPClient"
    assert p.get(Opt.BOOTFILE) == p.file == b"http://10.99.0.1/snponly.efi"
    for code in (Opt.LEASE_TIME, Opt.SUBNET_MASK, Opt.TFTP_SERVER, Opt.VENDOR_SPECIFIC):
        assert p.get(code) is None, code
    assert (offer.address, offer.port) == (BCAST, 68)
    # Its REQUEST names the site server: not ours.
    to_site = request(MessageType.REQUEST, vendor_class=UEFI_HTTP, arch=16, server_id="10.99.0.254")
    assert await ask(service, to_site) is None
    assert store.rows == {}


async def test_a_boot_client_not_answered_is_told_at_info(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Whoever wants to network-boot and gets nothing is one INFO line with the reason; a
    client that does not boot from the network stays at debug."""
    service, _, _ = make_service(DhcpMode.PROXY)
    with caplog.at_level(logging.INFO, logger="netbootd.dhcp"):
        to_site = request(MessageType.REQUEST, vendor_class=BIOS_PXE, server_id="10.99.0.254")
        assert await ask(service, to_site) is None
        assert await ask(service, request(MessageType.DISCOVER)) is None
    [(event, fields)] = [parse_event(r.getMessage()) for r in caplog.records]
    assert caplog.records[0].levelno == logging.INFO
    assert (event, fields["decision"], fields["client"]) == ("REQUEST", "ignored", "pxe")
    assert fields["reason"] == "REQUEST on port 67 is the site DHCP server's"
    with caplog.at_level(logging.DEBUG, logger="netbootd.dhcp"):
        assert await ask(service, request(MessageType.DISCOVER)) is None
    event, fields = parse_event(caplog.records[-1].getMessage())
    assert caplog.records[-1].levelno == logging.DEBUG
    assert fields["reason"] == "proxy mode answers PXE and UEFI HTTP Boot clients only"


async def test_transaction_log_line(caplog: pytest.LogCaptureFixture) -> None:
    service, _, _ = make_service(bios="pxelinux.0")
    with caplog.at_level(logging.INFO, logger="netbootd.dhcp"):
        await ask(service, request(MessageType.DISCOVER, vendor_class=BIOS_PXE, arch=0, ipxe=True))
    event, fields = parse_event(caplog.records[-1].getMessage())
    assert event == "DISCOVER"
    assert fields["xid"] == "0x1234abcd"
    assert fields["mac"] == "52:54:00:12:34:56"
    assert fields["vendor_class"] == BIOS_PXE
    assert fields["user_class"] == "iPXE"
    assert fields["arch"] == "bios"
    assert fields["client"] == "ipxe"
    assert fields["decision"] == "OFFER"
    assert fields["address"] == "10.99.0.100"
    assert fields["file"] == "pxelinux.0"


RESERVED = IPv4Address("10.99.0.50")  # outside the pool, on the network


async def test_reserved_address_and_host_name() -> None:
    service, store, _ = make_service()
    with_inventory(
        service,
        web1=Machine("web1", mac="52:54:00:12:34:56", address=RESERVED, hostname="web1"),
    )
    offer = await ask(service, request(MessageType.DISCOVER))
    assert offer is not None and offer.packet.yiaddr == RESERVED
    assert offer.packet.get(Opt.HOST_NAME) == b"web1"
    ack = await ask(
        service, request(MessageType.REQUEST, requested=str(RESERVED), server_id=str(SERVER))
    )
    assert mtype(ack) == MessageType.ACK and RESERVED in store.rows
    # Asking for a pool address instead (an old lease, say) is answered with a NAK.
    nak = await ask(service, request(MessageType.REQUEST, requested="10.99.0.100"))
    assert mtype(nak) == MessageType.NAK
    assert nak is not None and nak.packet.get(Opt.MESSAGE) == b"this client's address is 10.99.0.50"


async def test_reserved_pool_address_is_never_given_to_others() -> None:
    service, _, _ = make_service()
    with_inventory(service, db1=Machine("db1", mac="52:54:00:00:00:77", address=POOL.first))
    offer = await ask(service, request(MessageType.DISCOVER, requested=str(POOL.first)))
    assert offer is not None and offer.packet.yiaddr == POOL.last
    nak = await ask(service, request(MessageType.REQUEST, requested=str(POOL.first)))
    assert nak is not None and nak.packet.get(Opt.MESSAGE) == b"10.99.0.100 is reserved for db1"


async def test_reservation_leased_to_someone_else_falls_back_to_the_pool(
    caplog: pytest.LogCaptureFixture,
) -> None:
    service, _, clock = make_service()
    service.book.put(
        Lease(RESERVED, "01:aa", "aa:aa:aa:aa:aa:aa", LeaseState.BOUND, clock.now + 60)
    )
    with_inventory(service, web1=Machine("web1", mac="52:54:00:12:34:56", address=RESERVED))
    with caplog.at_level(logging.WARNING, logger="netbootd.dhcp"):
        offer = await ask(service, request(MessageType.DISCOVER))
    assert offer is not None and offer.packet.yiaddr == POOL.first
    [(event, fields)] = [parse_event(r.getMessage()) for r in caplog.records]
    assert event == "reservation-unusable" and fields["why"] == "leased to another client"


async def test_firmware_and_ipxe_share_the_reservation_despite_client_ids() -> None:
    # EDK2 and the iPXE it loads send different option 61 values: still one machine.
    service, store, _ = make_service()
    with_inventory(service, web1=Machine("web1", mac="52:54:00:12:34:56", address=RESERVED))
    for client_id in (b"\x00firmware-uuid", b"\x01RT\x00\x124V"):
        ack = await ask(
            service,
            request(
                MessageType.REQUEST,
                requested=str(RESERVED),
                server_id=str(SERVER),
                client_id=client_id,
            ),
        )
        assert mtype(ack) == MessageType.ACK
    assert list(store.rows) == [RESERVED]
    # Another MAC asking for it is still refused.
    other = await ask(
        service, request(MessageType.REQUEST, mac="52:54:00:00:00:01", requested=str(RESERVED))
    )
    assert mtype(other) == MessageType.NAK


async def test_parameter_request_list_and_the_operators_options() -> None:
    service, _, _ = make_service(bios="pxelinux.0")
    with_subnet_settings(
        service,
        dns_servers=(SERVER,),
        options=((42, SERVER.packed), (Opt.VENDOR_SPECIFIC, b"\x06\x01\x03")),
    )
    asks = bytes([Opt.DNS, Opt.SUBNET_MASK, 42, Opt.VENDOR_SPECIFIC])
    offer = await ask(
        service,
        request(
            MessageType.DISCOVER,
            vendor_class=BIOS_PXE,
            arch=0,
            extra=((Opt.PARAMETER_LIST, asks),),
        ),
    )
    assert offer is not None
    codes = [code for code, _ in offer.packet.options]
    assert Opt.ROUTER not in codes and Opt.BROADCAST not in codes  # not asked for
    assert codes.index(Opt.DNS) < codes.index(42)  # in the client's order of preference
    assert offer.packet.get(42) == SERVER.packed
    # The operator's option 43 replaces the built-in PXE one, in its place.
    assert offer.packet.get(Opt.VENDOR_SPECIFIC) == b"\x06\x01\x03"
    assert codes.count(Opt.VENDOR_SPECIFIC) == 1
    assert offer.packet.get(Opt.BOOTFILE) == b"pxelinux.0"  # what makes it boot is always sent

    plain = await ask(service, request(MessageType.DISCOVER, mac="52:54:00:00:00:09"))
    assert plain is not None  # no list: everything
    assert {Opt.ROUTER, Opt.DNS, Opt.BROADCAST, 42} <= {code for code, _ in plain.packet.options}
