"""Noticing another DHCP server on the segment.

Two servers handing out addresses on one network is the classic network-boot failure: a client
takes whichever offer comes first, and may boot from the wrong place or not at all. In
authoritative mode netbootd also listens on the client port (68), where other servers'
broadcast replies arrive, and says so for each other server it hears: its address, what it
sent and to whom, once per quiet period, counted every time.

Listening alone hears only the replies other servers broadcast. So netbootd also asks, now and
then: a probe is a DISCOVER of its own, from a made-up hardware address, with the broadcast bit
set, to which every server on the segment answers with a broadcast OFFER. The probe asks for
nothing after the offer, so no other server binds an address for it; netbootd's own service
recognises it and stays silent.

This module judges replies and builds probes; it owns no socket and writes no log line.
"""

from __future__ import annotations

import secrets
from collections import deque
from dataclasses import dataclass
from ipaddress import IPv4Address

from netbootd.proto.dhcp.codec import DhcpDecodeError, DhcpPacket, MessageType, Op, Opt, decode_ip

__all__ = ["REPEAT_AFTER", "OtherServer", "ServerWatch"]

BOOTREPLY = 2
_BROADCAST_FLAG = 0x8000
# The probe's parameter request list: what a plain client asks for (mask, routers, DNS).
_PROBE_PARAMETERS = bytes((1, 3, 6))
# A server still answering is named again after this many seconds of not being named.
REPEAT_AFTER = 600.0
MAX_SERVERS = 1024  # other servers remembered at once


@dataclass(frozen=True, slots=True)
class OtherServer:
    """A reply heard from a server that is not this one."""

    server: IPv4Address  # its server identifier (option 54), else the packet's source
    source: str  # where the datagram came from (a relay, or the server itself)
    message: str  # OFFER, ACK, NAK, or BOOTREPLY for BOOTP
    client: str  # the client's hardware address
    address: IPv4Address  # what it gave the client (yiaddr)
    times: int  # replies heard from that server so far
    name: bool  # whether to name it now: first heard, or not named for a while
    to_probe: bool = False  # the reply answers netbootd's own probe


@dataclass(slots=True)
class _Heard:
    times: int = 0
    named_at: float | None = None


class ServerWatch:
    """Other servers' replies, by server: which to name, and when."""

    def __init__(self, own: IPv4Address, *, repeat_after: float = REPEAT_AFTER) -> None:
        self._own = own
        self._repeat_after = repeat_after
        self._heard: dict[IPv4Address, _Heard] = {}
        # A locally administered, unicast address (IEEE 802: bit 1 set, bit 0 clear). Its last
        # octet is 0: with DHCP workers, that makes the probe a client of worker 0, the one
        # that sends it and knows it for its own; the others leave it alone.
        self.probe_mac = bytes((0x02,)) + secrets.token_bytes(4) + bytes(1)
        self._probe_xids: deque[int] = deque(maxlen=16)  # the latest probes

    def probe(self) -> DhcpPacket:
        """A new probe: a broadcast DISCOVER from the probe's hardware address."""
        xid = secrets.randbits(32)
        self._probe_xids.append(xid)
        return DhcpPacket(
            op=Op.BOOTREQUEST,
            xid=xid,
            chaddr=self.probe_mac,
            flags=_BROADCAST_FLAG,
            options=(
                (Opt.MESSAGE_TYPE, bytes((MessageType.DISCOVER,))),
                (Opt.PARAMETER_LIST, _PROBE_PARAMETERS),
            ),
        )

    def is_probe(self, packet: DhcpPacket) -> bool:
        """Whether ``packet`` is one of this watch's probes (which the service must not answer)."""
        return packet.chaddr == self.probe_mac

    @property
    def servers(self) -> dict[IPv4Address, int]:
        """Every other server heard, with the number of its replies."""
        return {server: heard.times for server, heard in self._heard.items()}

    def reply(self, packet: DhcpPacket, source: str, now: float) -> OtherServer | None:
        """The other server this reply came from, if another server sent it.

        Replies of this server (its own broadcasts come back to it) and anything that is not a
        reply are not another server's.
        """
        if packet.op != BOOTREPLY:
            return None
        server = _server_id(packet)
        if server is None:
            try:
                server = IPv4Address(source)
            except ValueError:
                return None
        if server == self._own or source == str(self._own):
            return None
        heard = self._heard.get(server)
        if heard is None:
            if len(self._heard) >= MAX_SERVERS:
                # Replies with made-up server identifiers must not grow this without end: the
                # server heard of first is forgotten (and named again if it speaks again).
                del self._heard[next(iter(self._heard))]
            heard = self._heard[server] = _Heard()
        heard.times += 1
        name = heard.named_at is None or now - heard.named_at >= self._repeat_after
        if name:
            heard.named_at = now
        kind = packet.message_type
        if isinstance(kind, MessageType):
            message = kind.name
        else:
            message = "BOOTREPLY" if kind is None else f"type {kind}"
        return OtherServer(
            server=server,
            source=source,
            message=message,
            client=packet.chaddr.hex(":"),
            address=packet.yiaddr,
            times=heard.times,
            name=name,
            to_probe=packet.chaddr == self.probe_mac and packet.xid in self._probe_xids,
        )


def _server_id(packet: DhcpPacket) -> IPv4Address | None:
    raw = packet.get(Opt.SERVER_ID)
    if raw is None:
        return None
    try:
        return decode_ip(raw)
    except DhcpDecodeError:
        return None
