"""One-line, key=value event records: the format of every netbootd log line.

Each record is ``EVENT key=value key="value with spaces" ...``. Operators grep it, and the
demo and the tests parse it back with :func:`parse_event`; the JSON log format tells an event
line from other text with :func:`parse_event_exactly`. Pure: formatting and parsing only, no
logging calls here.
"""

from __future__ import annotations

import re

_BARE = re.compile(r'^[^\s"=]+$')
_PLAIN_ASCII = re.compile(r"[!#-<>-~]+")  # printable ASCII but space, '"' and '='

_TOKEN = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')
# An event name as netbootd writes them: DISCOVER, TYPE9, dhcp-worker-ready.
_EVENT_NAME = re.compile(r"[A-Za-z][\w.:-]*")
# One key=value token and the space after it (none at the end): a quoted value whole, or a bare
# one that does not start with a quote, or nothing. Where this matches, _TOKEN reads the same.
_EXACT_TOKEN = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|[^\s"]\S*|)(?: |\Z)')
_UNESCAPE = re.compile(r"\\(x[0-9a-f]{2}|u[0-9a-f]{4}|U[0-9a-f]{8}|.)")


def _unescape(match: re.Match[str]) -> str:
    what = match.group(1)
    if what == "n":
        return "\n"
    if len(what) > 1:
        return chr(int(what[1:], 16))
    return what


def _quote(value: object) -> str:
    text = "" if value is None else str(value)
    if text and _BARE.match(text) and text.isprintable():
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    if not escaped.isprintable():
        # A peer's text (a host name, a vendor class) may carry control characters: a CR or an
        # escape sequence must not forge or hide a log line.
        escaped = "".join(char if char.isprintable() else _escape(char) for char in escaped)
    return f'"{escaped}"'


def _escape(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def format_event(event: str, **fields: object) -> str:
    """Render ``event`` and its fields, in the order given, as one line."""
    return f"{event} {format_fields(**fields)}" if fields else event


def format_fields(**fields: object) -> str:
    """The ``key=value`` part of an event line, for a line put together from parts."""
    parts = []
    plain = _PLAIN_ASCII.fullmatch  # the usual value: one check, no quoting
    for key, value in fields.items():
        text = value if isinstance(value, str) else ("" if value is None else str(value))
        parts.append(f"{key}={text}" if plain(text) else f"{key}={_quote(text)}")
    return " ".join(parts)


def parse_event(message: str) -> tuple[str, dict[str, str]]:
    """Parse a line made by :func:`format_event` (or its tail inside a log line).

    Returns the event name and its fields as strings. Text before the event that does not look
    like ``key=value`` (a timestamp, a level) is not expected here: pass the message part only.
    """
    head, _, rest = message.strip().partition(" ")
    fields: dict[str, str] = {}
    for key, raw in _TOKEN.findall(rest):
        if raw.startswith('"') and raw.endswith('"') and len(raw) >= 2:
            value = _UNESCAPE.sub(_unescape, raw[1:-1])
        else:
            value = raw
        fields[key] = value
    return head, fields


def parse_event_exactly(message: str) -> tuple[str, dict[str, str]] | None:
    """:func:`parse_event`, for a message that is an event line and nothing else; None for any
    other text.

    An event line is an event name alone, or followed by one space and ``key=value`` tokens
    separated by single spaces, as :func:`format_event` makes them (and the DHCP lines put
    together from :func:`format_fields` parts). Text that only contains such tokens (``received
    xid=0x1 53 message-type: DISCOVER``) is not one: its words between the tokens would be lost.
    """
    head, space, rest = message.partition(" ")
    if not _EVENT_NAME.fullmatch(head) or (space and not rest):
        return None
    fields: dict[str, str] = {}
    position = 0
    end = len(rest)
    while position < end:
        token = _EXACT_TOKEN.match(rest, position)
        if token is None:
            return None
        raw = token.group(2)
        if raw.startswith('"'):
            fields[token.group(1)] = _UNESCAPE.sub(_unescape, raw[1:-1])
        else:
            fields[token.group(1)] = raw
        position = token.end()
    if rest.endswith(" "):
        return None  # the last token took a space that nothing follows
    return head, fields
