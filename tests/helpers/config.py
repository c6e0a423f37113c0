"""A config as the command line makes it: from the serve command's flags, or a file alone."""

from __future__ import annotations

from pathlib import Path

from netbootd.cli import config_from_args, make_parser
from netbootd.config import Config, build, load_file


def parse(*argv: str) -> Config:
    return config_from_args(make_parser().parse_args(["serve", *argv]))


def from_file(path: Path) -> Config:
    """The config a file alone gives, read and checked as ``--config`` reads it."""
    file = load_file(path)
    return build(file.settings, {}, file)
