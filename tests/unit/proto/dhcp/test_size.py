"""Fitting a reply into the client's maximum message size: order, essentials, any size."""

from __future__ import annotations

import dataclasses
from ipaddress import IPv4Address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netbootd.proto.dhcp.codec import (
    DhcpDecodeError,
    DhcpPacket,
    MessageType,
    Opt,
    decode,
    encode,
    u16_option,
)
from netbootd.proto.dhcp.size import ESSENTIAL, fit, leave_out_order, max_message_size

MAC = bytes.fromhex("525400123456")


def _reply(*options: tuple[int, bytes], file: bytes = b"") -> DhcpPacket:
    return DhcpPacket(
        op=2,
        xid=7,
        chaddr=MAC,
        yiaddr=IPv4Address("10.0.0.5"),
        file=file,
        options=((Opt.MESSAGE_TYPE, bytes([MessageType.OFFER])), *options),
    )


def test_a_reply_that_fits_is_left_alone() -> None:
    packet = _reply((Opt.SERVER_ID, bytes(4)), (Opt.DNS, bytes(8)))
    assert fit(packet, 576, ()) == (packet, ())


def test_overload_comes_before_leaving_anything_out() -> None:
    # 3 x 100 octets do not fit the 308-octet options field, but do with file and sname.
    packet = _reply(
        (Opt.SERVER_ID, bytes(4)), (120, bytes(100)), (121, bytes(100)), (122, bytes(100))
    )
    fitted, left_out = fit(packet, 576, ())
    assert left_out == ()
    assert fitted is packet
    wire = encode(fitted, max_size=576)
    assert wire[240:246] == bytes([53, 1, 2, 52, 1, 1])  # options spill into file
    assert decode(wire) == packet


def test_unasked_options_go_first_then_the_end_of_the_clients_list() -> None:
    options = [(Opt.SERVER_ID, bytes(4)), (6, b"a" * 4), (42, b"b" * 4), (15, b"c"), (200, b"d")]
    assert leave_out_order(options, [15, 42, 6]) == [200, 6, 42, 15]
    assert leave_out_order(options, []) == [200, 15, 42, 6]
    assert Opt.SERVER_ID not in leave_out_order(options, [54])


def test_essentials_stay_and_the_least_wanted_leave() -> None:
    big = bytes(250)
    packet = _reply(
        (Opt.SERVER_ID, bytes(4)),
        (Opt.LEASE_TIME, bytes(4)),
        (Opt.SUBNET_MASK, bytes(4)),
        (Opt.BOOTFILE, b"pxelinux.0"),
        (6, big),  # asked for first
        (42, big),  # asked for last
        (200, big),  # not asked for
        file=b"pxelinux.0",
    )
    fitted, left_out = fit(packet, 576, [6, 42])
    assert left_out == (200, 42)
    assert [code for code, _ in fitted.options] == [53, 54, 51, 1, 67, 6]
    assert len(encode(fitted, max_size=576)) <= 576 - 28


def test_essentials_that_cannot_fit_are_our_error() -> None:
    packet = _reply((Opt.SERVER_ID, bytes(4)), (Opt.VENDOR_SPECIFIC, bytes(900)))
    with pytest.raises(ValueError, match="essential"):
        fit(packet, 576, ())


_ESSENTIAL_CODES = sorted(ESSENTIAL - {Opt.MESSAGE_TYPE})
_OPTIONAL_CODES = st.integers(1, 254).filter(lambda code: code not in ESSENTIAL and code != 52)
_NO_NUL = st.binary(max_size=128).map(lambda raw: raw.replace(b"\0", b""))


@st.composite
def replies(draw: st.DrawFn) -> DhcpPacket:
    # Essentials are kept to what a real reply carries (a few short values, one long-ish file
    # name or PXE option); the optional ones may be anything, and many.
    essentials = draw(
        st.dictionaries(
            st.sampled_from(_ESSENTIAL_CODES), st.binary(max_size=40), min_size=1, max_size=6
        )
    )
    optional = draw(
        st.dictionaries(
            _OPTIONAL_CODES, st.binary(min_size=30, max_size=600), min_size=2, max_size=20
        )
    )
    mixed = list(essentials.items()) + list(optional.items())
    order = draw(st.permutations(range(len(mixed))))
    return DhcpPacket(
        op=2,
        xid=draw(st.integers(0, 0xFFFFFFFF)),
        chaddr=draw(st.binary(max_size=16)),
        sname=draw(_NO_NUL.map(lambda raw: raw[:64])),
        file=draw(_NO_NUL),
        options=((53, bytes([2])), *(mixed[i] for i in order)),
    )


@given(replies(), st.integers(576, 9000) | st.integers(576, 1500), st.data())
def test_any_reply_fits_any_size_and_keeps_its_essentials(
    packet: DhcpPacket, max_size: int, data: st.DataObject
) -> None:
    # The client's list names some of the reply's options, in any order, and some others.
    codes = [code for code, _ in packet.options]
    requested = data.draw(st.lists(st.sampled_from(codes) | st.integers(1, 254), max_size=30))
    fitted, left_out = fit(packet, max_size, requested)
    wire = encode(fitted, max_size=max_size)
    assert len(wire) <= max_size - 28
    back = decode(wire)
    kept = dict(back.options)
    for code, value in packet.options:
        if code in ESSENTIAL:
            assert kept[code] == value
        elif code in left_out:
            assert code not in kept
        else:
            assert kept[code] == value
    assert dataclasses.replace(back, options=()) == dataclasses.replace(fitted, options=())
    # Nothing is left out while the rest would have fitted without it.
    assert left_out == () or not _encodes(packet, max_size)


def _encodes(packet: DhcpPacket, max_size: int) -> bool:
    try:
        encode(packet, max_size=max_size)
    except ValueError:
        return False
    return True


@pytest.mark.parametrize(("option", "size"), [(None, 576), (300, 576), (1500, 1500)])
def test_the_maximum_message_size_is_option_57_never_below_576(
    option: int | None, size: int
) -> None:
    # RFC 2132 §9.10: option 57 says the largest message; 576 is the least any client takes.
    options = () if option is None else ((Opt.MAX_MESSAGE_SIZE, u16_option(option)),)
    assert max_message_size(dataclasses.replace(_reply(), options=options)) == size


def test_a_malformed_option_57_is_the_peers_error() -> None:
    broken = dataclasses.replace(_reply(), options=((Opt.MAX_MESSAGE_SIZE, b"\x05"),))
    with pytest.raises(DhcpDecodeError):
        max_message_size(broken)
