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
