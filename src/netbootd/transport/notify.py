"""Telling systemd how the server is doing: the sd_notify protocol, without libsystemd.

Under a unit of ``Type=notify``, systemd names a datagram socket in ``NOTIFY_SOCKET`` and counts
the service as started only once ``READY=1`` arrives there (units ordered after it wait for
that); ``STOPPING=1`` says it is on its way down, and ``STATUS=`` is the line ``systemctl
status`` shows. A message is newline-separated ``KEY=VALUE`` assignments in one datagram
(sd_notify(3)). The address is a file system path, or, with a leading ``@``, a name in Linux's
abstract socket namespace.

Sending is best effort: a notification that cannot be sent is one log line, never a reason to
stop serving. Only the process systemd started talks to it (with ``NotifyAccess=main``, systemd
drops datagrams from any other); the composition root decides which that is.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass

from netbootd.logs.events import format_event

log = logging.getLogger("netbootd")

NOTIFY_SOCKET_ENV = "NOTIFY_SOCKET"
# sockaddr_un's sun_path is 108 octets; a path needs its terminating NUL, an abstract name not.
_SUN_PATH = 108


class NotifyAddressError(ValueError):
    """``NOTIFY_SOCKET`` names no socket this module can send to; the message says why."""


def parse_address(value: str) -> bytes:
    """The AF_UNIX address for ``sendto`` that a ``NOTIFY_SOCKET`` value names.

    ``/run/systemd/notify`` is a path; ``@name`` is ``\\0name`` in the abstract namespace.
    Other forms (systemd's ``vsock:`` addresses) are refused with :class:`NotifyAddressError`.
    """
    raw = os.fsencode(value)
    if raw.startswith(b"/"):
        if len(raw) >= _SUN_PATH:
            raise NotifyAddressError(f"{value!r} is longer than a socket path may be")
        return raw
    if raw.startswith(b"@") and len(raw) > 1:
        if len(raw) > _SUN_PATH:
            raise NotifyAddressError(f"{value!r} is longer than a socket name may be")
        return b"\0" + raw[1:]
    raise NotifyAddressError(f"{value!r} is neither a socket path nor an @abstract name")


@dataclass(frozen=True)
class Notice:
    """One message to systemd: any of ready, stopping and a status line."""

    ready: bool = False
    stopping: bool = False
    status: str | None = None

    def encode(self) -> bytes:
        lines = []
        if self.ready:
            lines.append("READY=1")
        if self.stopping:
            lines.append("STOPPING=1")
        if self.status is not None:
            # An assignment ends at its newline: a status is one line, whatever it quotes.
            lines.append("STATUS=" + " ".join(self.status.split()))
        return "\n".join(lines).encode()

    @classmethod
    def decode(cls, data: bytes) -> Notice:
        """The notice in a datagram; assignments this class does not model are left out."""
        fields = dict(
            line.split("=", 1) for line in data.decode(errors="replace").split("\n") if "=" in line
        )
        return cls(
            ready=fields.get("READY") == "1",
            stopping=fields.get("STOPPING") == "1",
            status=fields.get("STATUS"),
        )


class Notifier:
    """Sends notices to the socket ``NOTIFY_SOCKET`` named, or does nothing if it named none."""

    def __init__(self, address: bytes | None) -> None:
        self.address = address
        self._failed = False

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> Notifier:
        value = environ.get(NOTIFY_SOCKET_ENV, "")
        if not value:
            return cls(None)
        try:
            return cls(parse_address(value))
        except NotifyAddressError as exc:
            log.warning(
                format_event(
                    "notify-unusable", problem=str(exc), effect="systemd is not told of the start"
                )
            )
            return cls(None)

    def send(self, notice: Notice) -> bool:
        """Send ``notice``; False if there is nowhere to send it or sending failed."""
        if self.address is None:
            return False
        try:
            # Non-blocking: with systemd's queue full, a notice is dropped rather than the event
            # loop held up.
            with socket.socket(
                socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
            ) as sock:
                sock.sendto(notice.encode(), self.address)
        except OSError as exc:
            # The first failure is worth a warning; the same again later adds nothing.
            level = logging.DEBUG if self._failed else logging.WARNING
            self._failed = True
            log.log(
                level,
                format_event(
                    "notify-failed",
                    socket=os.fsdecode(self.address).replace("\0", "@", 1),
                    error=exc.strerror or str(exc),
                ),
            )
            return False
        return True
