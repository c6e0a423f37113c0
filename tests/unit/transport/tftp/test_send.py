"""The one send path: segmented sends, the fallback where the kernel refuses them, a full
buffer, and a send lost for good; over a stand-in socket."""

from __future__ import annotations

import errno
import socket
from typing import Any

from netbootd.transport.tftp.send import UDP_SEGMENT, from_stranger, send

CLIENT = ("10.0.0.1", 2000)


class Sock:
    """Takes sends like a socket; refuses segment sizes, or fills up, or fails, as told."""

    def __init__(self, *, offload: bool = True, room: int = 1000, fail: int = 0) -> None:
        self.offload = offload
        self.room = room
        self.fail = fail
        self.sent: list[tuple[bytes, int]] = []

    def sendmsg(self, buffers: list[Any], ancillary: Any, flags: int, addr: Any) -> int:
        segment = 0
        for level, kind, value in ancillary:
            assert (level, kind) == (socket.SOL_UDP, UDP_SEGMENT)
            segment = int.from_bytes(value, "little")
            if not self.offload:
                raise OSError(errno.EINVAL, "Invalid argument")
        return self._take(b"".join(bytes(b) for b in buffers), segment)

    def sendto(self, data: Any, addr: Any) -> int:
        return self._take(bytes(data), 0)

    def _take(self, data: bytes, segment: int) -> int:
        if self.fail:
            raise OSError(self.fail, "unreachable")
        if self.room <= 0:
            raise BlockingIOError
        self.room -= 1
        self.sent.append((data, segment))
        return len(data)


def run(sock: Sock, datagram: Any, segment: int) -> tuple[list[Any], list[str]]:
    told: list[str] = []
    pending = send(
        sock,  # type: ignore[arg-type]
        datagram,
        CLIENT,
        segment,
        no_offload=lambda: told.append("no offload"),
        failed=lambda addr, exc: told.append(f"failed {addr[1]} {exc.errno}"),
    )
    return pending, told


def test_segmented_send_is_one_call() -> None:
    sock = Sock()
    assert run(sock, [b"ab", b"cd"], 2) == ([], [])
    assert sock.sent == [(b"abcd", 2)]


def test_refused_offload_sends_the_same_datagrams_one_by_one() -> None:
    sock = Sock(offload=False)
    assert run(sock, [b"ab", b"cd", b"e"], 2) == ([], ["no offload"])
    assert sock.sent == [(b"ab", 0), (b"cd", 0), (b"e", 0)]


def test_a_full_buffer_hands_back_the_rest_in_order() -> None:
    sock = Sock(offload=False, room=1)
    pending, told = run(sock, b"abcdef", 2)
    assert told == ["no offload"]
    assert sock.sent == [(b"ab", 0)]
    assert [(bytes(d), s) for d, s in pending] == [(b"cd", 0), (b"ef", 0)]
    pending, _ = run(Sock(room=0), b"xy", 0)
    assert pending == [(b"xy", 0)]


def test_a_send_lost_for_good_is_reported_not_raised() -> None:
    sock = Sock(fail=errno.EHOSTUNREACH)
    assert run(sock, b"xy", 0) == ([], [f"failed 2000 {errno.EHOSTUNREACH}"])


def test_stranger() -> None:
    assert not from_stranger(CLIENT, CLIENT)
    assert not from_stranger(("10.0.0.1", 2000, 0, 0), CLIENT)
    assert from_stranger(("10.0.0.1", 2001), CLIENT)
