"""The TFTP service's decisions: which requests to take on, what a read or an upload opens, what
a refusal answers, and the one log line of every transfer.

The transport (:mod:`netbootd.transport.tftp`) owns the sockets, timers and threads and carries
out what is decided here; the protocol (:mod:`netbootd.proto.tftp`) decides blocks, windows and
retransmissions. Everything here returns values: a :class:`Refusal` says what to answer, log and
count; :class:`Admission` counts the transfers it let in. The opening functions block on the file
system and are meant to run in a worker thread. This module must not open sockets, arm timers,
start threads or read a clock (callers pass durations in).
"""

from __future__ import annotations

import errno
import logging
from array import array
from bisect import bisect_right
from collections import Counter
from collections.abc import Hashable
from dataclasses import dataclass, field

from netbootd.logs.events import format_event
from netbootd.proto.tftp import (
    Error,
    ErrorCode,
    Finish,
    Mode,
    Negotiated,
    Outcome,
    ReadRequest,
    ReadSession,
    WriteRequest,
    check_mode,
    negotiate,
)
from netbootd.proto.tftp.netascii import netascii_length, to_netascii
from netbootd.proto.tftp.write import WriteSession, negotiate_write
from netbootd.services.files import (
    AccessDenied,
    FileLookupError,
    FileNotFound,
    FileSource,
    OpenedFile,
)
from netbootd.services.uploads import FileExists, UploadDir, UploadFile

__all__ = [
    "DUPLICATE",
    "Admission",
    "Admitted",
    "Duplicate",
    "NetasciiFile",
    "Refusal",
    "Refused",
    "client_text",
    "create_upload",
    "finish_result",
    "negotiate_upload",
    "open_read",
    "options_text",
    "read_session",
    "storage_error",
    "transfer_line",
    "write_session",
]

Request = ReadRequest | WriteRequest
# A transfer's client: the (host, port, ...) tuple its datagrams come from.
Client = tuple[Hashable, ...]
Key = tuple[Client, Request]


def client_text(addr: Client) -> str:
    """A client's address as a log shows it: ``host:port``, ``[v6]:port``."""
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


# --------------------------------------------------------------------------------------------
# Refusals


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request cannot be served: the ERROR to answer, the log line's result and level, and
    the counter it adds to."""

    error: Error
    result: str
    counter: str
    level: int = logging.WARNING


def cannot_read(reason: str) -> Refusal:
    """A file that exists, or might, but cannot be made ready: TFTP error 0, a warning."""
    return Refusal(
        Error(ErrorCode.NOT_DEFINED, "cannot read file"), f"error: {reason}", "server_error"
    )


def _access_denied(exc: AccessDenied) -> Refusal:
    return Refusal(
        Error(ErrorCode.ACCESS_VIOLATION, "access violation"),
        f"access denied: {exc.reason}",
        "access_denied",
    )


_READ_ONLY = Refusal(
    Error(ErrorCode.ACCESS_VIOLATION, "read-only server"),
    "access denied: read-only server",
    "write_refused",
)
_BUSY = Refusal(
    Error(ErrorCode.NOT_DEFINED, "too many transfers, try again later"),
    "refused: too many transfers",
    "refused_busy",
)


# --------------------------------------------------------------------------------------------
# Admission


@dataclass(frozen=True, slots=True)
class Duplicate:
    """The client repeated a request before our answer reached it: the transfer already started
    answers it, and nothing else is done."""


DUPLICATE = Duplicate()


@dataclass(frozen=True, slots=True)
class Admitted:
    """Take the request on. ``supersede``: first end the transfer the same client address and
    port had (single-port mode)."""

    supersede: bool = False


@dataclass(frozen=True, slots=True)
class Refused:
    """Answer with ``refusal``. ``supersede`` as for :class:`Admitted`."""

    refusal: Refusal
    supersede: bool = False


Verdict = Duplicate | Admitted | Refused


@dataclass(eq=False, kw_only=True)
class Admission:
    """Which requests the server takes on, and the transfers it has taken on and not released.

    A request counts from the moment it is admitted (while its file opens, too) until
    :meth:`release`; the caps on transfers, in all and per client host, count the same.
    """

    max_sessions: int
    max_sessions_per_client: int
    uploads: bool  # whether write requests are taken at all
    _live: set[Key] = field(default_factory=set, init=False)
    _per_client: Counter[Hashable] = field(default_factory=Counter, init=False)

    def __len__(self) -> int:
        return len(self._live)

    def admit(self, request: Request, client: Client, *, replacing: Key | None = None) -> Verdict:
        """Whether to take ``request`` from ``client`` on; if admitted, it counts from now.

        ``replacing`` is the transfer the same client address and port has on a shared port
        (single-port mode), if any: a new request from there means the client gave up on the
        old transfer (a reset PXE ROM reuses its port), so the old one is superseded and stops
        counting before the caps are checked.
        """
        if isinstance(request, WriteRequest) and not self.uploads:
            return Refused(_READ_ONLY)
        key = (client, request)
        if key in self._live:
            return DUPLICATE
        supersede = replacing is not None
        if replacing is not None:
            self.release(replacing)
        if (
            len(self._live) >= self.max_sessions
            or self._per_client[client[0]] >= self.max_sessions_per_client
        ):
            return Refused(_BUSY, supersede)
        mode_error = check_mode(request.mode)
        if isinstance(request, WriteRequest) and request.mode != Mode.OCTET and not mode_error:
            mode_error = Error(ErrorCode.ILLEGAL_OPERATION, "uploads are octet mode only")
        if mode_error is not None:
            return Refused(
                Refusal(mode_error, f"illegal mode: {request.mode}", "bad_mode"), supersede
            )
        self._live.add(key)
        self._per_client[client[0]] += 1
        return Admitted(supersede)

    def release(self, key: Key) -> None:
        """The transfer of ``key`` is over (or never started); releasing twice is harmless."""
        if key not in self._live:
            return
        self._live.discard(key)
        host = key[0][0]
        self._per_client[host] -= 1
        if self._per_client[host] <= 0:
            del self._per_client[host]


# --------------------------------------------------------------------------------------------
# Reads


def open_read(source: FileSource, request: ReadRequest, peer: str) -> OpenedFile | Refusal:
    """The file a read request gets, in the mode it asked for, or the :class:`Refusal`.

    Blocking: run it in a worker thread.
    """
    try:
        opened = source.open(request.filename, peer)
    except FileNotFound:
        # pxelinux and GRUB probe many names that do not exist: routine, not a warning.
        return Refusal(
            Error(ErrorCode.FILE_NOT_FOUND, "file not found"),
            "not found",
            "not_found",
            logging.INFO,
        )
    except AccessDenied as exc:
        return _access_denied(exc)
    except FileLookupError as exc:
        return cannot_read(exc.reason)
    except OSError as exc:
        return cannot_read(exc.strerror or str(exc))
    if request.mode != Mode.NETASCII:
        return opened
    try:
        return NetasciiFile(opened)
    except OSError as exc:
        opened.close()
        return cannot_read(exc.strerror or str(exc))
    except BaseException:
        opened.close()
        raise


def read_session(
    request: ReadRequest,
    file_size: int,
    *,
    max_blksize: int,
    max_windowsize: int,
    timeout: float,
    retries: int,
) -> ReadSession:
    """The session that serves ``file_size`` octets for ``request``, its options negotiated.

    A timeout the client asked for and the server accepted (RFC 2349) replaces the server's own.
    """
    negotiated = negotiate(
        request.options,
        file_size=file_size,
        max_blksize=max_blksize,
        max_windowsize=max_windowsize,
    )
    return ReadSession(
        file_size,
        negotiated,
        retransmit_timeout=float(negotiated.timeout) if negotiated.timeout else timeout,
        max_retries=retries,
    )


class NetasciiFile:
    """An :class:`~netbootd.services.files.OpenedFile` that serves another as netascii,
    converting each piece as it is read.

    The size of the converted file is what a read session counts its blocks from (the short last
    block ends the transfer, RFC 1350 §6) and what the OACK states when the client asks for
    tsize (RFC 2349 asks for the size of the file as it will be transferred). So opening makes
    one pass over the source that counts, without keeping, and notes where every ``step``
    octets of the source begin in the converted stream. A read at any converted offset then
    starts at the nearest such point below it: sequential reads, retransmitted windows and
    reads from several threads at once are all served, in memory bounded by the read's length
    and one step, whatever the file's size.
    """

    def __init__(self, source: OpenedFile, *, step: int = 64 * 1024) -> None:
        if step < 1:
            raise ValueError("step must be positive")
        self._source = source
        self._step = step
        self._source_size = source.size
        # _starts[k]: where the source's octet k * step lands in the converted stream; the
        # last entry is the converted size.
        self._starts = array("Q", [0])
        converted = 0
        for offset in range(0, self._source_size, step):
            length = min(step, self._source_size - offset)
            data = source.read(offset, length)
            if len(data) != length:
                raise OSError(errno.EIO, "file changed while it was measured")
            converted += netascii_length(data)
            self._starts.append(converted)
        self._size = converted
        # The step converted last: a sequential reader's next read usually begins inside it.
        self._last: tuple[int, bytes] = (-1, b"")

    @property
    def size(self) -> int:
        return self._size

    def read(self, offset: int, length: int) -> bytes:
        end = min(offset + length, self._size)
        if offset >= end:
            return b""
        index = bisect_right(self._starts, offset) - 1
        base = self._starts[index]
        pieces: list[bytes] = []
        position = base
        while position < end:
            piece = self._converted(index)
            if not piece:
                break  # the source shrank: the caller sees a short read
            pieces.append(piece)
            position += len(piece)
            index += 1
        return b"".join(pieces)[offset - base : end - base]

    def _converted(self, index: int) -> bytes:
        last = self._last
        if last[0] == index:
            return last[1]
        offset = index * self._step
        data = self._source.read(offset, max(0, min(self._step, self._source_size - offset)))
        converted = to_netascii(data)
        self._last = (index, converted)
        return converted

    def close(self) -> None:
        self._last = (-1, b"")
        self._source.close()


# --------------------------------------------------------------------------------------------
# Uploads


def negotiate_upload(
    request: WriteRequest, *, max_blksize: int, max_windowsize: int, max_size: int
) -> Negotiated | Refusal:
    """The options an upload runs with, or the :class:`Refusal` of its stated size."""
    negotiated = negotiate_write(
        request.options,
        max_blksize=max_blksize,
        max_windowsize=max_windowsize,
        max_size=max_size,
    )
    if isinstance(negotiated, Error):
        return Refusal(negotiated, f"refused: {negotiated.message}", "upload_refused")
    return negotiated


def write_session(
    negotiated: Negotiated, *, max_size: int, timeout: float, retries: int
) -> WriteSession:
    """The session that receives an upload with the options ``negotiated``.

    A timeout the client asked for and the server accepted (RFC 2349) replaces the server's own.
    """
    return WriteSession(
        negotiated,
        max_size=max_size,
        retransmit_timeout=float(negotiated.timeout) if negotiated.timeout else timeout,
        max_retries=retries,
    )


def create_upload(uploads: UploadDir, request: WriteRequest) -> UploadFile | Refusal:
    """Start the file an upload fills, or the :class:`Refusal`. Blocking."""
    try:
        return uploads.create(request.filename)
    except FileExists:
        return Refusal(
            Error(ErrorCode.FILE_EXISTS, "file already exists"),
            "refused: file exists",
            "upload_refused",
        )
    except AccessDenied as exc:
        return _access_denied(exc)
    except OSError as exc:
        code = ErrorCode.DISK_FULL if exc.errno in (errno.ENOSPC, errno.EDQUOT) else 0
        return Refusal(
            Error(code, "cannot create file"),
            f"error: {exc.strerror or exc}",
            "server_error",
        )


def storage_error(exc: BaseException) -> Error:
    """The ERROR that ends an upload whose octets could not be written or put in place."""
    if isinstance(exc, FileExists):
        return Error(ErrorCode.FILE_EXISTS, "file already exists")
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return Error(ErrorCode.DISK_FULL, "disk full")
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return Error(ErrorCode.NOT_DEFINED, f"cannot store file: {reason}")


# --------------------------------------------------------------------------------------------
# The log line


def finish_result(finish: Finish) -> tuple[str, int]:
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


def options_text(negotiated: Negotiated) -> str:
    """The acknowledged options as the log line shows them: ``blksize=1432,tsize=0`` or ``-``."""
    return ",".join(f"{n}={v}" for n, v in negotiated.oack_options) or "-"


def transfer_line(
    client: Client,
    name: str,
    *,
    options: str,
    size: int,
    seconds: float,
    result: str,
    retransmits: int | None = None,
    event: str = "transfer",
) -> str:
    """The one line a transfer (``event="transfer"``) or an upload (``"upload"``) logs."""
    seconds = max(seconds, 0.0)
    rate = size / seconds / 1e6 if seconds > 0 else 0.0
    return format_event(
        event,
        client=client_text(client),
        file=name,
        options=options,
        bytes=size,
        seconds=f"{seconds:.3f}",
        rate=f"{rate:.2f}MB/s",
        **({} if retransmits is None else {"retransmits": retransmits}),
        result=result,
    )
