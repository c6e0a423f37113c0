"""DATA datagrams as they go on the wire: a window of blocks, framed without copying the file.

A read session asks for whole windows of blocks (:class:`~netbootd.proto.tftp.read.SendBlocks`,
RFC 7440); this module turns one into datagrams, each a DATA header (RFC 1350 §5) and its block,
as lists of buffers a gathering send puts together, grouped for UDP segmentation offload when
the blocks fit the path MTU.

Pure: buffers in, buffers out. This module must not open sockets or files, send, read a clock
or log; which socket option carries a segment size is the sender's business.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator

from netbootd.proto.tftp.packet import Error, ErrorCode, Opcode, encode
from netbootd.proto.tftp.read import SendBlocks

__all__ = [
    "UNKNOWN_TID",
    "Buffer",
    "Datagram",
    "across_chunks",
    "block_datagrams",
    "segments",
]

Buffer = bytes | bytearray | memoryview
# One buffer, or pieces that one send gathers into a datagram.
Datagram = Buffer | list[Buffer]

_DATA = int(Opcode.DATA)
_DATA_HEADER = struct.Struct("!HH")  # opcode, block number
# Linux takes at most 64 segments in one segmented send, and a send is one UDP datagram to it
# (at most 65,507 octets of payload).
_GSO_MAX_SEGMENTS = 64
_GSO_MAX_BYTES = 65000

# RFC 1350 §4: what a packet from another transfer ID gets; the transfer goes on.
UNKNOWN_TID = encode(Error(ErrorCode.UNKNOWN_TID, "unknown transfer ID"))


def block_datagrams(
    action: SendBlocks, view: Callable[[int, int], memoryview], gso_max_blksize: int | None
) -> Iterator[tuple[Datagram, int]]:
    """The DATA datagrams of a window, as (datagram, segment size) pairs.

    A datagram is one buffer, or a list of pieces the kernel gathers into one send (no copy
    here). With a segment size, that send leaves as several datagrams of that size (UDP
    segmentation offload); it is used when the blocks fit the path MTU
    (``blksize <= gso_max_blksize``). Segment size 0 means one datagram.
    """
    first, last, blksize, _ = action
    offset, end = action.offset, action.end
    if first == last:
        yield _DATA_HEADER.pack(_DATA, first & 0xFFFF) + view(offset, end - offset), 0
        return
    data = view(offset, end - offset)
    pack = _DATA_HEADER.pack
    parts: list[Buffer] = []
    position = 0
    for seq in range(first, last + 1):
        parts.append(pack(_DATA, seq & 0xFFFF))
        parts.append(data[position : position + blksize])
        position += blksize
    step = blksize + 4
    if gso_max_blksize is not None and blksize <= gso_max_blksize:
        per_send = 2 * min(_GSO_MAX_SEGMENTS, _GSO_MAX_BYTES // step)
        for start in range(0, len(parts), per_send):
            group = parts[start : start + per_send]
            yield group, (step if len(group) > 2 else 0)
    else:
        for start in range(0, len(parts), 2):
            yield parts[start : start + 2], 0


def segments(datagram: Datagram, segment: int) -> list[memoryview]:
    """The datagrams a segmented send would have made, one by one."""
    whole = memoryview(b"".join(datagram) if isinstance(datagram, list) else datagram)
    return [whole[start : start + segment] for start in range(0, len(whole), segment)]


def across_chunks(
    view: Callable[[int, int], memoryview], chunk: int, offset: int, length: int
) -> memoryview:
    """Octets that span chunks of ``chunk`` octets: each chunk's part, copied together."""
    pieces = []
    while length > 0:
        take = min(length, chunk - offset % chunk)
        pieces.append(view(offset, take))
        offset += take
        length -= take
    return memoryview(b"".join(pieces))
