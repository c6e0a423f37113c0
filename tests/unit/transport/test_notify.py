"""systemd's notification protocol: the address NOTIFY_SOCKET names, the messages, the sending."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest

from netbootd.logs.events import parse_event
from netbootd.transport.notify import Notice, Notifier, NotifyAddressError, parse_address


def test_a_path_is_sent_to_as_it_is() -> None:
    assert parse_address("/run/systemd/notify") == b"/run/systemd/notify"


def test_an_at_sign_is_the_abstract_namespace() -> None:
    assert parse_address("@/org/freedesktop/systemd1/notify/123") == (
        b"\0/org/freedesktop/systemd1/notify/123"
    )


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("vsock:2:1234", "neither a socket path nor an @abstract name"),
        ("run/notify", "neither a socket path nor an @abstract name"),
        ("@", "neither a socket path nor an @abstract name"),
        ("/" + "x" * 107, "longer than a socket path may be"),
        ("@" + "x" * 108, "longer than a socket name may be"),
    ],
)
def test_what_is_not_an_address(value: str, why: str) -> None:
    with pytest.raises(NotifyAddressError, match=why):
        parse_address(value)


def test_the_longest_path_and_name() -> None:
    # sun_path holds 108 octets: a path and its NUL, or an abstract name and its leading NUL.
    assert len(parse_address("/" + "x" * 106)) == 107
    assert len(parse_address("@" + "x" * 107)) == 108


def test_messages() -> None:
    assert Notice(ready=True, status="serving HTTP").encode() == b"READY=1\nSTATUS=serving HTTP"
    assert Notice(stopping=True).encode() == b"STOPPING=1"
    # A status is one assignment: a newline in it would start another.
    assert Notice(status="a\nREADY=1 b").encode() == b"STATUS=a READY=1 b"
    assert Notice().encode() == b""


def test_decode_reads_what_encode_wrote() -> None:
    for notice in (Notice(ready=True, status="x = y"), Notice(stopping=True), Notice()):
        assert Notice.decode(notice.encode()) == notice
    assert Notice.decode(b"MAINPID=7\nREADY=1\n") == Notice(ready=True)


def test_no_variable_no_notifier() -> None:
    notifier = Notifier.from_environment({})
    assert notifier.address is None
    assert notifier.send(Notice(ready=True)) is False


def test_an_unusable_variable_is_one_line(caplog: pytest.LogCaptureFixture) -> None:
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": "vsock:2:1"})
    assert notifier.address is None
    [record] = caplog.records
    event, fields = parse_event(record.getMessage())
    assert (event, record.levelno) == ("notify-unusable", logging.WARNING)
    assert fields["effect"] == "systemd is not told of the start"


def test_sent_to_a_path(tmp_path: Path) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind(str(path))
        notifier = Notifier.from_environment({"NOTIFY_SOCKET": str(path)})
        assert notifier.send(Notice(ready=True, status="serving"))
        assert systemd.recv(4096) == b"READY=1\nSTATUS=serving"


def test_sent_to_an_abstract_name(tmp_path: Path) -> None:
    name = f"netbootd-test-{tmp_path.name}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind("\0" + name)
        notifier = Notifier.from_environment({"NOTIFY_SOCKET": "@" + name})
        assert notifier.send(Notice(stopping=True))
        assert systemd.recv(4096) == b"STOPPING=1"


def test_a_failed_send_warns_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="netbootd")
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": str(tmp_path / "nobody")})
    assert notifier.send(Notice(ready=True)) is False
    assert notifier.send(Notice(stopping=True)) is False
    lines = [(r.levelno, *parse_event(r.getMessage())) for r in caplog.records]
    assert lines == [
        (
            logging.WARNING,
            "notify-failed",
            {"socket": str(tmp_path / "nobody"), "error": "No such file or directory"},
        ),
        (
            logging.DEBUG,
            "notify-failed",
            {"socket": str(tmp_path / "nobody"), "error": "No such file or directory"},
        ),
    ]
