"""BOOTP clients (RFC 951, RFC 1497) answered by an authoritative server.

A BOOTREQUEST without a DHCP message type gets a BOOTREPLY with the client's reserved address;
without a reservation, an address from the pools if the subnet says ``dynamic-bootp`` (as
dhcpd's), bound for good before the reply leaves. The reply's layout (the 64-octet vendor
area) is :func:`netbootd.boot.bootp.bootp_reply`'s. No sockets, no clock but the service's.
"""

from __future__ import annotations

import logging
from ipaddress import IPv4Address
from typing import TYPE_CHECKING

from netbootd.boot.bootp import bootp_reply
from netbootd.boot.client import ClientInfo
from netbootd.boot.leases import Lease, LeaseState, choose_address, client_key
from netbootd.boot.subnets import Subnet, with_agent_info
from netbootd.logs.events import format_event
from netbootd.proto.dhcp.codec import DhcpPacket, Opt, ip_option
from netbootd.proto.dhcp.size import max_message_size
from netbootd.proto.dhcp.wire import reply_destination
from netbootd.services.dhcp.authoritative import bind, open_pools, reservation
from netbootd.services.dhcp.reply import (
    choose_boot,
    network_options,
    next_server,
    override,
    own_options,
)
from netbootd.services.dhcp.transaction import Outcome, Reply, Step

if TYPE_CHECKING:
    from netbootd.services.dhcp.service import DhcpService

__all__ = ["FOREVER", "answer_bootp"]

log = logging.getLogger("netbootd.dhcp")

FOREVER = float("inf")  # the end of a lease that never ends (RFC 2131 §3.3: all ones)


def answer_bootp(
    service: DhcpService, request: DhcpPacket, client: ClientInfo, outcome: Outcome, subnet: Subnet
) -> Step:
    """A BOOTREPLY from the client's reservation, or from the pools with dynamic BOOTP."""
    now = service.clock()
    key = client_key(request.mac, request.get(Opt.CLIENT_ID))
    address = reservation(service, request, key, now, subnet)
    settings = subnet.settings
    if address is None:
        if not settings.dynamic_bootp:
            service.counters["bootp-unanswered"] += 1
            outcome.notable = True
            outcome.reason = (
                f"BOOTP request with no reservation on {subnet}, and dynamic-bootp is off"
            )
            return None
        pools = subnet.pools
        if pools and service.book.of(key) is None:
            # A lease for good, for a client with no record: the caps on leases hold.
            pools = open_pools(service, request, outcome, subnet, now, offering=False)
            if not pools:
                return None
        address = choose_address(pools, service.book, key, now, reserved=service.reservations)
        if address is None:
            outcome.reason = f"no free address in the pools of {subnet} for BOOTP"
            return None
        # dhcpd's dynamic-bootp: a BOOTP client never renews nor releases, so its lease
        # lasts as configured, forever by default, and is durable before the reply.
        length = settings.bootp_lease_time
        expires = FOREVER if length is None else now + length
        lease = Lease(address, key, request.mac, LeaseState.BOUND, expires)
        chosen = address
        return bind(
            service,
            lease,
            outcome,
            lambda: bootreply(service, request, client, outcome, subnet, address=chosen),
        )
    return bootreply(service, request, client, outcome, subnet, address=address)


def bootreply(
    service: DhcpService,
    request: DhcpPacket,
    client: ClientInfo,
    outcome: Outcome,
    subnet: Subnet,
    *,
    address: IPv4Address,
) -> Reply:
    """The BOOTREPLY giving ``address``: every network option, as BOOTP has no option 55."""
    host = service.reservations.host(request)
    boot, _ = choose_boot(service, client, address, host)
    outcome.boot = boot
    options: list[tuple[int, bytes]] = [(Opt.SUBNET_MASK, ip_option(subnet.network.netmask))]
    options += network_options(service, request, subnet, host, requested_only=False)
    options = override(options, own_options(subnet, host), request, requested_only=False)
    file_field = boot.filename.encode() if boot.filename is not None else b""
    built = bootp_reply(
        request,
        yiaddr=address,
        siaddr=next_server(service, host),
        file=file_field,
        options=with_agent_info(request, options),
    )
    if built.left_out:
        log.warning(
            format_event(
                "bootp-options-left-out",
                mac=request.mac,
                options=",".join(str(code) for code in built.left_out),
                why="they do not fit the 64-octet BOOTP vendor area",
            )
        )
    outcome.decision, outcome.address = "BOOTREPLY", address
    address_to, port = reply_destination(request, None)
    return Reply(built.packet, address_to, port, max_message_size(request))
