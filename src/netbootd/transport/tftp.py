"""The asyncio edge of the TFTP read server: sockets, timers and the transfer log line.

A listener on the well-known port takes requests; each accepted read gets its own ephemeral
UDP socket (a new transfer ID, RFC 1350 §4) driven by a :class:`netbootd.proto.tftp.ReadSession`.
This module translates the session's actions into datagrams and timers and nothing more: it must
not decide block numbers, windows, retransmissions or option values (that is the protocol core's
job), and it must not let one bad datagram or one failing transfer stop the listener.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Any

from netbootd.logfmt import format_event
from netbootd.proto.tftp import (
    Action,
    Data,
    Error,
    ErrorCode,
    Finish,
    Mode,
    Opcode,
    OptionAck,
    Outcome,
    ReadRequest,
    ReadSession,
    SendBlock,
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
from netbootd.services.files import (
    AccessDenied,
    FileLookupError,
    FileNotFound,
    FileSource,
    OpenedFile,
)

__all__ = ["NETASCII_LIMIT", "TftpServer"]

log = logging.getLogger("netbootd.tftp")

# netascii is converted in memory, whole; boot files never use it, so a small cap is enough.
NETASCII_LIMIT = 16 * 1024 * 1024
Address = tuple[Any, ...]


def _client_text(addr: Address) -> str:
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


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
    """Why a read request cannot be served: what to answer, log and count."""

    def __init__(
        self, error: Error, result: str, counter: str, level: int = logging.WARNING
    ) -> None:
        super().__init__(result)
        self.error, self.result, self.counter, self.level = error, result, counter, level


def _cannot_read(reason: str) -> _Refusal:
    return _Refusal(
        Error(ErrorCode.NOT_DEFINED, "cannot read file"), f"error: {reason}", "server_error"
    )


def _open_for(source: FileSource, request: ReadRequest) -> OpenedFile:
    """Open the requested file in the requested mode, or raise the :class:`_Refusal`."""
    try:
        opened = source.open(request.filename)
    except FileNotFound:
        # pxelinux and GRUB probe many names that do not exist: routine, not a warning.
        raise _Refusal(
            Error(ErrorCode.FILE_NOT_FOUND, "file not found"),
            "not found",
            "not_found",
            logging.INFO,
        ) from None
    except AccessDenied as exc:
        raise _Refusal(
            Error(ErrorCode.ACCESS_VIOLATION, "access violation"),
            f"access denied: {exc.reason}",
            "access_denied",
        ) from None
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


class _ListenerProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: TftpServer) -> None:
        self._server = server

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self._server._on_request_datagram(data, addr)

    def error_received(self, exc: Exception) -> None:
        # An ICMP error for an earlier reply; nothing to do but note it.
        log.debug("tftp listener socket error: %s", exc)


class _SessionProtocol(asyncio.DatagramProtocol):
    def __init__(self, transfer: _Transfer) -> None:
        self._transfer = transfer

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self._transfer.on_datagram(data, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("tftp session socket error for %s: %s", _client_text(self._transfer.client), exc)


class _Transfer:
    """One accepted read: its socket, its timer, its file, and the session that decides."""

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
        self.server = server
        self.client = client
        self.request = request
        self.session = session
        self._opened = opened
        self._started = started
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.DatagramTransport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.finished = False

    # -- wiring -------------------------------------------------------------------------------

    def attach(self, transport: asyncio.DatagramTransport) -> None:
        if self.finished:
            transport.close()
            return
        self._transport = transport
        self._apply(self.session.start(self._loop.time()))

    def abort(self, code: int, message: str) -> None:
        self._apply(self.session.abort(code, message))

    # -- events -------------------------------------------------------------------------------

    def on_datagram(self, data: bytes, addr: Address) -> None:
        try:
            self._on_datagram(data, addr)
        except Exception:
            self.server._count("internal_error")
            log.exception("tftp: unexpected error in transfer for %s", _client_text(self.client))
            self.abort(ErrorCode.NOT_DEFINED, "internal server error")

    def _on_datagram(self, data: bytes, addr: Address) -> None:
        if self.finished:
            return
        if addr[:2] != self.client[:2]:
            # RFC 1350 §4: a packet from another TID gets ERROR 5 and the transfer goes on.
            self.server._count("unknown_tid")
            self._sendto(encode(Error(ErrorCode.UNKNOWN_TID, "unknown transfer ID")), addr)
            return
        try:
            packet = decode(data)
        except TftpDecodeError as exc:
            # A damaged packet from the peer is dropped; the retransmit timer recovers.
            self.server._malformed(addr, data, exc)
            return
        self._apply(self.session.receive(packet, self._loop.time()))

    def _on_timer(self) -> None:
        self._timer = None
        try:
            self._apply(self.session.timeout(self._loop.time()))
        except Exception:
            self.server._count("internal_error")
            log.exception("tftp: unexpected error in transfer for %s", _client_text(self.client))
            self.abort(ErrorCode.NOT_DEFINED, "internal server error")

    # -- carrying out actions -----------------------------------------------------------------

    def _apply(self, actions: list[Action]) -> None:
        for action in actions:
            match action:
                case SendOack(options):
                    self._sendto(encode(OptionAck(options)), self.client)
                case SendBlock():
                    payload = self._read_block(action)
                    if payload is None:
                        return
                    self._sendto(encode(Data(action.block, payload)), self.client)
                case SendError(code, message):
                    self._sendto(encode(Error(code, message)), self.client)
                case Finish():
                    self._finish(action)
                    return
        self._arm()

    def _read_block(self, action: SendBlock) -> bytes | None:
        """The block's octets, or None after aborting the transfer because they were not there.

        The one place file content is read; moving reads off the event loop changes only this.
        """
        try:
            payload = self._opened.read(action.offset, action.length)
        except OSError as exc:
            self.abort(ErrorCode.NOT_DEFINED, f"read error: {exc.strerror or exc}")
            return None
        if len(payload) != action.length:
            # The file shrank under us; sending a short block would end the transfer early
            # with the client none the wiser.
            self.abort(ErrorCode.NOT_DEFINED, "file changed during transfer")
            return None
        return payload

    def _sendto(self, datagram: bytes, addr: Address) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.sendto(datagram, addr)
        else:
            # No session socket yet (or any more): the listener is the only way to reach it.
            self.server._reply(datagram, addr)

    def _arm(self) -> None:
        deadline = self.session.deadline
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

    def _finish(self, finish: Finish) -> None:
        if self.finished:
            return
        self.finished = True
        self._cancel_timer()
        self._opened.close()
        if self._transport is not None:
            self._transport.close()
        session = self.session
        if finish.outcome is Outcome.OK:
            result, level = "ok", logging.INFO
        elif finish.outcome is Outcome.CLIENT_ERROR:
            result, level = f"client error: {finish.message}", logging.WARNING
        elif finish.outcome is Outcome.TIMED_OUT:
            result, level = "timed out", logging.WARNING
        else:
            result, level = f"error: {finish.message}", logging.WARNING
        options = ",".join(f"{n}={v}" for n, v in session.negotiated.oack_options) or "-"
        self.server._transfer_done(self, finish.outcome)
        self.server._log_transfer(
            level,
            self.client,
            self.request.filename,
            options=options,
            size=session.bytes_acknowledged,
            started=self._started,
            result=result,
        )


class TftpServer:
    """A read-only TFTP server over a :class:`FileSource`."""

    def __init__(
        self,
        source: FileSource,
        *,
        max_blksize: int = 1468,
        timeout: float = 1.0,
        retries: int = 5,
        max_sessions: int = 512,
        max_sessions_per_client: int = 32,
        max_windowsize: int = 64,
    ) -> None:
        # Check the limits now, not on the first request.
        negotiate((), file_size=0, max_blksize=max_blksize, max_windowsize=max_windowsize)
        if timeout <= 0 or retries < 0 or max_sessions < 1 or max_sessions_per_client < 1:
            raise ValueError("timeout, retries and session limits must be positive")
        self._source = source
        self._max_blksize = max_blksize
        self._max_windowsize = max_windowsize
        self._timeout = timeout
        self._retries = retries
        self._max_sessions = max_sessions
        self._max_per_client = max_sessions_per_client
        self._listener: asyncio.DatagramTransport | None = None
        self._host = ""
        self._port = 0
        self._transfers: set[_Transfer] = set()
        self._by_request: dict[tuple[Address, ReadRequest], _Transfer] = {}
        self._per_client: Counter[Any] = Counter()
        self._tasks: set[asyncio.Task[None]] = set()
        self._counters: Counter[str] = Counter()

    # -- public -------------------------------------------------------------------------------

    async def start(self, host: str, port: int) -> None:
        if self._listener is not None:
            raise RuntimeError("server already started")
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _ListenerProtocol(self), local_addr=(host, port)
        )
        self._listener = transport
        sockname = transport.get_extra_info("sockname")
        # Session sockets bind to the address actually bound, so a name like "localhost"
        # is resolved once and replies leave from the address the listener uses.
        self._host, self._port = sockname[0], sockname[1]

    @property
    def port(self) -> int:
        if self._listener is None:
            raise RuntimeError("server not started")
        return self._port

    @property
    def active_sessions(self) -> int:
        return len(self._transfers)

    @property
    def counters(self) -> dict[str, int]:
        """Counts of transfer outcomes and of dropped or refused datagrams, by name."""
        return dict(self._counters)

    async def close(self) -> None:
        for transfer in list(self._transfers):
            transfer.abort(ErrorCode.NOT_DEFINED, "server shutting down")
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    # -- listener -----------------------------------------------------------------------------

    def _on_request_datagram(self, data: bytes, addr: Address) -> None:
        try:
            self._dispatch(data, addr)
        except Exception:
            # Whatever went wrong with this datagram, the listener keeps serving.
            self._count("internal_error")
            log.exception("tftp: unexpected error handling a datagram from %s", _client_text(addr))

    def _dispatch(self, data: bytes, addr: Address) -> None:
        try:
            packet = decode(data)
        except TftpDecodeError as exc:
            self._malformed(addr, data, exc)
            if exc.opcode in (Opcode.RRQ, Opcode.WRQ):
                # A broken request still has a client waiting; tell it instead of timing out.
                self._reply(encode(Error(exc.code, exc.reason)), addr)
            return
        match packet:
            case ReadRequest():
                self._on_read_request(packet, addr)
            case WriteRequest():
                self._refuse(
                    addr,
                    packet.filename,
                    self._loop_time(),
                    error=Error(ErrorCode.ACCESS_VIOLATION, "read-only server"),
                    result="access denied: read-only server",
                    counter="write_refused",
                )
            case _:
                # DATA, ACK, ERROR or OACK for no transfer: late packets of a finished one.
                self._count("stray")

    def _on_read_request(self, request: ReadRequest, addr: Address) -> None:
        started = self._loop_time()
        key = (addr, request)
        if key in self._by_request:
            # The client repeated its request before our answer reached it; the transfer
            # already started answers it.
            self._count("duplicate_request")
            return
        name = request.filename
        if (
            len(self._transfers) >= self._max_sessions
            or self._per_client[addr[0]] >= self._max_per_client
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
        opened = self._open(request, addr, started)
        if opened is None:
            return
        try:
            negotiated = negotiate(
                request.options,
                file_size=opened.size,
                max_blksize=self._max_blksize,
                max_windowsize=self._max_windowsize,
            )
            session = ReadSession(
                opened.size,
                negotiated,
                retransmit_timeout=(
                    float(negotiated.timeout) if negotiated.timeout else self._timeout
                ),
                max_retries=self._retries,
            )
            transfer = _Transfer(
                self, addr, request=request, opened=opened, session=session, started=started
            )
        except BaseException:
            opened.close()
            raise
        self._transfers.add(transfer)
        self._by_request[key] = transfer
        self._per_client[addr[0]] += 1
        task = asyncio.get_running_loop().create_task(self._open_session_socket(transfer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _open(self, request: ReadRequest, addr: Address, started: float) -> OpenedFile | None:
        """The file to send, or None after refusing the request (answered, counted, logged)."""
        try:
            return _open_for(self._source, request)
        except _Refusal as refusal:
            self._refuse(
                addr,
                request.filename,
                started,
                error=refusal.error,
                result=refusal.result,
                counter=refusal.counter,
                level=refusal.level,
            )
            return None

    async def _open_session_socket(self, transfer: _Transfer) -> None:
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _SessionProtocol(transfer), local_addr=(self._host, 0)
            )
        except OSError as exc:
            log.debug("tftp: cannot open a session socket: %s", exc)
            transfer.abort(ErrorCode.NOT_DEFINED, "server cannot open a socket")
            return
        transfer.attach(transport)

    # -- bookkeeping used by transfers --------------------------------------------------------

    def _transfer_done(self, transfer: _Transfer, outcome: Outcome) -> None:
        self._transfers.discard(transfer)
        self._by_request.pop((transfer.client, transfer.request), None)
        host = transfer.client[0]
        self._per_client[host] -= 1
        if self._per_client[host] <= 0:
            del self._per_client[host]
        self._count(outcome.name.lower())

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
    ) -> None:
        self._reply(encode(error), addr)
        self._count(counter)
        self._log_transfer(level, addr, name, options="-", size=0, started=started, result=result)

    def _reply(self, datagram: bytes, addr: Address) -> None:
        if self._listener is not None and not self._listener.is_closing():
            self._listener.sendto(datagram, addr)

    def _count(self, name: str) -> None:
        self._counters[name] += 1

    def _malformed(self, addr: Address, data: bytes, exc: TftpDecodeError) -> None:
        # One line and a counter per bad datagram, in the same form as the DHCP edge's.
        self._count("malformed")
        log.warning(
            "%s",
            format_event("malformed", source=_client_text(addr), bytes=len(data), error=exc.reason),
        )

    @staticmethod
    def _loop_time() -> float:
        return asyncio.get_running_loop().time()

    def _log_transfer(
        self,
        level: int,
        addr: Address,
        name: str,
        *,
        options: str,
        size: int,
        started: float,
        result: str,
    ) -> None:
        seconds = max(self._loop_time() - started, 0.0)
        rate = size / seconds / 1e6 if seconds > 0 else 0.0
        log.log(
            level,
            "%s",
            format_event(
                "transfer",
                client=_client_text(addr),
                file=name,
                options=options,
                bytes=size,
                seconds=f"{seconds:.3f}",
                rate=f"{rate:.2f}MB/s",
                result=result,
            ),
        )
