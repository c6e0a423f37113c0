"""The ``netbootd`` command line.

Parses flags, loads and validates the configuration, sets up logging and hands over to the
composition root. Bad flags or a bad configuration end in one error line and exit code 2; a
server that cannot start (a port taken, an interface missing) in one line and exit code 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
from collections.abc import Coroutine, Mapping, Sequence
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any, NoReturn

import uvloop

from netbootd import __version__
from netbootd.api.remote import (
    Refused,
    Unreachable,
    fetch,
    machine_path,
    machine_text,
    machines_text,
    status_text,
)
from netbootd.api.view import Explained, Explainer
from netbootd.app import StartError, serve
from netbootd.boot.client import BootClass, BootKey, boot_key_name, parse_boot_key
from netbootd.check import check
from netbootd.config import Config, ConfigError, LogFormat, LogLevel, build, load_file
from netbootd.explain import ClientDescription, explain
from netbootd.logs.handler import setup_logging
from netbootd.proto.dhcp.codec import encode_option_value, settable_option
from netbootd.state import (
    NotDone,
    lease_json,
    lease_list,
    lease_rows,
    lease_table,
    machine_names,
    mark_installed,
    state_paths,
)
from netbootd.transport.netif import InterfaceError, interface_info
from netbootd.workers import WorkerError

EXIT_BAD_USAGE = 2
EXIT_CANNOT_RUN = 1

_LOG_LEVELS = {
    LogLevel.DEBUG: logging.DEBUG,
    LogLevel.INFO: logging.INFO,
    LogLevel.WARNING: logging.WARNING,
    LogLevel.ERROR: logging.ERROR,
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _boot_flag(text: str) -> tuple[BootKey, str]:
    name, sep, path = text.partition("=")
    if not sep or not path:
        raise argparse.ArgumentTypeError(f"expected CLASS=PATH, got {text!r}")
    try:
        return parse_boot_key(name), path.strip()
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _dhcp_option_flag(text: str) -> tuple[int, bytes]:
    name, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected OPTION=VALUE, got {text!r}")
    try:
        code = settable_option(name)
        return code, encode_option_value(code, value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _pxe_service_flag(text: str) -> dict[str, object]:
    """``CLASS,TEXT,FILE|local|TYPE[,SERVER]`` as a ``[[pxe-menu]]`` entry (dnsmasq's order)."""
    parts = text.split(",")
    server = None
    if len(parts) >= 4:
        try:
            server = str(IPv4Address(parts[-1].strip()))
            parts.pop()
        except ValueError:
            pass
    if len(parts) < 3 or not parts[0].strip() or not parts[-1].strip():
        raise argparse.ArgumentTypeError(
            f"expected CLASS,TEXT,FILE|local|TYPE[,SERVER], got {text!r}"
        )
    entry: dict[str, object] = {"arch": parts[0].strip(), "text": ",".join(parts[1:-1])}
    target = parts[-1].strip()
    if target == "local":
        entry["local"] = True
    elif target.isdigit():
        entry["type"] = int(target)
    else:
        entry["file"] = target
    if server is not None:
        entry["server"] = server
    return entry


def _pxe_prompt_flag(text: str) -> dict[str, object]:
    """``[CLASS,]TEXT,SECONDS`` as a ``[pxe-prompt]`` table."""
    head, sep, seconds = text.rpartition(",")
    if not sep or not seconds.strip().isdigit():
        raise argparse.ArgumentTypeError(f"expected [CLASS,]TEXT,SECONDS, got {text!r}")
    entry: dict[str, object] = {"timeout": int(seconds), "text": head}
    first, sep, rest = head.partition(",")
    if sep:
        try:
            parse_boot_key(first)
        except ValueError:
            pass
        else:
            entry.update(arch=first.strip(), text=rest)
    return entry


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port {value} is outside 1-65535")
    return value


def _count(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None


def _where_options(parser: argparse.ArgumentParser) -> None:
    """Where the server's configuration and state are."""
    parser.add_argument("--config", type=Path, metavar="FILE", help="a TOML config file")
    parser.add_argument(
        "--interface",
        metavar="IFACE",
        help="serve on this interface; its first IPv4 address is the server's",
    )
    parser.add_argument(
        "--root", type=Path, metavar="DIR", help="the files served over TFTP and HTTP"
    )
    parser.add_argument(
        "--inventory",
        type=Path,
        metavar="DIR",
        help="machines, profiles and groups (TOML files); reloaded when they change",
    )
    parser.add_argument("--state-dir", type=Path, metavar="DIR", help="leases and other state")


def _mode_options(parser: argparse.ArgumentParser) -> None:
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--dhcp-range",
        metavar="FIRST-LAST",
        help="be the authoritative DHCP server for this pool",
    )
    mode.add_argument(
        "--proxy",
        action="store_const",
        const=True,
        default=None,
        help="proxyDHCP beside an existing DHCP server (ports 67 and 4011)",
    )
    mode.add_argument(
        "--no-dhcp",
        dest="dhcp",
        action="store_const",
        const=False,
        default=None,
        help="turn DHCP off",
    )


def _answer_options(parser: argparse.ArgumentParser) -> None:
    """What changes the answers clients get (serve and explain)."""
    parser.add_argument(
        "--boot",
        type=_boot_flag,
        action="append",
        default=[],
        metavar="CLASS=PATH",
        help="what a class of client gets; repeatable. CLASS: "
        + ", ".join(c.value for c in BootClass)
        + ", or arch-N for one option 93 architecture type (it wins over its class). PATH is "
        "relative to --root; for ipxe and the uefi-http classes it is handed out as an http:// "
        "URL to this server",
    )
    parser.add_argument(
        "--dhcp-option",
        type=_dhcp_option_flag,
        action="append",
        default=[],
        metavar="OPTION=VALUE",
        help="a DHCP option for every client, by code or name (42=10.0.0.1, "
        "vendor-encapsulated-options=hex:01:04:...); repeatable; replaces a built-in one",
    )
    parser.add_argument(
        "--pxe-service",
        type=_pxe_service_flag,
        action="append",
        default=[],
        metavar="CLASS,TEXT,FILE|local|TYPE[,SERVER]",
        help="a PXE boot menu item for a class of PXE firmware (bios, uefi, arch-N); repeatable, "
        "in menu order. FILE is served by this server; local boots the local disk; TYPE is a boot "
        "server type served by SERVER (with FILE, SERVER is its TFTP server)",
    )
    parser.add_argument(
        "--pxe-prompt",
        type=_pxe_prompt_flag,
        action="append",
        default=[],
        metavar="[CLASS,]TEXT,SECONDS",
        help="the prompt shown before a PXE menu, and the seconds until its first item boots "
        "(0: at once, 255: wait for the user); without CLASS, for every menu",
    )
    parser.add_argument("--http-port", type=_port, metavar="PORT", help="HTTP port (default 80)")
    parser.add_argument("--tftp-port", type=_port, metavar="PORT", help="TFTP port (default 69)")


def _serve_options(parser: argparse.ArgumentParser) -> None:
    """What only a running server uses."""
    parser.add_argument(
        "--no-tftp",
        dest="tftp",
        action="store_const",
        const=False,
        default=None,
        help="turn TFTP off",
    )
    parser.add_argument(
        "--no-http",
        dest="http",
        action="store_const",
        const=False,
        default=None,
        help="turn HTTP off",
    )
    parser.add_argument(
        "--tftp-max-blksize",
        type=_count,
        metavar="OCTETS",
        help="the largest TFTP block a client may negotiate, 8-65464 (default: what fits the "
        "interface MTU unfragmented)",
    )
    parser.add_argument(
        "--tftp-single-port",
        action="store_const",
        const=True,
        default=None,
        help="answer every TFTP transfer from the TFTP port itself, for NAT and firewalls",
    )
    parser.add_argument(
        "--tftp-upload-dir",
        type=Path,
        metavar="DIR",
        help="accept TFTP writes of new files into DIR (default: read-only)",
    )
    parser.add_argument(
        "--dhcp-workers",
        type=int,
        metavar="N",
        help="processes answering DHCP in authoritative mode, each for its share of the "
        "clients and of every pool (default 1)",
    )
    parser.add_argument("--dhcp-worker", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--pxe-multicast",
        metavar="ADDRESS",
        help="a multicast group (239.x.y.z) PXE clients may send their menu choice to, at port "
        "4011, before they try the boot servers the menu names; this server listens on it",
    )
    parser.add_argument(
        "--api-token-file",
        type=Path,
        metavar="FILE",
        help="the REST API's write token (POST, PUT, DELETE need it as a bearer token); "
        "without it the API is read-only",
    )
    parser.add_argument(
        "--log-dhcp",
        action="store_const",
        const=True,
        default=None,
        help="log every option received and sent",
    )
    # Checked with the config file's keys, so that a bad value is one line naming its flag.
    parser.add_argument(
        "--log-level",
        metavar="debug|info|warning|error",
        help="the least a line must be to be written (default info; debug adds what is "
        "ignored and why)",
    )
    parser.add_argument(
        "--log-format",
        metavar="text|json",
        help="EVENT key=value lines (default text), or one JSON object a line for tools",
    )


def _server_options(parser: argparse.ArgumentParser) -> None:
    """The options that describe a server."""
    _where_options(parser)
    _mode_options(parser)
    _answer_options(parser)
    _serve_options(parser)


def _state_options(parser: argparse.ArgumentParser) -> None:
    """Where a state command finds the state directory and the inventory."""
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="a TOML config file: its state-dir and inventory are used, nothing else",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        metavar="DIR",
        help="the server's state directory (default: the config's state-dir, else "
        "/var/lib/netbootd)",
    )
    parser.add_argument(
        "--inventory",
        type=Path,
        metavar="DIR",
        help="machines, profiles and groups (default: the config's inventory)",
    )


def make_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="netbootd",
        description="Network-boot server: DHCPv4 or proxyDHCP, TFTP and HTTP for PXE, UEFI and "
        "iPXE clients.",
    )
    parser.add_argument("--version", action="version", version=f"netbootd {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    serve_cmd = commands.add_parser(
        "serve",
        help="serve DHCP, TFTP and HTTP for network booting",
        description="Serve DHCP (authoritative or proxy), TFTP and HTTP for network booting. "
        "With neither --dhcp-range, --proxy nor --no-dhcp, netbootd runs as a proxyDHCP and "
        "never hands out addresses.",
    )
    _server_options(serve_cmd)
    check_cmd = commands.add_parser(
        "check",
        help="find every mistake in the configuration and the inventory, without serving",
        description="Go through what serve checks before it starts, keeping every problem "
        "rather than the first: the config, the interface, the root, the inventory and its "
        "templates (a variable that does not exist), then what a machine would stop at (a "
        "profile's kernel or initrd the root does not hold). One line per problem, "
        "FILE:LINE: KEY: message. Exits 2 when there are problems, 0 when there are only "
        "warnings or none. Takes serve's options.",
    )
    _server_options(check_cmd)
    explain_cmd = commands.add_parser(
        "explain",
        help="show what a client would get, and why, without any network",
        description="Show which machine, group and profile a client matches and why, then the "
        "exact DHCP reply it would get and the script or config it would be served. Takes the "
        "server's --config (or the options of serve that change answers) and a description of "
        "the client. Without an interface, the DHCP reply is not shown and the address the "
        "scripts name stands in as 192.0.2.1.",
    )
    _where_options(explain_cmd)
    _mode_options(explain_cmd)
    _answer_options(explain_cmd)
    explain_cmd.add_argument("--mac", required=True, metavar="MAC", help="the client's MAC")
    explain_cmd.add_argument(
        "--arch",
        type=_count,
        metavar="N",
        help="option 93 architecture type (0 BIOS, 7 UEFI x64, 16 UEFI HTTP x64, ...)",
    )
    explain_cmd.add_argument(
        "--user-class", metavar="TEXT", help="option 77, such as iPXE (the client runs iPXE)"
    )
    explain_cmd.add_argument(
        "--vendor-class",
        metavar="TEXT",
        help="option 60 (default: PXEClient:Arch:N, or HTTPClient:Arch:N for HTTP Boot types)",
    )
    explain_cmd.add_argument("--uuid", metavar="UUID", help="option 97, the machine UUID")
    explain_cmd.add_argument(
        "--parameter-list",
        metavar="CODES",
        help="option 55 as the client sends it, such as 1,3,6,12,15,43,60,66,67 (the network "
        "options it gets depend on it)",
    )
    installed_cmd = commands.add_parser(
        "installed",
        help="mark a machine's boot-once profile done (or not, with --again)",
        description="Mark the inventory machine with this MAC installed: from its next boot on "
        "it gets its own profile instead of its boot-once one. A running server picks the "
        "change up by itself. Needs only the inventory and the state directory.",
    )
    _state_options(installed_cmd)
    installed_cmd.add_argument("--mac", required=True, metavar="MAC", help="the machine's MAC")
    installed_cmd.add_argument(
        "--again",
        action="store_true",
        help="undo: boot the boot-once profile again on the next boot",
    )
    leases_cmd = commands.add_parser(
        "leases",
        help="list the leases of the state directory",
        description="List the addresses netbootd has handed out as the authoritative DHCP "
        "server, from its state directory: address, MAC, state, when the lease ends (local "
        "time) and how long is left, the client's host name, the inventory machine of that "
        "MAC (with --inventory), and whether the client is known by MAC or client identifier. "
        "Reads the lease database without writing to it, beside a running server too.",
    )
    _state_options(leases_cmd)
    leases_cmd.add_argument("--all", action="store_true", help="the leases that have ended too")
    leases_cmd.add_argument(
        "--json", action="store_true", help="one JSON object per lease, for tools"
    )
    status_cmd = commands.add_parser(
        "status",
        help="what a running server serves, since when, and its counters",
        description="Ask a running netbootd over its REST API: mode, uptime, services, the "
        "journal, the inventory and every service's counters.",
    )
    _client_options(status_cmd)
    machines_cmd = commands.add_parser(
        "machines",
        help="the machines a running server knows, and how their boots went",
        description="Ask a running netbootd over its REST API for its machines (the "
        "inventory's and every MAC it has seen) with the verdict on each one's latest boot; "
        "with a name or MAC, that machine's boot attempts as a timeline.",
    )
    machines_cmd.add_argument("machine", nargs="?", metavar="NAME|MAC", help="one machine")
    _client_options(machines_cmd)
    return parser


def _client_options(parser: argparse.ArgumentParser) -> None:
    """Where a command that asks the REST API finds the server."""
    parser.add_argument(
        "--server",
        metavar="URL",
        help="the server's HTTP address (default: http://ADDRESS:PORT from --config's "
        "interface and http-port, else http://127.0.0.1:80)",
    )
    parser.add_argument(
        "--config", type=Path, metavar="FILE", help="the server's config file (for --server)"
    )
    parser.add_argument(
        "--token-file", type=Path, metavar="FILE", help="the API token, sent as a bearer token"
    )
    parser.add_argument("--json", action="store_true", help="the API's JSON as it came")


def _flag(args: argparse.Namespace, name: str) -> Any:
    """A flag's value; None for a flag the command does not take."""
    return getattr(args, name, None)


def config_from_args(args: argparse.Namespace, *, serving: bool = True) -> Config:
    file_settings: dict[str, Any] = {}
    file = None
    if args.config is not None:
        file = load_file(args.config)
        file_settings = dict(file.settings)
    flags: dict[str, Any] = {
        name.replace("_", "-"): _flag(args, name)
        for name in (
            "interface",
            "root",
            "dhcp_range",
            "proxy",
            "dhcp",
            "tftp",
            "http",
            "http_port",
            "tftp_port",
            "state_dir",
            "log_dhcp",
            "log_level",
            "log_format",
            "tftp_max_blksize",
            "tftp_single_port",
            "tftp_upload_dir",
            "inventory",
            "pxe_multicast",
            "dhcp_workers",
            "api_token_file",
        )
    }
    flags["dhcp-options"] = dict(_flag(args, "dhcp_option") or ())
    flags["boot"] = {boot_key_name(key): path for key, path in _flag(args, "boot") or ()}
    flags["pxe-menu"] = _flag(args, "pxe_service") or None
    flags["pxe-prompt"] = _flag(args, "pxe_prompt") or None
    if flags["dhcp-range"] is not None or flags["proxy"] or flags["dhcp"] is False:
        # A mode given on the command line replaces the file's mode entirely.
        for key in ("dhcp-range", "proxy", "dhcp"):
            file_settings.pop(key, None)
    if flags["proxy"] or flags["dhcp"] is False:
        # So do the file's authoritative-only tables (--dhcp-range keeps them: it adds the
        # interface's pool to them).
        for key in ("subnets", "hosts", "dynamic-bootp", "bootp-lease-time"):
            file_settings.pop(key, None)
    return build(file_settings, flags, file, serving=serving)


def _run(coro: Coroutine[Any, Any, None]) -> None:
    uvloop.run(coro)


def _explain(config: Config, args: argparse.Namespace) -> int:
    setup_logging(logging.WARNING)
    client = ClientDescription(
        mac=args.mac,
        arch=args.arch,
        user_class=args.user_class,
        vendor_class=args.vendor_class,
        uuid=args.uuid,
        parameter_list=args.parameter_list,
    )
    try:
        report = uvloop.run(explain(config, client))
    except ConfigError as exc:
        print(f"netbootd: config error: {exc}", file=sys.stderr)
        return EXIT_BAD_USAGE
    sys.stdout.write(report.text)
    if report.unservable:
        print("netbootd: this client would be handed what cannot be served", file=sys.stderr)
        return EXIT_CANNOT_RUN
    return 0


def _check(args: argparse.Namespace) -> int:
    setup_logging(logging.ERROR)  # what would be logged is in the report
    try:
        config = config_from_args(args, serving=False)
    except ConfigError as exc:
        print(f"{exc}\nchecked the configuration: 1 problem")
        return EXIT_BAD_USAGE
    report = check(config)
    sys.stdout.write(report.text())
    return EXIT_BAD_USAGE if report.errors else 0


def _server_url(args: argparse.Namespace) -> str:
    """--server, else the address and HTTP port of --config's server, else loopback's."""
    if args.server:
        return str(args.server)
    host, port = "127.0.0.1", 80
    if args.config is not None:
        settings = load_file(args.config).settings
        port = int(settings.get("http-port", 80))
        interface = settings.get("interface")
        if isinstance(interface, str):
            # The server listens on its interface's address, not on loopback.
            with contextlib.suppress(InterfaceError):
                host = str(interface_info(interface).ip)
    return f"http://{host}:{port}"


def _client_command(args: argparse.Namespace) -> int:
    """``status`` or ``machines``: the running server's REST API, read."""
    try:
        server = _server_url(args)
        token = args.token_file.read_text().strip() if args.token_file else None
    except (ConfigError, OSError, ValueError) as exc:
        print(f"netbootd: config error: {exc}", file=sys.stderr)
        return EXIT_BAD_USAGE
    try:
        if args.command == "status":
            status = fetch(server, "/api/v1/status", token)
            counters = fetch(server, "/api/v1/counters", token)
            if args.json:
                text = json.dumps({"status": status, "counters": counters}, indent=2) + "\n"
            else:
                text = status_text(status, counters)
        elif args.machine:
            machine = fetch(server, machine_path(args.machine), token)
            text = json.dumps(machine, indent=2) + "\n" if args.json else machine_text(machine)
        else:
            found = fetch(server, "/api/v1/machines", token)
            text = (
                json.dumps(found, indent=2) + "\n"
                if args.json
                else machines_text(found["machines"])
            )
    except Unreachable as exc:
        print(f"netbootd: {exc}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    except Refused as exc:
        print(f"netbootd: the server says: {exc.message} ({exc.status})", file=sys.stderr)
        return EXIT_CANNOT_RUN
    sys.stdout.write(text)
    return 0


def api_explainer(config: Config) -> Explainer:
    """What the REST API's explain runs: ``netbootd explain`` over the server's config, in
    the calling thread (its own event loop)."""

    def explain_client(description: Mapping[str, str | None]) -> Explained:
        arch = description.get("arch")
        client = ClientDescription(
            mac=description.get("mac") or "",
            arch=int(arch) if arch else None,
            user_class=description.get("user_class"),
            vendor_class=description.get("vendor_class"),
            uuid=description.get("uuid"),
            parameter_list=description.get("parameter_list"),
        )
        report = asyncio.run(explain(config, client))
        return Explained(report.text, report.unservable)

    return explain_client


def _state_command(args: argparse.Namespace) -> int:
    """``installed`` or ``leases``: the state directory and the inventory, nothing else."""
    try:
        file = load_file(args.config) if args.config is not None else None
        paths = state_paths(file, args.state_dir, args.inventory)
        if args.command == "installed":
            print(mark_installed(paths, args.mac, again=args.again))
            return 0
        leases = lease_list(paths)
        rows, ended = lease_rows(leases, machine_names(paths), everything=args.all)
    except ConfigError as exc:
        print(f"netbootd: config error: {exc}", file=sys.stderr)
        return EXIT_BAD_USAGE
    except NotDone as exc:
        print(f"netbootd: {exc}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    sys.stdout.write(lease_json(rows) if args.json else lease_table(rows, ended))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_BAD_USAGE
    if args.command in ("installed", "leases"):
        return _state_command(args)
    if args.command in ("status", "machines"):
        return _client_command(args)
    if args.command == "check":
        return _check(args)
    try:
        config = config_from_args(args, serving=args.command == "serve")
    except ConfigError as exc:
        print(f"netbootd: config error: {exc}", file=sys.stderr)
        return EXIT_BAD_USAGE
    if args.command == "explain":
        return _explain(config, args)
    setup_logging(_LOG_LEVELS[config.log_level], as_json=config.log_format is LogFormat.JSON)
    own_args = list(argv) if argv is not None else sys.argv[1:]  # for the DHCP workers
    try:
        _run(serve(config, own_args, args.dhcp_worker, api_explainer(config)))
    except ConfigError as exc:
        print(f"netbootd: config error: {exc}", file=sys.stderr)
        return EXIT_BAD_USAGE
    except StartError as exc:
        print(f"netbootd: cannot start: {exc}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    except WorkerError as exc:
        print(f"netbootd: stopped: {exc}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
