"""The REST API of a running server on loopback: reads, the token, validation, the API-managed
machines (kept across a restart, served at once), boot-once, explain, leases and their release,
the OpenAPI document, and ``netbootd status`` / ``netbootd machines`` against it."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession
from openapi_spec_validator import validate

from netbootd.api.routes import routes
from netbootd.api.view import OperatorView
from netbootd.app import App
from netbootd.boot.journal import BootEvent
from netbootd.boot.leases import Lease, LeaseState
from netbootd.boot.policy import BootPolicy
from netbootd.cli import api_explainer
from netbootd.config import DhcpMode, build
from netbootd.services.dhcp.authoritative import release_address
from netbootd.services.dhcp.service import DhcpService
from netbootd.services.dhcp.settings import DhcpSettings
from netbootd.services.files import FileTree
from netbootd.store.leases import SqliteLeaseStore, read_leases
from netbootd.transport.http import HttpServer

TOKEN = "s3cret-token-for-tests"
WEB1 = "52:54:00:aa:bb:01"
NEW = "52:54:00:aa:bb:77"

SITE = """\
[profiles.web]
method = "ipxe"
kernel = "vmlinuz"
cmdline = "role=web"

[profiles.installer]
method = "ipxe"
kernel = "installer/linux"
cmdline = "auto"

[profiles.disk]
method = "local"

[groups.lab]
profile = "disk"
match = { mac = "52:54:00:cc:*" }

[machines.web1]
mac = "52:54:00:aa:bb:01"
address = "127.0.0.50"
labels = { role = "web" }
profile = "web"

[machines.db1]
mac = "52:54:00:aa:bb:02"
profile = "disk"
boot-once = "installer"
"""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Server:
    app: App
    base: str
    tmp: Path

    async def call(
        self,
        method: str,
        path: str,
        body: object = None,
        token: str | None = TOKEN,
        raw: bytes | None = None,
    ) -> tuple[int, Any, dict[str, str]]:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        async with (
            ClientSession() as session,
            session.request(method, self.base + path, data=data, headers=headers) as response,
        ):
            text = await response.text()
            found = json.loads(text) if text else None
            return response.status, found, dict(response.headers)


def _config(tmp: Path, port: int, token: bool) -> dict[str, object]:
    config: dict[str, object] = {
        "interface": "lo",
        "dhcp": False,
        "tftp": False,
        "root": str(tmp / "root"),
        "inventory": str(tmp / "inventory"),
        "state-dir": str(tmp / "state"),
        "http-port": port,
    }
    if token:
        config["api-token-file"] = str(tmp / "token")
    return config


async def _start(tmp: Path, port: int, *, token: bool = True) -> App:
    app = App(build({}, _config(tmp, port, token)))
    app.explainer = api_explainer(app.config)
    app.prepare()
    await app.start()
    return app


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    (tmp_path / "root").mkdir()
    (tmp_path / "inventory").mkdir()
    (tmp_path / "inventory" / "site.toml").write_text(SITE)
    (tmp_path / "token").write_text(TOKEN + "\n")
    (tmp_path / "token").chmod(0o600)
    port = _free_port()
    holder = Server(await _start(tmp_path, port), f"http://127.0.0.1:{port}", tmp_path)
    try:
        yield holder
    finally:
        await holder.app.stop()


async def _get_text(url: str) -> tuple[int, str]:
    async with ClientSession() as session, session.get(url) as response:
        return response.status, await response.text()


# --- reads ----------------------------------------------------------------------------------


async def test_read_routes(server: Server) -> None:
    status, body, _ = await server.call("GET", "/api/v1/status", token=None)
    assert status == 200
    assert body["mode"] == "off" and body["services"] == {
        "dhcp": False,
        "tftp": False,
        "http": True,
    }
    assert body["journal"]["enabled"] is True and body["writable"] is True
    assert body["inventory"]["machines"] == 2 and body["inventory"]["profiles"] == 3
    assert body["uptime"] >= 0 and body["interface"] == "lo" and body["address"] == "127.0.0.1"

    status, counters, _ = await server.call("GET", "/api/v1/counters", token=None)
    assert status == 200 and "http" in counters
    # The API counts its own answers (the status call before this one).
    assert counters["api"] == {"status-200": 1}

    status, body, _ = await server.call("GET", "/api/v1/machines", token=None)
    assert status == 200
    by_name = {m["name"]: m for m in body["machines"]}
    assert set(by_name) == {"web1", "db1"}
    assert by_name["web1"]["source"] == "inventory" and by_name["web1"]["profile"] == "web"
    assert by_name["web1"]["address"] == "127.0.0.50" and by_name["web1"]["verdict"] is None
    # Until it is marked installed, db1 boots its boot-once profile.
    assert by_name["db1"]["profile"] == "installer" and by_name["db1"]["installed"] is False

    status, body, _ = await server.call("GET", "/api/v1/profiles", token=None)
    assert [p["name"] for p in body["profiles"]] == ["web", "installer", "disk"]
    status, body, _ = await server.call("GET", "/api/v1/profiles/web", token=None)
    assert body["kernel"] == "vmlinuz" and body["source"] == "site.toml:1"
    status, body, _ = await server.call("GET", "/api/v1/groups/lab", token=None)
    assert status == 200 and body["selector"]["macs"] == ["52:54:00:cc:*"]
    assert body["profile"] == "disk"


async def test_errors_are_json(server: Server) -> None:
    status, body, _ = await server.call("GET", "/api/v1/machines/nosuch", token=None)
    assert status == 404 and body["status"] == 404 and "nosuch" in body["message"]
    status, body, _ = await server.call("GET", "/api/v1/profiles/nosuch", token=None)
    assert status == 404 and body["status"] == 404
    status, body, _ = await server.call("GET", "/api/v1/nothing/here", token=None)
    assert status == 404 and body == {
        "status": 404,
        "message": "no such API route: /api/v1/nothing/here",
    }
    status, body, headers = await server.call("PATCH", "/api/v1/machines", token=None)
    assert status == 405 and body["status"] == 405 and headers["Allow"] == "GET, POST"
    status, body, _ = await server.call("GET", "/api/v1/leases/not-an-address", token=None)
    assert status == 400 and "not an IPv4 address" in body["message"]
    status, body, _ = await server.call("GET", "/api/v1/events?limit=0", token=None)
    assert status == 400 and "limit" in body["message"]
    # The listener goes on serving after all that.
    status, _, _ = await server.call("GET", "/api/v1/status", token=None)
    assert status == 200


# --- the token ------------------------------------------------------------------------------


async def test_writes_need_the_token(server: Server) -> None:
    machine = {"name": "new1", "mac": NEW, "profile": "web"}
    status, body, headers = await server.call("POST", "/api/v1/machines", machine, token=None)
    assert status == 401 and body["status"] == 401
    assert headers["WWW-Authenticate"].startswith("Bearer")
    status, body, headers = await server.call("POST", "/api/v1/machines", machine, token="wrong")
    assert status == 401 and "invalid_token" in headers["WWW-Authenticate"]
    status, body, _ = await server.call("DELETE", "/api/v1/leases/127.0.0.9", token="wrong")
    assert status == 401
    status, body, _ = await server.call("GET", "/api/v1/machines/new1", token=None)
    assert status == 404  # nothing was added
    # A token that is not even UTF-8 is a wrong one too.
    host, port = server.base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"DELETE /api/v1/leases/127.0.0.9 HTTP/1.1\r\nHost: x\r\n"
        b"Authorization: Bearer \xff\xfe\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    answer = await reader.read()
    writer.close()
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]


async def test_read_only_without_a_token_file(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    (tmp_path / "inventory").mkdir()
    (tmp_path / "inventory" / "site.toml").write_text(SITE)
    port = _free_port()
    app = await _start(tmp_path, port, token=False)
    server = Server(app, f"http://127.0.0.1:{port}", tmp_path)
    try:
        status, body, _ = await server.call("POST", "/api/v1/machines", {"name": "x"}, token=TOKEN)
        assert status == 403 and body["message"] == "the API is read-only: no api-token-file"
        status, body, _ = await server.call("GET", "/api/v1/status", token=None)
        assert status == 200 and body["writable"] is False
    finally:
        await app.stop()


def test_an_empty_token_file_stops_the_start(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    (tmp_path / "inventory").mkdir()
    (tmp_path / "token").write_text("  \n")
    app = App(build({}, _config(tmp_path, _free_port(), True)))
    with pytest.raises(Exception, match=r"api-token-file .*token: empty"):
        app.prepare()


# --- the API-managed machines ---------------------------------------------------------------


async def test_validation_errors(server: Server) -> None:
    post = "/api/v1/machines"
    status, body, _ = await server.call("POST", post, raw=b"{not json")
    assert status == 400 and body["message"].startswith("the body is not JSON")
    status, body, _ = await server.call("POST", post, {"mac": NEW})
    assert status == 422 and body["problems"] == ["name: Field required"]
    status, body, _ = await server.call("POST", post, {"name": "x", "colour": "red"})
    assert status == 422 and "colour" in body["message"]
    status, body, _ = await server.call("POST", post, {"name": "x", "mac": "not-a-mac"})
    assert status == 422 and "machines.x.mac" in body["message"]
    status, body, _ = await server.call("POST", post, {"name": "x", "mac": NEW, "profile": "nope"})
    assert status == 422 and "nope" in body["message"]
    # MACs and addresses are unique across the operator's files and the API's.
    status, body, _ = await server.call("POST", post, {"name": "x", "mac": WEB1})
    assert status == 422 and WEB1 in body["message"]
    status, body, _ = await server.call(
        "POST", post, {"name": "x", "mac": NEW, "address": "127.0.0.50"}
    )
    assert status == 422 and "127.0.0.50" in body["message"]
    status, body, _ = await server.call("POST", post, {"name": "bad name!", "mac": NEW})
    assert status == 422 and "not a valid machine name" in body["message"]
    status, body, _ = await server.call("POST", post, {"name": "web1", "mac": NEW})
    assert status == 409 and "site.toml" in body["message"]
    status, body, _ = await server.call("PUT", "/api/v1/machines/web1", {"profile": "disk"})
    assert status == 409
    assert body["message"] == "machine web1 is defined in site.toml:18, not by the API"
    status, body, _ = await server.call("DELETE", "/api/v1/machines/web1")
    assert status == 409
    status, body, _ = await server.call("PUT", "/api/v1/machines/nosuch", {"mac": NEW})
    assert status == 404 and body["status"] == 404
    status, body, _ = await server.call("POST", post, raw=b'{"name": "' + b"a" * 70_000 + b'"}')
    assert status == 413 and body["status"] == 413
    status, body, _ = await server.call("POST", post, [1, 2])
    assert status == 422 and body["status"] == 422
    # None of it reached the file.
    assert not (server.tmp / "state" / "api-inventory.toml").exists()


async def test_create_update_delete_and_restart(server: Server) -> None:
    script = f"{server.base}/m/{NEW.replace(':', '-')}/boot.ipxe"
    status, _ = await _get_text(script)
    assert status == 404  # no profile for it yet
    machine = {"name": "new1", "mac": NEW.upper(), "profile": "web", "labels": {"rack": "r1"}}
    status, body, headers = await server.call("POST", "/api/v1/machines", machine)
    assert status == 201, body
    assert body["name"] == "new1" and body["mac"] == NEW and body["source"] == "api"
    assert headers["Location"] == "/api/v1/machines/new1"
    # The running server serves it at once.
    status, text = await _get_text(script)
    assert status == 200 and "role=web" in text
    status, body, _ = await server.call("GET", "/api/v1/machines", token=None)
    assert {m["name"]: m["source"] for m in body["machines"]}["new1"] == "api"

    status, body, _ = await server.call(
        "PUT", "/api/v1/machines/new1", {"mac": NEW, "profile": "installer"}
    )
    assert status == 200 and body["profile"] == "installer" and body["labels"] == {}
    status, text = await _get_text(script)
    assert "auto" in text and "role=web" not in text
    status, body, _ = await server.call("PUT", "/api/v1/machines/new1", {"name": "other"})
    assert status == 422

    # A new server over the same state directory has it.
    port = int(server.base.rsplit(":", 1)[1])
    await server.app.stop()
    server.app = await _start(server.tmp, port)
    status, body, _ = await server.call("GET", "/api/v1/machines/new1", token=None)
    assert status == 200 and body["source"] == "api" and body["profile"] == "installer"
    assert body["defined_at"].endswith("api-inventory.toml:4")

    status, body, _ = await server.call("DELETE", "/api/v1/machines/new1")
    assert status == 204 and body is None
    status, _, _ = await server.call("GET", "/api/v1/machines/new1", token=None)
    assert status == 404
    status, _ = await _get_text(script)
    assert status == 404


async def test_a_hand_edit_of_the_api_file_is_reloaded(server: Server) -> None:
    status, _, _ = await server.call("POST", "/api/v1/machines", {"name": "new1", "mac": NEW})
    assert status == 201
    api_file = server.tmp / "state" / "api-inventory.toml"
    api_file.write_text(api_file.read_text() + 'profile = "web"\n')
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        _, body, _ = await server.call("GET", "/api/v1/machines/new1", token=None)
        if body["profile"] == "web":
            break
        await asyncio.sleep(0.2)
    assert body["profile"] == "web"


async def test_without_an_inventory_writes_are_refused(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    (tmp_path / "token").write_text(TOKEN)
    port = _free_port()
    config = _config(tmp_path, port, True)
    del config["inventory"]
    app = App(build({}, config))
    app.prepare()
    await app.start()
    server = Server(app, f"http://127.0.0.1:{port}", tmp_path)
    try:
        status, body, _ = await server.call("POST", "/api/v1/machines", {"name": "x", "mac": NEW})
        assert status == 409 and "no inventory directory is configured" in body["message"]
        status, body, _ = await server.call("GET", "/api/v1/machines", token=None)
        assert status == 200 and body == {"machines": []}
    finally:
        await app.stop()


# --- boot-once, the journal, explain --------------------------------------------------------


async def test_boot_once_mark(server: Server) -> None:
    status, body, _ = await server.call("POST", "/api/v1/machines/db1/installed")
    assert status == 200 and body["installed"] is True
    status, body, _ = await server.call("GET", "/api/v1/machines/52-54-00-aa-bb-02", token=None)
    assert body["name"] == "db1" and body["profile"] == "disk" and body["installed"] is True
    assert "db1" in (server.tmp / "state" / "installed.json").read_text()
    status, body, _ = await server.call("POST", "/api/v1/machines/db1/installed")
    assert status == 200 and "nothing changed" in body["message"]
    status, body, _ = await server.call("POST", "/api/v1/machines/db1/again")
    assert status == 200 and body["installed"] is False
    status, body, _ = await server.call("GET", "/api/v1/machines/db1", token=None)
    assert body["profile"] == "installer"
    status, body, _ = await server.call("POST", "/api/v1/machines/web1/installed")
    assert status == 409 and "no boot-once profile" in body["message"]
    status, body, _ = await server.call("POST", "/api/v1/machines/nosuch/installed")
    assert status == 404


def _dhcp(at: float, mac: str, kind: str, decision: str, address: str = "127.0.0.50") -> BootEvent:
    fields = {"decision": decision, "file": "ipxe.efi", "boot-class": "uefi-x64"}
    return BootEvent(at, mac, address, "dhcp", kind, fields)


def _fetch(at: float, file: str, result: str, role: str, size: str = "") -> BootEvent:
    fields = {"file": file, "result": result, "role": role}
    if size:
        fields.update(bytes=size, seconds="0.5")
    return BootEvent(at, WEB1, "127.0.0.50", "http", "transfer", fields)


async def test_machine_journal_and_verdict(server: Server) -> None:
    writer = server.app.journal_writer
    assert writer is not None
    now = time.time()
    seen = "52:54:00:dd:ee:01"
    writer.store.append(
        [
            _dhcp(now - 30, WEB1, "DISCOVER", "OFFER"),
            _dhcp(now - 29, WEB1, "REQUEST", "ACK"),
            _fetch(now - 28, "vmlinuz", "ok", "kernel", "1000"),
            _fetch(now - 27, "initrd.img", "ok", "initrd", "2000"),
            _dhcp(now - 5, seen, "DISCOVER", "OFFER", "127.0.0.60"),
        ]
    )
    status, body, _ = await server.call("GET", "/api/v1/machines", token=None)
    machines = body["machines"]
    # The latest seen first, then the rest by name.
    assert [m["mac"] for m in machines[:2]] == [seen, WEB1]
    assert machines[0]["source"] == "seen" and machines[0]["name"] is None
    assert [m["name"] for m in machines[2:]] == ["db1"]
    assert machines[1]["verdict"]["state"] == "booted"

    status, body, _ = await server.call("GET", f"/api/v1/machines/{WEB1}", token=None)
    assert status == 200 and len(body["events"]) == 4
    [attempt] = body["attempts"]
    assert attempt["verdict"]["state"] == "booted" and len(attempt["events"]) == 4
    kernel = [s for s in attempt["verdict"]["steps"] if s["step"] == "kernel"]
    assert kernel and kernel[0]["bytes"] == 1000
    status, body, _ = await server.call(
        "GET", f"/api/v1/machines/{seen.replace(':', '-')}", token=None
    )
    assert status == 200 and body["source"] == "seen" and body["address"] == "127.0.0.60"

    status, body, _ = await server.call("GET", "/api/v1/status", token=None)
    assert body["journal"]["events"] == 5 and body["journal"]["last"] >= 5
    status, body, _ = await server.call("GET", "/api/v1/events?limit=2", token=None)
    assert [e["mac"] for e in body["events"]] == [WEB1, seen]
    last = body["last"]
    status, body, _ = await server.call(
        "GET", f"/api/v1/events?after={last - 5}&mac={WEB1}", token=None
    )
    assert len(body["events"]) == 4 and body["last"] == last - 1
    status, body, _ = await server.call("GET", f"/api/v1/events?after={last}", token=None)
    assert body == {"events": [], "last": last}


async def test_explain(server: Server) -> None:
    status, body, _ = await server.call("GET", f"/api/v1/explain?mac={WEB1}&arch=7", token=None)
    assert status == 200, body
    assert "machine web1" in body["text"] and "profile web" in body["text"]
    assert isinstance(body["unservable"], bool)
    status, body, _ = await server.call("GET", "/api/v1/explain?mac=zz", token=None)
    assert status == 400 and "mac" in body["message"]
    status, body, _ = await server.call("GET", f"/api/v1/explain?mac={WEB1}&arch=x86", token=None)
    assert status == 400 and "arch" in body["message"]
    status, body, _ = await server.call("GET", "/api/v1/explain", token=None)
    assert status == 400


# --- leases ---------------------------------------------------------------------------------


async def test_leases_list_and_release(tmp_path: Path) -> None:
    """The release goes through a real DHCP service's book and lease store, as App wires it."""
    path = tmp_path / "leases.sqlite3"
    store = SqliteLeaseStore(path)
    await store.open()
    held = Lease(
        IPv4Address("127.0.0.100"), f"mac:{WEB1}", WEB1, LeaseState.BOUND, time.time() + 600, "web1"
    )
    other = Lease(
        IPv4Address("127.0.0.101"),
        "id:01ff",
        "52:54:00:aa:bb:09",
        LeaseState.BOUND,
        time.time() + 600,
    )
    await store.save(held)
    await store.save(other)
    app = App(build({}, {"dhcp": False, "http": False, "tftp": False, "state-dir": str(tmp_path)}))
    settings = DhcpSettings(
        DhcpMode.AUTHORITATIVE, IPv4Address("127.0.0.1"), IPv4Network("127.0.0.0/8")
    )
    policy = BootPolicy({}, IPv4Address("127.0.0.1"), 80, True)
    service = DhcpService(settings, policy, store=store)
    for lease in await store.load():
        service.book.put(lease)

    async def release(address: IPv4Address) -> Lease | None:
        return await release_address(service, address)

    view = OperatorView(
        config=app.config,
        started=time.time(),
        token=TOKEN,
        leases=lambda: list(service.book),
        release=release,
        lease_file=path,
    )
    (tmp_path / "root").mkdir()
    http = HttpServer(FileTree(tmp_path / "root"), routes=routes(view))
    await http.start("127.0.0.1", 0)
    server = Server(app, f"http://127.0.0.1:{http.port}", tmp_path)
    try:
        status, body, _ = await server.call("GET", "/api/v1/leases", token=None)
        assert status == 200 and body["authoritative"] is True
        assert [(lease["address"], lease["client"]) for lease in body["leases"]] == [
            ("127.0.0.100", "mac"),
            ("127.0.0.101", "id 01ff"),
        ]
        status, body, _ = await server.call("GET", "/api/v1/leases/127.0.0.100", token=None)
        assert status == 200 and body["hostname"] == "web1" and body["state"] == "bound"
        status, body, _ = await server.call("DELETE", "/api/v1/leases/127.0.0.100", token=None)
        assert status == 401
        status, body, _ = await server.call("DELETE", "/api/v1/leases/127.0.0.100")
        assert status == 204
        assert service.book.at(IPv4Address("127.0.0.100")) is None  # the server frees it
        status, body, _ = await server.call("DELETE", "/api/v1/leases/127.0.0.100")
        assert status == 404
        status, body, _ = await server.call("GET", "/api/v1/leases/127.0.0.100", token=None)
        assert status == 404
    finally:
        await http.close()
        await store.close()
    # Durable: the database no longer holds it.
    assert [str(lease.address) for lease in read_leases(path)] == ["127.0.0.101"]


async def test_several_workers_cannot_release(tmp_path: Path) -> None:
    path = tmp_path / "leases.sqlite3"
    store = SqliteLeaseStore(path)
    await store.open()
    await store.save(
        Lease(IPv4Address("127.0.0.100"), f"mac:{WEB1}", WEB1, LeaseState.BOUND, time.time() + 600)
    )
    await store.close()
    config = build({}, {"dhcp": False, "http": False, "tftp": False, "state-dir": str(tmp_path)})
    view = OperatorView(config=config, started=time.time(), token=TOKEN, lease_file=path)
    (tmp_path / "root").mkdir()
    http = HttpServer(FileTree(tmp_path / "root"), routes=routes(view))
    await http.start("127.0.0.1", 0)
    server = Server(App(config), f"http://127.0.0.1:{http.port}", tmp_path)
    try:
        status, body, _ = await server.call("GET", "/api/v1/leases", token=None)
        assert [lease["address"] for lease in body["leases"]] == ["127.0.0.100"]
        status, body, _ = await server.call("DELETE", "/api/v1/leases/127.0.0.100")
        assert status == 409 and "worker process" in body["message"]
    finally:
        await http.close()


# --- the OpenAPI document -------------------------------------------------------------------


async def test_the_openapi_document_is_valid_and_covers_every_route(server: Server) -> None:
    status, document, _ = await server.call("GET", "/api/v1/openapi.json", token=None)
    assert status == 200
    validate(document)  # raises if it is not a valid OpenAPI 3.1 document
    assert document["openapi"].startswith("3.1")
    view = server.app.view
    assert view is not None
    served = set()
    for route in routes(view):
        path = getattr(route, "path", "")
        method = getattr(route, "method", "")
        if method != "*" and path.startswith("/api/v1"):
            served.add((method.lower(), path))
    described = {(method, path) for path, ops in document["paths"].items() for method in ops}
    assert served, "the router has API routes"
    assert served <= described, served - described
    # The event stream is the web page's route; everything else described is served.
    assert described == served
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            writes = method in ("post", "put", "delete")
            assert (operation.get("security") == [{"bearerAuth": []}]) is writes, (method, path)
    stream = document["paths"]["/api/v1/events/stream"]["get"]["responses"]["200"]["content"]
    assert "text/event-stream" in stream


# --- the command line -----------------------------------------------------------------------


async def _netbootd(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "netbootd", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await process.communicate()
    return process.returncode or 0, out.decode(), err.decode()


async def test_status_and_machines_commands(server: Server) -> None:
    writer = server.app.journal_writer
    assert writer is not None
    now = time.time()
    writer.store.append(
        [
            _dhcp(now - 3, WEB1, "DISCOVER", "OFFER"),
            _fetch(now - 2, "vmlinuz", "not-found", "kernel"),
        ]
    )
    code, out, err = await _netbootd("status", "--server", server.base)
    assert code == 0, err
    assert "mode        off on lo 127.0.0.1" in out and "http on" in out and "counters" in out
    assert "2 machines (0 by the API)" in out

    code, out, err = await _netbootd("machines", "--server", server.base)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["NAME", "MAC", "ADDRESS", "PROFILE"]
    assert lines[1].startswith("web1") and "stalled at" in lines[1] and "vmlinuz" in lines[1]
    assert lines[-1] == "2 machines"

    code, out, err = await _netbootd("machines", "web1", "--server", server.base)
    assert code == 0, err
    assert "attempt 1:" in out and "vmlinuz" in out and "result=not-found" in out

    code, out, err = await _netbootd("machines", "--json", "--server", server.base)
    assert code == 0 and {m["name"] for m in json.loads(out)["machines"]} == {"web1", "db1"}

    code, out, err = await _netbootd("machines", "nosuch", "--server", server.base)
    assert code == 1 and "404" in err and out == ""


async def test_commands_say_when_the_server_cannot_be_reached() -> None:
    code, out, err = await _netbootd("status", "--server", f"http://127.0.0.1:{_free_port()}")
    assert code == 1 and out == ""
    assert len(err.strip().splitlines()) == 1 and "cannot reach netbootd" in err


async def test_the_default_server_comes_from_the_config(tmp_path: Path, server: Server) -> None:
    config = tmp_path / "netbootd.toml"
    config.write_text(f"http-port = {server.base.rsplit(':', 1)[1]}\n")
    code, out, err = await _netbootd("status", "--config", str(config))
    assert code == 0, err
    assert out.startswith("netbootd ")


# --- netbootd serve, authoritative, in a namespace of its own --------------------------------


def _spawn(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    with log.open("wb") as err:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=err, env=env)


def _in_namespace(pid: int, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["nsenter", f"--net=/proc/{pid}/ns/net", *argv],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("nsenter") is None,
    reason="a network namespace of its own needs root, unshare and nsenter",
)
async def test_serve_releases_a_lease_through_its_dhcp_service(tmp_path: Path) -> None:
    """``netbootd serve --api-token-file`` in authoritative mode on the loopback of a namespace
    of its own (its port 67 is no one else's): the lease the API releases is gone from the
    running server and from its database."""
    state, root = tmp_path / "state", tmp_path / "root"
    state.mkdir()
    root.mkdir()
    (tmp_path / "token").write_text(TOKEN)
    (tmp_path / "token").chmod(0o600)
    store = SqliteLeaseStore(state / "leases.sqlite3")
    await store.open()
    ends = time.time() + 3600
    for last, mac in ((100, WEB1), (101, NEW)):
        address = IPv4Address(f"127.0.0.{last}")
        await store.save(Lease(address, f"mac:{mac}", mac, LeaseState.BOUND, ends))
    await store.close()
    log = tmp_path / "stderr.log"
    argv = [
        "unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$@"', "sh",
        sys.executable, "-m", "netbootd", "serve", "--interface", "lo",
        "--dhcp-range", "127.0.0.100-127.0.0.200", "--no-tftp", "--http-port", "8080",
        "--root", str(root), "--state-dir", str(state),
        "--api-token-file", str(tmp_path / "token"),
    ]  # fmt: skip
    process = _spawn(argv, log)
    try:
        deadline = time.monotonic() + 30
        while "ready" not in log.read_text():
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            await asyncio.sleep(0.05)
        base = "http://127.0.0.1:8080/api/v1"
        got = _in_namespace(process.pid, "curl", "-s", f"{base}/leases")
        assert [lease["address"] for lease in json.loads(got.stdout)["leases"]] == [
            "127.0.0.100",
            "127.0.0.101",
        ]
        got = _in_namespace(
            process.pid, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
            "-X", "DELETE", "-H", f"Authorization: Bearer {TOKEN}", f"{base}/leases/127.0.0.100",
        )  # fmt: skip
        assert got.stdout == "204", got
        got = _in_namespace(process.pid, "curl", "-s", f"{base}/leases")
        assert [lease["address"] for lease in json.loads(got.stdout)["leases"]] == ["127.0.0.101"]
        got = _in_namespace(
            process.pid, sys.executable, "-m", "netbootd", "status",
            "--server", "http://127.0.0.1:8080",
        )  # fmt: skip
        assert got.returncode == 0, got.stderr
        assert "mode        authoritative on lo 127.0.0.1" in got.stdout
        assert "dhcp on, tftp off, http on" in got.stdout
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    assert [str(lease.address) for lease in read_leases(state / "leases.sqlite3")] == [
        "127.0.0.101"
    ]


async def test_a_failing_handler_answers_500_in_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> dict[str, dict[str, int]]:
        raise RuntimeError("counters gone")

    config = build({}, {"dhcp": False, "http": False, "tftp": False, "state-dir": str(tmp_path)})
    view = OperatorView(config=config, started=time.time(), counters=broken)
    (tmp_path / "root").mkdir()
    http = HttpServer(FileTree(tmp_path / "root"), routes=routes(view))
    await http.start("127.0.0.1", 0)
    server = Server(App(config), f"http://127.0.0.1:{http.port}", tmp_path)
    try:
        with caplog.at_level(logging.ERROR, logger="netbootd"):
            status, body, _ = await server.call("GET", "/api/v1/counters", token=None)
        assert status == 500 and body["status"] == 500 and "internal error" in body["message"]
        [record] = [r for r in caplog.records if "api-failed" in r.getMessage()]
        assert "counters gone" in record.getMessage() and "\n" not in record.getMessage()
        assert record.exc_info is None
        # The event stream, served by the web page's module, with no journal to read.
        status, body, _ = await server.call("GET", "/api/v1/events/stream", token=None)
        assert status == 503 and body["status"] == 503
        status, _, _ = await server.call("GET", "/api/v1/status", token=None)
        assert status == 200
    finally:
        await http.close()


def test_a_token_file_others_can_read_is_warned_of(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "root").mkdir()
    (tmp_path / "inventory").mkdir()
    (tmp_path / "token").write_text(f"  {TOKEN}\n")
    (tmp_path / "token").chmod(0o644)
    app = App(build({}, _config(tmp_path, _free_port(), True)))
    with caplog.at_level(logging.WARNING, logger="netbootd"):
        app.prepare()
    assert app.api_token == TOKEN
    assert any("api-token-file-readable" in r.getMessage() for r in caplog.records)
    (tmp_path / "token").unlink()
    with pytest.raises(Exception, match=r"api-token-file .*token: No such file"):
        App(build({}, _config(tmp_path, _free_port(), True))).prepare()
