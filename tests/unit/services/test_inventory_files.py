"""The inventory loader: TOML files in, checked values out, and errors that say file:line: key."""

from __future__ import annotations

import textwrap
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from netbootd.boot.client import BootClass
from netbootd.boot.inventory import (
    ClientFacts,
    InventoryError,
    InventoryProblem,
    Location,
    Method,
    Selector,
    resolve,
)
from netbootd.services.inventory_files import load_inventory


def toml(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(toml(text))
    return root


def errors(root: Path, files: dict[str, str]) -> list[str]:
    write(root, files)
    with pytest.raises(InventoryError) as caught:
        load_inventory(root)
    assert str(caught.value) == "\n".join(str(p) for p in caught.value.problems)
    return [str(p) for p in caught.value.problems]


PROFILES = """
[profiles.debian-install]
method = "ipxe"
kernel = "debian/linux"
initrds = ["debian/initrd.gz", "https://mirror.example/firmware.cpio.gz"]
cmdline = "auto=true url={{ files_url }}/preseed.cfg console=ttyS0"
template = "templates/custom.ipxe"

[profiles.debian-install.files]
"preseed.cfg" = "templates/preseed.cfg.j2"

[profiles.rescue]
method = "pxelinux"
kernel = "http://10.0.0.1/rescue/vmlinuz"
initrd = "rescue/initrd.img"

[profiles.disk]
method = "local"

[profiles."web.os"]
method = "grub"
template = "templates/grub.cfg.j2"
"""

MACHINES = """
# The web tier.
machines.web2.mac = "52:54:00:aa:bb:02"

[machines.web1]
mac = "52-54-00-AA-BB-01"
uuid = "12345678123456781234567812345678"
hostname = "web1.example"
address = "10.99.0.50"
labels = { role = "web", rack = "r1" }
profile = "web.os"
boot-once = "debian-install"
"""

GROUPS = """
[groups.web]
profile = "web.os"
match = { labels = { role = "web" } }

[groups.bios-lab]
profile = "rescue"
match.arch = ["bios", "arch-7"]
match.mac = "52:54:00:*"

[groups.all]
profile = "disk"

[default]
profile = "rescue"
"""


@pytest.fixture
def valid(tmp_path: Path) -> Path:
    root = write(
        tmp_path,
        {
            "profiles.toml": PROFILES,
            "machines/web.toml": MACHINES,
            "machines/groups/lab.toml": GROUPS,
            "README.md": "# not TOML [at all\n",
            ".hidden/broken.toml": "this is [not toml",
        },
    )
    for template in ("custom.ipxe", "preseed.cfg.j2", "grub.cfg.j2"):
        (root / "templates").mkdir(exist_ok=True)
        (root / "templates" / template).write_text("#!ipxe\n")
    return root


# --- a valid directory ----------------------------------------------------------------------


def test_full_directory(valid: Path) -> None:
    inv = load_inventory(valid)
    assert list(inv.profiles) == ["debian-install", "rescue", "disk", "web.os"]
    assert list(inv.machines) == ["web2", "web1"]
    assert list(inv.groups) == ["web", "bios-lab", "all"]
    assert inv.default_profile == "rescue"
    assert inv.default_source == Location("machines/groups/lab.toml", 13)

    install = inv.profiles["debian-install"]
    assert install.method is Method.IPXE
    assert install.kernel == "debian/linux"
    assert install.initrds == ("debian/initrd.gz", "https://mirror.example/firmware.cpio.gz")
    assert install.cmdline == "auto=true url={{ files_url }}/preseed.cfg console=ttyS0"
    assert install.template == "templates/custom.ipxe"
    assert dict(install.files) == {"preseed.cfg": "templates/preseed.cfg.j2"}
    assert install.source == Location("profiles.toml", 1)
    rescue = inv.profiles["rescue"]
    assert (rescue.initrds, rescue.source) == (
        ("rescue/initrd.img",),
        Location("profiles.toml", 11),
    )
    assert inv.profiles["web.os"].source == Location("profiles.toml", 19)

    web1 = inv.machines["web1"]
    assert web1.mac == "52:54:00:aa:bb:01"
    assert web1.uuid == "12345678-1234-5678-1234-567812345678"
    assert web1.hostname == "web1.example"
    assert web1.address == IPv4Address("10.99.0.50")
    assert dict(web1.labels) == {"role": "web", "rack": "r1"}
    assert (web1.profile, web1.boot_once) == ("web.os", "debian-install")
    assert web1.source == Location("machines/web.toml", 4)
    assert inv.machines["web2"].source == Location("machines/web.toml", 2)

    assert inv.groups["web"].selector == Selector(labels={"role": "web"})
    lab = inv.groups["bios-lab"]
    assert lab.selector == Selector(macs=("52:54:00:*",), archs=(BootClass.BIOS, 7))
    assert lab.source == Location("machines/groups/lab.toml", 5)
    assert inv.groups["all"].selector == Selector()


def test_loaded_inventory_resolves(valid: Path) -> None:
    inv = load_inventory(valid)
    first = resolve(inv, ClientFacts(mac="52:54:00:AA:BB:01"))
    assert first is not None
    assert first.profile.name == "debian-install"
    assert first.reasons[0] == (
        "machine web1 (machines/web.toml:4) matched by MAC 52:54:00:aa:bb:01"
    )
    installed = resolve(inv, ClientFacts(mac="52:54:00:aa:bb:01"), installed={"web1"})
    assert installed is not None
    assert installed.profile.name == "web.os"
    lab = resolve(inv, ClientFacts(mac="52:54:00:aa:bb:02", arch=7))
    assert lab is not None
    assert lab.reasons[2] == (
        "group bios-lab (machines/groups/lab.toml:5) matched: MAC 52:54:00:*, arch arch-7; "
        "more specific than group all"
    )
    anyone = resolve(inv, ClientFacts(mac="00:11:22:33:44:55", arch=7))
    assert anyone is not None
    assert anyone.profile.name == "disk"


def test_empty_directory_is_an_empty_inventory(tmp_path: Path) -> None:
    (tmp_path / "templates").mkdir()
    (tmp_path / "notes.txt").write_text("nothing\n")
    inv = load_inventory(tmp_path)
    assert (dict(inv.profiles), dict(inv.machines), dict(inv.groups)) == ({}, {}, {})
    assert inv.default_profile is None


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(InventoryError) as caught:
        load_inventory(tmp_path / "nope")
    assert str(caught.value) == f"inventory directory {tmp_path / 'nope'} does not exist"
    (tmp_path / "file").write_text("")
    with pytest.raises(InventoryError, match="is not a directory"):
        load_inventory(tmp_path / "file")


def test_file_order_is_sorted_paths(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "b.toml": "[profiles.b]\nmethod = 'local'\n",
            "a/z.toml": "[profiles.az]\nmethod = 'local'\n",
            "a.toml": "[profiles.a]\nmethod = 'local'\n",
        },
    )
    assert list(load_inventory(tmp_path).profiles) == ["az", "a", "b"]


# --- bad files ------------------------------------------------------------------------------


def test_bad_toml_stops_at_that_file(tmp_path: Path) -> None:
    # What the files before it showed is reported too; the files after it are not read.
    found = errors(
        tmp_path,
        {
            "a.toml": "[machines.x]\nmac = 'nope'\n",
            "b.toml": "[profiles.x]\nmethod = 'ipxe'\nkernel = linux\n",
            "c.toml": "this is not toml",
        },
    )
    assert found == [
        "a.toml:2: machines.x.mac: 'nope' is not a MAC address (six hex octets, like "
        "52:54:00:12:34:56)",
        "b.toml:3: not valid TOML: Invalid value (at line 3, column 10)",
    ]


def test_toml_duplicate_table_in_one_file(tmp_path: Path) -> None:
    found = errors(tmp_path, {"m.toml": "[machines.a]\n[machines.b]\n[machines.a]\n"})
    assert found == [
        "m.toml:3: not valid TOML: Cannot declare ('machines', 'a') twice (at line 3, column 12)"
        "; machines.a is first written at line 1"
    ]
    found = errors(tmp_path, {"m.toml": "[machines.a]\nmac = 'x'\n\nmac = 'y'\n"})
    assert found == [
        "m.toml:4: not valid TOML: Cannot overwrite a value (at line 4, column 10)"
        "; machines.a.mac is first written at line 2"
    ]


def test_error_survives_pickling(tmp_path: Path) -> None:
    import pickle

    error = InventoryError([InventoryProblem(Location("a.toml", 2), "default.profile", "bad")])
    again = pickle.loads(pickle.dumps(error))
    assert (again.problems, str(again)) == (error.problems, "a.toml:2: default.profile: bad")


def test_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "x.toml").write_bytes(b"# ok\n# \xff\n")
    with pytest.raises(InventoryError) as caught:
        load_inventory(tmp_path)
    assert str(caught.value) == "x.toml:2: not UTF-8 text"


# --- table by table -------------------------------------------------------------------------


def test_machine_value_errors(tmp_path: Path) -> None:
    found = errors(
        tmp_path,
        {
            "machines/web.toml": """
            [profiles.p]
            method = "local"
            [machines.web1]
            mac = "52:54:00:zz:00:01"
            uuid = "1234"
            hostname = "web_1"
            address = "10.0.0.300"
            labels = "web"
            profile = "p"
            """,
        },
    )
    assert found == [
        "machines/web.toml:4: machines.web1.mac: '52:54:00:zz:00:01' is not a MAC address "
        "(six hex octets, like 52:54:00:12:34:56)",
        "machines/web.toml:5: machines.web1.uuid: '1234' is not a UUID (32 hex digits, like "
        "12345678-9abc-def0-1234-56789abcdef0)",
        "machines/web.toml:6: machines.web1.hostname: 'web_1' is not a host name "
        "(dot-separated labels of letters, digits and '-')",
        "machines/web.toml:7: machines.web1.address: '10.0.0.300' is not an IPv4 address "
        "(like 10.0.0.5)",
        "machines/web.toml:8: machines.web1.labels: expected a table, got the string 'web'",
    ]


def test_unknown_and_missing_keys(tmp_path: Path) -> None:
    found = errors(
        tmp_path,
        {
            "a.toml": """
            [machines.web1]
            mac = "52:54:00:aa:bb:01"
            boot_once = "p"

            [profiles.p]
            kernal = "linux"

            [groups.g]
            match = { arch = "bios", port = 3 }

            [machine.typo]
            mac = "52:54:00:aa:bb:02"
            """,
        },
    )
    assert found == [
        "a.toml:3: machines.web1.boot_once: unknown key (expected one of: address, boot-once, "
        "hostname, labels, mac, profile, uuid)",
        "a.toml:5: profiles.p.method: required key is missing",
        "a.toml:6: profiles.p.kernal: unknown key (expected one of: cmdline, files, initrd, "
        "initrds, kernel, method, template)",
        "a.toml:8: groups.g.profile: required key is missing",
        "a.toml:9: groups.g.match.port: unknown key (expected one of: arch, labels, mac, uuid)",
        "a.toml:11: machine: unknown key (expected one of: default, groups, machines, profiles)",
    ]


def test_wrong_types(tmp_path: Path) -> None:
    found = errors(
        tmp_path,
        {
            "t.toml": """
            machines = { m = 5 }
            profiles = 1

            [groups.g]
            profile = true
            match = { mac = 5, labels = { role = 1 } }

            [default]
            profile = ["a"]
            """,
        },
    )
    assert found == [
        "t.toml:1: machines.m: expected a table, got the integer 5",
        "t.toml:2: profiles: expected a table of profiles, got the integer 1",
        "t.toml:5: groups.g.profile: expected a string, got the boolean true",
        "t.toml:6: groups.g.match.labels.role: expected a string, got the integer 1",
        "t.toml:6: groups.g.match.mac: expected a string or an array of strings, got the integer 5",
        "t.toml:9: default.profile: expected a string, got an array",
    ]


def test_profile_errors(tmp_path: Path) -> None:
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "ok.j2").write_text("")
    found = errors(
        tmp_path,
        {
            "p.toml": """
            [profiles.a]
            method = "pxe"
            kernel = "/boot/linux"
            initrd = "x"
            initrds = ["y"]

            [profiles.b]
            method = "ipxe"
            kernel = "tftp://10.0.0.1/linux"
            initrds = ["ok", "../../etc/shadow", "ftp://x/y"]
            template = "templates/missing.ipxe"

            [profiles.c]
            method = "grub"
            template = "templates"
            [profiles.c.files]
            "user-data" = "templates/ok.j2"
            "meta-data" = "/etc/passwd"
            "../escape" = "templates/ok.j2"
            "win" = 'templates\\ok.j2'
            """,
        },
    )
    assert found == [
        "p.toml:2: profiles.a.method: unknown method 'pxe' (one of: ipxe, pxelinux, grub, "
        "local, exit)",
        "p.toml:3: profiles.a.kernel: boot path '/boot/linux' must be a relative path with '/' "
        "separators and no '..'",
        "p.toml:5: profiles.a.initrds: give initrd (one file) or initrds (a list), not both",
        "p.toml:9: profiles.b.kernel: 'tftp://10.0.0.1/linux' is not an http:// or https:// URL "
        "(or a path below the boot root)",
        "p.toml:10: profiles.b.initrds: boot path '../../etc/shadow' must be a relative path "
        "with '/' separators and no '..'",
        "p.toml:10: profiles.b.initrds: 'ftp://x/y' is not an http:// or https:// URL (or a "
        "path below the boot root)",
        "p.toml:11: profiles.b.template: template file 'templates/missing.ipxe' does not exist "
        "in the inventory directory",
        "p.toml:15: profiles.c.template: template path 'templates' is not a file",
        "p.toml:18: profiles.c.files.meta-data: template path '/etc/passwd' must be a relative "
        "path with '/' separators and no '..'",
        "p.toml:19: profiles.c.files.\"../escape\": file name '../escape' must be a relative "
        "path with '/' separators and no '..'",
        "p.toml:20: profiles.c.files.win: template path 'templates\\\\ok.j2' must be a "
        "relative path with '/' separators and no '..'",
    ]


def test_group_match_errors(tmp_path: Path) -> None:
    found = errors(
        tmp_path,
        {
            "g.toml": """
            [profiles.p]
            method = "local"
            [groups.a]
            profile = "p"
            match.arch = ["bios", "x86"]
            [groups.b]
            profile = "p"
            match.arch = "ipxe"
            match.mac = ["52:54:0*"]
            match.uuid = "zz"
            [groups.c]
            profile = "p"
            match = { mac = [], labels = {} }
            """,
        },
    )
    assert found == [
        "g.toml:5: groups.a.match.arch: unknown client class 'x86' (one of: bios, uefi, "
        "uefi-ia32, uefi-arm32, uefi-arm64, uefi-riscv64, uefi-loongarch64, uefi-http, "
        "uefi-http-ia32, uefi-http-arm32, uefi-http-arm64, uefi-http-riscv64, "
        "uefi-http-loongarch64, ipxe, or arch-N for an exact option 93 architecture type)",
        "g.toml:8: groups.b.match.arch: 'ipxe' is not a firmware architecture (a group selects "
        "bios, uefi, uefi-http, ... or arch-N)",
        "g.toml:9: groups.b.match.mac: '52:54:0*' is not a MAC address or prefix (like "
        "52:54:00:12:34:56, or 52:54:00:* for the machines whose MAC starts with those whole "
        "octets)",
        "g.toml:10: groups.b.match.uuid: 'zz' is not a UUID (32 hex digits, like "
        "12345678-9abc-def0-1234-56789abcdef0)",
        "g.toml:13: groups.c.match.labels: empty, which would match every client (list one at "
        "least, or leave it out)",
        "g.toml:13: groups.c.match.mac: empty, which would match every client (list one at "
        "least, or leave it out)",
    ]


def test_bad_names(tmp_path: Path) -> None:
    found = errors(
        tmp_path,
        {
            "n.toml": """
            [profiles."has space"]
            method = "local"
            [machines.-dash]
            mac = "52:54:00:aa:bb:01"
            [machines.web1]
            mac = "52:54:00:aa:bb:02"
            profile = "has space"
            """,
        },
    )
    rule = "a letter or digit, then letters, digits, '.', '_' or '-'; at most 63 characters"
    # The machine's reference to the rejected profile is not reported a second time.
    assert found == [
        f"n.toml:1: profiles.\"has space\": 'has space' is not a valid profile name ({rule})",
        f"n.toml:3: machines.-dash: '-dash' is not a valid machine name ({rule})",
    ]


def test_reference_to_an_invalid_profile_is_not_a_second_problem(tmp_path: Path) -> None:
    found = errors(
        tmp_path,
        {
            "a.toml": "[profiles.p]\nmethod = 'nope'\n",
            "b.toml": "[machines.m]\nmac = '52:54:00:aa:bb:01'\nprofile = 'p'\n"
            "[default]\nprofile = 'p'\n[groups.g]\nprofile = 'q'\n",
        },
    )
    assert found == [
        "a.toml:2: profiles.p.method: unknown method 'nope' (one of: ipxe, pxelinux, grub, "
        "local, exit)",
        "b.toml:7: groups.g.profile: no profile 'q' (no profile is defined)",
    ]


# --- across files ---------------------------------------------------------------------------


def test_duplicate_names_across_files(tmp_path: Path) -> None:
    found = errors(
        tmp_path,
        {
            "a.toml": """
            [profiles.p]
            method = "local"
            [machines.web1]
            mac = "52:54:00:aa:bb:01"
            [default]
            profile = "p"
            """,
            "sub/b.toml": """
            # again
            profiles.p.method = "exit"

            [machines.web1]
            mac = "52:54:00:aa:bb:02"

            [default]
            profile = "p"
            """,
        },
    )
    assert found == [
        "sub/b.toml:2: profiles.p: profile 'p' is already defined at a.toml:1",
        "sub/b.toml:4: machines.web1: machine 'web1' is already defined at a.toml:3",
        "sub/b.toml:7: default: a default is already set at a.toml:5; only one [default] is "
        "allowed",
    ]


def test_consistency_problems_point_at_their_key(tmp_path: Path) -> None:
    found = errors(
        tmp_path,
        {
            "profiles.toml": """
            [profiles.debian-install]
            method = "ipxe"
            cmdline = "console=ttyS0"

            [profiles.rescue]
            method = "local"
            """,
            "machines/a.toml": """
            [machines.web1]
            hostname = "web1"
            mac = "52:54:00:aa:bb:01"
            """,
            "machines/b.toml": """
            [machines.web2]
            labels.role = "web"
            mac = "52:54:00:AA:BB:01"
            hostname = "WEB1"
            """,
            "machines/c.toml": """
            [machines.spare]
            address = "10.0.0.9"
            """,
            "groups.toml": """
            [groups.web]
            profile = "rescue"
            match = { labels = { role = "web" } }

            [groups.rack]
            profile = "webb"
            match.labels.rack = "r1"
            """,
        },
    )
    assert found == [
        "groups.toml:6: groups.rack.profile: no profile 'webb' (profiles: debian-install, rescue)",
        "groups.toml:7: groups.rack.match: ties with group web (groups.toml:1): both selectors "
        "are equally specific and can match the same machine, so the winner would depend on "
        "file order (make one more specific, or the two disjoint)",
        "machines/b.toml:3: machines.web2.mac: machine web1 (machines/a.toml:1) has the same "
        "MAC 52:54:00:aa:bb:01",
        "machines/b.toml:4: machines.web2.hostname: machine web1 (machines/a.toml:1) has the "
        "same hostname web1",
        "machines/c.toml:1: machines.spare: a machine needs a mac or a uuid, or no client is "
        "ever recognised as it",
        "profiles.toml:2: profiles.debian-install.method: method ipxe needs a kernel or a template",
    ]


def test_every_problem_is_reported_not_only_the_first(tmp_path: Path) -> None:
    found = errors(
        tmp_path,
        {
            "a.toml": "[machines.a]\nmac = 'x'\n",
            "b.toml": "[machines.b]\nuuid = 'y'\n",
            "c.toml": "[default]\nprofile = 'none'\n",
        },
    )
    assert [line.split(":", 2)[:2] for line in found] == [
        ["a.toml", "2"],
        ["b.toml", "2"],
        ["c.toml", "2"],
    ]
