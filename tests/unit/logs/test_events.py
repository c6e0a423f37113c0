"""Event lines: any value survives format and parse; the usual ones stay bare."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from netbootd.logs.events import format_event, parse_event

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
