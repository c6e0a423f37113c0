"""A DHCP worker's reports to worker 0: framed as worker 0 reads them, and never a blocked
event loop when worker 0 does not read."""

from __future__ import annotations

import asyncio
import os
import pickle

from netbootd.services.metrics import ANSWER_TIME_BOUNDS, Histogram, PoolUse, WorkerReport
from netbootd.workers import WorkerLink

REPORT = WorkerReport(
    1,
    {"dhcp": {"DISCOVER:OFFER": 7, "sent": 7}},
    Histogram(ANSWER_TIME_BOUNDS, (7,) + (0,) * len(ANSWER_TIME_BOUNDS), 0.0007),
    (PoolUse("10.0.0.0/24", "10.0.0.100-10.0.0.139", 40, bound=7),),
    {"dropped": 0, "failed": 0, "written": 14},
)


async def test_a_report_reaches_the_other_end_whole() -> None:
    read_fd, write_fd = os.pipe()
    link = WorkerLink(write_fd)
    await link.connect()
    link.report(REPORT)
    await asyncio.sleep(0.05)
    data = os.read(read_fd, 65536)
    size = int.from_bytes(data[:4], "big")
    assert len(data) == 4 + size
    assert pickle.loads(data[4:]) == ("report", REPORT)
    os.close(read_fd)


async def test_reports_to_a_reader_that_does_not_read_are_skipped_not_blocking() -> None:
    read_fd, write_fd = os.pipe()
    link = WorkerLink(write_fd)
    await link.connect()
    big = WorkerReport(1, {"dhcp": {f"outcome-{n}": n for n in range(5000)}}, None)
    for _ in range(100):  # far more than the pipe holds: a blocking write would hang here
        link.report(big)
    assert link.reports_skipped > 0
    os.close(read_fd)
