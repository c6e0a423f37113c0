"""A real ``netbootd serve`` on loopback, its log as tools read it: with ``--log-format json``
every line it writes to standard error is a JSON object, from the ready line to the last
counters; ``--log-level debug`` adds what is ignored and why, ``warning`` leaves out the rest."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from netbootd.proto.dhcp.codec import MessageType, encode
from tests.helpers.dhcp_clients import request


def _free_port(kind: socket.SocketKind) -> int:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Running:
    """A netbootd process whose standard error goes to a file, and its ports."""

    def __init__(self, tmp_path: Path, *flags: str) -> None:
        root = tmp_path / "root"
        root.mkdir(parents=True)
        (root / "hello.txt").write_text("hello\n")
        self.http_port = _free_port(socket.SOCK_STREAM)
        self.log = tmp_path / "stderr.log"
        argv = [sys.executable, "-m", "netbootd", "serve", "--interface", "lo"]
        argv += ["--root", str(root), "--state-dir", str(tmp_path / "state")]
        argv += ["--http-port", str(self.http_port)]
        argv += ["--tftp-port", str(_free_port(socket.SOCK_DGRAM))]
        argv += flags
        with self.log.open("wb") as err:
            self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=err)

    def text(self) -> str:
        return self.log.read_text()

    def wait_for(self, what: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while what not in self.text():
            if self.process.poll() is not None:
                raise AssertionError(f"netbootd ended ({self.process.returncode}):\n{self.text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what!r} in:\n{self.text()}")
            time.sleep(0.05)

    def stop(self) -> str:
        """SIGTERM, and everything it wrote."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        assert self.process.wait(timeout=30) == 0, self.text()
        return self.text()


Server = Callable[..., Running]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    started: list[Running] = []

    def start(*flags: str) -> Running:
        running = Running(tmp_path / str(len(started)), *flags)
        started.append(running)
        return running

    try:
        yield start
    finally:
        for running in started:
            if running.process.poll() is None:
                running.process.kill()
                running.process.wait()


def _objects(text: str) -> list[dict[str, str]]:
    lines = text.splitlines()
    assert lines, "nothing was logged"
    objects = []
    for line in lines:
        parsed = json.loads(line)  # every line, or the test fails here
        assert isinstance(parsed, dict), line
        assert {"time", "level", "logger"} <= set(parsed), line
        assert ("event" in parsed) != ("message" in parsed), line
        objects.append(parsed)
    return objects


def test_every_line_is_a_json_object(server: Server) -> None:
    running = server("--no-dhcp", "--log-format", "json", "--log-level", "debug")
    running.wait_for('"event": "ready"')
    url = f"http://127.0.0.1:{running.http_port}/hello.txt"
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == b"hello\n"
    running.process.send_signal(signal.SIGUSR1)
    running.wait_for('"event": "counters"')
    objects = _objects(running.stop())
    [ready] = [line for line in objects if line.get("event") == "ready"]
    assert (ready["level"], ready["logger"], ready["interface"]) == ("INFO", "netbootd", "lo")
    assert ready["http"] == str(running.http_port)
    [served] = [line for line in objects if line.get("event") == "request"]
    assert (served["logger"], served["path"], served["status"]) == (
        "netbootd.http",
        "/hello.txt",
        "200",
    )
    assert any(line.get("event") == "stopping" for line in objects)


def test_warning_leaves_out_the_info_lines(server: Server) -> None:
    running = server("--no-dhcp", "--log-level", "warning")
    # No line says it is ready: wait for the port instead.
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", running.http_port), timeout=1).close()
            break
        except OSError:
            assert running.process.poll() is None and time.monotonic() < deadline, running.text()
            time.sleep(0.05)
    text = running.stop()
    assert " INFO " not in text and "ready" not in text, text


@pytest.mark.skipif(os.geteuid() != 0, reason="the DHCP port (67) needs root")
def test_debug_shows_an_ignored_dhcp_request_and_why(server: Server) -> None:
    """proxyDHCP on lo, asked by a client that does not network-boot: a DEBUG line with the
    reason; ``--log-dhcp``'s option lines are messages."""
    running = server("--proxy", "--log-dhcp", "--log-format", "json", "--log-level", "debug")
    running.wait_for('"event": "ready"')
    discover = request(MessageType.DISCOVER, vendor_class="host\x1b[2J\r\nforged")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.sendto(encode(discover), ("127.0.0.1", 67))
    running.wait_for('"decision": "ignored"')
    objects = _objects(running.stop())
    [ignored] = [line for line in objects if line.get("event") == "DISCOVER"]
    assert (ignored["level"], ignored["logger"]) == ("DEBUG", "netbootd.dhcp")
    assert ignored["vendor_class"] == "host\x1b[2J\r\nforged"
    assert ignored["reason"] == "proxy mode answers PXE and UEFI HTTP Boot clients only"
    options = [line["message"] for line in objects if "message" in line]
    assert "received xid=0x1234abcd 53 message-type: DISCOVER" in options


@pytest.mark.skipif(os.geteuid() != 0, reason="the DHCP port (67) needs root")
def test_the_dhcp_workers_log_at_the_same_level_in_the_same_format(server: Server) -> None:
    """Worker 1 is started with worker 0's arguments: its lines are JSON too, and its DEBUG
    line for a REQUEST to another server (a MAC ending in an odd octet is worker 1's) is
    there."""
    running = server(
        "--dhcp-range", "127.0.0.100-127.0.0.139", "--dhcp-workers", "2", "--no-http",
        "--log-format", "json", "--log-level", "debug",
    )  # fmt: skip
    running.wait_for('"event": "dhcp-workers"')
    elsewhere = request(MessageType.REQUEST, mac="52:54:00:00:00:01", server_id="10.9.9.9")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.sendto(encode(elsewhere), ("127.0.0.1", 67))
    running.wait_for('"decision": "ignored"')
    objects = _objects(running.stop())
    [ready] = [line for line in objects if line.get("event") == "dhcp-worker-ready"]
    assert ready["worker"] == "1"
    [ignored] = [line for line in objects if line.get("event") == "REQUEST"]
    assert (ignored["level"], ignored["mac"]) == ("DEBUG", "52:54:00:00:00:01")
    counts = {
        line["worker"]: line["counts"]
        for line in objects
        if line.get("event") == "counters" and line["service"] == "dhcp"
    }
    assert "REQUEST:ignored=1" in counts["1"].split(",")
    assert "REQUEST:ignored" not in counts["0"]
