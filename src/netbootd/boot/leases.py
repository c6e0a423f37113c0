"""Lease bookkeeping and address choice, pure.

:class:`LeaseBook` is the in-memory index of who holds which address (bound leases, pending
offers, declined addresses); :func:`choose_address` picks an address for a client from its pools.
Neither touches a disk, a socket or a clock: the caller passes ``now`` and persists what must
last (see ``netbootd.store``).

The book also keeps, in expiry order, every lease it counts as live: :meth:`LeaseBook.expire`
drops offers nobody took up and stops counting bound leases that ran out, at a cost of one heap
step per lease ever put, so that a flood of DISCOVERs from new MACs cannot grow it without bound.
Each pool's open offers and quarantined addresses are kept oldest first as well: when a pool has
no free address left, :func:`choose_address` takes the oldest of them rather than turn a client
away, so that DISCOVERs from made-up MACs, or DECLINEs, cannot lock new clients out of a pool.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Container, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from ipaddress import IPv4Address
from typing import Any, Final


@dataclass(frozen=True, slots=True)
class AddressRange:
    """An inclusive range of IPv4 addresses, written ``FIRST-LAST``."""

    first: IPv4Address
    last: IPv4Address
    # The bounds as ints, made once: a range is asked about, and hashed, on every request.
    _low: int = field(init=False, repr=False, compare=False, hash=False)
    _high: int = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        if int(self.last) < int(self.first):
            raise ValueError(f"range {self.first}-{self.last} ends before it starts")
        object.__setattr__(self, "_low", int(self.first))
        object.__setattr__(self, "_high", int(self.last))

    def __hash__(self) -> int:
        return hash((self._low, self._high))

    @classmethod
    def parse(cls, text: str) -> AddressRange:
        first, sep, last = text.partition("-")
        if not sep:
            raise ValueError(f"expected FIRST-LAST, got {text!r}")
        return cls(IPv4Address(first.strip()), IPv4Address(last.strip()))

    @property
    def size(self) -> int:
        return self._high - self._low + 1

    def __contains__(self, address: object) -> bool:
        return isinstance(address, IPv4Address) and self.covers(int(address))

    def covers(self, number: int) -> bool:
        """Whether the address whose int value is ``number`` is in the range."""
        return self._low <= number <= self._high

    def __iter__(self) -> Iterator[IPv4Address]:
        # Lazily: a pool may be a /8, and is never materialised. A generator function, not a
        # generator expression, which the compiled build (setup.py) would make a list.
        for n in range(self._low, self._high + 1):
            yield IPv4Address(n)

    def __str__(self) -> str:
        return f"{self.first}-{self.last}"


class LeaseState(StrEnum):
    OFFERED = "offered"  # promised in an OFFER, not yet requested; kept in memory only
    BOUND = "bound"  # acknowledged; durable
    DECLINED = "declined"  # a client said the address is in use (RFC 2131 §3.1.5); quarantined


@dataclass(unsafe_hash=True, slots=True)
class Lease:
    """One address promised to one client. A value, as :class:`DhcpPacket` is (final fields,
    compared and hashed by them, ``__init__`` written out to be compiled)."""

    address: Final[IPv4Address]
    client: Final[str]  # the client key: see client_key()
    mac: Final[str]
    state: Final[LeaseState]
    expires: Final[float]  # seconds since the epoch
    hostname: Final[str | None]

    def __init__(  # noqa: PLR0917 (a dataclass's signature: every field, in order)
        self,
        address: IPv4Address,
        client: str,
        mac: str,
        state: LeaseState,
        expires: float,
        hostname: str | None = None,
    ) -> None:
        self.address = address
        self.client = client
        self.mac = mac
        self.state = state
        self.expires = expires
        self.hostname = hostname


def client_key(mac: str, client_id: bytes | None) -> str:
    """The identity a lease belongs to.

    RFC 2131 §4.2: the client identifier (option 61) when the client sends one, else chaddr.
    """
    if client_id:
        return "id:" + client_id.hex(":")
    return "mac:" + mac


@dataclass(unsafe_hash=True, slots=True)
class PoolCount:
    """How much of a pool is taken: live leases of any state, and among them, open offers."""

    leases: Final[int]
    offers: Final[int]

    def __init__(self, leases: int, offers: int) -> None:
        self.leases = leases
        self.offers = offers


# How the book keeps a lease: a tuple of plain values (address as an int, client, mac, state
# as its index in _STATES, expires, hostname). The garbage collector stops tracking a tuple of
# plain values the first time it sees one, so however many leases the book holds, a collection
# does not walk them: Lease objects, each with its IPv4Address, made every full collection a
# walk over the whole book, a pause that grew with it.
# Typed as a tuple of any length: the compiled build keeps a fixed-shape tuple unboxed and makes
# a new tuple object each time it is stored, where the book stores one record in up to four
# places and tells a live record from a stale heap entry by identity.
_Record = tuple[Any, ...]
_ADDRESS: Final = 0
_CLIENT: Final = 1
_STATE: Final = 3
_EXPIRES: Final = 4
_STATES: Final = (LeaseState.OFFERED, LeaseState.BOUND, LeaseState.DECLINED)
_OFFERED: Final = 0
_BOUND: Final = 1
_DECLINED: Final = 2


def _record(lease: Lease) -> _Record:
    state = lease.state
    code = (
        _OFFERED
        if state is LeaseState.OFFERED
        else _BOUND
        if state is LeaseState.BOUND
        else _DECLINED
    )
    return (int(lease.address), lease.client, lease.mac, code, lease.expires, lease.hostname)


def _lease(record: _Record, address: IPv4Address | None = None) -> Lease:
    """The lease ``record`` stands for; ``address`` is its address when the caller has it."""
    number, client, mac, state, expires, hostname = record
    if address is None:
        address = IPv4Address(number)
    return Lease(address, client, mac, _STATES[state], expires, hostname)


class _Tally:
    """One pool's live leases: how many, and its open offers and quarantined addresses (as
    ints), oldest first: a dict keeps the order its keys were put in."""

    __slots__ = ("declined", "leases", "offers")

    def __init__(self) -> None:
        self.leases = 0
        self.offers: dict[int, None] = {}
        self.declined: dict[int, None] = {}

    def add(self, number: int, state: int) -> None:
        self.leases += 1
        if state == _OFFERED:
            self.offers[number] = None
        elif state == _DECLINED:
            self.declined[number] = None

    def discard(self, number: int) -> None:
        self.leases -= 1
        self.offers.pop(number, None)
        self.declined.pop(number, None)


class LeaseBook:
    """Every address netbootd has promised, bound or quarantined, indexed both ways."""

    def __init__(self, leases: Iterable[Lease] = ()) -> None:
        self._by_address: dict[int, _Record] = {}
        self._by_client: dict[str, _Record] = {}
        self._cursor: dict[AddressRange, int] = {}  # where each pool's last free address was
        # Leases counted as live (not yet seen expired by expire()), and their expiry heap; a
        # heap entry whose record is no longer the live one at its address is stale and skipped.
        self._live: dict[int, _Record] = {}
        self._expiry: list[tuple[float, int, _Record]] = []
        self._sequence = itertools.count()
        self._offered: dict[int, None] = {}  # open offers in every pool, oldest first
        self._pools: dict[AddressRange, _Tally] = {}
        for lease in leases:
            self.put(lease)

    def __len__(self) -> int:
        return len(self._by_address)

    def __iter__(self) -> Iterator[Lease]:
        return iter([_lease(record) for record in self._by_address.values()])

    def at(self, address: IPv4Address) -> Lease | None:
        record = self._by_address.get(int(address))
        return None if record is None else _lease(record, address)

    def of(self, client: str) -> Lease | None:
        record = self._by_client.get(client)
        return None if record is None else _lease(record)

    def holds(self, lease: Lease) -> bool:
        """Whether the book has ``lease`` at its address, field for field."""
        return self._by_address.get(int(lease.address)) == _record(lease)

    def holder(self, address: IPv4Address, now: float) -> str | None:
        """Who holds ``address`` at ``now`` ("" for a quarantined address), or None if free."""
        return self._holder(int(address), now)

    def _holder(self, number: int, now: float) -> str | None:
        record = self._by_address.get(number)
        if record is None or record[_EXPIRES] <= now:
            return None
        client: str = record[_CLIENT]
        return "" if record[_STATE] == _DECLINED else client

    def put(self, lease: Lease) -> None:
        record = _record(lease)
        number: int = record[_ADDRESS]
        client: str = record[_CLIENT]
        old = self._by_client.get(client)
        if old is not None and old[_ADDRESS] != number:
            self._by_address.pop(old[_ADDRESS], None)
            self._uncount(old[_ADDRESS])
        previous_owner = self._by_address.get(number)
        if previous_owner is not None and previous_owner[_CLIENT] != client:
            self._by_client.pop(previous_owner[_CLIENT], None)
        self._by_address[number] = record
        if record[_STATE] != _DECLINED:
            self._by_client[client] = record
        elif old is not None and old[_ADDRESS] == number:
            # A quarantined address is nobody's: the client that declined it no longer holds
            # it, and its next lease must not take the quarantine away with the old one.
            del self._by_client[client]
        self._uncount(number)
        self._count(record)

    @property
    def offers(self) -> int:
        """Open offers (OFFERED leases not yet expired by :meth:`expire`), in every pool."""
        return len(self._offered)

    def count(self, pool: AddressRange) -> PoolCount:
        """Live leases and open offers in ``pool``; the first call for a pool counts it."""
        tally = self._tally(pool)
        return PoolCount(tally.leases, len(tally.offers))

    def declined(self, pool: AddressRange) -> int:
        """Quarantined addresses of ``pool`` (DECLINED leases not yet expired by :meth:`expire`)."""
        return len(self._tally(pool).declined)

    def oldest(
        self,
        pool: AddressRange | None,
        state: LeaseState,
        skip: Container[IPv4Address] = frozenset(),
    ) -> Lease | None:
        """The oldest live offer (``state`` OFFERED) or quarantine (DECLINED) in ``pool``, or in
        every pool for None, whose address is not in ``skip``; None when there is none.

        Only the open offers of every pool together are kept in order (for the cap on them
        all): ``pool`` None asks for an offer.
        """
        if pool is None:
            numbers: Iterable[int] = self._offered
        else:
            tally = self._tally(pool)
            numbers = tally.offers if state is LeaseState.OFFERED else tally.declined
        for number in numbers:
            address = IPv4Address(number)
            if address not in skip:
                return _lease(self._live[number], address)
        return None

    def _tally(self, pool: AddressRange) -> _Tally:
        tally = self._pools.get(pool)
        if tally is None:
            tally = self._pools[pool] = _Tally()
            covered = [record for record in self._live.values() if pool.covers(record[_ADDRESS])]
            # Put oldest first: leases of one state are held for the same time, so the one
            # that expires first is the one put first.
            covered.sort(key=lambda record: float(record[_EXPIRES]))
            for record in covered:
                tally.add(record[_ADDRESS], record[_STATE])
        return tally

    def expire(self, now: float) -> int:
        """Drop the offers that expired by ``now`` and stop counting other expired leases.

        Expired bound leases stay in the book (a returning client gets its old address back,
        RFC 2131 §4.3.1), but no longer count as live. Returns how many offers were dropped.
        Each lease put costs one heap push and at most one pop here: O(log n) amortised.
        """
        heap = self._expiry
        dropped = 0
        while heap and heap[0][0] <= now:
            _, _, record = heapq.heappop(heap)
            number: int = record[_ADDRESS]
            if self._live.get(number) is not record:
                continue  # replaced or removed since
            if record[_STATE] == _OFFERED:
                self._remove(number)
                dropped += 1
            else:
                self._uncount(number)
        if len(heap) > 2 * len(self._live) + 64:
            # Renewals leave stale entries behind; rebuild once they outnumber the live ones.
            live = self._live
            self._expiry = [entry for entry in heap if live.get(entry[2][_ADDRESS]) is entry[2]]
            heapq.heapify(self._expiry)
        return dropped

    @property
    def pending_expiries(self) -> int:
        """Entries in the expiry heap, stale ones included: for tests of the book's size."""
        return len(self._expiry)

    def _count(self, record: _Record) -> None:
        number: int = record[_ADDRESS]
        self._live[number] = record
        heapq.heappush(self._expiry, (record[_EXPIRES], next(self._sequence), record))
        state: int = record[_STATE]
        if state == _OFFERED:
            self._offered[number] = None
        for pool, tally in self._pools.items():
            if pool.covers(number):
                tally.add(number, state)

    def _uncount(self, number: int) -> None:
        record = self._live.pop(number, None)
        if record is None:
            return
        self._offered.pop(number, None)
        for pool, tally in self._pools.items():
            if pool.covers(number):
                tally.discard(number)

    def first_free(
        self,
        pool: AddressRange,
        now: float,
        reserved: Container[IPv4Address] = frozenset(),
    ) -> IPv4Address | None:
        """A free address of ``pool``, or None when there is none.

        The search goes on from the address it found last time, wrapping round: a burst of new
        clients costs a probe or two each, not a walk over every address already leased (a
        pool of thousands would make each DISCOVER a scan of all of them). A pool with a live
        lease on every address is known full from its count, without a probe.
        """
        size, first = pool.size, int(pool.first)
        self.expire(now)  # so that the pool's count is of the leases still held at ``now``
        if self.count(pool).leases >= size:
            return None  # a live lease on every address: a full pool is not walked again
        start = self._cursor.get(pool, 0) % size
        for step in range(size):
            offset = (start + step) % size
            if self._holder(first + offset, now) is not None:
                continue
            address = IPv4Address(first + offset)
            if address not in reserved:
                self._cursor[pool] = offset
                return address
        return None

    def remove(self, address: IPv4Address) -> Lease | None:
        record = self._remove(int(address))
        return None if record is None else _lease(record, address)

    def _remove(self, number: int) -> _Record | None:
        record = self._by_address.pop(number, None)
        self._uncount(number)
        if record is not None and self._by_client.get(record[_CLIENT]) is record:
            del self._by_client[record[_CLIENT]]
        return record


def choose_address(
    pools: Sequence[AddressRange],
    book: LeaseBook,
    client: str,
    now: float,
    requested: IPv4Address | None = None,
    *,
    reserved: Container[IPv4Address] = frozenset(),
) -> IPv4Address | None:
    """Pick an address in any of ``pools`` for ``client``, or None when they are all full.

    RFC 2131 §4.3.1 order: the client's current or previous address, then the address it asked
    for (option 50) if free, then the first free address of the first pool with one.
    ``reserved`` addresses belong to other machines and are never picked. Pools stay ranges:
    nothing is enumerated but the probes.

    When no pool has a free address, the oldest open offer is taken, then the oldest
    quarantined address. RFC 2131 §4.3.1 has a server hold an offered address only until the
    client's REQUEST or a timeout, and an offer older than the rest went to a client that did
    not come back for it (or to a made-up MAC); a quarantine (§4.3.3) keeps an address that
    may be in use out of the way only while the pool has others to give. A client's own
    offer is never taken from it this way: it gets its previous address first.
    """

    def in_pools(address: IPv4Address) -> bool:
        return any(address in pool for pool in pools)

    previous = book.of(client)
    if previous is not None and in_pools(previous.address) and previous.address not in reserved:
        owner = book.holder(previous.address, now)
        if owner is None or owner == client:
            return previous.address
    if (
        requested is not None
        and in_pools(requested)
        and requested not in reserved
        and book.holder(requested, now) is None
    ):
        return requested
    for pool in pools:
        found = book.first_free(pool, now, reserved)
        if found is not None:
            return found
    for state in (LeaseState.OFFERED, LeaseState.DECLINED):
        for pool in pools:
            held = book.oldest(pool, state, reserved)
            if held is not None:
                return held.address
    return None
