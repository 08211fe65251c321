"""The `kiosk` command as an installer meets it: config check, refusing a bad config, running the
door from a config file, relay-off."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cv2

from fakes import clean_env
from hardware.fakes.synthetic import compose_frame
from kiosk.cli import main
from kiosk.core.model import ClockQuality, Decision, Now, Reason, Verdict
from kiosk.data.store import Store

BAD = """
[door]
id = "front door!"
[gpio]
relay_pin = 40
pulse_ms = 5000
max_pulse_ms = 1000
[camera]
backend = "webcam"
colour = true
"""


def _kiosk(*args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kiosk", *args], capture_output=True, text=True,
                          timeout=120, check=False, env=env or clean_env())  # fmt: skip


def test_config_check_lists_every_error_with_its_path(tmp_path, capsys):
    path = tmp_path / "kiosk.toml"
    path.write_text(BAD)
    assert main(["config", "check", str(path)]) == 2
    err = capsys.readouterr().err
    for fragment in (
        "door.id",
        "gpio.relay_pin",
        "gpio.pulse_ms",
        "camera.backend",
        "camera.colour",
    ):
        assert fragment in err


def test_config_check_accepts_the_documented_example(capsys):
    assert main(["config", "check", "deploy/kiosk.example.toml"]) == 0
    assert "ok" in capsys.readouterr().out


def test_run_refuses_an_invalid_config(tmp_path):
    path = tmp_path / "kiosk.toml"
    path.write_text(BAD)
    result = _kiosk("run", "--config", str(path))
    assert result.returncode == 2
    assert "refusing to start" in result.stderr and "gpio.relay_pin" in result.stderr


def test_run_refuses_a_missing_config(tmp_path):
    result = _kiosk("run", "--config", str(tmp_path / "nope.toml"))
    assert result.returncode == 2
    assert "nope.toml" in result.stderr


def test_run_scans_replayed_frames_into_the_journal(tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(6):
        payload = "FF-ALICE-1001" if 2 <= i < 5 else None
        cv2.imwrite(str(frames / f"{i:03d}.png"), compose_frame(payload, width=640, height=480,
                                                                 code_fraction=0.4, seed=i))  # fmt: skip
    db = tmp_path / "kiosk.db"
    config = tmp_path / "kiosk.toml"
    config.write_text(
        f'[store]\npath = "{db}"\n[camera]\nbackend = "replay"\nreplay_path = "{frames}"\n'
        '[gpio]\npin_factory = "mock"\n'
    )
    result = _kiosk("run", "--config", str(config))
    assert result.returncode == 0, result.stderr
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT decision, reason, sync_state FROM checkins").fetchall()
    # No replica has been synced to this new device yet: the code is unknown, one decision only.
    assert rows == [("denied", "unknown_code", "pending")]


def test_relay_off_with_mock_pins(tmp_path):
    config = tmp_path / "kiosk.toml"
    config.write_text('[gpio]\npin_factory = "mock"\nrelay_pin = 5\n')
    result = _kiosk("relay-off", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "GPIO5 forced off" in result.stdout


def test_run_reports_a_damaged_database_and_leaves_it_untouched(tmp_path):
    db = tmp_path / "kiosk.db"
    garbage = b"this is not a database, but it might be a journal someone needs" * 100
    db.write_bytes(garbage)
    config = tmp_path / "kiosk.toml"
    config.write_text(f'[store]\npath = "{db}"\n'
                      '[gpio]\npin_factory = "mock"\n')  # fmt: skip
    result = _kiosk("run", "--config", str(config))
    assert result.returncode == 3
    assert str(db) in result.stderr and "damaged" in result.stderr
    assert db.read_bytes() == garbage


def test_decode_prints_one_line_per_file(tmp_path):
    image = tmp_path / "card.png"
    cv2.imwrite(str(image), compose_frame("FF-ALICE-1001", width=640, height=480,
                                          code_fraction=0.4, seed=3))  # fmt: skip
    empty = tmp_path / "empty.png"
    cv2.imwrite(str(empty), compose_frame(None, width=640, height=480, seed=4))
    missing = tmp_path / "missing.png"
    result = _kiosk("decode", str(image), str(empty), str(missing))
    assert result.returncode == 0
    assert result.stdout.splitlines() == [
        f"{image}\tFF-ALICE-1001",
        f"{empty}\t-",
        f"{missing}\t-",
    ]
    assert "missing.png" in result.stderr


# -- the registry: commands load only what they need -------------------------------------------

LOADED = """
import json, sys
from kiosk.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps(sorted(sys.modules)))
"""
# Never needed to list the commands, nor by the door: the page, the agent, the cloud, the tools.
NOT_FOR_THE_DOOR = ("kiosk.web", "kiosk.sync", "cloud", "devtools", "fastapi", "pydantic",
                    "starlette", "uvicorn", "httpx")  # fmt: skip
GROUPS = ("kiosk.cli.door", "kiosk.cli.sync", "kiosk.cli.setup", "kiosk.cli.db", "kiosk.cli.dev",
          "kiosk.cli.web", "kiosk.cli.cloud")  # fmt: skip


def loaded_by(*args: str) -> list[str]:
    done = subprocess.run([sys.executable, "-c", LOADED, *args], capture_output=True, text=True,
                          timeout=120, check=True, env=clean_env())  # fmt: skip
    return json.loads(done.stdout.splitlines()[-1])


def named(modules: list[str], prefixes: tuple[str, ...]) -> list[str]:
    return [m for m in modules if m in prefixes or m.startswith(tuple(p + "." for p in prefixes))]


def test_help_imports_no_command_group():
    modules = loaded_by("--help")
    assert named(modules, GROUPS) == [] and named(modules, NOT_FOR_THE_DOOR) == []


def test_run_imports_only_the_door(tmp_path):
    config = tmp_path / "kiosk.toml"
    config.write_text(f'[store]\npath = "{tmp_path / "kiosk.db"}"\n[camera]\nbackend = "replay"\n'
                      f'replay_path = "{tmp_path / "none"}"\n[gpio]\npin_factory = "mock"\n')  # fmt: skip
    for args in (["run", "--help"], ["run", "--config", str(config)]):  # the second: no camera
        modules = loaded_by(*args)
        assert named(modules, GROUPS) == ["kiosk.cli.door"], args
        assert named(modules, NOT_FOR_THE_DOOR) == [], args


# -- an optional part that is not installed ----------------------------------------------------

# The environment without the `cloud` extra, faked in a child process: FastAPI and pydantic are
# unimportable there (a None in sys.modules makes `import fastapi` fail as if not installed).
WITHOUT_CLOUD_EXTRA = """
import sys
sys.modules["fastapi"] = None
sys.modules["pydantic"] = None
from kiosk.cli import main
sys.exit(main(sys.argv[1:]))
"""
CLOUD_HINT = "pip install 'fitflow-kiosk[cloud]'"


def without_cloud_extra(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", WITHOUT_CLOUD_EXTRA, *args], capture_output=True,
                          text=True, timeout=300, check=False, env=clean_env())  # fmt: skip


def test_the_cloud_without_its_extra_says_what_to_install(tmp_path):
    result = without_cloud_extra("cloud", "serve", "--db", f"sqlite:///{tmp_path / 'cloud.db'}")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"kiosk cloud: FastAPI is not installed; it comes with the 'cloud' extra: {CLOUD_HINT}"
    ]


def test_the_demo_without_the_cloud_extra_suggests_no_cloud_which_works(tmp_path):
    result = without_cloud_extra("demo", "--once", "--no-web")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [
        f"kiosk demo: FastAPI is not installed; it comes with the 'cloud' extra: {CLOUD_HINT}, "
        "or add --no-cloud to run without it"
    ]
    result = without_cloud_extra("demo", "--once", "--no-web", "--no-cloud", "--db",
                                 str(tmp_path / "demo.db"))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "decisions:" in result.stdout and "Traceback" not in result.stderr


def test_the_sync_bench_without_the_cloud_extra_says_what_to_install():
    result = without_cloud_extra("bench", "--sync", "--members", "10", "--backlog", "1")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1] == (
        f"kiosk bench: FastAPI is not installed; it comes with the 'cloud' extra: {CLOUD_HINT}"
    )


def test_a_missing_module_of_no_extra_is_not_hidden():
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_CLOUD_EXTRA.replace('"pydantic"', '"kiosk.cli.door"'),
         "run", "--help"],
        capture_output=True, text=True, timeout=120, check=False, env=clean_env(),
    )  # fmt: skip
    assert result.returncode == 1 and "ModuleNotFoundError" in result.stderr


# -- output closed early (`kiosk ... | head`) --------------------------------------------------


def test_a_command_whose_output_is_closed_ends_quietly_with_141():
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the command writes anything
    try:
        # A long output and a one-line one; --help is argparse's own (it exits 0, quietly).
        for args, code in ((["config", "example"], 141),
                           (["config", "check", "deploy/kiosk.example.toml"], 141),
                           (["--help"], 0)):  # fmt: skip
            result = subprocess.run([sys.executable, "-m", "kiosk", *args], stdout=write_end,
                                    stderr=subprocess.PIPE, text=True, timeout=120, check=False,
                                    env=clean_env())  # fmt: skip
            assert (result.returncode, result.stderr) == (code, ""), args
    finally:
        os.close(write_end)


# -- start-up housekeeping: pruning synced check-ins only on a trusted clock --------------------

# `kiosk run` with the system's clocks, the wall clock moved DAYS ahead and of QUALITY.
RUN_WITH_CLOCK = """
import sys
import time
from datetime import UTC, datetime, timedelta
from kiosk.cli import main
from kiosk.core.ids import boot_id
from kiosk.core.model import ClockQuality

class Clock:
    def __init__(self, days, quality):
        self.boot_id = boot_id()
        self.ahead = timedelta(days=days)
        self._quality = ClockQuality(quality)
    def wall(self):
        return datetime.now(UTC) + self.ahead
    def monotonic_ns(self):
        return time.monotonic_ns()
    def quality(self):
        return self._quality
    def sleep(self, seconds):
        time.sleep(seconds)

days, quality, *argv = sys.argv[1:]
sys.exit(main(argv, clock=Clock(float(days), quality)))
"""


def door_with_synced_rows(tmp_path) -> tuple[Path, Path]:
    """A door's config (one blank replayed frame, mock pins, 90 days' retention) and its database
    with two synced check-ins: one of yesterday, one 200 days old."""
    frames = tmp_path / "frames"
    frames.mkdir()
    cv2.imwrite(str(frames / "000.png"), compose_frame(None, width=640, height=480, seed=1))
    db = tmp_path / "kiosk.db"
    config = tmp_path / "kiosk.toml"
    config.write_text(f'[store]\npath = "{db}"\ncheckin_retention_days = 90\n[camera]\n'
                      f'backend = "replay"\nreplay_path = "{frames}"\n'
                      '[gpio]\npin_factory = "mock"\n')  # fmt: skip
    now = datetime.now(UTC)
    with Store.open(db) as store:
        for age in (timedelta(days=1), timedelta(days=200)):
            when = Now(now - age, 1, "boot", ClockQuality.NTP_SYNCED)
            row = store.append_checkin(Decision(Verdict.DENIED, Reason.UNKNOWN_CODE),
                                       door_id="front", replica_version=0, now=when)  # fmt: skip
            store.mark_synced([row.id], at=now - age)
    return config, db


def synced_ages_days(db: Path) -> list[int]:
    now = datetime.now(UTC)
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT wall_time FROM checkins WHERE sync_state = 'synced'")
        return sorted(round((now - datetime.fromisoformat(t)).total_seconds() / 86400)
                      for (t,) in rows.fetchall())  # fmt: skip


def run_door(config: Path, days_ahead: float, quality: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", RUN_WITH_CLOCK, str(days_ahead), quality, "run",
                           "--config", str(config)], capture_output=True, text=True, timeout=120,
                          check=False, env=clean_env())  # fmt: skip


def test_a_door_whose_clock_runs_months_ahead_untrusted_keeps_its_synced_rows(tmp_path):
    config, db = door_with_synced_rows(tmp_path)
    # 180 days ahead: by that clock even yesterday's row is past the 90 days' retention.
    result = run_door(config, 180, "unsynced")
    assert result.returncode == 0, result.stderr
    assert synced_ages_days(db) == [1, 200]
    assert "not pruned at start-up: the clock is not trusted yet (unsynced)" in result.stderr


def test_a_door_with_a_trusted_clock_prunes_old_synced_rows(tmp_path):
    config, db = door_with_synced_rows(tmp_path)
    result = run_door(config, 0, "ntp_synced")
    assert result.returncode == 0, result.stderr
    assert synced_ages_days(db) == [1]
    assert "pruned 1 synced check-ins older than 90 days" in result.stderr
