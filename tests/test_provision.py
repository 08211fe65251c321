"""`kiosk provision` against the reference cloud on 127.0.0.1, and its config editing."""

from __future__ import annotations

import io
import os
import stat
import tempfile
from pathlib import Path

import pytest

from cloud import admin
from e2e_helpers import running_site
from kiosk.cli import main
from kiosk.config import load_config, render_example
from kiosk.ops.owner_password import (
    PasswordFileError,
    hash_password,
    load_password_hash,
    verify_password,
)
from kiosk.ops.provision import Plan, ProvisionError, edit_toml, provision, provisioned_marker
from kiosk.sync.identity import load_identity

PASSWORD = "correct horse battery"  # noqa: S105 (a test password)
ORIGINAL = """# the installer's notes stay
[door]
id = "front"  # old comment

[store]
path = "{db}"

[sync]
credentials_file = "{creds}"

[web]
password_file = "{pw}"

[gpio]
pin_factory = "mock"
green_led_pin = 5
"""


@pytest.fixture
def site(tmp_path):
    with running_site(f"sqlite:///{tmp_path / 'cloud.db'}") as made:
        yield made


def new_code(site) -> str:
    return site.write(
        lambda tx: admin.create_enrolment_code(tx, site.org_id, site.gym_id, 60, site.now())
    )["code"]


@pytest.fixture
def kiosk(tmp_path):
    config = tmp_path / "etc" / "kiosk.toml"
    config.parent.mkdir()
    config.write_text(
        ORIGINAL.format(db=tmp_path / "kiosk.db", creds=tmp_path / "lib" / "device.json",
                        pw=tmp_path / "lib" / "owner-password")
    )  # fmt: skip
    (tmp_path / "password.txt").write_text(PASSWORD + "\n")
    return config


def args(kiosk, tmp_path, site, code, *extra):
    return ["provision", "--config", str(kiosk), "--non-interactive", "--cloud", site.url,
            "--code", code, "--owner-password-file", str(tmp_path / "password.txt"),
            "--door-id", "lobby", "--relay-pin", "6", "--relay-active-low", "--pulse-ms", "700",
            *extra]  # fmt: skip


def test_enrols_once_stores_secrets_0600_and_writes_valid_config(kiosk, tmp_path, site, capsys):
    code = new_code(site)
    assert main(args(kiosk, tmp_path, site, code)) == 0
    out = capsys.readouterr().out
    assert PASSWORD not in out and code not in out
    creds, pw = tmp_path / "lib" / "device.json", tmp_path / "lib" / "owner-password"
    assert stat.S_IMODE(creds.stat().st_mode) == 0o600
    assert stat.S_IMODE(pw.stat().st_mode) == 0o600
    identity = load_identity(creds, env={})
    assert identity.cloud_url == site.url and identity.gym_id == site.gym_id
    encoded = load_password_hash(pw)
    assert PASSWORD not in pw.read_text() and encoded.startswith("$scrypt$ln=15,r=8,p=1$")
    assert verify_password(PASSWORD, encoded) and not verify_password(PASSWORD + "!", encoded)

    config = load_config(kiosk, {})
    assert config.door.id == "lobby" and config.site.timezone == identity.timezone
    assert (config.gpio.relay_pin, config.gpio.relay_active_high, config.gpio.pulse_ms) == (
        6, False, 700,
    )  # fmt: skip
    assert config.gpio.green_led_pin == 5 and config.gpio.pin_factory == "mock"  # kept
    text = kiosk.read_text()
    assert text.startswith("# the installer's notes stay") and "old comment" not in text
    assert (kiosk.parent / "kiosk.toml.bak").read_text().startswith("# the installer's")

    # Re-running with the same flags (even the used code) changes nothing.
    before = {p: p.read_bytes() for p in (kiosk, creds, kiosk.parent / "kiosk.toml.bak")}
    assert main(args(kiosk, tmp_path, site, code)) == 0
    out = capsys.readouterr().out
    assert "already enrolled" in out and "not rewritten" in out
    assert {p: p.read_bytes() for p in before} == before
    assert load_identity(creds, env={}).device_id == identity.device_id


def test_a_reused_code_is_refused_and_nothing_changes(kiosk, tmp_path, site, capsys):
    code = new_code(site)
    assert main(args(kiosk, tmp_path, site, code)) == 0
    creds = tmp_path / "lib" / "device.json"
    before = creds.read_bytes()
    capsys.readouterr()
    assert main(args(kiosk, tmp_path, site, code, "--re-enrol")) == 1
    assert "refused" in capsys.readouterr().err and creds.read_bytes() == before

    # A fresh device given the used code: refused before anything is written.
    other = tmp_path / "other.toml"
    other.write_text(kiosk.read_text().replace("lib", "lib2"))
    assert main(args(other, tmp_path, site, code)) == 1
    assert "already used or expired" in capsys.readouterr().err
    assert not (tmp_path / "lib2").exists() and not (tmp_path / "other.toml.bak").exists()


def test_re_enrol_with_a_fresh_code_gives_a_new_identity(kiosk, tmp_path, site):
    assert main(args(kiosk, tmp_path, site, new_code(site))) == 0
    first = load_identity(tmp_path / "lib" / "device.json", env={}).device_id
    assert main(args(kiosk, tmp_path, site, new_code(site), "--re-enrol")) == 0
    assert load_identity(tmp_path / "lib" / "device.json", env={}).device_id != first


def test_bad_values_are_refused_and_the_file_is_untouched(kiosk, capsys):
    before = kiosk.read_bytes()
    for flags, named in (
        (["--relay-pin", "40"], "gpio.relay_pin: 40 is out of range"),
        (["--timezone", "Mars/Olympus"], "site.timezone"),
        (["--door-id", "a b"], "door.id"),
    ):
        assert main(["provision", "--config", str(kiosk), "--non-interactive", *flags]) == 2
        assert named in capsys.readouterr().err
    assert kiosk.read_bytes() == before


def test_a_short_password_is_refused_without_echoing_it(kiosk, tmp_path, capsys):
    (tmp_path / "short.txt").write_text("abc123\n")
    argv = ["provision", "--config", str(kiosk), "--non-interactive",
            "--owner-password-file", str(tmp_path / "short.txt")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "at least 10" in err and "abc123" not in err
    with pytest.raises(PasswordFileError, match="no owner password is set"):
        load_password_hash(tmp_path / "lib" / "owner-password")


def test_interactive_asks_with_defaults_and_re_asks_bad_answers(kiosk, tmp_path, site):
    code = new_code(site)
    answers = iter([
        site.url, code,          # cloud, code
        "",                      # door id: keep "front"
        "Mars/Olympus", "Europe/Berlin",  # a bad zone is asked again
        "", "maybe", "n",        # relay pin kept; a bad yes/no asked again
        "650",
    ])  # fmt: skip
    secrets = iter(["short", PASSWORD, "typo typo typo", PASSWORD, PASSWORD])
    out = io.StringIO()
    code_ = provision(
        kiosk, Plan(), interactive=True, ask=lambda _p: next(answers),
        ask_secret=lambda _p: next(secrets), out=out,
    )  # fmt: skip
    assert code_ == 0, out.getvalue()
    shown = out.getvalue()
    assert "not a known IANA time zone" in shown and "please answer y or n" in shown
    assert "at least 10" in shown and "differ" in shown and PASSWORD not in shown
    config = load_config(kiosk, {})
    assert (config.door.id, config.site.timezone, config.gpio.relay_pin) == (
        "front", "Europe/Berlin", 17,
    )  # fmt: skip
    assert (config.gpio.relay_active_high, config.gpio.pulse_ms) == (False, 650)
    assert verify_password(PASSWORD, load_password_hash(tmp_path / "lib" / "owner-password"))
    assert "warning: the cloud says" in shown  # the gym is UTC, Europe/Berlin was chosen


def test_interactive_end_of_input_changes_nothing(kiosk):
    before = kiosk.read_bytes()

    def eof(_prompt):
        raise EOFError

    with pytest.raises(ProvisionError, match="end of input"):
        provision(kiosk, Plan(), interactive=True, ask=eof, ask_secret=eof, out=io.StringIO())
    assert kiosk.read_bytes() == before


def test_a_missing_config_file_is_created_from_the_documented_example(tmp_path):
    path = tmp_path / "new" / "kiosk.toml"
    plan = Plan(settings={"door.id": "side"})
    assert provision(path, plan, interactive=False, out=io.StringIO()) == 0
    assert load_config(path, {}).door.id == "side"
    assert "# FitFlow Kiosk configuration" in path.read_text()
    assert not path.with_name("kiosk.toml.bak").exists()


def test_edit_toml_replaces_inserts_and_appends_keeping_the_rest():
    text = '[door]\nid = "a"\n\n[gpio]\n# pins\nrelay_pin = 17\n[other]\nx = 1\n'
    edited = edit_toml(text, {"door.id": "b", "gpio.pulse_ms": 700, "site.timezone": "UTC"})
    assert edited == (
        '[door]\nid = "b"\n\n[gpio]\n# pins\nrelay_pin = 17\npulse_ms = 700\n[other]\nx = 1\n'
        '\n[site]\ntimezone = "UTC"\n'
    )
    assert edit_toml(edited, {"door.id": "b"}) == edited  # idempotent


def test_edit_toml_refuses_forms_it_cannot_edit_safely():
    with pytest.raises(ProvisionError, match=r"by hand: door\.id"):
        edit_toml('door.id = "a"\n', {"door.id": "b"})
    with pytest.raises(ProvisionError, match="not valid TOML"):
        edit_toml("[door\n", {"door.id": "b"})


def test_password_hashes_are_salted_and_bad_files_are_refused(tmp_path):
    first, second = hash_password(PASSWORD), hash_password(PASSWORD)
    assert first != second and verify_password(PASSWORD, second)
    assert not verify_password(PASSWORD, "$scrypt$ln=30,r=8,p=1$AAAA$AAAA")  # never raises
    path = tmp_path / "pw"
    path.write_text(first + "\n")
    path.chmod(0o644)
    with pytest.raises(PasswordFileError, match="chmod 600"):
        load_password_hash(path)
    path.chmod(0o600)
    path.write_text("hunter2\n")
    with pytest.raises(PasswordFileError, match="does not hold"):
        load_password_hash(path)


# -- review findings: ownership, symlinks, time zone, permissions, relay polarity -----------------

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="ownership needs root (the sandbox is)")
OTHER = 12345  # a uid/gid that is not root's


@as_root
def test_the_config_and_its_backup_keep_owner_group_and_mode(kiosk):
    os.chown(kiosk, OTHER, OTHER)
    kiosk.chmod(0o640)
    assert provision(kiosk, Plan(settings={"door.id": "side"}), interactive=False,
                     out=io.StringIO()) == 0  # fmt: skip
    for path in (kiosk, kiosk.with_name("kiosk.toml.bak")):
        info = path.stat()
        assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (OTHER, OTHER, 0o640)
    assert load_config(kiosk, {}).door.id == "side"


@as_root
def test_secret_files_go_to_the_data_folders_owner_and_symlinks_are_refused(kiosk, tmp_path, site):
    lib = tmp_path / "lib"
    lib.mkdir()
    os.chown(lib, OTHER, OTHER)
    target = tmp_path / "root-file"
    target.write_text("root's\n")
    (lib / "owner-password").symlink_to(target)  # planted by the service user
    before = kiosk.read_bytes()
    with pytest.raises(ProvisionError, match="symbolic link"):
        provision(kiosk, Plan(password=PASSWORD), interactive=False, out=io.StringIO())
    assert target.stat().st_uid == 0 and target.read_text() == "root's\n"
    assert kiosk.read_bytes() == before

    (lib / "owner-password").unlink()
    assert main(args(kiosk, tmp_path, site, new_code(site))) == 0
    for name in ("device.json", "owner-password"):
        info = (lib / name).stat()
        assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (OTHER, OTHER, 0o600)
    assert not [p for p in lib.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_a_symlinked_config_is_refused(kiosk, tmp_path):
    real = tmp_path / "real.toml"
    real.write_bytes(kiosk.read_bytes())
    kiosk.unlink()
    kiosk.symlink_to(real)
    with pytest.raises(ProvisionError, match="symbolic link"):
        provision(kiosk, Plan(settings={"door.id": "x"}), interactive=False, out=io.StringIO())
    assert kiosk.is_symlink() and load_config(real, {}).door.id == "front"


def interactive_run(kiosk, answers, secrets=()):
    answers, secrets, out = iter(answers), iter(secrets), io.StringIO()
    assert provision(kiosk, Plan(), interactive=True, ask=lambda _p: next(answers),
                     ask_secret=lambda _p: next(secrets), out=out) == 0, out.getvalue()  # fmt: skip
    return out.getvalue()


def test_first_interactive_run_accepting_defaults_takes_the_gyms_time_zone(kiosk, site):
    site.write(lambda tx: admin.update_gym(tx, site.org_id, site.gym_id,
                                           {"timezone": "Europe/Berlin"}))  # fmt: skip
    shown = interactive_run(kiosk, [site.url, new_code(site), "", "", "", "y", ""], [""])
    assert load_config(kiosk, {}).site.timezone == "Europe/Berlin"
    assert "from the cloud: Europe/Berlin" in shown and "warning" not in shown


def test_the_relay_polarity_must_be_answered_when_the_config_does_not_say(kiosk):
    # No cloud (blank), every default but the polarity, which a blank does not answer.
    shown = interactive_run(kiosk, ["", "", "", "", "", "", "n", ""], [""])
    assert "low level trigger" in shown and "please answer y or n" in shown
    assert load_config(kiosk, {}).gpio.relay_active_high is False

    # Once the file says, its value is the default.
    shown = interactive_run(kiosk, ["", "", "", "", "", "", ""], [""])
    assert "please answer" not in shown and load_config(kiosk, {}).gpio.relay_active_high is False


@as_root
def test_without_root_it_says_run_it_with_sudo(capsys):
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        root.chmod(0o755)
        closed = root / "closed"
        closed.mkdir(mode=0o700)  # like /var/lib/fitflow-kiosk or /etc/... to another user
        readable = root / "kiosk.toml"
        readable.write_text(f'[sync]\ncredentials_file = "{closed / "device.json"}"\n')
        readable.chmod(0o644)
        for config in (closed / "kiosk.toml", readable):
            os.setegid(OTHER)
            os.seteuid(OTHER)
            try:
                code = main(["provision", "--config", str(config), "--non-interactive"])
            finally:
                os.seteuid(0)
                os.setegid(0)
            err = capsys.readouterr().err
            assert code == 2 and "run it with sudo" in err and str(closed) in err, err
            assert "Traceback" not in err


# -- the door starts only once provisioning has set the relay -------------------------------------


def test_setting_the_polarity_writes_the_marker_the_scanner_waits_for(kiosk, tmp_path, site):
    marker = provisioned_marker(kiosk)
    assert marker == kiosk.with_name("kiosk.toml.provisioned")
    assert not marker.exists()
    # args(): --relay-pin 6 --relay-active-low
    assert main(args(kiosk, tmp_path, site, new_code(site))) == 0
    assert marker.read_text().splitlines()[-2:] == [
        "gpio.relay_pin = 6",
        "gpio.relay_active_high = false",
    ]
    assert stat.S_IMODE(marker.stat().st_mode) == stat.S_IMODE(kiosk.stat().st_mode) & 0o644

    # Re-running with the same answers leaves it as it is; a new pin (polarity not asked again)
    # is recorded in it.
    before = marker.read_bytes()
    out = io.StringIO()
    assert provision(kiosk, Plan(settings={"door.id": "lobby"}), interactive=False, out=out) == 0
    assert marker.read_bytes() == before and "door may start" not in out.getvalue()
    out = io.StringIO()
    assert provision(kiosk, Plan(settings={"gpio.relay_pin": 24}), interactive=False, out=out) == 0
    assert "gpio.relay_pin = 24" in marker.read_text()
    assert "updated to the config's relay wiring" in out.getvalue()


def test_without_the_polarity_the_door_stays_off_and_it_says_so(kiosk):
    out = io.StringIO()
    assert provision(kiosk, Plan(settings={"door.id": "side"}), interactive=False, out=out) == 0
    assert not provisioned_marker(kiosk).exists()
    assert "set the relay's polarity, or the door does not start" in out.getvalue()


def test_the_examples_polarity_is_a_guess_until_provisioning_sets_it(tmp_path):
    # The installed config is the example, which says relay_active_high = true: a blank answer
    # must not take that guess for the owner's word.
    kiosk = tmp_path / "kiosk.toml"
    kiosk.write_text(
        render_example()
        .replace("/var/lib/fitflow-kiosk/device.json", str(tmp_path / "device.json"))
        .replace("/var/lib/fitflow-kiosk/owner-password", str(tmp_path / "owner-password"))
    )
    assert load_config(kiosk, {}).gpio.relay_active_high is True
    # No cloud; door, zone, pin kept; the polarity: blank (asked again), then y; pulse kept.
    shown = interactive_run(kiosk, ["", "", "", "", "", "y", ""], [""])
    assert "please answer y or n" in shown and "the door may start" in shown
    assert provisioned_marker(kiosk).exists()
    # Now it is the owner's answer, offered as the default.
    shown = interactive_run(kiosk, ["", "", "", "", "", ""], [""])
    assert "please answer" not in shown and load_config(kiosk, {}).gpio.relay_active_high is True


@as_root
def test_config_check_on_an_unreadable_config_says_to_use_sudo(tmp_path, capsys):
    config = tmp_path / "kiosk.toml"
    config.write_text(render_example())
    config.chmod(0o600)  # root's only, as older installers left it (0640 root:fitflow)
    tmp_path.chmod(0o755)
    os.setegid(OTHER)
    os.seteuid(OTHER)
    try:
        code = main(["config", "check", str(config)])
    finally:
        os.seteuid(0)
        os.setegid(0)
    err = capsys.readouterr().err
    assert code == 2
    assert "permission denied" in err and "sudo kiosk config check" in err
    assert "run the installer again" in err
