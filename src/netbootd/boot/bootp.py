"""BOOTP replies (RFC 951, vendor extensions of RFC 1497), pure.

A BOOTP client sends no option 53 and reads a fixed 300-octet reply: the header, then a 64-octet
vendor area holding the RFC 1497 magic cookie and options. :func:`bootp_reply` lays a reply out
so that its options fit that area; what does not fit is left out and named, for the log.
No sockets, no clock, no policy: the service decides the address and the options.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address

from netbootd.proto.dhcp.codec import MAGIC_COOKIE, DhcpPacket, Opt, reply_to

# RFC 951 §3: the vend field is 64 octets; RFC 1497 puts the cookie first and END last.
VEND_SIZE = 64
_OPTION_ROOM = VEND_SIZE - len(MAGIC_COOKIE) - 1
# What a BOOTP client cannot do without, first: RFC 1497's own order of importance.
_FIRST = (Opt.AGENT_INFO, Opt.SUBNET_MASK, Opt.ROUTER, Opt.HOST_NAME)


@dataclass(frozen=True, slots=True)
class BootpReply:
    packet: DhcpPacket
    left_out: tuple[int, ...]  # option codes that did not fit the vendor area


def fit_vendor_area(
    options: Iterable[tuple[int, bytes]], room: int = _OPTION_ROOM
) -> tuple[list[tuple[int, bytes]], tuple[int, ...]]:
    """The options that fit ``room`` octets, most needed first, and the codes that did not.

    Relay agent information (option 82) is kept first of all, so that it is never lost; it is
    still sent last (RFC 3046 §2.1). A value longer than 255 octets never fits.
    """
    given = list(options)
    ranked = sorted(
        given, key=lambda item: _FIRST.index(item[0]) if item[0] in _FIRST else len(_FIRST)
    )
    kept: set[int] = set()
    left: list[int] = []
    for code, value in ranked:
        need = 2 + len(value)
        if len(value) <= 255 and need <= room:
            kept.add(code)
            room -= need
        else:
            left.append(code)
    chosen = [(code, value) for code, value in given if code in kept and code != Opt.AGENT_INFO]
    chosen += [(code, value) for code, value in given if code in kept and code == Opt.AGENT_INFO]
    return chosen, tuple(left)


def bootp_reply(
    request: DhcpPacket,
    *,
    yiaddr: IPv4Address,
    siaddr: IPv4Address,
    file: bytes,
    options: Iterable[tuple[int, bytes]],
) -> BootpReply:
    """The BOOTREPLY to ``request`` (RFC 951 §3): the client's address, the boot server and
    file, and the vendor options that fit the 64-octet area (no option 53: this is not DHCP)."""
    kept, left_out = fit_vendor_area(
        (code, value) for code, value in options if code != Opt.MESSAGE_TYPE
    )
    packet = reply_to(request, kept, ciaddr=request.ciaddr, yiaddr=yiaddr, siaddr=siaddr, file=file)
    return BootpReply(packet, left_out)
