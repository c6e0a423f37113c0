"""The HTTP edge's connection lifetimes on loopback, under uvloop as ``netbootd serve`` runs it:
a slow header is dropped after the header timeout, an idle keep-alive connection after the
keep-alive timeout, a connection past the cap is closed at once with one line, accept out of
descriptors is one line and the next client is served, a request that breaks HTTP is one
warning and no traceback, and ``If-Range`` sends the range only for the file it names."""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from email.utils import formatdate
from pathlib import Path
from typing import Any

import pytest
import uvloop

from netbootd.services.files import FileTree
from netbootd.transport.http import HttpLimits, HttpServer

Start = Callable[..., Awaitable[HttpServer]]

# serve runs on uvloop, whose accept differs from asyncio's when descriptors run out.
pytestmark = pytest.mark.filterwarnings('ignore:Overriding the "event_loop_policy" fixture')


@pytest.fixture
def event_loop_policy() -> uvloop.EventLoopPolicy:
    return uvloop.EventLoopPolicy()


@pytest.fixture
async def start(tmp_path: Path) -> AsyncIterator[Start]:
    root = tmp_path / "root"
    root.mkdir()
    (root / "hello.txt").write_text("hello\n")
    (root / "kernel").write_bytes(bytes(range(256)) * 64)
    old = time.time() - 3600  # a strong Last-Modified: well before any response's Date
    os.utime(root / "kernel", (old, old))
    servers: list[HttpServer] = []

    async def start(**limits: float) -> HttpServer:
        tree = FileTree(root)
        http = HttpServer(tree, limits=HttpLimits(**limits)) if limits else HttpServer(tree)  # type: ignore[arg-type]
        await http.start("127.0.0.1", 0)
        servers.append(http)
        return http

    try:
        yield start
    finally:
        for http in servers:
            await http.close()


async def _connect(http: HttpServer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", http.port)


async def _closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    """Whether the server closes the connection within ``seconds`` (what it sent is skipped)."""
    try:
        async with asyncio.timeout(seconds):
            while await reader.read(65536):
                pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        pass
    return True


async def _get(http: HttpServer, path: str, *headers: str) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await _connect(http)
    head = "".join(f"{line}\r\n" for line in headers)
    writer.write(f"GET /{path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{head}\r\n".encode())
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    top, _, body = raw.partition(b"\r\n\r\n")
    lines = top.decode().split("\r\n")
    fields = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in fields.items()}, body


async def test_a_slow_header_is_dropped_after_the_header_timeout(
    start: Start, caplog: pytest.LogCaptureFixture
) -> None:
    http = await start(header_timeout=0.5)
    reader, writer = await _connect(http)
    began = time.monotonic()
    writer.write(b"GET /hello.txt HTTP/1.1\r\n")

    async def trickle() -> None:  # slowloris: a header line now and then, never the end
        for n in range(40):
            await asyncio.sleep(0.1)
            if writer.is_closing():
                return
            writer.write(f"X-{n}: y\r\n".encode())

    dripping = asyncio.create_task(trickle())
    with caplog.at_level(logging.INFO, logger="netbootd.http"):
        assert await _closed_within(reader, 3)
    took = time.monotonic() - began
    dripping.cancel()
    writer.close()
    assert 0.4 < took < 2, took
    assert http.counters["header-timeout"] == 1
    assert [r.getMessage().split()[0] for r in caplog.records] == ["header-timeout"]
    status, _, body = await _get(http, "hello.txt")  # and the next client is served
    assert (status, body) == (200, b"hello\n")


async def test_headers_in_time_are_answered_and_the_timer_starts_again(start: Start) -> None:
    http = await start(header_timeout=0.5, keepalive_timeout=5)
    reader, writer = await _connect(http)
    for n in range(3):  # each later request gets its own deadline, from its first octet
        if n:
            await asyncio.sleep(0.3)  # idle between requests: the keep-alive timer's part
        writer.write(b"GET /hello.txt HTTP/1.1\r\n")
        await asyncio.sleep(0.3)
        writer.write(b"Host: t\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200")
        assert await reader.readexactly(6) == b"hello\n"
    writer.close()
    assert http.counters["header-timeout"] == 0


async def test_an_idle_keepalive_connection_is_closed(start: Start) -> None:
    http = await start(keepalive_timeout=0.5)
    reader, writer = await _connect(http)
    writer.write(b"GET /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200") and b"close" not in head.lower()
    assert await reader.readexactly(6) == b"hello\n"
    began = time.monotonic()
    assert await _closed_within(reader, 3)
    assert 0.3 < time.monotonic() - began < 2.5
    writer.close()


async def test_past_the_cap_a_connection_is_closed_at_once_with_one_line(
    start: Start, caplog: pytest.LogCaptureFixture
) -> None:
    http = await start(max_connections=3)
    held = [await _connect(http) for _ in range(3)]
    await asyncio.sleep(0.1)
    assert http.connections == 3
    with caplog.at_level(logging.INFO, logger="netbootd.http"):
        for _ in range(10):
            reader, writer = await _connect(http)
            assert await _closed_within(reader, 2)
            writer.close()
    assert http.counters["refused"] == 10
    refused = [r for r in caplog.records if r.getMessage().startswith("connection-refused")]
    assert len(refused) == 1 and refused[0].levelno == logging.WARNING
    # Those in service go on.
    reader, writer = held[0]
    writer.write(b"GET /hello.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert (await asyncio.wait_for(reader.read(), 5)).endswith(b"\r\n\r\nhello\n")
    for _, writer in held:
        writer.close()
    await asyncio.sleep(0.2)
    assert http.connections == 0
    status, _, _ = await _get(http, "hello.txt")  # places given back are taken again
    assert status == 200


async def test_accept_out_of_descriptors_is_one_line_and_serving_goes_on(
    start: Start, caplog: pytest.LogCaptureFixture
) -> None:
    http = await start()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    client = socket.socket()  # made while descriptors remain
    client.setblocking(False)
    spent: list[int] = []
    with caplog.at_level(logging.INFO):
        try:
            while True:
                spent.append(os.open("/dev/null", os.O_RDONLY))
        except OSError:
            pass
        try:
            client.connect_ex(("127.0.0.1", http.port))  # the server cannot take it now
            await asyncio.sleep(0.5)
        finally:
            for fd in spent:
                os.close(fd)
        reader, writer = await asyncio.open_connection(sock=client)
        writer.write(b"GET /hello.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert answer.endswith(b"\r\n\r\nhello\n")
    assert http.counters["no-descriptor"] >= 1
    lines = [r for r in caplog.records if "accept-failed" in r.getMessage()]
    assert len(lines) == 1 and lines[0].exc_info is None
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == (soft, hard)


@pytest.mark.parametrize(
    "request_head",
    [
        b"GET /hello.txt HTTP/1.1\r\nHost: t\r\nX-Long: " + b"a" * 20000 + b"\r\n\r\n",
        b"GET /hello.txt HTTP/1.1\r\nHost: t\r\nno colon here\r\n\r\n",
        b"GET /hello.txt HTTP/9.z\r\nHost: t\r\n\r\n",
    ],
    ids=["header-too-long", "bad-header", "bad-version"],
)
async def test_a_request_that_breaks_http_is_one_warning_without_traceback(
    start: Start, caplog: pytest.LogCaptureFixture, request_head: bytes
) -> None:
    http = await start()
    with caplog.at_level(logging.DEBUG):
        reader, writer = await _connect(http)
        writer.write(request_head)
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        await asyncio.sleep(0.05)
    assert answer.startswith(b"HTTP/1.0 400")
    mine = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert len(mine) == 1, [r.getMessage() for r in mine]
    assert mine[0].levelno == logging.WARNING and mine[0].getMessage().startswith("bad-request")
    assert all(r.exc_info is None for r in caplog.records)
    assert http.counters["bad-request"] == 1
    status, _, _ = await _get(http, "hello.txt")
    assert status == 200


async def test_if_range_sends_the_range_only_for_the_file_it_names(start: Start) -> None:
    http = await start()
    status, fields, whole = await _get(http, "kernel")
    assert status == 200 and len(whole) == 16384
    etag, modified = fields["etag"], fields["last-modified"]
    stale_date = formatdate(time.time() - 86400 * 3, usegmt=True)
    cases = [
        (etag, 206),  # RFC 9110 §13.1.5: a strong match
        ('"0-0"', 200),  # another file's tag
        (f"W/{etag}", 200),  # a weak tag never matches
        (modified, 206),  # exactly Last-Modified
        (stale_date, 200),  # another date
        ("garbage", 200),
    ]
    for validator, expected in cases:
        status, _, body = await _get(
            http, "kernel", "Range: bytes=100-199", f"If-Range: {validator}"
        )
        assert status == expected, validator
        assert body == (whole[100:200] if expected == 206 else whole), validator
    status, _, body = await _get(http, "kernel", "Range: bytes=100-199")
    assert (status, body) == (206, whole[100:200])


async def test_a_connection_that_cannot_be_set_up_does_not_stop_the_listener(
    start: Start, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from netbootd.transport import http as http_module

    http = await start()
    real = http_module._Connection.__init__
    failed: list[bool] = []

    def first_fails(self: http_module._Connection, *args: Any, **kwargs: Any) -> None:
        if not failed:
            failed.append(True)
            raise RuntimeError("cannot set up")
        real(self, *args, **kwargs)

    monkeypatch.setattr(http_module._Connection, "__init__", first_fails)
    with caplog.at_level(logging.ERROR):
        reader, writer = await _connect(http)
        assert await _closed_within(reader, 2)
        writer.close()
    assert [r.getMessage() for r in caplog.records] == ["internal-error where=http-accept"]
    status, _, body = await _get(http, "hello.txt")
    assert (status, body) == (200, b"hello\n")
    await asyncio.sleep(0.1)
    assert http.connections == 0


async def test_a_burst_of_connections_leaves_nothing_behind(start: Start) -> None:
    import gc

    from netbootd.transport.http import _Connection

    http = await start(keepalive_timeout=5)

    async def one() -> None:
        reader, writer = await _connect(http)
        writer.write(b"GET /kernel HTTP/1.1\r\nHost: t\r\n\r\n")  # kept alive, then dropped
        await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(16384)
        writer.close()

    await asyncio.gather(*(one() for _ in range(200)))
    await asyncio.sleep(0.3)
    gc.collect()
    assert http.connections == 0
    assert not [o for o in gc.get_objects() if isinstance(o, _Connection)]
