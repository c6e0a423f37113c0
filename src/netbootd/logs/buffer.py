"""The way out of netbootd's log lines: one write per event-loop turn, and a direct path.

A DHCP server under load writes a line per transaction, thousands a second. Here the time text
is made once a second, and the lines of one event-loop turn go out in one write at the end of
that turn. A WARNING or worse, a line logged outside the event loop, and a full buffer are
written at once, so nothing waits behind a quiet loop and order is kept.

A line is text (``time LEVEL logger message``) or, for tools, one JSON object
(:func:`json_line`); both go out the same way.

The module is compiled with the DHCP path (see ``setup.py``); :mod:`netbootd.logs.handler` joins
it to :mod:`logging`. It has no format specifications in its f-strings: compiled, each is a
``str.format`` call that parses its template every time.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from contextlib import AbstractContextManager
from typing import ClassVar, TextIO

from netbootd.logs.events import parse_event_exactly

MAX_BUFFERED = 512  # lines held for the end of a turn before they are written anyway
ATOMIC_WRITE = 4096  # PIPE_BUF: a write up to this size reaches a pipe whole

_MILLISECONDS = tuple(",%03d" % ms for ms in range(1000))  # noqa: UP031 (made once)
_DOT_MILLISECONDS = tuple(".%03d" % ms for ms in range(1000))  # noqa: UP031 (made once)
_NAMES = {
    level: logging.getLevelName(level)
    for level in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL)
}
_LEVELS = {level: name.ljust(7) for level, name in _NAMES.items()}


def level_text(level: int) -> str:
    """The level as a line shows it: its name, padded to 7 characters."""
    return _LEVELS.get(level) or logging.getLevelName(level).ljust(7)


def level_name(level: int) -> str:
    """The level's name, as a JSON line gives it: ``INFO``."""
    return _NAMES.get(level) or str(logging.getLevelName(level))


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


class IsoTimeText:
    """``2026-01-31T12:00:00.123+01:00``: ISO 8601 (RFC 3339) local time, with milliseconds and
    the offset from UTC, the text of the current second made once."""

    def __init__(self) -> None:
        self._second = -1
        self._second_text = ""
        self._offset = ""

    def text(self, created: float, msecs: int) -> str:
        second = int(created)
        if second != self._second:
            local = time.localtime(second)
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", local)
            self._offset = utc_offset(local.tm_gmtoff)
            self._second = second
        return self._second_text + _DOT_MILLISECONDS[min(max(msecs, 0), 999)] + self._offset


def utc_offset(seconds: int) -> str:
    """``+01:00``, ``-03:30``: an offset from UTC as RFC 3339 writes it (strftime's ``%z`` has
    no colon)."""
    sign = "-" if seconds < 0 else "+"
    hours, minutes = divmod(abs(seconds) // 60, 60)
    return sign + str(hours).zfill(2) + ":" + str(minutes).zfill(2)


def line_text(time_text: str, level: str, name: str, message: str) -> str:
    """A whole line: time, level (padded), logger name and message."""
    return f"{time_text} {level} {name} {message}"


# The keys of a JSON line's own; an event's field of one of these names is written with
# FIELD_PREFIX before it. Field names are words (\w+), so the prefixed name, with its dot, can
# be no other field's.
OWN_KEYS = frozenset({"time", "level", "logger", "event", "message", "exception", "stack"})
FIELD_PREFIX = "field."


def json_line(
    time_text: str, level: str, name: str, message: str, *, exception: str = "", stack: str = ""
) -> str:
    """A whole line as one JSON object: ``time``, ``level``, ``logger``, then ``event`` and its
    fields (as strings) when ``message`` is an event line, else ``message``; ``exception`` and
    ``stack`` when given (a traceback's lines, in one string).

    ``json.dumps`` escapes every control and non-ASCII character, and a lone surrogate (from a
    peer's bytes that were not UTF-8): the line is one line of ASCII, valid JSON for any text.
    """
    line: dict[str, str] = {"time": time_text, "level": level, "logger": name}
    parsed = parse_event_exactly(message)
    if parsed is None:
        line["message"] = message
    else:
        event, fields = parsed
        line["event"] = event
        for key, value in fields.items():
            line[FIELD_PREFIX + key if key in OWN_KEYS else key] = value
    if exception:
        line["exception"] = exception
    if stack:
        line["stack"] = stack
    return json.dumps(line)


class LineBuffer:
    """The lines of each event-loop turn, written to ``stream`` together at its end.

    ``lock`` guards the buffer; the log handler passes its own, which :mod:`logging` renews
    in a forked child. ``as_json``: :meth:`emit` makes JSON lines (:func:`json_line`).
    """

    def __init__(
        self, stream: TextIO, lock: AbstractContextManager[object], *, as_json: bool = False
    ) -> None:
        self.stream = stream
        self.lock = lock
        self.as_json = as_json
        self.time = TimeText()
        self.iso_time = IsoTimeText()
        self._lines: list[str] = []
        self._scheduled: asyncio.AbstractEventLoop | None = None  # the loop a write awaits

    def emit(self, level: int, name: str, message: str) -> None:
        """Add ``message`` from logger ``name``, formatted as a record of it would be."""
        created = time.time()
        msecs = int((created - int(created)) * 1000)
        if self.as_json:
            line = json_line(self.iso_time.text(created, msecs), level_name(level), name, message)
        else:
            line = line_text(self.time.text(created, msecs), level_text(level), name, message)
        self.add(line, level)

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
