"""The render workers: results and errors handed back, a bounded wait, no join at close."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from netbootd.transport.renders import RenderBusy, RenderPool, renders


async def test_results_and_errors_come_back() -> None:
    pool = RenderPool()
    try:
        assert await pool.run(lambda a, b: a + b, 2, 3) == 5
        with pytest.raises(ZeroDivisionError):
            await pool.run(lambda: 1 / 0)
        names = await asyncio.gather(
            *(pool.run(lambda: threading.current_thread().name) for _ in range(6))
        )
        assert set(names) <= {"netbootd-render-0", "netbootd-render-1"}
    finally:
        pool.close()


async def test_a_full_pool_refuses_after_its_wait_and_recovers() -> None:
    pool = RenderPool(workers=2, wait=0.2)
    release = threading.Event()
    try:
        held = [asyncio.ensure_future(pool.run(release.wait, 10)) for _ in range(2)]
        await asyncio.sleep(0.05)
        started = time.monotonic()
        with pytest.raises(RenderBusy, match=r"all 2 render workers stayed busy for 0\.2 s"):
            await pool.run(lambda: "late")
        assert 0.15 < time.monotonic() - started < 2
        assert pool.counters["busy"] == 1
        release.set()
        assert await asyncio.gather(*held) == [True, True]
        assert await pool.run(lambda: "again") == "again"
    finally:
        release.set()
        pool.close()


async def test_a_request_given_up_keeps_its_worker_until_the_render_ends() -> None:
    pool = RenderPool(workers=1, wait=0.1)
    release = threading.Event()
    try:
        waiting = asyncio.ensure_future(pool.run(release.wait, 10))
        await asyncio.sleep(0.05)
        waiting.cancel()
        with pytest.raises(RenderBusy):  # the render still runs, so its worker is still taken
            await pool.run(lambda: "late")
        release.set()
        await asyncio.sleep(0.05)
        assert await pool.run(lambda: "free") == "free"
    finally:
        release.set()
        pool.close()


async def test_close_never_waits_for_a_render() -> None:
    pool = RenderPool(workers=1)
    release = threading.Event()
    running = asyncio.ensure_future(pool.run(release.wait, 10))
    await asyncio.sleep(0.05)
    threads = [t for t in threading.enumerate() if t.name.startswith("netbootd-render-")]
    assert threads and all(t.daemon for t in threads)  # never joined at exit
    started = time.monotonic()
    pool.close()
    # The request under way is answered at once, so nothing holds up a server's close.
    with pytest.raises(RenderBusy, match="the server is stopping"):
        await running
    assert time.monotonic() - started < 0.1
    with pytest.raises(RenderBusy, match="the server is stopping"):
        await pool.run(lambda: "late")
    release.set()
    await asyncio.sleep(0.05)  # the render ends in its own time; nobody waits for it


def test_only_a_rendering_source_renders() -> None:
    class Tree:
        def open(self, name: str, peer: str | None = None) -> object: ...

    class Rendered(Tree):
        def renders(self, name: str, peer: str | None = None) -> bool:
            return name.startswith("m/")

    assert not renders(Tree(), "m/x", None)  # type: ignore[arg-type]
    assert renders(Rendered(), "m/x", None)  # type: ignore[arg-type]
    assert not renders(Rendered(), "vmlinuz", None)  # type: ignore[arg-type]
