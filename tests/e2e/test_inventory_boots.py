"""Machines boot what the inventory says, rendered per machine, reloaded without a restart.

- Two VMs with different MACs boot different profiles (different kernel command lines) from one
  netbootd; a profile edited on disk changes the next boot; a broken edit is refused with its
  file and line, and booting goes on with the last good inventory. ``netbootd explain`` shows the
  same DHCP options and the same script the VM got.
- A BIOS VM boots through a pxelinux config rendered for it: there is no pxelinux.cfg on disk.
- A UEFI VM boots GRUB (Debian's signed network build, served from the package) through a
  grub.cfg rendered for it.
- Boot-once: the installer profile first; the callback from the installed system flips it; the
  second boot leaves iPXE for the local disk.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import pytest

from netbootd_lab import BOOT_MARKER, VM, Lab, LabError, NetbootdServer, start_vm
from netbootd_lab.payload import CMDLINE_PREFIX, INITRD_NAME, KERNEL_NAME, pxelinux_config_lookups
from netbootd_lab.prereq import GRUB_NET_EFI
from netbootd_lab.servers import netbootd_executable
from netbootd_lab.vm import EDK2_NIC, MAC_PREFIX, Firmware, UefiBoot

pytestmark = pytest.mark.e2e

BOOT_TIMEOUT = 180
CONSOLE = "console=ttyS0 panic=-1 quiet"


def _profile(name: str, method: str, marker: str) -> str:
    return (
        f"[profiles.{name}]\n"
        f'method = "{method}"\n'
        f'kernel = "{KERNEL_NAME}"\n'
        f'initrds = ["{INITRD_NAME}"]\n'
        f'cmdline = "{CONSOLE} {marker} netbootd.host={{{{ hostname }}}}"\n'
    )


def _server(lab: Lab, root: Path, inventory: Path, tmp_path: Path) -> NetbootdServer:
    return NetbootdServer(
        lab,
        root,
        state_dir=tmp_path / "state",
        log_path=lab.workdir / "netbootd.log",
        boot=(),
        extra_args=["--inventory", str(inventory), "--log-dhcp"],
    ).start()


def _boot(vm: VM) -> list[str]:
    """Wait for the guest's command line, and for it to power off; return its arguments."""
    vm.wait_for(BOOT_MARKER, timeout=BOOT_TIMEOUT)
    vm.wait_for(CMDLINE_PREFIX, timeout=10)
    cmdline = vm.kernel_cmdline()
    assert cmdline is not None
    vm.wait_exit(30)
    return cmdline.split()


def _wait_log(server: NetbootdServer, pattern: str, timeout: float = 15) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(pattern, server.log_text(), re.MULTILINE)
        if found:
            return found
        time.sleep(0.2)
    raise LabError(f"no {pattern!r} in the netbootd log after {timeout:.0f} s")


def _mac(index: int) -> str:
    return f"{MAC_PREFIX}:{index:02x}"


def test_machines_profiles_reload_and_explain(
    lab: Lab, ipxe_root: Path, tmp_path: Path, firmware_prerequisites: None
) -> None:
    inventory = tmp_path / "inventory"
    (inventory / "machines").mkdir(parents=True)
    profiles = inventory / "profiles.toml"
    profiles.write_text(
        _profile("alpha", "ipxe", "netbootd.profile=alpha")
        + "\n"
        + _profile("beta", "ipxe", "netbootd.profile=beta")
    )
    # The first VM is described; the second is not, and falls into a group by MAC prefix.
    (inventory / "machines" / "one.toml").write_text(
        f'[machines.one]\nmac = "{_mac(1)}"\nhostname = "one"\nprofile = "alpha"\n'
    )
    (inventory / "groups.toml").write_text(
        f'[groups.lab]\nprofile = "beta"\nmatch = {{ mac = ["{MAC_PREFIX}:*"] }}\n'
    )
    server = _server(lab, ipxe_root, inventory, tmp_path)
    one, two = start_vm(lab, name="one"), start_vm(lab, name="two")
    assert (one.mac, two.mac) == (_mac(1), _mac(2))

    first = _boot(one)
    assert "netbootd.profile=alpha" in first and "netbootd.host=one" in first
    second = _boot(two)
    assert "netbootd.profile=beta" in second and "netbootd.host=" in second

    # explain, run beside the server, says what the VM got: the same options, the same script.
    offer = next(
        ev
        for ev in server.events()
        if ev.svc == "dhcp"
        and ev.event == "DISCOVER"
        and ev.get("mac") == one.mac
        and ev.get("client") == "ipxe"
    )
    asked = re.search(
        rf"netbootd\.dhcp received xid={offer.get('xid')} +55 parameter-list: (\S+)$",
        server.log_text(),
        re.M,
    )
    assert asked is not None
    client = ["--mac", one.mac, "--arch", "0", "--user-class", "iPXE"]
    client += ["--vendor-class", "PXEClient:Arch:00000:UNDI:002001"]
    client += ["--uuid", "00000000-0000-0000-0000-000000000000"]
    client += ["--parameter-list", asked.group(1)]
    # explain takes the flags that change answers; --log-dhcp is serve's alone.
    where = [arg for arg in server.argv()[2:] if arg != "--log-dhcp"]
    explain = [str(netbootd_executable()), "explain", *where, *client]
    explained = lab.ns_exec(explain).stdout
    assert re.search(r"^  machine one \(machines/one\.toml:1\)$", explained, re.M), explained
    assert "  profile alpha (profiles.toml:1), method ipxe" in explained
    script_url = f"/m/{one.mac.replace(':', '-')}/boot.ipxe"
    served = lab.ns_exec(["curl", "-sS", f"http://{lab.server_ip}{script_url}"]).stdout
    assert f"then m/{one.mac.replace(':', '-')}/boot.ipxe\n" in explained
    shown = explained.split(f"then m/{one.mac.replace(':', '-')}/boot.ipxe\n", 1)[1]
    assert [line.removeprefix("  ") for line in shown.splitlines()] == served.splitlines()
    assert "kernel http://10.99.0.1/vmlinuz initrd=initrd.img" in served
    sent = re.findall(
        rf"netbootd\.dhcp sent xid={offer.get('xid')} +(\d+ [\w-]+: .*)$",
        server.log_text(),
        re.M,
    )
    reply = explained.split("DHCP reply\n", 1)[1].split("\n\n", 1)[0]
    explained_options = [line.strip() for line in reply.splitlines()[2:]]
    assert sent[: len(explained_options)] == explained_options

    # An edit on disk changes the next boot, with no restart.
    profiles.write_text(profiles.read_text().replace("netbootd.profile=alpha", "netbootd.rev=2"))
    _wait_log(server, r"inventory-reloaded")
    again = one.start()
    assert "netbootd.rev=2" in _boot(again)

    # A broken edit is refused with its file and line; the last good inventory goes on.
    profiles.write_text(profiles.read_text().replace('method = "ipxe"', 'method = "ipxe'))
    error = _wait_log(server, r"inventory-error problem=\"?(profiles\.toml:\d+[^\"\n]*)")
    assert error.group(1).startswith("profiles.toml:2")
    _wait_log(server, r"inventory-kept")
    assert "netbootd.rev=2" in _boot(one.start())
    assert server.alive()


def test_bios_pxelinux_config_rendered_per_machine(
    lab: Lab, pxelinux_root: Path, tmp_path: Path
) -> None:
    shutil.rmtree(pxelinux_root / "pxelinux.cfg")  # nothing on disk to fall back on
    inventory = tmp_path / "inventory"
    inventory.mkdir()
    (inventory / "site.toml").write_text(
        _profile("classic", "pxelinux", "netbootd.lab=rendered-pxelinux")
        + '\n[default]\nprofile = "classic"\n'
    )
    server = _server(lab, pxelinux_root, inventory, tmp_path)
    vm = start_vm(lab)
    args = _boot(vm)
    assert "netbootd.lab=rendered-pxelinux" in args
    assert f"BOOTIF=01-{vm.mac.replace(':', '-')}" in args  # IPAPPEND 2 of the rendered config

    config_name = pxelinux_config_lookups(vm.mac, "0.0.0.0")[0]
    done = [
        ev
        for ev in server.events()
        if ev.svc == "tftp" and ev.get("file") == config_name and ev.get("result") == "ok"
    ]
    assert done, server.tftp_files()
    assert not (pxelinux_root / "pxelinux.cfg").exists()


def test_uefi_grub_config_rendered_per_machine(
    lab: Lab, ipxe_root: Path, tmp_path: Path, firmware_prerequisites: None
) -> None:
    inventory = tmp_path / "inventory"
    inventory.mkdir()
    (inventory / "site.toml").write_text(
        _profile("grub", "grub", "netbootd.lab=rendered-grub")
        + f'\n[machines.efi1]\nmac = "{_mac(1)}"\nhostname = "efi1"\nprofile = "grub"\n'
    )
    server = _server(lab, ipxe_root, inventory, tmp_path)
    vm = start_vm(lab, firmware=Firmware.UEFI, nic=EDK2_NIC, uefi_boot=UefiBoot.PXE4)
    args = _boot(vm)
    assert "netbootd.lab=rendered-grub" in args and "netbootd.host=efi1" in args

    done = {
        ev.get("file").lstrip("/"): ev.get("bytes")
        for ev in server.events()
        if ev.svc == "tftp" and ev.get("result") == "ok"
    }
    assert done.get("grubx64.efi") == str(GRUB_NET_EFI.stat().st_size)  # from the package
    configs = [name for name in done if name.endswith("grub.cfg") or "grub.cfg-" in name]
    assert configs, done  # a grub.cfg that exists nowhere on disk
    assert not list(ipxe_root.rglob("grub.cfg*"))
    assert done.get(KERNEL_NAME) == str((ipxe_root / KERNEL_NAME).stat().st_size)


def test_boot_once_then_local_disk(
    lab: Lab, ipxe_root: Path, tmp_path: Path, firmware_prerequisites: None
) -> None:
    inventory = tmp_path / "inventory"
    inventory.mkdir()
    (inventory / "site.toml").write_text(
        _profile("installer", "ipxe", "netbootd.lab=installer")
        + '\n[profiles.disk]\nmethod = "local"\n'
        + f'\n[machines.web1]\nmac = "{_mac(1)}"\nprofile = "disk"\nboot-once = "installer"\n'
    )
    server = _server(lab, ipxe_root, inventory, tmp_path)
    vm = start_vm(lab)
    assert "netbootd.lab=installer" in _boot(vm)

    # What the installed system's last step does.
    url = f"http://{lab.server_ip}/m/{vm.mac.replace(':', '-')}/installed"
    answer = lab.ns_exec(["curl", "-sS", "--fail", "-X", "POST", url]).stdout
    assert answer.startswith("web1: installed")
    assert (tmp_path / "state" / "installed.json").is_file()

    vm.start()
    # iPXE gets the local-disk script, tries the first disk (there is none), and hands the
    # machine back to the firmware, which looks for its next boot device.
    vm.wait_for("No bootable device", timeout=BOOT_TIMEOUT)
    vm.stop()
    script = lab.ns_exec(
        ["curl", "-sS", f"http://{lab.server_ip}/m/{vm.mac.replace(':', '-')}/boot.ipxe"]
    ).stdout
    assert "profile disk" in script and "sanboot --no-describe --drive 0x80" in script
    assert BOOT_MARKER not in vm.console_text()
    fetched = [
        ev.get("path")
        for ev in server.events()
        if ev.svc == "http" and ev.event == "request" and ev.get("status") == "200"
    ]
    assert fetched.count(f"/{KERNEL_NAME}") == 1  # the installer's kernel, the first time only
