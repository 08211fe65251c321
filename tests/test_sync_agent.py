"""The sync agent (kiosk.sync.agent) against the fake cloud: push, pull, snapshot, heartbeat, retries and
the recorded status. A real store on disk, the real client over ``httpx.MockTransport``, a
simulated clock; every wait is recorded instead of slept."""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from datetime import timedelta

import httpx
import pytest

from fakecloud import START, TOKEN, FakeCloud, Fault
from kiosk.core.clock import SimClock
from kiosk.core.model import Checkin, ClockQuality, Decision, EventKind, Now, Reason
from kiosk.data.control import ControlStore, OwnerRequest, RequestKind, RequestState
from kiosk.data.store import Store
from kiosk.sync.agent import OFFLINE, RUNNING, STOPPED, SyncAgent, SyncSettings
from kiosk.sync.client import CloudClient
from sync.protocol import PROTOCOL_VERSION, Anchor, utc_text

BOOT = "boot-1"


def checkin_by_id(store: Store, checkin_id: str) -> Checkin | None:
    """The journal's row ``checkin_id`` as ``recent_checkins`` reads it back, or None."""
    return next(
        (c for c in store.recent_checkins(store.checkin_count()) if c.id == checkin_id), None
    )


def request_by_id(control: ControlStore, request_id: int) -> OwnerRequest | None:
    """Request ``request_id`` as ``recent_requests`` lists it, or None."""
    return next((r for r in control.recent_requests(10_000) if r.id == request_id), None)


class Sleeper:
    """Records every wait and moves the simulated clock; sets ``stop`` after ``limit`` waits."""

    def __init__(self, clock: SimClock, stop: threading.Event, limit: int = 1000) -> None:
        self.clock, self.stop, self.limit = clock, stop, limit
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> bool:
        self.waits.append(seconds)
        self.clock.advance(seconds)
        if len(self.waits) >= self.limit:
            self.stop.set()
        return self.stop.is_set()


class Device:
    """A store, a client and an agent wired to a fake cloud."""

    def __init__(self, tmp_path, *, busy_timeout_ms: int = 5000, **settings) -> None:
        self.cloud = FakeCloud()
        self.clock = SimClock(START, quality=ClockQuality.NTP_SYNCED, boot=BOOT)
        self.store = Store.open(tmp_path / "kiosk.db", busy_timeout_ms=busy_timeout_ms)
        self.client = CloudClient(
            "https://cloud.test", TOKEN, transport=self.cloud.transport, clock=self.clock
        )
        self.stop = threading.Event()
        self.sleeper = Sleeper(self.clock, self.stop)
        self.agent = SyncAgent(
            self.store, self.client, SyncSettings(**settings), self.clock, sleep=self.sleeper
        )

    def checkin(self, member="m1", membership="ms1", classes=0, door="front", reason=None):
        reason = reason or (Reason.CLASS_PACK if classes else Reason.SUBSCRIPTION)
        decision = Decision(reason.verdict, reason, member, membership, classes)
        now = Now(self.clock.wall(), self.clock.monotonic_ns(), BOOT, ClockQuality.NTP_SYNCED)
        self.clock.advance(1)
        return self.store.append_checkin(decision, door_id=door, replica_version=0, now=now)

    def states(self) -> dict[str, int]:
        return self.store.counts_by_state()


@pytest.fixture
def device(tmp_path):
    dev = Device(tmp_path)
    dev.cloud.seed_gym(members=3)
    yield dev
    dev.store.close()


def synced(device: Device) -> None:
    report = device.agent.cycle()
    assert report.ok, report.error


# -- push ------------------------------------------------------------------------------------------


def test_push_marks_each_row_by_its_own_answer(device):
    ok_rows = [device.checkin() for _ in range(3)]
    bad = device.checkin(door="front door!")  # not a protocol id: the cloud rejects the item
    after_bad = device.checkin()
    # The cloud already has one (its acknowledgement was lost): answered duplicate.
    device.cloud.checkins[ok_rows[0].id] = ({}, None)
    report = device.agent.cycle()
    assert report.ok and (report.pushed, report.rejected) == (4, 1)
    assert device.states() == {"pending": 0, "synced": 4, "rejected": 1}
    assert checkin_by_id(device.store, bad.id).sync_state.value == "rejected"
    assert checkin_by_id(device.store, after_bad.id).sync_state.value == "synced"  # not blocked
    # A rejected row is kept and never sent again.
    device.agent.cycle()
    sent = [i["id"] for body in device.cloud.uploads for i in body["items"]]
    assert sent.count(bad.id) == 1 and len(device.cloud.uploads) == 1


def test_push_drains_oldest_first_in_batches(tmp_path):
    dev = Device(tmp_path, batch_size=4)
    dev.cloud.seed_gym()
    rows = [dev.checkin() for _ in range(10)]
    assert dev.agent.cycle().pushed == 10
    batches = [[i["seq"] for i in body["items"]] for body in dev.cloud.uploads]
    assert batches == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10]]
    assert all(checkin_by_id(dev.store, r.id).sync_state.value == "synced" for r in rows)


def test_a_batch_too_large_is_halved_down_to_what_the_cloud_takes(tmp_path):
    dev = Device(tmp_path, batch_size=8)
    dev.cloud.seed_gym()
    dev.cloud.max_items = 3
    for _ in range(7):
        dev.checkin()
    report = dev.agent.cycle()
    assert report.ok and report.pushed == 7
    sizes = [
        len(json.loads(r.content)["items"])
        for r in dev.cloud.requests
        if r.url.path == "/v1/checkins"
    ]
    assert sizes == [7, 4, 2, 2, 2, 1]  # 413, 413, then halves
    assert dev.states()["synced"] == 7


# -- the cloud refuses the device -----------------------------------------------------------------


def test_a_revoked_token_stops_the_agent_and_says_why(device):
    device.checkin()
    device.cloud.token = "ffd_" + "x" * 40  # the device's token was revoked
    report = device.agent.run(device.stop)
    assert report.fatal and "enrol the device again" in report.error
    assert device.sleeper.waits == []  # stopped at once, no retry loop
    status = device.store.sync_status()
    assert status["state"] == STOPPED and "401" in status["last_error"]
    assert TOKEN not in json.dumps(status)
    assert device.states()["pending"] == 1


@pytest.mark.parametrize(
    ("status", "protocol"),
    [(426, str(PROTOCOL_VERSION)), (200, str(PROTOCOL_VERSION + 1))],
    ids=["426", "newer"],
)
def test_a_cloud_that_does_not_speak_the_protocol_stops_the_agent(device, status, protocol):
    device.cloud.fail_next("/v1/replica/snapshot", status, body=b"{}", protocol=protocol)
    report = device.agent.run(device.stop)
    assert report.fatal
    assert device.store.sync_status()["state"] == STOPPED
    assert device.sleeper.waits == []


def test_a_cloud_that_moved_on_to_a_newer_protocol_says_to_update_the_door(device):
    device.checkin()
    newer = json.dumps({"error": "unsupported_protocol", "supported": [PROTOCOL_VERSION + 1]})
    device.cloud.fail_next("/v1/checkins", 426, body=newer.encode())
    report = device.agent.run(device.stop)
    assert report.fatal and device.sleeper.waits == []
    status = device.store.sync_status()
    assert status["state"] == STOPPED
    assert "update the door's software" in status["last_error"]
    assert f"speaks {PROTOCOL_VERSION + 1}" in status["last_error"]
    assert device.states()["pending"] == 1  # kept for the updated software to send


# -- retries ---------------------------------------------------------------------------------------


def test_retry_after_is_honoured_then_the_loop_goes_on(device):
    device.checkin()
    device.cloud.fail_next("/v1/checkins", 503, headers={"Retry-After": "42"})
    device.sleeper.limit = 3  # the retry wait, then two idle polls
    device.agent.run(device.stop)
    assert device.sleeper.waits[0] >= 42
    assert device.states()["synced"] == 1
    assert device.cloud.count("/v1/checkins") == 2


def test_failures_back_off_with_capped_full_jitter(device):
    device.checkin()
    device.cloud.fail_next("/v1/checkins", raise_error=httpx.ConnectError("down"), times=12)
    device.sleeper.limit = 12
    agent = SyncAgent(
        device.store,
        device.client,
        SyncSettings(backoff_max_s=20),
        device.clock,
        sleep=device.sleeper,
    )
    agent.run(device.stop)
    waits = device.sleeper.waits
    assert len(waits) == 12 and all(0 <= w <= 20 for w in waits)
    # Full jitter: the bound doubles per attempt (1, 2, 4, ...) up to the cap.
    assert all(w <= 2**n for n, w in enumerate(waits[:4]))
    status = device.store.sync_status()
    assert status["state"] == STOPPED and status["online"] is False  # stopped by the test
    assert "cannot reach the cloud" in status["last_error"]
    # Offline: the later steps were skipped, not tried against a dead network.
    assert device.cloud.count("/v1/replica/snapshot") == 0


@pytest.mark.parametrize(
    "body",
    [
        b"<html>captive portal</html>",
        b'{"results": [',
        json.dumps({"results": "nope", "server_time": "x"}).encode(),
        b"",
    ],
    ids=["html", "truncated", "wrong-shape", "empty"],
)
def test_bad_answers_are_survived_with_the_queue_intact(device, body):
    rows = [device.checkin() for _ in range(3)]
    device.cloud.fail_next("/v1/checkins", 200, body=body)
    report = device.agent.cycle()
    assert not report.ok and not report.fatal and "invalid answer" in report.error
    assert device.states() == {"pending": 3, "synced": 0, "rejected": 0}
    status = device.store.sync_status()
    assert status["state"] == OFFLINE and "push" in status["last_error"]
    # The pull and heartbeat still ran: a broken upload does not starve the replica.
    assert device.store.replica_info().version == device.cloud.version
    assert device.agent.cycle().ok
    assert [checkin_by_id(device.store, r.id).sync_state.value for r in rows] == ["synced"] * 3
    assert device.store.sync_status()["last_error"] is None


def test_an_oversized_answer_is_survived(device):
    huge = httpx.Response(
        200,
        content=b"{}",
        headers={"FitFlow-Protocol": str(PROTOCOL_VERSION), "Content-Length": str(64 << 20)},
    )
    device.cloud.faults.append(Fault("/v1/replica/snapshot", lambda request: huge))
    report = device.agent.cycle()
    assert not report.ok and "more than" in report.error
    assert device.store.replica_info().version == 0


# -- pull ------------------------------------------------------------------------------------------


def test_first_sync_takes_a_snapshot_then_idle_polls_cost_one_request(device):
    synced(device)
    assert device.store.replica_info().version == device.cloud.version
    count, checksum = device.store.replica_checksum()
    assert (count, checksum) == (
        device.cloud.checkpoint().count,
        device.cloud.checkpoint().checksum,
    )
    assert device.store.member_facts("m1", "front") is not None
    before = len(device.cloud.requests)
    device.clock.advance(30)
    report = device.agent.cycle()
    assert report.ok and report.pull == "not_modified"
    replica_requests = [
        r for r in device.cloud.requests[before:] if r.url.path.startswith("/v1/replica")
    ]
    assert len(replica_requests) == 1
    assert replica_requests[0].headers["If-None-Match"] == f'"v{device.cloud.version}"'
    # A 304 is a successful sync: the replica is fresh again.
    assert device.store.replica_info().synced_at == device.clock.wall()


def test_change_pages_are_staged_and_applied_at_the_checkpoint(tmp_path):
    dev = Device(tmp_path, page_rows=2)
    dev.cloud.seed_gym(members=2)
    synced = dev.agent.cycle()
    assert synced.ok
    dev.cloud.put("member", "m1", {**dev.cloud.rows[("member", "m1")].data, "status": "PAUSED"})
    dev.cloud.delete("membership", "ms0")
    dev.cloud.put("hours", "h-tue", {"weekday": 1, "open_minute": 0, "close_minute": 60})
    before = len(dev.cloud.requests)
    report = dev.agent.cycle()
    assert report.ok and report.pull == "changes"
    pages = [r for r in dev.cloud.requests[before:] if r.url.path == "/v1/replica/changes"]
    assert len(pages) == 2  # three changes, two per page
    assert dev.store.member_facts("m1", "front").member.status.value == "PAUSED"
    assert [m.id for m in dev.store.member_facts("m0", "front").memberships] == ["pack0"]
    assert dev.store.replica_checksum()[1] == dev.cloud.checkpoint().checksum
    assert dev.store.replica_info().version == dev.cloud.version
    dev.store.close()


def test_a_checksum_mismatch_leads_to_a_fresh_snapshot(device):
    synced(device)
    # The replica's record of its own checksum is wrong (a bug, a damaged file): the next
    # checkpoint, verified against it, cannot match.
    with sqlite3.connect(device.store.replica_file) as raw:
        raw.execute("UPDATE replica_meta SET value = '0123456789abcdef' WHERE key = 'checksum'")
    raw.close()
    device.cloud.put("hours", "h-wed", {"weekday": 2, "open_minute": 0, "close_minute": 60})
    report = device.agent.cycle()
    assert report.ok and report.pull == "snapshot"
    assert device.store.replica_checksum() == (
        device.cloud.checkpoint().count,
        device.cloud.checkpoint().checksum,
    )
    assert device.store.stored_replica_totals() == device.store.replica_checksum()


def test_rows_that_drifted_from_the_replicas_record_lead_to_a_fresh_snapshot(device):
    synced(device)
    # Rows changed behind the agent's back (a bug, an edited file). A change set is verified
    # against the replica's record, not a full read, so it still applies; the full checksum the
    # heartbeat computes for the new version shows the drift, and the next round re-pulls.
    with sqlite3.connect(device.store.replica_file) as raw:
        raw.execute("DELETE FROM closures")
    raw.close()
    device.cloud.put("hours", "h-wed", {"weekday": 2, "open_minute": 0, "close_minute": 60})
    assert device.agent.cycle().pull == "changes"
    assert device.store.sync_status()["resnapshot_due"] is True
    report = device.agent.cycle()
    assert report.ok and report.pull == "snapshot"
    assert device.store.replica_checksum() == (
        device.cloud.checkpoint().count,
        device.cloud.checkpoint().checksum,
    )
    assert device.store.sync_status()["resnapshot_due"] is False


def test_an_expired_cursor_leads_to_a_fresh_snapshot(device):
    synced(device)
    device.cloud.delete("member", "m2")
    device.cloud.delete("membership", "ms2")
    device.cloud.purge()  # the tombstones are gone: "changes since" cannot be answered
    device.cloud.put(
        "member", "m9", {**device.cloud.rows[("member", "m1")].data, "code_hash": "9" * 64}
    )
    report = device.agent.cycle()
    assert report.ok and report.pull == "snapshot"
    assert device.store.member_facts("m2", "front") is None
    assert device.store.member_facts("m9", "front") is not None
    assert device.store.replica_checksum()[1] == device.cloud.checkpoint().checksum


def test_changes_during_a_snapshot_are_applied_before_the_swap(tmp_path):
    dev = Device(tmp_path, page_rows=3)
    dev.cloud.seed_gym(members=3)
    changed = []

    def meanwhile(cloud: FakeCloud) -> None:
        if not changed:  # once, between the first and second page
            changed.append(cloud.delete("membership", "ms2"))
            cloud.delete("member", "m2")

    dev.cloud.between_pages = meanwhile
    report = dev.agent.cycle()
    assert report.ok and report.pull == "snapshot"
    assert dev.store.member_facts("m2", "front") is None
    assert dev.store.replica_checksum()[1] == dev.cloud.checkpoint().checksum
    dev.store.close()


def test_a_snapshot_of_an_idle_cloud_is_verified_against_a_checkpoint(tmp_path):
    dev = Device(tmp_path)
    dev.cloud.seed_gym()
    report = dev.agent.cycle()
    assert report.ok and report.pull == "snapshot"
    # The catch-up asks without If-None-Match, so it gets the checkpoint even with no changes.
    catch_up = [r for r in dev.cloud.requests if r.url.path.endswith("/changes")]
    assert [int(r.url.params["since"]) for r in catch_up] == [dev.cloud.version]
    assert "if-none-match" not in catch_up[0].headers
    assert dev.store.replica_checksum()[1] == dev.cloud.checkpoint().checksum
    dev.store.close()


def test_a_304_to_the_snapshot_catch_up_is_a_bad_answer_not_a_trusted_replica(tmp_path):
    dev = Device(tmp_path)
    dev.cloud.seed_gym()
    dev.cloud.always_304 = True
    report = dev.agent.cycle()
    assert not report.ok
    assert dev.store.replica_info().synced_at is None  # nothing swapped in unverified
    assert "304" in dev.store.sync_status()["last_error"]
    dev.store.close()


def test_a_snapshot_that_fails_mid_pages_keeps_the_old_replica_usable(tmp_path):
    dev = Device(tmp_path, page_rows=2)
    dev.cloud.seed_gym(members=3)
    assert dev.agent.cycle().ok

    def door_view():
        store = dev.store
        return (
            store.replica_info(),
            store.replica_checksum(),
            store.member_facts("m1", "front"),
            store.member_facts("m2", "front"),
            store.site_facts(),
        )

    before = door_view()
    dev.cloud.delete("membership", "ms2")
    dev.cloud.delete("member", "m2")
    dev.cloud.purge()  # 410 for the device's version: a snapshot is due
    dev.cloud.fail_next(
        "/v1/replica/snapshot",
        raise_error=httpx.ReadTimeout("stalled"),
        match=lambda request: "after=" in str(request.url),
    )
    report = dev.agent.cycle()
    assert not report.ok and "did not answer" in report.error
    assert door_view() == before  # half a snapshot never reaches the door
    report = dev.agent.cycle()
    assert report.ok and report.pull == "snapshot"
    assert dev.store.member_facts("m2", "front") is None
    assert dev.store.replica_checksum()[1] == dev.cloud.checkpoint().checksum
    dev.store.close()


def test_a_requested_snapshot_is_still_owed_after_a_restart(device):
    synced(device)
    device.cloud.resnapshot = True  # asked once, in the heartbeat's answer
    device.cloud.fail_next("/v1/replica/snapshot", raise_error=httpx.ConnectError("down"))
    assert not device.agent.cycle().ok
    restarted = SyncAgent(
        device.store, device.client, SyncSettings(), device.clock, sleep=device.sleeper
    )
    report = restarted.cycle()
    assert report.ok and report.pull == "snapshot"
    assert device.store.sync_status()["resnapshot_due"] is False
    assert restarted.cycle().pull == "not_modified"


# -- heartbeat -------------------------------------------------------------------------------------


def test_heartbeat_reports_the_journal_and_replica_and_anchors(device):
    device.checkin()
    device.cloud.fail_next("/v1/checkins", 500)
    device.agent.cycle()
    device.clock.advance(5)
    synced(device)
    beat = device.cloud.heartbeats[-1]
    assert (beat.last_seq, beat.synced_through_seq, beat.retained_from_seq) == (1, 1, 1)
    assert beat.backlog == 0 and beat.oldest_pending_age_s is None
    assert beat.replica_version == device.cloud.version
    assert beat.replica_checksum == device.cloud.checkpoint().checksum
    assert beat.boot_id == BOOT and beat.clock_quality == "ntp_synced"
    assert beat.last_error is None  # this round went well
    # Answers with the cloud's time became anchors: the newest of this boot is kept.
    anchor = device.store.latest_anchor(BOOT)
    assert anchor == Anchor(BOOT, device.clock.monotonic_ns(), device.cloud.now)
    assert beat.anchors and beat.anchors[0].boot_id == BOOT
    first_heartbeat = device.cloud.heartbeats[0]
    assert first_heartbeat.last_error and "HTTP 500" in first_heartbeat.last_error
    assert first_heartbeat.backlog == 1 and first_heartbeat.oldest_pending_age_s > 0


def test_resend_from_seq_puts_retained_rows_back_in_the_queue(device):
    rows = [device.checkin() for _ in range(4)]
    synced(device)
    # The cloud was restored from a backup and lost everything from seq 3 on.
    for row in rows[2:]:
        del device.cloud.checkins[row.id]
    device.cloud.resend_from_seq = 3
    report = device.agent.cycle()
    assert report.ok and report.requeued == 2
    assert set(device.cloud.checkins) == {r.id for r in rows}
    assert device.states() == {"pending": 0, "synced": 4, "rejected": 0}


# -- class uses between upload and pull ------------------------------------------------------------


def test_a_used_class_counts_until_the_replica_carries_it(device):
    synced(device)
    device.checkin(member="m0", membership="pack0", classes=1)
    device.cloud.fail_next("/v1/replica/changes", 503)
    device.agent.cycle()  # uploaded, but the pull failed
    facts = device.store.member_facts("m0", "front")
    assert device.states()["synced"] == 1
    pack = next(m for m in facts.memberships if m.id == "pack0")
    # The replica still says 5 left; the use is counted on top, so no free class.
    assert pack.remaining_classes == 5 and facts.pending_uses == {"pack0": 1}
    synced(device)
    facts = device.store.member_facts("m0", "front")
    pack = next(m for m in facts.memberships if m.id == "pack0")
    assert pack.remaining_classes == 4 and facts.pending_uses == {}


def test_a_duplicate_without_a_version_counts_until_the_next_pull(device):
    synced(device)
    used = device.checkin(member="m0", membership="pack0", classes=1)
    device.cloud.checkins[used.id] = ({}, None)  # acknowledged before, version unknown
    device.cloud.fail_next("/v1/replica/changes", 503)
    device.agent.cycle()
    assert device.store.member_facts("m0", "front").pending_uses == {"pack0": 1}
    synced(device)
    assert device.store.member_facts("m0", "front").pending_uses == {}


# -- the loop --------------------------------------------------------------------------------------


def test_the_loop_waits_the_interval_and_wakes_early_for_a_new_checkin(tmp_path):
    dev = Device(tmp_path, interval_s=30, wake_poll_s=1.0)
    dev.cloud.seed_gym()
    seqs = iter([0, 0, 0, 0, 1] + [1] * 100)
    dev.agent._wake = lambda: next(seqs)
    dev.sleeper.limit = 40
    dev.agent.run(dev.stop)
    waits = dev.sleeper.waits
    # First idle wait ends after the 4th poll (a check-in appeared), the next lasts 30 polls.
    assert waits[:4] == [1.0] * 4
    cycles = dev.cloud.count("/v1/heartbeat")
    assert cycles == 3 and len(waits) == 40
    assert dev.store.sync_status()["state"] == STOPPED
    dev.store.close()


def test_status_after_a_good_round(device):
    device.checkin()
    synced(device)
    status = device.store.sync_status()
    assert status["state"] == RUNNING and status["online"] is True
    assert status["last_error"] is None and status["backlog"] == 0
    assert status["oldest_pending_age_s"] is None
    assert status["replica_version"] == device.cloud.version
    for key in ("last_push_at", "last_pull_at", "last_heartbeat_at", "updated_at"):
        assert status[key] == "2026-05-01T12:00:01.000000Z", key


def test_old_synced_rows_are_pruned_once_the_clock_is_trusted(tmp_path):
    dev = Device(tmp_path, retention_days=7)
    dev.cloud.seed_gym()
    old = dev.checkin()
    synced(dev)
    dev.clock.advance(8 * 86400)
    dev.cloud.tick(8 * 86400)
    dev.clock.fixed_quality = ClockQuality.UNSYNCED
    synced(dev)
    assert checkin_by_id(dev.store, old.id) is not None  # an untrusted clock never prunes
    dev.clock.fixed_quality = ClockQuality.NTP_SYNCED
    synced(dev)
    assert checkin_by_id(dev.store, old.id) is None
    dev.store.close()


def test_a_busy_database_is_reported_not_raised(tmp_path):
    dev = Device(tmp_path, busy_timeout_ms=10)
    dev.cloud.seed_gym()
    dev.checkin()
    locker = sqlite3.connect(dev.store.path, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    report = dev.agent.cycle()
    locker.execute("ROLLBACK")
    locker.close()
    assert not report.ok and "locked" in report.error
    assert dev.agent.cycle().ok
    assert dev.states()["synced"] == 1
    dev.store.close()


def test_a_checkin_journaled_during_a_round_starts_the_next_round_at_once(tmp_path):
    dev = Device(tmp_path, interval_s=30, wake_poll_s=1.0)
    dev.cloud.seed_gym()
    # The journal's last seq as the agent reads it: 0 as the first round starts; a check-in lands
    # during that round, after its push read the queue, so the first poll already sees 1.
    seqs = iter([0] + [1] * 100)
    dev.agent._wake = lambda: next(seqs)
    dev.sleeper.limit = 3
    dev.agent.run(dev.stop)
    # One poll ended the first wait and a second round ran, rather than one round and a wait of
    # the whole interval.
    assert dev.cloud.count("/v1/heartbeat") == 2
    dev.store.close()


def test_an_unexpected_error_is_reported_and_the_agent_goes_on(device, monkeypatch):
    def broken(limit: int) -> None:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(device.store, "anchors", broken)
    report = device.agent.cycle()
    assert not report.ok and not report.fatal
    assert report.error == "heartbeat: unexpected error (ZeroDivisionError)"
    assert device.store.sync_status()["state"] == OFFLINE
    monkeypatch.undo()
    synced(device)


def test_the_heartbeat_checksum_is_recomputed_when_the_replica_moves_or_ages(device, monkeypatch):
    synced(device)
    synced(device)  # the first pull after a start also checks the replica carries row hashes
    calls = []
    real = device.store.replica_checksum
    monkeypatch.setattr(device.store, "replica_checksum", lambda: calls.append(1) or real())
    synced(device)
    synced(device)
    assert calls == []  # same version: the heartbeat reuses the totals
    device.clock.advance(601)
    synced(device)
    assert len(calls) == 1  # old enough to be checked again
    device.cloud.delete("member", "m3")
    synced(device)
    assert len(calls) == 2  # a new version
    assert device.cloud.heartbeats[-1].replica_checksum == device.cloud.checkpoint().checksum


def test_an_implausible_cloud_time_is_not_kept_as_an_anchor(device):
    from datetime import UTC, datetime

    synced(device)
    good = device.store.latest_anchor(BOOT)
    assert good is not None
    device.agent._record_anchor(
        Anchor(BOOT, good.monotonic_ns + 1, datetime(9999, 1, 1, tzinfo=UTC))
    )
    assert device.store.latest_anchor(BOOT) == good


# -- "sync now" from the owner page ----------------------------------------------------------------


class OwnerPage:
    """The owner page's side of the control file: clicks "sync now" during a chosen wait."""

    def __init__(self, dev: Device, tmp_path) -> None:
        self.dev = dev
        self.control = ControlStore.open(tmp_path / "control.sqlite")
        self.click_after_waits: int | None = None
        self.stop_after_uploads: int | None = None
        self.clicked: OwnerRequest | None = None

    def sleep(self, seconds: float) -> bool:
        self.dev.sleeper(seconds)
        if len(self.dev.sleeper.waits) == self.click_after_waits:
            self.clicked = self.control.submit(RequestKind.SYNC_NOW, now=self.dev.clock.wall())
        if (
            self.stop_after_uploads is not None
            and self.dev.cloud.count("/v1/checkins") >= self.stop_after_uploads
        ):
            self.dev.stop.set()
        return self.dev.stop.is_set()

    def agent(self, **settings) -> SyncAgent:
        return SyncAgent(
            self.dev.store,
            self.dev.client,
            SyncSettings(**settings),
            self.dev.clock,
            sleep=self.sleep,
            control=self.control,
        )


def test_sync_now_ends_the_idle_wait_and_is_finished_done(tmp_path):
    dev = Device(tmp_path)
    dev.cloud.seed_gym()
    page = OwnerPage(dev, tmp_path)
    agent = page.agent(interval_s=30, wake_poll_s=1.0)
    page.click_after_waits = 3
    dev.sleeper.limit = 6
    agent.run(dev.stop)
    # The first idle wait ended after the third poll (the click), not after 30 s, and a second
    # round ran at once; nothing slept for real (the simulated clock moved).
    assert dev.sleeper.waits[:3] == [1.0, 1.0, 1.0]
    assert dev.cloud.count("/v1/heartbeat") == 2
    done = request_by_id(page.control, page.clicked.id)
    assert done.state is RequestState.DONE
    assert done.result == f"synced: uploaded 0, replica version {dev.cloud.version}"
    assert [a.outcome for a in page.control.recent_audit()] == ["done", "requested"]
    page.control.close()
    dev.store.close()


def test_sync_now_cuts_the_backoff_short_and_is_finished_failed_with_the_error(tmp_path):
    dev = Device(tmp_path)
    dev.cloud.seed_gym()
    dev.checkin()
    # The cloud is failing and asks for two minutes' peace each time.
    dev.cloud.fail_next("/v1/checkins", 503, headers={"Retry-After": "120"}, times=5)
    page = OwnerPage(dev, tmp_path)
    agent = page.agent(wake_poll_s=1.0)
    page.click_after_waits = 3
    page.stop_after_uploads = 2
    agent.run(dev.stop)
    # Three one-second slices of the 120 s backoff, then the click started the next attempt.
    assert dev.sleeper.waits[:3] == [1.0, 1.0, 1.0]
    assert dev.cloud.count("/v1/checkins") == 2
    failed = request_by_id(page.control, page.clicked.id)
    assert failed.state is RequestState.FAILED
    assert failed.result.startswith("sync failed: push:") and "503" in failed.result
    assert dev.states()["pending"] == 1
    page.control.close()
    dev.store.close()


def test_sync_now_during_a_round_is_served_by_the_next_round(tmp_path):
    dev = Device(tmp_path)
    dev.cloud.seed_gym()
    page = OwnerPage(dev, tmp_path)
    agent = page.agent(interval_s=30, wake_poll_s=1.0)
    clicked, waits_at_heartbeat = [], []

    def click_during_the_heartbeat(request) -> bool:
        waits_at_heartbeat.append(len(dev.sleeper.waits))
        if not clicked:
            clicked.append(page.control.submit(RequestKind.SYNC_NOW, now=dev.clock.wall()))
        return False  # the heartbeat itself goes through

    dev.cloud.faults.append(Fault("/v1/heartbeat", None, click_during_the_heartbeat))
    dev.sleeper.limit = 2
    agent.run(dev.stop)
    # The click came during round 1, which did not answer it; round 2 started without a wait
    # and did.
    assert waits_at_heartbeat == [0, 0]
    answered = request_by_id(page.control, clicked[0].id)
    assert answered.state is RequestState.DONE and answered.result.startswith("synced:")
    page.control.close()
    dev.store.close()


def test_without_a_control_file_a_wait_and_a_backoff_are_single_sleeps(tmp_path):
    dev = Device(tmp_path, interval_s=30, wake_poll_s=1.0)
    dev.cloud.seed_gym()
    dev.checkin()
    dev.cloud.fail_next("/v1/checkins", 503, headers={"Retry-After": "120"})
    page = OwnerPage(dev, tmp_path)  # a click the agent has no way to see
    page.control.submit(RequestKind.SYNC_NOW, now=dev.clock.wall())
    dev.sleeper.limit = 3
    dev.agent.run(dev.stop)
    assert dev.sleeper.waits[0] >= 120  # the backoff, in one piece
    assert dev.sleeper.waits[1:] == [1.0, 1.0]  # the idle wait polls the journal as before
    assert page.control.has_pending(RequestKind.SYNC_NOW)
    page.control.close()
    dev.store.close()


def test_a_broken_control_file_never_stops_the_sync(tmp_path, caplog):
    dev = Device(tmp_path)
    dev.cloud.seed_gym()
    dev.checkin()
    page = OwnerPage(dev, tmp_path)
    agent = page.agent(interval_s=5, wake_poll_s=1.0)
    for suffix in ("", "-wal", "-shm"):
        path = page.control.path.with_name(page.control.path.name + suffix)
        if path.exists():
            path.write_bytes(b"garbage!" * 2000)
    dev.sleeper.limit = 12
    with caplog.at_level(logging.WARNING, logger="kiosk.sync.agent"):
        agent.run(dev.stop)
    assert dev.states()["synced"] == 1 and dev.cloud.count("/v1/heartbeat") >= 2
    warnings = [r for r in caplog.records if "control file" in r.getMessage()]
    assert len(warnings) == 1  # failing on every poll, logged at most every 30 s
    page.control.close()
    dev.store.close()


# -- the idle round's writes -----------------------------------------------------------------------


def watch_writes(device: Device, monkeypatch) -> list[tuple[str, bool]]:
    """Record each write the agent makes to the status, the anchors and the staging area, with
    whether it asked for it to be durable (synced to the storage)."""
    writes: list[tuple[str, bool]] = []

    def spy(name: str, *, takes_durable: bool) -> None:
        real = getattr(device.store, name)

        def call(*args, durable=True, **kwargs):
            writes.append((name, durable))
            if takes_durable:
                kwargs["durable"] = durable
            return real(*args, **kwargs)

        monkeypatch.setattr(device.store, name, call)

    for name in ("set_sync_status", "record_anchor"):
        spy(name, takes_durable=True)
    for name in ("discard_staged", "mark_replica_current"):
        spy(name, takes_durable=False)
    return writes


def synchronous_mode(store: Store) -> int:
    """The store connection's ``PRAGMA synchronous`` (2 = FULL): a per-connection setting, so it
    can only be read through the store's own connection."""
    return store._live().execute("PRAGMA synchronous").fetchone()[0]


def test_an_idle_round_writes_its_times_at_most_every_minute_and_never_syncs_them(
    device, monkeypatch
):
    synced(device)
    writes = watch_writes(device, monkeypatch)
    device.clock.advance(30)
    assert device.agent.cycle().pull == "not_modified"
    # Its only news is its times: no status write; the anchor is kept without a sync; a 304 has
    # no staged changes to drop. The replica's sync time is the one durable write left.
    assert writes == [("mark_replica_current", True), ("record_anchor", False)]
    stale = device.store.sync_status()["last_pull_at"]
    assert stale != utc_text(device.clock.wall())
    device.clock.advance(30)
    writes.clear()
    assert device.agent.cycle().ok
    # A minute after the last write, the times are written, once, without a sync.
    assert [w for w in writes if w[0] == "set_sync_status"] == [("set_sync_status", False)]
    status = device.store.sync_status()
    for key in ("last_pull_at", "last_heartbeat_at", "updated_at"):
        assert status[key] == utc_text(device.clock.wall()), key
    # Every other write of this store is still synced to the storage.
    assert synchronous_mode(device.store) == 2


def test_news_in_the_status_is_written_at_once_with_the_times(device):
    synced(device)
    device.clock.advance(5)
    device.cloud.fail_next("/v1/heartbeat", 503)
    assert not device.agent.cycle().ok
    status = device.store.sync_status()
    assert status["state"] == OFFLINE and "503" in status["last_error"]
    assert status["last_pull_at"] == utc_text(device.clock.wall())  # the times ride along
    device.clock.advance(5)
    device.checkin()
    synced(device)
    status = device.store.sync_status()
    assert status["state"] == RUNNING and status["last_error"] is None
    assert status["backlog"] == 0 and status["last_push_at"] == utc_text(device.clock.wall())


def test_a_round_that_serves_sync_now_writes_its_times(tmp_path):
    dev = Device(tmp_path)
    dev.cloud.seed_gym()
    page = OwnerPage(dev, tmp_path)
    agent = page.agent()
    assert agent.cycle().ok
    dev.clock.advance(10)
    assert agent.cycle().ok  # an idle round: its times wait
    assert dev.store.sync_status()["last_pull_at"] != utc_text(dev.clock.wall())
    dev.clock.advance(10)
    page.control.submit(RequestKind.SYNC_NOW, now=dev.clock.wall())
    assert agent.claim_sync_now()
    assert agent.cycle().ok
    # The owner asked and is looking: the status shows this very round.
    assert dev.store.sync_status()["last_pull_at"] == utc_text(dev.clock.wall())
    page.control.close()
    dev.store.close()


def test_an_agent_that_stops_writes_its_last_word(device):
    synced(device)
    device.clock.advance(10)
    device.sleeper.limit = 1
    device.agent.run(device.stop)
    status = device.store.sync_status()
    assert status["state"] == STOPPED and status["online"] is False
    assert status["last_pull_at"] == utc_text(START + timedelta(seconds=10))


# -- door events and occupancy (protocol 3) ----------------------------------------------------------


def _now(dev: Device) -> Now:
    return Now(dev.clock.wall(), dev.clock.monotonic_ns(), BOOT, ClockQuality.NTP_SYNCED)


def test_door_events_go_up_with_the_check_ins_in_one_seq_order(tmp_path):
    """Grants waiting for their passage, then confirmed, annulled and a tailgater: every journal
    row goes up once, in seq order across batches; the annulled class comes back in the cloud
    and reaches the replica."""
    dev = Device(tmp_path, batch_size=3)
    dev.cloud.seed_gym()
    synced(dev)
    use = Decision(Reason.CLASS_PACK.verdict, Reason.CLASS_PACK, "m0", "pack0", 1)
    walked = dev.store.append_checkin(
        use, door_id="front", replica_version=0, now=_now(dev), await_passage_s=5
    )
    went = dev.checkin()
    dev.clock.advance(6)
    dev.store.append_event(EventKind.ANNULLED, door_id="front", at=_now(dev), checkin_id=walked.id)
    dev.store.append_event(EventKind.TAILGATING, door_id="front", at=_now(dev))
    dev.store.append_event(EventKind.EXIT, door_id="front", at=_now(dev), checkin_id=went.id)
    bad = dev.store.append_event(EventKind.TAILGATING, door_id="front door!", at=_now(dev))
    last = dev.checkin()

    report = dev.agent.cycle()
    assert report.ok, report.error
    assert (report.pushed, report.rejected) == (6, 1)
    sent = [(i["seq"], i["kind"]) for body in dev.cloud.uploads for i in body["items"]]
    assert sent == [
        (1, "checkin"), (2, "checkin"), (3, "annulled"), (4, "tailgating"), (5, "exit"),
        (6, "tailgating"), (7, "checkin"),
    ]  # fmt: skip
    assert [len(body["items"]) for body in dev.cloud.uploads] == [3, 3, 1]
    assert dev.store.event_counts_by_state() == {"pending": 0, "synced": 3, "rejected": 1}
    assert dev.states() == {"pending": 0, "synced": 3, "rejected": 0}
    assert bad.id not in dev.cloud.events and last.id in dev.cloud.checkins
    # Charged once, given back once: the pack is where it started, on the door too.
    assert dev.cloud.rows[("membership", "pack0")].data["remaining_classes"] == 5
    synced(dev)
    assert dev.store.journal_position().backlog == 0
    assert len(dev.cloud.events) == 3, "nothing sent twice"


def _occupancy_report(**changes) -> dict:
    counts = {"now": 4, "entries_today": 9, "exits_today": 5, "max_today": 6, "capacity": 30}
    return {"state": "running", "occupancy": counts | changes}


def test_the_heartbeat_carries_the_scanners_fresh_occupancy(tmp_path):
    dev = Device(tmp_path)
    dev.cloud.seed_gym()
    page = OwnerPage(dev, tmp_path)
    agent = page.agent()

    def beat(report: dict | None, age_s: float = 1.0):
        if report is not None:
            at = dev.clock.wall() - timedelta(seconds=age_s)
            page.control.publish_health("scanner", report, now=at)
        assert agent.cycle().ok
        return dev.cloud.heartbeats[-1].occupancy

    assert beat(None) is None, "no scanner report yet"
    sent = beat(_occupancy_report())
    assert (sent.now, sent.entries_today, sent.exits_today, sent.max_today) == (4, 9, 5, 6)
    assert sent.capacity == 30
    assert beat(_occupancy_report(capacity=None)).capacity is None
    assert beat(_occupancy_report(), age_s=120) is None, "a quiet scanner's count is not news"
    assert beat(_occupancy_report() | {"state": "stopped"}) is None
    assert beat({"state": "running"}) is None, "a scanner that does not count"
    assert beat(_occupancy_report(now=-3)) is None, "a broken report is not sent"
    # Without a control file the heartbeat simply has none.
    assert dev.agent.cycle().ok
    assert dev.cloud.heartbeats[-1].occupancy is None
