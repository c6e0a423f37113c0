"""The web page's server side on loopback, with aiohttp's client: what clients put in their
packets shows as text, and the event stream resumes where the browser left off, is capped, and
ends when the server stops."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

import aiohttp
import pytest

from netbootd.api import web as web_module
from netbootd.api.routes import routes
from netbootd.api.view import OperatorView
from netbootd.boot.journal import BootEvent
from netbootd.boot.leases import Lease, LeaseState
from netbootd.services.files import FileTree
from netbootd.store.journal import JournalStore
from netbootd.store.leases import SqliteLeaseStore
from netbootd.transport.http import HttpServer
from tests.helpers.config import parse

MAC = "52:54:00:aa:bb:01"
PAYLOAD = "<script>alert('owned')</script>"


@dataclass
class Site:
    http: HttpServer
    view: OperatorView
    store: JournalStore
    url: str
    state: Path


async def _site(tmp_path: Path, *, journal: bool = True) -> Site:
    (tmp_path / "root").mkdir(parents=True, exist_ok=True)
    state = tmp_path / "state"
    config = parse("--no-dhcp", "--state-dir", str(state), "--root", str(tmp_path / "root"))
    store = JournalStore(state / "journal.sqlite3")
    store.open()
    view = OperatorView(
        config=config,
        started=time.time(),
        journal=store if journal else None,
        lease_file=state / "leases.sqlite3",
    )
    http = HttpServer(FileTree(tmp_path / "root", {}), routes=routes(view))
    await http.start("127.0.0.1", 0)
    return Site(http, view, store, f"http://127.0.0.1:{http.port}", state)


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    found = await _site(tmp_path)
    try:
        yield found
    finally:
        found.view.stopping.set()
        await found.http.close()
        found.store.close()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
        yield session


def event(n: int, mac: str = MAC, **fields: str) -> BootEvent:
    return BootEvent(
        1_700_000_000.0 + n, mac, "192.0.2.9", "dhcp", "DISCOVER", {"decision": "OFFER", **fields}
    )


async def messages(response: aiohttp.ClientResponse, count: int) -> list[dict[str, str]]:
    """The next ``count`` server-sent events (comments and ``retry`` skipped), each as its
    fields."""
    found: list[dict[str, str]] = []
    current: dict[str, str] = {}
    async with asyncio.timeout(10):
        while len(found) < count:
            line = (await response.content.readline()).decode()
            assert line, f"the stream ended after {found}"
            line = line.rstrip("\n")
            if not line:
                if "data" in current:
                    found.append(current)
                current = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(": ")
                current[name] = value
    return found


async def test_client_text_is_escaped_everywhere(site: Site, client: aiohttp.ClientSession) -> None:
    site.store.append(
        [
            event(1, machine=PAYLOAD, file=PAYLOAD, reason=PAYLOAD, arch=PAYLOAD),
            BootEvent(
                1_700_000_002.0, MAC, "192.0.2.9", "http", "transfer",
                {"file": f"/{PAYLOAD}", "result": PAYLOAD, "bytes": "12"},
            ),
        ]
    )  # fmt: skip
    leases = SqliteLeaseStore(site.state / "leases.sqlite3")
    await leases.open()
    await leases.save(
        Lease(IPv4Address("192.0.2.9"), "c", MAC, LeaseState.BOUND, time.time() + 60, PAYLOAD)
    )
    await leases.close()
    escaped = "&lt;script&gt;alert(&#39;owned&#39;)&lt;/script&gt;"
    for path in (
        "/",
        f"/ui/machines/{MAC}",
        f"/ui/machines/{MAC}/timeline",
        "/ui/fragments/machines",
        "/ui/fragments/leases",
    ):
        async with client.get(site.url + path) as response:
            assert response.status == 200, path
            assert response.content_type == "text/html"
            page = await response.text()
        assert "alert('owned')" not in page, path
        assert escaped in page, path
    async with client.get(site.url + "/") as response:
        page = await response.text()
    assert page.count(escaped) >= 4  # the machine's name, the feed's file and reason, the lease


async def test_stream_resumes_from_last_event_id(site: Site, client: aiohttp.ClientSession) -> None:
    site.store.append([event(n) for n in range(1, 6)])
    async with client.get(
        site.url + "/api/v1/events/stream", headers={"Last-Event-ID": "2"}
    ) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        got = await messages(response, 3)
        assert [m["id"] for m in got] == ["3", "4", "5"]
        data = json.loads(got[0]["data"])
        assert data == {
            "id": 3,
            "time": 1_700_000_003.0,
            "mac": MAC,
            "address": "192.0.2.9",
            "service": "dhcp",
            "kind": "DISCOVER",
            "fields": {"decision": "OFFER"},
        }
        site.store.append([event(6)])  # and what comes after, as it comes
        assert [m["id"] for m in await messages(response, 1)] == ["6"]
    # ?after= where no header says; the header wins over it (a browser's reconnect).
    async with client.get(site.url + "/api/v1/events/stream?after=4") as response:
        assert [m["id"] for m in await messages(response, 2)] == ["5", "6"]
    async with client.get(
        site.url + "/api/v1/events/stream?after=1", headers={"Last-Event-ID": "5"}
    ) as response:
        assert [m["id"] for m in await messages(response, 1)] == ["6"]
    # One machine's only.
    site.store.append([event(7, mac="52:54:00:aa:bb:02"), event(8)])  # ids 7 and 8
    async with client.get(
        site.url + "/api/v1/events/stream?after=6&mac=52-54-00-AA-BB-02"
    ) as response:
        assert [m["id"] for m in await messages(response, 1)] == ["7"]
    # Neither: from now on.
    async with client.get(site.url + "/api/v1/events/stream") as response:
        await asyncio.sleep(0.2)
        site.store.append([event(9)])
        assert [m["id"] for m in await messages(response, 1)] == ["9"]


async def test_stream_refusals(site: Site, client: aiohttp.ClientSession, tmp_path: Path) -> None:
    bad = (({"Last-Event-ID": "x"}, ""), ({}, "?after=-3"), ({}, "?after=1.5"), ({}, "?mac=x"))
    for headers, query in bad:
        async with client.get(
            site.url + "/api/v1/events/stream" + query, headers=headers
        ) as response:
            assert response.status == 400
            body = await response.json()
            assert body["status"] == 400 and body["message"]
    off = await _site(tmp_path / "off", journal=False)
    try:
        async with client.get(off.url + "/api/v1/events/stream") as response:
            assert response.status == 503
            assert "journal" in (await response.json())["message"]
        async with client.get(off.url + "/") as response:
            assert response.status == 200
            assert "journal is off" in await response.text()
    finally:
        await off.http.close()
        off.store.close()


async def test_streams_are_capped_and_freed(
    site: Site, client: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(web_module, "MAX_STREAMS", 2)
    url = site.url + "/api/v1/events/stream"
    first = await client.get(url)
    second = await client.get(url)
    assert first.status == second.status == 200
    async with client.get(url) as third:
        assert third.status == 503
        assert "too many event streams" in (await third.json())["message"]
    first.close()  # the client goes: its place is given back within a poll or two
    async with asyncio.timeout(5):
        while True:
            async with client.get(url) as again:
                if again.status == 200:
                    break
            await asyncio.sleep(0.2)
    second.close()


async def test_keepalive_comment(
    site: Site, client: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(web_module, "KEEPALIVE", 0.3)
    async with client.get(site.url + "/api/v1/events/stream") as response:
        async with asyncio.timeout(5):
            lines = []
            while b": keep-alive\n" not in lines:
                lines.append(await response.content.readline())
        assert lines[0] == b"retry: 2000\n"


async def test_stream_ends_when_the_server_stops(
    tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    site = await _site(tmp_path)
    try:
        response = await client.get(site.url + "/api/v1/events/stream")
        assert response.status == 200
        await asyncio.sleep(0.2)
        began = time.monotonic()
        site.view.stopping.set()
        await site.http.close()
        assert time.monotonic() - began < 2  # not aiohttp's 60 s grace for handlers
        async with asyncio.timeout(5):
            rest = await response.content.read()
        assert rest.startswith(b"retry:") or rest == b""
        response.close()
    finally:
        site.store.close()


async def test_static_files_and_unknown_pages(site: Site, client: aiohttp.ClientSession) -> None:
    for name, kind in (("netbootd.js", "text/javascript"), ("netbootd.css", "text/css")):
        async with client.get(f"{site.url}/ui/static/{name}") as response:
            assert response.status == 200 and response.content_type == kind
            assert len(await response.read()) > 500
    for path in ("/ui/static/web.py", "/ui/static/..%2fweb.py", "/ui/static/"):
        async with client.get(site.url + path) as response:
            assert response.status == 404, path
    async with client.get(f"{site.url}/ui/machines/52:54:00:00:00:99") as response:
        assert response.status == 404
        assert "no events of" in await response.text()
    # A MAC written with dashes or capitals is the same machine.
    site.store.append([event(1)])
    async with client.get(f"{site.url}/ui/machines/52-54-00-AA-BB-01") as response:
        assert response.status == 200
