"""The DHCP socket edge: receives datagrams on ports 67 (and 4011), sends replies.

It decodes, hands the packet to the DHCP service, and encodes and sends what comes back. It holds
no protocol logic. A datagram that does not decode is counted and logged in one line; nothing a
peer sends can stop the listener.

Under load it keeps finishing what it started. Datagrams are queued as they arrive, in two
queues: requests that complete an exchange (REQUEST, RELEASE, DECLINE, INFORM) and new
exchanges (DISCOVER, BOOTP). Each turn of the event loop answers the queued requests first
(up to a bound, so that TFTP and HTTP still get their turn), then a few new exchanges, so a
flood of new clients cannot starve the clients that are finishing theirs. When the queue of
new exchanges is full, the oldest is dropped: its client has waited longest and is the
likeliest to have given up or retransmitted.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import logging
import socket
import struct
import sys
import time
from bisect import bisect_left
from collections import Counter, deque
from collections.abc import Callable
from ipaddress import IPv4Address

from netbootd.logs.events import format_event
from netbootd.proto.dhcp.codec import DhcpDecodeError, DhcpPacket, MessageType, decode, encode
from netbootd.proto.dhcp.wire import (
    BROADCAST,
    CHADDR_LAST_OCTET,
    DHCP_CLIENT_PORT,
    DHCP_SERVER_PORT,
    PXE_PORT,
    ZERO,
    address_text,
    peek_message_type,
    worker_of,
)
from netbootd.services.dhcp.limits import LineBudget
from netbootd.services.dhcp.service import DhcpService
from netbootd.services.dhcp.transaction import Pending, Reply
from netbootd.services.dhcp.watch import ServerWatch
from netbootd.services.metrics import ANSWER_TIME_BOUNDS, Histogram

log = logging.getLogger("netbootd.dhcp")

MAX_QUEUED = 1024  # new exchanges waiting to be answered; past it, the oldest is dropped
MAX_WAITING = 4096  # replies waiting for the lease store; past it, requests are dropped
NEW_PER_TURN = 32  # new exchanges answered per turn of the event loop, after the requests
FINISHING_PER_TURN = 512  # requests answered per turn at most, so that other services run too
BUSY_WARNING_INTERVAL = 10.0  # seconds between two "dropped" warnings
PROBE_FIRST_DELAY = 2.0  # seconds from start to the first probe for other DHCP servers

# Messages that complete an exchange the server has already begun (or stand alone).
_FINISHING = frozenset(
    (MessageType.REQUEST, MessageType.RELEASE, MessageType.DECLINE, MessageType.INFORM)
)

# Each with its arrival (time.perf_counter()), for the answer-time histogram.
_Queued = tuple["_Endpoint", DhcpPacket, tuple[str, int], float]
_QueuedNew = tuple["_Endpoint", DhcpPacket | bytes, tuple[str, int], float]  # bytes: undecoded


READ_BATCH = 512  # datagrams taken from a socket each time it is readable
RECEIVE_SIZE = 65535
RECEIVE_BUFFER = 4 * 1024 * 1024  # bytes of kernel receive queue per socket
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
IP_MULTICAST_ALL = getattr(socket, "IP_MULTICAST_ALL", 49)
_PKTINFO_SPACE = socket.CMSG_SPACE(12)  # struct in_pktinfo

# What it means that another process holds a port we may do without.
_HELD = {
    DHCP_SERVER_PORT: (
        "a DHCP server on this host holds it; PXE clients are answered at port 4011 only, "
        "so that server must send option 60 PXEClient (PXE 2.1 proxyDHCP on the DHCP "
        "server's host)"
    ),
}


class _Endpoint:
    """One UDP socket, read by the event loop whenever it is readable.

    Each time, it takes everything queued in the kernel (up to :data:`READ_BATCH` datagrams),
    so that the server, not the kernel's arrival order, decides what is answered first.

    An endpoint that has joined a multicast ``group`` hands the datagrams sent to the group to
    its :attr:`via_group` twin (same socket and port, ``group`` set), the others to itself.
    """

    def __init__(
        self,
        port: int,
        sock: socket.socket,
        on_datagram: Callable[[_Endpoint, bytes, tuple[str, int]], None],
        *,
        group: IPv4Address | None = None,
        parent: _Endpoint | None = None,
    ) -> None:
        self.port = port
        self.group = group
        self._sock = sock
        self._on_datagram = on_datagram
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._parent = parent
        self.via_group: _Endpoint | None = None
        if group is not None and parent is None:
            self.via_group = _Endpoint(port, sock, on_datagram, group=group, parent=self)

    @property
    def closed(self) -> bool:
        return self._closed if self._parent is None else self._parent.closed

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        loop.add_reader(self._sock.fileno(), self.readable)

    def readable(self) -> None:
        receive = self._receive if self.via_group is None else self._receive_with_destination
        for _ in range(READ_BATCH):
            try:
                endpoint, data, addr = receive()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # ICMP errors for earlier sends (a relay that went away, say): nothing to undo.
                log.debug(format_event("socket-error", port=self.port, error=str(exc)))
                continue
            self._on_datagram(endpoint, data, (addr[0], addr[1]))

    def _receive(self) -> tuple[_Endpoint, bytes, tuple[str, int]]:
        data, addr = self._sock.recvfrom(RECEIVE_SIZE)
        return self, data, addr

    def _receive_with_destination(self) -> tuple[_Endpoint, bytes, tuple[str, int]]:
        """A datagram, and the twin that hears the group if it was sent to the group
        (IP_PKTINFO)."""
        assert self.via_group is not None and self.group is not None
        data, ancillary, _flags, addr = self._sock.recvmsg(RECEIVE_SIZE, _PKTINFO_SPACE)
        for level, kind, value in ancillary:
            # struct in_pktinfo: ifindex (4), local address (4), header destination (4).
            if (
                level == socket.IPPROTO_IP
                and kind == IP_PKTINFO
                and value[8:12] == self.group.packed
            ):
                return self.via_group, data, addr
        return self, data, addr

    def sendto(self, data: bytes, address: tuple[str, int]) -> bool:
        """Send one datagram; False (after a log line) if the kernel would not take it."""
        try:
            self._sock.sendto(data, address)
        except OSError as exc:
            # A full send buffer or an unreachable relay costs this reply, nothing more.
            log.warning(
                format_event(
                    "send-failed", port=self.port, to=f"{address[0]}:{address[1]}", error=str(exc)
                )
            )
            return False
        return True

    def close(self) -> None:
        if self._closed or self._parent is not None:
            return
        self._closed = True
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._sock.fileno())
        self._sock.close()


def _udp_socket(
    interface: str, port: int, *, shared: bool, worker_group: bool = False
) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    try:
        _receive_buffer(sock)
        if worker_group:
            # The DHCP workers' sockets form one group on the port: the kernel hands each
            # datagram to the worker that serves its client (see _steer_by_client).
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if shared:
            # Linux lets sockets that all ask for SO_REUSEADDR share a UDP port, and then
            # hands each unicast datagram to one of them, whichever it picks: a server port
            # shared that way with another DHCP server could take that server's renewals.
            # So only the callers that want sharing get it.
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


# A classic BPF program on the port's group of sockets picks a client's worker as worker_of
# does: load the last octet of the chaddr (CHADDR_LAST_OCTET) of the UDP payload, take it
# modulo the number of workers, return it as the socket's index in the group (the order the
# workers bound the port in). A datagram too short to have it makes the program fail, which
# returns 0: the first worker, which counts it as malformed.
_BPF_LD_B_ABS = 0x30
_BPF_ALU_MOD_K = 0x94
_BPF_RET_A = 0x16
SO_ATTACH_REUSEPORT_CBPF = getattr(socket, "SO_ATTACH_REUSEPORT_CBPF", 51)


def _steer_by_client(sock: socket.socket, workers: int) -> None:
    """Attach the program that picks a worker by :func:`worker_of` to ``sock``'s group."""
    program = b"".join(
        struct.pack("=HBBI", code, 0, 0, k)
        for code, k in (
            (_BPF_LD_B_ABS, CHADDR_LAST_OCTET),
            (_BPF_ALU_MOD_K, workers),
            (_BPF_RET_A, 0),
        )
    )
    buffer = ctypes.create_string_buffer(program, len(program))
    # struct sock_fprog: the number of instructions, then a pointer to them.
    fprog = struct.pack("@HP", len(program) // 8, ctypes.addressof(buffer))
    _attach(sock, fprog, buffer)


def _attach(sock: socket.socket, fprog: bytes, instructions: ctypes.Array[ctypes.c_char]) -> None:
    """Attach the program ``fprog`` points to, ``instructions``: passed here so that it lives
    until the kernel has copied it, where compiled code (setup.py) would free it as a local
    after its last use, the address taken."""
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)


def _join(sock: socket.socket, interface: str, group: IPv4Address) -> None:
    """Hear ``group`` on ``interface`` too, and learn each datagram's destination."""
    try:
        index = socket.if_nametoindex(interface)
        # struct ip_mreqn: the group, no local address, the interface by index.
        request = group.packed + bytes(4) + index.to_bytes(4, sys.byteorder)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, request)
        sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        # Only the groups this socket joined, not every group the host is in.
        sock.setsockopt(socket.IPPROTO_IP, IP_MULTICAST_ALL, 0)
    except OSError as exc:
        raise OSError(
            exc.errno, f"cannot join multicast group {group} on {interface}: {exc.strerror or exc}"
        ) from exc


def _receive_buffer(sock: socket.socket) -> None:
    """A kernel queue that rides out a pause of the process (a busy host, a slow disk) without
    losing a burst; as root beyond the system's default limit."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RECEIVE_BUFFER)
    except OSError:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        except OSError as exc:
            log.debug(format_event("receive-buffer", error=str(exc)))


class DhcpServer:
    """DHCP endpoints on one interface, answering through a :class:`DhcpService`.

    With a :class:`ServerWatch`, it also listens on the client port for other servers' replies
    and names each other server it hears in a warning. With ``multicast``, the PXE port also
    hears that group (PXE boot server discovery by multicast). A port in ``optional`` that
    another process on this host holds at start is left to it, with one warning, and the others
    are served; when it is free, it is served and shared with whoever binds it later. As DHCP
    ``worker`` (index, count), port 67 joins the workers' group and this server answers only
    the clients of its share (see :mod:`netbootd.services.dhcp.shares`).
    """

    def __init__(
        self,
        service: DhcpService,
        interface: str,
        ports: tuple[int, ...],
        *,
        watch: ServerWatch | None = None,
        watch_port: int = DHCP_CLIENT_PORT,
        probe_interval: float = 0.0,
        probe_port: int = DHCP_SERVER_PORT,
        optional: tuple[int, ...] = (),
        multicast: IPv4Address | None = None,
        worker: tuple[int, int] | None = None,
    ) -> None:
        self._service = service
        self._multicast = multicast
        self._worker = worker  # (index, count) of a DHCP worker: its share of the clients
        self._interface = interface
        self._ports = ports
        self._optional = optional
        self._watch = watch
        self._watch_port = watch_port
        self._probe_interval = probe_interval
        self._probe_port = probe_port
        self._prober: asyncio.Task[None] | None = None
        self._endpoints: list[_Endpoint] = []
        self._finishing: deque[_Queued] = deque()
        self._new: deque[_QueuedNew] = deque()
        self._turn: asyncio.Handle | None = None
        self._waiting: set[asyncio.Future[None]] = set()
        self._last_busy_warning = -BUSY_WARNING_INTERVAL
        self.counters: Counter[str] = Counter()
        self._malformed_lines = LineBudget()  # a flood of junk must not flood the log
        # Answers sent, by how long after their request's arrival (ANSWER_TIME_BOUNDS): a count
        # per bucket and the sum, kept as plain numbers so that an answer costs an increment.
        self._answer_counts: list[int] = [0] * (len(ANSWER_TIME_BOUNDS) + 1)
        self._answer_seconds = 0.0

    @property
    def service(self) -> DhcpService:
        return self._service

    def answer_times(self) -> Histogram:
        """How long the answers sent took, from their request's arrival to their send."""
        return Histogram(ANSWER_TIME_BOUNDS, tuple(self._answer_counts), self._answer_seconds)

    def all_counters(self) -> dict[str, int]:
        """The edge's counters (malformed, dropped, sent) and the service's, by outcome."""
        return {**self.counters, **self._service.counters}

    async def start(self) -> None:
        for port in self._ports:
            optional = port in self._optional
            try:
                if optional:
                    # Held by another process now? Then it is that one's. Free: ours, but
                    # shared, so that a server started on this host later can still bind it.
                    self._socket(port, shared=False).close()
                await self._listen(port, self.received, shared=optional)
            except OSError as exc:
                if not optional or exc.errno != errno.EADDRINUSE:
                    raise
                self.counters[f"port-{port}-held"] += 1
                effect = _HELD.get(port, "another process holds it")
                log.warning(format_event("port-held", port=port, effect=effect))
        if self._watch is not None:
            try:
                await self._listen(self._watch_port, self._watched, shared=True)
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
                return
            if self._probe_interval > 0:
                watcher = self._endpoints[-1]
                loop = asyncio.get_running_loop()
                self._prober = loop.create_task(self._probe_now_and_then(self._watch, watcher))

    async def _probe_now_and_then(self, watch: ServerWatch, endpoint: _Endpoint) -> None:
        """Send a probe soon after start, then once per interval, from the client port."""
        await asyncio.sleep(PROBE_FIRST_DELAY)
        while not endpoint.closed:
            data = encode(watch.probe())
            if endpoint.sendto(data, (str(BROADCAST), self._probe_port)):
                self.counters["probe-sent"] += 1
            await asyncio.sleep(self._probe_interval)

    def _socket(self, port: int, *, shared: bool) -> socket.socket:
        in_group = self._worker is not None and port == DHCP_SERVER_PORT
        try:
            sock = _udp_socket(self._interface, port, shared=shared, worker_group=in_group)
        except OSError as exc:
            raise OSError(exc.errno, f"UDP port {port}: {exc.strerror or exc}") from exc
        if in_group and self._worker is not None and self._worker[0] == 0:
            try:
                _steer_by_client(sock, self._worker[1])  # the first worker sets up the group
            except OSError as exc:
                sock.close()
                raise OSError(
                    exc.errno, f"UDP port {port}: cannot steer clients to workers: {exc}"
                ) from exc
        return sock

    async def _listen(
        self,
        port: int,
        on_datagram: Callable[[_Endpoint, bytes, tuple[str, int]], None],
        *,
        shared: bool,
    ) -> None:
        sock = self._socket(port, shared=shared)
        group = self._multicast if port == PXE_PORT else None
        if group is not None:
            try:
                _join(sock, self._interface, group)
            except OSError:
                sock.close()
                raise
        endpoint = _Endpoint(port, sock, on_datagram, group=group)
        endpoint.start(asyncio.get_running_loop())
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
                client="netbootd's probe" if other.to_probe else other.client,
                address=str(other.address),
                replies=other.times,
                effect="clients may take its offers instead of ours",
            )
        )

    async def close(self) -> None:
        if self._prober is not None:
            self._prober.cancel()
            await asyncio.gather(self._prober, return_exceptions=True)
            self._prober = None
        for endpoint in self._endpoints:
            endpoint.close()
        self._endpoints.clear()
        if self._turn is not None:
            self._turn.cancel()
            self._turn = None
        self._finishing.clear()
        self._new.clear()
        if self._waiting:
            # What is being written lands, and its transactions are concluded (and logged).
            await asyncio.wait(list(self._waiting))

    def received(self, endpoint: _Endpoint, data: bytes, source: tuple[str, int]) -> None:
        worker = self._worker
        if (
            worker is not None
            and endpoint.port == DHCP_SERVER_PORT
            and worker_of(data, worker[1]) != worker[0]
        ):
            return  # a broadcast, which every worker hears: another worker's client
        arrived = time.perf_counter()
        if peek_message_type(data) == MessageType.DISCOVER:
            # A new exchange, decoded when its turn comes: one dropped under load costs
            # nothing more than its read.
            self._queue_new(endpoint, data, source, arrived)
            return
        packet = self._decode(data, source)
        if packet is None:
            return
        if packet.message_type in _FINISHING:
            if len(self._waiting) + len(self._finishing) >= MAX_WAITING:
                self._busy(source, "too many replies waiting for the lease store")
                return
            self._finishing.append((endpoint, packet, source, arrived))
            self._schedule_turn()
        else:
            self._queue_new(endpoint, packet, source, arrived)

    def _queue_new(
        self,
        endpoint: _Endpoint,
        item: DhcpPacket | bytes,
        source: tuple[str, int],
        arrived: float,
    ) -> None:
        if len(self._new) >= MAX_QUEUED:
            _, _, dropped_from, _ = self._new.popleft()
            self._busy(dropped_from, "too many new exchanges queued; the oldest was dropped")
        self._new.append((endpoint, item, source, arrived))
        self._schedule_turn()

    def _schedule_turn(self) -> None:
        if self._turn is None:
            self._turn = asyncio.get_running_loop().call_soon(self._take_turn)

    def _decode(self, data: bytes, source: tuple[str, int]) -> DhcpPacket | None:
        try:
            return decode(data)
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
            return None

    def _busy(self, source: tuple[str, int], reason: str) -> None:
        self.counters["dropped-busy"] += 1
        now = time.monotonic()
        if now - self._last_busy_warning >= BUSY_WARNING_INTERVAL:
            # One line per interval: a flood must not flood the log as well.
            self._last_busy_warning = now
            log.warning(
                format_event(
                    "dropped",
                    source=source[0],
                    reason=reason,
                    dropped=self.counters["dropped-busy"],
                )
            )

    def _take_turn(self) -> None:
        """Answer the queued requests, then a few new exchanges; come back for the rest."""
        self._turn = None
        finishing, new = self._finishing, self._new
        for _ in range(min(FINISHING_PER_TURN, len(finishing))):
            self._answer(*finishing.popleft())
        for _ in range(min(NEW_PER_TURN, len(new))):
            endpoint, item, source, arrived = new.popleft()
            packet = self._decode(item, source) if isinstance(item, bytes) else item
            if packet is not None:
                self._answer(endpoint, packet, source, arrived)
        if finishing or new:
            self._schedule_turn()  # next turn, after the loop has read what arrived meanwhile

    def _answer(
        self, endpoint: _Endpoint, packet: DhcpPacket, source: tuple[str, int], arrived: float
    ) -> None:
        if self._watch is not None and self._watch.is_probe(packet):
            self.counters["own-probe"] += 1  # our own question to other servers
            return
        try:
            step = self._service.answer(
                packet, local_port=endpoint.port, source=source, group=endpoint.group
            )
        except Exception:
            # A bug of ours must cost one reply, not the listener.
            self._internal_error(packet)
            return
        if isinstance(step, Pending):
            durable = step.durable
            self._waiting.add(durable)
            durable.add_done_callback(lambda _: self._concluded(endpoint, packet, step, arrived))
        elif step is not None:
            self._send(endpoint, step, arrived)

    def _concluded(
        self, endpoint: _Endpoint, packet: DhcpPacket, pending: Pending, arrived: float
    ) -> None:
        self._waiting.discard(pending.durable)
        try:
            reply = pending.finish()
        except Exception:
            self._internal_error(packet)
            return
        if reply is not None:
            self._send(endpoint, reply, arrived)

    def _internal_error(self, packet: DhcpPacket) -> None:
        self.counters["internal-error"] += 1
        log.exception(format_event("internal-error", xid=f"0x{packet.xid:08x}"))

    def _send(self, endpoint: _Endpoint, reply: Reply, arrived: float) -> None:
        if endpoint.closed:
            self.counters["unsent-closing"] += 1  # answered while the server shuts down
            return
        try:
            data = encode(reply.packet, max_size=reply.max_size)
        except ValueError:
            self.counters["encode-error"] += 1
            log.exception(format_event("encode-error", xid=f"0x{reply.packet.xid:08x}"))
            self._service.unsent(reply)
            return
        # The unspecified address means the broadcast.
        destination = reply.address if reply.address != ZERO else BROADCAST
        if endpoint.sendto(data, (address_text(destination), reply.port)):
            self.counters["sent"] += 1
            took = time.perf_counter() - arrived
            self._answer_counts[bisect_left(ANSWER_TIME_BOUNDS, took)] += 1
            self._answer_seconds += took
        else:
            self.counters["send-failed"] += 1
            self._service.unsent(reply)
