"""The DHCP service: a decoded request in, at most one reply (and where to send it) out.

:class:`DhcpService` holds what the transactions share (settings, lease book, lease store,
inventory, counters) and dispatches each request to the module that answers its kind:
:mod:`.authoritative` (RFC 2131), :mod:`.bootp` (RFC 951), :mod:`.proxy` (proxyDHCP and PXE
boot items); :mod:`.reply` assembles the replies, :mod:`.log` writes the transaction's line.
A request is served from the subnet it comes from (the interface's, or the relay agent's for a
relayed one). It owns no socket: the transport decodes, calls :meth:`DhcpService.answer`, and
sends what comes back. It starts no task and reads no clock but the one it is given.

Answering is synchronous. A transaction whose outcome must be on disk first (an ACK, a release,
a decline, a dynamic BOOTP lease) comes back as a :class:`Pending`: the change is queued to the
lease store, and the reply exists only once the store says the change is durable. No task is
made per packet, and the store writes every change queued meanwhile in one transaction.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from netbootd.boot.client import ClientInfo, arch_name, classify
from netbootd.boot.leases import LeaseBook, LeaseState
from netbootd.boot.policy import BootDecision, BootPolicy
from netbootd.boot.pxe_menu import boot_item
from netbootd.boot.subnets import Subnet, subnet_for
from netbootd.config import DhcpMode
from netbootd.proto.dhcp.codec import DhcpDecodeError, DhcpPacket, MessageType, Op, Opt
from netbootd.proto.dhcp.size import max_message_size
from netbootd.proto.dhcp.wire import PXE_PORT, ZERO, address_text
from netbootd.services.dhcp.authoritative import (
    answer_decline,
    answer_discover,
    answer_inform,
    answer_release,
    answer_request,
)
from netbootd.services.dhcp.bootp import answer_bootp
from netbootd.services.dhcp.limits import LineBudget, Throttle
from netbootd.services.dhcp.log import (
    client_kind,
    detail_lines,
    log_options,
    log_transaction,
    message_kind,
)
from netbootd.services.dhcp.proxy import answer_boot_item, answer_proxy
from netbootd.services.dhcp.reply import choose_boot, fitted
from netbootd.services.dhcp.reservations import Reservations
from netbootd.services.dhcp.settings import DhcpSettings
from netbootd.services.dhcp.transaction import Outcome, Pending, Reply, Step
from netbootd.services.journal import DhcpRecord, Journal
from netbootd.services.machines import Machines
from netbootd.store.leases import LeaseStore

__all__ = ["DhcpService", "relay_edges", "relay_fault"]

log = logging.getLogger("netbootd.dhcp")


@dataclass
class DhcpService:
    settings: DhcpSettings
    policy: BootPolicy
    book: LeaseBook = field(default_factory=LeaseBook)
    store: LeaseStore | None = None
    clock: Callable[[], float] = time.time
    counters: Counter[str] = field(default_factory=Counter)
    machines: Machines | None = None  # the inventory, when there is one
    _reservations: Reservations | None = field(default=None, repr=False)
    refusals: Throttle = field(default_factory=Throttle)  # the warning about caps met
    full_pools: dict[str, Throttle] = field(default_factory=dict)  # warnings of full pools
    bad_lines: LineBudget = field(default_factory=LineBudget)  # lines about bad requests
    # The relay addresses refused for the settings in force (relay_edges), made once for them.
    _relay_edges: tuple[DhcpSettings, dict[int, str]] | None = field(default=None, repr=False)
    journal: Journal | None = None  # told of each boot client's transactions

    @property
    def subnets(self) -> tuple[Subnet, ...]:
        """The served subnets."""
        return self.settings.subnets

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
            log_options("received", request)
        self.book.expire(self.clock())
        client = classify(request)
        outcome = Outcome(group=group)
        step: Step = None
        kind = message_kind(request)
        try:
            # Read up front what the reply needs later: a broken option 57 must not surface
            # only once a lease is on disk.
            max_message_size(request)
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
                    reply=pending.finish_with(error),
                )

            return Pending(pending.durable, conclude)
        return self._conclude(request, client, kind, outcome, local_port=local_port, reply=step)

    def unsent(self, reply: Reply) -> None:
        """``reply`` could not be sent (the kernel refused it, or it would not encode): an
        OFFER's address, held for a client that will never hear of it, is free again at once.

        A bound lease is left as it is: an OFFER may repeat the client's own lease.
        """
        packet = reply.packet
        if packet.message_type != MessageType.OFFER:
            return
        lease = self.book.at(packet.yiaddr)
        if lease is not None and lease.state is LeaseState.OFFERED and lease.mac == packet.mac:
            self.book.remove(packet.yiaddr)
            self.counters["offer-unsent"] += 1

    def _conclude(
        self,
        request: DhcpPacket,
        client: ClientInfo,
        kind: str,
        outcome: Outcome,
        *,
        local_port: int,
        reply: Reply | None,
    ) -> Reply | None:
        """Count and log the transaction; the reply, fitted to the client's maximum size."""
        if outcome.bad:
            self.counters[f"bad-request:{outcome.bad}"] += 1
        if reply is not None:
            reply = fitted(self.counters, request, reply)
        self.counters[f"{kind}:{outcome.decision}"] += 1
        log_transaction(
            request,
            client,
            kind,
            outcome,
            local_port=local_port,
            bad_lines=self.bad_lines,
            clock=self.clock,
        )
        journal = self.journal
        # The journal is of boots: a PXE, UEFI HTTP Boot or iPXE client's transactions, and
        # BOOTP's (a diskless client's). Any other client (a laptop, the installed system
        # renewing its lease) is in the log line and the counters only.
        if journal is not None and (client.wants_boot or kind == "BOOTP"):
            mac = request.mac
            if mac:
                journal.dhcp(
                    _record(
                        request,
                        client,
                        outcome,
                        now=self.clock(),
                        mac=mac,
                        kind=kind,
                        local_port=local_port,
                    )
                )
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
                log_options("sent", reply.packet)
        return reply

    def _dispatch(
        self,
        request: DhcpPacket,
        client: ClientInfo,
        outcome: Outcome,
        local_port: int,
        source: tuple[str, int],
    ) -> Step:
        if request.op != Op.BOOTREQUEST:
            outcome.reject("op", "not a BOOTREQUEST")
            return None
        if not request.chaddr and request.get(Opt.CLIENT_ID) is None:
            # Neither a hardware address nor a client identifier: nothing names the client.
            outcome.reject("chaddr", "no hardware address and no client identifier")
            return None
        if request.giaddr != ZERO:
            edges = self._relay_edges
            if edges is None or edges[0] is not self.settings:
                edges = self._relay_edges = (self.settings, relay_edges(self.settings))
            fault = relay_fault(request.giaddr, self.settings, edges[1])
            if fault:
                self.counters["relay-refused"] += 1
                outcome.reject("giaddr", f"relayed from {request.giaddr}, {fault}")
                return None
        mtype = request.message_type
        if mtype == MessageType.REQUEST and self.settings.pxe_menus:
            # PXE 2.1 §2.2.5: a request for a menu item, to its boot server (port 4011, or 67
            # when the client broadcasts it), in either mode.
            menu = self.settings.pxe_menus.for_client(client)
            item = boot_item(request) if menu is not None else None
            if menu is not None and item is not None:
                return answer_boot_item(self, request, menu, item, outcome, source=source)
        if self.settings.mode is DhcpMode.PROXY:
            if mtype is None:
                outcome.reason = "BOOTP request: a proxyDHCP answers PXE DHCP clients only"
                return None
            return answer_proxy(
                self, request, client, outcome, local_port=local_port, source=source
            )
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
            return answer_bootp(self, request, client, outcome, subnet)
        if mtype == MessageType.DISCOVER:
            return answer_discover(self, request, client, outcome, subnet)
        if mtype == MessageType.REQUEST:
            return answer_request(self, request, client, outcome, subnet)
        if mtype == MessageType.RELEASE:
            return answer_release(self, request, outcome)
        if mtype == MessageType.DECLINE:
            return answer_decline(self, request, outcome, subnet)
        if mtype == MessageType.INFORM:
            return answer_inform(self, request, client, outcome, subnet)
        outcome.reason = f"message type {mtype} is not for a server"
        return None

    def boot_choice(self, request: DhcpPacket) -> tuple[BootDecision, bool]:
        """What the client of ``request`` is told to boot, as a reply would tell it (its host
        entry first), and whether that was decided for this machine; for ``explain``."""
        host = (
            self.reservations.host(request)
            if self.settings.mode is DhcpMode.AUTHORITATIVE
            else None
        )
        return choose_boot(self, classify(request), ZERO, host)


def _record(
    request: DhcpPacket,
    client: ClientInfo,
    outcome: Outcome,
    *,
    now: float,
    mac: str,
    kind: str,
    local_port: int,
) -> DhcpRecord:
    """The journal's tuple for one transaction (:data:`DhcpRecord`'s order): only what the
    transaction already holds, and names made once for each architecture."""
    given = outcome.address
    if given is not None and given != ZERO:  # a proxy's offer gives none (yiaddr 0)
        address = address_text(given)
    elif request.ciaddr != ZERO:
        address = address_text(request.ciaddr)
    else:
        address = ""
    boot = outcome.boot
    resolution = outcome.resolution
    machine = resolution.machine if resolution is not None else None
    return (
        now,
        mac,
        kind,
        outcome.decision,
        address,
        (boot.filename or "") if boot is not None else "",
        boot.reason if boot is not None else "",
        outcome.reason,
        client_kind(client),
        _arch_name(client.arch),
        local_port,
        address_text(request.giaddr) if request.giaddr != ZERO else "",
        machine.name if machine is not None else "",
    )


_ARCH_NAMES: dict[int, str] = {}


def _arch_name(code: int | None) -> str:
    # arch_name looks the code up in an enum, interpreted; the codes seen are a handful.
    if code is None:
        return "unknown"
    name = _ARCH_NAMES.get(code)
    if name is None:
        name = _ARCH_NAMES[code] = arch_name(code)
    return name


# The first octets of addresses no relay agent can have (RFC 1122 §3.2.1.3, RFC 5771, RFC 1112
# §4): "this network" 0.0.0.0/8, loopback 127.0.0.0/8, multicast and reserved 224 and up.
_THIS_NETWORK = 0
_LOOPBACK = 127
_MULTICAST = 224
_RESERVED = 240
_LIMITED_BROADCAST = 0xFFFFFFFF


def relay_fault(
    giaddr: IPv4Address, settings: DhcpSettings, edges: dict[int, str] | None = None
) -> str:
    """Why ``giaddr`` cannot be a relay agent's address; "" when it can.

    RFC 2131 §4.1 has every reply to a relayed request go to the relay agent at giaddr, port
    67, and RFC 1542 §4.1.1 has an agent put there the unicast address of the interface the
    request came in on. Anything else is forged or broken: a reply to this server's own address
    would loop back into it, one to a broadcast or network address would reach a whole segment
    (a reflector for whoever forges requests), one to loopback, 0/8 or multicast nowhere useful.
    Only relayed requests get here, and it costs a few integer comparisons and a lookup in
    ``edges`` (:func:`relay_edges` of the settings, made once by the service).
    """
    if giaddr == settings.server:
        return "this server's own address"
    value = int(giaddr)
    first = value >> 24
    if value == _LIMITED_BROADCAST:
        return "the broadcast address"
    if first == _THIS_NETWORK:
        return 'an address of "this network" (0.0.0.0/8)'
    if first == _LOOPBACK:
        return "a loopback address"
    if first >= _RESERVED:
        return "a reserved address (240.0.0.0/4)"
    if first >= _MULTICAST:
        return "a multicast address"
    if edges is None:
        edges = relay_edges(settings)
    return edges.get(value, "")


def relay_edges(settings: DhcpSettings) -> dict[int, str]:
    """The network and broadcast addresses of the served subnets and of the interface's
    network, as integers, each with what it is (a /31 or /32 has neither, RFC 3021 §2)."""
    edges: dict[int, str] = {}
    for network in [*(subnet.network for subnet in settings.subnets), settings.network]:
        if network.prefixlen >= 31:
            continue
        edges.setdefault(int(network.network_address), f"the network address of {network}")
        edges.setdefault(int(network.broadcast_address), f"the broadcast address of {network}")
    return edges
