"""``netbootd installed`` and ``netbootd leases``: from the state directory and the inventory
alone, with their own flags; each error case is one line and its exit code."""

from __future__ import annotations

import asyncio
import json
import time
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from netbootd.boot.leases import Lease, LeaseState
from netbootd.cli import main
from netbootd.state import StatePaths, lease_rows, lease_table
from netbootd.store.journal import JournalStore
from netbootd.store.leases import SqliteLeaseStore

INVENTORY = """\
[profiles.installer]
method = "ipxe"
kernel = "installer/linux"

[profiles.disk]
method = "local"

[machines.web1]
mac = "52:54:00:aa:bb:01"
profile = "disk"
boot-once = "installer"

[machines.db1]
mac = "52:54:00:aa:bb:02"
profile = "disk"
"""


@pytest.fixture
def site(tmp_path: Path) -> Path:
    (tmp_path / "inventory").mkdir()
    (tmp_path / "inventory" / "site.toml").write_text(INVENTORY)
    return tmp_path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_installed_needs_only_the_inventory_and_the_state_dir(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    where = ["--inventory", str(site / "inventory"), "--state-dir", str(site / "state")]
    code, out, err = run(capsys, "installed", *where, "--mac", "52-54-00-AA-BB-01")
    assert (code, err) == (0, "")
    assert (
        out == "web1 is installed: from its next boot on it boots its profile disk instead of "
        "installer\n"
    )
    assert json.loads((site / "state" / "installed.json").read_text()) == {"installed": ["web1"]}
    code, out, _ = run(capsys, "installed", *where, "--mac", "52:54:00:aa:bb:01")
    assert (code, out) == (0, "web1 is already installed: nothing changed\n")
    code, out, _ = run(capsys, "installed", *where, "--mac", "52:54:00:aa:bb:01", "--again")
    assert (code, out) == (
        0,
        "web1 boots its boot-once profile installer again from its next boot on\n",
    )
    assert json.loads((site / "state" / "installed.json").read_text()) == {"installed": []}


def test_installed_knows_the_apis_machines(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (site / "state").mkdir()
    (site / "state" / "api-inventory.toml").write_text(
        '[machines."new1"]\nmac = "52:54:00:aa:bb:07"\nprofile = "disk"\nboot-once = "installer"\n'
    )
    where = ["--inventory", str(site / "inventory"), "--state-dir", str(site / "state")]
    code, out, err = run(capsys, "installed", *where, "--mac", "52:54:00:aa:bb:07")
    assert (code, err) == (0, "")
    assert out.startswith("new1 is installed")


def test_installed_and_again_go_into_the_servers_journal(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With a journal file in the state directory (a server keeps one), each mark made is an
    event in it; with none, no journal is made."""
    where = ["--inventory", str(site / "inventory"), "--state-dir", str(site / "state")]
    assert run(capsys, "installed", *where, "--mac", "52:54:00:aa:bb:01")[0] == 0
    assert not (site / "state" / "journal.sqlite3").exists()
    journal = JournalStore(site / "state" / "journal.sqlite3")
    journal.open()
    journal.close()
    assert run(capsys, "installed", *where, "--mac", "52:54:00:aa:bb:01", "--again")[0] == 0
    assert run(capsys, "installed", *where, "--mac", "52:54:00:aa:bb:01", "--again")[0] == 0
    assert run(capsys, "installed", *where, "--mac", "52-54-00-AA-BB-01")[0] == 0
    events = journal.events()
    assert [(e.mac, e.service, e.kind, dict(e.fields)) for e in events] == [
        ("52:54:00:aa:bb:01", "inventory", "again", {"machine": "web1"}),
        ("52:54:00:aa:bb:01", "inventory", "installed", {"machine": "web1"}),
    ]  # the mark that changed nothing is not a step


def test_installed_reads_its_directories_from_the_config_file(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The file's other keys are not looked at: no interface here is needed or checked.
    config = site / "netbootd.toml"
    config.write_text(
        f'interface = "no-such-nic"\nroot = "/nowhere"\n'
        f'inventory = "{site / "inventory"}"\nstate-dir = "{site / "state"}"\n'
    )
    code, out, err = run(capsys, "installed", "--config", str(config), "--mac", "52:54:00:aa:bb:01")
    assert (code, err) == (0, "")
    assert out.startswith("web1 is installed")
    assert (site / "state" / "installed.json").exists()


@pytest.mark.parametrize(
    ("extra", "code", "message"),
    [
        (
            ["--mac", "52:54:00:aa:bb:02"],
            1,
            "netbootd: machine db1 (site.toml:13) has no boot-once profile: it always boots its "
            "profile disk, so there is nothing to mark\n",
        ),
        (
            ["--mac", "52:54:00:00:00:00"],
            1,
            "netbootd: no machine with MAC 52:54:00:00:00:00 in the inventory {inventory}\n",
        ),
        (
            ["--mac", "52:54:zz"],
            2,
            "netbootd: config error: --mac 52:54:zz: not a MAC address (like 52:54:00:12:34:56)\n",
        ),
    ],
)
def test_installed_errors(
    site: Path, capsys: pytest.CaptureFixture[str], extra: list[str], code: int, message: str
) -> None:
    inventory = site / "inventory"
    where = ["--inventory", str(inventory), "--state-dir", str(site / "state")]
    assert run(capsys, "installed", *where, *extra) == (
        code,
        "",
        message.format(inventory=inventory),
    )
    assert not (site / "state" / "installed.json").exists()


def test_installed_without_an_inventory_or_with_a_bad_one(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = ["--state-dir", str(site / "state")]
    code, _, err = run(capsys, "installed", *state, "--mac", "52:54:00:aa:bb:01")
    assert (code, err) == (
        2,
        "netbootd: config error: installed needs the inventory: --inventory DIR, or inventory "
        "in --config\n",
    )
    code, _, err = run(
        capsys, "installed", *state, "--inventory", str(site / "none"), "--mac", "52:54:00:aa:bb:01"
    )
    assert (code, err) == (
        2,
        f"netbootd: config error: inventory {site / 'none'}: not a directory\n",
    )
    (site / "inventory" / "site.toml").write_text(INVENTORY + "[machines.web2]\nmac = 7\n")
    code, _, err = run(
        capsys,
        "installed",
        *state,
        "--inventory",
        str(site / "inventory"),
        "--mac",
        "52:54:00:aa:bb:01",
    )
    assert code == 2 and "site.toml:17: machines.web2.mac: expected a string" in err, err


def test_state_commands_take_only_their_own_flags(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("installed", "leases"):
        with pytest.raises(SystemExit) as exited:
            main([command, "--interface", "eth0", "--mac", "52:54:00:aa:bb:01"])
        assert exited.value.code == 2
        assert "unrecognized arguments: --interface" in capsys.readouterr().err
        with pytest.raises(SystemExit):
            main([command, "--help"])
        shown = capsys.readouterr().out
        assert "--state-dir" in shown and "--inventory" in shown
        assert "--root" not in shown and "--tftp" not in shown and "--dhcp-range" not in shown


def lease_list(path: Path, leases: list[Lease]) -> None:
    async def write() -> None:
        store = SqliteLeaseStore(path)
        await store.open()
        for lease in leases:
            await store.save(lease)
        await store.close()

    asyncio.run(write())


def test_leases_lists_the_state_dirs_leases(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    now = time.time()
    state = site / "state"
    state.mkdir()
    lease_list(
        state / "leases.sqlite3",
        [
            Lease(
                IPv4Address("10.99.0.101"),
                "mac:52:54:00:aa:bb:01",
                "52:54:00:aa:bb:01",
                LeaseState.BOUND,
                now + 3000,
                "web1",
            ),
            Lease(
                IPv4Address("10.99.0.100"),
                "id:01:52:54",
                "52:54:00:aa:bb:09",
                LeaseState.BOUND,
                now + 93_600,
            ),
            Lease(
                IPv4Address("10.99.0.102"),
                "mac:52:54:00:aa:bb:03",
                "52:54:00:aa:bb:03",
                LeaseState.BOUND,
                now - 10,
            ),
            Lease(
                IPv4Address("10.99.0.103"),
                "mac:52:54:00:aa:bb:04",
                "52:54:00:aa:bb:04",
                LeaseState.DECLINED,
                now + 600,
            ),
        ],
    )
    where = ["--state-dir", str(state), "--inventory", str(site / "inventory")]
    code, out, err = run(capsys, "leases", *where)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split() == [
        "ADDRESS",
        "MAC",
        "STATE",
        "EXPIRES",
        "LEFT",
        "HOSTNAME",
        "MACHINE",
        "CLIENT",
    ]
    assert [line.split()[0] for line in lines[1:4]] == ["10.99.0.100", "10.99.0.101", "10.99.0.103"]
    assert lines[1].split()[4:] == ["1d1h", "-", "-", "id", "01:52:54"]
    assert lines[2].split()[2] == "bound" and lines[2].split()[5:] == ["web1", "web1", "mac"]
    assert lines[2].split()[4] in ("49m", "50m")
    assert lines[-1] == "2 bound, 1 declined; 1 ended and not shown (--all shows them)"

    code, out, _ = run(capsys, "leases", *where, "--all", "--json")
    rows = [json.loads(line) for line in out.splitlines()]
    assert [row["address"] for row in rows] == [
        "10.99.0.100",
        "10.99.0.101",
        "10.99.0.102",
        "10.99.0.103",
    ]
    assert rows[2]["left"] == "ended" and rows[1]["machine"] == "web1"


def test_leases_errors(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = site / "state"
    code, out, err = run(capsys, "leases", "--state-dir", str(state))
    assert (code, out) == (1, "")
    assert err.startswith(f"netbootd: no lease database at {state / 'leases.sqlite3'}: ")
    state.mkdir()
    (state / "leases.sqlite3").write_text("not a database, but text\n" * 100)
    code, _, err = run(capsys, "leases", "--state-dir", str(state))
    assert code == 1 and "not a lease database" in err, err


def test_an_empty_lease_table_still_says_so() -> None:
    rows, ended = lease_rows([], {}, now=0.0)
    assert lease_table(rows, ended) == "0 bound, 0 declined\n"
    assert StatePaths(Path("/s"), None).inventory is None
