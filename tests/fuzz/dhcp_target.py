"""The DHCP fuzz target: one datagram through the decoder, the service and the encoder.

:func:`check` is the whole target: a datagram either fails to decode with ``DhcpDecodeError``
(the only exception a peer may cause) or decodes, renders for the log, re-encodes, and goes
through a DHCP service (authoritative and proxy, fake clock, leases in memory) whose reply is
fitted and encoded. Anything else raised is a bug.

:data:`fuzz_one_input` is the same target driven by Hypothesis, for an external fuzzer that
feeds it raw bytes (atheris, libFuzzer, AFL via python-afl)::

    import atheris
    from tests.fuzz.dhcp_target import fuzz_one_input
    atheris.Setup(sys.argv, fuzz_one_input)
    atheris.Fuzz()

``tests/fuzz/run_dhcp.py`` is a self-contained mutation loop over the same target.
"""

from __future__ import annotations

import dataclasses
from ipaddress import IPv4Address, IPv4Network

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netbootd.boot.client import BootClass
from netbootd.boot.leases import AddressRange, LeaseBook
from netbootd.boot.policy import BootPolicy
from netbootd.config import DhcpMode
from netbootd.proto.dhcp.codec import (
    DhcpDecodeError,
    DhcpPacket,
    MessageType,
    Opt,
    decode,
    describe,
    encode,
    ip_option,
    ips_option,
    u16_option,
)
from netbootd.proto.dhcp.wire import PXE_PORT
from netbootd.services.dhcp.service import DhcpService
from netbootd.services.dhcp.settings import DhcpSettings
from netbootd.services.dhcp.transaction import Pending
from tests.helpers.dhcp_clients import BIOS_PXE, UEFI_HTTP, UEFI_PXE, request
from tests.helpers.dhcp_service import one_subnet

SERVER = IPv4Address("10.99.0.1")
NETWORK = IPv4Network("10.99.0.0/24")
POOL = AddressRange.parse("10.99.0.100-10.99.0.200")
BOOT = {
    BootClass.BIOS: "pxelinux.0",
    BootClass.UEFI: "ipxe.efi",
    BootClass.UEFI_HTTP: "ipxe.efi",
    BootClass.IPXE: "boot.ipxe",
}


class _Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _service(mode: DhcpMode, clock: _Clock) -> DhcpService:
    settings = DhcpSettings(
        mode=mode,
        server=SERVER,
        network=NETWORK,
        subnets=one_subnet(
            NETWORK,
            POOL,
            lease_time=600,
            routers=(SERVER,),
            dns_servers=(SERVER,),
            domain_name="lab.example",
            options=((42, ips_option([SERVER])), (119, b"\x03lab\x00" * 60)),
        )
        if mode is DhcpMode.AUTHORITATIVE
        else (),
    )
    policy = BootPolicy(dict(BOOT), SERVER, 80)
    # No lease store: a transaction concludes at once, without an event loop per input.
    return DhcpService(settings, policy, LeaseBook(), None, clock)


_CLOCK = _Clock()
_SERVICES = (_service(DhcpMode.AUTHORITATIVE, _CLOCK), _service(DhcpMode.PROXY, _CLOCK))


def check(data: bytes) -> None:
    """Run one datagram through everything a peer's bytes reach; raise only on a bug."""
    try:
        packet = decode(data)
    except DhcpDecodeError:
        return
    describe(packet)
    again = decode(encode(packet, max_size=65535))
    assert dict(again.options) == dict(packet.options)
    assert dataclasses.replace(again, options=()) == dataclasses.replace(packet, options=())
    _CLOCK.now += 0.5  # offers expire as the run goes on
    port = PXE_PORT if data[-1:] == b"\x01" else 67
    for service in _SERVICES:
        reply = service.answer(packet, local_port=port, source=("10.99.0.9", 68))
        assert not isinstance(reply, Pending), "without a store, nothing waits"
        if reply is not None:
            wire = encode(reply.packet, max_size=reply.max_size)
            assert len(wire) <= max(reply.max_size, 576) - 28


def seeds() -> list[bytes]:
    """Valid datagrams built from the RFC 2131/2132 layouts, one per kind of client message."""
    small = ((Opt.MAX_MESSAGE_SIZE, u16_option(576)), (Opt.PARAMETER_LIST, bytes(range(1, 130))))
    packets: list[DhcpPacket] = [
        request(MessageType.DISCOVER, vendor_class=BIOS_PXE, arch=0, uuid=True),
        request(MessageType.DISCOVER, vendor_class=UEFI_PXE, arch=7, ipxe=True),
        request(MessageType.DISCOVER, vendor_class=UEFI_HTTP, arch=16, extra=small),
        request(MessageType.DISCOVER, giaddr="10.99.0.2", client_id=b"\x01\x52\x54\x00\x12"),
        request(MessageType.REQUEST, requested="10.99.0.100", server_id=str(SERVER)),
        request(MessageType.REQUEST, ciaddr="10.99.0.100"),
        request(MessageType.REQUEST, requested="10.99.0.150"),
        request(MessageType.REQUEST, vendor_class=BIOS_PXE, arch=0, ciaddr="10.99.0.57"),
        request(MessageType.INFORM, ciaddr="10.99.0.7", extra=small),
        request(MessageType.RELEASE, ciaddr="10.99.0.100"),
        request(MessageType.DECLINE, requested="10.99.0.100", server_id=str(SERVER)),
        request(None),  # plain BOOTP
        request(
            MessageType.DISCOVER,
            extra=((Opt.HOST_NAME, b"h" * 300), (Opt.AGENT_INFO, bytes([1, 4, 0, 0, 0, 1]))),
        ),  # RFC 3396: a host name split over two instances
    ]
    wires = [encode(packet, max_size=1500) for packet in packets]
    # A reply with options overloaded into file and sname (RFC 2132 §9.3).
    overloaded = DhcpPacket(
        op=2,
        xid=1,
        chaddr=bytes(6),
        options=(
            (Opt.SERVER_ID, ip_option(SERVER)),
            *((code, bytes([code]) * 60) for code in range(100, 107)),
        ),
    )
    wires.append(encode(overloaded))
    return wires


@settings(
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
@given(st.binary(max_size=1500) | st.sampled_from(seeds()))
def fuzz_dhcp(data: bytes) -> None:
    """The Hypothesis form of :func:`check`."""
    check(data)


fuzz_one_input = fuzz_dhcp.hypothesis.fuzz_one_input
