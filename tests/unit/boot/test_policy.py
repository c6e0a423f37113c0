import re
from ipaddress import IPv4Address

import pytest

from netbootd.boot.client import (
    Arch,
    BootClass,
    BootKey,
    boot_key_name,
    classify,
    is_http_arch,
    parse_boot_key,
)
from netbootd.boot.policy import BootPolicy
from netbootd.proto.dhcp.codec import MessageType, Opt
from tests.helpers.dhcp_clients import BIOS_PXE, UEFI_HTTP, UEFI_PXE, request

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


def test_a_client_description_survives_the_pipe_between_dhcp_workers() -> None:
    # Workers send each other ClientInfo pickled; compiled, it has no instance dict to rebuild.
    import pickle

    info = classify(
        request(MessageType.DISCOVER, vendor_class=BIOS_PXE, arch=0, ipxe=True, uuid=True)
    )
    again = pickle.loads(pickle.dumps(info))
    assert again == info and hash(again) == hash(info)
    assert (again.mac, again.ipxe_features, again.ndi) == (info.mac, (19, 21), None)


def test_classify_network_interface_from_option_94() -> None:
    undi = classify(request(MessageType.DISCOVER, extra=((Opt.CLIENT_NDI, bytes([1, 3, 16])),)))
    assert undi.ndi == "UNDI 3.16"
    odd = classify(request(MessageType.DISCOVER, extra=((Opt.CLIENT_NDI, bytes([7, 2, 1])),)))
    assert odd.ndi == "type-7 2.1"
    broken = classify(request(MessageType.DISCOVER, extra=((Opt.CLIENT_NDI, b"\x01\x02"),)))
    assert broken.ndi is None  # RFC 4578 fixes the length at 3; anything else is not read
    assert classify(request(MessageType.DISCOVER)).ndi is None


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
    assert decision.reason == "default for uefi-http: needs HTTP, which is off"


@pytest.mark.parametrize(
    ("arch", "named"),
    [
        (0, "bios"),
        (6, "uefi-ia32"),
        (7, "uefi"),
        (9, "uefi"),
        (10, "uefi-arm32"),
        (11, "uefi-arm64"),
        (15, "uefi-http-ia32"),
        (16, "uefi-http"),
        (19, "uefi-http-arm64"),
        (27, "uefi-riscv64"),
        (40, "uefi-http-loongarch64"),
    ],
)
def test_each_architecture_reaches_its_class(arch: int, named: str) -> None:
    http = is_http_arch(arch)
    vendor = f"{'HTTPClient' if http else 'PXEClient'}:Arch:{arch:05d}:UNDI:003000"
    client = classify(request(MessageType.DISCOVER, vendor_class=vendor, arch=arch))
    decision = policy(**{named: "loader.efi"}).decide(client)
    assert decision.boot_class == BootClass(named)
    assert decision.reason == f"--boot {named}"
    # HTTP Boot firmware takes nothing but a URL; PXE firmware nothing but a TFTP name.
    assert decision.filename == ("http://10.99.0.1/loader.efi" if http else "loader.efi")


def test_every_http_type_of_the_registry_is_handed_a_url() -> None:
    http_types = [code for code in Arch if "HTTP" in code.name]
    assert len(http_types) == 13
    for code in http_types:
        client = classify(
            request(MessageType.DISCOVER, vendor_class=f"HTTPClient:Arch:{code:05d}", arch=code)
        )
        decision = BootPolicy({code.value: "x.efi"}, SERVER, 80).decide(client)
        assert decision.filename == "http://10.99.0.1/x.efi", code.name


def test_exact_architecture_wins_over_its_class() -> None:
    p = BootPolicy({BootClass.UEFI: "shim.efi", 9: "bc.efi"}, SERVER, 80)
    efi_bc = classify(request(MessageType.DISCOVER, vendor_class=UEFI_PXE, arch=9))
    efi_x64 = classify(request(MessageType.DISCOVER, vendor_class=UEFI_PXE, arch=7))
    assert (p.decide(efi_bc).filename, p.decide(efi_bc).reason) == ("bc.efi", "--boot arch-9")
    assert p.decide(efi_x64).filename == "shim.efi"


def test_architecture_without_a_class_only_by_its_number() -> None:
    s390 = classify(
        request(MessageType.DISCOVER, vendor_class="PXEClient:Arch:00031:UNDI:003000", arch=31)
    )
    nothing = policy().decide(s390)
    assert nothing.filename is None
    assert nothing.reason == "nothing for architecture s390-basic (--boot arch-31=PATH)"
    assert BootPolicy({31: "s390.img"}, SERVER, 80).decide(s390).filename == "s390.img"


def test_ipxe_on_an_architecture_with_its_own_loader() -> None:
    client = classify(request(MessageType.DISCOVER, vendor_class=UEFI_PXE, arch=7, ipxe=True))
    loader = BootPolicy({7: "grubx64.efi"}, SERVER, 80).decide(client)
    assert (loader.filename, loader.reason) == ("grubx64.efi", "--boot arch-7 (client is iPXE)")
    looping = BootPolicy({7: "ipxe.efi"}, SERVER, 80).decide(client)
    assert looping.filename == "http://10.99.0.1/boot.ipxe"


@pytest.mark.parametrize(
    ("text", "key"),
    [("bios", BootClass.BIOS), (" uefi-http-arm64 ", BootClass.UEFI_HTTP_ARM64), ("arch-31", 31)],
)
def test_boot_keys(text: str, key: BootKey) -> None:
    assert parse_boot_key(text) == key
    assert boot_key_name(key) == text.strip()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("arch-70000", "does not fit option 93"),
        ("arch-x", "unknown client class 'arch-x'"),
        ("efi", "unknown client class 'efi' (one of: bios, uefi, "),
    ],
)
def test_bad_boot_keys(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_boot_key(text)
