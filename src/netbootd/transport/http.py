"""The HTTP edge: boot files, kernels, initrds and iPXE scripts over HTTP, with aiohttp.

Every file is opened through the same confined :class:`~netbootd.services.files.FileTree` as
TFTP, so the two services can never disagree about what is served. aiohttp's ``FileResponse``
does HEAD, Range (206/416), ETag/If-None-Match, Last-Modified and sendfile; it is handed the
descriptor's ``/proc/self/fd`` link rather than the path, so what it sends is the very file that
was checked, even if the path is replaced meanwhile, and never a ``.gz`` or ``.br`` sibling of it.
One log line per request.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger, AbstractStreamWriter
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

from netbootd.logfmt import format_event
from netbootd.services.files import AccessDenied, FileNotFound, FileTree, LocalFile

log = logging.getLogger("netbootd.http")

_COUNTERS_KEY = web.AppKey("counters", Counter)
_TREE_KEY = web.AppKey("tree", FileTree)


class _AccessLog(AbstractAccessLogger):
    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        peer = request.remote or "-"
        length = response.content_length if response.content_length is not None else 0
        rate = length / time / 1e6 if time > 0 else 0.0
        self.logger.info(
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
            )
        )


class _OpenedFileResponse(web.FileResponse):
    """A ``FileResponse`` for a file that is open already; the file is closed once it is sent."""

    def __init__(self, opened: LocalFile) -> None:
        super().__init__(f"/proc/self/fd/{opened.fileno()}", chunk_size=256 * 1024)
        self._opened = opened

    async def prepare(self, request: BaseRequest) -> AbstractStreamWriter | None:
        try:
            return await super().prepare(request)  # sends the whole body before it returns
        finally:
            self._opened.close()


async def _serve(request: web.Request) -> web.StreamResponse:
    counters = request.app[_COUNTERS_KEY]
    tree = request.app[_TREE_KEY]
    name = request.match_info["name"]  # already percent-decoded by aiohttp
    loop = asyncio.get_running_loop()
    try:
        opened = await loop.run_in_executor(None, tree.open, name)
    except FileNotFound:
        counters["not-found"] += 1
        raise web.HTTPNotFound(text=f"{name}: not found\n") from None
    except AccessDenied as exc:
        counters["forbidden"] += 1
        raise web.HTTPForbidden(text=f"{name}: {exc}\n") from None
    counters["served"] += 1
    return _OpenedFileResponse(opened)


class HttpServer:
    """The HTTP file server on one address and port."""

    def __init__(self, tree: FileTree) -> None:
        app = web.Application()
        app[_TREE_KEY] = tree
        app[_COUNTERS_KEY] = Counter()
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
