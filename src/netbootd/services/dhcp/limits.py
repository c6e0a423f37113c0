"""Caps on what new DHCP clients may take: open offers, leases and quarantines per pool.

A DISCOVER costs an address held for
:data:`~netbootd.services.dhcp.authoritative.OFFER_HOLD_SECONDS` until the client asks for it.
A flood of DISCOVERs from made-up MACs would hold the whole pool (and memory) that way.
:func:`refusal` says which cap a client new to the lease book meets, if any; clients the book
already knows (renewing, rebooting, asking for their offer) are never refused.
:func:`make_room` gives a new client the place of the oldest open offer when an offer cap (or
``max-leases``) is met, so that the caps bound memory without locking new clients out: a
client is refused only when what fills the cap is leases, not offers. :class:`Throttle`
keeps the warning about refusals to one line a minute, however hard the flood;
:class:`LineBudget` lets a burst of lines about bad datagrams through and then holds the rest
back, so that junk sent fast cannot fill the disk with log lines.

Pure: no clock reads (the caller passes ``now``), no logging.
"""

from __future__ import annotations

from dataclasses import dataclass

from netbootd.boot.leases import AddressRange, LeaseBook, LeaseState

__all__ = ["DhcpLimits", "LineBudget", "Throttle", "make_room", "refusal"]


@dataclass(frozen=True, slots=True)
class DhcpLimits:
    """The caps, from the configuration (``dhcp-max-offers``, ``max-leases``, ...)."""

    max_offers: int = 4096  # open offers in all pools together
    max_offers_per_pool: int = 1024  # open offers in one pool
    max_leases: int | None = None  # live leases (offers included) in one pool; None: its size
    # Quarantined (declined) addresses in one pool; past it, the oldest quarantine ends early.
    max_declined_per_pool: int = 256


def refusal(
    book: LeaseBook, pool: AddressRange, limits: DhcpLimits, *, offering: bool = True
) -> str | None:
    """The cap a new client of ``pool`` meets, as a short reason, or None when it may have one.

    ``offering`` is False for a client that asks for a lease without an offer (a REQUEST
    while renewing, a dynamic BOOTP client): only ``max-leases`` applies then.
    ``book`` must be up to date (:meth:`LeaseBook.expire` called for the present moment).
    """
    met = _cap(book, pool, limits, offering=offering)
    return None if met is None else met[0]


def _cap(
    book: LeaseBook, pool: AddressRange, limits: DhcpLimits, *, offering: bool
) -> tuple[str, AddressRange | None] | None:
    """The cap met, as its reason and where an open offer would have to go to get under it
    (None: in any pool), or None."""
    if offering and book.offers >= limits.max_offers:
        return f"{book.offers} offers open, dhcp-max-offers is {limits.max_offers}", None
    taken = book.count(pool)
    if offering and taken.offers >= limits.max_offers_per_pool:
        why = (
            f"{taken.offers} offers open in {pool}, "
            f"dhcp-max-offers-per-pool is {limits.max_offers_per_pool}"
        )
        return why, pool
    if limits.max_leases is not None and taken.leases >= limits.max_leases:
        return f"{taken.leases} leases in {pool}, max-leases is {limits.max_leases}", pool
    return None


def make_room(
    book: LeaseBook, pool: AddressRange, limits: DhcpLimits, *, offering: bool = True
) -> tuple[str | None, int]:
    """Get a new client of ``pool`` under the caps by dropping the oldest open offers.

    Returns the cap still met (as :func:`refusal` says it; None when the client may have an
    address) and how many offers were dropped. An offer is held only until the client's
    REQUEST or a timeout (RFC 2131 §4.3.1), and the oldest is the likeliest never to be asked
    for; its client, if it does come back, finds the address free or is told NAK and starts
    over. One offer dropped takes one off each count, so each cap costs at most one.
    """
    dropped = 0
    for _ in range(3):  # one per cap
        met = _cap(book, pool, limits, offering=offering)
        if met is None:
            return None, dropped
        why, where = met
        oldest = book.oldest(where, LeaseState.OFFERED)
        if oldest is None:
            return why, dropped  # leases fill the cap, not offers
        book.remove(oldest.address)
        dropped += 1
    return refusal(book, pool, limits, offering=offering), dropped


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
