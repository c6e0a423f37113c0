from collections.abc import Mapping
from ipaddress import IPv4Address

import pytest

from netbootd.boot.client import Arch, BootClass, BootKey
from netbootd.boot.inventory import (
    ClientFacts,
    Group,
    Inventory,
    InventoryProblem,
    Location,
    Machine,
    Method,
    Profile,
    Selector,
    check,
    format_key,
    normalise_mac,
    normalise_mac_pattern,
    normalise_uuid,
    resolve,
)

MAC1 = "52:54:00:aa:bb:01"
MAC2 = "52:54:00:aa:bb:02"
UUID1 = "12345678-9abc-def0-1234-56789abcdef0"
UUID2 = "00000000-0000-0000-0000-000000000002"

PROFILES = {
    name: Profile(name, Method.IPXE, kernel=f"{name}/linux")
    for name in ("debian-install", "installer", "web", "db", "bios", "rescue", "lab")
}


def inventory(
    *machines: Machine, groups: tuple[Group, ...] = (), default: str | None = None
) -> Inventory:
    return Inventory(
        profiles=PROFILES,
        machines={m.name: m for m in machines},
        groups={g.name: g for g in groups},
        default_profile=default,
    )


def group(
    name: str,
    profile: str,
    *,
    macs: tuple[str, ...] = (),
    uuids: tuple[str, ...] = (),
    archs: tuple[BootKey, ...] = (),
    labels: Mapping[str, str] | None = None,
    line: int = 1,
) -> Group:
    selector = Selector(macs=macs, uuids=uuids, archs=archs, labels=labels or {})
    return Group(name, selector, profile, Location("groups.toml", line))


WEB1 = Machine(
    "web1",
    mac=MAC1,
    uuid=UUID1,
    labels={"role": "web"},
    profile="debian-install",
    source=Location("inventory/web.toml", 3),
)


# --- normalisation --------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["52:54:00:AA:BB:01", "52-54-00-aa-bb-01", " 52:54:00:aa:bb:01 "])
def test_mac_forms(text: str) -> None:
    assert normalise_mac(text) == MAC1


@pytest.mark.parametrize("text", ["52:54:00:zz:00:01", "52:54:00:aa:bb", "525400aabb01", ""])
def test_bad_mac(text: str) -> None:
    with pytest.raises(ValueError, match=r"is not a MAC address \(six hex octets"):
        normalise_mac(text)


def test_mac_patterns() -> None:
    assert normalise_mac_pattern("52-54-00-*") == "52:54:00:*"
    assert normalise_mac_pattern("52:*") == "52:*"
    assert normalise_mac_pattern("52:54:00:AA:BB:01") == MAC1
    for bad in ("52:5*", "*", "52:54:00:aa:bb:01:*", "52:54:00:aa:bb:*:*"):
        with pytest.raises(ValueError, match="is not a MAC address or prefix"):
            normalise_mac_pattern(bad)


def test_uuid_forms() -> None:
    assert normalise_uuid("123456789ABCDEF0123456789ABCDEF0") == UUID1
    assert normalise_uuid("{12345678-9abc-def0-1234-56789abcdef0}") == UUID1
    with pytest.raises(ValueError, match="'nope' is not a UUID"):
        normalise_uuid("nope")


def test_machine_and_selector_normalise_on_construction() -> None:
    machine = Machine("m", mac="52-54-00-AA-BB-01", uuid=UUID1.upper())
    assert (machine.mac, machine.uuid) == (MAC1, UUID1)
    assert Selector(macs=("52-54-00-*",)).macs == ("52:54:00:*",)
    with pytest.raises(ValueError, match="not a MAC"):
        Machine("m", mac="nope")


def test_values_are_frozen_and_hashable() -> None:
    labels = {"role": "web"}
    machine = Machine("m", mac=MAC1, labels=labels)
    labels["role"] = "db"
    assert machine.labels == {"role": "web"}
    assert hash(machine) == hash(Machine("m", mac=MAC1, labels={"role": "web"}))
    with pytest.raises(TypeError):
        machine.labels["x"] = "y"  # type: ignore[index]
    assert Profile("p", "ipxe").method is Method.IPXE  # type: ignore[arg-type]


def test_location_and_problem_text() -> None:
    where = Location("machines/web.toml", 4)
    assert str(where) == "machines/web.toml:4"
    assert str(InventoryProblem(where, "machines.web1.mac", "bad")) == (
        "machines/web.toml:4: machines.web1.mac: bad"
    )
    assert str(InventoryProblem(None, "default.profile", "bad")) == "default.profile: bad"
    assert str(InventoryProblem(None, "", "bad")) == "bad"


def test_format_key_quotes_what_is_not_bare() -> None:
    assert format_key(("machines", "web1", "mac")) == "machines.web1.mac"
    assert format_key(("profiles", "a.b", "files", "preseed.cfg")) == (
        'profiles."a.b".files."preseed.cfg"'
    )
    assert format_key(("x", 'say "hi"\\')) == 'x."say \\"hi\\"\\\\"'


# --- resolve: machines ----------------------------------------------------------------------


def test_machine_by_mac_in_any_form() -> None:
    inv = inventory(WEB1)
    assert inv.machine_by_mac("52-54-00-AA-BB-01") is WEB1
    assert inv.machine_by_uuid(UUID1.upper()) is WEB1
    assert inv.machine_by_mac(MAC2) is None
    found = resolve(inv, ClientFacts(mac="52-54-00-AA-BB-01"))
    assert found is not None
    assert found.machine is WEB1
    assert found.group is None
    assert found.profile is PROFILES["debian-install"]
    assert found.reasons == (
        f"machine web1 (inventory/web.toml:3) matched by MAC {MAC1}",
        "profile debian-install named by machine web1",
    )


def test_machine_by_uuid_when_the_mac_is_unknown() -> None:
    found = resolve(inventory(WEB1), ClientFacts(mac=MAC2, uuid=UUID1.upper()))
    assert found is not None
    assert found.machine is WEB1
    assert found.reasons[0] == f"machine web1 (inventory/web.toml:3) matched by UUID {UUID1}"


def test_mac_wins_over_uuid() -> None:
    other = Machine("other", mac=MAC2, uuid=UUID2, profile="db")
    found = resolve(inventory(WEB1, other), ClientFacts(mac=MAC2, uuid=UUID1))
    assert found is not None
    assert found.machine is other


def test_boot_once_until_installed() -> None:
    machine = Machine("web1", mac=MAC1, profile="web", boot_once="installer")
    inv = inventory(machine)
    before = resolve(inv, ClientFacts(mac=MAC1))
    assert before is not None
    assert before.profile.name == "installer"
    assert before.reasons == (
        f"machine web1 matched by MAC {MAC1}",
        "boot-once: installer until installed",
    )
    after = resolve(inv, ClientFacts(mac=MAC1), installed={"web1"})
    assert after is not None
    assert after.profile.name == "web"
    assert after.reasons == (
        f"machine web1 matched by MAC {MAC1}",
        "boot-once installer is over: web1 is installed",
        "profile web named by machine web1",
    )


def test_installed_machine_without_profile_goes_to_groups() -> None:
    machine = Machine("web1", mac=MAC1, labels={"role": "web"}, boot_once="installer")
    inv = inventory(machine, groups=(group("web", "web", labels={"role": "web"}),))
    found = resolve(inv, ClientFacts(mac=MAC1), installed=["web1"])
    assert found is not None
    assert (found.profile.name, found.machine, found.group) == ("web", machine, inv.groups["web"])
    assert "machine web1 names no profile" in found.reasons


def test_machine_profile_beats_groups() -> None:
    inv = inventory(WEB1, groups=(group("all", "rescue"),))
    found = resolve(inv, ClientFacts(mac=MAC1))
    assert found is not None
    assert found.profile.name == "debian-install"


# --- resolve: groups ------------------------------------------------------------------------

MAC_GROUP = group("by-mac", "db", macs=(MAC1,), line=1)
LABEL_GROUP = group("web", "web", labels={"role": "web"}, line=10)
ARCH_GROUP = group("bios", "bios", archs=(BootClass.BIOS,), line=20)


def test_specificity_order() -> None:
    assert MAC_GROUP.selector.specificity() == (1, 0, 0, 0)
    assert LABEL_GROUP.selector.specificity() == (0, 0, 1, 0)
    assert ARCH_GROUP.selector.specificity() == (0, 0, 0, 1)
    assert (
        Selector(uuids=(UUID1,)).specificity() > Selector(labels={"a": "1", "b": "2"}).specificity()
    )
    assert Selector(labels={"a": "1", "b": "2"}).specificity() > LABEL_GROUP.selector.specificity()


@pytest.mark.parametrize(
    ("groups", "winner"),
    [
        ((ARCH_GROUP, LABEL_GROUP, MAC_GROUP), "by-mac"),
        ((MAC_GROUP, LABEL_GROUP, ARCH_GROUP), "by-mac"),
        ((ARCH_GROUP, LABEL_GROUP), "web"),
        ((LABEL_GROUP, ARCH_GROUP), "web"),
        ((ARCH_GROUP,), "bios"),
    ],
)
def test_mac_beats_labels_beats_arch(groups: tuple[Group, ...], winner: str) -> None:
    machine = Machine("web1", mac=MAC1, labels={"role": "web"})
    found = resolve(inventory(machine, groups=groups), ClientFacts(mac=MAC1, arch=Arch.BIOS))
    assert found is not None
    assert found.group is not None
    assert found.group.name == winner
    assert found.reasons[-1] == f"profile {found.profile.name} named by group {winner}"


def test_group_reasons_name_the_winner_and_what_it_beat() -> None:
    machine = Machine("web1", mac=MAC1, labels={"role": "web"}, source=Location("m.toml", 1))
    inv = inventory(machine, groups=(ARCH_GROUP, LABEL_GROUP))
    found = resolve(inv, ClientFacts(mac=MAC1, arch=0))
    assert found is not None
    assert found.reasons == (
        f"machine web1 (m.toml:1) matched by MAC {MAC1}",
        "machine web1 names no profile",
        "group web (groups.toml:10) matched: labels role=web; more specific than group bios",
        "profile web named by group web",
    )


def test_equal_groups_take_the_first() -> None:
    first = group("first", "web", archs=(BootClass.BIOS,))
    second = group("second", "db", archs=(0,))
    found = resolve(inventory(groups=(first, second)), ClientFacts(mac=MAC2, arch=0))
    assert found is not None
    assert found.group is first
    assert found.reasons[1].endswith("; tied with group second (defined later)")


def test_undescribed_client_never_matches_a_label_group() -> None:
    inv = inventory(groups=(LABEL_GROUP,))
    assert resolve(inv, ClientFacts(mac=MAC2)) is None
    labelled = Machine("web9", mac=MAC2, labels={"role": "db"})
    assert resolve(inventory(labelled, groups=(LABEL_GROUP,)), ClientFacts(mac=MAC2)) is None


@pytest.mark.parametrize(
    ("key", "arch", "matches"),
    [
        (BootClass.UEFI, 7, True),
        (BootClass.UEFI, 9, True),  # EFI BC is x64 too
        (BootClass.UEFI, 16, False),
        (BootClass.UEFI_HTTP, 16, True),
        (BootClass.BIOS, 0, True),
        (BootClass.BIOS, 7, False),
        (7, 7, True),
        (7, 9, False),
        (11, 11, True),
        (BootClass.UEFI, None, False),
        (BootClass.IPXE, 0, False),
    ],
)
def test_arch_matching_by_class_and_by_number(
    key: BootKey, arch: int | None, matches: bool
) -> None:
    inv = inventory(groups=(group("g", "lab", archs=(key,)),))
    found = resolve(inv, ClientFacts(mac=MAC2, arch=arch))
    assert (found is not None) == matches


@pytest.mark.parametrize(
    ("pattern", "mac", "matches"),
    [
        ("52:54:00:*", MAC1, True),
        ("52:*", "52-54-00-11-22-33", True),
        ("52:54:01:*", MAC1, False),
        ("52:54:00:aa:bb:*", MAC1, True),
        (MAC1, MAC1.upper(), True),
        (MAC1, MAC2, False),
        ("5:*", MAC1, False),
    ],
)
def test_mac_prefix_groups(pattern: str, mac: str, matches: bool) -> None:
    if pattern == "5:*":
        with pytest.raises(ValueError, match="not a MAC address or prefix"):
            Selector(macs=(pattern,))
        return
    inv = inventory(groups=(group("g", "lab", macs=(pattern,)),))
    found = resolve(inv, ClientFacts(mac=mac))
    assert (found is not None) == matches


def test_uuid_group_and_every_field_must_match() -> None:
    both = group("g", "lab", uuids=(UUID1,), archs=(BootClass.UEFI,))
    inv = inventory(groups=(both,))
    hit = resolve(inv, ClientFacts(mac=MAC2, uuid=UUID1, arch=7))
    assert hit is not None
    assert hit.reasons[1] == f"group g (groups.toml:1) matched: UUID {UUID1}, arch uefi"
    assert resolve(inv, ClientFacts(mac=MAC2, uuid=UUID1, arch=0)) is None
    assert resolve(inv, ClientFacts(mac=MAC2, arch=7)) is None


def test_empty_selector_takes_everyone() -> None:
    found = resolve(inventory(groups=(group("all", "rescue"),)), ClientFacts(mac=MAC2))
    assert found is not None
    assert found.reasons[1] == "group all (groups.toml:1) matched: it selects every client"


def test_default_and_nothing() -> None:
    found = resolve(inventory(groups=(LABEL_GROUP,), default="rescue"), ClientFacts(mac=MAC2))
    assert found is not None
    assert (found.profile.name, found.machine, found.group) == ("rescue", None, None)
    assert found.reasons == (
        f"no machine has MAC {MAC2}",
        "no group matches",
        "default profile rescue",
    )
    assert resolve(inventory(), ClientFacts(mac=MAC2, uuid=UUID2)) is None
    # A described machine without a profile, no group, no default: the caller decides.
    assert resolve(inventory(Machine("m", mac=MAC2)), ClientFacts(mac=MAC2)) is None


def test_odd_client_mac_finds_nothing_and_does_not_raise() -> None:
    inv = inventory(WEB1, groups=(group("g", "lab", macs=("52:54:00:*",)),), default="rescue")
    found = resolve(inv, ClientFacts(mac="20:00:00:00:00:00:00:01", uuid="junk"))
    assert found is not None
    assert found.profile.name == "rescue"


def test_dangling_profile_is_a_bug_not_a_fallback() -> None:
    machine = Machine("m", mac=MAC1, profile="nope")
    with pytest.raises(LookupError, match="machine m names profile 'nope'"):
        resolve(inventory(machine), ClientFacts(mac=MAC1))


def test_client_facts_from_client_info() -> None:
    from netbootd.boot.client import classify
    from netbootd.proto.dhcp.codec import MessageType
    from tests.helpers.dhcp_clients import BIOS_PXE, request

    info = classify(request(MessageType.DISCOVER, vendor_class=BIOS_PXE, arch=0, uuid=True))
    facts = ClientFacts.from_client(info)
    assert (facts.mac, facts.uuid, facts.arch) == (info.mac, info.uuid, 0)


# --- check ----------------------------------------------------------------------------------


def test_clean_inventory_has_no_problems() -> None:
    inv = inventory(
        WEB1,
        Machine("db1", mac=MAC2, profile="db"),
        groups=(MAC_GROUP, LABEL_GROUP, ARCH_GROUP),
        default="rescue",
    )
    assert check(inv) == []


def test_missing_profiles() -> None:
    inv = Inventory(
        profiles={"rescue": PROFILES["rescue"], "web": PROFILES["web"]},
        machines={
            "web1": Machine(
                "web1", mac=MAC1, profile="webb", boot_once="inst", source=Location("m.toml", 1)
            )
        },
        groups={"g": group("g", "nope", line=9)},
        default_profile="gone",
        default_source=Location("default.toml", 2),
    )
    assert [str(p) for p in check(inv)] == [
        "default.toml:2: default.profile: no profile 'gone' (profiles: rescue, web)",
        "groups.toml:9: groups.g.profile: no profile 'nope' (profiles: rescue, web)",
        "m.toml:1: machines.web1.boot-once: no profile 'inst' (profiles: rescue, web)",
        "m.toml:1: machines.web1.profile: no profile 'webb' (profiles: rescue, web)",
    ]
    assert [str(p) for p in check(Inventory(default_profile="x"))] == [
        "default.profile: no profile 'x' (no profile is defined)"
    ]


def test_duplicate_identities_name_both_machines() -> None:
    a = Machine(
        "a",
        mac=MAC1,
        uuid=UUID1,
        hostname="Web1",
        address=IPv4Address("10.0.0.5"),
        source=Location("a.toml", 1),
    )
    b = Machine(
        "b",
        mac=MAC1.upper(),
        uuid=UUID1,
        hostname="web1",
        address=IPv4Address("10.0.0.5"),
        source=Location("b.toml", 1),
    )
    assert [str(p) for p in check(Inventory(machines={"a": a, "b": b}))] == [
        f"b.toml:1: machines.b.mac: machine a (a.toml:1) has the same MAC {MAC1}",
        f"b.toml:1: machines.b.uuid: machine a (a.toml:1) has the same UUID {UUID1}",
        "b.toml:1: machines.b.hostname: machine a (a.toml:1) has the same hostname web1",
        "b.toml:1: machines.b.address: machine a (a.toml:1) has the same address 10.0.0.5",
    ]


def test_machine_that_no_client_can_be() -> None:
    problems = check(Inventory(machines={"m": Machine("m", hostname="m")}))
    assert [p.key for p in problems] == ["machines.m"]
    assert "needs a mac or a uuid" in problems[0].message


@pytest.mark.parametrize("method", [Method.IPXE, Method.PXELINUX, Method.GRUB])
def test_boot_method_needs_kernel_or_template(method: Method) -> None:
    bare = Profile("p", method, source=Location("p.toml", 1))
    assert [str(p) for p in check(Inventory(profiles={"p": bare}))] == [
        f"p.toml:1: profiles.p.method: method {method} needs a kernel or a template"
    ]
    assert check(Inventory(profiles={"p": Profile("p", method, template="t.j2")})) == []
    assert check(Inventory(profiles={"p": Profile("p", method, kernel="k")})) == []


@pytest.mark.parametrize("method", [Method.LOCAL, Method.EXIT])
def test_local_and_exit_need_nothing(method: Method) -> None:
    assert check(Inventory(profiles={"p": Profile("p", method)})) == []


def ties(*groups: Group) -> list[str]:
    return [str(p) for p in check(inventory(groups=groups))]


def test_tie_between_overlapping_equal_groups() -> None:
    a = group("a", "web", labels={"role": "web"}, line=1)
    b = group("b", "db", labels={"rack": "r1"}, line=5)
    assert ties(a, b) == [
        "groups.toml:5: groups.b.match: ties with group a (groups.toml:1): both selectors are "
        "equally specific and can match the same machine, so the winner would depend on file "
        "order (make one more specific, or the two disjoint)"
    ]


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ({}, {}),  # two catch-alls
        ({"archs": (BootClass.UEFI,)}, {"archs": (7,)}),
        ({"archs": (BootClass.UEFI,)}, {"archs": (9, 16)}),
        ({"archs": (0,)}, {"archs": (0,)}),
        ({"macs": ("52:54:00:*",)}, {"macs": (MAC1,)}),
        ({"macs": (MAC1,)}, {"macs": ("52:*",)}),
        ({"macs": ("52:54:*",)}, {"macs": ("52:54:00:*",)}),
        ({"uuids": (UUID1, UUID2)}, {"uuids": (UUID2,)}),
        # A field set on one side only keeps nothing apart.
        ({"macs": (MAC1,), "archs": (0,)}, {"macs": (MAC2, MAC1), "labels": {"x": "1"}}),
    ],
)
def test_overlapping_selectors(one: dict[str, object], other: dict[str, object]) -> None:
    a, b = Selector(**one), Selector(**other)  # type: ignore[arg-type]
    assert a.can_overlap(b) and b.can_overlap(a)


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ({"labels": {"role": "web"}}, {"labels": {"role": "db"}}),
        ({"archs": (BootClass.BIOS,)}, {"archs": (BootClass.UEFI,)}),
        ({"archs": (BootClass.UEFI,)}, {"archs": (16, 0)}),
        ({"archs": (7,)}, {"archs": (9,)}),
        ({"macs": ("52:54:00:*",)}, {"macs": ("52:54:01:*",)}),
        ({"macs": (MAC1,)}, {"macs": (MAC2,)}),
        ({"uuids": (UUID1,)}, {"uuids": (UUID2,)}),
    ],
)
def test_disjoint_selectors(one: dict[str, object], other: dict[str, object]) -> None:
    a, b = Selector(**one), Selector(**other)  # type: ignore[arg-type]
    assert not a.can_overlap(b) and not b.can_overlap(a)


def test_no_tie_when_disjoint_or_differently_specific() -> None:
    assert (
        ties(group("web", "web", labels={"role": "web"}), group("db", "db", labels={"role": "db"}))
        == []
    )
    assert (
        ties(group("bios", "bios", archs=(BootClass.BIOS,)), group("uefi", "lab", archs=(7, 9)))
        == []
    )
    # Equal selectors but more labels on one side: different specificity, the bigger wins.
    assert (
        ties(
            group("web", "web", labels={"role": "web"}),
            group("web-r1", "lab", labels={"role": "web", "rack": "r1"}),
        )
        == []
    )
    assert ties(group("all", "rescue"), group("bios", "bios", archs=(0,))) == []


def test_three_way_tie_reports_each_later_group() -> None:
    found = ties(group("a", "web", line=1), group("b", "db", line=2), group("c", "lab", line=3))
    assert [line.split(": ties with ")[0] for line in found] == [
        "groups.toml:2: groups.b.match",
        "groups.toml:3: groups.c.match",
        "groups.toml:3: groups.c.match",
    ]


def test_problems_come_in_file_order() -> None:
    inv = Inventory(
        profiles={"p": Profile("p", Method.GRUB, source=Location("z.toml", 1))},
        machines={
            "m": Machine("m", mac=MAC1, profile="x", source=Location("b/a.toml", 7)),
            "n": Machine("n", mac=MAC2, profile="x", source=Location("b/a.toml", 2)),
        },
        groups={"g": Group("g", Selector(), "y", Location("b.toml", 3))},
    )
    assert [str(p.location) for p in check(inv)] == [
        "b/a.toml:2",
        "b/a.toml:7",
        "b.toml:3",
        "z.toml:1",
    ]
