"""A real ``netbootd serve`` on loopback whose inventory has a template that never ends.

More requests for it than there are render workers, over HTTP and TFTP, and still: a file of the
root answers over both within a second, each bad request gets its error, and SIGTERM stops the
server at once, renders running or not.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from aiohttp import ClientSession, ClientTimeout

from netbootd.proto.tftp import Ack, Data, Error, ErrorCode, Mode, ReadRequest, decode, encode
from netbootd.transport.renders import RENDER_WORKERS

T = TypeVar("T")
MAC = "52:54:00:aa:bb:01"
SCRIPT = "m/52-54-00-aa-bb-01/boot.ipxe"
# 10**10 empty steps: hours, were it not stopped.
SPIN = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
SITE = f"""\
[profiles.spin]
method = "ipxe"
kernel = "vmlinuz"
template = "spin.ipxe"

[machines.m1]
mac = "{MAC}"
profile = "spin"
"""
# More bad requests than render workers, so some wait for one and are refused; and more than
# the threads that open files (the event loop's default executor has at most 32, TFTP's 4),
# which renders once shared.
BAD_HTTP = 36
BAD_TFTP = 8


def _free_port(kind: socket.SocketKind) -> int:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Serving:
    """``netbootd serve`` with HTTP and TFTP on loopback, its standard error in a file."""

    def __init__(self, tmp_path: Path) -> None:
        root = tmp_path / "root"
        root.mkdir()
        (root / "hello.txt").write_text("hello\n")
        (root / "vmlinuz").write_bytes(b"kernel")
        inventory = tmp_path / "inventory"
        inventory.mkdir()
        (inventory / "site.toml").write_text(SITE)
        (inventory / "spin.ipxe").write_text(f"#!ipxe\n{SPIN}\n")
        self.http_port = _free_port(socket.SOCK_STREAM)
        self.tftp_port = _free_port(socket.SOCK_DGRAM)
        self.log = tmp_path / "stderr.log"
        argv = [sys.executable, "-m", "netbootd", "serve", "--interface", "lo", "--no-dhcp"]
        argv += ["--root", str(root), "--inventory", str(inventory)]
        argv += ["--state-dir", str(tmp_path / "state")]
        argv += ["--http-port", str(self.http_port), "--tftp-port", str(self.tftp_port)]
        with self.log.open("wb") as err:
            self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=err)

    def text(self) -> str:
        return self.log.read_text()

    async def ready(self) -> None:
        deadline = time.monotonic() + 30
        while " ready " not in self.text():
            assert self.process.poll() is None, self.text()
            assert time.monotonic() < deadline, self.text()
            await asyncio.sleep(0.05)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.http_port}/{path}"


@pytest.fixture
def serving(tmp_path: Path) -> Iterator[Serving]:
    running = Serving(tmp_path)
    try:
        yield running
    finally:
        if running.process.poll() is None:
            running.process.kill()
            running.process.wait()


async def http_get(url: str) -> tuple[int, str]:
    async with (
        ClientSession(timeout=ClientTimeout(total=30)) as session,
        session.get(url) as response,
    ):
        return response.status, await response.text()


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.received: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received.put_nowait((data, addr))


async def tftp_get(port: int, name: str) -> bytes | Error:
    """One file of less than a block, or the ERROR the server answered."""
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        _Datagrams, local_addr=("127.0.0.1", 0)
    )
    try:
        transport.sendto(encode(ReadRequest(name, Mode.OCTET)), ("127.0.0.1", port))
        data, addr = await protocol.received.get()
        packet = decode(data)
        if isinstance(packet, Error):
            return packet
        assert isinstance(packet, Data) and packet.block == 1, packet
        transport.sendto(encode(Ack(1)), addr)
        return packet.payload
    finally:
        transport.close()


async def within_a_second(what: Awaitable[T]) -> T:
    return await asyncio.wait_for(what, 1.0)


async def test_an_endless_template_leaves_the_files_served(serving: Serving) -> None:
    await serving.ready()
    bad_http = [asyncio.ensure_future(http_get(serving.url(SCRIPT))) for _ in range(BAD_HTTP)]
    bad_tftp = [asyncio.ensure_future(tftp_get(serving.tftp_port, SCRIPT)) for _ in range(BAD_TFTP)]
    await asyncio.sleep(0.2)  # every worker is rendering now, and the rest wait for one
    for _ in range(3):
        got = await within_a_second(http_get(serving.url("hello.txt")))
        assert got == (200, "hello\n")
        got = await within_a_second(tftp_get(serving.tftp_port, "hello.txt"))
        assert got == b"hello\n"
    # Each bad request is answered: stopped at the time limit, or refused while the workers
    # were busy; one log line each.
    answers = await asyncio.wait_for(asyncio.gather(*bad_http), 10)
    assert {status for status, _ in answers} == {500}
    timed_out = f"{SCRIPT}: template failed: spin.ipxe: took longer than 2 s, its time limit"
    busy = f"{SCRIPT}: all {RENDER_WORKERS} render workers stayed busy for 0.5 s"
    assert {body.strip() for _, body in answers} <= {timed_out, busy}
    errors = await asyncio.wait_for(asyncio.gather(*bad_tftp), 10)
    assert errors == [Error(ErrorCode.NOT_DEFINED, "cannot read file")] * BAD_TFTP
    # Once the renders have stopped, the workers render again.
    assert await http_get(serving.url(SCRIPT)) == (500, timed_out + "\n")
    log = serving.text().splitlines()
    http_lines = [line for line in log if " cannot-serve " in line]
    tftp_lines = [line for line in log if f"file={SCRIPT}" in line and 'result="error: ' in line]
    assert (len(http_lines), len(tftp_lines)) == (BAD_HTTP + 1, BAD_TFTP), log
    # The first renders ran to their limit, every other bad request was refused.
    stopped = [line for line in log if "took longer than 2 s, its time limit" in line]
    assert len(stopped) == RENDER_WORKERS + 1, log
    log_text = "\n".join(log)
    assert "Traceback" not in log_text and "RecursionError" not in log_text
    serving.process.send_signal(signal.SIGTERM)
    assert serving.process.wait(timeout=10) == 0
    busy = BAD_HTTP + BAD_TFTP - RENDER_WORKERS
    counts = f'counters service=renders counts="busy={busy},rendered={RENDER_WORKERS + 1}"'
    assert counts in serving.text()


async def test_sigterm_stops_the_server_while_renders_run(serving: Serving) -> None:
    await serving.ready()
    bad = [asyncio.ensure_future(http_get(serving.url(SCRIPT))) for _ in range(BAD_HTTP)]
    await asyncio.sleep(0.2)
    started = time.monotonic()
    serving.process.send_signal(signal.SIGTERM)
    while serving.process.poll() is None:
        assert time.monotonic() - started < 1.5, "SIGTERM did not stop the server"
        await asyncio.sleep(0.02)
    assert serving.process.returncode == 0, serving.text()
    await asyncio.gather(*bad, return_exceptions=True)
