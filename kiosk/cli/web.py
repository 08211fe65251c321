"""``kiosk web`` and ``kiosk web set-password``: the owner page's commands. Their parser and
handlers live with the page (``kiosk.web.commands``, which imports only argparse at module level);
this module plugs them into the ``kiosk`` command line.
"""

from __future__ import annotations

import argparse

from kiosk.web.commands import register


def add(sub: argparse._SubParsersAction, name: str, help: str) -> None:
    """Add ``web`` to the ``kiosk`` subcommands ``sub``. Its help is the one
    ``kiosk.web.commands`` declares; tests/test_cli_reference.py checks it equals ``help``, the
    registry's."""
    if name != "web":
        raise ValueError(f"the web group has no command {name!r}")
    register(sub)
