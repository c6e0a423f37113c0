"""Caps on what new DHCP clients may take: open offers, and leases per pool.

A DISCOVER costs an address held for
:data:`~netbootd.services.dhcp.authoritative.OFFER_HOLD_SECONDS` until the client asks for it.
A flood of DISCOVERs from made-up MACs would hold the whole pool (and memory) that way.
:func:`refusal` says which cap a client new to the lease book meets, if any; clients the book
already knows (renewing, rebooting, asking for their offer) are never refused. :class:`Throttle`
keeps the warning about refusals to one line a minute, however hard the flood;
:class:`LineBudget` lets a burst of lines about bad datagrams through and then holds the rest
back, so that junk sent fast cannot fill the disk with log lines.

Pure: no clock reads (the caller passes ``now``), no logging.
"""

from __future__ import annotations

from dataclasses import dataclass

from netbootd.boot.leases import AddressRange, LeaseBook

__all__ = ["DhcpLimits", "LineBudget", "Throttle", "refusal"]


@dataclass(frozen=True, slots=True)
class DhcpLimits:
    """The caps, from the configuration (``dhcp-max-offers``, ``max-leases``, ...)."""

    max_offers: int = 4096  # open offers in all pools together
    max_offers_per_pool: int = 1024  # open offers in one pool
    max_leases: int | None = None  # live leases (offers included) in one pool; None: its size


def refusal(
    book: LeaseBook, pool: AddressRange, limits: DhcpLimits, *, offering: bool = True
) -> str | None:
    """The cap a new client of ``pool`` meets, as a short reason, or None when it may have one.

    ``offering`` is False for a client that asks for a lease without an offer (a REQUEST
    while renewing, a dynamic BOOTP client): only ``max-leases`` applies then.
    ``book`` must be up to date (:meth:`LeaseBook.expire` called for the present moment).
    """
    if offering and book.offers >= limits.max_offers:
        return f"{book.offers} offers open, dhcp-max-offers is {limits.max_offers}"
    taken = book.count(pool)
    if offering and taken.offers >= limits.max_offers_per_pool:
        return (
            f"{taken.offers} offers open in {pool}, "
            f"dhcp-max-offers-per-pool is {limits.max_offers_per_pool}"
        )
    if limits.max_leases is not None and taken.leases >= limits.max_leases:
        return f"{taken.leases} leases in {pool}, max-leases is {limits.max_leases}"
    return None


class Throttle:
    """At most one line per ``interval`` seconds; says how many events the line stands for."""

    def __init__(self, interval: float = 60.0) -> None:
        self._interval = interval
        self._next = float("-inf")
        self._pending = 0

    def event(self, now: float) -> int | None:
        """Record one event at ``now``; the number of events to report if a line is due."""
        self._pending += 1
        if now < self._next:
            return None
        count, self._pending = self._pending, 0
        self._next = now + self._interval
        return count


class LineBudget:
    """Up to ``lines`` log lines per ``seconds``; past that, lines are counted, not written.

    Each window's first line says how many were held back in the windows before it.
    """

    def __init__(self, lines: int = 50, seconds: float = 10.0) -> None:
        self._lines = lines
        self._seconds = seconds
        self._window_end = float("-inf")
        self._used = 0
        self._held = 0

    def allow(self, now: float) -> int | None:
        """None to hold a line back; else how many were held back since the last one written."""
        if now >= self._window_end:
            self._window_end = now + self._seconds
            self._used = 0
        if self._used >= self._lines:
            self._held += 1
            return None
        self._used += 1
        held, self._held = self._held, 0
        return held
