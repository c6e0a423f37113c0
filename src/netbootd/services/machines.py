"""Per-machine boot: the live inventory, boot-once state, and the files rendered for each machine.

:class:`Machines` holds the inventory currently in force (replaced whole on a good reload, kept on
a bad one), the set of machines marked installed (boot-once), and a memory of what DHCP last
learnt about each MAC (architecture, UUID, address), so that a TFTP or HTTP request, which
carries none of that, renders the same answer DHCP decided. :class:`BootFiles` is the
:class:`~netbootd.services.files.FileSource` that TFTP and HTTP serve: the rendered names below,
and everything else from the boot root.

Rendered names: ``pxelinux.cfg/01-<mac>`` (pxelinux's first lookup), ``...grub.cfg-01-<mac>``
(GRUB's), ``m/<mac>/boot.ipxe`` (the iPXE script) and ``m/<mac>/<file>`` (a profile's own files:
kickstart, preseed, cloud-init, Ignition), the MAC written with dashes. pxelinux's and GRUB's
later lookups (the address in hex, shortened, then ``default`` or plain ``grub.cfg``) are
rendered for the machine DHCP gave the requesting address to; for anyone else, and for machines
whose profile has no such form, every name falls through to the boot root.
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path
from types import MappingProxyType
from urllib.parse import urlsplit

from netbootd.boot.client import ClientInfo, arch_name
from netbootd.boot.inventory import (
    ClientFacts,
    Inventory,
    InventoryError,
    InventoryProblem,
    Location,
    Resolution,
    format_key,
    resolve,
)
from netbootd.boot.journal import Kind, Role, file_role
from netbootd.boot.render import (
    UNDESCRIBED_EMPTY,
    BootContext,
    Flavour,
    NameUse,
    RenderError,
    RenderLimits,
    boot_variables,
    builtin_template,
    compile_template,
    is_url,
    method_flavour,
    render_boot,
    render_text,
    template_uses,
    unknown_variable,
)
from netbootd.logs.events import format_event
from netbootd.services.api_inventory import API_INVENTORY_FILE, ApiInventory
from netbootd.services.files import (
    FileLookupError,
    FileNotFound,
    FileSource,
    FileTree,
    MemoryFile,
    OpenedFile,
)
from netbootd.services.inventory_files import at_key_lines, load_inventory
from netbootd.services.journal import Journal
from netbootd.store.installed import INSTALLED_FILE, InstalledStore

_MAC = r"(?P<mac>[0-9a-fA-F]{2}(?:-[0-9a-fA-F]{2}){5})"
# In a per-machine URL, written by hand into a template or a kernel command line, the MAC may
# be written with colons too (one separator throughout), in either case.
_ANY_MAC = r"(?P<mac>[0-9a-fA-F]{2}(?P<sep>[-:])[0-9a-fA-F]{2}(?:(?P=sep)[0-9a-fA-F]{2}){4})"
_PXELINUX_NAME = re.compile(rf"^/?pxelinux\.cfg/01-{_MAC}$")
_GRUB_NAME = re.compile(rf"^/?(?:.*/)?grub\.cfg-01-{_MAC}$")
# The names tried after the MAC one, which say nothing of the machine but its address: the
# address in upper-case hex, shortened a digit at a time, then the catch-all.
_PXELINUX_BY_ADDRESS = re.compile(r"^/?pxelinux\.cfg/(?:(?P<hex>[0-9A-F]{1,8})|default)$")
_GRUB_BY_ADDRESS = re.compile(r"^/?(?:.*/)?grub\.cfg(?:-(?P<hex>[0-9A-F]{1,8}))?$")
_MACHINE_NAME = re.compile(rf"^/?m/{_ANY_MAC}/(?P<file>[^/]+)$")
IPXE_SCRIPT = "boot.ipxe"


def pxelinux_name(mac: str) -> str:
    """pxelinux's first lookup for a machine: ``pxelinux.cfg/01-<mac with dashes>``."""
    return "pxelinux.cfg/01-" + mac.lower().replace(":", "-")


# DHCP facts remembered per MAC; the oldest are forgotten past this many machines.
_MEMORY_LIMIT = 65536


class RenderFailed(FileLookupError):  # noqa: N818 - the vocabulary of FileLookupError
    """A rendered file whose template failed; TFTP and HTTP answer with a server error."""


@dataclass(frozen=True, slots=True)
class BootSetup:
    """One loaded and checked inventory directory: the inventory and its template texts.

    ``warnings`` are what serves, but maybe not as meant (an empty hostname for machines the
    inventory does not describe)."""

    inventory: Inventory
    templates: Mapping[str, str]  # by path relative to the directory
    directory: Path
    warnings: tuple[InventoryProblem, ...] = ()


def load_setup(directory: Path, extra: Sequence[tuple[Path, str]] = ()) -> BootSetup:
    """Load the inventory (and the ``extra`` files: see load_inventory) and every template it
    names; raise :class:`InventoryError`."""
    inventory = load_inventory(directory, extra)
    problems: list[InventoryProblem] = []
    warnings: list[InventoryProblem] = []
    templates: dict[str, str] = {}
    given_to_undescribed = _given_to_undescribed(inventory)
    for profile in inventory.profiles.values():
        if profile.template and method_flavour(profile.method) is None:
            problems.append(
                InventoryProblem(
                    profile.source,
                    format_key(("profiles", profile.name, "template")),
                    f"method {profile.method} uses its built-in forms (iPXE, pxelinux, GRUB); "
                    "a template would never be used",
                )
            )
        undescribed = given_to_undescribed.get(profile.name)
        named: list[tuple[tuple[str, ...], str]] = []
        if profile.template:
            named.append((("template",), profile.template))
        named += [(("files", name), path) for name, path in profile.files.items()]
        for key, relative in named:
            where = format_key(("profiles", profile.name, *key))
            try:
                text = (directory / relative).read_text()
            except (OSError, UnicodeDecodeError) as exc:
                problems.append(InventoryProblem(profile.source, where, f"{relative}: {exc}"))
                continue
            try:
                compile_template(text, relative)
            except RenderError as exc:
                # The template's own file and line say more than the profile's.
                at = Location(relative, exc.line or 1)
                problems.append(InventoryProblem(at, where, exc.reason))
                continue
            templates[relative] = text
            # At the template's own file and line, and the key that names it.
            found, warned = _variable_problems(text, where, relative, None, undescribed)
            problems += found
            warnings += warned
        where = format_key(("profiles", profile.name, "cmdline"))
        try:
            compile_template(profile.cmdline, "cmdline")
        except RenderError as exc:
            problems.append(InventoryProblem(profile.source, where, str(exc)))
            continue
        found, warned = _variable_problems(
            profile.cmdline, where, None, profile.source, undescribed, cmdline=True
        )
        problems += found
        warnings += warned
    if problems:
        raise InventoryError(at_key_lines(directory, problems))
    return BootSetup(
        inventory, MappingProxyType(templates), directory, at_key_lines(directory, warnings)
    )


def _given_to_undescribed(inventory: Inventory) -> dict[str, str]:
    """The profiles a machine the inventory does not describe can get, each with who gives it."""
    given: dict[str, list[str]] = {}
    for group in inventory.groups.values():
        given.setdefault(group.profile, []).append(f"group {group.name}")
    if inventory.default_profile is not None:
        given.setdefault(inventory.default_profile, []).append("the default")
    return {profile: ", ".join(givers) for profile, givers in given.items()}


def _variable_problems(
    text: str,
    where: str,
    file: str | None,
    source: Location | None,
    givers: str | None,
    *,
    cmdline: bool = False,
) -> tuple[list[InventoryProblem], list[InventoryProblem]]:
    """The variables ``text`` reads that no template gets (problems), and those empty for the
    undescribed machines that ``givers`` give its profile to (warnings). Each is placed at its
    line of ``file``, or at ``source`` for a text of the profile's own (the command line)."""
    problems: list[InventoryProblem] = []
    warnings: list[InventoryProblem] = []
    for use in template_uses(text):
        at = Location(file, use.line) if file is not None else source
        if (reason := unknown_variable(use, cmdline=cmdline)) is not None:
            problems.append(InventoryProblem(at, where, reason))
        elif givers and use.name in UNDESCRIBED_EMPTY and not use.tested:
            warnings.append(InventoryProblem(at, where, _empty_warning(use, givers)))
    return problems, warnings


def _empty_warning(use: NameUse, givers: str) -> str:
    return (
        f"{use.name} is empty for a machine the inventory does not describe, and {givers} "
        f"gives this profile to such machines: describe them, or write "
        f"{{{{ {use.name} or 'node-' ~ mac_dashes }}}}"
    )


@dataclass(frozen=True, slots=True)
class Seen:
    """What DHCP last learnt about one MAC."""

    arch: int | None = None
    uuid: str | None = None
    address: IPv4Address | None = None
    efi: bool = False


@dataclass(frozen=True, slots=True)
class ServerAddress:
    """Where templates tell machines to fetch things from."""

    server: str
    http_port: int = 80
    tftp_port: int = 69


class Machines:
    """The inventory in force, boot-once state and DHCP memory; answers per-machine questions."""

    def __init__(
        self, setup: BootSetup, address: ServerAddress, installed: frozenset[str] = frozenset()
    ) -> None:
        self.setup = setup
        self.address = address
        self.installed = installed
        self._seen: OrderedDict[str, Seen] = OrderedDict()
        self._by_address: dict[str, str] = {}
        self._reserved = _reservations(setup.inventory)
        # What bounds each render; the composition root gives the clock.
        self.render_limits: RenderLimits | None = None
        # Told of every remember(): a DHCP worker passes what it learns on to the process
        # that serves the files.
        self.listeners: list[Callable[[ClientInfo, IPv4Address | None], None]] = []

    def replace(self, setup: BootSetup) -> None:
        self.setup = setup
        self._reserved = _reservations(setup.inventory)

    def reservation(self, mac: str) -> tuple[str, IPv4Address] | None:
        """The machine with ``mac`` and the address reserved for it, if it has one."""
        machine = self.setup.inventory.machine_by_mac(mac)
        if machine is None or machine.address is None:
            return None
        return machine.name, machine.address

    def reserved_for(self, address: IPv4Address) -> str | None:
        """The machine ``address`` is reserved for, if any."""
        return self._reserved.get(address)

    @property
    def reserved(self) -> Mapping[IPv4Address, str]:
        return self._reserved

    def remember(self, client: ClientInfo, address: IPv4Address | None) -> None:
        for listener in self.listeners:
            listener(client, address)
        mac = client.mac.lower()
        previous = self._seen.pop(mac, None)
        if address is None and previous is not None:
            address = previous.address
        efi = client.arch is not None and client.arch != 0
        self._seen[mac] = Seen(client.arch, client.uuid, address, efi)
        if address is not None:
            self._by_address[str(address)] = mac
        while len(self._seen) > _MEMORY_LIMIT:
            _, forgotten = self._seen.popitem(last=False)
            if forgotten.address is not None:
                self._by_address.pop(str(forgotten.address), None)

    def mac_at(self, address: str | None) -> str | None:
        """The MAC that DHCP last gave ``address`` to, if it still has it."""
        if address is None:
            return None
        mac = self._by_address.get(address)
        if mac is None or str(self.seen(mac).address) != address:
            return None
        return mac

    def seen(self, mac: str) -> Seen:
        return self._seen.get(mac.lower(), Seen())

    def resolve(
        self, mac: str, *, arch: int | None = None, uuid: str | None = None
    ) -> Resolution | None:
        facts = ClientFacts(mac=mac.lower(), uuid=uuid, arch=arch)
        return resolve(self.setup.inventory, facts, installed=self.installed)

    def resolve_client(self, client: ClientInfo) -> Resolution | None:
        return self.resolve(client.mac, arch=client.arch, uuid=client.uuid)

    def _resolve_seen(self, mac: str) -> Resolution | None:
        """For a TFTP or HTTP request: with what DHCP last learnt about the MAC."""
        seen = self.seen(mac)
        return self.resolve(mac, arch=seen.arch, uuid=seen.uuid)

    def context(self, mac: str, resolution: Resolution, *, peer: str | None = None) -> BootContext:
        seen = self.seen(mac)
        machine = resolution.machine
        ip = str(seen.address) if seen.address is not None else peer
        if machine is not None and machine.address is not None:
            ip = str(machine.address)
        return BootContext(
            mac=mac.lower(),
            profile=resolution.profile,
            server=self.address.server,
            http_port=self.address.http_port,
            tftp_port=self.address.tftp_port,
            ip=ip,
            uuid=seen.uuid or (machine.uuid if machine else None),
            arch=arch_name(seen.arch),
            platform="efi" if seen.efi else "pcbios",
            machine=machine.name if machine else None,
            hostname=machine.hostname if machine else None,
            labels=machine.labels if machine else MappingProxyType({}),
        )

    def render(self, mac: str, flavour: Flavour, *, peer: str | None = None) -> str | None:
        """The boot script or config for ``mac``, or None when the inventory has no say."""
        resolution = self._resolve_seen(mac)
        if resolution is None:
            return None
        profile = resolution.profile
        custom = None
        if profile.template is not None and method_flavour(profile.method) is flavour:
            custom = self.setup.templates[profile.template]
        elif builtin_template(flavour, profile.method) is None:
            return None  # a pxelinux config asked for by a machine whose profile is iPXE, say
        context = self.context(mac, resolution, peer=peer)
        return render_boot(context, flavour, custom, self.render_limits)

    def render_file(self, mac: str, name: str, *, peer: str | None = None) -> str | None:
        """A profile's own file for ``mac`` (``preseed.cfg``, ``user-data``), or None."""
        resolution = self._resolve_seen(mac)
        if resolution is None or name not in resolution.profile.files:
            return None
        relative = resolution.profile.files[name]
        context = self.context(mac, resolution, peer=peer)
        limits = self.render_limits
        variables = boot_variables(context, limits)
        return render_text(self.setup.templates[relative], relative, variables, limits)


class BootFiles:
    """What TFTP and HTTP serve: per-machine rendered files, then the boot root."""

    def __init__(self, root: FileSource, machines: Machines) -> None:
        self.root = root
        self.machines = machines

    def open(self, name: str, peer: str | None = None) -> OpenedFile:
        try:
            text = self._render(name, peer)
        except RenderError as exc:
            raise RenderFailed(f"template failed: {exc}") from None
        if text is None:
            return self.root.open(name, peer)
        return MemoryFile(text.encode())

    def renders(self, name: str, peer: str | None = None) -> bool:
        """Whether opening ``name`` for ``peer`` renders a template (the answer may still be
        the root's file). Cheap, no template runs: callers send renders to their own workers."""
        if _PXELINUX_NAME.match(name) or _GRUB_NAME.match(name) or _MACHINE_NAME.match(name):
            return True
        for pattern in (_PXELINUX_BY_ADDRESS, _GRUB_BY_ADDRESS):
            if match := pattern.match(name):
                mac = self.machines.mac_at(peer)
                return mac is not None and _names_address(match["hex"], peer)
        return False

    def role(self, name: str, peer: str | None = None) -> Role:
        """What ``name`` is to the boot of the machine asking (named in the path, or given
        ``peer`` by DHCP): its profile's kernel and initrds are its own word, then the name."""
        match = _MACHINE_NAME.match(name) or _PXELINUX_NAME.match(name) or _GRUB_NAME.match(name)
        mac = _mac(match) if match is not None else self.machines.mac_at(peer)
        resolution = self.machines._resolve_seen(mac) if mac is not None else None
        if resolution is None:
            return file_role(name)
        profile = resolution.profile
        kernels = frozenset((_served_path(profile.kernel),) if profile.kernel else ())
        initrds = frozenset(_served_path(path) for path in profile.initrds)
        return file_role(name, kernels=kernels, initrds=initrds)

    def _render(self, name: str, peer: str | None) -> str | None:
        if match := _PXELINUX_NAME.match(name):
            return self.machines.render(_mac(match), Flavour.PXELINUX, peer=peer)
        if match := _GRUB_NAME.match(name):
            return self.machines.render(_mac(match), Flavour.GRUB, peer=peer)
        for pattern, flavour in (
            (_PXELINUX_BY_ADDRESS, Flavour.PXELINUX),
            (_GRUB_BY_ADDRESS, Flavour.GRUB),
        ):
            if match := pattern.match(name):
                mac = self.machines.mac_at(peer)
                if mac is None or not _names_address(match["hex"], peer):
                    return None
                return self.machines.render(mac, flavour, peer=peer)
        if match := _MACHINE_NAME.match(name):
            mac, file = _mac(match), match["file"]
            if file == IPXE_SCRIPT:
                text = self.machines.render(mac, Flavour.IPXE, peer=peer)
            else:
                text = self.machines.render_file(mac, file, peer=peer)
            if text is None:
                raise FileNotFound("no profile for this machine, or no such file in it")
            return text
        return None


def path_mac(name: str) -> str:
    """The MAC a per-machine path names (``m/<mac>/...``, dashes or colons), lower-case with
    colons; "" for any other path."""
    match = _MACHINE_NAME.match(name)
    return _mac(match) if match is not None else ""


def role_of(source: FileSource, name: str, peer: str | None = None) -> Role:
    """What the file ``name`` served from ``source`` to ``peer`` is to the boot, for the
    journal: by the asking machine's profile where ``source`` knows the machines."""
    if isinstance(source, BootFiles):
        return source.role(name, peer)
    return file_role(name)


def _served_path(path: str) -> str:
    """A profile's kernel or initrd as a client asks for it: the path of a URL (this server's
    own, most likely), else the path below the root."""
    if is_url(path):
        path = urlsplit(path).path
    return path.lstrip("/")


def missing_boot_files(
    inventory: Inventory, directory: Path, tree: FileTree
) -> tuple[InventoryProblem, ...]:
    """The profiles' kernels and initrds that the root does not hold (nor the system's boot
    files it serves): a machine given such a profile stops at that file. URLs are taken as
    given; another server serves them."""
    problems = []
    for profile in inventory.profiles.values():
        paths = [("initrds", path) for path in profile.initrds]
        if profile.kernel:
            paths.insert(0, ("kernel", profile.kernel))
        for key, path in paths:
            if is_url(path):
                continue
            try:
                tree.resolve(path)
            except FileLookupError as exc:
                problems.append(
                    InventoryProblem(
                        profile.source,
                        format_key(("profiles", profile.name, key)),
                        f"{path}: {exc.reason} (it is looked for below the root {tree.root})",
                    )
                )
    return at_key_lines(directory, problems)


def _reservations(inventory: Inventory) -> Mapping[IPv4Address, str]:
    return MappingProxyType(
        {m.address: m.name for m in inventory.machines.values() if m.address is not None}
    )


def _names_address(hex_prefix: str | None, peer: str | None) -> bool:
    """Whether a hex name is a prefix of the requester's own address (no hex: the catch-all)."""
    if hex_prefix is None:
        return True
    try:
        return peer is not None and f"{int(IPv4Address(peer)):08X}".startswith(hex_prefix)
    except ValueError:
        return False


def _mac(match: re.Match[str]) -> str:
    return match["mac"].lower().replace("-", ":")


log = logging.getLogger("netbootd")


def _tree_signature(directory: Path, *extra: Path) -> tuple[tuple[str, int, int], ...]:
    """What changes when any file below ``directory``, or in ``extra``, is written or replaced."""
    entries = []
    for path in [*sorted(directory.rglob("*")), *extra]:
        try:
            info = path.stat()
        except OSError:
            continue
        if path.is_file():
            entries.append((str(path), info.st_mtime_ns, info.st_size))
    return tuple(entries)


@dataclass(frozen=True, slots=True)
class Loaded:
    """The inventory and boot-once state as read again from disk."""

    setup: BootSetup
    installed: frozenset[str]
    missing: tuple[InventoryProblem, ...] = ()  # kernels and initrds the root does not hold


class LiveInventory:
    """The inventory directory as it is on disk: loaded now, and again when told it changed.

    The composition root looks for changes (:meth:`load_if_changed`, off the event loop) and
    puts a good reload in force (:meth:`adopt`). A bad edit is refused: every problem is logged
    with its file, line and key, and the last good inventory goes on serving (:meth:`keep`).
    Raises :class:`InventoryError` if the first load fails.
    """

    def __init__(
        self,
        directory: Path,
        state_dir: Path,
        address: ServerAddress,
        tree: FileTree | None = None,
    ) -> None:
        self.directory = directory
        self.installed = InstalledStore(state_dir / INSTALLED_FILE)
        # The machines the REST API adds, loaded with the directory's files as one inventory.
        self.api = ApiInventory(state_dir / API_INVENTORY_FILE)
        self.tree = tree  # where kernels and initrds are looked for, at each load
        # Taken before loading: an edit made while loading is seen as a change later.
        self._seen = self._signature()
        self.machines = Machines(
            load_setup(directory, self._extra()), address, self.installed.load()
        )
        self.missing = self._missing(self.machines.setup)
        self.journal: Journal | None = None  # told of each machine marked installed

    def _extra(self, api_file: Path | None = None) -> tuple[tuple[Path, str], ...]:
        return ((api_file or self.api.path, self.api.label),)

    def _signature(self) -> tuple[tuple[str, int, int], ...]:
        return _tree_signature(self.directory, self.installed.path, self.api.path)

    def try_api_machines(self, machines: Mapping[str, Mapping[str, object]]) -> Loaded:
        """Replace the API's machines with ``machines`` if the inventory loads whole with them:
        the file is rewritten and the loaded inventory returned, for :meth:`adopt`. Raises
        :class:`InventoryError` (the file left as it was) otherwise. Blocking."""
        trial = self.api.candidate(machines)
        try:
            setup = load_setup(self.directory, self._extra(trial))
        except BaseException:
            self.api.discard(trial)
            raise
        self.api.commit(trial)
        self._seen = self._signature()
        return Loaded(setup, self.installed.load(), self._missing(setup))

    def _missing(self, setup: BootSetup) -> tuple[InventoryProblem, ...]:
        """The kernels and initrds of ``setup`` the root does not hold. Blocking (it looks at
        files)."""
        tree = self.tree
        return () if tree is None else missing_boot_files(setup.inventory, self.directory, tree)

    @property
    def warnings(self) -> tuple[InventoryProblem, ...]:
        """What the inventory in force serves, but not as meant: the setup's warnings, and the
        kernels and initrds the root did not hold when it was loaded."""
        return (*self.machines.setup.warnings, *self.missing)

    def log_warnings(self) -> None:
        for problem in self.warnings:
            log.warning(format_event("inventory-warning", problem=str(problem)))

    def mark_installed(self, mac: str) -> str | None:
        """Boot-once: the machine with ``mac`` is installed. Its name, or None if unknown."""
        machine = self.machines.setup.inventory.machine_by_mac(mac)
        if machine is None:
            return None
        self.machines.installed = self.installed.mark(machine.name)
        if self.journal is not None:
            self.journal.inventory(Kind.INSTALLED, machine.mac or mac, machine.name)
        return machine.name

    def log_state(self, event: str) -> None:
        inventory = self.machines.setup.inventory
        log.info(
            format_event(
                event,
                directory=str(self.directory),
                machines=len(inventory.machines),
                profiles=len(inventory.profiles),
                groups=len(inventory.groups),
                default=inventory.default_profile or "-",
                installed=len(self.machines.installed),
            )
        )

    def load_if_changed(self) -> Loaded | None:
        """The directory and the boot-once file loaded again if either changed since last seen.

        Blocking (it reads files): run it off the event loop. Raises :class:`InventoryError`
        for a bad edit, which :meth:`keep` then reports; a change is seen once either way.
        """
        now = self._signature()
        if now == self._seen:
            return None
        self._seen = now
        setup = load_setup(self.directory, self._extra())
        return Loaded(setup, self.installed.load(), self._missing(setup))

    def adopt(self, loaded: Loaded) -> None:
        """Put a good reload in force (on the event loop, between two requests)."""
        self.machines.replace(loaded.setup)
        self.machines.installed = loaded.installed
        self.missing = loaded.missing
        self.log_state("inventory-reloaded")
        self.log_warnings()

    def keep(self, error: InventoryError) -> None:
        """A bad edit: say every problem, and that the last good inventory goes on serving."""
        for problem in error.problems:
            log.warning(format_event("inventory-error", problem=str(problem)))
        log.warning(
            format_event(
                "inventory-kept",
                directory=str(self.directory),
                problems=len(error.problems),
                hint="the last good inventory goes on serving",
            )
        )
