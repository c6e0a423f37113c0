"""The one way TFTP datagrams leave: UDP sends, with segmentation offload and its fallback.

A window of DATA blocks that fit the path MTU may leave in one ``sendmsg`` carrying a segment
size (Linux ``UDP_SEGMENT``), which the kernel (or the NIC) cuts into datagrams. Where the kernel
refuses it, the same datagrams go one by one, and the caller is told so that it stops asking.
Both the event loop's sockets (non-blocking) and the transfer threads' (blocking) send through
:func:`send`. This module must not decide what to send, nor keep sockets or timers of its own.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
from collections.abc import Callable
from typing import Any

from netbootd.logs.events import format_event
from netbootd.proto.tftp.framing import Datagram, segments
from netbootd.services.tftp import client_text

__all__ = [
    "SOCKET_BUFFER",
    "UDP_SEGMENT",
    "Address",
    "Pending",
    "from_stranger",
    "log_send_failed",
    "offload_refused",
    "send",
    "send_datagram",
    "udp_socket",
]

log = logging.getLogger("netbootd.tftp")

# Linux: setsockopt level SOL_UDP, UDP_SEGMENT (since 4.18).
UDP_SEGMENT = 103
# Socket buffers large enough for a whole window of big blocks from many transfers.
SOCKET_BUFFER = 4 * 1024 * 1024

Address = tuple[Any, ...]
# A datagram the kernel could not take yet, with its segment size: sent once it can.
Pending = tuple[Datagram, int]


def udp_socket(family: int, address: Address, *, blocking: bool) -> socket.socket:
    """A UDP socket bound to ``address``, with buffers for whole windows of big blocks."""
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(blocking)
        for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


def from_stranger(addr: Address, client: Address) -> bool:
    """Whether a datagram at a transfer's port came from someone other than its client."""
    return addr != client and addr[:2] != client[:2]


def send_datagram(sock: socket.socket, datagram: Datagram, addr: Address, segment: int) -> None:
    """Send one datagram, or with ``segment`` several of that size in one call; raises OSError."""
    if segment:
        sock.sendmsg(
            datagram if isinstance(datagram, list) else [datagram],
            [(socket.SOL_UDP, UDP_SEGMENT, segment.to_bytes(2, "little"))],
            0,
            addr,
        )
    elif isinstance(datagram, list):
        sock.sendmsg(datagram, (), 0, addr)
    else:
        sock.sendto(datagram, addr)


def offload_refused(exc: OSError) -> bool:
    """Whether a send with a segment size failed because the kernel has no offload for it."""
    return exc.errno in (errno.EINVAL, errno.EIO, errno.ENOPROTOOPT)


def log_send_failed(addr: Address, exc: OSError) -> None:
    log.debug("%s", format_event("send-failed", client=client_text(addr), error=str(exc)))


def send(
    sock: socket.socket,
    datagram: Datagram,
    addr: Address,
    segment: int,
    *,
    no_offload: Callable[[], None],
    failed: Callable[[Address, OSError], None],
) -> list[Pending]:
    """Send ``datagram`` (with ``segment``, as datagrams of that size); return what a
    non-blocking socket could not take yet, in order, for the caller to send when it can.

    A send the kernel refuses for good (unreachable, no route, too big) is lost, reported
    through ``failed``; the peer's retransmission recovers. A refused segment size is reported
    through ``no_offload``, and the same datagrams go one by one.
    """
    try:
        send_datagram(sock, datagram, addr, segment)
    except (BlockingIOError, InterruptedError):
        return [(datagram, segment)]
    except OSError as exc:
        if not (segment and offload_refused(exc)):
            failed(addr, exc)
            return []
        no_offload()
        pieces = segments(datagram, segment)
        for number, piece in enumerate(pieces):
            if send(sock, piece, addr, 0, no_offload=no_offload, failed=failed):
                return [(p, 0) for p in pieces[number:]]
    return []
