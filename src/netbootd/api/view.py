"""What the operator's view reads and changes, as the composition root hands it over.

One value, made at start: the configuration, the journal's database, the live inventory, and
callables for what only the running server knows (its counters, its leases). The API, the
metrics and the web page read through it and nothing else.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from netbootd.config import Config
from netbootd.services.machines import LiveInventory
from netbootd.store.journal import JournalStore


def _no_counters() -> dict[str, dict[str, int]]:
    return {}


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
    # Set as the server stops: the long-lived answers (the event stream) end at once rather
    # than hold up the HTTP server's shutdown.
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
