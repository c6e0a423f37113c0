"""The asyncio edge of the TFTP server: sockets, timers, worker threads and the transfer log line.

A listener on the well-known port takes requests. Each accepted transfer gets its own ephemeral
UDP socket (a new transfer ID, RFC 1350 §4), or, in single-port mode, shares the listener's and
is told apart by the client's address and port. A :class:`netbootd.proto.tftp.ReadSession` (or
:class:`netbootd.proto.tftp_write.WriteSession` for uploads) decides everything about the
transfer; this module only carries out its actions. It must not decide block numbers, windows,
retransmissions or option values, and one bad datagram or one failing transfer must never stop
the listener.

While the server is not busy, a read on its own port is carried out by a thread of its own
(:mod:`netbootd.transport.tftp_pump`), which answers each ACK as soon as the kernel wakes it;
under load, and in single-port mode, reads share the event loop, which serves many in one
thread. Either way the same session decides.

On the event loop, file system calls (open, read, write, fsync) run in a small pool of worker
threads, so a slow disk delays only the transfer that waits for it, never the event loop or the
DHCP service that shares it. Reads go ahead of the transfer in chunks of whole blocks. The hot
path (an ACK in, the next DATA out) avoids the general decoder, and a window of blocks that fit
the path MTU leaves in one ``sendmsg`` with UDP segmentation offload (``UDP_SEGMENT``) where the
kernel has it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from netbootd.logfmt import format_event
from netbootd.proto.tftp import (
    Ack,
    Action,
    Error,
    ErrorCode,
    Finish,
    Mode,
    Negotiated,
    Opcode,
    OptionAck,
    Outcome,
    Packet,
    ReadRequest,
    ReadSession,
    SendBlocks,
    SendError,
    SendOack,
    TftpDecodeError,
    WriteRequest,
    check_mode,
    decode,
    encode,
    negotiate,
    to_netascii,
)
from netbootd.proto.tftp_write import (
    Complete,
    SendAck,
    WriteAction,
    WriteBlock,
    WriteSession,
    negotiate_write,
)
from netbootd.services.files import (
    AccessDenied,
    FileLookupError,
    FileNotFound,
    FileSource,
    OpenedFile,
)
from netbootd.services.uploads import FileExists, UploadDir, UploadFile
from netbootd.transport.tftp_pump import (
    READ_CHUNK,
    SESSION_DATAGRAM,
    UNKNOWN_TID,
    Datagram,
    PollSlots,
    PumpHooks,
    ReadPump,
    across_chunks,
    block_datagrams,
    from_stranger,
    offload_refused,
    read_actions,
    segments,
    send_datagram,
)

__all__ = ["NETASCII_LIMIT", "TftpServer", "TftpSettings"]

log = logging.getLogger("netbootd.tftp")

# netascii is converted in memory, whole; boot files never use it, so a small cap is enough.
NETASCII_LIMIT = 16 * 1024 * 1024
# Uploads reach the disk in writes of about this size; a client is held back (its ACK waits)
# while this much is waiting for the disk.
UPLOAD_CHUNK = 256 * 1024
UPLOAD_BACKLOG = 4 * 1024 * 1024
# Socket buffers large enough for a whole window of big blocks from many transfers.
_SOCKET_BUFFER = 4 * 1024 * 1024
_MAX_DATAGRAM = 65536
# How long shutdown waits for transfer threads to send their ERROR and end.
_THREAD_STOP_WAIT = 2.0

Address = tuple[Any, ...]


def _client_text(addr: Address) -> str:
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


@dataclass(frozen=True, slots=True)
class TftpSettings:
    """Limits and switches of the TFTP service."""

    max_blksize: int = 1468
    max_windowsize: int = 64
    timeout: float = 1.0
    retries: int = 5
    max_sessions: int = 1024
    max_sessions_per_client: int = 32
    single_port: bool = False
    # The largest block whose DATA datagram still fits the path MTU (so it may be sent with
    # segmentation offload); None means "do not use offload".
    gso_max_blksize: int | None = 1468
    workers: int = 4
    # How many read transfers at once may run in threads of their own (see
    # netbootd.transport.tftp_pump); the rest share the event loop. Threads answer each ACK
    # sooner, but beyond a few busy ones they spend their time handing the interpreter lock
    # back and forth, while the event loop serves many transfers in one thread.
    transfer_threads: int = 2
    # A transfer in a thread may poll its socket this long (seconds) for the next ACK before
    # sleeping in the kernel; 0 never polls.
    busy_poll: float = 200e-6
    # How many transfers may poll at once; None is one fewer than the CPUs this process has.
    busy_pollers: int | None = None
    # Where write requests may create new files; None refuses every write.
    upload_dir: Path | None = None
    upload_max_size: int = 1024 * 1024 * 1024


class _MemoryFile:
    """An in-memory OpenedFile, for content converted before sending (netascii)."""

    def __init__(self, content: bytes) -> None:
        self._content = content

    @property
    def size(self) -> int:
        return len(self._content)

    def read(self, offset: int, length: int) -> bytes:
        return self._content[offset : offset + length]

    def close(self) -> None:
        self._content = b""


class _Refusal(Exception):  # noqa: N818 - a request refused, not a failure of ours
    """Why a request cannot be served: what to answer, log and count."""

    def __init__(
        self, error: Error, result: str, counter: str, level: int = logging.WARNING
    ) -> None:
        super().__init__(result)
        self.error, self.result, self.counter, self.level = error, result, counter, level


def _cannot_read(reason: str) -> _Refusal:
    return _Refusal(
        Error(ErrorCode.NOT_DEFINED, "cannot read file"), f"error: {reason}", "server_error"
    )


def _access_denied(exc: AccessDenied) -> _Refusal:
    return _Refusal(
        Error(ErrorCode.ACCESS_VIOLATION, "access violation"),
        f"access denied: {exc.reason}",
        "access_denied",
    )


def _open_for(source: FileSource, request: ReadRequest, peer: str) -> OpenedFile:
    """Open the requested file in the requested mode, or raise the :class:`_Refusal`.

    Blocking: runs in a worker thread.
    """
    try:
        opened = source.open(request.filename, peer)
    except FileNotFound:
        # pxelinux and GRUB probe many names that do not exist: routine, not a warning.
        raise _Refusal(
            Error(ErrorCode.FILE_NOT_FOUND, "file not found"),
            "not found",
            "not_found",
            logging.INFO,
        ) from None
    except AccessDenied as exc:
        raise _access_denied(exc) from None
    except FileLookupError as exc:
        raise _cannot_read(exc.reason) from None
    except OSError as exc:
        raise _cannot_read(exc.strerror or str(exc)) from None
    if request.mode != Mode.NETASCII:
        return opened
    try:
        if opened.size > NETASCII_LIMIT:
            message = "file too large for netascii mode"
            raise _Refusal(
                Error(ErrorCode.NOT_DEFINED, message), f"error: {message}", "server_error"
            )
        raw = opened.read(0, opened.size)
    except OSError as exc:
        raise _cannot_read(exc.strerror or str(exc)) from None
    finally:
        opened.close()
    return _MemoryFile(to_netascii(raw))


def _create_for(uploads: UploadDir, request: WriteRequest) -> UploadFile:
    """Start the file an upload fills, or raise the :class:`_Refusal`. Blocking."""
    try:
        return uploads.create(request.filename)
    except FileExists:
        raise _Refusal(
            Error(ErrorCode.FILE_EXISTS, "file already exists"),
            "refused: file exists",
            "upload_refused",
        ) from None
    except AccessDenied as exc:
        raise _access_denied(exc) from None
    except OSError as exc:
        code = ErrorCode.DISK_FULL if exc.errno in (errno.ENOSPC, errno.EDQUOT) else 0
        raise _Refusal(
            Error(code, "cannot create file"),
            f"error: {exc.strerror or exc}",
            "server_error",
        ) from None


# --------------------------------------------------------------------------------------------
# Sockets


def _udp_socket(family: int, address: Address, *, blocking: bool) -> socket.socket:
    """A UDP socket bound to ``address``, with buffers for whole windows of big blocks."""
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(blocking)
        for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, option, _SOCKET_BUFFER)
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


class _Endpoint:
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
        bufsize: int = _MAX_DATAGRAM,
    ) -> _Endpoint:
        sock = _udp_socket(family, address, blocking=False)
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
            log.debug("tftp socket error: %s", exc)
            return
        self._on_datagram(data, addr)

    def send(self, datagram: Datagram, addr: Address, segment: int = 0) -> None:
        """Send ``datagram``; with ``segment``, as datagrams of that size (UDP GSO)."""
        if self.closed:
            return
        if self._outbox:
            self._outbox.append((datagram, addr, segment))
        elif not self._try_send(datagram, addr, segment):
            self._outbox.append((datagram, addr, segment))
            self._want_writable()

    def _try_send(self, datagram: Datagram, addr: Address, segment: int) -> bool:
        """Whether the datagram is done with (sent, or lost for good); False to retry later."""
        try:
            send_datagram(self.sock, datagram, addr, segment)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            if segment and offload_refused(exc):
                # No segmentation offload here after all: the same datagrams one by one.
                self._on_no_offload()
                pieces = segments(datagram, segment)
                for number, piece in enumerate(pieces):
                    if not self._try_send(piece, addr, 0):
                        rest = [(p, addr, 0) for p in pieces[number:]]
                        self._outbox.extendleft(reversed(rest))
                        self._want_writable()
                        break
                return True
            self._send_failed(addr, exc)
        return True

    def _send_failed(self, addr: Address, exc: OSError) -> None:
        # Unreachable, no route, too big: the datagram is lost; retransmission recovers.
        self._counters["send_error"] += 1
        log.debug("tftp: send to %s failed: %s", _client_text(addr), exc)

    def _want_writable(self) -> None:
        if not self._writing:
            self._writing = True
            self._loop.add_writer(self.sock.fileno(), self._writable)

    def _writable(self) -> None:
        while self._outbox and not self.closed:
            datagram, addr, segment = self._outbox.popleft()
            if not self._try_send(datagram, addr, segment):
                self._outbox.appendleft((datagram, addr, segment))
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


# --------------------------------------------------------------------------------------------
# Reading ahead


class _ReadAhead:
    """File octets read in worker threads ahead of the transfer, in chunks of whole blocks.

    A block never straddles two chunks, since chunks start on block boundaries. Chunks behind
    the first unacknowledged block are dropped.
    """

    def __init__(
        self,
        opened: OpenedFile,
        blksize: int,
        window: int,
        executor: Executor,
        *,
        on_ready: Callable[[], None],
        on_error: Callable[[str], None],
    ) -> None:
        self._opened = opened
        self._size = opened.size
        self.chunk = blksize * max(1, READ_CHUNK // blksize)
        # Keep a window and a chunk beyond it in memory or on the way.
        self._ahead = blksize * window + self.chunk
        self._executor = executor
        self._on_ready = on_ready
        self._on_error = on_error
        self._loop = asyncio.get_running_loop()
        self._chunks: dict[int, memoryview] = {}
        self._reading: set[int] = set()
        self._low = 0
        self._next_look = 0
        self.closed = False

    def ready(self, offset: int, end: int) -> bool:
        """Whether the octets from ``offset`` to ``end`` are in memory; if not, they are
        being read and ``on_ready`` follows."""
        chunk = self.chunk
        first, last = offset // chunk, max(offset, end - 1) // chunk
        if first == last and first in self._chunks:
            return True
        missing = False
        for index in range(first, last + 1):
            if index not in self._chunks:
                self._fetch(index)
                # Past the end of the file it is known at once.
                missing = missing or index not in self._chunks
        return not missing

    def view(self, offset: int, length: int) -> memoryview:
        """The octets at ``offset`` (which must be :meth:`ready`): without copying unless
        they span two chunks."""
        chunk = self.chunk
        index = offset // chunk
        start = offset - index * chunk
        if start + length <= chunk:
            return self._chunks[index][start : start + length]
        return across_chunks(self.view, chunk, offset, length)

    def advance(self, offset: int) -> None:
        """Everything before ``offset`` is acknowledged: drop it, and read ahead of it."""
        if offset < self._next_look:
            return
        chunk = self.chunk
        low = offset // chunk
        if low != self._low:
            for index in [i for i in self._chunks if i < low]:
                del self._chunks[index]
            self._low = low
        last = min(offset + self._ahead, self._size) // chunk
        for index in range(low, last + 1):
            if index not in self._chunks:
                self._fetch(index)
        # Nothing changes until the acknowledged point crosses into the next chunk (one to
        # drop) or brings the next unread chunk within reach (one to read).
        self._next_look = min((low + 1) * chunk, (last + 1) * chunk - self._ahead)

    def _fetch(self, index: int) -> None:
        if index in self._reading or self.closed:
            return
        offset = index * self.chunk
        if offset > self._size or (offset == self._size and offset > 0):
            # Past the end: only the empty last block of an exact multiple lives there.
            self._chunks[index] = memoryview(b"")
            return
        length = min(self.chunk, self._size - offset)
        self._reading.add(index)
        future = self._loop.run_in_executor(self._executor, self._opened.read, offset, length)
        future.add_done_callback(lambda f: self._done(index, length, f))

    def _done(self, index: int, length: int, future: asyncio.Future[bytes]) -> None:
        self._reading.discard(index)
        if self.closed or future.cancelled():
            return
        exc = future.exception()
        if exc is not None:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            self._on_error(f"read error: {reason}")
            return
        data = future.result()
        if len(data) != length:
            # The file shrank under us; a short block would end the transfer early with the
            # client none the wiser.
            self._on_error("file changed during transfer")
            return
        if index >= self._low:
            self._chunks[index] = memoryview(data)
        self._on_ready()

    def close(self) -> None:
        self.closed = True
        self._chunks.clear()


# --------------------------------------------------------------------------------------------
# One read transfer


class _Exchange:
    """What reads and uploads share: the client, the socket, the retransmission timer."""

    request: ReadRequest | WriteRequest

    def __init__(self, server: TftpServer, client: Address, started: float) -> None:
        self.server = server
        self.client = client
        self._started = started
        self._loop = asyncio.get_running_loop()
        self._endpoint: _Endpoint | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.finished = False

    def abort(self, code: int, message: str) -> None:
        raise NotImplementedError

    def _deadline(self) -> float | None:
        raise NotImplementedError

    def _timed_out(self, now: float) -> None:
        raise NotImplementedError

    def _datagram(self, data: bytes, addr: Address) -> None:
        """A datagram from the peer, carried to the session."""
        raise NotImplementedError

    def on_datagram(self, data: bytes, addr: Address) -> None:
        try:
            if self.finished:
                return
            if from_stranger(addr, self.client):
                self.server.count("unknown_tid")
                self._send(UNKNOWN_TID, addr)
                return
            self._datagram(data, addr)
        except Exception:
            self._internal_error()

    def _decode(self, data: bytes, addr: Address) -> Packet | None:
        try:
            return decode(data)
        except TftpDecodeError as exc:
            # A damaged packet from the peer is dropped; the retransmit timer recovers.
            self.server.malformed(addr, data, exc)
            return None

    def _log_end(
        self,
        finish: Finish,
        negotiated: Negotiated,
        size: int,
        *,
        event: str = "transfer",
        retransmits: int | None = None,
    ) -> None:
        """The transfer's one log line."""
        result, level = self._result(finish)
        options = ",".join(f"{n}={v}" for n, v in negotiated.oack_options) or "-"
        self.server.log_transfer(
            level,
            self.client,
            self.request.filename,
            options=options,
            size=size,
            started=self._started,
            result=result,
            retransmits=retransmits,
            event=event,
        )

    def _on_timer(self) -> None:
        self._timer = None
        try:
            self._timed_out(self._loop.time())
        except Exception:
            self._internal_error()

    def _internal_error(self) -> None:
        self.server.count("internal_error")
        log.exception("tftp: unexpected error in transfer for %s", _client_text(self.client))
        with contextlib.suppress(Exception):
            self.abort(ErrorCode.NOT_DEFINED, "internal server error")

    def _send(self, datagram: bytes, addr: Address) -> None:
        if self._endpoint is not None and not self._endpoint.closed:
            self._endpoint.send(datagram, addr)
        else:
            self.server.reply(datagram, addr)

    def _arm(self) -> None:
        deadline = self._deadline()
        if deadline is None:
            self._cancel_timer()
            return
        if self._timer is not None:
            if self._timer.when() <= deadline:
                # It fires early, finds nothing due and re-arms: cheaper than a new timer for
                # every block.
                return
            self._timer.cancel()
        self._timer = self._loop.call_at(deadline, self._on_timer)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def close_endpoint(self) -> None:
        """Close the transfer's own socket (not a shared one)."""
        if self._endpoint is not None and not self.server.settings.single_port:
            self._endpoint.close()

    @staticmethod
    def _result(finish: Finish) -> tuple[str, int]:
        """The log line's result and level for how a transfer ended."""
        if finish.outcome is Outcome.OK:
            return "ok", logging.INFO
        if finish.outcome is Outcome.SIZE_QUERY:
            return "size query", logging.INFO
        if finish.outcome is Outcome.CLIENT_ERROR:
            return f"client error: {finish.message}", logging.WARNING
        if finish.outcome is Outcome.TIMED_OUT:
            return "timed out", logging.WARNING
        return f"error: {finish.message}", logging.WARNING


class _Read(_Exchange):
    """What an accepted read has wherever it runs: its request, file and session, and the end
    it reports."""

    def __init__(
        self,
        server: TftpServer,
        client: Address,
        *,
        request: ReadRequest,
        opened: OpenedFile,
        session: ReadSession,
        started: float,
    ) -> None:
        super().__init__(server, client, started)
        self.request = request
        self.session = session
        self._opened = opened
        self._prepare()

    def _prepare(self) -> None:
        """What a kind of read sets up for itself once the common parts are in place."""

    def _report_end(self, finish: Finish) -> None:
        """Hand the transfer back to the server and write its one log line."""
        self.server.transfer_done(self, finish.outcome)
        session = self.session
        self._log_end(
            finish,
            session.negotiated,
            session.bytes_acknowledged,
            retransmits=session.retransmissions,
        )


class _Transfer(_Read):
    """One accepted read on the event loop: its socket, its timer, its read-ahead."""

    def _prepare(self) -> None:
        session = self.session
        self._reader = _ReadAhead(
            self._opened,
            session.negotiated.blksize,
            session.negotiated.windowsize,
            self.server.executor,
            on_ready=self._on_read,
            on_error=self._on_read_error,
        )
        # Actions held back until the read-ahead has their octets.
        self._waiting: list[Action] = []

    def _deadline(self) -> float | None:
        return self.session.deadline

    def _timed_out(self, now: float) -> None:
        self._apply(self.session.timeout(now))

    # -- wiring -------------------------------------------------------------------------------

    def attach(self, endpoint: _Endpoint) -> None:
        self._endpoint = endpoint
        self._reader.advance(0)
        self._apply(self.session.start(self._loop.time()))

    def abort(self, code: int, message: str) -> None:
        self._waiting.clear()
        self._apply(self.session.abort(code, message))

    # -- events -------------------------------------------------------------------------------

    def _datagram(self, data: bytes, addr: Address) -> None:
        try:
            actions = read_actions(self.session, data, self._loop.time())
        except TftpDecodeError as exc:
            # A damaged packet from the peer is dropped; the retransmit timer recovers.
            self.server.malformed(addr, data, exc)
            return
        if actions:
            self._apply(actions)

    def _on_read(self) -> None:
        if self._waiting and not self.finished:
            waiting, self._waiting = self._waiting, []
            try:
                self._apply(waiting)
            except Exception:
                self._internal_error()

    def _on_read_error(self, reason: str) -> None:
        if not self.finished:
            self.abort(ErrorCode.NOT_DEFINED, reason)

    # -- carrying out actions -----------------------------------------------------------------

    def _apply(self, actions: list[Action]) -> None:
        if self._waiting:
            # Still waiting for octets: keep the order of everything the session asked for.
            self._waiting.extend(actions)
            self._arm()
            return
        for i, action in enumerate(actions):
            if type(action) is SendBlocks:
                offset = action.offset
                if not self._reader.ready(offset, action.end):
                    self._waiting = actions[i:]
                    self._arm()
                    return
                self._send_blocks(action)
                # A window starts at the first unacknowledged block: all before is done with.
                self._reader.advance(offset)
                continue
            match action:
                case SendOack(options):
                    self._send(encode(OptionAck(options)), self.client)
                case SendError(code, message):
                    self._send(encode(Error(code, message)), self.client)
                case Finish():
                    self._finish(action)
                    return
        self._arm()

    def _send_blocks(self, action: SendBlocks) -> None:
        endpoint = self._endpoint
        if endpoint is None:
            return
        gso = self.server.settings.gso_max_blksize
        for datagram, segment in block_datagrams(action, self._reader.view, gso):
            endpoint.send(datagram, self.client, segment)

    def _finish(self, finish: Finish) -> None:
        if self.finished:
            return
        self.finished = True
        self._waiting.clear()
        self._cancel_timer()
        self._reader.close()
        self._opened.close()
        self._report_end(finish)


class _PumpedTransfer(_Read):
    """An accepted read on its own port, carried out by a :class:`ReadPump` thread. This is
    its event-loop side: launching it, stopping it, the server's bookkeeping and the log line."""

    def _prepare(self) -> None:
        self._pump: ReadPump | None = None
        # Done once the thread has finished and the transfer is logged.
        self.ended: asyncio.Future[None] = self._loop.create_future()

    def launch(self, sock: socket.socket) -> None:
        server, settings = self.server, self.server.settings
        hooks = PumpHooks(
            finished=self._finished,
            count=server.count,
            malformed=server.malformed,
            offload_failed=server.offload_failed,
        )
        self._pump = ReadPump(
            sock,
            self.client,
            self.session,
            self._opened,
            hooks=hooks,
            loop=self._loop,
            gso_max_blksize=settings.gso_max_blksize,
            poll_seconds=settings.busy_poll,
            poll_slots=server.poll_slots,
        )
        try:
            self._pump.start()
        except RuntimeError as exc:  # no thread to be had: out of memory or a process limit
            self._pump = None
            sock.close()
            log.warning("tftp: cannot start a transfer thread: %s", exc)
            self.abort(ErrorCode.NOT_DEFINED, "server cannot start the transfer")

    def abort(self, code: int, message: str) -> None:
        if self._pump is not None:
            self._pump.abort(code, message)
            return
        # Never launched (no socket to be had): answer from the listener and end here.
        for action in self.session.abort(code, message):
            if isinstance(action, SendError):
                self.server.reply(encode(Error(action.code, action.message)), self.client)
            elif isinstance(action, Finish):
                self._opened.close()
                self._finished(action)

    def _finished(self, finish: Finish) -> None:
        if self.finished:
            return
        self.finished = True
        self._report_end(finish)
        self.ended.set_result(None)


class _Upload(_Exchange):
    """One accepted write: its socket, its timer, the file being filled, the session."""

    def __init__(
        self,
        server: TftpServer,
        client: Address,
        *,
        request: WriteRequest,
        upload: UploadFile,
        session: WriteSession,
        started: float,
    ) -> None:
        super().__init__(server, client, started)
        self.request = request
        self.session = session
        self._upload = upload
        # Received octets not yet handed to a worker thread, and the write under way.
        self._pending = bytearray()
        self._pending_at = 0
        self._writing: asyncio.Future[None] | None = None
        self._committing = False
        # Actions held back until the disk has caught up (an ACK) or the file is in place.
        self._waiting: list[WriteAction] = []

    def attach(self, endpoint: _Endpoint) -> None:
        self._endpoint = endpoint
        self._apply(self.session.start(self._loop.time()))

    def abort(self, code: int, message: str) -> None:
        self._waiting.clear()
        if self.session.complete and self._upload.committed:
            # Only lingering for a repeated last block: the file is in place, the client has
            # its ACK, and an ERROR now would only confuse it.
            self._finish(Finish(Outcome.OK))
            return
        self._apply(self.session.abort(code, message))

    def _deadline(self) -> float | None:
        return self.session.deadline

    def _timed_out(self, now: float) -> None:
        self._apply(self.session.timeout(now))

    def _datagram(self, data: bytes, addr: Address) -> None:
        packet = self._decode(data, addr)
        if packet is not None:
            self._apply(self.session.receive(packet, self._loop.time()))

    # -- carrying out actions -----------------------------------------------------------------

    def _apply(self, actions: list[WriteAction]) -> None:
        if self._waiting:
            self._waiting.extend(actions)
            self._arm()
            return
        for i, action in enumerate(actions):
            match action:
                case WriteBlock(offset, payload):
                    self._store(offset, payload)
                case SendAck(block):
                    if len(self._pending) >= UPLOAD_BACKLOG:
                        # The disk is behind: the client waits for this ACK until it catches up.
                        self._waiting = actions[i:]
                        break
                    self._send(encode(Ack(block)), self.client)
                case Complete():
                    # The last ACK goes out only once the file is whole and in place.
                    self._waiting = actions[i:]
                    self._flush()
                    self._resume()
                    break
                case SendOack(options):
                    self._send(encode(OptionAck(options)), self.client)
                case SendError(code, message):
                    self._send(encode(Error(code, message)), self.client)
                case Finish():
                    self._finish(action)
                    return
        self._arm()

    def _store(self, offset: int, payload: bytes) -> None:
        if not self._pending:
            self._pending_at = offset
        self._pending += payload
        if len(self._pending) >= UPLOAD_CHUNK:
            self._flush()

    def _flush(self) -> None:
        if self._writing is not None or not self._pending or self.finished:
            return
        data, offset = bytes(self._pending), self._pending_at
        self._pending.clear()
        self._writing = self._loop.run_in_executor(
            self.server.executor, self._upload.write, offset, data
        )
        self._writing.add_done_callback(self._written)

    def _written(self, future: asyncio.Future[None]) -> None:
        self._writing = None
        if self.finished or future.cancelled():
            return
        exc = future.exception()
        if exc is not None:
            self._storage_failed(exc)
            return
        self._flush()
        self._resume()

    def _resume(self) -> None:
        """Carry on with held-back actions once what they wait for has happened."""
        if not self._waiting or self.finished:
            return
        head = self._waiting[0]
        if isinstance(head, Complete):
            if self._writing is not None or self._pending or self._committing:
                return
            self._committing = True
            commit = self._loop.run_in_executor(self.server.executor, self._upload.commit)
            commit.add_done_callback(self._committed)
            return
        if len(self._pending) < UPLOAD_BACKLOG:
            waiting, self._waiting = self._waiting, []
            self._apply(waiting)

    def _committed(self, future: asyncio.Future[None]) -> None:
        self._committing = False
        if self.finished or future.cancelled():
            return
        exc = future.exception()
        if exc is not None:
            self._storage_failed(exc)
            return
        waiting, self._waiting = self._waiting[1:], []
        try:
            self._apply(waiting)
        except Exception:
            self._internal_error()

    def _storage_failed(self, exc: BaseException) -> None:
        if isinstance(exc, FileExists):
            self.abort(ErrorCode.FILE_EXISTS, "file already exists")
        elif isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            self.abort(ErrorCode.DISK_FULL, "disk full")
        else:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            self.abort(ErrorCode.NOT_DEFINED, f"cannot store file: {reason}")

    def _finish(self, finish: Finish) -> None:
        if self.finished:
            return
        self.finished = True
        self._waiting.clear()
        self._pending.clear()
        self._cancel_timer()
        if not self._upload.committed:
            # Whatever was received of a failed upload is thrown away, never shown.
            self.server.executor.submit(self._upload.discard)
        self.server.transfer_done(self, finish.outcome)
        self._log_end(finish, self.session.negotiated, self.session.bytes_received, event="upload")


_Live = _Transfer | _PumpedTransfer | _Upload


# --------------------------------------------------------------------------------------------
# The server


class TftpServer:
    """A TFTP server over a :class:`FileSource`, read-only unless given an upload directory."""

    def __init__(
        self,
        source: FileSource,
        settings: TftpSettings | None = None,
        *,
        executor: Executor | None = None,
        **limits: Any,
    ) -> None:
        if settings is None:
            settings = TftpSettings(**limits)
        elif limits:
            raise TypeError("pass either settings or keyword limits, not both")
        # Check the limits now, not on the first request.
        negotiate(
            (),
            file_size=0,
            max_blksize=settings.max_blksize,
            max_windowsize=settings.max_windowsize,
        )
        if (
            settings.timeout <= 0
            or settings.retries < 0
            or settings.max_sessions < 1
            or settings.max_sessions_per_client < 1
            or settings.workers < 1
        ):
            raise ValueError("timeout, retries, workers and session limits must be positive")
        self.settings = settings
        self._source = source
        self._own_executor = executor is None
        self.executor: Executor = executor or ThreadPoolExecutor(
            max_workers=settings.workers, thread_name_prefix="netbootd-tftp-io"
        )
        self._listener: _Endpoint | None = None
        self._family = socket.AF_INET
        self._host = ""
        self._port = 0
        self._transfers: set[_Live] = set()
        # Requests accepted, by (client, request): opening, or transferring.
        self._by_request: dict[tuple[Address, ReadRequest | WriteRequest], _Live | None] = {}
        # Single-port mode: the transfer each client address and port belongs to.
        self._by_client: dict[Address, _Live] = {}
        self._uploads = UploadDir(settings.upload_dir) if settings.upload_dir else None
        self._per_client: Counter[Any] = Counter()
        self._tasks: set[asyncio.Task[None]] = set()
        self._counters: Counter[str] = Counter()
        pollers = settings.busy_pollers
        if pollers is None:
            pollers = len(os.sched_getaffinity(0)) - 1
        self.poll_slots = PollSlots(pollers)
        self._threads = 0  # transfers running in threads of their own

    # -- public -------------------------------------------------------------------------------

    async def start(self, host: str, port: int) -> None:
        if self._listener is not None:
            raise RuntimeError("server already started")
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        family, _, _, _, address = infos[0]
        self._listener = _Endpoint.bind(
            family,
            address,
            self._on_request_datagram,
            self._counters,
            on_no_offload=self.offload_failed,
        )
        self._family = family
        # Session sockets bind to the address actually bound, so a name like "localhost"
        # is resolved once and replies leave from the address the listener uses.
        sockname = self._listener.sock.getsockname()
        self._host, self._port = sockname[0], sockname[1]

    @property
    def port(self) -> int:
        if self._listener is None:
            raise RuntimeError("server not started")
        return self._port

    @property
    def active_sessions(self) -> int:
        """Transfers accepted and not yet finished, including those still opening their file."""
        return len(self._by_request)

    @property
    def transfers_in_threads(self) -> int:
        """Read transfers running in threads of their own."""
        return self._threads

    @property
    def counters(self) -> dict[str, int]:
        """Counts of transfer outcomes and of dropped or refused datagrams, by name."""
        return dict(self._counters)

    async def close(self) -> None:
        threads = [t.ended for t in self._transfers if isinstance(t, _PumpedTransfer)]
        for transfer in list(self._transfers):
            transfer.abort(ErrorCode.NOT_DEFINED, "server shutting down")
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if threads:
            # A read stuck on a dead disk must not hold up shutdown for long.
            await asyncio.wait(threads, timeout=_THREAD_STOP_WAIT)
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self._own_executor:
            # A read stuck on a dead disk must not hold up shutdown.
            self.executor.shutdown(wait=False, cancel_futures=True)

    # -- listener -----------------------------------------------------------------------------

    def _on_request_datagram(self, data: bytes, addr: Address) -> None:
        if self.settings.single_port:
            transfer = self._by_client.get(addr)
            if transfer is not None and not (
                len(data) > 1 and data[0] == 0 and data[1] in (Opcode.RRQ, Opcode.WRQ)
            ):
                transfer.on_datagram(data, addr)
                return
        try:
            self._dispatch(data, addr)
        except Exception:
            # Whatever went wrong with this datagram, the listener keeps serving.
            self.count("internal_error")
            log.exception("tftp: unexpected error handling a datagram from %s", _client_text(addr))

    def _dispatch(self, data: bytes, addr: Address) -> None:
        try:
            packet = decode(data)
        except TftpDecodeError as exc:
            self.malformed(addr, data, exc)
            if exc.opcode in (Opcode.RRQ, Opcode.WRQ):
                # A broken request still has a client waiting; tell it instead of timing out.
                self.reply(encode(Error(exc.code, exc.reason)), addr)
            return
        match packet:
            case ReadRequest():
                self._on_request(packet, addr)
            case WriteRequest():
                if self._uploads is None:
                    self._refuse(
                        addr,
                        packet.filename,
                        self._loop_time(),
                        error=Error(ErrorCode.ACCESS_VIOLATION, "read-only server"),
                        result="access denied: read-only server",
                        counter="write_refused",
                    )
                else:
                    self._on_request(packet, addr)
            case _:
                # DATA, ACK, ERROR or OACK for no transfer: late packets of a finished one.
                self.count("stray")

    def _on_request(self, request: ReadRequest | WriteRequest, addr: Address) -> None:
        started = self._loop_time()
        key = (addr, request)
        if key in self._by_request:
            # The client repeated its request before our answer reached it; the transfer
            # already started answers it.
            self.count("duplicate_request")
            return
        name = request.filename
        if self.settings.single_port and addr in self._by_client:
            # The same address and port asks for something else: the client gave up on the
            # old transfer (a reset PXE ROM reuses its port).
            self._by_client[addr].abort(ErrorCode.NOT_DEFINED, "superseded by a new request")
        if (
            len(self._by_request) >= self.settings.max_sessions
            or self._per_client[addr[0]] >= self.settings.max_sessions_per_client
        ):
            self._refuse(
                addr,
                name,
                started,
                error=Error(ErrorCode.NOT_DEFINED, "too many transfers, try again later"),
                result="refused: too many transfers",
                counter="refused_busy",
            )
            return
        mode_error = check_mode(request.mode)
        if isinstance(request, WriteRequest) and request.mode != Mode.OCTET and not mode_error:
            mode_error = Error(ErrorCode.ILLEGAL_OPERATION, "uploads are octet mode only")
        if mode_error is not None:
            self._refuse(
                addr,
                name,
                started,
                error=mode_error,
                result=f"illegal mode: {request.mode}",
                counter="bad_mode",
            )
            return
        self._by_request[key] = None
        self._load_changed()
        self._per_client[addr[0]] += 1
        starting = (
            self._start_read(request, addr, started)
            if isinstance(request, ReadRequest)
            else self._start_upload(request, addr, started)
        )
        task = asyncio.get_running_loop().create_task(starting)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _start_read(self, request: ReadRequest, addr: Address, started: float) -> None:
        key = (addr, request)
        loop = asyncio.get_running_loop()
        try:
            opened = await loop.run_in_executor(
                self.executor, _open_for, self._source, request, addr[0]
            )
        except _Refusal as refusal:
            self._release(key)
            self._refuse(
                addr,
                request.filename,
                started,
                error=refusal.error,
                result=refusal.result,
                counter=refusal.counter,
                level=refusal.level,
            )
            return
        except BaseException:
            self._release(key)
            raise
        try:
            transfer = self._new_transfer(request, addr, opened, started)
        except BaseException:
            self._release(key)
            opened.close()
            raise
        self._begin(key, transfer)

    async def _start_upload(self, request: WriteRequest, addr: Address, started: float) -> None:
        key = (addr, request)
        settings = self.settings
        assert self._uploads is not None
        negotiated = negotiate_write(
            request.options,
            max_blksize=settings.max_blksize,
            max_windowsize=settings.max_windowsize,
            max_size=settings.upload_max_size,
        )
        try:
            if isinstance(negotiated, Error):
                raise _Refusal(negotiated, f"refused: {negotiated.message}", "upload_refused")
            loop = asyncio.get_running_loop()
            upload = await loop.run_in_executor(self.executor, _create_for, self._uploads, request)
        except _Refusal as refusal:
            self._release(key)
            self._refuse(
                addr,
                request.filename,
                started,
                error=refusal.error,
                result=refusal.result,
                counter=refusal.counter,
                level=refusal.level,
                event="upload",
            )
            return
        except BaseException:
            self._release(key)
            raise
        session = WriteSession(
            negotiated,
            max_size=settings.upload_max_size,
            retransmit_timeout=(
                float(negotiated.timeout) if negotiated.timeout else settings.timeout
            ),
            max_retries=settings.retries,
        )
        exchange = _Upload(
            self, addr, request=request, upload=upload, session=session, started=started
        )
        self._begin(key, exchange)

    def _begin(self, key: tuple[Address, ReadRequest | WriteRequest], transfer: _Live) -> None:
        """Give an accepted transfer its socket and start it."""
        addr = key[0]
        self._by_request[key] = transfer
        self._transfers.add(transfer)
        if isinstance(transfer, _PumpedTransfer):
            self._threads += 1
            try:
                sock = _udp_socket(self._family, (self._host, 0), blocking=True)
            except OSError as exc:
                self._no_socket(transfer, exc)
                return
            transfer.launch(sock)
            return
        if self.settings.single_port:
            assert self._listener is not None
            self._by_client[addr] = transfer
            transfer.attach(self._listener)
            return
        try:
            endpoint = _Endpoint.bind(
                self._family,
                (self._host, 0),
                transfer.on_datagram,
                self._counters,
                on_no_offload=self.offload_failed,
                bufsize=SESSION_DATAGRAM,
            )
        except OSError as exc:
            self._no_socket(transfer, exc)
            return
        transfer.attach(endpoint)

    @staticmethod
    def _no_socket(transfer: _Live, exc: OSError) -> None:
        log.warning("tftp: cannot open a transfer socket: %s", exc.strerror or exc)
        transfer.abort(ErrorCode.NOT_DEFINED, "server cannot open a socket")

    def _load_changed(self) -> None:
        # More transfers than threads: the event loop serves some, and a polling thread would
        # take the processor from it.
        self.poll_slots.paused = len(self._by_request) > self.settings.transfer_threads

    def _new_transfer(
        self, request: ReadRequest, addr: Address, opened: OpenedFile, started: float
    ) -> _Transfer | _PumpedTransfer:
        settings = self.settings
        negotiated = negotiate(
            request.options,
            file_size=opened.size,
            max_blksize=settings.max_blksize,
            max_windowsize=settings.max_windowsize,
        )
        session = ReadSession(
            opened.size,
            negotiated,
            retransmit_timeout=(
                float(negotiated.timeout) if negotiated.timeout else settings.timeout
            ),
            max_retries=settings.retries,
        )
        # While only a few transfers run, those on their own ports run in threads of their own.
        # Under load new ones share the event loop, which serves many in one thread far better
        # than many threads taking the interpreter lock in turn; so does single-port mode.
        limit = self.settings.transfer_threads
        threaded = (
            not self.settings.single_port
            and len(self._by_request) <= limit
            and self._threads < limit
        )
        kind = _PumpedTransfer if threaded else _Transfer
        return kind(self, addr, request=request, opened=opened, session=session, started=started)

    # -- bookkeeping used by transfers --------------------------------------------------------

    def _release(self, key: tuple[Address, ReadRequest | WriteRequest]) -> None:
        self._by_request.pop(key, None)
        self._load_changed()
        host = key[0][0]
        self._per_client[host] -= 1
        if self._per_client[host] <= 0:
            del self._per_client[host]

    def transfer_done(self, transfer: _Exchange, outcome: Outcome) -> None:
        if transfer not in self._transfers:
            return
        self._transfers.discard(transfer)
        if isinstance(transfer, _PumpedTransfer):
            self._threads -= 1
        self._release((transfer.client, transfer.request))
        if self._by_client.get(transfer.client) is transfer:
            del self._by_client[transfer.client]
        transfer.close_endpoint()
        self.count(outcome.name.lower())

    def offload_failed(self) -> None:
        if self.settings.gso_max_blksize is not None:
            log.info("tftp: the kernel refused UDP segmentation offload; sending one by one")
            self.settings = replace(self.settings, gso_max_blksize=None)

    def _refuse(
        self,
        addr: Address,
        name: str,
        started: float,
        *,
        error: Error,
        result: str,
        counter: str,
        level: int = logging.WARNING,
        event: str = "transfer",
    ) -> None:
        self.reply(encode(error), addr)
        self.count(counter)
        self.log_transfer(
            level, addr, name, options="-", size=0, started=started, result=result, event=event
        )

    def reply(self, datagram: bytes, addr: Address) -> None:
        if self._listener is not None:
            self._listener.send(datagram, addr)

    def count(self, name: str) -> None:
        self._counters[name] += 1

    def malformed(self, addr: Address, data: bytes, exc: TftpDecodeError) -> None:
        # One line and a counter per bad datagram, in the same form as the DHCP edge's.
        self.count("malformed")
        log.warning(
            "%s",
            format_event("malformed", source=_client_text(addr), bytes=len(data), error=exc.reason),
        )

    @staticmethod
    def _loop_time() -> float:
        return asyncio.get_running_loop().time()

    def log_transfer(
        self,
        level: int,
        addr: Address,
        name: str,
        *,
        options: str,
        size: int,
        started: float,
        result: str,
        retransmits: int | None = None,
        event: str = "transfer",
    ) -> None:
        seconds = max(self._loop_time() - started, 0.0)
        rate = size / seconds / 1e6 if seconds > 0 else 0.0
        log.log(
            level,
            "%s",
            format_event(
                event,
                client=_client_text(addr),
                file=name,
                options=options,
                bytes=size,
                seconds=f"{seconds:.3f}",
                rate=f"{rate:.2f}MB/s",
                **({} if retransmits is None else {"retransmits": retransmits}),
                result=result,
            ),
        )
