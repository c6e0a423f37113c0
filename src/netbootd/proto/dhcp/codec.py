"""DHCPv4 wire codec: BOOTP/DHCP packets and option values, bytes in and bytes out.

This module turns datagrams into :class:`DhcpPacket` values and back (RFC 2131 §2, RFC 2132,
RFC 3396 long options, option 52 overload), encodes and decodes typed option values, PXE and
iPXE sub-options (PXE 2.1, RFC 3046, iPXE option 175), and renders options for logs.

It must stay pure: no sockets, no clock, no logging, no file access, no boot policy. The only
exception :func:`decode` and the ``decode_*`` helpers raise for bad input from a peer is
:class:`DhcpDecodeError`; :func:`encode` and the ``*_option`` helpers raise :class:`ValueError`
when the caller hands them something that cannot go on the wire (a bug on our side).
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from enum import IntEnum, StrEnum
from ipaddress import IPv4Address
from typing import Final

__all__ = [
    "BOOTP_MIN_SIZE",
    "HEADER_SIZE",
    "MAGIC_COOKIE",
    "MAX_OPTION_VALUE",
    "MIN_MAX_MESSAGE_SIZE",
    "DhcpDecodeError",
    "DhcpPacket",
    "MessageType",
    "Op",
    "Opt",
    "decode",
    "decode_ip",
    "decode_ips",
    "decode_suboptions",
    "decode_text",
    "decode_u8",
    "decode_u16",
    "decode_u16_list",
    "decode_u32",
    "describe",
    "encode",
    "encode_suboptions",
    "ip_option",
    "ips_option",
    "option_ip",
    "option_name",
    "parameter_list",
    "pxe_vendor_options",
    "reply_to",
    "u8_option",
    "u16_option",
    "u32_option",
]


class DhcpDecodeError(ValueError):
    """A peer sent bytes that are not a well-formed DHCP packet or option value."""


class MessageType(IntEnum):
    """Option 53 values (RFC 2132 §9.6)."""

    DISCOVER = 1
    OFFER = 2
    REQUEST = 3
    DECLINE = 4
    ACK = 5
    NAK = 6
    RELEASE = 7
    INFORM = 8


class Op(IntEnum):
    """The ``op`` header field (RFC 2131 §2)."""

    BOOTREQUEST = 1
    BOOTREPLY = 2


class Opt(IntEnum):
    """Option codes used by netbootd. Packets keep codes as plain ints, so unknown codes pass."""

    PAD = 0
    SUBNET_MASK = 1
    TIME_OFFSET = 2
    ROUTER = 3
    DNS = 6
    HOST_NAME = 12
    BOOT_SIZE = 13
    DOMAIN_NAME = 15
    ROOT_PATH = 17
    MTU = 26
    BROADCAST = 28
    NTP = 42
    VENDOR_SPECIFIC = 43
    REQUESTED_IP = 50
    LEASE_TIME = 51
    OVERLOAD = 52
    MESSAGE_TYPE = 53
    SERVER_ID = 54
    PARAMETER_LIST = 55
    MESSAGE = 56
    MAX_MESSAGE_SIZE = 57
    RENEWAL_TIME = 58
    REBINDING_TIME = 59
    VENDOR_CLASS = 60
    CLIENT_ID = 61
    TFTP_SERVER = 66
    BOOTFILE = 67
    USER_CLASS = 77
    RAPID_COMMIT = 80
    CLIENT_FQDN = 81
    AGENT_INFO = 82
    CLIENT_ARCH = 93
    CLIENT_NDI = 94
    CLIENT_UUID = 97
    SUBNET_SELECTION = 118
    DOMAIN_SEARCH = 119
    CLASSLESS_STATIC_ROUTE = 121
    TFTP_SERVER_ADDRESS = 150
    IPXE_ENCAP = 175
    PXELINUX_MAGIC = 208
    PXELINUX_CONFIGFILE = 209
    PXELINUX_PATHPREFIX = 210
    PXELINUX_REBOOTTIME = 211
    END = 255


# RFC 2131 §3: the first four octets of the options field.
MAGIC_COOKIE = bytes((99, 130, 83, 99))
# RFC 2131 §2: op..file is 236 octets; the options field follows the cookie.
HEADER_SIZE = 236
_OPTIONS_START = HEADER_SIZE + len(MAGIC_COOKIE)
# RFC 951 fixes the BOOTP packet at 300 octets; some PXE ROMs still drop shorter replies.
BOOTP_MIN_SIZE = 300
# RFC 2131 §2 / RFC 2132 §9.10: every client accepts 576-octet IP datagrams.
MIN_MAX_MESSAGE_SIZE = 576
_IP_UDP_HEADERS = 20 + 8

_HEADER = struct.Struct("!BBBBIHH4s4s4s4s16s64s128s")
_SNAME_OFFSET = 44
_FILE_OFFSET = 108
_SNAME_SIZE = 64
_FILE_SIZE = 128
_CHADDR_SIZE = 16
MAX_OPTION_VALUE = 255  # octets in one option instance; RFC 3396 splits longer values
_BROADCAST_FLAG = 0x8000
_ZERO = IPv4Address(0)
_ZERO_OCTETS = bytes(4)

# RFC 2132 §9.3 values of option 52.
_OVERLOAD_FILE = 1
_OVERLOAD_SNAME = 2


# --------------------------------------------------------------------------------------------
# Option names


_NAMES: dict[int, str] = {
    0: "pad",
    1: "subnet-mask",
    2: "time-offset",
    3: "router",
    4: "time-servers",
    5: "name-servers",
    6: "dns-servers",
    7: "log-servers",
    8: "cookie-servers",
    9: "lpr-servers",
    10: "impress-servers",
    11: "resource-location-servers",
    12: "host-name",
    13: "boot-size",
    14: "merit-dump-file",
    15: "domain-name",
    16: "swap-server",
    17: "root-path",
    18: "extensions-path",
    19: "ip-forwarding",
    20: "non-local-source-routing",
    21: "policy-filter",
    22: "max-datagram-reassembly",
    23: "default-ip-ttl",
    24: "path-mtu-aging-timeout",
    25: "path-mtu-plateau-table",
    26: "interface-mtu",
    27: "all-subnets-local",
    28: "broadcast-address",
    29: "perform-mask-discovery",
    30: "mask-supplier",
    31: "perform-router-discovery",
    32: "router-solicitation-address",
    33: "static-route",
    34: "trailer-encapsulation",
    35: "arp-cache-timeout",
    36: "ethernet-encapsulation",
    37: "tcp-default-ttl",
    38: "tcp-keepalive-interval",
    39: "tcp-keepalive-garbage",
    40: "nis-domain",
    41: "nis-servers",
    42: "ntp-servers",
    43: "vendor-specific",
    44: "netbios-name-servers",
    45: "netbios-dd-servers",
    46: "netbios-node-type",
    47: "netbios-scope",
    48: "x-font-servers",
    49: "x-display-managers",
    50: "requested-ip",
    51: "lease-time",
    52: "overload",
    53: "message-type",
    54: "server-id",
    55: "parameter-list",
    56: "message",
    57: "max-message-size",
    58: "renewal-time",
    59: "rebinding-time",
    60: "vendor-class",
    61: "client-id",
    62: "netware-domain",
    63: "netware-options",
    64: "nis-plus-domain",
    65: "nis-plus-servers",
    66: "tftp-server",
    67: "bootfile",
    68: "mobile-ip-home-agents",
    69: "smtp-servers",
    70: "pop3-servers",
    71: "nntp-servers",
    72: "www-servers",
    73: "finger-servers",
    74: "irc-servers",
    75: "streettalk-servers",
    76: "stda-servers",
    77: "user-class",
    80: "rapid-commit",
    81: "client-fqdn",
    82: "agent-info",
    93: "client-arch",
    94: "client-ndi",
    97: "client-uuid",
    118: "subnet-selection",
    119: "domain-search",
    121: "classless-static-route",
    150: "tftp-server-address",
    175: "ipxe-encap",
    208: "pxelinux-magic",
    209: "pxelinux-configfile",
    210: "pxelinux-pathprefix",
    211: "pxelinux-reboottime",
    255: "end",
}


def option_name(code: int) -> str:
    """Return a short kebab-case name for an option code, ``option-<n>`` when unknown."""
    return _NAMES.get(code, f"option-{code}")


# Names an operator may also use: dhcpd's and dnsmasq's spellings of a few common options.
_ALIASES: dict[str, int] = {
    "routers": 3,
    "domain-name-servers": 6,
    "dns-server": 6,
    "ntp-server": 42,
    "vendor-encapsulated-options": 43,
    "mtu": 26,
}


class OptionKind(StrEnum):
    """How an option's value is written in the configuration (RFC 2132 types)."""

    IP = "ip"  # one IPv4 address
    IPS = "ips"  # a list of IPv4 addresses
    U8 = "u8"
    U16 = "u16"
    U32 = "u32"
    FLAG = "flag"  # 0 or 1
    TEXT = "text"
    HEX = "hex"  # raw octets, written hex:01:02:ff


_KINDS: dict[int, OptionKind] = {
    **dict.fromkeys((1, 16, 28, 32, 54, 118), OptionKind.IP),
    **dict.fromkeys(
        (3, 4, 5, 6, 7, 8, 9, 10, 11, 41, 42, 44, 45, 48, 49, 65, *range(68, 77), 150),
        OptionKind.IPS,
    ),
    **dict.fromkeys((23, 37, 46), OptionKind.U8),
    **dict.fromkeys((13, 22, 26, 57), OptionKind.U16),
    **dict.fromkeys((24, 35, 38, 51, 58, 59, 211), OptionKind.U32),
    **dict.fromkeys((19, 20, 27, 29, 30, 31, 34, 36, 39), OptionKind.FLAG),
    **dict.fromkeys((12, 14, 15, 17, 18, 40, 47, 56, 62, 64, 66, 67, 209, 210), OptionKind.TEXT),
}


def option_code(name: str | int) -> int:
    """The code of an option written as a number (``42``) or a name (``ntp-servers``)."""
    if isinstance(name, int) or name.strip().isdigit():
        code = int(name)
        if not 1 <= code <= 254:
            raise ValueError(f"option code {code} is outside 1-254")
        return code
    wanted = name.strip().lower()
    for code, known in _NAMES.items():
        if known == wanted and 1 <= code <= 254:
            return code
    if wanted in _ALIASES:
        return _ALIASES[wanted]
    raise ValueError(f"unknown option name {name!r} (use its code, like 42)")


# Options no configuration may set, and what to use instead. They are not information for
# the client but the protocol itself, which the server writes from its own state:
# - the message's frame and identity: 52 overload says where options continue (RFC 2132 §9.3),
#   53 the message type (§9.6), 54 which server answers (§9.7, RFC 2131 §4.3.1);
# - the lease's terms, which the server computes and keeps in its lease database: 51 the lease
#   time (§9.2), 58 and 59 the renewal and rebinding times derived from it (§9.11-9.12,
#   RFC 2131 §4.4.5);
# - what only the client (or its relay agent) sends: 50 the requested address (§9.1), 55 its
#   parameter list (§9.8), 57 its maximum message size (§9.10), 61 its identifier (§9.14),
#   80 rapid commit (RFC 4039 §4), 82 the relay agent's information, which a server only
#   echoes (RFC 3046 §2.2), 93 and 94 its architecture and network interface (RFC 4578 §2.1-2.2),
#   118 the subnet it asks for (RFC 3011 §3).
# (0 pad and 255 end frame the options field, RFC 2132 §3.1-3.2; option_code refuses them.)
_CLIENT_SENT = "it is the client's (or its relay agent's) to send, not the server's"
_SERVER_OWNED: dict[int, str] = {
    50: _CLIENT_SENT,
    51: "use lease-time (or bootp-lease-time), server-wide or in [[subnets]]",
    52: "it is how netbootd lays out a reply that does not fit, written by itself",
    53: "netbootd writes the message type of each reply",
    54: "netbootd names itself as the server (--interface's address)",
    55: _CLIENT_SENT,
    57: _CLIENT_SENT,
    58: "the renewal time follows lease-time (half of it)",
    59: "the rebinding time follows lease-time (seven eighths of it)",
    61: _CLIENT_SENT,
    80: _CLIENT_SENT,
    82: "netbootd echoes the relay agent's own, as it came",
    93: _CLIENT_SENT,
    94: _CLIENT_SENT,
    118: _CLIENT_SENT,
}


def settable_option(name: str | int) -> int:
    """The code of an option a configuration may set (``[dhcp-options]``, ``--dhcp-option``,
    a subnet's or a host's ``options``); ValueError saying what to use instead for one that
    belongs to the protocol itself."""
    code = option_code(name)
    why = _SERVER_OWNED.get(code)
    if why is not None:
        raise ValueError(f"option {code} ({option_name(code)}) cannot be set: {why}")
    return code


def option_kind(code: int) -> OptionKind:
    """How option ``code`` is written; HEX for codes without a known type."""
    return _KINDS.get(code, OptionKind.HEX)


def encode_option_value(code: int, value: object) -> bytes:
    """An option's wire value from a configured value, typed by the option's kind.

    Any option may be given raw as ``hex:01:02:ff``; an option of no known type must be.
    Raises ValueError saying what was expected.
    """
    if isinstance(value, str) and value.startswith("hex:"):
        try:
            return bytes.fromhex(value[4:].replace(":", "").replace(" ", ""))
        except ValueError:
            raise ValueError(f"{value!r} is not hex octets like hex:01:02:ff") from None
    kind = option_kind(code)
    try:
        encoded = _encode_kind(kind, value)
    except (ValueError, TypeError, OverflowError):
        raise ValueError(
            f"option {code} ({option_name(code)}) wants {_EXPECTED[kind]}, not {value!r}"
        ) from None
    if not encoded and kind is not OptionKind.HEX:
        raise ValueError(f"option {code} ({option_name(code)}) needs a value")
    return encoded


_EXPECTED = {
    OptionKind.IP: "an IPv4 address",
    OptionKind.IPS: "IPv4 addresses (a list, or comma-separated)",
    OptionKind.U8: "a number 0-255",
    OptionKind.U16: "a number 0-65535",
    OptionKind.U32: "a number 0-4294967295",
    OptionKind.FLAG: "true or false",
    OptionKind.TEXT: "text",
    OptionKind.HEX: "hex octets like hex:01:02:ff",
}


def _encode_kind(kind: OptionKind, value: object) -> bytes:
    if kind is OptionKind.IP:
        return IPv4Address(str(value).strip()).packed
    if kind is OptionKind.IPS:
        items = value if isinstance(value, list | tuple) else str(value).split(",")
        return b"".join(IPv4Address(str(item).strip()).packed for item in items)
    if kind in (OptionKind.U8, OptionKind.U16, OptionKind.U32):
        if isinstance(value, bool):
            raise TypeError("a number, not a flag")
        size = {OptionKind.U8: 1, OptionKind.U16: 2, OptionKind.U32: 4}[kind]
        return int(str(value).strip()).to_bytes(size, "big")
    if kind is OptionKind.FLAG:
        if isinstance(value, bool) or value in (0, 1):
            return bytes([int(bool(value))])
        raise ValueError("not a flag")
    if kind is OptionKind.TEXT:
        if not isinstance(value, str):
            raise TypeError("not text")
        return value.encode()
    raise ValueError("raw octets must be written hex:...")


# --------------------------------------------------------------------------------------------
# The packet


_MESSAGE_TYPES: dict[int, MessageType] = {mtype.value: mtype for mtype in MessageType}


@dataclass(unsafe_hash=True, slots=True)
class DhcpPacket:
    """One BOOTP/DHCP message (RFC 2131 §2), with options already joined per RFC 3396.

    ``chaddr`` holds exactly ``hlen`` octets; ``sname`` and ``file`` hold the text before the
    first NUL. ``options`` lists each code once, in the order it first appeared on the wire,
    without PAD, END or the option-52 framing that :func:`encode` adds by itself.

    A value: its fields are final, and it compares and hashes by them. It is made twice or
    more per packet, so ``__init__`` is written out: compiled (see ``setup.py``), a dataclass's
    generated one would stay interpreted and cost ten times as much.
    """

    op: Final[int]
    xid: Final[int]
    chaddr: Final[bytes]
    htype: Final[int]
    hops: Final[int]
    secs: Final[int]
    flags: Final[int]
    ciaddr: Final[IPv4Address]
    yiaddr: Final[IPv4Address]
    siaddr: Final[IPv4Address]
    giaddr: Final[IPv4Address]
    sname: Final[bytes]
    file: Final[bytes]
    options: Final[tuple[tuple[int, bytes], ...]]
    # The options by code, made on the first lookup (a request is asked for a dozen of them).
    _by_code: dict[int, bytes] | None = field(
        default=None, init=False, repr=False, compare=False, hash=False
    )

    def __init__(  # noqa: PLR0917 (a dataclass's signature: every field, in order)
        self,
        op: int,
        xid: int,
        chaddr: bytes,
        htype: int = 1,
        hops: int = 0,
        secs: int = 0,
        flags: int = 0,
        ciaddr: IPv4Address = _ZERO,
        yiaddr: IPv4Address = _ZERO,
        siaddr: IPv4Address = _ZERO,
        giaddr: IPv4Address = _ZERO,
        sname: bytes = b"",
        file: bytes = b"",
        options: tuple[tuple[int, bytes], ...] = (),
    ) -> None:
        self.op = op
        self.xid = xid
        self.chaddr = chaddr
        self.htype = htype
        self.hops = hops
        self.secs = secs
        self.flags = flags
        self.ciaddr = ciaddr
        self.yiaddr = yiaddr
        self.siaddr = siaddr
        self.giaddr = giaddr
        self.sname = sname
        self.file = file
        self.options = options
        self._by_code = None

    def get(self, code: int) -> bytes | None:
        """Return the value of option ``code``, or None when the packet does not carry it."""
        by_code = self._by_code
        if by_code is None:
            # The first of a code wins, should a hand-built packet list one twice.
            by_code = dict(reversed(self.options))
            self._by_code = by_code
        return by_code.get(code)

    def __contains__(self, code: object) -> bool:
        return isinstance(code, int) and self.get(code) is not None

    @property
    def message_type(self) -> MessageType | int | None:
        """Option 53 as a :class:`MessageType`, the raw int for unknown types, else None.

        None also covers a value that is not exactly one octet (RFC 2132 §9.6 fixes the
        length), so a malformed DHCP message looks like plain BOOTP to the caller.
        """
        value = self.get(Opt.MESSAGE_TYPE)
        if value is None or len(value) != 1:
            return None
        return _MESSAGE_TYPES.get(value[0], value[0])

    @property
    def broadcast(self) -> bool:
        """The BROADCAST bit of ``flags`` (RFC 2131 §2, figure 2)."""
        return bool(self.flags & _BROADCAST_FLAG)

    @property
    def mac(self) -> str:
        """``chaddr`` as lower-case colon-separated hex, e.g. ``52:54:00:12:34:56``."""
        return _hex(self.chaddr)

    def with_options(self, options: Iterable[tuple[int, bytes]]) -> DhcpPacket:
        """Return a copy where each given code is set: replaced in place, or appended if new."""
        updates = dict(options)
        merged = [(code, updates.pop(code, value)) for code, value in self.options]
        merged.extend(updates.items())
        return replace(self, options=tuple(merged))


def reply_to(
    request: DhcpPacket,
    options: Iterable[tuple[int, bytes]],
    *,
    flags: int | None = None,
    ciaddr: IPv4Address = _ZERO,
    yiaddr: IPv4Address = _ZERO,
    siaddr: IPv4Address = _ZERO,
    file: bytes = b"",
) -> DhcpPacket:
    """A BOOTREPLY to ``request``: its xid, hardware address, flags and relay agent (RFC 2131
    §4.3.1, table 3) with the given fields; ``flags`` are the request's unless given. A boot file
    name of 128 octets or more does not fit the ``file`` field (127 and a NUL) and is left for
    option 67 alone."""
    return DhcpPacket(
        op=Op.BOOTREPLY,
        xid=request.xid,
        chaddr=request.chaddr,
        htype=request.htype,
        flags=request.flags if flags is None else flags,
        ciaddr=ciaddr,
        yiaddr=yiaddr,
        siaddr=siaddr,
        giaddr=request.giaddr,
        file=file if len(file) < _FILE_SIZE else b"",
        options=tuple(options),
    )


# --------------------------------------------------------------------------------------------
# Decoding


def decode(data: bytes) -> DhcpPacket:
    """Parse one UDP payload into a :class:`DhcpPacket`; raise only :class:`DhcpDecodeError`."""
    data = bytes(data)
    if len(data) < _OPTIONS_START:
        raise DhcpDecodeError(f"runt packet: {len(data)} octets, need at least {_OPTIONS_START}")
    (
        op,
        htype,
        hlen,
        hops,
        xid,
        secs,
        flags,
        ciaddr,
        yiaddr,
        siaddr,
        giaddr,
        chaddr,
        sname,
        file,
    ) = _HEADER.unpack_from(data)
    if op not in (Op.BOOTREQUEST, Op.BOOTREPLY):
        raise DhcpDecodeError(f"bad op {op}")
    if hlen > _CHADDR_SIZE:
        raise DhcpDecodeError(f"hlen {hlen} exceeds the {_CHADDR_SIZE}-octet chaddr field")
    if data[HEADER_SIZE:_OPTIONS_START] != MAGIC_COOKIE:
        # RFC 2131 §3: without the cookie this is plain BOOTP with a vendor area we don't serve.
        raise DhcpDecodeError(f"bad magic cookie {data[HEADER_SIZE:_OPTIONS_START].hex()}")

    instances: list[tuple[int, bytes]] = []
    _parse_region(data, _OPTIONS_START, len(data), instances, "options")
    options: tuple[tuple[int, bytes], ...]
    if len({code for code, _ in instances}) == len(instances) and not any(
        code == _OVERLOAD_CODE for code, _ in instances
    ):
        options = tuple(instances)  # the usual request: each code once, no overload
    else:
        options, sname, file = _aggregate(data, instances, sname, file)
    return DhcpPacket(
        op=op,
        xid=xid,
        chaddr=chaddr[:hlen],
        htype=htype,
        hops=hops,
        secs=secs,
        flags=flags,
        ciaddr=_address(ciaddr),
        yiaddr=_address(yiaddr),
        siaddr=_address(siaddr),
        giaddr=_address(giaddr),
        sname=_cstring(sname),
        file=_cstring(file),
        options=options,
    )


def _aggregate(
    data: bytes, instances: list[tuple[int, bytes]], sname: bytes, file: bytes
) -> tuple[tuple[tuple[int, bytes], ...], bytes, bytes]:
    """The options of a packet that overloads file or sname or splits an option (RFC 3396),
    each code joined into one; with what is left of sname and file as text."""
    # RFC 2131 §4.1: option 52 is only honoured in the options field itself.
    overload_parts = [value for code, value in instances if code == Opt.OVERLOAD]
    overload = 0
    if overload_parts:
        value = b"".join(overload_parts)
        if len(value) != 1 or not 1 <= value[0] <= 3:
            raise DhcpDecodeError(f"bad option-overload value {value.hex()}")
        overload = value[0]
    # RFC 3396 §5: the aggregate option buffer is the options field, then file, then sname.
    if overload & _OVERLOAD_FILE:
        _parse_region(data, _FILE_OFFSET, _FILE_OFFSET + _FILE_SIZE, instances, "file")
        file = b""
    if overload & _OVERLOAD_SNAME:
        _parse_region(data, _SNAME_OFFSET, _SNAME_OFFSET + _SNAME_SIZE, instances, "sname")
        sname = b""

    # RFC 3396 §7: all instances of a code form one option, joined in the order above.
    joined: dict[int, list[bytes]] = {}
    for code, value in instances:
        if code != Opt.OVERLOAD:
            joined.setdefault(code, []).append(value)
    options = tuple((code, b"".join(parts)) for code, parts in joined.items())
    return options, sname, file


def _address(raw: bytes) -> IPv4Address:
    # Most of a request's address fields are zero: one shared object serves them all.
    return _ZERO if raw == _ZERO_OCTETS else IPv4Address(raw)


def _parse_region(
    data: bytes, start: int, end: int, out: list[tuple[int, bytes]], where: str
) -> None:
    """Append the code/value instances in ``data[start:end]`` to ``out``.

    PAD (0) is skipped and END (255) stops the region (RFC 2132 §3.1, §3.2). A region may also
    stop without END when its last option ends exactly at ``end``: many clients send that.
    """
    i = start
    while i < end:
        code = data[i]
        if code == Opt.PAD:
            i += 1
            continue
        if code == Opt.END:
            return
        if i + 1 >= end:
            raise DhcpDecodeError(f"option {code} in {where} truncated: no length octet")
        length = data[i + 1]
        value_end = i + 2 + length
        if value_end > end:
            raise DhcpDecodeError(
                f"option {code} in {where} truncated: length {length}, {end - i - 2} octets left"
            )
        out.append((code, data[i + 2 : value_end]))
        i = value_end


def _cstring(field: bytes) -> bytes:
    # RFC 2131 §2: sname and file are NUL-terminated strings; a client reads up to the NUL.
    return field.split(b"\x00", 1)[0]


# --------------------------------------------------------------------------------------------
# Encoding


def encode(packet: DhcpPacket, *, max_size: int = MIN_MAX_MESSAGE_SIZE) -> bytes:
    """Serialise ``packet`` as a UDP payload for an IP datagram of at most ``max_size`` octets.

    Option 53 goes first, long values are split per RFC 3396, and options spill into ``file``
    and then ``sname`` (option 52) when the options field is too small. Raises ValueError when
    the packet cannot be represented or does not fit.
    """
    _check_header(packet)
    budget = max(max_size, MIN_MAX_MESSAGE_SIZE) - _IP_UDP_HEADERS - _OPTIONS_START
    options_field = _serialise_simple(packet.options, budget)
    if options_field is not None:
        return _wire(packet, packet.sname, packet.file, options_field)
    message_type, rest = _split_message_type(_checked_options(packet.options))
    pieces = [*message_type, *rest]
    # RFC 3046 §2.1: relay agent information, put last, stays last and in the options field
    # itself, where relay agents look for it; it never spills into file or sname.
    agent: list[tuple[int, bytes]] = []
    while rest and rest[-1][0] == Opt.AGENT_INFO:
        agent.insert(0, rest.pop())

    sname, file = packet.sname, packet.file
    if sum(2 + len(value) for _, value in pieces) + 1 <= budget:
        options_field = _serialise(pieces)
    else:
        # RFC 2131 §4.1 / RFC 2132 §9.3: the fields named by option 52 carry options instead.
        # The overload option (3 octets) and END take room from the options field.
        head_size = sum(2 + len(value) for _, value in [*message_type, *agent]) + 3 + 1
        capacities = [budget - head_size]
        spill_to: list[int] = []
        if not packet.file:
            capacities.append(_FILE_SIZE - 1)
            spill_to.append(_OVERLOAD_FILE)
        if not packet.sname:
            capacities.append(_SNAME_SIZE - 1)
            spill_to.append(_OVERLOAD_SNAME)
        regions = None
        if capacities[0] >= 0:
            regions = _pack(rest, capacities, split_small=False) or _pack(
                rest, capacities, split_small=True
            )
        if regions is None:
            raise ValueError(
                f"options do not fit in a {max(max_size, MIN_MAX_MESSAGE_SIZE)}-octet message "
                "even with option overload"
            )
        overload = 0
        for flag, region in zip(spill_to, regions[1:], strict=True):
            if region:
                overload |= flag
                field = _serialise(region)
                if flag == _OVERLOAD_FILE:
                    file = field
                else:
                    sname = field
        head = [*message_type, (int(Opt.OVERLOAD), bytes((overload,)))]
        options_field = _serialise([*head, *regions[0], *agent])

    return _wire(packet, sname, file, options_field)


def _octets(address: IPv4Address) -> bytes:
    # ``IPv4Address.packed`` is two interpreted calls; ``int()`` is one, and the shared zero
    # address, in most fields, none.
    return _ZERO_OCTETS if address is _ZERO else int(address).to_bytes(4, "big")


def _wire(packet: DhcpPacket, sname: bytes, file: bytes, options_field: bytes) -> bytes:
    header = _HEADER.pack(
        packet.op,
        packet.htype,
        len(packet.chaddr),
        packet.hops,
        packet.xid,
        packet.secs,
        packet.flags,
        _octets(packet.ciaddr),
        _octets(packet.yiaddr),
        _octets(packet.siaddr),
        _octets(packet.giaddr),
        packet.chaddr,
        sname,
        file,
    )
    wire = header + MAGIC_COOKIE + options_field
    return wire.ljust(BOOTP_MIN_SIZE, b"\x00")


def _serialise_simple(options: Sequence[tuple[int, bytes]], budget: int) -> bytes | None:
    """The options field for the usual case, in one pass: every value under 256 octets, the
    whole within ``budget``, option 53 (if any) first. None when the general path is needed
    (long values, overload) or when the options are invalid, which that path reports."""
    parts: list[bytes] = [b""]  # option 53 goes in front
    codes = [code for code, _ in options]
    if len(set(codes)) != len(codes) or _OVERLOAD_CODE in codes:
        return None
    for code, value in options:
        size = len(value)
        if size > MAX_OPTION_VALUE or not 0 < code < _END_CODE:
            return None
        if code == _MESSAGE_TYPE_CODE:
            parts[0] = bytes((code, size)) + value
        else:
            parts.append(bytes((code, size)))
            parts.append(value)
    parts.append(_END_OCTET)
    wire = b"".join(parts)
    return wire if len(wire) <= budget else None


_OVERLOAD_CODE, _MESSAGE_TYPE_CODE, _END_CODE = (
    int(Opt.OVERLOAD),
    int(Opt.MESSAGE_TYPE),
    int(Opt.END),
)
_END_OCTET = bytes((_END_CODE,))


def _check_header(packet: DhcpPacket) -> None:
    if (
        packet.op in (1, 2)  # BOOTREQUEST, BOOTREPLY
        and 0 <= packet.htype <= 0xFF
        and 0 <= packet.hops <= 0xFF
        and 0 <= packet.xid <= 0xFFFFFFFF
        and 0 <= packet.secs <= 0xFFFF
        and 0 <= packet.flags <= 0xFFFF
        and len(packet.chaddr) <= _CHADDR_SIZE
        and len(packet.sname) <= _SNAME_SIZE
        and len(packet.file) <= _FILE_SIZE
        and b"\x00" not in packet.sname
        and b"\x00" not in packet.file
    ):
        return  # the usual packet, checked in one expression
    _explain_header(packet)


def _explain_header(packet: DhcpPacket) -> None:
    """Raise ValueError naming what in the header cannot be encoded."""
    if packet.op not in (Op.BOOTREQUEST, Op.BOOTREPLY):
        raise ValueError(f"op must be 1 or 2, not {packet.op}")
    for name, value, limit in (
        ("htype", packet.htype, 0xFF),
        ("hops", packet.hops, 0xFF),
        ("xid", packet.xid, 0xFFFFFFFF),
        ("secs", packet.secs, 0xFFFF),
        ("flags", packet.flags, 0xFFFF),
    ):
        if not 0 <= value <= limit:
            raise ValueError(f"{name} {value} out of range 0..{limit}")
    for name, raw, size in (
        ("chaddr", packet.chaddr, _CHADDR_SIZE),
        ("sname", packet.sname, _SNAME_SIZE),
        ("file", packet.file, _FILE_SIZE),
    ):
        if len(raw) > size:
            raise ValueError(f"{name} is {len(raw)} octets, the field holds {size}")
    for name, raw in (("sname", packet.sname), ("file", packet.file)):
        if b"\x00" in raw:
            raise ValueError(f"{name} contains NUL, which would end the string early")


def _checked_options(options: Iterable[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
    seen: set[int] = set()
    checked: list[tuple[int, bytes]] = []
    for code, value in options:
        if not 1 <= code <= 254:
            raise ValueError(f"option code {code} out of range 1..254")
        if code == Opt.OVERLOAD:
            raise ValueError("option 52 is added by encode() when it is needed")
        if code in seen:
            raise ValueError(f"option {code} given twice; join the values instead (RFC 3396)")
        seen.add(code)
        checked.append((code, bytes(value)))
    return checked


def _split_message_type(
    options: list[tuple[int, bytes]],
) -> tuple[list[tuple[int, bytes]], list[tuple[int, bytes]]]:
    """Split into (option-53 instances, other instances), each value cut to <= 255 octets."""
    first: list[tuple[int, bytes]] = []
    rest: list[tuple[int, bytes]] = []
    for code, value in options:
        # Several PXE ROMs only look for the message type as the first option.
        target = first if code == Opt.MESSAGE_TYPE else rest
        target.extend(_instances(code, value))
    return first, rest


def _instances(code: int, value: bytes) -> list[tuple[int, bytes]]:
    # RFC 3396 §6: a value longer than 255 octets goes out as consecutive instances.
    if not value:
        return [(code, b"")]
    return [(code, value[i : i + MAX_OPTION_VALUE]) for i in range(0, len(value), MAX_OPTION_VALUE)]


def _pack(
    pieces: Sequence[tuple[int, bytes]], capacities: Sequence[int], *, split_small: bool
) -> list[list[tuple[int, bytes]]] | None:
    """Lay ``pieces`` out, in order, across regions of the given capacities, or return None.

    Order is kept so the RFC 3396 §5 buffer (options, file, sname) rebuilds each value.
    Without ``split_small``, a piece that would fit whole in a later region moves there rather
    than being cut: clients without RFC 3396 support then still see intact short options.
    """
    regions: list[list[tuple[int, bytes]]] = [[] for _ in capacities]
    queue = deque(pieces)
    index = 0
    room = capacities[0]
    while queue:
        code, chunk = queue.popleft()
        need = 2 + len(chunk)
        if need <= room:
            regions[index].append((code, chunk))
            room -= need
            continue
        largest_later = max(capacities[index + 1 :], default=0)
        if chunk and room >= 3 and (split_small or need > largest_later):
            regions[index].append((code, chunk[: room - 2]))
            chunk = chunk[room - 2 :]
        index += 1
        if index == len(capacities):
            return None
        room = capacities[index]
        queue.appendleft((code, chunk))
    return regions


def _serialise(pieces: Iterable[tuple[int, bytes]]) -> bytes:
    out = bytearray()
    for code, value in pieces:
        out += bytes((code, len(value)))
        out += value
    out.append(Opt.END)
    return bytes(out)


# --------------------------------------------------------------------------------------------
# Typed option values


def ip_option(addr: IPv4Address | str) -> bytes:
    """One IPv4 address as an option value."""
    return _octets(addr if isinstance(addr, IPv4Address) else IPv4Address(addr))


def ips_option(addrs: Iterable[IPv4Address | str]) -> bytes:
    """A list of IPv4 addresses as an option value."""
    return b"".join([ip_option(addr) for addr in addrs])


def u8_option(n: int) -> bytes:
    """An unsigned 8-bit option value."""
    return _uint(n, 1)


def u16_option(n: int) -> bytes:
    """An unsigned 16-bit option value, network order."""
    return _uint(n, 2)


def u32_option(n: int) -> bytes:
    """An unsigned 32-bit option value, network order."""
    return _uint(n, 4)


def _uint(n: int, size: int) -> bytes:
    if not 0 <= n < 1 << (8 * size):
        raise ValueError(f"{n} does not fit in {size * 8} bits")
    return n.to_bytes(size, "big")


def decode_ip(value: bytes) -> IPv4Address:
    """An option value holding exactly one IPv4 address."""
    _need_length(value, 4)
    return IPv4Address(value)


def decode_ips(value: bytes) -> tuple[IPv4Address, ...]:
    """An option value holding one or more IPv4 addresses (RFC 2132: minimum length 4)."""
    if not value or len(value) % 4:
        raise DhcpDecodeError(f"address list of {len(value)} octets is not a multiple of 4")
    return tuple(IPv4Address(value[i : i + 4]) for i in range(0, len(value), 4))


def decode_u8(value: bytes) -> int:
    """An unsigned 8-bit option value."""
    _need_length(value, 1)
    return value[0]


def decode_u16(value: bytes) -> int:
    """An unsigned 16-bit option value."""
    _need_length(value, 2)
    return int.from_bytes(value, "big")


def decode_u32(value: bytes) -> int:
    """An unsigned 32-bit option value."""
    _need_length(value, 4)
    return int.from_bytes(value, "big")


def decode_u16_list(value: bytes) -> tuple[int, ...]:
    """A list of 16-bit values, e.g. option 93 client architectures (RFC 4578 §2.1)."""
    if len(value) % 2:
        raise DhcpDecodeError(f"16-bit list of odd length {len(value)}")
    return tuple(int.from_bytes(value[i : i + 2], "big") for i in range(0, len(value), 2))


def decode_text(value: bytes) -> str:
    """A text option: trailing NULs dropped (some clients count them), bad UTF-8 replaced."""
    return value.rstrip(b"\x00").decode("utf-8", errors="replace")


def parameter_list(packet: DhcpPacket) -> tuple[int, ...]:
    """The option codes the client asked for in option 55 (RFC 2132 §9.8), in its order."""
    return tuple(packet.get(Opt.PARAMETER_LIST) or b"")


def option_ip(packet: DhcpPacket, code: int) -> IPv4Address | None:
    """The address in option ``code`` of ``packet``, None when the option is absent."""
    raw = packet.get(code)
    return decode_ip(raw) if raw is not None else None


def _need_length(value: bytes, size: int) -> None:
    if len(value) != size:
        raise DhcpDecodeError(f"expected {size} octets, got {len(value)}")


# --------------------------------------------------------------------------------------------
# Sub-options (option 43 for PXE, 82 for relay agents, 175 for iPXE)


def encode_suboptions(suboptions: Sequence[tuple[int, bytes]], *, end: bool = False) -> bytes:
    """Encode code/length/value sub-options, with a final END octet when ``end`` is set."""
    out = bytearray()
    for code, value in suboptions:
        if not 1 <= code <= 254:
            raise ValueError(f"sub-option code {code} out of range 1..254")
        if len(value) > MAX_OPTION_VALUE:
            raise ValueError(f"sub-option {code} is {len(value)} octets, at most 255 fit")
        out += bytes((code, len(value)))
        out += value
    if end:
        out.append(Opt.END)
    return bytes(out)


def pxe_vendor_options(suboptions: Sequence[tuple[int, bytes]]) -> bytes:
    """An option 43 value for PXE clients: sub-options closed by END (PXE 2.1 vendor options)."""
    return encode_suboptions(suboptions, end=True)


def decode_suboptions(value: bytes) -> tuple[tuple[int, bytes], ...]:
    """Split an encapsulated option value into (code, value) pairs in wire order.

    Follows the PXE 2.1 convention of 0 as padding and 255 as end; relay-agent (RFC 3046) and
    iPXE sub-options never use those codes, so the same parser serves options 43, 82 and 175.
    """
    found: list[tuple[int, bytes]] = []
    _parse_region(bytes(value), 0, len(value), found, "sub-options")
    return tuple(found)


# --------------------------------------------------------------------------------------------
# Rendering for logs


def describe(packet: DhcpPacket) -> list[str]:
    """One line per option, ``"  53 message-type: DISCOVER"``; never raises on odd values."""
    lines = []
    for code, value in packet.options:
        render = _RENDERERS.get(code, _hex)
        try:
            text = render(value)
        except DhcpDecodeError:
            text = _hex(value)
        lines.append(f"{code:4d} {option_name(code)}: {text}")
    return lines


def _hex(value: bytes) -> str:
    return value.hex(":")


def _render_text(value: bytes) -> str:
    # Text from a peer goes into log lines: show it only if it is clean, printable UTF-8.
    try:
        text = value.rstrip(b"\x00").decode("utf-8")
    except UnicodeDecodeError:
        return _hex(value)
    return text if text.isprintable() else _hex(value)


def _render_ips(value: bytes) -> str:
    return ",".join(str(addr) for addr in decode_ips(value))


def _render_seconds(value: bytes) -> str:
    seconds = decode_u32(value)
    # RFC 2131 §3.3: all ones means an infinite lease.
    return "infinite" if seconds == 0xFFFFFFFF else f"{seconds}s"


def _render_signed_seconds(value: bytes) -> str:
    _need_length(value, 4)
    return f"{int.from_bytes(value, 'big', signed=True)}s"


def _render_message_type(value: bytes) -> str:
    number = decode_u8(value)
    try:
        return MessageType(number).name
    except ValueError:
        return str(number)


def _render_codes(value: bytes) -> str:
    return ",".join(str(code) for code in value)


def _render_u16_list(value: bytes) -> str:
    return ",".join(str(n) for n in decode_u16_list(value))


def _render_suboptions(value: bytes) -> str:
    return " ".join(f"{code}={_hex(sub)}" for code, sub in decode_suboptions(value))


# PXE 2.1 Table 2-1: the PXE vendor sub-options of option 43 that are shown decoded.
_PXE_SUBOPTIONS = {
    6: "discovery-control",
    7: "discovery-mcast",
    8: "boot-servers",
    9: "boot-menu",
    10: "menu-prompt",
    71: "boot-item",
}


def _render_pxe_vendor(value: bytes) -> str:
    """Option 43 as PXE sub-options when it is made of them only, else as plain sub-options."""
    subs = decode_suboptions(value)
    if not subs or any(code not in _PXE_SUBOPTIONS for code, _ in subs):
        return _render_suboptions(value)
    return " ".join(f"{_PXE_SUBOPTIONS[code]}={_render_pxe_sub(code, sub)}" for code, sub in subs)


def _render_pxe_sub(code: int, value: bytes) -> str:
    parts: list[str] = []
    if code == 6:
        return f"0x{decode_u8(value):02x}"
    if code == 7:
        return str(decode_ip(value))
    if code == 71:
        _need_length(value, 4)
        return f"{decode_u16(value[:2])}/layer{decode_u16(value[2:])}"
    if code == 10:
        if not value:
            raise DhcpDecodeError("empty menu prompt")
        return f"{value[0]}s:{_render_text(value[1:])!r}"
    pos = 0
    while pos < len(value):
        if pos + 3 > len(value):
            raise DhcpDecodeError(f"sub-option {code} truncated")
        kind, count = decode_u16(value[pos : pos + 2]), value[pos + 2]
        size = 4 * count if code == 8 else count
        body = value[pos + 3 : pos + 3 + size]
        if len(body) != size:
            raise DhcpDecodeError(f"sub-option {code} truncated")
        shown = ",".join(map(str, decode_ips(body))) if code == 8 else repr(_render_text(body))
        parts.append(f"{kind}:{shown}")
        pos += 3 + size
    return ";".join(parts)


_RENDERERS: dict[int, Callable[[bytes], str]] = {
    **dict.fromkeys((1, 16, 28, 32, 50, 54, 118), lambda v: str(decode_ip(v))),
    **dict.fromkeys(
        (3, 4, 5, 6, 7, 8, 9, 10, 11, 21, 33, 41, 42, 44, 45, 48, 49, 65, *range(68, 77), 150),
        _render_ips,
    ),
    **dict.fromkeys((24, 35, 38, 51, 58, 59, 211), _render_seconds),
    2: _render_signed_seconds,
    **dict.fromkeys((13, 22, 26, 57), lambda v: str(decode_u16(v))),
    **dict.fromkeys((25, 93), _render_u16_list),
    **dict.fromkeys(
        (19, 20, 23, 27, 29, 30, 31, 34, 36, 37, 39, 46, 52), lambda v: str(decode_u8(v))
    ),
    **dict.fromkeys(
        (12, 14, 15, 17, 18, 40, 47, 56, 60, 62, 64, 66, 67, 77, 209, 210), _render_text
    ),
    53: _render_message_type,
    55: _render_codes,
    43: _render_pxe_vendor,
    **dict.fromkeys((82, 175), _render_suboptions),
}
