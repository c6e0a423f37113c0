"""The DHCP service: a decoded request in, at most one reply (and where to send it) out.

It applies RFC 2131 to the lease book, asks the boot policy what the client boots, persists
bound leases before acknowledging them, and logs one line per transaction. It owns no socket:
the transport decodes, calls :meth:`DhcpService.handle`, and sends what comes back.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network

from netbootd.boot.client import ClientInfo, classify
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
from netbootd.config import DhcpMode
from netbootd.logfmt import format_event
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
    ips_option,
    parameter_list,
    pxe_vendor_options,
    u32_option,
)
from netbootd.proto.dhcp_fit import fit
from netbootd.services.dhcp_detail import client_kind, detail_lines
from netbootd.services.dhcp_limits import DhcpLimits, LineBudget, Throttle, refusal
from netbootd.services.machines import Machines
from netbootd.store.leases import LeaseStore, StoreError

log = logging.getLogger("netbootd.dhcp")

DHCP_SERVER_PORT = 67
DHCP_CLIENT_PORT = 68
PXE_PORT = 4011  # PXE 2.1 §2.2.3: boot server discovery and proxyDHCP requests
BROADCAST = IPv4Address("255.255.255.255")
ZERO = IPv4Address(0)

OFFER_HOLD_SECONDS = 60.0  # how long an offered address stays promised to its client

# PXE 2.1 §2.4.3 option 43 sub-option 6 (PXE_DISCOVERY_CONTROL), bit 3: a boot file name is in
# the offer; download it without boot-server discovery or a menu.
_PXE_USE_BOOTFILE = pxe_vendor_options([(6, bytes([0x08]))])


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


@dataclass(frozen=True, slots=True)
class Reply:
    packet: DhcpPacket
    address: IPv4Address
    port: int
    max_size: int


@dataclass(slots=True)
class _Outcome:
    """What happened in one transaction, for the log line."""

    decision: str = "ignored"
    address: IPv4Address | None = None
    reason: str = ""
    boot: BootDecision | None = None
    bad: str = ""  # what the peer got wrong, for a request that breaks the protocol
    resolution: Resolution | None = None  # the inventory's say, for --log-dhcp

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
    refusals: Throttle = field(default_factory=Throttle)  # the warning about caps met
    bad_lines: LineBudget = field(default_factory=LineBudget)  # lines about bad requests

    async def handle(
        self, request: DhcpPacket, *, local_port: int, source: tuple[str, int]
    ) -> Reply | None:
        """Answer one request received on ``local_port`` from ``source``; None means silence."""
        if self.settings.log_dhcp:
            self._log_options("received", request)
        self.book.expire(self.clock())
        client = classify(request)
        outcome = _Outcome()
        reply: Reply | None = None
        kind = _kind(request)
        try:
            reply = await self._dispatch(request, client, outcome, local_port, source)
        except DhcpDecodeError as exc:
            # A well-framed packet whose option contents are broken (a 3-byte option 50, say).
            outcome.reject("option", f"malformed option: {exc}")
            reply = None
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

    async def _dispatch(
        self,
        request: DhcpPacket,
        client: ClientInfo,
        outcome: _Outcome,
        local_port: int,
        source: tuple[str, int],
    ) -> Reply | None:
        if request.op != Op.BOOTREQUEST:
            outcome.reject("op", "not a BOOTREQUEST")
            return None
        if not request.chaddr and request.get(Opt.CLIENT_ID) is None:
            # Neither a hardware address nor a client identifier: nothing names the client.
            outcome.reject("chaddr", "no hardware address and no client identifier")
            return None
        mtype = request.message_type
        if mtype is None:
            outcome.reason = "BOOTP request: no reservation can answer it yet"
            return None
        if self.settings.mode is DhcpMode.PROXY:
            return self._proxy(request, client, outcome, local_port, source)
        if local_port == PXE_PORT:
            outcome.reason = "port 4011 is only answered in proxy mode"
            return None
        if request.giaddr != ZERO and request.giaddr not in self.settings.network:
            outcome.reject("giaddr", f"relayed from {request.giaddr}, a network with no pool here")
            return None
        if mtype == MessageType.DISCOVER:
            return self._discover(request, client, outcome)
        if mtype == MessageType.REQUEST:
            return await self._request(request, client, outcome)
        if mtype == MessageType.RELEASE:
            await self._release(request, outcome)
            return None
        if mtype == MessageType.DECLINE:
            await self._decline(request, outcome)
            return None
        if mtype == MessageType.INFORM:
            return self._inform(request, client, outcome)
        outcome.reason = f"message type {mtype} is not for a server"
        return None

    # -- authoritative mode (RFC 2131 §4.3) ---------------------------------------------------

    def _discover(self, request: DhcpPacket, client: ClientInfo, outcome: _Outcome) -> Reply | None:
        pool = self.settings.pool
        if pool is None:
            outcome.reason = "no pool"
            return None
        now = self.clock()
        key = client_key(request.mac, request.get(Opt.CLIENT_ID))
        requested = _opt_ip(request, Opt.REQUESTED_IP)
        address = self._reservation(request, key, now)
        if address is None and self.book.of(key) is None:
            why = refusal(self.book, pool, self.settings.limits)
            if why is not None:
                self._refuse(request, outcome, why, now)
                return None
        if address is None:
            reserved = self.machines.reserved if self.machines is not None else frozenset()
            address = choose_address(pool, self.book, key, now, requested, reserved=reserved)
        if address is None:
            outcome.reason = f"pool {pool} is full"
            log.warning(format_event("pool-full", pool=str(pool), mac=request.mac))
            return None
        current = self.book.at(address)
        if current is None or current.client != key or current.state is not LeaseState.BOUND:
            # Promise the address for a while so that a second DISCOVER does not get it too;
            # a bound lease of this same client stays as it is.
            self.book.put(
                Lease(address, key, request.mac, LeaseState.OFFERED, now + OFFER_HOLD_SECONDS)
            )
        outcome.decision, outcome.address = "OFFER", address
        return self._reply(request, client, MessageType.OFFER, outcome, yiaddr=address)

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

    async def _request(
        self, request: DhcpPacket, client: ClientInfo, outcome: _Outcome
    ) -> Reply | None:
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
        if address not in self.settings.network:
            return self._nak(request, client, outcome, f"{address} is not on this network")
        pool = self.settings.pool
        reservation = self._reservation(request, key, now)
        if reservation is not None and address != reservation:
            return self._nak(request, client, outcome, f"this client's address is {reservation}")
        if reservation is None:
            if pool is None or address not in pool:
                return self._nak(request, client, outcome, f"{address} is not in the pool")
            owner = self.machines.reserved_for(address) if self.machines is not None else None
            if owner is not None:
                return self._nak(request, client, outcome, f"{address} is reserved for {owner}")
            if self.book.of(key) is None:
                # A client with no record asking straight for an address takes a new lease.
                why = refusal(self.book, pool, self.settings.limits, offering=False)
                if why is not None:
                    self._refuse(request, outcome, why, now)
                    return None
        if self._held_by_another_machine(address, request, key, now):
            return self._nak(request, client, outcome, f"{address} is held by another client")
        lease = Lease(address, key, request.mac, LeaseState.BOUND, now + self.settings.lease_time)
        previous = self.book.at(address)
        self.book.put(lease)  # reserve before the await: no other client can take it meanwhile
        if self.store is not None:
            try:
                await self.store.save(lease)  # durable before the ACK leaves
            except StoreError as exc:
                if previous is None:
                    self.book.remove(address)
                else:
                    self.book.put(previous)
                log.error(format_event("store-error", error=str(exc)))
                outcome.reason = "lease could not be stored; no ACK"
                return None
        outcome.decision, outcome.address = "ACK", address
        return self._reply(request, client, MessageType.ACK, outcome, yiaddr=address)

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
        reserved = self.machines.reservation(request.mac) if self.machines is not None else None
        return not (
            holder != ""  # a quarantined address is nobody's
            and reserved is not None
            and reserved[1] == address
            and lease is not None
            and lease.mac.lower() == request.mac.lower()
        )

    def _reservation(self, request: DhcpPacket, key: str, now: float) -> IPv4Address | None:
        """The address the inventory reserves for this client, when it can have it now."""
        if self.machines is None:
            return None
        found = self.machines.reservation(request.mac)
        if found is None:
            return None
        name, address = found
        problem = None
        if address not in self.settings.network or address == self.settings.server:
            problem = f"not a client address of {self.settings.network}"
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

    async def _release(self, request: DhcpPacket, outcome: _Outcome) -> None:
        key = client_key(request.mac, request.get(Opt.CLIENT_ID))
        lease = self.book.at(request.ciaddr)
        if lease is None or lease.client != key:
            outcome.reason = f"{request.ciaddr} is not leased to this client"
            return
        self.book.remove(request.ciaddr)
        if self.store is not None:
            await self.store.delete(request.ciaddr)
        outcome.decision, outcome.address = "released", request.ciaddr

    async def _decline(self, request: DhcpPacket, outcome: _Outcome) -> None:
        key = client_key(request.mac, request.get(Opt.CLIENT_ID))
        address = _opt_ip(request, Opt.REQUESTED_IP)
        lease = self.book.at(address) if address is not None else None
        if address is None or lease is None or lease.client != key:
            outcome.reason = "DECLINE for an address this client does not hold"
            return
        # RFC 2131 §4.3.3: the address is in use by someone else; keep it out of the pool.
        quarantine = Lease(
            address, key, request.mac, LeaseState.DECLINED, self.clock() + self.settings.lease_time
        )
        self.book.put(quarantine)
        if self.store is not None:
            await self.store.save(quarantine)
        outcome.decision, outcome.address = "quarantined", address
        log.warning(format_event("declined", address=str(address), mac=request.mac))

    def _inform(self, request: DhcpPacket, client: ClientInfo, outcome: _Outcome) -> Reply | None:
        outcome.decision, outcome.address = "ACK", request.ciaddr
        return self._reply(request, client, MessageType.ACK, outcome, yiaddr=ZERO, lease=False)

    def _nak(
        self, request: DhcpPacket, client: ClientInfo, outcome: _Outcome, reason: str
    ) -> Reply:
        outcome.decision, outcome.reason = "NAK", reason
        packet = DhcpPacket(
            op=Op.BOOTREPLY,
            xid=request.xid,
            chaddr=request.chaddr,
            htype=request.htype,
            flags=request.flags,
            giaddr=request.giaddr,
            options=(
                (Opt.MESSAGE_TYPE, bytes([MessageType.NAK])),
                (Opt.SERVER_ID, ip_option(self.settings.server)),
                (Opt.MESSAGE, reason.encode()),
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
    ) -> Reply | None:
        settings = self.settings
        resolution = None
        if self.machines is not None:
            resolution = outcome.resolution = self.machines.resolve_client(client)
            self.machines.remember(client, yiaddr if yiaddr != ZERO else None)
        boot = self.policy.decide(client, resolution)
        outcome.boot = boot
        if settings.mode is DhcpMode.PROXY and boot.filename is None:
            outcome.decision, outcome.reason = "ignored", boot.reason
            return None
        options: list[tuple[int, bytes]] = [
            (Opt.MESSAGE_TYPE, bytes([mtype])),
            (Opt.SERVER_ID, ip_option(settings.server)),
        ]
        if lease:
            options += [
                (Opt.LEASE_TIME, u32_option(settings.lease_time)),
                (Opt.RENEWAL_TIME, u32_option(settings.lease_time // 2)),
                (Opt.REBINDING_TIME, u32_option(settings.lease_time * 7 // 8)),
            ]
        if settings.mode is DhcpMode.AUTHORITATIVE:
            options.append((Opt.SUBNET_MASK, ip_option(settings.network.netmask)))
            options += self._network_options(request)
        if client.is_http_boot:
            # UEFI HTTP Boot (UEFI 2.x §24.7) only takes offers that say HTTPClient.
            options.append((Opt.VENDOR_CLASS, b"HTTPClient"))
        elif client.is_pxe:
            options.append((Opt.VENDOR_CLASS, b"PXEClient"))
            options.append((Opt.VENDOR_SPECIFIC, _PXE_USE_BOOTFILE))
        uuid = request.get(Opt.CLIENT_UUID)
        if uuid is not None and client.is_pxe:
            options.append((Opt.CLIENT_UUID, uuid))  # PXE 2.1 §2.2.3: echoed by the proxy
        next_server = settings.next_server or settings.server
        file_field = b""
        if boot.filename is not None:
            name = boot.filename.encode()
            if not boot.over_http:
                options.append((Opt.TFTP_SERVER, str(next_server).encode()))
            options.append((Opt.BOOTFILE, name))
            # The file field holds 127 bytes and a NUL; longer names travel in option 67 only.
            file_field = name if len(name) < 128 else b""
        if settings.mode is DhcpMode.AUTHORITATIVE and settings.options:
            # The operator's own options replace built-in ones of the same code, in place.
            mine = dict(settings.options)
            options = [(code, mine.pop(code, value)) for code, value in options]
            options += _requested(request, mine.items())
        packet = DhcpPacket(
            op=Op.BOOTREPLY,
            xid=request.xid,
            chaddr=request.chaddr,
            htype=request.htype,
            flags=request.flags,
            ciaddr=request.ciaddr if mtype == MessageType.ACK else ZERO,
            yiaddr=yiaddr,
            siaddr=next_server,
            giaddr=request.giaddr,
            file=file_field,
            options=tuple(options),
        )
        address, port = reply_destination(request, mtype)
        return Reply(packet, address, port, _max_size(request))

    def _network_options(self, request: DhcpPacket) -> list[tuple[int, bytes]]:
        """The network's options the client asked for (all of them if it sent no list)."""
        settings = self.settings
        found: list[tuple[int, bytes]] = [
            (Opt.BROADCAST, ip_option(settings.network.broadcast_address))
        ]
        if settings.routers:
            found.append((Opt.ROUTER, ips_option(settings.routers)))
        if settings.dns_servers:
            found.append((Opt.DNS, ips_option(settings.dns_servers)))
        if settings.domain_name:
            found.append((Opt.DOMAIN_NAME, settings.domain_name.encode()))
        machine = None
        if self.machines is not None:
            machine = self.machines.setup.inventory.machine_by_mac(request.mac)
        if machine is not None and machine.hostname:
            # The inventory's name for the machine, as dhcpd's use-host-decl-names.
            found.append((Opt.HOST_NAME, machine.hostname.encode()))
        return _requested(request, found)

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
        fields: dict[str, object] = {
            "xid": f"0x{request.xid:08x}",
            "mac": request.mac,
            "vendor_class": client.vendor_class or "-",
            "user_class": ",".join(client.user_classes) or "-",
            "arch": client.arch_name,
            "client": client_kind(client),
            "decision": outcome.decision,
            "address": str(outcome.address) if outcome.address is not None else "-",
        }
        if outcome.boot is not None:
            fields["file"] = outcome.boot.filename or "-"
            fields["why"] = outcome.boot.reason
        if request.giaddr != ZERO:
            fields["relay"] = str(request.giaddr)
        if local_port != DHCP_SERVER_PORT:
            fields["port"] = local_port
        if outcome.reason:
            fields["reason"] = outcome.reason
        if outcome.bad:
            held = self.bad_lines.allow(self.clock())
            if held is None:
                return  # a burst of bad requests: counted, its lines held back
            if held:
                fields["held_back"] = held
        level = logging.INFO if outcome.decision != "ignored" else logging.DEBUG
        if outcome.decision == "NAK" or outcome.bad:
            level = logging.WARNING
        log.log(level, format_event(kind, **fields))

    def _log_options(self, direction: str, packet: DhcpPacket) -> None:
        for line in describe(packet):
            log.info("%s xid=0x%08x %s", direction, packet.xid, line.strip())


def _kind(request: DhcpPacket) -> str:
    mtype = request.message_type
    if mtype is None:
        return "BOOTP"
    if isinstance(mtype, MessageType):
        return mtype.name
    return f"TYPE{mtype}"


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


def reply_destination(request: DhcpPacket, mtype: MessageType) -> tuple[IPv4Address, int]:
    """Where a reply goes, by RFC 2131 §4.1."""
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
