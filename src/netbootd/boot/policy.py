"""What a client boots: the boot policy, as a pure function of the client description.

Given a :class:`~netbootd.boot.client.ClientInfo`, :meth:`BootPolicy.decide` returns a frozen
:class:`BootDecision`: a file to fetch over TFTP, a URL to fetch over HTTP, or nothing, with the
reason in words for the log. No I/O happens here; whether files exist is checked at start by the
composition root.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Final
from urllib.parse import quote

from netbootd.boot.client import (
    ARCH_CLASS,
    BootClass,
    BootKey,
    ClientInfo,
    boot_key_name,
    is_http_arch,
)
from netbootd.boot.inventory import Method, Resolution
from netbootd.boot.render import machine_prefix

# The loaders of the pxelinux and GRUB methods, by the names they are served under.
PXELINUX_LOADER = "pxelinux.0"
GRUB_LOADER = "grubx64.efi"

# The boot file each firmware class gets when the operator configured none: the iPXE builds of
# the system's ipxe package, which then ask again as iPXE and get the iPXE script.
DEFAULT_BOOT: Mapping[BootClass, str] = {
    BootClass.BIOS: "undionly.kpxe",
    BootClass.UEFI: "snponly.efi",
    BootClass.UEFI_HTTP: "snponly.efi",
    BootClass.IPXE: "boot.ipxe",
}

# Files that are iPXE itself. Handing one of them to a client that already runs iPXE would
# make it load iPXE again, forever: the chainloading loop.
IPXE_BINARIES = frozenset(
    {
        "undionly.kpxe",
        "undionly.kkpxe",
        "undionly.kkkpxe",
        "ipxe.pxe",
        "ipxe.kpxe",
        "ipxe.lkrn",
        "snponly.efi",
        "snp.efi",
        "ipxe.efi",
    }
)


def firmware_class(client: ClientInfo) -> BootClass | None:
    """The firmware class of a client, leaving iPXE aside."""
    if client.arch is None:
        # PXE 2.1 predates option 93; a PXEClient that does not say otherwise is a BIOS ROM.
        return BootClass.BIOS if client.is_pxe else None
    return ARCH_CLASS.get(client.arch)


def takes_only_urls(client: ClientInfo) -> bool:
    """UEFI HTTP Boot firmware: it fetches a URL and knows no TFTP."""
    return client.is_http_boot or (client.arch is not None and is_http_arch(client.arch))


def is_ipxe_binary(path: str) -> bool:
    return path.rsplit("/", 1)[-1] in IPXE_BINARIES


@dataclass(unsafe_hash=True, slots=True)
class BootDecision:
    """The outcome of the policy for one client. A value, as :class:`DhcpPacket` is (final
    fields, compared and hashed by them, ``__init__`` written out to be compiled)."""

    boot_class: Final[BootClass | None]
    path: Final[str | None]  # relative to the root; None: nothing to boot
    url: Final[str | None]  # set when the file is handed out over HTTP
    reason: Final[str]

    def __init__(
        self, boot_class: BootClass | None, path: str | None, url: str | None, reason: str
    ) -> None:
        self.boot_class = boot_class
        self.path = path
        self.url = url
        self.reason = reason

    @property
    def filename(self) -> str | None:
        """What goes into the reply's file field and option 67."""
        return self.url if self.url is not None else self.path

    @property
    def over_http(self) -> bool:
        return self.url is not None


@dataclass(frozen=True, slots=True)
class BootPolicy:
    """The operator's boot choices for one server address.

    ``boot`` maps a class (``bios``) or an exact architecture type (``7``, from ``arch-7``) to
    a path below the root. An exact architecture type wins over the class it belongs to.
    """

    boot: Mapping[BootKey, str]
    server: IPv4Address
    http_port: int
    http_enabled: bool = True

    def url_for(self, path: str) -> str:
        host = str(self.server) if self.http_port == 80 else f"{self.server}:{self.http_port}"
        return f"http://{host}/{quote(path)}"

    def _target(
        self, boot_class: BootClass | None, path: str, reason: str, *, http: bool, only_http: bool
    ) -> BootDecision:
        if http and self.http_enabled:
            return BootDecision(boot_class, path, self.url_for(path), reason)
        if only_http:
            return BootDecision(boot_class, None, None, f"{reason}: needs HTTP, which is off")
        return BootDecision(boot_class, path, None, reason)

    def _configured(self, client: ClientInfo, firmware: BootClass | None) -> tuple[str, str] | None:
        """The operator's file for this client and the flag that chose it, if any."""
        if client.arch is not None and client.arch in self.boot:
            return self.boot[client.arch], f"--boot {boot_key_name(client.arch)}"
        if firmware is not None and firmware in self.boot:
            return self.boot[firmware], f"--boot {firmware}"
        return None

    def decide(self, client: ClientInfo, resolution: Resolution | None = None) -> BootDecision:
        """What ``client`` boots; ``resolution`` is the inventory's profile for it, if any."""
        if not client.wants_boot:
            return BootDecision(None, None, None, "not a network-boot client")
        firmware = firmware_class(client)
        if resolution is not None:
            return self._decide_profile(client, firmware, resolution)
        if client.is_ipxe:
            return self._decide_ipxe(client, firmware)
        only_http = takes_only_urls(client)
        configured = self._configured(client, firmware)
        if configured is not None:
            path, why = configured
        elif firmware is None:
            return BootDecision(
                None,
                None,
                None,
                f"nothing for architecture {client.arch_name} (--boot arch-{client.arch}=PATH)",
            )
        elif firmware in DEFAULT_BOOT:
            path, why = DEFAULT_BOOT[firmware], f"default for {firmware}"
        else:
            return BootDecision(firmware, None, None, f"no boot file for {firmware}")
        return self._target(firmware, path, why, http=only_http, only_http=only_http)

    def _decide_ipxe(self, client: ClientInfo, firmware: BootClass | None) -> BootDecision:
        if BootClass.IPXE in self.boot:
            path = self.boot[BootClass.IPXE]
            return self._target(BootClass.IPXE, path, "--boot ipxe", http=True, only_http=False)
        # An operator who named a non-iPXE loader for this firmware (pxelinux.0, say) means it
        # for iPXE ROMs too: they are that firmware's PXE stack.
        configured = self._configured(client, firmware)
        if configured is not None and not is_ipxe_binary(configured[0]):
            path, why = configured
            only_http = takes_only_urls(client)
            return self._target(
                firmware, path, f"{why} (client is iPXE)", http=only_http, only_http=only_http
            )
        path = DEFAULT_BOOT[BootClass.IPXE]
        return self._target(
            BootClass.IPXE,
            path,
            "default for ipxe (already running iPXE)",
            http=True,
            only_http=False,
        )

    def _decide_profile(
        self, client: ClientInfo, firmware: BootClass | None, resolution: Resolution
    ) -> BootDecision:
        profile = resolution.profile
        why = "; ".join(resolution.reasons) or f"profile {profile.name}"
        only_http = takes_only_urls(client)
        if profile.method is Method.PXELINUX:
            # pxelinux is a BIOS program; an iPXE ROM on BIOS can load it too.
            if firmware is not BootClass.BIOS:
                return BootDecision(
                    firmware, None, None, f"{why}; but pxelinux boots BIOS machines only"
                )
            return self._target(firmware, PXELINUX_LOADER, why, http=False, only_http=False)
        if profile.method is Method.GRUB:
            if firmware is None or firmware is BootClass.BIOS:
                return BootDecision(
                    firmware, None, None, f"{why}; but netbootd boots GRUB on UEFI only"
                )
            configured = self._configured(client, firmware)
            loader = GRUB_LOADER
            if configured is not None and not is_ipxe_binary(configured[0]):
                loader = configured[0]
            return self._target(firmware, loader, why, http=only_http, only_http=only_http)
        # iPXE scripts, local disk and exit all go through iPXE, which runs the script.
        if client.is_ipxe:
            script = f"{machine_prefix(client.mac)}/boot.ipxe"
            return self._target(BootClass.IPXE, script, why, http=True, only_http=False)
        if firmware is None:
            return BootDecision(None, None, None, f"{why}; but no iPXE for {client.arch_name}")
        configured = self._configured(client, firmware)
        if configured is not None and is_ipxe_binary(configured[0]):
            loader = configured[0]
        elif firmware in DEFAULT_BOOT:
            loader = DEFAULT_BOOT[firmware]
        else:
            return BootDecision(firmware, None, None, f"{why}; but no iPXE build for {firmware}")
        return self._target(
            firmware, loader, f"{why}; iPXE first", http=only_http, only_http=only_http
        )
