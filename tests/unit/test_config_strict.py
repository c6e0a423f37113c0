"""What a configuration may not say: options of the protocol itself, values of the wrong type,
and a --config that is no file to read."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from netbootd.cli import main


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
