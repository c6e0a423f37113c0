"""Write-request option negotiation and the write-session state machine, without sockets."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netbootd.proto.tftp import (
    Ack,
    Data,
    Error,
    ErrorCode,
    Finish,
    Negotiated,
    OptionAck,
    Outcome,
    Packet,
    ReadRequest,
    ReadSession,
    SendBlock,
    SendBlocks,
    SendError,
    SendOack,
    WriteRequest,
)
from netbootd.proto.tftp.write import (
    Complete,
    SendAck,
    WriteAction,
    WriteBlock,
    WriteSession,
    negotiate_write,
)

# --------------------------------------------------------------------------------------------
# negotiate_write


def nego(options: tuple[tuple[str, str], ...], max_size: int = 10_000) -> Negotiated | Error:
    return negotiate_write(options, max_blksize=1468, max_windowsize=16, max_size=max_size)


def test_negotiate_write_nothing() -> None:
    assert nego(()) == Negotiated()


def test_negotiate_write_echoes_client_tsize_in_request_order() -> None:
    request = (
        ("windowsize", "8"),
        ("tsize", "4096"),
        ("blksize", "9000"),
        ("timeout", "3"),
        ("rollover", "0"),  # unknown: ignored
    )
    assert nego(request) == Negotiated(
        blksize=1468,
        timeout=3,
        windowsize=8,
        tsize=4096,
        oack_options=(
            ("windowsize", "8"),
            ("tsize", "4096"),
            ("blksize", "1468"),
            ("timeout", "3"),
        ),
    )


def test_negotiate_write_tsize_zero_is_a_size() -> None:
    assert nego((("tsize", "0"),)) == Negotiated(tsize=0, oack_options=(("tsize", "0"),))


def test_negotiate_write_tsize_up_to_the_limit() -> None:
    assert nego((("tsize", "10000"),)) == Negotiated(
        tsize=10000, oack_options=(("tsize", "10000"),)
    )


def test_negotiate_write_refuses_oversize_tsize() -> None:
    answer = nego((("tsize", "10001"), ("blksize", "1024")))
    assert isinstance(answer, Error)
    assert answer.code == ErrorCode.DISK_FULL


@pytest.mark.parametrize("value", ["", "-1", "+5", " 5", "1_0", "x", "1" * 21])
def test_negotiate_write_ignores_malformed_tsize(value: str) -> None:
    assert nego((("tsize", value), ("blksize", "1024"))) == Negotiated(
        blksize=1024, oack_options=(("blksize", "1024"),)
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [("timeout", "0"), ("timeout", "256"), ("windowsize", "0"), ("blksize", "7")],
)
def test_negotiate_write_ignores_out_of_range(name: str, value: str) -> None:
    assert nego(((name, value),)) == Negotiated()


def test_negotiate_write_caps_windowsize() -> None:
    answer = nego((("windowsize", "100"),))
    assert isinstance(answer, Negotiated)
    assert answer.windowsize == 16
    assert answer.oack_options == (("windowsize", "16"),)


def test_negotiate_write_rejects_bad_server_limits() -> None:
    with pytest.raises(ValueError):
        negotiate_write((), max_blksize=7, max_windowsize=1, max_size=0)
    with pytest.raises(ValueError):
        negotiate_write((), max_blksize=512, max_windowsize=0, max_size=0)
    with pytest.raises(ValueError):
        negotiate_write((), max_blksize=512, max_windowsize=1, max_size=-1)


# --------------------------------------------------------------------------------------------
# WriteSession, step by step


def session(
    *,
    blksize: int = 512,
    windowsize: int = 1,
    oack: tuple[tuple[str, str], ...] = (),
    max_size: int = 1 << 30,
    retries: int = 3,
) -> WriteSession:
    negotiated = Negotiated(blksize=blksize, windowsize=windowsize, oack_options=oack)
    return WriteSession(negotiated, max_size=max_size, retransmit_timeout=1.0, max_retries=retries)


def writes(actions: list[WriteAction]) -> list[int]:
    return [a.offset for a in actions if isinstance(a, WriteBlock)]


def acks(actions: list[WriteAction]) -> list[int]:
    return [a.block for a in actions if isinstance(a, SendAck)]


def test_plain_transfer() -> None:
    s = session()
    assert s.start(0.0) == [SendAck(0)]
    assert s.deadline == 1.0
    one, two, three = b"a" * 512, b"b" * 512, b"c" * 276
    assert s.receive(Data(1, one), 0.1) == [WriteBlock(0, one), SendAck(1)]
    assert s.receive(Data(2, two), 0.2) == [WriteBlock(512, two), SendAck(2)]
    assert not s.complete
    assert s.receive(Data(3, three), 0.3) == [WriteBlock(1024, three), Complete(), SendAck(3)]
    assert s.complete
    assert not s.done
    assert s.bytes_received == 1300
    # The dally lasts one retransmit timeout and then ends well.
    assert s.deadline == pytest.approx(1.3)
    assert s.timeout(1.2) == []
    assert s.timeout(1.3) == [Finish(Outcome.OK)]
    assert s.done
    assert s.deadline is None
    assert s.receive(Data(3, three), 1.4) == []


def test_transfer_with_options() -> None:
    oack = (("blksize", "1024"), ("tsize", "1500"))
    s = session(blksize=1024, oack=oack)
    assert s.start(0.0) == [SendOack(oack)]
    assert s.negotiated.blksize == 1024
    one, two = bytes(1024), b"x" * 476
    assert s.receive(Data(1, one), 0.1) == [WriteBlock(0, one), SendAck(1)]
    assert s.receive(Data(2, two), 0.2) == [WriteBlock(1024, two), Complete(), SendAck(2)]
    assert s.bytes_received == 1500


def test_exact_multiple_ends_with_empty_block() -> None:
    s = session(blksize=8)
    s.start(0.0)
    assert s.receive(Data(1, b"12345678"), 0.1) == [WriteBlock(0, b"12345678"), SendAck(1)]
    assert not s.complete
    assert s.receive(Data(2, b""), 0.2) == [WriteBlock(8, b""), Complete(), SendAck(2)]
    assert s.complete
    assert s.bytes_received == 8


def test_zero_byte_file() -> None:
    s = session()
    s.start(0.0)
    assert s.receive(Data(1, b""), 0.1) == [WriteBlock(0, b""), Complete(), SendAck(1)]
    assert s.complete


def test_duplicate_data_is_acked_again_not_written_again() -> None:
    s = session()
    s.start(0.0)
    block = b"d" * 512
    assert writes(s.receive(Data(1, block), 0.1)) == [0]
    # Our ACK 1 was lost; the client sends DATA 1 again.
    assert s.receive(Data(1, block), 1.0) == [SendAck(1)]
    assert s.bytes_received == 512
    assert writes(s.receive(Data(2, block), 1.1)) == [512]
    # A stray old block: the answer is where we stand, not the old number.
    assert s.receive(Data(1, block), 1.2) == [SendAck(2)]
    assert s.bytes_received == 1024


def test_old_block_before_data_1_repeats_the_oack() -> None:
    oack = (("blksize", "1024"),)
    s = session(blksize=1024, oack=oack)
    s.start(0.0)
    # A bare ACK 0 would tell the client its options were refused (RFC 2347).
    assert s.receive(Data(0, b""), 0.1) == [SendOack(oack)]


def test_lost_final_ack_is_answered_during_the_dally() -> None:
    s = session()
    s.start(0.0)
    s.receive(Data(1, b"a" * 512), 0.1)
    final = s.receive(Data(2, b"end"), 0.2)
    assert final == [WriteBlock(512, b"end"), Complete(), SendAck(2)]
    # The final ACK was lost: the client resends its last DATA, and again.
    assert s.receive(Data(2, b"end"), 0.7) == [SendAck(2)]
    assert s.receive(Data(2, b"end"), 0.9) == [SendAck(2)]
    assert s.bytes_received == 515
    assert not s.done
    # The dally is bounded by the first deadline; retransmissions do not extend it.
    assert s.timeout(1.2) == [Finish(Outcome.OK)]
    assert s.done
    assert s.complete


def test_complete_is_emitted_once() -> None:
    s = session(blksize=8)
    actions = s.start(0.0)
    actions += s.receive(Data(1, b"x"), 0.1)
    for t in (0.2, 0.3, 0.4):
        actions += s.receive(Data(1, b"x"), t)
    actions += s.timeout(10.0)
    assert actions.count(Complete()) == 1
    assert actions[-1] == Finish(Outcome.OK)


def test_window_acks_once_per_window() -> None:
    s = session(blksize=8, windowsize=4, oack=(("windowsize", "4"),))
    s.start(0.0)
    got: list[WriteAction] = []
    for n in range(1, 9):
        got += s.receive(Data(n, bytes(8)), 0.1)
    assert acks(got) == [4, 8]
    assert writes(got) == [8 * i for i in range(8)]
    # A short block ends the file in the middle of a window and is acknowledged at once.
    assert acks(s.receive(Data(9, b"z"), 0.2)) == [9]
    assert s.complete


def test_window_with_lost_block() -> None:
    s = session(blksize=8, windowsize=4, oack=(("windowsize", "4"),))
    s.start(0.0)
    block = bytes(range(8))
    got: list[WriteAction] = []
    for n in (1, 2, 3, 4):
        got += s.receive(Data(n, block), 0.1)
    assert acks(got) == [4]
    # Window 5..8; DATA 6 is lost.
    assert s.receive(Data(5, block), 0.2) == [WriteBlock(32, block)]
    # The gap: acknowledge the in-order point (RFC 7440 §4), and drop the block.
    assert s.receive(Data(7, block), 0.2) == [SendAck(5)]
    # The rest of the same gap is dropped without another identical ACK.
    assert s.receive(Data(8, block), 0.2) == []
    assert s.bytes_received == 40
    # The client restarts its window after 5: 6..9, all accepted, acknowledged at 9.
    got = []
    for n in (6, 7, 8, 9):
        got += s.receive(Data(n, block), 0.3)
    assert writes(got) == [40, 48, 56, 64]
    assert acks(got) == [9]
    assert s.bytes_received == 72


def test_gap_answer_rearms_after_progress() -> None:
    s = session(blksize=8, windowsize=4, oack=(("windowsize", "4"),))
    s.start(0.0)
    assert s.receive(Data(2, bytes(8)), 0.1) == [SendAck(0)]
    assert s.receive(Data(3, bytes(8)), 0.1) == []
    assert writes(s.receive(Data(1, bytes(8)), 0.2)) == [0]
    assert s.receive(Data(3, bytes(8)), 0.2) == [SendAck(1)]


@pytest.mark.parametrize("blksize", [8, 512])
def test_rollover_past_65535_blocks(blksize: int) -> None:
    total = 65536 + 300
    s = session(blksize=blksize, oack=(("blksize", str(blksize)),))
    s.start(0.0)
    block = b"r" * blksize
    for seq in range(1, total):
        wire = seq % 65536
        assert s.receive(Data(wire, block), 0.1) == [
            WriteBlock((seq - 1) * blksize, block),
            SendAck(wire),
        ]
    # A duplicate of block 65535 after the wrap is old, not new.
    assert s.receive(Data(65535, block), 0.2) == [SendAck((total - 1) % 65536)]
    last = s.receive(Data(total % 65536, b"end"), 0.3)
    assert last == [WriteBlock((total - 1) * blksize, b"end"), Complete(), SendAck(total % 65536)]
    assert s.bytes_received == (total - 1) * blksize + 3


def test_timeout_resends_oack_while_waiting_for_data_1() -> None:
    oack = (("blksize", "1024"),)
    s = session(blksize=1024, oack=oack)
    s.start(0.0)
    assert s.timeout(0.5) == []
    assert s.timeout(1.0) == [SendOack(oack)]
    assert s.deadline == 2.0


def test_timeout_resends_ack_0_without_options() -> None:
    s = session()
    s.start(0.0)
    assert s.timeout(1.0) == [SendAck(0)]


def test_timeout_resends_last_ack() -> None:
    s = session(blksize=8, windowsize=4, oack=(("windowsize", "4"),))
    s.start(0.0)
    s.receive(Data(1, bytes(8)), 0.1)
    s.receive(Data(2, bytes(8)), 0.2)
    # The rest of the window never came: tell the client where to restart (RFC 7440 §4).
    assert s.timeout(1.2) == [SendAck(2)]


def test_retries_exhausted() -> None:
    s = session(retries=2)
    s.start(0.0)
    assert s.timeout(1.0) == [SendAck(0)]
    assert s.timeout(2.0) == [SendAck(0)]
    assert s.timeout(3.0) == [Finish(Outcome.TIMED_OUT)]
    assert s.done
    assert s.timeout(4.0) == []
    assert s.receive(Data(1, b""), 4.0) == []


def test_progress_resets_retries() -> None:
    s = session(retries=1)
    s.start(0.0)
    assert s.timeout(1.0) == [SendAck(0)]
    s.receive(Data(1, bytes(512)), 1.5)
    assert s.timeout(2.5) == [SendAck(1)]
    assert s.timeout(3.5) == [Finish(Outcome.TIMED_OUT)]


def test_duplicates_do_not_reset_retries() -> None:
    s = session(retries=1)
    s.start(0.0)
    s.receive(Data(1, bytes(512)), 0.1)
    assert s.timeout(1.1) == [SendAck(1)]
    s.receive(Data(1, bytes(512)), 1.5)
    assert s.timeout(2.1) == [Finish(Outcome.TIMED_OUT)]


def test_oversize_data_is_disk_full() -> None:
    s = session(max_size=1000)
    s.start(0.0)
    assert writes(s.receive(Data(1, bytes(512)), 0.1)) == [0]
    answer = s.receive(Data(2, bytes(512)), 0.2)
    assert answer[0] == SendError(ErrorCode.DISK_FULL, "disk full or allocation exceeded")
    assert isinstance(answer[1], Finish)
    assert answer[1].outcome is Outcome.ERROR_SENT
    assert len(answer) == 2
    assert s.done
    assert not s.complete
    assert s.bytes_received == 512


def test_file_of_exactly_max_size_fits() -> None:
    s = session(blksize=8, max_size=16)
    s.start(0.0)
    s.receive(Data(1, bytes(8)), 0.1)
    s.receive(Data(2, bytes(8)), 0.1)
    assert s.receive(Data(3, b""), 0.1) == [WriteBlock(16, b""), Complete(), SendAck(3)]


def test_payload_over_blksize_is_illegal() -> None:
    s = session(blksize=8)
    s.start(0.0)
    answer = s.receive(Data(1, bytes(9)), 0.1)
    assert answer[0] == SendError(ErrorCode.ILLEGAL_OPERATION, "illegal TFTP operation")
    assert isinstance(answer[1], Finish)
    assert answer[1].outcome is Outcome.ERROR_SENT
    assert s.done
    assert s.bytes_received == 0


@pytest.mark.parametrize("message", ["disk on fire", ""])
def test_client_error_ends_session(message: str) -> None:
    s = session()
    s.start(0.0)
    s.receive(Data(1, bytes(512)), 0.1)
    text = message or "code 0"
    assert s.receive(Error(0, message), 0.2) == [Finish(Outcome.CLIENT_ERROR, text)]
    assert s.done
    assert not s.complete


@pytest.mark.parametrize(
    "packet",
    [Ack(1), ReadRequest("x", "octet"), WriteRequest("x", "octet"), OptionAck((("a", "b"),))],
)
def test_illegal_packet_ends_session(packet: Packet) -> None:
    s = session()
    s.start(0.0)
    answer = s.receive(packet, 0.1)
    assert answer[0] == SendError(ErrorCode.ILLEGAL_OPERATION, "illegal TFTP operation")
    assert isinstance(answer[1], Finish)
    assert answer[1].outcome is Outcome.ERROR_SENT
    assert s.done


def test_abort() -> None:
    s = session()
    s.start(0.0)
    assert s.abort(ErrorCode.DISK_FULL, "no space") == [
        SendError(ErrorCode.DISK_FULL, "no space"),
        Finish(Outcome.ERROR_SENT, "no space"),
    ]
    assert s.done
    assert s.abort(ErrorCode.DISK_FULL, "again") == []


def test_abort_during_the_dally() -> None:
    # The caller could not put the completed file in place: the client must hear about it.
    s = session()
    s.start(0.0)
    s.receive(Data(1, b"x"), 0.1)
    assert s.abort(ErrorCode.FILE_EXISTS, "exists") == [
        SendError(ErrorCode.FILE_EXISTS, "exists"),
        Finish(Outcome.ERROR_SENT, "exists"),
    ]


def test_misuse_raises() -> None:
    s = session()
    with pytest.raises(RuntimeError):
        s.receive(Data(1, b""), 0.0)
    s.start(0.0)
    with pytest.raises(RuntimeError):
        s.start(0.0)
    negotiated = Negotiated()
    with pytest.raises(ValueError):
        WriteSession(negotiated, max_size=-1, retransmit_timeout=1.0, max_retries=1)
    with pytest.raises(ValueError):
        WriteSession(negotiated, max_size=0, retransmit_timeout=0.0, max_retries=1)
    with pytest.raises(ValueError):
        WriteSession(negotiated, max_size=0, retransmit_timeout=1.0, max_retries=-1)


# --------------------------------------------------------------------------------------------
# Whole transfers over a lossy channel

DELIVER, DROP, DUPLICATE = 0, 1, 2


class Receiver:
    """Carries out a WriteSession's storage actions on a buffer, checking their contract."""

    def __init__(self, session: WriteSession) -> None:
        self.session = session
        self.buffer = bytearray()
        self.offsets: set[int] = set()
        self.completions = 0
        self.finish: Finish | None = None

    def carry_out(self, actions: list[WriteAction]) -> list[SendAck | SendOack]:
        replies: list[SendAck | SendOack] = []
        for action in actions:
            match action:
                case WriteBlock(offset, payload):
                    assert self.completions == 0, "write after Complete"
                    assert offset not in self.offsets, "offset written twice"
                    assert offset == len(self.buffer), "writes arrive in file order"
                    self.offsets.add(offset)
                    self.buffer[offset : offset + len(payload)] = payload
                case Complete():
                    self.completions += 1
                    assert self.session.complete
                case SendAck() | SendOack():
                    replies.append(action)
                case Finish():
                    self.finish = action
                case _:
                    raise AssertionError(f"unexpected {action!r}")
        return replies


def channel(fates: Iterator[int], packets: list[Packet]) -> list[Packet]:
    out: list[Packet] = []
    for packet in packets:
        fate = next(fates, DELIVER)
        if fate != DROP:
            out.append(packet)
        if fate == DUPLICATE:
            out.append(packet)
    return out


def as_wire(replies: list[SendAck | SendOack]) -> list[Packet]:
    # To the sender an OACK means what ACK 0 means: send DATA 1 on.
    return [Ack(r.block) if isinstance(r, SendAck) else Ack(0) for r in replies]


def upload(data: bytes, blksize: int, window: int, fates: Iterator[int]) -> Receiver:
    """A simple RFC 7440 sender uploading ``data`` through a channel that drops and repeats.

    Each round the sender sends the window after the highest ACK it has heard, once it has
    heard anything at all. A round that brought it nothing new counts as a timeout on both
    sides. Once ``fates`` runs out every packet gets through, so the upload must finish.
    """
    oack = (("blksize", str(blksize)), ("windowsize", str(window)))
    negotiated = Negotiated(blksize=blksize, windowsize=window, oack_options=oack)
    s = WriteSession(negotiated, max_size=len(data), retransmit_timeout=1.0, max_retries=10_000)
    rx = Receiver(s)
    total = len(data) // blksize + 1
    started = False  # the sender has heard the OACK (or any ACK)
    acked = 0  # highest block the sender has heard acknowledged, absolute
    now = 0.0
    to_sender = channel(fates, as_wire(rx.carry_out(s.start(now))))
    for _ in range(100_000):
        if s.done:
            break
        progress = False
        for packet in to_sender:
            assert isinstance(packet, Ack)
            seq = acked + (packet.block - acked) % 65536
            if not started or acked < seq <= min(acked + window, total):
                progress = True
                started = True
                acked = max(acked, seq)
        to_sender = []
        now += 0.01
        if not progress:
            now += 1.0
            to_sender = channel(fates, as_wire(rx.carry_out(s.timeout(now))))
        if not started or acked == total:
            continue
        window_end = min(acked + window, total)
        datas: list[Packet] = [
            Data(seq % 65536, data[(seq - 1) * blksize : seq * blksize])
            for seq in range(acked + 1, window_end + 1)
        ]
        for packet in channel(fates, datas):
            to_sender += channel(fates, as_wire(rx.carry_out(s.receive(packet, now))))
    assert s.done
    return rx


@settings(max_examples=200, deadline=None)
@given(
    data=st.binary(max_size=600),
    blksize=st.integers(8, 40),
    window=st.integers(1, 6),
    fates=st.lists(st.sampled_from([DELIVER, DELIVER, DELIVER, DROP, DUPLICATE]), max_size=300),
)
def test_lossy_upload_writes_the_file(
    data: bytes, blksize: int, window: int, fates: list[int]
) -> None:
    rx = upload(data, blksize, window, iter(fates))
    assert rx.finish == Finish(Outcome.OK)
    assert rx.completions == 1
    assert bytes(rx.buffer) == data
    assert rx.session.bytes_received == len(data)


def test_read_session_as_the_sender() -> None:
    """Our own read side, with losses, feeding the write side: the two agree on RFC 7440."""
    blksize, window = 8, 16
    data = bytes(i % 251 for i in range(8 * 70_000 + 5))  # past a block-number rollover
    negotiated = Negotiated(blksize=blksize, windowsize=window)
    sender = ReadSession(len(data), negotiated, retransmit_timeout=1.0, max_retries=50)
    receiver = WriteSession(negotiated, max_size=len(data), retransmit_timeout=1.0, max_retries=50)
    rx = Receiver(receiver)
    now = 0.0
    assert rx.carry_out(receiver.start(now)) == [SendAck(0)]
    outgoing = sender.start(now)
    sent = 0
    while not sender.done:
        replies: list[SendAck | SendOack] = []
        blocks = [b for a in outgoing if isinstance(a, SendBlocks) for b in a.blocks()]
        for action in blocks:
            if isinstance(action, SendBlock):
                sent += 1
                if sent % 499 == 0:
                    continue  # lost
                payload = data[action.offset : action.offset + action.length]
                replies += rx.carry_out(receiver.receive(Data(action.block, payload), now))
        now += 0.01
        outgoing = []
        for reply in replies:
            assert isinstance(reply, SendAck)
            outgoing += sender.receive(Ack(reply.block), now)
        if not replies:
            now = max(now, sender.deadline or now)
            outgoing = sender.timeout(now)
    assert outgoing[-1] == Finish(Outcome.OK)
    assert receiver.complete
    assert bytes(rx.buffer) == data
    rx.carry_out(receiver.timeout(receiver.deadline or now))
    assert rx.finish == Finish(Outcome.OK)
