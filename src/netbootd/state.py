"""``netbootd installed`` and ``netbootd leases``: the state directory, read and changed by hand.

They need no interface, root or network: only the state directory and, for what names machines,
the inventory; both from their flags, else from the config file's ``state-dir`` and
``inventory`` keys (the rest of the file is not looked at), else the defaults. They work beside
a running server: it picks a mark up by itself, and reading the leases never holds up its
writes.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from netbootd.boot.inventory import Inventory, InventoryError, Machine, normalise_mac
from netbootd.boot.journal import BootEvent, Kind, Service
from netbootd.boot.leases import Lease, LeaseState
from netbootd.config import DEFAULT_STATE_DIR, ConfigError, ConfigFile
from netbootd.services.api_inventory import API_INVENTORY_FILE, ApiInventory
from netbootd.services.inventory_files import load_inventory
from netbootd.store.installed import INSTALLED_FILE, InstalledStore
from netbootd.store.journal import JournalError, JournalStore
from netbootd.store.leases import StoreError, read_leases

# The lease database's name in the state directory.
LEASE_FILE = "leases.sqlite3"
# The boot journal's.
JOURNAL_FILE = "journal.sqlite3"


class NotDone(Exception):  # noqa: N818 - what the operator asked cannot be done as asked
    """The command understood what was asked and cannot do it; the message says why."""


@dataclass(frozen=True, slots=True)
class StatePaths:
    state_dir: Path
    inventory: Path | None


def _path_key(file: ConfigFile, key: str) -> Path | None:
    value = file.settings.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{file.where((key,))}: {key} must be a directory path (a string)")
    return Path(value)


def state_paths(
    file: ConfigFile | None, state_dir: Path | None, inventory: Path | None
) -> StatePaths:
    """The flags' directories, else the config file's, else the default state directory."""
    if file is not None:
        state_dir = state_dir or _path_key(file, "state-dir")
        inventory = inventory or _path_key(file, "inventory")
    return StatePaths(state_dir or DEFAULT_STATE_DIR, inventory)


def _inventory(paths: StatePaths, command: str) -> Inventory:
    if paths.inventory is None:
        raise ConfigError(
            f"{command} needs the inventory: --inventory DIR, or inventory in --config"
        )
    if not paths.inventory.is_dir():
        raise ConfigError(f"inventory {paths.inventory}: not a directory")
    try:
        api = ApiInventory(paths.state_dir / API_INVENTORY_FILE)
        return load_inventory(paths.inventory, ((api.path, api.label),))
    except InventoryError as exc:
        raise ConfigError(f"inventory {paths.inventory}:\n{exc}") from exc


def _own_profile(machine: Machine, inventory: Inventory) -> str:
    if machine.profile is not None:
        return f"its profile {machine.profile}"
    if inventory.groups or inventory.default_profile is not None:
        return "what its group or the default gives it"
    return "the built-in choices"


def mark_installed(paths: StatePaths, mac: str, *, again: bool = False) -> str:
    """Mark the machine with ``mac`` installed (or, ``again``, not); what changed, in a line.

    Raises :class:`ConfigError` for a bad MAC or inventory, :class:`NotDone` for a machine
    that is not there or has no boot-once profile. A mark already so changes nothing."""
    inventory = _inventory(paths, "installed")
    try:
        normalise_mac(mac)
    except ValueError:
        raise ConfigError(f"--mac {mac}: not a MAC address (like 52:54:00:12:34:56)") from None
    machine = inventory.machine_by_mac(mac)
    if machine is None:
        raise NotDone(f"no machine with MAC {mac} in the inventory {paths.inventory}")
    where = f" ({machine.source})" if machine.source is not None else ""
    if machine.boot_once is None:
        raise NotDone(
            f"machine {machine.name}{where} has no boot-once profile: it always boots "
            f"{_own_profile(machine, inventory)}, so there is nothing to mark"
        )
    store = InstalledStore(paths.state_dir / INSTALLED_FILE)
    try:
        if (machine.name in store.load()) != again:
            state = "not installed" if again else "installed"
            return f"{machine.name} is already {state}: nothing changed"
        store.mark(machine.name, installed=not again)
    except InventoryError as exc:  # the boot-once file cannot be read
        raise ConfigError(str(exc)) from exc
    except OSError as exc:
        raise NotDone(f"{store.path}: {exc.strerror or exc}") from exc
    _journal_mark(paths, Kind.AGAIN if again else Kind.INSTALLED, machine.mac or mac, machine.name)
    if again:
        return (
            f"{machine.name} boots its boot-once profile {machine.boot_once} again from its "
            "next boot on"
        )
    return (
        f"{machine.name} is installed: from its next boot on it boots "
        f"{_own_profile(machine, inventory)} instead of {machine.boot_once}"
    )


def _journal_mark(paths: StatePaths, kind: Kind, mac: str, machine: str) -> None:
    """The mark, in the boot journal of the server that uses this state directory, if it keeps
    one (a running server's writer and this one take turns at the file). The mark is made
    whatever becomes of this: the journal is for the operator's eyes."""
    path = paths.state_dir / JOURNAL_FILE
    if not path.exists():
        return
    journal = JournalStore(path)
    event = BootEvent(
        time.time(),
        normalise_mac(mac),
        "",
        Service.INVENTORY.value,
        kind.value,
        {"machine": machine},
    )
    try:
        with contextlib.suppress(JournalError):
            journal.open()
            journal.append([event])
    finally:
        journal.close()


def lease_list(paths: StatePaths) -> list[Lease]:
    """The leases in the state directory's lease database, by address."""
    path = paths.state_dir / LEASE_FILE
    try:
        return read_leases(path)
    except FileNotFoundError:
        raise NotDone(
            f"no lease database at {path}: netbootd keeps one there once it has served as the "
            "authoritative DHCP server (--dhcp-range or [[subnets]]) with this --state-dir"
        ) from None
    except StoreError as exc:
        raise NotDone(str(exc)) from exc


def machine_names(paths: StatePaths) -> dict[str, str]:
    """MAC to machine name, from the inventory if one is given; empty otherwise."""
    if paths.inventory is None:
        return {}
    inventory = _inventory(paths, "leases")
    return {m.mac: m.name for m in inventory.machines.values() if m.mac is not None}


def _remaining(seconds: float) -> str:
    if seconds <= 0:
        return "ended"
    minutes, _ = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m" if minutes else "<1m"


def _client(lease: Lease) -> str:
    kind, _, value = lease.client.partition(":")
    return f"id {value}" if kind == "id" else "mac"


def lease_rows(
    leases: Sequence[Lease],
    names: dict[str, str],
    *,
    now: float | None = None,
    everything: bool = False,
) -> tuple[list[dict[str, str]], int]:
    """The leases as rows of text, and how many ended ones were left out (unless
    ``everything``). Times are local, as the operator's clock shows them."""
    now = time.time() if now is None else now
    rows = []
    ended = 0
    for lease in leases:
        if lease.expires <= now and not everything:
            ended += 1
            continue
        infinite = lease.expires == float("inf")
        expires = (
            "never"
            if infinite
            else datetime.fromtimestamp(lease.expires).astimezone().isoformat(timespec="seconds")
        )
        rows.append(
            {
                "address": str(lease.address),
                "mac": lease.mac,
                "state": str(lease.state),
                "expires": expires,
                "left": "-" if infinite else _remaining(lease.expires - now),
                "hostname": lease.hostname or "-",
                "machine": names.get(lease.mac, "-"),
                "client": _client(lease),
            }
        )
    return rows, ended


_COLUMNS = ("address", "mac", "state", "expires", "left", "hostname", "machine", "client")


def lease_table(rows: Sequence[dict[str, str]], ended: int) -> str:
    """The rows as an aligned table with a heading, and a line on what was left out."""
    lines: list[str] = []
    if rows:
        widths = {c: max(len(c), *(len(row[c]) for row in rows)) for c in _COLUMNS}
        lines.append("  ".join(c.upper().ljust(widths[c]) for c in _COLUMNS).rstrip())
        for row in rows:
            lines.append("  ".join(row[c].ljust(widths[c]) for c in _COLUMNS).rstrip())
    bound = sum(1 for row in rows if row["state"] == LeaseState.BOUND)
    declined = sum(1 for row in rows if row["state"] == LeaseState.DECLINED)
    summary = f"{bound} bound, {declined} declined"
    if ended:
        summary += f"; {ended} ended and not shown (--all shows them)"
    lines.append(summary)
    return "\n".join(lines) + "\n"


def lease_json(rows: Sequence[dict[str, str]]) -> str:
    """The rows as JSON lines, one object per lease."""
    return "".join(json.dumps(row) + "\n" for row in rows)
