"""proxyDHCP beside a site DHCP server: UEFI and BIOS firmware get their address from it, their
boot from us.

Kea (kea-dhcp4, addresses only, memfile leases), and then ISC dhcpd (addresses only), runs on a
second host of the lab network as the site's DHCP server. netbootd, started with ``--proxy``
and no ``--boot`` flags, adds only the boot information (PXE 2.1 §2.2.3) to what the firmware
hears, and serves the files from a root holding ``boot.ipxe``, a kernel and an initrd.

(a) OVMF with EDK2's own PXE: its proxy offer names ``snponly.efi``; the iPXE it loads asks
again and gets the script, never iPXE a second time. (b) SeaBIOS with the iPXE ROM of the e1000:
iPXE from the start, it gets the script at once.

Each case checks that the address is the site server's (its log and its lease file), that
netbootd never offered or acknowledged an address, and, from ``--log-dhcp``, that each of
netbootd's answers carries option 60 ``PXEClient`` and the client's UUID (option 97) as the
client sent it.

(c) OVMF with EDK2's own UEFI HTTP Boot beside Kea: it takes Kea's offer for its address and
netbootd's proxy offer (no address, option 60 ``HTTPClient``, the URL of ``snponly.efi``) for
its boot file, fetches it over HTTP, and the iPXE it runs asks again and gets the script.

Then the other layout PXE 2.1 describes: Kea and netbootd on one host. Kea holds port 67 and
says ``PXEClient`` itself; netbootd serves port 4011 alone, and both firmwares boot through it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from netbootd_lab import BOOT_MARKER, KeaServer, Lab, LogEvent, NetbootdServer, start_vm
from netbootd_lab.dhcpd import IscDhcpdServer
from netbootd_lab.payload import CMDLINE_PREFIX, INITRD_NAME, IPXE_SCRIPT_NAME, KERNEL_NAME
from netbootd_lab.vm import EDK2_NIC, IPXE_NIC, Firmware, UefiBoot

pytestmark = pytest.mark.e2e

BOOT_TIMEOUT = 240
# The machine's SMBIOS UUID, which the firmware sends as option 97. Its last eight octets keep
# their order whichever way a firmware encodes the first three fields.
VM_UUID = "6e657462-6f6f-7464-8000-00000000a197"
UUID_TAIL = "80:00:00:00:00:00:a1:97"


@dataclass(frozen=True)
class Case:
    firmware: Firmware
    nic: str
    uefi_boot: UefiBoot
    platform: str  # iPXE's ${platform}
    # netbootd's boot answers in order, as (client kind, file): the firmware's own, then
    # iPXE's. "{server}" stands for netbootd's address.
    answers: tuple[tuple[str, str], ...]


SCRIPT = f"http://{{server}}/{IPXE_SCRIPT_NAME}"
CASES = {
    "a-uefi-pxe": Case(
        Firmware.UEFI,
        EDK2_NIC,
        UefiBoot.PXE4,
        "efi",
        (("pxe", "snponly.efi"), ("ipxe", SCRIPT)),
    ),
    "b-bios-ipxe-rom": Case(Firmware.BIOS, IPXE_NIC, UefiBoot.ALL, "pcbios", (("ipxe", SCRIPT),)),
}

_OPTION_LINE = re.compile(
    r"netbootd\.dhcp (?P<dir>received|sent) xid=(?P<xid>0x[0-9a-f]{8}) +(?P<code>\d+) "
    r"[\w-]+: (?P<value>.*)$",
    re.MULTILINE,
)


def dhcp_options(log: str) -> dict[tuple[str, str], dict[str, str]]:
    """``--log-dhcp`` lines as {(direction, xid): {code: value}} (the last packet of each)."""
    found: dict[tuple[str, str], dict[str, str]] = {}
    for match in _OPTION_LINE.finditer(log):
        found.setdefault((match["dir"], match["xid"]), {})[match["code"]] = match["value"]
    return found


def transactions(events: list[LogEvent]) -> list[LogEvent]:
    """netbootd's one line per DHCP transaction (not the --log-dhcp detail lines)."""
    return [ev for ev in events if ev.svc == "dhcp" and ev.get("decision")]


def boot_answers(events: list[LogEvent], mac: str) -> list[LogEvent]:
    return [
        ev
        for ev in transactions(events)
        if ev.get("mac").lower() == mac and ev.get("file", "-") != "-"
    ]


def check_pxe_options(server: NetbootdServer, answers: list[LogEvent]) -> None:
    """Every answer said PXEClient, carried option 43 and no lease, and echoed the client's
    UUID (option 97) as the client sent it (PXE 2.1 §2.2.3)."""
    options = dhcp_options(server.log_text())
    for ev in answers:
        xid = ev.get("xid")
        received, sent = options[("received", xid)], options[("sent", xid)]
        assert sent.get("60") == "PXEClient", sent
        assert "43" in sent, sent
        assert received.get("97", "").endswith(UUID_TAIL), f"{xid}: {received}"
        assert sent.get("97") == received["97"], (received, sent)
        assert sent.get("53") in ("OFFER", "ACK") and "51" not in sent, sent


def _proxy(lab: Lab, ipxe_root: Path, tmp_path: Path) -> NetbootdServer:
    """netbootd as a proxyDHCP with its built-in boot files, logging every option."""
    return NetbootdServer(
        lab,
        ipxe_root,
        state_dir=tmp_path / "state",
        log_path=lab.workdir / "netbootd.log",
        boot=(),
        extra_args=["--log-dhcp"],
        proxy=True,
    ).start()


def _site_server(kind: str, lab: Lab, tmp_path: Path) -> KeaServer | IscDhcpdServer:
    """The site's DHCP server on a second host of the lab network, addresses only."""
    where = {"state_dir": tmp_path / "site-state", "log_path": lab.workdir / "site-dhcp.log"}
    if kind == "kea":
        return KeaServer(lab, host=lab.add_host("site"), **where).start()
    return IscDhcpdServer(lab, host=lab.add_host("site"), **where).start()


@pytest.mark.usefixtures("firmware_prerequisites")
@pytest.mark.parametrize("site_kind", ["kea", "isc-dhcpd"])
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_proxy_beside_site_server(
    case: Case, site_kind: str, lab: Lab, ipxe_root: Path, tmp_path: Path
) -> None:
    site = _site_server(site_kind, lab, tmp_path)
    server = _proxy(lab, ipxe_root, tmp_path)
    vm = start_vm(
        lab,
        firmware=case.firmware,
        nic=case.nic,
        uefi_boot=case.uefi_boot,
        extra_args=["-uuid", VM_UUID],
    )

    seconds = vm.wait_for(BOOT_MARKER, timeout=BOOT_TIMEOUT)
    vm.wait_for(CMDLINE_PREFIX, timeout=10)
    print(f"\n{case.firmware}/{case.nic} through proxyDHCP beside {site_kind}: {seconds:.1f} s")
    cmdline = vm.kernel_cmdline()
    assert cmdline is not None
    args = cmdline.split()
    assert "netbootd.lab=ipxe" in args
    assert f"netbootd.platform={case.platform}" in args

    # The address is the site server's: it logged the allocation and wrote the lease down.
    acked = [
        ev.get("address")
        for ev in site.events()
        if ev.get("decision") == "ACK" and ev.get("mac") == vm.mac
    ]
    assert acked, f"{site_kind} never allocated an address to the VM:\n{site.log_tail()}"
    assert {lease.address for lease in site.leases() if lease.mac == vm.mac} == set(acked)

    # netbootd only added boot information, never an address.
    events = server.events()
    ours = [ev for ev in transactions(events) if ev.get("mac").lower() == vm.mac]
    decisions = {ev.get("decision") for ev in ours}
    assert decisions & {"PROXY-OFFER", "PROXY-ACK"}, [ev.line for ev in ours]
    assert not decisions & {"OFFER", "ACK", "NAK"}, [ev.line for ev in ours]
    assert all(ev.get("address") == "-" for ev in ours)

    # The firmware's answer, then iPXE's: iPXE was given the script, not iPXE again.
    answers = boot_answers(events, vm.mac)
    expected = [(kind, file.format(server=lab.server_ip)) for kind, file in case.answers]
    kinds = list(dict.fromkeys((ev.get("client"), ev.get("file")) for ev in answers))
    assert kinds == expected, [ev.line for ev in answers]

    check_pxe_options(server, answers)

    # The script, then the kernel and initrd next to it, all over HTTP from netbootd.
    fetched = {
        (ev.get("path"), ev.get("status"))
        for ev in events
        if ev.svc == "http" and ev.get("method") == "GET"
    }
    for name in (IPXE_SCRIPT_NAME, KERNEL_NAME, INITRD_NAME):
        assert (f"/{name}", "200") in fetched, name
    loader_loads = [
        ev
        for ev in events
        if ev.svc == "tftp"
        and ev.get("file").lstrip("/") == "snponly.efi"
        and ev.get("result") == "ok"
    ]
    assert len(loader_loads) == sum(1 for _, file in case.answers if file == "snponly.efi")


@pytest.mark.usefixtures("firmware_prerequisites")
def test_uefi_http_boot_through_proxy_beside_kea(lab: Lab, ipxe_root: Path, tmp_path: Path) -> None:
    """(c): EDK2's HTTP Boot alone (its PXE off), Kea handing out the address."""
    site = _site_server("kea", lab, tmp_path)
    server = _proxy(lab, ipxe_root, tmp_path)
    vm = start_vm(lab, firmware=Firmware.UEFI, nic=EDK2_NIC, uefi_boot=UefiBoot.HTTP, extra_args=[])
    seconds = vm.wait_for(BOOT_MARKER, timeout=BOOT_TIMEOUT)
    vm.wait_for(CMDLINE_PREFIX, timeout=10)
    print(f"\nUEFI HTTP Boot through proxyDHCP beside Kea: {seconds:.1f} s")
    cmdline = vm.kernel_cmdline()
    assert cmdline is not None
    args = cmdline.split()
    assert "netbootd.lab=ipxe" in args and "netbootd.platform=efi" in args

    acked = [
        ev.get("address")
        for ev in site.events()
        if ev.get("decision") == "ACK" and ev.get("mac") == vm.mac
    ]
    assert acked, f"Kea never allocated an address to the VM:\n{site.log_tail()}"

    events = server.events()
    ours = [ev for ev in transactions(events) if ev.get("mac").lower() == vm.mac]
    assert not {ev.get("decision") for ev in ours} & {"OFFER", "ACK", "NAK"}
    assert all(ev.get("address") == "-" for ev in ours), [ev.line for ev in ours]
    url = f"http://{lab.server_ip}/snponly.efi"
    script = f"http://{lab.server_ip}/{IPXE_SCRIPT_NAME}"
    answers = list(
        dict.fromkeys((ev.get("client"), ev.get("decision"), ev.get("file")) for ev in ours)
    )
    answers = [answer for answer in answers if answer[2] != "-"]
    assert answers[0] == ("uefi-http", "PROXY-OFFER", url), [ev.line for ev in ours]
    assert ("ipxe", script) in {(kind, file) for kind, _, file in answers[1:]}, answers
    # The proxy offer carried HTTPClient and the URL, and no address or TFTP server.
    offer = next(ev for ev in ours if ev.get("client") == "uefi-http")
    sent = dhcp_options(server.log_text())[("sent", offer.get("xid"))]
    assert sent.get("60") == "HTTPClient" and sent.get("67") == url, sent
    assert "51" not in sent and "66" not in sent, sent
    # Every REQUEST of the firmware went to Kea, and netbootd said so at INFO.
    to_site = [ev for ev in ours if ev.get("client") == "uefi-http" and ev.event == "REQUEST"]
    assert to_site and all(ev.get("decision") == "ignored" for ev in to_site)
    assert all("site DHCP server" in ev.get("reason") for ev in to_site), to_site

    requests = [
        (ev.get("method"), ev.get("path"), ev.get("status"))
        for ev in events
        if ev.svc == "http" and ev.event == "request"
    ]
    assert requests[:2] == [("HEAD", "/snponly.efi", "200"), ("GET", "/snponly.efi", "200")]
    for name in (IPXE_SCRIPT_NAME, KERNEL_NAME, INITRD_NAME):
        assert ("GET", f"/{name}", "200") in requests, name


def udp_port_owners(lab: Lab, port: int) -> str:
    """``ss`` lines of the lab namespace's sockets bound to UDP ``port``, with their processes."""
    out = lab.ns_exec(["ss", "-H", "-u", "-l", "-n", "-p"]).stdout
    return "\n".join(line for line in out.splitlines() if f":{port} " in line)


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_proxy_on_the_dhcp_servers_host(
    case: Case, lab: Lab, ipxe_root: Path, tmp_path: Path, firmware_prerequisites: None
) -> None:
    """PXE 2.1 §2.2.3: Kea and netbootd on one host; Kea holds port 67 and says PXEClient.

    netbootd finds port 67 taken, says so in one line and serves port 4011 alone. The
    firmware, told PXEClient by the DHCP server, asks that server's address at port 4011 for
    its boot file: EDK2's PXE, then the iPXE it loads, which gets the script; or iPXE at once.
    """
    site = KeaServer(
        lab,
        state_dir=tmp_path / "site-state",
        log_path=lab.workdir / "site-dhcp.log",
        pxe_client=True,
    ).start()
    server = _proxy(lab, ipxe_root, tmp_path)
    held = [ev for ev in server.events() if ev.event == "port-held"]
    assert [ev.get("port") for ev in held] == ["67"], server.log_tail()
    owners = udp_port_owners(lab, 67)
    assert "kea-dhcp4" in owners and "netbootd" not in owners, owners
    assert "netbootd" in udp_port_owners(lab, 4011)

    vm = start_vm(
        lab,
        firmware=case.firmware,
        nic=case.nic,
        uefi_boot=case.uefi_boot,
        extra_args=["-uuid", VM_UUID],
    )
    seconds = vm.wait_for(BOOT_MARKER, timeout=BOOT_TIMEOUT)
    vm.wait_for(CMDLINE_PREFIX, timeout=10)
    print(f"\n{case.firmware}/{case.nic} through port 4011 on Kea's host: {seconds:.1f} s")
    cmdline = vm.kernel_cmdline()
    assert cmdline is not None and "netbootd.lab=ipxe" in cmdline.split()

    assert any(ev.get("mac") == vm.mac for ev in site.events() if ev.get("decision") == "ACK")
    assert vm.mac in {lease.mac for lease in site.leases()}
    events = server.events()
    ours = [ev for ev in transactions(events) if ev.get("mac").lower() == vm.mac]
    assert ours and all(ev.get("port") == "4011" for ev in ours), [ev.line for ev in ours]
    assert {ev.get("decision") for ev in ours} <= {"PROXY-ACK", "ignored"}
    answers = boot_answers(events, vm.mac)
    expected = [(kind, file.format(server=lab.server_ip)) for kind, file in case.answers]
    kinds = list(dict.fromkeys((ev.get("client"), ev.get("file")) for ev in answers))
    assert kinds == expected, [ev.line for ev in answers]
    check_pxe_options(server, answers)
