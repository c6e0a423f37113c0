"""The serve command's flags parsed into a config, as the command line would."""

from __future__ import annotations

from netbootd.cli import config_from_args, make_parser
from netbootd.config import Config


def parse(*argv: str) -> Config:
    return config_from_args(make_parser().parse_args(["serve", *argv]))
