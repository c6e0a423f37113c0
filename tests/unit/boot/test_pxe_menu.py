"""PXE boot menus: option 43 bytes, the boot-item answer, the service in both modes, config."""

from __future__ import annotations

import logging
from ipaddress import IPv4Address
from pathlib import Path
from types import MappingProxyType

import pytest

from netbootd.boot.client import BootClass, classify
from netbootd.boot.pxe_menu import PxeMenuError, PxeMenus, boot_item, build_menus
from netbootd.cli import config_from_args, make_parser
from netbootd.config import ConfigError, DhcpMode, build
from netbootd.logs.events import parse_event
from netbootd.proto.dhcp.codec import (
    DhcpDecodeError,
    MessageType,
    Opt,
    decode_suboptions,
    describe,
)
from netbootd.services.dhcp.service import DhcpService
from tests.helpers.config import from_file
from tests.helpers.dhcp_clients import BIOS_PXE, UEFI_PXE, UUID_OPTION, request
from tests.helpers.dhcp_service import SERVER, ask, make_service

LINUX = {"arch": "bios", "text": "Linux", "file": "pxelinux.0"}
DISK = {"arch": "bios", "text": "Local disk", "local": True}
PROMPT = {"text": "Press F8", "timeout": 3}

# PXE 2.1 Table 2-1, written out by hand: discovery control (unicast to the list only), one
# boot server entry (type 0x8001, one address), the menu (type, length, text per item), the
# prompt (timeout, text), END.
TWO_ITEM_MENU = b"".join(
    (
        bytes([6, 1, 0x03]),
        bytes([8, 7, 0x80, 0x01, 1, 10, 99, 0, 1]),
        bytes([9, 21, 0x80, 0x01, 5]) + b"Linux" + bytes([0x00, 0x00, 10]) + b"Local disk",
        bytes([10, 9, 3]) + b"Press F8",
        bytes([255]),
    )
)


def bios_menus(*entries: dict[str, object], prompt: object = PROMPT) -> PxeMenus:
    return build_menus(list(entries), prompt)


def item_request(item_type: int, layer: int = 0, **kwargs: object):  # type: ignore[no-untyped-def]
    value = bytes([71, 4, *item_type.to_bytes(2, "big"), *layer.to_bytes(2, "big"), 255])
    return request(
        MessageType.REQUEST,
        vendor_class=kwargs.pop("vendor_class", BIOS_PXE),
        arch=0,
        uuid=True,
        ciaddr="10.99.0.100",
        extra=((Opt.VENDOR_SPECIFIC, value),),
        **kwargs,  # type: ignore[arg-type]
    )


def with_menus(service: DhcpService, menus: PxeMenus) -> DhcpService:
    from dataclasses import replace

    service.settings = replace(service.settings, pxe_menus=menus)
    return service


def test_two_item_menu_bytes() -> None:
    menu = bios_menus(LINUX, DISK).by_key[BootClass.BIOS]
    assert menu.vendor_options(IPv4Address("10.99.0.1")) == TWO_ITEM_MENU
    assert menu.direct is None


def test_one_item_menus() -> None:
    direct = bios_menus(LINUX, prompt=None).by_key[BootClass.BIOS]
    assert direct.direct is not None and direct.direct.file == "pxelinux.0"
    # One local item: a menu after all, with a silent prompt of 0 s so that nobody waits.
    local = bios_menus(DISK, prompt=None).by_key[BootClass.BIOS]
    assert local.direct is None
    subs = dict(decode_suboptions(local.vendor_options(SERVER)))
    assert subs[10] == b"\x00"
    assert 8 not in subs  # a local boot asks no server
    assert subs[9] == b"\x00\x00\x0aLocal disk"


def test_item_with_its_own_server_and_a_remote_type() -> None:
    menus = bios_menus(
        {"arch": "bios", "text": "Tools", "file": "tools.0", "server": "10.99.0.7"},
        {"arch": "bios", "text": "WDS", "type": 1, "server": "10.99.0.8"},
    )
    subs = dict(decode_suboptions(menus.by_key[BootClass.BIOS].vendor_options(SERVER)))
    # The tools item is asked of us (we know its file); the WDS item of its own server.
    assert subs[8] == bytes([0x80, 1, 1, 10, 99, 0, 1, 0, 1, 1, 10, 99, 0, 8])


async def test_authoritative_offer_carries_the_menu_and_no_file() -> None:
    service = with_menus(make_service()[0], bios_menus(LINUX, DISK))
    offer = await ask(service, request(MessageType.DISCOVER, vendor_class=BIOS_PXE, arch=0))
    assert offer is not None
    p = offer.packet
    assert p.get(Opt.VENDOR_SPECIFIC) == TWO_ITEM_MENU
    assert p.get(Opt.VENDOR_CLASS) == b"PXEClient"
    assert p.file == b"" and Opt.BOOTFILE not in p and Opt.TFTP_SERVER not in p
    assert p.yiaddr == IPv4Address("10.99.0.100")
    # A UEFI client has no menu configured: it gets its file as before.
    uefi = await ask(service, request(MessageType.DISCOVER, vendor_class=UEFI_PXE, arch=7))
    assert uefi is not None and uefi.packet.file == b"snponly.efi"
    assert uefi.packet.get(Opt.VENDOR_SPECIFIC) == bytes([6, 1, 8, 255])


async def test_boot_item_request_gets_the_items_file(caplog: pytest.LogCaptureFixture) -> None:
    service = with_menus(make_service()[0], bios_menus(LINUX, DISK))
    caplog.set_level(logging.INFO, logger="netbootd.dhcp")
    ack = await ask(service, item_request(0x8001, layer=0), port=4011, source=("10.99.0.100", 68))
    assert ack is not None
    assert (ack.address, ack.port) == (IPv4Address("10.99.0.100"), 68)
    p = ack.packet
    assert p.message_type == MessageType.ACK
    assert p.file == b"pxelinux.0" and p.get(Opt.BOOTFILE) == b"pxelinux.0"
    assert p.siaddr == SERVER and p.yiaddr == IPv4Address(0)
    assert p.ciaddr == IPv4Address("10.99.0.100")
    assert p.get(Opt.VENDOR_CLASS) == b"PXEClient"
    assert p.get(Opt.VENDOR_SPECIFIC) == bytes([71, 4, 0x80, 0x01, 0, 0, 255])
    assert p.get(Opt.CLIENT_UUID) == UUID_OPTION
    assert p.get(Opt.SERVER_ID) == SERVER.packed
    event, fields = parse_event(caplog.records[-1].getMessage())
    assert event == "REQUEST"
    assert fields["decision"] == "BOOT-ITEM-ACK"
    assert (fields["menu"], fields["item"], fields["file"]) == ("bios", "1", "pxelinux.0")
    assert fields["port"] == "4011"
    assert service.counters["REQUEST:BOOT-ITEM-ACK"] == 1


async def test_layer_is_echoed() -> None:
    service = with_menus(make_service()[0], bios_menus(LINUX, DISK))
    ack = await ask(service, item_request(0x8001, layer=2), port=4011, source=("10.99.0.100", 4011))
    assert ack is not None and ack.port == 4011
    assert ack.packet.get(Opt.VENDOR_SPECIFIC) == bytes([71, 4, 0x80, 0x01, 0, 2, 255])


async def test_unknown_and_local_items_are_silent(caplog: pytest.LogCaptureFixture) -> None:
    service = with_menus(make_service()[0], bios_menus(LINUX, DISK))
    caplog.set_level(logging.INFO, logger="netbootd.dhcp")
    assert await ask(service, item_request(0x8005), port=4011, source=("10.99.0.100", 68)) is None
    warning = caplog.records[-1]
    assert warning.levelno == logging.WARNING
    _, fields = parse_event(warning.getMessage())
    assert fields["decision"] == "unknown-item"
    assert "32773" in fields["reason"] and fields["menu"] == "bios"
    assert service.counters["REQUEST:unknown-item"] == 1
    assert await ask(service, item_request(0), port=4011, source=("10.99.0.100", 68)) is None
    assert service.counters["REQUEST:ignored"] == 1


async def test_malformed_boot_item_is_ignored() -> None:
    service = with_menus(make_service()[0], bios_menus(LINUX, DISK))
    bad = request(
        MessageType.REQUEST,
        vendor_class=BIOS_PXE,
        arch=0,
        ciaddr="10.99.0.100",
        extra=((Opt.VENDOR_SPECIFIC, bytes([71, 3, 0x80, 1, 0, 255])),),
    )
    assert await ask(service, bad, port=4011, source=("10.99.0.100", 68)) is None
    assert service.counters["REQUEST:ignored"] == 1
    with pytest.raises(DhcpDecodeError):
        boot_item(bad)


async def test_proxy_mode_offers_the_menu_and_answers_items() -> None:
    service = with_menus(make_service(DhcpMode.PROXY)[0], bios_menus(LINUX, DISK))
    offer = await ask(service, request(MessageType.DISCOVER, vendor_class=BIOS_PXE, arch=0))
    assert offer is not None
    assert offer.packet.yiaddr == IPv4Address(0)
    assert offer.packet.get(Opt.VENDOR_SPECIFIC) == TWO_ITEM_MENU
    assert offer.packet.file == b""
    ack = await ask(service, item_request(0x8001), port=4011, source=("10.99.0.50", 68))
    assert ack is not None and ack.packet.file == b"pxelinux.0"


async def test_one_item_menu_gives_the_file_directly() -> None:
    service = with_menus(make_service()[0], bios_menus(LINUX, prompt=None))
    offer = await ask(service, request(MessageType.DISCOVER, vendor_class=BIOS_PXE, arch=0))
    assert offer is not None
    assert offer.packet.file == b"pxelinux.0"
    assert offer.packet.get(Opt.VENDOR_SPECIFIC) == bytes([6, 1, 8, 255])


async def test_ipxe_is_not_offered_ipxe_again() -> None:
    ipxe_item = {"arch": "bios", "text": "iPXE", "file": "undionly.kpxe"}
    service = with_menus(make_service()[0], bios_menus(ipxe_item, DISK))
    firmware = await ask(service, request(MessageType.DISCOVER, vendor_class=BIOS_PXE, arch=0))
    assert firmware is not None and firmware.packet.file == b""
    again = request(MessageType.DISCOVER, vendor_class=BIOS_PXE, arch=0, ipxe=True)
    assert classify(again).is_ipxe
    chained = await ask(service, again)
    assert chained is not None
    assert chained.packet.get(Opt.BOOTFILE) == b"http://10.99.0.1/boot.ipxe"
    # An iPXE ROM still gets a menu of other loaders.
    service = with_menus(make_service()[0], bios_menus(LINUX, ipxe_item))
    rom = await ask(service, again)
    assert rom is not None and rom.packet.file == b""
    menu = dict(decode_suboptions(rom.packet.get(Opt.VENDOR_SPECIFIC) or b""))[9]
    assert menu == b"\x80\x01\x05Linux"


def test_multicast_discovery_bytes() -> None:
    menus = build_menus([LINUX, DISK], PROMPT, "239.255.40.11")
    assert menus.multicast == IPv4Address("239.255.40.11")
    menu = menus.by_key[BootClass.BIOS]
    # Multicast allowed (bit 1 clear), broadcast not (bit 0); the group in sub-option 7 right
    # after it; the rest as without it, the listed servers kept for unicast after multicast.
    group = bytes([7, 4, 239, 255, 40, 11])
    assert menu.vendor_options(IPv4Address("10.99.0.1")) == (
        bytes([6, 1, 0x01]) + group + TWO_ITEM_MENU[3:]
    )
    # iPXE itself, offered the menu without its own item, keeps the group.
    ipxe = request(MessageType.DISCOVER, vendor_class=BIOS_PXE, arch=0, ipxe=True)
    chained = menus.for_client(classify(ipxe))
    assert chained is not None and chained.multicast == menus.multicast
    # --log-dhcp shows it decoded.
    from netbootd.proto.dhcp.codec import DhcpPacket, Op

    packet = DhcpPacket(Op.BOOTREPLY, 1, bytes(6), options=((43, menu.vendor_options(SERVER)),))
    (line,) = describe(packet)
    assert "discovery-control=0x01 discovery-mcast=239.255.40.11 boot-servers=" in line


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("10.0.0.1", "an IPv4 multicast address"),
        ("not an address", "an IPv4 multicast address"),
        (5, "an IPv4 multicast address"),
        ("224.0.0.5", "kept for routing protocols"),
    ],
)
def test_multicast_errors(raw: object, message: str) -> None:
    with pytest.raises(PxeMenuError, match=f"^pxe-multicast: .*{message}"):
        build_menus([LINUX], None, raw)


def test_multicast_needs_a_menu(tmp_path: Path) -> None:
    with pytest.raises(PxeMenuError, match=r"^pxe-multicast: boot-item requests are for"):
        build_menus(None, None, "239.1.2.3")
    args = make_parser().parse_args(
        ["serve", "--interface=lo", "--root=/srv", "--pxe-multicast=239.1.2.3"]
    )
    with pytest.raises(ConfigError, match=r"^--pxe-multicast: pxe-multicast: boot-item"):
        config_from_args(args)
    path = tmp_path / "netbootd.toml"
    path.write_text(
        'interface = "lo"\nroot = "/srv"\npxe-multicast = "10.1.2.3"\n'
        '[[pxe-menu]]\narch = "bios"\ntext = "Linux"\nfile = "pxelinux.0"\n'
    )
    with pytest.raises(ConfigError, match=r"netbootd\.toml:3: pxe-multicast: an IPv4 multicast"):
        from_file(path)
    path.write_text(path.read_text().replace("10.1.2.3", "239.1.2.3"))
    config = from_file(path)
    assert config.pxe_menus.multicast == IPv4Address("239.1.2.3")
    assert config.pxe_menus.by_key[BootClass.BIOS].multicast == IPv4Address("239.1.2.3")


def test_describe_decodes_pxe_suboptions() -> None:
    from netbootd.proto.dhcp.codec import DhcpPacket, Op

    packet = DhcpPacket(Op.BOOTREPLY, 1, bytes(6), options=((43, TWO_ITEM_MENU),))
    (line,) = describe(packet)
    assert "discovery-control=0x03" in line
    assert "boot-servers=32769:10.99.0.1" in line
    assert "boot-menu=32769:'Linux';0:'Local disk'" in line
    assert "menu-prompt=3s:'Press F8'" in line
    other = DhcpPacket(Op.BOOTREPLY, 1, bytes(6), options=((43, bytes([1, 1, 5])),))
    assert describe(other) == ["  43 vendor-specific: 1=05"]


@pytest.mark.parametrize(
    ("entries", "prompt", "message"),
    [
        ([{"arch": "bios", "text": "x"}], None, "pxe-menu[0]: exactly one of file"),
        ([{"arch": "bios", "file": "a"}], None, "pxe-menu[0].text"),
        ([{"arch": "bsd", "text": "x", "local": True}], None, "pxe-menu[0].arch: unknown"),
        ([{"arch": "ipxe", "text": "x", "local": True}], None, "pxe-menu[0].arch: ipxe"),
        ([LINUX, {"arch": "bios", "text": "x", "file": "../a"}], None, "pxe-menu[1].file"),
        ([{"arch": "bios", "text": "x", "type": 9}], None, "pxe-menu[0].server"),
        ([LINUX], {"text": "p", "timeout": 300}, "pxe-prompt.timeout"),
        ([LINUX], {"text": "p", "timeout": 3, "arch": "uefi"}, "uefi has a prompt but no menu"),
        ([{**LINUX, "colour": 1}], None, "pxe-menu[0]: unknown key 'colour'"),
        ([{**LINUX, "text": "é"}], None, "pxe-menu[0].text: PXE ROMs print ASCII"),
        (
            [{"arch": "bios", "text": "x" * 60, "file": f"f{n}"} for n in range(5)],
            None,
            "option 43 takes",
        ),
    ],
)
def test_config_errors_name_the_key(entries: object, prompt: object, message: str) -> None:
    with pytest.raises(PxeMenuError, match=message.replace("[", r"\[").replace("]", r"\]")):
        build_menus(entries, prompt)


def test_config_file_and_flags(tmp_path: Path) -> None:
    path = tmp_path / "netbootd.toml"
    path.write_text(
        'interface = "lo"\nroot = "/srv"\n'
        '[[pxe-menu]]\narch = "bios"\ntext = "Linux"\nfile = "pxelinux.0"\n'
        '[[pxe-menu]]\narch = "bios"\ntext = "Local disk"\nlocal = true\n'
        '[pxe-prompt]\ntext = "Press F8"\ntimeout = 3\n'
    )
    config = from_file(path)
    menu = config.pxe_menus.by_key[BootClass.BIOS]
    assert menu.vendor_options(IPv4Address("10.99.0.1")) == TWO_ITEM_MENU
    path.write_text(
        'interface = "lo"\nroot = "/srv"\n[[pxe-menu]]\narch = "bios"\ntext = "Linux"\n'
    )
    with pytest.raises(ConfigError, match=r"netbootd.toml:3: pxe-menu\[0\]: exactly one of"):
        from_file(path)
    args = make_parser().parse_args(
        [
            "serve",
            "--interface=lo",
            "--root=/srv",
            "--pxe-service=bios,Linux, the installer,pxelinux.0",
            "--pxe-service=bios,Local disk,local",
            "--pxe-service=bios,WDS,1,10.99.0.8",
            "--pxe-prompt=bios,Press F8, or wait,3",
        ]
    )
    flagged = config_from_args(args).pxe_menus.by_key[BootClass.BIOS]
    assert [(i.text, i.type, i.file) for i in flagged.items] == [
        ("Linux, the installer", 0x8001, "pxelinux.0"),
        ("Local disk", 0, None),
        ("WDS", 1, None),
    ]
    assert flagged.items[2].server == IPv4Address("10.99.0.8")
    assert flagged.prompt is not None and flagged.prompt.text == "Press F8, or wait"
    bad = make_parser().parse_args(
        ["serve", "--interface=lo", "--root=/srv", "--pxe-service=bios,x,a/../b"]
    )
    with pytest.raises(ConfigError, match=r"^--pxe-service/--pxe-prompt: pxe-menu\[0\].file"):
        config_from_args(bad)


async def test_explain_shows_the_menu(tmp_path: Path) -> None:
    from netbootd.explain import ClientDescription, explain

    (tmp_path / "pxelinux.0").write_bytes(b"loader")
    flags = {"interface": "lo", "root": tmp_path, "proxy": True}
    config = build({"pxe-menu": [LINUX, DISK], "pxe-prompt": PROMPT}, flags)
    report = (await explain(config, ClientDescription(mac="52:54:00:00:00:01", arch=0))).text
    assert "boot-menu=32769:'Linux';0:'Local disk'" in report
    assert "1. 'Linux' (type 32769): file pxelinux.0" in report
    assert "2. 'Local disk' (type 0): boot from the local disk" in report
    assert "prompt 'Press F8', 3 s, then item 1" in report
    missing = build({"pxe-menu": [{**LINUX, "file": "nowhere.0"}]}, flags)
    with pytest.raises(ConfigError, match=r"pxe-menu bios item 1 file=nowhere.0"):
        await explain(missing, ClientDescription(mac="52:54:00:00:00:01", arch=0))


async def test_broadcast_item_request_on_port_67_and_proxy_ack_without_item() -> None:
    service = with_menus(make_service()[0], bios_menus(LINUX, DISK))
    # A client that broadcasts its item request (discovery control bit 0 clear) reaches port 67.
    ack = await ask(service, item_request(0x8001), port=67, source=("10.99.0.100", 68))
    assert ack is not None and ack.packet.file == b"pxelinux.0"
    assert service.counters["REQUEST:BOOT-ITEM-ACK"] == 1
    # iPXE asks a proxyDHCP at 4011 for its offer again before choosing: the menu once more.
    proxy = with_menus(make_service(DhcpMode.PROXY)[0], bios_menus(LINUX, DISK))
    again = request(MessageType.REQUEST, vendor_class=BIOS_PXE, arch=0, ciaddr="10.99.0.50")
    proxy_ack = await ask(proxy, again, port=4011, source=("10.99.0.50", 68))
    assert proxy_ack is not None and proxy_ack.packet.message_type == MessageType.ACK
    assert proxy_ack.packet.get(Opt.VENDOR_SPECIFIC) == TWO_ITEM_MENU
    assert proxy_ack.packet.file == b""


async def test_the_inventorys_default_profile_leaves_the_menu_to_undescribed_clients() -> None:
    from netbootd.boot.inventory import Inventory, Machine, Method, Profile
    from netbootd.services.machines import BootSetup, Machines, ServerAddress

    service = with_menus(make_service()[0], bios_menus(LINUX, DISK))
    profiles = {"p": Profile("p", Method.IPXE, kernel="vmlinuz")}
    described = Machine("one", mac="52:54:00:00:00:01", profile="p")
    inventory = Inventory(profiles=profiles, machines={"one": described}, default_profile="p")
    setup = BootSetup(inventory, MappingProxyType({}), Path("/nonexistent"))
    service.machines = Machines(setup, ServerAddress(str(SERVER)))
    # A client the inventory does not describe gets the menu, default profile or not ...
    other = await ask(service, request(MessageType.DISCOVER, vendor_class=BIOS_PXE, arch=0))
    assert other is not None and other.packet.get(Opt.VENDOR_SPECIFIC) == TWO_ITEM_MENU
    # ... and the machine it describes boots its own profile.
    mine = request(MessageType.DISCOVER, mac="52:54:00:00:00:01", vendor_class=BIOS_PXE, arch=0)
    own = await ask(service, mine)
    assert own is not None and own.packet.get(Opt.VENDOR_SPECIFIC) == bytes([6, 1, 8, 255])
    assert own.packet.file != b""


async def test_transaction_lines_keep_their_exact_form(caplog: pytest.LogCaptureFixture) -> None:
    """The lines operators grep and the lab parses, written out whole: every optional field,
    in its order, quoted only where it must be."""
    from ipaddress import IPv4Address as Address

    from netbootd.proto.dhcp.codec import DhcpPacket, Op

    group = Address("239.1.2.3")
    service = with_menus(make_service()[0], build_menus([LINUX, DISK], PROMPT, str(group)))
    caplog.set_level(logging.DEBUG, logger="netbootd.dhcp")
    ndi = ((Opt.CLIENT_NDI, b"\x01\x02\x01"),)
    await ask(service, request(MessageType.DISCOVER, vendor_class=BIOS_PXE, arch=0, extra=ndi))
    service.answer(item_request(0x8001), local_port=4011, source=("10.99.0.100", 68), group=group)
    nobody = DhcpPacket(
        Op.BOOTREQUEST, 8, b"", giaddr=Address("10.99.0.2"), options=((53, b"\x01"),)
    )
    service.answer(nobody, local_port=4011, source=("10.99.0.2", 67))
    pxe = "vendor_class=PXEClient:Arch:00000:UNDI:002001 user_class=- arch=bios client=pxe"
    assert [r.getMessage() for r in caplog.records] == [
        f"DISCOVER xid=0x1234abcd mac=52:54:00:12:34:56 {pxe} decision=OFFER "
        'address=10.99.0.100 ndi="UNDI 2.1" menu=bios file=- why="pxe-menu bios: 2 items"',
        f"REQUEST xid=0x1234abcd mac=52:54:00:12:34:56 {pxe} decision=BOOT-ITEM-ACK address=- "
        'menu=bios item=1 file=pxelinux.0 why="pxe-menu bios item 1" port=4011 to=239.1.2.3',
        'DISCOVER xid=0x00000008 mac="" vendor_class=- user_class=- arch=unknown client=plain '
        "decision=ignored address=- relay=10.99.0.2 port=4011 "
        'reason="no hardware address and no client identifier"',
    ]
