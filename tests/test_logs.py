"""``kiosk logs`` (kiosk.ops.logs, kiosk.cli.db): the journalctl command it builds and how it fails.

journalctl itself is never run: the runner and the program lookup are injected.
"""

from __future__ import annotations

import pytest

from kiosk.cli import db as dbcli
from kiosk.ops.logs import UNITS, journalctl_command

SERVICES = [
    "fitflow-scanner.service",
    "fitflow-sync.service",
    "fitflow-web.service",
    "fitflow-backup.service",
]


def units_of(argv: list[str]) -> list[str]:
    return [argv[i + 1] for i, arg in enumerate(argv) if arg == "-u"]


def found(name: str) -> str:
    return f"/usr/bin/{name}"


class Runner:
    def __init__(self, status: int = 0, error: BaseException | None = None) -> None:
        self.calls: list[list[str]] = []
        self.status, self.error = status, error

    def __call__(self, argv) -> int:
        self.calls.append(list(argv))
        if self.error is not None:
            raise self.error
        return self.status


def test_default_shows_the_last_100_entries_of_every_kiosk_service() -> None:
    argv = journalctl_command()
    assert argv[0] == "journalctl" and "--no-pager" in argv
    assert units_of(argv) == SERVICES
    assert argv[argv.index("-n") + 1] == "100"
    assert "-f" not in argv and "--since" not in argv


def test_one_unit_follow_lines_and_since() -> None:
    argv = journalctl_command("scanner", follow=True, lines=20, since="1 hour ago")
    assert units_of(argv) == ["fitflow-scanner.service"]
    assert argv[argv.index("-n") + 1] == "20"
    assert argv[argv.index("--since") + 1] == "1 hour ago"  # one argument, never split by a shell
    assert argv[-1] == "-f"


def test_unknown_unit_and_negative_count_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown unit 'door'"):
        journalctl_command("door")
    with pytest.raises(ValueError, match="0 or more"):
        journalctl_command(lines=-1)
    assert set(UNITS) == {"scanner", "sync", "web", "backup", "all"}


def test_the_command_runs_journalctl_with_the_options() -> None:
    runner = Runner()
    code = dbcli.main(
        ["logs", "-f", "--unit", "sync", "-n", "5"], logs_run=runner, logs_which=found
    )
    assert code == 0
    (argv,) = runner.calls
    assert units_of(argv) == ["fitflow-sync.service"]
    assert argv[argv.index("-n") + 1] == "5" and argv[-1] == "-f"


def test_journalctl_failure_passes_its_status_through_with_a_hint(capsys) -> None:
    assert dbcli.main(["logs"], logs_run=Runner(status=1), logs_which=found) == 1
    assert "systemd-journal group" in capsys.readouterr().err


def test_ctrl_c_while_following_is_a_normal_exit() -> None:
    runner = Runner(error=KeyboardInterrupt())
    assert dbcli.main(["logs", "-f"], logs_run=runner, logs_which=found) == 0


def test_no_journalctl_is_a_clear_error_and_runs_nothing(capsys) -> None:
    runner = Runner()
    assert dbcli.main(["logs"], logs_run=runner, logs_which=lambda name: None) == 1
    assert runner.calls == []
    err = capsys.readouterr().err
    assert "journalctl not found" in err and "its own terminal" in err


def test_bad_options_are_usage_errors(capsys) -> None:
    for argv in (["logs", "--unit", "door"], ["logs", "-n", "-3"], ["logs", "-n", "ten"]):
        with pytest.raises(SystemExit) as caught:
            dbcli.main(argv, logs_run=Runner(), logs_which=found)
        assert caught.value.code == 2
    assert "must be at least 0" in capsys.readouterr().err
