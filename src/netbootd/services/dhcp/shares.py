"""How DHCP workers divide the clients and the addresses between them.

With ``dhcp-workers = N`` (authoritative mode), N processes answer DHCP. A client belongs to the
worker numbered by the last octet of its hardware address modulo N
(:func:`~netbootd.proto.dhcp.wire.client_worker`): the kernel steers each datagram to that
worker, so a client's DISCOVER, REQUEST, renewals and RELEASE all meet the same lease book. Each
worker hands out addresses from its own contiguous part of every pool only
(:meth:`Subnet.share`), and keeps in its book only the leases of its part, plus, outside the
pools (reservations), those of its own clients. No address is ever in two books, so no two
workers can give it away, and each acknowledges a lease only once it is on disk, as a single
process does.

The caps on open offers and leases apply to each worker's part: each gets its share of them.

Pure: no processes, no sockets, no clock.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from netbootd.boot.leases import Lease
from netbootd.boot.subnets import Subnet
from netbootd.proto.dhcp.wire import client_worker
from netbootd.services.dhcp.limits import DhcpLimits


@dataclass(frozen=True, slots=True)
class Share:
    """Worker ``index`` of ``count``."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise ValueError(f"worker {self.index} of {self.count}")

    def subnets(self, subnets: tuple[Subnet, ...]) -> tuple[Subnet, ...]:
        return tuple(subnet.share(self.index, self.count) for subnet in subnets)

    def limits(self, limits: DhcpLimits) -> DhcpLimits:
        """Each worker's part of the caps (rounded up, never below one)."""

        def part(cap: int) -> int:
            return max(1, -(-cap // self.count))

        return DhcpLimits(
            part(limits.max_offers),
            part(limits.max_offers_per_pool),
            None if limits.max_leases is None else part(limits.max_leases),
        )

    def owned(self, leases: Iterable[Lease], subnets: tuple[Subnet, ...]) -> list[Lease]:
        """The leases that belong in this worker's book: their address is in this worker's
        part of a pool, or outside every pool and the lease is of one of its clients."""
        parts = list(zip(subnets, self.subnets(subnets), strict=True))  # made once, not per lease
        found = []
        for lease in leases:
            address = lease.address
            pool = next((mine for whole, mine in parts if whole.in_pools(address)), None)
            if pool is not None:
                if pool.in_pools(address):
                    found.append(lease)
            elif client_worker(lease.mac, self.count) == self.index:
                found.append(lease)
        return found
