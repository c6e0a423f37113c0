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
from urllib.parse import quote

from netbootd.boot.client import Arch, BootClass, ClientInfo

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

_FIRMWARE_CLASS: Mapping[int, BootClass] = {
    Arch.BIOS: BootClass.BIOS,
    Arch.EFI_IA32: BootClass.UEFI_IA32,
    Arch.EFI_X64: BootClass.UEFI,
    Arch.EFI_BC: BootClass.UEFI,
    Arch.EFI_ARM64: BootClass.UEFI_ARM64,
    Arch.EFI_X64_HTTP: BootClass.UEFI_HTTP,
}


def firmware_class(client: ClientInfo) -> BootClass | None:
    """The firmware class of a client, leaving iPXE aside."""
    if client.arch is None:
        # PXE 2.1 predates option 93; a PXEClient that does not say otherwise is a BIOS ROM.
        return BootClass.BIOS if client.is_pxe else None
    return _FIRMWARE_CLASS.get(client.arch)


@dataclass(frozen=True, slots=True)
class BootDecision:
    """The outcome of the policy for one client."""

    boot_class: BootClass | None
    path: str | None  # relative to the root; None: nothing to boot
    url: str | None  # set when the file is handed out over HTTP
    reason: str

    @property
    def filename(self) -> str | None:
        """What goes into the reply's file field and option 67."""
        return self.url if self.url is not None else self.path

    @property
    def over_http(self) -> bool:
        return self.url is not None


@dataclass(frozen=True, slots=True)
class BootPolicy:
    """The operator's boot choices for one server address."""

    boot: Mapping[BootClass, str]
    server: IPv4Address
    http_port: int
    http_enabled: bool = True

    def url_for(self, path: str) -> str:
        host = str(self.server) if self.http_port == 80 else f"{self.server}:{self.http_port}"
        return f"http://{host}/{quote(path)}"

    def _target(self, boot_class: BootClass, path: str, reason: str) -> BootDecision:
        if boot_class.over_http and self.http_enabled:
            return BootDecision(boot_class, path, self.url_for(path), reason)
        if boot_class.needs_http:
            return BootDecision(boot_class, None, None, f"{boot_class} needs HTTP, which is off")
        return BootDecision(boot_class, path, None, reason)

    def _configured_or_default(self, boot_class: BootClass) -> tuple[str | None, str]:
        if boot_class in self.boot:
            return self.boot[boot_class], f"--boot {boot_class}"
        if boot_class in DEFAULT_BOOT:
            return DEFAULT_BOOT[boot_class], f"default for {boot_class}"
        return None, f"no boot file for {boot_class}"

    def decide(self, client: ClientInfo) -> BootDecision:
        if not client.wants_boot:
            return BootDecision(None, None, None, "not a network-boot client")
        firmware = firmware_class(client)
        if client.is_ipxe:
            return self._decide_ipxe(firmware)
        if firmware is None:
            return BootDecision(
                None, None, None, f"no boot class for architecture {client.arch_name}"
            )
        path, why = self._configured_or_default(firmware)
        if path is None:
            return BootDecision(firmware, None, None, why)
        return self._target(firmware, path, why)

    def _decide_ipxe(self, firmware: BootClass | None) -> BootDecision:
        if BootClass.IPXE in self.boot:
            return self._target(BootClass.IPXE, self.boot[BootClass.IPXE], "--boot ipxe")
        # An operator who named a non-iPXE loader for this firmware (pxelinux.0, say) means it
        # for iPXE ROMs too: they are that firmware's PXE stack.
        if firmware is not None and firmware in self.boot:
            path = self.boot[firmware]
            if path.rsplit("/", 1)[-1] not in IPXE_BINARIES:
                return self._target(firmware, path, f"--boot {firmware} (client is iPXE)")
        path = DEFAULT_BOOT[BootClass.IPXE]
        return self._target(BootClass.IPXE, path, "default for ipxe (already running iPXE)")
