"""`kiosk demo`: the real door loop on embedded defaults, as the README's first command runs it."""

from __future__ import annotations

import io
import json
import sqlite3
import subprocess
import sys
import threading
from datetime import UTC, datetime

import pytest

from e2e_helpers import wait_until
from fakes import clean_env
from kiosk.control import ControlStore, RequestKind, RequestState, control_path
from kiosk.demo import run_demo
from kiosk.seed import AFTER_CLOUD_CHANGE, SCENARIO, WHILE_OFFLINE

# --once plays the scenario, then the sync story: Carol admitted after a change made in the cloud,
# Alice admitted while the cloud is down.
PLAYED = [*SCENARIO, AFTER_CLOUD_CHANGE, WHILE_OFFLINE]

REQUIRED = {
    "subscription", "class_pack", "unknown_code", "malformed_code", "member_paused",
    "no_valid_membership", "pack_empty", "outside_hours", "passback",
}  # fmt: skip


class CommitCheckingOut(io.StringIO):
    """Checks, at the moment each decision line is written, that its row is already committed."""

    def __init__(self, db):
        super().__init__()
        self.db = db
        self.checked = 0

    def write(self, text: str) -> int:
        record = json.loads(text)
        if record.get("type") == "decision":
            with sqlite3.connect(self.db) as other:
                row = other.execute("SELECT reason FROM checkins WHERE id = ?", (record["id"],))
                assert row.fetchone() == (record["reason"],)
            self.checked += 1
        return super().write(text)


def test_once_json_plays_the_scenario_and_prints_only_committed_decisions(tmp_path):
    db = tmp_path / "demo.db"
    out = CommitCheckingOut(db)
    assert run_demo(db=db, as_json=True, once=True, out=out) == 0
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    decisions = [r for r in records if r["type"] == "decision"]
    summary = records[-1]
    assert out.checked == len(decisions) == len(PLAYED)
    assert [d["reason"] for d in decisions] == [scan.expect.value for scan in PLAYED]
    assert {d["reason"] for d in decisions} >= REQUIRED
    for d in decisions:
        assert {"id", "decision", "reason", "member", "relay_ms"} <= d.keys()
        assert (d["relay_ms"] > 0) == (d["decision"] == "granted")
    assert "decision" not in summary
    assert summary["decisions"] == len(PLAYED)
    # Every decision reached the embedded cloud, including the one made while it was down.
    assert summary["pending"] == 0 and summary["synced"] == len(PLAYED)
    assert summary["scenario_ok"] is True


def test_once_tells_the_sync_story(tmp_path):
    """Pending then synced; a change made in the cloud reaches the door; with the cloud stopped
    the door keeps admitting and the agent catches up when it returns."""
    db = tmp_path / "demo.db"
    out = io.StringIO()
    assert run_demo(db=db, as_json=True, once=True, out=out) == 0
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    kinds = [(r["type"], r.get("event") or r.get("reason")) for r in records]
    syncs = [r for r in records if r["type"] == "sync"]
    assert syncs[0]["ok"] and syncs[0]["pull"] == "snapshot"  # the replica came from the cloud
    assert syncs[1]["ok"] and syncs[1]["pushed"] == len(SCENARIO) and syncs[1]["pending"] == 0
    change = kinds.index(("cloud", "member_changed"))
    carol = kinds.index(("decision", "subscription"), change)
    assert records[carol]["member"] == "m-carol"
    stopped = kinds.index(("cloud", "stopped"))
    alice = kinds.index(("decision", "subscription"), stopped)
    assert records[alice]["member"] == "m-alice" and records[alice]["relay_ms"] > 0
    offline = next(r for r in records[alice:] if r["type"] == "sync")
    assert not offline["ok"] and offline["pending"] == 2 and "cannot reach" in offline["error"]
    assert syncs[-1]["ok"] and syncs[-1]["pushed"] == 2 and syncs[-1]["pending"] == 0
    # The cloud holds every decision exactly once.
    with sqlite3.connect(tmp_path / "demo-cloud.db") as cloud:
        cloud_ids = {row[0] for row in cloud.execute("SELECT id FROM checkins")}
    with sqlite3.connect(db) as device:
        device_ids = {row[0] for row in device.execute("SELECT id FROM checkins")}
    assert cloud_ids == device_ids and len(device_ids) == len(PLAYED)


def test_existing_database_is_reused_not_reseeded(tmp_path):
    db = tmp_path / "demo.db"
    assert run_demo(db=db, as_json=True, once=True, out=io.StringIO()) == 0
    out = io.StringIO()
    assert run_demo(db=db, as_json=True, once=True, out=out) == 0
    summary = json.loads(out.getvalue().splitlines()[-1])
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM checkins").fetchone() == (2 * len(PLAYED),)
    # Everyone who got in minutes ago is now refused by anti-passback: the journal was kept.
    assert summary["reasons"].get("passback", 0) > 1
    assert summary["scenario_ok"] is None


def test_a_real_device_database_is_refused(tmp_path):
    """Demo check-ins must never reach a real journal (they would be uploaded to the cloud)."""
    from datetime import UTC, datetime

    from kiosk.demo import DemoError
    from kiosk.model import Decision, Now, Reason, Verdict
    from kiosk.store import Store

    device = tmp_path / "device.db"
    with Store.open(device) as store:  # a device before its first sync: a journal, no replica
        now = Now(datetime.now(UTC), 1, "boot", "ntp_synced")
        store.append_checkin(Decision(Verdict.DENIED, Reason.UNKNOWN_CODE), door_id="d",
                             replica_version=0, now=now)  # fmt: skip
    synced = tmp_path / "synced.db"
    with Store.open(synced) as store:  # a device with a real replica
        store.replace_replica(demo_snapshot_with_salt(b"real-salt"))
    for db in (device, synced):
        with pytest.raises(DemoError, match="only runs on its own database"):
            run_demo(db=db, as_json=True, once=True, out=io.StringIO())
    with sqlite3.connect(device) as conn:
        assert conn.execute("SELECT COUNT(*) FROM checkins").fetchone() == (1,)


def demo_snapshot_with_salt(salt: bytes):
    from dataclasses import replace
    from datetime import UTC, datetime

    from kiosk.seed import demo_snapshot

    return replace(demo_snapshot(datetime.now(UTC), "UTC"), code_salt=salt)


def test_human_output_names_decisions_and_reasons(tmp_path):
    out = io.StringIO()
    assert run_demo(db=None, as_json=False, once=True, out=out) == 0
    text = out.getvalue()
    assert "GRANTED" in text and "subscription" in text and "passback" in text
    assert f"{len(PLAYED)} decisions" in text
    assert "replica snapshot taken" in text and "0 pending upload" in text


def test_cli_demo_once_json_exits_zero():
    result = subprocess.run(
        [sys.executable, "-m", "kiosk", "demo", "--once", "--json"],
        capture_output=True, text=True, timeout=120, check=False, env=clean_env(),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines[-1]["type"] == "summary" and lines[-1]["pending"] == 0
    assert lines[-1]["synced"] == len(PLAYED) and lines[-1]["scenario_ok"] is True
    assert {line["type"] for line in lines[:-1]} == {"decision", "sync", "cloud"}


def test_the_door_loop_never_touches_the_network(monkeypatch):
    """The whole door path (decode, decide, journal, relay) runs with IP networking forbidden."""
    import socket

    attempts = []
    real_connect, real_sendto = socket.socket.connect, socket.socket.sendto

    def no_ip(method):
        def guarded(self, *args):
            if self.family in (socket.AF_INET, socket.AF_INET6):
                attempts.append(args)
                raise OSError("network access from the door loop")
            return method(self, *args)

        return guarded

    def no_dns(*args, **kwargs):
        attempts.append(args)
        raise OSError("name lookup from the door loop")

    monkeypatch.setattr(socket.socket, "connect", no_ip(real_connect))
    monkeypatch.setattr(socket.socket, "sendto", no_ip(real_sendto))
    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    out = io.StringIO()
    # The door alone (no embedded cloud, whose agent does talk to 127.0.0.1).
    assert run_demo(db=None, as_json=True, once=True, out=out, cloud=False) == 0
    assert json.loads(out.getvalue().splitlines()[-1])["scenario_ok"] is True
    assert attempts == []


def test_once_leaves_the_scanner_health_in_the_control_file(tmp_path):
    db = tmp_path / "demo.db"
    assert run_demo(db=db, as_json=True, once=True, out=io.StringIO()) == 0
    with ControlStore.open(control_path(db)) as control:
        health = control.health("scanner")
    assert health.data["door_id"] == "demo-door" and health.data["state"] == "stopped"
    assert health.data["frames"] > 0 and health.data["decode_ms_p50"] is not None


def test_the_running_demo_answers_test_the_door_and_sync_now(tmp_path):
    """What the owner page does in the demo: click "test the door" and "sync now" from another
    connection to the control file, and see both answered."""
    db = tmp_path / "demo.db"
    stop = threading.Event()
    started: list = []
    out = io.StringIO()
    demo = threading.Thread(
        target=run_demo,
        kwargs={"db": db, "as_json": True, "once": False, "out": out, "stop": stop,
                "on_start": started.append},
    )  # fmt: skip
    demo.start()
    try:
        wait_until(lambda: started, 60, "the demo to start")
        assert started[0].control is not None
        assert started[0].config.store.path == str(db)
        with ControlStore.open(control_path(db)) as page:
            now = datetime.now(UTC)
            door_test = page.submit(RequestKind.TEST_DOOR, now=now, client="127.0.0.1")
            sync_now = page.submit(RequestKind.SYNC_NOW, now=now, client="127.0.0.1")

            def finished():
                got = [page.get_request(r.id) for r in (door_test, sync_now)]
                return got if all(r.finished_at for r in got) else None

            door_done, sync_done = wait_until(finished, 30, "both requests to be answered")
            assert door_done.state is RequestState.DONE
            assert door_done.result.startswith("relay pulsed for")
            assert sync_done.state is RequestState.DONE
            assert sync_done.result.startswith("synced: uploaded")
            assert page.health("scanner").data["state"] in ("scanning", "camera_stale")
    finally:
        stop.set()
        demo.join(30)
    assert not demo.is_alive()
    syncs = [json.loads(line) for line in out.getvalue().splitlines() if '"sync"' in line]
    assert syncs and all(s["ok"] for s in syncs)  # the asked-for cycle was printed too
