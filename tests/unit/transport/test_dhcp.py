"""The DHCP socket edge under load: requests before new exchanges, a bounded queue, group commit.

The edge is driven in process with a stand-in for the socket; the service behind it is the real
one, with a lease store whose writes complete when the test says so.
"""

from __future__ import annotations

import asyncio
import logging
from ipaddress import IPv4Address, IPv4Network

import pytest

from netbootd.boot.leases import AddressRange, Lease, LeaseBook
from netbootd.boot.policy import BootPolicy
from netbootd.config import DhcpMode
from netbootd.proto.dhcp.codec import HEADER_SIZE, MAGIC_COOKIE, MessageType, decode, encode
from netbootd.proto.dhcp.wire import peek_message_type
from netbootd.services.dhcp.service import DhcpService
from netbootd.services.dhcp.settings import DhcpSettings
from netbootd.store.leases import StoreError
from netbootd.transport import dhcp as edge
from tests.helpers.dhcp_clients import request
from tests.helpers.dhcp_service import one_subnet

SERVER = IPv4Address("10.99.0.1")
RELAY = ("10.99.0.2", 67)


class SocketStandIn:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple[str, int]]] = []

    def sendto(self, data: bytes, address: tuple[str, int]) -> None:
        self.sent.append((data, address))

    def close(self) -> None:
        pass


class HeldStore:
    """Writes stay queued until :meth:`land` (or :meth:`fail`) completes them, in one batch."""

    def __init__(self) -> None:
        self.queued: list[tuple[Lease | IPv4Address, asyncio.Future[None]]] = []
        self.batches: list[int] = []

    def submit(self, change: Lease | IPv4Address) -> asyncio.Future[None]:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.queued.append((change, done))
        return done

    def land(self) -> None:
        self.batches.append(len(self.queued))
        for _, done in self.queued:
            done.set_result(None)
        self.queued = []

    def fail(self) -> None:
        for _, done in self.queued:
            done.set_exception(StoreError("disk full"))
        self.queued = []

    async def load(self) -> list[Lease]:
        return []

    async def close(self) -> None:
        pass


def make_server() -> tuple[edge.DhcpServer, HeldStore, SocketStandIn, edge._Endpoint]:
    store = HeldStore()
    network = IPv4Network("10.99.0.0/16")
    settings = DhcpSettings(
        mode=DhcpMode.AUTHORITATIVE,
        server=SERVER,
        network=network,
        subnets=one_subnet(network, AddressRange.parse("10.99.1.0-10.99.250.255")),
    )
    service = DhcpService(settings, BootPolicy({}, SERVER, 80), LeaseBook(), store)
    server = edge.DhcpServer(service, "lo", (67,))
    sock = SocketStandIn()
    endpoint = edge._Endpoint(67, sock, server.received)  # type: ignore[arg-type]
    server._endpoints.append(endpoint)
    return server, store, sock, endpoint


def mac(n: int) -> str:
    return "02:00:" + ":".join(f"{(n >> shift) & 0xFF:02x}" for shift in (24, 16, 8, 0))


def discover(n: int) -> bytes:
    return encode(request(MessageType.DISCOVER, mac=mac(n), xid=n, giaddr=RELAY[0]))


def request_for(offer: bytes) -> bytes:
    packet = decode(offer)
    return encode(
        request(
            MessageType.REQUEST,
            mac=packet.mac,
            xid=packet.xid,
            giaddr=RELAY[0],
            requested=str(packet.yiaddr),
            server_id=str(SERVER),
        )
    )


def kinds(sock: SocketStandIn) -> list[MessageType | int | None]:
    return [decode(data).message_type for data, _ in sock.sent]


async def turns(count: int = 1) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


async def offered(server: edge.DhcpServer, endpoint: edge._Endpoint, sock: SocketStandIn) -> bytes:
    """A DISCOVER from client 1 through the relay, and the OFFER it got."""
    server.received(endpoint, discover(1), RELAY)
    await turns(2)
    (offer,) = [data for data, _ in sock.sent]
    return offer


async def test_requests_are_answered_before_queued_discovers() -> None:
    server, store, sock, endpoint = make_server()
    for n in range(4):
        server.received(endpoint, discover(n), RELAY)
    await turns(2)
    offers = [data for data, _ in sock.sent]
    assert kinds(sock) == [MessageType.OFFER] * 4
    sock.sent.clear()

    # A flood of new clients arrives, then the four that were offered ask for their address.
    for n in range(100, 100 + 3 * edge.NEW_PER_TURN):
        server.received(endpoint, discover(n), RELAY)
    for offer in offers:
        server.received(endpoint, request_for(offer), RELAY)
    await turns(1)
    # One turn: every REQUEST went to the store, and only a turn's worth of new exchanges
    # was answered.
    assert len(store.queued) == 4
    assert kinds(sock) == [MessageType.OFFER] * edge.NEW_PER_TURN
    store.land()
    await turns(1)
    assert kinds(sock).count(MessageType.ACK) == 4
    assert store.batches == [4]  # the four leases went to disk in one batch
    await turns(4)
    assert kinds(sock).count(MessageType.OFFER) == 3 * edge.NEW_PER_TURN  # the rest, later
    await server.close()


async def test_a_full_queue_drops_its_oldest_new_exchange(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(edge, "MAX_QUEUED", 10)
    server, _, sock, endpoint = make_server()
    caplog.set_level(logging.WARNING, logger="netbootd.dhcp")
    for n in range(25):
        server.received(endpoint, discover(n), RELAY)
    await turns(3)
    answered = sorted(decode(data).xid for data, _ in sock.sent)
    assert answered == list(range(15, 25))  # the newest ten
    assert server.counters["dropped-busy"] == 15
    dropped_lines = [r for r in caplog.records if r.getMessage().startswith("dropped ")]
    assert len(dropped_lines) == 1, "a flood gets one warning per interval, not one per packet"
    await server.close()


async def test_no_ack_leaves_before_the_lease_is_durable() -> None:
    server, store, sock, endpoint = make_server()
    offer = await offered(server, endpoint, sock)
    sock.sent.clear()
    server.received(endpoint, request_for(offer), RELAY)
    await turns(3)
    assert sock.sent == [] and len(store.queued) == 1
    store.fail()
    await turns(2)
    assert sock.sent == []  # the store failed: no ACK at all
    assert server.all_counters()["REQUEST:ignored"] == 1
    server.received(endpoint, request_for(offer), RELAY)
    await turns(2)
    store.land()
    await turns(2)
    assert kinds(sock) == [MessageType.ACK]
    await server.close()


async def test_close_concludes_what_is_being_written() -> None:
    server, store, sock, endpoint = make_server()
    offer = await offered(server, endpoint, sock)
    server.received(endpoint, request_for(offer), RELAY)
    await turns(2)
    closing = asyncio.ensure_future(server.close())
    await turns(2)
    assert not closing.done()  # waits for the write
    store.land()
    await closing
    assert server.all_counters()["REQUEST:ACK"] == 1
    assert server.counters["unsent-closing"] == 1


async def test_a_failed_release_does_not_take_back_an_address_given_again() -> None:
    server, store, sock, endpoint = make_server()
    offer = await offered(server, endpoint, sock)
    server.received(endpoint, request_for(offer), RELAY)
    await turns(2)
    store.land()
    await turns(2)
    address = decode(offer).yiaddr
    release = request(MessageType.RELEASE, mac=mac(1), xid=9, ciaddr=str(address))
    server.received(endpoint, encode(release), RELAY)
    await turns(2)
    released = store.queued[:]  # the release's write, still on its way
    # Meanwhile another client asks for that address, and its write queues behind.
    other = request(
        MessageType.REQUEST, mac=mac(2), xid=10, giaddr=RELAY[0], requested=str(address),
        server_id=str(SERVER),
    )  # fmt: skip
    server.received(endpoint, encode(other), RELAY)
    await turns(2)
    assert len(store.queued) == 2
    # The release's batch fails, the other client's lands.
    released[0][1].set_exception(StoreError("database is locked"))
    store.queued = store.queued[1:]
    store.land()
    await turns(3)
    holder = server._service.book.at(address)
    assert holder is not None and holder.mac == mac(2)  # not put back to the first client
    assert kinds(sock)[-1] == MessageType.ACK


async def test_a_discover_dropped_under_load_is_never_decoded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(edge, "MAX_QUEUED", 2)
    server, _, sock, endpoint = make_server()
    broken = discover(1)[:-4] + bytes([60, 40, 1, 2])  # option 53 first, a truncated one later
    server.received(endpoint, broken, RELAY)
    assert server.counters["malformed"] == 0  # queued as it came, not decoded yet
    server.received(endpoint, discover(2), RELAY)
    server.received(endpoint, discover(3), RELAY)  # the queue is full: the oldest goes
    await turns(3)
    assert server.counters["dropped-busy"] == 1 and server.counters["malformed"] == 0
    assert sorted(decode(data).xid for data, _ in sock.sent) == [2, 3]


async def test_a_discover_with_its_message_type_further_on_is_answered() -> None:
    server, _, sock, endpoint = make_server()
    head = discover(5)[: HEADER_SIZE + len(MAGIC_COOKIE)]
    # Option 61 first, option 53 second: known only once decoded.
    client_id = b"\x01client-5"
    options = bytes([61, len(client_id)]) + client_id + bytes([53, 1, MessageType.DISCOVER, 255])
    wire = (head + options).ljust(300, b"\0")
    assert peek_message_type(wire) is None
    server.received(endpoint, wire, RELAY)
    await turns(2)
    assert kinds(sock) == [MessageType.OFFER]


async def test_answer_times_count_each_answer_sent_until_it_is_sent() -> None:
    """An OFFER is timed from its DISCOVER's arrival; an ACK that waits for the lease store
    until it is sent, the wait included."""
    server, store, sock, endpoint = make_server()
    offer = await offered(server, endpoint, sock)
    fast = server.answer_times()
    assert fast.count == 1 and fast.total < 0.025
    server.received(endpoint, request_for(offer), RELAY)
    await turns(2)
    assert server.answer_times().count == 1  # not sent yet
    await asyncio.sleep(0.03)
    store.land()
    await turns(2)
    times = server.answer_times()
    assert times.count == 2 == server.counters["sent"]
    slow = times.counts[times.bounds.index(0.05)] + sum(times.counts[times.bounds.index(0.1) :])
    assert slow == 1 and times.total >= 0.03
    await server.close()
