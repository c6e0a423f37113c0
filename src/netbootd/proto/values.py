"""The decorator for values made once or more per packet (a DHCP message, a lease, a reply).

They are immutable to the type checker (``mypy --strict`` rejects any assignment to a field) and
compare and hash by value, as frozen dataclasses do; at run time they are plain slotted
dataclasses, because a frozen dataclass's ``__init__`` sets each field through
``object.__setattr__``, which costs several times a plain assignment, and a busy DHCP server
builds thousands of them a second.
"""

from __future__ import annotations

import dataclasses
from typing import TypeVar, dataclass_transform

_T = TypeVar("_T")


@dataclass_transform(frozen_default=True, field_specifiers=(dataclasses.field,))
def packet_value(cls: type[_T]) -> type[_T]:
    return dataclasses.dataclass(slots=True, unsafe_hash=True)(cls)
