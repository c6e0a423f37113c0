"""The API's machine file: its TOML, read back as written; a change tried before it is made."""

from __future__ import annotations

import tomllib
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netbootd.boot.inventory import InventoryError
from netbootd.services.api_inventory import API_INVENTORY_FILE, ApiInventory, to_toml, toml_value
from netbootd.services.machines import LiveInventory, ServerAddress

_VALUES = st.recursive(
    st.text() | st.integers() | st.booleans() | st.floats(allow_nan=False),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)


@given(_VALUES)
def test_a_value_reads_back_as_written(value: object) -> None:
    assert tomllib.loads(f"key = {toml_value(value)}")["key"] == value


@given(st.dictionaries(st.text(min_size=1), st.dictionaries(st.text(min_size=1), st.text())))
def test_machines_read_back_as_written(machines: dict[str, dict[str, str]]) -> None:
    assert tomllib.loads(to_toml(machines)) == ({"machines": machines} if machines else {})


SITE = """\
[profiles.web]
method = "ipxe"
kernel = "vmlinuz"

[machines.web1]
mac = "52:54:00:aa:bb:01"
address = "10.0.0.5"
"""


@pytest.fixture
def live(tmp_path: Path) -> LiveInventory:
    inventory = tmp_path / "inventory"
    inventory.mkdir()
    (inventory / "site.toml").write_text(SITE)
    return LiveInventory(inventory, tmp_path / "state", ServerAddress("10.0.0.1"))


def test_a_good_change_is_written_and_loaded(live: LiveInventory, tmp_path: Path) -> None:
    loaded = live.try_api_machines({"new1": {"mac": "52:54:00:aa:bb:02", "profile": "web"}})
    machine = loaded.setup.inventory.machines["new1"]
    assert machine.profile == "web" and live.api.owns(machine.source)
    assert not live.api.owns(loaded.setup.inventory.machines["web1"].source)
    assert ApiInventory(tmp_path / "state" / API_INVENTORY_FILE).read() == {
        "new1": {"mac": "52:54:00:aa:bb:02", "profile": "web"}
    }
    live.adopt(loaded)
    assert live.load_if_changed() is None  # the change is already the one in force


@pytest.mark.parametrize(
    ("table", "said"),
    [
        ({"mac": "52:54:00:aa:bb:01"}, "52:54:00:aa:bb:01"),
        ({"address": "10.0.0.5"}, "10.0.0.5"),
        ({"profile": "nope"}, "nope"),
        ({"mac": "zz"}, "mac"),
    ],
)
def test_a_bad_change_leaves_the_file_alone(
    live: LiveInventory, tmp_path: Path, table: dict[str, object], said: str
) -> None:
    live.try_api_machines({"ok1": {"mac": "52:54:00:aa:bb:03"}})
    before = live.api.path.read_text()
    with pytest.raises(InventoryError) as caught:
        live.try_api_machines({"ok1": {"mac": "52:54:00:aa:bb:03"}, "bad": table})
    assert said in str(caught.value) and live.api.label in str(caught.value)
    assert live.api.path.read_text() == before
    assert [p.name for p in live.api.path.parent.iterdir() if p.name.endswith(".new")] == []


def test_the_file_is_read_with_the_inventory_at_start(tmp_path: Path, live: LiveInventory) -> None:
    live.try_api_machines({"new1": {"mac": "52:54:00:aa:bb:02", "address": "10.0.0.6"}})
    again = LiveInventory(live.directory, tmp_path / "state", ServerAddress("10.0.0.1"))
    assert again.machines.reserved_for(IPv4Address("10.0.0.6")) == "new1"
