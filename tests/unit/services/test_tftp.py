"""The TFTP service's decisions, without sockets: admission, what a read or an upload opens and
what a refusal answers, netascii streamed from the file, and the transfer's log line."""

from __future__ import annotations

import errno
import logging
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netbootd.logs.events import parse_event
from netbootd.proto.tftp import (
    Error,
    ErrorCode,
    Finish,
    Negotiated,
    Outcome,
    ReadRequest,
    WriteRequest,
)
from netbootd.proto.tftp.netascii import to_netascii
from netbootd.services.files import (
    AccessDenied,
    FileLookupError,
    FileNotFound,
    FileSource,
    FileTree,
)
from netbootd.services.tftp import (
    DUPLICATE,
    Admission,
    Admitted,
    NetasciiFile,
    Refusal,
    Refused,
    client_text,
    create_upload,
    finish_result,
    negotiate_upload,
    open_read,
    options_text,
    read_session,
    storage_error,
    transfer_line,
    write_session,
)
from netbootd.services.uploads import FileExists, UploadDir
from tests.helpers.files import Generated, Octets, Source

A = ("10.0.0.1", 2000)
B = ("10.0.0.1", 2001)
C = ("10.0.0.2", 2000)
READ = ReadRequest("pxelinux.0", "octet")


def admission(*, total: int = 10, per_client: int = 10, uploads: bool = False) -> Admission:
    return Admission(max_sessions=total, max_sessions_per_client=per_client, uploads=uploads)


# --------------------------------------------------------------------------------------------
# Admission


def test_admitted_request_counts_until_released() -> None:
    gate = admission()
    assert gate.admit(READ, A) == Admitted()
    assert len(gate) == 1
    gate.release((A, READ))
    assert len(gate) == 0
    gate.release((A, READ))  # twice is harmless
    assert len(gate) == 0


def test_repeated_request_is_a_duplicate() -> None:
    gate = admission()
    gate.admit(READ, A)
    assert gate.admit(READ, A) is DUPLICATE
    # The same request from another port is another transfer.
    assert gate.admit(READ, B) == Admitted()
    assert len(gate) == 2


def test_caps_in_all_and_per_client() -> None:
    gate = admission(total=3, per_client=2)
    assert gate.admit(READ, A) == Admitted()
    assert gate.admit(READ, B) == Admitted()
    refused = gate.admit(ReadRequest("other", "octet"), A)
    assert isinstance(refused, Refused)
    assert refused.refusal.error == Error(
        ErrorCode.NOT_DEFINED, "too many transfers, try again later"
    )
    assert refused.refusal.counter == "refused_busy"
    assert gate.admit(READ, C) == Admitted()
    assert isinstance(gate.admit(READ, ("10.0.0.3", 1)), Refused)  # all three places taken
    assert len(gate) == 3


def test_superseded_transfer_frees_its_place_first() -> None:
    gate = admission(total=1)
    gate.admit(READ, A)
    other = ReadRequest("other", "octet")
    assert gate.admit(other, A, replacing=(A, READ)) == Admitted(supersede=True)
    assert len(gate) == 1
    # A refusal after superseding still supersedes: the client gave up on the old transfer.
    verdict = gate.admit(ReadRequest("x", "mail"), A, replacing=(A, other))
    assert isinstance(verdict, Refused) and verdict.supersede
    assert len(gate) == 0


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (ReadRequest("f", "mail"), "mail mode is not supported"),
        (ReadRequest("f", "binary"), "unknown transfer mode"),
        (WriteRequest("f", "netascii"), "uploads are octet mode only"),
    ],
)
def test_mode_refusals(request_: ReadRequest | WriteRequest, message: str) -> None:
    verdict = admission(uploads=True).admit(request_, A)
    assert isinstance(verdict, Refused)
    assert verdict.refusal.error == Error(ErrorCode.ILLEGAL_OPERATION, message)
    assert verdict.refusal.result == f"illegal mode: {request_.mode}"
    assert verdict.refusal.counter == "bad_mode"


def test_write_to_a_read_only_server_is_refused_before_anything_else() -> None:
    gate = admission(total=1)
    gate.admit(READ, A)
    verdict = gate.admit(WriteRequest("up", "octet"), A)
    assert verdict == Refused(
        Refusal(
            Error(ErrorCode.ACCESS_VIOLATION, "read-only server"),
            "access denied: read-only server",
            "write_refused",
        )
    )


# --------------------------------------------------------------------------------------------
# Opening a read


@pytest.mark.parametrize(
    ("failure", "error", "result", "counter", "level"),
    [
        (
            FileNotFound("no such file"),
            Error(ErrorCode.FILE_NOT_FOUND, "file not found"),
            "not found",
            "not_found",
            logging.INFO,
        ),
        (
            AccessDenied("outside root"),
            Error(ErrorCode.ACCESS_VIOLATION, "access violation"),
            "access denied: outside root",
            "access_denied",
            logging.WARNING,
        ),
        (
            AccessDenied("not a regular file"),
            Error(ErrorCode.ACCESS_VIOLATION, "access violation"),
            "access denied: not a regular file",
            "access_denied",
            logging.WARNING,
        ),
        (
            FileLookupError("template failed: x"),
            Error(ErrorCode.NOT_DEFINED, "cannot read file"),
            "error: template failed: x",
            "server_error",
            logging.WARNING,
        ),
        (
            OSError(errno.EIO, "Input/output error"),
            Error(ErrorCode.NOT_DEFINED, "cannot read file"),
            "error: Input/output error",
            "server_error",
            logging.WARNING,
        ),
    ],
)
def test_open_failures_answer_as_tftp_errors(
    failure: Exception, error: Error, result: str, counter: str, level: int
) -> None:
    source = Source(failure)
    refusal = open_read(source, READ, "10.0.0.1")  # type: ignore[arg-type]
    assert refusal == Refusal(error, result, counter, level)
    assert source.asked == [("pxelinux.0", "10.0.0.1")]


def test_open_a_tree(tmp_path: Path) -> None:
    (tmp_path / "menus").mkdir()
    (tmp_path / "a.txt").write_bytes(b"one\ntwo\n")
    tree: FileSource = FileTree(tmp_path)
    opened = open_read(tree, ReadRequest("a.txt", "octet"), "h")
    assert not isinstance(opened, Refusal)
    assert opened.read(0, 100) == b"one\ntwo\n"
    opened.close()
    text = open_read(tree, ReadRequest("a.txt", "netascii"), "h")
    assert isinstance(text, NetasciiFile)
    assert text.size == 10
    assert text.read(0, 100) == b"one\r\ntwo\r\n"
    text.close()
    refusal = open_read(tree, ReadRequest("menus", "octet"), "h")
    assert isinstance(refusal, Refusal) and refusal.result == "access denied: not a regular file"


def test_netascii_open_that_fails_closes_the_file() -> None:
    failing = Octets(b"x" * 100, fail=True)
    closed: list[bool] = []
    failing.close = lambda: closed.append(True)  # type: ignore[method-assign]
    refusal = open_read(Source(failing), ReadRequest("f", "netascii"), "h")  # type: ignore[arg-type]
    assert refusal == Refusal(
        Error(ErrorCode.NOT_DEFINED, "cannot read file"),
        "error: Input/output error",
        "server_error",
    )
    assert closed == [True]


@pytest.mark.parametrize(("options", "rto"), [((), 1.5), ((("timeout", "4"),), 4.0)])
def test_read_session_takes_the_clients_timeout(
    options: tuple[tuple[str, str], ...], rto: float
) -> None:
    session = read_session(
        ReadRequest("f", "octet", (("blksize", "9000"), *options)),
        5000,
        max_blksize=1468,
        max_windowsize=64,
        timeout=1.5,
        retries=3,
    )
    assert session.negotiated.blksize == 1468
    assert session.total_blocks == 4
    session.start(10.0)
    assert session.deadline == 10.0 + rto


# --------------------------------------------------------------------------------------------
# netascii, streamed


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.sampled_from([b"a", b"\n", b"\r", b"\0", b"\r\n", b"xyz"]), max_size=400).map(
        b"".join
    ),
    st.integers(1, 40),
    st.lists(st.integers(1, 50), min_size=1, max_size=200),
    st.lists(st.integers(0, 3), max_size=50),
)
def test_streamed_netascii_is_the_whole_conversion(
    content: bytes, step: int, lengths: list[int], backs: list[int]
) -> None:
    """Read in blocks of random sizes, going back now and then to a recent block (a
    retransmitted window), the stream is the whole file's conversion."""
    whole = to_netascii(content)
    opened = NetasciiFile(Octets(content), step=step)
    assert opened.size == len(whole)
    served = bytearray()
    starts: list[int] = []
    offset = 0
    for number, length in enumerate(lengths):
        if backs and number % 5 == 4 and starts:
            back = starts[-1 - min(backs[number % len(backs)], len(starts) - 1)]
            assert opened.read(back, length) == whole[back : back + length]
        piece = opened.read(offset, length)
        assert piece == whole[offset : offset + length]
        starts.append(offset)
        served += piece
        offset += len(piece)
        if not piece:
            break
    assert bytes(served) == whole[: len(served)]
    if offset >= len(whole):
        assert bytes(served) == whole


def test_netascii_larger_than_16_mib_streams_in_bounded_pieces() -> None:
    line = b"0123456789abcdef" * 4 + b"\n"  # 65 octets, 66 as netascii
    source = Generated(line, 17 * 1024 * 1024 + 7)
    opened = NetasciiFile(source)
    lines, rest = divmod(source.size, len(line))
    assert opened.size == lines * (len(line) + 1) + rest
    block = 65464
    last = opened.size - (opened.size % block or block)
    tail = opened.read(last, block)
    assert len(tail) == opened.size - last
    assert tail.endswith(line[:rest])
    assert opened.read(opened.size, block) == b""
    opened.close()
    assert source.closed


def test_netascii_of_a_file_that_shrank_reads_short() -> None:
    content = b"a\n" * 1000
    shrinking = Octets(content)
    opened = NetasciiFile(shrinking, step=64)
    shrinking.shrink_to = 100
    assert len(opened.read(0, 3000)) < 3000


def test_netascii_of_a_file_that_shrank_while_measured() -> None:
    with pytest.raises(OSError, match="file changed"):
        NetasciiFile(Octets(b"a" * 100, shrink_to=50), step=64)


# --------------------------------------------------------------------------------------------
# Uploads


def test_upload_size_over_the_limit_is_refused() -> None:
    refusal = negotiate_upload(
        WriteRequest("f", "octet", (("tsize", "2000"),)),
        max_blksize=1468,
        max_windowsize=64,
        max_size=1000,
    )
    assert isinstance(refusal, Refusal)
    assert refusal.error.code == ErrorCode.DISK_FULL
    assert refusal.result == f"refused: {refusal.error.message}"
    assert refusal.counter == "upload_refused"
    agreed = negotiate_upload(
        WriteRequest("f", "octet", (("blksize", "1024"),)),
        max_blksize=1468,
        max_windowsize=64,
        max_size=1000,
    )
    assert isinstance(agreed, Negotiated) and agreed.blksize == 1024


def test_write_session_takes_the_clients_timeout() -> None:
    negotiated = negotiate_upload(
        WriteRequest("f", "octet", (("timeout", "7"),)),
        max_blksize=1468,
        max_windowsize=64,
        max_size=1000,
    )
    assert isinstance(negotiated, Negotiated)
    session = write_session(negotiated, max_size=1000, timeout=1.0, retries=2)
    session.start(0.0)
    assert session.deadline == 7.0


def test_create_upload_refusals(tmp_path: Path) -> None:
    uploads = UploadDir(tmp_path)
    (tmp_path / "taken").write_bytes(b"x")
    exists = create_upload(uploads, WriteRequest("taken", "octet"))
    assert exists == Refusal(
        Error(ErrorCode.FILE_EXISTS, "file already exists"),
        "refused: file exists",
        "upload_refused",
    )
    outside = create_upload(uploads, WriteRequest("../x", "octet"))
    assert isinstance(outside, Refusal) and outside.counter == "access_denied"
    fresh = create_upload(uploads, WriteRequest("new", "octet"))
    assert not isinstance(fresh, Refusal)
    fresh.discard()


class _Full:
    def create(self, name: str) -> object:
        raise OSError(errno.ENOSPC, "No space left on device")


def test_create_upload_on_a_full_disk() -> None:
    refusal = create_upload(_Full(), WriteRequest("f", "octet"))  # type: ignore[arg-type]
    assert refusal == Refusal(
        Error(ErrorCode.DISK_FULL, "cannot create file"),
        "error: No space left on device",
        "server_error",
    )


def test_storage_errors() -> None:
    assert storage_error(FileExists("taken")) == Error(ErrorCode.FILE_EXISTS, "file already exists")
    assert storage_error(OSError(errno.EDQUOT, "Quota")) == Error(ErrorCode.DISK_FULL, "disk full")
    assert storage_error(OSError(errno.EIO, "Input/output error")) == Error(
        ErrorCode.NOT_DEFINED, "cannot store file: Input/output error"
    )


# --------------------------------------------------------------------------------------------
# The log line


@pytest.mark.parametrize(
    ("finish", "result", "level"),
    [
        (Finish(Outcome.OK), "ok", logging.INFO),
        (Finish(Outcome.SIZE_QUERY, "x"), "size query", logging.INFO),
        (Finish(Outcome.CLIENT_ERROR, "bye"), "client error: bye", logging.WARNING),
        (Finish(Outcome.TIMED_OUT), "timed out", logging.WARNING),
        (Finish(Outcome.ERROR_SENT, "disk"), "error: disk", logging.WARNING),
    ],
)
def test_finish_result(finish: Finish, result: str, level: int) -> None:
    assert finish_result(finish) == (result, level)


def test_transfer_line() -> None:
    negotiated = Negotiated(
        blksize=1432, tsize=246, oack_options=(("blksize", "1432"), ("tsize", "246"))
    )
    line = transfer_line(
        ("10.99.0.100", 2070),
        "pxelinux.cfg/default",
        options=options_text(negotiated),
        size=2_000_000,
        seconds=0.5,
        result="ok",
        retransmits=0,
    )
    assert parse_event(line) == (
        "transfer",
        {
            "client": "10.99.0.100:2070",
            "file": "pxelinux.cfg/default",
            "options": "blksize=1432,tsize=246",
            "bytes": "2000000",
            "seconds": "0.500",
            "rate": "4.00MB/s",
            "retransmits": "0",
            "result": "ok",
        },
    )
    refused = transfer_line(
        ("fe80::1", 69, 0, 2), "x y", options="-", size=0, seconds=-1.0, result="not found"
    )
    event, fields = parse_event(refused)
    assert event == "transfer"
    assert fields["client"] == "[fe80::1]:69" == client_text(("fe80::1", 69))
    assert fields["file"] == "x y"
    assert fields["seconds"] == "0.000" and fields["rate"] == "0.00MB/s"
    assert "retransmits" not in fields
    assert (
        parse_event(
            transfer_line(A, "f", options="-", size=0, seconds=0, result="ok", event="upload")
        )[0]
        == "upload"
    )
