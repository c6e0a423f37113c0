"""PXE boot menus: what a PXE ROM shows before it boots, and what each item then boots.

PXE 2.1 (Table 2-1, the PXE vendor options carried in option 43) lets a server offer a menu
instead of a boot file: PXE_BOOT_MENU (sub-option 9) lists the items, each a boot server type and
a line of text; PXE_MENU_PROMPT (10) says what to print and how many seconds to wait before the
first item is taken; PXE_BOOT_SERVERS (8) says where to ask for each type; PXE_DISCOVERY_CONTROL
(6) says how to ask. The client picks an item and sends a DHCPREQUEST carrying PXE_BOOT_ITEM
(71: type and layer) to that boot server, at port 4011; the boot server answers with the item's
boot file and 71 echoed.

This module holds the configured menus (validated from the config file's entries), builds the
option 43 value of an offer, and answers a boot-item request. Pure: no sockets, no logging, no
clock; the DHCP service calls it and sends what it returns.

How the client finds the boot server of an item (PXE 2.1 §2.2.5, Boot Server Discovery): by
unicast to the servers PXE_BOOT_SERVERS (8) names, always offered, since it crosses relays; and,
when a discovery multicast address is configured, first by multicast to that group at port 4011
(PXE_DISCOVERY_MCAST_ADDR, 7), so that the boot servers listening on the group answer (iPXE tries
the multicast address, then the listed servers, src/net/udp/dhcp.c). Broadcast discovery stays
off (bit 0): a broadcast request reaches every DHCP server of the segment, at port 67.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from types import MappingProxyType

from netbootd.boot.client import (
    BootClass,
    BootKey,
    ClientInfo,
    boot_key_name,
    boot_key_needs_http,
    parse_boot_key,
)
from netbootd.boot.policy import BootDecision, firmware_class, is_ipxe_binary
from netbootd.proto.dhcp.codec import (
    DhcpDecodeError,
    DhcpPacket,
    MessageType,
    Opt,
    decode_suboptions,
    ip_option,
    pxe_vendor_options,
    reply_to,
)

# PXE 2.1 Table 2-1, the PXE vendor sub-options of option 43.
DISCOVERY_CONTROL = 6
DISCOVERY_MULTICAST = 7
BOOT_SERVERS = 8
BOOT_MENU = 9
MENU_PROMPT = 10
BOOT_ITEM = 71

# PXE_DISCOVERY_CONTROL bits.
NO_BROADCAST = 0x01  # bit 0: do not broadcast the boot-item request
NO_MULTICAST = 0x02  # bit 1: do not multicast it
ONLY_LISTED = 0x04  # bit 2: take answers only from servers in PXE_BOOT_SERVERS
USE_BOOTFILE = 0x08  # bit 3: a boot file is in the offer: fetch it, no menu, no discovery

# Boot server types (PXE 2.1 Table 2-1): 0 is the local disk, 1-32767 are registered to
# vendors, 32768-65534 are free for local use. Items with a file of ours take local-use types.
LOCAL_BOOT = 0
LOCAL_USE_BASE = 0x8000
MAX_TYPE = 0xFFFE

_LOCAL_CONTROL = IPv4Network("224.0.0.0/24")  # RFC 5771: routing protocols, never a site's
WAIT_FOR_USER = 255  # PXE_MENU_PROMPT timeout: no timeout, show the menu and wait
_MAX_SUBOPTION = 255
_MAX_TEXT = 70  # EDK2 shows at most 70 characters of a menu line


class PxeMenuError(ValueError):
    """A menu entry of the configuration cannot be used; the message names the entry and key."""


@dataclass(frozen=True, slots=True)
class MenuItem:
    """One line of a menu and what it boots."""

    text: str
    type: int  # the boot server type the client asks for (0: boot from the local disk)
    file: str | None = None  # a boot file this server hands out for the item
    server: IPv4Address | None = None  # the TFTP server of ``file``, or the boot server of ``type``

    @property
    def local(self) -> bool:
        return self.type == LOCAL_BOOT

    @property
    def ours(self) -> bool:
        """Whether this server answers the item's boot-item request."""
        return self.file is not None


@dataclass(frozen=True, slots=True)
class Prompt:
    """PXE_MENU_PROMPT: printed before the menu, with a countdown to the first item."""

    text: str
    timeout: int  # seconds; 0 takes the first item at once, 255 waits for the user


@dataclass(frozen=True, slots=True)
class PxeMenu:
    """The menu of one client class (``bios``) or exact architecture (``arch-7``)."""

    key: BootKey
    items: tuple[MenuItem, ...]
    prompt: Prompt | None = None
    multicast: IPv4Address | None = None  # the discovery group, when clients may multicast

    @property
    def name(self) -> str:
        return boot_key_name(self.key)

    @property
    def direct(self) -> MenuItem | None:
        """The item to hand out as a plain boot file, without any menu.

        A menu of one item of ours and no prompt has nothing to ask: like dnsmasq, give the
        file straight away (discovery control bit 3), which every PXE ROM takes.
        """
        if len(self.items) == 1 and self.prompt is None and self.items[0].ours:
            return self.items[0]
        return None

    def item(self, item_type: int) -> tuple[int, MenuItem] | None:
        """The 1-based position and item of a boot server type, if the menu has it."""
        for position, item in enumerate(self.items, 1):
            if item.type == item_type:
                return position, item
        return None

    def vendor_options(self, server: IPv4Address) -> bytes:
        """The option 43 value that offers this menu; ``server`` answers the items of ours."""
        return pxe_vendor_options(self._suboptions(server))

    def _suboptions(self, server: IPv4Address) -> list[tuple[int, bytes]]:
        # Discovery by unicast to the listed boot servers, and first by multicast when a
        # group is configured; never by broadcast (bit 0). The answer may name a TFTP server
        # other than the boot server, so bit 2 (which EDK2 reads as "siaddr must be the listed
        # server") stays off.
        if self.multicast is None:
            subs = [(DISCOVERY_CONTROL, bytes([NO_BROADCAST | NO_MULTICAST]))]
        else:
            subs = [
                (DISCOVERY_CONTROL, bytes([NO_BROADCAST])),
                (DISCOVERY_MULTICAST, self.multicast.packed),
            ]
        servers = bytearray()
        for item in self.items:
            if item.local:
                continue  # type 0 needs no server: the client boots its disk
            address = server if item.ours or item.server is None else item.server
            servers += item.type.to_bytes(2, "big") + bytes([1]) + address.packed
        if servers:
            subs.append((BOOT_SERVERS, bytes(servers)))
        menu = bytearray()
        for item in self.items:
            text = item.text.encode("ascii")
            menu += item.type.to_bytes(2, "big") + bytes([len(text)]) + text
        subs.append((BOOT_MENU, bytes(menu)))
        prompt = self.prompt
        if prompt is None and len(self.items) == 1:
            # One item and nothing to ask: a silent prompt of 0 s takes it at once. Without a
            # prompt iPXE would show the menu and wait.
            prompt = Prompt("", 0)
        if prompt is not None:
            subs.append((MENU_PROMPT, bytes([prompt.timeout]) + prompt.text.encode("ascii")))
        return subs


@dataclass(frozen=True, slots=True)
class PxeMenus:
    """Every configured menu, by client class or exact architecture."""

    by_key: Mapping[BootKey, PxeMenu] = field(default_factory=lambda: MappingProxyType({}))
    multicast: IPv4Address | None = None  # the discovery group this server listens on

    def __bool__(self) -> bool:
        return bool(self.by_key)

    def for_client(self, client: ClientInfo) -> PxeMenu | None:
        """The menu a PXE client gets, if its architecture has one.

        An exact architecture wins over its class, as with ``--boot``. A client that already
        runs iPXE is not offered items that are iPXE itself (that is how it got here: offering
        them again would loop); with no network item left it gets no menu at all.
        """
        if not client.is_pxe or client.is_http_boot:
            return None
        menu = None
        if client.arch is not None:
            menu = self.by_key.get(client.arch)
        if menu is None:
            firmware = firmware_class(client)
            menu = self.by_key.get(firmware) if firmware is not None else None
        if menu is None or not client.is_ipxe:
            return menu
        items = tuple(i for i in menu.items if i.file is None or not is_ipxe_binary(i.file))
        if all(item.local for item in items):
            return None
        return PxeMenu(menu.key, items, menu.prompt, menu.multicast)

    def files(self) -> list[tuple[str, str]]:
        """(where, file) of every item served here, for the start-up check."""
        return [
            (f"pxe-menu {menu.name} item {position}", item.file)
            for menu in self.by_key.values()
            for position, item in enumerate(menu.items, 1)
            if item.file is not None
        ]


NO_MENUS = PxeMenus()

# Option 43 of an offer with a boot file and no menu: discovery control bit 3 alone.
USE_BOOTFILE_OPTION = pxe_vendor_options([(DISCOVERY_CONTROL, bytes([USE_BOOTFILE]))])


@dataclass(frozen=True, slots=True)
class MenuOffer:
    """What an offer to a client with a menu carries instead of the policy's boot file."""

    name: str  # the menu's client class, for the log
    boot: BootDecision  # the file of a one-item menu handed out directly, else no file
    vendor_options: bytes  # option 43
    next_server: IPv4Address | None  # siaddr, when the menu's only item names its TFTP server


def menu_offer(menu: PxeMenu | None, policy: BootDecision, server: IPv4Address) -> MenuOffer | None:
    """The offer of ``menu`` (None: no menu, the policy's decision stands)."""
    if menu is None:
        return None
    direct = menu.direct
    if direct is not None:
        why = f"pxe-menu {menu.name}: its only item"
        boot = BootDecision(policy.boot_class, direct.file, None, why)
        return MenuOffer(menu.name, boot, USE_BOOTFILE_OPTION, direct.server)
    why = f"pxe-menu {menu.name}: {len(menu.items)} items"
    boot = BootDecision(policy.boot_class, None, None, why)
    return MenuOffer(menu.name, boot, menu.vendor_options(server), None)


# --------------------------------------------------------------------------------------------
# Boot-item requests (PXE 2.1 §2.2.5: the client asks the boot server of the item it chose)


def boot_item(request: DhcpPacket) -> tuple[int, int] | None:
    """The (type, layer) of PXE_BOOT_ITEM in a request's option 43, None when it has none.

    Raises :class:`DhcpDecodeError` when option 43 or sub-option 71 is malformed.
    """
    raw = request.get(Opt.VENDOR_SPECIFIC)
    if raw is None:
        return None
    for code, value in decode_suboptions(raw):
        if code == BOOT_ITEM:
            if len(value) != 4:
                raise DhcpDecodeError(f"PXE_BOOT_ITEM of {len(value)} octets, expected 4")
            return int.from_bytes(value[:2], "big"), int.from_bytes(value[2:], "big")
    return None


@dataclass(frozen=True, slots=True)
class ItemAnswer:
    """The outcome of one boot-item request: an ACK to send, or the reason for silence."""

    position: int  # 1-based place of the item in its menu; 0 when none matched
    item: MenuItem | None
    packet: DhcpPacket | None
    reason: str


def answer_boot_item(
    request: DhcpPacket,
    menu: PxeMenu,
    item_type: int,
    layer: int,
    *,
    server: IPv4Address,
    next_server: IPv4Address,
) -> ItemAnswer:
    """The boot server's ACK to a request for ``item_type`` of ``menu``.

    The ACK carries the item's file (in the file field and option 67), its TFTP server in
    siaddr, PXEClient, PXE_BOOT_ITEM echoed with the same type and layer (which both iPXE and
    EDK2 match against what they asked for), and the client's UUID echoed.
    """
    found = menu.item(item_type)
    if found is None:
        return ItemAnswer(0, None, None, f"type {item_type} is not in the {menu.name} menu")
    position, item = found
    if item.local:
        # PXE 2.1: type 0 means "boot from the local disk"; the client does so without asking
        # anyone (iPXE and EDK2 both return before discovery), so there is nothing to answer.
        return ItemAnswer(position, item, None, "type 0 is a local boot: nothing to answer")
    if item.file is None:
        return ItemAnswer(position, item, None, f"type {item_type} is served by {item.server}")
    name = item.file.encode()
    tftp = item.server or next_server
    options: list[tuple[int, bytes]] = [
        (Opt.MESSAGE_TYPE, bytes([MessageType.ACK])),
        (Opt.SERVER_ID, ip_option(server)),
        (Opt.VENDOR_CLASS, b"PXEClient"),
        (
            Opt.VENDOR_SPECIFIC,
            pxe_vendor_options(
                [(BOOT_ITEM, item_type.to_bytes(2, "big") + layer.to_bytes(2, "big"))]
            ),
        ),
    ]
    uuid = request.get(Opt.CLIENT_UUID)
    if uuid is not None:
        options.append((Opt.CLIENT_UUID, uuid))
    options += [(Opt.TFTP_SERVER, str(tftp).encode()), (Opt.BOOTFILE, name)]
    packet = reply_to(request, options, ciaddr=request.ciaddr, siaddr=tftp, file=name)
    return ItemAnswer(position, item, packet, f"pxe-menu {menu.name} item {position}")


# --------------------------------------------------------------------------------------------
# Building the menus from the configuration


def build_menus(entries: object, prompts: object, multicast: object = None) -> PxeMenus:
    """Menus from the config file's ``[[pxe-menu]]`` entries, ``[pxe-prompt]`` table(s) and
    ``pxe-multicast`` address.

    Each entry has ``arch`` (a client class or ``arch-N``), ``text``, and one of ``file`` (a
    boot file served here), ``local = true`` (boot from the local disk) or ``type`` (a boot
    server type served elsewhere, with ``server``). A prompt has ``text``, ``timeout`` and
    optionally ``arch``; one without ``arch`` serves every menu that has none of its own.
    ``multicast``, when given, is the group every menu's clients may multicast their boot-item
    requests to. Raises :class:`PxeMenuError` naming the entry and key.
    """
    group = _multicast(multicast)
    items: dict[BootKey, list[MenuItem]] = {}
    for index, entry in enumerate(_tables(entries, "pxe-menu")):
        where = f"pxe-menu[{index}]"
        key = _arch(entry, where)
        items.setdefault(key, []).append(_item(entry, where, len(items[key]) + 1))
    own: dict[BootKey, Prompt] = {}
    shared: Prompt | None = None
    for index, entry in enumerate(_tables(prompts, "pxe-prompt")):
        where = f"pxe-prompt[{index}]" if not isinstance(prompts, Mapping) else "pxe-prompt"
        _only(entry, where, {"arch", "text", "timeout"})
        prompt = Prompt(_text(entry, where, required=False), _timeout(entry, where))
        if "arch" in entry:
            key = _arch(entry, where)
            if key in own:
                raise PxeMenuError(f"{where}.arch: a second prompt for {boot_key_name(key)}")
            own[key] = prompt
        elif shared is not None:
            raise PxeMenuError(f"{where}: a second prompt without arch")
        else:
            shared = prompt
    for key in own:
        if key not in items:
            raise PxeMenuError(f"pxe-prompt: {boot_key_name(key)} has a prompt but no menu")
    if group is not None and not items:
        raise PxeMenuError(
            "pxe-multicast: boot-item requests are for PXE menus; without a pxe-menu "
            "entry (--pxe-service) no client would send one"
        )
    menus = {
        key: PxeMenu(key, tuple(found), own.get(key, shared), group) for key, found in items.items()
    }
    for menu in menus.values():
        _check_types(menu)
        size = sum(2 + len(value) for _, value in menu._suboptions(IPv4Address(0))) + 1
        if size > _MAX_SUBOPTION:
            raise PxeMenuError(
                f"pxe-menu for {menu.name}: its option 43 takes {size} octets, more than the "
                f"{_MAX_SUBOPTION} PXE ROMs read; use fewer items or shorter texts"
            )
    return PxeMenus(MappingProxyType(menus), group)


def _multicast(raw: object) -> IPv4Address | None:
    if raw is None:
        return None
    try:
        address = IPv4Address(raw.strip() if isinstance(raw, str) else "")
    except ValueError:
        address = None
    if address is None or not address.is_multicast:
        raise PxeMenuError(
            f"pxe-multicast: an IPv4 multicast address (224.0.0.0/4) is needed, not {raw!r}"
        )
    if address in _LOCAL_CONTROL:
        raise PxeMenuError(
            f"pxe-multicast: {address} is in 224.0.0.0/24, kept for routing protocols; "
            "use a group of your site's, in 239.0.0.0/8"
        )
    return address


def _tables(value: object, name: str) -> list[Mapping[str, object]]:
    if value is None:
        return []
    if isinstance(value, Mapping):
        value = [value]
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise PxeMenuError(f"{name}: a table or a list of tables is expected")
    for index, entry in enumerate(value):
        if not isinstance(entry, Mapping):
            raise PxeMenuError(f"{name}[{index}]: a table is expected, not {entry!r}")
    return list(value)


def _only(entry: Mapping[str, object], where: str, known: set[str]) -> None:
    unknown = sorted(set(entry) - known)
    if unknown:
        raise PxeMenuError(
            f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})"
        )


def _arch(entry: Mapping[str, object], where: str) -> BootKey:
    raw = entry.get("arch")
    if not isinstance(raw, str):
        raise PxeMenuError(f"{where}.arch: a client class (bios, uefi, ...) or arch-N is needed")
    try:
        key = parse_boot_key(raw)
    except ValueError as exc:
        raise PxeMenuError(f"{where}.arch: {exc}") from None
    if key is BootClass.IPXE or boot_key_needs_http(key):
        raise PxeMenuError(
            f"{where}.arch: {raw} clients do not read PXE menus; a menu is for PXE firmware"
        )
    return key


def _text(entry: Mapping[str, object], where: str, *, required: bool = True) -> str:
    raw = entry.get("text", None if required else "")
    if not isinstance(raw, str) or (required and not raw.strip()):
        raise PxeMenuError(f"{where}.text: the line to show is needed, as text")
    if not raw.isascii() or not (raw.isprintable() or raw == ""):
        raise PxeMenuError(f"{where}.text: PXE ROMs print ASCII only, not {raw!r}")
    if len(raw) > _MAX_TEXT:
        raise PxeMenuError(f"{where}.text: {len(raw)} characters, at most {_MAX_TEXT} are shown")
    return raw


def _timeout(entry: Mapping[str, object], where: str) -> int:
    raw = entry.get("timeout")
    if isinstance(raw, bool) or not isinstance(raw, int) or not 0 <= raw <= WAIT_FOR_USER:
        raise PxeMenuError(
            f"{where}.timeout: seconds 0-255 are needed (0 boots the first item at once, "
            "255 waits for the user)"
        )
    return raw


def _item(entry: Mapping[str, object], where: str, position: int) -> MenuItem:
    _only(entry, where, {"arch", "text", "file", "local", "type", "server"})
    text = _text(entry, where)
    server = None
    if "server" in entry:
        try:
            server = IPv4Address(str(entry["server"]).strip())
        except ValueError:
            raise PxeMenuError(f"{where}.server: an IPv4 address is needed") from None
    kinds = [key for key in ("file", "local", "type") if key in entry]
    if len(kinds) != 1:
        raise PxeMenuError(f"{where}: exactly one of file, local = true or type is needed")
    if "local" in entry:
        if entry["local"] is not True:
            raise PxeMenuError(f"{where}.local: only local = true means anything")
        if server is not None:
            raise PxeMenuError(f"{where}.server: a local boot has no server")
        return MenuItem(text, LOCAL_BOOT)
    if "file" in entry:
        raw = entry["file"]
        path = raw.strip() if isinstance(raw, str) else ""
        if not path or path.startswith("/") or "\\" in path or ".." in path.split("/"):
            raise PxeMenuError(f"{where}.file: a path relative to the root, without '..'")
        if len(path.encode()) > _MAX_SUBOPTION:
            raise PxeMenuError(f"{where}.file: longer than the 255 octets of option 67")
        return MenuItem(text, LOCAL_USE_BASE + position, path, server)
    raw_type = entry["type"]
    if isinstance(raw_type, bool) or not isinstance(raw_type, int) or not 1 <= raw_type <= MAX_TYPE:
        raise PxeMenuError(f"{where}.type: a boot server type 1-65534 is needed")
    if server is None:
        raise PxeMenuError(f"{where}.server: an item of type {raw_type} needs its boot server")
    return MenuItem(text, raw_type, None, server)


def _check_types(menu: PxeMenu) -> None:
    seen: set[int] = set()
    for item in menu.items:
        if item.type in seen and not item.local:
            raise PxeMenuError(f"pxe-menu for {menu.name}: type {item.type} is in it twice")
        seen.add(item.type)
