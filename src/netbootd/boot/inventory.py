"""The machine inventory: the machines, profiles and groups an operator described, and what each
client boots by them.

Pure: the model is frozen values; :func:`resolve` picks the profile for one client and says why,
:func:`check` finds the inconsistencies that a loader must refuse. Nothing here reads files,
renders templates or logs; the loader (``netbootd.services.inventory_files``) builds these values
from TOML and reports where each one was written.
"""

from __future__ import annotations

import re
import uuid as uuidlib
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from ipaddress import IPv4Address
from pathlib import PurePosixPath
from types import MappingProxyType
from typing import TypeVar

from netbootd.boot.client import ARCH_CLASS, BootClass, BootKey, ClientInfo, boot_key_name

__all__ = [
    "ClientFacts",
    "Group",
    "Inventory",
    "InventoryError",
    "InventoryProblem",
    "Location",
    "Machine",
    "Method",
    "Profile",
    "Resolution",
    "Selector",
    "check",
    "format_key",
    "normalise_mac",
    "normalise_mac_pattern",
    "normalise_uuid",
    "resolve",
]

_K = TypeVar("_K")
_V = TypeVar("_V")


def _frozen(mapping: Mapping[_K, _V]) -> Mapping[_K, _V]:
    return MappingProxyType(dict(mapping))


def _empty_mapping() -> Mapping[str, str]:
    return MappingProxyType({})


class Method(StrEnum):
    """How a profile boots a machine."""

    IPXE = "ipxe"  # an iPXE script
    PXELINUX = "pxelinux"  # a pxelinux config
    GRUB = "grub"  # a grub.cfg
    LOCAL = "local"  # boot the local disk
    EXIT = "exit"  # hand back to the firmware's next boot device

    @property
    def boots_kernel(self) -> bool:
        """Whether the method loads something (a kernel, or whatever its template says)."""
        return self in (Method.IPXE, Method.PXELINUX, Method.GRUB)


@dataclass(frozen=True, slots=True)
class Location:
    """Where something was written: a file relative to the inventory directory, and a line."""

    file: str
    line: int  # 1-based

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


def _at(source: Location | None) -> str:
    return f" ({source})" if source is not None else ""


# --- MACs and UUIDs -------------------------------------------------------------------------

_MAC = re.compile(r"^[0-9a-f]{2}(?::[0-9a-f]{2}){5}$")
_MAC_PREFIX = re.compile(r"^(?:[0-9a-f]{2}:){1,5}\*$")


def _mac_text(text: str) -> str:
    return text.strip().lower().replace("-", ":")


def normalise_mac(text: str) -> str:
    """``52-54-00-AA-BB-01`` -> ``52:54:00:aa:bb:01``; ValueError says what a MAC looks like."""
    mac = _mac_text(text)
    if not _MAC.match(mac):
        raise ValueError(f"{text!r} is not a MAC address (six hex octets, like 52:54:00:12:34:56)")
    return mac


def normalise_mac_pattern(text: str) -> str:
    """A full MAC, or 1 to 5 leading octets and ``*`` (``52:54:00:*``), normalised."""
    mac = _mac_text(text)
    if not (_MAC.match(mac) or _MAC_PREFIX.match(mac)):
        raise ValueError(
            f"{text!r} is not a MAC address or prefix (like 52:54:00:12:34:56, or 52:54:00:* "
            "for the machines whose MAC starts with those whole octets)"
        )
    return mac


def normalise_uuid(text: str) -> str:
    """Any form :class:`uuid.UUID` reads, as canonical lower-case 8-4-4-4-12 text."""
    try:
        return str(uuidlib.UUID(text.strip()))
    except ValueError:
        raise ValueError(
            f"{text!r} is not a UUID (32 hex digits, like 12345678-9abc-def0-1234-56789abcdef0)"
        ) from None


def _loose_mac(text: str) -> str:
    # What a client says is taken as it comes: an odd hardware address finds no machine, it is
    # not an error.
    try:
        return normalise_mac(text)
    except ValueError:
        return _mac_text(text)


def _loose_uuid(text: str) -> str:
    try:
        return normalise_uuid(text)
    except ValueError:
        return text.strip().lower()


def _mac_matches(pattern: str, mac: str) -> bool:
    if pattern.endswith("*"):
        return mac.startswith(pattern[:-1])
    return mac == pattern


def _mac_patterns_overlap(a: str, b: str) -> bool:
    # A prefix stem ends with ':' and a full MAC has none, so "one stem starts with the other"
    # is exactly "some MAC matches both".
    stem_a, stem_b = a.removesuffix("*"), b.removesuffix("*")
    return stem_a.startswith(stem_b) or stem_b.startswith(stem_a)


# --- architecture keys ----------------------------------------------------------------------


def _arch_matches(key: BootKey, arch: int) -> bool:
    if isinstance(key, BootClass):
        return ARCH_CLASS.get(arch) == key
    return arch == key


def _arch_keys_overlap(a: BootKey, b: BootKey) -> bool:
    if isinstance(a, BootClass):
        return a == b if isinstance(b, BootClass) else ARCH_CLASS.get(b) == a
    if isinstance(b, BootClass):
        return ARCH_CLASS.get(a) == b
    return a == b


# --- the model ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Profile:
    """One way of booting: a method and what it loads."""

    name: str
    method: Method
    kernel: str | None = None  # a path below the boot root, or an http:// or https:// URL
    initrds: tuple[str, ...] = ()  # same
    cmdline: str = ""  # a Jinja2 template, rendered elsewhere
    template: str | None = None  # the boot script/config template, relative to the inventory
    # Per-machine file name -> template file (relative to the inventory): kickstart, preseed...
    files: Mapping[str, str] = field(default_factory=_empty_mapping, hash=False)
    source: Location | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", Method(self.method))
        object.__setattr__(self, "initrds", tuple(self.initrds))
        object.__setattr__(self, "files", _frozen(self.files))


@dataclass(frozen=True, slots=True)
class Machine:
    """One described machine. MAC and UUID are normalised on construction (ValueError if bad)."""

    name: str
    mac: str | None = None  # lower-case, colon-separated
    uuid: str | None = None  # canonical lower-case 8-4-4-4-12
    hostname: str | None = None
    address: IPv4Address | None = None
    labels: Mapping[str, str] = field(default_factory=_empty_mapping, hash=False)
    profile: str | None = None
    boot_once: str | None = None  # booted until the machine is marked installed
    source: Location | None = None

    def __post_init__(self) -> None:
        if self.mac is not None:
            object.__setattr__(self, "mac", normalise_mac(self.mac))
        if self.uuid is not None:
            object.__setattr__(self, "uuid", normalise_uuid(self.uuid))
        object.__setattr__(self, "labels", _frozen(self.labels))


@dataclass(frozen=True, slots=True)
class Selector:
    """Which clients a group takes. Every field that is set must match; an empty one is not set.

    ``macs`` holds full MACs and prefixes written ``52:54:00:*`` (normalised on construction).
    """

    macs: tuple[str, ...] = ()
    uuids: tuple[str, ...] = ()
    archs: tuple[BootKey, ...] = ()
    labels: Mapping[str, str] = field(default_factory=_empty_mapping, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "macs", tuple(normalise_mac_pattern(m) for m in self.macs))
        object.__setattr__(self, "uuids", tuple(normalise_uuid(u) for u in self.uuids))
        object.__setattr__(self, "archs", tuple(self.archs))
        object.__setattr__(self, "labels", _frozen(self.labels))

    def specificity(self) -> tuple[int, int, int, int]:
        """(has MACs, has UUIDs, number of labels, has archs): the bigger, the more specific."""
        return (
            int(bool(self.macs)),
            int(bool(self.uuids)),
            len(self.labels),
            int(bool(self.archs)),
        )

    def match(
        self, mac: str, uuid: str | None, arch: int | None, labels: Mapping[str, str]
    ) -> str | None:
        """What matched, in words, or None when the client is not selected.

        ``mac`` and ``uuid`` are expected normalised; ``labels`` are the machine's (none for a
        client the inventory does not describe).
        """
        said: list[str] = []
        if self.macs:
            mac_hit = next((m for m in self.macs if _mac_matches(m, mac)), None)
            if mac_hit is None:
                return None
            said.append(f"MAC {mac_hit}")
        if self.uuids:
            if uuid is None or uuid not in self.uuids:
                return None
            said.append(f"UUID {uuid}")
        if self.labels:
            if any(labels.get(key) != value for key, value in self.labels.items()):
                return None
            said.append("labels " + " ".join(f"{k}={v}" for k, v in self.labels.items()))
        if self.archs:
            arch_hit = (
                None
                if arch is None
                else next((k for k in self.archs if _arch_matches(k, arch)), None)
            )
            if arch_hit is None:
                return None
            said.append(f"arch {boot_key_name(arch_hit)}")
        return ", ".join(said) if said else "it selects every client"

    def can_overlap(self, other: Selector) -> bool:
        """Whether some client could be selected by both.

        Only a field set on both sides can keep them apart: MACs that no address matches both,
        UUID sets without a common one, architecture keys that no type satisfies both, or one
        label key asked with two different values.
        """
        if (
            self.macs
            and other.macs
            and not any(_mac_patterns_overlap(a, b) for a in self.macs for b in other.macs)
        ):
            return False
        if self.uuids and other.uuids and not set(self.uuids) & set(other.uuids):
            return False
        if (
            self.archs
            and other.archs
            and not any(_arch_keys_overlap(a, b) for a in self.archs for b in other.archs)
        ):
            return False
        return not any(
            key in other.labels and other.labels[key] != value for key, value in self.labels.items()
        )


@dataclass(frozen=True, slots=True)
class Group:
    """Clients that a selector takes boot the group's profile."""

    name: str
    selector: Selector
    profile: str
    source: Location | None = None


@dataclass(frozen=True, slots=True)
class Inventory:
    """Everything the operator described, by name, in file order.

    The MAC and UUID indexes are built once, on construction; a MAC or UUID that two machines
    share (which :func:`check` reports) finds the first.
    """

    profiles: Mapping[str, Profile] = field(default_factory=dict, hash=False)
    machines: Mapping[str, Machine] = field(default_factory=dict, hash=False)
    groups: Mapping[str, Group] = field(default_factory=dict, hash=False)
    default_profile: str | None = None
    default_source: Location | None = None
    _by_mac: Mapping[str, Machine] = field(init=False, repr=False, compare=False, hash=False)
    _by_uuid: Mapping[str, Machine] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "profiles", _frozen(self.profiles))
        object.__setattr__(self, "machines", _frozen(self.machines))
        object.__setattr__(self, "groups", _frozen(self.groups))
        by_mac: dict[str, Machine] = {}
        by_uuid: dict[str, Machine] = {}
        for machine in self.machines.values():
            if machine.mac is not None:
                by_mac.setdefault(machine.mac, machine)
            if machine.uuid is not None:
                by_uuid.setdefault(machine.uuid, machine)
        object.__setattr__(self, "_by_mac", MappingProxyType(by_mac))
        object.__setattr__(self, "_by_uuid", MappingProxyType(by_uuid))

    def machine_by_mac(self, mac: str) -> Machine | None:
        """The machine with this MAC, written in any case, with ':' or '-'."""
        return self._by_mac.get(_loose_mac(mac))

    def machine_by_uuid(self, uuid: str) -> Machine | None:
        return self._by_uuid.get(_loose_uuid(uuid))


# --- resolution -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClientFacts:
    """What DHCP, TFTP or HTTP know about a client."""

    mac: str
    uuid: str | None = None
    arch: int | None = None  # option 93 architecture type

    @classmethod
    def from_client(cls, client: ClientInfo) -> ClientFacts:
        return cls(mac=client.mac, uuid=client.uuid, arch=client.arch)


@dataclass(frozen=True, slots=True)
class Resolution:
    """The profile a client boots, who chose it, and why, in sentences for explain output."""

    profile: Profile
    machine: Machine | None
    group: Group | None
    reasons: tuple[str, ...]

    @property
    def chosen(self) -> bool:
        """Whether a machine or a group of its own chose the profile: the inventory's default
        profile is for every client, so it does not make the decision this machine's."""
        return self.machine is not None or self.group is not None


def _profile(inventory: Inventory, name: str, chooser: str) -> Profile:
    try:
        return inventory.profiles[name]
    except KeyError:
        # The loader refuses such an inventory (check() reports it); meeting one is a bug.
        raise LookupError(
            f"{chooser} names profile {name!r}, which the inventory does not define"
        ) from None


def _find_machine(
    inventory: Inventory, mac: str, uuid: str | None, reasons: list[str]
) -> Machine | None:
    machine = inventory.machine_by_mac(mac)
    if machine is not None:
        reasons.append(f"machine {machine.name}{_at(machine.source)} matched by MAC {mac}")
        return machine
    if uuid is not None:
        machine = inventory.machine_by_uuid(uuid)
        if machine is not None:
            reasons.append(f"machine {machine.name}{_at(machine.source)} matched by UUID {uuid}")
            return machine
    reasons.append(f"no machine has MAC {mac}" + (f" or UUID {uuid}" if uuid else ""))
    return None


def _group_reason(group: Group, said: str, rivals: list[Group]) -> str:
    text = f"group {group.name}{_at(group.source)} matched: {said}"
    mine = group.selector.specificity()
    beaten = [r.name for r in rivals if r.selector.specificity() < mine]
    tied = [r.name for r in rivals if r.selector.specificity() == mine]
    if beaten:
        text += "; more specific than " + ", ".join(f"group {name}" for name in beaten)
    if tied:
        text += "; tied with " + ", ".join(f"group {name}" for name in tied)
        text += " (defined later)"
    return text


def resolve(
    inventory: Inventory, facts: ClientFacts, *, installed: Collection[str] = ()
) -> Resolution | None:
    """The profile this client boots by the inventory, or None: the inventory does not decide.

    In order: the machine's boot-once profile until it is ``installed``, the machine's own
    profile, the most specific matching group (the first of equals), the default profile.
    """
    mac = _loose_mac(facts.mac)
    uuid = _loose_uuid(facts.uuid) if facts.uuid else None
    reasons: list[str] = []
    machine = _find_machine(inventory, mac, uuid, reasons)
    if machine is not None:
        if machine.boot_once is not None:
            if machine.name not in installed:
                reasons.append(f"boot-once: {machine.boot_once} until installed")
                profile = _profile(inventory, machine.boot_once, f"machine {machine.name}")
                return Resolution(profile, machine, None, tuple(reasons))
            reasons.append(f"boot-once {machine.boot_once} is over: {machine.name} is installed")
        if machine.profile is not None:
            reasons.append(f"profile {machine.profile} named by machine {machine.name}")
            profile = _profile(inventory, machine.profile, f"machine {machine.name}")
            return Resolution(profile, machine, None, tuple(reasons))
        reasons.append(f"machine {machine.name} names no profile")
    labels = machine.labels if machine is not None else _empty_mapping()
    matched: list[tuple[Group, str]] = []
    for group in inventory.groups.values():
        said = group.selector.match(mac, uuid, facts.arch, labels)
        if said is not None:
            matched.append((group, said))
    if matched:
        # max() keeps the first of equals: file order breaks a tie (check() reports ties).
        winner, said = max(matched, key=lambda hit: hit[0].selector.specificity())
        rivals = [group for group, _ in matched if group is not winner]
        reasons.append(_group_reason(winner, said, rivals))
        reasons.append(f"profile {winner.profile} named by group {winner.name}")
        profile = _profile(inventory, winner.profile, f"group {winner.name}")
        return Resolution(profile, machine, winner, tuple(reasons))
    if inventory.groups:
        reasons.append("no group matches")
    if inventory.default_profile is not None:
        reasons.append(f"default profile {inventory.default_profile}")
        profile = _profile(inventory, inventory.default_profile, "the default")
        return Resolution(profile, machine, None, tuple(reasons))
    return None


# --- consistency ----------------------------------------------------------------------------

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def format_key(path: Iterable[str]) -> str:
    """A key path as TOML writes it: ``machines.web1.mac``, ``profiles."a.b".files``."""
    parts = []
    for part in path:
        if _BARE_KEY.match(part):
            parts.append(part)
        else:
            escaped = "".join(
                "\\" + c if c in '"\\' else c if c >= " " and c != "\x7f" else f"\\u{ord(c):04x}"
                for c in part
            )
            parts.append(f'"{escaped}"')
    return ".".join(parts)


@dataclass(frozen=True, slots=True)
class InventoryProblem:
    """One reason an inventory cannot be used, for the operator: where, which key, what."""

    location: Location | None
    key: str  # a dotted key path, as written in the files: "machines.web1.profile"
    message: str

    def __str__(self) -> str:
        parts = [str(self.location)] if self.location is not None else []
        if self.key:
            parts.append(self.key)
        parts.append(self.message)
        return ": ".join(parts)


class InventoryError(Exception):
    """The inventory cannot be used. ``str()`` is every problem, one per line."""

    def __init__(self, problems: Iterable[InventoryProblem]) -> None:
        self.problems: tuple[InventoryProblem, ...] = tuple(problems)
        super().__init__("\n".join(str(problem) for problem in self.problems))

    def __reduce__(self) -> tuple[type[InventoryError], tuple[tuple[InventoryProblem, ...]]]:
        return (InventoryError, (self.problems,))


def _file_order(problem: InventoryProblem) -> tuple[int, tuple[str, ...], int]:
    if problem.location is None:
        return (1, (), 0)
    return (0, PurePosixPath(problem.location.file).parts, problem.location.line)


def _missing_profile(
    inventory: Inventory, name: str, source: Location | None, path: tuple[str, ...]
) -> InventoryProblem | None:
    if name in inventory.profiles:
        return None
    known = ", ".join(inventory.profiles)
    hint = f"profiles: {known}" if known else "no profile is defined"
    return InventoryProblem(source, format_key(path), f"no profile {name!r} ({hint})")


def _machine_problems(inventory: Inventory) -> list[InventoryProblem]:
    problems: list[InventoryProblem] = []
    seen: dict[tuple[str, str], Machine] = {}
    for machine in inventory.machines.values():
        here = ("machines", machine.name)
        for key, name in (("boot-once", machine.boot_once), ("profile", machine.profile)):
            if name is not None:
                missing = _missing_profile(inventory, name, machine.source, (*here, key))
                if missing is not None:
                    problems.append(missing)
        if machine.mac is None and machine.uuid is None:
            problems.append(
                InventoryProblem(
                    machine.source,
                    format_key(here),
                    "a machine needs a mac or a uuid, or no client is ever recognised as it",
                )
            )
        identities = (
            ("mac", "MAC", machine.mac),
            ("uuid", "UUID", machine.uuid),
            ("hostname", "hostname", machine.hostname.lower() if machine.hostname else None),
            ("address", "address", str(machine.address) if machine.address else None),
        )
        for key, what, value in identities:
            if value is None:
                continue
            first = seen.setdefault((key, value), machine)
            if first is not machine:
                problems.append(
                    InventoryProblem(
                        machine.source,
                        format_key((*here, key)),
                        f"machine {first.name}{_at(first.source)} has the same {what} {value}",
                    )
                )
    return problems


def _group_problems(inventory: Inventory) -> list[InventoryProblem]:
    problems: list[InventoryProblem] = []
    groups = list(inventory.groups.values())
    for index, group in enumerate(groups):
        missing = _missing_profile(
            inventory, group.profile, group.source, ("groups", group.name, "profile")
        )
        if missing is not None:
            problems.append(missing)
        for earlier in groups[:index]:
            if earlier.selector.specificity() != group.selector.specificity():
                continue
            if not earlier.selector.can_overlap(group.selector):
                continue
            problems.append(
                InventoryProblem(
                    group.source,
                    format_key(("groups", group.name, "match")),
                    f"ties with group {earlier.name}{_at(earlier.source)}: both selectors are "
                    "equally specific and can match the same machine, so the winner would "
                    "depend on file order (make one more specific, or the two disjoint)",
                )
            )
    return problems


def check(inventory: Inventory) -> list[InventoryProblem]:
    """Everything that makes the inventory unusable or ambiguous, in file order."""
    problems: list[InventoryProblem] = []
    for profile in inventory.profiles.values():
        if profile.method.boots_kernel and profile.kernel is None and profile.template is None:
            problems.append(
                InventoryProblem(
                    profile.source,
                    format_key(("profiles", profile.name, "method")),
                    f"method {profile.method} needs a kernel or a template",
                )
            )
    problems.extend(_machine_problems(inventory))
    problems.extend(_group_problems(inventory))
    if inventory.default_profile is not None:
        missing = _missing_profile(
            inventory, inventory.default_profile, inventory.default_source, ("default", "profile")
        )
        if missing is not None:
            problems.append(missing)
    return sorted(problems, key=_file_order)
