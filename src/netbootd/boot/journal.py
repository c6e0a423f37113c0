"""The boot journal's records: one event for each step of a machine's boot.

A machine's boot is a conversation across three services: DHCP (its messages and what was
decided, and why), then TFTP and HTTP (each file it fetched, how much, how fast, how it ended),
and the inventory (boot-once marked done, or again). Each step is one :class:`BootEvent`, tied
to the machine by its MAC and to the address it had. :mod:`netbootd.boot.verdict` reads a
machine's events back into boot attempts and a verdict for each.

Pure: the records, their names and the file roles. Storing them is
:mod:`netbootd.store.journal`'s, gathering them :mod:`netbootd.services.journal`'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum


class Service(StrEnum):
    """Which service saw the step."""

    DHCP = "dhcp"  # a DHCP or BOOTP message, on port 67 or 4011
    TFTP = "tftp"
    HTTP = "http"
    INVENTORY = "inventory"  # boot-once marked installed, or asked again


class Kind(StrEnum):
    """What the step was, beyond DHCP's message kinds (``DISCOVER``, ``REQUEST``, ``BOOTP``, ...,
    which are the ``kind`` of a DHCP event as the transaction line names them)."""

    TRANSFER = "transfer"  # a file fetched over TFTP or HTTP, or an attempt to
    INSTALLED = "installed"  # the installed system said its boot-once profile is done
    AGAIN = "again"  # the operator asked for the boot-once profile again


class Role(StrEnum):
    """What a fetched file is to the boot: the steps of its timeline."""

    LOADER = "loader"  # the network boot program: an iPXE build, pxelinux.0, GRUB, shim
    CONFIG = "config"  # a boot loader's configuration or script: pxelinux.cfg/..., an iPXE script
    KERNEL = "kernel"
    INITRD = "initrd"
    PROVISION = "provision"  # kickstart, preseed, cloud-init: for the installer
    FILE = "file"  # anything else (a pxelinux module, an image)


# The fields of each kind of event, by name. Every value is a string; an absent field is "".
#
# DHCP (kind: the message kind, DISCOVER ... INFORM, BOOTP or TYPE<n>):
#   decision  OFFER, ACK, NAK, ignored, ... (the transaction line's)
#   address   the address offered or acknowledged (yiaddr), or "-"
#   file      the boot file or URL handed out, or "" when none
#   why       why that boot file (the boot decision's reason)
#   reason    why the request was ignored or refused, when it was
#   client    pxe, ipxe, uefi-http or plain; arch: the architecture's name
#   port      the port it came to (67 or 4011); relay: the relay agent's address, if relayed
#   machine   the inventory's machine, when one matched
#
# TRANSFER (service tftp or http):
#   file      the path asked for; role: a Role
#   result    ok, or what went wrong: "not found", "timed out", "cut short: ...", ...
#   status    HTTP only: the status sent
#   bytes     octets sent; size: the file's size when known
#   seconds   how long it took; rate: MB/s
#   block     TFTP only: the last block the client acknowledged
#   rendered  "yes" when the file was made for this machine from a template
#
# INSTALLED, AGAIN: machine.
DHCP_FIELDS = ("decision", "address", "file", "why", "reason", "client", "arch", "port", "relay")
TRANSFER_FIELDS = ("file", "role", "result", "status", "bytes", "size", "seconds", "rate")


@dataclass(frozen=True, slots=True)
class BootEvent:
    """One step of one machine's boot.

    ``time``: seconds since the epoch. ``mac``: the machine's, lower-case with colons, "" when
    it could not be told (a transfer from an address no DHCP exchange or neighbour entry names).
    ``address``: the IPv4 address the machine had or was given, "" when it had none yet.
    ``id``: the journal's running number, 0 until it is stored; ids grow with time.
    """

    time: float
    mac: str
    address: str
    service: str
    kind: str
    fields: Mapping[str, str] = field(default_factory=dict)
    id: int = 0

    def get(self, name: str) -> str:
        """The field ``name``, "" when the event has none."""
        return self.fields.get(name, "")

    @property
    def ok(self) -> bool:
        """A transfer that ended well."""
        return self.kind == Kind.TRANSFER and self.get("result") == "ok"


# Names of kernels and initrds as distributions and installers ship them.
_KERNEL_NAMES = ("vmlinuz", "vmlinux", "bzimage", "linux", "kernel", "wimboot", "memdisk")
_INITRD_NAMES = ("initrd", "initramfs", "initrfs", "boot.wim", "rootfs")
_LOADER_SUFFIXES = (".kpxe", ".kkpxe", ".pxe", ".efi", ".efi.signed", ".0", ".lpxe")
_CONFIG_SUFFIXES = (".ipxe", ".cfg", ".conf", ".menu")
_PROVISION_NAMES = ("kickstart", "ks.cfg", "preseed", "user-data", "meta-data", "vendor-data")


def file_role(
    path: str, *, kernels: frozenset[str] = frozenset(), initrds: frozenset[str] = frozenset()
) -> Role:
    """What the file at ``path`` (as the client asked for it) is to the boot.

    ``kernels`` and ``initrds`` are the paths the machine's profile names (its own word wins);
    otherwise the file's name says: ``vmlinuz-6.1``, ``initrd.img``, ``pxelinux.cfg/01-...``,
    ``undionly.kpxe``, ``boot.ipxe``.
    """
    name = path.lstrip("/")
    if name in kernels:
        return Role.KERNEL
    if name in initrds:
        return Role.INITRD
    lowered = name.lower()
    base = lowered.rsplit("/", 1)[-1]
    if "pxelinux.cfg/" in lowered or base in ("grub.cfg", "boot.ipxe", "script.ipxe"):
        return Role.CONFIG
    if any(word in base for word in _PROVISION_NAMES):
        return Role.PROVISION
    if any(base.startswith(word) for word in _INITRD_NAMES):
        return Role.INITRD
    if any(base.startswith(word) for word in _KERNEL_NAMES):
        return Role.KERNEL
    if base.endswith(_LOADER_SUFFIXES):
        return Role.LOADER
    if base.endswith(_CONFIG_SUFFIXES):
        return Role.CONFIG
    return Role.FILE
