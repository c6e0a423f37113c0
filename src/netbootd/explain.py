"""``netbootd explain``: what one client would get from this configuration, and why.

Everything here is computed by the code that serves: the DHCP service answers a DISCOVER built
from the description of the client, and the file source renders what the client would fetch
next. Nothing is sent or received; no lease is written (the DHCP service runs over an empty,
in-memory lease book, so in authoritative mode the address shown is the first free one).
"""

from __future__ import annotations

import uuid as uuid_module
from dataclasses import dataclass
from ipaddress import IPv4Address

from netbootd.app import App
from netbootd.boot.client import classify, is_http_arch
from netbootd.boot.inventory import Inventory, Resolution
from netbootd.boot.leases import LeaseBook
from netbootd.boot.policy import BootDecision
from netbootd.boot.pxe_menu import PxeMenu
from netbootd.boot.render import machine_prefix
from netbootd.config import Config, ConfigError, DhcpMode
from netbootd.proto.dhcp.codec import DhcpPacket, MessageType, Op, Opt, describe
from netbootd.proto.dhcp.wire import DHCP_SERVER_PORT
from netbootd.services.files import FileLookupError, FileSource
from netbootd.services.machines import (
    IPXE_SCRIPT,
    RenderFailed,
    missing_boot_files,
    pxelinux_name,
)


@dataclass(frozen=True, slots=True)
class ClientDescription:
    """The client to explain, as the operator describes it."""

    mac: str
    arch: int | None = None
    user_class: str | None = None
    vendor_class: str | None = None
    uuid: str | None = None
    parameter_list: str | None = None  # option 55, "1,3,6,..." as the client sends it

    def requested_codes(self) -> bytes | None:
        if self.parameter_list is None:
            return None
        try:
            codes = bytes(int(code) for code in self.parameter_list.split(",") if code.strip())
        except ValueError:
            raise ConfigError(
                f"--parameter-list {self.parameter_list}: option codes 1-254, comma-separated"
            ) from None
        if not all(1 <= code <= 254 for code in codes):
            raise ConfigError(f"--parameter-list {self.parameter_list}: codes are 1-254")
        return codes

    def discover(self) -> DhcpPacket:
        """The DISCOVER such a client sends."""
        try:
            chaddr = bytes.fromhex(self.mac.replace(":", "").replace("-", ""))
        except ValueError:
            chaddr = b""
        if len(chaddr) != 6:
            raise ConfigError(f"--mac {self.mac}: not a MAC address (like 52:54:00:12:34:56)")
        options: list[tuple[int, bytes]] = [(Opt.MESSAGE_TYPE, bytes([MessageType.DISCOVER]))]
        vendor = self.vendor_class
        if vendor is None and self.arch is not None:
            kind = "HTTPClient" if is_http_arch(self.arch) else "PXEClient"
            vendor = f"{kind}:Arch:{self.arch:05d}:UNDI:003000"
        if vendor:
            options.append((Opt.VENDOR_CLASS, vendor.encode()))
        if self.arch is not None:
            if not 0 <= self.arch <= 0xFFFF:
                raise ConfigError(f"--arch {self.arch}: option 93 holds 0-65535")
            options.append((Opt.CLIENT_ARCH, self.arch.to_bytes(2, "big")))
        if self.user_class:
            options.append((Opt.USER_CLASS, self.user_class.encode()))
        if self.uuid is not None:
            try:
                machine_uuid = uuid_module.UUID(self.uuid)
            except ValueError:
                raise ConfigError(f"--uuid {self.uuid}: not a UUID") from None
            options.append((Opt.CLIENT_UUID, b"\x00" + machine_uuid.bytes_le))
        codes = self.requested_codes()
        if codes is not None:
            options.append((Opt.PARAMETER_LIST, codes))
        return DhcpPacket(op=Op.BOOTREQUEST, xid=0x6E627464, chaddr=chaddr, options=tuple(options))


def _section(title: str, lines: list[str]) -> list[str]:
    return [title, *(f"  {line}" for line in lines), ""]


# What the scripts name as this server's address when neither the interface nor next-server
# says it (RFC 5737's documentation network).
STAND_IN_SERVER = IPv4Address("192.0.2.1")


@dataclass(frozen=True, slots=True)
class Explanation:
    """The report, and what in it cannot be served (a file the root does not hold, a template
    that fails): the client would stop there."""

    text: str
    unservable: tuple[str, ...] = ()


async def explain(config: Config, client: ClientDescription) -> Explanation:
    """The report: the match, the DHCP reply, then what the client fetches."""
    notes = []
    if config.interface is None and config.next_server is None:
        config = config.model_copy(update={"next_server": STAND_IN_SERVER})
        notes.append(
            f"no interface: this server's address stands in as {STAND_IN_SERVER} "
            "(give --interface, or interface in --config)"
        )
    if config.root is None:
        notes.append("no root (--root): the files the client fetches are not shown")
    app = App(config)
    app.prepare()
    packet = client.discover()
    info = classify(packet)
    out = _section("note", notes) if notes else []
    out += _section(
        "client",
        [
            f"mac {info.mac}, architecture {info.arch_name}"
            + (f" ({info.arch})" if info.arch is not None else ""),
            f"vendor class {info.vendor_class or '-'}, user class "
            + (",".join(info.user_classes) or "-")
            + (" (runs iPXE)" if info.is_ipxe else ""),
            f"uuid {info.uuid or '-'}",
            f"parameter request list {client.parameter_list}"
            if client.parameter_list is not None
            else "no parameter request list (--parameter-list): every network option is shown; "
            "a real client gets only those it asks for",
        ],
    )

    resolution = app.machines.resolve_client(info) if app.machines is not None else None
    out += _section("match", _match_lines(app, resolution))
    out += _section("DHCP reply", await _reply_lines(app, packet))
    decision, own = _boot_choice(app, packet, resolution)
    menu = config.pxe_menus.for_client(info) if not own else None
    if menu is not None and menu.direct is None:
        # The client picks an item, then asks for its file: each item is shown instead.
        out += _section(f"PXE menu {menu.name}", _menu_lines(menu))
        return Explanation("\n".join(out).rstrip() + "\n")
    if menu is not None and menu.direct is not None:
        decision = BootDecision(decision.boot_class, menu.direct.file, None, "pxe-menu: one item")
    out += _section(
        "boot decision", [f"file {decision.filename or '-'}", f"why: {decision.reason}"]
    )
    unservable = _unservable_file(app, decision.path)
    fetched, failed = _fetches(app, info.mac, decision.path, is_ipxe=info.is_ipxe)
    out += fetched
    unservable += failed
    if resolution is not None and app.tree is not None and app.inventory is not None:
        chosen = Inventory(profiles={resolution.profile.name: resolution.profile})
        missing = missing_boot_files(chosen, app.inventory.directory, app.tree)
        unservable += [str(problem) for problem in missing]
    if unservable:
        out += _section("cannot be served (the client stops there)", unservable)
    return Explanation("\n".join(out).rstrip() + "\n", tuple(unservable))


def _unservable_file(app: App, path: str | None) -> list[str]:
    """The boot file itself, when the root (or the system's boot files) cannot serve it."""
    if path is None or app.tree is None or path.startswith("m/"):
        return []  # no file; no root to look in; a per-machine file, shown rendered below
    try:
        app.tree.resolve(path)
    except FileLookupError as exc:
        return [f"boot file {path}: {exc.reason} (looked for below the root {app.tree.root})"]
    return []


def _boot_choice(
    app: App, packet: DhcpPacket, resolution: Resolution | None
) -> tuple[BootDecision, bool]:
    """What the client boots, and whether it was chosen for this machine: as the DHCP
    service decides it (a [[hosts]] boot-file first) when it runs here, else the policy's."""
    if app.config.dhcp_mode is not DhcpMode.OFF and app.interface is not None:
        return app.dhcp_service(LeaseBook(), None).boot_choice(packet)
    own = resolution is not None and resolution.chosen
    return app.boot_policy().decide(classify(packet), resolution), own


def _menu_lines(menu: PxeMenu) -> list[str]:
    lines = []
    for position, item in enumerate(menu.items, 1):
        if item.local:
            target = "boot from the local disk"
        elif item.file is not None:
            target = f"file {item.file}" + (f" from {item.server}" if item.server else "")
        else:
            target = f"boot server type {item.type} at {item.server}"
        lines.append(f"{position}. {item.text!r} (type {item.type}): {target}")
    prompt = menu.prompt
    if prompt is None:
        lines.append("no prompt: iPXE shows the menu and waits, EDK2 takes item 1")
    else:
        lines.append(f"prompt {prompt.text!r}, {prompt.timeout} s, then item 1")
    return lines


def _match_lines(app: App, resolution: Resolution | None) -> list[str]:
    if app.machines is None:
        return ["no inventory (--inventory): the built-in choices apply"]
    if resolution is None:
        return ["no machine, group or default profile matches: the built-in choices apply"]
    machine, group, profile = resolution.machine, resolution.group, resolution.profile
    return [
        f"machine {machine.name} ({machine.source or '-'})"
        if machine
        else "machine: not described",
        f"group {group.name} ({group.source or '-'})" if group else "group: none",
        f"profile {profile.name} ({profile.source or '-'}), method {profile.method}",
        *(f"why: {reason}" for reason in resolution.reasons),
    ]


async def _reply_lines(app: App, packet: DhcpPacket) -> list[str]:
    """The DHCP service's answer to ``packet``, over an empty lease book that nothing keeps."""
    if app.config.dhcp_mode is DhcpMode.OFF:
        return ["DHCP is off here; another server answers this client"]
    if app.interface is None:
        return ["not shown: the reply names the interface's address (give --interface)"]
    service = app.dhcp_service(LeaseBook(), None)
    reply = await service.handle(
        packet, local_port=DHCP_SERVER_PORT, source=("0.0.0.0", DHCP_SERVER_PORT + 1)
    )
    if reply is None:
        return [f"none: netbootd stays silent ({', '.join(service.counters) or '-'})"]
    answer = reply.packet
    kind = answer.message_type
    file_name = answer.file.decode(errors="replace") if answer.file else "-"
    return [
        f"{kind.name if isinstance(kind, MessageType) else 'BOOTP reply'} "
        f"to {reply.address}:{reply.port}",
        f"yiaddr {answer.yiaddr}  siaddr {answer.siaddr}  file {file_name}",
        *(line.strip() for line in describe(answer)),
    ]


def _fetches(app: App, mac: str, path: str | None, *, is_ipxe: bool) -> tuple[list[str], list[str]]:
    """What the client fetches next, rendered exactly as TFTP and HTTP would serve it; and
    why it cannot be served, if it cannot."""
    source = app.source
    if source is None or path is None or app.machines is None:
        return [], []
    wanted = path
    name = path.rsplit("/", 1)[-1]
    if name == "pxelinux.0":
        wanted = pxelinux_name(mac)
    elif not is_ipxe and not path.startswith("m/"):
        # The firmware loads iPXE first, which asks again and gets its script.
        wanted = f"{machine_prefix(mac)}/{IPXE_SCRIPT}"
    elif not path.startswith("m/"):
        return [], []  # a file of the root, not rendered
    when = "" if is_ipxe or name == "pxelinux.0" else " (once iPXE runs and asks again)"
    shown, failed = _show(source, wanted)
    return _section(f"then {wanted}{when}", shown), [f"{wanted}: {failed}"] if failed else []


def _show(source: FileSource, name: str) -> tuple[list[str], str | None]:
    try:
        opened = source.open(name, None)
    except RenderFailed as exc:
        return [f"cannot be rendered: {exc.reason}"], exc.reason
    except FileLookupError as exc:
        return [f"not served: {exc.reason}"], exc.reason
    try:
        data = opened.read(0, opened.size)
    finally:
        opened.close()
    return data.decode(errors="replace").splitlines() or ["(empty)"], None
