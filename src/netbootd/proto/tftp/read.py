"""Option negotiation and the read-transfer state machine: the server side of a TFTP download.

Covers RFC 1350 (the protocol), RFC 2347 (option extension), RFC 2348 (blksize), RFC 2349
(timeout, tsize) and RFC 7440 (windowsize) for a read request (RRQ). The packets and their codec
live in :mod:`netbootd.proto.tftp.packet`.

Pure: packets and times in, actions out. This module must not open sockets or files, read a
clock (callers pass ``now``), log, or keep global state. Peer mistakes become actions that answer
the peer (or raise :class:`~netbootd.proto.tftp.packet.TftpDecodeError` from
:func:`read_actions`); misuse of this API by the caller raises ``ValueError`` or
``RuntimeError``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import NamedTuple

from netbootd.proto.tftp.packet import (
    BLKSIZE_DEFAULT,
    BLKSIZE_MAX,
    BLKSIZE_MIN,
    BLOCK_MOD,
    TIMEOUT_MAX,
    TIMEOUT_MIN,
    WINDOWSIZE_MAX,
    WINDOWSIZE_MIN,
    Ack,
    Error,
    ErrorCode,
    Mode,
    Opcode,
    Options,
    Packet,
    decode,
)

__all__ = [
    "Action",
    "Finish",
    "Negotiated",
    "Outcome",
    "ReadSession",
    "SendBlock",
    "SendBlocks",
    "SendError",
    "SendOack",
    "TransferSession",
    "check_mode",
    "negotiate",
    "option_number",
    "read_actions",
]

# Option values are decimal numbers; more digits than this cannot be a sane size or count.
_MAX_NUMBER_DIGITS = 20
_ACK = int(Opcode.ACK)


# --------------------------------------------------------------------------------------------
# Requests and option negotiation


def check_mode(mode: str) -> Error | None:
    """The ERROR to answer a read request's mode with, or None when the mode is served."""
    if mode in (Mode.OCTET, Mode.NETASCII):
        return None
    if mode == Mode.MAIL:
        # RFC 1350 §1: mail mode is obsolete and only ever meant writes to a user.
        return Error(ErrorCode.ILLEGAL_OPERATION, "mail mode is not supported")
    return Error(ErrorCode.ILLEGAL_OPERATION, "unknown transfer mode")


@dataclass(frozen=True, slots=True)
class Negotiated:
    """The outcome of option negotiation for one read request."""

    blksize: int = BLKSIZE_DEFAULT
    timeout: int | None = None
    windowsize: int = 1
    tsize: int | None = None
    # The options to acknowledge, in the order the client sent them; empty means no OACK.
    oack_options: Options = ()


def option_number(value: str) -> int | None:
    """An option value as a number, or None unless it is plain decimal digits."""
    # int() would also take "+5", " 5" and "1_0"; only plain decimal digits are a number here.
    if not value or len(value) > _MAX_NUMBER_DIGITS or not (value.isascii() and value.isdigit()):
        return None
    return int(value)


def negotiate(
    request_options: Options,
    *,
    file_size: int,
    max_blksize: int,
    max_windowsize: int = 64,
) -> Negotiated:
    """Decide which of a read request's options to accept (RFC 2347, 2348, 2349, 7440).

    Options the server does not know, and values out of their RFC range, are left out of the
    OACK; RFC 2347 lets a server ignore any option it does not accept.
    """
    if not BLKSIZE_MIN <= max_blksize <= BLKSIZE_MAX:
        raise ValueError(f"max_blksize must be in {BLKSIZE_MIN}..{BLKSIZE_MAX}")
    if not WINDOWSIZE_MIN <= max_windowsize <= WINDOWSIZE_MAX:
        raise ValueError(f"max_windowsize must be in {WINDOWSIZE_MIN}..{WINDOWSIZE_MAX}")
    if file_size < 0:
        raise ValueError("file_size must not be negative")

    blksize = BLKSIZE_DEFAULT
    timeout: int | None = None
    windowsize = 1
    tsize: int | None = None
    accepted: list[tuple[str, str]] = []
    for name, raw in request_options:
        value = option_number(raw)
        if value is None:
            continue
        if name == "blksize":
            # RFC 2348: below 8 is invalid; a server may answer with a smaller size than asked.
            if value < BLKSIZE_MIN:
                continue
            blksize = min(value, max_blksize)
            accepted.append((name, str(blksize)))
        elif name == "timeout":
            # RFC 2349: the server either accepts the value as is or ignores the option.
            if not TIMEOUT_MIN <= value <= TIMEOUT_MAX:
                continue
            timeout = value
            accepted.append((name, str(timeout)))
        elif name == "tsize":
            # RFC 2349: in a read request the client sends 0 and the OACK carries the size.
            tsize = file_size
            accepted.append((name, str(tsize)))
        elif name == "windowsize":
            # RFC 7440 §3: the server may answer with a smaller window than asked.
            if not WINDOWSIZE_MIN <= value <= WINDOWSIZE_MAX:
                continue
            windowsize = min(value, max_windowsize)
            accepted.append((name, str(windowsize)))
    return Negotiated(blksize, timeout, windowsize, tsize, tuple(accepted))


# --------------------------------------------------------------------------------------------
# The read session


class Outcome(StrEnum):
    OK = "ok"
    # The client asked for tsize and ended the transfer at the OACK: it only wanted the size.
    # EDK2 and many PXE ROMs do this before every real download.
    SIZE_QUERY = "size query"
    CLIENT_ERROR = "client error"
    TIMED_OUT = "timed out"
    ERROR_SENT = "error sent"


@dataclass(frozen=True, slots=True)
class SendOack:
    options: Options


@dataclass(frozen=True, slots=True)
class SendBlock:
    """Send file block ``seq`` (1-based, absolute): ``length`` octets at ``offset``."""

    seq: int
    offset: int
    length: int

    @property
    def block(self) -> int:
        # RFC 1350 sets no size limit; clients wrap the 16-bit block number to 0 after 65535.
        return self.seq % BLOCK_MOD


class SendBlocks(NamedTuple):
    """Send file blocks ``first`` to ``last`` (absolute, inclusive) back to back.

    Block ``seq`` carries the ``blksize`` octets at ``(seq - 1) * blksize``, or what is left of
    the file, and goes on the wire as number ``seq % 65536``. One action for a whole window, so
    that a sender can put the window on the wire in one go. (A named tuple: one is made for
    every window, and it is the cheapest immutable record to make.)
    """

    first: int
    last: int
    blksize: int
    size: int

    @property
    def offset(self) -> int:
        """Where the first block's octets start."""
        return (self.first - 1) * self.blksize

    @property
    def end(self) -> int:
        """Where the last block's octets end."""
        return min(self.last * self.blksize, self.size)

    def blocks(self) -> list[SendBlock]:
        """The blocks one by one."""
        return [
            SendBlock(seq, offset, min(self.blksize, self.size - offset))
            for seq in range(self.first, self.last + 1)
            for offset in ((seq - 1) * self.blksize,)
        ]


@dataclass(frozen=True, slots=True)
class SendError:
    code: int
    message: str


@dataclass(frozen=True, slots=True)
class Finish:
    outcome: Outcome
    message: str = ""


Action = SendOack | SendBlocks | SendError | Finish


class _State(Enum):
    NEW = "new"
    AWAIT_OACK_ACK = "await ACK 0"
    TRANSFER = "transfer"
    DONE = "done"


class TransferSession:
    """What a read session and a write session share: the options agreed with the client, and
    the retransmission timer with its count of tries (RFC 1350 §2: a side that hears nothing
    within the timeout sends its last packet again, and gives up after so many tries).

    Subclasses keep their own state machine; this holds only the timer they both run. Their
    hot paths (an ACK in, the next window out) set ``_deadline`` and ``_retries`` themselves,
    without a method call per packet.
    """

    def __init__(
        self, negotiated: Negotiated, *, retransmit_timeout: float, max_retries: int
    ) -> None:
        if retransmit_timeout <= 0:
            raise ValueError("retransmit_timeout must be positive")
        if max_retries < 0:
            raise ValueError("max_retries must not be negative")
        self._negotiated = negotiated
        self._blksize = negotiated.blksize
        self._window = negotiated.windowsize
        self._rto = retransmit_timeout
        self._max_retries = max_retries
        self._retries = 0
        self._deadline: float | None = None

    @property
    def deadline(self) -> float | None:
        """When :meth:`timeout` wants to be called; None while nothing is awaited."""
        return self._deadline

    @property
    def negotiated(self) -> Negotiated:
        return self._negotiated

    def _due(self, now: float) -> bool:
        return self._deadline is not None and now >= self._deadline

    def _arm(self, now: float) -> None:
        self._deadline = now + self._rto

    def _try_again(self, now: float) -> bool:
        """Count one more try after a timeout and wait for it; False once the tries are spent."""
        self._retries += 1
        if self._retries > self._max_retries:
            return False
        self._arm(now)
        return True


class ReadSession(TransferSession):
    """One read transfer, from the server's side, as a state machine.

    ``NEW --start--> AWAIT_OACK_ACK --ACK 0--> TRANSFER --last ACK--> DONE`` (the OACK step is
    skipped when no option was accepted). Any state reaches ``DONE`` on a client ERROR, an
    illegal packet or exhausted retries. The caller feeds packets and timer expiries in and
    carries out the returned actions; it calls :meth:`timeout` once ``now`` reaches
    :attr:`deadline`.
    """

    def __init__(
        self,
        file_size: int,
        negotiated: Negotiated,
        *,
        retransmit_timeout: float,
        max_retries: int,
    ) -> None:
        if file_size < 0:
            raise ValueError("file_size must not be negative")
        super().__init__(negotiated, retransmit_timeout=retransmit_timeout, max_retries=max_retries)
        self._size = file_size
        # A final block shorter than blksize ends the transfer (RFC 1350 §6), so a size that
        # is a multiple of blksize ends with an empty block.
        self._blocks = file_size // self._blksize + 1
        self._state = _State.NEW
        self._told_size = any(name == "tsize" for name, _ in negotiated.oack_options)
        self._acked = 0  # highest block acknowledged, absolute
        self._window_end = 0  # highest block sent in the current window, absolute
        self._highest_sent = 0
        self._bytes_sent = 0
        self._retransmissions = 0

    # -- read-only state ----------------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self._state is _State.DONE

    @property
    def total_blocks(self) -> int:
        return self._blocks

    @property
    def bytes_sent(self) -> int:
        """File octets put on the wire, retransmissions included."""
        return self._bytes_sent

    @property
    def bytes_acknowledged(self) -> int:
        """File octets the client has acknowledged."""
        return min(self._acked * self._blksize, self._size)

    @property
    def last_acknowledged(self) -> int:
        """The highest block the client has acknowledged (absolute: past 65535 when the block
        number wrapped), 0 for none."""
        return self._acked

    @property
    def retransmissions(self) -> int:
        """Packets (OACK or DATA) sent more than once."""
        return self._retransmissions

    # -- events -------------------------------------------------------------------------------

    def start(self, now: float) -> list[Action]:
        if self._state is not _State.NEW:
            raise RuntimeError("session already started")
        options = self._negotiated.oack_options
        if options:
            # RFC 2347: the OACK stands in for DATA 1 and is acknowledged with ACK 0.
            self._state = _State.AWAIT_OACK_ACK
            self._arm(now)
            return [SendOack(options)]
        self._state = _State.TRANSFER
        return self._send_window(now)

    def receive(self, packet: Packet, now: float) -> list[Action]:
        if self._state is _State.NEW:
            raise RuntimeError("session not started")
        if self._state is _State.DONE:
            return []
        match packet:
            case Ack(block):
                return self.ack(block, now)
            case Error(code, message):
                # RFC 1350 §7: an ERROR ends the transfer and is not acknowledged. RFC 2347
                # has a client refuse an OACK with ERROR 8, which lands here too.
                text = message if message else f"code {code}"
                if self._state is _State.AWAIT_OACK_ACK and self._told_size:
                    return self._finish(Finish(Outcome.SIZE_QUERY, text))
                return self._finish(Finish(Outcome.CLIENT_ERROR, text))
            case _:
                # The client of a read transfer only ever sends ACK or ERROR.
                message = f"unexpected {type(packet).__name__} during a read transfer"
                return [
                    SendError(ErrorCode.ILLEGAL_OPERATION, "illegal TFTP operation"),
                    *self._finish(Finish(Outcome.ERROR_SENT, message)),
                ]

    def abort(self, code: int, message: str) -> list[Action]:
        """End the transfer from the server's side (a read failed, shutdown), telling the client."""
        if self._state is _State.DONE:
            return []
        return [SendError(code, message), *self._finish(Finish(Outcome.ERROR_SENT, message))]

    def timeout(self, now: float) -> list[Action]:
        if not self._due(now):
            return []
        if not self._try_again(now):
            return self._finish(Finish(Outcome.TIMED_OUT))
        if self._state is _State.AWAIT_OACK_ACK:
            self._retransmissions += 1
            return [SendOack(self._negotiated.oack_options)]
        # Go back to the first unacknowledged block and send the window again (RFC 7440 §4).
        return self._send_window(now)

    # -- internals ----------------------------------------------------------------------------

    def _finish(self, finish: Finish) -> list[Action]:
        self._state = _State.DONE
        self._deadline = None
        return [finish]

    def _send_window(self, now: float) -> list[Action]:
        first = self._acked + 1
        last = self._acked + self._window
        last = min(last, self._blocks)
        blksize, size = self._blksize, self._size
        end = last * blksize
        self._bytes_sent += (end if end < size else size) - (first - 1) * blksize
        highest = self._highest_sent
        if first <= highest:
            self._retransmissions += min(last, highest) - first + 1
        if last > highest:
            self._highest_sent = last
        self._window_end = last
        self._deadline = now + self._rto
        return [SendBlocks(first, last, blksize, size)]

    def ack(self, block: int, now: float) -> list[Action]:
        """``receive(Ack(block), now)``, for callers that decoded the ACK themselves."""
        state = self._state
        if state is not _State.TRANSFER:
            if state is _State.NEW:
                raise RuntimeError("session not started")
            if state is _State.DONE:
                return []
            return self._on_oack_ack(block, now)
        # Map the 16-bit number onto the only blocks it can mean: the last acknowledged one
        # or one in flight. The span is at most 65536 blocks (window <= 65535), so the
        # mapping is unique across rollovers.
        acked = self._acked
        seq = acked + ((block - acked) % BLOCK_MOD)
        if seq > self._window_end or seq == acked:
            # Past what was sent, or a duplicate: a duplicate ACK must not trigger a resend,
            # or every delayed packet doubles the traffic from then on: the Sorcerer's
            # Apprentice syndrome (RFC 1123 §4.2.3.1).
            return []
        self._acked = seq
        self._retries = 0
        if seq == self._blocks:
            return self._finish(Finish(Outcome.OK))
        # RFC 7440 §4: an ACK inside the window acknowledges everything up to it; the next
        # window starts right after, which also resends what the client reported lost.
        return self._send_window(now)

    def _on_oack_ack(self, block: int, now: float) -> list[Action]:
        if block != 0:
            # Only ACK 0 answers an OACK; anything else is stale or confused. Waiting lets
            # the retransmit timer recover either way.
            return []
        self._state = _State.TRANSFER
        self._retries = 0
        return self._send_window(now)


def read_actions(session: ReadSession, data: bytes, now: float) -> list[Action]:
    """What a read session does with a datagram from its client.

    Raises :class:`~netbootd.proto.tftp.packet.TftpDecodeError` for a damaged one. The hot
    path, an ACK, skips the general decoder.
    """
    if len(data) == 4 and data[1] == _ACK and data[0] == 0:
        return session.ack((data[2] << 8) | data[3], now)
    return session.receive(decode(data), now)
