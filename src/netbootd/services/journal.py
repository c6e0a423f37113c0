"""Gathering the boot journal's events as the services work, off their hot paths.

The services tell :class:`Journal` of each step as it happens: a DHCP transaction, a file
transfer, a boot-once mark. Telling costs one tuple appended to a list: no event object, no
encoding, no database. The writer at the edge (:mod:`netbootd.transport.journal`) takes what
gathered once a second (:meth:`Journal.take`), ties each transfer to its machine
(:func:`resolve`) and stores it, in a thread of its own.

A transfer names its client by address only. The DHCP records of its own batch say which MAC
has which address; what they do not say (an earlier batch's, another DHCP worker's clients, a
proxyDHCP's, whose addresses another server gave) the writer looks up in the journal and the
neighbour table.

If the writer cannot keep up (a disk that stalls), at most :data:`MAX_PENDING` events wait; the
ones past that are dropped and counted, never the server's memory.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence
from operator import itemgetter

from netbootd.boot.journal import BootEvent, Kind, Service
from netbootd.store.journal import BOUND_KINDS, Row, event_row

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

    def fetched(
        self,
        service: Service,
        address: str,
        *,
        file: str,
        role: str,
        result: str,
        sent: int,
        seconds: float,
        size: int | None,
        rendered: bool,
        more: dict[str, str] | None = None,
        mac: str = "",
    ) -> None:
        """:meth:`transfer`, its fields made from the transfer's facts as the journal writes
        them for TFTP and HTTP alike (``more``: the service's own, a status, a block)."""
        seconds = max(seconds, 0.0)
        fields = {
            "file": file,
            "role": role,
            "result": result,
            "bytes": str(sent),
            "seconds": f"{seconds:.3f}",
            "rate": f"{sent / seconds / 1e6 if seconds > 0 else 0.0:.2f}",
        }
        if more:
            fields.update(more)
        if size is not None:
            fields["size"] = str(size)
        if rendered:
            fields["rendered"] = "yes"
        self.transfer(service, address, fields, mac=mac)

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

    def take_raw(self) -> tuple[list[DhcpRecord], list[BootEvent]]:
        """The DHCP records and the other events told since the last take, as they were told:
        what the writer's thread turns into rows (:class:`RowMaker`), so the event loop's
        thread does no more than swap two lists."""
        dhcp, self._dhcp = self._dhcp, []
        other, self._other = self._other, []
        self.taken += len(dhcp) + len(other)
        return dhcp, other

    def take(self) -> list[BootEvent]:
        """The events told since the last take, in time order, as events: a transfer's MAC
        filled in as the writer's rows have it (:meth:`RowMaker.rows`), from the batch's own
        DHCP records."""
        dhcp, other = self.take_raw()
        events = [_dhcp_event(raw) for raw in dhcp]
        events += resolve(other, _holders(dhcp).get)
        events.sort(key=_time)
        return events


def _time(event: BootEvent) -> float:
    return event.time


def _holders(dhcp: Sequence[DhcpRecord]) -> dict[str, str]:
    """Who has which address, by the batch's own DHCP records: the MAC of each message a
    client has its address after (:data:`~netbootd.store.journal.BOUND_KINDS`), as the
    journal's database answers it for the batches stored before."""
    return {r[4]: r[1] for r in dhcp if r[4] and r[1] and r[2] in BOUND_KINDS}


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


_HEAD_CACHE = 4096  # distinct (decision, file, why, reason, client, arch) kept encoded


class RowMaker:
    """The database rows of a batch, made in the writer's thread, as cheaply as can be: a
    DHCP record's fields that repeat from one client to the next (decision, boot file and why,
    client kind, architecture) are encoded once and kept; only the address, port, relay and
    machine are added for each. Addresses are dotted quads and need no JSON escaping."""

    def __init__(self) -> None:
        self._heads: dict[tuple[str, str, str, str, str, str], str] = {}

    def dhcp_row(self, record: DhcpRecord) -> Row:
        key = (record[3], record[5], record[6], record[7], record[8], record[9])
        head = self._heads.get(key)
        if head is None:
            if len(self._heads) >= _HEAD_CACHE:
                self._heads.clear()
            named = zip(("decision", "file", "why", "reason", "client", "arch"), key, strict=True)
            head = self._heads[key] = json.dumps({k: v for k, v in named if v})[:-1]
        address, relay, machine = record[4], record[11], record[12]
        text = f'{head}, "port": "{record[10]}"'
        if address:
            text += f', "address": "{address}"'
        if relay:
            text += f', "relay": "{relay}"'
        if machine:
            text += f', "machine": {json.dumps(machine)}'
        return (record[0], record[1], address, _DHCP, record[2], text + "}")

    def rows(
        self,
        dhcp: Sequence[DhcpRecord],
        other: Sequence[BootEvent],
        lookup: Callable[[str], str | None],
    ) -> list[Row]:
        """The rows of a batch, in time order; each event without a MAC given the one the
        batch's own OFFERs and ACKs name for its address, else the one ``lookup`` finds."""
        rows = [self.dhcp_row(record) for record in dhcp]
        if other:
            given = _holders(dhcp)

            def known(address: str) -> str | None:
                return given.get(address) or lookup(address)

            rows += [event_row(event) for event in resolve(other, known)]
            rows.sort(key=itemgetter(0))
        return rows
