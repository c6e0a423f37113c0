"""The DHCP service: a decoded request in, at most one reply (and where to send it) out.

It applies RFC 2131 to the lease book, asks the boot policy what the client boots, persists
bound leases before acknowledging them, and logs one line per transaction. A request is served
from the subnet it comes from (the interface's, or the relay agent's for a relayed one); BOOTP
clients (RFC 951) are answered from reservations, or from the pools where the subnet says so.
It owns no socket: the transport decodes, calls :meth:`DhcpService.answer`, and sends what comes
back.

Answering is synchronous. A transaction whose outcome must be on disk first (an ACK, a release,
a decline, a dynamic BOOTP lease) comes back as a :class:`Pending`: the change is queued to the
lease store, and the reply exists only once the store says the change is durable. No task is
made per packet, and the store writes every change queued meanwhile in one transaction.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import Final

from netbootd.boot.bootp import bootp_reply
from netbootd.boot.client import ClientInfo, arch_name, classify
from netbootd.boot.hosts import HostEntry, HostTable
from netbootd.boot.inventory import Resolution
from netbootd.boot.leases import (
    AddressRange,
    Lease,
    LeaseBook,
    LeaseState,
    choose_address,
    client_key,
)
from netbootd.boot.policy import BootDecision, BootPolicy
from netbootd.boot.pxe_menu import (
    NO_MENUS,
    USE_BOOTFILE_OPTION,
    PxeMenu,
    PxeMenus,
    answer_boot_item,
    boot_item,
    menu_offer,
)
from netbootd.boot.subnets import (
    NetworkSettings,
    Subnet,
    subnet_for,
    with_agent_info,
)
from netbootd.config import DhcpMode
from netbootd.logfmt import format_event, format_fields
from netbootd.loglines import log_line
from netbootd.proto.dhcp import (
    DhcpDecodeError,
    DhcpPacket,
    MessageType,
    Op,
    Opt,
    decode_ip,
    decode_u16,
    describe,
    ip_option,
    parameter_list,
    reply_to,
)
from netbootd.proto.dhcp_fit import fit
from netbootd.services.dhcp_detail import client_kind, detail_lines
from netbootd.services.dhcp_limits import DhcpLimits, LineBudget, Throttle, refusal
from netbootd.services.hosts import Reservations
from netbootd.services.machines import Machines
from netbootd.store.leases import LeaseStore, StoreError

log = logging.getLogger("netbootd.dhcp")

DHCP_SERVER_PORT = 67
DHCP_CLIENT_PORT = 68
PXE_PORT = 4011  # PXE 2.1 §2.2.3: boot server discovery and proxyDHCP requests
BROADCAST = IPv4Address("255.255.255.255")
ZERO = IPv4Address(0)

OFFER_HOLD_SECONDS = 60.0  # how long an offered address stays promised to its client
FOREVER = float("inf")  # the end of a lease that never ends (RFC 2131 §3.3: all ones)

# PXE 2.1 §2.4.3 option 43 sub-option 6 (PXE_DISCOVERY_CONTROL), bit 3: a boot file name is in
# the offer; download it without boot-server discovery or a menu.
_BROADCAST = 0x8000  # RFC 2131 §2, the BROADCAST bit of flags


@dataclass(frozen=True, slots=True)
class DhcpSettings:
    """What the DHCP service needs from the configuration and the interface."""

    mode: DhcpMode
    server: IPv4Address  # our address on the served interface: server identifier
    network: IPv4Network  # the interface's network: subnet mask and broadcast
    pool: AddressRange | None = None
    lease_time: int = 3600
    next_server: IPv4Address | None = None  # siaddr; this server unless configured
    routers: tuple[IPv4Address, ...] = ()
    dns_servers: tuple[IPv4Address, ...] = ()
    domain_name: str | None = None
    # More options for every client (NTP, MTU, root path, the operator's own), wire-encoded;
    # each replaces a built-in option of its code.
    options: tuple[tuple[int, bytes], ...] = ()
    log_dhcp: bool = False
    limits: DhcpLimits = field(default_factory=DhcpLimits)  # caps on what new clients take
    pxe_menus: PxeMenus = NO_MENUS  # PXE boot menus by client architecture
    # The networks served, each with its pools and settings. Empty: one, the interface's
    # ``network`` with ``pool`` and the settings above (--dhcp-range).
    subnets: tuple[Subnet, ...] = ()
    hosts: HostTable = field(default_factory=HostTable)  # the config file's [[hosts]]
    dynamic_bootp: bool = False  # for the interface's network when ``subnets`` is empty
    bootp_lease_time: int | None = None

    def served(self) -> tuple[Subnet, ...]:
        """The subnets to serve."""
        if self.subnets:
            return self.subnets
        settings = NetworkSettings(
            routers=self.routers,
            dns_servers=self.dns_servers,
            domain_name=self.domain_name,
            lease_time=self.lease_time,
            options=self.options,
            dynamic_bootp=self.dynamic_bootp,
            bootp_lease_time=self.bootp_lease_time,
        )
        pools = (self.pool,) if self.pool is not None else ()
        return (Subnet(self.network, pools, settings, "dhcp-range"),)


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


_Step = Reply | Pending | None


class _Outcome:
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


@dataclass
class DhcpService:
    settings: DhcpSettings
    policy: BootPolicy
    book: LeaseBook = field(default_factory=LeaseBook)
    store: LeaseStore | None = None
    clock: Callable[[], float] = time.time
    counters: Counter[str] = field(default_factory=Counter)
    machines: Machines | None = None  # the inventory, when there is one
    _served: tuple[DhcpSettings, tuple[Subnet, ...]] | None = field(default=None, repr=False)
    _reservations: Reservations | None = field(default=None, repr=False)

    @property
    def subnets(self) -> tuple[Subnet, ...]:
        """The served subnets, worked out once for the settings in force."""
        if self._served is None or self._served[0] is not self.settings:
            self._served = (self.settings, self.settings.served())
        return self._served[1]

    @property
    def reservations(self) -> Reservations:
        """The config's hosts and the inventory's machines (read as the inventory stands at
        each question), made once for the settings and inventory in force."""
        made = self._reservations
        if (
            made is None
            or made.hosts is not self.settings.hosts
            or made.machines is not self.machines
        ):
            made = self._reservations = Reservations(self.settings.hosts, self.machines)
        return made

    refusals: Throttle = field(default_factory=Throttle)  # the warning about caps met
    full_pools: dict[str, Throttle] = field(default_factory=dict)  # warnings of full pools
    bad_lines: LineBudget = field(default_factory=LineBudget)  # lines about bad requests

    async def handle(
        self, request: DhcpPacket, *, local_port: int, source: tuple[str, int]
    ) -> Reply | None:
        """Answer one request and wait until it is concluded; None means silence."""
        step = self.answer(request, local_port=local_port, source=source)
        if isinstance(step, Pending):
            await asyncio.wait([step.durable])
            return step.finish()
        return step

    def answer(
        self,
        request: DhcpPacket,
        *,
        local_port: int,
        source: tuple[str, int],
        group: IPv4Address | None = None,
    ) -> Reply | Pending | None:
        """Answer one request received on ``local_port`` from ``source``; None means silence.
        ``group`` is the multicast group the request was sent to, if it was.

        A :class:`Pending` means the reply waits for the lease store: send what its
        :meth:`Pending.finish` gives once its ``durable`` future is done.
        """
        if self.settings.log_dhcp:
            self._log_options("received", request)
        self.book.expire(self.clock())
        client = classify(request)
        outcome = _Outcome(group=group)
        step: _Step = None
        kind = _kind(request)
        try:
            # Read up front what the reply needs later: a broken option 57 must not surface
            # only once a lease is on disk.
            _max_size(request)
            step = self._dispatch(request, client, outcome, local_port, source)
        except DhcpDecodeError as exc:
            # A well-framed packet whose option contents are broken (a 3-byte option 50, say).
            outcome.reject("option", f"malformed option: {exc}")
            step = None
        if isinstance(step, Pending):
            pending = step

            def conclude(error: BaseException | None) -> Reply | None:
                return self._conclude(
                    request,
                    client,
                    kind,
                    outcome,
                    local_port=local_port,
                    reply=pending._finish(error),
                )

            return Pending(pending.durable, conclude)
        return self._conclude(request, client, kind, outcome, local_port=local_port, reply=step)

    def _conclude(
        self,
        request: DhcpPacket,
        client: ClientInfo,
        kind: str,
        outcome: _Outcome,
        *,
        local_port: int,
        reply: Reply | None,
    ) -> Reply | None:
        """Count and log the transaction; the reply, fitted to the client's maximum size."""
        if outcome.bad:
            self.counters[f"bad-request:{outcome.bad}"] += 1
        if reply is not None:
            reply = self._fitted(request, reply)
        self.counters[f"{kind}:{outcome.decision}"] += 1
        self._log(request, client, kind, outcome, local_port)
        if self.settings.log_dhcp:
            for line in detail_lines(
                request,
                client,
                boot=outcome.boot,
                resolution=outcome.resolution,
                reply=reply.packet if reply is not None else None,
                destination=(reply.address, reply.port) if reply is not None else None,
                max_size=reply.max_size if reply is not None else None,
            ):
                log.info(line)
            if reply is not None:
                self._log_options("sent", reply.packet)
        return reply

    def _persist(
        self,
        change: Lease | IPv4Address,
        outcome: _Outcome,
        finish: Callable[[], Reply | None],
        undo: Callable[[], None] = lambda: None,
    ) -> Reply | Pending | None:
        """Conclude with ``finish`` once ``change`` (a lease to keep, an address to forget) is
        durable; without a store, at once. If the store fails, ``undo`` puts the book back and
        the client gets no reply."""
        if self.store is None:
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

        return Pending(self.store.submit(change), done)

    def _dispatch(
        self,
        request: DhcpPacket,
        client: ClientInfo,
        outcome: _Outcome,
        local_port: int,
        source: tuple[str, int],
    ) -> _Step:
        if request.op != Op.BOOTREQUEST:
            outcome.reject("op", "not a BOOTREQUEST")
            return None
        if not request.chaddr and request.get(Opt.CLIENT_ID) is None:
            # Neither a hardware address nor a client identifier: nothing names the client.
            outcome.reject("chaddr", "no hardware address and no client identifier")
            return None
        mtype = request.message_type
        if mtype == MessageType.REQUEST and self.settings.pxe_menus:
            # PXE 2.1 §2.2.5: a request for a menu item, to its boot server (port 4011, or 67
            # when the client broadcasts it), in either mode.
            menu = self.settings.pxe_menus.for_client(client)
            item = boot_item(request) if menu is not None else None
            if menu is not None and item is not None:
                return self._boot_item(request, menu, item, outcome, source)
        if self.settings.mode is DhcpMode.PROXY:
            if mtype is None:
                outcome.reason = "BOOTP request: a proxyDHCP answers PXE DHCP clients only"
                return None
            return self._proxy(request, client, outcome, local_port, source)
        if local_port == PXE_PORT:
            outcome.reason = "port 4011 is only answered in proxy mode"
            return None
        subnet = subnet_for(self.subnets, request, self.settings.server)
        if subnet is None:
            if request.giaddr != ZERO:
                # A relay agent configured for a network we do not serve: the operator's to fix.
                self.counters["relay-unknown-subnet"] += 1
                outcome.reject(
                    "giaddr", f"relayed from {request.giaddr}, which is in no served subnet"
                )
            else:
                self.counters["no-subnet"] += 1
                outcome.reason = f"no subnet served on {self.settings.network}"
            return None
        if mtype is None:
            return self._bootp(request, client, outcome, subnet)
        if mtype == MessageType.DISCOVER:
            return self._discover(request, client, outcome, subnet)
        if mtype == MessageType.REQUEST:
            return self._request(request, client, outcome, subnet)
        if mtype == MessageType.RELEASE:
            return self._release(request, outcome)
        if mtype == MessageType.DECLINE:
            return self._decline(request, outcome, subnet)
        if mtype == MessageType.INFORM:
            return self._inform(request, client, outcome, subnet)
        outcome.reason = f"message type {mtype} is not for a server"
        return None

    # -- authoritative mode (RFC 2131 §4.3) ---------------------------------------------------

    def _discover(
        self, request: DhcpPacket, client: ClientInfo, outcome: _Outcome, subnet: Subnet
    ) -> Reply | None:
        now = self.clock()
        key = client_key(request.mac, request.get(Opt.CLIENT_ID))
        requested = _opt_ip(request, Opt.REQUESTED_IP)
        address = self._reservation(request, key, now, subnet)
        pools = subnet.pools
        if address is None and pools and self.book.of(key) is None:
            pools = self._open_pools(request, outcome, subnet, now, offering=True)
            if not pools:
                return None
        if address is None:
            if not pools:
                outcome.reason = f"{subnet} has no pool"
                return None
            address = choose_address(
                pools, self.book, key, now, requested, reserved=self.reservations
            )
        if address is None:
            names = ",".join(str(pool) for pool in pools)
            outcome.reason = f"pool {names} is full"
            self.counters["pool-full"] += 1
            # A warning a minute per pool at most: a flood of new MACs against a full pool
            # must not become a flood of lines.
            count = self.full_pools.setdefault(names, Throttle()).event(now)
            if count is not None:
                log.warning(
                    format_event("pool-full", pool=names, mac=request.mac, turned_away=count)
                )
            return None
        current = self.book.at(address)
        if current is None or current.client != key or current.state is not LeaseState.BOUND:
            # Promise the address for a while so that a second DISCOVER does not get it too;
            # a bound lease of this same client stays as it is.
            self.book.put(
                Lease(address, key, request.mac, LeaseState.OFFERED, now + OFFER_HOLD_SECONDS)
            )
        outcome.decision, outcome.address = "OFFER", address
        return self._reply(
            request, client, MessageType.OFFER, outcome, yiaddr=address, subnet=subnet
        )

    def _open_pools(
        self,
        request: DhcpPacket,
        outcome: _Outcome,
        subnet: Subnet,
        now: float,
        *,
        offering: bool,
    ) -> tuple[AddressRange, ...]:
        """The pools of ``subnet`` where a new client may still take an address; when none,
        the client is refused (a counter, the throttled warning) and () comes back."""
        limits = self.settings.limits
        refusals = [
            (pool, refusal(self.book, pool, limits, offering=offering)) for pool in subnet.pools
        ]
        open_pools = tuple(pool for pool, why in refusals if why is None)
        if not open_pools:
            self._refuse(request, outcome, refusals[0][1] or "", now)
        return open_pools

    def _refuse(self, request: DhcpPacket, outcome: _Outcome, why: str, now: float) -> None:
        """Silence for a new client past a cap; a warning a minute at most, however many."""
        outcome.reason = why
        self.counters["refused-new-client"] += 1
        count = self.refusals.event(now)
        if count is not None:
            log.warning(
                format_event(
                    "new-clients-refused",
                    refused=count,
                    why=why,
                    last=request.mac,
                    effect="new clients get no offer until open offers expire or leases end",
                )
            )

    def _request(
        self, request: DhcpPacket, client: ClientInfo, outcome: _Outcome, subnet: Subnet
    ) -> _Step:
        now = self.clock()
        key = client_key(request.mac, request.get(Opt.CLIENT_ID))
        server_id = _opt_ip(request, Opt.SERVER_ID)
        requested = _opt_ip(request, Opt.REQUESTED_IP)
        if server_id is not None:
            # SELECTING (RFC 2131 §4.3.2): the client names the server it chose.
            if server_id != self.settings.server:
                mine = self.book.of(key)
                if mine is not None and mine.state is LeaseState.OFFERED:
                    self.book.remove(mine.address)
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
            return self._nak(request, client, outcome, f"{address} is not on this network")
        reservation = self._reservation(request, key, now, subnet)
        if reservation is not None and address != reservation:
            return self._nak(request, client, outcome, f"this client's address is {reservation}")
        if reservation is None:
            if not subnet.in_pools(address):
                where = f"{subnet.part}'s part of the pool" if subnet.part else "the pool"
                return self._nak(request, client, outcome, f"{address} is not in {where}")
            owner = self.reservations.owner(address)
            if owner is not None:
                return self._nak(request, client, outcome, f"{address} is reserved for {owner}")
            mine = self.book.of(key)
            if state == "init-reboot" and (mine is None or mine.address != address):
                # RFC 2131 §4.3.2: a client coming back asks for the address it had. One this
                # server never gave it gets a NAK (as from dhcpd's and Kea's "authoritative"),
                # and the client starts over with a DISCOVER at once.
                had = f"its lease is {mine.address}" if mine is not None else "no record of it"
                return self._nak(request, client, outcome, f"{address} is not this client's: {had}")
            if mine is None:
                # A client with no record asking straight for an address takes a new lease.
                pool = next(pool for pool in subnet.pools if address in pool)
                why = refusal(self.book, pool, self.settings.limits, offering=False)
                if why is not None:
                    self._refuse(request, outcome, why, now)
                    return None
        if self._held_by_another_machine(address, request, key, now):
            return self._nak(request, client, outcome, f"{address} is held by another client")
        expires = now + subnet.settings.lease_time

        def acknowledge() -> Reply | None:
            outcome.decision, outcome.address = "ACK", address
            return self._reply(
                request, client, MessageType.ACK, outcome, yiaddr=address, subnet=subnet
            )

        # Durable before the ACK leaves.
        lease = Lease(address, key, request.mac, LeaseState.BOUND, expires)
        return self._bind(lease, outcome, acknowledge)

    def _bind(self, lease: Lease, outcome: _Outcome, finish: Callable[[], Reply | None]) -> _Step:
        """Put ``lease`` in the book at once (no other client can take its address while it is
        written) and conclude with ``finish`` once it is durable; when the store fails, the
        book is put back as it was and the client gets no reply."""
        previous = self.book.at(lease.address)
        self.book.put(lease)

        def undo() -> None:
            if not self.book.holds(lease):
                return  # the address has moved on meanwhile (a later change that did land)
            if previous is None:
                self.book.remove(lease.address)
            else:
                self.book.put(previous)

        return self._persist(lease, outcome, finish, undo)

    def _held_by_another_machine(
        self, address: IPv4Address, request: DhcpPacket, key: str, now: float
    ) -> bool:
        """Whether someone else holds ``address``.

        A machine's firmware and the iPXE it loads often send different client identifiers
        (option 61): for the address reserved for that machine, the same MAC is the same holder.
        """
        holder = self.book.holder(address, now)
        if holder is None or holder == key:
            return False
        lease = self.book.at(address)
        reserved = self.reservations.of(request)
        return not (
            holder != ""  # a quarantined address is nobody's
            and reserved is not None
            and reserved.address == address
            and lease is not None
            and lease.mac.lower() == request.mac.lower()
        )

    def _reservation(
        self, request: DhcpPacket, key: str, now: float, subnet: Subnet
    ) -> IPv4Address | None:
        """The address reserved for this client (by a config host or an inventory machine),
        when it can have it now, on the subnet it asks from."""
        found = self.reservations.of(request)
        if found is None:
            return None
        name, address = found.name, found.address
        problem = None
        if not subnet.is_client_address(address) or address == self.settings.server:
            problem = f"not a client address of {subnet.network}"
        elif self._held_by_another_machine(address, request, key, now):
            problem = "leased to another client"
        if problem is not None:
            log.warning(
                format_event(
                    "reservation-unusable", machine=name, address=str(address), why=problem
                )
            )
            return None
        return address

    def _release(self, request: DhcpPacket, outcome: _Outcome) -> _Step:
        key = client_key(request.mac, request.get(Opt.CLIENT_ID))
        address = request.ciaddr
        lease = self.book.at(address)
        if lease is None or lease.client != key:
            outcome.reason = f"{address} is not leased to this client"
            return None
        self.book.remove(address)

        def released() -> None:
            outcome.decision, outcome.address = "released", address

        def undo() -> None:
            if self.book.at(address) is None:  # unless another client has it by now
                self.book.put(lease)

        return self._persist(address, outcome, released, undo)

    def _decline(self, request: DhcpPacket, outcome: _Outcome, subnet: Subnet) -> _Step:
        key = client_key(request.mac, request.get(Opt.CLIENT_ID))
        address = _opt_ip(request, Opt.REQUESTED_IP)
        lease = self.book.at(address) if address is not None else None
        if address is None or lease is None or lease.client != key:
            outcome.reason = "DECLINE for an address this client does not hold"
            return None
        # RFC 2131 §4.3.3: the address is in use by someone else; keep it out of the pool.
        until = self.clock() + subnet.settings.lease_time
        quarantine = Lease(address, key, request.mac, LeaseState.DECLINED, until)
        self.book.put(quarantine)

        def quarantined() -> None:
            outcome.decision, outcome.address = "quarantined", address
            log.warning(format_event("declined", address=str(address), mac=request.mac))

        def undo() -> None:
            if self.book.holds(quarantine):
                self.book.put(lease)

        return self._persist(quarantine, outcome, quarantined, undo)

    def _inform(
        self, request: DhcpPacket, client: ClientInfo, outcome: _Outcome, subnet: Subnet
    ) -> Reply | None:
        outcome.decision, outcome.address = "ACK", request.ciaddr
        return self._reply(
            request, client, MessageType.ACK, outcome, yiaddr=ZERO, lease=False, subnet=subnet
        )

    # -- BOOTP (RFC 951, RFC 1497; dhcpd's dynamic-bootp) -------------------------------------

    def _bootp(
        self, request: DhcpPacket, client: ClientInfo, outcome: _Outcome, subnet: Subnet
    ) -> _Step:
        """A BOOTREPLY from the client's reservation, or from the pools with dynamic BOOTP."""
        now = self.clock()
        key = client_key(request.mac, request.get(Opt.CLIENT_ID))
        address = self._reservation(request, key, now, subnet)
        settings = subnet.settings
        if address is None:
            if not settings.dynamic_bootp:
                self.counters["bootp-unanswered"] += 1
                outcome.notable = True
                outcome.reason = (
                    f"BOOTP request with no reservation on {subnet}, and dynamic-bootp is off"
                )
                return None
            pools = subnet.pools
            if pools and self.book.of(key) is None:
                # A lease for good, for a client with no record: the caps on leases hold.
                pools = self._open_pools(request, outcome, subnet, now, offering=False)
                if not pools:
                    return None
            address = choose_address(pools, self.book, key, now, reserved=self.reservations)
            if address is None:
                outcome.reason = f"no free address in the pools of {subnet} for BOOTP"
                return None
            # dhcpd's dynamic-bootp: a BOOTP client never renews nor releases, so its lease
            # lasts as configured, forever by default, and is durable before the reply.
            length = settings.bootp_lease_time
            expires = FOREVER if length is None else now + length
            lease = Lease(address, key, request.mac, LeaseState.BOUND, expires)
            chosen = address
            return self._bind(
                lease, outcome, lambda: self._bootreply(request, client, outcome, subnet, chosen)
            )
        return self._bootreply(request, client, outcome, subnet, address)

    def _bootreply(
        self,
        request: DhcpPacket,
        client: ClientInfo,
        outcome: _Outcome,
        subnet: Subnet,
        address: IPv4Address,
    ) -> Reply:
        host = self.reservations.host(request)
        boot, _ = self._boot(client, address, host)
        outcome.boot = boot
        options: list[tuple[int, bytes]] = [(Opt.SUBNET_MASK, ip_option(subnet.network.netmask))]
        options += self._network_options(request, subnet, host, requested_only=False)
        options = _override(options, self._options(subnet, host), request, requested_only=False)
        next_server = self._next_server(host)
        file_field = boot.filename.encode() if boot.filename is not None else b""
        built = bootp_reply(
            request,
            yiaddr=address,
            siaddr=next_server,
            file=file_field,
            options=with_agent_info(request, options),
        )
        if built.left_out:
            log.warning(
                format_event(
                    "bootp-options-left-out",
                    mac=request.mac,
                    options=",".join(str(code) for code in built.left_out),
                    why="they do not fit the 64-octet BOOTP vendor area",
                )
            )
        outcome.decision, outcome.address = "BOOTREPLY", address
        address_to, port = reply_destination(request, None)
        return Reply(built.packet, address_to, port, _max_size(request))

    def _nak(
        self, request: DhcpPacket, client: ClientInfo, outcome: _Outcome, reason: str
    ) -> Reply:
        outcome.decision, outcome.reason = "NAK", reason
        packet = reply_to(
            request,
            flags=request.flags | _BROADCAST if request.giaddr != ZERO else request.flags,
            options=(
                (Opt.MESSAGE_TYPE, bytes([MessageType.NAK])),
                (Opt.SERVER_ID, ip_option(self.settings.server)),
                *with_agent_info(request, [(Opt.MESSAGE, reason.encode())]),
            ),
        )
        address, port = reply_destination(request, MessageType.NAK)
        return Reply(packet, address, port, _max_size(request))

    # -- proxy mode (PXE 2.1 §2.2.3) -----------------------------------------------------------

    def _proxy(
        self,
        request: DhcpPacket,
        client: ClientInfo,
        outcome: _Outcome,
        local_port: int,
        source: tuple[str, int],
    ) -> Reply | None:
        if not client.is_pxe:
            outcome.reason = "proxy mode answers PXE clients only"
            return None
        mtype = request.message_type
        if local_port == DHCP_SERVER_PORT and mtype == MessageType.DISCOVER:
            # The proxy offer: no address, only boot information, beside the site's offer.
            outcome.decision = "PROXY-OFFER"
            return self._reply(
                request, client, MessageType.OFFER, outcome, yiaddr=ZERO, lease=False
            )
        if (
            local_port == DHCP_SERVER_PORT
            and mtype == MessageType.REQUEST
            and _opt_ip(request, Opt.SERVER_ID) == self.settings.server
        ):
            # A client that took the proxy's offer for a server's and asks it, at port 67: the
            # boot information again, with no address (the site server's REQUESTs name that
            # server and are not ours to answer).
            outcome.decision = "PROXY-ACK"
            return self._reply(request, client, MessageType.ACK, outcome, yiaddr=ZERO, lease=False)
        if local_port == PXE_PORT and mtype in (MessageType.REQUEST, MessageType.INFORM):
            # The client has its address now and asks us directly, at port 4011; answer to
            # the address and port it asked from.
            outcome.decision = "PROXY-ACK"
            reply = self._reply(request, client, MessageType.ACK, outcome, yiaddr=ZERO, lease=False)
            if reply is None:
                return None
            host, port = source
            return Reply(reply.packet, IPv4Address(host), port, reply.max_size)
        outcome.reason = f"{_kind(request)} on port {local_port} is the site DHCP server's"
        return None

    # -- PXE boot menus (PXE 2.1 §2.2.5) --------------------------------------------------------

    def _boot_item(
        self,
        request: DhcpPacket,
        menu: PxeMenu,
        item: tuple[int, int],
        outcome: _Outcome,
        source: tuple[str, int],
    ) -> Reply | None:
        settings = self.settings
        answer = answer_boot_item(
            request,
            menu,
            *item,
            server=settings.server,
            next_server=settings.next_server or settings.server,
        )
        outcome.menu, outcome.item = menu.name, answer.position
        if answer.packet is None or answer.item is None:
            outcome.decision = "unknown-item" if answer.item is None else "ignored"
            outcome.reason = answer.reason
            return None
        outcome.decision = "BOOT-ITEM-ACK"
        outcome.boot = BootDecision(None, answer.item.file, None, answer.reason)
        host, port = source
        address = IPv4Address(host)
        if address == ZERO:
            address, port = reply_destination(request, MessageType.ACK)
        return Reply(answer.packet, address, port, _max_size(request))

    # -- replies -------------------------------------------------------------------------------

    def _reply(
        self,
        request: DhcpPacket,
        client: ClientInfo,
        mtype: MessageType,
        outcome: _Outcome,
        *,
        yiaddr: IPv4Address,
        lease: bool = True,
        subnet: Subnet | None = None,
    ) -> Reply | None:
        settings = self.settings
        host = self.reservations.host(request) if subnet is not None else None
        boot, specific = self._boot(client, yiaddr, host, outcome)
        next_server = self._next_server(host)
        menu = None
        if settings.pxe_menus and not specific:
            # A machine the inventory gives a profile, or a host entry its boot file, boots
            # that; a PXE menu is for the others.
            menu = menu_offer(settings.pxe_menus.for_client(client), boot, settings.server)
        if menu is not None:
            boot, outcome.menu = menu.boot, menu.name
            next_server = menu.next_server or next_server
        outcome.boot = boot
        if settings.mode is DhcpMode.PROXY and boot.filename is None and menu is None:
            outcome.decision, outcome.reason = "ignored", boot.reason
            return None
        options: list[tuple[int, bytes]] = [
            (Opt.MESSAGE_TYPE, _MESSAGE_TYPE_VALUES[mtype]),
            (Opt.SERVER_ID, settings.server.packed),
        ]
        if lease and subnet is not None:
            options += subnet.lease_options
        if subnet is not None:
            options.append(subnet.mask_option)
            options += self._network_options(request, subnet, host)
        if client.is_http_boot:
            # UEFI HTTP Boot (UEFI 2.x §24.7) only takes offers that say HTTPClient.
            options.append((Opt.VENDOR_CLASS, b"HTTPClient"))
        elif client.is_pxe:
            options.append((Opt.VENDOR_CLASS, b"PXEClient"))
            offered = menu.vendor_options if menu is not None else USE_BOOTFILE_OPTION
            options.append((Opt.VENDOR_SPECIFIC, offered))
        uuid = request.get(Opt.CLIENT_UUID)
        if uuid is not None and client.is_pxe:
            options.append((Opt.CLIENT_UUID, uuid))  # PXE 2.1 §2.2.3: echoed by the proxy
        file_field = b""
        if boot.filename is not None:
            name = boot.filename.encode()
            if not boot.over_http:
                options.append((Opt.TFTP_SERVER, address_text(next_server).encode()))
            options.append((Opt.BOOTFILE, name))
            file_field = name
        if subnet is not None:
            options = _override(options, self._options(subnet, host), request)
        options = with_agent_info(request, options)
        packet = reply_to(
            request,
            options,
            ciaddr=request.ciaddr if mtype == MessageType.ACK else ZERO,
            yiaddr=yiaddr,
            siaddr=next_server,
            file=file_field,
        )
        address, port = reply_destination(request, mtype)
        return Reply(packet, address, port, _max_size(request))

    def boot_choice(self, request: DhcpPacket) -> tuple[BootDecision, bool]:
        """What the client of ``request`` is told to boot, as a reply would tell it (its host
        entry first), and whether that was decided for this machine; for ``explain``."""
        host = (
            self.reservations.host(request)
            if self.settings.mode is DhcpMode.AUTHORITATIVE
            else None
        )
        return self._boot(classify(request), ZERO, host)

    def _boot(
        self,
        client: ClientInfo,
        yiaddr: IPv4Address,
        host: HostEntry | None,
        outcome: _Outcome | None = None,
    ) -> tuple[BootDecision, bool]:
        """What the client boots: its host entry's boot-file, else the boot policy's choice;
        and whether that was decided for this machine (a host entry, an inventory profile)."""
        resolution = None
        if self.machines is not None:
            resolution = self.machines.resolve_client(client)
            if outcome is not None:
                outcome.resolution = resolution  # for --log-dhcp
            self.machines.remember(client, yiaddr if yiaddr != ZERO else None)
        if host is not None and host.boot_file is not None:
            why = f"[[hosts]] {host.label} boot-file"
            if host.boot_file.startswith(("http://", "https://")):
                return BootDecision(None, None, host.boot_file, why), True
            return BootDecision(None, host.boot_file, None, why), True
        chosen = resolution is not None and resolution.chosen
        return self.policy.decide(client, resolution), chosen

    def _next_server(self, host: HostEntry | None) -> IPv4Address:
        """siaddr: the host entry's next-server, else the configured one, else this server."""
        if host is not None and host.next_server is not None:
            return host.next_server
        return self.settings.next_server or self.settings.server

    @staticmethod
    def _options(subnet: Subnet, host: HostEntry | None) -> Mapping[int, bytes]:
        """The operator's own options for this client: the subnet's, then the host's."""
        if host is None or not host.options:
            return subnet.own_options
        return {**subnet.own_options, **dict(host.options)}

    def _network_options(
        self,
        request: DhcpPacket,
        subnet: Subnet,
        host: HostEntry | None,
        *,
        requested_only: bool = True,
    ) -> list[tuple[int, bytes]]:
        """The network's options the client asked for (all of them if it sent no list)."""
        found = list(subnet.network_options)
        hostname = host.hostname if host is not None else None
        if hostname is None and self.machines is not None:
            machine = self.machines.setup.inventory.machine_by_mac(request.mac)
            hostname = machine.hostname if machine is not None else None
        if hostname:
            # The host's or the inventory's name for the machine, as dhcpd's
            # use-host-decl-names.
            found.append((Opt.HOST_NAME, hostname.encode()))
        return _requested(request, found) if requested_only else found

    def _fitted(self, request: DhcpPacket, reply: Reply) -> Reply:
        """``reply`` cut to the client's maximum message size (RFC 2132 §9.10), logged."""
        try:
            packet, left_out = fit(reply.packet, reply.max_size, parameter_list(request))
        except ValueError:
            return reply  # even the essentials are too big: the edge counts the encode error
        if not left_out:
            return reply
        self.counters["reply-trimmed"] += 1
        log.info(
            format_event(
                "reply-trimmed",
                xid=f"0x{request.xid:08x}",
                mac=request.mac,
                max_size=reply.max_size,
                left_out=",".join(str(code) for code in left_out),
            )
        )
        return Reply(packet, reply.address, reply.port, reply.max_size)

    # -- logging -------------------------------------------------------------------------------

    def _log(
        self,
        request: DhcpPacket,
        client: ClientInfo,
        kind: str,
        outcome: _Outcome,
        local_port: int,
    ) -> None:
        level = logging.INFO if outcome.decision != "ignored" or outcome.notable else logging.DEBUG
        if outcome.decision in ("NAK", "unknown-item") or outcome.bad:
            level = logging.WARNING
        if not log.isEnabledFor(level):
            return
        held = 0
        if outcome.bad:
            allowed = self.bad_lines.allow(self.clock())
            if allowed is None:
                return  # a burst of bad requests: counted, its lines held back
            held = allowed
        # What a burst of clients have in common (their classes, what they boot) is rendered
        # once; what is each client's own, each time. The fields stay in this order. Values
        # that are never quoted are written as they are: a MAC in hex (quoted when empty),
        # addresses, numbers, and the decision, one of this module's names.
        mac = request.mac or '""'
        address = address_text(outcome.address) if outcome.address is not None else "-"
        parts = [
            f"{kind} xid=0x{format(request.xid, '08x')} mac={mac}",  # no spec: see setup.py
            _client_part(
                client.vendor_class, client.user_classes, client.arch, client_kind(client)
            ),
            f"decision={outcome.decision} address={address}",
        ]
        if client.ndi is not None or outcome.menu or outcome.item:
            own: dict[str, object] = {}
            if client.ndi is not None:
                own["ndi"] = client.ndi
            if outcome.menu:
                own["menu"] = outcome.menu
            if outcome.item:
                own["item"] = outcome.item
            parts.append(format_fields(**own))
        if outcome.boot is not None:
            parts.append(_boot_part(outcome.boot.filename, outcome.boot.reason))
        if request.giaddr != ZERO:
            parts.append(f"relay={address_text(request.giaddr)}")
        if local_port != DHCP_SERVER_PORT:
            parts.append(f"port={local_port}")
        if outcome.group is not None:
            parts.append(f"to={address_text(outcome.group)}")
        if outcome.reason:
            parts.append(format_fields(reason=outcome.reason))
        if held:
            parts.append(f"held_back={held}")
        log_line(log, level, " ".join(parts))

    def _log_options(self, direction: str, packet: DhcpPacket) -> None:
        for line in describe(packet):
            log.info("%s xid=0x%08x %s", direction, packet.xid, line.strip())


_MESSAGE_TYPE_VALUES = {mtype: bytes((mtype,)) for mtype in MessageType}


@functools.lru_cache(maxsize=1024)
def _client_part(
    vendor_class: str, user_classes: tuple[str, ...], arch: int | None, kind: str
) -> str:
    """The client's classes as a transaction line shows them."""
    return format_fields(
        vendor_class=vendor_class or "-",
        user_class=",".join(user_classes) or "-",
        arch=arch_name(arch),
        client=kind,
    )


@functools.lru_cache(maxsize=1024)
def _boot_part(filename: str | None, reason: str) -> str:
    """What the client boots, and why, as a transaction line shows them."""
    return format_fields(file=filename or "-", why=reason)


def address_text(address: IPv4Address) -> str:
    """``str(address)``, compiled: each reply and its log line need one or two, and
    ``IPv4Address.__str__`` is interpreted."""
    n = int(address)
    return f"{n >> 24}.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"


def _kind(request: DhcpPacket) -> str:
    mtype = request.message_type
    if mtype is None:
        return "BOOTP"
    if isinstance(mtype, MessageType):
        return mtype.name
    return f"TYPE{mtype}"


def _override(
    options: list[tuple[int, bytes]],
    mine: Mapping[int, bytes],
    request: DhcpPacket,
    *,
    requested_only: bool = True,
) -> list[tuple[int, bytes]]:
    """The operator's own options replace built-in ones of the same code, in place; the rest
    follow, those the client asked for (or all of them)."""
    if not mine:
        return options
    mine = dict(mine)
    replaced = [(code, mine.pop(code, value)) for code, value in options]
    return replaced + (_requested(request, mine.items()) if requested_only else list(mine.items()))


def _requested(
    request: DhcpPacket, options: Iterable[tuple[int, bytes]]
) -> list[tuple[int, bytes]]:
    """The options the client's parameter request list (option 55) names, in its order of
    preference (RFC 2132 §9.8); all of them, as they come, when it sent no list."""
    wanted = request.get(Opt.PARAMETER_LIST)
    offered = list(options)
    if wanted is None:
        return offered
    by_code = dict(offered)
    return [(code, by_code[code]) for code in dict.fromkeys(wanted) if code in by_code]


def _opt_ip(request: DhcpPacket, code: Opt) -> IPv4Address | None:
    raw = request.get(code)
    return decode_ip(raw) if raw is not None else None


def _max_size(request: DhcpPacket) -> int:
    raw = request.get(Opt.MAX_MESSAGE_SIZE)
    if raw is None:
        return 576
    return max(576, decode_u16(raw))


def reply_destination(request: DhcpPacket, mtype: MessageType | None) -> tuple[IPv4Address, int]:
    """Where a reply goes, by RFC 2131 §4.1 (RFC 951 §4 for a BOOTREPLY, ``mtype`` None)."""
    if request.giaddr != ZERO:
        return request.giaddr, DHCP_SERVER_PORT  # through the relay agent
    if mtype == MessageType.NAK:
        return BROADCAST, DHCP_CLIENT_PORT
    if request.ciaddr != ZERO:
        return request.ciaddr, DHCP_CLIENT_PORT
    # A client without an address that did not set the broadcast bit could be reached by
    # unicast to yiaddr only with an ARP entry made for it; RFC 2131 §4.1 lets the server
    # broadcast instead, which every client accepts.
    return BROADCAST, DHCP_CLIENT_PORT
