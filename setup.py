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

from setuptools import setup

# The DHCP path, from the socket to the lease store and the log line.
COMPILED = [
    "src/netbootd/proto/dhcp/codec.py",
    "src/netbootd/proto/dhcp/size.py",
    "src/netbootd/proto/dhcp/wire.py",
    "src/netbootd/boot/bootp.py",
    "src/netbootd/boot/client.py",
    "src/netbootd/boot/hosts.py",
    "src/netbootd/boot/leases.py",
    "src/netbootd/boot/policy.py",
    "src/netbootd/boot/pxe_menu.py",
    "src/netbootd/boot/subnets.py",
    "src/netbootd/services/dhcp/authoritative.py",
    "src/netbootd/services/dhcp/bootp.py",
    "src/netbootd/services/dhcp/limits.py",
    "src/netbootd/services/dhcp/log.py",
    "src/netbootd/services/dhcp/proxy.py",
    "src/netbootd/services/dhcp/reply.py",
    "src/netbootd/services/dhcp/reservations.py",
    "src/netbootd/services/dhcp/service.py",
    "src/netbootd/services/dhcp/settings.py",
    "src/netbootd/services/dhcp/shares.py",
    "src/netbootd/services/dhcp/transaction.py",
    "src/netbootd/services/dhcp/watch.py",
    "src/netbootd/store/leases.py",
    "src/netbootd/transport/dhcp.py",
    "src/netbootd/logfmt.py",
    "src/netbootd/loglines.py",
]


def extensions() -> list[object]:
    if os.environ.get("NETBOOTD_COMPILE", "1") == "0":
        return []
    from mypyc.build import mypycify  # noqa: PLC0415 (a plain build does without mypy)

    return list(mypycify(["--strict", *COMPILED], opt_level="3"))


setup(ext_modules=extensions())
