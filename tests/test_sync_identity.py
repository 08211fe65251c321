"""The device credentials file (kiosk.sync.identity): written atomically with mode 0600, refused when
others could read it, read from systemd's credentials directory when there is one, and the token
never shown."""

from __future__ import annotations

import json
import os
import stat
from datetime import UTC, datetime

import pytest

from kiosk.sync.identity import DeviceIdentity, IdentityError, load_identity, save_identity

TOKEN = "ffd_" + "s" * 40
IDENTITY = DeviceIdentity(
    cloud_url="https://cloud.example",
    device_id="dev_1",
    token=TOKEN,
    organization_id="org-1",
    gym_id="gym-1",
    gym_name="Main Street Gym",
    timezone="Europe/Berlin",
    enrolled_at=datetime(2026, 5, 1, 12, tzinfo=UTC),
)


def test_saved_with_mode_0600_whatever_the_umask_and_read_back(tmp_path):
    path = tmp_path / "lib" / "device.json"
    old = os.umask(0o000)
    try:
        save_identity(path, IDENTITY)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_identity(path, env={}) == IDENTITY
    assert sorted(p.name for p in path.parent.iterdir()) == ["device.json"]  # no temp file left


def test_an_existing_enrolment_is_kept_unless_overwritten(tmp_path):
    path = tmp_path / "device.json"
    save_identity(path, IDENTITY)
    other = DeviceIdentity(**{**IDENTITY.to_json(), "enrolled_at": IDENTITY.enrolled_at,
                              "device_id": "dev_2"})  # fmt: skip
    with pytest.raises(IdentityError, match="--force"):
        save_identity(path, other)
    assert load_identity(path, env={}).device_id == "dev_1"
    save_identity(path, other, overwrite=True)
    assert load_identity(path, env={}).device_id == "dev_2"


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o666])
def test_a_file_others_could_read_is_refused_with_the_fix(tmp_path, mode):
    path = tmp_path / "device.json"
    save_identity(path, IDENTITY)
    path.chmod(mode)
    with pytest.raises(IdentityError) as caught:
        load_identity(path, env={})
    message = str(caught.value)
    assert f"chmod 600 {path}" in message and f"{mode:04o}" in message
    assert TOKEN not in message


def test_missing_and_broken_files_say_what_to_do(tmp_path):
    with pytest.raises(IdentityError, match=r"not enrolled yet.*kiosk enrol"):
        load_identity(tmp_path / "nope.json", env={})
    broken = tmp_path / "broken.json"
    for text, words in (("{not json", "not a device credentials file"),
                        (json.dumps({"device_id": "d"}), "cloud_url, token"),
                        (json.dumps({**IDENTITY.to_json(), "enrolled_at": "yesterday"}),
                         "enrolled_at")):  # fmt: skip
        broken.write_text(text)
        broken.chmod(0o600)
        with pytest.raises(IdentityError, match=words) as caught:
            load_identity(broken, env={})
        assert TOKEN not in str(caught.value)


def test_systemd_credentials_directory_takes_precedence(tmp_path):
    configured = tmp_path / "var" / "device.json"
    save_identity(configured, IDENTITY)
    creds = tmp_path / "creds"
    creds.mkdir()
    handed = DeviceIdentity(**{**IDENTITY.to_json(), "enrolled_at": IDENTITY.enrolled_at,
                               "device_id": "dev_from_systemd"})  # fmt: skip
    save_identity(creds / "device.json", handed)
    env = {"CREDENTIALS_DIRECTORY": str(creds)}
    assert load_identity(configured, env=env).device_id == "dev_from_systemd"
    # A credentials directory without this file falls back to the configured path.
    assert load_identity(configured, env={"CREDENTIALS_DIRECTORY": str(tmp_path)}) == IDENTITY


def test_the_token_is_never_in_a_repr():
    assert TOKEN not in repr(IDENTITY)
    assert "dev_1" in repr(IDENTITY)
