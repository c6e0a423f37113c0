"""Per-machine decisions and files: the policy with a profile, rendered names, boot-once state."""

from __future__ import annotations

import itertools
from ipaddress import IPv4Address
from pathlib import Path
from types import MappingProxyType

import pytest

from netbootd.boot.client import BootClass, classify
from netbootd.boot.inventory import (
    Group,
    Inventory,
    InventoryError,
    Machine,
    Method,
    Profile,
    Resolution,
    Selector,
)
from netbootd.boot.policy import BootPolicy
from netbootd.boot.render import RenderLimits
from netbootd.proto.dhcp.codec import MessageType
from netbootd.services.files import FileNotFound, FileTree
from netbootd.services.journal import Journal
from netbootd.services.machines import (
    BootFiles,
    BootSetup,
    LiveInventory,
    Machines,
    RenderFailed,
    ServerAddress,
    load_setup,
)
from tests.helpers.dhcp_clients import BIOS_PXE, UEFI_HTTP, UEFI_PXE, request

SERVER = IPv4Address("10.99.0.1")
WEB1 = "52:54:00:aa:bb:01"
OTHER = "52:54:00:aa:bb:99"

PROFILES = {
    "web": Profile("web", Method.IPXE, kernel="vmlinuz", initrds=("initrd.img",), cmdline="web"),
    "installer": Profile("installer", Method.IPXE, kernel="inst/linux", cmdline="auto"),
    "disk": Profile("disk", Method.LOCAL),
    "classic": Profile("classic", Method.PXELINUX, kernel="vmlinuz", cmdline="c={{ ip }}"),
    "broken": Profile("broken", Method.IPXE, kernel="k", cmdline="{{ labels.rack }}"),
    "grub": Profile("grub", Method.GRUB, kernel="vmlinuz", cmdline="g"),
}


def inventory(**machines: Machine) -> Inventory:
    return Inventory(
        profiles=PROFILES,
        machines=machines,
        groups={
            "bios-lab": Group("bios-lab", Selector(archs=(BootClass.BIOS,)), "classic"),
        },
        default_profile="web",
    )


def machines(inv: Inventory, installed: frozenset[str] = frozenset()) -> Machines:
    setup = BootSetup(inv, MappingProxyType({}), Path("/nonexistent"))
    return Machines(setup, ServerAddress("10.99.0.1"), installed)


def resolution(profile: str) -> Resolution:
    return Resolution(PROFILES[profile], None, None, (f"profile {profile} by test",))


POLICY = BootPolicy({}, SERVER, 80)


@pytest.mark.parametrize(
    ("vendor", "arch", "ipxe", "profile", "expected"),
    [
        (UEFI_PXE, 7, False, "web", "snponly.efi"),  # iPXE first
        (BIOS_PXE, 0, False, "web", "undionly.kpxe"),
        (UEFI_PXE, 7, True, "web", f"http://10.99.0.1/m/{WEB1.replace(':', '-')}/boot.ipxe"),
        (UEFI_PXE, 7, True, "disk", f"http://10.99.0.1/m/{WEB1.replace(':', '-')}/boot.ipxe"),
        (BIOS_PXE, 0, True, "classic", "pxelinux.0"),  # the iPXE ROM of a BIOS loads pxelinux
        (UEFI_PXE, 7, False, "classic", None),  # pxelinux is BIOS-only
        (UEFI_PXE, 7, False, "grub", "grubx64.efi"),
        (UEFI_HTTP, 16, False, "grub", "http://10.99.0.1/grubx64.efi"),
        (UEFI_HTTP, 16, False, "web", "http://10.99.0.1/snponly.efi"),
    ],
)
def test_policy_follows_the_profile(
    vendor: str, arch: int, ipxe: bool, profile: str, expected: str | None
) -> None:
    client = classify(
        request(MessageType.DISCOVER, mac=WEB1, vendor_class=vendor, arch=arch, ipxe=ipxe)
    )
    decision = POLICY.decide(client, resolution(profile))
    assert decision.filename == expected, decision.reason
    assert decision.reason.startswith(f"profile {profile} by test")


def test_configured_loaders_are_kept_where_they_fit() -> None:
    client = classify(request(MessageType.DISCOVER, mac=WEB1, vendor_class=UEFI_PXE, arch=7))
    policy = BootPolicy({BootClass.UEFI: "ipxe.efi"}, SERVER, 80)
    assert policy.decide(client, resolution("web")).filename == "ipxe.efi"
    shim = BootPolicy({BootClass.UEFI: "shimx64.efi"}, SERVER, 80)
    assert shim.decide(client, resolution("grub")).filename == "shimx64.efi"
    assert shim.decide(client, resolution("web")).filename == "snponly.efi"  # not iPXE


def files(tmp_path: Path, inv: Inventory, installed: frozenset[str] = frozenset()) -> BootFiles:
    root = tmp_path / "root"
    (root / "pxelinux.cfg").mkdir(parents=True, exist_ok=True)
    (root / "pxelinux.cfg" / "default").write_text("on disk\n")
    return BootFiles(FileTree(root), machines(inv, installed))


def read(source: BootFiles, name: str, peer: str | None = "10.99.0.50") -> str:
    opened = source.open(name, peer)
    try:
        return opened.read(0, opened.size).decode()
    finally:
        opened.close()


def test_script_per_machine(tmp_path: Path) -> None:
    source = files(tmp_path, inventory(web1=Machine("web1", mac=WEB1, profile="web")))
    script = read(source, "m/52-54-00-AA-BB-01/boot.ipxe")
    assert script.startswith("#!ipxe\n# netbootd: machine web1, profile web\n")
    assert "kernel http://10.99.0.1/vmlinuz initrd=initrd.img web\n" in script
    # An undescribed machine gets the default profile.
    assert "machine (undescribed) 52:54:00:aa:bb:99, profile web" in read(
        source, "m/52-54-00-aa-bb-99/boot.ipxe"
    )
    # A MAC written by hand with colons, in either case, names the same machine.
    assert read(source, "m/52:54:00:AA:BB:01/boot.ipxe") == script
    assert read(source, "/m/52:54:00:aa:bb:01/boot.ipxe") == script
    with pytest.raises(FileNotFound):
        read(source, "m/52:54-00-aa-bb-01/boot.ipxe")  # one separator throughout


def test_pxelinux_name_renders_only_for_pxelinux_profiles(tmp_path: Path) -> None:
    source = files(tmp_path, inventory(web1=Machine("web1", mac=WEB1, profile="classic")))
    text = read(source, "pxelinux.cfg/01-52-54-00-aa-bb-01", peer="10.99.0.50")
    assert "  APPEND c=10.99.0.50\n" in text  # the requester's address, without a lease
    # Another machine's profile is iPXE: its pxelinux lookups fall through to the root.
    with pytest.raises(FileNotFound):
        source.open("pxelinux.cfg/01-52-54-00-aa-bb-99", None)
    assert read(source, "pxelinux.cfg/default") == "on disk\n"


def test_dhcp_memory_feeds_the_files(tmp_path: Path) -> None:
    # An undescribed BIOS machine is in the bios-lab group, but only DHCP knows its
    # architecture: the TFTP request for its config carries none.
    source = files(tmp_path, inventory())
    client = classify(request(MessageType.DISCOVER, mac=OTHER, vendor_class=BIOS_PXE, arch=0))
    source.machines.remember(client, IPv4Address("10.99.0.123"))
    text = read(source, "pxelinux.cfg/01-52-54-00-aa-bb-99", peer=None)
    assert "APPEND c=10.99.0.123\n" in text


def test_own_files_and_failures(tmp_path: Path) -> None:
    inv = inventory(
        web1=Machine("web1", mac=WEB1, profile="web"),
        bad=Machine("bad", mac=OTHER, profile="broken"),
    )
    source = files(tmp_path, inv)
    with pytest.raises(FileNotFound):
        source.open("m/52-54-00-aa-bb-01/user-data", None)
    with pytest.raises(RenderFailed, match="'dict object' has no attribute 'rack'"):
        source.open("m/52-54-00-aa-bb-99/boot.ipxe", None)


def test_boot_once(tmp_path: Path) -> None:
    machine = Machine("web1", mac=WEB1, profile="disk", boot_once="installer")
    before = read(files(tmp_path, inventory(web1=machine)), "m/52-54-00-aa-bb-01/boot.ipxe")
    assert "profile installer" in before and "kernel http://10.99.0.1/inst/linux" in before
    after = read(
        files(tmp_path, inventory(web1=machine), frozenset({"web1"})),
        "m/52-54-00-aa-bb-01/boot.ipxe",
    )
    assert "profile disk" in after and "sanboot --no-describe --drive 0x80" in after


def test_later_lookups_render_for_the_machine_at_that_address(tmp_path: Path) -> None:
    inv = inventory(
        classic=Machine("classic", mac=OTHER, profile="classic"),
        web1=Machine("web1", mac=WEB1, profile="web"),
    )
    source = files(tmp_path, inv)
    for mac, address in ((OTHER, "10.99.0.123"), (WEB1, "10.99.0.124")):
        client = classify(request(MessageType.REQUEST, mac=mac, vendor_class=BIOS_PXE, arch=0))
        source.machines.remember(client, IPv4Address(address))
    # 10.99.0.123 is 0A63007B.
    for name in ("pxelinux.cfg/0A63007B", "pxelinux.cfg/0A63", "pxelinux.cfg/default"):
        assert "APPEND c=10.99.0.123\n" in read(source, name, peer="10.99.0.123"), name
    # A prefix of another address, a stranger, or a machine on iPXE: the root decides.
    with pytest.raises(FileNotFound):
        source.open("pxelinux.cfg/0B", "10.99.0.123")
    assert read(source, "pxelinux.cfg/default", peer="10.99.0.200") == "on disk\n"
    assert read(source, "pxelinux.cfg/default", peer="10.99.0.124") == "on disk\n"
    assert read(source, "pxelinux.cfg/default", peer=None) == "on disk\n"


def test_grub_lookups(tmp_path: Path) -> None:
    source = files(tmp_path, inventory(g=Machine("g", mac=WEB1, profile="grub")))
    client = classify(request(MessageType.REQUEST, mac=WEB1, vendor_class=UEFI_PXE, arch=7))
    source.machines.remember(client, IPv4Address("10.99.0.5"))
    for name in ("grub/grub.cfg-01-52-54-00-aa-bb-01", "grub/grub.cfg-0A630005", "grub.cfg"):
        assert "  linux /vmlinuz g\n" in read(source, name, peer="10.99.0.5"), name


def test_a_template_that_reads_another_file_is_refused_at_load(tmp_path: Path) -> None:
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "boot.ipxe").write_text("#!ipxe\n{% include 'other.ipxe' %}\n")
    (tmp_path / "site.toml").write_text(
        '[profiles.a]\nmethod = "ipxe"\nkernel = "k"\ntemplate = "t/boot.ipxe"\n'
    )
    with pytest.raises(InventoryError) as raised:
        load_setup(tmp_path)
    assert [str(problem) for problem in raised.value.problems] == [
        "t/boot.ipxe:2: profiles.a.template: include: templates cannot read other files; "
        "write it into this one"
    ]


def test_a_render_past_its_limit_is_a_render_failure(tmp_path: Path) -> None:
    spin = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    profiles = {**PROFILES, "spin": Profile("spin", Method.IPXE, kernel="k", cmdline=spin)}
    inv = Inventory(profiles=profiles, machines={"s": Machine("s", mac=WEB1, profile="spin")})
    source = files(tmp_path, inv)
    source.machines.render_limits = RenderLimits(itertools.count(0.0, 0.1).__next__)
    with pytest.raises(RenderFailed, match="cmdline: took longer than 2 s, its time limit"):
        source.open("m/52-54-00-aa-bb-01/boot.ipxe", None)


def test_which_names_render(tmp_path: Path) -> None:
    source = files(tmp_path, inventory(web1=Machine("web1", mac=WEB1, profile="classic")))
    client = classify(request(MessageType.REQUEST, mac=WEB1, vendor_class=BIOS_PXE, arch=0))
    source.machines.remember(client, IPv4Address("10.99.0.123"))
    for name in (
        "m/52-54-00-aa-bb-01/boot.ipxe",
        "/m/52:54:00:aa:bb:99/user-data",
        "pxelinux.cfg/01-52-54-00-aa-bb-01",
        "EFI/grub.cfg-01-52-54-00-aa-bb-01",
    ):
        assert source.renders(name, None), name
    # The lookups by address render only for the machine DHCP gave that address to.
    assert source.renders("pxelinux.cfg/default", "10.99.0.123")
    assert source.renders("pxelinux.cfg/0A63", "10.99.0.123")
    assert not source.renders("pxelinux.cfg/0B", "10.99.0.123")
    assert not source.renders("pxelinux.cfg/default", "10.99.0.200")
    assert not source.renders("grub.cfg", None)
    assert not source.renders("vmlinuz", "10.99.0.123")


def test_a_machine_marked_installed_is_told_to_the_journal(tmp_path: Path) -> None:
    directory = tmp_path / "inventory"
    directory.mkdir()
    (directory / "site.toml").write_text(
        '[profiles.disk]\nmethod = "local"\n[profiles.installer]\nmethod = "ipxe"\n'
        'kernel = "vmlinuz"\n[machines.web1]\nmac = "52:54:00:aa:bb:01"\nprofile = "disk"\n'
        'boot-once = "installer"\n'
    )
    live = LiveInventory(directory, tmp_path / "state", ServerAddress("10.99.0.1", 80, 69))
    journal = Journal(clock=lambda: 5.0)
    live.journal = journal
    assert live.mark_installed("52:54:00:aa:bb:01") == "web1"
    assert live.mark_installed("52:54:00:aa:bb:99") is None
    [event] = journal.take()
    assert (event.time, event.mac, event.service, event.kind, dict(event.fields)) == (
        5.0,
        "52:54:00:aa:bb:01",
        "inventory",
        "installed",
        {"machine": "web1"},
    )
