"""The part of the inventory the REST API manages: machines kept in one TOML file of the state
directory, read with the operator's inventory files and checked with them as one inventory.

The file (:data:`API_INVENTORY_FILE`) holds ``[machines.NAME]`` tables in the inventory's own
format, so what the API adds is validated exactly as a machine written by hand is (names and
MACs unique across both, the profile known, an address reserved once) and an operator can read
it. A change is tried on a copy first: only an inventory that loads whole replaces the file, by
an atomic rename. This module reads and writes that file and nothing else; when a change is put
in force, and off which loop, is the caller's.
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from netbootd.boot.inventory import InventoryError, InventoryProblem, Location

API_INVENTORY_FILE = "api-inventory.toml"

_HEADER = (
    "# Machines added through netbootd's REST API (POST/PUT/DELETE /api/v1/machines).\n"
    "# netbootd rewrites this file on every change; the inventory files are the operator's.\n"
)


class ApiInventoryError(Exception):
    """The change cannot be made as asked; ``status`` is the HTTP status that says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _escape(text: str) -> str:
    out = []
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif char == "\n":
            out.append("\\n")
        elif char == "\t":
            out.append("\\t")
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04X}")  # TOML 1.0 §String: control characters escaped
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def toml_value(value: object) -> str:
    """``value`` (a string, number, boolean, array or table of those) as a TOML value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _escape(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, Mapping):
        return (
            "{" + ", ".join(f"{_escape(str(k))} = {toml_value(v)}" for k, v in value.items()) + "}"
        )
    raise TypeError(f"no TOML form for {type(value).__name__}")


def to_toml(machines: Mapping[str, Mapping[str, object]]) -> str:
    """The file's text for ``machines`` (name -> table of keys as the inventory spells them)."""
    parts = [_HEADER]
    for name, table in machines.items():
        lines = [f"[machines.{_escape(name)}]"]
        lines += [f"{key} = {toml_value(value)}" for key, value in table.items()]
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


@dataclass(frozen=True, slots=True)
class ApiInventory:
    """The API's machine file at ``path``."""

    path: Path

    @property
    def label(self) -> str:
        """How problems and sources name the file (its absolute path)."""
        return str(self.path.absolute())

    def owns(self, source: Location | None) -> bool:
        """Whether a machine written at ``source`` is one of this file's."""
        return source is not None and source.file == self.label

    def read(self) -> dict[str, dict[str, object]]:
        """The machines of the file as written (no file: none). Blocking."""
        try:
            data = tomllib.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise InventoryError([InventoryProblem(Location(self.label, 1), "", str(exc))]) from exc
        machines = data.get("machines", {})
        if not isinstance(machines, dict):
            return {}
        return {str(k): dict(v) for k, v in machines.items() if isinstance(v, dict)}

    def candidate(self, machines: Mapping[str, Mapping[str, object]]) -> Path:
        """Write ``machines`` beside the file, to be tried; the path of the copy. Blocking."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        trial = self.path.with_name(f".{self.path.name}.{os.getpid()}.new")
        with trial.open("w") as out:
            out.write(to_toml(machines))
            out.flush()
            os.fsync(out.fileno())
        return trial

    def commit(self, trial: Path) -> None:
        """Put the tried copy in place of the file, atomically. Blocking."""
        os.replace(trial, self.path)
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename itself survives a crash
        finally:
            os.close(directory)

    @staticmethod
    def discard(trial: Path) -> None:
        trial.unlink(missing_ok=True)
