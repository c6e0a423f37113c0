"""Authoritative DHCP (RFC 2131 §4.3): DISCOVER, REQUEST, RELEASE, DECLINE and INFORM over
the lease book and the subnet's pools.

Each ``answer_*`` function takes the service (its settings, lease book, store, reservations
and counters, passed explicitly) and one request from one served subnet, changes the book as
RFC 2131 says, and gives the reply (:mod:`.reply` builds it), a :class:`Pending` one when the
change must be durable first, or silence. A new client past a cap (:mod:`.limits`) is refused.
No sockets, no clock but the service's, no boot policy of its own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from ipaddress import IPv4Address
from typing import TYPE_CHECKING

from netbootd.boot.client import ClientInfo
from netbootd.boot.leases import AddressRange, Lease, LeaseState, choose_address, client_key
from netbootd.boot.subnets import Subnet
from netbootd.logs.events import format_event
from netbootd.proto.dhcp.codec import DhcpPacket, MessageType, Opt, option_ip
from netbootd.proto.dhcp.wire import ZERO
from netbootd.services.dhcp.limits import Throttle, make_room, refusal
from netbootd.services.dhcp.reply import nak, offer_or_ack
from netbootd.services.dhcp.transaction import Outcome, Pending, Reply, Step
from netbootd.store.leases import StoreError

if TYPE_CHECKING:
    from netbootd.services.dhcp.service import DhcpService

__all__ = [
    "OFFER_HOLD_SECONDS",
    "answer_decline",
    "answer_discover",
    "answer_inform",
    "answer_release",
    "answer_request",
    "bind",
    "open_pools",
    "reservation",
]

log = logging.getLogger("netbootd.dhcp")

# How long an offered address stays promised to its client. RFC 2131 §4.3.1 has the server
# hold it until the client's REQUEST or a timeout. A client asks within a second or so; PXE
# firmware first collects offers for about 4 s, and a REQUEST lost on the way is resent after
# 4 s and then 8 s (RFC 2131 §4.1). 20 s covers all of that, where a longer hold only keeps
# addresses from new clients for as long after a flood of DISCOVERs. A client that asks after
# the hold still gets its address if nobody took it meanwhile (answer_request).
OFFER_HOLD_SECONDS = 20.0


def answer_discover(
    service: DhcpService, request: DhcpPacket, client: ClientInfo, outcome: Outcome, subnet: Subnet
) -> Reply | None:
    """An OFFER (RFC 2131 §4.3.1): the client's reservation, its lease, or a free address."""
    book = service.book
    now = service.clock()
    key = client_key(request.mac, request.get(Opt.CLIENT_ID))
    requested = option_ip(request, Opt.REQUESTED_IP)
    address = reservation(service, request, key, now, subnet)
    from_pool = address is None
    pools = subnet.pools
    if address is None and pools and book.of(key) is None:
        pools = open_pools(service, request, outcome, subnet, now, offering=True)
        if not pools:
            return None
    if address is None:
        if not pools:
            outcome.reason = f"{subnet} has no pool"
            return None
        address = choose_address(pools, book, key, now, requested, reserved=service.reservations)
    if address is None:
        names = ",".join(str(pool) for pool in pools)
        outcome.reason = f"pool {names} is full"
        service.counters["pool-full"] += 1
        # A warning a minute per pool at most: a flood of new MACs against a full pool
        # must not become a flood of lines.
        count = service.full_pools.setdefault(names, Throttle()).event(now)
        if count is not None:
            log.warning(format_event("pool-full", pool=names, mac=request.mac, turned_away=count))
        return None
    current = book.at(address)
    if (
        from_pool
        and current is not None
        and current.client != key
        and book.holder(address, now) is not None
    ):
        # choose_address took the oldest open offer, or a quarantine, for want of a free one.
        kind = "offer" if current.state is LeaseState.OFFERED else "quarantine"
        service.counters[f"{kind}-reclaimed"] += 1
    if current is None or current.client != key or current.state is not LeaseState.BOUND:
        # Promise the address for a while so that a second DISCOVER does not get it too;
        # a bound lease of this same client stays as it is.
        book.put(Lease(address, key, request.mac, LeaseState.OFFERED, now + OFFER_HOLD_SECONDS))
    outcome.decision, outcome.address = "OFFER", address
    return offer_or_ack(
        service, request, client, MessageType.OFFER, outcome, yiaddr=address, subnet=subnet
    )


def open_pools(
    service: DhcpService,
    request: DhcpPacket,
    outcome: Outcome,
    subnet: Subnet,
    now: float,
    *,
    offering: bool,
) -> tuple[AddressRange, ...]:
    """The pools of ``subnet`` where a new client may still take an address. When every pool
    is at a cap, the first where dropping the oldest open offers makes room is the one; when
    none, the client is refused (a counter, the throttled warning) and () comes back."""
    limits = service.settings.limits
    refusals = [
        (pool, refusal(service.book, pool, limits, offering=offering)) for pool in subnet.pools
    ]
    found = tuple(pool for pool, why in refusals if why is None)
    if found:
        return found
    for pool, _ in refusals:
        why, dropped = make_room(service.book, pool, limits, offering=offering)
        service.counters["offer-reclaimed"] += dropped
        if why is None:
            return (pool,)
    refuse(service, request, outcome, refusals[0][1] or "", now)
    return ()


def refuse(
    service: DhcpService, request: DhcpPacket, outcome: Outcome, why: str, now: float
) -> None:
    """Silence for a new client past a cap; a warning a minute at most, however many."""
    outcome.reason = why
    service.counters["refused-new-client"] += 1
    count = service.refusals.event(now)
    if count is not None:
        log.warning(
            format_event(
                "new-clients-refused",
                refused=count,
                why=why,
                last=request.mac,
                effect="new clients get no address until leases end",
            )
        )


def answer_request(
    service: DhcpService, request: DhcpPacket, client: ClientInfo, outcome: Outcome, subnet: Subnet
) -> Step:
    """An ACK, once the lease is durable, or a NAK (RFC 2131 §4.3.2), or silence."""
    book = service.book
    now = service.clock()
    key = client_key(request.mac, request.get(Opt.CLIENT_ID))
    server_id = option_ip(request, Opt.SERVER_ID)
    requested = option_ip(request, Opt.REQUESTED_IP)
    if server_id is not None:
        # SELECTING (RFC 2131 §4.3.2): the client names the server it chose.
        if server_id != service.settings.server:
            mine = book.of(key)
            if mine is not None and mine.state is LeaseState.OFFERED:
                book.remove(mine.address)
            outcome.reason = f"client chose server {server_id}"
            return None
        address = requested
        state = "selecting"
    elif request.ciaddr != ZERO:
        address, state = request.ciaddr, "renewing"  # or rebinding
    else:
        address, state = requested, "init-reboot"
    if address is None:
        outcome.reason = f"{state} REQUEST without an address"
        return None
    if address not in subnet.network:
        return nak(service, request, outcome, f"{address} is not on this network")
    reserved = reservation(service, request, key, now, subnet)
    if reserved is not None and address != reserved:
        return nak(service, request, outcome, f"this client's address is {reserved}")
    if reserved is None:
        if not subnet.in_pools(address):
            where = f"{subnet.part}'s part of the pool" if subnet.part else "the pool"
            return nak(service, request, outcome, f"{address} is not in {where}")
        owner = service.reservations.owner(address)
        if owner is not None:
            return nak(service, request, outcome, f"{address} is reserved for {owner}")
        mine = book.of(key)
        if state == "init-reboot" and (mine is None or mine.address != address):
            # RFC 2131 §4.3.2: a client coming back asks for the address it had. One this
            # server never gave it gets a NAK (as from dhcpd's and Kea's "authoritative"),
            # and the client starts over with a DISCOVER at once.
            had = f"its lease is {mine.address}" if mine is not None else "no record of it"
            return nak(service, request, outcome, f"{address} is not this client's: {had}")
        if mine is None:
            # A client with no record asking straight for an address takes a new lease.
            pool = next(pool for pool in subnet.pools if address in pool)
            why, dropped = make_room(book, pool, service.settings.limits, offering=False)
            service.counters["offer-reclaimed"] += dropped
            if why is not None:
                refuse(service, request, outcome, why, now)
                return None
    if held_by_another_machine(service, address, request, key, now):
        return nak(service, request, outcome, f"{address} is held by another client")
    expires = now + subnet.settings.lease_time
    chosen = address

    def acknowledge() -> Reply | None:
        outcome.decision, outcome.address = "ACK", chosen
        return offer_or_ack(
            service, request, client, MessageType.ACK, outcome, yiaddr=chosen, subnet=subnet
        )

    # Durable before the ACK leaves.
    lease = Lease(address, key, request.mac, LeaseState.BOUND, expires)
    return bind(service, lease, outcome, acknowledge)


def bind(
    service: DhcpService, lease: Lease, outcome: Outcome, finish: Callable[[], Reply | None]
) -> Step:
    """Put ``lease`` in the book at once (no other client can take its address while it is
    written) and conclude with ``finish`` once it is durable; when the store fails, the
    book is put back as it was and the client gets no reply."""
    book = service.book
    previous = book.at(lease.address)
    book.put(lease)

    def undo() -> None:
        if not book.holds(lease):
            return  # the address has moved on meanwhile (a later change that did land)
        if previous is None:
            book.remove(lease.address)
        else:
            book.put(previous)

    return persist(service, lease, outcome, finish, undo)


def persist(
    service: DhcpService,
    change: Lease | IPv4Address,
    outcome: Outcome,
    finish: Callable[[], Reply | None],
    undo: Callable[[], None] = lambda: None,
) -> Step:
    """Conclude with ``finish`` once ``change`` (a lease to keep, an address to forget) is
    durable; without a store, at once. If the store fails, ``undo`` puts the book back and
    the client gets no reply."""
    store = service.store
    if store is None:
        return finish()

    def done(error: BaseException | None) -> Reply | None:
        if error is None:
            return finish()
        undo()
        if isinstance(error, StoreError):
            log.error(format_event("store-error", error=str(error)))
        outcome.decision, outcome.address = "ignored", None
        outcome.reason = "lease store did not take the change; no reply"
        return None

    return Pending(store.submit(change), done)


def held_by_another_machine(
    service: DhcpService, address: IPv4Address, request: DhcpPacket, key: str, now: float
) -> bool:
    """Whether someone else holds ``address``.

    A machine's firmware and the iPXE it loads often send different client identifiers
    (option 61): for the address reserved for that machine, the same MAC is the same holder.
    """
    book = service.book
    holder = book.holder(address, now)
    if holder is None or holder == key:
        return False
    lease = book.at(address)
    reserved = service.reservations.of(request)
    return not (
        holder != ""  # a quarantined address is nobody's
        and reserved is not None
        and reserved.address == address
        and lease is not None
        and lease.mac.lower() == request.mac.lower()
    )


def reservation(
    service: DhcpService, request: DhcpPacket, key: str, now: float, subnet: Subnet
) -> IPv4Address | None:
    """The address reserved for this client (by a config host or an inventory machine),
    when it can have it now, on the subnet it asks from."""
    found = service.reservations.of(request)
    if found is None:
        return None
    name, address = found.name, found.address
    problem = None
    if not subnet.is_client_address(address) or address == service.settings.server:
        problem = f"not a client address of {subnet.network}"
    elif held_by_another_machine(service, address, request, key, now):
        problem = "leased to another client"
    if problem is not None:
        log.warning(
            format_event("reservation-unusable", machine=name, address=str(address), why=problem)
        )
        return None
    return address


def answer_release(service: DhcpService, request: DhcpPacket, outcome: Outcome) -> Step:
    """The client's lease forgotten, once durably (RFC 2131 §4.3.4); no reply in any case."""
    book = service.book
    key = client_key(request.mac, request.get(Opt.CLIENT_ID))
    address = request.ciaddr
    lease = book.at(address)
    if lease is None or lease.client != key:
        outcome.reason = f"{address} is not leased to this client"
        return None
    book.remove(address)

    def released() -> None:
        outcome.decision, outcome.address = "released", address

    def undo() -> None:
        if book.at(address) is None:  # unless another client has it by now
            book.put(lease)

    return persist(service, address, outcome, released, undo)


def answer_decline(
    service: DhcpService, request: DhcpPacket, outcome: Outcome, subnet: Subnet
) -> Step:
    """The declined address kept out of the pool for a lease time; no reply.

    The quarantines of a pool are capped (``DhcpLimits.max_declined_per_pool``): past it, the
    oldest ends early, so that DECLINEs (from clients with made-up MACs, say) cannot take a
    whole pool. choose_address takes a quarantined address, oldest first, when the pool has
    no other.
    """
    book = service.book
    key = client_key(request.mac, request.get(Opt.CLIENT_ID))
    address = option_ip(request, Opt.REQUESTED_IP)
    lease = book.at(address) if address is not None else None
    if address is None or lease is None or lease.client != key:
        outcome.reason = "DECLINE for an address this client does not hold"
        return None
    # RFC 2131 §4.3.3: the address is in use by someone else; keep it out of the pool.
    until = service.clock() + subnet.settings.lease_time
    quarantine = Lease(address, key, request.mac, LeaseState.DECLINED, until)
    book.put(quarantine)
    declined = address
    cap = service.settings.limits.max_declined_per_pool
    for pool in subnet.pools:
        if address in pool:
            while book.declined(pool) > cap:
                oldest = book.oldest(pool, LeaseState.DECLINED)
                if oldest is None:
                    break
                # In the book only: the store keeps its row until the address is leased again.
                book.remove(oldest.address)
                service.counters["quarantine-ended"] += 1

    def quarantined() -> None:
        outcome.decision, outcome.address = "quarantined", declined
        log.warning(format_event("declined", address=str(declined), mac=request.mac))

    def undo() -> None:
        if book.holds(quarantine):
            book.put(lease)

    return persist(service, quarantine, outcome, quarantined, undo)


def answer_inform(
    service: DhcpService, request: DhcpPacket, client: ClientInfo, outcome: Outcome, subnet: Subnet
) -> Reply | None:
    """The network's settings for a client that has its address (RFC 2131 §4.3.5): an ACK
    without lease options."""
    outcome.decision, outcome.address = "ACK", request.ciaddr
    return offer_or_ack(
        service, request, client, MessageType.ACK, outcome, yiaddr=ZERO, lease=False, subnet=subnet
    )


async def release_address(service: DhcpService, address: IPv4Address) -> Lease | None:
    """The operator's release of ``address``: its lease forgotten from the book, and from the
    store before this returns; the lease it was, or None if there was none. The book is put back
    if the store fails (the StoreError is raised)."""
    book = service.book
    lease = book.at(address)
    if lease is None:
        return None
    book.remove(address)
    if service.store is not None:
        try:
            await service.store.submit(address)
        except BaseException:
            if book.at(address) is None:  # unless another client has it by now
                book.put(lease)
            raise
    log.info(format_event("lease-released", address=str(address), mac=lease.mac, by="api"))
    return lease
