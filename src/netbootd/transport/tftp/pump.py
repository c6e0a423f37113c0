"""Read transfers carried out by a thread of their own, on the transfer's own socket.

Lock-step TFTP is bound by latency: every block waits for the client's ACK of the one before,
so the time from an ACK arriving to the next DATA leaving sets the transfer's speed. On the event
loop each block costs an epoll wake-up, a callback dispatch and timer bookkeeping. A thread
blocked in ``recvfrom`` on the transfer's socket is woken by the kernel straight into the code
that answers, and its file reads never touch the event loop. The
:class:`~netbootd.proto.tftp.ReadSession` still decides everything (blocks, windows,
retransmissions, the end); this module only carries out its actions, through the same
:func:`~netbootd.transport.tftp.actions.carry_out` and :func:`~netbootd.transport.tftp.send.send`
as the event loop's transfers.

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
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from netbootd.logs.events import format_event
from netbootd.proto.tftp import (
    Action,
    ErrorCode,
    Finish,
    Outcome,
    ReadSession,
    TftpDecodeError,
    read_actions,
)
from netbootd.proto.tftp.framing import UNKNOWN_TID, Datagram, across_chunks
from netbootd.services.files import OpenedFile
from netbootd.services.tftp import client_text
from netbootd.transport.tftp.actions import carry_out
from netbootd.transport.tftp.send import Address, from_stranger, log_send_failed, send

__all__ = [
    "READ_CHUNK",
    "SESSION_DATAGRAM",
    "PollSlots",
    "PumpHooks",
    "ReadPump",
]

log = logging.getLogger("netbootd.tftp")

# File octets are read about this much at a time, rounded to whole blocks.
READ_CHUNK = 256 * 1024
# What a reader sends to a transfer's own port: ACKs and ERRORs. Anything longer is not one
# of those, and is still seen as too long when cut here.
SESSION_DATAGRAM = 2048
# A busy-polling transfer whose client misses the poll this many times running stops polling.
_POLL_MISSES = 8
# SO_RCVTIMEO is only changed when the wait it should have differs by more than this.
_TIMEOUT_SLACK = 0.005


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

    def ready(self, offset: int, end: int) -> bool:
        # Read on demand, in this thread: whatever is asked for can be had at once.
        return True

    def advance(self, offset: int) -> None:
        # Chunks go as the transfer moves on (see _load), not when a window is acknowledged.
        pass

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
            log.exception("%s", format_event("internal-error", client=client_text(self.client)))
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
                    log.debug("%s", format_event("socket-error", error=str(exc)))
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
            log.debug("%s", format_event("socket-error", error=str(exc)))
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
        # Nothing is ever held back: _FileBlocks reads what a window needs on the spot.
        left = carry_out(actions, self._blocks, self, self.client)
        return left if isinstance(left, Finish) else None

    # -- the outbox carry_out sends through ---------------------------------------------------

    @property
    def gso_max_blksize(self) -> int | None:
        return self._gso

    def send(self, datagram: Datagram, addr: Address, segment: int = 0) -> None:
        # A blocking socket takes every datagram: nothing comes back pending.
        send(
            self._sock,
            datagram,
            addr,
            segment,
            no_offload=self._no_offload,
            failed=self._send_failed,
        )

    def _no_offload(self) -> None:
        self._gso = None
        self._report(self._hooks.offload_failed)

    def _send_to(self, datagram: Datagram, addr: Address) -> None:
        self.send(datagram, addr)

    def _send_failed(self, addr: Address, exc: OSError) -> None:
        # Unreachable, no route, too big: the datagram is lost; retransmission recovers.
        self._report(self._hooks.count, "send_error")
        log_send_failed(addr, exc)

    def _report(self, hook: Callable[..., None], *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody to tell
            self._loop.call_soon_threadsafe(hook, *args)
