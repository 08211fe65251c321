"""`kiosk selftest` against mock pins, a replayed camera and the fake cloud."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from types import SimpleNamespace

import cv2
import pytest

from fakecloud import TOKEN, FakeCloud
from hardware.fakes.synthetic import compose_frame
from kiosk.cli import main
from kiosk.config import load_config
from kiosk.data.store import Store
from kiosk.door.parts import build_door, make_pin_factory
from kiosk.ops.selftest import (
    Grade,
    SelftestEnv,
    check_disk,
    check_relay,
    check_signal,
    run_selftest,
)
from kiosk.ops.testcard import TEST_CODE
from kiosk.sync.identity import DeviceIdentity, save_identity

BIG_DISK = SimpleNamespace(total=32 * 2**30, used=2 * 2**30, free=30 * 2**30)


def frames_with_card(folder, card: bool = True):
    folder.mkdir()
    cv2.imwrite(str(folder / "000.png"), compose_frame(None))
    if card:
        cv2.imwrite(str(folder / "001.png"), compose_frame(TEST_CODE, code_fraction=0.4, seed=3))
    return folder


def write_config(tmp_path, **camera):
    camera = {"backend": "replay", "replay_path": str(tmp_path / "frames"), **camera}
    lines = [
        "[store]", f'path = "{tmp_path / "kiosk.db"}"',
        "[sync]", f'credentials_file = "{tmp_path / "device.json"}"',
        "[gpio]", 'pin_factory = "mock"', "relay_active_high = false",
        "[camera]", *(f"{k} = {json.dumps(v)}" for k, v in camera.items()),
    ]  # fmt: skip
    path = tmp_path / "kiosk.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def enrol(tmp_path, token=TOKEN):
    save_identity(
        tmp_path / "device.json",
        DeviceIdentity("https://cloud.test", "dev_1", token, "org-1", "gym-1", "Main St", "UTC",
                       datetime(2026, 5, 1, tzinfo=UTC)),
    )  # fmt: skip


def env(cloud: FakeCloud, **overrides) -> SelftestEnv:
    made = SelftestEnv(
        transport=cloud.transport,
        clock_synced=lambda: True,
        disk_usage=lambda _p: BIG_DISK,
        sleep=lambda _s: None,
        camera_seconds=2.0,
    )
    for name, value in overrides.items():
        setattr(made, name, value)
    return made


@pytest.fixture
def ready(tmp_path):
    """A kiosk with every part in order: database, enrolment, frames with the test card."""
    frames_with_card(tmp_path / "frames")
    Store.open(tmp_path / "kiosk.db").close()
    enrol(tmp_path)
    cloud = FakeCloud()
    cloud.seed_gym()
    return load_config(write_config(tmp_path), {}), cloud


def test_every_check_is_ok_on_a_ready_kiosk(ready):
    config, cloud = ready
    results = run_selftest(config, env(cloud))
    assert [(r.name, r.grade) for r in results] == [
        (name, Grade.OK)
        for name in ("config", "database", "disk", "clock", "cloud", "camera", "decoder",
                     "relay", "leds", "buzzer")
    ], [(r.name, r.summary) for r in results]  # fmt: skip
    by_name = {r.name: r for r in results}
    assert "test card was read" in by_name["decoder"].summary
    assert "token accepted" in by_name["cloud"].summary
    assert any(r.url.path == "/v1/replica/changes" for r in cloud.requests)


def test_outputs_are_really_driven_and_released(ready):
    """The relay (active-low here) goes on then off; each LED and the buzzer switch on."""
    config, _cloud = ready
    pins = make_pin_factory("mock")
    result = check_relay(config, pins, env(FakeCloud()))
    assert result.grade is Grade.OK
    states = [s.state for s in pins.factory.pin(config.gpio.relay_pin).states]
    assert states[-3:] == [True, False, True]  # off (high), on (low), off again
    leds = check_signal(config, pins, env(FakeCloud()))
    assert [r.grade for r in leds] == [Grade.OK, Grade.OK]
    for pin in (config.gpio.green_led_pin, config.gpio.red_led_pin, config.gpio.buzzer_pin):
        assert True in [s.state for s in pins.factory.pin(pin).states], pin


@pytest.fixture
def quick(monkeypatch):
    """Through ``main`` time is real: show each LED for a millisecond, not 0.8 s."""
    monkeypatch.setattr("kiosk.ops.selftest.SHOW_S", 0.001)


def test_missing_camera_is_a_problem_with_a_hint_and_exit_1(tmp_path, capsys, quick):
    config = write_config(tmp_path, replay_path=str(tmp_path / "no-such-folder"))
    argv = ["selftest", "--json", "--config", str(config), "--camera-seconds", "1", "--no-relay"]
    assert main(argv) == 1
    report = json.loads(capsys.readouterr().out)
    checks = {c["name"]: c for c in report["checks"]}
    assert report["ok"] is False
    assert checks["camera"]["grade"] == "PROBLEM"
    assert "does not exist" in checks["camera"]["summary"]
    assert "camera.replay_path" in checks["camera"]["hint"]
    assert checks["decoder"]["grade"] == "WARNING"
    # The other checks still ran: not enrolled is a warning with the fix.
    assert checks["cloud"]["grade"] == "WARNING" and "provision" in checks["cloud"]["hint"]
    assert checks["relay"]["grade"] == "WARNING" and "--no-relay" in checks["relay"]["summary"]
    assert checks["leds"]["grade"] == "OK" and checks["buzzer"]["grade"] == "OK"


def test_opencv_device_63_is_a_problem(tmp_path, capsys, quick):
    config = write_config(tmp_path, backend="opencv", device=63)
    assert main(["selftest", "--config", str(config), "--camera-seconds", "1", "--no-relay"]) == 1
    out = capsys.readouterr().out
    assert "PROBLEM  camera" in out and "/dev/video63" in out and "NOT READY" in out


def test_frames_without_the_card_warn_how_to_show_it(ready, tmp_path):
    config, cloud = ready
    empty = frames_with_card(tmp_path / "empty", card=False)
    config = load_config(write_config(tmp_path, replay_path=str(empty)), {})
    by_name = {r.name: r for r in run_selftest(config, env(cloud))}
    assert by_name["camera"].grade is Grade.OK
    assert by_name["decoder"].grade is Grade.WARNING and "testcard" in by_name["decoder"].hint


def test_a_revoked_token_is_a_problem_naming_re_enrolment(ready, tmp_path):
    config, cloud = ready
    enrol_again = tmp_path / "device.json"
    enrol_again.unlink()
    enrol(tmp_path, token="ffd_" + "x" * 40)
    by_name = {r.name: r for r in run_selftest(config, env(cloud))}
    assert by_name["cloud"].grade is Grade.PROBLEM and "--re-enrol" in by_name["cloud"].hint


def test_busy_pins_are_reported_as_held_by_the_scanner(ready):
    config, _cloud = ready
    pins = make_pin_factory("mock")
    scanner = build_door(config.gpio, pins.factory)  # the running scanner holds the relay pin
    try:
        result = check_relay(config, pins, env(FakeCloud()))
    finally:
        scanner.close()
    assert result.grade is Grade.WARNING and "systemctl stop" in result.hint


def test_clock_disk_and_database_problems(ready, tmp_path):
    config, cloud = ready
    (tmp_path / "kiosk.db").write_bytes(b"garbage" * 1000)
    tiny = SimpleNamespace(total=8 * 2**30, used=8 * 2**30, free=10 * 2**20)
    results = run_selftest(
        config, env(cloud, clock_synced=lambda: False, disk_usage=lambda _: tiny)
    )
    by_name = {r.name: r for r in results}
    assert by_name["clock"].grade is Grade.WARNING and "NTP" in by_name["clock"].hint
    assert by_name["disk"].grade is Grade.PROBLEM
    assert by_name["database"].grade is Grade.PROBLEM and "db restore" in by_name["database"].hint
    low = SimpleNamespace(total=8 * 2**30, used=0, free=300 * 2**20)
    assert check_disk(config, env(cloud, disk_usage=lambda _: low)).grade is Grade.WARNING


def test_invalid_config_exits_2(tmp_path, capsys):
    path = tmp_path / "kiosk.toml"
    path.write_text("[gpio]\nrelay_pin = 99\n")
    assert main(["selftest", "--config", str(path)]) == 2
    out = capsys.readouterr().out
    assert "PROBLEM  config" in out and "gpio.relay_pin" in out
