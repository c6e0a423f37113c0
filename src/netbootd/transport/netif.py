"""Facts about a local network interface: its first IPv4 address, netmask and MTU.

Read with the Linux interface ioctls, which return the interface's primary address (the first
one added), the one a reply sent out of that interface carries.
"""

from __future__ import annotations

import fcntl
import socket
import struct
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path

_SIOCGIFADDR = 0x8915
_SIOCGIFNETMASK = 0x891B
_SIOCGIFMTU = 0x8921
_IFNAMSIZ = 16


class InterfaceError(Exception):
    """The interface does not exist or has no IPv4 address; the message says which."""


@dataclass(frozen=True, slots=True)
class InterfaceInfo:
    name: str
    address: IPv4Interface  # address and network
    mtu: int

    @property
    def ip(self) -> IPv4Address:
        return self.address.ip


def _ioctl(sock: socket.socket, request: int, name: bytes) -> bytes:
    return fcntl.ioctl(sock.fileno(), request, struct.pack("256s", name))


def interface_info(name: str) -> InterfaceInfo:
    raw = name.encode()
    if not raw or len(raw) >= _IFNAMSIZ or b"/" in raw or b"\0" in raw:
        raise InterfaceError(f"interface {name!r}: not a valid interface name")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            socket.if_nametoindex(name)
        except OSError as exc:
            raise InterfaceError(f"interface {name}: no such interface") from exc
        try:
            addr = _ioctl(sock, _SIOCGIFADDR, raw)[20:24]
            mask = _ioctl(sock, _SIOCGIFNETMASK, raw)[20:24]
        except OSError as exc:
            raise InterfaceError(f"interface {name}: has no IPv4 address") from exc
        try:
            mtu = struct.unpack("i", _ioctl(sock, _SIOCGIFMTU, raw)[16:20])[0]
        except OSError:
            mtu = 1500
    prefix = bin(int.from_bytes(mask, "big")).count("1")
    return InterfaceInfo(name, IPv4Interface(f"{IPv4Address(addr)}/{prefix}"), mtu)


NEIGHBOURS = Path("/proc/net/arp")
_ARP_COMPLETE = 0x2  # ATF_COM: the entry has a hardware address


def neighbours(table: Path = NEIGHBOURS) -> dict[str, str]:
    """The kernel's IPv4 neighbour (ARP) table: address -> MAC, lower case with colons, the
    complete entries only. Empty where it cannot be read.

    Only hosts on a network of this machine's are in it: a relayed client's address is not (its
    router's is, under the router's own address), so no MAC is ever given to the wrong address.
    """
    try:
        lines = table.read_text().splitlines()[1:]
    except OSError:
        return {}
    found: dict[str, str] = {}
    for line in lines:
        parts = line.split()
        if len(parts) < 4:
            continue
        try:
            flags = int(parts[2], 16)
        except ValueError:
            continue
        if flags & _ARP_COMPLETE and parts[3] != "00:00:00:00:00:00":
            found[parts[0]] = parts[3].lower()
    return found
