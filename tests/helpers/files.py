"""Opened files for tests: octets in memory that can shrink or fail, and generated files of any
size that never touch the disk."""

from __future__ import annotations


class Octets:
    """An opened file over bytes, counting its reads; ``shrink_to`` makes it shorter than it
    said it was, ``fail`` makes every read fail."""

    def __init__(self, content: bytes, *, shrink_to: int | None = None, fail: bool = False):
        self.content = content
        self.shrink_to = shrink_to
        self.fail = fail
        self.reads: list[tuple[int, int]] = []

    @property
    def size(self) -> int:
        return len(self.content)

    def read(self, offset: int, length: int) -> bytes:
        self.reads.append((offset, length))
        if self.fail:
            raise OSError(5, "Input/output error")
        end = offset + length
        if self.shrink_to is not None:
            end = min(end, self.shrink_to)
        return self.content[offset:end]

    def close(self) -> None:
        pass


class Generated:
    """An opened file of ``size`` octets that repeat ``pattern``, made up as it is read, so a
    test can serve a file of any size without writing it."""

    def __init__(self, pattern: bytes, size: int) -> None:
        self.pattern = pattern
        self._size = size
        self.closed = False

    @property
    def size(self) -> int:
        return self._size

    def read(self, offset: int, length: int) -> bytes:
        end = min(offset + length, self._size)
        if offset >= end:
            return b""
        period = len(self.pattern)
        start = offset % period
        repeats = (end - offset + start) // period + 1
        return (self.pattern * repeats)[start : start + end - offset]

    def close(self) -> None:
        self.closed = True


class Source:
    """A FileSource that hands out one opened file, or raises one exception, for any name."""

    def __init__(self, result: object) -> None:
        self.result = result
        self.asked: list[tuple[str, str | None]] = []

    def open(self, name: str, peer: str | None = None) -> object:
        self.asked.append((name, peer))
        if isinstance(self.result, BaseException):
            raise self.result
        return self.result
