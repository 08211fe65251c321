"""docs/cli.md is the ``kiosk`` parser rendered (kiosk.cli.reference), and the registry's help for
each command is the help its group module gives it."""

from __future__ import annotations

import argparse
from pathlib import Path

import kiosk.cli
from kiosk.cli import COMMANDS, build_parser
from kiosk.cli.reference import REGENERATE, render, walk

DOCS = Path(__file__).resolve().parent.parent / "docs" / "cli.md"


def subcommand_paths(parser: argparse.ArgumentParser, path: tuple[str, ...] = ("kiosk",)):
    """Every command path of the parser, found through argparse's own subparsers (not through
    the generator's walk)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield (*path, name)
                yield from subcommand_paths(child, (*path, name))


def test_docs_cli_md_is_the_generated_reference():
    expected = render(build_parser(), kiosk.cli.__doc__)
    assert DOCS.read_text(encoding="utf-8") == expected, (
        f"docs/cli.md is stale: regenerate it with `{REGENERATE}`"
    )


def test_every_command_and_subcommand_has_a_section():
    text = DOCS.read_text(encoding="utf-8")
    paths = list(subcommand_paths(build_parser()))
    assert len(paths) > len(COMMANDS)  # the nested ones too (db backup, cloud serve, ...)
    for path in paths:
        name = " ".join(path)
        assert f"# `{name}`\n" in text, f"{name} is missing from docs/cli.md"
        assert f"(#{'-'.join(path)})" in text, f"{name} is missing from the table of commands"


def test_the_reference_does_not_depend_on_the_terminal(monkeypatch):
    monkeypatch.setenv("COLUMNS", "40")
    narrow = render(build_parser(), kiosk.cli.__doc__)
    monkeypatch.setenv("COLUMNS", "300")
    assert render(build_parser(), kiosk.cli.__doc__) == narrow


def test_the_registry_lists_each_command_with_its_group_modules_help():
    listed = {path[-1]: help for path, _parser, help in walk(build_parser()) if len(path) == 2}
    assert list(listed) == list(COMMANDS)
    for name, command in COMMANDS.items():
        assert listed[name] == command.help, f"kiosk {name}: {command.module} says otherwise"
