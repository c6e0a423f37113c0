"""Subnets, pools, hosts and BOOTP replies: the pure parts, and the config file's tables."""

from __future__ import annotations

import dataclasses
import re
import time
import tracemalloc
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from netbootd.app import App
from netbootd.boot.bootp import VEND_SIZE, bootp_reply, fit_vendor_area
from netbootd.boot.hosts import HostEntry, HostTable, parse_hosts
from netbootd.boot.leases import AddressRange, Lease, LeaseBook, LeaseState, choose_address
from netbootd.boot.subnets import (
    NetworkSettings,
    Subnet,
    check_server,
    parse_subnets,
    subnet_for,
    with_agent_info,
)
from netbootd.cli import config_from_args, make_parser
from netbootd.config import ConfigError, DhcpMode
from netbootd.proto.dhcp.codec import HEADER_SIZE, MAGIC_COOKIE, MessageType, Opt, decode, encode
from tests.helpers.dhcp_clients import request

SERVER = IPv4Address("10.99.0.1")
LOCAL = Subnet(IPv4Network("10.99.0.0/24"), (AddressRange.parse("10.99.0.100-10.99.0.200"),))
REMOTE = Subnet(IPv4Network("10.0.5.0/24"), (AddressRange.parse("10.0.5.100-10.0.5.200"),))
SUBNETS = (LOCAL, REMOTE)
AGENT = bytes([1, 5]) + b"down0" + bytes([2, 3]) + b"abc"


# -- which subnet ------------------------------------------------------------------------------


def test_a_local_request_belongs_to_the_interface_network() -> None:
    assert subnet_for(SUBNETS, request(MessageType.DISCOVER), SERVER) is LOCAL


def test_a_relayed_request_belongs_to_the_network_of_giaddr() -> None:
    relayed = request(MessageType.DISCOVER, giaddr="10.0.5.1")
    assert subnet_for(SUBNETS, relayed, SERVER) is REMOTE
    assert subnet_for(SUBNETS, request(MessageType.DISCOVER, giaddr="10.0.9.1"), SERVER) is None
    # A relay inside the interface's own network (a second relay on the same segment) is fine.
    assert subnet_for(SUBNETS, request(MessageType.DISCOVER, giaddr="10.99.0.7"), SERVER) is LOCAL


def test_a_renewal_unicast_from_behind_a_router_belongs_to_its_address() -> None:
    renewing = request(MessageType.REQUEST, ciaddr="10.0.5.120")
    assert subnet_for(SUBNETS, renewing, SERVER) is REMOTE
    # An address of no subnet: the interface's network, where the NAK will say so.
    stray = request(MessageType.REQUEST, ciaddr="192.168.1.5")
    assert subnet_for(SUBNETS, stray, SERVER) is LOCAL


def test_no_subnet_for_the_interface_leaves_local_clients_unserved() -> None:
    assert subnet_for((REMOTE,), request(MessageType.DISCOVER), SERVER) is None


# -- choosing in several pools -------------------------------------------------------------------


def test_several_pools_are_used_in_turn() -> None:
    pools = (AddressRange.parse("10.0.5.10-10.0.5.11"), AddressRange.parse("10.0.5.50-10.0.5.50"))
    book = LeaseBook()
    got = []
    for n in range(4):
        address = choose_address(pools, book, f"mac:{n}", 0.0)
        if address is not None:
            book.put(Lease(address, f"mac:{n}", str(n), LeaseState.BOUND, 100.0))
        got.append(str(address))
    assert got == ["10.0.5.10", "10.0.5.11", "10.0.5.50", "None"]


def test_the_previous_and_the_requested_address_come_first_in_any_pool() -> None:
    pools = (AddressRange.parse("10.0.5.10-10.0.5.20"), AddressRange.parse("10.0.5.50-10.0.5.60"))
    book = LeaseBook([Lease(IPv4Address("10.0.5.55"), "mac:a", "a", LeaseState.BOUND, 10.0)])
    assert choose_address(pools, book, "mac:a", 50.0) == IPv4Address("10.0.5.55")
    wanted = IPv4Address("10.0.5.58")
    assert choose_address(pools, book, "mac:b", 5.0, wanted) == wanted
    assert choose_address(pools, book, "mac:b", 5.0, wanted, reserved={wanted}) == IPv4Address(
        "10.0.5.10"
    )


def test_a_slash_8_pool_is_never_enumerated() -> None:
    # Enumerated, a /8 would take seconds and gigabytes: the memory bound shows that it never
    # is, in the compiled build too, where a class's methods cannot be replaced for the test.
    tracemalloc.start()
    specs = parse_subnets([{"network": "10.0.0.0/8", "pools": ["10.0.0.10-10.255.255.250"]}])
    subnet = specs[0].settle(NetworkSettings())
    assert subnet.pools[0].size == 16_777_201
    book = LeaseBook()
    started = time.perf_counter()
    for n in range(1000):
        address = choose_address(subnet.pools, book, f"mac:{n}", 0.0)
        assert address is not None
        book.put(Lease(address, f"mac:{n}", str(n), LeaseState.BOUND, 100.0))
    assert time.perf_counter() - started < 2.0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 16 * 1024 * 1024
    assert subnet.in_pools(IPv4Address("10.200.1.1"))
    assert not subnet.in_pools(IPv4Address("10.255.255.251"))


def test_a_pool_is_iterated_lazily() -> None:
    tracemalloc.start()
    addresses = iter(AddressRange.parse("10.0.0.1-10.255.255.254"))
    first = [next(addresses) for _ in range(3)]
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert first == [IPv4Address("10.0.0.1"), IPv4Address("10.0.0.2"), IPv4Address("10.0.0.3")]
    assert peak < 1024 * 1024


# -- option 82 ---------------------------------------------------------------------------------


def test_agent_info_is_echoed_last_and_unchanged() -> None:
    relayed = request(MessageType.DISCOVER, giaddr="10.0.5.1", extra=((Opt.AGENT_INFO, AGENT),))
    options = [(Opt.MESSAGE_TYPE, b"\x02"), (Opt.SUBNET_MASK, b"\xff\xff\xff\x00")]
    echoed = with_agent_info(relayed, options)
    assert echoed[-1] == (Opt.AGENT_INFO, AGENT)
    assert echoed[:-1] == options
    # Also once encoded: the last option before END, byte for byte.
    wire = encode(dataclasses.replace(relayed, options=tuple(echoed)))
    end = wire.index(bytes([Opt.AGENT_INFO, len(AGENT)]) + AGENT) + 2 + len(AGENT)
    assert wire[end] == Opt.END


def test_agent_info_is_never_sent_unasked() -> None:
    options = [(Opt.MESSAGE_TYPE, b"\x02"), (Opt.AGENT_INFO, b"\x01\x01x")]
    assert with_agent_info(request(MessageType.DISCOVER, giaddr="10.0.5.1"), options) == [
        (Opt.MESSAGE_TYPE, b"\x02")
    ]
    # Option 82 from a client on the local segment (no relay) is not echoed either.
    local = request(MessageType.DISCOVER, extra=((Opt.AGENT_INFO, AGENT),))
    assert with_agent_info(local, options[:1]) == options[:1]


# -- hosts ------------------------------------------------------------------------------------


def test_hosts_are_found_by_client_id_first_then_by_mac() -> None:
    table = parse_hosts(
        [
            {"mac": "52:54:00:AA:00:01", "address": "10.0.5.7", "hostname": "by-mac"},
            {"client-id": "ws-7", "address": "10.0.5.8"},
            {"client-id": "hex:01:52:54:00:aa:00:09", "name": "raw"},
        ]
    )
    assert table.find("52:54:00:aa:00:01", None).hostname == "by-mac"  # type: ignore[union-attr]
    by_text = table.find("52:54:00:aa:00:01", b"ws-7")
    assert by_text is not None and by_text.address == IPv4Address("10.0.5.8")
    by_hex = table.find("00:00:00:00:00:00", bytes.fromhex("01525400aa0009"))
    assert by_hex is not None and by_hex.label == "raw"
    assert table.find("52:54:00:aa:00:02", b"other") is None
    assert table.at(IPv4Address("10.0.5.7")) is not None


@pytest.mark.parametrize(
    ("hosts", "message"),
    [
        (
            [{"mac": "52:54:00:aa:00:01", "name": "a"}, {"mac": "52-54-00-AA-00-01", "name": "b"}],
            "[[hosts]] b: mac is also a's; each host needs a mac of its own",
        ),
        (
            [{"client-id": "x1", "name": "a"}, {"client-id": "x1", "name": "b"}],
            "[[hosts]] b: client-id is also a's",
        ),
        (
            [
                {"mac": "52:54:00:aa:00:01", "address": "10.0.5.7", "name": "a"},
                {"mac": "52:54:00:aa:00:02", "address": "10.0.5.7", "name": "b"},
            ],
            "[[hosts]] b: address is also a's",
        ),
        ([{"address": "10.0.5.7"}], "[[hosts]] #1: a mac or a client-id is wanted"),
        ([{"mac": "52:54:00"}], "[[hosts]] #1: mac: '52:54:00' is not a MAC"),
        ([{"client-id": "hex:zz"}], "client-id: 'hex:zz' is not hex octets"),
        ([{"mac": "52:54:00:aa:00:01", "adress": "x"}], "[[hosts]] #1: unknown key 'adress'"),
        (
            [{"mac": "52:54:00:aa:00:01", "options": {"routers": "x"}}],
            "[[hosts]] 52:54:00:aa:00:01: options: option 3 (router) wants IPv4 addresses",
        ),
        (
            [{"mac": "52:54:00:aa:00:01", "boot-file": "../etc/passwd"}],
            "boot-file: '../etc/passwd' must be relative to the root",
        ),
    ],
)
def test_bad_hosts_say_what_is_wanted(hosts: list[dict[str, object]], message: str) -> None:
    with pytest.raises(ValueError, match=_literal(message)):
        parse_hosts(hosts)


def test_host_addresses_must_be_in_a_served_subnet() -> None:
    table = HostTable([HostEntry("far", mac="52:54:00:aa:00:01", address=IPv4Address("10.7.0.5"))])
    with pytest.raises(ValueError, match=_literal("[[hosts]] far: address 10.7.0.5 is not")):
        table.check_addresses(SUBNETS, SERVER)
    mine = HostTable([HostEntry("me", mac="52:54:00:aa:00:01", address=SERVER)])
    with pytest.raises(ValueError, match="this server's own"):
        mine.check_addresses(SUBNETS, SERVER)
    edge = HostTable([HostEntry("bc", mac="52:54:00:aa:00:01", address=IPv4Address("10.0.5.255"))])
    with pytest.raises(ValueError, match="not a client address"):
        edge.check_addresses(SUBNETS, SERVER)


# -- the [[subnets]] tables ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("subnets", "message"),
    [
        (
            [{"network": "10.0.5.0/24"}, {"network": "10.0.5.128/25"}],
            "[[subnets]] #2 (10.0.5.128/25): network overlaps [[subnets]] #1 (10.0.5.0/24); "
            "subnets must be disjoint",
        ),
        (
            [{"network": "10.0.5.0/24", "pools": ["10.0.5.10-10.0.5.50", "10.0.5.40-10.0.5.60"]}],
            "[[subnets]] #1 (10.0.5.0/24): pools: 10.0.5.40-10.0.5.60 overlaps "
            "10.0.5.10-10.0.5.50 of [[subnets]] #1 (10.0.5.0/24); pools must be disjoint",
        ),
        (
            [{"network": "10.0.5.0/24", "pools": ["10.0.5.200-10.0.6.10"]}],
            "[[subnets]] #1 (10.0.5.0/24): pools: 10.0.5.200-10.0.6.10 is outside 10.0.5.0/24; "
            "a range inside the subnet is wanted",
        ),
        (
            [{"network": "10.0.5.0/24", "pools": ["10.0.5.0-10.0.5.10"]}],
            "pools: 10.0.5.0-10.0.5.10 holds 10.0.5.0, the network's own address",
        ),
        ([{"network": "10.0.5.1/24"}], "[[subnets]] #1: network: '10.0.5.1/24' is not a network"),
        ([{"pools": ["10.0.5.1-10.0.5.9"]}], "[[subnets]] #1: network is missing"),
        ([{"network": "10.0.5.0/24", "pool": "x"}], "[[subnets]] #1: unknown key 'pool'"),
        (
            [{"network": "10.0.5.0/24", "pools": ["10.0.5.9"]}],
            "[[subnets]] #1 (10.0.5.0/24): pools: expected FIRST-LAST",
        ),
        (
            [{"network": "10.0.5.0/24", "lease-time": 5}],
            "[[subnets]] #1 (10.0.5.0/24): lease-time: 5 is outside 60-31536000 seconds",
        ),
        (
            [{"network": "10.0.5.0/24", "options": {"ntp-servers": "nope"}}],
            "[[subnets]] #1 (10.0.5.0/24): options: option 42 (ntp-servers) wants IPv4",
        ),
        (
            [{"network": "10.0.5.0/24", "dynamic-bootp": "yes"}],
            "[[subnets]] #1 (10.0.5.0/24): dynamic-bootp: true or false is wanted",
        ),
    ],
)
def test_bad_subnets_name_the_subnet_and_the_key(
    subnets: list[dict[str, object]], message: str
) -> None:
    with pytest.raises(ValueError, match=_literal(message)):
        parse_subnets(subnets)


def test_a_pool_holding_the_servers_address_is_refused() -> None:
    with pytest.raises(ValueError) as caught:
        check_server(SUBNETS, IPv4Address("10.0.5.150"), "eth1")
    assert str(caught.value) == (
        "10.0.5.0/24: pools: 10.0.5.100-10.0.5.200 contains this server's own address "
        "10.0.5.150 (on eth1); a range without it is wanted"
    )


def test_a_subnet_takes_the_server_wide_settings_it_does_not_set() -> None:
    (spec,) = parse_subnets(
        [
            {
                "network": "10.0.5.0/24",
                "pools": "10.0.5.100-10.0.5.200",
                "routers": ["10.0.5.1"],
                "lease-time": 600,
                "options": {"ntp-servers": ["10.0.5.2"], "150": "hex:0a:00:05:03"},
                "dynamic-bootp": True,
            }
        ]
    )
    defaults = NetworkSettings(
        routers=(SERVER,),
        dns_servers=(SERVER,),
        domain_name="lab.example",
        lease_time=3600,
        options=((Opt.NTP, SERVER.packed), (Opt.MTU, b"\x05\xdc")),
    )
    subnet = spec.settle(defaults)
    settings = subnet.settings
    assert settings.routers == (IPv4Address("10.0.5.1"),)
    assert settings.dns_servers == (SERVER,) and settings.domain_name == "lab.example"
    assert settings.lease_time == 600 and settings.dynamic_bootp
    assert dict(settings.options) == {
        Opt.NTP: IPv4Address("10.0.5.2").packed,
        Opt.MTU: b"\x05\xdc",
        150: bytes([10, 0, 5, 3]),
    }


# -- BOOTP replies ---------------------------------------------------------------------------


def test_a_bootp_reply_is_300_octets_with_a_64_octet_vendor_area() -> None:
    bootp = request(None, giaddr="10.0.5.1", extra=((Opt.AGENT_INFO, AGENT),))
    options = [
        (Opt.SUBNET_MASK, IPv4Address("255.255.255.0").packed),
        (Opt.ROUTER, IPv4Address("10.0.5.1").packed),
        (Opt.HOST_NAME, b"ws-7"),
        (Opt.AGENT_INFO, AGENT),
        (Opt.ROOT_PATH, b"10.0.5.3:/srv/nfsroot/this-is-a-long-path-for-a-small-area"),
        (Opt.DNS, IPv4Address("10.0.5.2").packed),
    ]
    built = bootp_reply(
        bootp,
        yiaddr=IPv4Address("10.0.5.7"),
        siaddr=SERVER,
        file=b"pxelinux.0",
        options=with_agent_info(bootp, options),
    )
    assert built.left_out == (Opt.ROOT_PATH,)
    wire = encode(built.packet)
    assert len(wire) == HEADER_SIZE + VEND_SIZE == 300
    assert wire[0] == 2  # BOOTREPLY
    assert wire[16:20] == IPv4Address("10.0.5.7").packed  # yiaddr
    assert wire[20:24] == SERVER.packed  # siaddr
    assert wire[24:28] == IPv4Address("10.0.5.1").packed  # giaddr
    assert wire[108:118] == b"pxelinux.0" and wire[118] == 0
    vend = wire[HEADER_SIZE:]
    assert vend[:4] == MAGIC_COOKIE
    back = decode(wire)
    assert back.message_type is None and Opt.MESSAGE_TYPE not in back
    assert [code for code, _ in back.options] == [
        Opt.SUBNET_MASK,
        Opt.ROUTER,
        Opt.HOST_NAME,
        Opt.DNS,
        Opt.AGENT_INFO,
    ]
    assert back.get(Opt.AGENT_INFO) == AGENT


def test_the_vendor_area_keeps_what_matters_first() -> None:
    big = [(Opt.DOMAIN_NAME, b"x" * 40), (Opt.SUBNET_MASK, b"\xff" * 4), (Opt.ROUTER, b"\x0a" * 4)]
    kept, left = fit_vendor_area(big)
    assert kept == big and left == ()  # 42 + 6 + 6 octets fit the 59 there are, in their order
    kept, left = fit_vendor_area([(Opt.DOMAIN_NAME, b"x" * 50), *big[1:]])
    assert [code for code, _ in kept] == [Opt.SUBNET_MASK, Opt.ROUTER]
    assert left == (Opt.DOMAIN_NAME,)


# -- the config file ---------------------------------------------------------------------------

CONFIG = """
interface = "br0"
root = "{root}"
routers = ["10.99.0.1"]
lease-time = 7200

[[subnets]]
network = "10.99.0.0/24"
pools = ["10.99.0.100-10.99.0.150", "10.99.0.160-10.99.0.170"]

[[subnets]]
network = "10.0.5.0/24"
pools = ["10.0.5.100-10.0.5.200"]
routers = ["10.0.5.1"]
dynamic-bootp = true
[subnets.options]
ntp-servers = ["10.0.5.2"]

[[hosts]]
client-id = "ws-7"
address = "10.0.5.7"
hostname = "ws-7"
boot-file = "special.0"
"""


def parse(*argv: str):  # type: ignore[no-untyped-def]
    return config_from_args(make_parser().parse_args(["serve", *argv]))


def test_subnets_and_hosts_from_the_file_make_it_authoritative(tmp_path: Path) -> None:
    conf = tmp_path / "netbootd.toml"
    conf.write_text(CONFIG.format(root=tmp_path))
    config = parse("--config", str(conf))
    assert config.dhcp_mode is DhcpMode.AUTHORITATIVE and config.dhcp_range is None
    assert [str(s.network) for s in config.subnets] == ["10.99.0.0/24", "10.0.5.0/24"]
    assert config.subnets[1].dynamic_bootp is True
    (host,) = config.hosts
    assert host.client_id == b"ws-7" and host.boot_file == "special.0"
    # A mode on the command line replaces the file's, its tables too.
    proxied = parse("--config", str(conf), "--proxy")
    assert proxied.dhcp_mode is DhcpMode.PROXY and not proxied.subnets and not len(proxied.hosts)


def test_config_errors_name_the_file_the_subnet_and_the_key(tmp_path: Path) -> None:
    conf = tmp_path / "netbootd.toml"
    conf.write_text(
        CONFIG.format(root=tmp_path).replace("10.0.5.100-10.0.5.200", "10.0.6.1-10.0.6.9")
    )
    with pytest.raises(ConfigError) as caught:
        parse("--config", str(conf))
    assert str(caught.value) == (
        f"{conf}:11: [[subnets]] #2 (10.0.5.0/24): pools: 10.0.6.1-10.0.6.9 is outside "
        "10.0.5.0/24; a range inside the subnet is wanted"
    )
    conf.write_text(
        f'interface = "br0"\nroot = "{tmp_path}"\nproxy = true\n'
        '[[hosts]]\nmac = "52:54:00:aa:00:01"\n'
    )
    with pytest.raises(ConfigError, match=_literal("[[hosts]] is only used by authoritative DHCP")):
        parse("--config", str(conf))


@pytest.mark.parametrize(
    ("tables", "message"),
    [
        (
            '[[subnets]]\nnetwork = "127.0.0.0/8"\npools = ["127.0.0.1-127.0.0.9"]\n',
            "[[subnets]] #1 (127.0.0.0/8): pools: 127.0.0.1-127.0.0.9 contains this server's own "
            "address 127.0.0.1 (on lo); a range without it is wanted",
        ),
        (
            'dhcp-range = "127.0.0.10-127.0.0.20"\n[[subnets]]\nnetwork = "127.0.0.0/16"\n',
            "[[subnets]] #1 (127.0.0.0/16): network overlaps dhcp-range (127.0.0.0/8); subnets "
            "must be disjoint",
        ),
        (
            'dhcp-range = "127.0.0.10-127.0.0.20"\n[[hosts]]\nmac = "52:54:00:aa:00:01"\n'
            'address = "10.0.5.7"\n',
            "[[hosts]] 52:54:00:aa:00:01: address 10.0.5.7 is not a client address of a served "
            "subnet (127.0.0.0/8); an address inside one is wanted",
        ),
    ],
)
def test_what_needs_the_interface_is_checked_at_start(
    tmp_path: Path, tables: str, message: str
) -> None:
    conf = tmp_path / "netbootd.toml"
    conf.write_text(f'interface = "lo"\nroot = "{tmp_path}"\n{tables}')
    app = App(parse("--config", str(conf), "--state-dir", str(tmp_path)))
    with pytest.raises(ConfigError) as caught:
        app.prepare()
    assert str(caught.value) == message


def test_a_host_address_reserved_in_the_inventory_too_is_refused(tmp_path: Path) -> None:
    inventory = tmp_path / "inventory"
    inventory.mkdir()
    (inventory / "machines.toml").write_text(
        '[machines.m1]\nmac = "52:54:00:aa:00:09"\naddress = "127.0.0.50"\n'
    )
    conf = tmp_path / "netbootd.toml"
    conf.write_text(
        f'interface = "lo"\nroot = "{tmp_path}"\ninventory = "{inventory}"\n'
        'dhcp-range = "127.0.0.10-127.0.0.20"\n'
        '[[hosts]]\nname = "h1"\nmac = "52:54:00:aa:00:01"\naddress = "127.0.0.50"\n'
    )
    app = App(parse("--config", str(conf), "--state-dir", str(tmp_path)))
    with pytest.raises(ConfigError) as caught:
        app.prepare()
    assert str(caught.value) == (
        "[[hosts]] h1: address 127.0.0.50 is reserved for inventory machine m1 too; an address "
        "of its own is wanted"
    )


def _literal(text: str) -> str:
    return re.escape(text)
