"""DHCP load through a relay agent: many clients at once, every acknowledgement written down.

Run on a host of the lab network, it acts as a relay (RFC 1542): it binds UDP port 67 on its own
address, sends requests with ``giaddr`` set to that address, and hears the server's replies on
the same port. Each client has its own MAC (``<prefix>:xx:yy``) and no client identifier.

In the default mode every client does DISCOVER, OFFER, REQUEST, ACK; with ``--reboot FILE``
(lines ``<mac> <address>``) every client asks for the address it remembers, as a client in
INIT-REBOOT does (RFC 2131 §4.3.2). Up to ``--window`` clients are in flight at once; a
request without an answer is sent again after ``--timeout`` seconds.

Each ACK is written to ``--out`` as ``ACK <mac> <address>`` (a NAK as ``NAK <mac> -``) and
flushed at once, so the file tells what the relay had seen whenever the run is stopped.
"""

from __future__ import annotations

import argparse
import select
import socket
import sys
import time
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path
from typing import TextIO

from netbootd.proto.dhcp.codec import (
    DhcpDecodeError,
    DhcpPacket,
    MessageType,
    Op,
    Opt,
    decode,
    encode,
    ip_option,
)

DHCP_SERVER_PORT = 67


@dataclass
class Client:
    mac: str
    xid: int
    requested: IPv4Address | None = None  # the address to REQUEST, once known
    server_id: bytes | None = None  # option 54 of the OFFER, for a SELECTING REQUEST
    sent_at: float = 0.0
    tries: int = 0


def mac_of(prefix: str, index: int) -> str:
    return f"{prefix}:{index >> 8 & 0xFF:02x}:{index & 0xFF:02x}"


class Relay:
    def __init__(
        self, sock: socket.socket, relay: IPv4Address, server: tuple[str, int], out: TextIO
    ) -> None:
        self.sock = sock
        self.relay = relay
        self.server = server
        self.out = out
        self.active: dict[int, Client] = {}
        self.acked = 0
        self.naked = 0
        self.sent = 0

    def send(self, client: Client) -> None:
        options: list[tuple[int, bytes]]
        if client.requested is None:
            options = [(Opt.MESSAGE_TYPE, bytes([MessageType.DISCOVER]))]
        else:
            options = [
                (Opt.MESSAGE_TYPE, bytes([MessageType.REQUEST])),
                (Opt.REQUESTED_IP, ip_option(client.requested)),
            ]
            if client.server_id is not None:
                options.append((Opt.SERVER_ID, client.server_id))
        packet = DhcpPacket(
            op=Op.BOOTREQUEST,
            xid=client.xid,
            chaddr=bytes.fromhex(client.mac.replace(":", "")),
            hops=1,
            giaddr=self.relay,
            options=tuple(options),
        )
        self.sock.sendto(encode(packet), self.server)
        client.sent_at = time.monotonic()
        client.tries += 1
        self.sent += 1

    def start(self, client: Client) -> None:
        self.active[client.xid] = client
        self.send(client)

    def receive(self, data: bytes) -> None:
        try:
            reply = decode(data)
        except DhcpDecodeError:
            return
        client = self.active.get(reply.xid)
        if reply.op != Op.BOOTREPLY or client is None or reply.mac != client.mac:
            return
        kind = reply.message_type
        if kind == MessageType.OFFER and client.requested is None:
            client.requested = reply.yiaddr
            client.server_id = reply.get(Opt.SERVER_ID)
            client.tries = 0
            self.send(client)
        elif kind == MessageType.ACK and client.requested is not None:
            self.out.write(f"ACK {client.mac} {reply.yiaddr}\n")
            self.out.flush()
            del self.active[reply.xid]
            self.acked += 1
        elif kind == MessageType.NAK and client.requested is not None:
            self.out.write(f"NAK {client.mac} -\n")
            self.out.flush()
            del self.active[reply.xid]
            self.naked += 1

    def retransmit(self, timeout: float) -> float:
        """Send again what waited longer than ``timeout``; return when the next one is due."""
        now = time.monotonic()
        due = now + timeout
        for client in self.active.values():
            if now - client.sent_at >= timeout:
                self.send(client)
            due = min(due, client.sent_at + timeout)
        return due


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--relay", required=True, help="this host's address: bound, and giaddr")
    parser.add_argument("--server", required=True, help="the DHCP server's address")
    parser.add_argument("--out", type=Path, required=True, help="where ACK lines go")
    parser.add_argument("--mac-prefix", default="02:00:00:01", help="first four MAC octets")
    parser.add_argument("--clients", type=int, default=1000, help="how many distinct clients")
    parser.add_argument("--reboot", type=Path, help="'<mac> <address>' lines: INIT-REBOOT these")
    parser.add_argument("--window", type=int, default=32, help="clients in flight at once")
    parser.add_argument("--timeout", type=float, default=1.0, help="seconds before a resend")
    parser.add_argument("--deadline", type=float, default=60.0, help="seconds before giving up")
    args = parser.parse_args(argv)

    xid_base = int.from_bytes(bytes.fromhex(args.mac_prefix.replace(":", ""))[-2:], "big") << 16
    pending: list[Client]
    if args.reboot is not None:
        pending = []
        for index, line in enumerate(args.reboot.read_text().splitlines()):
            mac, address = line.split()
            pending.append(Client(mac, xid_base | index, requested=IPv4Address(address)))
    else:
        pending = [
            Client(mac_of(args.mac_prefix, index), xid_base | index)
            for index in range(args.clients)
        ]
    pending.reverse()

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.bind((args.relay, DHCP_SERVER_PORT))
    started = time.monotonic()
    deadline = started + args.deadline
    with args.out.open("a", encoding="ascii") as out:
        relay = Relay(sock, IPv4Address(args.relay), (args.server, DHCP_SERVER_PORT), out)
        print(f"relay {args.relay} -> {args.server}: {len(pending)} clients", flush=True)
        while (pending or relay.active) and time.monotonic() < deadline:
            while pending and len(relay.active) < args.window:
                relay.start(pending.pop())
            due = relay.retransmit(args.timeout)
            ready, _, _ = select.select([sock], [], [], max(0.0, due - time.monotonic()))
            if ready:
                relay.receive(sock.recv(4096))
    elapsed = time.monotonic() - started
    print(
        f"acked={relay.acked} naked={relay.naked} sent={relay.sent} "
        f"unanswered={len(relay.active) + len(pending)} seconds={elapsed:.1f}",
        flush=True,
    )
    return 0 if not pending and not relay.active else 1


if __name__ == "__main__":
    sys.exit(main())
