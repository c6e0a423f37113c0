"""The composition root: builds every piece from the configuration, starts and stops them.

Wiring, start-up checks, and signal handling live here and nowhere else. Nothing below this
module reads the configuration file, looks up interfaces or installs signal handlers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from dataclasses import dataclass
from pathlib import Path

from netbootd.boot.client import BootClass, boot_key_name, boot_key_needs_http
from netbootd.boot.leases import LeaseBook
from netbootd.boot.policy import DEFAULT_BOOT, BootPolicy
from netbootd.config import Config, ConfigError, DhcpMode
from netbootd.logfmt import format_event
from netbootd.services.dhcp import DHCP_SERVER_PORT, PXE_PORT, DhcpService, DhcpSettings
from netbootd.services.files import FileLookupError, FileTree
from netbootd.store.leases import SqliteLeaseStore, StoreError
from netbootd.transport.dhcp import DhcpServer
from netbootd.transport.http import HttpServer
from netbootd.transport.netif import InterfaceError, InterfaceInfo, interface_info
from netbootd.transport.tftp import TftpServer, TftpSettings

log = logging.getLogger("netbootd")

# The iPXE builds of the system's ipxe package, served under these names as if in the root.
IPXE_PACKAGE_FILES = ("undionly.kpxe", "undionly.kkpxe", "ipxe.pxe", "snponly.efi", "ipxe.efi")

# IPv4 (20) + UDP (8) + TFTP DATA header (4): what a block may use of the MTU.
_TFTP_OVERHEAD = 32


class StartError(Exception):
    """netbootd cannot start as configured; the message is one line for the operator."""


def system_ipxe_files(directory: Path) -> dict[str, Path]:
    return {name: directory / name for name in IPXE_PACKAGE_FILES if (directory / name).is_file()}


@dataclass
class App:
    config: Config
    interface: InterfaceInfo | None = None
    tree: FileTree | None = None
    dhcp: DhcpServer | None = None
    tftp: TftpServer | None = None
    http: HttpServer | None = None
    store: SqliteLeaseStore | None = None

    def prepare(self) -> None:
        """Check what can be checked before binding anything; raise StartError or ConfigError."""
        config = self.config
        if config.interface is not None:
            try:
                self.interface = interface_info(config.interface)
            except InterfaceError as exc:
                raise ConfigError(str(exc)) from exc  # a bad --interface is a bad flag
        if config.root is not None:
            if not config.root.is_dir():
                raise ConfigError(f"root {config.root}: not a directory")
            self.tree = FileTree(config.root, system_ipxe_files(config.ipxe_dir))
            self._check_boot_files(self.tree)
        if config.tftp_upload_dir is not None:
            self._check_upload_dir(config.tftp_upload_dir, config.root)
        if config.dhcp_mode is DhcpMode.AUTHORITATIVE:
            assert config.dhcp_range is not None and self.interface is not None
            network = self.interface.address.network
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
        for boot_class, path in DEFAULT_BOOT.items():
            if boot_class in self.config.boot:
                continue
            try:
                tree.resolve(path)
            except FileLookupError:
                hint = (
                    f"install Debian's ipxe package or put it in {tree.root}"
                    if boot_class is not BootClass.IPXE
                    else "put an iPXE script there or pass --boot ipxe=PATH"
                )
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
        try:
            if config.dhcp_mode is not DhcpMode.OFF:
                await self._start_dhcp()
            if config.tftp and self.tree is not None:
                self.tftp = TftpServer(self.tree, self._tftp_settings())
                await self.tftp.start(host, config.tftp_port)
            if config.http and self.tree is not None:
                self.http = HttpServer(self.tree)
                await self.http.start(host, config.http_port)
        except OSError as exc:
            await self.stop()
            raise StartError(f"cannot listen: {exc.strerror or exc}") from exc
        except StoreError as exc:
            await self.stop()
            raise StartError(str(exc)) from exc
        log.info(
            format_event(
                "ready",
                interface=config.interface or "-",
                address=host,
                dhcp=str(config.dhcp_mode),
                pool=str(config.dhcp_range) if config.dhcp_range else "-",
                tftp=config.tftp_port if self.tftp else "off",
                http=config.http_port if self.http else "off",
                root=str(config.root) if config.root else "-",
            )
        )

    def _tftp_settings(self) -> TftpSettings:
        config = self.config
        mtu = self.interface.mtu if self.interface is not None else 1500
        # The largest block whose datagram fits the interface MTU without IP fragments.
        unfragmented = max(512, mtu - _TFTP_OVERHEAD)
        return TftpSettings(
            max_blksize=config.tftp_max_blksize or unfragmented,
            max_windowsize=config.tftp_max_windowsize,
            timeout=config.tftp_timeout,
            retries=config.tftp_retries,
            max_sessions=config.tftp_max_sessions,
            max_sessions_per_client=config.tftp_max_sessions_per_client,
            single_port=config.tftp_single_port,
            gso_max_blksize=unfragmented,
            upload_dir=config.tftp_upload_dir,
            upload_max_size=config.tftp_upload_max_size,
        )

    async def _start_dhcp(self) -> None:
        config = self.config
        assert self.interface is not None
        book = LeaseBook()
        if config.dhcp_mode is DhcpMode.AUTHORITATIVE:
            self.store = SqliteLeaseStore(config.state_dir / "leases.sqlite3")
            await self.store.open()
            book = LeaseBook(await self.store.load())
        policy = BootPolicy(
            boot=dict(config.boot),
            server=self.interface.ip,
            http_port=config.http_port,
            http_enabled=config.http,
        )
        settings = DhcpSettings(
            mode=config.dhcp_mode,
            server=self.interface.ip,
            network=self.interface.address.network,
            pool=config.dhcp_range,
            lease_time=config.lease_time,
            next_server=config.next_server,
            routers=config.routers,
            dns_servers=config.dns_servers,
            domain_name=config.domain_name,
            log_dhcp=config.log_dhcp,
        )
        service = DhcpService(settings, policy, book, self.store)
        # PXE 2.1 §2.2.3: a proxyDHCP also answers the clients' requests at port 4011.
        ports: tuple[int, ...] = (DHCP_SERVER_PORT,)
        if config.dhcp_mode is DhcpMode.PROXY:
            ports = (DHCP_SERVER_PORT, PXE_PORT)
        self.dhcp = DhcpServer(service, self.interface.name, ports)
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
        return found

    async def stop(self) -> None:
        for service, counts in self.counters().items():
            summary = ",".join(f"{k}={v}" for k, v in sorted(counts.items())) or "-"
            log.info(format_event("counters", service=service, counts=summary))
        for server in (self.dhcp, self.tftp, self.http):
            if server is not None:
                with contextlib.suppress(Exception):
                    await server.close()
        if self.store is not None:
            await self.store.close()
            self.store = None


async def serve(config: Config) -> None:
    """Run until SIGINT or SIGTERM."""
    app = App(config)
    app.prepare()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await app.start()
    try:
        await stop.wait()
    finally:
        log.info(format_event("stopping"))
        await app.stop()
