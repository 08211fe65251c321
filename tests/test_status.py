"""`kiosk status`: the device summarised from its database, read-only."""

from __future__ import annotations

import io
import json
import os
import select
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

from devtools.seed import demo_snapshot
from fakecloud import TOKEN, FakeCloud
from fakes import clean_env
from kiosk.cli import main
from kiosk.core.model import ClockQuality, Decision, Now, Reason, Verdict
from kiosk.data.store import Store
from kiosk.ops.status import agent_running, collect_status, process_exists, render_status
from kiosk.sync.identity import DeviceIdentity, save_identity

T0 = datetime(2026, 5, 1, 8, 0, tzinfo=UTC)


def seeded(path):
    """A replica pulled at T0 and five check-ins (T0+1..5 min): 2 synced, 1 rejected, 2 pending."""
    with Store.open(path) as store:
        store.replace_replica(demo_snapshot(T0, "UTC"))
        rows = []
        for n in range(5):
            decision = (
                Decision(Verdict.GRANTED, Reason.SUBSCRIPTION, member_id=f"m{n}")
                if n % 2 == 0
                else Decision(Verdict.DENIED, Reason.UNKNOWN_CODE)
            )
            now = Now(T0 + timedelta(minutes=n + 1), 10**9 + n, "boot-1", ClockQuality.NTP_SYNCED)
            rows.append(store.append_checkin(decision, door_id="front", replica_version=7, now=now))
        store.mark_synced([rows[0].id, rows[1].id], at=T0 + timedelta(minutes=10))
        store.mark_rejected([rows[2].id], at=T0 + timedelta(minutes=10))
        store.set_sync_status({
            "state": "offline", "online": False, "last_pull_at": "2026-05-01T08:00:00.000000Z",
            "last_push_at": "2026-05-01T08:10:00.000000Z", "last_error": "cloud.test: timed out",
        })  # fmt: skip
        return store.replica_info().version, rows


def disk(_path):
    return SimpleNamespace(total=32 * 2**30, used=2 * 2**30, free=30 * 2**30)


def test_status_shape_and_values_from_a_seeded_store(tmp_path):
    db = tmp_path / "kiosk.db"
    version, _rows = seeded(db)
    before = db.read_bytes()
    now = T0 + timedelta(hours=2)
    status = collect_status(
        db, door_id="front", software_version="9.9", clock_quality="ntp_synced", now=now,
        disk_usage=disk,
    )  # fmt: skip
    assert json.loads(json.dumps(status)) == status  # plain JSON
    assert set(status) == {
        "door_id", "software_version", "now", "clock_quality", "database", "replica", "journal",
        "sync", "recent_checkins", "disk",
    }  # fmt: skip
    assert status["replica"]["version"] == version and status["replica"]["members"] > 0
    assert status["replica"]["age_s"] == 7200.0
    journal = status["journal"]
    assert (journal["pending"], journal["synced"], journal["rejected"], journal["total"]) == (
        2, 2, 1, 5,
    )  # fmt: skip
    assert journal["last_seq"] == 5
    # The oldest pending row is the fourth (T0 + 4 min).
    assert journal["oldest_pending_age_s"] == (now - (T0 + timedelta(minutes=4))).total_seconds()
    assert status["sync"]["state"] == "offline" and status["sync"]["online"] is False
    assert status["sync"]["last_error"] == "cloud.test: timed out"
    recent = status["recent_checkins"]
    assert [c["seq"] for c in recent] == [5, 4, 3, 2, 1]
    assert recent[0] == {
        "seq": 5, "at": "2026-05-01T08:05:00.000000Z", "door_id": "front", "decision": "granted",
        "reason": "subscription", "member_id": "m4", "sync_state": "pending",
    }  # fmt: skip
    assert status["disk"]["free_bytes"] == 30 * 2**30
    assert status["database"]["schema_version"] >= 1 and status["database"]["size_bytes"] > 0
    assert db.read_bytes() == before  # read-only

    text = io.StringIO()
    render_status(status, text)
    shown = text.getvalue()
    assert "2 pending, 2 synced, 1 rejected" in shown and "offline" in shown
    assert (
        "last pull 2.0 h ago" in shown and "#5 2026-05-01T08:05:00.000000Z front granted" in shown
    )


def write_config(tmp_path, db) -> str:
    path = tmp_path / "kiosk.toml"
    path.write_text(f'[door]\nid = "front"\n[store]\npath = "{db}"\n')
    return str(path)


def test_cli_json_and_text(tmp_path, capsys):
    db = tmp_path / "kiosk.db"
    seeded(db)
    config = write_config(tmp_path, db)
    assert main(["status", "--json", "--config", config]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["door_id"] == "front" and status["journal"]["pending"] == 2
    assert status["clock_quality"] in ("ntp_synced", "unsynced")
    assert main(["status", "--config", config]) == 0
    assert "2 pending" in capsys.readouterr().out


def test_a_fresh_database_says_never(tmp_path):
    db = tmp_path / "kiosk.db"
    Store.open(db).close()
    status = collect_status(db, door_id="d", software_version="1", clock_quality="unsynced")
    assert status["replica"]["synced_at"] is None and status["recent_checkins"] == []
    text = io.StringIO()
    render_status(status, text)
    assert "last pull never" in text.getvalue() and "never ran" in text.getvalue()


def test_missing_or_damaged_database_exits_3(tmp_path, capsys):
    db = tmp_path / "kiosk.db"
    config = write_config(tmp_path, db)
    assert main(["status", "--config", config]) == 3
    assert "does not exist" in capsys.readouterr().err
    db.write_bytes(b"not a database at all" * 100)
    assert main(["status", "--json", "--config", config]) == 3
    assert capsys.readouterr().out == ""


# -- is the sync agent running? (it records its process; a finished or killed one is not) -------

TESTS = Path(__file__).resolve().parent
# A `kiosk` run in a child process against the fake cloud (an httpx.MockTransport of that
# process), which prints "heartbeat" each time the agent's round reaches its heartbeat.
AGENT_CHILD = """
import sys
import httpx
from fakecloud import FakeCloud
from kiosk.cli import main

cloud = FakeCloud()
cloud.seed_gym()

def handle(request):
    response = cloud.handle(request)
    if request.url.path == "/v1/heartbeat":
        print("heartbeat", flush=True)
    return response

sys.exit(main(sys.argv[1:], transport=httpx.MockTransport(handle)))
"""


def enrolled_device(tmp_path) -> str:
    """A config and credentials for the fake cloud; returns the config's path."""
    save_identity(
        tmp_path / "device.json",
        DeviceIdentity(
            cloud_url="https://cloud.test", device_id="dev_1", token=TOKEN,
            organization_id="org-1", gym_id="gym-1", gym_name="Main Street Gym", timezone="UTC",
            enrolled_at=datetime(2026, 5, 1, tzinfo=UTC),
        ),
    )  # fmt: skip
    path = tmp_path / "kiosk.toml"
    path.write_text(
        f'[door]\nid = "front"\n[site]\ntimezone = "UTC"\n[store]\npath = "{tmp_path / "kiosk.db"}"\n'
        f'[sync]\ncredentials_file = "{tmp_path / "device.json"}"\n'
    )
    return str(path)


def agent_child(*args: str) -> subprocess.Popen:
    env = {**clean_env(), "PYTHONPATH": str(TESTS)}
    return subprocess.Popen([sys.executable, "-c", AGENT_CHILD, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip


def status_json(config: str, capsys) -> dict:
    assert main(["status", "--json", "--config", config]) == 0
    return json.loads(capsys.readouterr().out)


def test_sync_once_that_has_exited_is_not_running(tmp_path, capsys):
    config = enrolled_device(tmp_path)
    child = agent_child("sync", "--once", "--config", config)
    out, err = child.communicate(timeout=120)
    assert child.returncode == 0, err
    assert "sync ok" in out
    with Store.open(tmp_path / "kiosk.db") as store:
        recorded = store.sync_status()
    # The round went well, so its last word was "running", from the child's process.
    assert recorded["state"] == "running" and recorded["online"] is True
    assert recorded["pid"] == child.pid

    sync = status_json(config, capsys)["sync"]
    assert sync["running"] is False and sync["state"] == "not_running"
    assert sync["online"] is None and sync["pid"] == child.pid
    assert sync["last_pull_at"] is not None  # what it did is still shown
    assert main(["status", "--config", config]) == 0
    shown = capsys.readouterr().out
    assert f"not running (its process {child.pid} has ended), online unknown" in shown


def test_a_running_agent_reads_as_running_until_it_is_killed(tmp_path, capsys):
    config = enrolled_device(tmp_path)
    child = agent_child("sync", "--config", config)
    try:
        ready, _, _ = select.select([child.stdout], [], [], 120)
        assert ready and child.stdout.readline() == "heartbeat\n", "the agent never synced"
        sync = status_json(config, capsys)["sync"]
        assert sync["running"] is True and sync["pid"] == child.pid
        assert sync["state"] == "running"
    finally:
        child.kill()  # SIGKILL: the agent writes nothing more
        child.communicate(timeout=60)
    sync = status_json(config, capsys)["sync"]
    assert sync["running"] is False and sync["state"] == "not_running" and sync["online"] is None


def test_an_agent_in_this_very_process_is_running(tmp_path, capsys):
    config = enrolled_device(tmp_path)
    cloud = FakeCloud()
    cloud.seed_gym()
    assert main(["sync", "--once", "--config", config], transport=cloud.transport) == 0
    capsys.readouterr()
    sync = status_json(config, capsys)["sync"]
    assert sync["running"] is True and sync["state"] == "running" and sync["online"] is True


def test_agent_running_decides_by_state_process_and_boot():
    gone = {7}

    def running(sync):
        return agent_running(sync, this_boot="boot-b", exists=lambda pid: pid not in gone)

    assert running({}) is None  # never ran
    assert running({"state": "stopped", "pid": 5, "boot_id": "boot-b"}) is False
    assert running({"state": "running", "pid": 5, "boot_id": "boot-b"}) is True
    assert running({"state": "offline", "pid": 5, "boot_id": "boot-b"}) is True
    assert running({"state": "running", "pid": 7, "boot_id": "boot-b"}) is False  # ended, killed
    assert running({"state": "running", "pid": 5, "boot_id": "boot-a"}) is False  # before a reboot
    assert running({"state": "running"}) is True  # an agent too old to say its process
    # Without a kernel boot id (not Linux) the process alone decides.
    assert agent_running({"state": "running", "pid": 5, "boot_id": "nonlinux-1"},
                         this_boot="nonlinux-2", exists=lambda pid: True) is True  # fmt: skip


def test_process_exists():
    assert process_exists(os.getpid())
    assert not process_exists(0) and not process_exists(-1)
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    assert not process_exists(int(done.stdout))
