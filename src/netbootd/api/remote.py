"""``netbootd status`` and ``netbootd machines``: the REST API read from the command line.

A stdlib HTTP client (urllib), so the commands need nothing more, and the text they print from
the API's JSON: tables for the operator, the JSON as it came with ``--json``. Nothing here
serves or reads the state directory: what the commands show is the running server's.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

# Seconds to wait for the server's answer.
TIMEOUT = 10.0


class Unreachable(Exception):  # noqa: N818 - the server cannot be reached: one line says why
    """The server did not answer; the message is one line for the operator."""


class Refused(Exception):  # noqa: N818 - the server answered with an error
    """The API answered with an error: its status and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


def fetch(server: str, path: str, token: str | None = None) -> Any:
    """GET ``path`` of the API at ``server``; the JSON it answered. Raises :class:`Unreachable`
    or :class:`Refused`."""
    url = server.rstrip("/") + path
    request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as answer:  # noqa: S310
            return json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        try:
            body = json.loads(exc.read())
            message = str(body.get("message", exc.reason))
        except (ValueError, AttributeError):
            message = str(exc.reason)
        raise Refused(exc.code, message) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise Unreachable(f"cannot reach netbootd at {server}: {reason}") from None


def machine_path(ident: str) -> str:
    return "/api/v1/machines/" + urllib.parse.quote(ident, safe=":")


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s"


def _when(stamp: float | None) -> str:
    if stamp is None:
        return "-"
    return datetime.fromtimestamp(stamp).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _clock(stamp: float) -> str:
    return datetime.fromtimestamp(stamp).astimezone().strftime("%H:%M:%S")


def _table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines += [
        "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    return lines


def status_text(status: Mapping[str, Any], counters: Mapping[str, Mapping[str, int]]) -> str:
    """``netbootd status``: what runs, since when, and its counters."""
    services = status.get("services", {})
    where = ""
    if status.get("interface"):
        where = f" on {status['interface']}"
        if status.get("address"):
            where += f" {status['address']}"
    journal = status.get("journal", {})
    inventory = status.get("inventory", {})
    lines = [
        f"netbootd {status.get('version', '?')}, up {_duration(float(status.get('uptime', 0)))} "
        f"(since {_when(status.get('started'))})",
        f"mode        {status.get('mode', '?')}{where}",
        "services    "
        + ", ".join(
            f"{name} {'on' if services.get(name) else 'off'}" for name in ("dhcp", "tftp", "http")
        ),
        "journal     "
        + (f"{journal.get('events', 0)} events" if journal.get("enabled") else "off"),
    ]
    if inventory.get("configured"):
        lines.append(
            f"inventory   {inventory.get('directory')}: {inventory.get('machines', 0)} machines "
            f"({inventory.get('api_machines', 0)} by the API), {inventory.get('profiles', 0)} "
            f"profiles, {inventory.get('groups', 0)} groups, {inventory.get('installed', 0)} "
            "installed"
        )
        lines += [f"            warning: {w}" for w in inventory.get("warnings", [])]
    else:
        lines.append("inventory   none")
    lines.append("api         " + ("writable (token)" if status.get("writable") else "read-only"))
    lines.append("counters")
    if not counters:
        lines.append("  none yet")
    for service, counts in sorted(counters.items()):
        shown = " ".join(f"{k}={v}" for k, v in sorted(counts.items())) or "-"
        lines.append(f"  {service:<8} {shown}")
    return "\n".join(lines) + "\n"


def verdict_text(verdict: Mapping[str, Any] | None) -> str:
    """``booted``, ``stalled at config: HTTP 404 for vmlinuz``, ``in-progress at kernel``."""
    if verdict is None:
        return "-"
    if verdict["state"] == "booted" and verdict["step"] == "done":
        return "booted"
    text = f"{verdict['state']} at {verdict['step']}"
    if verdict.get("cause"):
        text += f": {verdict['cause']}"
    return text


def machines_text(machines: Sequence[Mapping[str, Any]]) -> str:
    """``netbootd machines``: one line per machine."""
    if not machines:
        return "no machines: none in the inventory, none seen\n"
    rows = [
        [
            m.get("name") or "-",
            m.get("mac") or "-",
            m.get("address") or "-",
            m.get("profile") or "-",
            m.get("source", "-"),
            _when(m.get("last_seen")),
            verdict_text(m.get("verdict")),
        ]
        for m in machines
    ]
    columns = ("name", "mac", "address", "profile", "source", "last seen", "verdict")
    count = f"{len(machines)} machine" + ("" if len(machines) == 1 else "s")
    return "\n".join(_table(columns, rows)) + f"\n{count}\n"


def _event_line(event: Mapping[str, Any]) -> str:
    fields = event.get("fields", {})
    shown = " ".join(f"{k}={v}" for k, v in fields.items())
    address = event.get("address") or "-"
    when = _clock(event["time"])
    return f"    {when}  {event['service']:<9} {event['kind']:<10} {address:<15} {shown}".rstrip()


def machine_text(machine: Mapping[str, Any]) -> str:
    """``netbootd machines NAME``: the machine, then each boot attempt as a timeline."""
    lines = [
        f"machine   {machine.get('name') or '-'} ({machine.get('source')})",
        f"mac       {machine.get('mac') or '-'}",
        f"address   {machine.get('address') or '-'}",
        f"profile   {machine.get('profile') or '-'}"
        + (f" (group {machine['group']})" if machine.get("group") else ""),
    ]
    if machine.get("boot_once"):
        state = "installed" if machine.get("installed") else "not installed yet"
        lines.append(f"boot-once {machine['boot_once']}, {state}")
    if machine.get("defined_at"):
        lines.append(f"defined   {machine['defined_at']}")
    lines.append(f"last seen {_when(machine.get('last_seen'))}")
    lines.append(f"verdict   {verdict_text(machine.get('verdict'))}")
    attempts = machine.get("attempts", [])
    if not attempts:
        lines.append("no boot attempts in the journal")
    for number, attempt in enumerate(attempts, 1):
        verdict = attempt["verdict"]
        lines.append("")
        lines.append(
            f"attempt {number}: {_when(verdict['started'])}, {verdict_text(verdict)}"
            + (f" ({verdict['file']})" if verdict.get("file") else "")
        )
        steps = " -> ".join(step["step"] for step in verdict.get("steps", []))
        if steps:
            lines.append(f"  steps {steps}")
        lines += [_event_line(event) for event in attempt.get("events", [])]
    return "\n".join(lines) + "\n"
