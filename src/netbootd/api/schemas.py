"""The REST API's request and response bodies, as pydantic models.

The same models validate what a client sends and give the OpenAPI document its component
schemas (``model_json_schema``: OpenAPI 3.1 takes JSON Schema 2020-12 as it is), so the document
cannot drift from what is checked. Nothing here reads the server's state; the mapping from the
inventory's and the journal's values is :mod:`netbootd.api.rest`'s.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Error(_Body):
    """Every error the API answers."""

    status: int = Field(description="the HTTP status, again")
    message: str = Field(description="what went wrong, in a line for the operator")
    problems: list[str] | None = Field(
        default=None, description="each problem found (validation errors), when there are several"
    )


class Event(_Body):
    """One step of one machine's boot, as the journal keeps it."""

    id: int
    time: float = Field(description="seconds since the epoch")
    mac: str = Field(description="lower-case with colons; empty when it could not be told")
    address: str
    service: str = Field(description="dhcp, tftp, http or inventory")
    kind: str
    fields: dict[str, str]


class TimelineStep(_Body):
    step: str
    time: float
    file: str
    bytes: int | None = Field(description="the transfer's size; null when not known")
    seconds: float | None = Field(description="the transfer's duration; null when not known")


class Verdict(_Body):
    """What became of one boot attempt."""

    state: Literal["booted", "stalled", "in-progress"]
    step: str = Field(description="the furthest step the attempt reached")
    cause: str = Field(description="why it stalled; empty when it booted or is in progress")
    file: str = Field(description="the file the stall is about; empty if none")
    started: float
    ended: float
    steps: list[TimelineStep]


class MachineSummary(_Body):
    """A machine: one of the inventory (by name), or a MAC the journal has events of."""

    mac: str | None = Field(description="null for an inventory machine written without a MAC")
    name: str | None = Field(description="the inventory name; null for a machine only seen")
    source: Literal["inventory", "api", "seen"]
    profile: str | None = Field(description="the profile it boots now, by the inventory")
    group: str | None
    address: str | None = Field(description="the last address it was seen with, else reserved")
    last_seen: float | None
    verdict: Verdict | None = Field(description="the verdict on its latest boot attempt")
    hostname: str | None = None
    uuid: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    boot_once: str | None = None
    installed: bool | None = Field(
        default=None, description="with a boot-once profile: whether it is marked installed"
    )
    defined_at: str | None = Field(default=None, description="file:line of its definition")


class Attempt(_Body):
    verdict: Verdict
    events: list[Event]


class MachineDetail(MachineSummary):
    attempts: list[Attempt] = Field(description="its boot attempts, the newest last")
    events: list[Event] = Field(description="its latest events, oldest first")


class MachineList(_Body):
    machines: list[MachineSummary] = Field(
        description="the latest seen first, then the others by name"
    )


class _MachineKeys(_Body):
    """The keys of an inventory file's ``[machines.NAME]`` table."""

    name: str | None = None
    mac: str | None = None
    uuid: str | None = None
    hostname: str | None = None
    address: str | None = None
    profile: str | None = None
    boot_once: str | None = None
    labels: dict[str, str] | None = None


class MachineBody(_MachineKeys):
    """A machine of the API-managed inventory, with the keys of an inventory file's
    ``[machines.NAME]`` table; checked as the inventory files are."""

    name: str = Field(min_length=1, max_length=63)


class MachineReplace(_MachineKeys):
    """PUT: the machine's keys, replacing all it had; ``name`` if given is the path's."""


class Mark(_Body):
    name: str
    installed: bool
    message: str


class ProfileInfo(_Body):
    name: str
    method: str
    kernel: str | None
    initrds: list[str]
    cmdline: str
    template: str | None
    files: dict[str, str]
    source: str | None = Field(description="file:line of its definition")


class ProfileList(_Body):
    profiles: list[ProfileInfo]
    default: str | None = Field(description="the default profile, if one is set")


class Selector(_Body):
    macs: list[str]
    uuids: list[str]
    archs: list[str]
    labels: dict[str, str]


class GroupInfo(_Body):
    name: str
    selector: Selector
    profile: str
    source: str | None


class GroupList(_Body):
    groups: list[GroupInfo]


class LeaseInfo(_Body):
    address: str
    mac: str
    state: Literal["offered", "bound", "declined"]
    ends: float | None = Field(description="seconds since the epoch; null: never")
    hostname: str | None
    machine: str | None = Field(description="the inventory machine of its MAC")
    client: str = Field(description="'mac', or 'id <hex>' for a client identifier")


class LeaseList(_Body):
    leases: list[LeaseInfo]
    authoritative: bool = Field(description="false: this server hands out no addresses")


class Explanation(_Body):
    text: str = Field(description="the report `netbootd explain` prints")
    unservable: bool = Field(description="the client would be handed what cannot be served")
    problems: list[str]


class Services(_Body):
    dhcp: bool
    tftp: bool
    http: bool


class JournalStatus(_Body):
    enabled: bool
    events: int = Field(description="how many events it holds")
    last: int = Field(description="the latest event's id")


class InventoryStatus(_Body):
    configured: bool
    directory: str | None = None
    machines: int = 0
    api_machines: int = 0
    profiles: int = 0
    groups: int = 0
    default: str | None = None
    installed: int = 0
    warnings: list[str] = Field(default_factory=list)


class Status(_Body):
    version: str
    started: float
    uptime: float
    mode: str
    interface: str | None
    address: str | None
    services: Services
    journal: JournalStatus
    inventory: InventoryStatus
    writable: bool = Field(description="whether writes are accepted (an api-token-file is set)")
    dhcp_workers: int = 1
    summary: str = ""


class Counters(RootModel[dict[str, dict[str, int]]]):
    """Every service's outcome counters, by service."""


class EventList(_Body):
    events: list[Event]
    last: int = Field(description="the id to pass as ``after`` for the events after these")


ALL_MODELS: tuple[type[BaseModel], ...] = (
    Error,
    Event,
    TimelineStep,
    Verdict,
    MachineSummary,
    Attempt,
    MachineDetail,
    MachineList,
    MachineBody,
    MachineReplace,
    Mark,
    ProfileInfo,
    ProfileList,
    Selector,
    GroupInfo,
    GroupList,
    LeaseInfo,
    LeaseList,
    Explanation,
    Services,
    JournalStatus,
    InventoryStatus,
    Status,
    Counters,
    EventList,
)
