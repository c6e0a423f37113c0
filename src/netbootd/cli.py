"""The ``netbootd`` command line.

Parses flags, loads and validates the configuration, sets up logging and hands over to the
composition root. Bad flags or a bad configuration end in one error line and exit code 2; a
server that cannot start (a port taken, an interface missing) in one line and exit code 1.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, NoReturn

import uvloop

from netbootd import __version__
from netbootd.app import StartError, serve
from netbootd.boot.client import BootClass, BootKey, boot_key_name, parse_boot_key
from netbootd.config import Config, ConfigError, build, load_file

EXIT_BAD_USAGE = 2
EXIT_CANNOT_RUN = 1

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s %(message)s"


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
    serve_cmd.add_argument("--config", type=Path, metavar="FILE", help="a TOML config file")
    serve_cmd.add_argument(
        "--interface",
        metavar="IFACE",
        help="serve on this interface; its first IPv4 address is the server's",
    )
    serve_cmd.add_argument(
        "--root", type=Path, metavar="DIR", help="the files served over TFTP and HTTP"
    )
    mode = serve_cmd.add_mutually_exclusive_group()
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
    serve_cmd.add_argument(
        "--no-tftp",
        dest="tftp",
        action="store_const",
        const=False,
        default=None,
        help="turn TFTP off",
    )
    serve_cmd.add_argument(
        "--no-http",
        dest="http",
        action="store_const",
        const=False,
        default=None,
        help="turn HTTP off",
    )
    serve_cmd.add_argument(
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
    serve_cmd.add_argument("--http-port", type=_port, metavar="PORT", help="HTTP port (default 80)")
    serve_cmd.add_argument("--tftp-port", type=_port, metavar="PORT", help="TFTP port (default 69)")
    serve_cmd.add_argument(
        "--tftp-max-blksize",
        type=_count,
        metavar="OCTETS",
        help="the largest TFTP block a client may negotiate, 8-65464 (default: what fits the "
        "interface MTU unfragmented)",
    )
    serve_cmd.add_argument(
        "--tftp-single-port",
        action="store_const",
        const=True,
        default=None,
        help="answer every TFTP transfer from the TFTP port itself, for NAT and firewalls",
    )
    serve_cmd.add_argument(
        "--tftp-upload-dir",
        type=Path,
        metavar="DIR",
        help="accept TFTP writes of new files into DIR (default: read-only)",
    )
    serve_cmd.add_argument("--state-dir", type=Path, metavar="DIR", help="leases and other state")
    serve_cmd.add_argument(
        "--log-dhcp",
        action="store_const",
        const=True,
        default=None,
        help="log every option received and sent",
    )
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    file_settings: dict[str, Any] = {}
    source = ""
    if args.config is not None:
        file_settings = load_file(args.config)
        source = str(args.config)
    flags: dict[str, Any] = {
        "interface": args.interface,
        "root": args.root,
        "dhcp-range": args.dhcp_range,
        "proxy": args.proxy,
        "dhcp": args.dhcp,
        "tftp": args.tftp,
        "http": args.http,
        "http-port": args.http_port,
        "tftp-port": args.tftp_port,
        "state-dir": args.state_dir,
        "log-dhcp": args.log_dhcp,
        "tftp-max-blksize": args.tftp_max_blksize,
        "tftp-single-port": args.tftp_single_port,
        "tftp-upload-dir": args.tftp_upload_dir,
        "boot": {boot_key_name(key): path for key, path in args.boot},
    }
    if flags["dhcp-range"] is not None or flags["proxy"] or flags["dhcp"] is False:
        # A mode given on the command line replaces the file's mode entirely.
        for key in ("dhcp-range", "proxy", "dhcp"):
            file_settings.pop(key, None)
    return build(file_settings, flags, source)


def _run(coro: Coroutine[Any, Any, None]) -> None:
    uvloop.run(coro)


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_BAD_USAGE
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        print(f"netbootd: config error: {exc}", file=sys.stderr)
        return EXIT_BAD_USAGE
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, stream=sys.stderr)

    try:
        _run(serve(config))
    except ConfigError as exc:
        print(f"netbootd: config error: {exc}", file=sys.stderr)
        return EXIT_BAD_USAGE
    except StartError as exc:
        print(f"netbootd: cannot start: {exc}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
