"""The HTTP edge on loopback, fetched with real curl: GET, HEAD, Range, ETag, confinement."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from netbootd.services.files import FileTree, LocalFile
from netbootd.transport.http import HttpServer

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[HttpServer, Path]]:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "boot.ipxe").write_text("#!ipxe\nchain http://example.invalid/next\n")
    (root / "sub" / "kernel").write_bytes(os.urandom(3_000_000))
    (root / "link").symlink_to("sub/kernel")
    outside = tmp_path / "secret"
    outside.write_text("secret")
    (root / "escape").symlink_to(outside)
    extra = tmp_path / "undionly.kpxe"
    extra.write_bytes(b"ipxe-binary")
    http = HttpServer(FileTree(root, {"undionly.kpxe": extra}))
    await http.start("127.0.0.1", 0)
    try:
        yield http, root
    finally:
        await http.close()


async def curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    proc = await asyncio.create_subprocess_exec(
        "curl", "-s", "-S", "--max-time", "20", *args,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    return subprocess.CompletedProcess(args, proc.returncode or 0, out, err)


def url(http: HttpServer, path: str) -> str:
    return f"http://127.0.0.1:{http.port}/{path}"


async def test_get_head_and_range(server: tuple[HttpServer, Path]) -> None:
    http, root = server
    kernel = (root / "sub" / "kernel").read_bytes()
    got = await curl(url(http, "sub/kernel"))
    assert got.returncode == 0 and got.stdout == kernel
    head = await curl("-I", url(http, "sub/kernel"))
    headers = head.stdout.lower()
    assert b"200 ok" in headers and b"content-length: 3000000" in headers
    assert b"etag:" in headers and b"last-modified:" in headers
    part = await curl("-r", "100-199", "-D", "-", "-o", "/dev/null", url(http, "sub/kernel"))
    assert b"206" in part.stdout.split(b"\r\n")[0]
    body = await curl("-r", "100-199", url(http, "sub/kernel"))
    assert body.stdout == kernel[100:200]
    beyond = await curl("-r", "5000000-", "-o", "/dev/null", "-w", "%{http_code}",
                        url(http, "sub/kernel"))  # fmt: skip
    assert beyond.stdout == b"416"


async def test_etag_revalidation(server: tuple[HttpServer, Path]) -> None:
    http, _ = server
    head = await curl("-I", url(http, "boot.ipxe"))
    etag = next(
        line.split(b":", 1)[1].strip()
        for line in head.stdout.split(b"\r\n")
        if line.lower().startswith(b"etag:")
    )
    again = await curl("-o", "/dev/null", "-w", "%{http_code}",
                       "-H", f"If-None-Match: {etag.decode()}", url(http, "boot.ipxe"))  # fmt: skip
    assert again.stdout == b"304"


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("missing", "404"),
        ("escape", "403"),
        ("sub", "403"),
        ("%2e%2e/secret", "403"),
        ("sub/..%2f..%2fsecret", "403"),
    ],
)
async def test_refusals(server: tuple[HttpServer, Path], path: str, status: str) -> None:
    http, _ = server
    got = await curl("--path-as-is", "-o", "/dev/null", "-w", "%{http_code}", url(http, path))
    assert got.stdout.decode() == status
    ok = await curl(url(http, "boot.ipxe"))  # and the next client is served
    assert ok.stdout.startswith(b"#!ipxe")


async def test_symlink_inside_root_and_system_ipxe(server: tuple[HttpServer, Path]) -> None:
    http, root = server
    (root / "a%20b").write_text("literal percent")  # decoded once, not twice
    assert (await curl(url(http, "a%2520b"))).stdout == b"literal percent"
    assert (await curl(url(http, "link"))).stdout == (root / "sub" / "kernel").read_bytes()
    assert (await curl(url(http, "undionly.kpxe"))).stdout == b"ipxe-binary"


async def test_one_log_line_per_request(
    server: tuple[HttpServer, Path], caplog: pytest.LogCaptureFixture
) -> None:
    from netbootd.logs.events import parse_event

    http, _ = server
    with caplog.at_level("INFO", logger="netbootd.http"):
        await curl(url(http, "boot.ipxe"))
        await curl("-o", "/dev/null", url(http, "missing"))
        await asyncio.sleep(0.05)
    events = [parse_event(r.getMessage()) for r in caplog.records if r.name == "netbootd.http"]
    assert [(e, f["path"], f["status"]) for e, f in events] == [
        ("request", "/boot.ipxe", "200"),
        ("request", "/missing", "404"),
    ]
    assert events[0][1]["bytes"] == str(len("#!ipxe\nchain http://example.invalid/next\n"))
    assert http.counters["served"] == 1 and http.counters["not-found"] == 1


async def test_never_a_compressed_sibling(server: tuple[HttpServer, Path]) -> None:
    # A "vmlinuz.gz" next to "vmlinuz" is another file; asking for one never yields the other.
    http, root = server
    (root / "boot.ipxe.gz").write_bytes(b"not the script")
    got = await curl("-H", "Accept-Encoding: gzip, br", "-D", "-", url(http, "boot.ipxe"))
    assert got.stdout.endswith(b"#!ipxe\nchain http://example.invalid/next\n")
    assert b"content-encoding" not in got.stdout.lower()


class _SwappingTree(FileTree):
    """Replaces the checked file with a symlink out of the root the moment it was checked."""

    def __init__(self, root: Path, target: Path) -> None:
        super().__init__(root)
        self.target = target
        self.checking = False

    def _swap(self, name: str) -> None:
        path = self.root / name
        path.unlink()
        path.symlink_to(self.target)

    def resolve(self, name: str) -> Path:
        found = super().resolve(name)
        if not self.checking:  # a caller that resolves and then opens the path by itself
            self._swap(name)
        return found

    def open(self, name: str, peer: str | None = None) -> LocalFile:
        self.checking = True
        try:
            opened = super().open(name)
        finally:
            self.checking = False
        self._swap(name)
        return opened


async def test_a_path_swapped_after_the_check_serves_what_was_checked(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "kernel").write_bytes(b"the kernel")
    secret = tmp_path / "secret"
    secret.write_text("secret")
    http = HttpServer(_SwappingTree(root, secret))
    await http.start("127.0.0.1", 0)
    try:
        got = await curl(url(http, "kernel"))
    finally:
        await http.close()
    assert (root / "kernel").is_symlink()  # the swap happened
    assert got.stdout == b"the kernel"


async def test_no_descriptor_outlives_its_request(server: tuple[HttpServer, Path]) -> None:
    http, root = server
    kernel = str(root / "sub" / "kernel")

    def open_on_kernel() -> int:
        links = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                links.append(os.readlink(f"/proc/self/fd/{fd}"))
            except OSError:
                continue  # closed while listing
        return links.count(kernel)

    for args in (["-I"], ["-r", "0-9"], ["-H", 'If-None-Match: "x"'], ["-r", "9999999-"], []):
        await curl("-o", "/dev/null", *args, url(http, "sub/kernel"))
    await asyncio.sleep(0.1)  # aiohttp closes its own copy in a thread
    assert open_on_kernel() == 0


def test_zero_copy_under_uvloop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # netbootd runs on uvloop, which has no loop.sendfile: without netbootd's own sendfile
    # path, aiohttp would copy every file through Python in chunks.
    import uvloop

    from netbootd.transport import http as http_module

    calls: list[tuple[int, int]] = []
    real_send_file = http_module.send_file

    async def spy(
        transport: asyncio.Transport,
        fd: int,
        offset: int,
        count: int,
        progress: Callable[[int], None],
    ) -> None:
        calls.append((offset, count))
        await real_send_file(transport, fd, offset, count, progress)

    monkeypatch.setattr(http_module, "send_file", spy)
    root = tmp_path / "root"
    root.mkdir()
    data = os.urandom(20 * 1024 * 1024 + 7)
    (root / "big").write_bytes(data)

    async def hang_up_early(port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        await reader.readexactly(100_000)
        writer.transport.abort()  # a client that goes away mid-body

    async def main() -> tuple[bytes, bytes, bytes, int]:
        http = HttpServer(FileTree(root))
        await http.start("127.0.0.1", 0)
        try:
            twice = await curl(url(http, "big"), url(http, "big"))  # one kept-alive connection
            part = await curl("-r", "1000-1999", url(http, "big"))
            await hang_up_early(http.port)
            again = await curl(url(http, "big"))
        finally:
            await http.close()
        return twice.stdout, part.stdout, again.stdout, http.counters["cut-short"]

    with caplog.at_level("INFO", logger="netbootd.http"):
        twice, part, again, cut_short = uvloop.run(main())
    assert twice == data + data
    assert part == data[1000:2000]
    assert again == data
    assert calls[:3] == [(0, len(data)), (0, len(data)), (1000, 1000)]
    assert calls[-1] == (0, len(data)) and len(calls) == 5
    # The log says what went out, and that the fourth request was cut short.
    from netbootd.logs.events import parse_event

    lines = [parse_event(r.getMessage())[1] for r in caplog.records if r.name == "netbootd.http"]
    assert [(f["bytes"], f["result"]) for f in lines[:3]] == [
        (str(len(data)), "ok"),
        (str(len(data)), "ok"),
        ("1000", "ok"),
    ]
    assert lines[3]["result"].startswith("cut short: ")
    assert 100_000 <= int(lines[3]["bytes"]) < len(data)
    assert cut_short == 1
