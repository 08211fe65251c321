"""``kiosk cloud ...``: the reference cloud's commands (serve, migrate, init, tokens, enrolment
codes). Their parser and handlers live with the cloud (``cloud.cli``, which also runs on its own as
``python -m cloud.cli`` and imports FastAPI only inside the commands that serve); this module plugs
them into the ``kiosk`` command line. The cloud needs the ``cloud`` extra: without it, the command
that reaches FastAPI ends with the install hint (``kiosk.cli``, ``main``).
"""

from __future__ import annotations

import argparse

from cloud.cli import register


def add(sub: argparse._SubParsersAction, name: str, help: str) -> None:
    """Add ``cloud`` to the ``kiosk`` subcommands ``sub``. Its help is the one ``cloud.cli``
    declares; tests/test_cli_reference.py checks it equals ``help``, the registry's."""
    if name != "cloud":
        raise ValueError(f"the cloud group has no command {name!r}")
    register(sub)
