"""The web page's pure parts: the timeline drawn from a verdict, and the words for sizes and
events."""

from __future__ import annotations

from netbootd.api.rest import event_json
from netbootd.api.web import describe, size, timeline
from netbootd.boot.journal import BootEvent
from netbootd.boot.verdict import machine_verdicts

MAC = "52:54:00:00:00:01"
T0 = 1_700_000_000.0


def dhcp(t: float, kind: str, decision: str, file: str = "undionly.kpxe") -> BootEvent:
    fields = {"decision": decision, "address": "192.0.2.5", "file": file, "client": "pxe"}
    return BootEvent(T0 + t, MAC, "192.0.2.5", "dhcp", kind, fields)


def transfer(t: float, name: str, result: str = "ok", sent: str = "1000") -> BootEvent:
    fields = {"file": name, "result": result, "bytes": sent, "seconds": "0.5"}
    return BootEvent(T0 + t, MAC, "192.0.2.5", "tftp", "transfer", fields)


def stages(events: list[BootEvent], now: float) -> dict[str, tuple[str, str]]:
    attempt, verdict = machine_verdicts(events, now)[-1]
    return {s.key: (s.status, s.detail) for s in timeline(attempt, verdict)}


BEGUN = [dhcp(0, "DISCOVER", "OFFER"), dhcp(0.2, "REQUEST", "ACK")]


def test_in_progress_waits_at_the_next_step() -> None:
    got = stages([*BEGUN, transfer(1, "undionly.kpxe")], T0 + 2)
    assert got["dhcp"] == ("reached", "acknowledged 192.0.2.5")
    assert got["loader"][0] == "reached"
    assert got["config"] == ("waiting", "in progress")
    assert {got[k][0] for k in ("kernel", "initrd", "done")} == {"pending"}


def test_a_stall_is_marked_at_the_step_that_did_not_come_with_its_cause() -> None:
    got = stages([*BEGUN, transfer(1, "undionly.kpxe", result="not found", sent="0")], T0 + 2)
    status, cause = got["loader"]
    assert status == "stalled" and "undionly.kpxe not found" in cause
    assert got["config"] == ("pending", "")


def test_booted_marks_done_and_what_was_not_needed() -> None:
    events = [*BEGUN, transfer(1, "pxelinux.0"), transfer(2, "pxelinux.cfg/default"),
              transfer(3, "vmlinuz")]  # fmt: skip
    got = stages(events, T0 + 500)  # quiet long enough: a kernel that needs no initrd
    assert got["kernel"][0] == "reached"
    assert got["initrd"] == ("skipped", "not asked for")
    assert got["done"] == ("reached", "booted")
    full = stages([*events, transfer(4, "initrd.img")], T0 + 5)
    assert full["initrd"][0] == full["done"][0] == "reached"


def test_words() -> None:
    assert [size(n) for n in (0, 512, 71234, 3.5 * 2**20, 5 * 2**30, "x")] == [
        "0 B", "512 B", "69.6 KiB", "3.5 MiB", "5.0 GiB", "",
    ]  # fmt: skip
    assert describe(event_json(BEGUN[1])) == "REQUEST -> ACK 192.0.2.5 undionly.kpxe"
    assert describe(event_json(transfer(1, "vmlinuz", sent="2048"))) == "vmlinuz ok 2.0 KiB"
    refused = BootEvent(T0, MAC, "", "dhcp", "DISCOVER", {"decision": "ignored", "reason": "r"})
    assert describe(event_json(refused)) == "DISCOVER -> ignored (r)"
