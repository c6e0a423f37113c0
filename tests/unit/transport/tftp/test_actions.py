"""carry_out, the one interpreter of a read session's actions, with stand-ins for the file and
the socket."""

from __future__ import annotations

from netbootd.proto.tftp import (
    Error,
    Finish,
    OptionAck,
    Outcome,
    SendBlocks,
    SendError,
    SendOack,
    decode,
    encode,
)
from netbootd.proto.tftp.framing import Datagram
from netbootd.transport.tftp.actions import carry_out

CLIENT = ("10.0.0.1", 2000)


class Blocks:
    def __init__(self, content: bytes, *, ready: bool = True) -> None:
        self.content = content
        self.is_ready = ready
        self.advanced: list[int] = []

    def ready(self, offset: int, end: int) -> bool:
        return self.is_ready

    def view(self, offset: int, length: int) -> memoryview:
        return memoryview(self.content)[offset : offset + length]

    def advance(self, offset: int) -> None:
        self.advanced.append(offset)


class Outbox:
    def __init__(self, gso: int | None = None) -> None:
        self.gso_max_blksize = gso
        self.sent: list[tuple[bytes, tuple[str, int], int]] = []

    def send(self, datagram: Datagram, addr: tuple[str, int], segment: int = 0) -> None:
        flat = b"".join(datagram) if isinstance(datagram, list) else bytes(datagram)
        self.sent.append((flat, addr, segment))


def test_actions_are_sent_in_order_and_finish_ends() -> None:
    blocks, out = Blocks(b"x" * 700), Outbox()
    left = carry_out(
        [
            SendOack((("blksize", "512"),)),
            SendBlocks(1, 2, 512, 700),
            SendError(0, "bye"),
            Finish(Outcome.ERROR_SENT, "bye"),
            SendError(0, "never"),
        ],
        blocks,
        out,
        CLIENT,
    )
    assert left == Finish(Outcome.ERROR_SENT, "bye")
    assert [decode(d) for d, _, _ in out.sent] == [
        OptionAck((("blksize", "512"),)),
        decode(b"\x00\x03\x00\x01" + b"x" * 512),
        decode(b"\x00\x03\x00\x02" + b"x" * 188),
        Error(0, "bye"),
    ]
    assert {addr for _, addr, _ in out.sent} == {CLIENT}
    assert blocks.advanced == [0]


def test_a_window_of_blocks_leaves_segmented_when_allowed() -> None:
    out = Outbox(gso=1468)
    assert carry_out([SendBlocks(1, 3, 512, 2000)], Blocks(b"y" * 2000), out, CLIENT) == []
    [(datagram, _, segment)] = out.sent
    assert segment == 516 and len(datagram) == 3 * 516


def test_actions_wait_for_octets_not_yet_read() -> None:
    blocks, out = Blocks(b"z" * 100, ready=False), Outbox()
    actions = [SendOack((("tsize", "100"),)), SendBlocks(1, 1, 512, 100), SendError(0, "x")]
    left = carry_out(actions, blocks, out, CLIENT)
    assert left == actions[1:]
    assert [d for d, _, _ in out.sent] == [encode(OptionAck((("tsize", "100"),)))]
    assert blocks.advanced == []
