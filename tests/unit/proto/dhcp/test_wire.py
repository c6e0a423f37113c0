"""The wire facts the socket edge and the service share (netbootd.proto.dhcp.wire)."""

from __future__ import annotations

from ipaddress import IPv4Address

from hypothesis import given
from hypothesis import strategies as st

from netbootd.proto.dhcp.wire import address_text


@given(st.integers(0, 2**32 - 1))
def test_address_text_is_the_dotted_quad(number: int) -> None:
    assert address_text(IPv4Address(number)) == str(IPv4Address(number))
