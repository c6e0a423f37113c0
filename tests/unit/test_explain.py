"""``netbootd explain``: the boot decision it reports is the one the DHCP reply carries."""

from __future__ import annotations

from pathlib import Path

from netbootd.config import build
from netbootd.explain import ClientDescription, explain

HOST_MAC = "52:54:00:00:00:07"


async def test_a_host_entrys_boot_file_is_the_decision_shown(tmp_path: Path) -> None:
    (tmp_path / "special.0").write_bytes(b"loader")
    flags = {
        "interface": "lo",
        "root": tmp_path,
        "dhcp-range": "127.0.0.100-127.0.0.200",
    }
    config = build({"hosts": [{"mac": HOST_MAC, "boot-file": "special.0"}]}, flags)
    report = await explain(config, ClientDescription(mac=HOST_MAC, arch=0))
    sections = report.split("\n\n")
    (reply,) = [s for s in sections if s.startswith("DHCP reply")]
    (decision,) = [s for s in sections if s.startswith("boot decision")]
    assert "file special.0" in reply
    assert "file special.0" in decision
    assert f"why: [[hosts]] {HOST_MAC} boot-file" in decision
    # Another machine is not that host: the built-in choice for its firmware.
    other = await explain(config, ClientDescription(mac="52:54:00:00:00:08", arch=0))
    assert "special.0" not in other
