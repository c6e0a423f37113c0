"""Bad DHCP input over a real socket: each kind is one log line, a counter, and no harm.

For each kind of broken datagram a client or a forger can send, a second namespace sends it to
a running netbootd, then a valid DISCOVER that must be answered. Afterwards the server's log
holds exactly one line about the bad datagram and its counters name it. Needs root.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from netbootd.proto.dhcp.codec import DhcpPacket, MessageType, Op, Opt, encode
from netbootd_lab import Lab, LogEvent, NetbootdServer
from tests.helpers.dhcp_clients import BIOS_PXE, request

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
]

GOOD_MAC = "52:54:00:aa:bb:01"
BAD_MAC = "52:54:00:aa:bb:02"

# Sends argv[2] (hex) to the server, then a valid DISCOVER (argv[3], hex) asking for a broadcast
# reply, and waits for the answer to it on the client port. Exit 0 when it came.
SENDER = """
import socket, sys, time
server, bad, good = sys.argv[1], bytes.fromhex(sys.argv[2]), bytes.fromhex(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
s.bind(("0.0.0.0", 68))
s.sendto(bad, (server, 67))
time.sleep(0.3)
s.sendto(good, (server, 67))
s.settimeout(0.5)
deadline = time.monotonic() + 10
while time.monotonic() < deadline:
    try:
        data, _ = s.recvfrom(4096)
    except socket.timeout:
        s.sendto(good, (server, 67))
        continue
    if data[0] == 2 and data[4:8] == good[4:8]:
        sys.exit(0)
sys.exit(1)
"""


def _discover(mac: str, **changes: object) -> DhcpPacket:
    packet = request(MessageType.DISCOVER, mac=mac, vendor_class=BIOS_PXE, arch=0)
    return dataclasses.replace(packet, flags=0x8000, **changes)  # type: ignore[arg-type]


def _wire(mac: str = BAD_MAC, **changes: object) -> bytes:
    return encode(_discover(mac, **changes))


def _with_options(options: bytes) -> bytes:
    return _wire()[:240] + options


def _header(**fields: int) -> bytes:
    wire = bytearray(_wire())
    offsets = {"op": 0, "htype": 1, "hlen": 2}
    for name, value in fields.items():
        wire[offsets[name]] = value
    return bytes(wire)


CASES: dict[str, tuple[bytes, str, str]] = {
    # name: (datagram, the counter that must count it, the event of its one log line)
    "runt": (_wire()[:100], "malformed", "malformed"),
    "bad-cookie": (_wire()[:236] + b"BAD!" + _wire()[240:], "malformed", "malformed"),
    "options-past-the-end": (
        _with_options(bytes([53, 1, 1, 12, 50]) + b"abc"),
        "malformed",
        "malformed",
    ),
    "absurd-length": (
        _with_options(bytes([53, 1, 1, 60, 255]) + b"PXEClient" + bytes([255])),
        "malformed",
        "malformed",
    ),
    "truncated-option": (_with_options(bytes([53, 1, 1, 61])), "malformed", "malformed"),
    "hlen-absurd": (_header(htype=255, hlen=200), "malformed", "malformed"),
    # Text that is not UTF-8 is still a client: answered, its text escaped in the one line.
    "undecodable-text": (
        encode(
            _discover(BAD_MAC).with_options(
                [
                    (Opt.HOST_NAME, b"\xff\xfe\r\x1b[2J"),
                    (Opt.VENDOR_CLASS, b"PXEClient\xc3\x28\r\x1b[2J"),
                ]
            )
        ),
        "DISCOVER:OFFER",
        "DISCOVER",
    ),
    "bootreply": (_wire(op=Op.BOOTREPLY), "bad-request:op", "DISCOVER"),
    "foreign-giaddr": (
        _wire(giaddr=IPv4Address("192.0.2.1")),
        "bad-request:giaddr",
        "DISCOVER",
    ),
    "no-chaddr": (_wire(chaddr=b""), "bad-request:chaddr", "DISCOVER"),
}


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    with Lab(tmp_path / "lab") as the_lab:
        yield the_lab


def _counters(server: NetbootdServer) -> dict[str, int]:
    """The last DHCP counters line: the one logged at stop."""
    for event in reversed(server.events()):
        if event.event == "counters" and event.get("service") == "dhcp":
            pairs = (item.split("=") for item in event.get("counts").split(","))
            return {key: int(value) for key, value in pairs}
    raise AssertionError(f"no DHCP counters in the log:\n{server.log_tail()}")


def _about_the_bad_datagram(event: LogEvent) -> bool:
    return event.svc == "dhcp" and event.event != "counters" and event.get("mac") != GOOD_MAC


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_datagram_then_a_client_served(lab: Lab, tmp_path: Path, case: str) -> None:
    datagram, counter, event = CASES[case]
    root = tmp_path / "root"
    root.mkdir()
    (root / "pxelinux.0").write_bytes(b"\0" * 64)
    server = NetbootdServer(
        lab,
        root,
        state_dir=tmp_path / "state",
        log_path=lab.workdir / "netbootd.log",
        dhcp_range=lab.dhcp_range(100, 110),
        extra_args=["--no-http"],
    ).start()
    sender = lab.add_host("sender")
    good = encode(_discover(GOOD_MAC, xid=0x600D0001))
    sent = sender.ns_exec(
        [sys.executable, "-c", SENDER, lab.server_ip, datagram.hex(), good.hex()],
        check=False,
        timeout=30,
    )
    assert sent.returncode == 0, f"the valid DISCOVER went unanswered\n{server.log_tail()}"
    assert server.alive()
    # SIGUSR1 logs the counters so far, and the server goes on.
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGUSR1)
    live = server.wait_event(
        lambda ev: ev.event == "counters" and ev.get("service") == "dhcp", timeout=10
    )
    assert server.alive()
    server.stop()
    offers = _counters(server)["DISCOVER:OFFER"]
    assert f"DISCOVER:OFFER={offers}" in live.get("counts").split(",")
    lines = [ev for ev in server.events() if _about_the_bad_datagram(ev)]
    assert [ev.event for ev in lines] == [event], "\n".join(ev.line for ev in lines)
    text = server.log_text()
    assert "\r" not in text and "\x1b" not in text  # a peer's control characters are escaped
    counters = _counters(server)
    expected = 2 if counter == "DISCOVER:OFFER" else 1
    assert counters.get(counter) == expected, counters
    assert counters.get("DISCOVER:OFFER", 0) >= 1  # the valid client
    assert "Traceback" not in text
