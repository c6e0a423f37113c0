"""A real ``netbootd serve`` on loopback, started with systemd's soft open-file limit of 1,024,
holding 1,000 idle HTTP connections and a slowloris client: a normal GET and a TFTP fetch are
each answered within a second, the slowloris is dropped at the header timeout, and SIGTERM
still stops it at once."""

from __future__ import annotations

import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from netbootd.logs.events import parse_event

IDLE = 1000
SYSTEMD_SOFT_LIMIT = 1024
HEADER_TIMEOUT = 4.0  # long enough for the checks below, short enough to see the slowloris go


def _free_port(kind: socket.SocketKind) -> int:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _start_as_systemd_does(argv: list[str], err: IO[bytes]) -> subprocess.Popen[bytes]:
    """Start ``argv`` with systemd's soft open-file limit (a child inherits its parent's)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (SYSTEMD_SOFT_LIMIT, hard))
    try:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=err)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture
def own_limit() -> Iterator[None]:
    """Room in this process for its side of a thousand connections."""
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    if before[1] < 4 * IDLE:
        pytest.skip(f"the hard open-file limit {before[1]} is too low for {IDLE} connections")
    resource.setrlimit(resource.RLIMIT_NOFILE, (before[1], before[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, before)


class _Slowloris(threading.Thread):
    """Sends a request's headers a line every half second, never the end of them."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.sendall(b"GET /hello.txt HTTP/1.1\r\nHost: t\r\n")
        self.dropped_after: float | None = None
        self._began = time.monotonic()
        self._halt = threading.Event()

    def run(self) -> None:
        n = 0
        while not self._halt.wait(0.5):
            try:
                self.sock.sendall(f"X-Slow-{n}: y\r\n".encode())
            except OSError:
                break
            n += 1
        self.dropped_after = time.monotonic() - self._began

    def stop(self) -> None:
        self._halt.set()
        self.join(5)
        self.sock.close()


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_idle_connections_and_a_slowloris_do_not_stop_http_nor_tftp(
    tmp_path: Path, own_limit: None
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "hello.txt").write_text("hello\n")
    http_port = _free_port(socket.SOCK_STREAM)
    tftp_port = _free_port(socket.SOCK_DGRAM)
    config = tmp_path / "netbootd.toml"
    config.write_text(f"http-header-timeout = {HEADER_TIMEOUT}\n")
    log = tmp_path / "stderr.log"
    argv = [sys.executable, "-m", "netbootd", "serve", "--config", str(config)]
    argv += ["--interface", "lo", "--no-dhcp", "--root", str(root)]
    argv += ["--state-dir", str(tmp_path / "state")]
    argv += ["--http-port", str(http_port), "--tftp-port", str(tftp_port)]
    with log.open("wb") as err:
        process = _start_as_systemd_does(argv, err)
    idle: list[socket.socket] = []
    slow: _Slowloris | None = None
    try:
        deadline = time.monotonic() + 30
        while "ready " not in log.read_text():
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        for _ in range(IDLE):
            idle.append(socket.create_connection(("127.0.0.1", http_port), timeout=5))
        slow = _Slowloris(http_port)
        slow.start()
        time.sleep(0.5)  # the server has taken them all

        began = time.monotonic()
        url = f"http://127.0.0.1:{http_port}/hello.txt"
        with urllib.request.urlopen(url, timeout=5) as answer:
            assert answer.read() == b"hello\n"
        assert time.monotonic() - began < 1.0

        began = time.monotonic()
        fetched = subprocess.run(
            ["curl", "-sS", "--max-time", "5", f"tftp://127.0.0.1:{tftp_port}/hello.txt"],
            capture_output=True,
            check=False,
        )
        assert fetched.returncode == 0 and fetched.stdout == b"hello\n", fetched.stderr
        assert time.monotonic() - began < 1.0

        # The idle ones are still held (none was refused for want of a descriptor).
        for sock in idle[:: IDLE // 10]:
            sock.setblocking(False)
            with pytest.raises(BlockingIOError):
                sock.recv(1)
        slow.join(HEADER_TIMEOUT + 5)
        assert slow.dropped_after is not None
        assert HEADER_TIMEOUT - 0.5 < slow.dropped_after < HEADER_TIMEOUT + 3

        began = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0, log.read_text()
        assert time.monotonic() - began < 10
    finally:
        if slow is not None:
            slow.stop()
        for sock in idle:
            sock.close()
        if process.poll() is None:
            process.kill()
            process.wait()
    text = log.read_text()
    # Each line: date, time, level, logger, then the event.
    events = [parse_event(line.split(maxsplit=4)[4]) for line in text.splitlines() if line]
    limit = next(fields for name, fields in events if name == "open-file-limit")
    assert limit["old"] == str(SYSTEMD_SOFT_LIMIT)
    assert int(limit["new"]) == resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    names = [name for name, _ in events]
    assert "header-timeout" in names
    for refusal in ("accept-failed", "connection-refused", "http-max-connections-lowered"):
        assert refusal not in names, text
    assert "Traceback" not in text
