"""The pieces of the threaded TFTP read path that need no socket: chunked file reads, busy-poll
places."""

from __future__ import annotations

import os

import pytest

from netbootd.transport.tftp import pump as tftp_pump
from netbootd.transport.tftp.pump import PollSlots
from tests.helpers.files import Octets


def test_file_blocks_read_whole_chunks_and_span_them() -> None:
    blksize = 1000
    chunk = blksize * (tftp_pump.READ_CHUNK // blksize)
    content = os.urandom(2 * chunk + 10)
    opened = Octets(content)
    blocks = tftp_pump._FileBlocks(opened, blksize)
    assert bytes(blocks.view(0, blksize)) == content[:blksize]
    assert bytes(blocks.view(chunk - 500, 1000)) == content[chunk - 500 : chunk + 500]
    assert bytes(blocks.view(2 * chunk, 10)) == content[2 * chunk :]
    assert opened.reads == [(0, chunk), (chunk, chunk), (2 * chunk, 10)]


def test_file_blocks_refuse_a_file_that_shrank() -> None:
    content = os.urandom(tftp_pump.READ_CHUNK + 100)
    blocks = tftp_pump._FileBlocks(Octets(content, shrink_to=1000), 512)
    with pytest.raises(tftp_pump._ReadFailed, match="file changed during transfer"):
        blocks.view(0, 512)


def test_file_blocks_name_a_read_error() -> None:
    blocks = tftp_pump._FileBlocks(Octets(b"x" * 100, fail=True), 512)
    with pytest.raises(tftp_pump._ReadFailed, match="read error: Input/output error"):
        blocks.view(0, 100)


def test_poll_slots_are_counted() -> None:
    slots = PollSlots(2)
    assert slots.take() and slots.take()
    assert not slots.take()
    slots.give()
    assert slots.free == 1
    assert slots.take()
    assert slots.free == 0
