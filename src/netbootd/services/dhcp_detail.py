"""The lines ``--log-dhcp`` adds for one transaction, beside each option received and sent.

What a dnsmasq operator finds with its ``log-dhcp``, in netbootd's one-line event form:

- ``dhcp-client``: the client's vendor and user classes, host name, and the options it asked
  for in option 55, by code and name, in its order (RFC 2132 §9.8);
- ``dhcp-tags``: what netbootd made of it: client kind, architecture, boot class, and the
  inventory's machine, group and profile when one matched;
- ``dhcp-reply``: the reply's addresses (yiaddr, siaddr as next server, giaddr), sname and
  file, its size limit, where it goes and whether as a broadcast (RFC 2131 §4.1).

Every option sent, by code and name with its value, has its own ``sent`` line already.
Pure: builds text from values, logs nothing.
"""

from __future__ import annotations

from ipaddress import IPv4Address

from netbootd.boot.client import ClientInfo
from netbootd.boot.inventory import Resolution
from netbootd.boot.policy import BootDecision
from netbootd.logfmt import format_event
from netbootd.proto.dhcp import DhcpPacket, Opt, decode_text, option_name, parameter_list

__all__ = ["client_kind", "detail_lines"]

_BROADCAST = IPv4Address("255.255.255.255")


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
        if reply.giaddr != IPv4Address(0):
            fields["giaddr"] = str(reply.giaddr)
        fields["sname"] = reply.sname.decode("ascii", "replace") or "-"
        fields["file"] = reply.file.decode("ascii", "replace") or "-"
        fields["max_size"] = max_size
        fields["destination"] = f"{address}:{port}"
        fields["broadcast"] = "yes" if address == _BROADCAST else "no"
        lines.append(format_event("dhcp-reply", **fields))
    return lines
