"""The upload sink: turn a name a client wants to write into a file that appears only when whole.

TFTP write requests use it. :class:`UploadDir` confines every name to its root by the same rules
:class:`~netbootd.services.files.FileTree` applies to reads, never overwrites a file, and
writes into a hidden temporary file that is linked under its final name only on
:meth:`UploadFile.commit`, so a half-received upload is never served. The calls block (open,
pwrite, fsync); callers run them in a worker thread. This module must not import any
transport, asyncio or aiohttp code, and it must not decide protocol answers: callers map
:class:`AccessDenied`, :class:`FileExists` and ``OSError`` to their own error codes.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import stat
from pathlib import Path

from netbootd.services.files import AccessDenied, FileLookupError, clean_name, within

__all__ = [
    "FileExists",
    "UploadDir",
    "UploadFile",
    "remove_leftovers",
]

_FILE_MODE = 0o644
# The temporary files' names: ".NAME.<16 hex digits>.part" (see _create_temp).
_TEMP_NAME = re.compile(r"\..*\.[0-9a-f]{16}\.part", re.DOTALL)
# Attempts at a fresh temporary name; a clash needs a 64-bit random collision, so one is plenty
# in practice, and a loop that ends keeps a hostile directory from spinning us forever.
_TEMP_ATTEMPTS = 8


class FileExists(FileLookupError):  # noqa: N818
    """The name is taken: an upload never replaces a file (TFTP error 6)."""


class UploadFile:
    """One upload in progress: a hidden temporary file beside its final name.

    Holds a descriptor of the target directory as well, so the final link lands in the
    directory that was checked even if a path component is swapped meanwhile.
    """

    def __init__(self, dir_fd: int, fd: int, temp_name: str, name: str, path: Path) -> None:
        self._dir_fd: int | None = dir_fd
        self._fd: int | None = fd
        self._temp_name = temp_name
        self._name = name
        self._path = path
        self._committed = False

    @property
    def path(self) -> Path:
        """Where the file appears on :meth:`commit` (a real path inside the root)."""
        return self._path

    @property
    def committed(self) -> bool:
        return self._committed

    def write(self, offset: int, data: bytes) -> None:
        """Store ``data`` at ``offset``; no shared file position, so order does not matter."""
        if self._fd is None:
            raise ValueError("write to a closed upload")
        view = memoryview(data)
        while view:
            written = os.pwrite(self._fd, view, offset)
            view = view[written:]
            offset += written

    def commit(self) -> None:
        """Make the file durable and visible under its name; never replaces an existing file.

        Raises :class:`FileExists` if the name was taken since :meth:`UploadDir.create` (the
        temporary file is then removed). Calling it again after success does nothing.
        """
        if self._committed:
            return
        if self._fd is None or self._dir_fd is None:
            raise ValueError("commit of a discarded upload")
        fd, self._fd = self._fd, None
        try:
            os.fsync(fd)
        except BaseException:
            self._drop_temp()
            raise
        finally:
            os.close(fd)
        try:
            # rename() would silently replace a file that appeared meanwhile; link() fails
            # instead, which is the one atomic no-replace primitive POSIX offers.
            os.link(
                self._temp_name,
                self._name,
                src_dir_fd=self._dir_fd,
                dst_dir_fd=self._dir_fd,
                follow_symlinks=False,
            )
        except FileExistsError:
            self._drop_temp()
            raise FileExists("file exists") from None
        except BaseException:
            self._drop_temp()
            raise
        self._committed = True
        self._drop_temp()

    def discard(self) -> None:
        """Forget the upload: close and remove the temporary file. Idempotent; a no-op after
        :meth:`commit`."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)
        self._drop_temp()

    def _drop_temp(self) -> None:
        """Remove the temporary name and, once that is durable, close the directory."""
        if self._dir_fd is None:
            return
        dir_fd, self._dir_fd = self._dir_fd, None
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._temp_name, dir_fd=dir_fd)
            if self._committed:
                # The new name lives in the directory: sync it so the link survives a crash.
                os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def __enter__(self) -> UploadFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()


class UploadDir:
    """Accept uploads below ``root``: new files only, in directories that already exist."""

    def __init__(self, root: Path) -> None:
        self._root = Path(os.path.realpath(root))

    @property
    def root(self) -> Path:
        return self._root

    def create(self, name: str) -> UploadFile:
        """Start an upload of ``name``, or raise :class:`AccessDenied` or :class:`FileExists`."""
        # The read side's rules for names (NUL, backslash, absolute, "..", empty) hold here too.
        relative = clean_name(name)
        parent_part, _, leaf = relative.rpartition("/")
        if leaf in ("", ".", ".."):
            raise AccessDenied("not a file name")
        root = str(self._root)
        parent = os.path.realpath(os.path.join(root, parent_part))
        # A symlinked directory may point anywhere; what counts is where it really leads.
        if not within(root, parent):
            raise AccessDenied("outside root")
        dir_fd = self._open_dir(parent)
        try:
            if _exists(leaf, dir_fd):
                raise FileExists("file exists")
            fd, temp_name = _create_temp(leaf, dir_fd)
        except BaseException:
            os.close(dir_fd)
            raise
        return UploadFile(dir_fd, fd, temp_name, leaf, Path(parent, leaf))

    @staticmethod
    def _open_dir(parent: str) -> int:
        # realpath() returned a path free of symlinks, so O_NOFOLLOW only trips if a link was
        # swapped in since; O_DIRECTORY refuses anything but a directory.
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            return os.open(parent, flags)
        except (FileNotFoundError, NotADirectoryError):
            # Uploads do not create directories; the operator decides the layout.
            raise AccessDenied("no such directory") from None
        except OSError as exc:
            raise AccessDenied(f"cannot open directory: {exc.strerror}") from None


def _exists(leaf: str, dir_fd: int) -> bool:
    try:
        # lstat: a symlink (even a dangling one) occupies the name as much as a file does.
        os.stat(leaf, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    except OSError as exc:
        # A name too long for the file system, a permission problem: refuse the name.
        raise AccessDenied(f"cannot stat: {exc.strerror}") from None
    return True


def _create_temp(leaf: str, dir_fd: int) -> tuple[int, str]:
    """Create a fresh hidden file beside ``leaf``; return its descriptor and name."""
    # O_EXCL with O_NOFOLLOW: never open something planted under the temporary name.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    # Keep the name within NAME_MAX (255 octets) however long the leaf is.
    stem = leaf.encode()[:200].decode(errors="ignore")
    for _ in range(_TEMP_ATTEMPTS):
        temp_name = f".{stem}.{secrets.token_hex(8)}.part"
        try:
            return os.open(temp_name, flags, _FILE_MODE, dir_fd=dir_fd), temp_name
        except FileExistsError:
            continue
        except PermissionError:
            raise AccessDenied("permission denied") from None
        # Anything else (no space, read-only file system) is the caller's to map, as is.
    raise AccessDenied("no free temporary name")


def remove_leftovers(root: Path) -> int:
    """Remove the temporary files of uploads that never finished below ``root``; how many.

    For the start, before uploads are taken: a server that was killed (or lost its power)
    mid-upload leaves its hidden temporary file behind, which nothing would ever remove. Only
    regular files named as :func:`_create_temp` names them go, and symlinked directories are
    not followed. A file that cannot be removed stays, and is not counted.
    """
    removed = 0
    for directory, _, names in os.walk(root):
        for name in names:
            if not _TEMP_NAME.fullmatch(name):
                continue
            path = os.path.join(directory, name)
            try:
                if stat.S_ISREG(os.lstat(path).st_mode):
                    os.unlink(path)
                    removed += 1
            except OSError:
                continue
    return removed
