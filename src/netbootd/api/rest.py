"""The REST API under ``/api/v1``: machines, profiles, groups, leases, explain, status, counters
and the journal's events, and the OpenAPI 3.1 document that describes them.

Each route is one entry of :data:`ROUTES`: its method and path, the handler, and what the
document says of it (parameters, body model, responses), so the router and the document are
made from the same table. Reads need nothing; writes (POST, PUT, DELETE) need the bearer token
of ``api-token-file``, and without one the API is read-only. Every error is JSON
``{"status", "message"}`` (and ``problems`` for validation). Blocking work (the journal's
SQLite, the inventory's files) runs in the loop's executor. This module never touches a socket:
the HTTP server that mounts the routes is the transport's.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import time
import traceback
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from ipaddress import IPv4Address
from typing import Any, Literal, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError
from pydantic.json_schema import models_json_schema

from netbootd.api import schemas
from netbootd.api.view import OperatorView
from netbootd.boot.inventory import (
    Group,
    Inventory,
    InventoryError,
    Machine,
    Profile,
    normalise_mac,
)
from netbootd.boot.journal import BootEvent, Kind
from netbootd.boot.leases import Lease, LeaseState
from netbootd.boot.verdict import Attempt, Verdict, machine_verdicts
from netbootd.config import ConfigError
from netbootd.logs.events import format_event
from netbootd.services.machines import LiveInventory, Loaded
from netbootd.store.journal import JournalError
from netbootd.store.leases import StoreError, read_leases

log = logging.getLogger("netbootd.api")

PREFIX = "/api/v1"
# The machine page's events: the latest this many.
MACHINE_EVENTS = 500
# A request body larger than this is refused (a machine is a few hundred bytes).
MAX_BODY = 64 * 1024
EVENTS_LIMIT = 1000
# The list of machines judges each one's latest attempt from its latest this many events.
LIST_EVENTS = 200

_T = TypeVar("_T")


class ApiError(Exception):
    """What to answer instead: an HTTP status and a message (and each problem found)."""

    def __init__(
        self,
        status: int,
        message: str,
        problems: Sequence[str] = (),
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.problems = tuple(problems)
        self.headers = dict(headers or {})


def error_response(
    status: int,
    message: str,
    problems: Sequence[str] = (),
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    body: dict[str, object] = {"status": status, "message": message}
    if problems:
        body["problems"] = list(problems)
    return web.json_response(body, status=status, headers=dict(headers or {}))


def _dump(model: type[BaseModel], data: object) -> Any:
    """``data`` checked against ``model`` (what the document promises), as JSON values."""
    return model.model_validate(data).model_dump(mode="json")


def ok(model: type[BaseModel], data: object, status: int = 200) -> web.Response:
    return web.json_response(_dump(model, data), status=status)


async def blocking(work: Callable[[], _T]) -> _T:
    """``work`` in the loop's executor: file and SQLite reads never hold up the listener."""
    return await asyncio.get_running_loop().run_in_executor(None, work)


# --- the route table ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Param:
    """A query parameter, as the document describes it."""

    name: str
    schema: Mapping[str, object]
    description: str
    required: bool = False


Handler = Callable[["Api", web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str  # aiohttp's and OpenAPI's form: /api/v1/machines/{id}
    handler: Handler | None  # None: described here, served by another module's route
    summary: str
    responses: Mapping[int, tuple[type[BaseModel] | None, str]]
    params: tuple[Param, ...] = ()
    body: type[BaseModel] | None = None
    stream: bool = False  # a text/event-stream

    @property
    def write(self) -> bool:
        return self.method in {"POST", "PUT", "DELETE"}

    @property
    def pattern(self) -> re.Pattern[str]:
        return re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", self.path) + "$")


@dataclass
class Api:
    """The view and what the handlers share: one writer of the API's inventory at a time."""

    view: OperatorView
    writing: asyncio.Lock = field(default_factory=asyncio.Lock)
    clock: Callable[[], float] = time.time
    # The API's answers by status ("status-200", "status-401"), shown with the counters.
    counters: Counter[str] = field(default_factory=Counter)

    # -- what the handlers need --------------------------------------------------------------

    def inventory(self) -> LiveInventory:
        if self.view.inventory is None:
            raise ApiError(
                409,
                "no inventory directory is configured (inventory in the config file, or "
                "--inventory): there is no inventory to keep machines in",
            )
        return self.view.inventory

    def check_token(self, request: web.Request) -> None:
        token = self.view.token
        if token is None:
            raise ApiError(403, "the API is read-only: no api-token-file")
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        challenge = {"WWW-Authenticate": 'Bearer realm="netbootd"'}
        if scheme.lower() != "bearer" or not given.strip():
            raise ApiError(
                401, "this needs the API token: Authorization: Bearer <token>", (), challenge
            )
        if not hmac.compare_digest(
            given.strip().encode("utf-8", "surrogateescape"), token.encode()
        ):
            challenge["WWW-Authenticate"] += ', error="invalid_token"'
            raise ApiError(401, "the API token is not the one in api-token-file", (), challenge)


def _wrap(
    api: Api, route: Route, handler: Handler
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        response = await answer(request)
        api.counters[f"status-{response.status}"] += 1
        return response

    async def answer(request: web.Request) -> web.StreamResponse:
        try:
            if route.write:
                api.check_token(request)
            return await handler(api, request)
        except ApiError as exc:
            return error_response(exc.status, exc.message, exc.problems, exc.headers)
        except web.HTTPException as exc:  # aiohttp's own: a body too large, say
            return error_response(exc.status, exc.reason)
        except (JournalError, StoreError) as exc:
            log.error(format_event("api-error", path=request.path, error=str(exc)))
            return error_response(503, str(exc))
        except Exception as exc:
            frames = traceback.extract_tb(exc.__traceback__)
            at = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "-"
            log.error(
                format_event(
                    "api-failed", method=request.method, path=request.path, error=repr(exc), at=at
                )
            )
            return error_response(500, "internal error; the server's log says more")

    return handle


def routes(view: OperatorView) -> list[web.AbstractRouteDef]:
    """The API's routes over ``view`` (and its OpenAPI document)."""
    api = Api(view)
    found: list[web.AbstractRouteDef] = []
    for route in ROUTES:
        if route.handler is not None:
            found.append(web.route(route.method, route.path, _wrap(api, route, route.handler)))

    async def openapi(request: web.Request) -> web.StreamResponse:
        del request
        return web.json_response(openapi_document())

    found.append(web.get(f"{PREFIX}/openapi.json", openapi, allow_head=False))
    return found


def fallback() -> list[web.AbstractRouteDef]:
    """The JSON answer for any other request under /api/v1: 405 for a path of a route asked
    with another method, else 404. Mounted after every route under /api/v1, whoever's."""

    async def elsewhere(request: web.Request) -> web.StreamResponse:
        # A route another module serves (the event stream) is not known here by its handler.
        allowed = sorted(
            {r.method for r in ROUTES if r.handler is not None and r.pattern.match(request.path)}
        )
        if request.path == f"{PREFIX}/openapi.json":
            allowed = ["GET"]
        if allowed:
            return error_response(
                405,
                f"{request.method} is not allowed here (allowed: {', '.join(allowed)})",
                headers={"Allow": ", ".join(allowed)},
            )
        return error_response(404, f"no such API route: {request.path}")

    return [web.route("*", PREFIX + "/{tail:.*}", elsewhere), web.route("*", PREFIX, elsewhere)]


# --- shapes ---------------------------------------------------------------------------------


def event_json(event: BootEvent) -> dict[str, object]:
    return {
        "id": event.id,
        "time": event.time,
        "mac": event.mac,
        "address": event.address,
        "service": event.service,
        "kind": event.kind,
        "fields": dict(event.fields),
    }


def verdict_json(verdict: Verdict) -> dict[str, object]:
    return {
        "state": str(verdict.state),
        "step": str(verdict.step),
        "cause": verdict.cause,
        "file": verdict.file,
        "started": verdict.started,
        "ended": verdict.ended,
        "steps": [
            {
                "step": str(step.step),
                "time": step.time,
                "file": step.file,
                # The verdict says 0 where the journal did not say.
                "bytes": step.bytes or None,
                "seconds": step.seconds or None,
            }
            for step in verdict.steps
        ],
    }


def lease_json(lease: Lease, names: Mapping[str, str]) -> dict[str, object]:
    kind, _, value = lease.client.partition(":")
    return {
        "address": str(lease.address),
        "mac": lease.mac,
        "state": str(lease.state),
        "ends": None if lease.expires == float("inf") else lease.expires,
        "hostname": lease.hostname,
        "machine": names.get(lease.mac),
        "client": f"id {value}" if kind == "id" else "mac",
    }


def _mac_or_none(text: str) -> str | None:
    try:
        return normalise_mac(text)
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class _Found:
    """A machine asked for by name or MAC: the inventory's, or only seen."""

    mac: str | None
    machine: Machine | None


def find_machine(api: Api, ident: str) -> _Found:
    """The machine named ``ident``, or with that MAC; ApiError 404 if neither is known."""
    inventory = api.view.inventory
    if inventory is not None:
        machines = inventory.machines.setup.inventory
        machine = machines.machines.get(ident)
        if machine is not None:
            return _Found(machine.mac, machine)
        mac = _mac_or_none(ident)
        if mac is not None and (machine := machines.machine_by_mac(mac)) is not None:
            return _Found(machine.mac, machine)
    mac = _mac_or_none(ident)
    if mac is not None and api.view.journal is not None:
        journal = api.view.journal
        if journal.events(mac=mac, limit=1):
            return _Found(mac, None)
    raise ApiError(404, f"no machine {ident!r}: neither an inventory name nor a MAC seen")


def machine_summary(
    api: Api,
    found: _Found,
    events: Sequence[BootEvent],
    now: float,
) -> tuple[dict[str, object], list[tuple[Attempt, Verdict]]]:
    """The machine's summary, and its attempts with their verdicts."""
    inventory = api.view.inventory
    machine = found.machine
    judged = machine_verdicts(events, now) if events else []
    latest = next((e for e in reversed(events) if e.address), None)
    profile = group = None
    if inventory is not None:
        if found.mac is not None:
            uuid = machine.uuid if machine is not None else None
            resolution = inventory.machines.resolve(found.mac, uuid=uuid)
            if resolution is not None:
                profile = resolution.profile.name
                group = resolution.group.name if resolution.group is not None else None
        elif machine is not None:
            installed = machine.name in inventory.machines.installed
            profile = machine.boot_once if machine.boot_once and not installed else machine.profile
    address = latest.address if latest is not None else None
    summary: dict[str, object] = {
        "mac": found.mac,
        "name": machine.name if machine is not None else None,
        "source": "seen",
        "profile": profile,
        "group": group,
        "address": address,
        "last_seen": events[-1].time if events else None,
        "verdict": verdict_json(judged[-1][1]) if judged else None,
    }
    if machine is not None and inventory is not None:
        summary["source"] = "api" if inventory.api.owns(machine.source) else "inventory"
        if address is None and machine.address is not None:
            summary["address"] = str(machine.address)
        summary.update(
            hostname=machine.hostname,
            uuid=machine.uuid,
            labels=dict(machine.labels),
            boot_once=machine.boot_once,
            installed=(machine.name in inventory.machines.installed) if machine.boot_once else None,
            defined_at=str(machine.source) if machine.source is not None else None,
        )
    return summary, judged


def events_of(api: Api, mac: str | None, limit: int) -> list[BootEvent]:
    if mac is None or api.view.journal is None:
        return []
    return api.view.journal.events(mac=mac, limit=limit, newest=True)


def all_machines(api: Api) -> list[dict[str, object]]:
    """Every machine's summary (blocking: the journal's reads)."""
    now = api.clock()
    inventory = api.view.inventory
    listed: list[_Found] = []
    known: set[str] = set()
    if inventory is not None:
        for machine in inventory.machines.setup.inventory.machines.values():
            listed.append(_Found(machine.mac, machine))
            if machine.mac is not None:
                known.add(machine.mac)
    journal = api.view.journal
    latest = journal.latest_by_mac(LIST_EVENTS) if journal is not None else {}
    listed += [_Found(mac, None) for mac in latest if mac not in known]
    summaries = [
        machine_summary(api, found, latest.get(found.mac or "", []), now)[0] for found in listed
    ]
    seen_ones = sorted(
        (s for s in summaries if s["last_seen"] is not None),
        key=lambda s: -float(s["last_seen"]),  # type: ignore[arg-type]
    )
    rest = sorted(
        (s for s in summaries if s["last_seen"] is None),
        key=lambda s: str(s["name"] or s["mac"] or ""),
    )
    return seen_ones + rest


# --- handlers: machines ---------------------------------------------------------------------


async def list_machines(api: Api, request: web.Request) -> web.StreamResponse:
    del request
    machines = await blocking(lambda: all_machines(api))
    return ok(schemas.MachineList, {"machines": machines})


def _detail(api: Api, ident: str) -> dict[str, object]:
    found = find_machine(api, ident)
    events = events_of(api, found.mac, MACHINE_EVENTS)
    summary, judged = machine_summary(api, found, events, api.clock())
    summary["attempts"] = [
        {"verdict": verdict_json(verdict), "events": [event_json(e) for e in attempt.events]}
        for attempt, verdict in judged
    ]
    summary["events"] = [event_json(e) for e in events]
    return summary


async def show_machine(api: Api, request: web.Request) -> web.StreamResponse:
    ident = request.match_info["id"]
    return ok(schemas.MachineDetail, await blocking(lambda: _detail(api, ident)))


async def _body(request: web.Request, model: type[BaseModel]) -> BaseModel:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise ApiError(413, f"the body is larger than {MAX_BODY} bytes")
    # The whole body, within the server's own cap (aiohttp's 413 past it, answered as JSON).
    raw = await request.read()
    if len(raw) > MAX_BODY:
        raise ApiError(413, f"the body is larger than {MAX_BODY} bytes")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the body is not JSON: {exc}") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = [validation_problem(error) for error in exc.errors()]
        raise ApiError(422, "; ".join(problems), problems) from None


def validation_problem(error: Mapping[str, Any]) -> str:
    """One pydantic error in a line: where in the body, and what is wrong."""
    where = ".".join(str(part) for part in error.get("loc", ())) or "body"
    return f"{where}: {error.get('msg', 'invalid')}"


def machine_table(body: schemas.MachineBody | schemas.MachineReplace) -> dict[str, object]:
    """The body as an inventory file's ``[machines.NAME]`` table (its keys dashed)."""
    values = body.model_dump(exclude={"name"}, exclude_none=True)
    return {key.replace("_", "-"): value for key, value in values.items()}


def _not_the_apis(machine: Machine | None, inventory: LiveInventory) -> None:
    if machine is not None and not inventory.api.owns(machine.source):
        raise ApiError(
            409, f"machine {machine.name} is defined in {machine.source}, not by the API"
        )


async def _change(
    api: Api, inventory: LiveInventory, change: Callable[[dict[str, dict[str, object]]], None]
) -> None:
    """Apply ``change`` to the API's machines, if the inventory loads whole with it; the
    running server uses it at once."""
    async with api.writing:

        def work() -> Loaded:
            machines = inventory.api.read()
            change(machines)
            return inventory.try_api_machines(machines)

        try:
            loaded = await blocking(work)
        except InventoryError as exc:
            problems = [str(problem) for problem in exc.problems]
            raise ApiError(422, "; ".join(problems), problems) from None
        except OSError as exc:
            raise ApiError(503, f"{inventory.api.path}: {exc.strerror or exc}") from None
        inventory.adopt(loaded)


def _machine_response(api: Api, name: str, status: int) -> web.Response:
    inventory = api.inventory()
    machine = inventory.machines.setup.inventory.machines[name]
    summary, _ = machine_summary(api, _Found(machine.mac, machine), [], api.clock())
    return ok(schemas.MachineSummary, summary, status)


async def create_machine(api: Api, request: web.Request) -> web.StreamResponse:
    inventory = api.inventory()
    body = await _body(request, schemas.MachineBody)
    assert isinstance(body, schemas.MachineBody)
    existing = inventory.machines.setup.inventory.machines.get(body.name)
    if existing is not None:
        raise ApiError(
            409,
            f"machine {body.name} already exists ({existing.source}): "
            "PUT replaces one of the API's",
        )

    def add(machines: dict[str, dict[str, object]]) -> None:
        machines[body.name] = machine_table(body)

    await _change(api, inventory, add)
    response = await blocking(lambda: _machine_response(api, body.name, 201))
    response.headers["Location"] = f"{PREFIX}/machines/{body.name}"
    return response


def _api_machine(inventory: LiveInventory, name: str) -> None:
    """ApiError unless ``name`` is one of the API's machines."""
    machine = inventory.machines.setup.inventory.machines.get(name)
    _not_the_apis(machine, inventory)
    if machine is None:
        raise ApiError(404, f"no machine {name!r} (POST /api/v1/machines adds one)")


async def replace_machine(api: Api, request: web.Request) -> web.StreamResponse:
    inventory = api.inventory()
    name = request.match_info["id"]
    _api_machine(inventory, name)
    body = await _body(request, schemas.MachineReplace)
    assert isinstance(body, schemas.MachineReplace)
    if body.name is not None and body.name != name:
        raise ApiError(
            422, f"name: {body.name!r} is not the path's {name!r} (renaming is DELETE then POST)"
        )

    def put(machines: dict[str, dict[str, object]]) -> None:
        machines[name] = machine_table(body)

    await _change(api, inventory, put)
    return await blocking(lambda: _machine_response(api, name, 200))


async def delete_machine(api: Api, request: web.Request) -> web.StreamResponse:
    inventory = api.inventory()
    name = request.match_info["id"]
    _api_machine(inventory, name)

    def remove(machines: dict[str, dict[str, object]]) -> None:
        machines.pop(name, None)

    await _change(api, inventory, remove)
    return web.Response(status=204)


async def _mark(api: Api, request: web.Request, *, installed: bool) -> web.StreamResponse:
    inventory = api.inventory()
    ident = request.match_info["id"]
    found = await blocking(lambda: find_machine(api, ident))
    machine = found.machine
    if machine is None:
        raise ApiError(404, f"no inventory machine {ident!r}")
    if machine.boot_once is None:
        raise ApiError(
            409,
            f"machine {machine.name} ({machine.source}) has no boot-once profile: there is "
            "nothing to mark",
        )
    name = machine.name
    if (name in inventory.machines.installed) == installed:
        state = "installed" if installed else "not installed"
        message = f"{name} is already {state}: nothing changed"
    else:
        try:
            inventory.machines.installed = await blocking(
                lambda: inventory.installed.mark(name, installed=installed)
            )
        except OSError as exc:
            raise ApiError(503, f"{inventory.installed.path}: {exc.strerror or exc}") from None
        if installed:
            message = (
                f"{name} is installed: from its next boot on it no longer boots {machine.boot_once}"
            )
        else:
            message = (
                f"{name} boots its boot-once profile {machine.boot_once} again from its next "
                "boot on"
            )
        log.info(
            format_event("installed" if installed else "install-again", machine=name, by="api")
        )
        if api.view.told is not None and machine.mac is not None:
            api.view.told.inventory(Kind.INSTALLED if installed else Kind.AGAIN, machine.mac, name)
    return ok(schemas.Mark, {"name": name, "installed": installed, "message": message})


async def mark_installed(api: Api, request: web.Request) -> web.StreamResponse:
    return await _mark(api, request, installed=True)


async def mark_again(api: Api, request: web.Request) -> web.StreamResponse:
    return await _mark(api, request, installed=False)


# --- handlers: profiles and groups ----------------------------------------------------------


def _profile_json(profile: Profile) -> dict[str, object]:
    return {
        "name": profile.name,
        "method": str(profile.method),
        "kernel": profile.kernel,
        "initrds": list(profile.initrds),
        "cmdline": profile.cmdline,
        "template": profile.template,
        "files": dict(profile.files),
        "source": str(profile.source) if profile.source is not None else None,
    }


def _group_json(group: Group) -> dict[str, object]:
    selector = group.selector
    return {
        "name": group.name,
        "selector": {
            "macs": list(selector.macs),
            "uuids": list(selector.uuids),
            "archs": [str(arch) for arch in selector.archs],
            "labels": dict(selector.labels),
        },
        "profile": group.profile,
        "source": str(group.source) if group.source is not None else None,
    }


def _inventory_or_empty(api: Api) -> Inventory | None:
    inventory = api.view.inventory
    return inventory.machines.setup.inventory if inventory is not None else None


async def list_profiles(api: Api, request: web.Request) -> web.StreamResponse:
    del request
    inventory = _inventory_or_empty(api)
    profiles = [_profile_json(p) for p in inventory.profiles.values()] if inventory else []
    default = inventory.default_profile if inventory else None
    return ok(schemas.ProfileList, {"profiles": profiles, "default": default})


async def show_profile(api: Api, request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    inventory = _inventory_or_empty(api)
    if inventory is None or name not in inventory.profiles:
        raise ApiError(404, f"no profile {name!r}")
    return ok(schemas.ProfileInfo, _profile_json(inventory.profiles[name]))


async def list_groups(api: Api, request: web.Request) -> web.StreamResponse:
    del request
    inventory = _inventory_or_empty(api)
    groups = [_group_json(g) for g in inventory.groups.values()] if inventory else []
    return ok(schemas.GroupList, {"groups": groups})


async def show_group(api: Api, request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    inventory = _inventory_or_empty(api)
    if inventory is None or name not in inventory.groups:
        raise ApiError(404, f"no group {name!r}")
    return ok(schemas.GroupInfo, _group_json(inventory.groups[name]))


# --- handlers: leases -----------------------------------------------------------------------


def machine_names(api: Api) -> dict[str, str]:
    inventory = _inventory_or_empty(api)
    if inventory is None:
        return {}
    return {m.mac: m.name for m in inventory.machines.values() if m.mac is not None}


async def lease_list(api: Api) -> list[Lease] | None:
    """The leases in force; None when this server hands out no addresses."""
    view = api.view
    if view.leases is not None:
        return sorted(view.leases(), key=lambda lease: int(lease.address))
    if view.lease_file is not None:
        path = view.lease_file
        try:
            return await blocking(lambda: read_leases(path))
        except FileNotFoundError:
            return []
    return None


def _flag(request: web.Request, name: str) -> bool:
    value = request.query.get(name, "false").lower()
    if value not in {"1", "0", "true", "false", "yes", "no", ""}:
        raise ApiError(400, f"{name}={value}: true or false")
    return value in {"1", "true", "yes", ""}


async def list_leases(api: Api, request: web.Request) -> web.StreamResponse:
    everything = _flag(request, "all")
    leases = await lease_list(api)
    now = api.clock()
    names = machine_names(api)
    shown = [
        lease_json(lease, names)
        for lease in leases or []
        if everything or lease.expires > now or lease.state is LeaseState.DECLINED
    ]
    return ok(schemas.LeaseList, {"leases": shown, "authoritative": leases is not None})


def _address(request: web.Request) -> IPv4Address:
    text = request.match_info["address"]
    try:
        return IPv4Address(text)
    except ValueError:
        raise ApiError(400, f"{text}: not an IPv4 address") from None


async def show_lease(api: Api, request: web.Request) -> web.StreamResponse:
    address = _address(request)
    leases = await lease_list(api)
    if leases is None:
        raise ApiError(404, "this server hands out no addresses (not authoritative)")
    for lease in leases:
        if lease.address == address:
            return ok(schemas.LeaseInfo, lease_json(lease, machine_names(api)))
    raise ApiError(404, f"no lease of {address}")


async def release_lease(api: Api, request: web.Request) -> web.StreamResponse:
    address = _address(request)
    view = api.view
    if view.release is None:
        if view.lease_file is not None:
            raise ApiError(
                409,
                f"with dhcp-workers {view.config.dhcp_workers} each DHCP worker process holds "
                "its own share of the leases: the API cannot release one; stop the server "
                "and remove it, or let it expire",
            )
        raise ApiError(404, "this server hands out no addresses (not authoritative)")
    lease = await view.release(address)
    if lease is None:
        raise ApiError(404, f"no lease of {address}")
    return web.Response(status=204)


# --- handlers: explain, status, counters, events ---------------------------------------------

_EXPLAIN_KEYS = ("mac", "arch", "user_class", "vendor_class", "uuid", "parameter_list")


async def explain(api: Api, request: web.Request) -> web.StreamResponse:
    explainer = api.view.explain
    if explainer is None:
        raise ApiError(503, "explain is not available in this server")
    unknown = sorted(set(request.query) - set(_EXPLAIN_KEYS))
    if unknown:
        raise ApiError(
            400, f"unknown parameters: {', '.join(unknown)} (known: {', '.join(_EXPLAIN_KEYS)})"
        )
    description = {key: request.query.get(key) for key in _EXPLAIN_KEYS}
    if not description["mac"]:
        raise ApiError(400, "mac: the client's MAC is needed")
    arch = description["arch"]
    if arch is not None and not arch.isdigit():
        raise ApiError(400, f"arch={arch}: option 93's architecture type, a number 0-65535")
    try:
        report = await blocking(lambda: explainer(description))
    except ConfigError as exc:
        raise ApiError(400, str(exc).replace("--", "")) from None
    return ok(
        schemas.Explanation,
        {
            "text": report.text,
            "unservable": bool(report.unservable),
            "problems": list(report.unservable),
        },
    )


def _version() -> str:
    try:
        return package_version("netbootd")
    except PackageNotFoundError:
        return "unknown"


def _status(api: Api) -> dict[str, object]:
    view = api.view
    now = api.clock()
    running = view.status()
    inventory: dict[str, object] = {"configured": view.inventory is not None}
    live = view.inventory
    if live is not None:
        machines = live.machines.setup.inventory
        inventory.update(
            directory=str(live.directory),
            machines=len(machines.machines),
            api_machines=sum(1 for m in machines.machines.values() if live.api.owns(m.source)),
            profiles=len(machines.profiles),
            groups=len(machines.groups),
            default=machines.default_profile,
            installed=len(live.machines.installed),
            warnings=[str(problem) for problem in live.warnings],
        )
    services = running.get("services") or {"dhcp": False, "tftp": False, "http": True}
    return {
        "version": _version(),
        "started": view.started,
        "uptime": max(0.0, now - view.started),
        "mode": running.get("mode", str(view.config.dhcp_mode)),
        "interface": running.get("interface", view.config.interface),
        "address": running.get("address"),
        "services": services,
        "journal": {
            "enabled": view.journal is not None,
            "events": view.journal.count() if view.journal is not None else 0,
            "last": view.journal.last_id() if view.journal is not None else 0,
        },
        "inventory": inventory,
        "writable": view.token is not None,
        "dhcp_workers": running.get("dhcp_workers", view.config.dhcp_workers),
        "summary": running.get("summary", ""),
    }


async def status(api: Api, request: web.Request) -> web.StreamResponse:
    del request
    return ok(schemas.Status, await blocking(lambda: _status(api)))


async def counters(api: Api, request: web.Request) -> web.StreamResponse:
    del request
    found = api.view.counters()
    if api.counters:
        found = {**found, "api": dict(api.counters)}
    return ok(schemas.Counters, found)


def _int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    text = request.query.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ApiError(400, f"{name}={text}: a whole number") from None
    if not low <= value <= high:
        raise ApiError(400, f"{name}={text}: from {low} to {high}")
    return value


async def events(api: Api, request: web.Request) -> web.StreamResponse:
    journal = api.view.journal
    after = _int_param(request, "after", -1, 0, 2**63 - 1) if "after" in request.query else None
    limit = _int_param(request, "limit", 100, 1, EVENTS_LIMIT)
    mac_text = request.query.get("mac")
    mac = None
    if mac_text:
        mac = _mac_or_none(mac_text)
        if mac is None:
            raise ApiError(400, f"mac={mac_text}: not a MAC address (like 52:54:00:12:34:56)")
    if journal is None:
        return ok(schemas.EventList, {"events": [], "last": after or 0})

    def work() -> tuple[list[BootEvent], int]:
        # No ``after``: the latest events; with it, those after it, oldest first.
        if after is None:
            found = journal.events(mac=mac, limit=limit, newest=True)
            return found, found[-1].id if found else journal.last_id()
        found = journal.events(mac=mac, after=after, limit=limit)
        return found, found[-1].id if found else after

    found, last = await blocking(work)
    return ok(schemas.EventList, {"events": [event_json(e) for e in found], "last": last})


# --- the table ------------------------------------------------------------------------------

_ERR = schemas.Error
_ID = "{id}"
_MAC_PARAM = Param("mac", {"type": "string"}, "a MAC address, with ':' or '-'")

ROUTES: tuple[Route, ...] = (
    Route(
        "GET",
        f"{PREFIX}/status",
        status,
        "The server: mode, services, uptime, journal, inventory",
        {200: (schemas.Status, "the status")},
    ),
    Route(
        "GET",
        f"{PREFIX}/counters",
        counters,
        "Every service's outcome counters, by service",
        {200: (schemas.Counters, "the counters")},
    ),
    Route(
        "GET",
        f"{PREFIX}/machines",
        list_machines,
        "Every machine: the inventory's, the API's, and every MAC the journal has seen",
        {200: (schemas.MachineList, "the machines")},
    ),
    Route(
        "POST",
        f"{PREFIX}/machines",
        create_machine,
        "Add a machine to the API-managed inventory (checked as the inventory files are)",
        {
            201: (schemas.MachineSummary, "the machine added"),
            400: (_ERR, "the body is not JSON"),
            409: (_ERR, "the name is taken, or no inventory is configured"),
            422: (_ERR, "the machine is not valid, or conflicts with the inventory"),
        },
        body=schemas.MachineBody,
    ),
    Route(
        "GET",
        f"{PREFIX}/machines/{_ID}",
        show_machine,
        "One machine by inventory name or MAC: its attempts with their verdicts, its events",
        {200: (schemas.MachineDetail, "the machine"), 404: (_ERR, "no such machine")},
    ),
    Route(
        "PUT",
        f"{PREFIX}/machines/{_ID}",
        replace_machine,
        "Replace one of the API-managed machines",
        {
            200: (schemas.MachineSummary, "the machine as it now is"),
            400: (_ERR, "the body is not JSON"),
            404: (_ERR, "no such machine"),
            409: (_ERR, "the machine is the operator's inventory files', not the API's"),
            422: (_ERR, "the machine is not valid, or conflicts with the inventory"),
        },
        body=schemas.MachineReplace,
    ),
    Route(
        "DELETE",
        f"{PREFIX}/machines/{_ID}",
        delete_machine,
        "Remove one of the API-managed machines",
        {
            204: (None, "removed"),
            404: (_ERR, "no such machine"),
            409: (_ERR, "the machine is the operator's inventory files', not the API's"),
            422: (_ERR, "the inventory would not load without it"),
        },
    ),
    Route(
        "POST",
        f"{PREFIX}/machines/{_ID}/installed",
        mark_installed,
        "Boot-once: mark the machine installed (it boots its own profile from now on)",
        {
            200: (schemas.Mark, "marked"),
            404: (_ERR, "no such inventory machine"),
            409: (_ERR, "the machine has no boot-once profile"),
        },
    ),
    Route(
        "POST",
        f"{PREFIX}/machines/{_ID}/again",
        mark_again,
        "Boot-once: boot the machine's boot-once profile again",
        {
            200: (schemas.Mark, "marked"),
            404: (_ERR, "no such inventory machine"),
            409: (_ERR, "the machine has no boot-once profile"),
        },
    ),
    Route(
        "GET",
        f"{PREFIX}/profiles",
        list_profiles,
        "The inventory's profiles",
        {200: (schemas.ProfileList, "the profiles")},
    ),
    Route(
        "GET",
        f"{PREFIX}/profiles/{{name}}",
        show_profile,
        "One profile",
        {200: (schemas.ProfileInfo, "the profile"), 404: (_ERR, "no such profile")},
    ),
    Route(
        "GET",
        f"{PREFIX}/groups",
        list_groups,
        "The inventory's groups",
        {200: (schemas.GroupList, "the groups")},
    ),
    Route(
        "GET",
        f"{PREFIX}/groups/{{name}}",
        show_group,
        "One group",
        {200: (schemas.GroupInfo, "the group"), 404: (_ERR, "no such group")},
    ),
    Route(
        "GET",
        f"{PREFIX}/leases",
        list_leases,
        "The leases (authoritative mode); ended ones only with all=true",
        {200: (schemas.LeaseList, "the leases"), 400: (_ERR, "a bad parameter")},
        params=(Param("all", {"type": "boolean"}, "the leases that have ended too"),),
    ),
    Route(
        "GET",
        f"{PREFIX}/leases/{{address}}",
        show_lease,
        "One lease",
        {
            200: (schemas.LeaseInfo, "the lease"),
            400: (_ERR, "not an IPv4 address"),
            404: (_ERR, "no lease of that address"),
        },
    ),
    Route(
        "DELETE",
        f"{PREFIX}/leases/{{address}}",
        release_lease,
        "Release a lease: the running server frees the address, durably",
        {
            204: (None, "released"),
            400: (_ERR, "not an IPv4 address"),
            404: (_ERR, "no lease of that address"),
            409: (_ERR, "the leases are held by several DHCP worker processes"),
        },
    ),
    Route(
        "GET",
        f"{PREFIX}/explain",
        explain,
        "What a described client would get from this server, and why (netbootd explain)",
        {
            200: (schemas.Explanation, "the report"),
            400: (_ERR, "a bad description"),
            503: (_ERR, "explain is not available"),
        },
        params=(
            Param("mac", {"type": "string"}, "the client's MAC", required=True),
            Param(
                "arch",
                {"type": "integer", "minimum": 0, "maximum": 65535},
                "option 93 architecture type (0 BIOS, 7 UEFI x64, 16 UEFI HTTP x64)",
            ),
            Param("user_class", {"type": "string"}, "option 77, such as iPXE"),
            Param("vendor_class", {"type": "string"}, "option 60"),
            Param("uuid", {"type": "string"}, "option 97, the machine UUID"),
            Param("parameter_list", {"type": "string"}, "option 55, such as 1,3,6,67"),
        ),
    ),
    Route(
        "GET",
        f"{PREFIX}/events",
        events,
        "The journal's events: without after, the latest; with it, those after it",
        {200: (schemas.EventList, "the events, oldest first"), 400: (_ERR, "a bad parameter")},
        params=(
            Param("after", {"type": "integer", "minimum": 0}, "only events with a larger id"),
            _MAC_PARAM,
            Param(
                "limit",
                {"type": "integer", "minimum": 1, "maximum": EVENTS_LIMIT},
                "at most this many (default 100)",
            ),
        ),
    ),
    Route(
        "GET",
        f"{PREFIX}/events/stream",
        None,
        "The journal's events as they come, as server-sent events: each message is "
        "`id: <event id>` and `data: <event JSON>`; Last-Event-ID resumes after an id",
        {200: (schemas.Event, "a text/event-stream of events")},
        params=(_MAC_PARAM,),
        stream=True,
    ),
)


# --- the OpenAPI document -------------------------------------------------------------------

_REF = "#/components/schemas/{model}"


def _schemas() -> dict[str, Any]:
    keyed: list[tuple[type[BaseModel], Literal["validation"]]] = [
        (model, "validation") for model in schemas.ALL_MODELS
    ]
    _, top = models_json_schema(keyed, ref_template=_REF)
    return dict(top.get("$defs", {}))


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": _REF.format(model=model.__name__)}


_PATH_PARAMS = {
    "id": "a machine: its inventory name, or a MAC with ':' or '-' (PUT and DELETE: the name "
    "of one of the API's machines)",
    "name": "the name",
    "address": "an IPv4 address",
}


def _operation(route: Route) -> dict[str, Any]:
    words = re.sub(r"[^a-z0-9]+", "_", route.path.removeprefix(PREFIX).lower()).strip("_")
    operation: dict[str, Any] = {
        "summary": route.summary,
        "operationId": f"{route.method.lower()}_{words}",
        "responses": {},
    }
    parameters = [
        {
            "name": name,
            "in": "path",
            "required": True,
            "description": _PATH_PARAMS.get(name, name),
            "schema": {"type": "string"},
        }
        for name in re.findall(r"\{([^}]+)\}", route.path)
    ]
    parameters += [
        {
            "name": p.name,
            "in": "query",
            "required": p.required,
            "description": p.description,
            "schema": dict(p.schema),
        }
        for p in route.params
    ]
    if parameters:
        operation["parameters"] = parameters
    if route.body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(route.body)}},
        }
    responses: dict[str, Any] = {}
    for code, (model, description) in sorted(route.responses.items()):
        answer: dict[str, Any] = {"description": description}
        if model is not None and route.stream and code == 200:
            answer["content"] = {
                "text/event-stream": {
                    "schema": {
                        "type": "string",
                        "description": "messages of `id: <event id>` and `data: <event JSON>`",
                    },
                    "x-event-data": _ref(model),
                }
            }
        elif model is not None:
            answer["content"] = {"application/json": {"schema": _ref(model)}}
        responses[str(code)] = answer
    if route.write:
        responses.setdefault("401", _error("the token is missing or wrong"))
        responses.setdefault("403", _error("the API is read-only: no api-token-file"))
        operation["security"] = [{"bearerAuth": []}]
    responses.setdefault("default", _error("an error"))
    operation["responses"] = responses
    return operation


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": _ref(schemas.Error)}},
    }


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of every route of :data:`ROUTES` and of itself."""
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route)
    paths[f"{PREFIX}/openapi.json"] = {
        "get": {
            "summary": "This document",
            "operationId": "get_openapi",
            "responses": {
                "200": {
                    "description": "the OpenAPI 3.1 document",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                }
            },
        }
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "netbootd",
            "version": _version(),
            "description": "The network-boot server's REST API: machines, their boot journal "
            "and verdicts, profiles, groups, leases, explain, status and counters. Reads need "
            "nothing; writes need `Authorization: Bearer <token>` with the token of "
            "api-token-file. Every error is JSON {status, message}.",
        },
        "paths": paths,
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "the token in the server's api-token-file",
                }
            },
        },
    }
