"""The way out of netbootd's log lines: one write per event-loop turn, and a direct path.

A DHCP server under load writes a line per transaction, thousands a second. Here the time text
is made once a second, and the lines of one event-loop turn go out in one write at the end of
that turn. A WARNING or worse, a line logged outside the event loop, and a full buffer are
written at once, so nothing waits behind a quiet loop and order is kept.

The module is compiled with the DHCP path (see ``setup.py``); :mod:`netbootd.logs.handler` joins
it to :mod:`logging`. It has no format specifications in its f-strings: compiled, each is a
``str.format`` call that parses its template every time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import AbstractContextManager
from typing import ClassVar, TextIO

MAX_BUFFERED = 512  # lines held for the end of a turn before they are written anyway
ATOMIC_WRITE = 4096  # PIPE_BUF: a write up to this size reaches a pipe whole

_MILLISECONDS = tuple(",%03d" % ms for ms in range(1000))  # noqa: UP031 (made once)
_LEVELS = {
    level: logging.getLevelName(level).ljust(7)
    for level in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL)
}


def level_text(level: int) -> str:
    """The level as a line shows it: its name, padded to 7 characters."""
    return _LEVELS.get(level) or logging.getLevelName(level).ljust(7)


class TimeText:
    """``2026-01-31 12:00:00,123``, with the text of the current second made once."""

    def __init__(self) -> None:
        self._second = -1
        self._second_text = ""

    def text(self, created: float, msecs: int) -> str:
        second = int(created)
        if second != self._second:
            self._second_text = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
            self._second = second
        return self._second_text + _MILLISECONDS[min(max(msecs, 0), 999)]


def line_text(time_text: str, level: str, name: str, message: str) -> str:
    """A whole line: time, level (padded), logger name and message."""
    return f"{time_text} {level} {name} {message}"


class LineBuffer:
    """The lines of each event-loop turn, written to ``stream`` together at its end.

    ``lock`` guards the buffer; the log handler passes its own, which :mod:`logging` renews
    in a forked child.
    """

    def __init__(self, stream: TextIO, lock: AbstractContextManager[object]) -> None:
        self.stream = stream
        self.lock = lock
        self.time = TimeText()
        self._lines: list[str] = []
        self._scheduled: asyncio.AbstractEventLoop | None = None  # the loop a write awaits

    def emit(self, level: int, name: str, message: str) -> None:
        """Add ``message`` from logger ``name``, formatted as a record of it would be."""
        created = time.time()
        msecs = int((created - int(created)) * 1000)
        text = self.time.text(created, msecs)
        self.add(line_text(text, level_text(level), name, message), level)

    def add(self, line: str, level: int) -> None:
        with self.lock:
            self._lines.append(line)
            if level >= logging.WARNING or len(self._lines) >= MAX_BUFFERED or not self._later():
                self._write()

    def _later(self) -> bool:
        """Whether a write at the end of this loop turn is arranged (True), or the caller is
        not in a running event loop and must write now (False)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False  # another thread, or no loop (start-up, shut-down)
        if self._scheduled is not loop:
            loop.call_soon(self.flush)
            self._scheduled = loop
        return True

    def _write(self) -> None:
        if not self._lines:
            return
        lines, self._lines = self._lines, []
        try:
            for text in _chunks(lines):
                self.stream.write(text)
                self.stream.flush()
        except (OSError, ValueError):
            pass  # stderr gone (a closed pipe): logging must not take the server down

    def flush(self) -> None:
        with self.lock:
            self._scheduled = None
            self._write()


def _chunks(lines: list[str]) -> list[str]:
    """``lines`` joined into writes of whole lines of at most ATOMIC_WRITE octets each (a
    longer line alone): the DHCP workers share stderr, and a pipe keeps such a write in one
    piece, never mixed with another process's."""
    chunks: list[str] = []
    current: list[str] = []
    size = 0
    for line in lines:
        cost = (len(line) if line.isascii() else len(line.encode())) + 1
        if current and size + cost > ATOMIC_WRITE:
            chunks.append("\n".join(current) + "\n")
            current, size = [], 0
        current.append(line)
        size += cost
    if current:
        chunks.append("\n".join(current) + "\n")
    return chunks


class Installed:
    """The buffer :func:`netbootd.logs.handler.setup_logging` installed as the only way out."""

    buffer: ClassVar[LineBuffer | None] = None


def log_line(logger: logging.Logger, level: int, message: str) -> None:
    """``logger.log(level, message)``, for the lines a busy server writes most (a DHCP
    transaction each). When :func:`netbootd.logs.handler.setup_logging` installed its handler,
    the only one, the line goes straight to its buffer, formatted alike, without the
    ``LogRecord`` and the handler chain that cost as much as the rest of the transaction's
    line. netbootd adds no handler or filter of its own after that; where logging was set up
    by someone else (a test runner, an embedding program), this is ``logger.log``."""
    if not logger.isEnabledFor(level):
        return
    buffer = Installed.buffer
    if buffer is None:
        logger.log(level, message)
        return
    buffer.emit(level, logger.name, message)
