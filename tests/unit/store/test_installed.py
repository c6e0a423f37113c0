"""Boot-once state on disk: marks kept whole across writes, damage named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from netbootd.boot.inventory import InventoryError
from netbootd.store.installed import InstalledStore


def test_installed_store(tmp_path: Path) -> None:
    store = InstalledStore(tmp_path / "state" / "installed.json")
    assert store.load() == frozenset()
    assert store.mark("web1") == frozenset({"web1"})
    assert store.mark("db1") == frozenset({"web1", "db1"})
    assert store.mark("web1", installed=False) == frozenset({"db1"})
    assert json.loads(store.path.read_text()) == {"installed": ["db1"]}
    assert [p.name for p in store.path.parent.iterdir()] == ["installed.json"]  # no leftovers


def test_a_damaged_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "installed.json"
    path.write_text("{not json")
    with pytest.raises(InventoryError, match=r"installed\.json:1: installed: "):
        InstalledStore(path).load()
