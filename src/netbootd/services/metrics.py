"""What the server measures for its metrics, as plain values that can be summed across workers.

The DHCP edge keeps its answer times as counts per bucket (:data:`ANSWER_TIME_BOUNDS`); the
journal's transfer events give the rate of each TFTP and HTTP transfer (:class:`TransferRates`);
the lease book says how much of each pool is taken (:func:`pool_use`). Each DHCP worker sends
its own as a :class:`WorkerReport`, and worker 0 adds them up (:func:`merge_counters`,
:meth:`Histogram.plus`, :func:`merge_pools`).

No exposition format here and no prometheus-client: that is :mod:`netbootd.api.metrics`'s. No
clock, no timer, no I/O: the callers say when.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from netbootd.boot.journal import BootEvent, Kind, Service
from netbootd.boot.leases import AddressRange, LeaseBook
from netbootd.boot.subnets import Subnet

# Seconds from a DHCP request's arrival to its answer's send. An OFFER is made from memory in
# well under a millisecond; an ACK waits for the lease store's group commit, so its time
# includes a write to disk: a few milliseconds on an SSD, up to a second on a stalled one.
ANSWER_TIME_BOUNDS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
)

# MB/s (10^6 octets a second) of one transfer: from a slow TFTP client's 512-octet lock-step
# (well under 1 MB/s) to HTTP on a 10 Gb/s link.
TRANSFER_RATE_BOUNDS = (0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0)


@dataclass(frozen=True, slots=True)
class Histogram:
    """Observations counted per bucket: ``counts[i]`` those at most ``bounds[i]`` and above the
    bound before (not cumulative), the last count those above every bound; ``total`` their
    sum."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    total: float = 0.0

    @classmethod
    def empty(cls, bounds: tuple[float, ...]) -> Histogram:
        return cls(bounds, (0,) * (len(bounds) + 1))

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations at most that) for each bucket, +Inf last."""
        found, running = [], 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            found.append((bound, running))
        return found

    def plus(self, other: Histogram) -> Histogram:
        """Both together; ValueError if their buckets differ (another version's worker)."""
        if other.bounds != self.bounds or len(other.counts) != len(self.counts):
            raise ValueError("histograms with different buckets")
        counts = tuple(a + b for a, b in zip(self.counts, other.counts, strict=True))
        return Histogram(self.bounds, counts, self.total + other.total)


def bucket(bounds: Sequence[float], value: float) -> int:
    """The index of the bucket ``value`` is counted in (``le`` semantics: bounds are inclusive)."""
    return bisect_left(bounds, value)


@dataclass(frozen=True, slots=True)
class PoolUse:
    """How much of one configured pool is taken: its size, and its live leases by state."""

    subnet: str  # the subnet's network, "10.0.0.0/24"
    pool: str  # the range, "10.0.0.100-10.0.0.199", as configured (before worker shares)
    size: int
    bound: int = 0
    offered: int = 0
    declined: int = 0


def pool_use(
    book: LeaseBook, served: Iterable[Subnet], configured: Iterable[Subnet]
) -> list[PoolUse]:
    """The use of each ``configured`` pool, counted in ``book`` over the ``served`` pools: a
    DHCP worker serves a part of each (:meth:`Subnet.share`) and counts its part only, under
    the whole pool's name and size, so that the workers' counts add up. Leases the book holds
    outside every pool (reservations) are not counted."""
    found: dict[AddressRange, PoolUse] = {}
    for subnet in configured:
        for pool in subnet.pools:
            found[pool] = PoolUse(str(subnet.network), str(pool), pool.size)
    for subnet in served:
        for part in subnet.pools:
            whole = next((pool for pool in found if pool.covers(int(part.first))), None)
            if whole is None:
                continue
            taken = book.count(part)
            declined = book.declined(part)
            use = found[whole]
            found[whole] = PoolUse(
                use.subnet,
                use.pool,
                use.size,
                use.bound + taken.leases - taken.offers - declined,
                use.offered + taken.offers,
                use.declined + declined,
            )
    return list(found.values())


def merge_pools(reports: Iterable[Sequence[PoolUse]]) -> list[PoolUse]:
    """The workers' pool counts added up, pool by pool (the first report's order)."""
    found: dict[tuple[str, str], PoolUse] = {}
    for uses in reports:
        for use in uses:
            key = (use.subnet, use.pool)
            seen = found.get(key)
            found[key] = (
                use
                if seen is None
                else PoolUse(
                    seen.subnet,
                    seen.pool,
                    seen.size,
                    seen.bound + use.bound,
                    seen.offered + use.offered,
                    seen.declined + use.declined,
                )
            )
    return list(found.values())


def merge_counters(
    reports: Iterable[Mapping[str, Mapping[str, int]]],
) -> dict[str, dict[str, int]]:
    """Outcome counters by service, added up key by key."""
    found: dict[str, dict[str, int]] = {}
    for counters in reports:
        for service, counts in counters.items():
            into = found.setdefault(service, {})
            for key, value in counts.items():
                into[key] = into.get(key, 0) + value
    return found


@dataclass(frozen=True, slots=True)
class WorkerReport:
    """What one DHCP worker sends worker 0 for the metrics, every second or so: totals since
    it started, so a report lost or late costs nothing but freshness."""

    worker: int
    counters: dict[str, dict[str, int]]
    answer_times: Histogram | None
    pools: tuple[PoolUse, ...] = ()
    journal: dict[str, int] | None = None


def rate_of(event: BootEvent) -> float | None:
    """The MB/s of a transfer event that ended well and moved octets, else None: the ``rate``
    field ("12.34MB/s"), else ``bytes`` over ``seconds``."""
    if event.kind != Kind.TRANSFER.value or event.get("result") != "ok":
        return None
    text = event.get("rate").removesuffix("MB/s")
    try:
        return float(text)
    except ValueError:
        pass
    try:
        octets, seconds = int(event.get("bytes")), float(event.get("seconds"))
    except ValueError:
        return None
    if octets <= 0 or seconds <= 0:
        return None
    return octets / seconds / 1e6


class TransferRates:
    """The rate of every transfer the journal saw, by service (tftp, http), as histograms.

    Fed with each batch the journal's writer takes (:meth:`observe`); a transfer the journal
    never hears of (``journal = false``, events dropped past its bound) is not counted."""

    SERVICES = (Service.TFTP.value, Service.HTTP.value)

    def __init__(self, bounds: tuple[float, ...] = TRANSFER_RATE_BOUNDS) -> None:
        self.bounds = bounds
        self._counts = {service: [0] * (len(bounds) + 1) for service in self.SERVICES}
        self._totals = dict.fromkeys(self.SERVICES, 0.0)

    def observe(self, events: Iterable[BootEvent]) -> None:
        for event in events:
            counts = self._counts.get(event.service)
            if counts is None:
                continue
            rate = rate_of(event)
            if rate is None:
                continue
            counts[bucket(self.bounds, rate)] += 1
            self._totals[event.service] += rate

    def histograms(self) -> dict[str, Histogram]:
        return {
            service: Histogram(self.bounds, tuple(counts), self._totals[service])
            for service, counts in self._counts.items()
        }
