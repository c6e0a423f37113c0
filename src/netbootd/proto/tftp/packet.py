"""The TFTP wire codec: packets as frozen values, ``decode`` and ``encode``, and the option ranges.

Covers the packets of RFC 1350 (RRQ, WRQ, DATA, ACK, ERROR) and the OACK of RFC 2347, with the
option value ranges of RFC 2348 (blksize), RFC 2349 (timeout) and RFC 7440 (windowsize).

Pure: bytes in, packets out, and back. This module must not open sockets or files, read a
clock, log, or keep global state. Peer mistakes raise :class:`TftpDecodeError`; packets that
cannot go on the wire raise ``ValueError``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, StrEnum

__all__ = [
    "BLKSIZE_DEFAULT",
    "BLKSIZE_MAX",
    "BLKSIZE_MIN",
    "BLOCK_MOD",
    "MAX_NAME_BYTES",
    "TIMEOUT_MAX",
    "TIMEOUT_MIN",
    "WINDOWSIZE_MAX",
    "WINDOWSIZE_MIN",
    "Ack",
    "Data",
    "Error",
    "ErrorCode",
    "Mode",
    "Opcode",
    "OptionAck",
    "Options",
    "Packet",
    "ReadRequest",
    "TftpDecodeError",
    "WriteRequest",
    "decode",
    "encode",
]

# RFC 2348: the block size option ranges over 8..65464 octets; 512 is the RFC 1350 block.
BLKSIZE_MIN = 8
BLKSIZE_MAX = 65464
BLKSIZE_DEFAULT = 512
# RFC 2349 §"Timeout Interval Option": 1..255 seconds.
TIMEOUT_MIN = 1
TIMEOUT_MAX = 255
# RFC 7440 §3: 1..65535 blocks.
WINDOWSIZE_MIN = 1
WINDOWSIZE_MAX = 65535
# A filename longer than a whole RFC 1350 packet is not a name any boot client sends.
MAX_NAME_BYTES = 512
# Block numbers are 16 bits on the wire (RFC 1350 §5).
BLOCK_MOD = 0x10000


class Opcode(IntEnum):
    RRQ = 1
    WRQ = 2
    DATA = 3
    ACK = 4
    ERROR = 5
    OACK = 6


class ErrorCode(IntEnum):
    NOT_DEFINED = 0
    FILE_NOT_FOUND = 1
    ACCESS_VIOLATION = 2
    DISK_FULL = 3
    ILLEGAL_OPERATION = 4
    UNKNOWN_TID = 5
    FILE_EXISTS = 6
    NO_SUCH_USER = 7
    OPTION_NEGOTIATION_FAILED = 8  # RFC 2347


class Mode(StrEnum):
    NETASCII = "netascii"
    OCTET = "octet"
    MAIL = "mail"


class TftpDecodeError(ValueError):
    """A datagram that is not a well-formed TFTP packet.

    ``opcode`` is the opcode when the first two octets named a known one, so the receiver can
    decide whether to answer (a broken request deserves an ERROR; line noise does not).
    ``code`` is the TFTP error code to answer with, if answering.
    """

    def __init__(self, reason: str, opcode: Opcode | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.opcode = opcode
        self.code = ErrorCode.ILLEGAL_OPERATION


Options = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class ReadRequest:
    filename: str
    mode: str
    options: Options = ()


@dataclass(frozen=True, slots=True)
class WriteRequest:
    filename: str
    mode: str
    options: Options = ()


@dataclass(frozen=True, slots=True)
class Data:
    block: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Ack:
    block: int


@dataclass(frozen=True, slots=True)
class Error:
    # An int rather than ErrorCode: peers send codes outside the registry and we keep them.
    code: int
    message: str


@dataclass(frozen=True, slots=True)
class OptionAck:
    options: Options


Packet = ReadRequest | WriteRequest | Data | Ack | Error | OptionAck


# --------------------------------------------------------------------------------------------
# Decoding


def _split_strings(body: bytes, opcode: Opcode) -> list[bytes]:
    """Split a run of NUL-terminated strings; the run must end exactly on a NUL."""
    if not body.endswith(b"\0"):
        raise TftpDecodeError("string not terminated by NUL", opcode)
    return body[:-1].split(b"\0")


def _ascii(raw: bytes, what: str, opcode: Opcode) -> str:
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise TftpDecodeError(f"{what} is not ASCII", opcode) from None


def _decode_options(fields: list[bytes], opcode: Opcode) -> Options:
    if len(fields) % 2:
        raise TftpDecodeError("option without a value", opcode)
    seen: set[str] = set()
    pairs: list[tuple[str, str]] = []
    for i in range(0, len(fields), 2):
        # RFC 2347: option names are case-insensitive.
        name = _ascii(fields[i], "option name", opcode).lower()
        if not name:
            raise TftpDecodeError("empty option name", opcode)
        if name in seen:
            raise TftpDecodeError(f"duplicate option {name}", opcode)
        seen.add(name)
        pairs.append((name, _ascii(fields[i + 1], "option value", opcode)))
    return tuple(pairs)


def _decode_request(opcode: Opcode, body: bytes) -> ReadRequest | WriteRequest:
    fields = _split_strings(body, opcode)
    if len(fields) < 2:
        raise TftpDecodeError("request without a mode", opcode)
    raw_name, raw_mode = fields[0], fields[1]
    if len(raw_name) > MAX_NAME_BYTES:
        raise TftpDecodeError("filename too long", opcode)
    try:
        # RFC 1350 says netascii; UTF-8 is its superset and is what file systems hold today.
        filename = raw_name.decode("utf-8")
    except UnicodeDecodeError:
        raise TftpDecodeError("filename is not valid UTF-8", opcode) from None
    mode = _ascii(raw_mode, "mode", opcode).lower()
    if not mode:
        raise TftpDecodeError("empty mode", opcode)
    options = _decode_options(fields[2:], opcode)
    if opcode is Opcode.RRQ:
        return ReadRequest(filename, mode, options)
    return WriteRequest(filename, mode, options)


def decode(data: bytes) -> Packet:
    """Decode one datagram. Raises only :class:`TftpDecodeError`."""
    if len(data) < 2:
        raise TftpDecodeError("runt datagram")
    raw_opcode = int.from_bytes(data[:2], "big")
    try:
        opcode = Opcode(raw_opcode)
    except ValueError:
        raise TftpDecodeError(f"unknown opcode {raw_opcode}") from None
    body = data[2:]
    if opcode in (Opcode.RRQ, Opcode.WRQ):
        return _decode_request(opcode, body)
    if opcode is Opcode.DATA:
        if len(body) < 2:
            raise TftpDecodeError("DATA without a block number", opcode)
        return Data(int.from_bytes(body[:2], "big"), bytes(body[2:]))
    if opcode is Opcode.ACK:
        if len(body) != 2:
            raise TftpDecodeError("ACK is not 4 octets", opcode)
        return Ack(int.from_bytes(body, "big"))
    if opcode is Opcode.ERROR:
        if len(body) < 3:
            raise TftpDecodeError("ERROR too short", opcode)
        raw_code = int.from_bytes(body[:2], "big")
        fields = _split_strings(body[2:], opcode)
        if len(fields) != 1:
            raise TftpDecodeError("ERROR has data after its message", opcode)
        code: int
        try:
            code = ErrorCode(raw_code)
        except ValueError:
            code = raw_code
        # Peers put anything in messages; latin-1 maps every octet, so nothing is lost.
        return Error(code, fields[0].decode("latin-1"))
    # OACK
    fields = _split_strings(body, opcode)
    if fields == [b""]:
        raise TftpDecodeError("OACK without options", opcode)
    return OptionAck(_decode_options(fields, opcode))


# --------------------------------------------------------------------------------------------
# Encoding


def _cstring(text: str, encoding: str, errors: str = "strict") -> bytes:
    raw = text.encode(encoding, errors)
    if b"\0" in raw:
        raise ValueError(f"NUL inside a TFTP string: {text!r}")
    return raw + b"\0"


def _encode_options(options: Options) -> bytes:
    return b"".join(_cstring(n, "ascii") + _cstring(v, "ascii") for n, v in options)


def _block_number(block: int) -> bytes:
    if not 0 <= block < BLOCK_MOD:
        raise ValueError(f"block number out of range: {block}")
    return block.to_bytes(2, "big")


def encode(packet: Packet) -> bytes:
    """Encode one packet. Raises ``ValueError`` for a packet that cannot go on the wire."""
    match packet:
        case ReadRequest() | WriteRequest():
            opcode = Opcode.RRQ if isinstance(packet, ReadRequest) else Opcode.WRQ
            name = _cstring(packet.filename, "utf-8")
            if len(name) - 1 > MAX_NAME_BYTES:
                raise ValueError("filename too long")
            return (
                opcode.to_bytes(2, "big")
                + name
                + _cstring(packet.mode, "ascii")
                + _encode_options(packet.options)
            )
        case Data(block, payload):
            return Opcode.DATA.to_bytes(2, "big") + _block_number(block) + payload
        case Ack(block):
            return Opcode.ACK.to_bytes(2, "big") + _block_number(block)
        case Error(code, message):
            if not 0 <= code < BLOCK_MOD:
                raise ValueError(f"error code out of range: {code}")
            return (
                Opcode.ERROR.to_bytes(2, "big")
                + int(code).to_bytes(2, "big")
                + _cstring(message, "latin-1", "replace")
            )
        case OptionAck(options):
            if not options:
                # RFC 2347: an OACK acknowledges at least one option.
                raise ValueError("OACK needs at least one option")
            return Opcode.OACK.to_bytes(2, "big") + _encode_options(options)
    raise TypeError(f"not a TFTP packet: {packet!r}")
