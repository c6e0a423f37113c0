"""``netbootd explain``: the boot decision it reports is the one the DHCP reply carries."""

from __future__ import annotations

from pathlib import Path

import pytest

from netbootd.cli import main
from netbootd.config import build
from netbootd.explain import ClientDescription, explain

HOST_MAC = "52:54:00:00:00:07"


async def test_a_host_entrys_boot_file_is_the_decision_shown(tmp_path: Path) -> None:
    (tmp_path / "special.0").write_bytes(b"loader")
    flags = {
        "interface": "lo",
        "root": tmp_path,
        "dhcp-range": "127.0.0.100-127.0.0.200",
    }
    config = build({"hosts": [{"mac": HOST_MAC, "boot-file": "special.0"}]}, flags)
    report = (await explain(config, ClientDescription(mac=HOST_MAC, arch=0))).text
    sections = report.split("\n\n")
    (reply,) = [s for s in sections if s.startswith("DHCP reply")]
    (decision,) = [s for s in sections if s.startswith("boot decision")]
    assert "file special.0" in reply
    assert "file special.0" in decision
    assert f"why: [[hosts]] {HOST_MAC} boot-file" in decision
    # Another machine is not that host: the built-in choice for its firmware.
    other = await explain(config, ClientDescription(mac="52:54:00:00:00:08", arch=0))
    assert "special.0" not in other.text


def test_explain_works_from_the_inventory_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No interface, root or mode: the match and the boot decision, and what is not shown
    said so, with the address the scripts name standing in."""
    inventory = tmp_path / "inventory"
    inventory.mkdir()
    (inventory / "site.toml").write_text(
        '[profiles.web]\nmethod = "ipxe"\nkernel = "vmlinuz"\n\n'
        f'[machines.web1]\nmac = "{HOST_MAC}"\nprofile = "web"\n'
    )
    argv = ["explain", "--inventory", str(inventory), "--state-dir", str(tmp_path / "state")]
    code = main([*argv, "--mac", HOST_MAC, "--arch", "7", "--user-class", "iPXE"])
    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    sections = {s.split("\n", 1)[0]: s for s in out.split("\n\n")}
    assert "this server's address stands in as 192.0.2.1" in sections["note"]
    assert "no root (--root)" in sections["note"]
    assert "profile web (site.toml:1), method ipxe" in sections["match"]
    assert "not shown: the reply names the interface's address" in sections["DHCP reply"]
    assert "file http://192.0.2.1/m/52-54-00-00-00-07/boot.ipxe" in sections["boot decision"]
    assert not (tmp_path / "state").exists()  # nothing written


def test_explain_takes_the_flags_that_change_answers_only(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["explain", "--help"])
    shown = capsys.readouterr().out
    for flag in ("--config", "--inventory", "--state-dir", "--boot", "--proxy", "--mac"):
        assert flag in shown, flag
    for flag in ("--tftp-single-port", "--tftp-upload-dir", "--dhcp-workers", "--log-dhcp"):
        assert flag not in shown, flag


def test_explain_fails_when_what_it_hands_out_cannot_be_served(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, inventory = tmp_path / "root", tmp_path / "inventory"
    root.mkdir()
    inventory.mkdir()
    (inventory / "site.toml").write_text(
        '[profiles.web]\nmethod = "ipxe"\nkernel = "vmlinuz"\ncmdline = "{{ labels.rack }}"\n\n'
        f'[machines.web1]\nmac = "{HOST_MAC}"\nprofile = "web"\nlabels = {{ rack = "r1" }}\n\n'
        '[machines.web2]\nmac = "52:54:00:00:00:08"\nprofile = "web"\n'
    )
    argv = ["explain", "--root", str(root), "--inventory", str(inventory)]
    argv += ["--state-dir", str(tmp_path / "state"), "--arch", "7", "--user-class", "iPXE"]
    code = main([*argv, "--mac", HOST_MAC])
    out, err = capsys.readouterr()
    assert code == 1
    assert err == "netbootd: this client would be handed what cannot be served\n"
    unservable = out.split("cannot be served (the client stops there)\n", 1)[1]
    assert unservable == (
        "  site.toml:3: profiles.web.kernel: vmlinuz: no such file (it is looked for below the "
        f"root {root})\n"
    )
    (root / "vmlinuz").write_bytes(b"kernel")
    assert main([*argv, "--mac", HOST_MAC]) == 0
    # web2 has no rack label: its script cannot be rendered.
    assert main([*argv, "--mac", "52:54:00:00:00:08"]) == 1
    out = capsys.readouterr().out
    assert "  m/52-54-00-00-00-08/boot.ipxe: template failed: profile web: cmdline: " in out
