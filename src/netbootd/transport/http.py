"""The HTTP edge: boot files, kernels, initrds and iPXE scripts over HTTP, with aiohttp.

Every file is opened through the same :class:`~netbootd.services.files.FileSource` as TFTP
(the confined boot root, and the files rendered per machine), so the two services can never
disagree about what is served. For a file of the root, aiohttp's ``FileResponse`` decides the
status and headers: HEAD, Range (206/416), ETag/If-None-Match, Last-Modified. It is handed the
descriptor's ``/proc/self/fd`` link rather than the path, so what it describes is the very file
that was checked, even if the path is replaced meanwhile, and never a ``.gz`` or ``.br`` sibling
of it. ``If-Range`` is decided here (:func:`if_range_holds`), as RFC 9110 §13.1.5 has it. The
body goes out with ``sendfile(2)`` from that descriptor (:func:`send_file`): uvloop has no
``loop.sendfile``, and without one aiohttp would copy every file through Python. One log line
per request, with the octets actually sent.

Connections are accepted here, not by aiohttp's site (:class:`_Acceptor`): past
``http-max-connections`` a new one is closed at once, and when the process is out of
descriptors ``accept`` is retried a moment later; libuv would drop such connections without a
word, or close the listener for good. Each connection (:class:`_Connection`) has
``http-header-timeout`` seconds to send a request's headers and ``http-keepalive-timeout``
seconds idle between requests. A request that breaks HTTP is one warning line, not aiohttp's
traceback; warnings go through a :class:`LineBudget`, so a client cannot flood the log.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import math
import os
import socket
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import IO, Any

from aiohttp import hdrs, web
from aiohttp.abc import AbstractAccessLogger, AbstractStreamWriter
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse
from aiohttp.web_server import Server

from netbootd.boot.journal import Service
from netbootd.logs.events import format_event
from netbootd.services.dhcp.limits import LineBudget, Throttle
from netbootd.services.files import (
    AccessDenied,
    FileLookupError,
    FileNotFound,
    FileSource,
    LocalFile,
)
from netbootd.services.journal import Journal
from netbootd.services.machines import path_mac, role_of
from netbootd.transport.renders import RenderPool, renders

log = logging.getLogger("netbootd.http")

_COUNTERS_KEY = web.AppKey("counters", Counter)
_SOURCE_KEY: web.AppKey[FileSource] = web.AppKey("source")
_RENDERS_KEY: web.AppKey[RenderPool | None] = web.AppKey("renders")
# Marks a machine installed (boot-once): called with the MAC, returns the machine's name or None.
InstalledHook = Callable[[str], str | None]
_INSTALLED_KEY: web.AppKey[InstalledHook] = web.AppKey("installed")
_EDGE_KEY: web.AppKey[_Edge] = web.AppKey("edge")
# Set on the request aiohttp makes up for one that broke HTTP: its warning is its only line.
_BAD_REQUEST: web.RequestKey[bool] = web.RequestKey("bad-request", bool)
_JOURNAL_KEY: web.AppKey[Journal | None] = web.AppKey("journal")


class _BootStep:
    """Set on a request for a boot file (or a boot-once mark), which the journal is told of
    once it is answered; the operator's routes (API, metrics, web page) have none."""

    __slots__ = ("error", "journal", "name", "rendered", "size")

    def __init__(self, journal: Journal, name: str) -> None:
        self.journal = journal
        self.name = name  # as asked, without the leading /
        self.size: int | None = None  # the file's, once it is open
        self.rendered = False
        self.error = ""  # why it could not be served, beyond its status


_BOOT_STEP: web.RequestKey[_BootStep] = web.RequestKey("boot-step", _BootStep)


def _boot_step(request: web.Request, name: str) -> _BootStep | None:
    journal = request.app[_JOURNAL_KEY]
    if journal is None:
        return None
    step = request[_BOOT_STEP] = _BootStep(journal, name)
    return step


def _tell_journal(
    step: _BootStep,
    request: BaseRequest,
    response: StreamResponse,
    *,
    sent: int,
    seconds: float,
    cut_short: str | None,
) -> None:
    """The journal's event for an answered boot-file request."""
    status = response.status
    if cut_short is not None:
        result = f"cut short: {cut_short}"
    elif status < 400:
        result = "ok"
    elif status == 404:
        result = "not found"
    elif status == 403:
        result = "forbidden"
    else:
        result = f"error: {step.error or f'{status} {response.reason}'}"
    peer = request.remote or ""
    more = {"status": str(status)}
    if request.method != "GET":
        more["method"] = request.method  # HEAD (UEFI HTTP Boot's, before its GET), POST
    role = (
        role_of(request.app[_SOURCE_KEY], step.name, peer or None).value
        if isinstance(request, web.Request)
        else "file"
    )
    step.journal.fetched(
        Service.HTTP,
        peer,
        file=step.name,
        role=role,
        result=result,
        sent=sent,
        seconds=seconds,
        size=step.size if step.size is not None else response.content_length,
        rendered=step.rendered,
        more=more,
        mac=path_mac(step.name),
    )


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """How long and how many connections are kept (``http-header-timeout``, ...)."""

    header_timeout: float = 60.0  # nginx's client_header_timeout
    keepalive_timeout: float = 75.0  # nginx's keepalive_timeout
    max_connections: int = 4096


class _Edge:
    """What the connections of one server share: the count, the counters, the log budgets."""

    def __init__(self, limits: HttpLimits, counters: Counter[str]) -> None:
        self.limits = limits
        self.counters = counters
        self.open = 0
        self._lines = LineBudget()  # a burst of warnings, then a count
        self._refusals = Throttle()  # one line a minute about connections past the cap
        self._no_descriptor = Throttle()  # and about accept out of descriptors

    def warn(self, event: str, **fields: object) -> None:
        held = self._lines.allow(time.monotonic())
        if held is None:
            return
        if held:
            fields["held_back"] = held
        log.warning(format_event(event, **fields))

    def refused(self, peer: str) -> None:
        self.counters["refused"] += 1
        count = self._refusals.event(time.monotonic())
        if count is not None:
            log.warning(
                format_event(
                    "connection-refused",
                    client=peer,
                    open=self.open,
                    http_max_connections=self.limits.max_connections,
                    refused=count,
                )
            )

    def out_of_descriptors(self, exc: OSError) -> None:
        self.counters["no-descriptor"] += 1
        count = self._no_descriptor.event(time.monotonic())
        if count is not None:
            log.warning(
                format_event(
                    "accept-failed",
                    error=exc.strerror or str(exc),
                    open=self.open,
                    times=count,
                    effect="connections wait in the backlog; accept is retried",
                )
            )


class _AccessLog(AbstractAccessLogger):
    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        if request.get(_BAD_REQUEST):
            return  # said in its warning
        peer = request.remote or "-"
        result, level = "ok", logging.INFO
        if isinstance(response, _OpenedFileResponse):
            length = response.body_sent  # what went out, not what was announced
            if response.cut_short is not None:
                result, level = f"cut short: {response.cut_short}", logging.WARNING
        else:
            length = response.content_length if response.content_length is not None else 0
        step = request.get(_BOOT_STEP)
        if step is not None:
            cut_short = response.cut_short if isinstance(response, _OpenedFileResponse) else None
            _tell_journal(step, request, response, sent=length, seconds=time, cut_short=cut_short)
        rate = length / time / 1e6 if time > 0 else 0.0
        fields: dict[str, object] = {
            "client": peer,
            "method": request.method,
            "path": request.path,
            "status": response.status,
            "bytes": length,
            "seconds": f"{time:.3f}",
            "rate": f"{rate:.2f}MB/s",
            "range": request.headers.get("Range", "-"),
            "result": result,
        }
        protocol = request.protocol
        if level >= logging.WARNING and isinstance(protocol, _Connection):
            protocol.edge.warn("request", **fields)
            return
        self.logger.log(level, format_event("request", **fields))


# The most one sendfile(2) call is asked for; the socket buffer usually takes less.
_SENDFILE_MAX = 16 * 1024 * 1024


async def _writable(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    ready = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_writer(fd, wake)
    try:
        await ready
    finally:
        loop.remove_writer(fd)


async def send_file(
    transport: asyncio.Transport,
    file_fd: int,
    offset: int,
    count: int,
    progress: Callable[[int], None],
) -> None:
    """Send ``count`` octets of ``file_fd`` from ``offset`` down the transport's socket, zero-copy.

    ``progress`` is told every number of octets sent. A peer that goes away, or a file that
    ends early, raises ``ConnectionResetError``.

    The transport must hold nothing unsent (the headers go out at once when the socket is
    fresh). Each ``sendfile`` runs in a worker thread, so that a file not yet in the page cache
    never stalls the event loop; the loop only waits for the socket to drain.
    """
    loop = asyncio.get_running_loop()
    # uvloop's transports have this interface without subclassing asyncio's classes.
    sock = transport.get_extra_info("socket")
    if sock is None or transport.is_closing():
        raise ConnectionResetError("connection lost")
    while transport.get_write_buffer_size():
        await asyncio.sleep(0.001)
        if transport.is_closing():
            raise ConnectionResetError("connection lost")
    # A descriptor of our own for the socket: the loop's poller keeps the transport's, and if
    # the transport closes meanwhile its number may be reused for another file at once.
    fd = os.dup(sock.fileno())
    try:
        while count > 0:
            if transport.is_closing():
                raise ConnectionResetError("connection lost")
            want = min(count, _SENDFILE_MAX)
            try:
                sent = await loop.run_in_executor(None, os.sendfile, fd, file_fd, offset, want)
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                raise ConnectionResetError(exc.strerror or str(exc)) from exc
            else:
                if sent == 0:
                    transport.abort()  # the file shrank: the promised length cannot be kept
                    raise ConnectionResetError("file ended before its announced length")
            offset += sent
            count -= sent
            progress(sent)
            if count > 0 and sent < want:
                await _writable(loop, fd)  # the socket buffer is full
    finally:
        os.close(fd)


def if_range_holds(validator: str, etag: str, last_modified: int, now: int) -> bool:
    """Whether a Range request's ``If-Range: validator`` lets the range be sent (RFC 9110
    §13.1.5); when it does not, the whole file is sent with 200.

    ``etag`` is the file's strong entity tag, quoted; ``last_modified`` and ``now`` are whole
    seconds since the epoch, as the ``Last-Modified`` and ``Date`` fields carry them.
    """
    value = validator.strip()
    if value.startswith(('"', "W/")):
        # An entity tag holds only on a strong match (§8.8.3.2): a weak one never does.
        return value == etag
    try:
        date = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return False  # neither a tag nor a date: not a validator this file matches
    # A date holds only if it is exactly Last-Modified, and that one is strong: at least a
    # second before the Date of the response (§8.8.2.2), so nothing changed in the same second.
    return int(date.timestamp()) == last_modified and last_modified < now


def _without_if_range(request: BaseRequest, fd: int) -> BaseRequest:
    """``request`` with ``If-Range`` decided: gone, and ``Range`` with it when it fails.

    aiohttp reads any ``If-Range`` as a date, and sends the range when a tag is given.
    """
    validator = request.headers.get(hdrs.IF_RANGE)
    if validator is None:
        return request
    info = os.fstat(fd)
    etag = f'"{info.st_mtime_ns:x}-{info.st_size:x}"'  # aiohttp's ETag for the same stat
    headers = request.headers.copy()
    del headers[hdrs.IF_RANGE]
    # aiohttp writes Last-Modified as the modification time rounded up to the second.
    last_modified = math.ceil(info.st_mtime)
    if not if_range_holds(validator, etag, last_modified, int(time.time())):
        headers.popall(hdrs.RANGE, None)
    return request.clone(headers=headers)


class _OpenedFileResponse(web.FileResponse):
    """A ``FileResponse`` for a file that is open already; the file is closed once it is sent.

    aiohttp decides the status and headers (conditional requests, ranges); the body goes out
    with :func:`send_file`.
    """

    def __init__(self, opened: LocalFile, counters: Counter[str]) -> None:
        super().__init__(f"/proc/self/fd/{opened.fileno()}", chunk_size=256 * 1024)
        self._opened = opened
        self._counters = counters
        self.body_sent = 0
        self.cut_short: str | None = None  # why the body stopped before its end

    def _sent(self, octets: int) -> None:
        self.body_sent += octets

    async def prepare(self, request: BaseRequest) -> AbstractStreamWriter | None:
        try:
            decided = _without_if_range(request, self._opened.fileno())
            return await super().prepare(decided)  # sends the whole body before it returns
        finally:
            self._opened.close()

    async def _sendfile(
        self, request: BaseRequest, fobj: IO[Any], offset: int, count: int
    ) -> AbstractStreamWriter:
        writer = await StreamResponse.prepare(self, request)  # the status line and headers
        assert writer is not None
        transport = request.transport
        if transport is None:
            raise ConnectionResetError("connection lost")
        try:
            await send_file(transport, self._opened.fileno(), offset, count, self._sent)
        except ConnectionResetError as exc:
            self.cut_short = str(exc) or "connection lost"
            self._counters["cut-short"] += 1
            raise
        await StreamResponse.write_eof(self)
        return writer


async def _serve(request: web.Request) -> web.StreamResponse:
    counters = request.app[_COUNTERS_KEY]
    source = request.app[_SOURCE_KEY]
    name = request.match_info["name"]  # already percent-decoded by aiohttp
    loop = asyncio.get_running_loop()
    pool = request.app[_RENDERS_KEY]
    step = _boot_step(request, name)
    try:
        if pool is not None and renders(source, name, request.remote):
            # An operator's template must not hold the threads that open and send files.
            opened = await pool.run(source.open, name, request.remote)
        else:
            opened = await loop.run_in_executor(None, source.open, name, request.remote)
    except FileNotFound:
        counters["not-found"] += 1
        raise web.HTTPNotFound(text=f"{name}: not found\n") from None
    except AccessDenied as exc:
        counters["forbidden"] += 1
        raise web.HTTPForbidden(text=f"{name}: {exc}\n") from None
    except FileLookupError as exc:
        if step is not None:
            step.error = exc.reason
        counters["server-error"] += 1
        request.app[_EDGE_KEY].warn("cannot-serve", path=name, error=exc.reason)
        raise web.HTTPInternalServerError(text=f"{name}: {exc.reason}\n") from None
    counters["served"] += 1
    if step is not None:
        step.size = opened.size
        step.rendered = not isinstance(opened, LocalFile)
    if isinstance(opened, LocalFile):
        return _OpenedFileResponse(opened, counters)
    try:  # rendered in memory: small, and already there
        body = opened.read(0, opened.size)
    finally:
        opened.close()
    return web.Response(body=body, content_type="text/plain", charset="utf-8")


async def _installed(request: web.Request) -> web.StreamResponse:
    """``POST /m/<mac>/installed``: the installed system says its boot-once profile is done."""
    mac = request.match_info["mac"].lower().replace("-", ":")
    _boot_step(request, request.path.lstrip("/"))
    loop = asyncio.get_running_loop()
    name = await loop.run_in_executor(None, request.app[_INSTALLED_KEY], mac)
    if name is None:
        raise web.HTTPNotFound(text=f"{mac}: no such machine in the inventory\n")
    log.info(format_event("installed", machine=name, mac=mac, client=request.remote or "-"))
    return web.Response(text=f"{name}: installed; it boots its own profile from now on\n")


def _one_line(message: str, most: int = 160) -> str:
    """aiohttp's parser error (a line, the octets quoted, a caret under the fault) as one line."""
    parts = [part.strip() for part in message.splitlines()]
    text = " ".join(part for part in parts if part and set(part) != {"^"})
    return text if len(text) <= most else text[: most - 3] + "..."


class _Connection(RequestHandler):
    """aiohttp's connection handler, with a deadline for each request's headers.

    The deadline is armed at accept and at the first octet of each later request, and
    cleared once aiohttp has a whole request head; a client that is slower than
    ``header_timeout`` (slowloris) is closed. aiohttp's own keep-alive timer closes a
    connection idle between requests. Whether a request head is in is read from two of
    aiohttp's private attributes (``_messages``, ``_request_in_progress``); the loopback tests
    of the timeouts fail if they change.
    """

    __slots__ = ("_edge", "_header_timer", "_holds_slot", "_quiet")

    def __init__(self, server: Server, edge: _Edge, **kwargs: Any) -> None:
        super().__init__(server, **kwargs)
        self._edge = edge
        self._header_timer: asyncio.TimerHandle | None = None
        self._quiet = False
        edge.open += 1
        self._holds_slot = True

    @property
    def edge(self) -> _Edge:
        return self._edge

    def release(self) -> None:
        """Give the connection's place under the cap back (once)."""
        if self._holds_slot:
            self._holds_slot = False
            self._edge.open -= 1

    def _between_requests(self) -> bool:
        # No whole request head queued, and none being answered.
        return not self._messages and not self._request_in_progress

    def _arm_header_timer(self) -> None:
        timeout = self._edge.limits.header_timeout
        self._header_timer = self._loop.call_later(timeout, self._header_timed_out)

    def _clear_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timed_out(self) -> None:
        self._header_timer = None
        if self.transport is None or not self._between_requests():
            return
        self._edge.counters["header-timeout"] += 1
        peer = self.transport.get_extra_info("peername")
        self._edge.warn(
            "header-timeout",
            client=peer[0] if peer else "-",
            seconds=self._edge.limits.header_timeout,
            effect="connection closed",
        )
        self.force_close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        if self._header_timer is None and data and self._between_requests():
            self._arm_header_timer()  # the first octet of the next request
        super().data_received(data)
        if self._messages:
            self._clear_header_timer()  # a whole request head (or one aiohttp refused)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._clear_header_timer()
        self.release()
        super().connection_lost(exc)

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> StreamResponse:
        if not isinstance(exc, HttpProcessingError):
            return super().handle_error(request, status, exc, message)
        # The peer broke HTTP (a bad request line, bad or too long headers): the status it
        # earned and one line, not aiohttp's traceback.
        self._edge.counters["bad-request"] += 1
        request[_BAD_REQUEST] = True
        self._edge.warn(
            "bad-request",
            client=request.remote or "-",
            status=status,
            error=_one_line(exc.message or type(exc).__name__),
        )
        self._quiet = True
        try:
            return super().handle_error(request, status, exc, message)
        finally:
            self._quiet = False

    def log_exception(self, *args: Any, **kw: Any) -> None:
        if not self._quiet:
            super().log_exception(*args, **kw)


# errno values of an accept that failed for want of a resource, not because of the peer.
_NO_RESOURCE = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_ACCEPT_RETRY = 0.1  # seconds before accept is tried again after such a failure
_ACCEPT_BATCH = 64  # connections taken per wakeup, so that the loop serves the others too


class _Acceptor:
    """Takes connections off a listening socket and hands them to aiohttp."""

    def __init__(
        self,
        sock: socket.socket,
        make: Callable[[], _Connection],
        edge: _Edge,
    ) -> None:
        self._sock = sock
        self._make = make
        self._edge = edge
        self._loop = asyncio.get_running_loop()
        self._retry: asyncio.TimerHandle | None = None
        self._connecting: set[asyncio.Task[Any]] = set()
        self._reading = False

    def start(self) -> None:
        self._retry = None
        self._loop.add_reader(self._sock.fileno(), self._ready)
        self._reading = True

    def _pause(self) -> None:
        self._loop.remove_reader(self._sock.fileno())
        self._reading = False
        self._retry = self._loop.call_later(_ACCEPT_RETRY, self.start)

    def _ready(self) -> None:
        for _ in range(_ACCEPT_BATCH):
            try:
                conn, addr = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue  # gone before it was taken
            except OSError as exc:
                if exc.errno in _NO_RESOURCE:
                    self._edge.out_of_descriptors(exc)
                else:
                    self._edge.warn("accept-failed", error=exc.strerror or str(exc))
                self._pause()
                return
            if self._edge.open >= self._edge.limits.max_connections:
                conn.close()  # those in service go on; this one is told at once
                self._edge.refused(str(addr[0]))
                continue
            self._hand_over(conn)

    def _hand_over(self, conn: socket.socket) -> None:
        conn.setblocking(False)
        try:
            protocol = self._make()
        except Exception:  # a bug of ours: this connection fails, the listener goes on
            conn.close()
            log.exception("%s", format_event("internal-error", where="http-accept"))
            return
        task = self._loop.create_task(self._loop.connect_accepted_socket(lambda: protocol, conn))
        self._connecting.add(task)
        task.add_done_callback(functools.partial(self._handed_over, protocol, conn))

    def _handed_over(
        self, protocol: _Connection, conn: socket.socket, task: asyncio.Task[Any]
    ) -> None:
        self._connecting.discard(task)
        failed = task.cancelled() or task.exception() is not None
        if failed:
            if not task.cancelled():
                self._edge.warn("connection-failed", error=str(task.exception()))
            protocol.release()
            conn.close()

    def close(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self._reading:
            self._loop.remove_reader(self._sock.fileno())
            self._reading = False
        for task in self._connecting:
            task.cancel()
        self._sock.close()


class HttpServer:
    """The HTTP file server on one address and port."""

    def __init__(
        self,
        source: FileSource,
        installed: InstalledHook | None = None,
        limits: HttpLimits | None = None,
        renders: RenderPool | None = None,
        routes: Sequence[web.AbstractRouteDef] = (),
        *,
        journal: Journal | None = None,
    ) -> None:
        app = web.Application()
        app[_SOURCE_KEY] = source
        app[_JOURNAL_KEY] = journal
        app[_RENDERS_KEY] = renders
        app[_COUNTERS_KEY] = Counter()
        self._edge = _Edge(limits or HttpLimits(), app[_COUNTERS_KEY])
        app[_EDGE_KEY] = self._edge
        if installed is not None:
            app[_INSTALLED_KEY] = installed
            app.router.add_post(
                r"/m/{mac:[0-9a-fA-F]{2}([-:][0-9a-fA-F]{2}){5}}/installed", _installed
            )
        # The operator's view (API, metrics, web page) is matched first; a boot file of the
        # same path as one of its routes is not served.
        app.router.add_routes(routes)
        # add_get answers HEAD too; UEFI HTTP Boot sends a HEAD before its GET.
        app.router.add_get("/{name:.*}", _serve)
        self._app = app
        self._runner: web.AppRunner | None = None
        self._acceptor: _Acceptor | None = None
        self._port = 0

    @property
    def counters(self) -> Counter[str]:
        return self._app[_COUNTERS_KEY]

    @property
    def port(self) -> int:
        return self._port

    @property
    def connections(self) -> int:
        """Connections open now."""
        return self._edge.open

    async def start(self, host: str, port: int) -> None:
        handler_args: dict[str, Any] = {
            "access_log_class": _AccessLog,
            "access_log": log,
            "keepalive_timeout": self._edge.limits.keepalive_timeout,
        }
        runner = web.AppRunner(self._app, handle_signals=False, **handler_args)
        await runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(1024)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            await runner.cleanup()
            raise
        server = runner.server
        assert server is not None
        loop = asyncio.get_running_loop()

        def make() -> _Connection:
            return _Connection(server, self._edge, loop=loop, **handler_args)

        self._acceptor = _Acceptor(sock, make, self._edge)
        self._acceptor.start()
        self._runner = runner
        self._port = int(sock.getsockname()[1])

    async def close(self) -> None:
        if self._acceptor is not None:
            self._acceptor.close()
            self._acceptor = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
