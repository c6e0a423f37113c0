"""Boot-once state: which machines have finished their boot-once profile, kept in a small file.

One JSON object (``{"installed": [names]}``) in the state directory, written whole to a temporary
file, synced, then renamed over the old one: a crash leaves the old state or the new, never half
of one. This module only keeps the names; what being installed changes is the boot policy's.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

from netbootd.boot.inventory import InventoryError, InventoryProblem, Location

# The file's name in the state directory.
INSTALLED_FILE = "installed.json"


class InstalledStore:
    """The names of the machines marked installed, in the file at ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> frozenset[str]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return frozenset()
        except (OSError, ValueError) as exc:
            raise InventoryError(
                (InventoryProblem(Location(str(self.path), 1), "installed", str(exc)),)
            ) from None
        names = data.get("installed", []) if isinstance(data, dict) else []
        return frozenset(str(name) for name in names)

    def mark(self, name: str, installed: bool = True) -> frozenset[str]:
        names = set(self.load())
        if installed:
            names.add(name)
        else:
            names.discard(name)
        self._write(frozenset(names))
        return frozenset(names)

    def _write(self, names: frozenset[str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(prefix=".installed-", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump({"installed": sorted(names)}, handle)
                handle.write("\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise
