"""The web page in a real headless Chromium, during a boot.

A real HTTP server on loopback with the operator's routes, a real journal (the services'
:class:`Journal`, the writer thread, the SQLite file) and lease database; Debian's chromium
loads ``/``, and while the page is open a machine boots, step by step: its PXE firmware's DHCP,
TFTP of undionly.kpxe, iPXE's own DHCP, then boot.ipxe, the kernel and the initrd fetched over
HTTP by curl from the machine's own loopback address, which the HTTP server journals. The
machine must appear on the page by the event stream (the page is never reloaded), its timeline
fill in up to "done", and a screenshot is kept.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from netbootd.api.routes import routes
from netbootd.api.view import OperatorView
from netbootd.boot.journal import Role, Service
from netbootd.boot.leases import Lease, LeaseState
from netbootd.services.files import FileTree
from netbootd.services.journal import Journal
from netbootd.store.journal import JournalStore
from netbootd.store.leases import SqliteLeaseStore
from netbootd.transport.http import HttpServer
from netbootd.transport.journal import JournalWriter
from tests.helpers.browser import CHROMIUM, Browser, is_png
from tests.helpers.config import parse

REPO = Path(__file__).resolve().parents[2]
SCREENSHOT = REPO / "build" / "screenshots" / "web-page.png"
OVERVIEW_SCREENSHOT = REPO / "build" / "screenshots" / "web-overview.png"

MAC = "52:54:00:6e:b0:01"
ADDRESS = "127.0.0.51"  # on loopback: curl fetches from it, and the journal ties it to the MAC
NAME = "rack4-node17"
HOSTILE_MAC = "52:54:00:6e:b0:66"
HOSTILE = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>'
KERNEL_SIZE = 3 * 1024 * 1024 + 512 * 1024  # 3.5 MiB
INITRD_SIZE = 2 * 1024 * 1024  # 2.0 MiB


@dataclass
class Site:
    http: HttpServer
    journal: Journal
    writer: JournalWriter
    leases: SqliteLeaseStore
    root: Path
    url: str


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    root = tmp_path / "root"
    root.mkdir()
    (root / "boot.ipxe").write_text("#!ipxe\nkernel vmlinuz\ninitrd initrd.img\nboot\n")
    (root / "vmlinuz").write_bytes(b"k" * KERNEL_SIZE)
    (root / "initrd.img").write_bytes(b"i" * INITRD_SIZE)
    state = tmp_path / "state"
    config = parse("--no-dhcp", "--state-dir", str(state), "--root", str(root))
    journal = Journal()
    writer = JournalWriter(journal, JournalStore(state / "journal.sqlite3"), interval=0.1)
    await writer.start()
    leases = SqliteLeaseStore(state / "leases.sqlite3")
    await leases.open()
    view = OperatorView(
        config=config,
        started=time.time(),
        journal=writer.store,
        lease_file=state / "leases.sqlite3",
    )
    http = HttpServer(FileTree(root, {}), routes=routes(view), journal=journal)
    await http.start("127.0.0.1", 0)
    try:
        yield Site(http, journal, writer, leases, root, f"http://127.0.0.1:{http.port}")
    finally:
        view.stopping.set()
        await http.close()
        await leases.close()
        await writer.close()


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[Browser]:
    chromium = Browser(tmp_path / "chromium-profile")
    try:
        await chromium.start()
        yield chromium
    finally:
        await chromium.close()
        assert not chromium.profile.exists()


def dhcp(journal: Journal, mac: str, kind: str, decision: str, **fields: str) -> None:
    """A DHCP transaction as the DHCP service tells the journal of it."""
    journal.dhcp(
        (
            time.time(), mac, kind, decision,
            fields.get("address", ""), fields.get("file", ""), fields.get("why", ""),
            fields.get("reason", ""), fields.get("client", "pxe"), "x86 BIOS", 67, "",
            fields.get("machine", ""),
        )
    )  # fmt: skip


async def fetch(site: Site, name: str) -> None:
    """``name`` fetched over HTTP by curl from the machine's address; the HTTP server tells
    the journal, which ties the address to the machine by its DHCP."""
    proc = await asyncio.create_subprocess_exec(
        "curl", "-s", "-S", "--max-time", "10", "-o", "/dev/null", "--interface", ADDRESS,
        "-w", "%{http_code} %{size_download}", f"{site.url}/{name}",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 0, err
    status, sent = out.decode().split()
    assert status == "200" and int(sent) == (site.root / name).stat().st_size


def stage(step: str, status: str = "reached") -> str:
    return f"document.querySelector('#timeline [data-step={step}][data-status={status}]') !== null"


def stage_text(step: str) -> str:
    return f"document.querySelector('#timeline [data-step={step}]').innerText"


@pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason="chromium is not installed")
@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_a_boot_fills_the_page_live(site: Site, browser: Browser, tmp_path: Path) -> None:
    began = time.monotonic()
    await browser.navigate(f"{site.url}/")
    await browser.wait_for("document.getElementById('live').textContent === 'live'")
    assert await browser.evaluate("document.getElementById('machines-empty') !== null")
    # Set once: a reload would lose it.
    await browser.evaluate("window.__loaded = 'once'")

    # The firmware's PXE: DISCOVER, OFFER, REQUEST, ACK (and a lease written).
    dhcp(site.journal, MAC, "DISCOVER", "OFFER", address=ADDRESS, file="undionly.kpxe",
         machine=NAME)  # fmt: skip
    await asyncio.sleep(0.3)
    dhcp(site.journal, MAC, "REQUEST", "ACK", address=ADDRESS, file="undionly.kpxe",
         machine=NAME)  # fmt: skip
    await site.leases.save(
        Lease(IPv4Address(ADDRESS), f"01:{MAC}", MAC, LeaseState.BOUND, time.time() + 3600, NAME)
    )
    # And a machine whose name is markup: it must show as text, and run nothing.
    dhcp(site.journal, HOSTILE_MAC, "DISCOVER", "ignored", reason="no pool", machine=HOSTILE)

    row = f"document.querySelector('#machines tr[data-mac=\"{MAC}\"]')"
    await browser.wait_for(f"{row} && {row}.innerText.includes('{NAME}')")
    await browser.wait_for(f"document.querySelectorAll('#feed li[data-mac=\"{MAC}\"]').length >= 2")
    await browser.wait_for(f"document.querySelector('#leases').innerText.includes('{ADDRESS}')")
    hostile_row = f"document.querySelector('#machines tr[data-mac=\"{HOSTILE_MAC}\"]')"
    await browser.wait_for(f"{hostile_row} && {hostile_row}.innerText.includes('<script>')")
    assert await browser.evaluate("window.__pwned === undefined")
    assert await browser.evaluate(f"{hostile_row}.querySelector('img, script') === null")
    assert await browser.evaluate("window.__loaded") == "once", "the page was reloaded"
    OVERVIEW_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    OVERVIEW_SCREENSHOT.write_bytes(await browser.screenshot())

    # Open the machine's timeline from its row.
    await browser.evaluate(f"{row}.querySelector('a').click()")
    await browser.wait_for(f"location.pathname === '/ui/machines/{MAC}'")
    await browser.wait_for("document.getElementById('live').textContent === 'live'")
    await browser.wait_for(stage("dhcp"))
    assert "acknowledged " + ADDRESS in await browser.evaluate(stage_text("dhcp"))
    assert await browser.evaluate(stage("loader", "waiting"))
    await browser.evaluate("window.__loaded = 'timeline'")

    # TFTP of the loader, then iPXE's own DHCP with its script's URL.
    site.journal.transfer(
        Service.TFTP, ADDRESS,
        {"file": "undionly.kpxe", "role": Role.LOADER.value, "result": "ok",
         "bytes": "71234", "size": "71234", "seconds": "0.180", "block": "140"},
    )  # fmt: skip
    await browser.wait_for(stage("loader"))
    assert "69.6 KiB" in await browser.evaluate(stage_text("loader"))
    script = f"{site.url}/boot.ipxe"
    dhcp(site.journal, MAC, "DISCOVER", "OFFER", address=ADDRESS, file=script, client="ipxe")
    dhcp(site.journal, MAC, "REQUEST", "ACK", address=ADDRESS, file=script, client="ipxe")
    await asyncio.sleep(0.3)
    await fetch(site, "boot.ipxe")
    await browser.wait_for(stage("config"))
    assert await browser.evaluate(stage("kernel", "waiting"))
    await fetch(site, "vmlinuz")
    await browser.wait_for(stage("kernel"))
    kernel = await browser.evaluate(stage_text("kernel"))
    assert "vmlinuz" in kernel and "3.5 MiB" in kernel
    assert await browser.evaluate("document.querySelector('.verdict .badge').textContent") == (
        "in-progress"
    )
    await fetch(site, "initrd.img")
    await browser.wait_for(stage("initrd"))
    await browser.wait_for(stage("done"))
    initrd = await browser.evaluate(stage_text("initrd"))
    assert "initrd.img" in initrd and "2.0 MiB" in initrd and "+" in initrd
    await browser.wait_for("document.querySelector('.verdict .badge').textContent === 'booted'")
    assert await browser.evaluate("window.__loaded") == "timeline", "the page was reloaded"
    # Its feed has this machine's events only, newest first.
    feed = await browser.evaluate(
        "Array.from(document.querySelectorAll('#feed li')).map(li => li.dataset.mac)"
    )
    assert feed and set(feed) == {MAC}
    assert "initrd.img" in await browser.evaluate("document.querySelector('#feed li').innerText")

    png = await browser.screenshot()
    (tmp_path / "web-page.png").write_bytes(png)
    assert is_png(png) == (1280, 800)
    assert len(png) > 20_000  # a drawn page, not a blank one
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(tmp_path / "web-page.png", SCREENSHOT)
    assert not [line for line in browser.console if "Error" in line], browser.console
    assert time.monotonic() - began < 30
