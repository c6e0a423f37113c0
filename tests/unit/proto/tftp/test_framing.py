"""DATA framing: a window of blocks as the datagrams that leave, and the buffers they come from."""

from __future__ import annotations

import os

from hypothesis import given
from hypothesis import strategies as st

from netbootd.proto.tftp import SendBlocks
from netbootd.proto.tftp.framing import Datagram, across_chunks, block_datagrams, segments


def flat(datagram: Datagram) -> bytes:
    return b"".join(datagram) if isinstance(datagram, list) else bytes(datagram)


def window(first: int, last: int, blksize: int, size: int) -> SendBlocks:
    return SendBlocks(first, last, blksize, size)


def test_lock_step_block_is_one_buffer() -> None:
    content = os.urandom(1000)
    [(datagram, segment)] = block_datagrams(
        window(2, 2, 512, len(content)), lambda o, n: memoryview(content)[o : o + n], 1468
    )
    assert segment == 0
    assert not isinstance(datagram, list)
    assert bytes(datagram) == b"\x00\x03\x00\x02" + content[512:]


def test_window_is_gathered_with_offload_and_ends_short() -> None:
    content = os.urandom(3 * 100 + 40)
    sent = list(
        block_datagrams(
            window(1, 4, 100, len(content)), lambda o, n: memoryview(content)[o : o + n], 1468
        )
    )
    [(datagram, segment)] = sent
    assert segment == 104
    assert flat(datagram) == b"".join(
        [
            b"\x00\x03\x00\x01" + content[:100],
            b"\x00\x03\x00\x02" + content[100:200],
            b"\x00\x03\x00\x03" + content[200:300],
            b"\x00\x03\x00\x04" + content[300:],
        ]
    )


def test_window_ending_on_a_multiple_has_an_empty_last_block() -> None:
    content = os.urandom(200)
    [(datagram, segment)] = block_datagrams(
        window(2, 3, 100, len(content)), lambda o, n: memoryview(content)[o : o + n], 1468
    )
    assert segment == 104
    assert flat(datagram) == b"\x00\x03\x00\x02" + content[100:] + b"\x00\x03\x00\x03"


def test_blocks_beyond_the_mtu_leave_one_by_one() -> None:
    content = os.urandom(2 * 8192 + 5)
    sent = list(
        block_datagrams(
            window(1, 3, 8192, len(content)), lambda o, n: memoryview(content)[o : o + n], 1468
        )
    )
    assert [segment for _, segment in sent] == [0, 0, 0]
    assert [flat(d) for d, _ in sent] == [
        b"\x00\x03\x00\x01" + content[:8192],
        b"\x00\x03\x00\x02" + content[8192:16384],
        b"\x00\x03\x00\x03" + content[16384:],
    ]


def test_a_large_window_is_split_into_sends_the_kernel_takes() -> None:
    blksize = 1468
    blocks = 100
    content = os.urandom(blocks * blksize + 1)
    sent = list(
        block_datagrams(
            window(1, blocks + 1, blksize, len(content)),
            lambda o, n: memoryview(content)[o : o + n],
            1468,
        )
    )
    # At most 64 segments and 65000 octets per send: 44 blocks of 1472.
    assert [len(d) // 2 for d, _ in sent if isinstance(d, list)] == [44, 44, 13]
    numbers = [
        int.from_bytes(piece[2:4], "big") for d, _ in sent for piece in segments(d, blksize + 4)
    ]
    assert numbers == list(range(1, blocks + 2))


def test_block_numbers_roll_over() -> None:
    content = os.urandom(70000 * 8)
    [(datagram, _)] = block_datagrams(
        window(65535, 65537, 8, len(content)), lambda o, n: memoryview(content)[o : o + n], 1468
    )
    numbers = [int.from_bytes(p[2:4], "big") for p in segments(datagram, 12)]
    assert numbers == [65535, 0, 1]


@given(st.binary(min_size=0, max_size=300), st.integers(1, 64), st.data())
def test_across_chunks_is_the_plain_slice(content: bytes, chunk: int, data: st.DataObject) -> None:
    offset = data.draw(st.integers(0, len(content)))
    length = data.draw(st.integers(0, len(content) - offset))

    def piece(o: int, n: int) -> memoryview:
        assert o // chunk == (o + n - 1) // chunk or n == 0, "a piece crossed a chunk"
        return memoryview(content)[o : o + n]

    assert bytes(across_chunks(piece, chunk, offset, length)) == content[offset : offset + length]


def test_segments_cut_a_gathered_datagram() -> None:
    pieces = [bytes([n]) * 10 for n in range(5)]
    assert [bytes(s) for s in segments(list(pieces), 20)] == [
        pieces[0] + pieces[1],
        pieces[2] + pieces[3],
        pieces[4],
    ]
