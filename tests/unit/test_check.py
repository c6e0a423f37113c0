"""``netbootd check``: every problem of a config and an inventory, FILE:LINE: KEY: message."""

from __future__ import annotations

from pathlib import Path

import pytest

from netbootd.cli import main

SITE = """\
[profiles.alpha]
method = "ipxe"
kernel = "vmlinuz"
initrds = ["initrd.img", "http://mirror.example/firmware.cpio"]
cmdline = "console=ttyS0 host={{ hostname }}"

[profiles.beta]
method = "ipxe"
kernel = "vmlinuz"
template = "t/beta.ipxe"
files = { "preseed.cfg" = "t/preseed.cfg" }

[groups.lab]
match = { mac = "52:54:00:*" }
profile = "alpha"

[machines.one]
mac = "52:54:00:aa:bb:01"
profile = "beta"
"""

BETA = "#!ipxe\nkernel {{ kernel_url }}\n{{ hostnam }}\nboot\n"
PRESEED = "d-i netcfg/get_hostname string {{ hostname or 'node-' ~ mac_dashes }}\n"


def site(tmp_path: Path, beta: str = BETA) -> list[str]:
    root, inventory = tmp_path / "root", tmp_path / "inventory"
    (root).mkdir()
    (root / "vmlinuz").write_bytes(b"kernel")
    (root / "boot.ipxe").write_text("#!ipxe\nexit\n")
    (inventory / "t").mkdir(parents=True)
    (inventory / "site.toml").write_text(SITE)
    (inventory / "t" / "beta.ipxe").write_text(beta)
    (inventory / "t" / "preseed.cfg").write_text(PRESEED)
    return ["--root", str(root), "--inventory", str(inventory), "--state-dir", str(tmp_path / "s")]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str], str]:
    code = main(["check", *argv])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err


def test_every_problem_at_once_without_an_interface(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    where = site(tmp_path)
    inventory = tmp_path / "inventory"
    code, lines, err = run(capsys, *where)
    assert (code, err) == (2, "")
    assert lines == [
        "serving DHCP needs an interface (--interface)",
        f"{inventory}/t/beta.ipxe:3: profiles.beta.template: 'hostnam' is not a template "
        "variable (did you mean 'hostname'?)",
        # The inventory did not load, but the kernels it names are still looked for.
        f"{inventory}/site.toml:4: profiles.alpha.initrds: initrd.img: no such file (it is "
        f"looked for below the root {tmp_path / 'root'})",
        f"checked dhcp proxy, root {tmp_path / 'root'}, inventory {inventory} (not loaded): "
        "3 problems",
    ]
    assert not (tmp_path / "s").exists()  # nothing written


def test_warnings_alone_pass(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    where = site(tmp_path, beta=BETA.replace("hostnam ", "hostname "))
    (tmp_path / "root" / "initrd.img").write_bytes(b"initrd")
    inventory = tmp_path / "inventory"
    code, lines, _ = run(capsys, *where, "--interface", "lo")
    assert code == 0
    assert lines == [
        # A group gives alpha to machines the inventory does not describe: no hostname.
        f"{inventory}/site.toml:5: profiles.alpha.cmdline: warning: hostname is empty for a "
        "machine the inventory does not describe, and group lab gives this profile to such "
        "machines: describe them, or write {{ hostname or 'node-' ~ mac_dashes }}",
        f"checked dhcp proxy, root {tmp_path / 'root'}, inventory {inventory} (1 machine, "
        "2 profiles, 1 group): 1 warning",
    ]
    # beta's own template says hostname too, but only machine one (described) gets beta.
    (inventory / "site.toml").write_text(SITE.replace("host={{ hostname }}", "{{ mac }}"))
    code, lines, _ = run(capsys, *where, "--interface", "lo")
    assert (code, lines[-1][-13:]) == (0, ": no problems")


def test_a_config_file_problem_and_a_bad_interface(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    where = site(tmp_path)
    config = tmp_path / "netbootd.toml"
    config.write_text('interface = "nosuch0"\ndhcp-range = "10.0.0.5-10.0.0.9"\n')
    code, lines, _ = run(capsys, "--config", str(config), *where)
    assert code == 2
    assert lines[0] == "interface nosuch0: no such interface"
    assert lines[1].endswith("'hostnam' is not a template variable (did you mean 'hostname'?)")
    assert lines[-1].startswith("checked dhcp authoritative, ")
    config.write_text('interface = "lo"\ndhcp-range = "nonsense"\n')
    code, lines, _ = run(capsys, "--config", str(config), *where)
    assert code == 2
    assert lines[0].startswith(f"{config}:2: dhcp-range: ")
    assert lines[-1] == "checked the configuration: 1 problem"


def test_missing_built_in_boot_files_are_warnings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    code, lines, _ = run(capsys, "--interface", "lo", "--root", str(root), "--boot", "bios=x.0")
    assert code == 2
    assert lines[0] == "--boot bios=x.0: no such file"
    code, lines, _ = run(capsys, "--interface", "lo", "--root", str(root))
    assert code == 0
    assert (
        f"{root}/boot.ipxe: warning: ipxe clients get this file by default, and it is missing "
        "(put an iPXE script there or pass --boot ipxe=PATH)"
    ) in lines


def test_what_only_serving_needs_is_each_one_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inventory = tmp_path / "inventory"
    inventory.mkdir()
    code, lines, _ = run(capsys, "--inventory", str(inventory), "--state-dir", str(tmp_path))
    assert code == 2
    assert lines == [
        "serving DHCP needs an interface (--interface)",
        "serving files needs a root directory (--root)",
        f"checked dhcp proxy, inventory {inventory} (0 machines, 0 profiles, 0 groups): 2 problems",
    ]
    code, lines, _ = run(capsys, "--inventory", str(inventory), "--no-dhcp", "--no-tftp")
    assert lines[:2] == [
        "serving files needs a root directory (--root)",
        "an inventory needs --interface (or next-server): its scripts name this server's address",
    ]
