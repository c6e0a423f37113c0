"""What a configuration may not say: options of the protocol itself, values of the wrong type,
and a --config that is no file to read."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from netbootd.cli import main, make_parser
from netbootd.config import ConfigError
from tests.helpers.config import parse

# Each option the server writes itself (or only a client sends), by a name or its code, and
# what its message says to do instead.
PROTECTED = [
    ("requested-ip", 50, "client's"),
    ("lease-time", 51, "use lease-time"),
    ("overload", 52, "lays out a reply"),
    ("message-type", 53, "message type"),
    ("server-id", 54, "names itself"),
    ("parameter-list", 55, "client's"),
    ("max-message-size", 57, "client's"),
    ("renewal-time", 58, "follows lease-time"),
    ("rebinding-time", 59, "follows lease-time"),
    ("client-id", 61, "client's"),
    ("rapid-commit", 80, "client's"),
    ("agent-info", 82, "relay agent's own"),
    ("client-arch", 93, "client's"),
    ("client-ndi", 94, "client's"),
    ("subnet-selection", 118, "client's"),
]


@pytest.mark.parametrize(("name", "code", "instead"), PROTECTED)
def test_a_protocol_option_in_the_file_is_refused(
    tmp_path: Path, name: str, code: int, instead: str
) -> None:
    conf = tmp_path / "site.toml"
    for key in (name, str(code)):
        conf.write_text(f'root = "/srv"\n[dhcp-options]\n{key} = "hex:01"\n')
        with pytest.raises(ConfigError) as caught:
            parse("--no-dhcp", "--config", str(conf))
        message = str(caught.value)
        assert message.startswith(f"{conf}:2: dhcp-options: option {code} (")
        assert "cannot be set" in message and instead in message


@pytest.mark.parametrize(("name", "code", "instead"), PROTECTED)
def test_a_protocol_option_flag_is_refused(
    capsys: pytest.CaptureFixture[str], name: str, code: int, instead: str
) -> None:
    for key in (name, str(code)):
        with pytest.raises(SystemExit) as exit_info:
            make_parser().parse_args(["serve", "--dhcp-option", f"{key}=hex:01"])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert f"option {code} (" in err and "cannot be set" in err and instead in err


def test_a_protocol_option_in_a_subnet_or_host_is_refused(tmp_path: Path) -> None:
    conf = tmp_path / "site.toml"
    conf.write_text(
        'root = "/srv"\ninterface = "lo"\n'
        '[[subnets]]\nnetwork = "10.0.5.0/24"\npools = ["10.0.5.10-10.0.5.20"]\n'
        '[subnets.options]\n54 = "10.0.5.1"\n'
    )
    with pytest.raises(ConfigError, match=r"option 54 \(server-id\) cannot be set"):
        parse("--config", str(conf))
    conf.write_text(
        'root = "/srv"\ninterface = "lo"\ndhcp-range = "10.0.5.10-10.0.5.20"\n'
        '[[hosts]]\nmac = "52:54:00:00:00:01"\n[hosts.options]\nmessage-type = "hex:05"\n'
    )
    with pytest.raises(ConfigError, match=r"option 53 \(message-type\) cannot be set"):
        parse("--config", str(conf))


def test_pad_and_end_are_no_options(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    conf = tmp_path / "site.toml"
    for code in (0, 255):
        conf.write_text(f'root = "/srv"\n[dhcp-options]\n{code} = "hex:01"\n')
        with pytest.raises(ConfigError, match=rf"option code {code} is outside 1-254"):
            parse("--no-dhcp", "--config", str(conf))
        with pytest.raises(SystemExit):
            make_parser().parse_args(["serve", "--dhcp-option", f"{code}=hex:01"])
        assert f"option code {code} is outside 1-254" in capsys.readouterr().err


def test_options_for_the_client_are_still_set(tmp_path: Path) -> None:
    conf = tmp_path / "site.toml"
    conf.write_text('root = "/srv"\n[dhcp-options]\nntp-servers = "10.0.0.1"\n67 = "boot.0"\n')
    config = parse("--no-dhcp", "--config", str(conf), "--dhcp-option", "66=10.0.0.2")
    assert set(config.dhcp_options) == {42, 66, 67}


@pytest.mark.parametrize(
    ("line", "key", "wanted"),
    [
        ('http-port = "80"', "http-port", "a valid integer"),
        ('tftp-port = "69"', "tftp-port", "a valid integer"),
        ('lease-time = "600"', "lease-time", "a valid integer"),
        ("lease-time = 600.0", "lease-time", "a valid integer"),
        ("dhcp-workers = true", "dhcp-workers", "a valid integer"),
        ('mtu = "1400"', "mtu", "a valid integer"),
        ('tftp-timeout = "2"', "tftp-timeout", "a valid number"),
        ("tftp-timeout = true", "tftp-timeout", "a valid number"),
        ("tftp = 1", "tftp", "a valid boolean"),
        ('log-dhcp = "yes"', "log-dhcp", "a valid boolean"),
        ('tftp-single-port = "true"', "tftp-single-port", "a valid boolean"),
        ("domain-name = 5", "domain-name", "a valid string"),
    ],
)
def test_file_values_are_taken_as_typed(tmp_path: Path, line: str, key: str, wanted: str) -> None:
    conf = tmp_path / "site.toml"
    conf.write_text(f'root = "/srv"\n{line}\n')
    with pytest.raises(ConfigError, match=rf"^{conf}:2: {key}: Input should be {wanted}"):
        parse("--no-dhcp", "--config", str(conf))


def test_typed_file_values_and_flags_still_work(tmp_path: Path) -> None:
    conf = tmp_path / "site.toml"
    conf.write_text(
        'root = "/srv"\nstate-dir = "/var/tmp/nb"\nhttp-port = 8080\ntftp-timeout = 2\n'
        'tftp = false\nrouters = ["10.0.0.1"]\nnext-server = "10.0.0.2"\n'
    )
    config = parse("--no-dhcp", "--config", str(conf), "--tftp-port", "6969")
    assert (config.http_port, config.tftp_port, config.tftp_timeout) == (8080, 6969, 2.0)
    assert config.tftp is False and config.root == Path("/srv")
    assert config.state_dir == Path("/var/tmp/nb")
    assert [str(ip) for ip in config.routers] == ["10.0.0.1"]


@pytest.mark.parametrize("device", ["/dev/null", "/dev/zero"])
def test_config_on_a_device_is_one_line(device: str) -> None:
    # /dev/zero would be read for ever (and fill the memory): a subprocess, so a hang fails.
    run = subprocess.run(
        [sys.executable, "-m", "netbootd.cli", "serve", "--config", device, "--no-dhcp"],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert run.returncode == 2
    assert run.stderr == f"netbootd: config error: {device}: a device, not a config file\n"


def test_config_on_a_directory_or_a_pipe_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pipe = tmp_path / "fifo"
    os.mkfifo(pipe)
    for path, kind in ((tmp_path, "a directory"), (pipe, "a pipe")):
        assert main(["serve", "--config", str(path), "--no-dhcp"]) == 2
        err = capsys.readouterr().err
        assert err == f"netbootd: config error: {path}: {kind}, not a config file\n"
