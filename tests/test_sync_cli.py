"""`kiosk enrol` and `kiosk sync --once` as an installer meets them, against the fake cloud (an
``httpx.MockTransport`` handed to ``kiosk.cli.main``)."""

from __future__ import annotations

import json
import stat
from datetime import UTC, datetime

import pytest

from fakecloud import TOKEN, FakeCloud
from kiosk.cli import main
from kiosk.core.model import ClockQuality, Decision, Now, Reason, Verdict
from kiosk.data.store import Store
from kiosk.sync.identity import DeviceIdentity, load_identity, save_identity

CODE = "7KQ4-M2XD-9HVA"


@pytest.fixture
def cloud() -> FakeCloud:
    made = FakeCloud()
    made.seed_gym()
    return made


def config_file(tmp_path, **sync) -> str:
    lines = [
        "[site]",
        'timezone = "UTC"',
        "[store]",
        f'path = "{tmp_path / "kiosk.db"}"',
        "[sync]",
        f'credentials_file = "{tmp_path / "device.json"}"',
        *(f"{key} = {json.dumps(value)}" for key, value in sync.items()),
    ]
    path = tmp_path / "kiosk.toml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def enrolled(tmp_path, token: str = TOKEN) -> None:
    save_identity(
        tmp_path / "device.json",
        DeviceIdentity(
            cloud_url="https://cloud.test",
            device_id="dev_1",
            token=token,
            organization_id="org-1",
            gym_id="gym-1",
            gym_name="Main Street Gym",
            timezone="UTC",
            enrolled_at=datetime(2026, 5, 1, tzinfo=UTC),
        ),
    )


def test_enrol_writes_private_credentials_once(tmp_path, cloud, capsys):
    path = tmp_path / "lib" / "device.json"
    args = ["enrol", "--cloud", "https://cloud.test/", "--code", CODE, "--name", "front",
            "--credentials", str(path)]  # fmt: skip
    assert main(args, transport=cloud.transport) == 0
    out = capsys.readouterr().out
    assert "dev_1" in out and "Main Street Gym" in out and TOKEN not in out
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    identity = load_identity(path, env={})
    assert (identity.cloud_url, identity.token) == ("https://cloud.test", TOKEN)
    assert json.loads(cloud.requests[-1].content)["name"] == "front"
    # A second enrolment is refused unless forced, and the file is left alone.
    before = path.read_bytes()
    assert main(args, transport=cloud.transport) == 2
    assert "--force" in capsys.readouterr().err and path.read_bytes() == before
    # Forced with the now-used code: the cloud refuses, the old credentials stay.
    assert main([*args, "--force"], transport=cloud.transport) == 1
    assert "refused" in capsys.readouterr().err and path.read_bytes() == before


def test_enrol_uses_the_configured_path_and_notes_a_time_zone_mismatch(tmp_path, cloud, capsys):
    config = config_file(tmp_path)
    assert main(["enrol", "--cloud", "https://cloud.test", "--code", CODE, "--config", config],
                transport=cloud.transport) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert (tmp_path / "device.json").exists()
    assert 'site.timezone = "Europe/Berlin"' in out


def test_enrol_refuses_to_send_a_token_over_plain_http(tmp_path, cloud, capsys):
    path = tmp_path / "device.json"
    assert main(["enrol", "--cloud", "http://cloud.example", "--code", CODE,
                 "--credentials", str(path)], transport=cloud.transport) == 2  # fmt: skip
    assert "https" in capsys.readouterr().err
    assert not path.exists() and cloud.requests == []


def test_sync_once_uploads_and_pulls_then_exits_0(tmp_path, cloud, capsys):
    enrolled(tmp_path)
    config = config_file(tmp_path)
    with Store.open(tmp_path / "kiosk.db") as store:
        store.append_checkin(
            Decision(Verdict.DENIED, Reason.UNKNOWN_CODE),
            door_id="front",
            replica_version=0,
            now=Now(datetime.now(UTC), 1, "boot", ClockQuality.NTP_SYNCED),
        )
    assert main(["sync", "--once", "--config", config], transport=cloud.transport) == 0
    assert "1 check-ins uploaded" in capsys.readouterr().out
    with Store.open(tmp_path / "kiosk.db") as store:
        assert store.counts_by_state()["synced"] == 1
        assert store.replica_info().version == cloud.version
        assert store.sync_status()["state"] == "running"
    assert len(cloud.checkins) == 1 and cloud.heartbeats


def test_sync_once_reports_failures_and_refusals_with_their_exit_codes(tmp_path, cloud, capsys):
    config = config_file(tmp_path)
    assert main(["sync", "--once", "--config", config], transport=cloud.transport) == 2
    assert "not enrolled" in capsys.readouterr().err
    enrolled(tmp_path)
    cloud.fail_next("/v1/replica/snapshot", 503)
    assert main(["sync", "--once", "--config", config], transport=cloud.transport) == 1
    assert "HTTP 503" in capsys.readouterr().err
    cloud.token = "ffd_" + "r" * 40  # revoked
    assert main(["sync", "--once", "--config", config], transport=cloud.transport) == 4
    err = capsys.readouterr().err
    assert "enrol the device again" in err and TOKEN not in err
