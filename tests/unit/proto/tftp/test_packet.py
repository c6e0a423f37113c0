"""The TFTP wire codec: golden vectors from the RFCs, malformed input, round-trip properties."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netbootd.proto.tftp import (
    Ack,
    Data,
    Error,
    ErrorCode,
    Opcode,
    OptionAck,
    Packet,
    ReadRequest,
    TftpDecodeError,
    WriteRequest,
    decode,
    encode,
)

# --------------------------------------------------------------------------------------------
# Golden vectors, laid out by hand from RFC 1350 §5 and RFC 2347 figures.

GOLDEN: list[tuple[bytes, Packet]] = [
    (
        b"\x00\x01pxelinux.0\x00octet\x00tsize\x000\x00blksize\x001408\x00",
        ReadRequest("pxelinux.0", "octet", (("tsize", "0"), ("blksize", "1408"))),
    ),
    (b"\x00\x01/boot/x\x00netascii\x00", ReadRequest("/boot/x", "netascii")),
    (b"\x00\x02upload.bin\x00octet\x00", WriteRequest("upload.bin", "octet")),
    (b"\x00\x03\x00\x01hello", Data(1, b"hello")),
    (b"\x00\x03\xff\xff", Data(65535, b"")),
    (b"\x00\x04\x00\x00", Ack(0)),
    (b"\x00\x04\x12\x34", Ack(0x1234)),
    (b"\x00\x05\x00\x01File not found\x00", Error(ErrorCode.FILE_NOT_FOUND, "File not found")),
    (b"\x00\x05\x00\x08\x00", Error(ErrorCode.OPTION_NEGOTIATION_FAILED, "")),
    (
        b"\x00\x06blksize\x001468\x00tsize\x0012345\x00",
        OptionAck((("blksize", "1468"), ("tsize", "12345"))),
    ),
]


@pytest.mark.parametrize(("wire", "packet"), GOLDEN)
def test_golden_decode(wire: bytes, packet: Packet) -> None:
    assert decode(wire) == packet


@pytest.mark.parametrize(("wire", "packet"), GOLDEN)
def test_golden_encode(wire: bytes, packet: Packet) -> None:
    assert encode(packet) == wire


def test_decode_normalises_case_of_mode_and_option_names() -> None:
    packet = decode(b"\x00\x01f\x00OCTET\x00BlkSize\x00512\x00TSIZE\x000\x00")
    assert packet == ReadRequest("f", "octet", (("blksize", "512"), ("tsize", "0")))


def test_decode_keeps_unknown_error_codes() -> None:
    packet = decode(b"\x00\x05\x00\x63oops\x00")
    assert packet == Error(99, "oops")


@pytest.mark.parametrize(
    "wire",
    [
        b"",
        b"\x00",
        b"\x00\x00",  # opcode 0
        b"\x00\x07x\x00",  # unknown opcode
        b"\xff\xff",
        b"\x00\x01",  # RRQ with nothing
        b"\x00\x01file",  # no NUL
        b"\x00\x01file\x00",  # no mode
        b"\x00\x01file\x00octet",  # mode without NUL
        b"\x00\x01file\x00\x00",  # empty mode
        b"\x00\x01file\x00octet\x00blksize\x00",  # option without value
        b"\x00\x01file\x00octet\x00\x00512\x00",  # empty option name
        b"\x00\x01file\x00octet\x00blksize\x00512\x00BLKSIZE\x00512\x00",  # duplicate
        b"\x00\x01file\x00oct\xe9t\x00",  # mode not ASCII
        b"\x00\x01file\x00octet\x00bl\xffk\x001\x00",  # option name not ASCII
        b"\x00\x01\xff\xfe\x00octet\x00",  # filename not UTF-8
        b"\x00\x01" + b"a" * 513 + b"\x00octet\x00",  # filename too long
        b"\x00\x03\x00",  # DATA without full block number
        b"\x00\x04\x00",  # short ACK
        b"\x00\x04\x00\x01\x00",  # long ACK
        b"\x00\x05\x00\x01",  # ERROR without message
        b"\x00\x05\x00\x01msg",  # ERROR message without NUL
        b"\x00\x05\x00\x01msg\x00junk\x00",  # ERROR with trailing strings
        b"\x00\x06",  # OACK without options
        b"\x00\x06\x00",  # OACK with an empty string only
        b"\x00\x06blksize\x00",  # OACK odd
    ],
)
def test_decode_rejects_malformed(wire: bytes) -> None:
    with pytest.raises(TftpDecodeError):
        decode(wire)


def test_decode_error_names_request_opcode() -> None:
    with pytest.raises(TftpDecodeError) as info:
        decode(b"\x00\x01file\x00")
    assert info.value.opcode is Opcode.RRQ
    assert info.value.code == ErrorCode.ILLEGAL_OPERATION
    with pytest.raises(TftpDecodeError) as info:
        decode(b"\x00\x09")
    assert info.value.opcode is None


def test_filename_limit_is_512_octets() -> None:
    name = "a" * 512
    assert decode(encode(ReadRequest(name, "octet"))) == ReadRequest(name, "octet")
    with pytest.raises(ValueError):
        encode(ReadRequest(name + "a", "octet"))


def test_encode_refuses_unencodable_packets() -> None:
    with pytest.raises(ValueError):
        encode(Ack(65536))
    with pytest.raises(ValueError):
        encode(Data(-1, b""))
    with pytest.raises(ValueError):
        encode(ReadRequest("a\0b", "octet"))
    with pytest.raises(ValueError):
        encode(OptionAck(()))


# --------------------------------------------------------------------------------------------
# Properties

_ascii_word = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=12
)
_names = _ascii_word.map(str.lower)
_values = st.text(alphabet=st.characters(min_codepoint=1, max_codepoint=0x7F), max_size=12)
_options = st.lists(st.tuples(_names, _values), max_size=6, unique_by=lambda kv: kv[0]).map(tuple)
_filenames = st.text(
    alphabet=st.characters(exclude_characters="\0", exclude_categories=["Cs"]), max_size=80
)
_blocks = st.integers(min_value=0, max_value=65535)

packets: st.SearchStrategy[Packet] = st.one_of(
    st.builds(ReadRequest, _filenames, _names, _options),
    st.builds(WriteRequest, _filenames, _names, _options),
    st.builds(Data, _blocks, st.binary(max_size=600)),
    st.builds(Ack, _blocks),
    st.builds(
        Error,
        st.integers(min_value=0, max_value=65535),
        st.text(alphabet=st.characters(min_codepoint=1, max_codepoint=0xFF), max_size=60),
    ),
    st.builds(
        OptionAck,
        st.lists(
            st.tuples(_names, _values), min_size=1, max_size=6, unique_by=lambda kv: kv[0]
        ).map(tuple),
    ),
)


@given(packets)
def test_round_trip(packet: Packet) -> None:
    assert decode(encode(packet)) == packet


@given(st.binary(max_size=700))
def test_decode_junk_raises_only_decode_error(junk: bytes) -> None:
    with contextlib.suppress(TftpDecodeError):
        decode(junk)


@given(st.sampled_from([1, 2, 5, 6]), st.binary(max_size=200))
def test_decode_junk_after_known_opcode(opcode: int, body: bytes) -> None:
    with contextlib.suppress(TftpDecodeError):
        decode(opcode.to_bytes(2, "big") + body)
