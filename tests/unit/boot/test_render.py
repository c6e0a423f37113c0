"""Rendering boot scripts and configs: built-in templates, the operator's own, and their errors."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest

from netbootd.boot.inventory import Method, Profile
from netbootd.boot.render import (
    VARIABLES,
    BootContext,
    Flavour,
    NameUse,
    RenderError,
    RenderLimits,
    compile_template,
    render_boot,
    render_text,
    template_uses,
    unknown_variable,
)

MAC = "52:54:00:aa:bb:01"


def context(profile: Profile, **extra: object) -> BootContext:
    return BootContext(mac=MAC, profile=profile, server="10.99.0.1", **extra)  # type: ignore[arg-type]


INSTALLER = Profile(
    name="installer",
    method=Method.IPXE,
    kernel="debian/linux",
    initrds=("debian/initrd.gz", "http://mirror.example/firmware.cpio.gz"),
    cmdline="console=ttyS0 hostname={{ hostname }} url={{ files_url }}/preseed.cfg",
)


def test_ipxe_script() -> None:
    text = render_boot(context(INSTALLER, machine="web1", hostname="web1"), Flavour.IPXE)
    assert text == (
        "#!ipxe\n"
        "# netbootd: machine web1, profile installer\n"
        "kernel http://10.99.0.1/debian/linux initrd=initrd.gz initrd=firmware.cpio.gz "
        "console=ttyS0 hostname=web1 url=http://10.99.0.1/m/52-54-00-aa-bb-01/preseed.cfg\n"
        "initrd http://10.99.0.1/debian/initrd.gz\n"
        "initrd http://mirror.example/firmware.cpio.gz\n"
        "boot\n"
    )


def test_pxelinux_config_and_port() -> None:
    profile = Profile(
        name="p", method=Method.PXELINUX, kernel="vmlinuz", initrds=("a.img", "b.img"),
        cmdline="ip={{ ip }} quiet",
    )  # fmt: skip
    text = render_boot(context(profile, ip="10.99.0.7", http_port=8080), Flavour.PXELINUX)
    assert "  KERNEL vmlinuz\n  INITRD a.img,b.img\n  APPEND ip=10.99.0.7 quiet\n" in text
    assert text.startswith("# netbootd: machine (undescribed) 52:54:00:aa:bb:01, profile p\n")
    assert "DEFAULT netbootd\nPROMPT 0\n" in text


def test_grub_config() -> None:
    profile = Profile(name="g", method=Method.GRUB, kernel="k", initrds=("i",), cmdline="x=1")
    text = render_boot(context(profile), Flavour.GRUB)
    assert "  linux /k x=1\n  initrd /i\n}" in text


@pytest.mark.parametrize(
    ("flavour", "platform", "expected"),
    [
        (Flavour.IPXE, "pcbios", "sanboot --no-describe --drive 0x80 || exit\n"),
        (Flavour.IPXE, "efi", "\nexit\n"),
        (Flavour.PXELINUX, "pcbios", "LOCALBOOT 0\n"),
        (Flavour.GRUB, "efi", "\nexit\n"),
    ],
)
def test_local_disk(flavour: Flavour, platform: str, expected: str) -> None:
    profile = Profile(name="disk", method=Method.LOCAL)
    assert render_boot(context(profile, platform=platform), flavour).endswith(expected)


def test_exit_everywhere() -> None:
    profile = Profile(name="next", method=Method.EXIT)
    assert render_boot(context(profile), Flavour.IPXE).endswith("\nexit\n")
    assert render_boot(context(profile), Flavour.PXELINUX).endswith("LOCALBOOT -1\n")


def test_method_without_a_form_in_that_flavour() -> None:
    with pytest.raises(RenderError, match="method ipxe has no pxelinux form"):
        render_boot(context(INSTALLER), Flavour.PXELINUX)


def test_custom_template_sees_labels_and_cmdline() -> None:
    custom = "#!ipxe\necho {{ labels.role }} {{ machine }}\nkernel {{ kernel_url }} {{ cmdline }}\n"
    text = render_boot(
        context(INSTALLER, machine="web1", labels={"role": "web"}), Flavour.IPXE, custom
    )
    assert text.splitlines()[1] == "echo web web1"
    assert text.splitlines()[2].endswith("/m/52-54-00-aa-bb-01/preseed.cfg")


def test_undefined_variable_is_an_error_with_its_template() -> None:
    with pytest.raises(RenderError, match=r"^t.ipxe: 'rack' is undefined"):
        render_text("#!ipxe\n{{ rack }}\n", "t.ipxe", {})
    profile = Profile(name="p", method=Method.IPXE, kernel="k", cmdline="{{ labels.rack }}")
    with pytest.raises(RenderError, match=r"profile p: cmdline"):
        render_boot(context(profile), Flavour.IPXE)


def test_syntax_error_names_the_line() -> None:
    with pytest.raises(RenderError, match=r"^custom.ipxe:3: "):
        compile_template("#!ipxe\nok\n{% if %}\n", "custom.ipxe")


def test_sandbox_refuses_reaching_outside_the_variables() -> None:
    with pytest.raises(RenderError, match="unsafe"):
        render_text("{{ ''.__class__.__mro__ }}", "evil", {})


def test_the_variables_a_template_reads_and_where() -> None:
    text = (
        "{% set n = 1 %}{{ n }}\n"
        "{{ hostnam }} {% for url in initrd_urls %}{{ url }}{% endfor %}\n"
        "{% if hostname %}{{ hostname }}{% endif %} {{ machine or 'node' }} {{ range(2) | list }}\n"
        "{{ labels.rack }}\n"
    )
    assert template_uses(text) == (
        NameUse("hostnam", 2, tested=False),
        NameUse("initrd_urls", 2, tested=False),
        NameUse("hostname", 3, tested=True),
        NameUse("machine", 3, tested=True),
        NameUse("labels", 4, tested=False),
    )
    assert template_uses("{{ cmdline }} {{ mac if ip else uuid }}") == (
        NameUse("cmdline", 1, tested=False),
        NameUse("ip", 1, tested=True),
        NameUse("mac", 1, tested=False),
        NameUse("uuid", 1, tested=False),
    )


def test_unknown_variables_are_named_with_a_guess() -> None:
    assert unknown_variable(NameUse("hostname", 1, tested=False)) is None
    assert unknown_variable(NameUse("cmdline", 1, tested=False)) is None
    assert unknown_variable(NameUse("range", 1, tested=False)) is None  # a Jinja2 global
    assert unknown_variable(NameUse("hostnam", 1, tested=False)) == (
        "'hostnam' is not a template variable (did you mean 'hostname'?)"
    )
    assert unknown_variable(NameUse("zzz", 1, tested=False)) == (
        "'zzz' is not a template variable (see the README's template variables)"
    )
    # The command line is rendered first: it cannot use itself.
    assert unknown_variable(NameUse("cmdline", 1, tested=False), cmdline=True) is not None


def test_every_variable_a_context_gives_is_known() -> None:
    full = context(INSTALLER, ip="10.99.0.5", machine="web1", hostname="web1")
    assert set(full.variables()) == VARIABLES


def ticking(step: float) -> Callable[[], float]:
    """A clock that moves ``step`` seconds each time it is read: a render's time limit, reached
    in a few thousand steps rather than seconds."""
    return itertools.count(0.0, step).__next__


def limits(step: float = 0.1, **given: float) -> RenderLimits:
    return RenderLimits(ticking(step), **given)  # type: ignore[arg-type]


# Each would run for hours, or hold the thread that renders it past any client's patience.
ENDLESS = {
    "nested loops": "{% for i in range(100000) %}{% for j in range(100000) %}"
    "{% endfor %}{% endfor %}",
    "nested loops over one range": "{% set r = range(100000) %}"
    "{% for i in r %}{% for j in r %}{% for k in r %}{% endfor %}{% endfor %}{% endfor %}",
    "a macro that calls itself twice": "{% macro m(n) %}{% if n %}{{ m(n - 1) }}{{ m(n - 1) }}"
    "{% endif %}{% endmacro %}{{ m(60) }}",
    "a recursive loop that branches": "{% for i in range(50) recursive %}"
    "{% if loop.depth < 10 %}{{ loop(range(50)) }}{% endif %}{% endfor %}",
}


@pytest.mark.parametrize("text", ENDLESS.values(), ids=ENDLESS.keys())
def test_a_render_stops_at_its_time_limit(text: str) -> None:
    with pytest.raises(RenderError, match=r"^t.ipxe: took longer than 2 s, its time limit$"):
        render_text(text, "t.ipxe", {}, limits())


def test_the_time_limit_holds_for_a_boot_script_and_its_command_line() -> None:
    spin = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    profile = Profile(name="p", method=Method.IPXE, kernel="k", cmdline=spin)
    with pytest.raises(RenderError, match="profile p: cmdline: took longer than 2 s"):
        render_boot(context(profile), Flavour.IPXE, None, limits())
    profile = Profile(name="p", method=Method.IPXE, kernel="k", template="t.ipxe")
    with pytest.raises(RenderError, match=r"t\.ipxe: took longer than 2 s"):
        render_boot(context(profile), Flavour.IPXE, "#!ipxe\n" + spin, limits())


def test_the_time_limit_leaves_an_ordinary_render_alone() -> None:
    # A real clock and the default limits: a built-in script renders as ever.
    profile = Profile(name="p", method=Method.IPXE, kernel="k", initrds=("a", "b"))
    fast = limits(step=1e-9)
    assert render_boot(context(profile), Flavour.IPXE, None, fast) == render_boot(
        context(profile), Flavour.IPXE
    )
    loops = "{% for i in range(1000) %}{% for j in range(3) %}{{ j }}{% endfor %}{% endfor %}"
    assert render_text(loops, "t", {}, fast) == "012" * 1000


GROWING = {
    "a loop that writes": "{% for i in range(100000) %}{% for j in range(100000) %}"
    "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx{% endfor %}{% endfor %}",
    "a repeated string": "{{ 'x' * 10**9 }}",
    "a repeated list": "{{ [0] * 10**9 }}",
    "a huge power": "{{ 10 ** 1000000000 }}",
    # A value that doubles each time round: memory would run out long before the clock.
    "doubled with ~": "{% set ns = namespace(s='x') %}{% for i in range(60) %}"
    "{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s | length }}",
    "doubled with +": "{% set ns = namespace(s=[0]) %}{% for i in range(60) %}"
    "{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s | length }}",
    "doubled by a filter": "{% set ns = namespace(s='x') %}{% for i in range(60) %}"
    "{% set ns.s = [ns.s, ns.s] | join %}{% endfor %}{{ ns.s | length }}",
    "doubled by a call": "{% set ns = namespace(s='x') %}{% for i in range(60) %}"
    "{% set ns.s = '{0}{0}'.format(ns.s) %}{% endfor %}{{ ns.s | length }}",
}


@pytest.mark.parametrize("text", GROWING.values(), ids=GROWING.keys())
def test_a_render_stops_at_its_output_limit(text: str) -> None:
    # A clock that never moves: the output limit alone stops it.
    with pytest.raises(RenderError, match=r"^t.cfg: .*more than 1048576 bytes"):
        render_text(text, "t.cfg", {}, limits(step=0.0, max_bytes=1 << 20))


def test_the_size_checks_leave_ordinary_values_alone() -> None:
    text = (
        "{{ ('ab' ~ 'cd') | upper }} {{ [1] + [2] }} {{ 'x' * 3 }} {{ 2 ** 10 }} "
        "{{ 'a-b'.split('-') }}"
    )
    assert render_text(text, "t", {}, limits()) == "ABCD [1, 2] xxx 1024 ['a', 'b']"


def test_the_output_limit_counts_utf8_octets() -> None:
    text = "{% for i in range(600) %}é{% endfor %}"
    assert render_text(text, "t", {}, limits(step=0.0, max_bytes=1200)) == "é" * 600
    with pytest.raises(RenderError, match="more than 1199 bytes"):
        render_text(text, "t", {}, limits(step=0.0, max_bytes=1199))


def test_without_limits_one_expression_still_cannot_grow_without_end() -> None:
    with pytest.raises(RenderError, match="a repeated value of more than 16777216 bytes"):
        render_text("{{ 'x' * 10**9 }}", "t", {})


@pytest.mark.parametrize(
    "text",
    [
        "{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}",
        "{% for i in [1] recursive %}{{ loop([1]) }}{% endfor %}",
    ],
)
def test_endless_recursion_is_a_template_error(text: str) -> None:
    with pytest.raises(RenderError, match=r"^t.ipxe: calls itself too deeply"):
        render_text(text, "t.ipxe", {}, limits(step=0.0))
    with pytest.raises(RenderError, match=r"^t.ipxe: calls itself too deeply"):
        render_text(text, "t.ipxe", {})


@pytest.mark.parametrize(
    ("tag", "text"),
    [
        ("include", "{% include 'other.ipxe' %}"),
        ("import", "{% import 'macros.j2' as m %}"),
        ("from ... import", "{% from 'macros.j2' import m %}"),
        ("extends", "{% extends 'base.ipxe' %}"),
    ],
)
def test_templates_cannot_read_other_files(tag: str, text: str) -> None:
    reason = f"{tag}: templates cannot read other files; write it into this one"
    with pytest.raises(RenderError) as raised:
        compile_template(f"#!ipxe\n\n{text}\n", "t/boot.ipxe")
    assert str(raised.value) == f"t/boot.ipxe:3: {reason}"
    assert (raised.value.line, raised.value.reason) == (3, reason)
    with pytest.raises(RenderError, match=f"^t/boot.ipxe:1: {reason}$"):
        render_text(text, "t/boot.ipxe", {})


def test_a_render_that_runs_on_pauses_at_each_look_at_the_clock() -> None:
    pauses: list[None] = []
    spin = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    slow = RenderLimits(ticking(0.1), pause=lambda: pauses.append(None))
    with pytest.raises(RenderError, match="its time limit"):
        render_text(spin, "t", {}, slow)
    assert len(pauses) == 19  # from the first look past RENDER_SHARE_AFTER to the deadline
    # An ordinary render never reaches RENDER_SHARE_AFTER: it never pauses.
    pauses.clear()
    fast = RenderLimits(ticking(1e-6), pause=lambda: pauses.append(None))
    profile = Profile(name="p", method=Method.IPXE, kernel="k", initrds=("a", "b"))
    render_boot(context(profile), Flavour.IPXE, None, fast)
    assert render_text("{% for i in range(1000) %}{{ i }}{% endfor %}", "t", {}, fast)
    assert pauses == []
