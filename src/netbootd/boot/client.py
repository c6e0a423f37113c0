"""Who is asking: one typed description of a DHCP client, read from its request.

Pure: takes a decoded packet, returns a frozen :class:`ClientInfo`. It never raises on odd
option contents (a client that sends a broken option 93 is still a client); what it could not
read it leaves as ``None``.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, fields
from enum import IntEnum, StrEnum
from types import MappingProxyType
from typing import Final

from netbootd.proto.dhcp.codec import (
    DhcpDecodeError,
    DhcpPacket,
    Opt,
    decode_suboptions,
    decode_text,
)


class Arch(IntEnum):
    """IANA "Processor Architecture Types" (RFC 4578 §2.1 and the registry that followed it)."""

    BIOS = 0
    NEC_PC98 = 1
    EFI_ITANIUM = 2
    DEC_ALPHA = 3
    ARC_X86 = 4
    INTEL_LEAN = 5
    EFI_IA32 = 6
    EFI_X64 = 7
    EFI_XSCALE = 8
    EFI_BC = 9  # EDK2 and most firmware really mean x64 here
    EFI_ARM32 = 10
    EFI_ARM64 = 11
    POWERPC_OPEN_FIRMWARE = 12
    POWERPC_EPAPR = 13
    POWER_OPAL = 14
    EFI_X86_HTTP = 15
    EFI_X64_HTTP = 16
    EFI_BC_HTTP = 17
    EFI_ARM32_HTTP = 18
    EFI_ARM64_HTTP = 19
    BIOS_HTTP = 20
    EFI_ARM32_UBOOT = 21
    EFI_ARM64_UBOOT = 22
    ARM_UBOOT_32_HTTP = 23
    ARM_UBOOT_64_HTTP = 24
    EFI_RISCV32 = 25
    EFI_RISCV32_HTTP = 26
    EFI_RISCV64 = 27
    EFI_RISCV64_HTTP = 28
    EFI_RISCV128 = 29
    EFI_RISCV128_HTTP = 30
    S390_BASIC = 31
    S390_EXTENDED = 32
    EFI_MIPS32 = 33
    EFI_MIPS64 = 34
    EFI_SUNWAY32 = 35
    EFI_SUNWAY64 = 36
    EFI_LOONGARCH32 = 37
    EFI_LOONGARCH32_HTTP = 38
    EFI_LOONGARCH64 = 39
    EFI_LOONGARCH64_HTTP = 40
    ARM_RPIBOOT = 41


def is_http_arch(code: int) -> bool:
    """Whether an architecture type is an HTTP Boot one, which takes nothing but a URL."""
    try:
        return "HTTP" in Arch(code).name
    except ValueError:
        return False


class BootClass(StrEnum):
    """Named classes of client that ``--boot CLASS=PATH`` can address.

    Any architecture type of the registry can also be named exactly, as ``arch-N``.
    """

    BIOS = "bios"  # legacy PXE ROM (architecture 0)
    UEFI = "uefi"  # UEFI x64 PXE (architectures 7 and 9)
    UEFI_IA32 = "uefi-ia32"  # 6
    UEFI_ARM32 = "uefi-arm32"  # 10
    UEFI_ARM64 = "uefi-arm64"  # 11
    UEFI_RISCV64 = "uefi-riscv64"  # 27
    UEFI_LOONGARCH64 = "uefi-loongarch64"  # 39
    UEFI_HTTP = "uefi-http"  # UEFI HTTP Boot, x64 (16, and 17 as 9 is to 7)
    UEFI_HTTP_IA32 = "uefi-http-ia32"  # 15
    UEFI_HTTP_ARM32 = "uefi-http-arm32"  # 18
    UEFI_HTTP_ARM64 = "uefi-http-arm64"  # 19
    UEFI_HTTP_RISCV64 = "uefi-http-riscv64"  # 28
    UEFI_HTTP_LOONGARCH64 = "uefi-http-loongarch64"  # 40
    IPXE = "ipxe"  # any client that says it is iPXE (user class 77 or option 175)

    @property
    def needs_http(self) -> bool:
        """Whether this class can fetch its boot file only over HTTP.

        iPXE also speaks TFTP; UEFI HTTP Boot firmware takes nothing but a URL.
        """
        return self.value.startswith("uefi-http")

    @property
    def over_http(self) -> bool:
        """Whether the boot file of this class is handed out as an http:// URL."""
        return self.needs_http or self is BootClass.IPXE


# The firmware class of each architecture type that has one.
ARCH_CLASS: Mapping[int, BootClass] = MappingProxyType(
    {
        Arch.BIOS: BootClass.BIOS,
        Arch.EFI_IA32: BootClass.UEFI_IA32,
        Arch.EFI_X64: BootClass.UEFI,
        Arch.EFI_BC: BootClass.UEFI,
        Arch.EFI_ARM32: BootClass.UEFI_ARM32,
        Arch.EFI_ARM64: BootClass.UEFI_ARM64,
        Arch.EFI_RISCV64: BootClass.UEFI_RISCV64,
        Arch.EFI_LOONGARCH64: BootClass.UEFI_LOONGARCH64,
        Arch.EFI_X86_HTTP: BootClass.UEFI_HTTP_IA32,
        Arch.EFI_X64_HTTP: BootClass.UEFI_HTTP,
        Arch.EFI_BC_HTTP: BootClass.UEFI_HTTP,
        Arch.EFI_ARM32_HTTP: BootClass.UEFI_HTTP_ARM32,
        Arch.EFI_ARM64_HTTP: BootClass.UEFI_HTTP_ARM64,
        Arch.EFI_RISCV64_HTTP: BootClass.UEFI_HTTP_RISCV64,
        Arch.EFI_LOONGARCH64_HTTP: BootClass.UEFI_HTTP_LOONGARCH64,
    }
)

# What --boot can name: a class, or an exact architecture type (an int, written arch-N).
BootKey = BootClass | int

_ARCH_KEY = re.compile(r"^arch-(\d{1,5})$")


def parse_boot_key(text: str) -> BootKey:
    """``bios``, ``uefi-http``, ... or ``arch-N``; ValueError names the choices."""
    name = text.strip()
    match = _ARCH_KEY.match(name)
    if match:
        code = int(match.group(1))
        if code > 0xFFFF:
            raise ValueError(f"architecture type {code} does not fit option 93 (0-65535)")
        return code
    try:
        return BootClass(name)
    except ValueError:
        choices = ", ".join(c.value for c in BootClass)
        raise ValueError(
            f"unknown client class {name!r} (one of: {choices}, or arch-N for an exact "
            "option 93 architecture type)"
        ) from None


def boot_key_name(key: BootKey) -> str:
    return key.value if isinstance(key, BootClass) else f"arch-{key}"


def boot_key_needs_http(key: BootKey) -> bool:
    return key.needs_http if isinstance(key, BootClass) else is_http_arch(key)


def arch_name(code: int | None) -> str:
    if code is None:
        return "unknown"
    try:
        return Arch(code).name.lower().replace("_", "-")
    except ValueError:
        return f"arch-{code}"


_VENDOR_ARCH = re.compile(r"^(PXEClient|HTTPClient):Arch:(\d{5})")

# iPXE's own encapsulated options (option 175); any of them marks the client as iPXE.
_IPXE_USER_CLASS = "iPXE"


@dataclass(unsafe_hash=True, slots=True)
class ClientInfo:
    """What netbootd knows about a client from one DHCP request.

    A value, as :class:`DhcpPacket` is (final fields, compared and hashed by them,
    ``__init__`` written out to be compiled). DHCP workers pass it to each other pickled.
    """

    mac: Final[str]
    arch: Final[int | None]  # option 93 (first entry), else the vendor-class Arch field
    vendor_class: Final[str]  # option 60 as text, "" when absent
    user_classes: Final[tuple[str, ...]]  # option 77, RFC 3004 or iPXE's raw form
    uuid: Final[str | None]  # option 97, canonical text form
    is_pxe: Final[bool]  # vendor class PXEClient...
    is_http_boot: Final[bool]  # vendor class HTTPClient... (UEFI HTTP Boot)
    is_ipxe: Final[bool]  # user class "iPXE" or option 175 present
    ipxe_features: Final[tuple[int, ...]]  # option 175 sub-option codes
    ndi: Final[str | None]  # option 94, the network interface, e.g. "UNDI 2.1"

    def __init__(  # noqa: PLR0917 (a dataclass's signature: every field, in order)
        self,
        mac: str,
        arch: int | None,
        vendor_class: str,
        user_classes: tuple[str, ...],
        uuid: str | None,
        is_pxe: bool,
        is_http_boot: bool,
        is_ipxe: bool,
        ipxe_features: tuple[int, ...],
        ndi: str | None = None,
    ) -> None:
        self.mac = mac
        self.arch = arch
        self.vendor_class = vendor_class
        self.user_classes = user_classes
        self.uuid = uuid
        self.is_pxe = is_pxe
        self.is_http_boot = is_http_boot
        self.is_ipxe = is_ipxe
        self.ipxe_features = ipxe_features
        self.ndi = ndi

    def __reduce__(self) -> tuple[type[ClientInfo], tuple[object, ...]]:
        # Pickle's default rebuild (a bare __new__, then the fields) fails on the compiled
        # class, whose constructor takes the fields: hand them to it.
        return (ClientInfo, tuple(getattr(self, each.name) for each in fields(self)))

    @property
    def arch_name(self) -> str:
        return arch_name(self.arch)

    @property
    def wants_boot(self) -> bool:
        """Whether the client asked to network-boot at all."""
        return self.is_pxe or self.is_http_boot or self.is_ipxe


def _user_classes(raw: bytes) -> tuple[str, ...]:
    # RFC 3004 says option 77 is a list of length-prefixed classes; iPXE sends the bare text
    # "iPXE". Read it as RFC 3004 only when the lengths tile the value exactly.
    classes: list[str] = []
    pos = 0
    while pos < len(raw):
        length = raw[pos]
        if length == 0 or pos + 1 + length > len(raw):
            return (decode_text(raw),)
        classes.append(decode_text(raw[pos + 1 : pos + 1 + length]))
        pos += 1 + length
    return tuple(classes)


def _uuid(raw: bytes | None) -> str | None:
    # RFC 4578 §2.3: a type octet (0) and 16 octets of machine identifier.
    if raw is None or len(raw) != 17 or raw[0] != 0:
        return None
    return str(uuid.UUID(bytes_le=raw[1:]))


def _ndi(raw: bytes | None) -> str | None:
    # RFC 4578 §2.2: interface type (1, UNDI), then its major and minor version.
    if raw is None or len(raw) != 3:
        return None
    kind = "UNDI" if raw[0] == 1 else f"type-{raw[0]}"
    return f"{kind} {raw[1]}.{raw[2]}"


def _arch(packet: DhcpPacket, vendor_class: str) -> int | None:
    raw = packet.get(Opt.CLIENT_ARCH)
    if raw is not None and len(raw) >= 2 and len(raw) % 2 == 0:
        return int.from_bytes(raw[:2], "big")
    match = _VENDOR_ARCH.match(vendor_class)
    if match:
        return int(match.group(2))
    return None


def classify(packet: DhcpPacket) -> ClientInfo:
    """Describe the client that sent ``packet``."""
    raw_vendor = packet.get(Opt.VENDOR_CLASS)
    vendor_class = decode_text(raw_vendor) if raw_vendor is not None else ""
    raw_user = packet.get(Opt.USER_CLASS)
    user_classes = _user_classes(raw_user) if raw_user else ()
    raw_ipxe = packet.get(Opt.IPXE_ENCAP)
    features: tuple[int, ...] = ()
    if raw_ipxe is not None:
        try:
            features = tuple(code for code, _ in decode_suboptions(raw_ipxe))
        except DhcpDecodeError:
            features = ()
    return ClientInfo(
        mac=packet.mac,
        arch=_arch(packet, vendor_class),
        vendor_class=vendor_class,
        user_classes=user_classes,
        uuid=_uuid(packet.get(Opt.CLIENT_UUID)),
        is_pxe=vendor_class.startswith("PXEClient"),
        is_http_boot=vendor_class.startswith("HTTPClient"),
        is_ipxe=_IPXE_USER_CLASS in user_classes or raw_ipxe is not None,
        ipxe_features=features,
        ndi=_ndi(packet.get(Opt.CLIENT_NDI)),
    )
