"""``kiosk logs``: the kiosk services' logs from journald, without remembering unit names.

The services log to stderr, which systemd sends to the journal; this only builds and runs the
matching ``journalctl`` command. On a machine without journald (a laptop running ``kiosk demo``)
the logs are on the terminal that runs the command, and ``kiosk logs`` says so.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence

# ``--unit`` choices and the systemd units they read (systemd/ in this repository).
UNITS = {
    "scanner": ("fitflow-scanner.service",),
    "sync": ("fitflow-sync.service",),
    "web": ("fitflow-web.service",),
    "backup": ("fitflow-backup.service",),
}
UNITS["all"] = tuple(unit for units in UNITS.values() for unit in units)
DEFAULT_LINES = 100


def journalctl_command(
    unit: str = "all", *, follow: bool = False, lines: int = DEFAULT_LINES, since: str | None = None
) -> list[str]:
    """The ``journalctl`` argv for ``kiosk logs``: the last ``lines`` entries of ``unit`` (a key of
    ``UNITS``), then new ones as they come when ``follow``; ``since`` is passed through in any
    form journalctl accepts (``"1 hour ago"``, ``"2024-05-06 09:00"``, ``"today"``). Raises
    ValueError for an unknown unit or a negative line count."""
    if unit not in UNITS:
        raise ValueError(f"unknown unit {unit!r}: one of {', '.join(UNITS)}")
    if lines < 0:
        raise ValueError(f"the line count must be 0 or more, not {lines}")
    argv = ["journalctl", "--no-pager", "-o", "short-iso"]
    for name in UNITS[unit]:
        argv += ["-u", name]
    argv += ["-n", str(lines)]
    if since:
        argv += ["--since", since]
    if follow:
        argv.append("-f")
    return argv


def _call(argv: Sequence[str]) -> int:
    # A fixed command line built above, no shell; journalctl writes straight to our terminal.
    return subprocess.call(list(argv))  # noqa: S603


def show_logs(
    unit: str = "all",
    *,
    follow: bool = False,
    lines: int = DEFAULT_LINES,
    since: str | None = None,
    run: Callable[[Sequence[str]], int] = _call,
    which: Callable[[str], str | None] = shutil.which,
) -> int:
    """Run journalctl for ``kiosk logs`` and return the exit status to use: journalctl's, 0 after
    Ctrl-C while following, 1 when journalctl is missing (with a message on stderr). ``run``
    executes an argv and returns its exit status, ``which`` finds a program (tests inject both)."""
    argv = journalctl_command(unit, follow=follow, lines=lines, since=since)
    if which("journalctl") is None:
        print(
            "kiosk logs: journalctl not found: this machine does not run systemd's journal, so "
            "the kiosk's services are not installed here. A kiosk started by hand (kiosk run, "
            "kiosk sync, kiosk demo) logs to its own terminal.",
            file=sys.stderr,
        )
        return 1
    try:
        status = run(argv)
    except FileNotFoundError:
        print("kiosk logs: journalctl could not be started", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    if status != 0 and not follow:
        print(
            "kiosk logs: journalctl failed; if it printed nothing useful, your user may not read "
            "the system journal: use sudo, or add the user to the systemd-journal group.",
            file=sys.stderr,
        )
    return status
