"""Every command's ``--help``: a description, a help text for each flag, no reStructuredText marks."""

from __future__ import annotations

import argparse
import importlib
import tomllib
from pathlib import Path

import pytest

SCRIPTS = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["scripts"]


class Parsed(Exception):
    """Raised in place of parsing: carries the parser the command built."""


def parser_of(target: str, monkeypatch: pytest.MonkeyPatch) -> argparse.ArgumentParser:
    def capture(self: argparse.ArgumentParser, *args: object, **kw: object) -> None:
        raise Parsed(self)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", capture)
    module, name = target.split(":")
    monkeypatch.setattr("sys.argv", ["prog", "--help"])
    with pytest.raises(Parsed) as got:
        getattr(importlib.import_module(module), name)()
    parser = got.value.args[0]
    assert isinstance(parser, argparse.ArgumentParser)
    return parser


@pytest.mark.parametrize("command", sorted(SCRIPTS))
def test_every_flag_of_every_command_says_what_it_does(command: str, monkeypatch: pytest.MonkeyPatch) -> None:
    parser = parser_of(SCRIPTS[command], monkeypatch)
    assert parser.prog == command
    assert parser.description
    assert [a.option_strings or a.dest for a in parser._actions if a.help is None] == []
    text = parser.format_help()
    assert "``" not in text and ":func:" not in text
