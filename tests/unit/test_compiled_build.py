"""The guard against compiled modules (setup.py) older than their source in a checkout."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from netbootd import _check_compiled

SUFFIX = ".cpython-311-x86_64-linux-gnu.so"


def checkout(tmp_path: Path) -> Path:
    (tmp_path / "setup.py").write_text("")
    package = tmp_path / "src" / "netbootd"
    (package / "proto").mkdir(parents=True)
    return package


def test_a_compiled_module_older_than_its_source_is_refused(tmp_path: Path) -> None:
    package = checkout(tmp_path)
    compiled, source = package / "proto" / f"dhcp{SUFFIX}", package / "proto" / "dhcp.py"
    compiled.write_bytes(b"")
    source.write_text("")
    os.utime(compiled, (1_000_000, 1_000_000))
    os.utime(source, (2_000_000, 2_000_000))
    with pytest.raises(ImportError, match=r"dhcp\.cpython.* is older than dhcp\.py: rebuild"):
        _check_compiled(package)
    os.utime(compiled, (3_000_000, 3_000_000))
    _check_compiled(package)


def test_an_installed_copy_is_not_checked(tmp_path: Path) -> None:
    package = tmp_path / "site-packages" / "netbootd"
    package.mkdir(parents=True)
    (package / f"logfmt{SUFFIX}").write_bytes(b"")
    (package / "logfmt.py").write_text("")
    os.utime(package / f"logfmt{SUFFIX}", (1_000_000, 1_000_000))
    _check_compiled(package)

