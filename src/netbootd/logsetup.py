"""Where netbootd's log lines go, and what each costs.

A DHCP server under load writes a line per transaction, thousands a second. The standard
``basicConfig`` set-up spends more on a line than the transaction it reports: it walks the stack
for the caller's file and line, formats the time afresh with ``strftime``, and makes a
``write`` system call per line. Here the time text is made once a second, the caller is not
looked up (no line uses it), and the lines of one event-loop turn go out in one write at the end
of that turn. A WARNING or worse, a line logged outside the event loop, and a full buffer are
written at once, so nothing waits behind a quiet loop and order is kept.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from typing import TextIO

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s %(message)s"
MAX_BUFFERED = 512  # lines held for the end of a turn before they are written anyway


class LineFormatter(logging.Formatter):
    """``LOG_FORMAT``, with the time text of the current second made once."""

    def __init__(self) -> None:
        super().__init__(LOG_FORMAT)
        self._second = -1
        self._second_text = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        return self.time_text(record.created, record.msecs)

    def time_text(self, created: float, msecs: float) -> str:
        second = int(created)
        if second != self._second:
            self._second_text = time.strftime("%Y-%m-%d %H:%M:%S", self.converter(second))
            self._second = second
        return f"{self._second_text},{int(msecs):03d}"

    def line(self, created: float, msecs: float, levelname: str, name: str, message: str) -> str:
        return f"{self.time_text(created, msecs)} {levelname:<7} {name} {message}"

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info or record.exc_text or record.stack_info:
            return super().format(record)  # the traceback's lines follow
        message = record.getMessage()
        return self.line(record.created, record.msecs, record.levelname, record.name, message)


class TurnBufferedHandler(logging.Handler):
    """Writes to ``stream`` the lines of each event-loop turn together, at its end."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self.stream = stream
        self.line_formatter = LineFormatter()
        self.setFormatter(self.line_formatter)
        self._lines: list[str] = []
        self._scheduled: asyncio.AbstractEventLoop | None = None  # the loop a write awaits

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self._add(line, record.levelno)

    def emit_line(self, level: int, name: str, message: str) -> None:
        """What ``emit`` does for a record of ``message`` from logger ``name``, without one."""
        created = time.time()
        msecs = int((created - int(created)) * 1000)
        levelname = logging.getLevelName(level)
        self._add(self.line_formatter.line(created, msecs, levelname, name, message), level)

    def _add(self, line: str, level: int) -> None:
        with self._guard():
            self._lines.append(line)
            if level >= logging.WARNING or len(self._lines) >= MAX_BUFFERED or not self._later():
                self._write()

    def _guard(self) -> threading.RLock:
        assert self.lock is not None
        return self.lock

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
        with self._guard():
            self._scheduled = None
            self._write()


ATOMIC_WRITE = 4096  # PIPE_BUF: a write up to this size reaches a pipe whole


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


class _Direct:
    handler: TurnBufferedHandler | None = None  # set up here as the only way out: see log_line


def log_line(logger: logging.Logger, level: int, message: str) -> None:
    """``logger.log(level, message)``, for the lines a busy server writes most (a DHCP
    transaction each). When :func:`setup_logging` installed its handler, the only one, the
    line goes straight to it, formatted alike, without the ``LogRecord`` and the handler
    chain that cost as much as the rest of the transaction's line. netbootd adds no handler or
    filter of its own after that; where logging was set up by someone else (a test runner, an
    embedding program), this is ``logger.log``."""
    if not logger.isEnabledFor(level):
        return
    handler = _Direct.handler
    if handler is None:
        logger.log(level, message)
        return
    handler.emit_line(level, logger.name, message)


def setup_logging(level: int, stream: TextIO | None = None) -> None:
    """Send netbootd's log lines, at ``level`` and above, to ``stream`` (stderr).

    Like ``logging.basicConfig``, it leaves a root logger that already has handlers alone."""
    root = logging.getLogger()
    if root.handlers:
        return
    # Record fields no line uses are not gathered (the logging HOWTO's "Optimization").
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging._srcfile = None  # no caller lookup: no line shows it
    handler = TurnBufferedHandler(stream if stream is not None else sys.stderr)
    root.addHandler(handler)
    root.setLevel(level)
    _Direct.handler = handler
