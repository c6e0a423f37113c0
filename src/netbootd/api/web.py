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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from importlib import resources
from typing import Any

from aiohttp import web
from jinja2 import Environment, PackageLoader, StrictUndefined

from netbootd.api import rest
from netbootd.api.view import OperatorView
from netbootd.boot.inventory import normalise_mac
from netbootd.boot.journal import BootEvent, Kind, Service
from netbootd.boot.verdict import Attempt, State, Step, Verdict
from netbootd.store.journal import JournalError, JournalStore
from netbootd.store.leases import StoreError

MAX_MACHINES = 500  # rows on the overview, the latest heard of first
MACHINE_EVENTS = rest.MACHINE_EVENTS  # a machine's latest events read for its verdicts
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
# What the pages show: the REST API's own summaries (api/rest.py), so that the page and the
# JSON never disagree


def _journal_name(store: JournalStore | None, mac: str | None) -> str:
    """The inventory's name for ``mac`` when its DHCP was answered, as the journal kept it: a
    name for a machine the inventory no longer lists (or was never given)."""
    if store is None or not mac:
        return ""
    for event in reversed(store.events(mac=mac, limit=200, newest=True)):
        name = event.get("machine")
        if name:
            return name
    return ""


def machines(api: rest.Api) -> list[dict[str, Any]]:
    """Every machine, as ``GET /api/v1/machines`` lists them, the latest heard of first; a
    name from the journal where the inventory has none. Blocking."""
    # The API's own listing, lookup and readings (rest's), shared so that the two agree.
    found = rest.all_machines(api)
    for summary in found[:MAX_MACHINES]:
        if not summary.get("name"):
            summary["name"] = _journal_name(api.view.journal, summary.get("mac"))  # type: ignore[arg-type]
    return found[:MAX_MACHINES]


async def leases(api: rest.Api, now: float) -> list[dict[str, Any]]:
    """The leases in force, as ``GET /api/v1/leases`` has them, each marked expired or not;
    [] when this server hands out no addresses."""
    found = await rest.lease_list(api)
    names = rest.machine_names(api)
    rows: list[dict[str, Any]] = []
    for lease in found or []:
        row = rest.lease_json(lease, names)
        row["expired"] = lease.expires <= now
        rows.append(row)
    return rows


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


def machine_page(api: rest.Api, mac: str, now: float) -> dict[str, Any] | None:
    """What one machine's page shows; None when neither the inventory nor the journal knows
    ``mac``. Blocking."""
    try:
        found = rest.find_machine(api, mac)
    except rest.ApiError:
        return None
    events = rest.events_of(api, found.mac, MACHINE_EVENTS)
    summary, judged = rest.machine_summary(api, found, events, now)
    if not summary.get("name"):
        summary["name"] = _journal_name(api.view.journal, found.mac)
    if not judged:
        return None
    attempt, verdict = judged[-1]
    earlier = [
        {"started": a.started, "events": len(a.events), "verdict": rest.verdict_json(v)}
        for a, v in reversed(judged[:-1])
    ][:EARLIER_ATTEMPTS]
    return {
        "machine": summary,
        "verdict": rest.verdict_json(verdict),
        "stages": timeline(attempt, verdict),
        "started": attempt.started,
        "attempt": [rest.event_json(e) for e in attempt.events],
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


def clock(moment: float | None) -> str:
    if not moment:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(moment))


def since(moment: float | None, start: float) -> str:
    if moment is None:
        return ""
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
    return normalise_mac(text)  # the route's pattern admits only what this reads


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
    data = json.dumps(rest.event_json(event), separators=(",", ":"))
    return f"id: {event.id}\ndata: {data}\n\n".encode()


class _Pages:
    """The handlers, over one view."""

    def __init__(self, view: OperatorView) -> None:
        self.view = view
        self.api = rest.Api(view)
        self.env = _environment()
        folder = resources.files("netbootd.api") / "static"
        self.static = {name: (folder / name).read_bytes() for name in _STATIC}
        self.streams = 0

    def _render(self, name: str, **context: Any) -> str:
        context.setdefault("journal", self.view.journal is not None)
        return self.env.get_template(name).render(**context)

    async def _page(self, build: Callable[[], tuple[str, int]]) -> web.Response:
        try:
            text, status = await asyncio.to_thread(build)
        except (JournalError, StoreError) as exc:
            return _error(503, str(exc))
        return web.Response(text=text, status=status, content_type=_HTML)

    def _feed(self, store: JournalStore | None) -> tuple[list[dict[str, Any]], int]:
        if store is None:
            return [], 0
        events = store.events(limit=FEED_EVENTS, newest=True)
        after = events[-1].id if events else store.last_id()
        return [rest.event_json(e) for e in reversed(events)], after

    async def lease_list(self) -> list[dict[str, Any]] | web.Response:
        try:
            return await leases(self.api, time.time())
        except StoreError as exc:
            return _error(503, str(exc))

    async def overview(self, request: web.Request) -> web.Response:
        found = await self.lease_list()
        if isinstance(found, web.Response):
            return found

        def build() -> tuple[str, int]:
            feed, after = self._feed(self.view.journal)
            rows = machines(self.api)
            return self._render(
                "overview.html", feed=feed, after=after, machines=rows, leases=found
            ), 200

        return await self._page(build)

    async def machines_part(self, request: web.Request) -> web.Response:
        return await self._page(
            lambda: (self._render("_machines.html", machines=machines(self.api)), 200)
        )

    async def leases_part(self, request: web.Request) -> web.Response:
        found = await self.lease_list()
        if isinstance(found, web.Response):
            return found
        return web.Response(text=self._render("_leases.html", leases=found), content_type=_HTML)

    def _machine(self, mac: str, template: str) -> tuple[str, int]:
        store = self.view.journal
        after = store.last_id() if store is not None else 0
        page = machine_page(self.api, mac, time.time())
        if page is None:
            return self._render("missing.html", mac=mac, after=after), 404
        return self._render(template, mac=mac, after=after, **page), 200

    async def machine(self, request: web.Request) -> web.Response:
        mac = _mac(request.match_info["mac"])
        return await self._page(lambda: self._machine(mac, "machine.html"))

    async def timeline_part(self, request: web.Request) -> web.Response:
        mac = _mac(request.match_info["mac"])
        return await self._page(lambda: self._machine(mac, "_timeline.html"))

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
        mac: str | None = None
        if request.query.get("mac"):
            try:
                mac = normalise_mac(request.query["mac"])
            except ValueError:
                return _error(400, f"mac={request.query['mac']}: not a MAC address")
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
            await self._follow(request, response, store, after, mac)
            return response
        except JournalError as exc:
            return _error(503, str(exc))
        finally:
            self.streams -= 1

    async def _follow(
        self,
        request: web.Request,
        response: web.StreamResponse,
        store: JournalStore,
        after: int,
        mac: str | None,
    ) -> None:
        """Send what the journal stores after ``after`` (of ``mac`` only, unless None) until
        the client goes, the server stops or the journal cannot be read."""
        stopping = self.view.stopping
        quiet = time.monotonic()
        while not stopping.is_set():
            # aiohttp does not cancel a handler whose client went; its transport says so.
            transport = request.transport
            if transport is None or transport.is_closing():
                return
            try:
                events = await asyncio.to_thread(
                    store.events, mac=mac, after=after, limit=STREAM_BATCH
                )
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
