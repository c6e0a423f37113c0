"""TftpServer over loopback: real clients (curl, atftp, busybox) and a raw-socket peer."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
import os
import shutil
import socket
import subprocess
import threading
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from netbootd.logs.events import parse_event
from netbootd.proto.tftp import (
    Ack,
    Data,
    Error,
    ErrorCode,
    OptionAck,
    Packet,
    ReadRequest,
    WriteRequest,
    decode,
    encode,
)
from netbootd.services.files import FileTree, OpenedFile
from netbootd.transport.tftp import TftpServer
from netbootd.transport.tftp import pump as tftp_pump
from netbootd.transport.tftp.endpoint import Endpoint

HOST = "127.0.0.1"
LOGGER = "netbootd.tftp"

ServerFactory = Callable[..., Awaitable[TftpServer]]


# --------------------------------------------------------------------------------------------
# Fixtures and helpers


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "boot").mkdir(parents=True)
    (root / "boot" / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 123))
    (root / "exact.bin").write_bytes(os.urandom(512 * 64))
    (root / "empty").write_bytes(b"")
    (root / "small.txt").write_bytes(b"line one\nline two\r\n")
    (tmp_path / "secret").write_bytes(b"do not serve\n")
    (root / "escape").symlink_to(tmp_path / "secret")
    return root


@pytest.fixture(params=[4, 0], ids=["threads", "event-loop"])
def transfer_threads(request: pytest.FixtureRequest) -> int:
    """Read transfers run in threads of their own (a few at once) or on the event loop; both
    ways must behave the same."""
    threads: int = request.param
    return threads


@pytest.fixture
async def make_server(root: Path, transfer_threads: int) -> AsyncIterator[ServerFactory]:
    servers: list[TftpServer] = []

    async def make(**kwargs: object) -> TftpServer:
        kwargs.setdefault("transfer_threads", transfer_threads)
        server = TftpServer(FileTree(root), **kwargs)  # type: ignore[arg-type]
        await server.start(HOST, 0)
        servers.append(server)
        return server

    yield make
    for server in servers:
        await server.close()


@pytest.fixture
async def server(make_server: ServerFactory) -> TftpServer:
    return await make_server()


def need(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        pytest.skip(f"{binary} is not installed")
    return path


def need_busybox_tftp() -> str:
    path = need("busybox")
    applets = subprocess.run([path, "--list"], capture_output=True, text=True, check=False)
    if "tftp" not in applets.stdout.split():
        pytest.skip("busybox has no tftp applet")
    return path


async def run(*cmd: str, limit: float = 60.0) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), limit)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def settle(server: TftpServer) -> None:
    """Wait until the server has finished (and logged) every transfer."""
    for _ in range(200):
        if server.active_sessions == 0:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("transfers did not finish")


def transfer_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, str]]:
    lines = []
    for record in caplog.records:
        if record.name == LOGGER:
            event, fields = parse_event(record.getMessage())
            if event == "transfer":
                lines.append(fields)
    return lines


class RawPeer:
    """A hand-driven TFTP peer on a non-blocking loopback socket."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        # Room for a whole window of large blocks, as a real client sizes its buffer.
        force = getattr(socket, "SO_RCVBUFFORCE", 33)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, force, 8 * 1024 * 1024)
        except PermissionError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024 * 1024)
        self.sock.bind((HOST, 0))
        self.sock.setblocking(False)

    async def send(self, what: Packet | bytes, addr: tuple[str, int]) -> None:
        data = what if isinstance(what, bytes) else encode(what)
        await asyncio.get_running_loop().sock_sendto(self.sock, data, addr)

    async def recv(self, limit: float = 2.0) -> tuple[Packet, tuple[str, int]]:
        loop = asyncio.get_running_loop()
        data, addr = await asyncio.wait_for(loop.sock_recvfrom(self.sock, 70000), limit)
        return decode(data), addr

    async def silent(self, limit: float = 0.3) -> bool:
        try:
            await self.recv(limit)
        except TimeoutError:
            return True
        return False

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def peer() -> Iterator[RawPeer]:
    p = RawPeer()
    yield p
    p.close()


@pytest.fixture
def stranger() -> Iterator[RawPeer]:
    p = RawPeer()
    yield p
    p.close()


# --------------------------------------------------------------------------------------------
# Real clients


@pytest.mark.parametrize("blksize", [None, 1468])
async def test_curl_fetch(
    server: TftpServer,
    root: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    blksize: int | None,
) -> None:
    curl = need("curl")
    caplog.set_level(logging.INFO, logger=LOGGER)
    out = tmp_path / "out"
    extra = [] if blksize is None else ["--tftp-blksize", str(blksize)]
    url = f"tftp://{HOST}:{server.port}/boot/big.bin"
    rc, text = await run(curl, "-sS", "--max-time", "60", *extra, "-o", str(out), url)
    assert rc == 0, text
    assert digest(out) == digest(root / "boot" / "big.bin")
    await settle(server)
    [line] = transfer_lines(caplog)
    assert list(line) == [
        "client",
        "file",
        "options",
        "bytes",
        "seconds",
        "rate",
        "retransmits",
        "result",
    ]
    assert line["file"] == "boot/big.bin"
    assert line["bytes"] == str((root / "boot" / "big.bin").stat().st_size)
    assert line["result"] == "ok"
    assert line["client"].startswith(f"{HOST}:")
    assert line["rate"].endswith("MB/s")
    if blksize is not None:
        assert f"blksize={blksize}" in line["options"].split(",")


@pytest.mark.parametrize(
    "options",
    [[], ["--option", "blksize 1468"], ["--option", "blksize 1468", "--option", "windowsize 8"]],
)
async def test_atftp_fetch(
    server: TftpServer, root: Path, tmp_path: Path, options: list[str]
) -> None:
    atftp = need("atftp")
    out = tmp_path / "out"
    cmd = [atftp, *options, "--get", "-r", "/boot/big.bin", "-l", str(out), HOST]
    rc, text = await run(*cmd, str(server.port))
    assert rc == 0, text
    assert digest(out) == digest(root / "boot" / "big.bin")


@pytest.mark.parametrize("name", ["exact.bin", "empty"])
async def test_atftp_block_boundaries(
    server: TftpServer, root: Path, tmp_path: Path, name: str
) -> None:
    atftp = need("atftp")
    out = tmp_path / "out"
    rc, text = await run(atftp, "--get", "-r", name, "-l", str(out), HOST, str(server.port))
    assert rc == 0, text
    assert out.read_bytes() == (root / name).read_bytes()


async def test_busybox_fetch(server: TftpServer, root: Path, tmp_path: Path) -> None:
    busybox = need_busybox_tftp()
    out = tmp_path / "out"
    cmd = [busybox, "tftp", "-g", "-b", "1468", "-r", "boot/big.bin", "-l", str(out), HOST]
    rc, text = await run(*cmd, str(server.port))
    assert rc == 0, text
    assert digest(out) == digest(root / "boot" / "big.bin")


async def test_not_found_then_keeps_serving(
    server: TftpServer, root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    curl = need("curl")
    caplog.set_level(logging.INFO, logger=LOGGER)
    out = tmp_path / "out"
    rc, _ = await run(curl, "-s", "-o", str(out), f"tftp://{HOST}:{server.port}/nope")
    assert rc != 0
    rc, text = await run(curl, "-sS", "-o", str(out), f"tftp://{HOST}:{server.port}/small.txt")
    assert rc == 0, text
    assert out.read_bytes() == (root / "small.txt").read_bytes()
    await settle(server)
    lines = transfer_lines(caplog)
    assert [(x["file"], x["result"]) for x in lines] == [("nope", "not found"), ("small.txt", "ok")]
    assert lines[0]["options"] == "-"
    not_found = [r for r in caplog.records if "not found" in r.getMessage()]
    assert not_found[0].levelno == logging.INFO
    assert server.counters["not_found"] == 1


async def test_path_escape_refused(
    server: TftpServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    atftp = need("atftp")
    caplog.set_level(logging.INFO, logger=LOGGER)
    out = tmp_path / "out"
    for name in ("../secret", "escape"):
        rc, text = await run(atftp, "--get", "-r", name, "-l", str(out), HOST, str(server.port))
        assert rc != 0, text
        assert not out.exists() or b"do not serve" not in out.read_bytes()
    results = [x["result"] for x in transfer_lines(caplog)]
    assert results == ["access denied: parent directory in name", "access denied: outside root"]
    assert all(r.levelno == logging.WARNING for r in caplog.records if r.name == LOGGER)


async def test_40mib_past_rollover_curl(tmp_path: Path, transfer_threads: int) -> None:
    """blksize 512 rolls the block number over at 32 MiB; the file must come back intact."""
    curl = need("curl")
    root = tmp_path / "bigroot"
    root.mkdir()
    (root / "huge.bin").write_bytes(os.urandom(40 * 1024 * 1024))
    server = TftpServer(FileTree(root), transfer_threads=transfer_threads)
    await server.start(HOST, 0)
    try:
        out = tmp_path / "out"
        url = f"tftp://{HOST}:{server.port}/huge.bin"
        rc, text = await run(curl, "-sS", "--max-time", "60", "-o", str(out), url, limit=90)
        assert rc == 0, text
        assert digest(out) == digest(root / "huge.bin")
    finally:
        await server.close()


# --------------------------------------------------------------------------------------------
# Raw peer: the edges real clients do not exercise


async def test_malformed_datagrams_do_not_stop_listener(
    server: TftpServer,
    root: Path,
    peer: RawPeer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    listener = (HOST, server.port)
    for junk in (b"", b"\x00", b"\xff\xff\xff", b"\x00\x07abc", b"\x00\x03\x00", b"\x00\x04"):
        await peer.send(junk, listener)
    assert await peer.silent()
    # A broken request is answered, so its client need not wait for a timeout.
    await peer.send(b"\x00\x01file-without-mode\x00", listener)
    reply, _ = await peer.recv()
    assert isinstance(reply, Error) and reply.code == ErrorCode.ILLEGAL_OPERATION
    # Stray ACK, DATA and ERROR at the listener: silence.
    await peer.send(Ack(1), listener)
    await peer.send(Data(1, b"x"), listener)
    await peer.send(Error(0, "x"), listener)
    assert await peer.silent()
    counters = server.counters
    assert counters["malformed"] == 7
    assert counters["stray"] == 3
    # Each malformed datagram, and only those, left one warning line.
    malformed = [
        r for r in caplog.records if r.name == LOGGER and r.getMessage().startswith("malformed ")
    ]
    assert len(malformed) == 7
    assert all(r.levelno == logging.WARNING for r in malformed)
    assert all("error=" in r.getMessage() for r in malformed)

    curl = need("curl")
    out = tmp_path / "out"
    rc, text = await run(curl, "-sS", "-o", str(out), f"tftp://{HOST}:{server.port}/small.txt")
    assert rc == 0, text
    assert out.read_bytes() == (root / "small.txt").read_bytes()


async def test_a_burst_of_transfers_leaves_no_session_behind(
    make_server: ServerFactory, peer: RawPeer
) -> None:
    import gc

    from netbootd.transport.tftp.transfers import PumpedTransfer, Transfer

    server = await make_server(timeout=0.2, retries=1)
    listener = (HOST, server.port)
    for _ in range(100):  # asked for and left: each times out
        await peer.send(ReadRequest("small.txt", "octet", ()), listener)
    await asyncio.sleep(1.5)
    gc.collect()
    assert server.counters["timed_out"] >= 1
    assert not [o for o in gc.get_objects() if isinstance(o, Transfer | PumpedTransfer)]


async def test_a_flood_of_junk_and_refusals_is_a_burst_of_lines_then_a_count(
    server: TftpServer,
    root: Path,
    peer: RawPeer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    listener = (HOST, server.port)
    for n in range(300):
        await peer.send(b"\x00\x07junk" + n.to_bytes(2, "big"), listener)
        await peer.send(ReadRequest("escape", "octet", ()), listener)  # refused each time
    await asyncio.sleep(0.3)
    assert server.counters["malformed"] == 300
    warnings = [r for r in caplog.records if r.name == LOGGER and r.levelno >= logging.WARNING]
    # As DHCP's: a burst of 50 lines in ten seconds, the rest counted and not written.
    assert len(warnings) == 50, len(warnings)

    curl = need("curl")  # and the next client is served
    out = tmp_path / "out"
    rc, text = await run(curl, "-sS", "-o", str(out), f"tftp://{HOST}:{server.port}/small.txt")
    assert rc == 0, text
    assert out.read_bytes() == (root / "small.txt").read_bytes()


async def test_raw_transfer_with_stranger(
    server: TftpServer, root: Path, peer: RawPeer, stranger: RawPeer
) -> None:
    await peer.send(ReadRequest("exact.bin", "octet"), (HOST, server.port))
    packet, session_addr = await peer.recv()
    assert packet == Data(1, (root / "exact.bin").read_bytes()[:512])
    assert session_addr[1] != server.port  # a new transfer ID, RFC 1350 §4

    # Someone else talks to the session port: ERROR 5 to them, the transfer goes on.
    await stranger.send(Ack(1), session_addr)
    reply, addr = await stranger.recv()
    assert reply == Error(ErrorCode.UNKNOWN_TID, "unknown transfer ID")
    assert addr == session_addr

    received = bytearray(packet.payload)
    block = 1
    while True:
        await peer.send(Ack(block), session_addr)
        packet, _ = await peer.recv()
        assert isinstance(packet, Data)
        block += 1
        assert packet.block == block
        received += packet.payload
        if len(packet.payload) < 512:
            break
    await peer.send(Ack(block), session_addr)
    assert bytes(received) == (root / "exact.bin").read_bytes()
    assert block == 65  # 64 full blocks and the empty one
    await settle(server)
    assert server.counters["ok"] == 1
    assert server.counters["unknown_tid"] == 1


async def test_raw_oack_and_duplicate_request(server: TftpServer, peer: RawPeer) -> None:
    request = ReadRequest("small.txt", "octet", (("tsize", "0"), ("blksize", "9000")))
    await peer.send(request, (HOST, server.port))
    await peer.send(request, (HOST, server.port))  # a retransmitted request
    oack, session_addr = await peer.recv()
    assert oack == OptionAck((("tsize", "19"), ("blksize", "1468")))
    assert await peer.silent(0.2)  # one transfer, not two
    assert server.active_sessions == 1
    await peer.send(Ack(0), session_addr)
    data, _ = await peer.recv()
    assert data == Data(1, b"line one\nline two\r\n")
    await peer.send(Ack(1), session_addr)
    await settle(server)
    assert server.counters["duplicate_request"] == 1


async def test_raw_netascii(server: TftpServer, peer: RawPeer) -> None:
    await peer.send(ReadRequest("small.txt", "netascii", (("tsize", "0"),)), (HOST, server.port))
    oack, session_addr = await peer.recv()
    expected = b"line one\r\nline two\r\0\r\n"
    assert oack == OptionAck((("tsize", str(len(expected))),))
    await peer.send(Ack(0), session_addr)
    data, _ = await peer.recv()
    assert data == Data(1, expected)
    await peer.send(Ack(1), session_addr)
    await settle(server)


async def test_netascii_past_16_mib(make_server: ServerFactory, root: Path) -> None:
    """netascii is converted as it is sent, so a text file has no size limit: a sparse file of
    17 MiB (NULs, which netascii leaves alone) with lines at both ends."""
    head, tail = b"first\nline\r\n", b"last\rline\n"
    with (root / "big.txt").open("wb") as out:
        out.write(head)
        out.truncate(17 * 1024 * 1024)
        out.seek(0, os.SEEK_END)
        out.write(tail)
    server = await make_server(max_blksize=65464)
    options = (("tsize", "0"), ("blksize", "65464"), ("windowsize", "8"))
    content, _ = await fetch_raw(server.port, "big.txt", options, mode="netascii")
    expected_size = (root / "big.txt").stat().st_size + 5
    assert len(content) == expected_size
    assert content.startswith(b"first\r\nline\r\0\r\n")
    assert content.endswith(b"\0last\r\0line\r\n")
    await settle(server)


@pytest.mark.parametrize(
    ("packet", "code"),
    [
        (ReadRequest("small.txt", "mail"), ErrorCode.ILLEGAL_OPERATION),
        (ReadRequest("small.txt", "binary"), ErrorCode.ILLEGAL_OPERATION),
        (WriteRequest("upload.bin", "octet"), ErrorCode.ACCESS_VIOLATION),
        (ReadRequest("nope", "octet"), ErrorCode.FILE_NOT_FOUND),
        (ReadRequest("/../secret", "octet"), ErrorCode.ACCESS_VIOLATION),
        (ReadRequest("boot", "octet"), ErrorCode.ACCESS_VIOLATION),
    ],
)
async def test_raw_refusals(server: TftpServer, peer: RawPeer, packet: Packet, code: int) -> None:
    await peer.send(packet, (HOST, server.port))
    reply, _ = await peer.recv()
    assert isinstance(reply, Error)
    assert reply.code == code
    assert server.active_sessions == 0


async def test_session_cap_per_client(
    make_server: ServerFactory, peer: RawPeer, stranger: RawPeer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    server = await make_server(max_sessions_per_client=1)
    await peer.send(ReadRequest("small.txt", "octet"), (HOST, server.port))
    await peer.recv()  # DATA 1, left unacknowledged
    await stranger.send(ReadRequest("small.txt", "octet"), (HOST, server.port))
    reply, _ = await stranger.recv()
    assert reply == Error(ErrorCode.NOT_DEFINED, "too many transfers, try again later")
    assert [x["result"] for x in transfer_lines(caplog)] == ["refused: too many transfers"]
    assert server.active_sessions == 1


async def test_timeout_and_retries(
    make_server: ServerFactory, peer: RawPeer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    server = await make_server(timeout=0.05, retries=2)
    await peer.send(ReadRequest("small.txt", "octet"), (HOST, server.port))
    sends = [await peer.recv() for _ in range(3)]  # the first send and two retransmissions
    assert all(p == Data(1, b"line one\nline two\r\n") for p, _ in sends)
    await settle(server)
    assert await peer.silent(0.2)
    [line] = transfer_lines(caplog)
    assert line["result"] == "timed out"
    assert line["bytes"] == "0"
    assert server.counters["timed_out"] == 1


async def test_size_query_is_told_apart_from_a_failure(
    server: TftpServer, peer: RawPeer, caplog: pytest.LogCaptureFixture
) -> None:
    # EDK2 asks for tsize, reads the OACK and ends the transfer, then downloads for real.
    caplog.set_level(logging.INFO, logger=LOGGER)
    await peer.send(ReadRequest("small.txt", "octet", (("tsize", "0"),)), (HOST, server.port))
    _, session_addr = await peer.recv()
    await peer.send(Error(ErrorCode.NOT_DEFINED, "User aborted the transfer"), session_addr)
    await settle(server)
    [record] = [r for r in caplog.records if r.getMessage().startswith("transfer ")]
    assert record.levelno == logging.INFO
    [line] = transfer_lines(caplog)
    assert line["result"] == "size query"
    assert line["options"] == "tsize=19"
    assert server.counters["size_query"] == 1
    assert server.counters.get("client_error", 0) == 0


async def test_client_error_ends_transfer(
    server: TftpServer, peer: RawPeer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    await peer.send(ReadRequest("boot/big.bin", "octet"), (HOST, server.port))
    _, session_addr = await peer.recv()
    await peer.send(Error(ErrorCode.DISK_FULL, "no room"), session_addr)
    await settle(server)
    [record] = [r for r in caplog.records if r.getMessage().startswith("transfer ")]
    assert record.levelno == logging.WARNING
    [line] = transfer_lines(caplog)
    assert line["result"] == "client error: no room"
    assert server.counters["client_error"] == 1


async def test_close_ends_active_transfers(make_server: ServerFactory, peer: RawPeer) -> None:
    server = await make_server()
    await peer.send(ReadRequest("boot/big.bin", "octet"), (HOST, server.port))
    _, session_addr = await peer.recv()
    assert server.active_sessions == 1
    await server.close()
    assert server.active_sessions == 0
    reply, addr = await peer.recv()
    assert reply == Error(ErrorCode.NOT_DEFINED, "server shutting down")
    assert addr == session_addr


# --------------------------------------------------------------------------------------------
# Serving many, and serving without blocking


async def fetch_raw(
    server_port: int, name: str, options: tuple[tuple[str, str], ...] = (), mode: str = "octet"
) -> tuple[bytes, set[int]]:
    """Fetch ``name`` lock-step (or window by window) with a raw peer.

    Returns the content and the server ports the DATA came from.
    """
    peer = RawPeer()
    try:
        await peer.send(ReadRequest(name, mode, options), (HOST, server_port))
        blksize, window = 512, 1
        content = bytearray()
        ports: set[int] = set()
        expected = 1
        while True:
            packet, addr = await peer.recv(5.0)
            ports.add(addr[1])
            if isinstance(packet, OptionAck):
                agreed = dict(packet.options)
                blksize = int(agreed.get("blksize", blksize))
                window = int(agreed.get("windowsize", window))
                await peer.send(Ack(0), addr)
                continue
            assert isinstance(packet, Data), packet
            assert packet.block == expected % 65536
            content += packet.payload
            last = len(packet.payload) < blksize
            if last or expected % window == 0:
                await peer.send(Ack(packet.block), addr)
            if last:
                return bytes(content), ports
            expected += 1
    finally:
        peer.close()


async def test_hundreds_of_simultaneous_transfers(make_server: ServerFactory, root: Path) -> None:
    (root / "medium.bin").write_bytes(os.urandom(200_000))
    server = await make_server(max_sessions_per_client=400)
    pollers = server.poll_slots.free
    fetches = [
        fetch_raw(server.port, "medium.bin", (("blksize", "1468"),) if i % 2 else ())
        for i in range(300)
    ]
    results = await asyncio.gather(*fetches)
    expected = (root / "medium.bin").read_bytes()
    assert all(content == expected for content, _ in results)
    await settle(server)
    assert server.counters["ok"] == 300
    assert server.poll_slots.free == pollers  # every busy-poll place given back


async def test_overall_session_cap(make_server: ServerFactory, root: Path) -> None:
    server = await make_server(max_sessions=3)
    peers = [RawPeer() for _ in range(4)]
    try:
        for p in peers[:3]:
            await p.send(ReadRequest("small.txt", "octet"), (HOST, server.port))
            assert isinstance((await p.recv())[0], Data)  # left unacknowledged
        await peers[3].send(ReadRequest("small.txt", "octet"), (HOST, server.port))
        reply, _ = await peers[3].recv()
        assert reply == Error(ErrorCode.NOT_DEFINED, "too many transfers, try again later")
        assert server.counters["refused_busy"] == 1
    finally:
        for p in peers:
            p.close()


async def test_window_leaves_as_separate_datagrams(server: TftpServer, root: Path) -> None:
    """A window of blocks may leave in one send (segmentation offload) but arrives as one
    datagram per block, in order; an ACK inside the window resends from there (RFC 7440)."""
    data = (root / "boot" / "big.bin").read_bytes()
    peer = RawPeer()
    try:
        options = (("blksize", "1000"), ("windowsize", "8"))
        await peer.send(ReadRequest("boot/big.bin", "octet", options), (HOST, server.port))
        oack, addr = await peer.recv()
        assert oack == OptionAck(options)
        await peer.send(Ack(0), addr)
        window = [await peer.recv() for _ in range(8)]
        assert [p for p, _ in window] == [
            Data(n, data[(n - 1) * 1000 : n * 1000]) for n in range(1, 9)
        ]
        await peer.send(Ack(3), addr)  # as if block 4 were lost
        again = [(await peer.recv())[0] for _ in range(8)]
        assert [p.block for p in again if isinstance(p, Data)] == list(range(4, 12))
    finally:
        peer.close()


async def test_single_port_mode(make_server: ServerFactory, root: Path, tmp_path: Path) -> None:
    server = await make_server(single_port=True)
    (content_a, ports_a), (content_b, ports_b) = await asyncio.gather(
        fetch_raw(server.port, "boot/big.bin", (("blksize", "1468"), ("windowsize", "4"))),
        fetch_raw(server.port, "small.txt"),
    )
    assert content_a == (root / "boot" / "big.bin").read_bytes()
    assert content_b == (root / "small.txt").read_bytes()
    assert ports_a == ports_b == {server.port}
    curl = need("curl")
    out = tmp_path / "out"
    rc, text = await run(curl, "-sS", "-o", str(out), f"tftp://{HOST}:{server.port}/boot/big.bin")
    assert rc == 0, text
    assert digest(out) == digest(root / "boot" / "big.bin")
    await settle(server)
    assert server.counters["ok"] == 3


class _GatedSource:
    """A FileSource whose reads of ``slow.bin`` wait until the test opens the gate."""

    def __init__(self, tree: FileTree) -> None:
        self.tree = tree
        self.gate = threading.Event()

    def open(self, name: str, peer: str | None = None) -> OpenedFile:
        opened = self.tree.open(name)
        if name != "slow.bin":
            return opened
        gate = self.gate

        class Slow:
            size = opened.size

            def read(self, offset: int, length: int) -> bytes:
                # On the event loop this would stall every other transfer until it gave up.
                gate.wait(10)
                return opened.read(offset, length)

            def close(self) -> None:
                opened.close()

        return Slow()


async def test_file_reads_do_not_block_other_transfers(root: Path, transfer_threads: int) -> None:
    (root / "slow.bin").write_bytes(b"slow" * 100)
    source = _GatedSource(FileTree(root))
    server = TftpServer(source, transfer_threads=transfer_threads)
    await server.start(HOST, 0)
    try:
        slow = asyncio.ensure_future(fetch_raw(server.port, "slow.bin"))
        await asyncio.sleep(0.1)
        # Served while the slow transfer's read is still stuck in its worker thread.
        content, _ = await asyncio.wait_for(fetch_raw(server.port, "small.txt"), 3)
        assert content == (root / "small.txt").read_bytes()
        assert not slow.done()
        source.gate.set()
        content, _ = await asyncio.wait_for(slow, 5)
        assert content == b"slow" * 100
    finally:
        source.gate.set()
        await server.close()


# --------------------------------------------------------------------------------------------
# Uploads (off unless an upload directory is given)


@pytest.fixture
def uploads(tmp_path: Path) -> Path:
    path = tmp_path / "uploads"
    path.mkdir()
    return path


@pytest.mark.parametrize("client", ["atftp", "atftp-window", "curl", "busybox"])
async def test_upload_with_real_clients(
    make_server: ServerFactory,
    root: Path,
    uploads: Path,
    client: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    server = await make_server(upload_dir=uploads)
    source = root / "boot" / "big.bin"
    where = f"{HOST}:{server.port}"
    if client.startswith("atftp"):
        window = ["--option", "blksize 1468", "--option", "windowsize 8"]
        options = window if client == "atftp-window" else []
        cmd = [need("atftp"), *options, "--put", "-l", str(source), "-r", "up.bin", HOST]
        rc, text = await run(*cmd, str(server.port))
    elif client == "curl":
        rc, text = await run(need("curl"), "-sS", "-T", str(source), f"tftp://{where}/up.bin")
    else:
        busybox = need_busybox_tftp()
        cmd = [busybox, "tftp", "-p", "-b", "1468", "-l", str(source), "-r", "up.bin", HOST]
        rc, text = await run(*cmd, str(server.port))
    assert rc == 0, text
    # The session lingers for one retransmission timeout in case the last ACK was lost.
    for _ in range(500):
        if server.active_sessions == 0:
            break
        await asyncio.sleep(0.02)
    assert digest(uploads / "up.bin") == digest(source)
    assert sorted(os.listdir(uploads)) == ["up.bin"]  # no temporary left
    [line] = [
        fields
        for record in caplog.records
        for event, fields in [parse_event(record.getMessage())]
        if event == "upload"
    ]
    assert line["result"] == "ok"
    assert line["bytes"] == str(source.stat().st_size)


async def test_upload_refusals(make_server: ServerFactory, uploads: Path) -> None:
    (uploads / "taken.bin").write_bytes(b"old")
    server = await make_server(upload_dir=uploads, upload_max_size=1000)
    peer = RawPeer()
    try:
        cases = [
            (WriteRequest("taken.bin", "octet"), ErrorCode.FILE_EXISTS),
            (WriteRequest("../escape.bin", "octet"), ErrorCode.ACCESS_VIOLATION),
            (WriteRequest("nodir/x.bin", "octet"), ErrorCode.ACCESS_VIOLATION),
            (WriteRequest("text.txt", "netascii"), ErrorCode.ILLEGAL_OPERATION),
            (WriteRequest("big.bin", "octet", (("tsize", "5000"),)), ErrorCode.DISK_FULL),
        ]
        for request, code in cases:
            await peer.send(request, (HOST, server.port))
            reply, _ = await peer.recv()
            assert isinstance(reply, Error), (request, reply)
            assert reply.code == code, (request, reply)
        assert (uploads / "taken.bin").read_bytes() == b"old"
        assert sorted(os.listdir(uploads)) == ["taken.bin"]
    finally:
        peer.close()


async def test_abandoned_upload_leaves_nothing(make_server: ServerFactory, uploads: Path) -> None:
    server = await make_server(upload_dir=uploads, timeout=0.05, retries=1)
    peer = RawPeer()
    try:
        await peer.send(WriteRequest("half.bin", "octet"), (HOST, server.port))
        ack, addr = await peer.recv()
        assert ack == Ack(0)
        await peer.send(Data(1, b"x" * 512), addr)
        assert (await peer.recv())[0] == Ack(1)
        # The client goes away: the server gives up and throws the partial file away.
        await settle(server)
        for _ in range(100):
            if not os.listdir(uploads):
                break
            await asyncio.sleep(0.02)
        assert os.listdir(uploads) == []
        assert server.counters["timed_out"] == 1
    finally:
        peer.close()


@pytest.mark.parametrize(("blksize", "window"), [(16384, 32), (65464, 4), (1000, 1), (8, 64)])
async def test_windows_larger_and_smaller_than_a_read_chunk(
    make_server: ServerFactory, root: Path, blksize: int, window: int
) -> None:
    """Read-ahead keeps up whether a window spans several read chunks or a tiny part of one."""
    (root / "mid.bin").write_bytes(os.urandom(2 * 1024 * 1024 + 7))
    server = await make_server(max_blksize=65464, gso_max_blksize=None)
    options = (("blksize", str(blksize)), ("windowsize", str(window)))
    name = "mid.bin" if blksize > 8 else "small.txt"
    content, _ = await fetch_raw(server.port, name, options)
    assert content == (root / name).read_bytes()


async def test_refused_offload_falls_back_to_single_datagrams(peer: RawPeer) -> None:
    """More segments than the kernel takes in one send (64, or 128 since Linux 6.2) is
    refused with EINVAL: the endpoint then sends the same datagrams one by one, in order, and
    says so once."""
    refused: list[bool] = []
    endpoint = Endpoint.bind(
        socket.AF_INET,
        (HOST, 0),
        lambda data, addr: None,
        Counter(),
        on_no_offload=lambda: refused.append(True),
    )
    try:
        segments = [bytes([n]) * 10 for n in range(200)]
        endpoint.send(b"".join(segments), peer.sock.getsockname(), 10)
        loop = asyncio.get_running_loop()
        got = [await asyncio.wait_for(loop.sock_recv(peer.sock, 100), 2) for _ in segments]
        assert got == segments
        assert refused == [True]
    finally:
        endpoint.close()


# --------------------------------------------------------------------------------------------
# Files that fail under a transfer, and the threaded path's own limits


class _FailingSource:
    """``shrinks.bin`` has nothing past its first read chunk although its size said more;
    reading ``broken.bin`` past its first chunk fails as a dead disk does."""

    def __init__(self, tree: FileTree) -> None:
        self.tree = tree

    def open(self, name: str, peer: str | None = None) -> OpenedFile:
        opened = self.tree.open(name)

        class Failing:
            size = opened.size

            def read(self, offset: int, length: int) -> bytes:
                if offset >= tftp_pump.READ_CHUNK:
                    if name == "broken.bin":
                        raise OSError(errno.EIO, "Input/output error")
                    return b""
                return opened.read(offset, length)

            def close(self) -> None:
                opened.close()

        return Failing()


@pytest.mark.parametrize(
    "case",
    [
        ("shrinks.bin", "file changed during transfer"),
        ("broken.bin", "read error: Input/output error"),
    ],
    ids=["shrinks", "broken"],
)
async def test_a_file_failing_mid_transfer_ends_it_with_an_error(
    root: Path,
    transfer_threads: int,
    peer: RawPeer,
    caplog: pytest.LogCaptureFixture,
    case: tuple[str, str],
) -> None:
    name, message = case
    caplog.set_level(logging.INFO, logger=LOGGER)
    (root / name).write_bytes(os.urandom(3 * tftp_pump.READ_CHUNK))
    server = TftpServer(_FailingSource(FileTree(root)), transfer_threads=transfer_threads)
    await server.start(HOST, 0)
    try:
        options = (("blksize", "1024"), ("windowsize", "16"))
        await peer.send(ReadRequest(name, "octet", options), (HOST, server.port))
        oack, session_addr = await peer.recv()
        assert isinstance(oack, OptionAck)
        await peer.send(Ack(0), session_addr)
        received = 0
        while True:
            packet, _ = await peer.recv()
            if isinstance(packet, Error):
                break
            assert isinstance(packet, Data)
            received += len(packet.payload)
            if packet.block % 16 == 0:
                await peer.send(Ack(packet.block), session_addr)
        assert packet == Error(ErrorCode.NOT_DEFINED, message)
        # Nothing from past the failure (the event loop reads ahead, and may stop sooner).
        assert received <= tftp_pump.READ_CHUNK
        await settle(server)
        [line] = transfer_lines(caplog)
        assert line["result"] == f"error: {message}"
        assert server.counters["error_sent"] == 1
    finally:
        await server.close()


async def test_no_thread_to_be_had_refuses_the_transfer(
    make_server: ServerFactory,
    peer: RawPeer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def no_thread(self: object) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(tftp_pump.ReadPump, "start", no_thread)
    caplog.set_level(logging.INFO, logger=LOGGER)
    server = await make_server(transfer_threads=1)
    await peer.send(ReadRequest("small.txt", "octet"), (HOST, server.port))
    reply, _ = await peer.recv()
    assert reply == Error(ErrorCode.NOT_DEFINED, "server cannot start the transfer")
    await settle(server)
    [line] = transfer_lines(caplog)
    assert line["result"] == "error: server cannot start the transfer"
    assert server.active_sessions == 0
    [(_, fields)] = [
        parse_event(r.getMessage())
        for r in caplog.records
        if parse_event(r.getMessage())[0] == "no-thread"
    ]
    assert fields["error"] == "can't start new thread"
    assert fields["client"] == f"{HOST}:{peer.sock.getsockname()[1]}"


async def test_a_slow_client_gives_its_busy_poll_place_up(
    make_server: ServerFactory, peer: RawPeer, root: Path
) -> None:
    server = await make_server(transfer_threads=1, busy_poll=200e-6, busy_pollers=1)
    await peer.send(ReadRequest("exact.bin", "octet"), (HOST, server.port))
    packet, session_addr = await peer.recv()
    assert server.poll_slots.free == 0  # the transfer polls for its client's ACKs
    received = bytearray()
    while True:
        assert isinstance(packet, Data)
        received += packet.payload
        await asyncio.sleep(0.005)  # far slower than the poll
        await peer.send(Ack(packet.block), session_addr)
        if len(packet.payload) < 512:
            break
        if packet.block == 12:
            # Eight misses running, and the place is free for another transfer.
            assert server.poll_slots.free == 1
        packet, _ = await peer.recv()
    assert bytes(received) == (root / "exact.bin").read_bytes()
    await settle(server)
    assert server.poll_slots.free == 1
    assert server.counters["ok"] == 1


async def test_under_load_new_transfers_share_the_event_loop(
    make_server: ServerFactory, peer: RawPeer, stranger: RawPeer
) -> None:
    server = await make_server(transfer_threads=1)
    await peer.send(ReadRequest("exact.bin", "octet"), (HOST, server.port))
    _, first = await peer.recv()
    assert server.transfers_in_threads == 1
    assert not server.poll_slots.paused
    await stranger.send(ReadRequest("exact.bin", "octet"), (HOST, server.port))
    _, second = await stranger.recv()
    assert server.transfers_in_threads == 1  # the second one is on the event loop
    assert server.poll_slots.paused  # and no thread polls while it waits there
    await peer.send(Error(ErrorCode.NOT_DEFINED, "enough"), first)
    await stranger.send(Error(ErrorCode.NOT_DEFINED, "enough"), second)
    await settle(server)
    assert server.transfers_in_threads == 0
    assert not server.poll_slots.paused
    assert server.counters["client_error"] == 2
