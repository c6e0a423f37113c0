"""Reserved addresses, from both places they are declared: the config's hosts and the inventory.

:class:`Reservations` answers the DHCP service's three questions (what address is this client's,
whose is this address, is this address anyone's) over the config file's ``[[hosts]]`` and the
inventory's machines, so that the service applies one rule to both. A host of the config file
wins over an inventory machine of the same MAC. The inventory is read at each question: it is
reloaded while the server runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address

from netbootd.boot.hosts import HostEntry, HostTable
from netbootd.proto.dhcp.codec import DhcpPacket, Opt
from netbootd.services.machines import Machines


@dataclass(frozen=True, slots=True)
class Reservation:
    """An address reserved for one client, and who declared it."""

    name: str  # "[[hosts]] ws-7" or the inventory machine's name
    address: IPv4Address


class Reservations:
    """The reservations of the config's hosts and of the inventory, as one.

    Usable as the ``reserved`` container of an address choice: ``address in reservations``.
    """

    def __init__(self, hosts: HostTable, machines: Machines | None) -> None:
        self.hosts = hosts
        self.machines = machines

    def host(self, request: DhcpPacket) -> HostEntry | None:
        """The config's host entry for the client of ``request``."""
        if not len(self.hosts):
            return None
        return self.hosts.find(request.mac, request.get(Opt.CLIENT_ID))

    def of(self, request: DhcpPacket) -> Reservation | None:
        """The address reserved for the client of ``request``, if it has one."""
        host = self.host(request)
        if host is not None and host.address is not None:
            return Reservation(f"[[hosts]] {host.label}", host.address)
        if self.machines is not None:
            found = self.machines.reservation(request.mac)
            if found is not None:
                return Reservation(*found)
        return None

    def owner(self, address: IPv4Address) -> str | None:
        """Who ``address`` is reserved for, if anyone."""
        host = self.hosts.at(address)
        if host is not None:
            return f"[[hosts]] {host.label}"
        if self.machines is not None:
            return self.machines.reserved_for(address)
        return None

    def __contains__(self, address: object) -> bool:
        if not isinstance(address, IPv4Address):
            return False
        return self.owner(address) is not None
