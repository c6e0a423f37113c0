"""A router on the lab network, for IPv6 only as far as saying so: it answers Router Solicitations.

iPXE configures IPv6 beside DHCPv4 and, on a network where no router ever answers its Router
Solicitations, waits for them to time out (about 15 s) before it goes on to boot. This answers
each solicitation with a Router Advertisement that offers nothing (no prefix, no default route,
no DHCPv6: RFC 4861 §4.2 with a router lifetime of 0), which ends that wait at once and changes
nothing else. Run as ``python -m netbootd_lab.radv IFACE`` inside the lab namespace.
"""

from __future__ import annotations

import socket
import struct
import sys

ROUTER_SOLICITATION = 133
ROUTER_ADVERTISEMENT = 134
ALL_NODES = "ff02::1"
ALL_ROUTERS = "ff02::2"  # where solicitations go

# Type, code, checksum (the kernel fills it in), cur hop limit, flags (no M, no O), router
# lifetime 0 (not a default router), reachable time, retransmission timer.
ADVERT = struct.pack("!BBHBBHII", ROUTER_ADVERTISEMENT, 0, 0, 0, 0, 0, 0, 0)


def serve(interface: str) -> None:
    sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode())
    # RFC 4861 §6.1.2: a node drops a Router Advertisement whose hop limit is not 255.
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 255)
    index = socket.if_nametoindex(interface)
    group = socket.inet_pton(socket.AF_INET6, ALL_ROUTERS) + struct.pack("@I", index)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, group)
    while True:
        data, _ = sock.recvfrom(2048)
        if data[:1] == bytes([ROUTER_SOLICITATION]):
            sock.sendto(ADVERT, (ALL_NODES, 0, 0, index))


if __name__ == "__main__":
    serve(sys.argv[1])
