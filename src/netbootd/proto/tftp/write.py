"""Option negotiation and the write-transfer state machine: the server side of a TFTP upload.

Covers RFC 1350 (the protocol), RFC 2347 (option extension), RFC 2348 (blksize), RFC 2349
(timeout, tsize) and RFC 7440 (windowsize) for a write request (WRQ). The codec and the packet
types live in :mod:`netbootd.proto.tftp.packet`, the actions shared with the read side in
:mod:`netbootd.proto.tftp.read`.

Pure: packets and times in, actions out. This module must not open sockets or files, read a
clock (callers pass ``now``), log, or keep global state. Where the uploaded octets go, and when
a finished file becomes visible, is the caller's business: it is told through
:class:`WriteBlock` and :class:`Complete`. Misuse of this API by the caller raises
``ValueError`` or ``RuntimeError``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import Enum

from netbootd.proto.tftp.packet import BLOCK_MOD, Data, Error, ErrorCode, Options, Packet
from netbootd.proto.tftp.read import (
    Finish,
    Negotiated,
    Outcome,
    SendError,
    SendOack,
    TransferSession,
    negotiate,
    option_number,
)

__all__ = [
    "Complete",
    "SendAck",
    "WriteAction",
    "WriteBlock",
    "WriteSession",
    "negotiate_write",
]


def negotiate_write(
    request_options: Options,
    *,
    max_blksize: int,
    max_windowsize: int,
    max_size: int,
) -> Negotiated | Error:
    """Decide which of a write request's options to accept, or the ERROR refusing the upload.

    blksize, timeout and windowsize follow :func:`netbootd.proto.tftp.read.negotiate`. tsize
    differs: in a WRQ the client states the size of the file it is about to send (RFC 2349), and
    the OACK echoes it. A stated size over ``max_size`` is refused up front with ERROR 3 rather than
    discovered after ``max_size`` octets have crossed the wire.
    """
    if max_size < 0:
        raise ValueError("max_size must not be negative")
    # negotiate() answers tsize with the size of the file to be read. Handing it 0 and then
    # putting the client's number back keeps one place that decides which tsize is well formed
    # (negotiate accepts tsize exactly when its value is a number) and keeps the client's order.
    base = negotiate(
        request_options,
        file_size=0,
        max_blksize=max_blksize,
        max_windowsize=max_windowsize,
    )
    if base.tsize is None:
        return base
    tsize = 0
    for name, raw in request_options:
        value = option_number(raw) if name == "tsize" else None
        if value is not None:
            tsize = value
    if tsize > max_size:
        # RFC 2349: the server may refuse a write whose size it cannot hold, with ERROR 3.
        return Error(ErrorCode.DISK_FULL, "file too large")
    options = tuple(
        (name, str(tsize)) if name == "tsize" else (name, text) for name, text in base.oack_options
    )
    return dataclasses.replace(base, tsize=tsize, oack_options=options)


# --------------------------------------------------------------------------------------------
# Actions besides the shared SendOack, SendError and Finish


@dataclass(frozen=True, slots=True)
class SendAck:
    """Send ACK ``block`` (already reduced modulo 65536 for the wire)."""

    block: int


@dataclass(frozen=True, slots=True)
class WriteBlock:
    """Store ``payload`` at ``offset`` of the file being received. Each offset comes once."""

    offset: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Complete:
    """Every octet of the file has been handed out in :class:`WriteBlock` actions.

    Emitted once, right after the last :class:`WriteBlock` and before the final ACK, so a caller
    that makes the file durable and visible here acknowledges only a file that is in place. If
    that fails, the caller drops the actions after this one and calls
    :meth:`WriteSession.abort`.
    """


WriteAction = SendOack | SendAck | WriteBlock | Complete | SendError | Finish


# --------------------------------------------------------------------------------------------
# The write session


class _State(Enum):
    NEW = "new"
    TRANSFER = "transfer"
    DALLY = "dally"
    DONE = "done"


class WriteSession(TransferSession):
    """One write transfer, from the server's side, as a state machine.

    ``NEW --start--> TRANSFER --last DATA--> DALLY --deadline--> DONE``. ``start`` answers the
    WRQ with the OACK when options were accepted, else with ACK 0 (RFC 2347, RFC 1350 §4).
    Any state but ``DONE`` reaches ``DONE`` on a client ERROR, an illegal packet, a file over
    ``max_size`` or exhausted retries. The caller feeds packets and timer expiries in, carries
    out the returned actions in order, and calls :meth:`timeout` once ``now`` reaches
    :attr:`deadline`.

    ``DALLY`` is RFC 1350 §6: the final ACK may be lost, and the client will then send its last
    DATA again; the session answers it with the final ACK for one retransmit timeout before it
    finishes. :attr:`complete` is already true during the dally.
    """

    def __init__(
        self,
        negotiated: Negotiated,
        *,
        max_size: int,
        retransmit_timeout: float,
        max_retries: int,
    ) -> None:
        if max_size < 0:
            raise ValueError("max_size must not be negative")
        super().__init__(negotiated, retransmit_timeout=retransmit_timeout, max_retries=max_retries)
        self._max_size = max_size
        self._state = _State.NEW
        self._received = 0  # highest block received in order, absolute; 0 before DATA 1
        self._acked = 0  # the block of the last ACK sent, absolute; the client's window base
        self._gap_reported = False  # an ACK has already answered the current gap
        self._bytes = 0
        self._complete = False

    # -- read-only state ----------------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self._state is _State.DONE

    @property
    def complete(self) -> bool:
        """Every block has been received and handed out; true from :class:`Complete` on."""
        return self._complete

    @property
    def bytes_received(self) -> int:
        """File octets handed out in :class:`WriteBlock` actions (each octet counted once)."""
        return self._bytes

    # -- events -------------------------------------------------------------------------------

    def start(self, now: float) -> list[WriteAction]:
        if self._state is not _State.NEW:
            raise RuntimeError("session already started")
        self._state = _State.TRANSFER
        self._arm(now)
        return [self._first_answer()]

    def receive(self, packet: Packet, now: float) -> list[WriteAction]:
        if self._state is _State.NEW:
            raise RuntimeError("session not started")
        if self._state is _State.DONE:
            return []
        match packet:
            case Data(block, payload):
                if len(payload) > self._blksize:
                    return self._illegal(f"DATA of {len(payload)} octets exceeds the block size")
                return self._on_data(block, payload, now)
            case Error(code, message):
                # RFC 1350 §7: an ERROR ends the transfer and is not acknowledged. RFC 2347
                # has a client refuse an OACK with ERROR 8, which lands here too.
                text = message if message else f"code {code}"
                return self._finish(Finish(Outcome.CLIENT_ERROR, text))
            case _:
                # The client of a write transfer only ever sends DATA or ERROR.
                name = type(packet).__name__
                return self._illegal(f"unexpected {name} during a write transfer")

    def abort(self, code: int, message: str) -> list[WriteAction]:
        """End the transfer from our side (storage failed, shutdown), telling the client."""
        if self._state is _State.DONE:
            return []
        return [SendError(code, message), *self._finish(Finish(Outcome.ERROR_SENT, message))]

    def timeout(self, now: float) -> list[WriteAction]:
        if not self._due(now):
            return []
        if self._state is _State.DALLY:
            # No retransmitted last DATA within one timeout: the client has the final ACK.
            return self._finish(Finish(Outcome.OK))
        if not self._try_again(now):
            return self._finish(Finish(Outcome.TIMED_OUT))
        # RFC 7440 §4: a receiver that times out acknowledges the last block it has in order;
        # the sender starts its next window right after it. With a window of 1 this is plain
        # RFC 1350 retransmission of the last ACK.
        return [self._answer()]

    # -- internals ----------------------------------------------------------------------------

    def _first_answer(self) -> SendOack | SendAck:
        options = self._negotiated.oack_options
        # RFC 2347: the OACK stands in for ACK 0 and is answered with DATA 1.
        return SendOack(options) if options else SendAck(0)

    def _finish(self, finish: Finish) -> list[WriteAction]:
        self._state = _State.DONE
        self._deadline = None
        return [finish]

    def _illegal(self, message: str) -> list[WriteAction]:
        return [
            SendError(ErrorCode.ILLEGAL_OPERATION, "illegal TFTP operation"),
            *self._finish(Finish(Outcome.ERROR_SENT, message)),
        ]

    def _ack(self) -> SendAck:
        self._acked = self._received
        return SendAck(self._received % BLOCK_MOD)

    def _answer(self) -> SendOack | SendAck:
        """Say again where the transfer stands: the last ACK, or the OACK before DATA 1."""
        if self._received == 0:
            # Before DATA 1 a bare ACK 0 would tell an options-asking client that its options
            # were refused (RFC 2347), so the OACK is what gets repeated.
            return self._first_answer()
        return self._ack()

    def _on_data(self, block: int, payload: bytes, now: float) -> list[WriteAction]:
        # Map the 16-bit number onto the absolute sequence. The client sends at most a window
        # past the last ACK it heard, and that ACK is at most ``_received``, so only
        # ``_received + 1 .. _received + window`` can be new; anything else is old (window
        # <= 65535 keeps the two ranges apart across rollovers).
        ahead = (block - self._received) % BLOCK_MOD
        if self._state is _State.DALLY or ahead == 0 or ahead > self._window:
            # A duplicate, or a retransmission after our ACK was lost: acknowledge again what
            # we hold so the client can move on (RFC 1350 §6), but never store it twice. The
            # client must not resend on a duplicate ACK (RFC 1123 §4.2.3.1), so this cannot
            # snowball into the Sorcerer's Apprentice syndrome.
            return [self._answer()]
        if ahead > 1:
            # A gap: an earlier block of the window was lost. RFC 7440 §4: acknowledge the last
            # block received in order and drop this one; the sender restarts right after it.
            # The rest of the window falls into the same gap, so answer only its first block
            # (U-Boot's receiver does the same) and let the timers cover a lost answer.
            if self._gap_reported:
                return []
            self._gap_reported = True
            return [self._ack()]
        seq = self._received + 1
        offset = (seq - 1) * self._blksize
        if offset + len(payload) > self._max_size:
            message = f"upload exceeds {self._max_size} octets"
            return [
                SendError(ErrorCode.DISK_FULL, "disk full or allocation exceeded"),
                *self._finish(Finish(Outcome.ERROR_SENT, message)),
            ]
        self._received = seq
        self._bytes += len(payload)
        self._retries = 0
        self._gap_reported = False
        self._deadline = now + self._rto
        actions: list[WriteAction] = [WriteBlock(offset, payload)]
        if len(payload) < self._blksize:
            # RFC 1350 §6: a block shorter than blksize (possibly empty) ends the file.
            self._complete = True
            self._state = _State.DALLY
            actions += [Complete(), self._ack()]
        elif seq - self._acked >= self._window:
            # RFC 7440 §4: one ACK per window, for its last block.
            actions.append(self._ack())
        return actions
