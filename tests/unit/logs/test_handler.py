"""The log handler: a turn's lines in one write at its end, order kept, warnings at once."""

from __future__ import annotations

import asyncio
import io
import logging
import threading
from collections.abc import Iterator

import pytest

from netbootd.logs.buffer import MAX_BUFFERED, log_line
from netbootd.logs.handler import LineFormatter, TurnBufferedHandler, setup_logging


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


@pytest.fixture
def logged() -> tuple[logging.Logger, CountingStream, TurnBufferedHandler]:
    stream = CountingStream()
    handler = TurnBufferedHandler(stream)
    handler.setFormatter(LineFormatter())
    logger = logging.getLogger("netbootd.test-handler")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.handlers = [handler]
    return logger, stream, handler


def lines(stream: io.StringIO) -> list[str]:
    return [line.split(" netbootd.test-handler ", 1)[1] for line in stream.getvalue().splitlines()]


def test_outside_a_loop_each_line_is_written_at_once(logged) -> None:
    logger, stream, _ = logged
    logger.info("one")
    assert lines(stream) == ["one"]
    logger.info("two")
    assert lines(stream) == ["one", "two"]


def test_a_turns_lines_go_out_in_one_write_at_its_end(logged) -> None:
    logger, stream, _ = logged

    async def main() -> None:
        for n in range(5):
            logger.info("line %d", n)
        assert stream.getvalue() == ""  # held for the end of the turn
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert lines(stream) == [f"line {n}" for n in range(5)]
        assert stream.writes == 1
        logger.info("next turn")
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert lines(stream)[-1] == "next turn"

    asyncio.run(main())


def test_a_warning_is_written_at_once_after_the_lines_before_it(logged) -> None:
    logger, stream, _ = logged

    async def main() -> None:
        logger.info("before")
        logger.warning("trouble")
        assert lines(stream) == ["before", "trouble"]
        logger.info("after")
        assert lines(stream) == ["before", "trouble"]
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert lines(stream) == ["before", "trouble", "after"]

    asyncio.run(main())


def test_a_full_buffer_is_written_without_waiting_for_the_turn(logged) -> None:
    logger, stream, _ = logged

    async def main() -> None:
        for n in range(MAX_BUFFERED):
            logger.info("line %d", n)
        assert len(lines(stream)) == MAX_BUFFERED

    asyncio.run(main())


def test_another_thread_writes_at_once_and_keeps_the_order(logged) -> None:
    logger, stream, _ = logged

    async def main() -> None:
        logger.info("from the loop")
        thread = threading.Thread(target=logger.info, args=("from a thread",))
        thread.start()
        thread.join()
        assert lines(stream) == ["from the loop", "from a thread"]

    asyncio.run(main())


def test_lines_left_when_the_loop_ends_are_written_by_the_next_line_or_flush(logged) -> None:
    logger, stream, handler = logged

    async def main() -> None:
        logger.info("last in the loop")

    asyncio.run(main())
    logger.info("after the loop")
    assert lines(stream) == ["last in the loop", "after the loop"]
    asyncio.run(main())
    handler.flush()  # as logging.shutdown() does at exit
    assert lines(stream)[-1] == "last in the loop"


def test_the_line_format_and_tracebacks(logged) -> None:
    logger, stream, _ = logged
    logger.info("plain %s", "text")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logger.exception("failed")
    text = stream.getvalue().splitlines()
    date, clock, rest = text[0].split(" ", 2)
    assert len(date) == 10 and len(clock) == 12 and clock[8] == ","
    assert rest == "INFO    netbootd.test-handler plain text"
    assert "ERROR   netbootd.test-handler failed" in text[1]
    assert text[2] == "Traceback (most recent call last):"
    assert text[-1] == "RuntimeError: boom"


def test_the_time_text_follows_the_clock(logged) -> None:
    formatter = LineFormatter()
    first = logging.LogRecord("n", logging.INFO, "", 0, "m", None, None)
    second = logging.LogRecord("n", logging.INFO, "", 0, "m", None, None)
    second.created, second.msecs = first.created + 61.25, 250.0
    assert formatter.formatTime(first) != formatter.formatTime(second)
    assert formatter.formatTime(second).endswith(",250")
    assert formatter.formatTime(second) == logging.Formatter().formatTime(second)


def test_a_closed_stream_does_not_raise(logged) -> None:
    logger, stream, _ = logged
    stream.close()
    logger.warning("nobody reads this")


def test_setup_leaves_configured_logging_alone() -> None:
    root = logging.getLogger()
    before = list(root.handlers)
    if not before:
        pytest.skip("the root logger has no handler to keep")
    source_lookup = logging._srcfile
    setup_logging(logging.INFO, io.StringIO())
    assert root.handlers == before
    assert logging._srcfile == source_lookup  # its records keep what they had


@pytest.fixture
def installed() -> Iterator[io.StringIO]:
    """setup_logging on a root logger without handlers, as in the server; undone after."""
    from netbootd.logs.buffer import Installed

    root = logging.getLogger()
    flags = ("logThreads", "logProcesses", "logMultiprocessing", "_srcfile")
    saved_flags = {name: getattr(logging, name) for name in flags}
    saved = (list(root.handlers), root.level, Installed.buffer)
    root.handlers = []
    stream = io.StringIO()
    try:
        setup_logging(logging.INFO, stream)
        yield stream
    finally:
        root.handlers, level, Installed.buffer = saved
        root.setLevel(level)
        for name, value in saved_flags.items():
            setattr(logging, name, value)


def test_log_line_goes_straight_to_the_installed_handler_formatted_alike(
    installed: io.StringIO,
) -> None:
    logger = logging.getLogger("netbootd.dhcp")
    before = logging.LogRecord.__init__

    def no_records(*args: object, **kwargs: object) -> None:
        raise AssertionError("a LogRecord was made")

    logging.LogRecord.__init__ = no_records  # type: ignore[method-assign]
    try:
        log_line(logger, logging.INFO, "DISCOVER xid=0x1 decision=OFFER")
        log_line(logger, logging.DEBUG, "not at this level")
        log_line(logger, logging.WARNING, "DISCOVER decision=ignored")
    finally:
        logging.LogRecord.__init__ = before  # type: ignore[method-assign]
    logger.info("through the logger")
    text = installed.getvalue().splitlines()
    assert [line[24:] for line in text] == [
        "INFO    netbootd.dhcp DISCOVER xid=0x1 decision=OFFER",
        "WARNING netbootd.dhcp DISCOVER decision=ignored",
        "INFO    netbootd.dhcp through the logger",
    ]
    assert all(line[4] == "-" and line[19] == "," for line in text)


def test_log_line_is_logger_log_where_logging_was_set_up_elsewhere(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="netbootd.dhcp"):
        log_line(logging.getLogger("netbootd.dhcp"), logging.INFO, "REQUEST decision=ACK")
        log_line(logging.getLogger("netbootd.dhcp"), logging.DEBUG, "not at this level")
    assert [r.getMessage() for r in caplog.records] == ["REQUEST decision=ACK"]
