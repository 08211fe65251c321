"""What a heartbeat costs the cloud, and that the savings change no answer: the journal check
counts only the seqs outside the span it found held before (a long journal is not counted again),
its ``resend_from_seq`` is the one a count of the whole range would give (a gap above the span, a
door restored from a backup, rows the cloud lost, a kiosk enrolled again, a long first check
counted outside the write transaction), the span never passes a missing seq; and the statements
each device request sends to the database, pinned. Every test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import pytest

from cloud import db, uploads
from pg import (
    BOOT,
    SEC,
    Device,
    Harness,
    cloud_db_url_fixture,  # noqa: F401
    cloud_fixture,  # noqa: F401
    heartbeat_body,
    make_event,
    make_item,
    pg_server_fixture,  # noqa: F401
    replica_checksum,
)
from sync.protocol import MAX_BATCH_ITEMS


def _upload(cloud: Harness, device: Device, seqs, *, prefix: str = "8000", **kw) -> None:
    """Check-ins of these seqs (ids by seq, under ``prefix``: one per door)."""
    items = [make_item(n, item_id=f"01900000-0000-7000-{prefix}-{n:012x}", **kw) for n in seqs]
    for start in range(0, len(items), MAX_BATCH_ITEMS):
        results = cloud.upload_ok(device, items[start : start + MAX_BATCH_ITEMS])
        assert {r["status"] for r in results} <= {"created", "duplicate"}, results


def _beat(cloud: Harness, device: Device, retained: int, synced: int, **kw) -> int | None:
    return cloud.heartbeat(
        device, retained_from_seq=retained, synced_through_seq=synced, last_seq=synced, **kw
    )["resend_from_seq"]


def _span(cloud: Harness, device: Device) -> tuple[int, int]:
    with cloud.database.read() as tx:
        row = tx.one(
            "SELECT journal_verified_from, journal_verified_seq FROM devices WHERE id = ?",
            (device.id,),
        )
    assert row is not None
    return int(row["journal_verified_from"]), int(row["journal_verified_seq"])


def _lose(cloud: Harness, device: Device, seqs) -> None:
    """The cloud loses these check-ins (a restore from an older backup, an operator's DELETE)."""
    with cloud.database.write() as tx:
        for seq in seqs:
            tx.run("DELETE FROM checkins WHERE device_id = ? AND seq = ?", (device.id, seq))


@pytest.fixture(name="counted")
def counted_fixture(monkeypatch) -> list[tuple[int, int]]:
    """The (low, high) of every count of held seqs the journal check makes (the real counts)."""
    ranges: list[tuple[int, int]] = []
    real = db.kiosk_seqs_held

    def spy(tx, device_id, low, high, also=()):
        ranges.append((low, high))
        return real(tx, device_id, low, high, also)

    monkeypatch.setattr(db, "kiosk_seqs_held", spy)
    return ranges


# -- the verified span -----------------------------------------------------------------------------


def test_a_verified_journal_is_not_counted_again(cloud, counted):
    device = cloud.enrol()
    _upload(cloud, device, range(1, 1201))
    assert _beat(cloud, device, 1, 1200) is None
    assert counted == [(1, 1200)] and _span(cloud, device) == (1, 1200)

    counted.clear()
    for _ in range(3):
        assert _beat(cloud, device, 1, 1200) is None
    assert counted == [], "nothing new to count"

    _upload(cloud, device, range(1201, 1211))
    assert _beat(cloud, device, 1, 1210) is None
    assert counted == [(1201, 1210)], "only the seqs synced since"
    assert _span(cloud, device) == (1, 1210)

    # The door pruned its oldest rows: the range moved above the span's start, nothing to count.
    counted.clear()
    assert _beat(cloud, device, 900, 1210) is None
    assert counted == [] and _span(cloud, device) == (1, 1210)


def test_a_gap_above_the_span_is_found_and_the_span_stops_before_it(cloud, counted):
    device = cloud.enrol()
    _upload(cloud, device, range(1, 101))
    assert _beat(cloud, device, 1, 100) is None
    _upload(cloud, device, [n for n in range(101, 121) if n not in (110, 115)])

    counted.clear()
    assert _beat(cloud, device, 1, 120) == 110
    assert all(low >= 101 for low, _ in counted), counted
    assert _span(cloud, device) == (1, 109), "never past a missing seq"
    assert _beat(cloud, device, 1, 120) == 110, "asked again until it arrives"

    _upload(cloud, device, [110])
    assert _beat(cloud, device, 1, 120) == 115
    assert _span(cloud, device) == (1, 114)
    _upload(cloud, device, [115])
    assert _beat(cloud, device, 1, 120) is None
    assert _span(cloud, device) == (1, 120)


def test_a_door_restored_from_a_backup_gets_the_same_answers(cloud, counted):
    device = cloud.enrol()
    _upload(cloud, device, range(50, 101))
    assert _beat(cloud, device, 50, 100) is None
    assert _span(cloud, device) == (50, 100)

    # Restored from an older backup: the door's synced range moved back below the span's end.
    # The rows it lost are still in the cloud: nothing to ask for, nothing to count.
    counted.clear()
    assert _beat(cloud, device, 50, 70) is None
    assert counted == [] and _span(cloud, device) == (50, 100)

    # The backup kept older rows than the door had: they are counted (below the span) and the
    # first the cloud lacks is asked for, as a count of the whole range would.
    _upload(cloud, device, [n for n in range(10, 50) if n != 20])
    counted.clear()
    assert _beat(cloud, device, 10, 70) == 20
    assert all(high < 50 for _, high in counted), counted
    assert _span(cloud, device) == (50, 100), "the span kept: the new one does not touch it"
    _upload(cloud, device, [20])
    assert _beat(cloud, device, 10, 70) is None
    assert _span(cloud, device) == (10, 100)


def test_rows_the_cloud_loses_cut_the_span_so_they_are_asked_for(cloud):
    """The service never deletes journal rows; anything else that does (a partial restore, an
    operator) lowers the span through triggers, so the answer stays that of a full count."""
    device = cloud.enrol()
    _upload(cloud, device, range(1, 61))
    events = [make_event(n, "tailgating", None) for n in (61, 62)]
    assert [r["status"] for r in cloud.upload_ok(device, events)] == ["created"] * 2
    bad = make_item(63) | {"door_id": "bad door"}
    assert cloud.upload_ok(device, [bad])[0]["status"] == "rejected"
    assert _beat(cloud, device, 1, 63) is None
    assert _span(cloud, device) == (1, 63)

    _lose(cloud, device, [40])
    assert _span(cloud, device) == (1, 39)
    assert _beat(cloud, device, 1, 63) == 40
    with cloud.database.write() as tx:
        tx.run("DELETE FROM door_events WHERE device_id = ? AND seq = 62", (device.id,))
    _upload(cloud, device, [40])
    assert _beat(cloud, device, 1, 63) == 62
    with cloud.database.write() as tx:  # a row moved to another seq is gone from its own
        tx.run("UPDATE door_events SET seq = 64 WHERE device_id = ? AND seq = 61", (device.id,))
    assert _beat(cloud, device, 1, 63) == 61
    assert _span(cloud, device) == (1, 60)
    with cloud.database.write() as tx:
        tx.run("DELETE FROM rejections WHERE device_id = ?", (device.id,))
    assert _span(cloud, device) == (1, 60), "outside the span: nothing to cut"
    if cloud.database.dialect == db.POSTGRES:
        with cloud.database.write() as tx:
            tx.run("TRUNCATE rejections")  # fires no row triggers: every span is forgotten
        assert _span(cloud, device)[1] == 0
    assert _beat(cloud, device, 1, 60) is None and _span(cloud, device) == (1, 60)


def test_a_reenrolled_kiosk_keeps_its_answers_and_a_lost_predecessor_row_counts(cloud):
    first = cloud.enrol()
    _upload(cloud, first, range(1, 41))
    assert _beat(cloud, first, 1, 40) is None
    second = cloud.enrol("front door again")  # the same machine, the same boot: linked at once
    assert _beat(cloud, second, 1, 42) == 41
    assert _span(cloud, second) == (1, 40)
    _upload(cloud, second, [41, 42])
    assert _beat(cloud, second, 1, 42) is None
    assert _span(cloud, second) == (1, 42)
    # A row of the earlier enrolment lost: the later one's span is cut too.
    _lose(cloud, first, [7])
    assert _span(cloud, second) == (1, 6) and _span(cloud, first) == (1, 6)
    assert _beat(cloud, second, 1, 42) == 7


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_answer_is_always_that_of_a_full_count(cloud, seed):
    """A random walk of uploads (with holes), lost rows, rejected items, and heartbeats whose
    range moves up, back (restores) and below the span: every answer is the first seq of the
    range the cloud holds nothing for (kept here, beside the cloud), and every seq in the span
    is held."""
    rng = random.Random(seed)
    device = cloud.enrol()
    checkins: set[int] = set()
    rejected: set[int] = set()
    top = 80
    for _step in range(45):
        held = checkins | rejected
        action = rng.random()
        if action < 0.35:
            start = rng.randint(1, top)
            seqs = [n for n in range(start, min(start + 12, top + 1)) if rng.random() < 0.85]
            _upload(cloud, device, seqs)
            checkins.update(seqs)
        elif action < 0.42 and checkins:
            seq = rng.choice(sorted(checkins))
            _lose(cloud, device, [seq])
            checkins.discard(seq)
        elif action < 0.47:
            seq = rng.choice(sorted(set(range(1, top + 1)) - held) or [top + 1])
            bad = make_item(seq, item_id=f"01900000-0000-7000-b000-{seq:012x}")
            bad["door_id"] = "bad door"
            assert cloud.upload_ok(device, [bad])[0]["status"] == "rejected"
            rejected.add(seq)
        else:
            retained = rng.choice([0, 1, rng.randint(1, top)])
            synced = rng.randint(0, top + 10)
            expected = next((n for n in range(max(retained, 1), synced + 1) if n not in held), None)
            expected = None if retained == 0 else expected
            assert _beat(cloud, device, retained, synced) == expected, (retained, synced)
        low, high = _span(cloud, device)
        assert all(n in checkins | rejected for n in range(max(low, 1), high + 1)), (low, high)


def test_a_long_first_check_is_counted_outside_the_write_transaction(cloud, monkeypatch):
    """Over COUNT_IN_WRITE_MAX_SEQS seqs to count: a read transaction counts them, and the
    heartbeat's write transaction uses that count only if no held row was removed meanwhile."""
    monkeypatch.setattr(uploads, "COUNT_IN_WRITE_MAX_SEQS", 100)
    device = cloud.enrol()
    _upload(cloud, device, range(1, 301))
    with _statements(monkeypatch) as log:
        assert _beat(cloud, device, 1, 300) is None
    counts = [n for n, sql in enumerate(log) if sql.endswith(") AS held")]
    begins = [n for n, sql in enumerate(log) if sql.startswith("BEGIN")]
    assert len(counts) == 1 and len(begins) == 3, log
    read_begin = max(n for n in begins if n < counts[0])
    assert log[read_begin] in ("BEGIN", "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"), log
    assert _span(cloud, device) == (1, 300)

    # A row lost after the read transaction counted it: the write transaction sees the loss and
    # counts again itself, so the lost seq is asked for at once.
    other = cloud.enrol("side door")
    _upload(cloud, other, range(1, 301), prefix="a000", boot="boot-side")
    real = db.kiosk_seqs_held
    lost: list[int] = []

    def count_then_lose(tx, device_id, low, high, also=()):
        held = real(tx, device_id, low, high, also)
        if not lost:
            lost.append(150)
            _lose(cloud, other, lost)  # another connection, after this count's snapshot
        return held

    monkeypatch.setattr(db, "kiosk_seqs_held", count_then_lose)
    assert _beat(cloud, other, 1, 300, boot_id="boot-side") == 150
    assert _span(cloud, other) == (1, 149)


def test_anchors_close_together_in_one_heartbeat_are_stored_once(cloud):
    device = cloud.enrol()
    at = "2026-05-01T11:00:00.000000Z"
    anchors = [
        {"boot_id": BOOT, "monotonic_ns": mono * SEC, "server_time": at}
        for mono in (200, 0, 30, 61, 61)
    ] + [{"boot_id": "boot-0", "monotonic_ns": 30 * SEC, "server_time": at}]
    cloud.heartbeat(device, anchors=anchors, monotonic_ns=100 * SEC)
    with cloud.database.read() as tx:
        assert [m // SEC for m, _ in db.anchors_around(tx, device.id, BOOT, 0, 500 * SEC)] == [
            0,
            61,
            200,
        ], "30, the second 61 and the heartbeat's own (100) are within a minute of one stored"
        assert [m // SEC for m, _ in db.anchors_around(tx, device.id, "boot-0", 0, SEC)] == [30]
        # The nearest anchor on either side of a range comes with those in it.
        assert [
            m // SEC for m, _ in db.anchors_around(tx, device.id, BOOT, 70 * SEC, 80 * SEC)
        ] == [
            61,
            200,
        ]


# -- authentication inside the request's transaction ---------------------------------------------


def test_a_bad_token_is_401_before_a_bad_body_is_400_or_413(cloud):
    device = cloud.enrol()
    nobody = Device("dev_x", "ffd_" + "x" * 40, cloud.gym_id)
    too_many = {"items": [make_item(n) for n in range(1, MAX_BATCH_ITEMS + 2)]}
    for body in (b"not json", b'{"items": 7}'):
        for path in ("/v1/checkins", "/v1/heartbeat"):
            answer = cloud.client.post(path, content=body, headers=nobody.headers)
            assert answer.status_code == 401, (path, body)
            assert "unknown or revoked device token" in answer.json()["detail"]
            assert cloud.client.post(path, content=body, headers=device.headers).status_code == 400
    assert cloud.client.post("/v1/checkins", json=too_many, headers=nobody.headers).status_code == (
        401
    )
    assert cloud.client.post("/v1/checkins", json=too_many, headers=device.headers).status_code == (
        413
    )
    huge = b"x" * (2 << 20)
    assert cloud.client.post("/v1/heartbeat", content=huge, headers=nobody.headers).status_code == (
        401
    )
    assert cloud.client.post("/v1/heartbeat", content=huge, headers=device.headers).status_code == (
        413
    )
    bare = cloud.client.post("/v1/heartbeat", content=b"not json")
    assert bare.status_code == 401 and "missing bearer token" in bare.json()["detail"]

    cloud.ok("POST", f"/devices/{device.id}/revoke")
    assert cloud.upload(device, [make_item(1)]).status_code == 401
    refused = cloud.client.post("/v1/heartbeat", json=heartbeat_body(), headers=device.headers)
    assert refused.status_code == 401
    with cloud.database.read() as tx:
        assert db.checkin_counts(tx, [device.id]) == {}, "nothing of a refused request is kept"


# -- round trips -------------------------------------------------------------------------------------


@contextlib.contextmanager
def _statements(monkeypatch) -> Iterator[list[str]]:
    """Every statement sent to the database meanwhile (BEGIN and COMMIT included; a batch of
    rows sent at once is one): the round trips. The statements still run."""
    log: list[str] = []
    execute, run_many = db.Tx._execute, db.Tx.run_many

    def logged_execute(self, sql, params):
        log.append(" ".join(sql.split()))
        return execute(self, sql, params)

    def logged_run_many(self, sql, rows):
        rows = [tuple(r) for r in rows]
        if rows:
            log.append(" ".join(sql.split()))
        return run_many(self, sql, rows)

    with monkeypatch.context() as patch:
        patch.setattr(db.Tx, "_execute", logged_execute)
        patch.setattr(db.Tx, "run_many", logged_run_many)
        yield log


def test_round_trips_per_device_request_are_pinned(cloud, monkeypatch):
    """A door's round at rest: the idle pull is the token's one statement; a heartbeat is one
    write transaction of five statements (the token, the anchor look-up, the device's row written
    once, BEGIN and COMMIT), six when the door synced rows since its last one (their count); an
    upload of one check-in is seven. A regression shows here."""
    device = cloud.enrol()
    version, rows = cloud.pull_all(device)
    checksum, count = replica_checksum(rows)
    anchor = {"boot_id": BOOT, "monotonic_ns": SEC, "server_time": "2026-05-01T12:00:00.000000Z"}
    beat = {
        "replica_version": version,
        "replica_checksum": checksum,
        "replica_count": count,
        "anchors": [anchor],
    }
    cloud.upload_ok(device, [make_item(1)], clock=(BOOT, SEC))
    assert _beat(cloud, device, 1, 1, monotonic_ns=2 * SEC, **beat) is None
    idle = device.headers | {"If-None-Match": f'"v{version}"'}

    cloud.clock.advance(30)
    with _statements(monkeypatch) as log:
        answer = cloud.client.get("/v1/replica/changes", params={"since": version}, headers=idle)
        assert answer.status_code == 304
    assert len(log) == 1, log

    cloud.clock.advance(30)
    with _statements(monkeypatch) as log:
        assert _beat(cloud, device, 1, 1, monotonic_ns=3 * SEC, **beat) is None
    assert len(log) == 5, log

    cloud.clock.advance(30)
    with _statements(monkeypatch) as log:
        cloud.upload_ok(
            device, [make_item(2, mono=4 * SEC)], clock=(BOOT, 5 * SEC), anchors=[anchor]
        )
    assert len(log) == 7, log

    cloud.clock.advance(30)
    with _statements(monkeypatch) as log:
        assert _beat(cloud, device, 1, 2, monotonic_ns=6 * SEC, **beat) is None
    assert len(log) == 6, log
    assert sum(sql.endswith(") AS held") for sql in log) == 1

    # With an occupancy report: still the one write of the device's row.
    occupancy = {"now": 3, "entries_today": 5, "exits_today": 2, "max_today": 4, "capacity": None}
    cloud.clock.advance(30)
    with _statements(monkeypatch) as log:
        _beat(cloud, device, 1, 2, monotonic_ns=7 * SEC, occupancy=occupancy, **beat)
    assert len(log) == 5, log
    assert cloud.ok("GET", f"/devices/{device.id}")["occupancy"]["now"] == 3
