"""A short run of the DHCP fuzzer, part of every test run; ``make fuzz-dhcp`` runs it long."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

import tests.fuzz.dhcp_target as target
from netbootd.proto.dhcp.codec import DhcpPacket, decode
from tests.fuzz.dhcp_target import check, fuzz_one_input, seeds
from tests.fuzz.run_dhcp import run


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    logging.disable(logging.CRITICAL)
    yield
    logging.disable(logging.NOTSET)


def test_the_seeds_are_valid_and_pass() -> None:
    for data in seeds():
        decode(data)
        check(data)


def test_fuzz_one_input_takes_raw_bytes() -> None:
    for data in [*seeds(), b"", b"\x01" * 300, bytes(range(256)) * 2]:
        fuzz_one_input(data)


def test_a_short_run_finds_nothing(tmp_path: Path) -> None:
    result = run(3.0, seed=1, crashes=tmp_path)
    assert result.crashes == [], result.crashes[0][1]
    assert result.inputs > 500 and result.decoded > 50
    assert not list(tmp_path.iterdir())


def test_a_short_run_finds_a_planted_bug(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Planted in what the target calls by name: the compiled modules call each other directly,
    # past any attribute set on them.
    real = target.describe

    def buggy(packet: DhcpPacket) -> list[str]:
        if packet.hops == 0xFF:
            raise KeyError("planted")
        return real(packet)

    monkeypatch.setattr(target, "describe", buggy)
    result = run(10.0, seed=1, crashes=tmp_path)
    assert len(result.crashes) == 1
    data, trace = result.crashes[0]
    assert "planted" in trace and decode(data).hops == 0xFF
    assert [path.read_bytes() for path in tmp_path.iterdir()] == [data]
