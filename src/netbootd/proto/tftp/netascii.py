"""netascii, the text mode of TFTP: local (LF-terminated) text as it crosses the wire.

RFC 1350 §1 names the mode and defers to the Telnet NVT of RFC 764: a line ends in CR LF, and a
CR that does not end a line is sent as CR NUL. Each octet converts on its own, with no state
carried from one octet to the next, so the conversion of a file read in pieces is the pieces'
conversions put together: that is what lets a caller convert a large file as it streams.

Pure: bytes in, bytes out. This module must not open files or sockets, read a clock or log.
"""

from __future__ import annotations

__all__ = ["netascii_length", "to_netascii"]


def to_netascii(data: bytes) -> bytes:
    """Convert local (LF-terminated) text to netascii as RFC 764 defines it.

    CR becomes CR NUL first, so that the CR of each newly made CR LF is not doubled.
    """
    return data.replace(b"\r", b"\r\0").replace(b"\n", b"\r\n")


def netascii_length(data: bytes) -> int:
    """``len(to_netascii(data))`` without building it: CR and LF each gain one octet."""
    return len(data) + data.count(b"\r") + data.count(b"\n")
