"""The process's open-file limit, and how many HTTP connections it leaves room for.

Every connection, TFTP session socket and file being sent takes a descriptor. systemd starts
services with a soft ``RLIMIT_NOFILE`` of 1,024 (and a hard one far above), which a few
hundred idle HTTP clients would use up; then ``accept`` fails with ``EMFILE`` and nobody is
served. :func:`raise_open_file_limit` lifts the soft limit to the hard one at start;
:func:`connection_cap` keeps the HTTP connection cap below what is left once TFTP and the
rest have their share, so that the cap, not the kernel, is what refuses a client.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass

__all__ = ["FileLimit", "connection_cap", "raise_open_file_limit"]

# Descriptors kept for everything but connections and TFTP sessions: listeners, the lease
# database, the log, inventory files, worker pipes, files opened while a request is decided.
BASE_RESERVE = 256
# The fewest connections the cap is lowered to, however small the limit.
MIN_CONNECTIONS = 16
# Linux refuses a soft limit above fs.nr_open; a hard limit of "unlimited" is taken as this.
_UNLIMITED_AS = 1 << 20


@dataclass(frozen=True, slots=True)
class FileLimit:
    """The soft limit before and after the start; ``error`` says why it could not be raised."""

    old: int
    new: int
    hard: int
    error: str | None = None


def raise_open_file_limit() -> FileLimit:
    """Raise this process's soft ``RLIMIT_NOFILE`` to its hard limit (no privilege needed)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _UNLIMITED_AS if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft >= target:
        return FileLimit(soft, soft, target)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        return FileLimit(soft, soft, target, error=str(exc))
    return FileLimit(soft, target, target)


def connection_cap(requested: int, limit: int, tftp_sessions: int) -> int:
    """The HTTP connection cap that fits ``limit`` descriptors: ``requested`` or fewer.

    Each TFTP session may hold a socket and a file; each connection may hold its socket and
    the file it is sent.
    """
    room = (limit - BASE_RESERVE - 2 * tftp_sessions) // 2
    return max(MIN_CONNECTIONS, min(requested, room))
