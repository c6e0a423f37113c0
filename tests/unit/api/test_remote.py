"""What ``netbootd status`` and ``netbootd machines`` print from the API's JSON."""

from __future__ import annotations

from netbootd.api.remote import machine_text, machines_text, status_text, verdict_text

STATUS = {
    "version": "0.1.0",
    "started": 1_700_000_000.0,
    "uptime": 3725.0,
    "mode": "authoritative",
    "interface": "eth0",
    "address": "10.0.0.1",
    "services": {"dhcp": True, "tftp": False, "http": True},
    "journal": {"enabled": True, "events": 42},
    "inventory": {"configured": True, "directory": "/inv", "machines": 3, "api_machines": 1},
    "writable": False,
}


def test_status() -> None:
    text = status_text(STATUS, {"dhcp": {"ack": 3, "offer": 4}})
    assert "up 1h02m" in text
    assert "mode        authoritative on eth0 10.0.0.1" in text
    assert "services    dhcp on, tftp off, http on" in text
    assert "journal     42 events" in text and "3 machines (1 by the API)" in text
    assert "api         read-only" in text
    assert "  dhcp     ack=3 offer=4" in text


def test_machines_table() -> None:
    verdict = {"state": "stalled", "step": "kernel", "cause": "vmlinuz not found", "file": ""}
    text = machines_text(
        [
            {"name": "web1", "mac": "52:54:00:aa:bb:01", "address": "10.0.0.5", "profile": "web",
             "source": "inventory", "last_seen": None, "verdict": verdict},
            {"name": None, "mac": "52:54:00:aa:bb:09", "address": None, "profile": None,
             "source": "seen", "last_seen": None, "verdict": None},
        ]
    )  # fmt: skip
    lines = text.splitlines()
    assert lines[0].split() == [
        "NAME",
        "MAC",
        "ADDRESS",
        "PROFILE",
        "SOURCE",
        "LAST",
        "SEEN",
        "VERDICT",
    ]
    assert lines[1].endswith("stalled at kernel: vmlinuz not found")
    assert lines[2].startswith("-     52:54:00:aa:bb:09")
    assert lines[-1] == "2 machines"
    assert machines_text([]).startswith("no machines")


def test_one_machine_timeline() -> None:
    steps = [{"step": "dhcp"}, {"step": "kernel"}, {"step": "initrd"}]
    verdict = {"state": "booted", "step": "initrd", "cause": "", "file": "", "started": 1e9,
               "ended": 1e9, "steps": steps}  # fmt: skip
    event = {"time": 1e9, "service": "http", "kind": "transfer", "address": "10.0.0.5",
             "fields": {"file": "vmlinuz", "result": "ok"}}  # fmt: skip
    text = machine_text(
        {"name": "web1", "source": "api", "mac": "52:54:00:aa:bb:01", "verdict": verdict,
         "attempts": [{"verdict": verdict, "events": [event]}]}
    )  # fmt: skip
    assert "machine   web1 (api)" in text and "attempt 1:" in text
    assert "steps dhcp -> kernel -> initrd" in text
    assert "http      transfer   10.0.0.5        file=vmlinuz result=ok" in text
    assert verdict_text(None) == "-"


def test_a_verdict_in_words() -> None:
    booted = {"state": "booted", "step": "done", "cause": ""}
    assert verdict_text(booted) == "booted"
    assert verdict_text({**booted, "step": "kernel"}) == "booted at kernel"
    stalled = {"state": "stalled", "step": "config", "cause": "HTTP 404 for vmlinuz"}
    assert verdict_text(stalled) == "stalled at config: HTTP 404 for vmlinuz"
    assert verdict_text(None) == "-"
