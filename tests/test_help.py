"""Every command's --help renders: `tunehub` and each of its subcommands, and each bench/ module.

argparse formats a help string with %-interpolation only when help is asked for, so a stray "%" in one
(an f-string's `{x:.0%}`) breaks that one command's --help and nothing else.

Run: .venv/bin/python -m pytest tests/test_help.py -q
"""

from __future__ import annotations

import argparse
import importlib
import sys

import pytest

from hub.cli.main import build_parser

BENCHMARKS = ["load", "loop", "quantize", "retrain", "serving", "store", "training"]


def subparsers(parser: argparse.ArgumentParser, path: str = "tunehub"):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from subparsers(sub, f"{path} {name}")


def test_every_tunehub_command_renders_its_help():
    commands = list(subparsers(build_parser()))
    assert len(commands) > 10  # the walk reached the subcommands, not just the top
    for path, parser in commands:
        text = parser.format_help()
        assert text.startswith("usage:"), path


@pytest.mark.parametrize("name", BENCHMARKS)
def test_every_benchmark_renders_its_help(name, monkeypatch, capsys):
    module = importlib.import_module(f"bench.{name}")
    monkeypatch.setattr(sys, "argv", [f"bench.{name}", "--help"])
    with pytest.raises(SystemExit) as exit:
        module.main()
    assert exit.value.code == 0
    assert capsys.readouterr().out.startswith("usage:")
