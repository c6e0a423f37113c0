"""netascii conversion (RFC 1350 §1, RFC 764): CR LF ends a line, a bare CR is CR NUL."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from netbootd.proto.tftp.netascii import netascii_length, to_netascii

# Text, with the two octets the conversion is about far more often than chance would have them.
text = st.lists(st.sampled_from([b"a", b"\n", b"\r", b"\0", b"\r\n", b"\xff"])).map(b"".join)


def test_to_netascii() -> None:
    assert to_netascii(b"a\nb\rc\r\n") == b"a\r\nb\r\0c\r\0\r\n"
    assert to_netascii(b"") == b""


@given(text)
def test_length_is_the_converted_length(data: bytes) -> None:
    assert netascii_length(data) == len(to_netascii(data))


@given(text, text)
def test_pieces_convert_on_their_own(first: bytes, second: bytes) -> None:
    # What lets a file be converted as it streams: no octet's conversion depends on another's.
    assert to_netascii(first + second) == to_netascii(first) + to_netascii(second)
