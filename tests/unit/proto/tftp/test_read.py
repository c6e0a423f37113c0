"""TFTP option negotiation and the read-session state machine, without sockets."""

from __future__ import annotations

import pytest

from netbootd.proto.tftp import (
    Ack,
    Action,
    Data,
    Error,
    ErrorCode,
    Finish,
    Mode,
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
    TftpDecodeError,
    WriteRequest,
    check_mode,
    encode,
    negotiate,
    read_actions,
)

# --------------------------------------------------------------------------------------------
# Modes and negotiation


def test_check_mode() -> None:
    assert check_mode("octet") is None
    assert check_mode("netascii") is None
    mail = check_mode(Mode.MAIL)
    assert mail is not None and mail.code == ErrorCode.ILLEGAL_OPERATION
    other = check_mode("binary")
    assert other is not None and other.code == ErrorCode.ILLEGAL_OPERATION


def test_negotiate_nothing() -> None:
    assert negotiate((), file_size=10, max_blksize=1468) == Negotiated()


def test_negotiate_all_in_request_order() -> None:
    got = negotiate(
        (("windowsize", "8"), ("tsize", "0"), ("blksize", "1408"), ("timeout", "3")),
        file_size=4321,
        max_blksize=1468,
    )
    assert got == Negotiated(
        blksize=1408,
        timeout=3,
        windowsize=8,
        tsize=4321,
        oack_options=(
            ("windowsize", "8"),
            ("tsize", "4321"),
            ("blksize", "1408"),
            ("timeout", "3"),
        ),
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("7", None),  # below RFC 2348 minimum: ignored
        ("0", None),
        ("8", 8),
        ("1468", 1468),
        ("1469", 1468),  # clamped to the server cap
        ("65464", 1468),
        ("65465", 1468),  # above the RFC range: still clamped to the cap
        ("abc", None),
        ("+512", None),
        (" 512", None),
        ("1_024", None),
        ("", None),
    ],
)
def test_negotiate_blksize(value: str, expected: int | None) -> None:
    got = negotiate((("blksize", value),), file_size=0, max_blksize=1468)
    if expected is None:
        assert got.blksize == 512
        assert got.oack_options == ()
    else:
        assert got.blksize == expected
        assert got.oack_options == (("blksize", str(expected)),)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("0", None), ("1", 1), ("255", 255), ("256", None), ("x", None)],
)
def test_negotiate_timeout(value: str, expected: int | None) -> None:
    got = negotiate((("timeout", value),), file_size=0, max_blksize=1468)
    assert got.timeout == expected
    assert got.oack_options == (() if expected is None else (("timeout", value),))


@pytest.mark.parametrize(
    ("value", "expected"),
    [("0", None), ("1", 1), ("64", 64), ("65", 64), ("65535", 64), ("65536", None)],
)
def test_negotiate_windowsize(value: str, expected: int | None) -> None:
    got = negotiate((("windowsize", value),), file_size=0, max_blksize=1468)
    assert got.windowsize == (1 if expected is None else expected)
    assert got.oack_options == (() if expected is None else (("windowsize", str(expected)),))


def test_negotiate_windowsize_server_cap() -> None:
    got = negotiate((("windowsize", "100"),), file_size=0, max_blksize=512, max_windowsize=16)
    assert got.windowsize == 16


def test_negotiate_tsize_answers_real_size() -> None:
    got = negotiate((("tsize", "0"),), file_size=987654321, max_blksize=512)
    assert got.tsize == 987654321
    assert got.oack_options == (("tsize", "987654321"),)


def test_negotiate_ignores_unknown_options() -> None:
    got = negotiate((("multicast", ""), ("rollover", "0")), file_size=1, max_blksize=512)
    assert got == Negotiated()


def test_negotiate_rejects_bad_server_limits() -> None:
    with pytest.raises(ValueError):
        negotiate((), file_size=0, max_blksize=7)
    with pytest.raises(ValueError):
        negotiate((), file_size=0, max_blksize=512, max_windowsize=0)


# --------------------------------------------------------------------------------------------
# ReadSession


def expand(actions: list[Action]) -> list[object]:
    """The actions with each SendBlocks spelled out block by block."""
    out: list[object] = []
    for action in actions:
        out.extend(action.blocks() if isinstance(action, SendBlocks) else [action])
    return out


def blocks(actions: list[Action]) -> list[int]:
    return [a.seq for a in expand(actions) if isinstance(a, SendBlock)]


def session(
    size: int,
    *,
    blksize: int = 512,
    windowsize: int = 1,
    oack: tuple[tuple[str, str], ...] = (),
    retries: int = 3,
) -> ReadSession:
    negotiated = Negotiated(blksize=blksize, windowsize=windowsize, oack_options=oack)
    return ReadSession(size, negotiated, retransmit_timeout=1.0, max_retries=retries)


def test_plain_transfer() -> None:
    s = session(1300)
    first = s.start(0.0)
    assert expand(first) == [SendBlock(1, 0, 512)]
    assert s.deadline == 1.0
    assert expand(s.receive(Ack(1), 0.1)) == [SendBlock(2, 512, 512)]
    assert expand(s.receive(Ack(2), 0.2)) == [SendBlock(3, 1024, 276)]
    assert s.receive(Ack(3), 0.3) == [Finish(Outcome.OK)]
    assert s.done
    assert s.deadline is None
    assert s.bytes_sent == 1300
    assert s.bytes_acknowledged == 1300
    assert s.retransmissions == 0
    assert s.receive(Ack(3), 0.4) == []


def test_exact_multiple_ends_with_empty_block() -> None:
    s = session(1024)
    assert s.total_blocks == 3
    s.start(0.0)
    s.receive(Ack(1), 0.0)
    assert expand(s.receive(Ack(2), 0.0)) == [SendBlock(3, 1024, 0)]
    assert s.receive(Ack(3), 0.0) == [Finish(Outcome.OK)]


def test_zero_byte_file() -> None:
    s = session(0)
    assert expand(s.start(0.0)) == [SendBlock(1, 0, 0)]
    assert s.receive(Ack(1), 0.0) == [Finish(Outcome.OK)]


def test_oack_then_ack0() -> None:
    options = (("tsize", "100"),)
    s = session(100, oack=options)
    assert s.start(0.0) == [SendOack(options)]
    assert s.deadline == 1.0
    assert s.receive(Ack(1), 0.1) == []  # only ACK 0 answers an OACK
    assert expand(s.receive(Ack(0), 0.2)) == [SendBlock(1, 0, 100)]
    assert s.receive(Ack(0), 0.3) == []  # duplicate ACK 0
    assert s.receive(Ack(1), 0.4) == [Finish(Outcome.OK)]


def test_oack_retransmitted_on_timeout() -> None:
    options = (("blksize", "1024"),)
    s = session(5000, blksize=1024, oack=options)
    s.start(0.0)
    assert s.timeout(0.5) == []  # not due yet
    assert s.timeout(1.0) == [SendOack(options)]
    assert s.retransmissions == 1
    assert s.deadline == 2.0


def test_error_at_the_oack_after_asking_tsize_is_a_size_query() -> None:
    s = session(100, oack=(("tsize", "100"),))
    s.start(0.0)
    got = s.receive(Error(ErrorCode.OPTION_NEGOTIATION_FAILED, "tsize only"), 0.1)
    assert got == [Finish(Outcome.SIZE_QUERY, "tsize only")]
    assert s.done
    assert s.timeout(5.0) == []


def test_error_at_the_oack_without_tsize_is_a_client_error() -> None:
    options = (("blksize", "1024"),)
    s = session(5000, blksize=1024, oack=options)
    s.start(0.0)
    got = s.receive(Error(ErrorCode.OPTION_NEGOTIATION_FAILED, "no"), 0.1)
    assert got == [Finish(Outcome.CLIENT_ERROR, "no")]


def test_client_error_mid_transfer() -> None:
    s = session(5000)
    s.start(0.0)
    s.receive(Ack(1), 0.0)
    assert s.receive(Error(0, ""), 0.0) == [Finish(Outcome.CLIENT_ERROR, "code 0")]


def test_duplicate_ack_sends_nothing() -> None:
    s = session(5000)
    s.start(0.0)
    assert expand(s.receive(Ack(1), 0.1)) == [SendBlock(2, 512, 512)]
    # The client's timer fired and it repeated ACK 1; answering it would double the traffic.
    assert s.receive(Ack(1), 0.2) == []
    assert expand(s.receive(Ack(2), 0.3)) == [SendBlock(3, 1024, 512)]


def test_ack_for_unsent_block_is_ignored() -> None:
    s = session(50000)
    s.start(0.0)
    assert s.receive(Ack(7), 0.1) == []
    assert s.receive(Ack(65535), 0.1) == []
    assert expand(s.receive(Ack(1), 0.1)) == [SendBlock(2, 512, 512)]


def test_window_with_lost_block() -> None:
    s = session(512 * 30, windowsize=8, oack=(("windowsize", "8"),))
    s.start(0.0)
    assert blocks(s.receive(Ack(0), 0.0)) == list(range(1, 9))
    assert blocks(s.receive(Ack(8), 0.1)) == list(range(9, 17))
    # Block 12 is lost: the client acknowledges 11, the last block it got in order.
    assert blocks(s.receive(Ack(11), 0.2)) == list(range(12, 20))
    assert s.retransmissions == 5  # 12..16 went out twice
    # A stale ACK from the earlier window means nothing now.
    assert s.receive(Ack(8), 0.3) == []
    assert blocks(s.receive(Ack(19), 0.4)) == list(range(20, 28))
    assert blocks(s.receive(Ack(27), 0.5)) == [28, 29, 30, 31]
    assert s.receive(Ack(31), 0.6) == [Finish(Outcome.OK)]


def test_window_timeout_resends_from_first_unacknowledged() -> None:
    s = session(512 * 20, windowsize=4)
    assert blocks(s.start(0.0)) == [1, 2, 3, 4]
    assert blocks(s.receive(Ack(4), 0.5)) == [5, 6, 7, 8]
    assert blocks(s.timeout(1.5)) == [5, 6, 7, 8]
    assert s.deadline == 2.5


def test_retries_exhausted() -> None:
    s = session(100, retries=2)
    s.start(0.0)
    assert blocks(s.timeout(1.0)) == [1]
    assert blocks(s.timeout(2.0)) == [1]
    assert s.timeout(3.0) == [Finish(Outcome.TIMED_OUT)]
    assert s.done
    assert s.deadline is None
    assert s.retransmissions == 2


def test_progress_resets_retries() -> None:
    s = session(2000, retries=1)
    s.start(0.0)
    assert blocks(s.timeout(1.0)) == [1]
    s.receive(Ack(1), 1.5)
    assert blocks(s.timeout(2.5)) == [2]
    assert not s.done


@pytest.mark.parametrize(
    "packet",
    [
        Data(1, b"x"),
        ReadRequest("f", "octet"),
        WriteRequest("f", "octet"),
        OptionAck((("blksize", "512"),)),
    ],
)
def test_illegal_packet_ends_session(packet: Packet) -> None:
    s = session(5000)
    s.start(0.0)
    got = s.receive(packet, 0.1)
    assert got[0] == SendError(ErrorCode.ILLEGAL_OPERATION, "illegal TFTP operation")
    assert isinstance(got[1], Finish) and got[1].outcome is Outcome.ERROR_SENT
    assert s.done


def test_abort() -> None:
    s = session(5000)
    s.start(0.0)
    got = s.abort(ErrorCode.NOT_DEFINED, "file changed")
    assert got == [SendError(0, "file changed"), Finish(Outcome.ERROR_SENT, "file changed")]
    assert s.abort(0, "again") == []


def test_misuse_raises() -> None:
    s = session(10)
    with pytest.raises(RuntimeError):
        s.receive(Ack(0), 0.0)
    s.start(0.0)
    with pytest.raises(RuntimeError):
        s.start(0.0)


def drive(s: ReadSession, *, drop_every: int = 0) -> int:
    """Run a simulated client that sees only wire block numbers; return its last good block.

    It acknowledges after each burst, naming the last block it got in order (RFC 7440 §4),
    and drops every ``drop_every``-th DATA packet on the way.
    """
    actions = expand(s.start(0.0))
    expected = 1  # next absolute block the client wants
    last_good = 0
    now = 0.0
    sent = 0
    while not s.done:
        reply: Packet | None = None
        for action in actions:
            if isinstance(action, SendOack):
                reply = Ack(0)
            elif isinstance(action, SendBlock):
                sent += 1
                if drop_every and sent % drop_every == 0:
                    continue  # lost on the way
                if action.block == expected % 65536 and action.seq == expected:
                    last_good = expected
                    expected += 1
                reply = Ack(last_good % 65536)
            elif isinstance(action, Finish):
                assert action.outcome is Outcome.OK
                return last_good
        now += 0.001
        actions = expand(
            s.receive(reply, now) if reply is not None else s.timeout(s.deadline or now)
        )
    return last_good


@pytest.mark.parametrize("blksize", [8, 512])
def test_rollover_maps_ack_numbers(blksize: int) -> None:
    total = 65535 + 1000
    size = blksize * (total - 1) + 3
    s = session(size, blksize=blksize, oack=(("blksize", str(blksize)),))
    assert s.total_blocks == total
    acked = drive(s)
    assert acked == total
    assert s.bytes_acknowledged == size
    assert s.retransmissions == 0


def test_rollover_with_window_and_losses() -> None:
    total = 65536 * 2 + 17
    size = 512 * (total - 1)
    s = session(size, windowsize=16, oack=(("windowsize", "16"),))
    acked = drive(s, drop_every=997)
    assert acked == total
    assert s.retransmissions > 0


def test_send_block_wire_number_wraps() -> None:
    assert SendBlock(65535, 0, 0).block == 65535
    assert SendBlock(65536, 0, 0).block == 0
    assert SendBlock(65537, 0, 0).block == 1


def test_read_actions_takes_an_ack_the_short_way_and_anything_else_decoded() -> None:
    fast, slow = session(1000), session(1000)
    fast.start(0.0)
    slow.start(0.0)
    assert read_actions(fast, b"\x00\x04\x00\x01", 1.0) == slow.ack(1, 1.0)
    assert read_actions(fast, encode(Error(0, "bye")), 2.0) == [Finish(Outcome.CLIENT_ERROR, "bye")]
    with pytest.raises(TftpDecodeError):
        read_actions(slow, b"\x00\x04\x00", 2.0)
