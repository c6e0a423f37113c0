"""The guard against compiled modules (setup.py) older than their source in a checkout."""

from __future__ import annotations

import importlib
import os
import tomllib
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
    (package / f"codec{SUFFIX}").write_bytes(b"")
    (package / "codec.py").write_text("")
    os.utime(package / f"codec{SUFFIX}", (1_000_000, 1_000_000))
    _check_compiled(package)


@pytest.mark.skipif(
    "NETBOOTD_EXPECT_COMPILED" not in os.environ, reason="make test says which build it runs"
)
def test_the_build_under_test_is_the_one_expected() -> None:
    # make test runs the compiled build, then the Python source: each run must be what it says,
    # and a build that quietly fell back to Python would void the rate figures. Every module
    # the build list names is checked, so a module moved without its entry fails here too.
    expected = os.environ["NETBOOTD_EXPECT_COMPILED"] == "1"
    listed = compiled_list()
    assert "src/netbootd/services/dhcp/service.py" in listed
    for path in listed:
        name = path.removeprefix("src/").removesuffix(".py").replace("/", ".")
        module = importlib.import_module(name)
        assert str(module.__file__).endswith(".so") is expected, module.__file__


def compiled_list() -> list[str]:
    """The modules setup.py compiles, as pyproject.toml lists them for it and the Makefile."""
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    return list(tomllib.loads(pyproject.read_text())["tool"]["netbootd"]["compiled"])


def test_the_build_list_names_modules_that_exist() -> None:
    root = Path(__file__).resolve().parents[2]
    assert [path for path in compiled_list() if not (root / path).is_file()] == []


@pytest.mark.skipif(
    os.environ.get("NETBOOTD_EXPECT_COMPILED") != "1", reason="only the compiled build compiles"
)
def test_the_values_made_per_packet_are_built_by_compiled_code() -> None:
    # Each transaction makes packets, client descriptions, decisions, leases and replies. A
    # dataclass's generated __init__ stays interpreted even in a compiled module, and costs ten
    # times a compiled one: these classes write theirs out, and it must stay compiled.
    import types

    from netbootd.boot.client import ClientInfo
    from netbootd.boot.leases import Lease, PoolCount
    from netbootd.boot.policy import BootDecision
    from netbootd.proto.dhcp.codec import DhcpPacket
    from netbootd.services.dhcp.transaction import Outcome, Reply

    for cls in (DhcpPacket, ClientInfo, Lease, PoolCount, BootDecision, Reply, Outcome):
        assert not isinstance(cls.__init__, types.FunctionType), cls
