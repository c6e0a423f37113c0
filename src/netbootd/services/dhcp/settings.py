"""What the DHCP service is configured with: :class:`DhcpSettings`.

The networks served are :class:`~netbootd.boot.subnets.Subnet` values, each with its pools and
what its clients are told; the single network of a command line (``--dhcp-range`` on the
interface's network) is one of them, built so by whoever builds the settings (the application
from its configuration). Values only: nothing here reads the configuration or the interface.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network

from netbootd.boot.hosts import HostTable
from netbootd.boot.pxe_menu import NO_MENUS, PxeMenus
from netbootd.boot.subnets import Subnet
from netbootd.config import DhcpMode
from netbootd.services.dhcp.limits import DhcpLimits

__all__ = ["DhcpSettings"]


@dataclass(frozen=True, slots=True)
class DhcpSettings:
    """What the DHCP service needs from the configuration and the interface."""

    mode: DhcpMode
    server: IPv4Address  # our address on the served interface: server identifier
    # The receiving interface's network, which the log names when no served subnet covers it;
    # what is served is ``subnets``.
    network: IPv4Network
    # The networks served with addresses (authoritative mode), each with its pools and
    # settings; a proxyDHCP gives no addresses and serves none.
    subnets: tuple[Subnet, ...] = ()
    next_server: IPv4Address | None = None  # siaddr; this server unless configured
    log_dhcp: bool = False
    limits: DhcpLimits = field(default_factory=DhcpLimits)  # caps on what new clients take
    pxe_menus: PxeMenus = NO_MENUS  # PXE boot menus by client architecture
    hosts: HostTable = field(default_factory=HostTable)  # the config file's [[hosts]]
