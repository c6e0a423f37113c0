"""TFTP transfers as the event loop sees them: reads served on the loop, reads handed to a
thread, and uploads.

Each accepted request becomes one of these. A read on the loop (:class:`Transfer`) reads its file
ahead in worker threads (:class:`ReadAhead`) and carries out its session's actions through
:func:`~netbootd.transport.tftp.actions.carry_out`; a read in a thread of its own
(:class:`PumpedTransfer`) is launched here and reports back here; an upload (:class:`Upload`)
hands its octets to worker threads to write. Every one ends with the one log line the service
builds. This module owns the transfers' timers and their sockets' use; it must not decide block
numbers, windows, retransmissions, option values or what an error answers, and a failing
transfer must never reach the listener.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from concurrent.futures import Executor
from typing import TYPE_CHECKING

from netbootd.logs.events import format_event
from netbootd.proto.tftp import (
    Ack,
    Action,
    Error,
    ErrorCode,
    Finish,
    Negotiated,
    OptionAck,
    Outcome,
    Packet,
    ReadRequest,
    ReadSession,
    SendError,
    SendOack,
    TftpDecodeError,
    WriteRequest,
    decode,
    encode,
    read_actions,
)
from netbootd.proto.tftp.framing import UNKNOWN_TID, Datagram, across_chunks
from netbootd.proto.tftp.write import Complete, SendAck, WriteAction, WriteBlock, WriteSession
from netbootd.services.files import MemoryFile, OpenedFile
from netbootd.services.tftp import (
    client_text,
    finish_result,
    options_text,
    storage_error,
)
from netbootd.services.uploads import UploadFile
from netbootd.transport.tftp.actions import carry_out
from netbootd.transport.tftp.endpoint import Endpoint
from netbootd.transport.tftp.pump import READ_CHUNK, PumpHooks, ReadPump
from netbootd.transport.tftp.send import Address, from_stranger

if TYPE_CHECKING:
    from netbootd.transport.tftp.listener import TftpServer

__all__ = [
    "UPLOAD_BACKLOG",
    "UPLOAD_CHUNK",
    "Exchange",
    "Live",
    "PumpedTransfer",
    "ReadAhead",
    "Transfer",
    "Upload",
]

log = logging.getLogger("netbootd.tftp")

# Uploads reach the disk in writes of about this size; a client is held back (its ACK waits)
# while this much is waiting for the disk.
UPLOAD_CHUNK = 256 * 1024
UPLOAD_BACKLOG = 4 * 1024 * 1024


class ReadAhead:
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


class Exchange:
    """What reads and uploads share: the client, the socket, the retransmission timer."""

    request: ReadRequest | WriteRequest

    def __init__(self, server: TftpServer, client: Address, started: float) -> None:
        self.server = server
        self.client = client
        self._started = started
        self._loop = asyncio.get_running_loop()
        self._endpoint: Endpoint | None = None
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
        file_size: int | None = None,
        block: int | None = None,
        rendered: bool = False,
    ) -> None:
        """The transfer's one log line (and its journal event)."""
        result, level = finish_result(finish)
        self.server.log_transfer(
            level,
            self.client,
            self.request.filename,
            options=options_text(negotiated),
            size=size,
            started=self._started,
            result=result,
            retransmits=retransmits,
            event=event,
            file_size=file_size,
            block=block,
            rendered=rendered,
        )

    def _on_timer(self) -> None:
        self._timer = None
        try:
            self._timed_out(self._loop.time())
        except Exception:
            self._internal_error()

    def _internal_error(self) -> None:
        self.server.count("internal_error")
        log.exception("%s", format_event("internal-error", client=client_text(self.client)))
        with contextlib.suppress(Exception):
            self.abort(ErrorCode.NOT_DEFINED, "internal server error")

    def _send(self, datagram: Datagram, addr: Address, segment: int = 0) -> None:
        if self._endpoint is not None and not self._endpoint.closed:
            self._endpoint.send(datagram, addr, segment)
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


class _Read(Exchange):
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
            file_size=self._opened.size,
            block=session.last_acknowledged,
            rendered=isinstance(self._opened, MemoryFile),
        )


class Transfer(_Read):
    """One accepted read on the event loop: its socket, its timer, its read-ahead."""

    def _prepare(self) -> None:
        session = self.session
        self._reader = ReadAhead(
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

    def attach(self, endpoint: Endpoint) -> None:
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
        left = carry_out(actions, self._reader, self, self.client)
        if isinstance(left, Finish):
            self._finish(left)
            return
        self._waiting = left
        self._arm()

    # -- the outbox carry_out sends through ---------------------------------------------------

    @property
    def gso_max_blksize(self) -> int | None:
        return self.server.settings.gso_max_blksize

    def send(self, datagram: Datagram, addr: Address, segment: int = 0) -> None:
        self._send(datagram, addr, segment)

    def _finish(self, finish: Finish) -> None:
        if self.finished:
            return
        self.finished = True
        self._waiting.clear()
        self._cancel_timer()
        self._reader.close()
        self._opened.close()
        self._report_end(finish)


class PumpedTransfer(_Read):
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
            self.server.warn(
                format_event("no-thread", client=client_text(self.client), error=str(exc))
            )
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


class Upload(Exchange):
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

    def attach(self, endpoint: Endpoint) -> None:
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
        error = storage_error(exc)
        self.abort(error.code, error.message)

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


Live = Transfer | PumpedTransfer | Upload
