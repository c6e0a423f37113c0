"""The values one DHCP transaction is made of, shared by the modules that answer it.

:class:`Outcome` records what happened, for the transaction's log line and counters;
:class:`Reply` is a reply to send and where; :class:`Pending` is a transaction whose reply waits
for its change to reach the lease store. Values only: nothing here decides, sends or logs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Final

from netbootd.boot.inventory import Resolution
from netbootd.boot.policy import BootDecision
from netbootd.proto.dhcp.codec import DhcpPacket

__all__ = ["Outcome", "Pending", "Reply", "Step"]


@dataclass(unsafe_hash=True, slots=True)
class Reply:
    """A reply to send, where, and its size limit. A value, as :class:`DhcpPacket` is (final
    fields, compared and hashed by them, ``__init__`` written out to be compiled)."""

    packet: Final[DhcpPacket]
    address: Final[IPv4Address]
    port: Final[int]
    max_size: Final[int]

    def __init__(self, packet: DhcpPacket, address: IPv4Address, port: int, max_size: int) -> None:
        self.packet = packet
        self.address = address
        self.port = port
        self.max_size = max_size


class Pending:
    """A transaction waiting for its change to reach the lease store.

    When ``durable`` is done (its result, or the store's error), :meth:`finish` concludes the
    transaction, logs it, and gives the reply to send, if any.
    """

    __slots__ = ("_finish", "durable")

    def __init__(
        self, durable: asyncio.Future[None], finish: Callable[[BaseException | None], Reply | None]
    ) -> None:
        self.durable = durable
        self._finish = finish

    def finish(self) -> Reply | None:
        durable = self.durable
        if not durable.done():
            raise RuntimeError("Pending.finish() before the change is durable")
        error = asyncio.CancelledError() if durable.cancelled() else durable.exception()
        return self._finish(error)

    def finish_with(self, error: BaseException | None) -> Reply | None:
        """Conclude with the store's ``error`` (None: the change is durable), as already known."""
        return self._finish(error)


Step = Reply | Pending | None  # what answering a request comes to; None is silence


class Outcome:
    """What happened in one transaction, for the log line. Made for each one, so a plain
    class whose ``__init__`` is compiled, not a dataclass's interpreted one."""

    __slots__ = (
        "address",
        "bad",
        "boot",
        "decision",
        "group",
        "item",
        "menu",
        "notable",
        "reason",
        "resolution",
    )

    def __init__(self, group: IPv4Address | None = None) -> None:
        self.decision = "ignored"
        self.address: IPv4Address | None = None
        self.reason = ""
        self.boot: BootDecision | None = None
        self.notable = False  # ignored for a reason the operator should see (not only at debug)
        self.menu = ""  # the PXE menu offered or asked from, by its client class
        self.item = 0  # the menu item asked for (1-based), 0 for none
        self.bad = ""  # what the peer got wrong, for a request that breaks the protocol
        self.group = group  # the multicast group the request was sent to
        self.resolution: Resolution | None = None  # the inventory's say, for --log-dhcp

    def reject(self, bad: str, reason: str) -> None:
        """Silence for a request that breaks the protocol (RFC 2131 §4.1: discard it)."""
        self.decision, self.bad, self.reason = "ignored", bad, reason
