"""The operator's web page: the machines with their last verdict, a live feed of the journal,
one machine's boot as a timeline, and the leases.

Server-rendered with Jinja2, autoescaped: machine names, host names, file names and every other
field a client can put in a packet reach the page as text, never as markup. A small
hand-written script (``static/netbootd.js``) keeps it live: it listens to the journal's event
stream (``/api/v1/events/stream``, server-sent events), puts each event at the top of the feed
and fetches the server's own rendering of the parts an event changes. No build step, and nothing
loaded from outside the server: the provisioning network may have no way out.

Read-only, whoever asks: nothing here changes anything (the REST API's writes, behind its
token, do). The journal and the lease database are read in threads, each read on a connection
of its own, never on the event loop. Must not import :mod:`netbootd.transport`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

from aiohttp import web
from jinja2 import Environment, PackageLoader, StrictUndefined

from netbootd.api.view import OperatorView
from netbootd.boot.journal import BootEvent, Kind, Service
from netbootd.boot.verdict import Attempt, State, Step, Verdict, machine_verdicts
from netbootd.store.journal import JournalError, JournalStore
from netbootd.store.leases import StoreError, read_leases

MAX_MACHINES = 500  # rows on the overview, the latest heard of first
MACHINE_EVENTS = 5000  # a machine's latest events read for its verdicts
FEED_EVENTS = 50  # events on a page as it loads; the script keeps up to 200
EARLIER_ATTEMPTS = 20
STREAM_POLL = 0.5  # seconds between two looks at the journal, for each stream
STREAM_BATCH = 500  # events read at one look at most
KEEPALIVE = 15.0  # seconds of silence after which a stream sends a comment
MAX_STREAMS = 64  # streams open at once; past that a 503
RETRY_MS = 2000  # how soon a browser reconnects a stream that broke

_MAC = r"[0-9a-fA-F]{2}([-:][0-9a-fA-F]{2}){5}"
_STATIC = {"netbootd.js": "text/javascript", "netbootd.css": "text/css"}
_HTML = "text/html"

# The steps of a network boot as the page draws them, and the verdict's steps each stands for.
STAGES: tuple[tuple[str, str, tuple[Step, ...]], ...] = (
    ("dhcp", "DHCP", (Step.DHCP, Step.OFFERED, Step.ACKNOWLEDGED)),
    ("loader", "loader", (Step.LOADER,)),
    ("config", "config", (Step.CONFIG,)),
    ("kernel", "kernel", (Step.KERNEL,)),
    ("initrd", "initrd", (Step.INITRD,)),
    ("done", "done", (Step.DONE,)),
)
_ACKS = frozenset({"ACK", "PROXY-ACK", "BOOT-ITEM-ACK", "BOOTREPLY"})


# --------------------------------------------------------------------------------------------
# What the pages show, as the REST API's JSON has it


def event_json(event: BootEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "time": event.time,
        "mac": event.mac,
        "address": event.address,
        "service": event.service,
        "kind": event.kind,
        "fields": dict(event.fields),
    }


def verdict_json(verdict: Verdict) -> dict[str, Any]:
    return {
        "state": verdict.state.value,
        "step": verdict.step.value,
        "cause": verdict.cause,
        "file": verdict.file,
        "started": verdict.started,
        "ended": verdict.ended,
        "steps": [
            {
                "step": step.step.value,
                "time": step.time,
                "file": step.file,
                "bytes": step.bytes,
                "seconds": step.seconds,
            }
            for step in verdict.steps
        ],
    }


def _name(events: Sequence[BootEvent]) -> str:
    """The inventory's name for the machine, as its latest event that says one has it."""
    for event in reversed(events):
        name = event.get("machine")
        if name:
            return name
    return ""


def machine_summary(
    mac: str, events: Sequence[BootEvent], now: float, *, address: str = ""
) -> dict[str, Any]:
    """One machine as the machines list has it, from its events (oldest first)."""
    judged = machine_verdicts(events, now)
    return {
        "mac": mac,
        "name": _name(events),
        "source": "journal",
        "profile": "",
        "group": "",
        "address": address or next((e.address for e in reversed(events) if e.address), ""),
        "last_seen": events[-1].time if events else 0.0,
        "verdict": verdict_json(judged[-1][1]) if judged else None,
    }


def machines(store: JournalStore, now: float) -> list[dict[str, Any]]:
    """Every machine the journal has events of, the latest heard of first. Blocking."""
    found = []
    for seen in store.machines(limit=MAX_MACHINES):
        events = store.events(mac=seen.mac, limit=MACHINE_EVENTS, newest=True)
        found.append(machine_summary(seen.mac, events, now, address=seen.address))
    return found


def leases(path: Path, now: float) -> list[dict[str, Any]]:
    """The leases in the lease database at ``path``, by address ([] when there is none).
    Blocking; raises StoreError."""
    try:
        found = read_leases(path)
    except FileNotFoundError:
        return []
    return [
        {
            "address": str(lease.address),
            "mac": lease.mac,
            "state": lease.state.value,
            "ends": lease.expires,
            "hostname": lease.hostname or "",
            "machine": "",
            "expired": lease.expires <= now,
        }
        for lease in found
    ]


@dataclass(frozen=True, slots=True)
class Stage:
    """One step of the page's timeline: reached (with when, which file, how much), stalled
    (with why), waiting (the boot is in progress), skipped or not reached."""

    key: str
    label: str
    status: str  # reached, stalled, waiting, skipped, pending
    time: float = 0.0
    file: str = ""
    bytes: int = 0
    seconds: float = 0.0
    detail: str = ""


def timeline(attempt: Attempt, verdict: Verdict) -> list[Stage]:
    """The attempt's steps as the page draws them: DHCP, loader, config, kernel, initrd, done."""
    reached = {step.step: step for step in verdict.steps}
    address = next(
        (e.address for e in reversed(attempt.events) if e.get("decision") in _ACKS and e.address),
        "",
    )
    stages: list[Stage] = []
    open_stage = True  # the first stage not reached is where the boot stands
    for key, label, steps in STAGES:
        found = [reached[step] for step in steps if step in reached]
        if key == "done" and not found and verdict.state is State.BOOTED:
            stages.append(Stage(key, label, "reached", verdict.ended, detail="booted"))
            continue
        if found:
            first, last = found[0], found[-1]
            detail = ""
            if key == "dhcp":
                detail = f"acknowledged {address}" if address else last.step.value
            step = Stage(key, label, "reached", first.time, last.file, last.bytes, last.seconds)
            stages.append(replace(step, detail=detail))
            continue
        if verdict.state is State.BOOTED:
            status, detail = "skipped", "not asked for"
        elif open_stage and verdict.state is State.STALLED:
            status, detail = "stalled", verdict.cause
        elif open_stage:
            status, detail = "waiting", "in progress"
        else:
            status, detail = "pending", ""
        open_stage = False
        stages.append(Stage(key, label, status, detail=detail))
    return stages


def machine_page(store: JournalStore, mac: str, now: float) -> dict[str, Any] | None:
    """What one machine's page shows; None when the journal has no events of ``mac``.
    Blocking."""
    events = store.events(mac=mac, limit=MACHINE_EVENTS, newest=True)
    if not events:
        return None
    judged = machine_verdicts(events, now)
    attempt, verdict = judged[-1]
    earlier = [
        {"started": a.started, "events": len(a.events), "verdict": verdict_json(v)}
        for a, v in reversed(judged[:-1])
    ][:EARLIER_ATTEMPTS]
    return {
        "machine": machine_summary(mac, events, now),
        "verdict": verdict_json(verdict),
        "stages": timeline(attempt, verdict),
        "started": attempt.started,
        "attempt": [event_json(e) for e in attempt.events],
        "earlier": earlier,
        "attempts": len(judged),
    }


# --------------------------------------------------------------------------------------------
# Words and numbers for the page


def describe(event: Mapping[str, Any]) -> str:
    """One event in a few words, as the feed shows it (the script has the same rules)."""
    fields: Mapping[str, str] = event.get("fields") or {}
    service, kind = event.get("service", ""), event.get("kind", "")
    if service == Service.DHCP:
        words = [kind, "->", fields.get("decision", "") or "nothing"]
        if fields.get("address", "-") not in ("", "-"):
            words.append(fields["address"])
        if fields.get("file"):
            words.append(fields["file"])
        if fields.get("reason"):
            words.append(f"({fields['reason']})")
        return " ".join(words)
    if kind == Kind.TRANSFER:
        words = [fields.get("file", ""), fields.get("result", "")]
        if fields.get("bytes"):
            words.append(size(fields["bytes"]))
        return " ".join(word for word in words if word)
    return " ".join(word for word in (kind, fields.get("machine", "")) if word)


def size(octets: object) -> str:
    """A number of octets as people read it: 1.5 MiB."""
    try:
        value = float(str(octets))
    except ValueError:
        return ""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return ""  # not reached


def clock(moment: float) -> str:
    if not moment:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(moment))


def since(moment: float, start: float) -> str:
    return f"+{max(moment - start, 0.0):.1f} s"


def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("netbootd.api", "templates"),
        autoescape=True,  # every template: what clients send is text, never markup
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(size=size, clock=clock, since=since, describe=describe)
    return env


# --------------------------------------------------------------------------------------------
# The routes


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"status": status, "message": message}, status=status)


def _mac(text: str) -> str:
    return text.lower().replace("-", ":")


def _resume_from(request: web.Request) -> int | None:
    """Where a stream starts: after the event the browser last had (``Last-Event-ID``, sent
    as it reconnects), else after ``?after=``, else (None) after the latest there is now.
    Raises ValueError."""
    text = request.headers.get("Last-Event-ID") or request.query.get("after")
    if text is None or text == "":
        return None
    after = int(text)
    if after < 0:
        raise ValueError(text)
    return after


def _message(event: BootEvent) -> bytes:
    data = json.dumps(event_json(event), separators=(",", ":"))
    return f"id: {event.id}\ndata: {data}\n\n".encode()


class _Pages:
    """The handlers, over one view."""

    def __init__(self, view: OperatorView) -> None:
        self.view = view
        self.env = _environment()
        folder = resources.files("netbootd.api") / "static"
        self.static = {name: (folder / name).read_bytes() for name in _STATIC}
        self.streams = 0

    def _render(self, name: str, **context: Any) -> str:
        context.setdefault("journal", self.view.journal is not None)
        return self.env.get_template(name).render(**context)

    async def _page(self, build: Callable[[], str], status: int = 200) -> web.Response:
        try:
            text = await asyncio.to_thread(build)
        except (JournalError, StoreError) as exc:
            return _error(503, str(exc))
        return web.Response(text=text, status=status, content_type=_HTML)

    def _feed(self, store: JournalStore | None) -> tuple[list[dict[str, Any]], int]:
        if store is None:
            return [], 0
        events = store.events(limit=FEED_EVENTS, newest=True)
        after = events[-1].id if events else store.last_id()
        return [event_json(e) for e in reversed(events)], after

    def _machines(self, now: float) -> list[dict[str, Any]]:
        store = self.view.journal
        return machines(store, now) if store is not None else []

    def _leases(self, now: float) -> list[dict[str, Any]]:
        return leases(self.view.config.state_dir / "leases.sqlite3", now)

    async def overview(self, request: web.Request) -> web.Response:
        def build() -> str:
            now = time.time()
            feed, after = self._feed(self.view.journal)
            return self._render(
                "overview.html",
                now=now,
                feed=feed,
                after=after,
                machines=self._machines(now),
                leases=self._leases(now),
            )

        return await self._page(build)

    async def machines_part(self, request: web.Request) -> web.Response:
        return await self._page(
            lambda: self._render("_machines.html", machines=self._machines(time.time()))
        )

    async def leases_part(self, request: web.Request) -> web.Response:
        return await self._page(
            lambda: self._render("_leases.html", leases=self._leases(time.time()))
        )

    def _machine(self, mac: str, template: str) -> tuple[str, int]:
        store = self.view.journal
        after = store.last_id() if store is not None else 0
        page = machine_page(store, mac, time.time()) if store is not None else None
        if page is None:
            return self._render("missing.html", mac=mac, after=after), 404
        return self._render(template, mac=mac, after=after, **page), 200

    async def machine(self, request: web.Request) -> web.Response:
        return await self._machine_response(request, "machine.html")

    async def timeline_part(self, request: web.Request) -> web.Response:
        return await self._machine_response(request, "_timeline.html")

    async def _machine_response(self, request: web.Request, template: str) -> web.Response:
        mac = _mac(request.match_info["mac"])
        try:
            text, status = await asyncio.to_thread(self._machine, mac, template)
        except JournalError as exc:
            return _error(503, str(exc))
        return web.Response(text=text, status=status, content_type=_HTML)

    async def static_file(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        body = self.static.get(name)
        if body is None:
            return _error(404, f"no such file: {name}")
        return web.Response(
            body=body, content_type=_STATIC[name], headers={"Cache-Control": "no-cache"}
        )

    async def stream(self, request: web.Request) -> web.StreamResponse:
        """The journal's events as they are stored, as server-sent events: ``id`` the event's
        id, ``data`` its JSON; a comment when nothing happened for a while, so that proxies and
        browsers keep the connection."""
        store = self.view.journal
        if store is None:
            return _error(503, "the boot journal is off (journal = false)")
        try:
            after = _resume_from(request)
        except ValueError:
            return _error(400, "Last-Event-ID and after must be an event id (a whole number)")
        if self.streams >= MAX_STREAMS:
            return _error(503, f"too many event streams open (at most {MAX_STREAMS})")
        self.streams += 1
        try:
            if after is None:
                after = await asyncio.to_thread(store.last_id)
            response = web.StreamResponse(
                headers={
                    "Content-Type": "text/event-stream",
                    "Cache-Control": "no-cache",
                    "X-Accel-Buffering": "no",  # a reverse proxy in front passes it on at once
                }
            )
            await response.prepare(request)
            await response.write(f"retry: {RETRY_MS}\n\n".encode())
            await self._follow(request, response, store, after)
            return response
        except JournalError as exc:
            return _error(503, str(exc))
        finally:
            self.streams -= 1

    async def _follow(
        self, request: web.Request, response: web.StreamResponse, store: JournalStore, after: int
    ) -> None:
        """Send what the journal stores after ``after`` until the client goes, the server
        stops or the journal cannot be read."""
        stopping = self.view.stopping
        quiet = time.monotonic()
        while not stopping.is_set():
            # aiohttp does not cancel a handler whose client went; its transport says so.
            transport = request.transport
            if transport is None or transport.is_closing():
                return
            try:
                events = await asyncio.to_thread(store.events, after=after, limit=STREAM_BATCH)
                if events:
                    await response.write(b"".join(_message(e) for e in events))
                    after, quiet = events[-1].id, time.monotonic()
                    if len(events) == STREAM_BATCH:
                        continue  # more are waiting
                elif time.monotonic() - quiet >= KEEPALIVE:
                    await response.write(b": keep-alive\n\n")
                    quiet = time.monotonic()
            except (ConnectionError, JournalError):
                return  # the client went, or the journal is gone: the browser reconnects
            try:
                async with asyncio.timeout(STREAM_POLL):
                    await stopping.wait()
            except TimeoutError:
                pass


def web_routes(view: OperatorView) -> list[web.AbstractRouteDef]:
    """The page's routes over ``view``."""
    pages = _Pages(view)
    mac = f"{{mac:{_MAC}}}"
    return [
        web.get("/", pages.overview, allow_head=True),
        web.get("/ui/fragments/machines", pages.machines_part),
        web.get("/ui/fragments/leases", pages.leases_part),
        web.get(f"/ui/machines/{mac}", pages.machine),
        web.get(f"/ui/machines/{mac}/timeline", pages.timeline_part),
        web.get("/ui/static/{name}", pages.static_file),
        web.get("/api/v1/events/stream", pages.stream, allow_head=False),
    ]
