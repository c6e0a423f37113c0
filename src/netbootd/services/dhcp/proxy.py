"""proxyDHCP (PXE 2.1 §2.2.3) and the boot server's answers to PXE menu items (§2.2.5).

A proxyDHCP gives PXE clients boot information beside the site server's offer, never an
address: a PROXY-OFFER to a DISCOVER at port 67, a PROXY-ACK to the REQUEST or INFORM a client
then sends to port 4011 (or, mistaking the proxy for a DHCP server, to port 67). UEFI HTTP Boot
clients get the PROXY-OFFER too: EDK2 takes the site server's offer for its address and the
proxy's (no address, option 60 ``HTTPClient`` and a URL) for its boot file, and asks no more
(UEFI 2.x §24.7.2.1, "DHCP only" plus "proxy with the URI"). A client that
chose an item of a PXE menu asks the boot server for it, in either mode, and gets that item's
boot file. No sockets, no clock, no lease book.
"""

from __future__ import annotations

from ipaddress import IPv4Address
from typing import TYPE_CHECKING

from netbootd.boot.client import ClientInfo
from netbootd.boot.policy import BootDecision
from netbootd.boot.pxe_menu import PxeMenu
from netbootd.boot.pxe_menu import answer_boot_item as menu_answer
from netbootd.proto.dhcp.codec import DhcpPacket, MessageType, Opt, option_ip
from netbootd.proto.dhcp.size import max_message_size
from netbootd.proto.dhcp.wire import DHCP_SERVER_PORT, PXE_PORT, ZERO, reply_destination
from netbootd.services.dhcp.log import message_kind
from netbootd.services.dhcp.reply import offer_or_ack
from netbootd.services.dhcp.transaction import Outcome, Reply

if TYPE_CHECKING:
    from netbootd.services.dhcp.service import DhcpService

__all__ = ["answer_boot_item", "answer_proxy"]


def answer_proxy(
    service: DhcpService,
    request: DhcpPacket,
    client: ClientInfo,
    outcome: Outcome,
    *,
    local_port: int,
    source: tuple[str, int],
) -> Reply | None:
    """The proxy's answer to a DHCP request of a PXE client, or silence."""
    if not client.is_pxe and not client.is_http_boot:
        outcome.reason = "proxy mode answers PXE and UEFI HTTP Boot clients only"
        return None
    mtype = request.message_type
    if local_port == DHCP_SERVER_PORT and mtype == MessageType.DISCOVER:
        # The proxy offer: no address, only boot information, beside the site's offer.
        outcome.decision = "PROXY-OFFER"
        return offer_or_ack(
            service, request, client, MessageType.OFFER, outcome, yiaddr=ZERO, lease=False
        )
    if (
        local_port == DHCP_SERVER_PORT
        and mtype == MessageType.REQUEST
        and option_ip(request, Opt.SERVER_ID) == service.settings.server
    ):
        # A client that took the proxy's offer for a server's and asks it, at port 67: the
        # boot information again, with no address (the site server's REQUESTs name that
        # server and are not ours to answer).
        outcome.decision = "PROXY-ACK"
        return offer_or_ack(
            service, request, client, MessageType.ACK, outcome, yiaddr=ZERO, lease=False
        )
    if local_port == PXE_PORT and mtype in (MessageType.REQUEST, MessageType.INFORM):
        # The client has its address now and asks us directly, at port 4011; answer to
        # the address and port it asked from.
        outcome.decision = "PROXY-ACK"
        reply = offer_or_ack(
            service, request, client, MessageType.ACK, outcome, yiaddr=ZERO, lease=False
        )
        if reply is None:
            return None
        host, port = source
        return Reply(reply.packet, IPv4Address(host), port, reply.max_size)
    outcome.reason = f"{message_kind(request)} on port {local_port} is the site DHCP server's"
    return None


def answer_boot_item(
    service: DhcpService,
    request: DhcpPacket,
    menu: PxeMenu,
    item: tuple[int, int],
    outcome: Outcome,
    *,
    source: tuple[str, int],
) -> Reply | None:
    """The boot server's ACK for the menu item ``item`` (type, layer) the client chose."""
    settings = service.settings
    answer = menu_answer(
        request,
        menu,
        *item,
        server=settings.server,
        next_server=settings.next_server or settings.server,
    )
    outcome.menu, outcome.item = menu.name, answer.position
    if answer.packet is None or answer.item is None:
        outcome.decision = "unknown-item" if answer.item is None else "ignored"
        outcome.reason = answer.reason
        return None
    outcome.decision = "BOOT-ITEM-ACK"
    outcome.boot = BootDecision(None, answer.item.file, None, answer.reason)
    host, port = source
    address = IPv4Address(host)
    if address == ZERO:
        # A client without an address yet broadcast its request: answer as RFC 2131 §4.1 says.
        address, port = reply_destination(request, MessageType.ACK)
    return Reply(answer.packet, address, port, max_message_size(request))
