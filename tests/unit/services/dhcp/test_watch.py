"""ServerWatch: which replies heard on the client port are another server's, and when to name it."""

from __future__ import annotations

from ipaddress import IPv4Address

from netbootd.proto.dhcp.codec import DhcpPacket, MessageType, Opt
from netbootd.services.dhcp.watch import ServerWatch

OWN = IPv4Address("10.99.0.1")
OTHER = IPv4Address("10.99.0.2")
MAC = bytes.fromhex("525400123456")


def reply(
    server: IPv4Address | None, kind: MessageType | None = MessageType.OFFER, *, op: int = 2
) -> DhcpPacket:
    options: list[tuple[int, bytes]] = []
    if kind is not None:
        options.append((Opt.MESSAGE_TYPE, bytes([kind])))
    if server is not None:
        options.append((Opt.SERVER_ID, server.packed))
    return DhcpPacket(
        op=op, xid=7, chaddr=MAC, yiaddr=IPv4Address("10.99.0.150"), options=tuple(options)
    )


def test_own_replies_and_requests_are_not_another_server() -> None:
    watch = ServerWatch(OWN)
    assert watch.reply(reply(OWN), "10.99.0.1", 0) is None  # our broadcast, heard back
    assert watch.reply(reply(None), "10.99.0.1", 0) is None  # ours, without option 54
    assert watch.reply(reply(OTHER, MessageType.DISCOVER, op=1), "10.99.0.2", 0) is None
    assert watch.servers == {}


def test_another_server_is_named_then_counted_until_the_quiet_period_ends() -> None:
    watch = ServerWatch(OWN, repeat_after=600)
    first = watch.reply(reply(OTHER), "10.99.0.2", 100)
    assert first is not None and first.name
    assert (first.server, first.source, first.message) == (OTHER, "10.99.0.2", "OFFER")
    assert (first.client, str(first.address), first.times) == (
        "52:54:00:12:34:56",
        "10.99.0.150",
        1,
    )
    again = watch.reply(reply(OTHER, MessageType.ACK), "10.99.0.2", 200)
    assert again is not None and not again.name and again.times == 2
    later = watch.reply(reply(OTHER, MessageType.NAK), "10.99.0.2", 700)
    assert later is not None and later.name and later.message == "NAK"
    assert watch.servers == {OTHER: 3}


def test_a_relayed_reply_is_known_by_its_server_identifier() -> None:
    watch = ServerWatch(OWN)
    other = watch.reply(reply(OTHER), "10.99.0.254", 0)
    assert other is not None and other.server == OTHER and other.source == "10.99.0.254"


def test_bootp_and_broken_identifiers_fall_back_to_the_source() -> None:
    watch = ServerWatch(OWN)
    bootp = watch.reply(reply(None, None), "10.99.0.3", 0)
    assert bootp is not None
    assert (bootp.server, bootp.message) == (IPv4Address("10.99.0.3"), "BOOTREPLY")
    broken = DhcpPacket(
        op=2, xid=1, chaddr=MAC, options=((Opt.MESSAGE_TYPE, b"\x02"), (Opt.SERVER_ID, b"\x01"))
    )
    heard = watch.reply(broken, "10.99.0.4", 0)
    assert heard is not None and heard.server == IPv4Address("10.99.0.4")
    unknown = DhcpPacket(op=2, xid=2, chaddr=MAC, options=((Opt.MESSAGE_TYPE, b"\x63"),))
    odd = watch.reply(unknown, "10.99.0.5", 0)
    assert odd is not None and odd.message == "type 99"


def test_a_probe_is_a_broadcast_discover_from_a_made_up_address() -> None:
    watch = ServerWatch(OWN)
    probe = watch.probe()
    assert probe.op == 1 and probe.message_type == MessageType.DISCOVER
    assert probe.broadcast  # so that every server broadcasts its OFFER, which the watch hears
    assert probe.chaddr[0] & 0b11 == 0b10  # locally administered, unicast
    assert probe.chaddr[5] == 0  # with DHCP workers, a client of worker 0, which sends it
    assert probe.get(Opt.REQUESTED_IP) is None and probe.get(Opt.CLIENT_ID) is None
    assert watch.is_probe(probe)
    assert not watch.is_probe(reply(OTHER))
    assert watch.probe().xid != probe.xid or watch.probe().xid != probe.xid
    assert ServerWatch(OWN).probe_mac != watch.probe_mac


def test_an_answer_to_the_probe_names_the_server_as_such() -> None:
    watch = ServerWatch(OWN)
    probe = watch.probe()
    offer = DhcpPacket(
        op=2,
        xid=probe.xid,
        chaddr=probe.chaddr,
        yiaddr=IPv4Address("10.99.0.151"),
        options=((Opt.MESSAGE_TYPE, bytes([MessageType.OFFER])), (Opt.SERVER_ID, OTHER.packed)),
    )
    heard = watch.reply(offer, "10.99.0.2", 0)
    assert heard is not None and heard.to_probe and heard.server == OTHER
    ordinary = watch.reply(reply(OTHER), "10.99.0.2", 1)
    assert ordinary is not None and not ordinary.to_probe


def test_made_up_server_identifiers_do_not_grow_the_watch_without_end() -> None:
    watch = ServerWatch(OWN)
    for n in range(3000):
        server = IPv4Address(int(IPv4Address("192.0.2.0")) + n)
        assert watch.reply(reply(server), str(server), n) is not None
    assert len(watch.servers) == 1024
    assert IPv4Address(int(IPv4Address("192.0.2.0")) + 2999) in watch.servers
