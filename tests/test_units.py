"""The systemd units in systemd/: systemd itself accepts them, and they carry the promised
restart behaviour and hardening."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from kiosk.cli import build_parser
from kiosk.config import DEFAULT_CONFIG_PATH, SCHEMA
from kiosk.ops.provision import provisioned_marker

REPO = Path(__file__).resolve().parent.parent
UNIT_DIR = REPO / "systemd"
KIOSK = "/opt/fitflow-kiosk/venv/bin/kiosk"
SERVICES = ["fitflow-scanner", "fitflow-sync", "fitflow-web", "fitflow-backup"]
ALL_UNITS = [f"{name}.service" for name in SERVICES] + ["fitflow-backup.timer"]


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """Sections of a unit file as {section: {key: [values in order]}} (keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        assert current is not None, f"{path.name}: {line!r} before any section"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def service(name: str) -> dict[str, list[str]]:
    return parse_unit(UNIT_DIR / f"{name}.service")["Service"]


def one(options: dict[str, list[str]], key: str) -> str:
    values = options.get(key, [])
    assert len(values) == 1, f"{key}: expected one value, found {values}"
    return values[0]


def test_the_unit_directory_holds_exactly_the_units():
    assert sorted(p.name for p in UNIT_DIR.iterdir()) == sorted(ALL_UNITS)


def test_systemd_analyze_verify_accepts_every_unit(tmp_path):
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: ./dev test installs it (apt-get install systemd)"
    # verify insists that every Exec*= binary exists: point them at /bin/true.
    for name in ALL_UNITS:
        text = (UNIT_DIR / name).read_text().replace(KIOSK, "/bin/true")
        (tmp_path / name).write_text(text)
    for name in ALL_UNITS:
        result = subprocess.run(
            [analyze, "verify", "--man=no", str(tmp_path / name)],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env={"PATH": "/usr/bin:/bin", "SYSTEMD_LOG_LEVEL": "info"},
            check=False,
        )
        assert (result.returncode, result.stdout + result.stderr) == (0, ""), name


def test_verify_would_catch_a_mistake(tmp_path):
    """The check above can fail: a misspelt option is reported."""
    analyze = shutil.which("systemd-analyze")
    assert analyze
    text = (UNIT_DIR / "fitflow-sync.service").read_text().replace(KIOSK, "/bin/true")
    (tmp_path / "broken.service").write_text(text.replace("PrivateTmp=", "PrivateTemp="))
    result = subprocess.run(
        [analyze, "verify", "--man=no", str(tmp_path / "broken.service")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert "PrivateTemp" in result.stdout + result.stderr


@pytest.mark.parametrize("name", SERVICES)
def test_every_service_runs_the_venvs_kiosk_as_the_service_user(name):
    options = service(name)
    command = shlex.split(one(options, "ExecStart"))
    assert command[0] == KIOSK
    assert one(options, "User") == "fitflow" and one(options, "Group") == "fitflow"


def test_the_commands_the_units_run_are_kiosk_commands():
    parser = build_parser()
    commands = [shlex.split(one(service(name), "ExecStart"))[1:] for name in SERVICES]
    commands.append(shlex.split(one(service("fitflow-scanner"), "ExecStopPost"))[1:])
    for argv in commands:
        try:
            parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"kiosk {shlex.join(argv)} is not a command")


BASE_HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ReadWritePaths": "/var/lib/fitflow-kiosk",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "CapabilityBoundingSet": "",
    "DevicePolicy": "closed",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "ProtectClock": "yes",
    "ProtectHostname": "yes",
    "RestrictNamespaces": "yes",
    "RestrictRealtime": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    "SystemCallArchitectures": "native",
    "SystemCallFilter": "@system-service",
}


@pytest.mark.parametrize("name", SERVICES)
def test_every_service_is_hardened(name):
    options = service(name)
    for key, value in BASE_HARDENING.items():
        assert one(options, key) == value, f"{name}: {key}"


@pytest.mark.parametrize("name", ["fitflow-scanner", "fitflow-web", "fitflow-backup"])
def test_only_the_sync_agent_can_read_the_cloud_token(name):
    assert one(service(name), "InaccessiblePaths") == "-/var/lib/fitflow-kiosk/device.json"


def test_sync_can_read_the_token():
    assert "InaccessiblePaths" not in service("fitflow-sync")


@pytest.mark.parametrize("name", ["fitflow-sync", "fitflow-web", "fitflow-backup"])
def test_services_other_than_the_scanner_see_no_devices(name):
    assert one(service(name), "PrivateDevices") == "yes"


def test_the_scanner_is_watched_restarted_and_releases_the_relay():
    options = service("fitflow-scanner")
    assert one(options, "Type") == "notify"
    assert int(one(options, "WatchdogSec")) > 0
    assert one(options, "Restart") == "always"
    assert one(options, "ExecStopPost") == f"{KIOSK} relay-off"
    assert one(options, "SupplementaryGroups").split() == ["gpio", "video"]
    unit = parse_unit(UNIT_DIR / "fitflow-scanner.service")["Unit"]
    assert one(unit, "StartLimitIntervalSec") == "0"  # never gives up


def test_the_scanner_starts_only_once_provisioning_has_set_the_relay():
    # Enabled at install: without this a reboot before `kiosk provision` would drive the relay on
    # the example's guess of its polarity. The file is the one provisioning writes for the
    # default config.
    unit = parse_unit(UNIT_DIR / "fitflow-scanner.service")["Unit"]
    assert one(unit, "ConditionPathExists") == str(provisioned_marker(DEFAULT_CONFIG_PATH))
    assert one(unit, "ConditionPathExists") == "/etc/fitflow-kiosk/kiosk.toml.provisioned"


def test_only_the_scanner_drives_the_pins():
    # `kiosk run` and `kiosk relay-off` are the commands that drive GPIO: only the scanner's unit,
    # which waits for provisioning, may run them.
    for name in ALL_UNITS:
        sections = parse_unit(UNIT_DIR / name)
        commands = {
            shlex.split(value)[1]
            for key, values in sections.get("Service", {}).items()
            if key.startswith("Exec")
            for value in values
        }
        if commands & {"run", "relay-off"}:
            assert name == "fitflow-scanner.service", name


def test_the_scanner_never_touches_the_network_and_sees_only_its_devices():
    options = service("fitflow-scanner")
    assert one(options, "PrivateNetwork") == "yes"
    families = one(options, "RestrictAddressFamilies").split()
    assert not {"AF_INET", "AF_INET6", "AF_PACKET"} & set(families)
    assert set(options["DeviceAllow"]) == {
        "char-gpiochip rw",
        "/dev/gpiomem rw",
        "char-video4linux rw",
        "char-media rw",
        "char-dma_heap rw",
        "/dev/udmabuf rw",
    }
    assert "PrivateDevices" not in options  # it would hide the camera and GPIO


def test_lgpio_gets_a_writable_working_directory():
    options = service("fitflow-scanner")
    runtime = one(options, "RuntimeDirectory")
    assert one(options, "WorkingDirectory") == f"/run/{runtime}"


def test_the_sync_agent_stops_for_good_when_the_cloud_refuses_the_device():
    options = service("fitflow-sync")
    assert one(options, "RestartPreventExitStatus") == "4"
    assert one(options, "Restart") == "on-failure"
    assert {"AF_INET", "AF_INET6"} <= set(one(options, "RestrictAddressFamilies").split())
    unit = parse_unit(UNIT_DIR / "fitflow-sync.service")["Unit"]
    assert one(unit, "ConditionPathExists") == "/var/lib/fitflow-kiosk/device.json"


def test_the_nightly_backup_keeps_seven_and_catches_up_after_downtime():
    options = service("fitflow-backup")
    assert one(options, "Type") == "oneshot"
    argv = shlex.split(one(options, "ExecStart"))
    assert argv[1:3] == ["db", "backup"]
    assert argv[argv.index("--keep") + 1] == "7"
    assert argv[argv.index("--dir") + 1] == "/var/lib/fitflow-kiosk/backups"
    assert one(options, "PrivateNetwork") == "yes"
    # Before the scanner's first run there is no database: the night's run is skipped, not failed.
    unit = parse_unit(UNIT_DIR / "fitflow-backup.service")["Unit"]
    store_path = next(
        k.default for t in SCHEMA if t.name == "store" for k in t.keys if k.name == "path"
    )
    assert one(unit, "ConditionPathExists") == store_path == "/var/lib/fitflow-kiosk/kiosk.db"
    timer = parse_unit(UNIT_DIR / "fitflow-backup.timer")
    assert one(timer["Timer"], "Persistent") == "true"
    assert one(timer["Timer"], "RandomizedDelaySec")
    assert one(timer["Timer"], "OnCalendar").startswith("*-*-*")
    assert one(timer["Install"], "WantedBy") == "timers.target"


@pytest.mark.parametrize("name", ["fitflow-scanner", "fitflow-sync", "fitflow-web"])
def test_the_daemons_start_at_boot(name):
    unit = parse_unit(UNIT_DIR / f"{name}.service")
    assert one(unit["Install"], "WantedBy") == "multi-user.target"
