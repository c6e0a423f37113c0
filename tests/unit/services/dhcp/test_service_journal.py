"""The DHCP service tells the boot journal of each transaction: one record, its fields."""

from __future__ import annotations

from netbootd.boot.inventory import Machine
from netbootd.config import DhcpMode
from netbootd.proto.dhcp.codec import MessageType
from netbootd.services.dhcp.service import DhcpService
from netbootd.services.journal import Journal
from tests.helpers.dhcp_clients import BIOS_PXE, UEFI_HTTP, request
from tests.helpers.dhcp_service import SERVER, Clock, ask, make_service, with_inventory

MAC = "52:54:00:12:34:56"


def journaled(
    mode: DhcpMode = DhcpMode.AUTHORITATIVE, **boot: str
) -> tuple[DhcpService, Journal, Clock]:
    service, _, clock = make_service(mode, **boot)
    journal = Journal(clock=clock)
    service.journal = journal
    return service, journal, clock


async def test_an_exchange_is_two_events_with_decision_address_and_file() -> None:
    service, journal, clock = journaled(bios="pxelinux.0")
    await ask(service, request(MessageType.DISCOVER, vendor_class=BIOS_PXE, arch=0))
    clock.now += 1
    await ask(
        service,
        request(
            MessageType.REQUEST,
            vendor_class=BIOS_PXE,
            arch=0,
            requested="10.99.0.100",
            server_id=str(SERVER),
        ),
    )
    offer, ack = journal.take()
    assert (offer.time, offer.mac, offer.address, offer.service, offer.kind) == (
        1000.0,
        MAC,
        "10.99.0.100",
        "dhcp",
        "DISCOVER",
    )
    assert offer.fields == {
        "decision": "OFFER",
        "address": "10.99.0.100",
        "file": "pxelinux.0",
        "why": offer.get("why"),
        "client": "pxe",
        "arch": "bios",
        "port": "67",
    }
    assert offer.get("why")  # the boot decision's reason, whatever its words
    assert (ack.time, ack.kind, ack.get("decision"), ack.address) == (
        1001.0,
        "REQUEST",
        "ACK",
        "10.99.0.100",
    )


async def test_an_ignored_request_is_told_with_its_reason() -> None:
    service, journal, _ = journaled()
    # A REQUEST for another server: silence, and why.
    await ask(
        service,
        request(
            MessageType.REQUEST,
            vendor_class=BIOS_PXE,
            arch=0,
            requested="10.99.0.7",
            server_id="10.99.0.9",
        ),
    )
    (event,) = journal.take()
    assert event.get("decision") == "ignored"
    assert event.get("reason")
    assert event.get("client") == "pxe" and event.address == ""


async def test_a_release_is_told_with_the_clients_address() -> None:
    service, journal, _ = journaled()
    pxe = {"vendor_class": BIOS_PXE, "arch": 0}
    await ask(service, request(MessageType.DISCOVER, **pxe))
    await ask(
        service,
        request(MessageType.REQUEST, requested="10.99.0.100", server_id=str(SERVER), **pxe),
    )
    journal.take()
    await ask(
        service,
        request(MessageType.RELEASE, ciaddr="10.99.0.100", server_id=str(SERVER), **pxe),
    )
    (release,) = journal.take()
    assert release.kind == "RELEASE" and release.address == "10.99.0.100"


async def test_a_client_that_does_not_network_boot_is_not_told() -> None:
    """A laptop's lease, or the installed system renewing its own: not a boot."""
    service, journal, _ = journaled()
    await ask(service, request(MessageType.DISCOVER))
    await ask(service, request(MessageType.REQUEST, requested="10.99.0.100", server_id=str(SERVER)))
    assert journal.take() == []
    assert service.counters["DISCOVER:OFFER"] == 1  # counted all the same


async def test_a_relayed_request_names_its_relay_and_the_machine_its_name() -> None:
    service, journal, _ = journaled(bios="pxelinux.0")
    with_inventory(service, web1=Machine("web1", mac=MAC, profile="p"))
    await ask(
        service,
        request(MessageType.DISCOVER, vendor_class=BIOS_PXE, arch=0, giaddr="10.99.0.2"),
        source=("10.99.0.2", 67),
    )
    (event,) = journal.take()
    assert event.get("relay") == "10.99.0.2"
    assert event.get("machine") == "web1"


async def test_proxy_answers_on_67_and_4011_are_told() -> None:
    service, journal, _ = journaled(DhcpMode.PROXY)
    await ask(service, request(MessageType.DISCOVER, vendor_class=BIOS_PXE, arch=0))
    await ask(
        service,
        request(MessageType.REQUEST, vendor_class=BIOS_PXE, arch=0, ciaddr="10.99.0.57"),
        port=4011,
        source=("10.99.0.57", 4011),
    )
    await ask(service, request(MessageType.DISCOVER, vendor_class=UEFI_HTTP, arch=16))
    discover, at_4011, http_boot = journal.take()
    # A proxy's offer gives no address: none is told.
    assert (discover.get("decision"), discover.address, discover.get("file")) == (
        "PROXY-OFFER",
        "",
        "undionly.kpxe",
    )
    assert (at_4011.kind, at_4011.get("decision"), at_4011.get("port")) == (
        "REQUEST",
        "PROXY-ACK",
        "4011",
    )
    assert at_4011.address == "10.99.0.57"  # its ciaddr
    assert http_boot.get("client") == "uefi-http"
    assert http_boot.get("file") == "http://10.99.0.1/snponly.efi"


async def test_a_request_with_no_mac_is_not_told() -> None:
    service, journal, _ = journaled()
    await ask(
        service,
        request(MessageType.DISCOVER, mac="", client_id=b"\x00name", vendor_class=BIOS_PXE),
    )
    assert journal.take() == []


async def test_no_journal_no_record() -> None:
    service, _, _ = make_service()
    assert service.journal is None
    assert await ask(service, request(MessageType.DISCOVER)) is not None
