"""Builds netbootd, with the DHCP path compiled to C by mypyc.

The modules a DHCP transaction runs through (codec, boot policy, lease book, service, socket
edge, lease store, log lines and their way out) are strictly typed (``mypy --strict``), so mypyc
compiles them; compiled, their own work per exchange costs half the CPU. Two habits keep that
code fast: the values made per packet write out their ``__init__`` (a dataclass's generated
one stays interpreted), and the log path's f-strings have no format specifications (compiled,
each is a ``str.format`` call). Every other module stays Python. ``NETBOOTD_COMPILE=0`` builds
it all as plain Python, which behaves the same, slower.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

from setuptools import setup

# The DHCP path, from the socket to the lease store and the log line: [tool.netbootd] compiled
# in pyproject.toml, where the Makefile reads it too.
COMPILED: list[str] = tomllib.loads(Path(__file__).with_name("pyproject.toml").read_text())["tool"][
    "netbootd"
]["compiled"]


def extensions() -> list[object]:
    if os.environ.get("NETBOOTD_COMPILE", "1") == "0":
        return []
    from mypyc.build import mypycify  # noqa: PLC0415 (a plain build does without mypy)

    return list(mypycify(["--strict", *COMPILED], opt_level="3"))


setup(ext_modules=extensions())
