from ipaddress import IPv4Address

import pytest

from netbootd.boot.client import Arch, BootClass, classify
from netbootd.boot.policy import BootPolicy
from netbootd.proto.dhcp import MessageType, Opt
from tests.dhcp_clients import BIOS_PXE, UEFI_HTTP, UEFI_PXE, request

SERVER = IPv4Address("10.99.0.1")


def policy(**boot: str) -> BootPolicy:
    return BootPolicy(
        boot={BootClass(k.replace("_", "-")): v for k, v in boot.items()},
        server=SERVER,
        http_port=80,
    )


def test_classify_bios_ipxe_rom() -> None:
    info = classify(
        request(MessageType.DISCOVER, vendor_class=BIOS_PXE, arch=0, ipxe=True, uuid=True)
    )
    assert info.arch == Arch.BIOS
    assert info.is_pxe and info.is_ipxe and not info.is_http_boot
    assert info.user_classes == ("iPXE",)
    assert info.ipxe_features == (19, 21)
    assert info.uuid == "03020100-0504-0706-0809-0a0b0c0d0e0f"
    assert info.mac == "52:54:00:12:34:56"


def test_classify_arch_from_vendor_class_when_option_93_missing() -> None:
    assert classify(request(MessageType.DISCOVER, vendor_class=UEFI_PXE)).arch == Arch.EFI_X64
    assert classify(request(MessageType.DISCOVER, vendor_class=UEFI_HTTP)).is_http_boot


def test_classify_rfc3004_user_class_and_broken_options() -> None:
    packet = request(
        MessageType.DISCOVER,
        extra=((Opt.USER_CLASS, b"\x04iPXE\x03foo"), (Opt.CLIENT_ARCH, b"\x00")),
    )
    info = classify(packet)
    assert info.user_classes == ("iPXE", "foo")
    assert info.is_ipxe
    assert info.arch is None  # a one-byte option 93 is ignored, not fatal
    plain = classify(request(MessageType.DISCOVER))
    assert not plain.wants_boot


@pytest.mark.parametrize(
    ("vendor", "arch", "ipxe", "expected"),
    [
        (BIOS_PXE, 0, False, "undionly.kpxe"),
        (UEFI_PXE, 7, False, "snponly.efi"),
        (UEFI_PXE, 9, False, "snponly.efi"),
        (UEFI_HTTP, 16, False, "http://10.99.0.1/snponly.efi"),
        (BIOS_PXE, 0, True, "http://10.99.0.1/boot.ipxe"),
        (UEFI_PXE, 7, True, "http://10.99.0.1/boot.ipxe"),
    ],
)
def test_defaults(vendor: str, arch: int, ipxe: bool, expected: str) -> None:
    client = classify(request(MessageType.DISCOVER, vendor_class=vendor, arch=arch, ipxe=ipxe))
    assert policy().decide(client).filename == expected


def test_non_boot_client_gets_nothing() -> None:
    decision = policy().decide(classify(request(MessageType.DISCOVER)))
    assert decision.filename is None
    assert decision.reason == "not a network-boot client"


def test_unknown_architecture_gets_nothing() -> None:
    client = classify(
        request(MessageType.DISCOVER, vendor_class="PXEClient:Arch:00011:UNDI:003000", arch=11)
    )
    decision = policy().decide(client)
    assert decision.filename is None
    assert "uefi-arm64" in decision.reason


def test_ipxe_rom_with_explicit_bios_loader_gets_that_loader() -> None:
    # SeaBIOS's iPXE ROM is the BIOS PXE stack: --boot bios=pxelinux.0 is meant for it.
    client = classify(request(MessageType.DISCOVER, vendor_class=BIOS_PXE, arch=0, ipxe=True))
    decision = policy(bios="pxelinux.0").decide(client)
    assert decision.filename == "pxelinux.0"
    assert not decision.over_http


def test_ipxe_never_gets_ipxe_again() -> None:
    # An explicit iPXE binary for BIOS would loop for a client already running iPXE.
    client = classify(request(MessageType.DISCOVER, vendor_class=BIOS_PXE, arch=0, ipxe=True))
    decision = policy(bios="ipxe/undionly.kpxe").decide(client)
    assert decision.filename == "http://10.99.0.1/boot.ipxe"


def test_explicit_ipxe_script_and_port() -> None:
    client = classify(request(MessageType.DISCOVER, vendor_class=BIOS_PXE, arch=0, ipxe=True))
    p = BootPolicy(boot={BootClass.IPXE: "menus/main ipxe"}, server=SERVER, http_port=8080)
    assert p.decide(client).filename == "http://10.99.0.1:8080/menus/main%20ipxe"


def test_ipxe_script_over_tftp_when_http_is_off() -> None:
    client = classify(request(MessageType.DISCOVER, vendor_class=BIOS_PXE, arch=0, ipxe=True))
    p = BootPolicy(boot={}, server=SERVER, http_port=80, http_enabled=False)
    assert p.decide(client).filename == "boot.ipxe"


def test_uefi_http_boot_gets_nothing_when_http_is_off() -> None:
    # UEFI HTTP Boot firmware cannot fall back to TFTP the way iPXE can.
    client = classify(request(MessageType.DISCOVER, vendor_class=UEFI_HTTP, arch=16))
    p = BootPolicy(boot={}, server=SERVER, http_port=80, http_enabled=False)
    decision = p.decide(client)
    assert decision.filename is None
    assert decision.reason == "uefi-http needs HTTP, which is off"
