"""The boot journal's writer: the events the services gathered, stored once a second.

Every :data:`FLUSH_INTERVAL` seconds the writer takes what :class:`~netbootd.services.journal.
Journal` gathered and hands it to a thread of its own, which ties each transfer to its machine
and appends the batch to the journal's database in one transaction. The services never wait on
the disk: a DHCP answer costs the journal one tuple. The first process (``prunes``) also drops
what is past the journal's bounds, every :data:`PRUNE_INTERVAL` seconds. Observers see each
batch as it is taken, on the event loop.

A database that cannot be written is one warning a minute and a count, never a stop: the
journal is for the operator's eyes, and the boots go on without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from netbootd.boot.journal import BootEvent
from netbootd.logs.events import format_event
from netbootd.services.dhcp.limits import Throttle
from netbootd.services.journal import DhcpRecord, Journal, RowMaker
from netbootd.store.journal import JournalError, JournalStore
from netbootd.transport.netif import neighbours

log = logging.getLogger("netbootd.journal")

# Seconds between two batches. Each commit writes every index page its batch touched, and a busy
# DHCP server's MACs land all over the index: fewer, larger batches cost less an event.
FLUSH_INTERVAL = 1.0
PRUNE_INTERVAL = 60.0
# How far back a DHCP event is taken to say who has an address: a lease's usual length.
ADDRESS_MEMORY = 3600.0


class JournalWriter:
    """Stores ``journal``'s events in ``store``, from a thread of its own."""

    def __init__(
        self,
        journal: Journal,
        store: JournalStore,
        *,
        prunes: bool = True,
        interval: float = FLUSH_INTERVAL,
        neighbour_table: Callable[[], dict[str, str]] = neighbours,
    ) -> None:
        self.journal = journal
        self.store = store
        self.prunes = prunes
        self.interval = interval
        self._neighbour_table = neighbour_table
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="journal")
        self._task: asyncio.Task[None] | None = None
        self._next_prune = 0.0
        self._failures = Throttle()
        self._rows = RowMaker()
        self.written = 0
        self.failed = 0  # events lost to a database that could not be written
        self.pruned = 0
        # Called with each batch taken, on the event loop, before it is stored: the metrics'
        # transfer rates are read from the events there, and cost the transfers nothing.
        self.observers: list[Callable[[list[BootEvent]], None]] = []

    async def start(self) -> None:
        """Open the database (raise JournalError) and start writing."""
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._thread, self.store.open)
        except JournalError as exc:
            if not self.prunes:
                raise  # the first process has opened it, or failed to
            # The journal is for the operator's eyes: a damaged one is set aside, not a reason
            # for the boots to stop.
            aside = self.store.set_aside(f"damaged-{int(time.time())}")
            log.warning(
                format_event(
                    "journal-set-aside", error=str(exc), moved_to=str(aside), effect="a new one"
                )
            )
            await loop.run_in_executor(self._thread, self.store.open)
        self._task = loop.create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.flush()

    async def flush(self) -> None:
        """Store what gathered since the last flush (and prune, when due)."""
        dhcp, other = self.journal.take_raw()
        if other:
            for observe in self.observers:
                observe(other)
        prune = self.prunes and time.monotonic() >= self._next_prune
        if not dhcp and not other and not prune:
            return
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._thread, self._write, dhcp, other, prune)

    def _write(self, dhcp: list[DhcpRecord], other: list[BootEvent], prune: bool) -> None:
        """In the writer's thread: the events made into rows there, off the event loop's."""
        events = len(dhcp) + len(other)
        try:
            if events:
                self.store.append_rows(self._rows.rows(dhcp, other, self._lookup()))
                self.written += events
            if prune:
                self._next_prune = time.monotonic() + PRUNE_INTERVAL
                self.pruned += self.store.prune(time.time())
        except JournalError as exc:
            self.failed += events
            count = self._failures.event(time.monotonic())
            if count is not None:
                log.warning(
                    format_event(
                        "journal-write-failed",
                        error=str(exc),
                        times=count,
                        effect="these events are lost; boots go on",
                    )
                )

    def _lookup(self) -> Callable[[str], str | None]:
        """Who has an address: the journal's latest DHCP event naming it, else the kernel's
        neighbour table (read once a batch, and only if needed)."""
        table: dict[str, str] | None = None
        since = time.time() - ADDRESS_MEMORY

        def lookup(address: str) -> str | None:
            nonlocal table
            mac = self.store.mac_for(address, since)
            if mac:
                return mac
            if table is None:
                table = self._neighbour_table()
            return table.get(address)

        return lookup

    async def close(self) -> None:
        """Stop, store what is left, and close the database."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
            with contextlib.suppress(Exception):
                await self.flush()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._thread, self.store.close)
        self._thread.shutdown(wait=True)
