"""The log lines of DHCP transactions: the one line each, and what ``--log-dhcp`` adds.

:func:`log_transaction` writes a transaction's line: what was asked, by which client, what was
decided and why. Lines about requests that break the protocol come under a budget, so that junk
sent fast cannot fill the disk (:class:`~netbootd.services.dhcp.limits.LineBudget`).

With ``--log-dhcp``, each option received and sent has its own line (:func:`log_options`), and
:func:`detail_lines` gives what a dnsmasq operator finds with its ``log-dhcp``, in netbootd's
one-line event form:

- ``dhcp-client``: the client's vendor and user classes, host name, and the options it asked
  for in option 55, by code and name, in its order (RFC 2132 §9.8);
- ``dhcp-tags``: what netbootd made of it: client kind, architecture, boot class, and the
  inventory's machine, group and profile when one matched;
- ``dhcp-reply``: the reply's addresses (yiaddr, siaddr as next server, giaddr), sname and
  file, its size limit, where it goes and whether as a broadcast (RFC 2131 §4.1).

It decides nothing: it renders what the other modules decided.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from ipaddress import IPv4Address

from netbootd.boot.client import ClientInfo, arch_name
from netbootd.boot.inventory import Resolution
from netbootd.boot.policy import BootDecision
from netbootd.logs.buffer import log_line
from netbootd.logs.events import format_event, format_fields
from netbootd.proto.dhcp.codec import (
    DhcpPacket,
    MessageType,
    Opt,
    decode_text,
    describe,
    option_name,
    parameter_list,
)
from netbootd.proto.dhcp.wire import BROADCAST, DHCP_SERVER_PORT, ZERO, address_text
from netbootd.services.dhcp.limits import LineBudget
from netbootd.services.dhcp.transaction import Outcome

__all__ = ["client_kind", "detail_lines", "log_options", "log_transaction", "message_kind"]

log = logging.getLogger("netbootd.dhcp")


def message_kind(request: DhcpPacket) -> str:
    """What a transaction line calls the request: its message type, BOOTP, or TYPE<n>."""
    mtype = request.message_type
    if mtype is None:
        return "BOOTP"
    if isinstance(mtype, MessageType):
        return mtype.name
    return f"TYPE{mtype}"


def log_transaction(
    request: DhcpPacket,
    client: ClientInfo,
    kind: str,
    outcome: Outcome,
    *,
    local_port: int,
    bad_lines: LineBudget,
    clock: Callable[[], float],
) -> None:
    """The transaction's line: at info when it was answered, notable, or a boot client's
    (whoever wants to network-boot and is not answered is told why), at debug when anyone
    else's was ignored, a warning for a NAK, an unknown menu item or a request that breaks the
    protocol (those under ``bad_lines``)."""
    answered = outcome.decision != "ignored"
    level = logging.INFO if answered or outcome.notable or client.wants_boot else logging.DEBUG
    if outcome.decision in ("NAK", "unknown-item") or outcome.bad:
        level = logging.WARNING
    if not log.isEnabledFor(level):
        return
    held = 0
    if outcome.bad:
        allowed = bad_lines.allow(clock())
        if allowed is None:
            return  # a burst of bad requests: counted, its lines held back
        held = allowed
    # What a burst of clients have in common (their classes, what they boot) is rendered
    # once; what is each client's own, each time. The fields stay in this order. Values
    # that are never quoted are written as they are: a MAC in hex (quoted when empty),
    # addresses, numbers, and the decision, one of the service's names.
    mac = request.mac or '""'
    address = address_text(outcome.address) if outcome.address is not None else "-"
    parts = [
        f"{kind} xid=0x{format(request.xid, '08x')} mac={mac}",  # no spec: see setup.py
        _client_part(client.vendor_class, client.user_classes, client.arch, client_kind(client)),
        f"decision={outcome.decision} address={address}",
    ]
    if client.ndi is not None or outcome.menu or outcome.item:
        own: dict[str, object] = {}
        if client.ndi is not None:
            own["ndi"] = client.ndi
        if outcome.menu:
            own["menu"] = outcome.menu
        if outcome.item:
            own["item"] = outcome.item
        parts.append(format_fields(**own))
    if outcome.boot is not None:
        parts.append(_boot_part(outcome.boot.filename, outcome.boot.reason))
    if request.giaddr != ZERO:
        parts.append(f"relay={address_text(request.giaddr)}")
    if local_port != DHCP_SERVER_PORT:
        parts.append(f"port={local_port}")
    if outcome.group is not None:
        parts.append(f"to={address_text(outcome.group)}")
    if outcome.reason:
        parts.append(format_fields(reason=outcome.reason))
    if held:
        parts.append(f"held_back={held}")
    log_line(log, level, " ".join(parts))


def log_options(direction: str, packet: DhcpPacket) -> None:
    """One line per option of ``packet``, ``received`` or ``sent`` (``--log-dhcp``)."""
    for line in describe(packet):
        log.info("%s xid=0x%08x %s", direction, packet.xid, line.strip())


@functools.lru_cache(maxsize=1024)
def _client_part(
    vendor_class: str, user_classes: tuple[str, ...], arch: int | None, kind: str
) -> str:
    """The client's classes as a transaction line shows them."""
    return format_fields(
        vendor_class=vendor_class or "-",
        user_class=",".join(user_classes) or "-",
        arch=arch_name(arch),
        client=kind,
    )


@functools.lru_cache(maxsize=1024)
def _boot_part(filename: str | None, reason: str) -> str:
    """What the client boots, and why, as a transaction line shows them."""
    return format_fields(file=filename or "-", why=reason)


def client_kind(client: ClientInfo) -> str:
    """``ipxe``, ``uefi-http``, ``pxe`` or ``plain``: what kind of boot client is asking."""
    if client.is_ipxe:
        return "ipxe"
    if client.is_http_boot:
        return "uefi-http"
    if client.is_pxe:
        return "pxe"
    return "plain"


def detail_lines(
    request: DhcpPacket,
    client: ClientInfo,
    *,
    boot: BootDecision | None,
    resolution: Resolution | None,
    reply: DhcpPacket | None,
    destination: tuple[IPv4Address, int] | None,
    max_size: int | None,
) -> list[str]:
    """The detail lines for one request and its reply (``reply`` None: silence)."""
    xid = f"0x{request.xid:08x}"
    requested = " ".join(f"{code}:{option_name(code)}" for code in parameter_list(request))
    host_name = request.get(Opt.HOST_NAME)
    lines = [
        format_event(
            "dhcp-client",
            xid=xid,
            mac=request.mac,
            vendor_class=client.vendor_class or "-",
            user_class=",".join(client.user_classes) or "-",
            host_name=decode_text(host_name) if host_name is not None else "-",
            requested=requested or "-",
        )
    ]
    tags: dict[str, object] = {
        "xid": xid,
        "client": client_kind(client),
        "arch": client.arch_name,
    }
    if client.ipxe_features:
        tags["ipxe_features"] = ",".join(str(code) for code in client.ipxe_features)
    if boot is not None and boot.boot_class is not None:
        tags["boot_class"] = str(boot.boot_class)
    if resolution is not None:
        tags["machine"] = resolution.machine.name if resolution.machine else "-"
        tags["group"] = resolution.group.name if resolution.group else "-"
        tags["profile"] = resolution.profile.name
    lines.append(format_event("dhcp-tags", **tags))
    if reply is not None and destination is not None:
        address, port = destination
        fields: dict[str, object] = {
            "xid": xid,
            "yiaddr": str(reply.yiaddr),
            "next_server": str(reply.siaddr),
        }
        if reply.giaddr != ZERO:
            fields["giaddr"] = str(reply.giaddr)
        fields["sname"] = reply.sname.decode("ascii", "replace") or "-"
        fields["file"] = reply.file.decode("ascii", "replace") or "-"
        fields["max_size"] = max_size
        fields["destination"] = f"{address}:{port}"
        fields["broadcast"] = "yes" if address == BROADCAST else "no"
        lines.append(format_event("dhcp-reply", **fields))
    return lines
