"""What TFTP and HTTP tell the boot journal, over loopback with real atftp and curl.

Each transfer, refusal and size query is one event with its file, role, result and sizes; a
per-machine file names its machine and is marked rendered; the operator's routes are not boot
steps and tell nothing.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator
from ipaddress import IPv4Address
from pathlib import Path
from types import MappingProxyType

import pytest
from aiohttp import web

from netbootd.boot.client import classify
from netbootd.boot.inventory import Inventory, Machine, Method, Profile
from netbootd.boot.journal import BootEvent
from netbootd.proto.dhcp.codec import MessageType
from netbootd.proto.tftp import Ack, Error, ErrorCode, ReadRequest, decode, encode
from netbootd.services.files import FileTree
from netbootd.services.journal import Journal
from netbootd.services.machines import BootFiles, BootSetup, Machines, ServerAddress
from netbootd.transport.http import HttpServer
from netbootd.transport.tftp import TftpServer
from tests.helpers.dhcp_clients import request

HOST = "127.0.0.1"
MAC = "52:54:00:aa:00:01"
KERNEL = os.urandom(200_000)


@pytest.fixture
def source(tmp_path: Path) -> BootFiles:
    """A root with a kernel and initrd whose names say nothing, which the machine's profile
    names; DHCP has given the machine 127.0.0.1."""
    root = tmp_path / "root"
    (root / "images").mkdir(parents=True)
    (root / "images" / "k1").write_bytes(KERNEL)
    (root / "images" / "i1").write_bytes(b"i" * 3000)
    (root / "undionly.kpxe").write_bytes(b"x" * 5000)
    profile = Profile("p", Method.IPXE, kernel="images/k1", initrds=("images/i1",))
    inventory = Inventory(
        profiles={"p": profile}, machines={"m1": Machine("m1", mac=MAC, profile="p")}
    )
    machines = Machines(
        BootSetup(inventory, MappingProxyType({}), tmp_path), ServerAddress(HOST, 8080)
    )
    machines.remember(classify(request(MessageType.DISCOVER, mac=MAC)), IPv4Address(HOST))
    return BootFiles(FileTree(root), machines)


def need(binary: str) -> str:
    path = shutil.which(binary)
    assert path is not None, f"{binary} is not installed"
    return path


async def run(*cmd: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(errors="replace")


async def taken(journal: Journal, count: int) -> list[BootEvent]:
    """The events told, once ``count`` are (transfers end after the client does)."""
    found: list[BootEvent] = []
    for _ in range(300):
        found += journal.take()
        if len(found) >= count:
            return found
        await asyncio.sleep(0.01)
    raise AssertionError(f"{count} events expected, {len(found)} told: {found}")


@pytest.fixture(params=[4, 0], ids=["threads", "event-loop"])
async def tftp(
    request: pytest.FixtureRequest, source: BootFiles
) -> AsyncIterator[tuple[TftpServer, Journal]]:
    journal = Journal()
    server = TftpServer(
        source, journal=journal, transfer_threads=request.param, timeout=0.05, retries=1
    )
    await server.start(HOST, 0)
    try:
        yield server, journal
    finally:
        await server.close()


async def test_tftp_transfers_refusals_and_size_queries(
    tftp: tuple[TftpServer, Journal], tmp_path: Path
) -> None:
    server, journal = tftp
    atftp = need("atftp")
    port = str(server.port)
    rc, text = await run(atftp, "--get", "-r", "images/k1", "-l", str(tmp_path / "k"), HOST, port)
    assert rc == 0, text
    (kernel,) = await taken(journal, 1)
    assert (kernel.service, kernel.kind, kernel.address) == ("tftp", "transfer", HOST)
    assert kernel.mac == ""  # no DHCP exchange told here: the writer ties it by address
    f = kernel.fields
    assert (f["file"], f["role"], f["result"]) == ("images/k1", "kernel", "ok")
    assert f["bytes"] == f["size"] == str(len(KERNEL))
    assert int(f["block"]) == len(KERNEL) // 512 + 1
    assert float(f["seconds"]) >= 0 and float(f["rate"]) >= 0
    assert "rendered" not in f

    rc, _ = await run(atftp, "--get", "-r", "nothere", "-l", str(tmp_path / "n"), HOST, port)
    assert rc != 0
    (missing,) = await taken(journal, 1)
    assert (missing.get("file"), missing.get("result"), missing.get("bytes")) == (
        "nothere",
        "not found",
        "0",
    )

    # A size query (EDK2's, before its download) and a client that stops acknowledging.
    peer = await _peer()
    loop = asyncio.get_running_loop()
    try:
        await loop.sock_sendto(
            peer, encode(ReadRequest("images/i1", "octet", (("tsize", "0"),))), (HOST, server.port)
        )
        _, session = await asyncio.wait_for(loop.sock_recvfrom(peer, 70000), 2)
        await loop.sock_sendto(peer, encode(Error(ErrorCode.NOT_DEFINED, "aborted")), session)
        (query,) = await taken(journal, 1)
        assert (query.get("role"), query.get("result")) == ("initrd", "size query")

        await loop.sock_sendto(
            peer, encode(ReadRequest("undionly.kpxe", "octet")), (HOST, server.port)
        )
        data, session = await asyncio.wait_for(loop.sock_recvfrom(peer, 70000), 2)
        block = decode(data)
        await loop.sock_sendto(peer, encode(Ack(1)), session)  # ACK 1, then silence
        (stalled,) = await taken(journal, 1)
        assert block is not None
        assert (stalled.get("role"), stalled.get("result"), stalled.get("block")) == (
            "loader",
            "timed out",
            "1",
        )
        assert stalled.get("size") == "5000" and stalled.get("bytes") == "512"
    finally:
        peer.close()


async def _peer() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((HOST, 0))
    sock.setblocking(False)
    return sock


@pytest.fixture
async def http(source: BootFiles) -> AsyncIterator[tuple[HttpServer, Journal, list[str]]]:
    journal = Journal()
    marked: list[str] = []

    def installed(mac: str) -> str | None:
        marked.append(mac)
        return "m1" if mac == MAC else None

    async def operator(_: web.Request) -> web.Response:
        return web.Response(text="operator's\n")

    routes = [web.get("/api/v1/machines", operator), web.get("/metrics", operator)]
    server = HttpServer(source, installed=installed, routes=routes, journal=journal)
    await server.start(HOST, 0)
    try:
        yield server, journal, marked
    finally:
        await server.close()


async def curl(*args: str) -> str:
    rc, text = await run("curl", "-s", "-S", "--max-time", "20", "-o", "/dev/null",
                         "-w", "%{http_code}", *args)  # fmt: skip
    assert rc == 0, text
    return text


async def test_http_boot_files_are_told_and_the_operators_routes_are_not(
    http: tuple[HttpServer, Journal, list[str]],
) -> None:
    server, journal, marked = http
    need("curl")
    base = f"http://{HOST}:{server.port}"
    assert await curl(f"{base}/api/v1/machines") == "200"
    assert await curl(f"{base}/metrics") == "200"
    assert await curl("-I", f"{base}/images/k1") == "200"  # UEFI HTTP Boot's HEAD
    assert await curl(f"{base}/images/k1") == "200"
    assert await curl(f"{base}/nothere") == "404"
    assert await curl(f"{base}/m/52-54-00-AA-00-01/boot.ipxe") == "200"
    assert await curl("-X", "POST", f"{base}/m/52-54-00-aa-00-01/installed") == "200"
    events = await taken(journal, 5)
    transfers = [e for e in events if e.kind == "transfer"]
    assert [(e.get("file"), e.get("method"), e.get("status")) for e in transfers] == [
        ("images/k1", "HEAD", "200"),
        ("images/k1", "", "200"),
        ("nothere", "", "404"),
        ("m/52-54-00-AA-00-01/boot.ipxe", "", "200"),
        ("m/52-54-00-aa-00-01/installed", "POST", "200"),
    ]
    head, kernel, missing, script, mark = transfers
    assert head.get("bytes") == "0" and head.get("size") == str(len(KERNEL))
    assert (kernel.get("role"), kernel.get("result")) == ("kernel", "ok")
    assert kernel.get("bytes") == kernel.get("size") == str(len(KERNEL))
    assert kernel.address == HOST and kernel.mac == ""  # the writer ties it by address
    assert (missing.get("result"), missing.get("role")) == ("not found", "file")
    assert (script.mac, script.get("rendered"), script.get("role")) == (MAC, "yes", "config")
    assert mark.mac == MAC
    assert marked == [MAC]
    # The mark itself is the inventory's to tell (LiveInventory.mark_installed).
    assert all(e.service == "http" for e in events)
