"""Where each TOML key was written: every form of key, broken text, and keys read back."""

from __future__ import annotations

import itertools
import re
import string
import textwrap
import tomllib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netbootd.boot.inventory import format_key
from netbootd.toml_lines import KeyLines, locate_key, parse_key


def toml(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


LOCATOR_TEXT = toml(
    r"""
    # [machines.fake] mac = "no" -- a comment, not a table
    machines.web1.mac = "52:54:00:aa:bb:01"   # dotted key at the top
    machines . "web.2" . uuid = "x"

    [profiles."a.b"]
    method = "ipxe"  # [profiles.x]
    cmdline = "a=b # not a comment [c] = d"
    note = 'C:\dir # [x] = y'
    initrds = [
      "one#", # [profiles.z]
      'two = [',
    ]
    kernel = "k"

    [profiles."a.b".files]
    "preseed.cfg" = "t/p.j2"
    'user-data' = "t/u.j2"

    [ groups . web ]
    match.arch = ["bios"]
    match.labels = { role = "web" }
    profile = '''
    profile = "fake"
    [groups.fake]
    '''
    after = 1

    [groups.other]
    match = { labels = { role = "db" }, mac = [
      "52:54:00:*",
    ] }

    [[groups.web.list]]
    item = 1
    """
)


@pytest.mark.parametrize(
    ("path", "line"),
    [
        (("machines", "web1", "mac"), 2),
        (("machines", "web1"), 2),
        (("machines", "web.2", "uuid"), 3),
        (("machines",), 2),
        (("profiles", "a.b"), 5),
        (("profiles", "a.b", "method"), 6),
        (("profiles", "a.b", "cmdline"), 7),
        (("profiles", "a.b", "note"), 8),
        (("profiles", "a.b", "initrds"), 9),
        (("profiles", "a.b", "kernel"), 13),
        (("profiles", "a.b", "files"), 15),
        (("profiles", "a.b", "files", "preseed.cfg"), 16),
        (("profiles", "a.b", "files", "user-data"), 17),
        (("groups", "web"), 19),
        (("groups", "web", "match"), 20),
        (("groups", "web", "match", "arch"), 20),
        (("groups", "web", "match", "labels"), 21),
        (("groups", "web", "match", "labels", "role"), 21),
        (("groups", "web", "profile"), 22),
        (("groups", "web", "after"), 26),
        (("groups", "other", "match"), 29),
        (("groups", "other", "match", "labels", "role"), 29),
        (("groups", "other", "match", "mac"), 29),
        (("groups", "web", "list"), 33),
        (("groups", "web", "list", "item"), 34),
        # Not written: the nearest enclosing table, then line 1.
        (("profiles", "a.b", "template"), 5),
        (("profiles", "a.b", "files", "kickstart"), 15),
        (("groups", "web", "match", "uuid"), 20),
        (("groups", "other", "match", "uuid"), 29),
        (("groups", "fake"), 19),
        (("machines", "fake", "mac"), 2),
        (("nothing", "here"), 1),
        ((), 1),
    ],
)
def test_locator_forms(path: tuple[str, ...], line: int) -> None:
    tomllib.loads(LOCATOR_TEXT)  # the example is valid TOML
    assert locate_key(LOCATOR_TEXT, path) == line


def test_locator_prefers_the_header_over_an_implied_table() -> None:
    text = "[machines.web1.labels]\nrole = 'x'\n\n[machines.web1]\nmac = 'm'\n"
    lines = KeyLines(text)
    assert lines.line_of(("machines", "web1")) == 4
    assert lines.line_of(("machines", "web1", "labels", "role")) == 2
    assert lines.line_of(("machines",)) == 1


def test_locator_crlf_and_escapes() -> None:
    text = '[a]\r\n"k\\u00e9y\\"" = 1\r\n"\\\\" = """x\r\ny"""\r\nz = 2\r\n'
    assert tomllib.loads(text)["a"] == {'k\u00e9y"': 1, "\\": "x\ny", "z": 2}
    assert locate_key(text, ("a", 'k\u00e9y"')) == 2
    assert locate_key(text, ("a", "\\")) == 3
    assert locate_key(text, ("a", "z")) == 5


def test_locator_quote_runs_close_multiline_strings() -> None:
    text = 'a = """x""""\nb = \'\'\'y\'\'\'\'\'\nc = """\\"""\n"""\nd = 1\n'
    assert tomllib.loads(text) == {"a": 'x"', "b": "y''", "c": '"""\n', "d": 1}
    assert [locate_key(text, (k,)) for k in "abcd"] == [1, 2, 3, 5]


@pytest.mark.parametrize(
    "text",
    ["[", "a = [1, 2", 'a = "open', "a = '''x", "[[a", "= 1", "a.=1", '"\\q" = 1', "{", "a={b"],
)
def test_locator_never_raises_on_broken_text(text: str) -> None:
    assert locate_key(text + "\nz = 1\n", ("z",)) >= 1


@given(st.text(max_size=60))
def test_locator_answers_for_any_text(text: str) -> None:
    assert 1 <= locate_key(text, ("a", "b")) <= text.count("\n") + 1


# A document written in every supported form, and the line where each key went.

_PART = st.text(alphabet=string.ascii_letters + string.digits + "_-. #[]=\"'\\é{}", max_size=5)
_VALUES = (
    '"a # b [c] = d"',
    "'x # [y] = z'",
    "42",
    '[\n  "a#b", # note [z]\n  [1, 2],\n  { k = "v" },\n]',
    '"""\nk = 1\n[t]\n"""',
    "'''\n# not a comment\n'''",
    '{ x = 1, y = "#]" }',
    '"q \\" # still a string"',
    '"""ends with a quote""""',
    "1979-05-27 07:32:00Z",
    "[]",
)


def _render(part: str, style: int) -> str:
    if style == 0 and re.fullmatch(r"[A-Za-z0-9_-]+", part):
        return part
    if style == 1 and "'" not in part:
        return f"'{part}'"
    return '"' + part.replace("\\", "\\\\").replace('"', '\\"') + '"'


@st.composite
def _documents(draw: st.DrawFn) -> tuple[str, dict[tuple[str, ...], int]]:
    counter = itertools.count()
    lines: list[str] = []
    expected: dict[tuple[str, ...], int] = {}

    def fresh() -> str:
        return draw(_PART) + str(next(counter))

    def key(*parts: str) -> str:
        space = draw(st.sampled_from(["", " "]))
        return f"{space}.{space}".join(_render(p, draw(st.integers(0, 2))) for p in parts)

    def value() -> str:
        if draw(st.booleans()):
            return _render(draw(_PART), draw(st.integers(1, 2)))
        return draw(st.sampled_from(_VALUES))

    def emit(text: str, *paths: tuple[str, ...]) -> None:
        for path in paths:
            expected[path] = len(lines) + 1
        lines.extend(text.split("\n"))

    def body(table: tuple[str, ...]) -> None:
        for _ in range(draw(st.integers(0, 4))):
            form = draw(st.sampled_from(["plain", "dotted", "inline", "comment", "blank"]))
            if form == "plain":
                name = fresh()
                emit(f"{key(name)} = {value()}", (*table, name))
            elif form == "dotted":
                outer, name = fresh(), fresh()
                emit(f"{key(outer, name)} = {value()}", (*table, outer), (*table, outer, name))
            elif form == "inline":
                outer, name, deep = fresh(), fresh(), fresh()
                inner = value()
                emit(
                    f"{key(outer)} = {{ {key(name)} = {inner}, {key(deep, 'z')} = 1 }}",
                    (*table, outer),
                    (*table, outer, name),
                )
                # A key after a multi-line value is on the line where it is written.
                expected[(*table, outer, deep)] = len(lines)
                expected[(*table, outer, deep, "z")] = len(lines)
            elif form == "comment":
                emit("# [profiles.fake] key = 1")
            else:
                emit("")

    for _ in range(draw(st.integers(0, 2))):
        names = (fresh(), fresh(), fresh())
        emit(f"top.{key(*names)} = {value()}", ("top", *names[:2]), ("top", *names))
    for _ in range(draw(st.integers(0, 3))):
        section = draw(st.sampled_from(["profiles", "machines", "groups"]))
        table = (section, fresh())
        pad = draw(st.sampled_from(["", " "]))
        emit(f"[{pad}{key(*table)}{pad}]  # [fake]", table)
        body(table)
        if draw(st.booleans()):
            sub = (*table, fresh())
            emit(f"[{key(*sub)}]", sub)
            body(sub)
    text = "\n".join(lines) + "\n"
    if draw(st.booleans()):
        text = text.replace("\n", "\r\n")
    return text, expected


def _lookup(data: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        data = data[part]
    return data


@given(_documents())
def test_locator_finds_every_written_key(document: tuple[str, dict[tuple[str, ...], int]]) -> None:
    text, expected = document
    data = tomllib.loads(text)
    lines = KeyLines(text)
    for path, line in expected.items():
        _lookup(data, path)  # the generator wrote the key where it says
        assert lines.line_of(path) == line, path
        # A key that is not there: the line of the nearest table that is.
        assert lines.line_of((*path, "~absent~")) == line, path


@given(
    st.lists(
        st.text(alphabet="abc.-_ \"'\\#=[]é\t", min_size=1, max_size=8), min_size=1, max_size=4
    )
)
def test_problem_keys_read_back(path: list[str]) -> None:
    assert parse_key(format_key(path)) == tuple(path)
