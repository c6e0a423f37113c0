"""The render workers: where files rendered per machine are made, apart from file I/O.

A template is an operator's code. Rendered in the threads that open files, send them and reload
the inventory, a few requests for one that spins would take every one of those threads, and HTTP
and TFTP would stop. Renders run here instead, in a few threads of their own: each render stops
itself at its limits (:class:`~netbootd.boot.render.RenderLimits`), and while every worker is
busy a new render waits a moment for one, then is refused with :class:`RenderBusy` rather than
queueing without end. The threads are daemon threads and are never joined, so stopping the
server never waits for a render.

This module owns threads and knows nothing of templates: it runs what it is given.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, Protocol, TypeVar, runtime_checkable

from netbootd.boot.render import RenderLimits
from netbootd.services.files import FileLookupError, FileSource

__all__ = [
    "RENDER_PAUSE",
    "RENDER_WAIT",
    "RENDER_WORKERS",
    "RenderBusy",
    "RenderPool",
    "Rendering",
    "render_limits",
    "renders",
]

T = TypeVar("T")

# Two renders at once is plenty for files that take well under a millisecond each; a client
# whose render is refused asks again.
RENDER_WORKERS = 2
# How long a render waits for a free worker before it is refused.
RENDER_WAIT = 0.5
# How long a render that runs on sleeps at each look at its clock (seconds). A thread that
# computes holds the interpreter lock, and the event loop would wait for it at every turn; asleep
# it holds nothing, so the threads that serve files come first, and only a render past its first
# moments (RENDER_SHARE_AFTER), which no ordinary template reaches, is slowed.
RENDER_PAUSE = 0.001


def render_limits() -> RenderLimits:
    """The limits of a render by this server: the default time and size, the monotonic clock,
    and a pause that lets the other threads run."""
    return RenderLimits(time.monotonic, pause=functools.partial(time.sleep, RENDER_PAUSE))


class RenderBusy(FileLookupError):  # noqa: N818 - the vocabulary of FileLookupError
    """Every render worker stayed busy: the file cannot be made now (a server error)."""


@runtime_checkable
class Rendering(Protocol):
    """A file source some of whose names are rendered: it says which, without rendering."""

    def renders(self, name: str, peer: str | None = None) -> bool: ...


def renders(source: FileSource, name: str, peer: str | None) -> bool:
    """Whether opening ``name`` from ``source`` renders a template."""
    return isinstance(source, Rendering) and source.renders(name, peer)


_Job = tuple[Callable[[], Any], asyncio.AbstractEventLoop, "asyncio.Future[Any]"]


class RenderPool:
    """A few daemon threads that run renders, with a bounded wait for a free one."""

    def __init__(self, workers: int = RENDER_WORKERS, wait: float = RENDER_WAIT) -> None:
        if workers < 1 or wait < 0:
            raise ValueError("render workers must be at least 1 and the wait not negative")
        self.workers = workers
        self.wait = wait
        self.counters: Counter[str] = Counter()
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._free: asyncio.Semaphore | None = None
        self._waiting: set[asyncio.Future[Any]] = set()
        self._closed = False

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        """``function(*args)`` in a render worker; :class:`RenderBusy` if none is free soon."""
        if self._closed:
            raise RenderBusy("the server is stopping")
        if self._free is None:
            self._free = asyncio.Semaphore(self.workers)
        free = self._free
        try:
            await asyncio.wait_for(free.acquire(), self.wait)
        except TimeoutError:
            self.counters["busy"] += 1
            raise RenderBusy(
                f"all {self.workers} render workers stayed busy for {self.wait:g} s"
            ) from None
        if self._closed:
            free.release()
            raise RenderBusy("the server is stopping")
        self._start_threads()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        # An error for a request given up meanwhile is nobody's to read: mark it read.
        future.add_done_callback(lambda done: done.cancelled() or done.exception())
        future.add_done_callback(self._waiting.discard)
        self._waiting.add(future)
        self._jobs.put((lambda: function(*args), loop, future))
        self.counters["rendered"] += 1
        # The worker stays taken until the render ends, even if this request is given up.
        return await asyncio.shield(future)

    def _start_threads(self) -> None:
        while len(self._threads) < self.workers:
            thread = threading.Thread(
                target=self._work, name=f"netbootd-render-{len(self._threads)}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            call, loop, future = job
            try:
                outcome: tuple[Any, BaseException | None] = (call(), None)
            except BaseException as exc:  # handed to the request that asked
                outcome = (None, exc)
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
                loop.call_soon_threadsafe(self._finish, future, *outcome)

    def _finish(
        self, future: asyncio.Future[Any], result: Any, error: BaseException | None
    ) -> None:
        assert self._free is not None
        self._free.release()
        if future.done():  # answered already: the server stopped meanwhile
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def close(self) -> None:
        """Take no more renders, answer those under way with :class:`RenderBusy` at once (a
        server that is stopping does not wait for them; each stops at its own limit), and let
        the workers end."""
        self._closed = True
        for future in list(self._waiting):
            if not future.done():
                future.set_exception(RenderBusy("the server is stopping"))
        for _ in self._threads:
            self._jobs.put(None)
        self._threads.clear()
