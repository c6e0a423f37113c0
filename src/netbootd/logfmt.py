"""One-line, key=value event records: the format of every netbootd log line.

Each record is ``EVENT key=value key="value with spaces" ...``. Operators grep it, and the
demo and the tests parse it back with :func:`parse_event`. Pure: formatting and parsing only,
no logging calls here.
"""

from __future__ import annotations

import re

_BARE = re.compile(r'^[^\s"=]+$')
_TOKEN = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')


def _quote(value: object) -> str:
    text = "" if value is None else str(value)
    if text and _BARE.match(text):
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def format_event(event: str, **fields: object) -> str:
    """Render ``event`` and its fields, in the order given, as one line."""
    parts = [event]
    bare = _BARE.match
    for key, value in fields.items():
        text = value if isinstance(value, str) else ("" if value is None else str(value))
        parts.append(f"{key}={text}" if text and bare(text) else f"{key}={_quote(text)}")
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
            value = re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), raw[1:-1])
        else:
            value = raw
        fields[key] = value
    return head, fields
