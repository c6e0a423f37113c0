"""Loads the machine inventory from a directory of TOML files.

Every ``*.toml`` file below the directory is read in sorted path order, validated table by table,
built into the pure values of :mod:`netbootd.boot.inventory` and checked with its ``check()``.
Whatever is wrong is reported at once, each problem naming the file, the line and the key, since
an operator fixes a config best from a full list. The only I/O here is reading those files and
checking that the templates they name exist; rendering them, serving files and reloading belong
elsewhere.

Where each key was written comes from :mod:`netbootd.toml_lines`.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import date, datetime, time
from ipaddress import AddressValueError, IPv4Address
from pathlib import Path
from typing import Annotated, Any, ClassVar, NoReturn
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from netbootd.boot.client import BootClass, parse_boot_key
from netbootd.boot.inventory import (
    Group,
    Inventory,
    InventoryError,
    InventoryProblem,
    Location,
    Machine,
    Method,
    Profile,
    Selector,
    check,
    format_key,
    normalise_mac,
    normalise_mac_pattern,
    normalise_uuid,
)
from netbootd.toml_lines import KeyLines, parse_key

__all__ = ["at_key_lines", "load_inventory"]


# --- values ---------------------------------------------------------------------------------

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_NAME_RULE = "a letter or digit, then letters, digits, '.', '_' or '-'; at most 63 characters"
_HOST_LABEL = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")


def _relative_path(value: str, what: str) -> str:
    if not value:
        raise ValueError(f"the {what} is empty")
    if value.startswith("/") or "\\" in value or "\0" in value or ".." in value.split("/"):
        raise ValueError(
            f"{what} {value!r} must be a relative path with '/' separators and no '..'"
        )
    return value


def _template_path(value: str, info: ValidationInfo) -> str:
    _relative_path(value, "template path")
    directory = info.context.get("directory") if isinstance(info.context, dict) else None
    if isinstance(directory, Path):
        target = directory / value
        if not target.exists():
            raise ValueError(f"template file {value!r} does not exist in the inventory directory")
        if not target.is_file():
            raise ValueError(f"template path {value!r} is not a file")
    return value


def _boot_path(value: str) -> str:
    if "://" not in value:
        return _relative_path(value, "boot path")
    url = urlsplit(value)
    if url.scheme not in ("http", "https") or not url.netloc:
        raise ValueError(
            f"{value!r} is not an http:// or https:// URL (or a path below the boot root)"
        )
    return value


def _file_name(value: str) -> str:
    return _relative_path(value, "file name")


def _method(value: str) -> str:
    try:
        return Method(value).value
    except ValueError:
        choices = ", ".join(m.value for m in Method)
        raise ValueError(f"unknown method {value!r} (one of: {choices})") from None


def _hostname(value: str) -> str:
    labels = value.removesuffix(".").split(".")
    if len(value) > 253 or not all(_HOST_LABEL.match(label) for label in labels):
        raise ValueError(
            f"{value!r} is not a host name (dot-separated labels of letters, digits and '-')"
        )
    return value


def _address(value: str) -> str:
    try:
        return str(IPv4Address(value))
    except AddressValueError:
        raise ValueError(f"{value!r} is not an IPv4 address (like 10.0.0.5)") from None


def _arch(value: str) -> str:
    key = parse_boot_key(value)
    if key is BootClass.IPXE:
        # A group selects firmware by option 93; "ipxe" is no architecture and would never match.
        raise ValueError(
            "'ipxe' is not a firmware architecture (a group selects bios, uefi, uefi-http, ... "
            "or arch-N)"
        )
    return value


def _one_or_many(value: object) -> object:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise ValueError(f"expected a string or an array of strings, got {_describe(value)}")
    return value


def _not_empty(value: Any) -> Any:
    if not value:
        raise ValueError(
            "empty, which would match every client (list one at least, or leave it out)"
        )
    return value


def _describe(value: object) -> str:
    if isinstance(value, bool):
        return f"the boolean {'true' if value else 'false'}"
    if isinstance(value, int):
        return f"the integer {value}"
    if isinstance(value, float):
        return f"the float {value}"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, datetime):
        return "a date-time"
    if isinstance(value, date):
        return "a date"
    if isinstance(value, time):
        return "a time"
    return type(value).__name__


_TemplatePath = Annotated[str, AfterValidator(_template_path)]
_BootPath = Annotated[str, AfterValidator(_boot_path)]
_FileName = Annotated[str, AfterValidator(_file_name)]


def _dashed(name: str) -> str:
    return name.replace("_", "-")


class _Table(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=_dashed, populate_by_name=False
    )
    kind: ClassVar[str] = "table"


class _Profile(_Table):
    kind: ClassVar[str] = "profile"

    method: Annotated[str, AfterValidator(_method)]
    kernel: _BootPath | None = None
    initrd: _BootPath | None = None
    initrds: list[_BootPath] | None = None
    cmdline: str = ""
    template: _TemplatePath | None = None
    files: dict[_FileName, _TemplatePath] = Field(default_factory=dict)

    @field_validator("initrds")
    @classmethod
    def _one_spelling(cls, value: list[str] | None, info: ValidationInfo) -> list[str] | None:
        if info.data.get("initrd") is not None:
            raise ValueError("give initrd (one file) or initrds (a list), not both")
        return value


class _Machine(_Table):
    kind: ClassVar[str] = "machine"

    mac: Annotated[str, AfterValidator(normalise_mac)] | None = None
    uuid: Annotated[str, AfterValidator(normalise_uuid)] | None = None
    hostname: Annotated[str, AfterValidator(_hostname)] | None = None
    address: Annotated[str, AfterValidator(_address)] | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    profile: str | None = None
    boot_once: str | None = None


class _Match(_Table):
    labels: Annotated[dict[str, str], AfterValidator(_not_empty)] | None = None
    arch: (
        Annotated[
            list[Annotated[str, AfterValidator(_arch)]],
            BeforeValidator(_one_or_many),
            AfterValidator(_not_empty),
        ]
        | None
    ) = None
    mac: (
        Annotated[
            list[Annotated[str, AfterValidator(normalise_mac_pattern)]],
            BeforeValidator(_one_or_many),
            AfterValidator(_not_empty),
        ]
        | None
    ) = None
    uuid: (
        Annotated[
            list[Annotated[str, AfterValidator(normalise_uuid)]],
            BeforeValidator(_one_or_many),
            AfterValidator(_not_empty),
        ]
        | None
    ) = None


class _Group(_Table):
    kind: ClassVar[str] = "group"

    profile: str
    match: _Match | None = None


class _Default(_Table):
    profile: str


_SECTIONS: Mapping[str, type[_Table]] = {
    "profiles": _Profile,
    "machines": _Machine,
    "groups": _Group,
}
_TOP_KEYS = ("default", "groups", "machines", "profiles")

_EXPECTED = {
    "string_type": "a string",
    "list_type": "an array",
    "dict_type": "a table",
    "model_type": "a table",
    "model_attributes_type": "a table",
    "bool_type": "true or false",
    "int_type": "an integer",
}


def _known_keys(model: type[_Table], loc: Sequence[str]) -> str:
    # Unknown keys are reported at their own path; the table around them says what is allowed.
    if tuple(loc[:1]) == ("match",):
        model = _Match
    return ", ".join(sorted(field.alias or name for name, field in model.model_fields.items()))


def _message(error: Mapping[str, Any], model: type[_Table], loc: Sequence[str]) -> str:
    kind = error.get("type", "")
    if kind == "extra_forbidden":
        return f"unknown key (expected one of: {_known_keys(model, loc[:-1])})"
    if kind == "missing":
        return "required key is missing"
    if kind == "value_error":
        cause = error.get("ctx", {}).get("error")
        if cause is not None:
            return str(cause)
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, got {_describe(error.get('input'))}"
    text = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
    return text[:1].lower() + text[1:]


# --- loading --------------------------------------------------------------------------------

_TOML_LINE = re.compile(r"\(at line (\d+), column \d+\)")
_TWICE = ("Cannot declare", "Cannot overwrite")


def _toml_files(directory: Path) -> list[Path]:
    # Hidden files and directories (.git, editor leftovers) are no part of the inventory.
    return sorted(
        path
        for path in directory.rglob("*.toml")
        if path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(directory).parts)
    )


class _Loader:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.context = {"directory": directory}
        self.problems: list[InventoryProblem] = []
        self.lines: dict[str, KeyLines] = {}
        self.file_order: dict[str, int] = {}
        self.defined: dict[str, dict[str, Location]] = {section: {} for section in _SECTIONS}
        self.unbuilt_profiles: set[str] = set()
        self.profiles: dict[str, Profile] = {}
        self.machines: dict[str, Machine] = {}
        self.groups: dict[str, Group] = {}
        self.default_profile: str | None = None
        self.default_source: Location | None = None

    def _problem(self, file: str, path: Sequence[str], message: str) -> None:
        location = Location(file, self.lines[file].line_of(path))
        self.problems.append(InventoryProblem(location, format_key(path), message))

    def _stop(self, problem: InventoryProblem, cause: Exception) -> NoReturn:
        """A file that cannot be read stops the load, with what was found before it."""
        raise InventoryError([*sorted(self.problems, key=self._order), problem]) from cause

    def read(self, path: Path, label: str | None = None) -> None:
        file = label if label is not None else path.relative_to(self.directory).as_posix()
        self.file_order[file] = len(self.file_order)
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            line = path.read_bytes()[: exc.start].count(b"\n") + 1
            self._stop(InventoryProblem(Location(file, line), "", "not UTF-8 text"), exc)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            self._stop(InventoryProblem(Location(file, 1), "", reason.lower()), exc)
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            found = _TOML_LINE.search(str(exc))
            line = int(found.group(1)) if found else max(1, text.count("\n") + 1)
            message = f"not valid TOML: {exc}"
            # tomllib names only the second place of a name written twice; say the first.
            earlier = KeyLines(text).defined_before(line)
            if earlier is not None and str(exc).startswith(_TWICE):
                message += f"; {format_key(earlier[0])} is first written at line {earlier[1]}"
            self._stop(InventoryProblem(Location(file, line), "", message), exc)
        self.lines[file] = KeyLines(text)
        for section, value in data.items():
            if section == "default":
                self._default(file, value)
            elif section in _SECTIONS:
                if not isinstance(value, dict):
                    self._problem(
                        file, (section,), f"expected a table of {section}, got {_describe(value)}"
                    )
                    continue
                for name, entry in value.items():
                    self._entry(file, section, name, entry)
            else:
                self._problem(
                    file, (section,), f"unknown key (expected one of: {', '.join(_TOP_KEYS)})"
                )

    def _validate(
        self, file: str, path: Sequence[str], model: type[_Table], value: object
    ) -> _Table | None:
        try:
            return model.model_validate(value, context=self.context)
        except ValidationError as exc:
            for error in exc.errors():
                # Drop list indices and pydantic's "[key]" marker: the message names the value.
                loc = [str(p) for p in error["loc"] if isinstance(p, str) and p != "[key]"]
                self._problem(file, (*path, *loc), _message(error, model, loc))
            return None

    def _entry(self, file: str, section: str, name: str, value: object) -> None:
        model = _SECTIONS[section]
        path = (section, name)
        source = Location(file, self.lines[file].line_of(path))
        first = self.defined[section].get(name)
        if first is not None:
            self._problem(file, path, f"{model.kind} {name!r} is already defined at {first}")
            return
        self.defined[section][name] = source
        valid_name = _NAME.match(name) is not None
        if not valid_name:
            self._problem(file, path, f"{name!r} is not a valid {model.kind} name ({_NAME_RULE})")
        table = self._validate(file, path, model, value)
        if table is None or not valid_name:
            if section == "profiles":
                self.unbuilt_profiles.add(name)
            return
        if isinstance(table, _Profile):
            self.profiles[name] = _build_profile(name, table, source)
        elif isinstance(table, _Machine):
            self.machines[name] = _build_machine(name, table, source)
        elif isinstance(table, _Group):
            self.groups[name] = _build_group(name, table, source)

    def _default(self, file: str, value: object) -> None:
        source = Location(file, self.lines[file].line_of(("default",)))
        if self.default_source is not None:
            self._problem(
                file,
                ("default",),
                f"a default is already set at {self.default_source}; only one [default] is allowed",
            )
            return
        self.default_source = source
        table = self._validate(file, ("default",), _Default, value)
        if isinstance(table, _Default):
            self.default_profile = table.profile

    def _refine(self, problem: InventoryProblem) -> InventoryProblem:
        """check() knows the table a problem is in; the file knows the key's own line."""
        location = problem.location
        if location is None or location.file not in self.lines:
            return problem
        line = self.lines[location.file].line_of(parse_key(problem.key))
        return replace(problem, location=Location(location.file, line))

    def _names_unbuilt_profile(self, inventory: Inventory) -> set[str]:
        # A reference to a profile that failed validation is not a second problem.
        keys: set[str] = set()
        for machine in inventory.machines.values():
            for key, name in (("profile", machine.profile), ("boot-once", machine.boot_once)):
                if name in self.unbuilt_profiles:
                    keys.add(format_key(("machines", machine.name, key)))
        for group in inventory.groups.values():
            if group.profile in self.unbuilt_profiles:
                keys.add(format_key(("groups", group.name, "profile")))
        if inventory.default_profile in self.unbuilt_profiles:
            keys.add(format_key(("default", "profile")))
        return keys

    def finish(self) -> Inventory:
        inventory = Inventory(
            profiles=self.profiles,
            machines=self.machines,
            groups=self.groups,
            default_profile=self.default_profile,
            default_source=self.default_source,
        )
        echoes = self._names_unbuilt_profile(inventory)
        self.problems.extend(
            self._refine(problem) for problem in check(inventory) if problem.key not in echoes
        )
        if self.problems:
            raise InventoryError(sorted(self.problems, key=self._order))
        return inventory

    def _order(self, problem: InventoryProblem) -> tuple[int, int]:
        if problem.location is None:
            return (-1, 0)
        return (self.file_order.get(problem.location.file, -1), problem.location.line)


def _build_profile(name: str, table: _Profile, source: Location) -> Profile:
    initrds = (table.initrd,) if table.initrd is not None else tuple(table.initrds or ())
    return Profile(
        name=name,
        method=Method(table.method),
        kernel=table.kernel,
        initrds=initrds,
        cmdline=table.cmdline,
        template=table.template,
        files=table.files,
        source=source,
    )


def _build_machine(name: str, table: _Machine, source: Location) -> Machine:
    return Machine(
        name=name,
        mac=table.mac,
        uuid=table.uuid,
        hostname=table.hostname,
        address=IPv4Address(table.address) if table.address is not None else None,
        labels=table.labels,
        profile=table.profile,
        boot_once=table.boot_once,
        source=source,
    )


def _build_group(name: str, table: _Group, source: Location) -> Group:
    match = table.match or _Match()
    selector = Selector(
        macs=tuple(match.mac or ()),
        uuids=tuple(match.uuid or ()),
        archs=tuple(parse_boot_key(arch) for arch in match.arch or ()),
        labels=match.labels or {},
    )
    return Group(name=name, selector=selector, profile=table.profile, source=source)


def load_inventory(directory: Path, extra: Sequence[tuple[Path, str]] = ()) -> Inventory:
    """Read, validate and check every ``*.toml`` file below ``directory``, then each file of
    ``extra`` that exists (the machines the REST API keeps in the state directory), named in
    problems and sources by its label.

    An empty directory is an empty inventory; a missing one, or any problem in the files, is an
    :class:`InventoryError` listing every problem found. A file that is not valid TOML stops the
    load at that file.
    """
    if not directory.exists():
        raise InventoryError(
            [InventoryProblem(None, "", f"inventory directory {directory} does not exist")]
        )
    if not directory.is_dir():
        raise InventoryError(
            [InventoryProblem(None, "", f"inventory path {directory} is not a directory")]
        )
    loader = _Loader(directory)
    for path in _toml_files(directory):
        loader.read(path)
    for path, label in extra:
        if path.is_file():
            loader.read(path, label)
    return loader.finish()


def at_key_lines(
    directory: Path, problems: Sequence[InventoryProblem]
) -> tuple[InventoryProblem, ...]:
    """``problems`` found after the load (a missing kernel, a template variable), each placed
    at the line of its own key rather than its table's, as the load places its own."""
    lines: dict[str, KeyLines | None] = {}
    placed = []
    for problem in problems:
        location = problem.location
        if location is None or not location.file.endswith(".toml") or not problem.key:
            placed.append(problem)
            continue
        if location.file not in lines:
            try:
                lines[location.file] = KeyLines((directory / location.file).read_text())
            except (OSError, UnicodeDecodeError):
                lines[location.file] = None  # changed since: the table's line must do
        found = lines[location.file]
        if found is None:
            placed.append(problem)
            continue
        line = found.line_of(parse_key(problem.key))
        placed.append(replace(problem, location=Location(location.file, line)))
    return tuple(placed)
