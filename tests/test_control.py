"""The control database (kiosk.data.control): owner requests, the audit log, process health. Real SQLite
files in a temporary folder; times are given explicitly, nothing sleeps."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta

import pytest

from fakes import clean_env
from kiosk.core.clock import AnchoredClock, SimClock
from kiosk.core.model import ClockQuality
from kiosk.data.control import (
    CONTROL_FILENAME,
    REQUEST_MAX_AGE_S,
    SCHEMA_VERSION,
    ControlError,
    ControlStore,
    OwnerRequest,
    RequestKind,
    RequestState,
    control_path,
    shared_wall,
)
from kiosk.data.store import Store
from sync.protocol import Anchor

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def later(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def request_by_id(control: ControlStore, request_id: int) -> OwnerRequest | None:
    """Request ``request_id`` as ``recent_requests`` lists it, or None once it is pruned."""
    return next((r for r in control.recent_requests(10_000) if r.id == request_id), None)


@pytest.fixture
def control(tmp_path):
    with ControlStore.open(tmp_path / CONTROL_FILENAME) as store:
        yield store


def test_the_control_file_lives_next_to_the_door_database(tmp_path):
    assert control_path(tmp_path / "data" / "kiosk.db") == tmp_path / "data" / "control.sqlite"
    assert control_path("kiosk.db").name == "control.sqlite"


# -- requests --------------------------------------------------------------------------------------


def test_a_request_goes_pending_running_done_with_audit_rows(control):
    asked = control.submit(RequestKind.TEST_DOOR, now=T0, client="192.0.2.7")
    assert asked.state is RequestState.PENDING and asked.requested_at == T0
    assert control.has_pending(RequestKind.TEST_DOOR)
    assert not control.has_pending(RequestKind.SYNC_NOW)
    assert control.claim(RequestKind.SYNC_NOW, now=later(1)) is None  # other kinds untouched

    taken = control.claim(RequestKind.TEST_DOOR, now=later(1))
    assert taken is not None and taken.id == asked.id and taken.state is RequestState.RUNNING
    assert not control.has_pending(RequestKind.TEST_DOOR)
    assert control.claim(RequestKind.TEST_DOOR, now=later(1)) is None  # taken once only

    control.finish(taken.id, ok=True, result="relay pulsed for 500 ms", now=later(2))
    done = request_by_id(control, taken.id)
    assert done is not None and done.state is RequestState.DONE
    assert done.finished_at == later(2) and done.finished_at.tzinfo is not None
    assert done.result == "relay pulsed for 500 ms"
    audit = control.recent_audit()
    assert [(a.action, a.outcome) for a in audit] == [
        ("test_door", "done"),
        ("test_door", "requested"),
    ]
    assert audit[0].detail == "relay pulsed for 500 ms" and audit[1].client == "192.0.2.7"


def test_a_failed_request_says_why(control):
    control.submit("sync_now", now=T0)
    taken = control.claim("sync_now", now=T0)
    control.finish(taken.id, ok=False, result="sync failed: cannot reach the cloud", now=later(3))
    failed = request_by_id(control, taken.id)
    assert failed.state is RequestState.FAILED and "cannot reach" in failed.result
    assert control.recent_audit(1)[0].outcome == "failed"


def test_a_double_submit_gives_one_request(control):
    first = control.submit(RequestKind.TEST_DOOR, now=T0)
    second = control.submit(RequestKind.TEST_DOOR, now=later(0.3))
    assert second.id == first.id and second.requested_at == T0
    assert len(control.recent_requests()) == 1
    # Both clicks are in the audit log; the second says it joined the waiting request.
    clicks = [a for a in control.recent_audit() if a.outcome == "requested"]
    assert len(clicks) == 2 and "already waiting" in clicks[0].detail
    # Once claimed, a new click is a new request.
    control.claim(RequestKind.TEST_DOOR, now=later(1))
    third = control.submit(RequestKind.TEST_DOOR, now=later(2))
    assert third.id != first.id


def test_two_concurrent_claimers_never_both_win(tmp_path):
    path = tmp_path / CONTROL_FILENAME
    page = ControlStore.open(path)
    claimers = [ControlStore.open(path, busy_timeout_ms=5000) for _ in range(2)]
    try:
        for round_ in range(25):
            page.submit(RequestKind.TEST_DOOR, now=later(round_))
            barrier = threading.Barrier(2)
            won: list[object] = [None, None]

            def claim(i: int, barrier=barrier, won=won, round_=round_) -> None:
                barrier.wait()
                won[i] = claimers[i].claim(RequestKind.TEST_DOOR, now=later(round_))

            threads = [threading.Thread(target=claim, args=(i,)) for i in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)  # bounds a hang only
            assert sum(w is not None for w in won) == 1, round_
    finally:
        for store in (page, *claimers):
            store.close()


def test_a_request_not_picked_up_in_time_expires_and_is_never_returned(control):
    old = control.submit(RequestKind.TEST_DOOR, now=T0)
    assert control.has_pending(RequestKind.TEST_DOOR)  # a cheap read; the claim decides
    assert control.claim(RequestKind.TEST_DOOR, now=later(REQUEST_MAX_AGE_S + 1)) is None
    expired = request_by_id(control, old.id)
    assert expired.state is RequestState.EXPIRED and expired.finished_at is not None
    row = control.recent_audit(1)[0]
    assert (row.action, row.outcome) == ("test_door", "expired")
    assert "not picked up within 60 s" in row.detail
    assert not control.has_pending(RequestKind.TEST_DOOR)


def test_a_stale_request_is_not_reused_by_a_new_click(control):
    old = control.submit(RequestKind.TEST_DOOR, now=T0)
    new = control.submit(RequestKind.TEST_DOOR, now=later(90))
    assert new.id != old.id
    assert request_by_id(control, old.id).state is RequestState.EXPIRED
    assert control.claim(RequestKind.TEST_DOOR, now=later(91)).id == new.id


def test_a_request_dated_ahead_of_the_clock_is_expired_not_kept_fresh(control):
    """A clock set back after the click must not keep the request fresh for longer."""
    ahead = control.submit(RequestKind.TEST_DOOR, now=later(3600))
    assert control.claim(RequestKind.TEST_DOOR, now=T0) is None
    assert request_by_id(control, ahead.id).state is RequestState.EXPIRED


def test_a_request_its_claimer_abandoned_is_failed_at_the_next_claim(control):
    control.submit(RequestKind.SYNC_NOW, now=T0)
    lost = control.claim(RequestKind.SYNC_NOW, now=T0)  # the agent then died
    control.submit(RequestKind.SYNC_NOW, now=later(1000))
    fresh = control.claim(RequestKind.SYNC_NOW, now=later(1000))
    assert fresh.id != lost.id
    abandoned = request_by_id(control, lost.id)
    assert abandoned.state is RequestState.FAILED and "abandoned" in abandoned.result


def test_finishing_an_unknown_or_expired_request(control):
    with pytest.raises(ControlError, match="no owner request #99"):
        control.finish(99, ok=True, result="x", now=T0)
    control.submit(RequestKind.TEST_DOOR, now=T0)
    taken = control.claim(RequestKind.TEST_DOOR, now=T0)
    control.finish(taken.id, ok=True, result="first", now=T0)
    control.finish(taken.id, ok=False, result="second", now=later(1))  # left as it is
    assert request_by_id(control, taken.id).result == "first"


def test_an_unknown_request_kind_is_refused_in_plain_words(control):
    with pytest.raises(ControlError, match="unknown owner request kind 'reboot'"):
        control.submit("reboot", now=T0)


def test_recent_requests_are_newest_first(control):
    ids = []
    for i in range(3):
        ids.append(control.submit(RequestKind.SYNC_NOW, now=later(i)).id)
        control.claim(RequestKind.SYNC_NOW, now=later(i))
    assert [r.id for r in control.recent_requests()] == ids[::-1]
    assert [r.id for r in control.recent_requests(limit=2)] == ids[:0:-1]


# -- audit log -------------------------------------------------------------------------------------


def test_the_audit_log_is_newest_first(control):
    control.audit("login", "failed", now=T0, client="192.0.2.1")
    control.audit("login", "ok", now=later(5), client="192.0.2.1")
    control.audit("logout", "ok", now=later(9))
    audit = control.recent_audit()
    assert [(a.action, a.outcome) for a in audit] == [
        ("logout", "ok"),
        ("login", "ok"),
        ("login", "failed"),
    ]
    assert audit[0].at == later(9) and audit[0].id > audit[1].id > audit[2].id
    assert [a.action for a in control.recent_audit(limit=1)] == ["logout"]


def test_hostile_strings_are_flattened_and_capped(control):
    hostile = "a\x00b\nc\r\n\x1b[31md\u202e'; DROP TABLE audit; --" + "x" * 1_000_000
    control.audit(hostile, hostile, now=T0, detail=hostile, client=hostile)
    control.submit(RequestKind.SYNC_NOW, now=T0, client=hostile)
    taken = control.claim(RequestKind.SYNC_NOW, now=T0)
    control.finish(taken.id, ok=False, result=hostile, now=T0)
    rows = control.recent_audit()
    assert len(rows) == 3  # the injection attempt stayed text
    for row in rows:
        for text in (row.action, row.outcome, row.detail, row.client):
            assert text.isprintable() and len(text) <= 200
    first = rows[-1]
    assert first.detail.startswith("a b c [31md '; DROP TABLE audit; --xxx")
    assert len(first.detail) == 200 and first.detail.endswith("…")
    assert len(first.action) <= 40 and len(first.client) <= 100
    result = request_by_id(control, taken.id).result
    assert result.isprintable() and len(result) == 200
    assert os.path.getsize(control.path) < 200_000  # the megabyte went nowhere


# -- health ----------------------------------------------------------------------------------------


def test_health_is_upserted_per_process_and_read_back(control):
    assert control.health("scanner") is None
    control.publish_health("scanner", {"fps": 29.5, "state": "scanning"}, now=T0, pid=41)
    control.publish_health("scanner", {"fps": 30.0, "state": "stopped"}, now=later(2), pid=42)
    control.publish_health("sync", {"state": "running"}, now=later(3))
    report = control.health("scanner")
    assert report.pid == 42 and report.updated_at == later(2)
    assert report.data == {"fps": 30.0, "state": "stopped"}
    assert control.health("sync").data == {"state": "running"}


def test_health_that_is_not_json_is_refused(control):
    with pytest.raises(ControlError, match="cannot be stored"):
        control.publish_health("scanner", {"fps": float("nan")}, now=T0)
    with pytest.raises(ControlError, match="more than"):
        control.publish_health("scanner", {"blob": "x" * 100_000}, now=T0)
    assert control.health("scanner") is None


# -- housekeeping ----------------------------------------------------------------------------------


def test_prune_keeps_the_newest_audit_rows_and_open_requests(control):
    for i in range(30):
        control.audit("login", "failed", now=later(i), detail=f"attempt {i}")
    old = control.submit(RequestKind.SYNC_NOW, now=T0)
    control.claim(RequestKind.SYNC_NOW, now=T0)
    control.finish(old.id, ok=True, result="synced", now=T0)
    waiting = control.submit(RequestKind.TEST_DOOR, now=later(40 * 86400))
    deleted = control.prune(now=later(40 * 86400 + 1), keep_audit=10, keep_requests_days=30)
    audit = control.recent_audit(100)
    # The newest ten: the three request rows and the last seven logins.
    assert len(audit) == 10 and audit[-1].detail == "attempt 23"
    assert request_by_id(control, old.id) is None
    assert request_by_id(control, waiting.id).state is RequestState.PENDING
    assert deleted == (33 - 10) + 1  # audit rows, and the old finished request
    assert control.prune(now=later(40 * 86400 + 2), keep_audit=10) == 0


# -- opening ---------------------------------------------------------------------------------------


def test_a_file_that_is_not_a_database_is_refused_and_left_alone(tmp_path):
    path = tmp_path / CONTROL_FILENAME
    garbage = b"this is not sqlite\n" * 500
    path.write_bytes(garbage)
    with pytest.raises(ControlError) as raised:
        ControlStore.open(path)
    message = str(raised.value)
    assert str(path) in message and "not a SQLite database" in message
    assert "move the file aside" in message
    assert raised.value.path == path
    assert path.read_bytes() == garbage


def test_a_missing_folder_is_named_not_created(tmp_path):
    path = tmp_path / "nowhere" / CONTROL_FILENAME
    with pytest.raises(ControlError, match=r"the folder .*nowhere does not exist"):
        ControlStore.open(path)
    assert not path.parent.exists()


def test_a_newer_schema_is_refused(tmp_path):
    path = tmp_path / CONTROL_FILENAME
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(ControlError, match="newer than this code"):
        ControlStore.open(path)


def test_reopening_keeps_the_data_and_opens_in_wal(tmp_path):
    path = tmp_path / CONTROL_FILENAME
    with ControlStore.open(path) as first:
        first.audit("login", "ok", now=T0)
    with ControlStore.open(path) as again:
        assert [a.action for a in again.recent_audit()] == ["login"]
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)


def test_processes_starting_together_migrate_once(tmp_path):
    path = tmp_path / CONTROL_FILENAME
    barrier = threading.Barrier(4)
    opened, errors = [], []

    def open_it() -> None:
        barrier.wait()
        try:
            opened.append(ControlStore.open(path, busy_timeout_ms=5000))
        except ControlError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)  # bounds a hang only
    try:
        assert errors == [] and len(opened) == 4
        opened[0].audit("login", "ok", now=T0)
        assert len(opened[3].recent_audit()) == 1
    finally:
        for store in opened:
            store.close()


def test_it_opens_beside_a_read_only_door_database(tmp_path):
    db = tmp_path / "kiosk.db"
    Store.open(db).close()
    db.chmod(0o444)
    try:
        with Store.open(db, readonly=True) as door, ControlStore.open(control_path(db)) as control:
            control.submit(RequestKind.SYNC_NOW, now=T0)
            assert control.has_pending(RequestKind.SYNC_NOW)
            assert door.readonly
    finally:
        db.chmod(0o644)


def test_a_closed_store_says_so(tmp_path):
    store = ControlStore.open(tmp_path / CONTROL_FILENAME)
    store.close()
    store.close()  # twice is fine
    with pytest.raises(ControlError, match="is closed"):
        store.has_pending(RequestKind.TEST_DOOR)


# -- time ------------------------------------------------------------------------------------------


def test_requests_are_timed_by_the_kernel_clock_not_the_anchored_one():
    """The page dates requests by the kernel clock; an anchored claimer must agree with it."""
    base = SimClock(T0, quality=ClockQuality.UNSYNCED, boot="b1")
    anchor = Anchor("b1", base.monotonic_ns(), datetime(2026, 9, 1, tzinfo=UTC))
    anchored = AnchoredClock(base, lambda boot: anchor)
    assert anchored.wall() > T0 + timedelta(days=100)  # the cloud's time
    assert shared_wall(anchored) == T0
    assert shared_wall(base) == T0


# -- the daemons' wiring ---------------------------------------------------------------------------


def _replay_config(tmp_path) -> tuple:
    import cv2

    from hardware.fakes.synthetic import compose_frame

    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(4):
        payload = "FF-ALICE-1001" if i == 2 else None
        frame = compose_frame(payload, width=640, height=480, code_fraction=0.4, seed=i)
        cv2.imwrite(str(frames / f"{i:03d}.png"), frame)
    db = tmp_path / "kiosk.db"
    config = tmp_path / "kiosk.toml"
    config.write_text(
        f'[store]\npath = "{db}"\n[camera]\nbackend = "replay"\nreplay_path = "{frames}"\n'
        '[gpio]\npin_factory = "mock"\n'
    )
    return db, config


def _kiosk_run(config) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kiosk", "run", "--config", str(config)],
        capture_output=True, text=True, timeout=120, check=False, env=clean_env(),
    )  # fmt: skip


def test_kiosk_run_publishes_its_health_beside_the_database(tmp_path):
    db, config = _replay_config(tmp_path)
    result = _kiosk_run(config)
    assert result.returncode == 0, result.stderr
    with ControlStore.open(control_path(db)) as control:
        health = control.health("scanner")
    assert health.data["state"] == "stopped" and health.data["frames"] == 4
    assert health.data["decisions"] == {"unknown_code": 1}  # a new device: no replica yet


def test_kiosk_run_keeps_the_door_going_without_a_usable_control_file(tmp_path):
    db, config = _replay_config(tmp_path)
    control_file = control_path(db)
    control_file.write_bytes(b"not a database" * 100)
    result = _kiosk_run(config)
    assert result.returncode == 0, result.stderr
    assert "'test the door' and live health will not work" in result.stderr
    assert str(control_file) in result.stderr
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT reason FROM checkins").fetchall() == [("unknown_code",)]
    assert control_file.read_bytes() == b"not a database" * 100
