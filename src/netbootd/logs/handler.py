"""Where netbootd's log lines go, and what each costs.

A DHCP server under load writes a line per transaction, thousands a second. The standard
``basicConfig`` set-up spends more on a line than the transaction it reports: it walks the stack
for the caller's file and line, formats the time afresh with ``strftime``, and makes a
``write`` system call per line. Here the time text is made once a second, the caller is not
looked up (no line uses it), and the lines of one event-loop turn go out in one write at the end
of that turn (:mod:`netbootd.logs.buffer`, compiled with the DHCP path). A WARNING or worse, a line
logged outside the event loop, and a full buffer are written at once, so nothing waits behind
a quiet loop and order is kept.

With ``--log-format json`` each line is one JSON object instead (:class:`JsonFormatter`, and
:func:`netbootd.logs.buffer.json_line` on the direct path), buffered alike.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

from netbootd.logs.buffer import (
    Installed,
    IsoTimeText,
    LineBuffer,
    TimeText,
    json_line,
    level_text,
    line_text,
)

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s %(message)s"


class LineFormatter(logging.Formatter):
    """``LOG_FORMAT``, with the time text of the current second made once."""

    def __init__(self) -> None:
        super().__init__(LOG_FORMAT)
        self._time = TimeText()

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        return self._time.text(record.created, int(record.msecs))

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info or record.exc_text or record.stack_info:
            return super().format(record)  # the traceback's lines follow
        return line_text(
            self.formatTime(record), level_text(record.levelno), record.name, record.getMessage()
        )


class JsonFormatter(logging.Formatter):
    """A record as one JSON line (:func:`netbootd.logs.buffer.json_line`): an event line's
    fields as keys of their own, a traceback in ``exception``, not on lines of its own."""

    def __init__(self) -> None:
        super().__init__()
        self._time = IsoTimeText()

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        return self._time.text(record.created, int(record.msecs))

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)  # kept, as Formatter does
        return json_line(
            self.formatTime(record),
            record.levelname,
            record.name,
            record.getMessage(),
            exception=record.exc_text or "",
            stack=self.formatStack(record.stack_info) if record.stack_info else "",
        )


class TurnBufferedHandler(logging.Handler):
    """Writes to ``stream`` the lines of each event-loop turn together, at its end.

    It stays a plain Python class: :mod:`logging` keeps weak references to its handlers,
    which a compiled class does not take. Its buffer is compiled. ``as_json``: JSON lines.
    """

    def __init__(self, stream: TextIO, *, as_json: bool = False) -> None:
        super().__init__()
        assert self.lock is not None  # made by Handler.__init__
        self.buffer = LineBuffer(stream, self.lock, as_json=as_json)
        self.setFormatter(JsonFormatter() if as_json else LineFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self.buffer.add(line, record.levelno)

    def flush(self) -> None:
        self.buffer.flush()


def setup_logging(level: int, stream: TextIO | None = None, *, as_json: bool = False) -> None:
    """Send netbootd's log lines, at ``level`` and above, to ``stream`` (stderr); as JSON
    objects, one a line, with ``as_json``.

    Like ``logging.basicConfig``, it leaves a root logger that already has handlers alone."""
    root = logging.getLogger()
    if root.handlers:
        return
    # Record fields no line uses are not gathered (the logging HOWTO's "Optimization").
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging._srcfile = None  # no caller lookup: no line shows it
    handler = TurnBufferedHandler(stream if stream is not None else sys.stderr, as_json=as_json)
    root.addHandler(handler)
    # Setting the level empties every logger's isEnabledFor cache, so no decision made before
    # (at import, under the default WARNING) outlives it. The DHCP lines ask at each
    # transaction, and nothing in netbootd changes the level after this.
    root.setLevel(level)
    Installed.buffer = handler.buffer
