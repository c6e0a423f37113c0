"""What the operator's view reads and changes, as the composition root hands it over.

One value, made at start: the configuration, the journal's database, the live inventory, and
callables for what only the running server knows (its counters, its leases, its services). The
API, the metrics and the web page read through it and nothing else.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path

from netbootd.boot.leases import Lease
from netbootd.config import Config
from netbootd.services.journal import Journal
from netbootd.services.machines import LiveInventory
from netbootd.services.metrics import Histogram, PoolUse, WorkerReport
from netbootd.store.journal import JournalStore


def _no_counters() -> dict[str, dict[str, int]]:
    return {}


def _no_status() -> dict[str, object]:
    return {}


@dataclass(frozen=True, slots=True)
class Explained:
    """``netbootd explain``'s report for one described client."""

    text: str
    unservable: tuple[str, ...] = ()


# The description of a client to explain: mac, arch, user_class, vendor_class, uuid (the names
# of ``netbootd explain``'s flags); blocking, and raises ConfigError for a bad description.
Explainer = Callable[[Mapping[str, str | None]], Explained]


def _no_histogram() -> Histogram | None:
    return None


def _no_pools() -> list[PoolUse]:
    return []


def _no_reports() -> list[WorkerReport]:
    return []


@dataclass
class OperatorView:
    config: Config
    started: float  # when the server started, seconds since the epoch
    journal: JournalStore | None = None
    inventory: LiveInventory | None = None
    # Every service's outcome counters by service, as SIGUSR1 logs them.
    counters: Callable[[], dict[str, dict[str, int]]] = field(default=_no_counters)
    # The API's write token; None: the API is read-only.
    token: str | None = None
    # What runs (mode, interface, address, services), read when asked: the servers start
    # after the view is made.
    status: Callable[[], dict[str, object]] = field(default=_no_status)
    # Authoritative mode, one DHCP process: the leases in force (offers too), and the release
    # of one, through the DHCP service's book and store. With several DHCP workers each holds
    # its own share: None, and the leases are read from ``lease_file``.
    leases: Callable[[], list[Lease]] | None = None
    release: Callable[[IPv4Address], Awaitable[Lease | None]] | None = None
    lease_file: Path | None = None
    explain: Explainer | None = None
    # Where the API tells the journal what it did to a machine (a boot-once mark).
    told: Journal | None = None
    # What the metrics read of this process, on the event loop (cheap, no I/O): the DHCP
    # answer times, the use of each pool, the journal's own counters (dropped, failed,
    # written), the transfer rates (None: no journal, so none are kept).
    answer_times: Callable[[], Histogram | None] = field(default=_no_histogram)
    pools: Callable[[], list[PoolUse]] = field(default=_no_pools)
    journal_counts: Callable[[], dict[str, int]] = field(default=dict)
    transfer_rates: Callable[[], dict[str, Histogram]] | None = None
    # The other DHCP workers' latest reports (dhcp-workers > 1), set once they have started.
    workers: Callable[[], list[WorkerReport]] = field(default=_no_reports)
    # Set as the server stops: the long-lived answers (the event stream) end at once rather
    # than hold up the HTTP server's shutdown.
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
