"""DHCP workers' shares: each pool split exactly once, each client to one worker, the kernel's
choice and the workers' own the same, caps divided, lease books disjoint."""

from __future__ import annotations

import dataclasses
import os
import socket
import sys
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netbootd.boot.leases import AddressRange, Lease, LeaseState
from netbootd.boot.subnets import Subnet
from netbootd.logs.buffer import ATOMIC_WRITE, _chunks
from netbootd.proto.dhcp.codec import MessageType, encode
from netbootd.proto.dhcp.wire import client_worker, worker_of
from netbootd.services.dhcp.limits import DhcpLimits
from netbootd.services.dhcp.shares import Share
from tests.helpers.dhcp_clients import request

NET = IPv4Network("10.96.0.0/16")


def lease(address: str, mac: str = "52:54:00:00:00:01") -> Lease:
    return Lease(IPv4Address(address), f"mac:{mac}", mac, LeaseState.BOUND, 2000.0)


@given(
    first=st.integers(0x0A600001, 0x0A60FF00),
    size=st.integers(1, 5000),
    count=st.integers(1, 16),
)
def test_the_parts_cover_each_pool_exactly_once(first: int, size: int, count: int) -> None:
    last = min(first + size - 1, 0x0A60FFFE)
    pool = AddressRange(IPv4Address(first), IPv4Address(last))
    subnet = Subnet(NET, (pool,))
    parts = [subnet.share(index, count).pools for index in range(count)]
    addresses = [int(a) for part in parts for r in part for a in r]
    assert addresses == list(range(first, last + 1))  # in order, none twice, none missing
    sizes = [sum(r.size for r in part) for part in parts]
    assert max(sizes) - min(sizes) <= 1  # as even as it can be


def test_a_small_pool_leaves_some_workers_without_a_part() -> None:
    subnet = Subnet(NET, (AddressRange.parse("10.96.1.1-10.96.1.2"),))
    assert [len(subnet.share(i, 3).pools) for i in range(3)] == [0, 1, 1]
    with pytest.raises(ValueError, match="share 3 of 3"):
        subnet.share(3, 3)


@given(mac=st.binary(min_size=6, max_size=6), count=st.integers(1, 16))
def test_the_kernel_and_the_worker_pick_the_same_worker(mac: bytes, count: int) -> None:
    text = ":".join(f"{b:02x}" for b in mac)
    wire = encode(request(MessageType.DISCOVER, mac=text))
    assert worker_of(wire, count) == client_worker(text, count) == mac[5] % count


def test_a_runt_and_an_odd_address_go_to_the_first_worker() -> None:
    assert worker_of(b"\x01" * 20, 4) == 0
    assert client_worker("01:02:03", 4) == 0
    assert client_worker("01:02:03:04:05:zz", 4) == 0


def test_the_caps_are_divided_rounding_up() -> None:
    limits = DhcpLimits(max_offers=4096, max_offers_per_pool=1023, max_leases=1)
    assert Share(1, 2).limits(limits) == DhcpLimits(2048, 512, 1)
    assert Share(0, 3).limits(DhcpLimits(max_leases=None)).max_leases is None


def test_each_lease_is_in_one_book() -> None:
    pool = AddressRange.parse("10.96.1.0-10.96.1.99")
    subnets = (Subnet(NET, (pool,)),)
    leases = [
        lease("10.96.1.0"),  # the first part of the pool
        lease("10.96.1.49"),
        lease("10.96.1.50"),  # the second part
        lease("10.96.1.99"),
        lease("10.96.7.7", "52:54:00:00:00:04"),  # outside the pools: by its client, 4 % 2
        lease("10.96.7.8", "52:54:00:00:00:05"),
    ]
    books = [Share(i, 2).owned(leases, subnets) for i in range(2)]
    owners = [[x in book for book in books] for x in leases]
    assert owners == [
        [True, False],
        [True, False],
        [False, True],
        [False, True],
        [True, False],
        [False, True],
    ]
    with pytest.raises(ValueError, match="worker 2 of 2"):
        Share(2, 2)


def test_log_writes_stay_whole_lines_under_the_atomic_size() -> None:
    lines = [f"line {n} " + "x" * (n % 300) for n in range(500)]
    chunks = _chunks(lines)
    assert "".join(chunks) == "\n".join(lines) + "\n"
    assert all(len(c.encode()) <= ATOMIC_WRITE and c.endswith("\n") for c in chunks)
    long = "y" * (ATOMIC_WRITE + 10)
    assert _chunks(["a", long, "b"]) == ["a\n", long + "\n", "b\n"]
    assert _chunks(["é" * 3000, "é" * 3000]) == ["é" * 3000 + "\n", "é" * 3000 + "\n"]


@pytest.mark.skipif(sys.platform != "linux", reason="SO_ATTACH_REUSEPORT_CBPF is Linux's")
def test_the_kernel_steers_by_client_over_loopback() -> None:
    from netbootd.transport.dhcp import _steer_by_client

    sockets = []
    for _ in range(2):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", sockets[0].getsockname()[1] if sockets else 0))
        sock.setblocking(False)
        sockets.append(sock)
    _steer_by_client(sockets[0], 2)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    port = sockets[0].getsockname()[1]
    try:
        for last in range(8):
            wire = encode(request(MessageType.DISCOVER, mac=f"52:54:00:00:00:{last:02x}"))
            sender.sendto(wire, ("127.0.0.1", port))
        got: list[list[int]] = [[], []]
        for index, sock in enumerate(sockets):
            sock.settimeout(0.5)
            for _ in range(4):
                got[index].append(sock.recv(2048)[33])
        assert got == [[0, 2, 4, 6], [1, 3, 5, 7]]
    finally:
        for sock in [*sockets, sender]:
            sock.close()


def test_config_takes_workers_in_authoritative_mode_only() -> None:
    from netbootd.cli import config_from_args, make_parser
    from netbootd.config import ConfigError

    base = ["serve", "--interface=lo", "--root=/srv"]
    parser = make_parser()
    args = parser.parse_args([*base, "--dhcp-range=10.0.0.10-10.0.0.20", "--dhcp-workers=4"])
    assert config_from_args(args).dhcp_workers == 4
    proxy = parser.parse_args([*base, "--proxy", "--dhcp-workers=2"])
    with pytest.raises(ConfigError, match="dhcp-workers is only used by authoritative DHCP"):
        config_from_args(proxy)
    many = parser.parse_args([*base, "--dhcp-range=10.0.0.10-10.0.0.20", "--dhcp-workers=99"])
    with pytest.raises(ConfigError, match=r"--dhcp-workers: .*16"):
        config_from_args(many)


async def test_a_worker_naks_an_address_of_another_workers_part() -> None:
    from netbootd.services.dhcp.service import DhcpService
    from tests.helpers.dhcp_service import ask, make_service, mtype

    service: DhcpService = make_service()[0]
    service.settings = dataclasses.replace(
        service.settings, subnets=Share(1, 2).subnets(service.settings.subnets)
    )
    # The pool is .100-.101: worker 1 of 2 has .101 alone.
    back = request(MessageType.REQUEST, mac="52:54:00:00:00:01", requested="10.99.0.100")
    nak = await ask(service, back)
    assert mtype(nak) == MessageType.NAK
    assert nak is not None
    assert nak.packet.get(56) == b"10.99.0.100 is not in worker 1 of 2's part of the pool"


DIGEST = """
import pathlib, sys
from netbootd.cli import config_from_args, make_parser
from netbootd.workers import config_digest
file = pathlib.Path(sys.argv[1])
args = make_parser().parse_args([
    "serve", "--interface=lo", "--root=/srv", f"--config={file}",
    "--dhcp-range=10.0.0.10-10.0.0.20", "--dhcp-workers=2", "--dhcp-option=42=10.0.0.1",
    "--pxe-service=bios,Linux,pxelinux.0", "--pxe-multicast=239.1.1.1", "--boot=uefi=x.efi",
])
config = config_from_args(args)
assert " at 0x" not in repr(config), repr(config)
print(config_digest(config))
"""


def test_the_config_digest_is_the_same_in_every_process(tmp_path: Path) -> None:
    """A worker compares its configuration with worker 0's by digest: the digest must not
    depend on the process (object addresses, hash seeds)."""
    import subprocess

    file = tmp_path / "netbootd.toml"
    file.write_text(
        '[[hosts]]\nmac = "52:54:00:00:00:01"\naddress = "10.0.0.5"\nhostname = "a"\n'
        '[[subnets]]\nnetwork = "10.1.0.0/24"\npools = ["10.1.0.10-10.1.0.20"]\n'
        'routers = ["10.1.0.1"]\n'
    )
    digests = set()
    for seed in ("1", "2", "3"):
        ran = subprocess.run(
            [sys.executable, "-c", DIGEST, str(file)],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
            check=True,
        )
        digests.add(ran.stdout.strip())
    assert len(digests) == 1, digests
