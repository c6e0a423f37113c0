"""The inventory of a running server on loopback: rendered files, reload, refusal, boot-once."""

from __future__ import annotations

import asyncio
import logging
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import ClientSession

from netbootd.app import App
from netbootd.config import ConfigError, build
from netbootd.logs.events import parse_event

MAC = "52:54:00:aa:bb:01"
SCRIPT = "/m/52-54-00-aa-bb-01/boot.ipxe"

SITE = """\
[profiles.web]
method = "ipxe"
kernel = "vmlinuz"
cmdline = "role={{ labels.role }} rev=1"

[profiles.installer]
method = "ipxe"
kernel = "installer/linux"
cmdline = "auto"

[profiles.disk]
method = "local"

[machines.web1]
mac = "52:54:00:aa:bb:01"
labels = { role = "web" }
profile = "web"
"""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _config(tmp_path: Path, port: int) -> dict[str, object]:
    return {
        "interface": "lo",
        "dhcp": False,
        "tftp": False,
        "root": str(tmp_path / "root"),
        "inventory": str(tmp_path / "inventory"),
        "state-dir": str(tmp_path / "state"),
        "http-port": port,
    }


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[tuple[App, str, Path]]:
    (tmp_path / "root").mkdir()
    inventory = tmp_path / "inventory"
    inventory.mkdir()
    (inventory / "site.toml").write_text(SITE)
    port = _free_port()
    app = App(build({}, _config(tmp_path, port)))
    app.prepare()
    await app.start()
    try:
        yield app, f"http://127.0.0.1:{port}", inventory / "site.toml"
    finally:
        await app.stop()


async def _get(url: str) -> tuple[int, str]:
    async with ClientSession() as session, session.get(url) as response:
        return response.status, await response.text()


async def _until(predicate_url: str, wanted: str) -> str:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    text = ""
    while loop.time() < deadline:
        _, text = await _get(predicate_url)
        if wanted in text:
            return text
        await asyncio.sleep(0.2)
    raise AssertionError(f"{wanted!r} never served; last: {text!r}")


async def test_edit_reload_and_refusal(
    running: tuple[App, str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    app, base, site = running
    status, script = await _get(base + SCRIPT)
    assert status == 200 and "kernel http://127.0.0.1:" in script and "role=web rev=1" in script

    site.write_text(SITE.replace("rev=1", "rev=2"))
    await _until(base + SCRIPT, "rev=2")

    with caplog.at_level(logging.WARNING, logger="netbootd"):
        site.write_text(
            SITE.replace("rev=1", "rev=3").replace('profile = "web"', 'profile = "wbe"')
        )
        await asyncio.sleep(2.5)  # more than one look at the directory
    _, script = await _get(base + SCRIPT)
    assert "rev=2" in script  # the last good inventory goes on serving
    events = [parse_event(r.getMessage()) for r in caplog.records]
    errors = [fields["problem"] for event, fields in events if event == "inventory-error"]
    assert errors == [
        "site.toml:17: machines.web1.profile: no profile 'wbe' (profiles: web, installer, disk)"
    ]
    assert any(event == "inventory-kept" for event, _ in events)

    site.write_text(SITE.replace("rev=1", "rev=4"))  # fixed again
    await _until(base + SCRIPT, "rev=4")
    assert app.machines is not None and len(app.machines.setup.inventory.machines) == 1


async def test_boot_once_callback(running: tuple[App, str, Path]) -> None:
    _, base, site = running
    site.write_text(SITE.replace('profile = "web"', 'profile = "disk"\nboot-once = "installer"'))
    assert "profile installer" in await _until(base + SCRIPT, "profile installer")
    async with ClientSession() as session:
        async with session.post(base + "/m/52-54-00-aa-bb-01/installed") as response:
            assert response.status == 200
            assert (await response.text()).startswith("web1: installed")
        async with session.post(base + "/m/52-54-00-aa-bb-99/installed") as response:
            assert response.status == 404
        async with session.post(base + "/m/52:54:00:AA:BB:01/installed") as response:
            assert response.status == 200  # colons, upper case: the same machine
    _, script = await _get(base + SCRIPT)
    assert "profile disk" in script and "sanboot" in script


def test_bad_inventory_stops_the_start_with_every_problem(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    inventory = tmp_path / "inventory"
    inventory.mkdir()
    (inventory / "site.toml").write_text(
        SITE.replace('profile = "web"', 'profile = "nope"').replace('kernel = "vmlinuz"\n', "")
    )
    app = App(build({}, _config(tmp_path, _free_port())))
    with pytest.raises(ConfigError) as raised:
        app.prepare()
    assert str(raised.value).splitlines() == [
        f"inventory {inventory}:",
        "site.toml:2: profiles.web.method: method ipxe needs a kernel or a template",
        "site.toml:16: machines.web1.profile: no profile 'nope' (profiles: web, installer, disk)",
    ]


def _explain(tmp_path: Path, *client: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "netbootd", "explain", "--interface", "lo"]
    argv += ["--dhcp-range", "127.0.0.100-127.0.0.200", "--state-dir", str(tmp_path / "state")]
    argv += ["--root", str(tmp_path / "root"), "--inventory", str(tmp_path / "inventory")]
    return subprocess.run([*argv, *client], capture_output=True, text=True, timeout=60, check=False)


def test_explain_without_any_network(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "vmlinuz").write_bytes(b"kernel")
    (tmp_path / "inventory").mkdir()
    (tmp_path / "inventory" / "site.toml").write_text(SITE)
    result = _explain(tmp_path, "--mac", MAC, "--arch", "7")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "  machine web1 (site.toml:14)\n" in out
    assert "  why: profile web named by machine web1\n" in out
    assert "  67 bootfile: snponly.efi\n" in out  # UEFI firmware gets iPXE first
    assert "then m/52-54-00-aa-bb-01/boot.ipxe (once iPXE runs and asks again)\n" in out
    assert "  kernel http://127.0.0.1/vmlinuz role=web rev=1\n" in out
    assert not (tmp_path / "state" / "leases.sqlite3").exists()  # nothing written

    ipxe = _explain(tmp_path, "--mac", MAC, "--arch", "7", "--user-class", "iPXE")
    assert "  67 bootfile: http://127.0.0.1/m/52-54-00-aa-bb-01/boot.ipxe\n" in ipxe.stdout

    bad = _explain(tmp_path, "--mac", "52:54:00:zz")
    assert bad.returncode == 2
    assert "--mac 52:54:00:zz: not a MAC address" in bad.stderr


def test_installed_command(tmp_path: Path) -> None:
    """As the README writes it: the inventory and the state directory, no network flags."""
    (tmp_path / "inventory").mkdir()
    once = SITE.replace('profile = "web"\n', 'profile = "web"\nboot-once = "installer"\n')
    (tmp_path / "inventory" / "site.toml").write_text(once)
    argv = [sys.executable, "-m", "netbootd", "installed"]
    argv += ["--inventory", str(tmp_path / "inventory"), "--state-dir", str(tmp_path / "state")]

    def run(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*argv, *extra], capture_output=True, text=True, timeout=60, check=False
        )

    marks = tmp_path / "state" / "installed.json"
    done = run("--mac", MAC.upper())
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == (
        "web1 is installed: from its next boot on it boots its profile web instead of installer\n"
    )
    assert '"web1"' in marks.read_text()
    again = run("--mac", MAC, "--again")
    assert (again.returncode, again.stdout) == (
        0,
        "web1 boots its boot-once profile installer again from its next boot on\n",
    )
    assert '"web1"' not in marks.read_text()
    unknown = run("--mac", "52:54:00:00:00:00")
    assert unknown.returncode == 1
    assert "no machine with MAC 52:54:00:00:00:00" in unknown.stderr


def test_templates_are_checked_at_load(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    inventory = tmp_path / "inventory"
    (inventory / "t").mkdir(parents=True)
    (inventory / "t" / "broken.ipxe").write_text("#!ipxe\n{% if %}\n")
    (inventory / "t" / "local.ipxe").write_text("#!ipxe\nexit\n")
    (inventory / "site.toml").write_text(
        '[profiles.a]\nmethod = "ipxe"\ntemplate = "t/broken.ipxe"\n'
        '[profiles.b]\nmethod = "local"\ntemplate = "t/local.ipxe"\n'
        '[profiles.c]\nmethod = "ipxe"\nkernel = "k"\ncmdline = "{{ oops"\n'
    )
    app = App(build({}, _config(tmp_path, _free_port())))
    with pytest.raises(ConfigError) as raised:
        app.prepare()
    lines = str(raised.value).splitlines()[1:]
    assert lines[0].startswith("t/broken.ipxe:2: profiles.a.template: ")
    assert lines[1].startswith("site.toml:6: profiles.b.template: method local uses its built-in")
    assert lines[2].startswith("site.toml:10: profiles.c.cmdline: cmdline:1: ")
