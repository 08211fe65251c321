"""The command-line reference (docs/cli.md), rendered from the ``kiosk`` parser itself.

    .venv/bin/python -m kiosk.cli.reference > docs/cli.md

``render`` is pure: it walks the argparse tree (every command and subcommand, in the order
``--help`` lists them) and returns Markdown: each command's help, its usage line and its options
with their help, and the exit codes from ``kiosk.cli``'s docstring. Nothing depends on the
terminal or the Python version: the usage line is never wrapped (argparse wraps at the terminal's
width) and option names are written here, not by argparse's help formatter (whose layout changed
in Python 3.13). tests/test_cli_reference.py fails when docs/cli.md differs from the output.

argparse has no public way to list a parser's arguments: this reads ``_actions`` and the
subparsers' ``_choices_actions``, as argparse's own help formatter does.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator

import kiosk.cli
from kiosk.cli import build_parser

REGENERATE = ".venv/bin/python -m kiosk.cli.reference > docs/cli.md"
# Wide enough that argparse never wraps a usage line.
_NO_WRAP = 10_000


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return None


def walk(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ("kiosk",), help: str | None = None
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser, str | None]]:
    """Every parser of the tree, depth first in ``--help`` order: (command path, parser, the help
    its parent lists it with)."""
    yield path, parser, help
    sub = _subparsers(parser)
    if sub is None:
        return
    helps = {choice.dest: choice.help for choice in sub._choices_actions}
    for name, child in sub.choices.items():
        yield from walk(child, (*path, name), helps.get(name))


def usage(parser: argparse.ArgumentParser) -> str:
    """The parser's usage line, unwrapped: ``kiosk run [-h] [--config CONFIG]``."""
    formatter = argparse.HelpFormatter(parser.prog, width=_NO_WRAP)
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups, "")
    return " ".join(formatter.format_help().split())


def _metavar(action: argparse.Action) -> str:
    if action.metavar is not None:
        return str(action.metavar)
    if action.choices is not None and not isinstance(action, argparse._SubParsersAction):
        return "{" + ",".join(str(choice) for choice in action.choices) + "}"
    return action.dest if not action.option_strings else action.dest.upper()


def invocation(action: argparse.Action) -> str:
    """How an argument is written: ``-n, --lines N``, ``--json``, ``[path]``, ``IMAGE [IMAGE ...]``."""
    metavar = _metavar(action)
    value = {
        None: metavar,
        "?": f"[{metavar}]",
        "*": f"[{metavar} ...]",
        "+": f"{metavar} [{metavar} ...]",
        argparse.PARSER: f"{metavar} ...",
    }.get(action.nargs, metavar)  # type: ignore[call-overload]
    if not action.option_strings:
        return value
    takes_value = action.nargs != 0
    return ", ".join(action.option_strings) + (f" {value}" if takes_value else "")


def _text(text: str) -> str:
    """Plain help text made safe for Markdown (``path<TAB>payload`` is no HTML tag)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    if not action.help:
        return ""
    params = {**vars(action), "prog": parser.prog, "default": action.default}
    return _text(action.help % params if "%" in action.help else action.help)


def _anchor(path: tuple[str, ...]) -> str:
    """The link target of a command's heading: its words joined by hyphens, as GitHub and most
    Markdown renderers make it (command names are lower-case letters and hyphens)."""
    return "-".join(path)


def exit_codes(doc: str | None) -> str:
    """The "Exit codes: ..." paragraph of a docstring, on one line, in Markdown."""
    for paragraph in (doc or "").split("\n\n"):
        if paragraph.strip().startswith("Exit codes:"):
            return " ".join(paragraph.split()).replace("``", "`")
    return ""


def render(parser: argparse.ArgumentParser, doc: str | None = None) -> str:
    """docs/cli.md for ``parser`` (``kiosk.cli.build_parser()``); ``doc``: the docstring whose
    "Exit codes:" paragraph is quoted."""
    tree = list(walk(parser))
    lines = [
        "# The `kiosk` command line",
        "",
        f"<!-- Generated from the parser by `{REGENERATE}`; edit the help texts in kiosk/cli/"
        " (or cloud/cli.py), not this file. -->",
        "",
        _text(parser.description or ""),
        "",
        "Every command takes `-h` / `--help`, which prints what this page says of it.",
        "",
        exit_codes(doc),
        "",
        "| command | what it does |",
        "| --- | --- |",
    ]
    for path, _parser, help in tree[1:]:
        name = " ".join(path)
        lines.append(
            f"| [`{name}`](#{_anchor(path)}) | {_text(help or '').replace('|', '&#124;')} |"
        )
    for path, node, help in tree:
        level = "#" * min(len(path) + 1, 6)
        lines += ["", f"{level} `{' '.join(path)}`", ""]
        if help and len(path) > 1:
            lines += [_text(help), ""]
        lines += ["```text", usage(node), "```"]
        arguments = [
            action
            for action in node._actions
            if not isinstance(action, argparse._HelpAction | argparse._SubParsersAction)
            and action.help != argparse.SUPPRESS
        ]
        if arguments:
            lines.append("")
        for action in arguments:
            said = _help(node, action)
            lines.append(f"- `{invocation(action)}`" + (f": {said}" if said else ""))
        sub = _subparsers(node)
        if sub is not None:
            names = ", ".join(f"[`{name}`](#{_anchor((*path, name))})" for name in sub.choices)
            lines += ["", f"{_metavar(sub)}: one of {names}."]
    return "\n".join(lines) + "\n"


def main() -> int:
    """Print docs/cli.md for the ``kiosk`` command line."""
    sys.stdout.write(render(build_parser(), kiosk.cli.__doc__))
    return 0


if __name__ == "__main__":
    sys.exit(main())
