"""The wire facts the socket edge and the service share (netbootd.proto.dhcp.wire)."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netbootd.proto.dhcp.codec import MessageType, encode
from netbootd.proto.dhcp.wire import (
    BROADCAST,
    DHCP_CLIENT_PORT,
    DHCP_SERVER_PORT,
    address_text,
    client_worker,
    peek_message_type,
    reply_destination,
    worker_of,
)
from tests.helpers.dhcp_clients import request


@given(st.integers(0, 2**32 - 1))
def test_address_text_is_the_dotted_quad(number: int) -> None:
    assert address_text(IPv4Address(number)) == str(IPv4Address(number))


@pytest.mark.parametrize(
    ("ciaddr", "giaddr", "mtype", "destination"),
    [
        # RFC 2131 §4.1: through the relay agent, to its server port, whatever the message.
        ("0.0.0.0", "10.0.5.1", MessageType.OFFER, ("10.0.5.1", DHCP_SERVER_PORT)),
        ("10.0.5.7", "10.0.5.1", MessageType.NAK, ("10.0.5.1", DHCP_SERVER_PORT)),
        # A NAK not relayed is broadcast, even to a client that has an address.
        ("10.99.0.7", "0.0.0.0", MessageType.NAK, (str(BROADCAST), DHCP_CLIENT_PORT)),
        # A client with an address (renewing, INFORM) is answered there.
        ("10.99.0.7", "0.0.0.0", MessageType.ACK, ("10.99.0.7", DHCP_CLIENT_PORT)),
        # One without: broadcast, which every client accepts.
        ("0.0.0.0", "0.0.0.0", MessageType.OFFER, (str(BROADCAST), DHCP_CLIENT_PORT)),
        ("0.0.0.0", "0.0.0.0", None, (str(BROADCAST), DHCP_CLIENT_PORT)),
    ],
)
def test_reply_destination_follows_rfc_2131_section_4_1(
    ciaddr: str, giaddr: str, mtype: MessageType | None, destination: tuple[str, int]
) -> None:
    address, port = reply_destination(
        request(MessageType.REQUEST, ciaddr=ciaddr, giaddr=giaddr), mtype
    )
    assert (str(address), port) == destination


def test_the_message_type_is_peeked_when_it_comes_first() -> None:
    assert peek_message_type(encode(request(MessageType.DISCOVER))) == MessageType.DISCOVER
    assert peek_message_type(encode(request(None))) is None  # BOOTP: no option 53
    assert peek_message_type(b"\x01" * 10) is None  # too short to tell


@given(st.binary(min_size=6, max_size=6), st.integers(1, 16))
def test_the_worker_of_a_datagram_is_the_worker_of_its_mac(octets: bytes, workers: int) -> None:
    mac = octets.hex(":")
    data = encode(request(MessageType.DISCOVER, mac=mac))
    assert worker_of(data, workers) == client_worker(mac, workers)
