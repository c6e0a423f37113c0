"""Prometheus metrics at ``GET /metrics``, read from the running server at each scrape.

Nothing here is on a hot path: the services count in their own ``Counter``s and the DHCP edge
in a list of bucket counts, as they always do, and :class:`ServerCollector` reads them when
Prometheus asks. Its registry is its own, never prometheus-client's global one, so nothing
else registered in the process (a library's, a test's) leaks into the page. With DHCP workers,
each one's counts arrive in its latest report (about a second old) and are added to worker
0's own.

What needs the journal's database (boots by verdict, events stored) is read in a thread, at
most once every :data:`JOURNAL_CACHE` seconds whatever the scrape rate, so a scrape storm
cannot hammer SQLite or hold up the event loop. This module never imports the transport: the
view's callables are all it sees of the server.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from netbootd.api.view import OperatorView
from netbootd.boot.journal import BootEvent
from netbootd.boot.verdict import State, machine_verdicts
from netbootd.services.metrics import Histogram, PoolUse, merge_counters, merge_pools
from netbootd.store.journal import JournalError

JOURNAL_CACHE = 5.0  # seconds a reading of the journal serves the scrapes that follow
READ_BATCH = 10_000  # events read from the journal at a time
BOOT_WINDOW = 86400.0  # machines whose latest event is older than a day are not counted
_VERDICTS = tuple(state.value for state in State)
_LEASE_STATES = ("bound", "offered", "declined")
_JOURNAL_COUNTERS = {
    "dropped": "Journal events dropped before they were stored: the writer fell behind.",
    "failed": "Journal events lost to a database that could not be written.",
    "written": "Journal events stored.",
}
_MERGED = " With dhcp-workers, summed over the workers, each as of its last report (every second)."


@dataclass(frozen=True, slots=True)
class JournalReading:
    """What the journal's database said at ``at`` (a monotonic time); ``error`` if it could not
    be read."""

    at: float
    events: int = 0
    boots: dict[str, int] = field(default_factory=dict)
    error: str = ""


def boots_by_verdict(machines: Iterable[Sequence[BootEvent]], now: float) -> dict[str, int]:
    """How many machines' latest boot attempt stands at each verdict at ``now``, over each
    machine's events."""
    found = dict.fromkeys(_VERDICTS, 0)
    for machine_events in machines:
        judged = machine_verdicts(machine_events, now)
        if judged:
            found[judged[-1][1].state.value] += 1
    return found


class ServerCollector:
    """The metrics of the server behind ``view``, made at each :meth:`collect`."""

    def __init__(
        self,
        view: OperatorView,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.view = view
        self.clock = clock
        self.monotonic = monotonic
        self.journal_reading: JournalReading | None = None
        self._by_mac: dict[str, list[BootEvent]] = {}  # the day's events, by machine
        self._after = 0  # the id of the last event read
        self._reading: asyncio.Future[JournalReading] | None = None

    # -- the journal, in a thread ---------------------------------------------------------------

    def read_journal(self) -> JournalReading:
        """Read the journal's database (blocking: call it in a thread, one at a time).

        Only the events stored since the last reading are read: the day's events of each
        machine are kept here, and those that fall out of the day are forgotten."""
        store = self.view.journal
        at = self.monotonic()
        if store is None:
            return JournalReading(at)
        now = self.clock()
        since = now - BOOT_WINDOW
        held = self._by_mac
        try:
            while True:
                batch = store.events(after=self._after, since=since, limit=READ_BATCH)
                for event in batch:
                    if event.mac:
                        held.setdefault(event.mac, []).append(event)
                if batch:
                    self._after = batch[-1].id
                if len(batch) < READ_BATCH:
                    break
            stored = store.count()
        except JournalError as exc:
            return JournalReading(at, error=str(exc))
        for mac, events in list(held.items()):
            if events[-1].time < since:
                del held[mac]
            elif events[0].time < since:
                held[mac] = [event for event in events if event.time >= since]
        return JournalReading(at, stored, boots_by_verdict(held.values(), now))

    async def refresh(self) -> None:
        """Read the journal again if the last reading is older than :data:`JOURNAL_CACHE`; the
        scrapes that come meanwhile wait for the same reading."""
        if self.view.journal is None:
            return
        last = self.journal_reading
        if last is not None and self.monotonic() - last.at < JOURNAL_CACHE:
            return
        if self._reading is None or self._reading.done():
            loop = asyncio.get_running_loop()
            self._reading = asyncio.ensure_future(loop.run_in_executor(None, self.read_journal))
        # Shielded: a scrape that gives up does not cancel the reading the others wait for.
        self.journal_reading = await asyncio.shield(self._reading)

    # -- the families ---------------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        view = self.view
        reports = view.workers()
        yield from self._outcomes(merge_counters([view.counters(), *(r.counters for r in reports)]))
        answer_times = view.answer_times()
        for report in reports:
            if report.answer_times is not None:
                theirs = report.answer_times
                answer_times = theirs if answer_times is None else answer_times.plus(theirs)
        if answer_times is not None:
            family = HistogramMetricFamily(
                "netbootd_dhcp_answer_seconds",
                "Seconds from a DHCP request's arrival to its answer's send; an ACK's includes "
                "the lease store's commit to disk." + _MERGED,
            )
            _add_histogram(family, [], answer_times)
            yield family
        yield from self._transfer_rates()
        yield from self._pools(merge_pools([view.pools(), *(r.pools for r in reports)]))
        yield from self._journal([view.journal_counts(), *(r.journal or {} for r in reports)])
        workers = GaugeMetricFamily(
            "netbootd_dhcp_workers",
            "DHCP worker processes whose counts the other metrics include (this one too).",
        )
        workers.add_metric([], 1 + len(reports))
        yield workers

    @staticmethod
    def _outcomes(counters: dict[str, dict[str, int]]) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "netbootd_outcomes",
            "Outcomes by service, the counters SIGUSR1 logs (DHCP: message:answer or "
            "reason)." + _MERGED,
            labels=["service", "outcome"],
        )
        for service, counts in sorted(counters.items()):
            for outcome, value in sorted(counts.items()):
                family.add_metric([service, outcome], value)
        yield family

    def _transfer_rates(self) -> Iterator[Metric]:
        rates = self.view.transfer_rates
        if rates is None:
            return
        family = HistogramMetricFamily(
            "netbootd_transfer_rate_megabytes_per_second",
            "MB/s (10^6 octets a second) of each TFTP and HTTP transfer that ended well, as the "
            "boot journal records it: not kept with journal = false, and a transfer whose "
            "event the journal dropped is not counted.",
            labels=["service"],
        )
        for service, histogram in sorted(rates().items()):
            _add_histogram(family, [service], histogram)
        yield family

    @staticmethod
    def _pools(pools: list[PoolUse]) -> Iterator[Metric]:
        leases = GaugeMetricFamily(
            "netbootd_leases",
            "Live leases in each configured pool by state (offered: promised in an OFFER, not "
            "yet requested; declined: quarantined)." + _MERGED,
            labels=["subnet", "pool", "state"],
        )
        size = GaugeMetricFamily(
            "netbootd_pool_addresses",
            "Addresses in each configured pool.",
            labels=["subnet", "pool"],
        )
        for use in pools:
            size.add_metric([use.subnet, use.pool], use.size)
            for state, value in zip(
                _LEASE_STATES, (use.bound, use.offered, use.declined), strict=True
            ):
                leases.add_metric([use.subnet, use.pool, state], value)
        yield leases
        yield size

    def _journal(self, counts: list[dict[str, int]]) -> Iterator[Metric]:
        if self.view.journal is None:
            return
        merged = merge_counters([{"journal": c} for c in counts]).get("journal", {})
        for name, help_text in _JOURNAL_COUNTERS.items():
            family = CounterMetricFamily(f"netbootd_journal_{name}", help_text + _MERGED)
            family.add_metric([], merged.get(name, 0))
            yield family
        reading = self.journal_reading
        if reading is None:
            return
        stored = GaugeMetricFamily(
            "netbootd_journal_events", "Events in the boot journal's database."
        )
        boots = GaugeMetricFamily(
            "netbootd_boots",
            "Machines heard of in the last day, by the verdict on their latest boot attempt "
            f"(read from the journal at most every {JOURNAL_CACHE:g} s).",
            labels=["verdict"],
        )
        up = GaugeMetricFamily(
            "netbootd_journal_readable", "1 if the journal's database could be read, else 0."
        )
        up.add_metric([], 0 if reading.error else 1)
        yield up
        if reading.error:
            return
        stored.add_metric([], reading.events)
        for verdict in _VERDICTS:
            boots.add_metric([verdict], reading.boots.get(verdict, 0))
        yield stored
        yield boots


def _add_histogram(family: HistogramMetricFamily, labels: list[str], histogram: Histogram) -> None:
    buckets = [(_bound_text(bound), count) for bound, count in histogram.cumulative()]
    family.add_metric(labels, buckets, histogram.total)


def _bound_text(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


def registry(collector: ServerCollector) -> CollectorRegistry:
    """A registry of its own, holding ``collector`` only."""
    found = CollectorRegistry(auto_describe=False)
    found.register(collector)
    return found


def metrics_routes(view: OperatorView) -> list[web.AbstractRouteDef]:
    """``GET /metrics`` over ``view``."""
    collector = ServerCollector(view)
    page = registry(collector)

    async def metrics(request: web.Request) -> web.Response:
        del request
        await collector.refresh()
        return web.Response(
            body=generate_latest(page), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    return [web.get("/metrics", metrics)]
