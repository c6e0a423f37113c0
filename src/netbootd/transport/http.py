"""The HTTP edge: boot files, kernels, initrds and iPXE scripts over HTTP, with aiohttp.

Every file is opened through the same :class:`~netbootd.services.files.FileSource` as TFTP
(the confined boot root, and the files rendered per machine), so the two services can never
disagree about what is served. For a file of the root, aiohttp's ``FileResponse`` decides the
status and headers: HEAD, Range (206/416), ETag/If-None-Match, Last-Modified. It is handed the
descriptor's ``/proc/self/fd`` link rather than the path, so what it describes is the very file
that was checked, even if the path is replaced meanwhile, and never a ``.gz`` or ``.br`` sibling
of it. The body goes out with ``sendfile(2)`` from that descriptor (:func:`send_file`): uvloop
has no ``loop.sendfile``, and without one aiohttp would copy every file through Python. One log
line per request, with the octets actually sent.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import Counter
from collections.abc import Callable
from typing import IO, Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger, AbstractStreamWriter
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

from netbootd.logs.events import format_event
from netbootd.services.files import (
    AccessDenied,
    FileLookupError,
    FileNotFound,
    FileSource,
    LocalFile,
)
from netbootd.transport.renders import RenderPool, renders

log = logging.getLogger("netbootd.http")

_COUNTERS_KEY = web.AppKey("counters", Counter)
_SOURCE_KEY: web.AppKey[FileSource] = web.AppKey("source")
_RENDERS_KEY: web.AppKey[RenderPool | None] = web.AppKey("renders")
# Marks a machine installed (boot-once): called with the MAC, returns the machine's name or None.
InstalledHook = Callable[[str], str | None]
_INSTALLED_KEY: web.AppKey[InstalledHook] = web.AppKey("installed")


class _AccessLog(AbstractAccessLogger):
    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        peer = request.remote or "-"
        result, level = "ok", logging.INFO
        if isinstance(response, _OpenedFileResponse):
            length = response.body_sent  # what went out, not what was announced
            if response.cut_short is not None:
                result, level = f"cut short: {response.cut_short}", logging.WARNING
        else:
            length = response.content_length if response.content_length is not None else 0
        rate = length / time / 1e6 if time > 0 else 0.0
        self.logger.log(
            level,
            format_event(
                "request",
                client=peer,
                method=request.method,
                path=request.path,
                status=response.status,
                bytes=length,
                seconds=f"{time:.3f}",
                rate=f"{rate:.2f}MB/s",
                range=request.headers.get("Range", "-"),
                result=result,
            ),
        )


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
            return await super().prepare(request)  # sends the whole body before it returns
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
        counters["server-error"] += 1
        log.warning(format_event("cannot-serve", path=name, error=exc.reason))
        raise web.HTTPInternalServerError(text=f"{name}: {exc.reason}\n") from None
    counters["served"] += 1
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
    loop = asyncio.get_running_loop()
    name = await loop.run_in_executor(None, request.app[_INSTALLED_KEY], mac)
    if name is None:
        raise web.HTTPNotFound(text=f"{mac}: no such machine in the inventory\n")
    log.info(format_event("installed", machine=name, mac=mac, client=request.remote or "-"))
    return web.Response(text=f"{name}: installed; it boots its own profile from now on\n")


class HttpServer:
    """The HTTP file server on one address and port."""

    def __init__(
        self,
        source: FileSource,
        installed: InstalledHook | None = None,
        renders: RenderPool | None = None,
    ) -> None:
        app = web.Application()
        app[_SOURCE_KEY] = source
        app[_RENDERS_KEY] = renders
        app[_COUNTERS_KEY] = Counter()
        if installed is not None:
            app[_INSTALLED_KEY] = installed
            app.router.add_post(
                r"/m/{mac:[0-9a-fA-F]{2}([-:][0-9a-fA-F]{2}){5}}/installed", _installed
            )
        # add_get answers HEAD too; UEFI HTTP Boot sends a HEAD before its GET.
        app.router.add_get("/{name:.*}", _serve)
        self._app = app
        self._runner: web.AppRunner | None = None
        self._port = 0

    @property
    def counters(self) -> Counter[str]:
        return self._app[_COUNTERS_KEY]

    @property
    def port(self) -> int:
        return self._port

    async def start(self, host: str, port: int) -> None:
        runner = web.AppRunner(
            self._app, access_log_class=_AccessLog, access_log=log, handle_signals=False
        )
        await runner.setup()
        site = web.TCPSite(runner, host, port, reuse_address=True)
        await site.start()
        self._runner = runner
        addresses = runner.addresses
        self._port = int(addresses[0][1]) if addresses else port

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
