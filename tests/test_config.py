"""Tests for kiosk.config: defaults, strict validation of file and environment, the example file."""

from __future__ import annotations

import dataclasses
import json
import tomllib
from pathlib import Path

import pytest

from hardware.protocols import Pattern
from kiosk.config import (
    DEFAULT_CONFIG_PATH,
    ConfigError,
    as_dict,
    check_setting,
    config_path_from,
    default_config,
    load_config,
    occupancy_rules,
    parse_setting,
    policy_settings,
    render_example,
)
from kiosk.core.model import PolicySettings, StalePolicy
from kiosk.core.occupancy import OccupancyRules

EXAMPLE = Path(__file__).resolve().parent.parent / "deploy" / "kiosk.example.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "kiosk.toml"
    path.write_text(text, encoding="utf-8")
    return path


def errors_of(path: Path | None, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path, env)
    return caught.value.errors


# --- defaults -------------------------------------------------------------------------------


def test_defaults_without_a_file():
    config = load_config(None)
    assert config == default_config()
    assert config.door.id == "door-1"
    assert config.site.timezone == "UTC"
    assert config.store.path == "/var/lib/fitflow-kiosk/kiosk.db"
    assert config.camera.backend == "picamera2"
    assert (config.camera.width, config.camera.height, config.camera.fps) == (640, 480, 30)
    assert config.camera.stale_after_s == 2.0
    assert config.decoder.backend == "zxing"
    assert config.gpio.relay_pin == 17
    assert (config.gpio.pulse_ms, config.gpio.max_pulse_ms) == (500, 3000)
    assert config.scanner.debounce_s == 3.0
    assert config.logging.level == "INFO"


def test_feedback_patterns_are_protocol_patterns_with_the_documented_defaults():
    feedback = default_config().feedback
    assert feedback.granted == Pattern("green", 1, 1500, 0, 1, 120, 0)
    assert feedback.denied == Pattern("red", 3, 150, 150, 3, 150, 100)
    assert feedback.fault == Pattern("red", 2, 500, 500, 0, 0, 0)
    assert type(feedback.granted) is Pattern


def test_config_is_frozen_and_slotted():
    config = default_config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.gpio.relay_pin = 5  # type: ignore[misc]
    assert not hasattr(config, "__dict__")
    assert not hasattr(config.gpio, "__dict__")


def test_empty_file_gives_defaults(tmp_path):
    assert load_config(write(tmp_path, "")) == default_config()


def test_file_values_are_applied_and_typed(tmp_path):
    path = write(
        tmp_path,
        """
        [door]
        id = "front.door_2"
        [site]
        timezone = "Europe/Berlin"
        [camera]
        backend = "replay"
        replay_path = "/srv/frames"
        stale_after_s = 5          # an int is accepted for a float key
        [gpio]
        relay_active_high = false
        pulse_ms = 800
        [feedback.denied]
        beeps = 0
        [policy]
        when_stale = "refuse"
        """,
    )
    config = load_config(path)
    assert config.door.id == "front.door_2"
    assert config.site.timezone == "Europe/Berlin"
    assert (config.camera.backend, config.camera.replay_path) == ("replay", "/srv/frames")
    assert config.camera.stale_after_s == 5.0
    assert type(config.camera.stale_after_s) is float
    assert config.gpio.relay_active_high is False
    assert config.gpio.pulse_ms == 800
    assert config.feedback.denied == dataclasses.replace(default_config().feedback.denied, beeps=0)
    assert config.policy.when_stale == "refuse"
    # Untouched keys keep their defaults.
    assert config.gpio.max_pulse_ms == 3000


# --- one error each, with its dotted path ---------------------------------------------------

SINGLE_ERRORS = [
    # unknown names
    ("[camra]\nwidth = 1", 'camra: unknown section [camra]; did you mean [camera]?'),
    ("[gpio]\nrelay_pn = 5", "gpio.relay_pn: unknown key; did you mean gpio.relay_pin?"),
    ("[gpio]\nwhatever = 5", "gpio.whatever: unknown key"),
    ("[feedback.granet]\nled = 'red'",
     "feedback.granet: unknown section [feedback.granet]; did you mean [feedback.granted]?"),
    ("relay_pin = 5", "relay_pin: setting outside any section; did you mean gpio.relay_pin?"),
    ('[gpio]\n"odd\\nkey" = 1', 'gpio."odd\\nkey": unknown key'),
    # a section given as a value
    ('door = "x"', 'door: expected a table [door], got a string ("x")'),
    ("[feedback]\ngranted = 1", "feedback.granted: expected a table [feedback.granted], "
     "got an integer (1)"),
    # wrong types
    ("[gpio]\nrelay_pin = true", "gpio.relay_pin: expected an integer, got a boolean (true)"),
    ("[gpio]\nrelay_pin = 17.0", "gpio.relay_pin: expected an integer, got a number (17.0)"),
    ('[gpio]\nrelay_pin = "17"', 'gpio.relay_pin: expected an integer, got a string ("17")'),
    ("[gpio]\nrelay_active_high = 1",
     "gpio.relay_active_high: expected a boolean (true or false), got an integer (1)"),
    ('[decoder]\nmotion_gate = "yes"',
     'decoder.motion_gate: expected a boolean (true or false), got a string ("yes")'),
    ("[scanner]\ndebounce_s = false",
     "scanner.debounce_s: expected a number, got a boolean (false)"),
    ("[door]\nid = 7", "door.id: expected a string, got an integer (7)"),
    ("[door]\nid = 1979-05-27", "door.id: expected a string, got a date/time"),
    ("[door]\nid = ['a']", "door.id: expected a string, got an array"),
    ("[scanner]\ndebounce_s = nan", "scanner.debounce_s: nan is not a finite number"),
    # out of range, with the unit
    ("[gpio]\nrelay_pin = 40", "gpio.relay_pin: 40 is out of range 2..27 (BCM pin number)"),
    ("[gpio]\npulse_ms = 10", "gpio.pulse_ms: 10 is out of range 50..10000 (ms)"),
    ("[camera]\nstale_after_s = 0.1", "camera.stale_after_s: 0.1 is out of range 0.2..60 (s)"),
    ("[policy]\npassback_minutes = -1",
     "policy.passback_minutes: -1 is out of range 0..1440 (min)"),
    ("[feedback.fault]\nled_blinks = 0", "feedback.fault.led_blinks: 0 is out of range 1..20"),
    ("[camera]\ndevice = 64", "camera.device: 64 is out of range 0..63"),
    # bad choices
    ('[camera]\nbackend = "usb"',
     'camera.backend: "usb" is not one of picamera2, opencv, replay'),
    ('[gpio]\npin_factory = "pigpio"',
     'gpio.pin_factory: "pigpio" is not one of auto, lgpio, rpigpio, mock'),
    ('[feedback.granted]\nled = "blue"',
     'feedback.granted.led: "blue" is not one of green, red, none'),
    ('[logging]\nlevel = "info"',
     'logging.level: "info" is not one of DEBUG, INFO, WARNING, ERROR'),
    ('[policy]\nwhen_stale = "admit"',
     'policy.when_stale: "admit" is not one of paid_through, refuse'),
    # extra rules
    ('[site]\ntimezone = "Mars/Olympus"',
     'site.timezone: "Mars/Olympus" is not a known IANA time zone '
     "(e.g. Europe/Berlin, America/New_York, UTC)"),
    ('[site]\ntimezone = "../etc/passwd"', 'site.timezone: "../etc/passwd" is not a known IANA'),
    ('[site]\ntimezone = "America"', 'site.timezone: "America" is not a known IANA'),
    ('[door]\nid = "door 1"', 'door.id: "door 1" must be 1..64 characters of A-Z a-z 0-9 . _ -'),
    ('[door]\nid = ""', 'door.id: "" must be 1..64 characters'),
    (f'[door]\nid = "{"d" * 65}"', f'door.id: "{"d" * 57}..." must be 1..64 characters'),
    ('[store]\npath = " "', 'store.path: " " must not be empty'),
    # cross-field rules
    ("[gpio]\npulse_ms = 4000",
     "gpio.pulse_ms: 4000 ms is longer than gpio.max_pulse_ms (3000 ms)"),
    ("[gpio]\nmax_pulse_ms = 400",
     "gpio.pulse_ms: 500 ms is longer than gpio.max_pulse_ms (400 ms)"),
    ("[gpio]\nbuzzer_pin = 17",
     "gpio.buzzer_pin: pin 17 is also used by gpio.relay_pin; every input and output needs its own pin"),
    ("[gpio]\nrelay_pin = 27",
     "gpio.green_led_pin: pin 27 is also used by gpio.relay_pin; every input and output needs its own pin"),
    ('[camera]\nbackend = "replay"',
     'camera.replay_path: is required when camera.backend is "replay" '
     "(a folder of images or a video file)"),
    # the passage inputs: a pin or "" (not wired), each its own, none at an exit-side scanner
    ("[gpio]\npassage_entry_pin = 1",
     "gpio.passage_entry_pin: 1 is out of range 2..27 (BCM pin number)"),
    ("[gpio]\npassage_entry_pin = \"five\"",
     'gpio.passage_entry_pin: expected an integer or "" (not set), got a string ("five")'),
    ("[gpio]\npassage_exit_pin = 17",
     "gpio.passage_exit_pin: pin 17 is also used by gpio.relay_pin"),
    ("[gpio]\npassage_entry_pin = 5\npassage_exit_pin = 5",
     "gpio.passage_exit_pin: pin 5 is also used by gpio.passage_entry_pin"),
    ('[door]\ndirection = "exit"\n[gpio]\npassage_exit_pin = 6',
     'gpio.passage_exit_pin: must be empty when door.direction is "exit"'),
    ("[door]\nmax_visit_minutes = 90\n[gpio]\npassage_exit_pin = 6",
     "door.max_visit_minutes: must be 0 when the door has an exit signal"),
    ('[door]\nmax_visit_minutes = 90\ndirection = "exit"',
     "door.max_visit_minutes: must be 0 when the door has an exit signal"),
    ('[door]\ndirection = "out"', 'door.direction: "out" is not one of entry, exit'),
    ("[door]\npassage_timeout_s = 0.5", "door.passage_timeout_s: 0.5 is out of range 1..60 (s)"),
    ("[door]\ncapacity = -1", "door.capacity: -1 is out of range 0..100000 (people)"),
    ("[gpio]\npassage_bounce_ms = 2000",
     "gpio.passage_bounce_ms: 2000 is out of range 0..1000 (ms)"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "expected"), SINGLE_ERRORS)
def test_each_kind_of_error_is_reported_with_file_and_dotted_path(tmp_path, text, expected):
    path = write(tmp_path, text)
    errors = errors_of(path)
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"{path}: {expected}")


def test_long_values_are_cut_short_in_messages(tmp_path):
    path = write(tmp_path, f'[door]\nid = "{"x" * 500}"')
    [error] = errors_of(path)
    # The file's path comes first and is as long as the temporary folder (longer under parallel
    # workers); the message after it is what is cut short.
    assert error.startswith(f"{path}: ")
    message = error.removeprefix(f"{path}: ")
    assert len(message) < 160
    assert "..." in message


def test_all_errors_are_reported_together(tmp_path):
    path = write(
        tmp_path,
        """
        [camra]
        [gpio]
        relay_pin = 40
        relay_active_high = 1
        buzzer_pin = 22
        pulse_ms = 5000
        [feedback.denied]
        led = "blue"
        [site]
        timezone = "Nowhere/City"
        """,
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    errors = caught.value.errors
    assert [e.split(": ")[1] for e in errors] == [
        "camra",
        "gpio.relay_pin",
        "gpio.relay_active_high",
        "feedback.denied.led",
        "site.timezone",
        "gpio.pulse_ms",  # cross-field rules come last
        "gpio.buzzer_pin",  # 22 clashes with the red LED; the invalid relay pin is not compared
    ]
    assert all(e.startswith(f"{path}: ") for e in errors)
    assert str(caught.value).splitlines() == errors


# --- file problems ----------------------------------------------------------------------------


def test_toml_syntax_error_names_the_file_line_and_column(tmp_path):
    path = write(tmp_path, '[door]\nid = "door-1"\nrelay_pin 17\n')
    [error] = errors_of(path)
    assert error.startswith(f"{path}: invalid TOML: ")
    assert "line 3" in error
    assert "column" in error


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda tmp: tmp / "absent.toml", "config file not found"),
        (lambda tmp: tmp, "is a directory, not a config file"),
    ],
)
def test_unreadable_paths_are_named(tmp_path, make, expected):
    path = make(tmp_path)
    assert errors_of(path) == [f"{path}: {expected}"]


def test_non_utf8_file_is_named(tmp_path):
    path = tmp_path / "kiosk.toml"
    path.write_bytes(b'[door]\nid = "\xff"\n')
    [error] = errors_of(path)
    assert error.startswith(f"{path}: not UTF-8 text")


def test_file_error_and_environment_errors_are_reported_together(tmp_path):
    path = tmp_path / "absent.toml"
    errors = errors_of(path, {"KIOSK_GPIO_RELAY_PIN": "x"})
    assert errors == [
        f"{path}: config file not found",
        'KIOSK_GPIO_RELAY_PIN: gpio.relay_pin: "x" is not an integer',
    ]


# --- environment overrides --------------------------------------------------------------------


def test_environment_overrides_are_applied_with_types():
    config = load_config(
        None,
        {
            "KIOSK_GPIO_PIN_FACTORY": "mock",
            "KIOSK_GPIO_RELAY_PIN": "5",
            "KIOSK_GPIO_RELAY_ACTIVE_HIGH": "False",
            "KIOSK_SCANNER_DEBOUNCE_S": "1.5",
            "KIOSK_POLICY_PASSBACK_MINUTES": "0",
            "KIOSK_FEEDBACK_GRANTED_LED_ON_MS": "900",
            "KIOSK_LOGGING_LEVEL": "DEBUG",
            "KIOSK_CONFIG": "/somewhere/else.toml",  # names the file; not a setting
            "PATH": "/usr/bin",  # not ours
        },
    )
    assert config.gpio.pin_factory == "mock"
    assert config.gpio.relay_pin == 5
    assert config.gpio.relay_active_high is False
    assert config.scanner.debounce_s == 1.5
    assert config.policy.passback_minutes == 0.0
    assert type(config.policy.passback_minutes) is float
    assert config.feedback.granted.led_on_ms == 900
    assert config.feedback.denied == default_config().feedback.denied
    assert config.logging.level == "DEBUG"


def test_environment_wins_over_the_file(tmp_path):
    path = write(tmp_path, '[gpio]\nrelay_pin = 5\n[door]\nid = "from-file"\n')
    config = load_config(path, {"KIOSK_GPIO_RELAY_PIN": "6"})
    assert config.gpio.relay_pin == 6
    assert config.door.id == "from-file"


def test_no_environment_means_no_overrides():
    assert load_config(None, None) == load_config(None, {})


ENV_ERRORS = [
    ("KIOSK_GPIO_RELAY_PIN", "abc",
     'KIOSK_GPIO_RELAY_PIN: gpio.relay_pin: "abc" is not an integer'),
    ("KIOSK_GPIO_RELAY_PIN", "1_7",
     'KIOSK_GPIO_RELAY_PIN: gpio.relay_pin: "1_7" is not an integer'),
    ("KIOSK_GPIO_RELAY_PIN", "40",
     "KIOSK_GPIO_RELAY_PIN: gpio.relay_pin: 40 is out of range 2..27 (BCM pin number)"),
    ("KIOSK_DECODER_MOTION_GATE", "1",
     'KIOSK_DECODER_MOTION_GATE: decoder.motion_gate: "1" is not true or false'),
    ("KIOSK_DECODER_MOTION_GATE", "yes",
     'KIOSK_DECODER_MOTION_GATE: decoder.motion_gate: "yes" is not true or false'),
    ("KIOSK_SCANNER_DEBOUNCE_S", "inf",
     'KIOSK_SCANNER_DEBOUNCE_S: scanner.debounce_s: "inf" is not a number'),
    ("KIOSK_CAMERA_BACKEND", "usb",
     'KIOSK_CAMERA_BACKEND: camera.backend: "usb" is not one of picamera2, opencv, replay'),
    ("KIOSK_SITE_TIMEZONE", "Nowhere/City",
     'KIOSK_SITE_TIMEZONE: site.timezone: "Nowhere/City" is not a known IANA time zone'),
    ("KIOSK_GPIO_RELAYPIN", "5",
     "KIOSK_GPIO_RELAYPIN: not a known setting variable; did you mean KIOSK_GPIO_RELAY_PIN?"),
    ("KIOSK_LOG_LEVEL", "DEBUG",
     "KIOSK_LOG_LEVEL: not a known setting variable; did you mean KIOSK_LOGGING_LEVEL?"),
    ("KIOSK_NONSENSE", "1", "KIOSK_NONSENSE: not a known setting variable"),
    # cross-field problems caused by the environment point at the variable
    ("KIOSK_GPIO_BUZZER_PIN", "17",
     "KIOSK_GPIO_BUZZER_PIN: gpio.buzzer_pin: pin 17 is also used by gpio.relay_pin"),
    ("KIOSK_CAMERA_BACKEND", "replay",
     'KIOSK_CAMERA_BACKEND: camera.replay_path: is required when camera.backend is "replay"'),
]  # fmt: skip


@pytest.mark.parametrize(("variable", "value", "expected"), ENV_ERRORS)
def test_environment_errors_name_the_variable_and_the_setting(variable, value, expected):
    errors = errors_of(None, {variable: value})
    assert len(errors) == 1, errors
    assert errors[0].startswith(expected)


def test_cross_field_error_points_at_the_file_when_the_file_caused_it(tmp_path):
    # relay_pin (set in the file) now clashes with the green LED (a default).
    path = write(tmp_path, "[gpio]\nrelay_pin = 27\n")
    [error] = errors_of(path)
    assert error.startswith(f"{path}: gpio.green_led_pin: pin 27 is also used by gpio.relay_pin")


def test_replay_backend_with_a_path_is_accepted():
    config = load_config(
        None, {"KIOSK_CAMERA_BACKEND": "replay", "KIOSK_CAMERA_REPLAY_PATH": "/srv/clips/door.mp4"}
    )
    assert config.camera.replay_path == "/srv/clips/door.mp4"


# --- paths, dict view, policy settings --------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, DEFAULT_CONFIG_PATH),
        ({"KIOSK_CONFIG": ""}, DEFAULT_CONFIG_PATH),
        ({"KIOSK_CONFIG": "/tmp/k.toml"}, Path("/tmp/k.toml")),
    ],
)
def test_config_path_from_environment(env, expected):
    assert config_path_from(env) == expected


def test_default_path_is_under_etc():
    assert Path("/etc/fitflow-kiosk/kiosk.toml") == DEFAULT_CONFIG_PATH


def test_as_dict_is_plain_and_complete():
    config = load_config(None, {"KIOSK_FEEDBACK_FAULT_BEEPS": "2"})
    plain = as_dict(config)
    assert json.loads(json.dumps(plain)) == plain  # only plain JSON types inside
    assert plain["gpio"]["relay_pin"] == 17
    assert plain["feedback"]["fault"]["beeps"] == 2
    assert plain["feedback"]["granted"] == dataclasses.asdict(config.feedback.granted)
    assert list(plain) == [
        "door", "site", "store", "camera", "decoder", "gpio", "feedback", "scanner", "policy",
        "sync", "web", "logging",
    ]  # fmt: skip


def test_policy_settings_come_from_site_and_policy():
    config = load_config(
        None,
        {
            "KIOSK_SITE_TIMEZONE": "America/New_York",
            "KIOSK_POLICY_PASSBACK_MINUTES": "5",
            "KIOSK_POLICY_STALE_AFTER_HOURS": "24",
            "KIOSK_POLICY_WHEN_STALE": "refuse",
        },
    )
    assert policy_settings(config) == PolicySettings(
        timezone="America/New_York",
        passback_minutes=5.0,
        stale_after_hours=24.0,
        when_stale=StalePolicy.REFUSE,
    )
    assert policy_settings(default_config()) == PolicySettings()


def test_the_passage_inputs_are_off_by_default_and_read_from_file_and_environment(tmp_path):
    config = default_config()
    assert (config.gpio.passage_entry_pin, config.gpio.passage_exit_pin) == (None, None)
    assert (config.gpio.passage_pull_up, config.gpio.passage_bounce_ms) == (True, 50)
    assert (config.door.direction, config.door.passage_timeout_s) == ("entry", 5.0)
    assert (config.door.max_visit_minutes, config.door.capacity) == (0, 0)
    path = write(tmp_path, '[gpio]\npassage_entry_pin = 5\npassage_exit_pin = ""\n')
    config = load_config(path, {"KIOSK_GPIO_PASSAGE_EXIT_PIN": "6"})
    assert (config.gpio.passage_entry_pin, config.gpio.passage_exit_pin) == (5, 6)
    # An empty variable unwires it; the printable form spells "not wired" as the file does.
    config = load_config(path, {"KIOSK_GPIO_PASSAGE_ENTRY_PIN": ""})
    assert config.gpio.passage_entry_pin is None
    assert as_dict(config)["gpio"]["passage_entry_pin"] == ""
    assert check_setting("gpio.passage_exit_pin", "") is None
    assert parse_setting("gpio.passage_exit_pin", "6") == 6


def test_occupancy_rules_and_capacity_follow_the_door():
    wired = load_config(None, {"KIOSK_GPIO_PASSAGE_ENTRY_PIN": "5", "KIOSK_DOOR_CAPACITY": "40",
                               "KIOSK_SITE_TIMEZONE": "Europe/Berlin"})  # fmt: skip
    assert occupancy_rules(wired) == OccupancyRules("Europe/Berlin", True, 0.0, 40)
    assert policy_settings(wired).capacity == 40
    counted = load_config(None, {"KIOSK_DOOR_MAX_VISIT_MINUTES": "90"})
    assert occupancy_rules(counted) == OccupancyRules("UTC", False, 90.0, 0)
    # An exit-side scanner lets people out: no capacity applies there, nothing is confirmed.
    exit_side = load_config(None, {"KIOSK_DOOR_DIRECTION": "exit", "KIOSK_DOOR_CAPACITY": "40"})
    assert occupancy_rules(exit_side) == OccupancyRules("UTC", False, 0.0, 0)
    assert policy_settings(exit_side).capacity == 0


def test_sync_defaults_and_environment_overrides():
    sync = default_config().sync
    assert sync.credentials_file == "/var/lib/fitflow-kiosk/device.json"
    assert (sync.interval_s, sync.batch_size, sync.page_rows) == (30.0, 200, 1000)
    assert (sync.request_timeout_s, sync.backoff_max_s, sync.wake_poll_s) == (10.0, 300.0, 1.0)
    overridden = load_config(
        None,
        {
            "KIOSK_SYNC_INTERVAL_S": "5",
            "KIOSK_SYNC_BATCH_SIZE": "50",
            "KIOSK_SYNC_CREDENTIALS_FILE": "/run/kiosk/device.json",
        },
    ).sync
    assert (overridden.interval_s, overridden.batch_size) == (5.0, 50)
    assert overridden.credentials_file == "/run/kiosk/device.json"


def test_sync_limits_follow_the_protocol(tmp_path):
    path = write(tmp_path, "[sync]\nbatch_size = 501\npage_rows = 99\ncredentials_file = ' '\n")
    errors = errors_of(path)
    assert any("sync.batch_size: 501 is out of range 1..500" in e for e in errors)
    assert any("sync.page_rows: 99 is out of range 100..5000 (rows)" in e for e in errors)
    assert any("sync.credentials_file" in e and "must not be empty" in e for e in errors)
    assert errors_of(None, {"KIOSK_SYNC_WAKE_POLL_S": "0"}) == [
        "KIOSK_SYNC_WAKE_POLL_S: sync.wake_poll_s: 0.0 is out of range 0.1..60 (s)"
    ]


# --- the example file -------------------------------------------------------------------------


def test_committed_example_is_the_rendered_example():
    assert EXAMPLE.read_text(encoding="utf-8") == render_example(), (
        "deploy/kiosk.example.toml is out of date: regenerate it from kiosk.config.render_example()"
    )


def test_example_loads_back_to_the_defaults():
    assert load_config(EXAMPLE) == default_config()


def test_example_sets_every_key_and_documents_its_variable():
    text = render_example()
    document = tomllib.loads(text)
    assert document == as_dict(default_config())  # every key present, at its default
    assert "# Environment: KIOSK_FEEDBACK_GRANTED_LED_ON_MS" in text
    assert "# Integer 2..27 (BCM pin number). Default: 17." in text
    assert '# One of: picamera2, opencv, replay. Default: "picamera2".' in text
