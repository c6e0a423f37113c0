"""Boot attempts and their verdicts, over event sequences as the journal records real boots."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from netbootd.boot.journal import BootEvent
from netbootd.boot.verdict import (
    IDLE,
    QUIET,
    Attempt,
    State,
    Step,
    TimelineStep,
    attempts,
    machine_verdicts,
    verdict,
)

MAC = "52:54:00:12:34:56"
ADDRESS = "10.0.0.50"
T0 = 1_700_000_000.0
LATER = T0 + 3600.0  # long after every sequence here: quiet has passed


class Recorder:
    """Builds one machine's events, each some seconds after the one before."""

    def __init__(self, start: float = T0) -> None:
        self.time = start
        self.events: list[BootEvent] = []

    def _add(self, after: float, service: str, kind: str, **fields: str) -> Recorder:
        self.time += after
        self.events.append(
            BootEvent(self.time, MAC, ADDRESS, service, kind, fields, len(self.events) + 1)
        )
        return self

    def dhcp(self, kind: str, decision: str, after: float = 0.5, **fields: str) -> Recorder:
        fields.setdefault("address", ADDRESS if decision in ("OFFER", "ACK") else "-")
        return self._add(after, "dhcp", kind, decision=decision, **fields)

    def lease(self, file: str, client: str = "pxe", **fields: str) -> Recorder:
        """DISCOVER -> OFFER, REQUEST -> ACK, both with ``file``."""
        self.dhcp("DISCOVER", "OFFER", file=file, client=client, port="67", **fields)
        return self.dhcp("REQUEST", "ACK", file=file, client=client, port="67", **fields)

    def fetch(
        self,
        service: str,
        file: str,
        role: str,
        result: str = "ok",
        after: float = 1.0,
        **more: str,
    ) -> Recorder:
        size = more.pop("size", "1000000")
        sent = more.pop("bytes", size if result == "ok" else "0")
        fields = {"file": file, "role": role, "result": result, "bytes": sent, "size": size}
        fields.setdefault("seconds", "0.5")
        fields.update(more)
        return self._add(after, service, "transfer", **fields)

    def installed(self, after: float) -> Recorder:
        return self._add(after, "inventory", "installed", machine="web1")

    def attempt(self) -> Attempt:
        return Attempt(tuple(self.events))


def bios_ipxe_chainload() -> Recorder:
    """BIOS PXE ROM -> undionly.kpxe over TFTP -> iPXE asks again -> HTTP script -> kernel ->
    initrd."""
    return (
        Recorder()
        .lease("undionly.kpxe")
        .fetch("tftp", "undionly.kpxe", "loader", result="size query", bytes="0")
        .fetch("tftp", "undionly.kpxe", "loader", size="70000", block="137")
        .lease("http://10.0.0.1/boot.ipxe", client="ipxe")
        .fetch("http", "/boot.ipxe", "config", status="200", size="300", rendered="yes")
        .fetch("http", "/debian/vmlinuz", "kernel", status="200", size="8000000", seconds="0.4")
        .fetch("http", "/debian/initrd.gz", "initrd", status="200", size="30000000")
    )


def test_a_bios_ipxe_chainload_boots_as_one_attempt() -> None:
    rec = bios_ipxe_chainload()
    found = attempts(rec.events)
    assert len(found) == 1
    result = verdict(found[0], now=rec.time + 1)
    assert (result.state, result.step, result.cause, result.file) == (
        State.BOOTED,
        Step.DONE,
        "",
        "",
    )
    assert result.started == T0 + 0.5
    assert result.ended == rec.time  # the initrd's event
    assert [s.step for s in result.steps] == list(Step)
    by_step = {s.step: s for s in result.steps}
    assert by_step[Step.ACKNOWLEDGED].file == "undionly.kpxe"  # the first round's
    assert by_step[Step.LOADER] == TimelineStep(Step.LOADER, T0 + 3.0, "undionly.kpxe", 70000, 0.5)
    assert by_step[Step.CONFIG].file == "boot.ipxe"
    assert by_step[Step.KERNEL] == TimelineStep(
        Step.KERNEL, by_step[Step.KERNEL].time, "debian/vmlinuz", 8000000, 0.4
    )
    assert by_step[Step.INITRD].bytes == 30000000
    assert by_step[Step.DONE].time == rec.time


def test_each_step_of_the_chainload_on_the_way() -> None:
    rec = bios_ipxe_chainload()
    seen = []
    for count in range(1, len(rec.events) + 1):
        part = Attempt(tuple(rec.events[:count]))
        result = verdict(part, now=part.last + 1)
        seen.append((result.state.value, result.step.value))
    assert seen == [
        ("in-progress", "offered"),
        ("in-progress", "acknowledged"),
        ("in-progress", "acknowledged"),  # the size query reaches nothing
        ("in-progress", "loader"),
        ("in-progress", "loader"),  # iPXE's own DHCP round: not a new attempt
        ("in-progress", "loader"),
        ("in-progress", "config"),
        ("in-progress", "kernel"),
        ("booted", "done"),
    ]


def test_uefi_http_boot() -> None:
    rec = (
        Recorder()
        .lease("http://10.0.0.1/ipxe.efi", client="uefi-http", arch="x64-http")
        # EDK2 asks with a HEAD first: that fetches nothing, and is no loop with the GET.
        .fetch("http", "/ipxe.efi", "loader", status="200", method="HEAD", bytes="0")
        .fetch("http", "/ipxe.efi", "loader", status="200", method="GET")
        .lease("http://10.0.0.1/boot.ipxe", client="ipxe")
        .fetch("http", "/boot.ipxe", "config", status="200")
        .fetch("http", "/images/vmlinuz", "kernel", status="200")
        .fetch("http", "/images/initrd.img", "initrd", status="200")
    )
    result = verdict(rec.attempt(), now=rec.time)
    assert (result.state, result.step) == (State.BOOTED, Step.DONE)


def pxelinux() -> Recorder:
    rec = Recorder().lease("pxelinux.0").fetch("tftp", "pxelinux.0", "loader")
    rec.fetch("tftp", "ldlinux.c32", "file")
    # pxelinux looks for its configuration by MAC, then by address in hex, then "default".
    rec.fetch("tftp", "pxelinux.cfg/01-52-54-00-12-34-56", "config", result="not found")
    rec.fetch("tftp", "pxelinux.cfg/0A000032", "config", result="not found")
    return rec


def test_pxelinux_searching_its_configuration() -> None:
    rec = pxelinux()
    # Each miss is a failure as the last thing: stalled at once, until the next fetch.
    result = verdict(rec.attempt(), now=rec.time)
    assert (result.state, result.step) == (State.STALLED, Step.LOADER)
    assert result.cause == "TFTP: pxelinux.cfg/0A000032 not found"
    assert result.file == "pxelinux.cfg/0A000032"
    rec.fetch("tftp", "pxelinux.cfg/default", "config")
    assert verdict(rec.attempt(), now=rec.time).state is State.IN_PROGRESS
    rec.fetch("tftp", "vmlinuz", "kernel").fetch("tftp", "initrd.img", "initrd")
    result = verdict(rec.attempt(), now=rec.time)
    assert (result.state, result.step) == (State.BOOTED, Step.DONE)
    assert [s.file for s in result.steps if s.step is Step.CONFIG] == ["pxelinux.cfg/default"]


def test_pxelinux_with_its_configuration_by_mac() -> None:
    rec = Recorder().lease("pxelinux.0").fetch("tftp", "pxelinux.0", "loader")
    rec.fetch("tftp", "pxelinux.cfg/01-52-54-00-12-34-56", "config")
    rec.fetch("tftp", "vmlinuz", "kernel")
    result = verdict(rec.attempt(), now=rec.time + QUIET - 1)
    assert (result.state, result.step) == (State.IN_PROGRESS, Step.KERNEL)
    rec.fetch("tftp", "initrd.img", "initrd")
    assert verdict(rec.attempt(), now=rec.time).state is State.BOOTED


def test_proxy_mode_at_port_4011() -> None:
    rec = (
        Recorder()
        .dhcp("DISCOVER", "PROXY-OFFER", address="-", file="undionly.kpxe", port="67")
        .dhcp("REQUEST", "ignored", reason="REQUEST on port 67 is the site DHCP server's")
        .dhcp("REQUEST", "PROXY-ACK", address="-", file="undionly.kpxe", port="4011")
        .fetch("tftp", "undionly.kpxe", "loader")
        .dhcp("DISCOVER", "PROXY-OFFER", address="-", file="http://10.0.0.1/boot.ipxe")
        .fetch("http", "/boot.ipxe", "config", status="200")
        .fetch("http", "/vmlinuz", "kernel", status="200")
        .fetch("http", "/initrd.img", "initrd", status="200")
    )
    result = verdict(rec.attempt(), now=rec.time)
    assert (result.state, result.step) == (State.BOOTED, Step.DONE)
    assert [s.step for s in result.steps][:3] == [Step.DHCP, Step.OFFERED, Step.ACKNOWLEDGED]


def test_proxy_offer_never_followed() -> None:
    rec = Recorder().dhcp("DISCOVER", "PROXY-OFFER", address="-", file="undionly.kpxe")
    rec.dhcp("REQUEST", "ignored", reason="REQUEST on port 67 is the site DHCP server's")
    result = verdict(rec.attempt(), now=rec.time + QUIET)
    assert (result.state, result.step, result.file) == (
        State.STALLED,
        Step.OFFERED,
        "undionly.kpxe",
    )
    assert result.cause == (
        "offered the boot file undionly.kpxe but the client neither asked for it nor fetched"
        " it (then not answered: REQUEST on port 67 is the site DHCP server's)"
    )


# -- stalls -----------------------------------------------------------------------------------


def test_offered_but_never_requested() -> None:
    rec = Recorder().dhcp("DISCOVER", "OFFER", file="undionly.kpxe")
    assert verdict(rec.attempt(), now=rec.time + QUIET - 1).state is State.IN_PROGRESS
    result = verdict(rec.attempt(), now=rec.time + QUIET)
    assert (result.state, result.step) == (State.STALLED, Step.OFFERED)
    assert result.cause == "offered 10.0.0.50 but the client never requested it"
    assert result.ended == rec.time


def test_offered_and_the_client_went_to_another_server() -> None:
    rec = Recorder().dhcp("DISCOVER", "OFFER", file="undionly.kpxe")
    rec.dhcp("REQUEST", "ignored", reason="for server 10.0.0.2")
    result = verdict(rec.attempt(), now=LATER)
    assert result.cause == (
        "offered 10.0.0.50 but the client never requested it"
        " (then not answered: for server 10.0.0.2)"
    )


def test_not_answered() -> None:
    rec = Recorder().dhcp("DISCOVER", "ignored", reason="no free address in 10.0.0.0/24")
    result = verdict(rec.attempt(), now=LATER)
    assert (result.state, result.step, result.file) == (State.STALLED, Step.DHCP, "")
    assert result.cause == "not answered: no free address in 10.0.0.0/24"


def test_refused_with_a_nak() -> None:
    rec = Recorder().dhcp("REQUEST", "NAK", reason="10.9.9.9 is not on 10.0.0.0/24")
    result = verdict(rec.attempt(), now=LATER)
    assert (result.state, result.step) == (State.STALLED, Step.DHCP)
    assert result.cause == "refused (NAK): 10.9.9.9 is not on 10.0.0.0/24"


def test_told_the_boot_file_but_never_fetched_it() -> None:
    rec = Recorder().lease("undionly.kpxe")
    result = verdict(rec.attempt(), now=LATER)
    assert (result.state, result.step, result.file) == (
        State.STALLED,
        Step.ACKNOWLEDGED,
        "undionly.kpxe",
    )
    assert result.cause == "was told to boot undionly.kpxe but never fetched it"


def test_ipxe_told_its_script_but_never_fetched_it() -> None:
    rec = Recorder().lease("undionly.kpxe").fetch("tftp", "undionly.kpxe", "loader")
    rec.lease("http://10.0.0.1/boot.ipxe", client="ipxe")
    result = verdict(rec.attempt(), now=LATER)
    assert (result.state, result.step) == (State.STALLED, Step.LOADER)
    assert result.cause == "was told to boot http://10.0.0.1/boot.ipxe but never fetched it"
    assert result.file == "http://10.0.0.1/boot.ipxe"


def test_acknowledged_without_a_boot_file() -> None:
    rec = Recorder().dhcp("REQUEST", "ACK", client="pxe")
    result = verdict(rec.attempt(), now=LATER)
    assert (result.state, result.step) == (State.STALLED, Step.ACKNOWLEDGED)
    assert result.cause == "acknowledged 10.0.0.50 but handed out no boot file"


def test_tftp_timed_out_is_a_stall_at_once() -> None:
    rec = Recorder().lease("undionly.kpxe")
    rec.fetch("tftp", "undionly.kpxe", "loader", result="timed out", block="12", bytes="6144")
    result = verdict(rec.attempt(), now=rec.time)
    assert (result.state, result.step, result.file) == (
        State.STALLED,
        Step.ACKNOWLEDGED,
        "undionly.kpxe",
    )
    assert result.cause == "TFTP timed out at block 12 of undionly.kpxe"
    # The client retries, and the attempt goes on.
    rec.fetch("tftp", "undionly.kpxe", "loader")
    result = verdict(rec.attempt(), now=rec.time)
    assert (result.state, result.step, result.cause) == (State.IN_PROGRESS, Step.LOADER, "")


def test_http_404_for_the_kernel() -> None:
    rec = bios_ipxe_chainload()
    del rec.events[-2:]
    rec.fetch("http", "/debian/vmlinuz", "kernel", result="ok", status="404")
    result = verdict(rec.attempt(), now=rec.time)
    assert (result.state, result.step) == (State.STALLED, Step.CONFIG)
    assert (result.cause, result.file) == ("HTTP 404 for debian/vmlinuz", "debian/vmlinuz")


def test_the_initrd_not_found_after_the_kernel() -> None:
    rec = Recorder().lease("pxelinux.0").fetch("tftp", "pxelinux.0", "loader")
    rec.fetch("tftp", "pxelinux.cfg/default", "config").fetch("tftp", "vmlinuz", "kernel")
    rec.fetch("tftp", "initrd.img", "initrd", result="not found")
    result = verdict(rec.attempt(), now=LATER)
    assert (result.state, result.step) == (State.STALLED, Step.KERNEL)
    assert result.cause == "TFTP: initrd.img not found"


def test_access_denied_and_cut_short_and_errors() -> None:
    cases = {
        ("tftp", "access denied: outside the root", ""): (
            "TFTP: access denied to ../etc/passwd (outside the root)"
        ),
        ("http", "cut short: connection reset", ""): (
            "HTTP: ../etc/passwd cut short: connection reset after 0 of 1000000 bytes"
        ),
        ("tftp", "error: Permission denied", ""): (
            "TFTP: error sending ../etc/passwd: Permission denied"
        ),
        ("tftp", "client error: disk full", ""): "TFTP: ../etc/passwd client error: disk full",
        ("http", "ok", "500"): "HTTP 500 for ../etc/passwd",
    }
    for (service, result, status), cause in cases.items():
        rec = Recorder().lease("x").fetch(service, "../etc/passwd", "file", result, status=status)
        judged = verdict(rec.attempt(), now=rec.time)
        assert (judged.state, judged.cause) == (State.STALLED, cause)


def test_looped_on_the_loader() -> None:
    rec = Recorder().lease("undionly.kpxe").fetch("tftp", "undionly.kpxe", "loader")
    # iPXE is handed undionly.kpxe again instead of its script.
    rec.lease("undionly.kpxe", client="ipxe").fetch("tftp", "undionly.kpxe", "loader")
    result = verdict(rec.attempt(), now=rec.time)  # at once, no need to wait
    assert (result.state, result.step, result.file) == (
        State.STALLED,
        Step.LOADER,
        "undionly.kpxe",
    )
    assert result.cause == "looped: fetched undionly.kpxe 2 times"
    rec.lease("undionly.kpxe", client="ipxe").fetch("tftp", "undionly.kpxe", "loader")
    assert verdict(rec.attempt(), now=rec.time).cause == "looped: fetched undionly.kpxe 3 times"


def test_loader_then_nothing() -> None:
    rec = Recorder().lease("grubx64.efi").fetch("tftp", "grubx64.efi", "loader")
    result = verdict(rec.attempt(), now=LATER)
    assert (result.state, result.step, result.file) == (
        State.STALLED,
        Step.LOADER,
        "grubx64.efi",
    )
    assert result.cause == (
        "fetched the loader grubx64.efi but never asked for its configuration or script"
    )
    # A module fetched after it changes nothing in what is missing.
    rec.fetch("tftp", "ldlinux.c32", "file")
    assert verdict(rec.attempt(), now=LATER).cause == result.cause


def test_config_then_nothing() -> None:
    rec = Recorder().lease("grubx64.efi").fetch("tftp", "grubx64.efi", "loader")
    rec.fetch("tftp", "grub/grub.cfg", "config")
    result = verdict(rec.attempt(), now=LATER)
    assert (result.state, result.step, result.file) == (
        State.STALLED,
        Step.CONFIG,
        "grub/grub.cfg",
    )
    assert result.cause == "fetched its configuration grub/grub.cfg but never the kernel"


def test_a_size_query_then_nothing() -> None:
    rec = Recorder().lease("undionly.kpxe")
    rec.fetch("tftp", "undionly.kpxe", "loader", result="size query", bytes="0")
    assert verdict(rec.attempt(), now=rec.time).state is State.IN_PROGRESS
    result = verdict(rec.attempt(), now=LATER)
    assert result.cause == "asked the size of undionly.kpxe but never fetched it"


def test_a_head_answered_then_nothing_is_a_probe() -> None:
    rec = Recorder().lease("http://10.0.0.1/ipxe.efi", client="uefi-http")
    rec.fetch("http", "/ipxe.efi", "loader", status="200", method="HEAD", bytes="0")
    assert verdict(rec.attempt(), now=rec.time).state is State.IN_PROGRESS
    result = verdict(rec.attempt(), now=LATER)
    assert (result.state, result.step) == (State.STALLED, Step.ACKNOWLEDGED)
    assert result.cause == "asked the size of ipxe.efi but never fetched it"


def test_a_head_refused_is_a_failure() -> None:
    rec = Recorder().lease("http://10.0.0.1/ipxe.efi", client="uefi-http")
    rec.fetch("http", "/ipxe.efi", "loader", "not found", status="404", method="HEAD")
    result = verdict(rec.attempt(), now=rec.time)
    assert (result.state, result.cause) == (State.STALLED, "HTTP 404 for ipxe.efi")


# -- booted -----------------------------------------------------------------------------------


def test_a_kernel_with_no_initrd_boots_once_quiet() -> None:
    rec = Recorder().lease("http://10.0.0.1/boot.ipxe", client="ipxe")
    rec.fetch("http", "/boot.ipxe", "config", status="200")
    rec.fetch("http", "/memtest.bin", "kernel", status="200")
    kernel_time = rec.time
    assert verdict(rec.attempt(), now=rec.time + QUIET - 1).state is State.IN_PROGRESS
    result = verdict(rec.attempt(), now=rec.time + QUIET)
    assert (result.state, result.step, result.cause) == (State.BOOTED, Step.KERNEL, "")
    assert result.ended == kernel_time
    assert Step.DONE not in [s.step for s in result.steps]


def test_the_installer_fetching_its_kickstart_means_booted() -> None:
    rec = Recorder().lease("http://10.0.0.1/boot.ipxe", client="ipxe")
    rec.fetch("http", "/vmlinuz", "kernel", status="200")
    rec.fetch("http", "/ks.cfg", "provision", status="200")
    result = verdict(rec.attempt(), now=rec.time)
    assert (result.state, result.step) == (State.BOOTED, Step.DONE)


def test_installed() -> None:
    rec = Recorder().lease("pxelinux.0").fetch("tftp", "pxelinux.0", "loader")
    rec.installed(after=30.0)
    result = verdict(rec.attempt(), now=rec.time)
    assert (result.state, result.step, result.ended) == (State.BOOTED, Step.DONE, rec.time)


# -- attempts ---------------------------------------------------------------------------------


def test_an_idle_gap_begins_a_new_attempt() -> None:
    rec = Recorder().lease("undionly.kpxe")
    first = len(rec.events)
    rec.lease("undionly.kpxe")  # a reset soon after: the same attempt
    rec.dhcp("DISCOVER", "OFFER", after=IDLE + 1, file="undionly.kpxe")
    found = attempts(rec.events)
    assert [len(a.events) for a in found] == [first * 2, 1]
    assert found[1].started == rec.time
    assert found[0].last == rec.events[first * 2 - 1].time


def test_a_transfer_counts_from_when_it_began() -> None:
    rec = Recorder().lease("undionly.kpxe")
    rec.fetch("tftp", "undionly.kpxe", "loader", after=IDLE + 30, seconds=str(IDLE))
    assert len(attempts(rec.events)) == 1


def test_a_discover_after_a_boot_begins_a_new_attempt() -> None:
    rec = bios_ipxe_chainload()
    booted = len(rec.events)
    # The installed system's own DHCP, hours later, and its installed note: the same attempt.
    rec.dhcp("DISCOVER", "OFFER", after=7200.0, client="plain")
    rec.dhcp("REQUEST", "ACK", client="plain")
    rec.installed(after=600.0)
    kept = len(rec.events)
    rec.lease("undionly.kpxe")  # the firmware again, a minute later: a new boot
    found = attempts(rec.events)
    assert [len(a.events) for a in found] == [kept, len(rec.events) - kept]
    assert found[0].events[booted - 1].get("role") == "initrd"
    results = machine_verdicts(rec.events, now=rec.time)
    assert [(v.state, v.step) for _, v in results] == [
        (State.BOOTED, Step.DONE),
        (State.IN_PROGRESS, Step.ACKNOWLEDGED),
    ]
    assert [a for a, _ in results] == found
    # It booted when the initrd came, not when the last event of the attempt came.
    assert results[0][1].ended == found[0].events[booted - 1].time


def test_a_reset_after_the_kernel_begins_a_new_attempt() -> None:
    rec = Recorder().lease("pxelinux.0").fetch("tftp", "pxelinux.0", "loader")
    rec.fetch("tftp", "vmlinuz", "kernel").fetch("tftp", "initrd.img", "initrd", "timed out")
    rec.lease("pxelinux.0", after=20.0)
    assert [len(a.events) for a in attempts(rec.events)] == [5, 2]


def test_events_are_taken_in_time_order() -> None:
    rec = bios_ipxe_chainload()
    found = attempts(list(reversed(rec.events)))
    assert [a.events for a in found] == [tuple(rec.events)]


def test_no_events_no_attempts() -> None:
    assert attempts([]) == []
    assert machine_verdicts([], now=T0) == []
    empty = verdict(Attempt(()), now=T0)
    assert (empty.state, empty.step, empty.steps) == (State.IN_PROGRESS, Step.DHCP, ())


# -- properties -------------------------------------------------------------------------------

_TEXT = st.sampled_from(
    ["", "ok", "not found", "timed out", "size query", "404", "200", "x", "-", "12", "nan"]
)
_EVENTS = st.lists(
    st.builds(
        BootEvent,
        time=st.integers(0, 2000).map(lambda offset: T0 + offset),
        mac=st.just(MAC),
        address=st.just(ADDRESS),
        service=st.sampled_from(["dhcp", "tftp", "http", "inventory", ""]),
        kind=st.sampled_from(["DISCOVER", "REQUEST", "BOOTP", "transfer", "installed", "again"]),
        fields=st.dictionaries(
            st.sampled_from(
                ["decision", "file", "role", "result", "status", "bytes", "seconds", "client"]
            ),
            st.one_of(
                _TEXT,
                st.sampled_from(["OFFER", "ACK", "NAK", "ignored", "PROXY-OFFER", "plain"]),
                st.sampled_from(["loader", "config", "kernel", "initrd", "provision", "junk"]),
                st.text(max_size=4),
            ),
            max_size=5,
        ),
        id=st.integers(0, 10_000),
    ),
    max_size=25,
)


@given(_EVENTS, st.integers(0, 4000))
def test_attempts_partition_the_events_in_order_and_verdicts_never_raise(
    events: list[BootEvent], offset: int
) -> None:
    found = attempts(events)
    ordered = sorted(events, key=lambda e: (e.time, e.id))
    assert [e for a in found for e in a.events] == ordered
    assert all(a.events for a in found)
    for attempt in found:
        result = verdict(attempt, now=attempt.last + offset)
        assert result.started == attempt.started
        assert result.started <= result.ended <= attempt.last
        assert (result.cause == "") == (result.state is not State.STALLED)
        assert [s.step for s in result.steps] == sorted(
            (s.step for s in result.steps), key=list(Step).index
        )
        assert result.step in [s.step for s in result.steps] or not result.steps


def test_the_kernel_then_a_module_and_the_initrd_failed_before() -> None:
    rec = Recorder().lease("pxelinux.0").fetch("tftp", "pxelinux.0", "loader")
    rec.fetch("tftp", "initrd.img", "initrd", result="timed out", block="3")
    rec.fetch("tftp", "vmlinuz", "kernel").fetch("tftp", "menu.c32", "file")
    result = verdict(rec.attempt(), now=LATER)
    assert (result.state, result.step, result.file) == (State.STALLED, Step.KERNEL, "vmlinuz")
    assert result.cause == (
        "fetched the kernel vmlinuz but not the initrd: TFTP timed out at block 3 of initrd.img"
    )
