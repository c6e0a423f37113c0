"""Flags and config files: what is accepted, and one clear line with exit 2 for the rest."""

from __future__ import annotations

import logging
import subprocess
import sys
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from netbootd.boot.client import BootClass
from netbootd.cli import main, make_parser
from netbootd.config import ConfigError, DhcpMode, LogFormat, LogLevel
from tests.helpers.config import parse


def test_defaults_to_proxy_mode(tmp_path: Path) -> None:
    config = parse("--interface", "br0", "--root", str(tmp_path))
    assert config.dhcp_mode is DhcpMode.PROXY
    assert config.http_port == 80 and config.tftp_port == 69


def test_authoritative_with_boot_flags(tmp_path: Path) -> None:
    config = parse(
        "--interface", "br0", "--root", str(tmp_path),
        "--dhcp-range", "10.99.0.100-10.99.0.200",
        "--boot", "bios=pxelinux.0", "--boot", "ipxe=boot.ipxe",
        "--http-port", "8080", "--state-dir", str(tmp_path / "s"),
    )  # fmt: skip
    assert config.dhcp_mode is DhcpMode.AUTHORITATIVE
    assert config.dhcp_range is not None
    assert config.dhcp_range.first == IPv4Address("10.99.0.100")
    assert config.boot == {BootClass.BIOS: "pxelinux.0", BootClass.IPXE: "boot.ipxe"}
    assert config.http_port == 8080


def test_file_then_flags(tmp_path: Path) -> None:
    conf = tmp_path / "netbootd.toml"
    conf.write_text(
        'interface = "br0"\nroot = "/srv"\ndhcp-range = "10.0.0.10-10.0.0.20"\n'
        'http-port = 81\n[boot]\nbios = "a.0"\nuefi = "b.efi"\n'
    )
    config = parse("--config", str(conf), "--boot", "bios=c.0")
    assert config.dhcp_mode is DhcpMode.AUTHORITATIVE
    assert config.http_port == 81
    assert config.boot == {BootClass.BIOS: "c.0", BootClass.UEFI: "b.efi"}
    proxied = parse("--config", str(conf), "--proxy")
    assert proxied.dhcp_mode is DhcpMode.PROXY and proxied.dhcp_range is None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--root", "/srv"], "needs an interface"),
        (["--interface", "br0"], "needs a root"),
        (
            ["--interface", "br0", "--root", "/s", "--dhcp-range", "10.0.0.9-10.0.0.1"],
            "ends before",
        ),
        (["--interface", "br0", "--root", "/s", "--dhcp-range", "nonsense"], "FIRST-LAST"),
        (["--interface", "br0", "--root", "/s", "--boot", "bios=../etc/passwd"], "relative"),
        (["--no-dhcp", "--no-tftp", "--no-http"], None),
    ],
)
def test_bad_settings(argv: list[str], message: str | None) -> None:
    if message is None:
        assert parse(*argv).dhcp_mode is DhcpMode.OFF
        return
    with pytest.raises(ConfigError, match=message):
        parse(*argv)


def test_bad_file(tmp_path: Path) -> None:
    conf = tmp_path / "bad.toml"
    conf.write_text('interface = "br0"\nroot = "/srv"\nhttp-prot = 81\n')
    with pytest.raises(ConfigError, match=r"bad.toml:3: unknown key 'http-prot'"):
        parse("--config", str(conf))
    conf.write_text('interface = "br0"\nroot = "/srv"\nhttp-port = "x"\n')
    with pytest.raises(ConfigError, match=r"bad.toml:3: http-port: "):
        parse("--config", str(conf))
    conf.write_text("interface = \n")
    with pytest.raises(ConfigError, match=r"bad.toml: .*line 1"):
        parse("--config", str(conf))
    with pytest.raises(ConfigError, match="no such file"):
        parse("--config", str(tmp_path / "missing.toml"))


@pytest.mark.parametrize(
    "argv",
    [
        ["serve", "--boot", "nonsense"],
        ["serve", "--boot", "toaster=x"],
        ["serve", "--http-port", "70000"],
        ["serve", "--proxy", "--dhcp-range", "1.1.1.1-1.1.1.2"],
        ["serve", "--frobnicate"],
        ["serve", "--root", "/nonexistent-dir", "--no-dhcp"],
    ],
)
def test_command_line_errors_are_one_line_exit_2(argv: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "netbootd", *argv],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert lines[0].startswith("netbootd")


def test_help_lists_the_contract(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in (
        "--config", "--interface", "--root", "--dhcp-range", "--proxy", "--no-dhcp",
        "--no-tftp", "--no-http", "--boot", "--http-port", "--tftp-port", "--state-dir",
        "--log-dhcp", "--log-level", "--log-format",
    ):  # fmt: skip
        assert flag in text


def test_errors_name_their_origin(tmp_path: Path) -> None:
    conf = tmp_path / "site.toml"
    conf.write_text('interface = "br0"\nroot = "/srv"\nlease-time = 5\n')
    with pytest.raises(ConfigError, match=r"^.*site.toml:3: lease-time: "):
        parse("--config", str(conf))
    with pytest.raises(ConfigError, match=r"^--boot: boot path '/abs/path' must be relative"):
        parse("--config", str(conf), "--boot", "bios=/abs/path")


def test_missing_interface_is_a_usage_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "netbootd", "serve", "--interface", "nosuch0", "--root",
         str(tmp_path), "--no-dhcp"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip() == "netbootd: config error: interface nosuch0: no such interface"


def test_no_http_refuses_only_what_needs_http(tmp_path: Path) -> None:
    from netbootd.app import App

    (tmp_path / "boot.ipxe").write_text("#!ipxe\n")
    (tmp_path / "snponly.efi").write_text("x")
    base = ("--no-dhcp", "--no-http", "--root", str(tmp_path))
    App(parse(*base, "--boot", "ipxe=boot.ipxe")).prepare()  # iPXE falls back to TFTP
    with pytest.raises(
        ConfigError, match=r"^--boot uefi-http=snponly.efi needs HTTP, which is off"
    ):
        App(parse(*base, "--boot", "uefi-http=snponly.efi")).prepare()


def test_tftp_settings_from_flags_and_file(tmp_path: Path) -> None:
    site = tmp_path / "site.toml"
    site.write_text("tftp-max-windowsize = 16\ntftp-timeout = 2.5\ntftp-upload-max-size = 4096\n")
    config = parse(
        "--no-dhcp", "--root", str(tmp_path), "--config", str(site),
        "--tftp-max-blksize", "8192", "--tftp-single-port", "--tftp-upload-dir", "/srv/up",
    )  # fmt: skip
    assert config.tftp_max_blksize == 8192
    assert config.tftp_single_port is True
    assert config.tftp_upload_dir == Path("/srv/up")
    assert (config.tftp_max_windowsize, config.tftp_timeout) == (16, 2.5)
    assert config.tftp_upload_max_size == 4096
    assert parse("--no-dhcp", "--root", str(tmp_path)).tftp_max_blksize is None  # MTU decides


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--tftp-max-blksize", "7"], "--tftp-max-blksize: .*greater than or equal to 8"),
        (["--tftp-max-blksize", "70000"], "--tftp-max-blksize: .*less than or equal to 65464"),
    ],
)
def test_bad_tftp_flags(tmp_path: Path, argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse("--no-dhcp", "--root", str(tmp_path), *argv)


def test_tftp_max_blksize_not_a_number_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse("--no-dhcp", "--root", str(tmp_path), "--tftp-max-blksize", "big")
    assert exit_info.value.code == 2


def test_upload_dir_must_be_apart_from_the_root(tmp_path: Path) -> None:
    from netbootd.app import App

    root = tmp_path / "root"
    (root / "up").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    base = ("--no-dhcp", "--no-http", "--root", str(root))
    App(parse(*base, "--tftp-upload-dir", str(tmp_path / "elsewhere"))).prepare()
    for inside in (root, root / "up", tmp_path):
        with pytest.raises(ConfigError, match="must be apart from the root"):
            App(parse(*base, "--tftp-upload-dir", str(inside))).prepare()
    with pytest.raises(ConfigError, match="not a directory"):
        App(parse(*base, "--tftp-upload-dir", str(tmp_path / "nope"))).prepare()


def test_boot_by_exact_architecture(tmp_path: Path) -> None:
    conf = tmp_path / "netbootd.toml"
    conf.write_text('[boot]\narch-9 = "bc.efi"\nuefi = "x64.efi"\n')
    config = parse("--no-dhcp", "--root", str(tmp_path), "--config", str(conf),
                   "--boot", "arch-31=s390.img", "--boot", "uefi-http-arm64=aa64.efi")  # fmt: skip
    assert config.boot == {
        9: "bc.efi",
        BootClass.UEFI: "x64.efi",
        31: "s390.img",
        BootClass.UEFI_HTTP_ARM64: "aa64.efi",
    }
    conf.write_text('[boot]\narch-99999 = "x"\n')
    with pytest.raises(ConfigError, match="does not fit option 93"):
        parse("--no-dhcp", "--root", str(tmp_path), "--config", str(conf))


def test_bad_boot_class_flag_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        make_parser().parse_args(["serve", "--boot", "efi=x.efi"])
    assert exit_info.value.code == 2
    assert "unknown client class 'efi'" in capsys.readouterr().err


def test_no_http_refuses_an_http_architecture(tmp_path: Path) -> None:
    from netbootd.app import App

    (tmp_path / "x.efi").write_text("x")
    with pytest.raises(ConfigError, match=r"^--boot arch-19=x.efi needs HTTP, which is off"):
        App(parse("--no-dhcp", "--no-http", "--root", str(tmp_path),
                  "--boot", "arch-19=x.efi")).prepare()  # fmt: skip
    App(
        parse("--no-dhcp", "--no-http", "--root", str(tmp_path), "--boot", "arch-11=x.efi")
    ).prepare()


def test_dhcp_options_from_file_and_flags(tmp_path: Path) -> None:
    conf = tmp_path / "site.toml"
    conf.write_text(
        'ntp-servers = ["10.99.0.1"]\nmtu = 1400\nroot-path = "10.99.0.1:/srv/root"\n'
        '[dhcp-options]\nvendor-encapsulated-options = "hex:01:01:07"\n150 = "10.99.0.5"\n'
    )
    config = parse(
        "--no-dhcp", "--root", str(tmp_path), "--config", str(conf),
        "--dhcp-option", "42=10.99.0.2", "--dhcp-option", "150=10.99.0.6",
    )  # fmt: skip
    assert config.ntp_servers == (IPv4Address("10.99.0.1"),)
    assert (config.mtu, config.root_path) == (1400, "10.99.0.1:/srv/root")
    assert config.dhcp_options == {
        43: bytes([1, 1, 7]),
        150: bytes([10, 99, 0, 6]),  # the flag wins over the file
        42: bytes([10, 99, 0, 2]),
    }


def test_bad_dhcp_options_name_their_source(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        make_parser().parse_args(["serve", "--dhcp-option", "26=huge"])
    assert exit_info.value.code == 2
    assert "option 26 (interface-mtu) wants a number 0-65535, not 'huge'" in (
        capsys.readouterr().err
    )
    conf = tmp_path / "site.toml"
    conf.write_text('[dhcp-options]\nntp-servers = "not an address"\n')
    with pytest.raises(ConfigError, match=r"site\.toml:1: dhcp-options: option 42 \(ntp-servers\)"):
        parse("--no-dhcp", "--root", str(tmp_path), "--config", str(conf))


def test_tftp_threads_and_busy_poll_from_the_file(tmp_path: Path) -> None:
    from netbootd.app import App

    site = tmp_path / "site.toml"
    base = ("--no-dhcp", "--root", str(tmp_path), "--config", str(site))
    site.write_text("tftp-threads = 0\ntftp-busy-poll-us = 0\n")
    settings = App(parse(*base))._tftp_settings()
    assert (settings.transfer_threads, settings.busy_poll) == (0, 0)
    site.write_text("")
    settings = App(parse(*base))._tftp_settings()
    assert (settings.transfer_threads, settings.busy_poll) == (2, 200e-6)
    site.write_text("tftp-busy-poll-us = 20000\n")
    with pytest.raises(ConfigError, match=r"tftp-busy-poll-us: .*less than or equal to 10000"):
        parse(*base)


def test_probe_interval_for_other_dhcp_servers(tmp_path: Path) -> None:
    site = tmp_path / "site.toml"
    base = ("--no-dhcp", "--root", str(tmp_path), "--config", str(site))
    site.write_text("")
    assert parse(*base).dhcp_probe_interval == 600
    site.write_text("dhcp-probe-interval = 0\n")
    assert parse(*base).dhcp_probe_interval == 0
    site.write_text("dhcp-probe-interval = 0.01\n")
    with pytest.raises(ConfigError, match=r"dhcp-probe-interval: probes go at most once a second"):
        parse(*base)


def test_the_server_collects_its_youngest_generation_less_often() -> None:
    import gc

    from netbootd.app import YOUNG_GENERATION, tune_collector

    before = gc.get_threshold()
    try:
        tune_collector()
        assert gc.get_threshold() == (YOUNG_GENERATION, before[1], before[2])
        assert before[0] < YOUNG_GENERATION
    finally:
        gc.set_threshold(*before)


def test_file_errors_name_the_line_of_the_key(tmp_path: Path) -> None:
    conf = tmp_path / "site.toml"
    conf.write_text('interface = "br0"\nroot = "/srv"\n\n[boot]\nbios = "/abs/path"\n')
    with pytest.raises(ConfigError, match=r"^.*site\.toml:4: boot: boot path '/abs/path'"):
        parse("--config", str(conf))
    # The second of two [[pxe-menu]] tables is found by its index, not at the first one.
    conf.write_text(
        'interface = "br0"\nroot = "/srv"\n'
        '[[pxe-menu]]\narch = "bios"\ntext = "Linux"\nfile = "pxelinux.0"\n'
        '[[pxe-menu]]\narch = "bios"\ntext = "Nothing"\n'
    )
    with pytest.raises(ConfigError, match=r"^.*site\.toml:7: pxe-menu\[1\]: "):
        parse("--config", str(conf))
    # A message naming no key of the file names the file alone.
    conf.write_text(
        'interface = "br0"\nroot = "/srv"\nproxy = true\ndhcp-range = "1.1.1.1-1.1.1.2"\n'
    )
    with pytest.raises(ConfigError, match=r"^.*site\.toml: --proxy excludes"):
        parse("--config", str(conf))


def test_a_config_that_cannot_be_read_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "conf.d").mkdir()
    with pytest.raises(ConfigError, match=r"^.*/conf\.d: a directory, not a config file$"):
        parse("--config", str(tmp_path / "conf.d"))
    latin = tmp_path / "latin.toml"
    latin.write_bytes(b'interface = "caf\xe9"\n')
    with pytest.raises(ConfigError, match=r"^.*latin\.toml: not UTF-8 text \(byte 16\)$"):
        parse("--config", str(latin))


def test_log_level_and_format_from_flags_and_file(tmp_path: Path) -> None:
    base = ("--no-dhcp", "--root", str(tmp_path))
    config = parse(*base)
    assert (config.log_level, config.log_format) == (LogLevel.INFO, LogFormat.TEXT)
    site = tmp_path / "site.toml"
    site.write_text('log-level = "warning"\nlog-format = "json"\n')
    config = parse(*base, "--config", str(site))
    assert (config.log_level, config.log_format) == (LogLevel.WARNING, LogFormat.JSON)
    config = parse(*base, "--config", str(site), "--log-level", "debug", "--log-format", "text")
    assert (config.log_level, config.log_format) == (LogLevel.DEBUG, LogFormat.TEXT)
    assert parse(*base, "--log-level", "ERROR").log_level is LogLevel.ERROR


@pytest.mark.parametrize(
    ("argv", "file", "message"),
    [
        (
            ["--log-level", "loud"],
            "",
            r"^--log-level: 'loud' is not a log level \(debug, info, warning, error\)$",
        ),
        (["--log-format", "xml"], "", r"^--log-format: 'xml' is not a log format \(text, json\)$"),
        (
            [],
            'root = "/srv"\nlog-level = "verbose"\n',
            r"site.toml:2: log-level: 'verbose' is not a log level \(debug, ",
        ),
        ([], "log-format = 1\n", r"site.toml:1: log-format: "),
    ],
)
def test_bad_log_settings_name_their_flag_or_key(
    tmp_path: Path, argv: list[str], file: str, message: str
) -> None:
    site = tmp_path / "site.toml"
    site.write_text(file)
    with pytest.raises(ConfigError, match=message):
        parse("--no-dhcp", "--root", str(tmp_path), "--config", str(site), *argv)


def test_serve_passes_the_log_settings_to_logging(monkeypatch: pytest.MonkeyPatch) -> None:
    import netbootd.cli

    calls: list[tuple[int, bool]] = []
    monkeypatch.setattr(
        netbootd.cli, "setup_logging", lambda level, as_json=False: calls.append((level, as_json))
    )
    monkeypatch.setattr(netbootd.cli, "_run", lambda coro: coro.close())
    base = ["serve", "--no-dhcp", "--no-tftp", "--no-http"]
    assert main(base) == 0
    assert main([*base, "--log-level", "debug", "--log-format", "json"]) == 0
    assert main([*base, "--log-level", "warning"]) == 0
    assert calls == [(logging.INFO, False), (logging.DEBUG, True), (logging.WARNING, False)]
