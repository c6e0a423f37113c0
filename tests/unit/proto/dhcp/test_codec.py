"""Unit tests for the DHCPv4 wire codec (netbootd.proto.dhcp.codec).

The golden packets below are assembled field by field from the RFC 2131 §2 layout, with the
option sets that BIOS PXE (SeaBIOS + iPXE), UEFI x64 PXE, UEFI HTTP boot and a relay agent put
in a DISCOVER.
"""

from __future__ import annotations

import dataclasses
import re
from ipaddress import IPv4Address

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netbootd.proto.dhcp.codec import (
    BOOTP_MIN_SIZE,
    HEADER_SIZE,
    MAGIC_COOKIE,
    DhcpDecodeError,
    DhcpPacket,
    MessageType,
    Op,
    Opt,
    decode,
    decode_ip,
    decode_ips,
    decode_suboptions,
    decode_text,
    decode_u8,
    decode_u16,
    decode_u16_list,
    decode_u32,
    describe,
    encode,
    encode_option_value,
    encode_suboptions,
    ip_option,
    ips_option,
    option_code,
    option_name,
    parameter_list,
    pxe_vendor_options,
    u8_option,
    u16_option,
    u32_option,
)


def _hex(*parts: str) -> bytes:
    return bytes.fromhex("".join(parts))


ZERO_SNAME = "00" * 64
ZERO_FILE = "00" * 128
COOKIE = "63825363"
UUID = "d4c3b2a1f0e9d8c7b6a5948372615041"

# SeaBIOS with the iPXE ROM that QEMU ships, first DISCOVER.
BIOS_IPXE_DISCOVER = _hex(
    "01",  # op: BOOTREQUEST
    "01",  # htype: Ethernet
    "06",  # hlen
    "00",  # hops
    "5a3b9c01",  # xid
    "0004",  # secs
    "8000",  # flags: BROADCAST
    "00000000",  # ciaddr
    "00000000",  # yiaddr
    "00000000",  # siaddr
    "00000000",  # giaddr
    "525400123456" + "00" * 10,  # chaddr, padded to 16
    ZERO_SNAME,  # sname
    ZERO_FILE,  # file
    COOKIE,  # magic cookie
    "350101",  # 53 message-type: DISCOVER
    "390205c0",  # 57 max-message-size: 1472
    "5d020000",  # 93 client-arch: 0 (BIOS x86)
    "5e03010201",  # 94 client-ndi: UNDI 2.1
    "3c20" + b"PXEClient:Arch:00000:UNDI:002001".hex(),  # 60 vendor-class
    "4d04" + b"iPXE".hex(),  # 77 user-class, raw (not RFC 3004 framed)
    "3713" + "0103060c0f111a2b3c42437779afcbd0d1d2d3",  # 55 parameter-list (19 codes)
    "af0c" + "130101" + "150101" + "170101" + "180101",  # 175 ipxe-encap: http tftp dns bzimage
    "6111" + "00" + UUID,  # 97 client-uuid: type 0 + 16 octets
    "ff",  # END
    "000000000000",  # trailing padding
)

# EDK2 (OVMF) PXE on x64, IPv4 DISCOVER.
UEFI_X64_DISCOVER = _hex(
    "01",  # op: BOOTREQUEST
    "01",  # htype: Ethernet
    "06",  # hlen
    "00",  # hops
    "9e1a0b77",  # xid
    "0000",  # secs
    "0000",  # flags: unicast ok
    "00000000",  # ciaddr
    "00000000",  # yiaddr
    "00000000",  # siaddr
    "00000000",  # giaddr
    "52540098abcd" + "00" * 10,  # chaddr
    ZERO_SNAME,  # sname
    ZERO_FILE,  # file
    COOKIE,  # magic cookie
    "350101",  # 53 message-type: DISCOVER
    "390205c0",  # 57 max-message-size: 1472
    "3723" + "0102030405060c0d0f111216171c28292a2b3233363a3b3c4243618081828384858687",  # 55
    "6111" + "00" + UUID,  # 97 client-uuid
    "5e03010300",  # 94 client-ndi: UNDI 3.0
    "5d020007",  # 93 client-arch: 7 (EFI x64)
    "3c20" + b"PXEClient:Arch:00007:UNDI:003000".hex(),  # 60 vendor-class
    "ff",  # END
)

# EDK2 HTTP boot on x64, IPv4 DISCOVER.
HTTP_BOOT_DISCOVER = _hex(
    "01",  # op: BOOTREQUEST
    "01",  # htype: Ethernet
    "06",  # hlen
    "00",  # hops
    "0c0ffee0",  # xid
    "0002",  # secs
    "0000",  # flags
    "00000000",  # ciaddr
    "00000000",  # yiaddr
    "00000000",  # siaddr
    "00000000",  # giaddr
    "5254000000aa" + "00" * 10,  # chaddr
    ZERO_SNAME,  # sname
    ZERO_FILE,  # file
    COOKIE,  # magic cookie
    "350101",  # 53 message-type: DISCOVER
    "390205c0",  # 57 max-message-size: 1472
    "3709" + "01030f1a2b3c424361",  # 55 parameter-list
    "5e03010300",  # 94 client-ndi: UNDI 3.0
    "5d020010",  # 93 client-arch: 16 (EFI x64 HTTP, RFC 4578 registry)
    "3c21" + b"HTTPClient:Arch:00016:UNDI:003000".hex(),  # 60 vendor-class (33 octets)
    "6111" + "00" + UUID,  # 97 client-uuid
    "ff",  # END
)

# The BIOS DISCOVER after a relay agent on 10.20.30.1 (RFC 3046 option 82, RFC 1542 giaddr).
RELAYED_DISCOVER = _hex(
    "01",  # op: BOOTREQUEST
    "01",  # htype: Ethernet
    "06",  # hlen
    "01",  # hops: one relay
    "11223344",  # xid
    "0008",  # secs
    "0000",  # flags
    "00000000",  # ciaddr
    "00000000",  # yiaddr
    "00000000",  # siaddr
    "0a141e01",  # giaddr: 10.20.30.1
    "525400c0ffee" + "00" * 10,  # chaddr
    ZERO_SNAME,  # sname
    ZERO_FILE,  # file
    COOKIE,  # magic cookie
    "350101",  # 53 message-type: DISCOVER
    "5d020000",  # 93 client-arch: 0
    "3c20" + b"PXEClient:Arch:00000:UNDI:002001".hex(),  # 60 vendor-class
    "3706" + "01032b3c4243",  # 55 parameter-list: 1,3,43,60,66,67
    "5212",  # 82 agent-info, 18 octets of sub-options:
    "0106" + b"ge-0/1".hex(),  # sub 1 circuit-id
    "0208" + "0019e8a1b2c30001",  # sub 2 remote-id
    "ff",  # END
)


# --------------------------------------------------------------------------------------------
# Golden DISCOVERs


def test_bios_ipxe_discover() -> None:
    p = decode(BIOS_IPXE_DISCOVER)
    assert p.op == Op.BOOTREQUEST
    assert p.htype == 1
    assert p.hops == 0
    assert p.xid == 0x5A3B9C01
    assert p.secs == 4
    assert p.flags == 0x8000
    assert p.broadcast
    assert p.ciaddr == p.yiaddr == p.siaddr == p.giaddr == IPv4Address(0)
    assert p.chaddr == bytes.fromhex("525400123456")
    assert p.mac == "52:54:00:12:34:56"
    assert p.sname == b""
    assert p.file == b""
    assert [code for code, _ in p.options] == [53, 57, 93, 94, 60, 77, 55, 175, 97]
    assert p.message_type is MessageType.DISCOVER
    assert decode_u16(p.get(Opt.MAX_MESSAGE_SIZE) or b"") == 1472
    assert decode_u16_list(p.get(Opt.CLIENT_ARCH) or b"") == (0,)
    assert p.get(Opt.CLIENT_NDI) == b"\x01\x02\x01"
    assert decode_text(p.get(Opt.VENDOR_CLASS) or b"") == "PXEClient:Arch:00000:UNDI:002001"
    assert p.get(Opt.USER_CLASS) == b"iPXE"
    assert parameter_list(p) == (
        1, 3, 6, 12, 15, 17, 26, 43, 60, 66, 67, 119, 121, 175, 203, 208, 209, 210, 211,
    )  # fmt: skip
    assert decode_suboptions(p.get(Opt.IPXE_ENCAP) or b"") == (
        (19, b"\x01"),
        (21, b"\x01"),
        (23, b"\x01"),
        (24, b"\x01"),
    )
    assert p.get(Opt.CLIENT_UUID) == b"\x00" + bytes.fromhex(UUID)
    assert p.get(Opt.ROUTER) is None
    assert Opt.CLIENT_UUID in p
    assert Opt.ROUTER not in p


def test_uefi_x64_discover() -> None:
    p = decode(UEFI_X64_DISCOVER)
    assert p.op == Op.BOOTREQUEST
    assert (p.htype, p.hops, p.xid, p.secs, p.flags) == (1, 0, 0x9E1A0B77, 0, 0)
    assert not p.broadcast
    assert p.giaddr == IPv4Address(0)
    assert p.mac == "52:54:00:98:ab:cd"
    assert (p.sname, p.file) == (b"", b"")
    assert [code for code, _ in p.options] == [53, 57, 55, 97, 94, 93, 60]
    assert p.message_type is MessageType.DISCOVER
    assert len(parameter_list(p)) == 35
    assert parameter_list(p)[:6] == (1, 2, 3, 4, 5, 6)
    assert p.get(Opt.CLIENT_NDI) == b"\x01\x03\x00"
    assert decode_u16_list(p.get(Opt.CLIENT_ARCH) or b"") == (7,)
    assert decode_text(p.get(Opt.VENDOR_CLASS) or b"") == "PXEClient:Arch:00007:UNDI:003000"


def test_http_boot_discover() -> None:
    p = decode(HTTP_BOOT_DISCOVER)
    assert (p.op, p.htype, p.hops, p.xid, p.secs, p.flags) == (1, 1, 0, 0x0C0FFEE0, 2, 0)
    assert p.mac == "52:54:00:00:00:aa"
    assert [code for code, _ in p.options] == [53, 57, 55, 94, 93, 60, 97]
    assert decode_u16_list(p.get(Opt.CLIENT_ARCH) or b"") == (16,)
    assert decode_text(p.get(Opt.VENDOR_CLASS) or b"") == "HTTPClient:Arch:00016:UNDI:003000"
    assert parameter_list(p) == (1, 3, 15, 26, 43, 60, 66, 67, 97)


def test_relayed_discover() -> None:
    p = decode(RELAYED_DISCOVER)
    assert (p.op, p.htype, p.xid, p.secs, p.flags) == (1, 1, 0x11223344, 8, 0)
    assert p.hops == 1
    assert p.giaddr == IPv4Address("10.20.30.1")
    assert p.ciaddr == p.yiaddr == p.siaddr == IPv4Address(0)
    assert p.mac == "52:54:00:c0:ff:ee"
    assert [code for code, _ in p.options] == [53, 93, 60, 55, 82]
    assert parameter_list(p) == (1, 3, 43, 60, 66, 67)
    assert decode_suboptions(p.get(Opt.AGENT_INFO) or b"") == (
        (1, b"ge-0/1"),
        (2, bytes.fromhex("0019e8a1b2c30001")),
    )


def test_describe_discover() -> None:
    lines = describe(decode(BIOS_IPXE_DISCOVER))
    assert lines == [
        "  53 message-type: DISCOVER",
        "  57 max-message-size: 1472",
        "  93 client-arch: 0",
        "  94 client-ndi: 01:02:01",
        "  60 vendor-class: PXEClient:Arch:00000:UNDI:002001",
        "  77 user-class: iPXE",
        "  55 parameter-list: 1,3,6,12,15,17,26,43,60,66,67,119,121,175,203,208,209,210,211",
        " 175 ipxe-encap: 19=01 21=01 23=01 24=01",
        "  97 client-uuid: 00:" + ":".join(UUID[i : i + 2] for i in range(0, 32, 2)),
    ]
    relayed = describe(decode(RELAYED_DISCOVER))
    assert relayed[-1] == "  82 agent-info: 1=67:65:2d:30:2f:31 2=00:19:e8:a1:b2:c3:00:01"


def test_describe_values() -> None:
    p = DhcpPacket(
        op=2,
        xid=1,
        chaddr=b"",
        options=(
            (53, b"\x63"),  # unknown message type
            (1, ip_option("255.255.255.0")),
            (3, ips_option(["10.0.0.1", "10.0.0.2"])),
            (51, u32_option(3600)),
            (58, u32_option(0xFFFFFFFF)),
            (2, (-3600).to_bytes(4, "big", signed=True)),
            (54, b"\x01\x02"),  # wrong length: falls back to hex
            (12, b"evil\nline"),  # control characters never reach the log as text
            (15, b"\xff\xfe"),  # not UTF-8
            (67, b"pxelinux.0\x00"),
            (240, b"\x01\x02\xab"),
            (80, b""),
        ),
    )
    assert describe(p) == [
        "  53 message-type: 99",
        "   1 subnet-mask: 255.255.255.0",
        "   3 router: 10.0.0.1,10.0.0.2",
        "  51 lease-time: 3600s",
        "  58 renewal-time: infinite",
        "   2 time-offset: -3600s",
        "  54 server-id: 01:02",
        "  12 host-name: 65:76:69:6c:0a:6c:69:6e:65",
        "  15 domain-name: ff:fe",
        "  67 bootfile: pxelinux.0",
        " 240 option-240: 01:02:ab",
        "  80 rapid-commit: ",
    ]


def test_option_names() -> None:
    assert option_name(1) == "subnet-mask"
    assert option_name(Opt.VENDOR_CLASS) == "vendor-class"
    assert option_name(53) == "message-type"
    assert option_name(55) == "parameter-list"
    assert option_name(199) == "option-199"


# --------------------------------------------------------------------------------------------
# Encoding an OFFER


MAC = bytes.fromhex("525400123456")


def _offer() -> DhcpPacket:
    return DhcpPacket(
        op=Op.BOOTREPLY,
        xid=0x5A3B9C01,
        chaddr=MAC,
        flags=0x8000,
        yiaddr=IPv4Address("192.168.56.100"),
        siaddr=IPv4Address("192.168.56.1"),
        file=b"undionly.kpxe",
        options=(
            (Opt.SERVER_ID, ip_option("192.168.56.1")),
            (Opt.LEASE_TIME, u32_option(3600)),
            (Opt.MESSAGE_TYPE, u8_option(MessageType.OFFER)),
            (Opt.SUBNET_MASK, ip_option("255.255.255.0")),
            (Opt.VENDOR_CLASS, b"PXEClient"),
        ),
    )


def test_offer_bytes() -> None:
    wire = encode(_offer())
    assert len(wire) >= BOOTP_MIN_SIZE
    assert wire[0] == 2  # op
    assert wire[1] == 1  # htype
    assert wire[2] == 6  # hlen
    assert wire[3] == 0  # hops
    assert wire[4:8] == bytes.fromhex("5a3b9c01")  # xid
    assert wire[8:10] == b"\x00\x00"  # secs
    assert wire[10:12] == b"\x80\x00"  # flags
    assert wire[12:16] == bytes(4)  # ciaddr
    assert wire[16:20] == bytes([192, 168, 56, 100])  # yiaddr
    assert wire[20:24] == bytes([192, 168, 56, 1])  # siaddr
    assert wire[24:28] == bytes(4)  # giaddr
    assert wire[28:44] == MAC + bytes(10)  # chaddr
    assert wire[44:108] == bytes(64)  # sname
    assert wire[108:236] == b"undionly.kpxe" + bytes(128 - 13)  # file
    assert wire[236:240] == MAGIC_COOKIE
    assert wire[240:243] == b"\x35\x01\x02"  # option 53 first
    assert wire[243:249] == b"\x36\x04" + bytes([192, 168, 56, 1])  # then in the given order
    assert wire[249:255] == b"\x33\x04" + (3600).to_bytes(4, "big")
    assert wire[255:261] == b"\x01\x04\xff\xff\xff\x00"
    assert wire[261:272] == b"\x3c\x09PXEClient"
    assert wire[272] == Opt.END
    assert wire[273:] == bytes(len(wire) - 273)
    assert len(wire) == BOOTP_MIN_SIZE


def test_offer_round_trip() -> None:
    offer = _offer()
    back = decode(encode(offer))
    assert back.message_type is MessageType.OFFER
    assert back.options[0] == (53, b"\x02")
    assert back == dataclasses.replace(offer, options=(offer.options[2], *offer.options[:2],
                                                       *offer.options[3:]))  # fmt: skip


def test_with_options() -> None:
    offer = _offer().with_options([(Opt.LEASE_TIME, u32_option(60)), (Opt.TFTP_SERVER, b"x")])
    assert offer.get(Opt.LEASE_TIME) == u32_option(60)
    assert [code for code, _ in offer.options] == [54, 51, 53, 1, 60, 66]


# --------------------------------------------------------------------------------------------
# RFC 3396 long options and option 52 overload


def _instances(wire: bytes) -> list[tuple[int, bytes]]:
    """The raw option instances of the options field, without joining."""
    out = []
    i = 240
    while wire[i] != Opt.END:
        if wire[i] == Opt.PAD:
            i += 1
            continue
        out.append((wire[i], wire[i + 2 : i + 2 + wire[i + 1]]))
        i += 2 + wire[i + 1]
    return out


def test_long_option_split_and_joined() -> None:
    value = bytes(range(256)) * 2 + bytes(88)
    assert len(value) == 600
    packet = DhcpPacket(op=2, xid=7, chaddr=MAC, options=((53, b"\x05"), (43, value)))
    wire = encode(packet, max_size=1500)
    parts = [v for code, v in _instances(wire) if code == 43]
    assert [len(v) for v in parts] == [255, 255, 90]
    assert b"".join(parts) == value
    assert decode(wire) == packet


def test_repeated_instances_joined_in_order() -> None:
    wire = bytearray(encode(DhcpPacket(op=1, xid=1, chaddr=MAC)))
    wire[240:] = _hex("0c02686f", "0304c0a80001", "0c027374", "0000", "ff").ljust(60, b"\0")
    p = decode(bytes(wire))
    assert p.options == ((12, b"host"), (3, bytes([192, 168, 0, 1])))


def _many_options() -> tuple[tuple[int, bytes], ...]:
    return (
        (53, b"\x05"),
        (1, ip_option("255.255.255.0")),
        (3, ip_option("10.0.0.1")),
        (6, ips_option(["10.0.0.2", "10.0.0.3"])),
        (15, b"lab.example.internal"),
        (17, b"/srv/nfs/root/" + b"x" * 60),
        (43, pxe_vendor_options([(6, b"\x08"), (10, b"\x00" + b"B" * 40)])),
        (60, b"PXEClient"),
        (66, b"10.0.0.1"),
        (67, b"http://10.0.0.1:8080/boot/ipxe/" + b"y" * 90),
        (209, b"pxelinux.cfg/01-52-54-00-12-34-56"),
        (210, b"http://10.0.0.1:8080/tftp/"),
        (119, b"z" * 80),
    )


def test_overload_spills_into_file_and_sname() -> None:
    packet = DhcpPacket(op=2, xid=9, chaddr=MAC, options=_many_options())
    assert sum(2 + len(v) for _, v in packet.options) > 576 - 28 - 240
    wire = encode(packet, max_size=576)
    assert len(wire) <= 576 - 28
    head = _instances(wire)
    assert head[0] == (53, b"\x05")
    assert head[1] == (52, b"\x03")  # both file and sname carry options
    assert decode(wire) == packet


def test_overload_moves_short_options_whole() -> None:
    # An option that fits whole in the next field goes there rather than being cut, so a
    # client without RFC 3396 support still reads it intact.
    options = _many_options()[:-1]
    packet = DhcpPacket(op=2, xid=9, chaddr=MAC, options=options)
    wire = encode(packet, max_size=576)
    assert [code for code, _ in _instances(wire)][-1] == 66
    bootfile = dict(options)[67]
    assert wire[108 : 110 + len(bootfile)] == bytes([67, len(bootfile)]) + bootfile
    assert decode(wire) == packet


def test_overload_uses_sname_only_when_file_is_set() -> None:
    options = _many_options()[:10]
    packet = DhcpPacket(op=2, xid=9, chaddr=MAC, file=b"ipxe.efi", options=options)
    wire = encode(packet, max_size=576)
    assert (52, b"\x02") in _instances(wire)
    assert wire[108:116] == b"ipxe.efi"
    assert decode(wire) == packet


def test_overload_too_big_is_our_bug() -> None:
    packet = DhcpPacket(op=2, xid=9, chaddr=MAC, options=((53, b"\x02"), (43, bytes(600))))
    with pytest.raises(ValueError, match="do not fit"):
        encode(packet, max_size=576)
    # The same packet fits once the client allows larger messages (RFC 2132 §9.10).
    assert decode(encode(packet, max_size=1500)) == packet


def test_max_size_below_576_is_576() -> None:
    packet = DhcpPacket(op=2, xid=9, chaddr=MAC, options=_many_options())
    assert encode(packet, max_size=300) == encode(packet, max_size=576)


def test_overload_decode_order_options_file_sname() -> None:
    # RFC 3396 §5: the aggregate buffer is the options field, then file, then sname.
    wire = bytearray(encode(DhcpPacket(op=1, xid=1, chaddr=MAC)))
    wire[44:108] = _hex("0c0163", "ff").ljust(64, b"\0")  # sname: host-name "c"
    wire[108:236] = _hex("0c0162", "0f03616263").ljust(128, b"\0")  # file, no END
    wire[240:] = _hex("350101", "340103", "0c0161", "ff").ljust(60, b"\0")
    p = decode(bytes(wire))
    assert p.options == ((53, b"\x01"), (12, b"abc"), (15, b"abc"))
    assert (p.sname, p.file) == (b"", b"")


def test_overload_file_only_keeps_sname() -> None:
    wire = bytearray(encode(DhcpPacket(op=1, xid=1, chaddr=MAC, sname=b"boothost")))
    wire[108:236] = _hex("0c0162", "ff").ljust(128, b"\0")
    wire[240:] = _hex("340101", "ff").ljust(60, b"\0")
    p = decode(bytes(wire))
    assert p.sname == b"boothost"
    assert p.file == b""
    assert p.options == ((12, b"b"),)


# --------------------------------------------------------------------------------------------
# Peer errors


def _discover() -> bytearray:
    return bytearray(encode(DhcpPacket(op=1, xid=1, chaddr=MAC, options=((53, b"\x01"),))))


def test_missing_end_tolerated_at_data_end() -> None:
    wire = bytes(_discover()[:240]) + _hex("350101", "0c0461626364")
    assert decode(wire).options == ((53, b"\x01"), (12, b"abcd"))


def test_sname_and_file_stop_at_nul() -> None:
    wire = _discover()
    wire[44:50] = b"srv\0zz"
    wire[108:116] = b"a.efi\0yy"
    p = decode(bytes(wire))
    assert (p.sname, p.file) == (b"srv", b"a.efi")


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        (bytes(_discover()[:240]) + _hex("350101", "0c0561"), "truncated"),
        (bytes(_discover()[:240]) + _hex("350101", "0c"), "no length"),
        (bytes(_discover()[:240]) + _hex("0cff") + bytes(58), "truncated"),
        (bytes(_discover()[:239]), "runt"),
        (b"", "runt"),
        (bytes(_discover()[:236]) + b"\x63\x82\x53\x64" + bytes(60), "cookie"),
        (b"\x03" + bytes(_discover()[1:]), "op"),
        (bytes(_discover()[:2]) + b"\xc8" + bytes(_discover()[3:]), "hlen"),
        (bytes(_discover()[:240]) + _hex("340104", "ff") + bytes(56), "overload"),
        (bytes(_discover()[:240]) + _hex("3400", "ff") + bytes(56), "overload"),
    ],
    ids=[
        "truncated",
        "no-length",
        "absurd-length",
        "runt",
        "empty",
        "bad-cookie",
        "op-3",
        "hlen-200",
        "overload-4",
        "overload-empty",
    ],
)
def test_decode_errors(wire: bytes, message: str) -> None:
    with pytest.raises(DhcpDecodeError, match=message):
        decode(wire)


def test_truncated_option_in_overloaded_file() -> None:
    wire = _discover()
    wire[108:236] = _hex("0c7f").ljust(128, b"\0")
    wire[240:] = _hex("340101", "ff").ljust(60, b"\0")
    with pytest.raises(DhcpDecodeError, match="file"):
        decode(bytes(wire))


# --------------------------------------------------------------------------------------------
# Our errors


@pytest.mark.parametrize(
    "packet",
    [
        DhcpPacket(op=3, xid=1, chaddr=MAC),
        DhcpPacket(op=1, xid=1 << 32, chaddr=MAC),
        DhcpPacket(op=1, xid=1, chaddr=bytes(17)),
        DhcpPacket(op=1, xid=1, chaddr=MAC, sname=b"a" * 65),
        DhcpPacket(op=1, xid=1, chaddr=MAC, file=b"a\0b"),
        DhcpPacket(op=1, xid=1, chaddr=MAC, options=((52, b"\x01"),)),
        DhcpPacket(op=1, xid=1, chaddr=MAC, options=((0, b""),)),
        DhcpPacket(op=1, xid=1, chaddr=MAC, options=((255, b""),)),
        DhcpPacket(op=1, xid=1, chaddr=MAC, options=((12, b"a"), (12, b"b"))),
    ],
)
def test_encode_rejects_unrepresentable(packet: DhcpPacket) -> None:
    with pytest.raises(ValueError):
        encode(packet)


# --------------------------------------------------------------------------------------------
# Typed values and sub-options


def test_typed_values() -> None:
    assert ip_option("10.1.2.3") == b"\x0a\x01\x02\x03"
    assert ip_option(IPv4Address("10.1.2.3")) == b"\x0a\x01\x02\x03"
    assert ips_option(["1.2.3.4", IPv4Address("5.6.7.8")]) == bytes(range(1, 9))
    assert u8_option(7) == b"\x07"
    assert u16_option(1472) == b"\x05\xc0"
    assert u32_option(86400) == b"\x00\x01\x51\x80"
    assert decode_ip(b"\x0a\x01\x02\x03") == IPv4Address("10.1.2.3")
    assert decode_ips(bytes(range(1, 9))) == (IPv4Address("1.2.3.4"), IPv4Address("5.6.7.8"))
    assert decode_u8(b"\x07") == 7
    assert decode_u16(b"\x05\xc0") == 1472
    assert decode_u32(b"\x00\x01\x51\x80") == 86400
    assert decode_u16_list(b"\x00\x07\x00\x10") == (7, 16)
    assert decode_u16_list(b"") == ()
    assert decode_text(b"pxelinux.0\0\0") == "pxelinux.0"
    assert decode_text(b"\xffok") == "\ufffdok"
    assert parameter_list(DhcpPacket(op=1, xid=1, chaddr=MAC)) == ()


@pytest.mark.parametrize(
    ("func", "value"),
    [
        (decode_ip, b"\x01\x02\x03"),
        (decode_ips, b""),
        (decode_ips, b"\x01\x02\x03\x04\x05"),
        (decode_u8, b""),
        (decode_u16, b"\x01"),
        (decode_u32, b"\x01\x02\x03\x04\x05"),
        (decode_u16_list, b"\x00\x07\x00"),
    ],
)
def test_typed_values_bad_length(func: object, value: bytes) -> None:
    assert callable(func)
    with pytest.raises(DhcpDecodeError):
        func(value)


@pytest.mark.parametrize(
    ("func", "n"), [(u8_option, 256), (u16_option, 1 << 16), (u32_option, 1 << 32), (u8_option, -1)]
)
def test_typed_values_out_of_range(func: object, n: int) -> None:
    assert callable(func)
    with pytest.raises(ValueError):
        func(n)


def test_pxe_vendor_options() -> None:
    # PXE 2.1: 6 = PXE_DISCOVERY_CONTROL, 10 = PXE_MENU_PROMPT, closed by END.
    value = pxe_vendor_options([(6, b"\x08"), (10, b"\x00Boot")])
    assert value == _hex("060108", "0a05", b"\x00Boot".hex(), "ff")
    assert decode_suboptions(value) == ((6, b"\x08"), (10, b"\x00Boot"))
    assert encode_suboptions([(1, b"ab")]) == b"\x01\x02ab"
    with pytest.raises(DhcpDecodeError):
        decode_suboptions(b"\x06\x05\x08")
    with pytest.raises(ValueError):
        pxe_vendor_options([(6, bytes(256))])
    with pytest.raises(ValueError):
        pxe_vendor_options([(255, b"")])


def test_message_type_tolerates_unknown_and_malformed() -> None:
    assert DhcpPacket(op=1, xid=1, chaddr=MAC, options=((53, b"\x10"),)).message_type == 16
    assert DhcpPacket(op=1, xid=1, chaddr=MAC, options=((53, b"\x01\x01"),)).message_type is None
    assert DhcpPacket(op=1, xid=1, chaddr=MAC).message_type is None


# --------------------------------------------------------------------------------------------
# Properties


_CODES = st.integers(1, 254).filter(lambda code: code != Opt.OVERLOAD)
_NO_NUL = st.binary().map(lambda raw: raw.replace(b"\0", b""))
_ADDRESSES = st.integers(0, 0xFFFFFFFF).map(IPv4Address)


def _message_type_first(options: dict[int, bytes]) -> tuple[tuple[int, bytes], ...]:
    # encode() puts option 53 first, so a packet built that way survives the round trip as is.
    items = sorted(options.items(), key=lambda item: item[0] != Opt.MESSAGE_TYPE)
    return tuple(items)


@st.composite
def packets(
    draw: st.DrawFn,
    max_value: int = 600,
    min_options: int = 0,
    min_value: int = 0,
    short_fields: bool = False,
) -> DhcpPacket:
    # short_fields leaves sname and file mostly empty, so option 52 overload gets exercised.
    field = st.just(b"") | _NO_NUL.map(lambda raw: raw[:4]) if short_fields else _NO_NUL
    return DhcpPacket(
        op=draw(st.sampled_from([1, 2])),
        xid=draw(st.integers(0, 0xFFFFFFFF)),
        chaddr=draw(st.binary(max_size=16)),
        htype=draw(st.integers(0, 255)),
        hops=draw(st.integers(0, 255)),
        secs=draw(st.integers(0, 0xFFFF)),
        flags=draw(st.integers(0, 0xFFFF)),
        ciaddr=draw(_ADDRESSES),
        yiaddr=draw(_ADDRESSES),
        siaddr=draw(_ADDRESSES),
        giaddr=draw(_ADDRESSES),
        sname=draw(field.map(lambda raw: raw[:64])),
        file=draw(field.map(lambda raw: raw[:128])),
        options=_message_type_first(
            draw(
                st.dictionaries(
                    _CODES,
                    st.binary(min_size=min_value, max_size=max_value),
                    min_size=min_options,
                    max_size=12,
                )
            )
        ),
    )


def _canonical(packet: DhcpPacket) -> DhcpPacket:
    return dataclasses.replace(packet, options=_message_type_first(dict(packet.options)))


@given(packets())
def test_round_trip(packet: DhcpPacket) -> None:
    assert decode(encode(packet, max_size=65535)) == packet


@given(packets(max_value=120, min_options=3, min_value=20, short_fields=True))
def test_round_trip_at_576_or_our_error(packet: DhcpPacket) -> None:
    try:
        wire = encode(packet)
    except ValueError:
        return
    assert BOOTP_MIN_SIZE <= len(wire) <= 576 - 28
    again = decode(wire)
    assert dataclasses.replace(again, options=()) == dataclasses.replace(packet, options=())
    # In order, but for a last option 82: it stays in the options field (RFC 3046 §2.1), so it
    # comes back before the options that spilled into file or sname.
    assert sorted(again.options) == sorted(packet.options)
    others = [option for option in again.options if option[0] != Opt.AGENT_INFO]
    assert others == [option for option in packet.options if option[0] != Opt.AGENT_INFO]


def _check_junk(data: bytes) -> None:
    try:
        packet = decode(data)
    except DhcpDecodeError:
        return
    describe(packet)
    assert decode(encode(packet, max_size=65535)) == _canonical(packet)


@given(st.binary(max_size=700))
def test_junk_raises_only_decode_error(data: bytes) -> None:
    _check_junk(data)


@given(
    st.sampled_from([1, 2]),
    st.integers(0, 16),
    st.binary(min_size=232, max_size=232),
    st.binary(max_size=400),
)
def test_junk_behind_a_valid_header(op: int, hlen: int, fixed: bytes, tail: bytes) -> None:
    _check_junk(bytes([op, 1, hlen, 0]) + fixed + MAGIC_COOKIE + tail)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(
        [
            BIOS_IPXE_DISCOVER,
            UEFI_X64_DISCOVER,
            HTTP_BOOT_DISCOVER,
            RELAYED_DISCOVER,
            encode(DhcpPacket(op=2, xid=9, chaddr=MAC, options=_many_options())),  # overloaded
        ]
    ),
    st.lists(st.tuples(st.integers(0, 1000), st.integers(0, 255)), min_size=1, max_size=8),
    st.integers(0, 1000),
)
def test_mutated_goldens(golden: bytes, edits: list[tuple[int, int]], cut: int) -> None:
    wire = bytearray(golden)
    for where, octet in edits:
        wire[where % len(wire)] = octet
    _check_junk(bytes(wire))
    _check_junk(bytes(wire[: len(wire) - cut % 80]))


@given(packets(), st.data())
def test_mutated_encodings(packet: DhcpPacket, data: st.DataObject) -> None:
    wire = bytearray(encode(packet, max_size=65535))
    # Aim most edits at the option area and the overloadable fields, where parsing happens.
    for _ in range(data.draw(st.integers(1, 6))):
        where = data.draw(st.integers(44, len(wire) - 1))
        wire[where] = data.draw(st.integers(0, 255))
    _check_junk(bytes(wire))
    _check_junk(bytes(wire[: data.draw(st.integers(0, len(wire)))]))


@pytest.mark.parametrize(
    ("name", "value", "wire"),
    [
        ("42", "10.0.0.1, 10.0.0.2", bytes([10, 0, 0, 1, 10, 0, 0, 2])),
        ("ntp-servers", ["10.0.0.1"], bytes([10, 0, 0, 1])),
        ("mtu", 1400, (1400).to_bytes(2, "big")),
        ("interface-mtu", "1400", (1400).to_bytes(2, "big")),
        ("root-path", "10.0.0.5:/srv/nfsroot", b"10.0.0.5:/srv/nfsroot"),
        ("ip-forwarding", False, b"\x00"),
        ("lease-time", 7200, (7200).to_bytes(4, "big")),
        ("vendor-encapsulated-options", "hex:01:04:de:ad:be:ef", bytes.fromhex("0104deadbeef")),
        ("224", "hex:", b""),
        ("subnet-mask", "hex:ff:ff:ff:00", bytes([255, 255, 255, 0])),
    ],
)
def test_configured_option_values(name: str, value: object, wire: bytes) -> None:
    assert encode_option_value(option_code(name), value) == wire


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("42", "10.0.0.300", "option 42 (ntp-servers) wants IPv4 addresses"),
        ("26", 70000, "option 26 (interface-mtu) wants a number 0-65535"),
        ("26", True, "wants a number"),
        ("224", "plain text", "option 224 (option-224) wants hex octets"),
        ("43", "hex:zz", "is not hex octets"),
        ("15", "", "needs a value"),
    ],
)
def test_configured_option_errors(name: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        encode_option_value(option_code(name), value)


def test_option_names_and_codes() -> None:
    assert option_code("routers") == option_code("router") == 3
    assert option_code(" 150 ") == 150
    with pytest.raises(ValueError, match="outside 1-254"):
        option_code("255")
    with pytest.raises(ValueError, match="unknown option name 'nope'"):
        option_code("nope")


def test_relay_agent_information_stays_last_in_the_options_field_under_overload() -> None:
    agent = bytes([1, 4]) + b"eth0"
    packet = DhcpPacket(
        op=Op.BOOTREPLY,
        xid=1,
        chaddr=bytes(6),
        options=(
            (Opt.MESSAGE_TYPE, bytes([MessageType.ACK])),
            (119, b"\x03lab\x00" * 70),  # 350 octets: the options field alone cannot hold it
            (Opt.AGENT_INFO, agent),
        ),
    )
    wire = encode(packet, max_size=576)
    codes, at = [], HEADER_SIZE + len(MAGIC_COOKIE)
    while wire[at] != Opt.END:  # the options field itself, as a relay agent reads it
        codes.append(wire[at])
        at += 2 + wire[at + 1]
    assert Opt.OVERLOAD in codes  # the rest went to file/sname
    assert codes[-1] == Opt.AGENT_INFO  # RFC 3046 §2.1: last, and never spilled
    assert decode(wire).get(Opt.AGENT_INFO) == agent
    assert decode(wire).get(119) == b"\x03lab\x00" * 70
