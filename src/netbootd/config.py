"""netbootd's configuration: one validated, frozen value built once at start.

Settings come from a TOML file (``--config``) and from command-line flags; a flag overrides the
file. Everything is checked here, so that the rest of the program never meets a bad value; an
error names the file and the key. This module reads the config file and nothing else: it does not
look at interfaces, sockets or the boot root (the composition root does that at start).
"""

from __future__ import annotations

import os
import re
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from ipaddress import IPv4Address
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from netbootd.boot.client import BootClass, BootKey, parse_boot_key
from netbootd.boot.hosts import HostTable, parse_hosts
from netbootd.boot.leases import AddressRange
from netbootd.boot.pxe_menu import PxeMenuError, PxeMenus, build_menus
from netbootd.boot.subnets import SubnetSpec, parse_subnets
from netbootd.proto.dhcp.codec import encode_option_value, settable_option
from netbootd.toml_lines import KeyLines


class ConfigError(Exception):
    """The configuration cannot be used; the message is one line for the operator."""


class DhcpMode(StrEnum):
    AUTHORITATIVE = "authoritative"  # hands out addresses from a pool
    PROXY = "proxy"  # proxyDHCP beside an existing DHCP server (PXE 2.1 §2.2.3)
    OFF = "off"


class LogLevel(StrEnum):
    """The least a line must be to be written (``--log-level``)."""

    DEBUG = "debug"  # also what is ignored, and why (a DHCP request that is not ours)
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class LogFormat(StrEnum):
    """How a line is written (``--log-format``): ``EVENT key=value`` text, or a JSON object."""

    TEXT = "text"
    JSON = "json"


def _choice(kind: type[StrEnum], what: str, value: object) -> object:
    """``value`` as a member of ``kind``, in any case; a message listing the choices if it is
    none."""
    if isinstance(value, kind) or not isinstance(value, str):
        return value  # pydantic says what is wrong with a value that is not text
    try:
        return kind(value.lower())
    except ValueError:
        choices = ", ".join(member.value for member in kind)
        raise ValueError(f"{value!r} is not a {what} ({choices})") from None


def _boot_path(value: str) -> str:
    path = value.strip()
    if not path:
        raise ValueError("the boot path is empty")
    if path.startswith("/") or "\\" in path or "\0" in path or ".." in path.split("/"):
        raise ValueError(f"boot path {value!r} must be relative to the root, without '..'")
    return path


# A value is taken as it is written: in the TOML file ``http-port = "80"`` is text, not a number,
# and ``tftp = 1`` is a number, not true. (The flags are converted by the command line before
# they get here.) Paths, addresses and choices are still read from their text.
Int = Annotated[int, Strict()]
Bool = Annotated[bool, Strict()]
Float = Annotated[float, Strict()]  # a whole number is one too: tftp-timeout = 2
Str = Annotated[str, Strict()]

DEFAULT_STATE_DIR = Path("/var/lib/netbootd")
MAX_DHCP_WORKERS = 16  # a process per core; more shares only cost memory


class Config(BaseModel):
    """Everything netbootd needs to know to run, validated."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", populate_by_name=True, arbitrary_types_allowed=True
    )

    interface: Str | None = None
    root: Path | None = None
    dhcp_mode: DhcpMode = DhcpMode.PROXY
    dhcp_range: AddressRange | None = None
    # Authoritative DHCP on several networks, relayed ones too ([[subnets]]), and the clients
    # declared one by one ([[hosts]]).
    subnets: tuple[SubnetSpec, ...] = ()
    hosts: HostTable = Field(default_factory=HostTable)
    dynamic_bootp: Bool = False  # BOOTP clients without a reservation get a pool address
    bootp_lease_time: Int | None = Field(default=None, ge=60, le=365 * 86400)  # None: infinite
    tftp: Bool = True
    http: Bool = True
    boot: dict[BootKey, str] = Field(default_factory=dict)
    http_port: Int = Field(default=80, ge=1, le=65535)
    # HTTP connection lifetimes, as nginx's client_header_timeout (60 s) and keepalive_timeout
    # (75 s): a client that sends its headers slowly, or holds a connection idle, cannot keep
    # it for ever. Past http-max-connections, new connections are closed at once.
    http_header_timeout: Float = Field(default=60.0, gt=0, le=3600)
    http_keepalive_timeout: Float = Field(default=75.0, gt=0, le=3600)
    http_max_connections: Int = Field(default=4096, ge=1, le=1_000_000)
    tftp_port: Int = Field(default=69, ge=1, le=65535)
    state_dir: Path = DEFAULT_STATE_DIR
    log_dhcp: Bool = False
    log_level: LogLevel = LogLevel.INFO
    log_format: LogFormat = LogFormat.TEXT
    # The boot journal (journal.sqlite3 in the state directory): every step of every boot,
    # the oldest dropped past journal-max-events events or journal-max-days days.
    journal: Bool = True
    journal_max_events: Int = Field(default=200_000, ge=1000, le=100_000_000)
    journal_max_days: Float = Field(default=7.0, gt=0, le=3650)
    # The bearer token that lets the API change things (a file holding it); without one the
    # API and the web page are read-only.
    api_token_file: Path | None = None
    lease_time: Int = Field(default=3600, ge=60, le=365 * 86400)
    next_server: IPv4Address | None = None
    routers: tuple[IPv4Address, ...] = ()
    dns_servers: tuple[IPv4Address, ...] = ()
    domain_name: Str | None = None
    ntp_servers: tuple[IPv4Address, ...] = ()
    mtu: Int | None = Field(default=None, ge=68, le=65535)
    root_path: Str | None = None  # option 17, for NFS-root diskless clients
    # Any option by code, wire-encoded from its typed or hex value; replaces a built-in one.
    dhcp_options: dict[int, bytes] = Field(default_factory=dict)
    ipxe_dir: Path = Path("/usr/lib/ipxe")
    # Machines, profiles and groups (TOML files); reloaded when they change.
    inventory: Path | None = None
    # TFTP. None for the block size cap means the interface MTU less the headers, so that no
    # block leaves as IP fragments (which some PXE ROMs cannot reassemble).
    tftp_max_blksize: Int | None = Field(default=None, ge=8, le=65464)
    tftp_max_windowsize: Int = Field(default=64, ge=1, le=65535)
    tftp_timeout: Float = Field(default=1.0, gt=0, le=255)
    tftp_retries: Int = Field(default=5, ge=0, le=100)
    tftp_max_sessions: Int = Field(default=1024, ge=1, le=65536)
    tftp_max_sessions_per_client: Int = Field(default=32, ge=1, le=65536)
    tftp_single_port: Bool = False
    # Microseconds a transfer may poll for the next ACK before sleeping; 0 never polls.
    tftp_busy_poll_us: Int = Field(default=200, ge=0, le=10_000)
    # Read transfers at once in threads of their own; the rest share the event loop.
    tftp_threads: Int = Field(default=2, ge=0, le=1024)
    # Seconds between two probes for other DHCP servers on the segment (authoritative mode);
    # 0 never probes (their broadcast replies to clients are still heard).
    dhcp_probe_interval: Float = Field(default=600.0, ge=0, le=86400)

    @field_validator("dhcp_probe_interval")
    @classmethod
    def _probe_interval(cls, value: float) -> float:
        if 0 < value < 1:
            raise ValueError("probes go at most once a second (or 0: never)")
        return value

    tftp_upload_dir: Path | None = None
    tftp_upload_max_size: Int = Field(default=1024**3, ge=0)
    # PXE boot menus by client class, from [[pxe-menu]] and [pxe-prompt] (or the flags).
    pxe_menus: PxeMenus = Field(default_factory=PxeMenus)
    # Caps on what new DHCP clients may take, so that a flood of made-up MACs cannot hold the
    # pool: open offers in all pools and in one pool, live leases in one pool (None: its size).
    dhcp_max_offers: Int = Field(default=4096, ge=1, le=1_000_000)
    dhcp_max_offers_per_pool: Int = Field(default=1024, ge=1, le=1_000_000)
    max_leases: Int | None = Field(default=None, ge=1)
    # Processes that answer DHCP (authoritative mode): each serves the clients whose hardware
    # address ends in its share of the octet values, from its own part of every pool.
    dhcp_workers: Int = Field(default=1, ge=1, le=MAX_DHCP_WORKERS)

    @field_validator("log_level", mode="before")
    @classmethod
    def _log_level(cls, value: object) -> object:
        return _choice(LogLevel, "log level", value)

    @field_validator("log_format", mode="before")
    @classmethod
    def _log_format(cls, value: object) -> object:
        return _choice(LogFormat, "log format", value)

    @field_validator("dhcp_options", mode="before")
    @classmethod
    def _encode_options(cls, value: object) -> object:
        if not isinstance(value, Mapping):
            return value
        encoded: dict[int, bytes] = {}
        for key, raw in value.items():
            if isinstance(raw, bytes):
                encoded[int(key)] = raw
                continue
            code = settable_option(key)
            encoded[code] = encode_option_value(code, raw)
        return encoded

    @field_validator("boot", mode="before")
    @classmethod
    def _boot_keys(cls, value: object) -> object:
        if not isinstance(value, Mapping):
            return value  # pydantic says what is wrong with it
        keys: dict[BootKey, object] = {}
        for key, path in value.items():
            if isinstance(key, BootClass | int):
                keys[key] = path
            elif isinstance(key, str):
                keys[parse_boot_key(key)] = path
            else:
                raise ValueError(f"boot: a class name is expected, not {key!r}")
        return keys

    @field_validator("boot")
    @classmethod
    def _check_boot(cls, value: dict[BootKey, str]) -> dict[BootKey, str]:
        return {key: _boot_path(path) for key, path in value.items()}

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> Config:
        no_pool = self.dhcp_range is None and not self.subnets
        if self.dhcp_mode is DhcpMode.AUTHORITATIVE and no_pool:
            raise ValueError("authoritative DHCP needs a dhcp-range or [[subnets]]")
        if self.dhcp_mode is not DhcpMode.AUTHORITATIVE:
            for key, given in (
                ("dhcp-range", self.dhcp_range is not None),
                ("[[hosts]]", len(self.hosts) > 0),
                ("dynamic-bootp", self.dynamic_bootp),
                ("dhcp-workers", self.dhcp_workers > 1),
            ):
                if given:
                    raise ValueError(
                        f"{key} is only used by authoritative DHCP, not {self.dhcp_mode}"
                    )
        if info.context is not None and not info.context.get("serving", True):
            return self  # explain and check: what is missing is said where it matters
        missing = self.missing_for_serving()
        if missing:
            raise ValueError(missing[0])
        return self

    def missing_for_serving(self) -> list[str]:
        """What serve needs that explain and check do without, each said."""
        missing = []
        if self.dhcp_mode is not DhcpMode.OFF and self.interface is None:
            missing.append("serving DHCP needs an interface (--interface)")
        if (self.tftp or self.http) and self.root is None:
            missing.append("serving files needs a root directory (--root)")
        no_address = self.interface is None and self.next_server is None
        if self.inventory is not None and no_address and self.dhcp_mode is DhcpMode.OFF:
            # (With DHCP on, the interface is missing already.)
            missing.append(
                "an inventory needs --interface (or next-server): its scripts name this "
                "server's address"
            )
        return missing


# Keys of the TOML file, spelled as the command-line flags are. "dhcp-range" implies
# authoritative mode and "proxy = true" proxy mode, as the flags do.
_FILE_KEYS = {
    "interface",
    "root",
    "dhcp-range",
    "subnets",
    "hosts",
    "dynamic-bootp",
    "bootp-lease-time",
    "proxy",
    "dhcp",
    "tftp",
    "http",
    "boot",
    "http-port",
    "http-header-timeout",
    "http-keepalive-timeout",
    "http-max-connections",
    "tftp-port",
    "state-dir",
    "log-dhcp",
    "log-level",
    "log-format",
    "lease-time",
    "next-server",
    "routers",
    "dns-servers",
    "domain-name",
    "ntp-servers",
    "mtu",
    "root-path",
    "dhcp-options",
    "ipxe-dir",
    "inventory",
    "tftp-max-blksize",
    "tftp-max-windowsize",
    "tftp-timeout",
    "tftp-retries",
    "tftp-max-sessions",
    "tftp-max-sessions-per-client",
    "tftp-single-port",
    "tftp-busy-poll-us",
    "tftp-threads",
    "dhcp-probe-interval",
    "tftp-upload-dir",
    "tftp-upload-max-size",
    "pxe-menu",
    "pxe-prompt",
    "pxe-multicast",
    "dhcp-max-offers",
    "dhcp-max-offers-per-pool",
    "max-leases",
    "dhcp-workers",
    "journal",
    "journal-max-events",
    "journal-max-days",
    "api-token-file",
}


def _location(error: Mapping[str, Any]) -> str:
    parts = [str(part).replace("_", "-") for part in error.get("loc", ()) if part != "__root__"]
    return ".".join(parts)


@dataclass(frozen=True)
class ConfigFile:
    """A config file as read: its settings, and where each key was written, for messages."""

    path: Path
    settings: dict[str, Any]
    lines: KeyLines = field(repr=False)

    def where(self, key: tuple[str, ...] = ()) -> str:
        """``file:line`` of ``key`` (its nearest enclosing table's, if it is not written); the
        file alone for a key the file does not set."""
        if not key or key[0] not in self.settings:
            return str(self.path)
        return f"{self.path}:{self.lines.line_of(key)}"

    def where_in_message(self, message: str) -> str:
        """``file:line`` of the table a message names (``[[subnets]] #2``, ``lease-time: ...``)."""
        numbered = _NUMBERED_TABLE.match(message)
        if numbered is not None:
            line = self.lines.table_line((numbered["table"],), int(numbered["number"]))
            return f"{self.path}:{line}" if line is not None else str(self.path)
        indexed = _INDEXED_TABLE.match(message)
        if indexed is not None:
            line = self.lines.table_line((indexed["table"],), int(indexed["index"]) + 1)
            if line is not None:
                return f"{self.path}:{line}"
        return self.where((message.split(":", 1)[0].split("[", 1)[0].strip(),))


# How a table of an array of tables is named in messages: "[[subnets]] #2 (10.0.5.0/24): ..."
# counts from 1, "pxe-menu[0]: ..." from 0.
_NUMBERED_TABLE = re.compile(r"^\[\[(?P<table>[a-z-]+)\]\] #(?P<number>[0-9]+)\b")
_INDEXED_TABLE = re.compile(r"^(?P<table>[a-z-]+)\[(?P<index>[0-9]+)\]")


def _origin(file: ConfigFile | None, key: tuple[str, ...] = (), message: str = "") -> str:
    if file is None:
        return ""
    return file.where(key) if key else file.where_in_message(message)


def _explain(
    error: ValidationError, file: ConfigFile | None, flags: Mapping[str, Any]
) -> ConfigError:
    first = error.errors()[0]
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    where = _location(first)
    key = where.split(".", 1)[0]
    from_flag = bool(key) and flags.get(key) not in (None, {})
    if from_flag:
        origin = f"--{key}"
    else:
        path = tuple(str(part) for part in first.get("loc", ()) if isinstance(part, str))
        origin = _origin(file, tuple(part.replace("_", "-") for part in path))
    if from_flag and where == key:
        where = ""  # "--boot: boot: ..." says the same thing twice
    prefix = f"{origin}: " if origin else ""
    return ConfigError(f"{prefix}{where + ': ' if where else ''}{message}")


def load_file(path: Path) -> ConfigFile:
    """Read a TOML config file into flag-named settings; errors name the file and the line."""
    try:
        text = _read_regular(path).decode()
        data = tomllib.loads(text)
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: no such file") from exc
    except PermissionError as exc:
        raise ConfigError(f"{path}: permission denied") from exc
    except OSError as exc:  # an I/O error, a name too long
        raise ConfigError(f"{path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    file = ConfigFile(path, data, KeyLines(text))
    unknown = sorted(set(data) - _FILE_KEYS)
    if unknown:
        raise ConfigError(f"{file.where((unknown[0],))}: unknown key {unknown[0]!r}")
    return file


def _read_regular(path: Path) -> bytes:
    """The bytes of the regular file at ``path``; ConfigError for anything else.

    A device is never read: /dev/zero would never end, and /dev/null would pass for an empty
    config. The stat before opening keeps a FIFO from blocking the open; the one after catches
    a file swapped in between.
    """
    mode = path.stat().st_mode
    if stat.S_ISREG(mode):
        with path.open("rb") as handle:
            mode = os.fstat(handle.fileno()).st_mode
            if stat.S_ISREG(mode):
                return handle.read()
    raise ConfigError(f"{path}: {_file_kind(mode)}, not a config file")


def _file_kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISFIFO(mode):
        return "a pipe"
    return "not a regular file"


def build(
    file_settings: Mapping[str, Any],
    flags: Mapping[str, Any],
    file: ConfigFile | None = None,
    *,
    serving: bool = True,
) -> Config:
    """Merge file settings and flags (flags win) into a validated :class:`Config`.

    Both mappings use the flag spelling (``dhcp-range``, ``no-dhcp`` is ``dhcp = false``).
    ``file`` is the config file they came from, whose name and lines error messages give.
    Not ``serving`` (``explain``), a config need not say the interface or the root.
    """
    merged: dict[str, Any] = dict(file_settings)
    for key, value in flags.items():
        if key in ("boot", "dhcp-options"):
            merged[key] = {**merged.get(key, {}), **value}
        elif value is not None:
            merged[key] = value
    try:
        return _validate(merged, serving=serving)
    except PxeMenuError as exc:
        if str(exc).startswith("pxe-multicast:"):
            origin = (
                "--pxe-multicast" if flags.get("pxe-multicast") else _origin(file, message=str(exc))
            )
        elif flags.get("pxe-menu") or flags.get("pxe-prompt"):
            origin = "--pxe-service/--pxe-prompt"
        else:
            origin = _origin(file, message=str(exc))
        raise ConfigError(f"{origin + ': ' if origin else ''}{exc}") from exc
    except ValidationError as exc:
        raise _explain(exc, file, flags) from exc
    except ValueError as exc:
        origin = _origin(file, message=str(exc))
        raise ConfigError(f"{origin + ': ' if origin else ''}{exc}") from exc


_MENU_KEYS = ("pxe-menu", "pxe-prompt", "pxe-multicast")


def _validate(merged: Mapping[str, Any], *, serving: bool = True) -> Config:
    values: dict[str, Any] = {}
    for key, value in merged.items():
        if key in _MENU_KEYS or key in {"proxy", "dhcp", "dhcp-range", "subnets", "hosts"}:
            continue
        values[key.replace("-", "_")] = value
    if any(key in merged for key in _MENU_KEYS):
        values["pxe_menus"] = build_menus(
            merged.get("pxe-menu"), merged.get("pxe-prompt"), merged.get("pxe-multicast")
        )
    dhcp_on = merged.get("dhcp", True)
    proxy = merged.get("proxy", False)
    dhcp_range = merged.get("dhcp-range")
    # The subnets' and hosts' own messages name the table and the key.
    if "subnets" in merged:
        values["subnets"] = parse_subnets(merged["subnets"])
    if "hosts" in merged:
        values["hosts"] = parse_hosts(merged["hosts"])
    if not isinstance(dhcp_on, bool) or not isinstance(proxy, bool):
        raise ValueError("'dhcp' and 'proxy' must be true or false")
    if not dhcp_on:
        if proxy or dhcp_range is not None or values.get("subnets"):
            raise ValueError(
                "DHCP is off (--no-dhcp) but --proxy, --dhcp-range or [[subnets]] was given"
            )
        values["dhcp_mode"] = DhcpMode.OFF
    elif dhcp_range is not None or values.get("subnets"):
        if proxy:
            raise ValueError("--proxy excludes --dhcp-range and [[subnets]]")
        values["dhcp_mode"] = DhcpMode.AUTHORITATIVE
        if isinstance(dhcp_range, str):
            try:
                values["dhcp_range"] = AddressRange.parse(dhcp_range)
            except ValueError as exc:
                raise ValueError(f"dhcp-range: {exc}") from None
        elif dhcp_range is not None:
            raise ValueError("dhcp-range must be a string FIRST-LAST")
    else:
        values["dhcp_mode"] = DhcpMode.PROXY
    return Config.model_validate(values, context={"serving": serving})
