"""Carrying out a read session's actions: the one interpreter of them, for the event loop's
transfers and the transfer threads alike.

A :class:`~netbootd.proto.tftp.ReadSession` answers each event with actions (send a window of
blocks, an OACK, an ERROR; finish). :func:`carry_out` frames and sends them in order through an
:class:`Outbox`, taking the blocks' octets from a :class:`Blocks`. Where octets are still being
read, it stops and hands back the actions from there on, to be carried out once they are in
memory. This module must not decide anything the session decides, nor own a socket or a timer.
"""

from __future__ import annotations

from typing import Protocol

from netbootd.proto.tftp import (
    Action,
    Error,
    Finish,
    OptionAck,
    SendBlocks,
    SendError,
    SendOack,
    encode,
)
from netbootd.proto.tftp.framing import Datagram, block_datagrams
from netbootd.transport.tftp.send import Address

__all__ = ["Blocks", "Outbox", "carry_out"]


class Blocks(Protocol):
    """A read transfer's file octets, as its sender holds them."""

    def ready(self, offset: int, end: int) -> bool:
        """Whether the octets from ``offset`` to ``end`` are in memory (or can be had at once)."""
        ...

    def view(self, offset: int, length: int) -> memoryview: ...

    def advance(self, offset: int) -> None:
        """Everything before ``offset`` is acknowledged (a window starts there)."""
        ...


class Outbox(Protocol):
    """Where a transfer's datagrams go, and whether windows may use segmentation offload."""

    @property
    def gso_max_blksize(self) -> int | None: ...

    def send(self, datagram: Datagram, addr: Address, segment: int = 0) -> None: ...


def carry_out(
    actions: list[Action], blocks: Blocks, out: Outbox, client: Address
) -> Finish | list[Action]:
    """Carry out ``actions`` in order. Returns the :class:`Finish` that ends the transfer, or
    the actions held back from the first window whose octets are not in memory yet (empty when
    all were carried out)."""
    for i, action in enumerate(actions):
        if type(action) is SendBlocks:
            offset = action.offset
            if not blocks.ready(offset, action.end):
                return actions[i:]
            for datagram, segment in block_datagrams(action, blocks.view, out.gso_max_blksize):
                out.send(datagram, client, segment)
            # A window starts at the first unacknowledged block: all before is done with.
            blocks.advance(offset)
        elif isinstance(action, SendOack):
            out.send(encode(OptionAck(action.options)), client)
        elif isinstance(action, SendError):
            out.send(encode(Error(action.code, action.message)), client)
        elif isinstance(action, Finish):
            return action
    return []
