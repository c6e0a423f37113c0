"""Requests shaped like real firmware's, for tests of classification, policy and the service."""

from __future__ import annotations

from ipaddress import IPv4Address

from netbootd.proto.dhcp.codec import DhcpPacket, MessageType, Op, Opt, ip_option

BIOS_PXE = "PXEClient:Arch:00000:UNDI:002001"
UEFI_PXE = "PXEClient:Arch:00007:UNDI:003000"
UEFI_HTTP = "HTTPClient:Arch:00016:UNDI:003000"
UUID_OPTION = bytes([0]) + bytes(range(16))


def request(
    mtype: MessageType | None,
    *,
    mac: str = "52:54:00:12:34:56",
    xid: int = 0x1234ABCD,
    vendor_class: str | None = None,
    arch: int | None = None,
    ipxe: bool = False,
    uuid: bool = False,
    requested: str | None = None,
    server_id: str | None = None,
    ciaddr: str = "0.0.0.0",
    giaddr: str = "0.0.0.0",
    client_id: bytes | None = None,
    extra: tuple[tuple[int, bytes], ...] = (),
) -> DhcpPacket:
    options: list[tuple[int, bytes]] = []
    if mtype is not None:
        options.append((Opt.MESSAGE_TYPE, bytes([mtype])))
    if requested is not None:
        options.append((Opt.REQUESTED_IP, ip_option(requested)))
    if server_id is not None:
        options.append((Opt.SERVER_ID, ip_option(server_id)))
    if client_id is not None:
        options.append((Opt.CLIENT_ID, client_id))
    if vendor_class is not None:
        options.append((Opt.VENDOR_CLASS, vendor_class.encode()))
    if arch is not None:
        options.append((Opt.CLIENT_ARCH, arch.to_bytes(2, "big")))
    if uuid:
        options.append((Opt.CLIENT_UUID, UUID_OPTION))
    if ipxe:
        options.append((Opt.USER_CLASS, b"iPXE"))
        options.append((Opt.IPXE_ENCAP, bytes([19, 1, 1, 21, 1, 1])))
    options.extend(extra)
    return DhcpPacket(
        op=Op.BOOTREQUEST,
        xid=xid,
        chaddr=bytes.fromhex(mac.replace(":", "")),
        ciaddr=IPv4Address(ciaddr),
        giaddr=IPv4Address(giaddr),
        options=tuple(options),
    )
