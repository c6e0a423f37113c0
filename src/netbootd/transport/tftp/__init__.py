"""The asyncio edge of the TFTP server: its sockets, timers and transfer threads.

``listener`` takes requests on the well-known port (:class:`TftpServer`), ``transfers`` carries
accepted reads and uploads on the event loop, ``pump`` carries a read in a thread of its own,
``actions`` interprets a read session's actions for both, ``send`` is the one send path (with
UDP segmentation offload and its fallback), ``endpoint`` an event-loop UDP socket. The service
(:mod:`netbootd.services.tftp`) decides what a request gets; the sessions
(:mod:`netbootd.proto.tftp`) decide everything about a transfer. Nothing here decides either.
"""

from __future__ import annotations

from netbootd.transport.tftp.listener import TftpServer, TftpSettings

__all__ = ["TftpServer", "TftpSettings"]
