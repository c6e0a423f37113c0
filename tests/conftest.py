"""Session-wide test policy.

Tests that need root, QEMU or a client program skip with a reason when run by hand on a machine
without them. ``make test`` installs all of that first and sets NETBOOTD_NO_SKIPS=1: there a
skipped test means a tier silently did not run, and the session fails.
"""

from __future__ import annotations

import os

import pytest


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("NETBOOTD_NO_SKIPS") != "1" or exitstatus != 0:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if skipped:
        for report in skipped:
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
            print(f"\nNETBOOTD_NO_SKIPS: {report.nodeid} skipped: {reason}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
