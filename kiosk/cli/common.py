"""What the ``kiosk`` command groups share: exit codes, logging, loading the configuration, and the
one declaration of ``--config``.

Imports only the standard library at module level: every group module imports this one, and
``kiosk --help`` must stay fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

# The exit codes of every command (the table is in kiosk/cli/__init__.py's docstring).
EXIT_RUNTIME, EXIT_CONFIG, EXIT_DATABASE, EXIT_REFUSED = 1, 2, 3, 4
# The output was closed before the command finished (``kiosk demo | head``): 128 + SIGPIPE, what a
# shell reports for a command that SIGPIPE ended, so ``set -o pipefail`` sees the usual code.
EXIT_PIPE = 141

# The default location, as the help texts say it; kiosk.config.config_path_from decides it.
CONFIG_HELP = "config file (default: $KIOSK_CONFIG or /etc/fitflow-kiosk/kiosk.toml)"


def add_config_option(
    parser: argparse.ArgumentParser, help: str = CONFIG_HELP, *, keep_outer: bool = False
) -> None:
    """Declare ``--config`` (the configuration file's path; None: the default) on ``parser``: the
    only declaration of it in kiosk/cli. ``help`` says what the file is used for there.
    ``keep_outer``: ``parser`` is a sub-action's, and a ``--config`` given before the action
    (``kiosk web --config F set-password``) must not be reset by this one's default."""
    if keep_outer:
        parser.add_argument("--config", default=argparse.SUPPRESS, help=help)
    else:
        parser.add_argument("--config", help=help)


def setup_logging(level: str = "INFO") -> None:
    """Log to stderr at ``level`` (a ``logging`` level name; unknown names mean INFO)."""
    import logging  # here: `kiosk --help` needs no logging

    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def config_path(path: str | None) -> Path:
    """``path`` itself, or the default: ``$KIOSK_CONFIG`` or /etc/fitflow-kiosk/kiosk.toml."""
    from pathlib import Path

    from kiosk.config import config_path_from

    return Path(path) if path else config_path_from(os.environ)


def load_config(path: str | None):
    """The validated ``kiosk.config.Config`` from ``path`` (None: the default) and the environment,
    or None after printing every error to stderr."""
    from kiosk.config import ConfigError
    from kiosk.config import load_config as load

    where = config_path(path)
    try:
        return load(where, os.environ)
    except ConfigError as exc:
        print(f"invalid configuration ({where}):\n{exc}", file=sys.stderr)
        return None


def at_least(low: int) -> Callable[[str], int]:
    """An argparse type: a whole number of at least ``low``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected at least {low}, got {value}")
        return value

    return parse


def port_number(text: str) -> int:
    """An argparse type: a TCP port, 1..65535."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 1..65535, not {value}")
    return value


def base_clock(args: argparse.Namespace):
    """The clock under a command's anchored clock: the system's, or the one a test handed to
    ``kiosk.cli.main`` (``clock=``)."""
    from kiosk.core.clock import SystemClock

    return getattr(args, "base_clock", None) or SystemClock()
