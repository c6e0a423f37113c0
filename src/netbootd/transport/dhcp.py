"""The DHCP socket edge: receives datagrams on ports 67 (and 4011), sends replies.

It decodes, hands the packet to the DHCP service, and encodes and sends what comes back. It holds
no protocol logic. A datagram that does not decode is counted and logged in one line; nothing a
peer sends can stop the listener.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import Counter
from collections.abc import Callable
from ipaddress import IPv4Address
from typing import cast

from netbootd.logfmt import format_event
from netbootd.proto.dhcp import DhcpDecodeError, DhcpPacket, decode, encode
from netbootd.services.dhcp import BROADCAST, DHCP_CLIENT_PORT, DhcpService, Reply
from netbootd.services.dhcp_limits import LineBudget
from netbootd.services.dhcp_watch import ServerWatch

log = logging.getLogger("netbootd.dhcp")

MAX_PENDING = 1024  # requests being answered at once; past it, new ones are dropped


class _Endpoint(asyncio.DatagramProtocol):
    def __init__(
        self, port: int, on_datagram: Callable[[_Endpoint, bytes, tuple[str, int]], None]
    ) -> None:
        self._port = port
        self._on_datagram = on_datagram
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDP transport implements the interface without subclassing it.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, int]) -> None:
        self._on_datagram(self, data, (str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        # ICMP errors for earlier sends (a relay that went away, say): nothing to undo.
        log.debug(format_event("socket-error", port=self._port, error=str(exc)))

    @property
    def port(self) -> int:
        return self._port


def _udp_socket(interface: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        # Bound to the device: we hear broadcasts from this segment only, and broadcast
        # replies leave through it.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode())
        sock.bind(("0.0.0.0", port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class DhcpServer:
    """DHCP endpoints on one interface, answering through a :class:`DhcpService`.

    With a :class:`ServerWatch`, it also listens on the client port for other servers' replies
    and names each other server it hears in a warning.
    """

    def __init__(
        self,
        service: DhcpService,
        interface: str,
        ports: tuple[int, ...],
        *,
        watch: ServerWatch | None = None,
        watch_port: int = DHCP_CLIENT_PORT,
    ) -> None:
        self._service = service
        self._interface = interface
        self._ports = ports
        self._watch = watch
        self._watch_port = watch_port
        self._endpoints: list[_Endpoint] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.counters: Counter[str] = Counter()
        self._malformed_lines = LineBudget()  # a flood of junk must not flood the log
        self._dropped_lines = LineBudget()

    def all_counters(self) -> dict[str, int]:
        """The edge's counters (malformed, dropped, sent) and the service's, by outcome."""
        return {**self.counters, **self._service.counters}

    async def start(self) -> None:
        for port in self._ports:
            await self._listen(port, self.received)
        if self._watch is not None:
            try:
                await self._listen(self._watch_port, self._watched)
            except OSError as exc:
                # A DHCP client on this host may hold the port; serving matters more.
                log.warning(
                    format_event(
                        "no-server-watch",
                        port=self._watch_port,
                        error=exc.strerror or str(exc),
                        effect="other DHCP servers on the segment go unnoticed",
                    )
                )

    async def _listen(
        self, port: int, on_datagram: Callable[[_Endpoint, bytes, tuple[str, int]], None]
    ) -> None:
        sock = _udp_socket(self._interface, port)
        _, endpoint = await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: _Endpoint(port, on_datagram), sock=sock
        )
        self._endpoints.append(endpoint)

    def _watched(self, endpoint: _Endpoint, data: bytes, source: tuple[str, int]) -> None:
        """A datagram on the client port: another server's reply, or nothing of ours."""
        assert self._watch is not None
        try:
            packet = decode(data)
        except DhcpDecodeError:
            self.counters["watch-undecodable"] += 1
            return
        other = self._watch.reply(packet, source[0], time.monotonic())
        if other is None:
            return
        self.counters["other-server-reply"] += 1
        if not other.name:
            return  # named lately
        log.warning(
            format_event(
                "other-dhcp-server",
                server=str(other.server),
                source=other.source,
                sent=other.message,
                client=other.client,
                address=str(other.address),
                replies=other.times,
                effect="clients may take its offers instead of ours",
            )
        )

    async def close(self) -> None:
        for endpoint in self._endpoints:
            if endpoint.transport is not None:
                endpoint.transport.close()
        self._endpoints.clear()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def received(self, endpoint: _Endpoint, data: bytes, source: tuple[str, int]) -> None:
        try:
            packet = decode(data)
        except DhcpDecodeError as exc:
            self.counters["malformed"] += 1
            held = self._malformed_lines.allow(time.monotonic())
            if held is not None:  # junk sent fast gets a burst of lines, then a count
                fields = {"held_back": held} if held else {}
                log.warning(
                    format_event(
                        "malformed",
                        source=f"{source[0]}:{source[1]}",
                        bytes=len(data),
                        error=str(exc),
                        **fields,
                    )
                )
            return
        if len(self._tasks) >= MAX_PENDING:
            self.counters["dropped-busy"] += 1
            held = self._dropped_lines.allow(time.monotonic())
            if held is not None:
                fields = {"held_back": held} if held else {}
                log.warning(
                    format_event("dropped", source=source[0], reason="too many pending", **fields)
                )
            return
        task = asyncio.get_running_loop().create_task(self._answer(endpoint, packet, source))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(
        self, endpoint: _Endpoint, packet: DhcpPacket, source: tuple[str, int]
    ) -> None:
        try:
            reply = await self._service.handle(packet, local_port=endpoint.port, source=source)
        except Exception:
            # A bug of ours must cost one reply, not the listener.
            self.counters["internal-error"] += 1
            log.exception(format_event("internal-error", xid=f"0x{packet.xid:08x}"))
            return
        if reply is not None:
            self._send(endpoint, reply)

    def _send(self, endpoint: _Endpoint, reply: Reply) -> None:
        if endpoint.transport is None or endpoint.transport.is_closing():
            self.counters["unsent-closing"] += 1  # answered while the server shuts down
            return
        try:
            data = encode(reply.packet, max_size=reply.max_size)
        except ValueError:
            self.counters["encode-error"] += 1
            log.exception(format_event("encode-error", xid=f"0x{reply.packet.xid:08x}"))
            return
        destination = str(reply.address) if reply.address != IPv4Address(0) else str(BROADCAST)
        endpoint.transport.sendto(data, (destination, reply.port))
        self.counters["sent"] += 1
