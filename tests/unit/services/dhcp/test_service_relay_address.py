"""Relayed requests whose giaddr no relay agent can have are refused: silence, a counter and a
line saying why (RFC 2131 §4.1 sends every reply to giaddr)."""

from __future__ import annotations

import dataclasses
import logging
from ipaddress import IPv4Address, IPv4Network

import pytest

from netbootd.boot.leases import AddressRange
from netbootd.config import DhcpMode
from netbootd.logs.events import parse_event
from netbootd.proto.dhcp.codec import MessageType
from netbootd.services.dhcp.service import DhcpService, relay_fault
from tests.helpers.dhcp_clients import BIOS_PXE, request
from tests.helpers.dhcp_service import SERVER, ask, make_service, mtype, one_subnet

REMOTE = IPv4Network("10.0.5.0/24")

BAD = [
    (str(SERVER), "this server's own address"),
    ("255.255.255.255", "the broadcast address"),
    ("10.99.0.255", "the broadcast address of 10.99.0.0/24"),
    ("10.99.0.0", "the network address of 10.99.0.0/24"),
    ("10.0.5.255", "the broadcast address of 10.0.5.0/24"),
    ("10.0.5.0", "the network address of 10.0.5.0/24"),
    ("0.1.2.3", 'an address of "this network" (0.0.0.0/8)'),
    ("127.0.0.1", "a loopback address"),
    ("224.0.0.1", "a multicast address"),
    ("239.255.255.250", "a multicast address"),
    ("240.0.0.1", "a reserved address (240.0.0.0/4)"),
]


def _service(mode: DhcpMode) -> DhcpService:
    """The interface's network 10.99.0.0/24, and in authoritative mode a relayed one too."""
    service, _, _ = make_service(mode, bios="pxelinux.0")
    if mode is DhcpMode.AUTHORITATIVE:
        remote = one_subnet(REMOTE, AddressRange.parse("10.0.5.100-10.0.5.101"))
        subnets = service.settings.subnets + remote
        service.settings = dataclasses.replace(service.settings, subnets=subnets)
    return service


# A proxy serves no subnet but the interface's: the relayed subnet's edges are the
# authoritative server's to know.
CASES = [
    (mode, giaddr, why)
    for mode in (DhcpMode.AUTHORITATIVE, DhcpMode.PROXY)
    for giaddr, why in BAD
    if mode is DhcpMode.AUTHORITATIVE or not giaddr.startswith("10.0.5.")
]


@pytest.mark.parametrize(("mode", "giaddr", "why"), CASES)
async def test_a_bad_relay_address_is_refused(
    caplog: pytest.LogCaptureFixture, mode: DhcpMode, giaddr: str, why: str
) -> None:
    service = _service(mode)
    discover = request(MessageType.DISCOVER, vendor_class=BIOS_PXE, arch=0, giaddr=giaddr)
    with caplog.at_level(logging.INFO, logger="netbootd.dhcp"):
        assert await ask(service, discover, source=(giaddr, 67)) is None
    assert service.counters["relay-refused"] == 1
    assert service.counters["bad-request:giaddr"] == 1
    [line] = [r for r in caplog.records if r.levelno == logging.WARNING]
    _, fields = parse_event(line.getMessage())
    assert fields["reason"] == f"relayed from {giaddr}, {why}"


@pytest.mark.parametrize("mode", [DhcpMode.AUTHORITATIVE, DhcpMode.PROXY])
async def test_a_relay_agent_on_a_host_address_is_answered(mode: DhcpMode) -> None:
    service = _service(mode)
    relays = ["10.99.0.2", "10.99.0.254"]
    if mode is DhcpMode.AUTHORITATIVE:
        relays += ["10.0.5.1", "10.0.5.254"]
    for number, giaddr in enumerate(relays):
        discover = request(
            MessageType.DISCOVER,
            mac=f"52:54:00:00:00:{number:02x}",
            vendor_class=BIOS_PXE,
            arch=0,
            giaddr=giaddr,
        )
        reply = await ask(service, discover, source=(giaddr, 67))
        assert mtype(reply) == MessageType.OFFER
        assert reply is not None and reply.address == IPv4Address(giaddr)
    assert service.counters["relay-refused"] == 0


def test_the_edges_of_a_point_to_point_link_are_hosts() -> None:
    # RFC 3021: both addresses of a /31 are hosts, and a /32 is the one host.
    service, _, _ = make_service(DhcpMode.PROXY)
    for network, giaddr in (("10.1.0.0/31", "10.1.0.0"), ("10.1.0.1/32", "10.1.0.1")):
        settings = dataclasses.replace(service.settings, network=IPv4Network(network))
        assert relay_fault(IPv4Address(giaddr), settings) == ""


async def test_refusals_are_lines_under_the_budget(caplog: pytest.LogCaptureFixture) -> None:
    service = _service(DhcpMode.AUTHORITATIVE)
    discover = request(MessageType.DISCOVER, giaddr="10.99.0.255")
    with caplog.at_level(logging.WARNING, logger="netbootd.dhcp"):
        for _ in range(500):
            assert await ask(service, discover) is None
    assert service.counters["relay-refused"] == 500
    assert len(caplog.records) < 100  # the rest are counted, not written
