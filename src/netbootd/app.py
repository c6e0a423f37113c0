"""The composition root: builds every piece from the configuration, starts and stops them.

Wiring, start-up checks, and signal handling live here and nowhere else. Nothing below this
module reads the configuration file, looks up interfaces or installs signal handlers.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from netbootd.api.routes import TAKEN_NAMES
from netbootd.api.routes import routes as operator_routes
from netbootd.api.view import Explainer, OperatorView
from netbootd.boot.client import BootClass, boot_key_name, boot_key_needs_http
from netbootd.boot.inventory import InventoryError
from netbootd.boot.leases import Lease, LeaseBook, LeaseState
from netbootd.boot.policy import DEFAULT_BOOT, GRUB_LOADER, PXELINUX_LOADER, BootPolicy
from netbootd.boot.subnets import NetworkSettings, Subnet, check_overlaps, check_server
from netbootd.config import Config, ConfigError, DhcpMode
from netbootd.logs.events import format_event
from netbootd.proto.dhcp.codec import Opt, ips_option
from netbootd.proto.dhcp.wire import DHCP_SERVER_PORT, PXE_PORT
from netbootd.proto.tftp.packet import BLKSIZE_MAX
from netbootd.services.dhcp.authoritative import release_address
from netbootd.services.dhcp.limits import DhcpLimits
from netbootd.services.dhcp.service import DhcpService
from netbootd.services.dhcp.settings import DhcpSettings
from netbootd.services.dhcp.shares import Share
from netbootd.services.dhcp.watch import ServerWatch
from netbootd.services.files import FileLookupError, FileSource, FileTree
from netbootd.services.journal import Journal
from netbootd.services.machines import BootFiles, LiveInventory, Machines, ServerAddress
from netbootd.services.metrics import Histogram, PoolUse, TransferRates, WorkerReport, pool_use
from netbootd.services.uploads import remove_leftovers
from netbootd.store.journal import JournalError, JournalStore
from netbootd.store.leases import Found, SqliteLeaseStore, StoreError
from netbootd.transport.descriptors import connection_cap, raise_open_file_limit
from netbootd.transport.dhcp import DhcpServer
from netbootd.transport.http import HttpLimits, HttpServer
from netbootd.transport.journal import JournalWriter
from netbootd.transport.netif import InterfaceError, InterfaceInfo, interface_info
from netbootd.transport.notify import Notice, Notifier
from netbootd.transport.renders import RenderPool, render_limits
from netbootd.transport.tftp import TftpServer, TftpSettings
from netbootd.workers import WorkerError, WorkerLink, Workers, die_with_parent

log = logging.getLogger("netbootd")

# The iPXE builds of the system's ipxe package, served under these names as if in the root.
IPXE_PACKAGE_FILES = ("undionly.kpxe", "undionly.kkpxe", "ipxe.pxe", "snponly.efi", "ipxe.efi")
# pxelinux (pxelinux, syslinux-common) and GRUB's network build (grub-efi-amd64-signed) from the
# system's packages, likewise, under the names the policy hands out.
LOADER_PACKAGE_FILES = {
    PXELINUX_LOADER: Path("/usr/lib/PXELINUX/pxelinux.0"),
    "ldlinux.c32": Path("/usr/lib/syslinux/modules/bios/ldlinux.c32"),
    GRUB_LOADER: Path("/usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed"),
}

# IPv4 (20) + UDP (8) + TFTP DATA header (4): what a block may use of the MTU.
_TFTP_OVERHEAD = 32
# How often the inventory directory is looked at for changes, in seconds, where it cannot be
# watched with inotify.
INVENTORY_POLL = 1.0
# With inotify: changes are gathered until none came for INVENTORY_STEP ms, or for at most
# INVENTORY_DEBOUNCE ms (an editor's save, a checkout, is several writes: one look for them
# all), and the files are looked at every INVENTORY_RECHECK seconds all the same.
INVENTORY_STEP = 50
INVENTORY_DEBOUNCE = 200
INVENTORY_RECHECK = 10.0


class StartError(Exception):
    """netbootd cannot start as configured; the message is one line for the operator."""


def system_boot_files(ipxe_dir: Path) -> dict[str, Path]:
    """The boot loaders of the system's packages that exist here, by the names they serve as."""
    found = {name: ipxe_dir / name for name in IPXE_PACKAGE_FILES}
    found.update(LOADER_PACKAGE_FILES)
    return {name: path for name, path in found.items() if path.is_file()}


def lease_counts(leases: list[Lease]) -> tuple[int, int]:
    """How many of ``leases`` are bound, and how many declined (quarantined)."""
    declined = sum(1 for lease in leases if lease.state is LeaseState.DECLINED)
    return len(leases) - declined, declined


def _more_options(config: Config) -> dict[int, bytes]:
    """NTP, MTU, root path, then the operator's own options, which win."""
    found: dict[int, bytes] = {}
    if config.ntp_servers:
        found[Opt.NTP] = ips_option(config.ntp_servers)
    if config.mtu is not None:
        found[Opt.MTU] = config.mtu.to_bytes(2, "big")
    if config.root_path:
        found[Opt.ROOT_PATH] = config.root_path.encode()
    return found | config.dhcp_options


@dataclass
class App:
    config: Config
    interface: InterfaceInfo | None = None
    tree: FileTree | None = None
    dhcp: DhcpServer | None = None
    tftp: TftpServer | None = None
    http: HttpServer | None = None
    store: SqliteLeaseStore | None = None
    inventory: LiveInventory | None = None
    source: FileSource | None = None
    # With dhcp-workers > 1: which worker this process is (0: the one that also serves TFTP,
    # HTTP and port 4011, and starts the others).
    share: Share | None = None
    _watcher: asyncio.Task[None] | None = None
    # Bound and declined leases in the lease database at start (authoritative mode).
    lease_counts: tuple[int, int] | None = None
    # Where TFTP and HTTP render per-machine files, apart from the threads that read files.
    renders: RenderPool = field(default_factory=RenderPool)
    # The built-in boot files missing from the root, found by prepare() (and logged there).
    missing_defaults: list[tuple[BootClass, str, str]] = field(default_factory=list)
    # The boot journal: what the services tell it, and the writer that stores it.
    journal: Journal | None = None
    journal_writer: JournalWriter | None = None
    # What the API, the metrics and the web page read (worker 0 only).
    view: OperatorView | None = None
    # The API's write token (api-token-file), read by prepare(); and what explains a client
    # for the API (given by the command line, which owns ``netbootd explain``).
    api_token: str | None = None
    explainer: Explainer | None = None
    # The rate of each transfer, read from the journal's events (worker 0, with the journal).
    transfer_rates: TransferRates | None = None
    _configured_subnets: tuple[Subnet, ...] | None = None

    @property
    def dhcp_only(self) -> bool:
        """A DHCP worker other than the first: it serves DHCP on port 67 and nothing else."""
        return self.share is not None and self.share.index > 0

    @property
    def machines(self) -> Machines | None:
        return self.inventory.machines if self.inventory is not None else None

    def server_ip(self) -> IPv4Address:
        """The address replies and scripts name: the interface's, else next-server."""
        server = self.interface.ip if self.interface is not None else self.config.next_server
        if server is None:
            raise ConfigError("boot replies and scripts name this server: give --interface")
        return server

    def server_address(self) -> ServerAddress:
        return ServerAddress(str(self.server_ip()), self.config.http_port, self.config.tftp_port)

    def prepare(self) -> None:
        """Check what can be checked before binding anything; raise StartError or ConfigError."""
        for step in self._preparation():
            step()

    def prepare_all(self) -> list[ConfigError]:
        """Every step of :meth:`prepare` that can run, each problem kept rather than the first
        raised (``netbootd check``). A step that needs what an earlier one failed to find (the
        interface, the root) is passed over."""
        problems = []
        for step in self._preparation():
            try:
                step()
            except ConfigError as exc:
                problems.append(exc)
        return problems

    def _preparation(self) -> tuple[Callable[[], None], ...]:
        return (
            self._prepare_interface,
            self._prepare_root,
            self._prepare_inventory,
            self._prepare_boot_files,
            self._prepare_upload_dir,
            self._prepare_subnets,
            self._prepare_api_token,
        )

    def _prepare_api_token(self) -> None:
        path = self.config.api_token_file
        if path is None or self.dhcp_only:
            return
        try:
            token = path.read_text().strip()
            mode = path.stat().st_mode
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise ConfigError(f"api-token-file {path}: {reason}") from exc
        if not token:
            raise ConfigError(f"api-token-file {path}: empty; the API's write token is wanted")
        if mode & 0o077:
            log.warning(
                format_event(
                    "api-token-file-readable",
                    path=str(path),
                    mode=f"{mode & 0o777:o}",
                    hint="others than its owner can read the API's write token: chmod 600",
                )
            )
        self.api_token = token

    def _prepare_interface(self) -> None:
        if self.config.interface is not None:
            try:
                self.interface = interface_info(self.config.interface)
            except InterfaceError as exc:
                raise ConfigError(str(exc)) from exc  # a bad --interface is a bad flag

    def _prepare_root(self) -> None:
        root = self.config.root
        if root is not None:
            if not root.is_dir():
                raise ConfigError(f"root {root}: not a directory")
            self.tree = FileTree(root, system_boot_files(self.config.ipxe_dir))
            self.source = self.tree

    def _prepare_inventory(self) -> None:
        config = self.config
        if config.inventory is None:
            return
        try:
            self.inventory = LiveInventory(
                config.inventory,
                config.state_dir,
                self.server_address(),
                None if self.dhcp_only else self.tree,
            )
        except InventoryError as exc:
            raise ConfigError(f"inventory {config.inventory}:\n{exc}") from exc
        if self.tree is not None:
            self.source = BootFiles(self.tree, self.inventory.machines)
        self.inventory.machines.render_limits = render_limits()

    def _prepare_boot_files(self) -> None:
        if self.tree is not None and not self.dhcp_only:
            self._check_boot_files(self.tree)
            if self.config.http:
                self._check_taken_names(self.tree.root)

    @staticmethod
    def _check_taken_names(root: Path) -> None:
        """A boot file where the operator's view answers is served over TFTP only: say so."""
        for name in TAKEN_NAMES:
            if (root / name).exists():
                log.warning(
                    format_event(
                        "boot-file-hidden",
                        path=str(root / name),
                        effect=f"HTTP answers /{name} with the operator's view; TFTP serves it",
                    )
                )

    def _prepare_upload_dir(self) -> None:
        if self.config.tftp_upload_dir is not None:
            self._check_upload_dir(self.config.tftp_upload_dir, self.config.root)

    def _prepare_subnets(self) -> None:
        config = self.config
        if config.dhcp_mode is not DhcpMode.AUTHORITATIVE or self.interface is None:
            return  # (only explain and check run without the interface)
        network = self.interface.address.network
        if config.dhcp_range is not None:
            for end in (config.dhcp_range.first, config.dhcp_range.last):
                if end not in network:
                    raise ConfigError(
                        f"dhcp-range {config.dhcp_range} is not inside {network}, "
                        f"the network of {self.interface.name}"
                    )
            if self.interface.ip in config.dhcp_range:
                raise ConfigError(
                    f"dhcp-range {config.dhcp_range} contains this server's own address "
                    f"{self.interface.ip}"
                )
        self._check_subnets()

    def served_subnets(self) -> tuple[Subnet, ...]:
        """The subnets served in authoritative mode, settled under the server-wide settings:
        the --dhcp-range one on the interface's network, then the config file's."""
        config = self.config
        assert self.interface is not None
        defaults = NetworkSettings(
            routers=config.routers,
            dns_servers=config.dns_servers,
            domain_name=config.domain_name,
            lease_time=config.lease_time,
            options=tuple(_more_options(config).items()),
            dynamic_bootp=config.dynamic_bootp,
            bootp_lease_time=config.bootp_lease_time,
        )
        found = [spec.settle(defaults) for spec in config.subnets]
        if config.dhcp_range is not None:
            found.insert(
                0,
                Subnet(
                    self.interface.address.network, (config.dhcp_range,), defaults, "dhcp-range"
                ),
            )
        return tuple(found)

    def _check_subnets(self) -> None:
        """What needs the interface: the server's address, the --dhcp-range subnet, hosts."""
        assert self.interface is not None
        subnets = self.served_subnets()
        try:
            check_overlaps(subnets)
            check_server(subnets, self.interface.ip, self.interface.name)
            self.config.hosts.check_addresses(subnets, self.interface.ip)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        if self.machines is None:
            return
        machines = self.machines.setup.inventory.machines
        for host in self.config.hosts:
            owner = None if host.address is None else self.machines.reserved_for(host.address)
            if owner is not None and machines[owner].mac != host.mac:
                raise ConfigError(
                    f"[[hosts]] {host.label}: address {host.address} is reserved for inventory "
                    f"machine {owner} too; an address of its own is wanted"
                )

    @staticmethod
    def _check_upload_dir(upload_dir: Path, root: Path | None) -> None:
        if not upload_dir.is_dir():
            raise ConfigError(f"tftp-upload-dir {upload_dir}: not a directory")
        if root is not None:
            uploads, served = upload_dir.resolve(), root.resolve()
            if uploads == served or served in uploads.parents or uploads in served.parents:
                # Uploads would be served (or could replace what is served) as boot files.
                raise ConfigError(
                    f"tftp-upload-dir {upload_dir} must be apart from the root {root}, "
                    "not inside it or around it"
                )

    def _check_boot_files(self, tree: FileTree) -> None:
        for key, path in self.config.boot.items():
            flag = f"--boot {boot_key_name(key)}={path}"
            if boot_key_needs_http(key) and not self.config.http:
                raise ConfigError(f"{flag} needs HTTP, which is off")
            try:
                tree.resolve(path)
            except FileLookupError as exc:
                raise ConfigError(f"{flag}: {exc}") from exc
        for where, path in self.config.pxe_menus.files():
            try:
                tree.resolve(path)
            except FileLookupError as exc:
                raise ConfigError(f"{where} file={path}: {exc}") from exc
        has_default = self.machines is not None and (
            self.machines.setup.inventory.default_profile is not None
        )
        for boot_class, path in DEFAULT_BOOT.items():
            if boot_class in self.config.boot:
                continue
            if boot_class is BootClass.IPXE and has_default:
                continue  # iPXE clients get their script from the default profile
            try:
                tree.resolve(path)
            except FileLookupError:
                hint = (
                    f"install Debian's ipxe package or put it in {tree.root}"
                    if boot_class is not BootClass.IPXE
                    else "put an iPXE script there or pass --boot ipxe=PATH"
                )
                self.missing_defaults.append((boot_class, path, hint))
                log.warning(
                    format_event(
                        "missing-default",
                        boot_class=str(boot_class),
                        file=path,
                        hint=hint,
                    )
                )

    async def start(self) -> None:
        config = self.config
        server_ip = self.interface.ip if self.interface is not None else None
        host = str(server_ip) if server_ip is not None else "0.0.0.0"
        # Every connection and TFTP session takes a descriptor: lift the soft limit (systemd's
        # is 1,024) to the hard one before any is opened.
        open_files = self._raise_open_file_limit() if not self.dhcp_only else None
        try:
            if config.journal:
                await self._start_journal()
            if config.dhcp_mode is not DhcpMode.OFF:
                await self._start_dhcp()
            if config.tftp and self.source is not None and not self.dhcp_only:
                self._remove_upload_leftovers()
                self.tftp = TftpServer(
                    self.source,
                    self._tftp_settings(),
                    renders=self.renders,
                    journal=self.journal,
                )
                await self.tftp.start(host, config.tftp_port)
            if config.http and self.source is not None and not self.dhcp_only:
                hook = self.inventory.mark_installed if self.inventory is not None else None
                assert open_files is not None
                limits = self._http_limits(open_files)
                self.view = self.operator_view()
                self.http = HttpServer(
                    self.source,
                    installed=hook,
                    limits=limits,
                    renders=self.renders,
                    routes=operator_routes(self.view),
                    journal=self.journal,
                )
                await self.http.start(host, config.http_port)
        except OSError as exc:
            await self.stop()
            raise StartError(f"cannot listen: {exc.strerror or exc}") from exc
        except (StoreError, JournalError) as exc:
            await self.stop()
            raise StartError(str(exc)) from exc
        if self.inventory is not None:
            if not self.dhcp_only:
                self.inventory.log_state("inventory-loaded")
                self.inventory.log_warnings()
            self._watcher = asyncio.get_running_loop().create_task(watch_inventory(self.inventory))
        if self.dhcp_only:
            assert self.share is not None
            log.info(format_event("dhcp-worker-ready", worker=self.share.index, pid=os.getpid()))
            return
        log.info(
            format_event(
                "ready",
                interface=config.interface or "-",
                address=host,
                dhcp=str(config.dhcp_mode),
                pool=str(config.dhcp_range) if config.dhcp_range else "-",
                subnets=len(config.subnets) or "-",
                hosts=len(config.hosts) or "-",
                leases=self.lease_counts[0] if self.lease_counts else "-",
                declined=self.lease_counts[1] if self.lease_counts else "-",
                tftp=config.tftp_port if self.tftp else "off",
                http=config.http_port if self.http else "off",
                root=str(config.root) if config.root else "-",
            )
        )

    async def _start_journal(self) -> None:
        config = self.config
        store = JournalStore(
            config.state_dir / "journal.sqlite3",
            max_events=config.journal_max_events,
            max_age=config.journal_max_days * 86400,
        )
        self.journal = Journal()
        # Every worker writes its own events; the first one alone drops the old ones.
        self.journal_writer = JournalWriter(self.journal, store, prunes=not self.dhcp_only)
        await self.journal_writer.start()
        if not self.dhcp_only:
            self.transfer_rates = TransferRates()
            self.journal_writer.observers.append(self.transfer_rates.observe)
        if self.inventory is not None:
            self.inventory.journal = self.journal

    def operator_view(self) -> OperatorView:
        """What the API, the metrics and the web page see of this server."""
        return OperatorView(
            config=self.config,
            started=time.time(),
            journal=self.journal_writer.store if self.journal_writer is not None else None,
            inventory=self.inventory,
            counters=self.counters,
            token=self.api_token,
            status=self.status,
            leases=self._live_leases() if self.share is None else None,
            release=self._release if self.share is None else None,
            lease_file=self.config.state_dir / "leases.sqlite3" if self.store else None,
            explain=self.explainer,
            told=self.journal,
            answer_times=self.answer_times,
            pools=self.pool_use,
            journal_counts=self.journal_counts,
            transfer_rates=(
                self.transfer_rates.histograms if self.transfer_rates is not None else None
            ),
        )

    def answer_times(self) -> Histogram | None:
        return self.dhcp.answer_times() if self.dhcp is not None else None

    def pool_use(self) -> list[PoolUse]:
        """How much of each configured pool this process's lease book holds (its share)."""
        if self.dhcp is None or self.config.dhcp_mode is not DhcpMode.AUTHORITATIVE:
            return []
        if self._configured_subnets is None:
            self._configured_subnets = self.served_subnets()
        service = self.dhcp.service
        service.book.expire(service.clock())  # an idle server's expired leases count no more
        return pool_use(service.book, service.subnets, self._configured_subnets)

    def journal_counts(self) -> dict[str, int]:
        if self.journal is None or self.journal_writer is None:
            return {}
        writer = self.journal_writer
        return {"dropped": self.journal.dropped, "failed": writer.failed, "written": writer.written}

    def worker_report(self) -> WorkerReport:
        """What a DHCP worker sends worker 0 for the metrics."""
        return WorkerReport(
            self.share.index if self.share is not None else 0,
            self.counters(),
            self.answer_times(),
            tuple(self.pool_use()),
            self.journal_counts() or None,
        )

    def _live_leases(self) -> Callable[[], list[Lease]] | None:
        service = self.dhcp.service if self.dhcp is not None else None
        if service is None or self.store is None:
            return None
        return lambda: list(service.book)

    async def _release(self, address: IPv4Address) -> Lease | None:
        assert self.dhcp is not None
        return await release_address(self.dhcp.service, address)

    def status(self) -> dict[str, object]:
        """What runs, for the API's status."""
        config = self.config
        return {
            "mode": str(config.dhcp_mode),
            "interface": config.interface,
            "address": str(self.interface.ip) if self.interface is not None else None,
            "dhcp_workers": config.dhcp_workers,
            "services": {
                "dhcp": self.dhcp is not None,
                "tftp": self.tftp is not None,
                "http": self.http is not None,
            },
            "summary": self.summary(),
        }

    def summary(self) -> str:
        """What this server serves, in words, for systemd's status line."""
        config = self.config
        parts = []
        if self.dhcp is not None:
            workers = f", {config.dhcp_workers} workers" if config.dhcp_workers > 1 else ""
            parts.append(f"DHCP ({config.dhcp_mode}{workers})")
        if self.tftp is not None:
            parts.append(f"TFTP on port {config.tftp_port}")
        if self.http is not None:
            parts.append(f"HTTP on port {config.http_port}")
        where = f" on {self.interface.name} {self.interface.ip}" if self.interface else ""
        return f"serving {', '.join(parts) or 'nothing'}{where}"

    @staticmethod
    def _raise_open_file_limit() -> int:
        limit = raise_open_file_limit()
        fields: dict[str, object] = {"old": limit.old, "new": limit.new}
        if limit.error is not None:
            fields["hard"] = limit.hard
            fields["error"] = limit.error
        log.info(format_event("open-file-limit", **fields))
        return limit.new

    def _http_limits(self, open_files: int) -> HttpLimits:
        """The HTTP caps, the connection cap kept where the descriptors left for it run out."""
        config = self.config
        sessions = config.tftp_max_sessions if config.tftp else 0
        cap = connection_cap(config.http_max_connections, open_files, sessions)
        if cap < config.http_max_connections:
            log.warning(
                format_event(
                    "http-max-connections-lowered",
                    asked=config.http_max_connections,
                    now=cap,
                    open_file_limit=open_files,
                    effect="the open-file limit leaves room for no more",
                )
            )
        return HttpLimits(
            header_timeout=config.http_header_timeout,
            keepalive_timeout=config.http_keepalive_timeout,
            max_connections=cap,
        )

    def _remove_upload_leftovers(self) -> None:
        """Uploads cut short by the last run left their temporary files: remove them."""
        upload_dir = self.config.tftp_upload_dir
        if upload_dir is None:
            return
        removed = remove_leftovers(upload_dir)
        if removed:
            log.info(format_event("upload-leftovers-removed", dir=str(upload_dir), files=removed))

    def _log_new_store(self, store: SqliteLeaseStore) -> None:
        """Say that the lease database starts empty, louder when a file was there."""
        if store.found is Found.LEASES or self.dhcp_only:
            return
        if store.found is Found.NO_FILE:
            level, effect = logging.INFO, "no leases from before"
        else:  # a file was there, and held none: lost leases would be given again
            level, effect = logging.WARNING, "no leases from before; any it held are lost"
        event = format_event(
            "lease-database-new", path=str(store.path), found=str(store.found), effect=effect
        )
        log.log(level, event)

    def _tftp_settings(self) -> TftpSettings:
        config = self.config
        mtu = self.interface.mtu if self.interface is not None else 1500
        # The largest block whose datagram fits the interface MTU without IP fragments, within
        # what RFC 2348 allows (loopback's MTU of 65536 would give more).
        unfragmented = min(BLKSIZE_MAX, max(512, mtu - _TFTP_OVERHEAD))
        return TftpSettings(
            max_blksize=config.tftp_max_blksize or unfragmented,
            max_windowsize=config.tftp_max_windowsize,
            timeout=config.tftp_timeout,
            retries=config.tftp_retries,
            max_sessions=config.tftp_max_sessions,
            max_sessions_per_client=config.tftp_max_sessions_per_client,
            single_port=config.tftp_single_port,
            transfer_threads=config.tftp_threads,
            busy_poll=config.tftp_busy_poll_us / 1e6,
            gso_max_blksize=unfragmented,
            upload_dir=config.tftp_upload_dir,
            upload_max_size=config.tftp_upload_max_size,
        )

    def boot_policy(self) -> BootPolicy:
        config = self.config
        return BootPolicy(dict(config.boot), self.server_ip(), config.http_port, config.http)

    def dhcp_service(self, book: LeaseBook, store: SqliteLeaseStore | None) -> DhcpService:
        """The DHCP service as configured, over ``book``; ``explain`` uses it too."""
        config = self.config
        assert self.interface is not None
        policy = self.boot_policy()
        settings = DhcpSettings(
            mode=config.dhcp_mode,
            server=self.interface.ip,
            network=self.interface.address.network,
            # The --dhcp-range network is the first of these (served_subnets); a proxyDHCP
            # serves none.
            subnets=self.served_subnets() if config.dhcp_mode is DhcpMode.AUTHORITATIVE else (),
            next_server=config.next_server,
            log_dhcp=config.log_dhcp,
            hosts=config.hosts,
            pxe_menus=config.pxe_menus,
            limits=DhcpLimits(
                config.dhcp_max_offers, config.dhcp_max_offers_per_pool, config.max_leases
            ),
        )
        if self.share is not None:
            share = self.share
            settings = replace(
                settings,
                subnets=share.subnets(settings.subnets),
                limits=share.limits(settings.limits),
            )
        return DhcpService(
            settings, policy, book, store, machines=self.machines, journal=self.journal
        )

    async def _start_dhcp(self) -> None:
        config = self.config
        assert self.interface is not None
        book = LeaseBook()
        if config.dhcp_mode is DhcpMode.AUTHORITATIVE:
            self.store = SqliteLeaseStore(config.state_dir / "leases.sqlite3")
            await self.store.open()
            leases = await self.store.load()
            self._log_new_store(self.store)
            # The whole file's, before a worker takes its share: what the ready line says.
            self.lease_counts = lease_counts(leases)
            if self.share is not None:
                # The other workers' leases are theirs alone: see services/dhcp/shares.py.
                leases = self.share.owned(leases, self.served_subnets())
            book = LeaseBook(leases)
        service = self.dhcp_service(book, self.store)
        served = service.settings.subnets
        if served and not any(self.interface.ip in subnet.network for subnet in served):
            log.info(
                format_event(
                    "interface-not-served",
                    interface=self.interface.name,
                    network=str(self.interface.address.network),
                    effect="only relayed requests are answered",
                )
            )
        # PXE 2.1 §2.2.3: a proxyDHCP also answers the clients' requests at port 4011.
        # With PXE menus, an authoritative server is also the boot server the clients ask, by
        # unicast to port 4011, for the item they chose (PXE 2.1 §2.2.5).
        ports: tuple[int, ...] = (DHCP_SERVER_PORT,)
        if (config.dhcp_mode is DhcpMode.PROXY or config.pxe_menus) and not self.dhcp_only:
            ports = (DHCP_SERVER_PORT, PXE_PORT)
        # Another server handing out addresses beside ours is worth a warning; beside a proxy
        # it is the normal case.
        watch = None
        if config.dhcp_mode is DhcpMode.AUTHORITATIVE and not self.dhcp_only:
            watch = ServerWatch(self.server_ip())
        # PXE 2.1 §2.2.3: beside a DHCP server on this same host (which then holds port 67
        # and says PXEClient itself), a proxyDHCP serves port 4011 alone.
        optional = (DHCP_SERVER_PORT,) if config.dhcp_mode is DhcpMode.PROXY else ()
        self.dhcp = DhcpServer(
            service,
            self.interface.name,
            ports,
            watch=watch,
            probe_interval=config.dhcp_probe_interval,
            optional=optional,
            multicast=config.pxe_menus.multicast,
            worker=(self.share.index, self.share.count) if self.share is not None else None,
        )
        await self.dhcp.start()

    def counters(self) -> dict[str, dict[str, int]]:
        """Every service's outcome counters, by service."""
        found: dict[str, dict[str, int]] = {}
        if self.dhcp is not None:
            found["dhcp"] = self.dhcp.all_counters()
        if self.tftp is not None:
            found["tftp"] = {k: v for k, v in self.tftp.counters.items() if v}
        if self.http is not None:
            found["http"] = dict(self.http.counters)
        if self.renders.counters:
            found["renders"] = dict(self.renders.counters)
        return found

    def log_counters(self) -> None:
        """One ``counters`` line per service: at stop, and on SIGUSR1 (as dnsmasq does). A
        DHCP worker's lines say which worker's they are."""
        worker = {"worker": self.share.index} if self.share is not None else {}
        for service, counts in self.counters().items():
            summary = ",".join(f"{k}={v}" for k, v in sorted(counts.items())) or "-"
            log.info(format_event("counters", service=service, counts=summary, **worker))

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        self.log_counters()
        # Renders under way are answered now, so no request holds up the servers' close.
        self.renders.close()
        if self.view is not None:
            self.view.stopping.set()  # the event streams end, so none holds up the HTTP close
        for server in (self.dhcp, self.tftp, self.http):
            if server is not None:
                with contextlib.suppress(Exception):
                    await server.close()
        if self.store is not None:
            await self.store.close()
            self.store = None
        if self.journal_writer is not None:
            await self.journal_writer.close()
            self.journal_writer = None


async def watch_inventory(inventory: LiveInventory, poll: float = INVENTORY_POLL) -> None:
    """Reload the inventory whenever its files or the boot-once file change, for ever.

    With inotify (the watchfiles package), a change wakes the watch within
    :data:`INVENTORY_DEBOUNCE` ms; without it, or if the watch cannot start or fails, the files
    are looked at every ``poll`` seconds, after one line saying so. Either way
    :meth:`LiveInventory.load_if_changed` judges whether anything did change: the watch only
    says when to look.
    """
    try:
        await _watch_with_inotify(inventory)
    except _WatchError as exc:
        log.warning(
            format_event(
                "inventory-polled",
                directory=str(inventory.directory),
                reason=str(exc),
                every=f"{poll:g}s",
            )
        )
    while True:
        await asyncio.sleep(poll)
        await _look_at_inventory(inventory)


async def _look_at_inventory(inventory: LiveInventory) -> None:
    """Reload the inventory if it changed: the files are read in a worker thread, so a slow
    disk never holds up the event loop; the new inventory is put in force on the loop, between
    two requests."""
    loop = asyncio.get_running_loop()
    try:
        loaded = await loop.run_in_executor(None, inventory.load_if_changed)
    except InventoryError as exc:
        inventory.keep(exc)
        return
    if loaded is not None:
        inventory.adopt(loaded)


class _WatchError(Exception):
    """The inventory cannot be watched with inotify; the message says why."""


async def _next_batch(changes: AsyncIterator[object]) -> Exception | None:
    """Wait for awatch's next batch of changes (or recheck); what it raised, if it did."""
    try:
        await anext(changes)
    except Exception as exc:  # watchfiles' own errors, OSError, its end once stopped
        return exc
    return None


def _watched_directories(inventory: LiveInventory) -> tuple[tuple[str, int, int], ...]:
    """The directories to watch, with their device and inode: the inventory and the boot-once
    file's, those that exist, and neither if it is inside the other (the watch is recursive)."""
    found = []
    for directory in (inventory.directory.absolute(), inventory.installed.path.parent.absolute()):
        try:
            info = directory.stat()
        except OSError:
            continue  # the state directory is made with the first mark; the recheck sees it
        found.append((directory, info.st_dev, info.st_ino))
    kept = [
        (str(path), dev, ino)
        for path, dev, ino in found
        if not any(other != path and other in path.parents for other, _, _ in found)
    ]
    return tuple(dict.fromkeys(kept))


async def _watch_with_inotify(inventory: LiveInventory) -> None:
    """Look at the inventory on each batch of changes, and every :data:`INVENTORY_RECHECK`
    seconds in case one was missed (a file system without inotify events, such as NFS).

    A watch follows inodes: if a watched directory is replaced (renamed over, a symbolic link
    turned elsewhere), or the state directory appears, the watch starts again on what the
    paths now name. Raises :class:`_WatchError` if the watch cannot start or fails.
    """
    try:
        from watchfiles import awatch  # noqa: PLC0415 (optional: without it the watch polls)
    except ImportError as exc:
        raise _WatchError("the watchfiles package is not installed") from exc
    # watchfiles logs each batch of changes at INFO, in its own words; the reload's own lines
    # say what came of it.
    logging.getLogger("watchfiles").setLevel(logging.WARNING)
    state_dir = str(inventory.installed.path.parent.absolute())
    installed = str(inventory.installed.path.absolute())
    api_machines = str(inventory.api.path.absolute())

    def relevant(_change: object, path: str) -> bool:
        # In the state directory only the boot-once file and the API's machines: the lease
        # store is written there with every lease.
        return os.path.dirname(path) != state_dir or path in (installed, api_machines)

    while True:
        watched = _watched_directories(inventory)
        if not watched:
            raise _WatchError("the inventory directory is not there")
        stop = asyncio.Event()
        changes = awatch(
            *(path for path, _, _ in watched),
            watch_filter=relevant,
            debounce=INVENTORY_DEBOUNCE,
            step=INVENTORY_STEP,
            rust_timeout=int(INVENTORY_RECHECK * 1000),
            yield_on_timeout=True,
            stop_event=stop,
        )
        # awatch sets its watches up on its first step, before it waits in its thread: the first
        # look, once that step is taken, sees what changed before they were in place. Each batch
        # is waited for while the look at the one before it runs.
        waiting = asyncio.ensure_future(_next_batch(changes))
        try:
            await asyncio.sleep(0)
            while True:
                await _look_at_inventory(inventory)
                if _watched_directories(inventory) != watched:
                    break
                # Shielded: awatch is stopped through ``stop``, never cancelled. A cancellation
                # that reaches it can be lost in the anyio cancel scopes around its thread's
                # wait, and the watch would go on.
                failed = await asyncio.shield(waiting)
                if failed is not None:
                    raise _WatchError(f"{type(failed).__name__}: {failed}") from failed
                waiting = asyncio.ensure_future(_next_batch(changes))
        finally:
            stop.set()  # its thread sees it within INVENTORY_STEP ms, and awatch returns
            await asyncio.shield(waiting)
            await changes.aclose()


# Container objects made, net of those freed, between two collections of the youngest
# generation; Python's default is 700. Under load that is a collection every few dozen DHCP
# exchanges, each walking what the exchanges in flight hold and what they point to. At this
# size collections are rarer and cost less in all, a pause of a few milliseconds each.
YOUNG_GENERATION = 10_000


def tune_collector() -> None:
    """Set the garbage collector's youngest generation to :data:`YOUNG_GENERATION` objects."""
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_GENERATION, middle, oldest)


async def serve(
    config: Config,
    argv: Sequence[str] = (),
    worker: int | None = None,
    explainer: Explainer | None = None,
) -> None:
    """Run until SIGINT or SIGTERM; SIGUSR1 logs the counters so far.

    With ``dhcp-workers`` above 1, this process is worker 0 and starts the others with
    ``argv`` (its own arguments); ``worker`` is set in those (see :mod:`netbootd.workers`).
    Under systemd (``NOTIFY_SOCKET``), worker 0 says it is ready once every worker is, and says
    when it begins to stop; the other workers never notify.
    """
    count = config.dhcp_workers
    if worker is not None and not 0 < worker < count:
        raise ConfigError(f"--dhcp-worker {worker}: dhcp-workers is {count}")
    tune_collector()
    link = None
    if worker is not None:
        die_with_parent()
        link = WorkerLink.from_environment(config)
    app = App(config, share=Share(worker or 0, count) if count > 1 else None, explainer=explainer)
    app.prepare()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, app.log_counters)
    if link is not None:
        await link.connect()  # before any answer: what it learns is never written blocking
    await app.start()
    workers = None
    reporting: asyncio.Task[None] | None = None
    if link is not None:
        if app.machines is not None:
            app.machines.listeners.append(link.remembered)
        link.ready()
        reporting = loop.create_task(link.report_every(app.worker_report))
    elif count > 1:
        machines = app.machines
        workers = Workers(argv, config, machines.remember if machines is not None else None)
        try:
            await workers.start()
        except WorkerError as exc:
            await workers.stop()
            await app.stop()
            raise StartError(str(exc)) from exc
        if app.view is not None:
            app.view.workers = workers.reports

        def counters_everywhere() -> None:
            app.log_counters()
            workers.signal(signal.SIGUSR1)

        loop.add_signal_handler(signal.SIGUSR1, counters_everywhere)
    notifier = Notifier.from_environment() if worker is None else Notifier(None)
    notifier.send(Notice(ready=True, status=app.summary()))
    ended: str | None = None
    try:
        waits: set[asyncio.Future[Any]] = {loop.create_task(stop.wait())}
        if workers is not None:
            waits.add(workers.ended)
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        if workers is not None and workers.ended.done():
            ended = workers.ended.result()
            log.error(format_event("dhcp-worker-ended", reason=ended, effect="netbootd stops"))
        for waiting in waits:
            waiting.cancel()
    finally:
        log.info(format_event("stopping", **({"worker": worker} if worker is not None else {})))
        notifier.send(Notice(stopping=True, status=f"stopping: {ended}" if ended else "stopping"))
        if reporting is not None:
            reporting.cancel()
        if workers is not None:
            await workers.stop()
        await app.stop()
    if ended is not None:
        raise WorkerError(ended)
