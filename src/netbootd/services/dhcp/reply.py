"""Reply assembly: the options, boot file and addresses of an OFFER, ACK or NAK, and the fit
of a reply into the client's maximum message size.

:func:`offer_or_ack` asks what the client boots (its host entry, else the boot policy, else a
PXE menu) and lays out the options: the lease's, the subnet's that the client asked for
(RFC 2132 §9.8), the PXE or HTTP boot class echo, the boot file, the operator's own options in
place of built-in ones, and the relay agent's last (RFC 3046 §2.2). It decides no lease:
whoever calls it has settled the address. No sockets, no clock.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from ipaddress import IPv4Address
from typing import TYPE_CHECKING

from netbootd.boot.client import ClientInfo
from netbootd.boot.hosts import HostEntry
from netbootd.boot.policy import BootDecision
from netbootd.boot.pxe_menu import USE_BOOTFILE_OPTION, menu_offer
from netbootd.boot.subnets import Subnet, with_agent_info
from netbootd.config import DhcpMode
from netbootd.logs.events import format_event
from netbootd.proto.dhcp.codec import (
    DhcpPacket,
    MessageType,
    Opt,
    ip_option,
    parameter_list,
    reply_to,
)
from netbootd.proto.dhcp.size import fit, max_message_size
from netbootd.proto.dhcp.wire import BROADCAST_FLAG, ZERO, address_text, reply_destination
from netbootd.services.dhcp.transaction import Outcome, Reply

if TYPE_CHECKING:
    from netbootd.services.dhcp.service import DhcpService

__all__ = [
    "choose_boot",
    "fitted",
    "nak",
    "network_options",
    "next_server",
    "offer_or_ack",
    "override",
    "own_options",
    "requested",
]

log = logging.getLogger("netbootd.dhcp")

_MESSAGE_TYPE_VALUES = {mtype: bytes((mtype,)) for mtype in MessageType}


def offer_or_ack(
    service: DhcpService,
    request: DhcpPacket,
    client: ClientInfo,
    mtype: MessageType,
    outcome: Outcome,
    *,
    yiaddr: IPv4Address,
    lease: bool = True,
    subnet: Subnet | None = None,
) -> Reply | None:
    """An OFFER or ACK giving ``yiaddr`` (ZERO: none, as a proxy's or an INFORM's), with the
    lease options when ``lease``, and the network's of ``subnet`` (None for a proxyDHCP, which
    tells no network settings). None when a proxyDHCP has nothing to boot."""
    settings = service.settings
    host = service.reservations.host(request) if subnet is not None else None
    boot, specific = choose_boot(service, client, yiaddr, host, outcome)
    siaddr = next_server(service, host)
    menu = None
    if settings.pxe_menus and not specific:
        # A machine the inventory gives a profile, or a host entry its boot file, boots
        # that; a PXE menu is for the others.
        menu = menu_offer(settings.pxe_menus.for_client(client), boot, settings.server)
    if menu is not None:
        boot, outcome.menu = menu.boot, menu.name
        siaddr = menu.next_server or siaddr
    outcome.boot = boot
    if settings.mode is DhcpMode.PROXY and boot.filename is None and menu is None:
        outcome.decision, outcome.reason = "ignored", boot.reason
        return None
    options: list[tuple[int, bytes]] = [
        (Opt.MESSAGE_TYPE, _MESSAGE_TYPE_VALUES[mtype]),
        (Opt.SERVER_ID, settings.server.packed),
    ]
    if lease and subnet is not None:
        options += subnet.lease_options
    if subnet is not None:
        options.append(subnet.mask_option)
        options += network_options(service, request, subnet, host)
    if client.is_http_boot:
        # UEFI HTTP Boot (UEFI 2.x §24.7) only takes offers that say HTTPClient.
        options.append((Opt.VENDOR_CLASS, b"HTTPClient"))
    elif client.is_pxe:
        options.append((Opt.VENDOR_CLASS, b"PXEClient"))
        offered = menu.vendor_options if menu is not None else USE_BOOTFILE_OPTION
        options.append((Opt.VENDOR_SPECIFIC, offered))
    uuid = request.get(Opt.CLIENT_UUID)
    if uuid is not None and client.is_pxe:
        options.append((Opt.CLIENT_UUID, uuid))  # PXE 2.1 §2.2.3: echoed by the proxy
    file_field = b""
    if boot.filename is not None:
        name = boot.filename.encode()
        if not boot.over_http:
            options.append((Opt.TFTP_SERVER, address_text(siaddr).encode()))
        options.append((Opt.BOOTFILE, name))
        file_field = name
    if subnet is not None:
        options = override(options, own_options(subnet, host), request)
    options = with_agent_info(request, options)
    packet = reply_to(
        request,
        options,
        ciaddr=request.ciaddr if mtype == MessageType.ACK else ZERO,
        yiaddr=yiaddr,
        siaddr=siaddr,
        file=file_field,
    )
    address, port = reply_destination(request, mtype)
    return Reply(packet, address, port, max_message_size(request))


def nak(service: DhcpService, request: DhcpPacket, outcome: Outcome, reason: str) -> Reply:
    """A NAK saying ``reason`` (RFC 2131 §4.3.2), broadcast by the relay agent if relayed."""
    outcome.decision, outcome.reason = "NAK", reason
    packet = reply_to(
        request,
        # RFC 2131 §4.1: a NAK relayed to a client must be broadcast on its segment.
        flags=request.flags | BROADCAST_FLAG if request.giaddr != ZERO else request.flags,
        options=(
            (Opt.MESSAGE_TYPE, bytes([MessageType.NAK])),
            (Opt.SERVER_ID, ip_option(service.settings.server)),
            *with_agent_info(request, [(Opt.MESSAGE, reason.encode())]),
        ),
    )
    address, port = reply_destination(request, MessageType.NAK)
    return Reply(packet, address, port, max_message_size(request))


def choose_boot(
    service: DhcpService,
    client: ClientInfo,
    yiaddr: IPv4Address,
    host: HostEntry | None,
    outcome: Outcome | None = None,
) -> tuple[BootDecision, bool]:
    """What the client boots: its host entry's boot-file, else the boot policy's choice;
    and whether that was decided for this machine (a host entry, an inventory profile).
    The inventory remembers the client (and ``yiaddr``, unless ZERO) on the way."""
    machines = service.machines
    resolution = None
    if machines is not None:
        resolution = machines.resolve_client(client)
        if outcome is not None:
            outcome.resolution = resolution  # for --log-dhcp
        machines.remember(client, yiaddr if yiaddr != ZERO else None)
    if host is not None and host.boot_file is not None:
        why = f"[[hosts]] {host.label} boot-file"
        if host.boot_file.startswith(("http://", "https://")):
            return BootDecision(None, None, host.boot_file, why), True
        return BootDecision(None, host.boot_file, None, why), True
    chosen = resolution is not None and resolution.chosen
    return service.policy.decide(client, resolution), chosen


def next_server(service: DhcpService, host: HostEntry | None) -> IPv4Address:
    """siaddr: the host entry's next-server, else the configured one, else this server."""
    if host is not None and host.next_server is not None:
        return host.next_server
    return service.settings.next_server or service.settings.server


def own_options(subnet: Subnet, host: HostEntry | None) -> Mapping[int, bytes]:
    """The operator's own options for this client: the subnet's, then the host's."""
    if host is None or not host.options:
        return subnet.own_options
    return {**subnet.own_options, **dict(host.options)}


def network_options(
    service: DhcpService,
    request: DhcpPacket,
    subnet: Subnet,
    host: HostEntry | None,
    *,
    requested_only: bool = True,
) -> list[tuple[int, bytes]]:
    """The network's options the client asked for (all of them if it sent no list)."""
    found = list(subnet.network_options)
    hostname = host.hostname if host is not None else None
    machines = service.machines
    if hostname is None and machines is not None:
        machine = machines.setup.inventory.machine_by_mac(request.mac)
        hostname = machine.hostname if machine is not None else None
    if hostname:
        # The host's or the inventory's name for the machine, as dhcpd's
        # use-host-decl-names.
        found.append((Opt.HOST_NAME, hostname.encode()))
    return requested(request, found) if requested_only else found


def override(
    options: list[tuple[int, bytes]],
    mine: Mapping[int, bytes],
    request: DhcpPacket,
    *,
    requested_only: bool = True,
) -> list[tuple[int, bytes]]:
    """The operator's own options replace built-in ones of the same code, in place; the rest
    follow, those the client asked for (or all of them)."""
    if not mine:
        return options
    mine = dict(mine)
    replaced = [(code, mine.pop(code, value)) for code, value in options]
    return replaced + (requested(request, mine.items()) if requested_only else list(mine.items()))


def requested(request: DhcpPacket, options: Iterable[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
    """The options the client's parameter request list (option 55) names, in its order of
    preference (RFC 2132 §9.8); all of them, as they come, when it sent no list."""
    wanted = request.get(Opt.PARAMETER_LIST)
    offered = list(options)
    if wanted is None:
        return offered
    by_code = dict(offered)
    return [(code, by_code[code]) for code in dict.fromkeys(wanted) if code in by_code]


def fitted(counters: Counter[str], request: DhcpPacket, reply: Reply) -> Reply:
    """``reply`` cut to the client's maximum message size (RFC 2132 §9.10), logged and
    counted when options had to be left out."""
    try:
        packet, left_out = fit(reply.packet, reply.max_size, parameter_list(request))
    except ValueError:
        return reply  # even the essentials are too big: the edge counts the encode error
    if not left_out:
        return reply
    counters["reply-trimmed"] += 1
    log.info(
        format_event(
            "reply-trimmed",
            xid=f"0x{request.xid:08x}",
            mac=request.mac,
            max_size=reply.max_size,
            left_out=",".join(str(code) for code in left_out),
        )
    )
    return Reply(packet, reply.address, reply.port, reply.max_size)
