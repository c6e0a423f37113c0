"""The HTTP edge's pure rules: ``If-Range`` (RFC 9110 §13.1.5), and the connection cap that
the open-file limit leaves room for."""

from __future__ import annotations

import resource
from collections.abc import Iterator
from email.utils import formatdate

import pytest

from netbootd.transport.descriptors import (
    BASE_RESERVE,
    MIN_CONNECTIONS,
    connection_cap,
    raise_open_file_limit,
)
from netbootd.transport.http import if_range_holds

ETAG = '"18ede718d542e8e4-4000"'
MODIFIED = 1_796_345_920
NOW = MODIFIED + 3600


@pytest.mark.parametrize(
    ("validator", "holds"),
    [
        (ETAG, True),
        (f"  {ETAG} ", True),
        ('"18ede718d542e8e4-4001"', False),  # the file changed: another tag
        (f"W/{ETAG}", False),  # weak tags never match strongly (§8.8.3.2)
        (formatdate(MODIFIED, usegmt=True), True),
        (formatdate(MODIFIED + 1, usegmt=True), False),  # exactly, not "no later than"
        (formatdate(MODIFIED - 86400, usegmt=True), False),
        ("Sunday, 06-Nov-94 08:49:37 GMT", False),
        ("not a validator", False),
        ("", False),
    ],
)
def test_if_range(validator: str, holds: bool) -> None:
    assert if_range_holds(validator, ETAG, MODIFIED, NOW) is holds


def test_if_range_date_of_a_file_changed_this_second_is_weak() -> None:
    # Last-Modified in the same second as the response may hide a second change (§8.8.2.2).
    date = formatdate(MODIFIED, usegmt=True)
    assert not if_range_holds(date, ETAG, MODIFIED, MODIFIED)


def test_connection_cap_fits_the_limit() -> None:
    assert connection_cap(4096, 524_288, 1024) == 4096
    # systemd's 1,024 with TFTP's sessions leaves nothing: the least is kept.
    assert connection_cap(4096, 1024, 1024) == MIN_CONNECTIONS
    limit = 8192
    cap = connection_cap(4096, limit, 1024)
    assert cap == (limit - BASE_RESERVE - 2048) // 2
    assert 2 * cap + 2 * 1024 + BASE_RESERVE <= limit


@pytest.fixture
def soft_limit() -> Iterator[tuple[int, int]]:
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        yield before
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, before)


def test_raise_open_file_limit_lifts_the_soft_limit_to_the_hard_one(
    soft_limit: tuple[int, int],
) -> None:
    _, hard = soft_limit
    resource.setrlimit(resource.RLIMIT_NOFILE, (512, hard))
    raised = raise_open_file_limit()
    assert (raised.old, raised.new, raised.error) == (512, hard, None)
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
    again = raise_open_file_limit()  # already there: nothing to do
    assert (again.old, again.new) == (hard, hard)
