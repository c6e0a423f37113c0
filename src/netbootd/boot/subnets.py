"""Subnets and their pools, pure: which subnet a request belongs to, which address it gets.

A :class:`Subnet` is a network the server hands addresses out on (the interface's own, or one
behind a relay agent), its pools and what its clients are told (:class:`NetworkSettings`).
:func:`parse_subnets` reads the config file's ``[[subnets]]`` tables into :class:`SubnetSpec`
values, checked; the composition root settles each under the server-wide settings. Nothing here
touches a socket or a clock: ``now`` is passed in, like everywhere in ``boot``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv4Network
from types import MappingProxyType
from typing import TypeVar

from netbootd.boot.leases import AddressRange
from netbootd.proto.dhcp.codec import (
    DhcpPacket,
    Opt,
    encode_option_value,
    settable_option,
    u32_option,
)

_ZERO = IPv4Address(0)
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class NetworkSettings:
    """What the clients of one subnet are told, besides their address."""

    routers: tuple[IPv4Address, ...] = ()
    dns_servers: tuple[IPv4Address, ...] = ()
    domain_name: str | None = None
    lease_time: int = 3600
    # More options, wire-encoded; each replaces a built-in option of its code.
    options: tuple[tuple[int, bytes], ...] = ()
    dynamic_bootp: bool = False  # BOOTP clients without a reservation get a pool address
    bootp_lease_time: int | None = None  # None: a dynamic BOOTP lease never ends


@dataclass(frozen=True, slots=True)
class Subnet:
    """A network served with addresses: its pools and its settings, all settled."""

    network: IPv4Network
    pools: tuple[AddressRange, ...] = ()
    settings: NetworkSettings = field(default_factory=NetworkSettings)
    label: str = ""  # how logs and errors name it: "dhcp-range", "[[subnets]] #2"
    part: str = ""  # with DHCP workers, whose part of the pools these are: "worker 1 of 2"
    # Wire forms made once, for every reply on this subnet: options 51, 58 and 59 of a lease;
    # the mask (1); the network's own options (28, 3, 6, 15), in that order; and the
    # operator's options by code.
    lease_options: tuple[tuple[int, bytes], ...] = field(init=False, repr=False, compare=False)
    mask_option: tuple[int, bytes] = field(init=False, repr=False, compare=False)
    network_options: tuple[tuple[int, bytes], ...] = field(init=False, repr=False, compare=False)
    own_options: Mapping[int, bytes] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        settings = self.settings
        lease_time = settings.lease_time
        found = [(int(Opt.BROADCAST), self.network.broadcast_address.packed)]
        if settings.routers:
            found.append((int(Opt.ROUTER), b"".join(a.packed for a in settings.routers)))
        if settings.dns_servers:
            found.append((int(Opt.DNS), b"".join(a.packed for a in settings.dns_servers)))
        if settings.domain_name:
            found.append((int(Opt.DOMAIN_NAME), settings.domain_name.encode()))
        wire = {
            "lease_options": (
                (int(Opt.LEASE_TIME), u32_option(lease_time)),
                (int(Opt.RENEWAL_TIME), u32_option(lease_time // 2)),
                (int(Opt.REBINDING_TIME), u32_option(lease_time * 7 // 8)),
            ),
            "mask_option": (int(Opt.SUBNET_MASK), self.network.netmask.packed),
            "network_options": tuple(found),
            "own_options": MappingProxyType(dict(settings.options)),
        }
        for name, value in wire.items():
            object.__setattr__(self, name, value)

    def in_pools(self, address: IPv4Address) -> bool:
        return any(address in pool for pool in self.pools)

    def share(self, index: int, count: int) -> Subnet:
        """This subnet with the ``index``-th of ``count`` contiguous parts of each pool, as one
        of ``count`` DHCP workers serves it; a pool smaller than ``count`` has no part for
        some. The parts of all ``count`` workers cover each pool exactly once."""
        if not 0 <= index < count:
            raise ValueError(f"share {index} of {count}")
        parts = []
        for pool in self.pools:
            first = int(pool.first) + pool.size * index // count
            last = int(pool.first) + pool.size * (index + 1) // count - 1
            if first <= last:
                parts.append(AddressRange(IPv4Address(first), IPv4Address(last)))
        return replace(self, pools=tuple(parts), part=f"worker {index} of {count}")

    def is_client_address(self, address: IPv4Address) -> bool:
        """Whether ``address`` may be a client's here: inside, and not the network's own."""
        network = self.network
        if address not in network:
            return False
        if network.prefixlen >= 31:
            return True  # RFC 3021: both addresses of a /31 are hosts
        return address not in (network.network_address, network.broadcast_address)

    def __str__(self) -> str:
        return f"{self.label} ({self.network})" if self.label else str(self.network)


@dataclass(frozen=True, slots=True)
class SubnetSpec:
    """A ``[[subnets]]`` table as configured: None is "the server-wide setting"."""

    network: IPv4Network
    pools: tuple[AddressRange, ...]
    label: str
    routers: tuple[IPv4Address, ...] | None = None
    dns_servers: tuple[IPv4Address, ...] | None = None
    domain_name: str | None = None
    lease_time: int | None = None
    options: tuple[tuple[int, bytes], ...] = ()  # added to the server-wide ones, code by code
    dynamic_bootp: bool | None = None
    bootp_lease_time: int | None = None

    def settle(self, defaults: NetworkSettings) -> Subnet:
        """The subnet as served: its own settings, the server-wide ones where it has none."""

        settings = NetworkSettings(
            routers=_own(self.routers, defaults.routers),
            dns_servers=_own(self.dns_servers, defaults.dns_servers),
            domain_name=_own(self.domain_name, defaults.domain_name),
            lease_time=_own(self.lease_time, defaults.lease_time),
            options=tuple((dict(defaults.options) | dict(self.options)).items()),
            dynamic_bootp=_own(self.dynamic_bootp, defaults.dynamic_bootp),
            bootp_lease_time=_own(self.bootp_lease_time, defaults.bootp_lease_time),
        )
        return Subnet(self.network, self.pools, settings, self.label)


def _own(mine: _T | None, theirs: _T) -> _T:
    """``mine`` when it is set, else ``theirs``."""
    return theirs if mine is None else mine


# -- choosing -------------------------------------------------------------------------------


def subnet_for(subnets: Sequence[Subnet], request: DhcpPacket, local: IPv4Address) -> Subnet | None:
    """The subnet a request comes from, or None when it comes from none of ours.

    RFC 2131 §4.3.1: a relayed request belongs to the network of ``giaddr``. A request that was
    not relayed belongs to the network of the client's address when it has one (RFC 2131
    §4.3.2: a RENEWING client unicasts to the server and may live behind a router), else to the
    receiving interface's network, the one holding ``local``.
    """
    if request.giaddr != _ZERO:
        return _containing(subnets, request.giaddr)
    if request.ciaddr != _ZERO:
        found = _containing(subnets, request.ciaddr)
        if found is not None:
            return found
    return _containing(subnets, local)


def _containing(subnets: Sequence[Subnet], address: IPv4Address) -> Subnet | None:
    for subnet in subnets:
        if address in subnet.network:
            return subnet
    return None


def with_agent_info(
    request: DhcpPacket, options: Iterable[tuple[int, bytes]]
) -> list[tuple[int, bytes]]:
    """``options`` with the request's relay agent information (option 82) last, as it came.

    RFC 3046 §2.2: the server copies the option into every reply to the relay agent, unchanged,
    and RFC 3046 §2.1 asks that it be the last option. A request that was not relayed, or that
    carried no option 82, gets none back.
    """
    found = [(code, value) for code, value in options if code != Opt.AGENT_INFO]
    agent_info = request.get(Opt.AGENT_INFO)
    if request.giaddr != _ZERO and agent_info is not None:
        found.append((Opt.AGENT_INFO, agent_info))
    return found


# -- the config file ------------------------------------------------------------------------

_SUBNET_KEYS = (
    "network",
    "pools",
    "routers",
    "dns-servers",
    "domain-name",
    "lease-time",
    "options",
    "dynamic-bootp",
    "bootp-lease-time",
)
MIN_LEASE_TIME = 60
MAX_LEASE_TIME = 365 * 86400


def encode_options(table: object, where: str) -> tuple[tuple[int, bytes], ...]:
    """An ``options`` table (name or code = typed or ``hex:`` value) as wire values."""
    if not isinstance(table, Mapping):
        raise ValueError(f"{where}: a table of option = value is wanted")
    encoded: dict[int, bytes] = {}
    for key, raw in table.items():
        try:
            code = settable_option(key)
            encoded[code] = encode_option_value(code, raw)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
    return tuple(encoded.items())


def parse_subnets(raw: object) -> tuple[SubnetSpec, ...]:
    """The ``[[subnets]]`` tables, checked one by one and against each other.

    Raises ValueError naming the subnet and the key, and saying what is wanted.
    """
    if not isinstance(raw, list | tuple):
        raise ValueError("subnets: an array of tables ([[subnets]]) is wanted")
    specs = tuple(_parse_subnet(table, index) for index, table in enumerate(raw, 1))
    check_overlaps(specs)
    return specs


def check_overlaps(specs: Sequence[SubnetSpec | Subnet]) -> None:
    """No two subnets share an address, nor two pools; ValueError names both."""
    by_start = sorted(specs, key=lambda spec: int(spec.network.network_address))
    for before, after in itertools.pairwise(by_start):
        if before.network.overlaps(after.network):
            raise ValueError(
                f"{_name(after)}: network overlaps {_name(before)}; subnets must be disjoint"
            )
    pools = sorted(
        ((pool, spec) for spec in specs for pool in spec.pools), key=lambda item: int(item[0].first)
    )
    for (first, first_spec), (second, second_spec) in itertools.pairwise(pools):
        if int(second.first) <= int(first.last):
            raise ValueError(
                f"{_name(second_spec)}: pools: {second} overlaps {first} of "
                f"{_name(first_spec)}; pools must be disjoint"
            )


def _name(spec: SubnetSpec | Subnet) -> str:
    return f"{spec.label} ({spec.network})"


def config_table(table: object, where: str, keys: Sequence[str]) -> Mapping[str, object]:
    """One entry of an array of tables in the config file, with none but the given keys."""
    if not isinstance(table, Mapping):
        raise ValueError(f"{where}: a table is wanted")
    unknown = sorted(set(table) - set(keys))
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0]!r} (one of: {', '.join(keys)})")
    return table


def _parse_subnet(raw: object, index: int) -> SubnetSpec:
    label = f"[[subnets]] #{index}"
    table = config_table(raw, label, _SUBNET_KEYS)
    if "network" not in table:
        raise ValueError(f'{label}: network is missing; a network like "10.0.5.0/24" is wanted')
    try:
        network = IPv4Network(str(table["network"]))
    except ValueError:
        raise ValueError(
            f'{label}: network: {table["network"]!r} is not a network like "10.0.5.0/24" '
            "(address bits past the prefix must be zero)"
        ) from None
    where = f"{label} ({network})"
    pools = tuple(_parse_pool(item, network, where) for item in _list(table, "pools", where))
    return SubnetSpec(
        network,
        pools,
        label,
        routers=_addresses(table, "routers", where),
        dns_servers=_addresses(table, "dns-servers", where),
        domain_name=_domain(table, where),
        lease_time=_seconds(table, "lease-time", where),
        options=encode_options(table.get("options", {}), f"{where}: options"),
        dynamic_bootp=_flag(table, "dynamic-bootp", where),
        bootp_lease_time=_seconds(table, "bootp-lease-time", where),
    )


def _list(table: Mapping[str, object], key: str, where: str) -> list[object]:
    value = table.get(key, [])
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise ValueError(f"{where}: {key}: a list of ranges FIRST-LAST is wanted")
    return value


def _parse_pool(item: object, network: IPv4Network, where: str) -> AddressRange:
    try:
        pool = AddressRange.parse(str(item))
    except ValueError as exc:
        raise ValueError(f"{where}: pools: {exc}; a range FIRST-LAST is wanted") from None
    subnet = Subnet(network)
    for end in (pool.first, pool.last):
        if end not in network:
            raise ValueError(
                f"{where}: pools: {pool} is outside {network}; a range inside the subnet is wanted"
            )
        if not subnet.is_client_address(end):
            raise ValueError(
                f"{where}: pools: {pool} holds {end}, the network's own address; a range of "
                "host addresses is wanted"
            )
    return pool


def _addresses(table: Mapping[str, object], key: str, where: str) -> tuple[IPv4Address, ...] | None:
    if key not in table:
        return None
    value = table[key]
    items = value if isinstance(value, list) else [value]
    try:
        return tuple(IPv4Address(str(item).strip()) for item in items)
    except ValueError:
        raise ValueError(f"{where}: {key}: IPv4 addresses are wanted, not {value!r}") from None


def _domain(table: Mapping[str, object], where: str) -> str | None:
    name = table.get("domain-name")
    if name is not None and (not isinstance(name, str) or not name):
        raise ValueError(f"{where}: domain-name: a domain name as text is wanted")
    return name


def _flag(table: Mapping[str, object], key: str, where: str) -> bool | None:
    value = table.get(key)
    if value is not None and not isinstance(value, bool):
        raise ValueError(f"{where}: {key}: true or false is wanted")
    return value


def _seconds(table: Mapping[str, object], key: str, where: str) -> int | None:
    value = table.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{where}: {key}: a number of seconds is wanted, not {value!r}")
    if not MIN_LEASE_TIME <= value <= MAX_LEASE_TIME:
        raise ValueError(
            f"{where}: {key}: {value} is outside {MIN_LEASE_TIME}-{MAX_LEASE_TIME} seconds"
        )
    return value


def check_server(subnets: Sequence[Subnet], server: IPv4Address, interface: str) -> None:
    """No pool holds the server's own address; ValueError names the subnet."""
    for subnet in subnets:
        for pool in subnet.pools:
            if server in pool:
                raise ValueError(
                    f"{subnet}: pools: {pool} contains this server's own address {server} "
                    f"(on {interface}); a range without it is wanted"
                )
