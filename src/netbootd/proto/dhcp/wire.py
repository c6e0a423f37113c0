"""Facts of the DHCPv4 wire that the socket edge and the service both need.

The ports (RFC 2131 §4.1, PXE 2.1 §2.2.3), the broadcast and unspecified addresses, where a reply
goes (RFC 2131 §4.1), and what can be read from a datagram before it is decoded: its message
type when option 53 comes first, and the DHCP worker whose client sent it.

Pure: no sockets, no clock, no logging.
"""

from __future__ import annotations

from ipaddress import IPv4Address

from netbootd.proto.dhcp.codec import HEADER_SIZE, MAGIC_COOKIE, DhcpPacket, MessageType, Op, Opt

__all__ = [
    "BROADCAST",
    "BROADCAST_FLAG",
    "CHADDR_LAST_OCTET",
    "DHCP_CLIENT_PORT",
    "DHCP_SERVER_PORT",
    "PXE_PORT",
    "ZERO",
    "address_text",
    "client_worker",
    "peek_message_type",
    "reply_destination",
    "worker_of",
]

DHCP_SERVER_PORT = 67
DHCP_CLIENT_PORT = 68
PXE_PORT = 4011  # PXE 2.1 §2.2.3: boot server discovery and proxyDHCP requests
BROADCAST = IPv4Address("255.255.255.255")
ZERO = IPv4Address(0)
BROADCAST_FLAG = 0x8000  # RFC 2131 §2, the BROADCAST bit of flags

_FIRST_OPTION = HEADER_SIZE + len(MAGIC_COOKIE)


def address_text(address: IPv4Address) -> str:
    """``str(address)``, compiled: each reply and its log line need one or two, and
    ``IPv4Address.__str__`` is interpreted."""
    n = int(address)
    return f"{n >> 24}.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"


def peek_message_type(data: bytes) -> int | None:
    """Option 53 of a request, when it is the first option (where nearly every client puts
    it); None when it takes a decode to know."""
    if (
        len(data) > _FIRST_OPTION + 2
        and data[0] == Op.BOOTREQUEST
        and data[_FIRST_OPTION] == Opt.MESSAGE_TYPE
        and data[_FIRST_OPTION + 1] == 1
        and data[HEADER_SIZE:_FIRST_OPTION] == MAGIC_COOKIE
    ):
        return data[_FIRST_OPTION + 2]
    return None


# The last octet of a DHCP message's chaddr (an Ethernet address's): what picks a client's
# DHCP worker, read from the raw datagram (worker_of, and the kernel's steering program that
# the socket edge builds from this offset) or from the decoded MAC (client_worker) alike.
CHADDR_LAST_OCTET = 28 + 5


def worker_of(data: bytes, workers: int) -> int:
    """The index of the worker whose share ``data`` (a DHCP message) is."""
    return data[CHADDR_LAST_OCTET] % workers if len(data) > CHADDR_LAST_OCTET else 0


def client_worker(mac: str, workers: int) -> int:
    """The worker of the client with hardware address ``mac`` (``aa:bb:...`` text): its sixth
    octet, the last of an Ethernet address, modulo ``workers``; 0 for a shorter one (the
    octet is then the chaddr field's zero padding)."""
    octets = mac.split(":")
    if len(octets) < 6:
        return 0
    try:
        return int(octets[5], 16) % workers
    except ValueError:
        return 0


def reply_destination(request: DhcpPacket, mtype: MessageType | None) -> tuple[IPv4Address, int]:
    """Where a reply goes, by RFC 2131 §4.1 (RFC 951 §4 for a BOOTREPLY, ``mtype`` None)."""
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
