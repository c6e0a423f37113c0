"""A non-blocking UDP socket on the event loop: the TFTP listener's, and each event-loop transfer's.

Every datagram goes to a callback; sends the kernel cannot take at once wait, in order, until it
can. This module must not decode or decide anything: it moves datagrams.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import Counter, deque
from collections.abc import Callable

from netbootd.logs.events import format_event
from netbootd.proto.tftp.framing import Datagram
from netbootd.transport.tftp.send import Address, log_send_failed, send, udp_socket

__all__ = ["MAX_DATAGRAM", "Endpoint"]

log = logging.getLogger("netbootd.tftp")

MAX_DATAGRAM = 65536


class Endpoint:
    """A non-blocking UDP socket on the event loop: every datagram to ``on_datagram``, and
    sends that the kernel cannot take at once queued until it can, in order."""

    def __init__(
        self,
        sock: socket.socket,
        on_datagram: Callable[[bytes, Address], None],
        counters: Counter[str],
        bufsize: int,
        on_no_offload: Callable[[], None],
    ) -> None:
        self.sock = sock
        self._bufsize = bufsize
        self._on_no_offload = on_no_offload
        self._on_datagram = on_datagram
        self._counters = counters
        self._loop = asyncio.get_running_loop()
        self._outbox: deque[tuple[Datagram, Address, int]] = deque()
        self._writing = False
        self.closed = False
        self._loop.add_reader(sock.fileno(), self._readable)

    @classmethod
    def bind(
        cls,
        family: int,
        address: Address,
        on_datagram: Callable[[bytes, Address], None],
        counters: Counter[str],
        *,
        on_no_offload: Callable[[], None],
        bufsize: int = MAX_DATAGRAM,
    ) -> Endpoint:
        sock = udp_socket(family, address, blocking=False)
        try:
            return cls(sock, on_datagram, counters, bufsize, on_no_offload)
        except BaseException:
            sock.close()
            raise

    def _readable(self) -> None:
        # One datagram per wake-up: the loop calls again while more are queued, and a second
        # read that finds nothing (the common case in lock-step) costs more than the call.
        if self.closed:
            return
        try:
            data, addr = self.sock.recvfrom(self._bufsize)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            # An ICMP error for an earlier datagram (port unreachable): nothing to do.
            log.debug("%s", format_event("socket-error", error=str(exc)))
            return
        self._on_datagram(data, addr)

    def send(self, datagram: Datagram, addr: Address, segment: int = 0) -> None:
        """Send ``datagram``; with ``segment``, as datagrams of that size (UDP GSO)."""
        if self.closed:
            return
        if self._outbox:
            self._outbox.append((datagram, addr, segment))
            return
        pending = self._send_now(datagram, addr, segment)
        if pending:
            self._outbox.extend((d, addr, s) for d, s in pending)
            self._want_writable()

    def _send_now(
        self, datagram: Datagram, addr: Address, segment: int
    ) -> list[tuple[Datagram, int]]:
        return send(
            self.sock,
            datagram,
            addr,
            segment,
            no_offload=self._on_no_offload,
            failed=self._send_failed,
        )

    def _send_failed(self, addr: Address, exc: OSError) -> None:
        self._counters["send_error"] += 1
        log_send_failed(addr, exc)

    def _want_writable(self) -> None:
        if not self._writing:
            self._writing = True
            self._loop.add_writer(self.sock.fileno(), self._writable)

    def _writable(self) -> None:
        while self._outbox and not self.closed:
            datagram, addr, segment = self._outbox.popleft()
            pending = self._send_now(datagram, addr, segment)
            if pending:
                self._outbox.extendleft(reversed([(d, addr, s) for d, s in pending]))
                return
        if self._writing and not self.closed:
            self._loop.remove_writer(self.sock.fileno())
        self._writing = False

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        fd = self.sock.fileno()
        self._loop.remove_reader(fd)
        if self._writing:
            self._loop.remove_writer(fd)
        self._outbox.clear()
        self.sock.close()
