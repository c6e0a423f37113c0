"""The composition root's own jobs: the inventory watch it drives, with inotify or polling."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from ipaddress import IPv4Interface
from pathlib import Path

import pytest
import watchfiles

from netbootd import app
from netbootd.app import App, watch_inventory
from netbootd.config import build
from netbootd.logs.events import parse_event
from netbootd.services.files import FileTree
from netbootd.services.machines import LiveInventory, ServerAddress
from netbootd.transport.netif import InterfaceInfo

SITE = """\
[profiles.web]
method = "ipxe"
kernel = "vmlinuz"
cmdline = "rev={rev}"

[machines.web1]
mac = "52:54:00:aa:bb:01"
profile = "web"
"""


def _events(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [parse_event(r.getMessage())[0] for r in caplog.records]


async def _until(condition: Callable[[], bool]) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("not within 5 s")


async def test_the_watch_reloads_a_good_edit_and_keeps_through_a_bad_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="netbootd")
    directory = tmp_path / "inventory"
    directory.mkdir()
    site = directory / "site.toml"
    site.write_text(SITE.format(rev=1))
    live = LiveInventory(directory, tmp_path / "state", ServerAddress("10.99.0.1", 80, 69))
    cmdline = lambda: live.machines.setup.inventory.profiles["web"].cmdline  # noqa: E731
    watch = asyncio.get_running_loop().create_task(watch_inventory(live, poll=0.01))
    try:
        site.write_text(SITE.format(rev=2) + "\n")
        await _until(lambda: cmdline() == "rev=2")
        assert "inventory-reloaded" in _events(caplog)

        site.write_text(SITE.format(rev=3).replace('profile = "web"', 'profile = "nope"'))
        await _until(lambda: "inventory-kept" in _events(caplog))
        assert "inventory-error" in _events(caplog)
        assert cmdline() == "rev=2"  # the last good inventory goes on serving

        # The boot-once file is watched too.
        live.installed.path.parent.mkdir(parents=True, exist_ok=True)
        site.write_text(SITE.format(rev=4))
        live.installed.path.write_text('{"installed": ["web1"]}\n')
        await _until(lambda: live.machines.installed == frozenset({"web1"}))
        assert cmdline() == "rev=4"
    finally:
        watch.cancel()
        with pytest.raises(asyncio.CancelledError):
            await watch


def test_a_change_is_loaded_once(tmp_path: Path) -> None:
    directory = tmp_path / "inventory"
    directory.mkdir()
    (directory / "site.toml").write_text(SITE.format(rev=1))
    live = LiveInventory(directory, tmp_path / "state", ServerAddress("10.99.0.1", 80, 69))
    assert live.load_if_changed() is None
    (directory / "more.toml").write_text('[profiles.disk]\nmethod = "local"\n')
    loaded = live.load_if_changed()
    assert loaded is not None and "disk" in loaded.setup.inventory.profiles
    assert live.load_if_changed() is None


def test_what_a_load_lets_pass_but_a_machine_would_stop_at_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A kernel the root does not hold, a hostname undescribed machines lack: a warning with
    file, line and key at the start and at each reload; serving goes on."""
    caplog.set_level(logging.INFO, logger="netbootd")
    directory, root = tmp_path / "inventory", tmp_path / "root"
    directory.mkdir()
    root.mkdir()
    site = directory / "site.toml"
    site.write_text(SITE.format(rev=1))
    address = ServerAddress("10.99.0.1", 80, 69)
    live = LiveInventory(directory, tmp_path / "state", address, FileTree(root))
    live.log_warnings()
    problems = [parse_event(r.getMessage())[1]["problem"] for r in caplog.records]
    assert problems == [
        f"site.toml:3: profiles.web.kernel: vmlinuz: no such file (it is looked for below the "
        f"root {root})"
    ]
    caplog.clear()
    (root / "vmlinuz").write_bytes(b"kernel")
    site.write_text(SITE.format(rev="{{ hostname }}") + '\n[default]\nprofile = "web"\n')
    loaded = live.load_if_changed()
    assert loaded is not None
    live.adopt(loaded)
    assert _events(caplog) == ["inventory-reloaded", "inventory-warning"]
    warning = parse_event(caplog.records[1].getMessage())[1]["problem"]
    assert warning.startswith(
        "site.toml:4: profiles.web.cmdline: hostname is empty for a machine the inventory "
        "does not describe, and the default gives this profile to such machines"
    )


@pytest.mark.parametrize(("mtu", "blksize"), [(1500, 1468), (9000, 8968), (65536, 65464)])
def test_the_default_tftp_block_fits_the_mtu_and_rfc_2348(
    tmp_path: Path, mtu: int, blksize: int
) -> None:
    server = App(build({}, {"interface": "lo", "root": tmp_path, "dhcp": False}))
    server.interface = InterfaceInfo("lo", IPv4Interface("127.0.0.1/8"), mtu)
    assert server._tftp_settings().max_blksize == blksize


@asynccontextmanager
async def _watching(live: LiveInventory, poll: float) -> AsyncIterator[asyncio.Task[None]]:
    watch = asyncio.get_running_loop().create_task(watch_inventory(live, poll=poll))
    try:
        yield watch
    finally:
        watch.cancel()
        with pytest.raises(asyncio.CancelledError):
            await watch


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LiveInventory]:
    directory = tmp_path / "inventory"
    directory.mkdir()
    (directory / "site.toml").write_text(SITE.format(rev=1))
    (tmp_path / "state").mkdir()
    yield LiveInventory(directory, tmp_path / "state", ServerAddress("10.99.0.1", 80, 69))


def _cmdline(live: LiveInventory) -> str:
    return live.machines.setup.inventory.profiles["web"].cmdline


async def test_inotify_wakes_the_watch(
    live: LiveInventory,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With polling an hour apart and the recheck a minute apart, only inotify can tell the
    watch of each change in time: an edit, a mark in the state directory, and a directory
    renamed over the inventory's (watched again where the path now leads)."""
    caplog.set_level(logging.INFO, logger="netbootd")
    monkeypatch.setattr(app, "INVENTORY_RECHECK", 60.0)
    loop = asyncio.get_running_loop()
    async with _watching(live, poll=3600):
        await asyncio.sleep(0.2)
        started = loop.time()
        (live.directory / "site.toml").write_text(SITE.format(rev=2))
        await _until(lambda: _cmdline(live) == "rev=2")
        assert loop.time() - started < 2

        (tmp_path / "state" / "leases.sqlite3").write_bytes(b"")  # not the watch's business
        live.installed.path.write_text('{"installed": ["web1"]}\n')
        await _until(lambda: live.machines.installed == frozenset({"web1"}))

        replacement = tmp_path / "next"
        replacement.mkdir()
        (replacement / "site.toml").write_text(SITE.format(rev=3))
        os.rename(live.directory, tmp_path / "previous")
        os.rename(replacement, live.directory)
        await _until(lambda: _cmdline(live) == "rev=3")
        await asyncio.sleep(0.3)
        (live.directory / "site.toml").write_text(SITE.format(rev=4))
        await _until(lambda: _cmdline(live) == "rev=4")
    events = _events(caplog)
    assert "inventory-polled" not in events
    assert events.count("inventory-reloaded") == 4


async def test_without_watchfiles_the_watch_polls(
    live: LiveInventory, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO, logger="netbootd")
    monkeypatch.setitem(sys.modules, "watchfiles", None)  # import watchfiles: ImportError
    async with _watching(live, poll=0.01):
        (live.directory / "site.toml").write_text(SITE.format(rev=2))
        await _until(lambda: _cmdline(live) == "rev=2")
    polled = [parse_event(r.getMessage()) for r in caplog.records]
    assert [fields for event, fields in polled if event == "inventory-polled"] == [
        {
            "directory": str(live.directory),
            "reason": "the watchfiles package is not installed",
            "every": "0.01s",
        }
    ]


async def test_a_watch_that_cannot_start_polls(
    live: LiveInventory, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As when inotify's limits are reached: awatch raises on its first step."""
    caplog.set_level(logging.INFO, logger="netbootd")

    async def refused(*_paths: object, **_options: object) -> AsyncIterator[set[object]]:
        raise OSError(28, "inotify watch limit reached")
        yield set()

    monkeypatch.setattr(watchfiles, "awatch", refused)
    async with _watching(live, poll=0.01):
        (live.directory / "site.toml").write_text(SITE.format(rev=2) + "\n")
        await _until(lambda: _cmdline(live) == "rev=2")
        (live.directory / "site.toml").write_text(SITE.format(rev=3))
        await _until(lambda: _cmdline(live) == "rev=3")
    lines = [r for r in caplog.records if parse_event(r.getMessage())[0] == "inventory-polled"]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING
    assert parse_event(lines[0].getMessage())[1]["reason"] == (
        "OSError: [Errno 28] inotify watch limit reached"
    )


async def test_the_watch_stops_at_once(
    live: LiveInventory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancelled at any moment: waiting in watchfiles' thread, just as a batch of changes or a
    recheck comes back from it, while it looks, or while it starts again on a state directory
    that came or went."""
    monkeypatch.setattr(app, "INVENTORY_RECHECK", 0.05)
    loop = asyncio.get_running_loop()
    site = live.directory / "site.toml"
    state = live.installed.path.parent
    for rev in range(30):
        watch = loop.create_task(watch_inventory(live))
        site.write_text(SITE.format(rev=rev))
        await asyncio.sleep(random.uniform(0, 0.1))
        if state.exists():
            state.rmdir()
        else:
            state.mkdir()
        await asyncio.sleep(random.uniform(0, 0.1))
        started = loop.time()
        watch.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(watch), 1)
        assert loop.time() - started < 0.5, f"cancel {rev} took {loop.time() - started:.2f} s"


def test_a_boot_file_where_the_operators_view_answers_is_warned_of(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "root"
    (root / "metrics").mkdir(parents=True)
    (root / "vmlinuz").write_bytes(b"kernel")
    server = App(build({}, {"root": root, "dhcp": False}))
    with caplog.at_level(logging.WARNING, logger="netbootd"):
        server._prepare_root()
        server._prepare_boot_files()
    hidden = [r.getMessage() for r in caplog.records if "boot-file-hidden" in r.getMessage()]
    assert len(hidden) == 1 and f"path={root / 'metrics'}" in hidden[0]
    caplog.clear()
    quiet = App(build({}, {"root": root, "dhcp": False, "http": False}))
    with caplog.at_level(logging.WARNING, logger="netbootd"):
        quiet._prepare_root()
        quiet._prepare_boot_files()
    assert not [r for r in caplog.records if "boot-file-hidden" in r.getMessage()]
