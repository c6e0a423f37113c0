"""Lease bookkeeping and address choice, pure.

:class:`LeaseBook` is the in-memory index of who holds which address (bound leases, pending
offers, declined addresses); :func:`choose_address` picks an address for a client from a pool.
Neither touches a disk, a socket or a clock: the caller passes ``now`` and persists what must
last (see ``netbootd.store``).
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from ipaddress import IPv4Address


@dataclass(frozen=True, slots=True)
class AddressRange:
    """An inclusive range of IPv4 addresses, written ``FIRST-LAST``."""

    first: IPv4Address
    last: IPv4Address

    def __post_init__(self) -> None:
        if int(self.last) < int(self.first):
            raise ValueError(f"range {self.first}-{self.last} ends before it starts")

    @classmethod
    def parse(cls, text: str) -> AddressRange:
        first, sep, last = text.partition("-")
        if not sep:
            raise ValueError(f"expected FIRST-LAST, got {text!r}")
        return cls(IPv4Address(first.strip()), IPv4Address(last.strip()))

    @property
    def size(self) -> int:
        return int(self.last) - int(self.first) + 1

    def __contains__(self, address: object) -> bool:
        if not isinstance(address, IPv4Address):
            return False
        return int(self.first) <= int(address) <= int(self.last)

    def __iter__(self) -> Iterator[IPv4Address]:
        # Lazily: a pool may be a /8, and is never materialised.
        return (IPv4Address(n) for n in range(int(self.first), int(self.last) + 1))

    def __str__(self) -> str:
        return f"{self.first}-{self.last}"


class LeaseState(StrEnum):
    OFFERED = "offered"  # promised in an OFFER, not yet requested; kept in memory only
    BOUND = "bound"  # acknowledged; durable
    DECLINED = "declined"  # a client said the address is in use (RFC 2131 §3.1.5); quarantined


@dataclass(frozen=True, slots=True)
class Lease:
    address: IPv4Address
    client: str  # the client key: see client_key()
    mac: str
    state: LeaseState
    expires: float  # seconds since the epoch
    hostname: str | None = None


def client_key(mac: str, client_id: bytes | None) -> str:
    """The identity a lease belongs to.

    RFC 2131 §4.2: the client identifier (option 61) when the client sends one, else chaddr.
    """
    if client_id:
        return "id:" + client_id.hex(":")
    return "mac:" + mac


class LeaseBook:
    """Every address netbootd has promised, bound or quarantined, indexed both ways."""

    def __init__(self, leases: Iterable[Lease] = ()) -> None:
        self._by_address: dict[IPv4Address, Lease] = {}
        self._by_client: dict[str, Lease] = {}
        self._cursor: dict[AddressRange, int] = {}  # where each pool's last free address was
        for lease in leases:
            self.put(lease)

    def __len__(self) -> int:
        return len(self._by_address)

    def __iter__(self) -> Iterator[Lease]:
        return iter(list(self._by_address.values()))

    def at(self, address: IPv4Address) -> Lease | None:
        return self._by_address.get(address)

    def of(self, client: str) -> Lease | None:
        return self._by_client.get(client)

    def holder(self, address: IPv4Address, now: float) -> str | None:
        """Who holds ``address`` at ``now`` ("" for a quarantined address), or None if free."""
        lease = self._by_address.get(address)
        if lease is None or lease.expires <= now:
            return None
        return "" if lease.state is LeaseState.DECLINED else lease.client

    def put(self, lease: Lease) -> None:
        old = self._by_client.get(lease.client)
        if old is not None and old.address != lease.address:
            self._by_address.pop(old.address, None)
        previous_owner = self._by_address.get(lease.address)
        if previous_owner is not None and previous_owner.client != lease.client:
            self._by_client.pop(previous_owner.client, None)
        self._by_address[lease.address] = lease
        if lease.state is not LeaseState.DECLINED:
            self._by_client[lease.client] = lease

    def first_free(
        self,
        pool: AddressRange,
        now: float,
        reserved: Container[IPv4Address] = frozenset(),
    ) -> IPv4Address | None:
        """A free address of ``pool``, or None when there is none.

        The search goes on from the address it found last time, wrapping round: a burst of new
        clients costs a probe or two each, not a walk over every address already leased (a
        pool of thousands would make each DISCOVER a scan of all of them).
        """
        size, first = pool.size, int(pool.first)
        start = self._cursor.get(pool, 0) % size
        for step in range(size):
            offset = (start + step) % size
            address = IPv4Address(first + offset)
            if address not in reserved and self.holder(address, now) is None:
                self._cursor[pool] = offset
                return address
        return None

    def remove(self, address: IPv4Address) -> Lease | None:
        lease = self._by_address.pop(address, None)
        if lease is not None and self._by_client.get(lease.client) is lease:
            del self._by_client[lease.client]
        return lease


def choose_address(
    pool: AddressRange,
    book: LeaseBook,
    client: str,
    now: float,
    requested: IPv4Address | None = None,
    *,
    reserved: Container[IPv4Address] = frozenset(),
) -> IPv4Address | None:
    """Pick an address in ``pool`` for ``client``, or None when the pool is full.

    RFC 2131 §4.3.1 order: the client's current or previous address, then the address it asked
    for (option 50) if free, then any free address. ``reserved`` addresses belong to other
    machines and are never picked.
    """

    def free(address: IPv4Address) -> bool:
        return address not in reserved and book.holder(address, now) is None

    previous = book.of(client)
    if previous is not None and previous.address in pool and previous.address not in reserved:
        owner = book.holder(previous.address, now)
        if owner is None or owner == client:
            return previous.address
    if requested is not None and requested in pool and free(requested):
        return requested
    return book.first_free(pool, now, reserved)
