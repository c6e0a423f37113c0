"""The metrics' values: histograms that add up, rates read from transfer events, pool use
counted over a worker's share of each pool."""

from __future__ import annotations

import time
from ipaddress import IPv4Address, IPv4Network

import pytest

from netbootd.boot.journal import BootEvent
from netbootd.boot.leases import AddressRange, Lease, LeaseBook, LeaseState
from netbootd.boot.subnets import Subnet
from netbootd.services.metrics import (
    TRANSFER_RATE_BOUNDS,
    Histogram,
    PoolUse,
    TransferRates,
    bucket,
    merge_counters,
    merge_pools,
    pool_use,
    rate_of,
)


def test_buckets_are_inclusive_upper_bounds() -> None:
    bounds = (0.001, 0.01)
    assert [bucket(bounds, v) for v in (0.0, 0.001, 0.0011, 0.01, 5.0)] == [0, 0, 1, 1, 2]


def test_histograms_add_up_and_cumulate() -> None:
    one = Histogram((1.0, 2.0), (1, 0, 2), 7.5)
    both = one.plus(Histogram((1.0, 2.0), (0, 3, 1), 9.0))
    assert both == Histogram((1.0, 2.0), (1, 3, 3), 16.5)
    assert both.cumulative() == [(1.0, 1), (2.0, 4), (float("inf"), 7)]
    assert both.count == 7
    with pytest.raises(ValueError, match="different buckets"):
        one.plus(Histogram.empty((1.0,)))


def _transfer(service: str, **fields: str) -> BootEvent:
    return BootEvent(1.0, "", "10.0.0.5", service, "transfer", fields)


def test_rates_come_from_the_rate_field_else_bytes_over_seconds() -> None:
    assert rate_of(_transfer("tftp", result="ok", rate="12.34MB/s")) == 12.34
    assert rate_of(_transfer("http", result="ok", bytes="3000000", seconds="2")) == 1.5
    assert rate_of(_transfer("http", result="ok", bytes="0", seconds="0")) is None
    assert rate_of(_transfer("tftp", result="not found", rate="1.00MB/s")) is None
    assert rate_of(_transfer("tftp", result="ok", rate="fast", bytes="x")) is None


def test_transfer_rates_by_service() -> None:
    rates = TransferRates()
    rates.observe([
        _transfer("tftp", result="ok", rate="0.40MB/s"),
        _transfer("tftp", result="ok", rate="7.00MB/s"),
        _transfer("http", result="ok", rate="300.00MB/s"),
        _transfer("http", result="timed out"),
        BootEvent(1.0, "52:54:00:00:00:01", "", "dhcp", "DISCOVER", {"decision": "OFFER"}),
    ])  # fmt: skip
    found = rates.histograms()
    tftp, http = found["tftp"], found["http"]
    assert tftp.count == 2 and tftp.total == pytest.approx(7.4)
    assert tftp.counts[TRANSFER_RATE_BOUNDS.index(0.5)] == 1
    assert tftp.counts[TRANSFER_RATE_BOUNDS.index(10.0)] == 1
    assert http.count == 1 and http.counts[TRANSFER_RATE_BOUNDS.index(500.0)] == 1


def test_pool_use_counts_a_share_under_the_whole_pool() -> None:
    network = IPv4Network("10.0.0.0/24")
    whole = Subnet(network, (AddressRange.parse("10.0.0.100-10.0.0.139"),))
    mine = whole.share(1, 2)  # .120-.139
    later = time.time() + 3600
    book = LeaseBook([
        Lease(IPv4Address("10.0.0.120"), "mac:a", "a", LeaseState.BOUND, later),
        Lease(IPv4Address("10.0.0.121"), "mac:b", "b", LeaseState.BOUND, later),
        Lease(IPv4Address("10.0.0.122"), "mac:c", "c", LeaseState.OFFERED, later),
        Lease(IPv4Address("10.0.0.123"), "", "d", LeaseState.DECLINED, later),
        Lease(IPv4Address("10.0.0.5"), "mac:e", "e", LeaseState.BOUND, later),  # reserved
    ])  # fmt: skip
    (use,) = pool_use(book, (mine,), (whole,))
    assert use == PoolUse("10.0.0.0/24", "10.0.0.100-10.0.0.139", 40, 2, 1, 1)
    theirs = PoolUse("10.0.0.0/24", "10.0.0.100-10.0.0.139", 40, 5, 0, 0)
    assert merge_pools([[use], [theirs]]) == [
        PoolUse("10.0.0.0/24", "10.0.0.100-10.0.0.139", 40, 7, 1, 1)
    ]


def test_counters_add_up_key_by_key() -> None:
    merged = merge_counters([{"dhcp": {"sent": 2, "malformed": 1}}, {"dhcp": {"sent": 3}}])
    assert merged == {"dhcp": {"sent": 5, "malformed": 1}}
