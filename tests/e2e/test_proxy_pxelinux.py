"""proxyDHCP: a BIOS machine boots from netbootd while another server hands out addresses.

The site's DHCP server (dnsmasq, addresses only, on a second host of the lab network) gives the
VM its address; netbootd, started with ``--proxy``, adds only the boot information (PXE 2.1
§2.2.3) and serves the files. netbootd must never hand out an address itself.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from netbootd_lab import BOOT_MARKER, DnsmasqServer, Lab, NetbootdServer, start_vm
from netbootd_lab.payload import CMDLINE_PREFIX, INITRD_NAME, KERNEL_NAME

pytestmark = pytest.mark.e2e

BOOT_TIMEOUT = 150


def test_proxy_beside_site_dhcp(lab: Lab, pxelinux_root: Path, tmp_path: Path) -> None:
    site_host = lab.add_host("site")
    site = DnsmasqServer(
        lab,
        pxelinux_root,
        state_dir=tmp_path / "site-state",
        log_path=lab.workdir / "site-dhcp.log",
        boot_file=None,
        host=site_host,
    ).start()
    server = NetbootdServer(
        lab,
        pxelinux_root,
        state_dir=tmp_path / "state",
        log_path=lab.workdir / "netbootd.log",
        boot=["bios=pxelinux.0"],
        proxy=True,
    ).start()
    vm = start_vm(lab)

    seconds = vm.wait_for(BOOT_MARKER, timeout=BOOT_TIMEOUT)
    vm.wait_for(CMDLINE_PREFIX, timeout=10)
    print(f"\nBIOS pxelinux boot through netbootd proxyDHCP: marker after {seconds:.1f} s")
    cmdline = vm.kernel_cmdline()
    assert cmdline is not None and "netbootd.lab=pxelinux" in cmdline.split()

    # The address came from the site server ...
    site_answers = [
        (ev.event, ev.get("decision"), ev.get("address"))
        for ev in site.events()
        if ev.svc == "dhcp" and ev.get("mac").lower() == vm.mac
    ]
    acked = [address for event, decision, address in site_answers if decision == "ACK"]
    assert acked, f"the site DHCP server never acknowledged the VM: {site_answers}"

    # ... and netbootd only added boot information, never an address.
    ours = [ev for ev in server.events() if ev.svc == "dhcp" and ev.get("mac").lower() == vm.mac]
    decisions = {ev.get("decision") for ev in ours}
    assert "PROXY-OFFER" in decisions, [ev.line for ev in ours]
    assert not decisions & {"OFFER", "ACK"}, [ev.line for ev in ours]
    assert all(ev.get("address") == "-" for ev in ours)
    assert all(ev.get("file") in ("pxelinux.0", "") for ev in ours)

    for name in ("pxelinux.0", KERNEL_NAME, INITRD_NAME):
        sent = [
            ev
            for ev in server.events()
            if ev.svc == "tftp" and ev.get("file").lstrip("/") == name and ev.get("result") == "ok"
        ]
        assert sent, f"netbootd did not serve {name} over TFTP"
        assert sent[-1].get("client").split(":")[0] == acked[-1]
