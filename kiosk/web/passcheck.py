"""The owner password checked in a short-lived child process.

scrypt at the owner password's cost takes 32 MiB for a tenth of a second. Done inside the page's
process, that memory would stay counted in its peak (the page stays under 60 MB);
in a child, the page's own memory does not move. The password travels on the child's standard
input, never on its command line (visible to every local user in /proc). The child runs isolated
(``python -I``: no current folder on its import path, no ``PYTHON*`` variables, no user site), so
a file planted where the page runs cannot replace the check. If the child cannot run (no
interpreter, a broken install), the check runs in this process rather than refuse a correct
password.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys

from kiosk.ops.owner_password import verify_password

log = logging.getLogger(__name__)

TIMEOUT_S = 30.0
_CHILD = (
    "import json, sys\n"
    "from kiosk.ops.owner_password import verify_password\n"
    "given = json.load(sys.stdin)\n"
    "sys.stdout.write('1' if verify_password(given['password'], given['encoded']) else '0')\n"
)


def verify_in_child(password: str, encoded: str, *, timeout_s: float = TIMEOUT_S) -> bool:
    """``kiosk.ops.owner_password.verify_password`` run in a child Python process: True when
    ``password`` matches ``encoded``. Never raises; blocks for the check (~0.15 s)."""
    payload = json.dumps({"password": password, "encoded": encoded})
    try:
        done = subprocess.run(  # noqa: S603 - our own interpreter and a fixed program, no shell
            [sys.executable, "-I", "-c", _CHILD],
            input=payload,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("the password check could not run in a child process (%s); checking here", exc)
        return verify_password(password, encoded)
    if done.returncode != 0 or done.stdout not in ("0", "1"):
        log.warning(
            "the password check's child process failed (exit status %d); checking here",
            done.returncode,
        )
        return verify_password(password, encoded)
    return done.stdout == "1"
