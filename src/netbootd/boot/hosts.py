"""Hosts declared in the config file, pure: a client known by MAC or client identifier.

A ``[[hosts]]`` table names one client (by ``mac``, by ``client-id``, or both) and what it gets
besides the subnet's defaults: a reserved ``address``, a ``hostname`` (option 12), options of
its own and a ``boot-file`` that replaces the boot policy's. :class:`HostTable` indexes them and
refuses two hosts that claim one MAC, one client identifier or one address. No I/O here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address

from netbootd.boot.subnets import Subnet, config_table, encode_options

_MAC = re.compile(r"^[0-9a-f]{2}([:-][0-9a-f]{2}){5}$")
_HOST_KEYS = (
    "name",
    "mac",
    "client-id",
    "address",
    "hostname",
    "options",
    "boot-file",
    "next-server",
)


@dataclass(frozen=True, slots=True)
class HostEntry:
    """One declared client and what it gets."""

    label: str  # its name in logs and errors: name, else hostname, MAC or client-id
    mac: str | None = None  # lower-case, colon-separated
    client_id: bytes | None = None  # option 61 exactly as the client sends it
    address: IPv4Address | None = None
    hostname: str | None = None
    options: tuple[tuple[int, bytes], ...] = ()
    boot_file: str | None = None  # a path under the root, or an http:// URL
    next_server: IPv4Address | None = None


class HostTable:
    """The declared hosts, by client identifier, MAC and address."""

    def __init__(self, hosts: Iterable[HostEntry] = ()) -> None:
        self._hosts: list[HostEntry] = []
        self._by_mac: dict[str, HostEntry] = {}
        self._by_client_id: dict[bytes, HostEntry] = {}
        self._by_address: dict[IPv4Address, HostEntry] = {}
        for host in hosts:
            self._add(host)

    def _add(self, host: HostEntry) -> None:
        others = (
            ("mac", self._by_mac.get(host.mac) if host.mac is not None else None),
            (
                "client-id",
                self._by_client_id.get(host.client_id) if host.client_id is not None else None,
            ),
            ("address", self._by_address.get(host.address) if host.address is not None else None),
        )
        for what, other in others:
            if other is not None:
                raise ValueError(
                    f"[[hosts]] {host.label}: {what} is also {other.label}'s; each host "
                    f"needs a {what} of its own"
                )
        if host.mac is not None:
            self._by_mac[host.mac] = host
        if host.client_id is not None:
            self._by_client_id[host.client_id] = host
        if host.address is not None:
            self._by_address[host.address] = host
        self._hosts.append(host)

    def __repr__(self) -> str:
        return f"HostTable({self._hosts!r})"

    def __len__(self) -> int:
        return len(self._hosts)

    def __iter__(self) -> Iterator[HostEntry]:
        return iter(self._hosts)

    def find(self, mac: str, client_id: bytes | None) -> HostEntry | None:
        """The host a client is: by its client identifier (option 61) first, then by MAC."""
        if client_id:
            host = self._by_client_id.get(client_id)
            if host is not None:
                return host
        return self._by_mac.get(mac.lower())

    def at(self, address: IPv4Address) -> HostEntry | None:
        """The host ``address`` is reserved for."""
        return self._by_address.get(address)

    def check_addresses(self, subnets: Iterable[Subnet], server: IPv4Address) -> None:
        """Each reserved address is a client address of one of ``subnets`` and not ours."""
        nets = list(subnets)
        for host in self._hosts:
            address = host.address
            if address is None:
                continue
            if address == server:
                raise ValueError(
                    f"[[hosts]] {host.label}: address {address} is this server's own; "
                    "another address is wanted"
                )
            if not any(subnet.is_client_address(address) for subnet in nets):
                served = ", ".join(str(subnet.network) for subnet in nets) or "none"
                raise ValueError(
                    f"[[hosts]] {host.label}: address {address} is not a client address of a "
                    f"served subnet ({served}); an address inside one is wanted"
                )


def parse_hosts(raw: object) -> HostTable:
    """The ``[[hosts]]`` tables; ValueError names the host and the key, and what is wanted."""
    if not isinstance(raw, list | tuple):
        raise ValueError("hosts: an array of tables ([[hosts]]) is wanted")
    return HostTable(_parse_host(table, index) for index, table in enumerate(raw, 1))


def _parse_host(raw: object, index: int) -> HostEntry:
    where = f"[[hosts]] #{index}"
    table = config_table(raw, where, _HOST_KEYS)
    mac = _mac(table.get("mac"), where)
    client_id = _client_id(table.get("client-id"), where)
    if mac is None and client_id is None:
        raise ValueError(f"{where}: a mac or a client-id is wanted, to know the client by")
    hostname = _text(table, "hostname", where)
    name = _text(table, "name", where)
    label = name or hostname or mac or (client_id.hex(":") if client_id else where)
    where = f"[[hosts]] {label}"
    boot_file = _text(table, "boot-file", where)
    if boot_file is not None and not boot_file.startswith(("http://", "https://")):
        parts = boot_file.split("/")
        if boot_file.startswith("/") or ".." in parts or "\\" in boot_file or "\0" in boot_file:
            raise ValueError(
                f"{where}: boot-file: {boot_file!r} must be relative to the root, without "
                "'..', or an http:// URL"
            )
    return HostEntry(
        label=label,
        mac=mac,
        client_id=client_id,
        address=_address(table.get("address"), where, "address"),
        hostname=hostname,
        options=encode_options(table.get("options", {}), f"{where}: options"),
        boot_file=boot_file,
        next_server=_address(table.get("next-server"), where, "next-server"),
    )


def _mac(value: object, where: str) -> str | None:
    if value is None:
        return None
    text = str(value).strip().lower()
    if not isinstance(value, str) or not _MAC.match(text):
        raise ValueError(f'{where}: mac: {value!r} is not a MAC like "52:54:00:12:34:56"')
    return text.replace("-", ":")


def _client_id(value: object, where: str) -> bytes | None:
    """``hex:01:52:54:...`` for raw octets, else the text itself (as ``send
    dhcp-client-identifier "name";`` sends it)."""
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ValueError(f"{where}: client-id: text or hex:01:02:... octets are wanted")
    if value.startswith("hex:"):
        try:
            raw = bytes.fromhex(value[4:].replace(":", "").replace(" ", ""))
        except ValueError:
            raise ValueError(
                f"{where}: client-id: {value!r} is not hex octets like hex:01:52:54:00:12:34:56"
            ) from None
    else:
        raw = value.encode()
    if not 2 <= len(raw) <= 255:
        # RFC 2132 §9.14: option 61 has a minimum length of 2.
        raise ValueError(f"{where}: client-id: 2 to 255 octets are wanted, not {len(raw)}")
    return raw


def _address(value: object, where: str, key: str) -> IPv4Address | None:
    if value is None:
        return None
    try:
        return IPv4Address(str(value).strip())
    except ValueError:
        raise ValueError(f"{where}: {key}: {value!r} is not an IPv4 address") from None


def _text(table: Mapping[str, object], key: str, where: str) -> str | None:
    value = table.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}: {key}: text is wanted")
    return value.strip()
