"""Event lines: any value survives format and parse; the usual ones stay bare; an event line
is told from other text."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netbootd.logs.events import format_event, parse_event, parse_event_exactly

keys = st.from_regex(r"[a-z][a-z_]{0,11}", fullmatch=True)


@given(st.dictionaries(keys, st.text(max_size=40), max_size=8))
def test_any_text_comes_back_as_it_went(fields: dict[str, str]) -> None:
    line = format_event("EVENT", **fields)
    assert "\n" not in line and "\r" not in line
    assert parse_event(line) == ("EVENT", fields)


@given(st.dictionaries(keys, st.from_regex(r"[!#-<>-~]+", fullmatch=True), max_size=8))
def test_plain_values_are_not_quoted(fields: dict[str, str]) -> None:
    line = format_event("EVENT", **fields)
    assert '"' not in line
    assert line == " ".join(["EVENT", *(f"{k}={v}" for k, v in fields.items())])


def test_values_that_need_it_are_quoted_and_escaped() -> None:
    line = format_event("E", a="two words", b="", c='say "hi"', d="k=v", e="\x1b[2J", f="é", g=3)
    assert line == r'E a="two words" b="" c="say \"hi\"" d="k=v" e="\x1b[2J" f=é g=3'
    assert format_event("E", none=None) == 'E none=""'


@given(st.dictionaries(keys, st.text(max_size=40), max_size=8))
def test_an_event_line_is_read_exactly_as_parse_event_reads_it(fields: dict[str, str]) -> None:
    line = format_event("EVENT", **fields)
    assert parse_event_exactly(line) == parse_event(line) == ("EVENT", fields)


@pytest.mark.parametrize(
    "line",
    [
        "DISCOVER xid=0x1a2b3c4d mac=52:54:00:12:34:56 decision=OFFER",
        'transfer client=10.0.0.1:2070 options=blksize=1432,tsize=0 why="a b" empty= mac=""',
        "dhcp-worker-ready worker=1 pid=42",
        "stopping",
    ],
)
def test_event_lines(line: str) -> None:
    assert parse_event_exactly(line) == parse_event(line)


@pytest.mark.parametrize(
    "text",
    [
        "received xid=0x1a2b3c4d 53 message-type: DISCOVER",  # --log-dhcp's option lines
        "sent xid=0x1 67 bootfile: pxelinux.0",
        "Task exception was never retrieved",
        "EVENT a=1  b=2",  # two spaces
        "EVENT a=1 ",
        "EVENT ",
        'EVENT a="unterminated',
        'EVENT a="x"y',
        "EVENT a=1 trailing words",
        " EVENT a=1",
        "9lives a=1",
        "",
    ],
)
def test_other_text_is_not_an_event_line(text: str) -> None:
    assert parse_event_exactly(text) is None
