"""Fitting a DHCP reply into the client's maximum message size, pure.

A client states the largest DHCP message it accepts in option 57 (RFC 2132 §9.10, never less
than 576 octets): :func:`max_message_size` reads it. :func:`fit` returns the reply unchanged
when :func:`~netbootd.proto.dhcp.codec.encode` can lay it out in that size (option 52 overload
of ``file`` and ``sname`` included), and otherwise leaves out optional options one at a time
until it fits: first those the client did not ask for in option 55, from the last one in the
reply back, then those it asked for, from the end of its list (RFC 2132 §9.8 gives the list in
order of preference). The options a client needs to take the lease and boot are never left out
(:data:`ESSENTIAL`).

No I/O, no logging: the caller logs and counts what was left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from netbootd.proto.dhcp.codec import (
    MAX_OPTION_VALUE,
    MIN_MAX_MESSAGE_SIZE,
    DhcpPacket,
    Opt,
    decode_u16,
    encode,
)

__all__ = ["ESSENTIAL", "fit", "leave_out_order", "max_message_size"]

# Never left out: the message itself (53, 54, 56 for a NAK's reason), the lease and its timers
# (51, 58, 59), the address's essentials (1 subnet mask, 3 router), what a PXE or HTTP boot needs
# (60 class echo, 43 PXE vendor options, 66/67 server and file, 97 UUID echo, 175 iPXE, PXELINUX
# 209/210) and the relay agent's option 82, which a relay expects back (RFC 3046 §2.2).
ESSENTIAL: frozenset[int] = frozenset(
    {
        Opt.MESSAGE_TYPE,
        Opt.SERVER_ID,
        Opt.MESSAGE,
        Opt.LEASE_TIME,
        Opt.RENEWAL_TIME,
        Opt.REBINDING_TIME,
        Opt.SUBNET_MASK,
        Opt.ROUTER,
        Opt.VENDOR_CLASS,
        Opt.VENDOR_SPECIFIC,
        Opt.TFTP_SERVER,
        Opt.BOOTFILE,
        Opt.CLIENT_UUID,
        Opt.IPXE_ENCAP,
        Opt.PXELINUX_CONFIGFILE,
        Opt.PXELINUX_PATHPREFIX,
        Opt.AGENT_INFO,
    }
)

_IP_UDP_HEADERS = 20 + 8
_FIXED = 236 + 4  # RFC 2131 §2 header and the magic cookie


def max_message_size(request: DhcpPacket) -> int:
    """The largest reply ``request``'s client takes: its option 57, never below 576 octets
    (RFC 2132 §9.10). Raises DhcpDecodeError for a malformed option 57."""
    raw = request.get(Opt.MAX_MESSAGE_SIZE)
    if raw is None:
        return MIN_MAX_MESSAGE_SIZE
    return max(MIN_MAX_MESSAGE_SIZE, decode_u16(raw))


def leave_out_order(options: Sequence[tuple[int, bytes]], requested: Sequence[int]) -> list[int]:
    """The optional codes of ``options`` in the order they are left out when room is short."""
    present = [code for code, _ in options if code not in ESSENTIAL]
    wanted = [code for code in dict.fromkeys(requested) if code in present]
    unasked = [code for code in reversed(present) if code not in wanted]
    return unasked + list(reversed(wanted))


def fit(
    packet: DhcpPacket, max_size: int, requested: Sequence[int] = ()
) -> tuple[DhcpPacket, tuple[int, ...]]:
    """``packet`` as it can go out in a ``max_size`` datagram, and the codes left out.

    Raises ValueError when even the essential options do not fit (a configuration that puts
    far too much in them), as :func:`encode` would.
    """
    if _fits_without_overload(packet, max_size) or _encodes(packet, max_size):
        return packet, ()
    left_out: list[int] = []
    current = packet
    for code in leave_out_order(packet.options, requested):
        current = replace(current, options=tuple(o for o in current.options if o[0] != code))
        left_out.append(code)
        if _encodes(current, max_size):
            return current, tuple(left_out)
    raise ValueError(
        f"the essential options alone do not fit in a {max(max_size, MIN_MAX_MESSAGE_SIZE)}"
        "-octet message"
    )


def _fits_without_overload(packet: DhcpPacket, max_size: int) -> bool:
    # The test encode() makes before it needs option 52 (RFC 3396 splits counted in): cheap,
    # and true for nearly every reply, which then is encoded once only, by the caller.
    budget = max(max_size, MIN_MAX_MESSAGE_SIZE) - _IP_UDP_HEADERS - _FIXED
    sizes = [len(value) for _, value in packet.options]
    if max(sizes, default=0) <= MAX_OPTION_VALUE:
        return 1 + 2 * len(sizes) + sum(sizes) <= budget  # no option is split
    need = 1
    for size in sizes:
        pieces = max(1, -(-size // MAX_OPTION_VALUE))
        need += 2 * pieces + size
    return need <= budget


def _encodes(packet: DhcpPacket, max_size: int) -> bool:
    try:
        encode(packet, max_size=max_size)
    except ValueError:
        return False
    return True
