"""Fixtures for end-to-end boots: a private lab network, boot payloads, and logs on failure.

The initramfs is built once per session; each test gets its own lab namespace and boot root.
When a test fails, the tail of every log in its lab directory (VM consoles, server logs) is
added to the report.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from netbootd_lab import Lab, build_initramfs, build_pxelinux_root, find_kernel
from netbootd_lab.payload import build_ipxe_root
from netbootd_lab.prereq import missing_firmware_prerequisites, missing_prerequisites

TAIL_LINES = 40


@pytest.fixture(scope="session")
def lab_prerequisites() -> None:
    reasons = missing_prerequisites()
    if reasons:
        pytest.skip("end-to-end lab unavailable: " + "; ".join(reasons))


@pytest.fixture(scope="session")
def firmware_prerequisites(lab_prerequisites: None) -> None:
    reasons = missing_firmware_prerequisites()
    if reasons:
        pytest.skip("firmware boots unavailable: " + "; ".join(reasons))


@pytest.fixture(scope="session")
def kernel(lab_prerequisites: None) -> Path:
    found = find_kernel()
    assert found is not None
    return found


@pytest.fixture(scope="session")
def initramfs(lab_prerequisites: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_initramfs(tmp_path_factory.mktemp("lab-cache") / "initramfs.cpio.gz")


@pytest.fixture
def pxelinux_root(tmp_path: Path, initramfs: Path, kernel: Path) -> Path:
    return build_pxelinux_root(tmp_path / "root", initramfs=initramfs, kernel=kernel)


@pytest.fixture
def ipxe_root(tmp_path: Path, initramfs: Path, kernel: Path) -> Path:
    """A root with only ``boot.ipxe``, a kernel and an initrd: no boot loader of its own."""
    return build_ipxe_root(tmp_path / "root", initramfs=initramfs, kernel=kernel)


@pytest.fixture
def lab(lab_prerequisites: None, tmp_path: Path) -> Iterator[Lab]:
    with Lab(tmp_path / "lab") as the_lab:
        yield the_lab


def _lab_log_tails(workdir: Path) -> str:
    parts = []
    for log in sorted(workdir.glob("*.log")):
        lines = log.read_text(errors="replace").splitlines()
        if not lines:
            continue
        shown = lines[-TAIL_LINES:]
        parts.append(f"--- {log.name} (last {len(shown)} of {len(lines)} lines) ---")
        parts.extend(shown)
    return "\n".join(parts)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, None]:
    outcome = yield
    report = outcome.get_result()
    the_lab = getattr(item, "funcargs", {}).get("lab")
    if report.failed and isinstance(the_lab, Lab):
        from netbootd_lab.vm import clean_console

        tails = clean_console(_lab_log_tails(the_lab.workdir))
        report.sections.append(("lab logs", tails))
