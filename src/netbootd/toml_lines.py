"""Where each key of a TOML text is written, for messages that name a file and a line.

TOML parsers give no line numbers for values, so :class:`KeyLines` reads just enough of the
text to know on which line each key and table starts; ``tomllib`` still judges the document.
This module reads no file and raises nothing for bad text: any input gets an answer.
"""

from __future__ import annotations

import string
from collections.abc import Sequence

__all__ = ["KeyLines", "KeyPath", "locate_key", "parse_key"]

KeyPath = tuple[str, ...]

_BARE = frozenset(string.ascii_letters + string.digits + "_-")
_ESCAPES = {
    "b": "\b",
    "t": "\t",
    "n": "\n",
    "f": "\f",
    "r": "\r",
    "e": "\x1b",
    '"': '"',
    "\\": "\\",
}
_HEX_ESCAPES = {"x": 2, "u": 4, "U": 8}


class _MalformedError(Exception):
    """The scanner met text it cannot read; it skips to the next line."""


class _KeyScanner:
    """Reads just enough TOML to tell on which line each key and table starts.

    It never judges the document (tomllib does that); on text it cannot read it goes on at the
    next line, so it answers something for any input.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.line = 1
        # A key or table written as such (header, key = value, dotted key) -> its first line.
        self.explicit: dict[KeyPath, int] = {}
        # A table that exists only as the parent of a header ([a.b] makes a) -> its first line.
        self.implicit: dict[KeyPath, int] = {}
        # The line each statement starts on -> the table or key it writes.
        self.statements: dict[int, KeyPath] = {}

    def _char(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def _skip_blanks(self) -> None:
        while self._char() in (" ", "\t", "\r") and self._char():
            self.pos += 1

    def _skip_comment(self) -> None:
        end = self.text.find("\n", self.pos)
        self.pos = len(self.text) if end < 0 else end

    def _skip_space(self) -> None:
        """Blanks, newlines and comments."""
        while True:
            char = self._char()
            if char in (" ", "\t", "\r") and char:
                self.pos += 1
            elif char == "\n":
                self.pos += 1
                self.line += 1
            elif char == "#":
                self._skip_comment()
            else:
                return

    def _next_line(self) -> None:
        end = self.text.find("\n", self.pos)
        if end < 0:
            self.pos = len(self.text)
        else:
            self.pos = end + 1
            self.line += 1

    def _expect(self, token: str) -> None:
        if not self.text.startswith(token, self.pos):
            raise _MalformedError
        self.pos += len(token)

    def scan(self) -> None:
        table: KeyPath = ()
        while True:
            self._skip_space()
            if self.pos >= len(self.text):
                return
            line = self.line
            try:
                if self._char() == "[":
                    table = self._header(line)
                else:
                    self._key_value(table, line)
            except _MalformedError:
                pass
            self._next_line()

    def _header(self, line: int) -> KeyPath:
        closing = "]]" if self.text.startswith("[[", self.pos) else "]"
        self.pos += len(closing)
        path = self.key()
        self._skip_blanks()
        self._expect(closing)
        self.statements[line] = path
        self.explicit.setdefault(path, line)
        for end in range(1, len(path)):
            self.implicit.setdefault(path[:end], line)
        return path

    def _key_value(self, table: KeyPath, line: int) -> None:
        path = (*table, *self.key())
        self._skip_blanks()
        self._expect("=")
        self._skip_blanks()
        self.statements[line] = path
        # Dotted keys define their intermediate tables where they are written.
        for end in range(len(table) + 1, len(path) + 1):
            self.explicit.setdefault(path[:end], line)
        self._value(path)

    def key(self) -> KeyPath:
        """A dotted key: bare, "basic" and 'literal' parts, blanks allowed around the dots."""
        parts: list[str] = []
        while True:
            self._skip_blanks()
            char = self._char()
            if char == '"':
                parts.append(self._basic_string())
            elif char == "'":
                parts.append(self._literal_string())
            elif char and char in _BARE:
                start = self.pos
                while self._char() and self._char() in _BARE:
                    self.pos += 1
                parts.append(self.text[start : self.pos])
            else:
                raise _MalformedError
            self._skip_blanks()
            if self._char() != ".":
                return tuple(parts)
            self.pos += 1

    def _basic_string(self) -> str:
        self.pos += 1
        out: list[str] = []
        while True:
            char = self._char()
            if char in ("", "\n"):
                raise _MalformedError
            self.pos += 1
            if char == '"':
                return "".join(out)
            if char != "\\":
                out.append(char)
                continue
            escape = self._char()
            self.pos += 1
            if escape in _ESCAPES:
                out.append(_ESCAPES[escape])
            elif escape in _HEX_ESCAPES:
                digits = self.text[self.pos : self.pos + _HEX_ESCAPES[escape]]
                self.pos += len(digits)
                try:
                    out.append(chr(int(digits, 16)))
                except ValueError:
                    raise _MalformedError from None
            else:
                raise _MalformedError

    def _literal_string(self) -> str:
        end = self.text.find("'", self.pos + 1)
        newline = self.text.find("\n", self.pos + 1)
        if end < 0 or 0 <= newline < end:
            raise _MalformedError
        value = self.text[self.pos + 1 : end]
        self.pos = end + 1
        return value

    def _multiline_string(self, quote: str) -> None:
        self.pos += 3
        while True:
            char = self._char()
            if not char:
                raise _MalformedError
            if char == "\\" and quote == '"':
                if self.text[self.pos + 1 : self.pos + 2] == "\n":
                    self.line += 1
                self.pos += 2
            elif char == quote:
                run = 0
                while self._char() == quote:
                    run += 1
                    self.pos += 1
                # A run of three to five quotes closes the string; one or two more belong to it.
                if run >= 3:
                    self.pos -= max(0, run - 5)
                    return
            else:
                if char == "\n":
                    self.line += 1
                self.pos += 1

    def _value(self, path: KeyPath | None) -> None:
        char = self._char()
        if self.text.startswith('"""', self.pos) or self.text.startswith("'''", self.pos):
            self._multiline_string(char)
        elif char == '"':
            self._basic_string()
        elif char == "'":
            self._literal_string()
        elif char == "[":
            self._array()
        elif char == "{":
            self._inline_table(path)
        else:
            start = self.pos
            while self._char() and self._char() not in ",]}#\n":
                self.pos += 1
            if self.pos == start:
                raise _MalformedError

    def _array(self) -> None:
        self.pos += 1
        while True:
            self._skip_space()
            if self._char() == "]":
                self.pos += 1
                return
            if not self._char():
                raise _MalformedError
            self._value(None)
            self._skip_space()
            if self._char() == ",":
                self.pos += 1
            elif self._char() != "]":
                raise _MalformedError

    def _inline_table(self, path: KeyPath | None) -> None:
        self.pos += 1
        while True:
            self._skip_space()
            if self._char() == "}":
                self.pos += 1
                return
            line = self.line
            inner = self.key()
            self._skip_blanks()
            self._expect("=")
            self._skip_blanks()
            full: KeyPath | None = None
            if path is not None:
                full = (*path, *inner)
                for end in range(len(path) + 1, len(full) + 1):
                    self.explicit.setdefault(full[:end], line)
            self._value(full)
            self._skip_space()
            if self._char() == ",":
                self.pos += 1
            elif self._char() != "}":
                raise _MalformedError


class KeyLines:
    """The lines where the keys of one TOML text are written."""

    def __init__(self, text: str) -> None:
        scanner = _KeyScanner(text)
        scanner.scan()
        self._explicit = scanner.explicit
        self._implicit = scanner.implicit
        self._statements = scanner.statements

    def line_of(self, path: Sequence[str]) -> int:
        """The 1-based line where ``path`` is defined; else its nearest enclosing table's; else 1.

        A key is on the line where it is written, which for a key of a one-line inline table
        is the line of the key that holds the table. A table is where its header (or its first
        dotted key) is, rather than where a subtable's header implied it.
        """
        wanted = tuple(path)
        for end in range(len(wanted), 0, -1):
            prefix = wanted[:end]
            line = self._explicit.get(prefix) or self._implicit.get(prefix)
            if line is not None:
                return line
        return 1

    def table_line(self, path: Sequence[str], number: int) -> int | None:
        """The line of the ``number``-th (1-based) ``[[path]]`` header, if there are that many."""
        wanted = tuple(path)
        headers = sorted(line for line, key in self._statements.items() if key == wanted)
        return headers[number - 1] if 0 < number <= len(headers) else None

    def defined_before(self, line: int) -> tuple[KeyPath, int] | None:
        """The key or table written on ``line``, and where it was first written, if earlier."""
        path = self._statements.get(line)
        if path is None:
            return None
        first = self._explicit.get(path, line)
        return (path, first) if first < line else None


def locate_key(text: str, path: Sequence[str]) -> int:
    """The line of ``path`` (such as ``("machines", "web1", "mac")``) in a TOML text."""
    return KeyLines(text).line_of(path)


def parse_key(text: str) -> KeyPath:
    """A dotted key as TOML writes it (``profiles."a.b".kernel``) back into its parts."""
    scanner = _KeyScanner(text)
    try:
        path = scanner.key()
    except _MalformedError:
        return tuple(text.split("."))
    return path if scanner.pos == len(text) else tuple(text.split("."))
