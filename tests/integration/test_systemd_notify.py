"""``netbootd serve`` under systemd's notification protocol, with a socket standing in for it.

The server, started as its own process with ``NOTIFY_SOCKET`` set, says READY=1 once it is
listening (with two DHCP workers: once both hold port 67, and only worker 0 says it), and
STOPPING=1 on SIGTERM, before it exits.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from netbootd.transport.notify import Notice
from netbootd_lab import Lab, NetbootdServer


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket where systemd's would be, and its path for NOTIFY_SOCKET."""
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(30)
        yield sock, path


def _notices_until_exit(sock: socket.socket, process: subprocess.Popen[bytes]) -> list[Notice]:
    """What arrives until the process has exited and nothing more is queued."""
    found = []
    process.wait(timeout=30)
    sock.settimeout(0.5)
    while True:
        try:
            found.append(Notice.decode(sock.recv(4096)))
        except TimeoutError:
            return found


SITE = """\
[profiles.web]
method = "ipxe"
kernel = "vmlinuz"
cmdline = "rev={rev}"

[machines.web1]
mac = "52:54:00:aa:bb:01"
profile = "web"
"""


def _script(port: int) -> str:
    url = f"http://127.0.0.1:{port}/m/52-54-00-aa-bb-01/boot.ipxe"
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


def test_ready_once_listening_and_stopping_on_sigterm(
    tmp_path: Path, systemd: tuple[socket.socket, str]
) -> None:
    """And in between, the server's own process (uvloop, watchfiles' thread) reloads an edit
    of its inventory."""
    sock, path = systemd
    (tmp_path / "root").mkdir()
    (tmp_path / "inventory").mkdir()
    site = tmp_path / "inventory" / "site.toml"
    site.write_text(SITE.format(rev=1))
    port = _free_port()
    argv = [sys.executable, "-m", "netbootd", "serve", "--interface", "lo", "--no-dhcp"]
    argv += ["--no-tftp", "--http-port", str(port), "--root", str(tmp_path / "root")]
    argv += ["--inventory", str(tmp_path / "inventory"), "--state-dir", str(tmp_path / "state")]
    process = subprocess.Popen(
        argv,
        env={**os.environ, "NOTIFY_SOCKET": path},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        ready = Notice.decode(sock.recv(4096))
        assert ready == Notice(ready=True, status=f"serving HTTP on port {port} on lo 127.0.0.1")
        # Ready means listening: a client is answered at once.
        assert "rev=1" in _script(port)
        site.write_text(SITE.format(rev=2))
        deadline = time.monotonic() + 10
        while "rev=2" not in _script(port):
            assert time.monotonic() < deadline, "the edit was not reloaded"
            time.sleep(0.1)
        assert process.poll() is None
        process.send_signal(signal.SIGTERM)
        assert _notices_until_exit(sock, process) == [Notice(stopping=True, status="stopping")]
        assert process.returncode == 0
    finally:
        if process.poll() is None:
            process.kill()
        _, errors = process.communicate(timeout=30)
    log = errors.decode()
    assert "inventory-reloaded" in log and "inventory-polled" not in log, log
    assert "notify-" not in log and "watchfiles" not in log, log


def _port_67_holders(lab: Lab) -> set[int]:
    """The processes with a socket on UDP port 67 in the lab namespace."""
    out = lab.ns_exec(["ss", "-H", "-u", "-l", "-n", "-p", "sport = :67"]).stdout
    return {int(pid) for pid in re.findall(r"pid=(\d+)", out)}


@pytest.mark.netns
@pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")
def test_with_two_workers_only_the_first_notifies_once_both_are_ready(
    tmp_path: Path, systemd: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, path = systemd
    monkeypatch.setenv("NOTIFY_SOCKET", path)  # a path reaches across network namespaces
    (tmp_path / "root").mkdir()
    with Lab(tmp_path / "lab") as lab:
        server = NetbootdServer(
            lab,
            tmp_path / "root",
            state_dir=tmp_path / "state",
            log_path=lab.workdir / "netbootd.log",
            dhcp_range=lab.dhcp_range(100, 139),
            boot=(),
            extra_args=["--dhcp-workers=2", "--no-tftp", "--no-http"],
        )
        server.ports = ()  # started is ready, told below
        server.start()
        assert server.process is not None
        try:
            ready = Notice.decode(sock.recv(4096))
            assert ready.ready and not ready.stopping, server.log_tail()
            assert ready.status is not None
            assert ready.status.startswith("serving DHCP (authoritative, 2 workers) on ")
            holders = _port_67_holders(lab)
            assert len(holders) == 2, (holders, server.log_tail())
            for pid in holders:
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                worker = any(item.startswith(b"NETBOOTD_WORKER_FD=") for item in environ)
                assert worker != any(item.startswith(b"NOTIFY_SOCKET=") for item in environ)
            server.stop()
            assert _notices_until_exit(sock, server.process.popen) == [
                Notice(stopping=True, status="stopping")
            ]
        finally:
            server.stop()
