"""`kiosk status`: the device summarised from its database, read-only."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

from devtools.seed import demo_snapshot
from kiosk.cli import main
from kiosk.core.model import ClockQuality, Decision, Now, Reason, Verdict
from kiosk.data.store import Store
from kiosk.ops.status import collect_status, render_status

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
