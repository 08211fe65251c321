"""The `kiosk` command as an installer meets it: config check, refusing a bad config, running the
door from a config file, relay-off."""

from __future__ import annotations

import sqlite3
import subprocess
import sys

import cv2

from fakes import clean_env
from hardware.fakes.synthetic import compose_frame
from kiosk.cli import main

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
