"""The composition root's own jobs: the inventory watch it drives."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from ipaddress import IPv4Interface
from pathlib import Path

import pytest

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
    app = App(build({}, {"interface": "lo", "root": tmp_path, "dhcp": False}))
    app.interface = InterfaceInfo("lo", IPv4Interface("127.0.0.1/8"), mtu)
    assert app._tftp_settings().max_blksize == blksize
