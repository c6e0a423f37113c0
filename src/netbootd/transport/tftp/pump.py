"""Read transfers carried out by a thread of their own, on the transfer's own socket.

Lock-step TFTP is bound by latency: every block waits for the client's ACK of the one before,
so the time from an ACK arriving to the next DATA leaving sets the transfer's speed. On the event
loop each block costs an epoll wake-up, a callback dispatch and timer bookkeeping. A thread
blocked in ``recvfrom`` on the transfer's socket is woken by the kernel straight into the code
that answers, and its file reads never touch the event loop. The
:class:`~netbootd.proto.tftp.ReadSession` still decides everything (blocks, windows,
retransmissions, the end); this module only carries out its actions.

A transfer whose client answers within microseconds may wait for the next ACK by polling its
socket for a short while before sleeping in the kernel (busy polling), saving a sleep and a
wake-up on every block. Only a few transfers poll at once (one fewer than the CPUs by default),
and a transfer whose client keeps missing the poll gives its place up.

The thread must not touch the event loop's state: counters, the log line and the server's
bookkeeping reach the loop through ``call_soon_threadsafe``. It must not decide anything the
session decides.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from netbootd.proto.tftp import (
    Action,
    Error,
    ErrorCode,
    Finish,
    Opcode,
    OptionAck,
    Outcome,
    ReadSession,
    SendBlocks,
    SendError,
    SendOack,
    TftpDecodeError,
    decode,
    encode,
)
from netbootd.services.files import OpenedFile

__all__ = [
    "READ_CHUNK",
    "UDP_SEGMENT",
    "UNKNOWN_TID",
    "Datagram",
    "PollSlots",
    "PumpHooks",
    "ReadPump",
    "across_chunks",
    "block_datagrams",
    "from_stranger",
    "offload_refused",
    "read_actions",
    "segments",
    "send_datagram",
]

log = logging.getLogger("netbootd.tftp")

# File octets are read about this much at a time, rounded to whole blocks.
READ_CHUNK = 256 * 1024
# Linux: setsockopt level SOL_UDP, UDP_SEGMENT (since 4.18). At most 64 segments per send.
UDP_SEGMENT = 103
_GSO_MAX_SEGMENTS = 64
_GSO_MAX_BYTES = 65000

_DATA = int(Opcode.DATA)
_ACK = int(Opcode.ACK)
_DATA_HEADER = struct.Struct("!HH")  # opcode, block number
# What a reader sends to a transfer's own port: ACKs and ERRORs. Anything longer is not one
# of those, and is still seen as too long when cut here.
SESSION_DATAGRAM = 2048
# A busy-polling transfer whose client misses the poll this many times running stops polling.
_POLL_MISSES = 8
# SO_RCVTIMEO is only changed when the wait it should have differs by more than this.
_TIMEOUT_SLACK = 0.005

Address = tuple[Any, ...]
Buffer = bytes | bytearray | memoryview
# One buffer, or pieces that one send gathers into a datagram.
Datagram = Buffer | list[Buffer]


def block_datagrams(
    action: SendBlocks, view: Callable[[int, int], memoryview], gso_max_blksize: int | None
) -> Iterator[tuple[Datagram, int]]:
    """The DATA datagrams of a window, as (datagram, segment size) pairs.

    A datagram is one buffer, or a list of pieces the kernel gathers into one send (no copy
    here). With a segment size, that send leaves as several datagrams of that size (UDP
    segmentation offload); it is used when the blocks fit the path MTU
    (``blksize <= gso_max_blksize``). Segment size 0 means one datagram.
    """
    first, last, blksize, _ = action
    offset, end = action.offset, action.end
    if first == last:
        yield _DATA_HEADER.pack(_DATA, first & 0xFFFF) + view(offset, end - offset), 0
        return
    data = view(offset, end - offset)
    pack = _DATA_HEADER.pack
    parts: list[Buffer] = []
    position = 0
    for seq in range(first, last + 1):
        parts.append(pack(_DATA, seq & 0xFFFF))
        parts.append(data[position : position + blksize])
        position += blksize
    step = blksize + 4
    if gso_max_blksize is not None and blksize <= gso_max_blksize:
        per_send = 2 * min(_GSO_MAX_SEGMENTS, _GSO_MAX_BYTES // step)
        for start in range(0, len(parts), per_send):
            group = parts[start : start + per_send]
            yield group, (step if len(group) > 2 else 0)
    else:
        for start in range(0, len(parts), 2):
            yield parts[start : start + 2], 0


# RFC 1350 §4: what a packet from another transfer ID gets; the transfer goes on.
UNKNOWN_TID = encode(Error(ErrorCode.UNKNOWN_TID, "unknown transfer ID"))


def from_stranger(addr: Address, client: Address) -> bool:
    """Whether a datagram at a transfer's port came from someone other than its client."""
    return addr != client and addr[:2] != client[:2]


def read_actions(session: ReadSession, data: bytes, now: float) -> list[Action]:
    """What a read session does with a datagram from its client.

    Raises :class:`TftpDecodeError` for a damaged one. The hot path, an ACK, skips the general
    decoder.
    """
    if len(data) == 4 and data[1] == _ACK and data[0] == 0:
        return session.ack((data[2] << 8) | data[3], now)
    return session.receive(decode(data), now)


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


def segments(datagram: Datagram, segment: int) -> list[memoryview]:
    """The datagrams a segmented send would have made, one by one."""
    whole = memoryview(b"".join(datagram) if isinstance(datagram, list) else datagram)
    return [whole[start : start + segment] for start in range(0, len(whole), segment)]


def across_chunks(
    view: Callable[[int, int], memoryview], chunk: int, offset: int, length: int
) -> memoryview:
    """Octets that span chunks of ``chunk`` octets: each chunk's part, copied together."""
    pieces = []
    while length > 0:
        take = min(length, chunk - offset % chunk)
        pieces.append(view(offset, take))
        offset += take
        length -= take
    return memoryview(b"".join(pieces))


class PollSlots:
    """How many transfers may busy-poll at once, and whether any may poll just now."""

    def __init__(self, slots: int) -> None:
        self._free = slots
        self._lock = threading.Lock()
        # Set by the server while the event loop has transfers of its own to serve.
        self.paused = False

    def take(self) -> bool:
        with self._lock:
            if self._free <= 0:
                return False
            self._free -= 1
            return True

    def give(self) -> None:
        with self._lock:
            self._free += 1

    @property
    def free(self) -> int:
        return self._free


@dataclass(frozen=True, slots=True)
class PumpHooks:
    """What a pump reports; each is called on the event loop."""

    finished: Callable[[Finish], None]
    count: Callable[[str], None]
    malformed: Callable[[Address, bytes, TftpDecodeError], None]
    offload_failed: Callable[[], None]


class _ReadFailed(Exception):  # noqa: N818 - the file failed us; the transfer ends with ERROR
    pass


class _FileBlocks:
    """The file's octets, read in chunks of whole blocks as the transfer reaches them.

    A block never straddles two chunks, since chunks start on block boundaries. The chunk
    before the current one is kept, for a window that goes back across the boundary.
    """

    def __init__(self, opened: OpenedFile, blksize: int) -> None:
        self._opened = opened
        self._size = opened.size
        self._chunk = blksize * max(1, READ_CHUNK // blksize)
        self._chunks: dict[int, memoryview] = {}

    def view(self, offset: int, length: int) -> memoryview:
        """The octets at ``offset``: without copying unless they span two chunks."""
        chunk = self._chunk
        index = offset // chunk
        start = offset - index * chunk
        if start + length <= chunk:
            data = self._chunks.get(index)
            if data is None:
                data = self._load(index)
            return data[start : start + length]
        return across_chunks(self.view, chunk, offset, length)

    def _load(self, index: int) -> memoryview:
        offset = index * self._chunk
        length = max(0, min(self._chunk, self._size - offset))
        try:
            data = self._opened.read(offset, length) if length else b""
        except OSError as exc:
            raise _ReadFailed(f"read error: {exc.strerror or exc}") from exc
        if len(data) != length:
            # The file shrank under us; a short block would end the transfer early with the
            # client none the wiser.
            raise _ReadFailed("file changed during transfer")
        for old in [i for i in self._chunks if i < index - 1 or i > index]:
            del self._chunks[old]
        view = self._chunks[index] = memoryview(data)
        return view


class ReadPump:
    """One read transfer, carried out by its own thread on its own blocking socket."""

    def __init__(
        self,
        sock: socket.socket,
        client: Address,
        session: ReadSession,
        opened: OpenedFile,
        *,
        hooks: PumpHooks,
        loop: asyncio.AbstractEventLoop,
        gso_max_blksize: int | None,
        poll_seconds: float,
        poll_slots: PollSlots,
    ) -> None:
        self._sock = sock
        self.client = client
        self.session = session
        self._opened = opened
        self._blocks = _FileBlocks(opened, session.negotiated.blksize)
        self._hooks = hooks
        self._loop = loop
        self._gso = gso_max_blksize
        self._poll_seconds = poll_seconds
        self._poll_slots = poll_slots
        self._polling = False
        self._misses = 0
        self._wait = 0.0  # the socket's current SO_RCVTIMEO
        self._abort: tuple[int, str] | None = None
        # Held while the socket is closed, so an abort never shuts down a reused descriptor.
        self._sock_lock = threading.Lock()
        self._sock_open = True
        self._thread = threading.Thread(
            target=self._run, name=f"netbootd-tftp {client[0]}:{client[1]}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def abort(self, code: int, message: str) -> None:
        """End the transfer from the server's side; safe from any thread."""
        self._abort = (code, message)
        with self._sock_lock:
            if self._sock_open:
                # Wakes the thread from recvfrom; sending still works.
                with contextlib.suppress(OSError):
                    self._sock.shutdown(socket.SHUT_RD)

    # -- the thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        finish: Finish | None = None
        try:
            if self._poll_seconds > 0:
                self._polling = self._poll_slots.take()
            finish = self._carry_out(self.session.start(time.monotonic()))
            while finish is None:
                finish = self._step()
        except _ReadFailed as exc:
            finish = self._carry_out(self.session.abort(ErrorCode.NOT_DEFINED, str(exc)))
        except Exception:
            log.exception("tftp: unexpected error in transfer for %s:%s", *self.client[:2])
            self._report(self._hooks.count, "internal_error")
            with contextlib.suppress(Exception):
                finish = self._carry_out(
                    self.session.abort(ErrorCode.NOT_DEFINED, "internal server error")
                )
        finally:
            self._stop_polling()
            with self._sock_lock:
                self._sock_open = False
                self._sock.close()
            self._opened.close()
            if finish is None:
                finish = Finish(Outcome.ERROR_SENT, "internal server error")
            self._report(self._hooks.finished, finish)

    def _step(self) -> Finish | None:
        """Wait for the next datagram or the deadline, and carry out what the session says."""
        session = self.session
        received = self._receive()
        now = time.monotonic()
        if self._abort is not None:
            code, message = self._abort
            return self._carry_out(session.abort(code, message))
        if received is None or received[1] is None:
            return self._carry_out(session.timeout(now))
        data, addr = received
        actions: list[Action] = []
        if from_stranger(addr, self.client):
            self._report(self._hooks.count, "unknown_tid")
            self._send_to(UNKNOWN_TID, addr)
        else:
            try:
                actions = read_actions(session, data, now)
            except TftpDecodeError as exc:
                # A damaged packet from the peer is dropped; the retransmission recovers.
                self._report(self._hooks.malformed, addr, data, exc)
        if not actions:
            # Strays and duplicates must not hold off a retransmission that is due.
            actions = session.timeout(now)
        return self._carry_out(actions)

    def _receive(self) -> tuple[bytes, Address] | None:
        """The next datagram, or None once the session's deadline has passed."""
        sock = self._sock
        if self._polling and not self._poll_slots.paused:
            until = time.monotonic() + self._poll_seconds
            while True:
                try:
                    received = sock.recvfrom(SESSION_DATAGRAM, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    if time.monotonic() >= until:
                        break
                    continue
                except OSError as exc:
                    log.debug("tftp socket error: %s", exc)
                    return None
                self._misses = 0
                return received
            self._misses += 1
            if self._misses >= _POLL_MISSES:
                self._stop_polling()
        deadline = self.session.deadline
        if deadline is not None:
            wait = deadline - time.monotonic()
            if wait <= 0:
                return None
            if abs(wait - self._wait) > _TIMEOUT_SLACK:
                # Never 0, which would mean "wait for ever".
                self._set_wait(max(wait, 0.001))
        elif self._wait != 1.0:
            self._set_wait(1.0)  # nothing due: wake now and then to look for an abort
        try:
            return sock.recvfrom(SESSION_DATAGRAM)
        except BlockingIOError:
            return None  # SO_RCVTIMEO ran out
        except OSError as exc:
            # An ICMP error for an earlier datagram (port unreachable): nothing to do.
            log.debug("tftp socket error: %s", exc)
            return None

    def _set_wait(self, seconds: float) -> None:
        whole = int(seconds)
        self._sock.setsockopt(
            socket.SOL_SOCKET,
            socket.SO_RCVTIMEO,
            struct.pack("ll", whole, int((seconds - whole) * 1_000_000)),
        )
        self._wait = seconds

    def _stop_polling(self) -> None:
        if self._polling:
            self._polling = False
            self._poll_slots.give()

    # -- carrying out actions -----------------------------------------------------------------

    def _carry_out(self, actions: list[Action]) -> Finish | None:
        for action in actions:
            if isinstance(action, SendBlocks):
                for datagram, segment in block_datagrams(action, self._blocks.view, self._gso):
                    self._send(datagram, segment)
            elif isinstance(action, SendOack):
                self._send_to(encode(OptionAck(action.options)), self.client)
            elif isinstance(action, SendError):
                self._send_to(encode(Error(action.code, action.message)), self.client)
            else:
                return action
        return None

    def _send(self, datagram: Datagram, segment: int) -> None:
        try:
            send_datagram(self._sock, datagram, self.client, segment)
        except OSError as exc:
            if not (segment and offload_refused(exc)):
                self._send_failed(self.client, exc)
                return
            # No segmentation offload here after all: the same datagrams one by one.
            self._gso = None
            self._report(self._hooks.offload_failed)
            for piece in segments(datagram, segment):
                self._send(piece, 0)

    def _send_to(self, datagram: Buffer, addr: Address) -> None:
        try:
            self._sock.sendto(datagram, addr)
        except OSError as exc:
            self._send_failed(addr, exc)

    def _send_failed(self, addr: Address, exc: OSError) -> None:
        # Unreachable, no route, too big: the datagram is lost; retransmission recovers.
        self._report(self._hooks.count, "send_error")
        log.debug("tftp: send to %s:%s failed: %s", addr[0], addr[1], exc)

    def _report(self, hook: Callable[..., None], *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody to tell
            self._loop.call_soon_threadsafe(hook, *args)
