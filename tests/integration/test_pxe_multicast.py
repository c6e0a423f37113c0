"""PXE boot server discovery by multicast (PXE 2.1 §2.2.5, option 43 sub-option 7), over a real
socket.

A client in a second namespace sends its menu choice (a DHCPREQUEST with PXE_BOOT_ITEM) to the
discovery group at port 4011, as iPXE and EDK2 do when the offer names a group. netbootd with
``--pxe-multicast`` has joined the group on its interface and answers with the item's file; its
transaction line says the request came through the group. Without the flag it never hears the
group, and the same request goes unanswered. Needs root.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from netbootd.boot.pxe_menu import BOOT_ITEM, LOCAL_USE_BASE
from netbootd.proto.dhcp.codec import MessageType, Opt, decode, decode_suboptions, encode
from netbootd_lab import Lab, NetbootdServer
from tests.helpers.dhcp_clients import BIOS_PXE, request

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
]

GROUP = "239.255.40.11"
MAC = "52:54:00:4d:43:01"

# Sends argv[3] (hex) from argv[1] (its own address) to the group argv[2] at port 4011 and
# prints the hex of the first reply to its xid on port 68; exit 1 when none came in 6 s.
SENDER = """
import socket, sys, time
own, group, asked = sys.argv[1], sys.argv[2], bytes.fromhex(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(own))
s.bind((own, 68))
s.settimeout(1.0)
deadline = time.monotonic() + 6
while time.monotonic() < deadline:
    s.sendto(asked, (group, 4011))
    try:
        data, _ = s.recvfrom(4096)
    except socket.timeout:
        continue
    if data[0] == 2 and data[4:8] == asked[4:8]:
        print(data.hex())
        sys.exit(0)
sys.exit(1)
"""


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    with Lab(tmp_path / "lab") as the_lab:
        yield the_lab


def _server(lab: Lab, tmp_path: Path, *extra: str) -> NetbootdServer:
    root = tmp_path / "root"
    root.mkdir()
    (root / "pxelinux.0").write_bytes(b"\0" * 64)
    return NetbootdServer(
        lab,
        root,
        state_dir=tmp_path / "state",
        log_path=lab.workdir / "netbootd.log",
        dhcp_range=lab.dhcp_range(100, 110),
        boot=(),
        extra_args=[
            "--no-http",
            "--pxe-service=bios,Linux through pxelinux,pxelinux.0",
            "--pxe-service=bios,Boot from the local disk,local",
            "--pxe-prompt=bios,Press F8,2",
            *extra,
        ],
    ).start()


def _ask(lab: Lab, xid: int) -> tuple[int, str]:
    """Send the choice of the first item to the group; (exit status, reply in hex)."""
    client = lab.add_host("client")
    own = str(client.address.ip)
    item = (LOCAL_USE_BASE + 1).to_bytes(2, "big") + bytes(2)
    chosen = request(
        MessageType.REQUEST,
        mac=MAC,
        xid=xid,
        vendor_class=BIOS_PXE,
        arch=0,
        ciaddr=own,
        extra=((Opt.VENDOR_SPECIFIC, bytes([BOOT_ITEM, 4]) + item + bytes([255])),),
    )
    sent = client.ns_exec(
        [sys.executable, "-c", SENDER, own, GROUP, encode(chosen).hex()], check=False, timeout=30
    )
    return sent.returncode, sent.stdout.strip()


def test_a_choice_sent_to_the_group_is_answered(lab: Lab, tmp_path: Path) -> None:
    server = _server(lab, tmp_path, f"--pxe-multicast={GROUP}")

    status, reply_hex = _ask(lab, 0x4D430001)

    assert status == 0, f"no answer through the group\n{server.log_tail()}"
    reply = decode(bytes.fromhex(reply_hex))
    assert reply.message_type == MessageType.ACK
    assert reply.file == b"pxelinux.0"
    assert reply.siaddr == IPv4Address(lab.server_ip)
    vendor = dict(decode_suboptions(reply.get(Opt.VENDOR_SPECIFIC) or b""))
    assert vendor[BOOT_ITEM] == (LOCAL_USE_BASE + 1).to_bytes(2, "big") + bytes(2)
    acks = [ev for ev in server.events() if ev.get("decision") == "BOOT-ITEM-ACK"]
    assert acks, server.log_tail()
    assert (acks[0].get("port"), acks[0].get("to"), acks[0].get("item")) == ("4011", GROUP, "1")


def test_without_the_flag_the_group_is_not_heard(lab: Lab, tmp_path: Path) -> None:
    server = _server(lab, tmp_path)

    status, _ = _ask(lab, 0x4D430002)

    assert status == 1
    assert not [ev for ev in server.events() if ev.get("mac") == MAC], server.log_tail()
