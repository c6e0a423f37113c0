"""The file-source seam: turn a name a client asked for into bytes it may read.

TFTP uses it now; HTTP and rendered (generated) files are meant to sit behind the same
:class:`FileSource` protocol later. :class:`FileTree` serves a directory tree and confines every
name to it. This module must not import any transport, asyncio or aiohttp code, and it must not
decide protocol answers: callers map :class:`FileNotFound` and :class:`AccessDenied` to their own
error codes or statuses.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Protocol

__all__ = [
    "AccessDenied",
    "FileLookupError",
    "FileNotFound",
    "FileSource",
    "FileTree",
    "LocalFile",
    "MemoryFile",
    "OpenedFile",
    "clean_name",
    "within",
]


class FileLookupError(Exception):
    """A name that cannot be served. ``reason`` is one line, fit for a log, not for a client."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# The names are the vocabulary callers match on (TFTP error 1 and 2, HTTP 404 and 403).
class FileNotFound(FileLookupError):  # noqa: N818
    """No such file."""


class AccessDenied(FileLookupError):  # noqa: N818
    """The name exists or might, but serving it is refused."""


class OpenedFile(Protocol):
    """An open, fixed-size file. ``read`` returns fewer octets than asked only at its end."""

    @property
    def size(self) -> int: ...

    def read(self, offset: int, length: int) -> bytes: ...

    def close(self) -> None: ...


class FileSource(Protocol):
    """Where served files come from. ``open`` raises :class:`FileLookupError` subclasses.

    ``peer`` is the requesting client's address, for sources that render per machine.
    """

    def open(self, name: str, peer: str | None = None) -> OpenedFile: ...


class LocalFile:
    """An :class:`OpenedFile` over a file descriptor, read with ``pread`` (no shared offset)."""

    def __init__(self, fd: int, size: int) -> None:
        self._fd: int | None = fd
        self._size = size

    @property
    def size(self) -> int:
        return self._size

    def fileno(self) -> int:
        if self._fd is None:
            raise ValueError("a closed file has no descriptor")
        return self._fd

    def read(self, offset: int, length: int) -> bytes:
        if self._fd is None:
            raise ValueError("read from a closed file")
        chunks: list[bytes] = []
        remaining = length
        while remaining > 0:
            chunk = os.pread(self._fd, remaining, offset)
            if not chunk:
                break
            chunks.append(chunk)
            offset += len(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __enter__(self) -> LocalFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class MemoryFile:
    """An :class:`OpenedFile` over octets already in memory (a rendered file)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    @property
    def size(self) -> int:
        return len(self.data)

    def read(self, offset: int, length: int) -> bytes:
        return self.data[offset : offset + length]

    def close(self) -> None:
        pass


_NO_EXTRA: Mapping[str, Path] = MappingProxyType({})


def within(root: str, path: str) -> bool:
    """Whether the real path ``path`` is ``root`` or below it."""
    return path == root or path.startswith(root + os.sep) or root == os.sep


def _regular_file(real: str) -> Path:
    """``real`` (a path without symlinks) if it is a regular file, else the lookup error."""
    try:
        info = os.stat(real)
    except (FileNotFoundError, NotADirectoryError):
        raise FileNotFound("no such file") from None
    except PermissionError:
        raise AccessDenied("permission denied") from None
    except OSError as exc:
        raise AccessDenied(f"cannot stat: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise AccessDenied("not a regular file")
    return Path(real)


class FileTree:
    """Serve regular files below ``root``, plus a few named files from elsewhere.

    ``extra`` maps exact names (``undionly.kpxe``) to files outside the root, such as the
    binaries of the system iPXE package; they are served only when the root has no file of
    that name, so an operator can always override them by dropping a file into the root.
    """

    def __init__(self, root: Path, extra: Mapping[str, Path] = _NO_EXTRA) -> None:
        self._root = Path(os.path.realpath(root))
        self._extra: Mapping[str, Path] = MappingProxyType(dict(extra))

    @property
    def root(self) -> Path:
        return self._root

    def resolve(self, name: str) -> Path:
        """The real path of the regular file ``name`` denotes, or a :class:`FileLookupError`."""
        relative = clean_name(name)
        root = str(self._root)
        real = os.path.realpath(os.path.join(root, relative))
        if not within(root, real):
            raise AccessDenied("outside root")
        try:
            return _regular_file(real)
        except FileNotFound:
            extra = self._extra.get(relative)
            if extra is None:
                raise
            return _regular_file(os.path.realpath(extra))

    def open(self, name: str, peer: str | None = None) -> LocalFile:
        path = self.resolve(name)
        # resolve() returned a path free of symlinks, so O_NOFOLLOW only trips if a link was
        # swapped in since. O_NONBLOCK keeps a FIFO swapped in from blocking open() forever.
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(path, flags)
        except FileNotFoundError:
            raise FileNotFound("no such file") from None
        except OSError as exc:
            raise AccessDenied(f"cannot open: {exc.strerror}") from None
        try:
            # What was opened may not be what was checked: check the open file itself.
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise AccessDenied("not a regular file")
        except BaseException:
            os.close(fd)
            raise
        return LocalFile(fd, info.st_size)


def clean_name(name: str) -> str:
    """A client's name as a path relative to a root, or :class:`AccessDenied`."""
    if "\0" in name:
        raise AccessDenied("NUL in name")
    if "\\" in name:
        # Backslash is a separator to DOS and Windows clients; refuse rather than guess.
        raise AccessDenied("backslash in name")
    # Clients send both "pxelinux.0" and "/pxelinux.0"; both mean the file in the root.
    relative = name.removeprefix("/")
    if not relative:
        raise AccessDenied("empty name")
    if relative.startswith("/"):
        raise AccessDenied("absolute path")
    if ".." in relative.split("/"):
        raise AccessDenied("parent directory in name")
    return relative
