"""The listener's own lines, without sockets: what it logs when a datagram breaks something, and
when the kernel refuses segmentation offload."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from netbootd.logs.events import parse_event
from netbootd.services.files import FileTree
from netbootd.transport.tftp import TftpServer


def test_a_datagram_that_breaks_something_is_an_event_line_with_its_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    server = TftpServer(FileTree(tmp_path))

    def broken(data: bytes, addr: object) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(server, "_dispatch", broken)
    caplog.set_level(logging.DEBUG, logger="netbootd.tftp")
    server._on_request_datagram(b"\x00\x01x\x00octet\x00", ("10.0.0.1", 2000))
    [record] = caplog.records
    assert record.levelno == logging.ERROR
    assert parse_event(record.getMessage()) == ("internal-error", {"source": "10.0.0.1:2000"})
    assert record.exc_info is not None
    assert server.counters == {"internal_error": 1}


def test_refused_offload_is_said_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    server = TftpServer(FileTree(tmp_path), gso_max_blksize=1468)
    caplog.set_level(logging.DEBUG, logger="netbootd.tftp")
    server.offload_failed()
    server.offload_failed()
    [record] = caplog.records
    assert record.levelno == logging.INFO
    event, fields = parse_event(record.getMessage())
    assert event == "offload-refused"
    assert fields["effect"] == "sending one by one"
    assert server.settings.gso_max_blksize is None
