"""JSON log lines: each a JSON object on one line, with the fields of its key=value twin, made
alike by the handler and by the direct path, buffered as text lines are."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import threading
from collections.abc import Callable, Iterator
from datetime import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netbootd.config import DhcpMode
from netbootd.logs.buffer import (
    FIELD_PREFIX,
    OWN_KEYS,
    Installed,
    IsoTimeText,
    LineBuffer,
    log_line,
    utc_offset,
)
from netbootd.logs.events import format_event, format_fields, parse_event
from netbootd.logs.handler import JsonFormatter, LineFormatter, setup_logging
from netbootd.proto.dhcp.codec import MessageType
from tests.helpers.dhcp_clients import request
from tests.helpers.dhcp_service import ask, make_service

ISO_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d")
NAME = "netbootd.dhcp"

# Keys as events have them, and the JSON line's own names among them.
keys = st.one_of(
    st.from_regex(r"[a-z][a-z_]{0,11}", fullmatch=True), st.sampled_from(sorted(OWN_KEYS))
)
# Any text, with more than its share of what needs escaping: controls, quotes, backslashes and
# lone surrogates (a peer's bytes that were not UTF-8, read with surrogateescape).
values = st.text(
    st.one_of(
        st.characters(),
        st.sampled_from('\x00\x1b\r\n\t\x7f\u2028"\\= '),
        st.characters(min_codepoint=0xDC80, max_codepoint=0xDCFF, categories=["Cs"]),
    ),
    max_size=40,
)


def fields_of(line: dict[str, str]) -> dict[str, str]:
    """An event's fields as a JSON line carries them, under their own names again."""
    return {
        key.removeprefix(FIELD_PREFIX): value
        for key, value in line.items()
        if key not in ("time", "level", "logger", "event")
    }


def record(message: str, level: int = logging.INFO) -> logging.LogRecord:
    return logging.LogRecord(NAME, level, "", 0, message, None, None)


def text_message(line: str) -> str:
    """The message part of a text line."""
    return line.split(f" {NAME} ", 1)[1]


def direct(message: str, *, as_json: bool) -> str:
    """The line :meth:`LineBuffer.emit`, the direct path, writes for ``message``."""
    stream = io.StringIO()
    buffer = LineBuffer(stream, threading.RLock(), as_json=as_json)
    buffer.emit(logging.INFO, NAME, message)  # outside an event loop: written at once
    [line] = stream.getvalue().splitlines()
    return line


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


@given(st.dictionaries(keys, values, max_size=8))
def test_an_event_line_carries_the_fields_of_its_text_twin(fields: dict[str, str]) -> None:
    message = f"DISCOVER {format_fields(**fields)}" if fields else "DISCOVER"  # event= too
    text_lines = [LineFormatter().format(record(message)), direct(message, as_json=False)]
    json_lines = [JsonFormatter().format(record(message)), direct(message, as_json=True)]
    for text, line in zip(text_lines, json_lines, strict=True):
        assert "\n" not in line and line.isascii()
        parsed = json.loads(line)
        assert (parsed["level"], parsed["logger"], parsed["event"]) == ("INFO", NAME, "DISCOVER")
        assert ISO_TIME.fullmatch(parsed["time"])
        assert fields_of(parsed) == parse_event(text_message(text))[1] == fields


@pytest.mark.parametrize(
    "message",
    [
        "received xid=0x1a2b3c4d 53 message-type: DISCOVER",
        "sent xid=0x1a2b3c4d 67 bootfile: pxelinux.0",
        "Task exception was never retrieved",
        'host name "\x1b[2J\r\nINFO    netbootd forged line" from \udcff\udc80 peer\x00',
    ],
)
def test_other_lines_carry_their_text_as_message(message: str) -> None:
    for line in (JsonFormatter().format(record(message)), direct(message, as_json=True)):
        assert "\n" not in line and "\r" not in line and line.isascii()
        parsed = json.loads(line)
        assert set(parsed) == {"time", "level", "logger", "message"}
        assert parsed["message"] == message


def test_a_field_named_like_a_key_of_the_line_does_not_replace_it() -> None:
    own = {"time": "t", "level": "l", "logger": "g", "event": "e", "message": "m"}
    message = "ready " + format_fields(**own, exception="x", port="69")
    for line in (JsonFormatter().format(record(message)), direct(message, as_json=True)):
        parsed = json.loads(line)
        assert ISO_TIME.fullmatch(parsed["time"])
        assert (parsed["level"], parsed["logger"], parsed["event"]) == ("INFO", NAME, "ready")
        assert "message" not in parsed and "exception" not in parsed
        assert {key: parsed[key] for key in parsed if key.startswith(FIELD_PREFIX)} == {
            "field.time": "t",
            "field.level": "l",
            "field.logger": "g",
            "field.event": "e",
            "field.message": "m",
            "field.exception": "x",
        }
        assert parsed["port"] == "69"


def test_a_traceback_is_one_field_of_one_line() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("netbootd.test-json")
    logger.propagate = False
    logger.handlers = [handler]
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError:
        logger.exception(format_event("internal-error", client="10.0.0.1:2070"))
    logger.warning("looking around", stack_info=True)
    first, second = stream.getvalue().splitlines()
    failed = json.loads(first)
    assert (failed["level"], failed["event"], failed["client"]) == (
        "ERROR",
        "internal-error",
        "10.0.0.1:2070",
    )
    assert failed["exception"].startswith("Traceback (most recent call last):\n")
    assert failed["exception"].endswith("RuntimeError: boom\nsecond line")
    looked = json.loads(second)
    assert looked["message"] == "looking around"
    assert looked["stack"].startswith("Stack (most recent call last):\n")


def test_the_time_is_iso_8601_with_milliseconds_and_the_utc_offset() -> None:
    entry = record("m")
    entry.created, entry.msecs = 1_767_225_600.042, 42.0
    text = JsonFormatter().formatTime(entry)
    assert ISO_TIME.fullmatch(text) and text[19:23] == ".042"
    when = datetime.fromisoformat(text)
    assert abs(when.timestamp() - entry.created) < 0.001
    assert IsoTimeText().text(entry.created, 42) == text
    assert [utc_offset(s) for s in (0, 3600, -12600, 20700)] == [
        "+00:00",
        "+01:00",
        "-03:30",
        "+05:45",
    ]


@pytest.fixture
def install() -> Iterator[Callable[[int, bool], CountingStream]]:
    """setup_logging on a root logger without handlers, as ``netbootd serve`` calls it;
    undone after."""
    root = logging.getLogger()
    flags = ("logThreads", "logProcesses", "logMultiprocessing", "_srcfile")
    saved_flags = {name: getattr(logging, name) for name in flags}
    saved = (list(root.handlers), root.level, Installed.buffer)

    def setup(level: int, as_json: bool) -> CountingStream:
        root.handlers = []
        stream = CountingStream()
        setup_logging(level, stream, as_json=as_json)
        return stream

    try:
        yield setup
    finally:
        root.handlers, level, Installed.buffer = saved
        root.setLevel(level)
        for name, value in saved_flags.items():
            setattr(logging, name, value)


def test_json_lines_of_a_turn_go_out_together_at_its_end(
    install: Callable[[int, bool], CountingStream],
) -> None:
    stream = install(logging.INFO, True)
    logger = logging.getLogger(NAME)

    async def main() -> None:
        log_line(logger, logging.INFO, "DISCOVER xid=0x1 decision=OFFER")
        logger.info("received xid=0x1 53 message-type: DISCOVER")
        assert stream.getvalue() == ""  # held for the end of the turn
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    asyncio.run(main())
    assert stream.writes == 1
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert (first["event"], first["decision"]) == ("DISCOVER", "OFFER")
    assert second["message"] == "received xid=0x1 53 message-type: DISCOVER"


async def test_the_level_set_at_start_is_the_dhcp_services(
    install: Callable[[int, bool], CountingStream],
) -> None:
    """An ignored DISCOVER is a DEBUG line with its reason: written at debug, not at info,
    whatever the DHCP logger was asked before the level was set."""
    logger = logging.getLogger(NAME)
    logging.getLogger().setLevel(logging.WARNING)
    assert not logger.isEnabledFor(logging.DEBUG)  # the answer logging keeps in its cache
    service, _, _ = make_service(DhcpMode.PROXY)
    shown = install(logging.DEBUG, True)
    assert await ask(service, request(MessageType.DISCOVER)) is None
    logging.getLogger().handlers[0].flush()
    [line] = [json.loads(text) for text in shown.getvalue().splitlines()]
    assert (line["level"], line["event"], line["decision"]) == ("DEBUG", "DISCOVER", "ignored")
    assert line["reason"] == "proxy mode answers PXE and UEFI HTTP Boot clients only"
    hidden = install(logging.INFO, False)
    assert await ask(service, request(MessageType.DISCOVER)) is None
    logging.getLogger().handlers[0].flush()
    assert hidden.getvalue() == ""


def test_warning_hides_info(install: Callable[[int, bool], CountingStream]) -> None:
    stream = install(logging.WARNING, False)
    logger = logging.getLogger(NAME)
    log_line(logger, logging.INFO, "DISCOVER decision=OFFER")
    logger.info("ready")
    log_line(logger, logging.WARNING, "DISCOVER decision=NAK")
    assert [text_message(line) for line in stream.getvalue().splitlines()] == [
        "DISCOVER decision=NAK"
    ]
