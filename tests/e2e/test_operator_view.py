"""The operator's view of real boots: the journal, the verdicts and the API after firmware ran.

One netbootd serves a BIOS machine (SeaBIOS with the iPXE ROM of the e1000) and a UEFI one
(OVMF with EDK2's own PXE, which chainloads ``snponly.efi`` over TFTP into iPXE). Once both
booted their kernel, the API lists both with the verdict ``booted`` and each one's events in
the order they happened. Then the kernel is taken away, and a third machine's boot stops at it:
its verdict is ``stalled``, and names the missing file.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from netbootd_lab import BOOT_MARKER, Lab, NetbootdServer, start_vm
from netbootd_lab.payload import INITRD_NAME, IPXE_SCRIPT_NAME, KERNEL_NAME
from netbootd_lab.vm import EDK2_NIC, IPXE_NIC, Firmware, UefiBoot

pytestmark = pytest.mark.e2e

BOOT_TIMEOUT = 240
# The journal is written a few times a second; the API sees an event within this.
JOURNAL_DELAY = 10.0


def _api(lab: Lab, path: str) -> Any:
    """GET an API path from inside the lab, as JSON."""
    url = f"http://{lab.server_ip}/api/v1/{path}"
    answer = lab.ns_exec(["curl", "-sS", "--fail-with-body", url]).stdout
    return json.loads(answer)


def _machine(lab: Lab, mac: str, until: str, timeout: float = JOURNAL_DELAY) -> dict[str, Any]:
    """The API's view of one machine, once its latest verdict is ``until``."""
    deadline = time.monotonic() + timeout
    while True:
        machine: dict[str, Any] = _api(lab, f"machines/{mac}")
        verdict = machine.get("verdict") or {}
        if verdict.get("state") == until or time.monotonic() > deadline:
            return machine
        time.sleep(0.5)


def _sequence(machine: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The latest attempt's events as (service, kind, what): the decision or the file."""
    attempt = machine["attempts"][-1]
    found = []
    for event in attempt["events"]:
        fields = event["fields"]
        what = fields.get("decision", "") if event["service"] == "dhcp" else fields.get("file", "")
        found.append((event["service"], event["kind"], what))
    return found


def _in_order(sequence: list[tuple[str, str, str]], wanted: list[tuple[str, str, str]]) -> bool:
    """Whether ``wanted`` occurs in ``sequence`` in that order (other events between)."""
    position = 0
    for item in sequence:
        if position < len(wanted) and item == wanted[position]:
            position += 1
    return position == len(wanted)


def test_booted_and_stalled_machines_through_the_api(
    lab: Lab, ipxe_root: Path, tmp_path: Path, firmware_prerequisites: None
) -> None:
    server = NetbootdServer(
        lab,
        ipxe_root,
        state_dir=tmp_path / "state",
        log_path=lab.workdir / "netbootd.log",
        boot=(),
    ).start()

    bios = start_vm(lab, firmware=Firmware.BIOS, nic=IPXE_NIC)
    seconds = bios.wait_for(BOOT_MARKER, timeout=BOOT_TIMEOUT)
    print(f"\nBIOS booted after {seconds:.1f} s")
    bios.stop()
    uefi = start_vm(lab, firmware=Firmware.UEFI, nic=EDK2_NIC, uefi_boot=UefiBoot.PXE4)
    seconds = uefi.wait_for(BOOT_MARKER, timeout=BOOT_TIMEOUT)
    print(f"UEFI booted after {seconds:.1f} s")
    uefi.stop()

    listed = {m["mac"]: m for m in _api(lab, "machines")["machines"]}
    for vm in (bios, uefi):
        machine = _machine(lab, vm.mac, until="booted")
        verdict = machine["verdict"]
        assert verdict["state"] == "booted", (vm.mac, verdict, _sequence(machine))
        assert verdict["step"] == "done"
        assert verdict["cause"] == ""
        assert vm.mac in listed, sorted(listed)
        # Every event of the attempt is this machine's, in the order of their ids and times.
        events = machine["attempts"][-1]["events"]
        assert all(event["mac"] == vm.mac for event in events)
        ids = [event["id"] for event in events]
        assert ids == sorted(ids)
        times = [event["time"] for event in events]
        assert times == sorted(times)
        steps = [step["step"] for step in verdict["steps"]]
        assert steps[-3:] == ["kernel", "initrd", "done"], steps
        kernel = next(step for step in verdict["steps"] if step["step"] == "kernel")
        assert kernel["file"] == KERNEL_NAME
        assert kernel["bytes"] == (ipxe_root / KERNEL_NAME).stat().st_size

    # BIOS: iPXE is the ROM, so DHCP hands it the script at once; then the kernel and initrd.
    bios_events = _sequence(_api(lab, f"machines/{bios.mac}"))
    assert _in_order(
        bios_events,
        [
            ("dhcp", "DISCOVER", "OFFER"),
            ("dhcp", "REQUEST", "ACK"),
            ("http", "transfer", IPXE_SCRIPT_NAME),
            ("http", "transfer", KERNEL_NAME),
            ("http", "transfer", INITRD_NAME),
        ],
    ), bios_events
    # UEFI: EDK2's PXE loads snponly.efi over TFTP, which asks DHCP again as iPXE.
    uefi_events = _sequence(_api(lab, f"machines/{uefi.mac}"))
    assert _in_order(
        uefi_events,
        [
            ("dhcp", "DISCOVER", "OFFER"),
            ("dhcp", "REQUEST", "ACK"),
            ("tftp", "transfer", "snponly.efi"),
            ("dhcp", "DISCOVER", "OFFER"),
            ("dhcp", "REQUEST", "ACK"),
            ("http", "transfer", IPXE_SCRIPT_NAME),
            ("http", "transfer", KERNEL_NAME),
            ("http", "transfer", INITRD_NAME),
        ],
    ), uefi_events

    # A boot made to fail: the kernel the script names is not there any more.
    (ipxe_root / KERNEL_NAME).rename(tmp_path / KERNEL_NAME)
    broken = start_vm(lab, firmware=Firmware.BIOS, nic=IPXE_NIC)
    deadline = time.monotonic() + BOOT_TIMEOUT
    while time.monotonic() < deadline:
        text = server.log_text()
        if f"path=/{KERNEL_NAME} status=404" in text:
            break
        time.sleep(0.5)
    else:
        pytest.fail("the failing machine never asked for the kernel")
    machine = _machine(lab, broken.mac, until="stalled")
    broken.stop()
    verdict = machine["verdict"]
    assert verdict["state"] == "stalled", (verdict, _sequence(machine))
    assert verdict["step"] == "config"
    assert verdict["file"] == KERNEL_NAME
    assert KERNEL_NAME in verdict["cause"] and "404" in verdict["cause"], verdict["cause"]
    # The booted machines keep their verdicts.
    listed = {m["mac"]: m for m in _api(lab, "machines")["machines"]}
    assert listed[bios.mac]["verdict"]["state"] == "booted"
    assert listed[broken.mac]["verdict"]["state"] == "stalled"
