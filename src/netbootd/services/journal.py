"""Gathering the boot journal's events as the services work, off their hot paths.

The services tell :class:`Journal` of each step as it happens: a DHCP transaction, a file
transfer, a boot-once mark. Telling costs one tuple appended to a list: no event object, no
encoding, no database. The writer at the edge (:mod:`netbootd.transport.journal`) takes what
gathered a few times a second (:meth:`Journal.take`), ties each transfer to its machine
(:func:`resolve`) and stores it, in a thread of its own.

A transfer names its client by address only. The DHCP exchanges this process saw say which MAC
has which address; what they do not say (another DHCP worker's clients, a proxyDHCP's, whose
addresses another server gave) the writer looks up in the journal and the neighbour table.

If the writer cannot keep up (a disk that stalls), at most :data:`MAX_PENDING` events wait; the
ones past that are dropped and counted, never the server's memory.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from netbootd.boot.journal import BootEvent, Kind, Service

MAX_PENDING = 100_000  # events gathered and not yet taken, at most

_DHCP = Service.DHCP.value
_TRANSFER = Kind.TRANSFER.value
_DHCP_KEYS = ("decision", "address", "file", "why", "reason", "client", "arch", "port", "relay")

# A DHCP transaction as the service tells it, one tuple (the cheapest thing to make per
# request): time, MAC, kind (DISCOVER ...), then the fields of _DHCP_KEYS in that order
# (decision, address, file, why, reason, client, arch, port, relay), then the machine's name.
DhcpRecord = tuple[float, str, str, str, str, str, str, str, str, str, int, str, str]


class Journal:
    """The events told and not yet taken by the writer."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._dhcp: list[DhcpRecord] = []
        self._other: list[BootEvent] = []
        self._macs: dict[str, str] = {}  # address -> MAC, from the DHCP exchanges seen
        self.dropped = 0  # events past MAX_PENDING, since start
        self.taken = 0  # events handed to the writer, since start

    def _room(self) -> bool:
        if len(self._dhcp) + len(self._other) >= MAX_PENDING:
            self.dropped += 1
            return False
        return True

    def dhcp(self, record: DhcpRecord) -> None:
        """One DHCP transaction, as :data:`DhcpRecord` has it: what came, what was decided and
        why, and the address the client was given or has (yiaddr, else ciaddr; "" for none)."""
        if self._room():
            self._dhcp.append(record)

    def transfer(
        self, service: Service, address: str, fields: dict[str, str], *, mac: str = ""
    ) -> None:
        """A file transfer over TFTP or HTTP (ended, or refused), by the client at
        ``address``; ``mac`` when the request itself names the machine (``m/<mac>/...``)."""
        if self._room():
            self._other.append(
                BootEvent(self.clock(), mac, address, service.value, _TRANSFER, fields)
            )

    def inventory(self, kind: Kind, mac: str, machine: str) -> None:
        """Boot-once marked done (``INSTALLED``) or asked again (``AGAIN``) for ``mac``."""
        if self._room():
            self._other.append(
                BootEvent(
                    self.clock(),
                    mac,
                    "",
                    Service.INVENTORY.value,
                    kind.value,
                    {"machine": machine},
                )
            )

    def take(self) -> list[BootEvent]:
        """The events told since the last take, in time order; a transfer's MAC filled in
        from the DHCP exchanges seen, where they say who has its address."""
        dhcp, self._dhcp = self._dhcp, []
        other, self._other = self._other, []
        if not dhcp and not other:
            return []
        events = [_dhcp_event(raw) for raw in dhcp]
        macs = self._macs
        for event in events:
            if event.address and event.mac and event.get("decision") in ("ACK", "OFFER"):
                macs[event.address] = event.mac
        if len(macs) > MAX_PENDING:
            self._macs = macs = dict(list(macs.items())[-MAX_PENDING // 2 :])
        found = events + [
            _with_mac(event, macs.get(event.address, "")) if not event.mac else event
            for event in other
        ]
        found.sort(key=_time)
        self.taken += len(found)
        return found


def _time(event: BootEvent) -> float:
    return event.time


def _dhcp_event(raw: DhcpRecord) -> BootEvent:
    now, mac, kind = raw[0], raw[1], raw[2]
    fields = {key: str(value) for key, value in zip(_DHCP_KEYS, raw[3:12], strict=True) if value}
    if raw[12]:
        fields["machine"] = raw[12]
    return BootEvent(now, mac, fields.get("address", ""), _DHCP, kind, fields)


def _with_mac(event: BootEvent, mac: str) -> BootEvent:
    if not mac:
        return event
    return BootEvent(event.time, mac, event.address, event.service, event.kind, event.fields)


def resolve(events: Iterable[BootEvent], lookup: Callable[[str], str | None]) -> list[BootEvent]:
    """``events``, each without a MAC but with an address given the MAC ``lookup`` finds for
    that address (looked up once an address)."""
    found: dict[str, str | None] = {}
    resolved = []
    for event in events:
        if not event.mac and event.address:
            if event.address not in found:
                found[event.address] = lookup(event.address)
            resolved.append(_with_mac(event, found[event.address] or ""))
        else:
            resolved.append(event)
    return resolved
