"""TFTP as pure codecs and state machines: RFC 1350 with options (RFC 2347-2349, RFC 7440).

``packet`` is the wire codec, ``read`` the option negotiation and state machine of a download,
``write`` those of an upload, ``framing`` the DATA datagrams of a window, ``netascii`` the text
mode's conversion. The names most callers need are here too, so ``from netbootd.proto.tftp
import ReadSession`` works. Nothing in this package opens sockets or files, reads a clock or
logs.
"""

from __future__ import annotations

from netbootd.proto.tftp.packet import (
    BLKSIZE_DEFAULT,
    BLKSIZE_MAX,
    BLKSIZE_MIN,
    MAX_NAME_BYTES,
    WINDOWSIZE_MAX,
    Ack,
    Data,
    Error,
    ErrorCode,
    Mode,
    Opcode,
    OptionAck,
    Options,
    Packet,
    ReadRequest,
    TftpDecodeError,
    WriteRequest,
    decode,
    encode,
)
from netbootd.proto.tftp.read import (
    Action,
    Finish,
    Negotiated,
    Outcome,
    ReadSession,
    SendBlock,
    SendBlocks,
    SendError,
    SendOack,
    check_mode,
    negotiate,
    option_number,
    read_actions,
)

__all__ = [
    "BLKSIZE_DEFAULT",
    "BLKSIZE_MAX",
    "BLKSIZE_MIN",
    "MAX_NAME_BYTES",
    "WINDOWSIZE_MAX",
    "Ack",
    "Action",
    "Data",
    "Error",
    "ErrorCode",
    "Finish",
    "Mode",
    "Negotiated",
    "Opcode",
    "OptionAck",
    "Options",
    "Outcome",
    "Packet",
    "ReadRequest",
    "ReadSession",
    "SendBlock",
    "SendBlocks",
    "SendError",
    "SendOack",
    "TftpDecodeError",
    "WriteRequest",
    "check_mode",
    "decode",
    "encode",
    "negotiate",
    "option_number",
    "read_actions",
]
