"""The TFTP listener: the well-known port, and what becomes of each request that reaches it.

A datagram at the listener is decoded; a request goes to the service
(:class:`netbootd.services.tftp.Admission`) to be admitted or refused, its file is opened in a
worker thread (:func:`netbootd.services.tftp.open_read`), and the accepted transfer
(:mod:`netbootd.transport.tftp.transfers`) gets a socket of its own, a new transfer ID
(RFC 1350 §4), or in single-port mode shares the listener's and is told apart by the client's
address and port. While the server is not busy, a read on its own port runs in a thread of its
own (:mod:`netbootd.transport.tftp.pump`); under load, and in single-port mode, reads share the
event loop, which serves many in one thread. Warnings (bad datagrams, refusals, failed
transfers) share one :class:`~netbootd.services.dhcp.limits.LineBudget`, as the DHCP edge's do,
so that a client sending junk fast cannot fill the disk with lines.

This module owns the listener's socket and the server's bookkeeping. It must not decide what a
request gets (the service does) nor anything of a transfer (the sessions do), and one bad
datagram or one failing transfer must never stop the listener.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections import Counter
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from netbootd.boot.journal import Service
from netbootd.logs.events import format_event
from netbootd.proto.tftp import (
    Error,
    ErrorCode,
    Opcode,
    Outcome,
    ReadRequest,
    TftpDecodeError,
    WriteRequest,
    decode,
    encode,
    negotiate,
)
from netbootd.proto.tftp.framing import Datagram
from netbootd.services.dhcp.limits import LineBudget
from netbootd.services.files import FileSource, OpenedFile
from netbootd.services.journal import Journal
from netbootd.services.machines import role_of
from netbootd.services.tftp import (
    Admission,
    Admitted,
    Duplicate,
    Refusal,
    Refused,
    cannot_read,
    client_text,
    create_upload,
    negotiate_upload,
    open_read,
    read_session,
    transfer_line,
    write_session,
)
from netbootd.services.uploads import UploadDir, UploadFile
from netbootd.transport.renders import RenderBusy, RenderPool, renders
from netbootd.transport.tftp.endpoint import Endpoint
from netbootd.transport.tftp.pump import SESSION_DATAGRAM, PollSlots
from netbootd.transport.tftp.send import Address, udp_socket
from netbootd.transport.tftp.transfers import Exchange, Live, PumpedTransfer, Transfer, Upload

__all__ = ["TftpServer", "TftpSettings"]

log = logging.getLogger("netbootd.tftp")

# How long shutdown waits for transfer threads to send their ERROR and end.
_THREAD_STOP_WAIT = 2.0

Key = tuple[Address, ReadRequest | WriteRequest]


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
    # netbootd.transport.tftp.pump); the rest share the event loop. Threads answer each ACK
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


class TftpServer:
    """A TFTP server over a :class:`FileSource`, read-only unless given an upload directory."""

    def __init__(
        self,
        source: FileSource,
        settings: TftpSettings | None = None,
        *,
        executor: Executor | None = None,
        renders: RenderPool | None = None,
        journal: Journal | None = None,
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
        self._renders = renders
        self._journal = journal
        self._listener: Endpoint | None = None
        self._warning_lines = LineBudget()  # a burst of warnings, then a count
        self._family = socket.AF_INET
        self._host = ""
        self._port = 0
        self._transfers: set[Live] = set()
        self._uploads = UploadDir(settings.upload_dir) if settings.upload_dir else None
        # Requests accepted, by (client, request): opening, or transferring.
        self._admission = Admission(
            max_sessions=settings.max_sessions,
            max_sessions_per_client=settings.max_sessions_per_client,
            uploads=self._uploads is not None,
        )
        # Single-port mode: the transfer each client address and port belongs to.
        self._by_client: dict[Address, Live] = {}
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
        self._listener = Endpoint.bind(
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
        return len(self._admission)

    @property
    def transfers_in_threads(self) -> int:
        """Read transfers running in threads of their own."""
        return self._threads

    @property
    def counters(self) -> dict[str, int]:
        """Counts of transfer outcomes and of dropped or refused datagrams, by name."""
        return dict(self._counters)

    async def close(self) -> None:
        threads = [t.ended for t in self._transfers if isinstance(t, PumpedTransfer)]
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
            log.exception("%s", format_event("internal-error", source=client_text(addr)))

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
            case ReadRequest() | WriteRequest():
                self._on_request(packet, addr)
            case _:
                # DATA, ACK, ERROR or OACK for no transfer: late packets of a finished one.
                self.count("stray")

    def _on_request(self, request: ReadRequest | WriteRequest, addr: Address) -> None:
        started = self._loop_time()
        old = self._by_client.get(addr) if self.settings.single_port else None
        replacing = None if old is None else (old.client, old.request)
        verdict = self._admission.admit(request, addr, replacing=replacing)
        if isinstance(verdict, Duplicate):
            self.count("duplicate_request")
            return
        if verdict.supersede and old is not None:
            old.abort(ErrorCode.NOT_DEFINED, "superseded by a new request")
        if isinstance(verdict, Refused):
            self._refuse(addr, request.filename, started, verdict.refusal)
            return
        assert isinstance(verdict, Admitted)
        self._load_changed()
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
        pool = self._renders
        try:
            if pool is not None and renders(self._source, request.filename, addr[0]):
                # An operator's template must not hold the threads that read files.
                try:
                    opened = await pool.run(open_read, self._source, request, addr[0])
                except RenderBusy as exc:
                    opened = cannot_read(exc.reason)
            else:
                opened = await loop.run_in_executor(
                    self.executor, open_read, self._source, request, addr[0]
                )
        except BaseException:
            self._release(key)
            raise
        if isinstance(opened, Refusal):
            self._release(key)
            self._refuse(addr, request.filename, started, opened)
            return
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
        negotiated = negotiate_upload(
            request,
            max_blksize=settings.max_blksize,
            max_windowsize=settings.max_windowsize,
            max_size=settings.upload_max_size,
        )
        upload: UploadFile | Refusal
        try:
            if isinstance(negotiated, Refusal):
                upload = negotiated
            else:
                loop = asyncio.get_running_loop()
                upload = await loop.run_in_executor(
                    self.executor, create_upload, self._uploads, request
                )
        except BaseException:
            self._release(key)
            raise
        if isinstance(upload, Refusal):
            self._release(key)
            self._refuse(addr, request.filename, started, upload, event="upload")
            return
        assert not isinstance(negotiated, Refusal)
        session = write_session(
            negotiated,
            max_size=settings.upload_max_size,
            timeout=settings.timeout,
            retries=settings.retries,
        )
        exchange = Upload(
            self, addr, request=request, upload=upload, session=session, started=started
        )
        self._begin(key, exchange)

    def _begin(self, key: tuple[Address, ReadRequest | WriteRequest], transfer: Live) -> None:
        """Give an accepted transfer its socket and start it."""
        addr = key[0]
        self._transfers.add(transfer)
        if isinstance(transfer, PumpedTransfer):
            self._threads += 1
            try:
                sock = udp_socket(self._family, (self._host, 0), blocking=True)
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
            endpoint = Endpoint.bind(
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

    def warn(self, line: str) -> None:
        """Log a warning, unless a burst of them has used up the budget (then it is counted)."""
        held = self._warning_lines.allow(self._loop_time())
        if held is None:
            return
        log.warning("%s", f"{line} held_back={held}" if held else line)

    def _no_socket(self, transfer: Live, exc: OSError) -> None:
        self.warn(
            format_event(
                "no-socket", client=client_text(transfer.client), error=exc.strerror or str(exc)
            )
        )
        transfer.abort(ErrorCode.NOT_DEFINED, "server cannot open a socket")

    def _load_changed(self) -> None:
        # More transfers than threads: the event loop serves some, and a polling thread would
        # take the processor from it.
        self.poll_slots.paused = len(self._admission) > self.settings.transfer_threads

    def _new_transfer(
        self, request: ReadRequest, addr: Address, opened: OpenedFile, started: float
    ) -> Transfer | PumpedTransfer:
        settings = self.settings
        session = read_session(
            request,
            opened.size,
            max_blksize=settings.max_blksize,
            max_windowsize=settings.max_windowsize,
            timeout=settings.timeout,
            retries=settings.retries,
        )
        # While only a few transfers run, those on their own ports run in threads of their own.
        # Under load new ones share the event loop, which serves many in one thread far better
        # than many threads taking the interpreter lock in turn; so does single-port mode.
        limit = self.settings.transfer_threads
        threaded = (
            not self.settings.single_port
            and len(self._admission) <= limit
            and self._threads < limit
        )
        kind = PumpedTransfer if threaded else Transfer
        return kind(self, addr, request=request, opened=opened, session=session, started=started)

    # -- bookkeeping used by transfers --------------------------------------------------------

    def _release(self, key: Key) -> None:
        self._admission.release(key)
        self._load_changed()

    def transfer_done(self, transfer: Exchange, outcome: Outcome) -> None:
        if transfer not in self._transfers:
            return
        self._transfers.discard(transfer)
        if isinstance(transfer, PumpedTransfer):
            self._threads -= 1
        self._release((transfer.client, transfer.request))
        if self._by_client.get(transfer.client) is transfer:
            del self._by_client[transfer.client]
        transfer.close_endpoint()
        self.count(outcome.name.lower())

    def offload_failed(self) -> None:
        if self.settings.gso_max_blksize is not None:
            log.info(
                "%s",
                format_event(
                    "offload-refused", what="UDP segmentation", effect="sending one by one"
                ),
            )
            self.settings = replace(self.settings, gso_max_blksize=None)

    def _refuse(
        self,
        addr: Address,
        name: str,
        started: float,
        refusal: Refusal,
        *,
        event: str = "transfer",
    ) -> None:
        self.reply(encode(refusal.error), addr)
        self.count(refusal.counter)
        self.log_transfer(
            refusal.level,
            addr,
            name,
            options="-",
            size=0,
            started=started,
            result=refusal.result,
            event=event,
        )

    def reply(self, datagram: Datagram, addr: Address) -> None:
        if self._listener is not None:
            self._listener.send(datagram, addr)

    def count(self, name: str) -> None:
        self._counters[name] += 1

    def malformed(self, addr: Address, data: bytes, exc: TftpDecodeError) -> None:
        # A counter per bad datagram, and a line within the warning budget, as at the DHCP edge.
        self.count("malformed")
        self.warn(
            format_event("malformed", source=client_text(addr), bytes=len(data), error=exc.reason)
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
        file_size: int | None = None,
        block: int | None = None,
        rendered: bool = False,
    ) -> None:
        seconds = self._loop_time() - started
        if self._journal is not None and event == "transfer":
            self._tell_journal(
                addr,
                name,
                sent=size,
                seconds=seconds,
                result=result,
                file_size=file_size,
                block=block,
                rendered=rendered,
            )
        line = transfer_line(
            addr,
            name,
            options=options,
            size=size,
            seconds=seconds,
            result=result,
            retransmits=retransmits,
            event=event,
        )
        if level == logging.WARNING:
            self.warn(line)
        else:
            log.log(level, "%s", line)

    def _tell_journal(
        self,
        addr: Address,
        name: str,
        *,
        sent: int,
        seconds: float,
        result: str,
        file_size: int | None,
        block: int | None,
        rendered: bool,
    ) -> None:
        """A read's end (or its refusal), as the journal has it; uploads are not boot steps."""
        assert self._journal is not None
        self._journal.fetched(
            Service.TFTP,
            addr[0],
            file=name,
            role=role_of(self._source, name, addr[0]).value,
            result=result,
            sent=sent,
            seconds=seconds,
            size=file_size,
            rendered=rendered,
            more={"block": str(block)} if block is not None else None,
        )
