"""The door loop: debounce, commit-then-act, feedback, stale camera, relay release on every exit."""

from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import threading
from datetime import timedelta

import pytest

from fakes import FakeDecoder, Scene
from hardware.fakes.signal import RecordingSignal
from hardware.gpio.relay import RelayDoor
from kiosk.core.model import Reason, Verdict
from kiosk.data.control import (
    ControlError,
    ControlStore,
    OwnerRequest,
    RequestKind,
    RequestState,
)
from kiosk.data.database import StoreError
from kiosk.data.store import Store
from kiosk.door.loop import CONTROL_BUSY_TIMEOUT_MS, DoorLoop, open_control_store, stop_on_signals
from rig import ALICE, BOB, CAROL, Rig
from sync.protocol import utc_text


def test_a_code_held_in_view_is_decided_once(tmp_path):
    rig = Rig(tmp_path, Scene().add([ALICE], frames=90))  # three seconds in view at 30 fps
    rig.run()
    assert [o.decision.reason for o in rig.outcomes] == [Reason.SUBSCRIPTION]
    assert rig.store.checkin_count() == 1


def test_a_different_code_is_decided_immediately(tmp_path):
    rig = Rig(tmp_path, Scene().add([ALICE], 5).add([BOB], 5))
    rig.run()
    assert [o.decision.reason for o in rig.outcomes] == [Reason.SUBSCRIPTION, Reason.CLASS_PACK]
    assert [o.checkin.seq for o in rig.outcomes] == [1, 2]


def test_same_code_after_the_cooldown_is_a_new_scan_and_meets_passback(tmp_path):
    scene = Scene().add([ALICE], 5).add([], 4 * 30).add([ALICE], 5)  # 4 s away, cooldown 3 s
    rig = Rig(tmp_path, scene)
    rig.run()
    assert [o.decision.reason for o in rig.outcomes] == [Reason.SUBSCRIPTION, Reason.PASSBACK]
    assert [o.relay_ms for o in rig.outcomes] == [500, 0]


def test_commit_happens_before_the_relay_moves(tmp_path):
    """At the instant the relay is driven, the granted row is already durable: a second connection
    (another process, in effect) sees it."""
    seen_at_pulse = []

    class WitnessDoor(RelayDoor):
        def pulse(self, ms: int) -> int:
            with sqlite3.connect(tmp_path / "kiosk.db") as other:
                seen_at_pulse.append(
                    other.execute(
                        "SELECT decision FROM checkins ORDER BY seq DESC LIMIT 1"
                    ).fetchone()
                )
            return super().pulse(ms)

    rig = Rig(tmp_path, Scene().add([ALICE], 3))
    rig.loop.door = WitnessDoor(18, active_high=True, max_pulse_ms=3000, pin_factory=rig.pins,
                                timer=rig.timer)  # fmt: skip
    rig.run()
    assert seen_at_pulse == [("granted",)]


def test_no_journal_row_means_no_pulse(tmp_path):
    class FullStore(Store):
        def append_checkin(self, *args, **kwargs):
            raise StoreError("disk full: check-in NOT recorded")

    store = FullStore.open(tmp_path / "kiosk.db")
    rig = Rig(tmp_path, Scene().add([ALICE], 3), store=store)
    rig.run()
    assert rig.outcomes == []
    assert rig.relay_states() == [False]  # never switched on
    assert "fault" in rig.signal.shown


def test_an_unreadable_replica_shows_a_fault_and_the_door_keeps_running(tmp_path):
    class LockedStore(Store):
        def find_member_id(self, code_hash):
            raise StoreError("database is locked by another process for more than 5 s")

    store = LockedStore.open(tmp_path / "kiosk.db")
    rig = Rig(tmp_path, Scene().add([ALICE], 3).add([], 2), store=store)
    rig.run()  # returns normally at the end of the frames: the error did not stop the loop
    assert rig.outcomes == [] and rig.relay_states() == [False]
    assert rig.signal.shown.count("fault") == 1
    assert rig.loop.frames == 5


def test_malformed_and_unknown_codes_are_journaled_denials_without_a_pulse(tmp_path):
    hostile = b"\x1b[31m'; DROP TABLE checkins; --"
    rig = Rig(tmp_path, Scene().add([hostile], 3).add(["FF-NOBODY-0000"], 3))
    rig.run()
    assert [(o.decision.verdict, o.decision.reason) for o in rig.outcomes] == [
        (Verdict.DENIED, Reason.MALFORMED_CODE),
        (Verdict.DENIED, Reason.UNKNOWN_CODE),
    ]
    assert rig.relay_states() == [False]
    assert rig.signal.shown.count("denied") == 2
    assert rig.store.checkin_count() == 2


def test_feedback_patterns_follow_decisions(tmp_path):
    rig = Rig(tmp_path, Scene().add([ALICE], 2).add([CAROL], 2))
    rig.run()
    assert [p for p in rig.signal.shown if p in ("granted", "denied")] == ["granted", "denied"]


def test_stale_camera_shows_fault_and_starves_the_watchdog(tmp_path):
    # Frames 1-3 arrive, then 40 reads time out (4 s at 0.1 s each), then frames resume.
    stalls = set(range(4, 44))
    rig = Rig(tmp_path, Scene().add([], 3).add([], 3), stall_at=stalls)
    rig.run()
    assert "fault" in rig.signal.shown
    watchdogs = [m for m in rig.notifier.sent if m == "WATCHDOG=1"]
    # Rate-limited to one per second while frames arrive; none during the 4 s stall.
    assert len(watchdogs) == 2
    assert rig.notifier.sent[0].startswith("READY=1")
    assert rig.signal.shown[-1] == "idle"  # recovered when frames came back


def test_relay_released_on_normal_exit_while_pulsing(tmp_path):
    rig = Rig(tmp_path, Scene().add([ALICE], 2))  # the source ends while the relay is still on
    rig.run()
    assert rig.relay_states() == [False, True, False]


def test_relay_released_when_the_loop_raises(tmp_path):
    rig = Rig(tmp_path, Scene().add([ALICE], 2).add([CAROL], 2))

    class BrokenBuzzer(RecordingSignal):
        def show(self, pattern):
            if pattern == "denied":
                raise RuntimeError("buzzer driver crashed")
            super().show(pattern)

    rig.loop.signal = BrokenBuzzer()
    with pytest.raises(RuntimeError, match="buzzer driver crashed"):
        rig.run()  # the relay is still on from Alice's grant when Carol's denial blows up
    assert rig.relay_states() == [False, True, False]


def test_a_decoder_crash_is_a_missed_frame_not_a_dead_door(tmp_path):
    scene = Scene().add(["boom"], 3).add([ALICE], 2)
    rig = Rig(tmp_path, scene)

    class ExplodingDecoder(FakeDecoder):
        def decode(self, pixels):
            if scene.current == [b"boom"]:
                raise ValueError("image too small")
            return super().decode(pixels)

    rig.loop.reader = ExplodingDecoder(scene)
    rig.run()
    assert rig.loop.decode_errors == 3
    assert [o.decision.reason for o in rig.outcomes] == [Reason.SUBSCRIPTION]


def test_a_card_held_through_a_failed_commit_is_decided_once_the_store_recovers(tmp_path):
    class FlakyStore(Store):
        failures = 1

        def append_checkin(self, *args, **kwargs):
            if self.failures:
                self.failures -= 1
                raise StoreError("database is locked")
            return super().append_checkin(*args, **kwargs)

    store = FlakyStore.open(tmp_path / "kiosk.db")
    rig = Rig(tmp_path, Scene().add([ALICE], 60), store=store)  # held for 2 s
    rig.run()
    assert [o.decision.reason for o in rig.outcomes] == [Reason.SUBSCRIPTION]
    # Retried after the 1 s pause (30 frames), not on the very next frame.
    first_frame_ns = 1_000_000_000 + 1_000_000_000 // 30  # SimClock's start + one frame interval
    waited_s = (rig.outcomes[0].captured_ns - first_frame_ns) / 1e9
    assert 1.0 <= waited_s < 1.1
    assert rig.outcomes[0].checkin.seq == 1
    assert rig.signal.shown.count("fault") == 1


def test_relay_released_on_sigterm(tmp_path):
    """The real signal handler: SIGTERM arrives while the relay is on; the loop stops and releases."""
    scene = Scene().add([ALICE], 2).add([], 50)
    rig = Rig(tmp_path, scene)
    stop = threading.Event()
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    stop_on_signals(stop)
    real_read = rig.camera.read

    def read_then_sigterm(timeout_s):
        frame = real_read(timeout_s)
        if rig.camera.reads == 4:
            os.kill(os.getpid(), signal.SIGTERM)
        return frame

    rig.camera.read = read_then_sigterm
    try:
        rig.loop.run(stop)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    assert stop.is_set()
    assert scene.position < len(scene.steps)  # stopped early, by the signal
    assert rig.relay_states() == [False, True, False]
    assert "STOPPING=1" in rig.notifier.sent


def test_relay_pulse_ends_when_its_timer_fires(tmp_path):
    rig = Rig(tmp_path, Scene().add([ALICE], 1))
    rig.loop.step()
    assert rig.relay_states() == [False, True]
    rig.timer.fire_all()
    assert rig.relay_states() == [False, True, False]


def test_a_dead_relay_timer_is_backstopped_by_the_loop(tmp_path):
    rig = Rig(tmp_path, Scene().add([ALICE], 1).add([], 30))
    rig.loop.step()  # granted: relay on for 500 ms; the manual timer never fires
    for _ in range(30):  # one second of empty frames
        rig.loop.step()
    assert rig.relay_states() == [False, True, False]


# -- the owner page: health report and door tests ---------------------------------------------------

HEALTH_KEYS = {
    "door_id", "state", "started_at", "last_frame_at", "frames", "fps", "decode_ms_p50",
    "decode_ms_p95", "decode_errors", "clock_quality", "relay_open", "pulse_ms", "last_pulse_at",
    "last_decision_at", "last_verdict", "last_reason", "decisions", "events", "awaiting_passage",
    "occupancy",
}  # fmt: skip


def with_control(rig: Rig, tmp_path) -> ControlStore:
    folder = tmp_path / "control"
    folder.mkdir(exist_ok=True)
    control = ControlStore.open(folder / "control.sqlite")
    rig.loop.control = control
    return control


def request_by_id(control: ControlStore, request_id: int) -> OwnerRequest | None:
    """Request ``request_id`` as ``recent_requests`` lists it, or None."""
    return next((r for r in control.recent_requests(10_000) if r.id == request_id), None)


class SlowDecoder(FakeDecoder):
    """Takes 1, 2, ... 10 ms per frame in turn, on the simulated clock."""

    def __init__(self, scene: Scene, clock) -> None:
        super().__init__(scene)
        self.clock, self.calls = clock, 0

    def decode(self, pixels):
        self.calls += 1
        self.clock.advance((self.calls - 1) % 10 / 1000 + 0.001)
        return super().decode(pixels)


def test_health_is_published_every_two_seconds_with_the_spec_keys(tmp_path):
    scene = Scene().add([ALICE], 3).add([], 87)  # 90 frames at 30 fps
    rig = Rig(tmp_path, scene)
    control = with_control(rig, tmp_path)
    rig.loop.reader = SlowDecoder(scene, rig.clock)
    started_ns, started_wall = rig.clock.monotonic_ns(), rig.clock.wall()
    published = []
    for _ in range(80):
        rig.loop.step()
        report = control.health("scanner")
        if not published or report.updated_at != published[-1].updated_at:
            published.append(report)
    rig.run()  # the remaining frames, then the loop ends
    final = control.health("scanner")
    # Published at the first step, then every 2 s (monotonic) while scanning.
    assert [p.data["state"] for p in published] == ["scanning", "scanning"]
    gap = (published[1].updated_at - published[0].updated_at).total_seconds()
    assert 2.0 <= gap < 2.05
    assert final.pid == os.getpid()
    data = final.data
    assert set(data) == HEALTH_KEYS
    elapsed_s = (rig.clock.monotonic_ns() - started_ns) / 1e9
    assert data["state"] == "stopped" and data["door_id"] == "door-1"
    assert data["frames"] == 90 and data["decode_errors"] == 0
    assert data["fps"] == pytest.approx(90 / elapsed_s, abs=0.01)
    assert data["decode_ms_p50"] == 5.0 and data["decode_ms_p95"] == 10.0
    assert data["started_at"] == utc_text(started_wall)
    assert data["last_frame_at"] is not None and data["last_frame_at"] <= utc_text(rig.clock.wall())
    assert data["clock_quality"] == "ntp_synced"
    assert data["pulse_ms"] == 500 and data["relay_open"] is False  # released as the loop ended
    assert data["decisions"] == {"subscription": 1}
    assert (data["last_verdict"], data["last_reason"]) == ("granted", "subscription")
    assert data["last_pulse_at"] is not None and data["last_decision_at"] is not None
    # No passage input: the grant counts as an entry, nothing waits for a passage.
    assert data["occupancy"] == {
        "now": 1, "entries_today": 1, "exits_today": 0, "max_today": 1, "capacity": None,
    }  # fmt: skip
    assert data["events"] == {} and data["awaiting_passage"] == 0


def test_the_frame_rate_covers_the_last_ten_seconds(tmp_path):
    rig = Rig(tmp_path, Scene().add([], 450))  # 15 s of frames
    control = with_control(rig, tmp_path)
    rig.run()
    assert control.health("scanner").data["fps"] == pytest.approx(30.0, abs=0.2)
    assert control.health("scanner").data["decode_ms_p50"] == 0.0  # the fake decodes instantly


def test_a_stale_camera_is_published_at_once_and_so_is_its_return(tmp_path):
    # Frames 1-3 arrive, then 40 reads time out (4 s at 0.1 s each), then frames resume.
    rig = Rig(tmp_path, Scene().add([], 3).add([], 3), stall_at=set(range(4, 44)))
    control = with_control(rig, tmp_path)
    states = []
    for _ in range(46):
        rig.loop.step()
        state = control.health("scanner").data["state"]
        if not states or states[-1][0] != state:
            states.append((state, rig.camera.reads))
    # Stale after 2 s without a frame: read 3 was the last frame, read 23 the 20th timeout.
    assert states == [("scanning", 1), ("camera_stale", 23), ("scanning", 44)]


def test_a_door_test_pulses_the_relay_once_and_is_not_a_checkin(tmp_path):
    rig = Rig(tmp_path, Scene().add([], 30))
    control = with_control(rig, tmp_path)
    asked = control.submit(RequestKind.TEST_DOOR, now=rig.clock.wall(), client="192.0.2.9")
    rig.loop.step()
    assert rig.relay_states() == [False, True]
    assert rig.signal.shown[-1] == "granted"
    done = request_by_id(control, asked.id)
    assert done.state is RequestState.DONE and done.result == "relay pulsed for 500 ms"
    rig.timer.fire_all()
    rig.run()  # a second of frames and polls: no further pulse
    assert rig.relay_states() == [False, True, False]
    assert rig.store.checkin_count() == 0  # not a check-in
    assert control.health("scanner").data["last_pulse_at"] is not None
    assert control.health("scanner").data["decisions"] == {}


def test_two_clicks_in_one_poll_pulse_once_and_a_later_request_pulses_again(tmp_path):
    rig = Rig(tmp_path, Scene().add([], 60))
    control = with_control(rig, tmp_path)
    control.submit(RequestKind.TEST_DOOR, now=rig.clock.wall())
    control.submit(RequestKind.TEST_DOOR, now=rig.clock.wall())  # a double click
    for _ in range(30):  # one second: two polls
        rig.loop.step()
    assert rig.relay_states() == [False, True, False]  # one pulse of 500 ms
    control.submit(RequestKind.TEST_DOOR, now=rig.clock.wall())
    rig.run()
    assert rig.relay_states() == [False, True, False, True, False]
    assert [r.state for r in control.recent_requests()] == [RequestState.DONE] * 2


def test_a_door_test_older_than_a_minute_is_expired_not_pulsed(tmp_path):
    rig = Rig(tmp_path, Scene().add([], 30))
    control = with_control(rig, tmp_path)
    late = control.submit(RequestKind.TEST_DOOR, now=rig.clock.wall() - timedelta(seconds=61))
    rig.run()
    assert rig.relay_states() == [False]
    assert request_by_id(control, late.id).state is RequestState.EXPIRED


def test_a_door_test_on_a_dead_relay_is_failed_with_the_reason(tmp_path):
    rig = Rig(tmp_path, Scene().add([], 5))
    control = with_control(rig, tmp_path)
    rig.door.close()  # the relay driver is gone
    asked = control.submit(RequestKind.TEST_DOOR, now=rig.clock.wall())
    rig.run()
    failed = request_by_id(control, asked.id)
    assert failed.state is RequestState.FAILED
    assert "could not be pulsed" in failed.result and "closed" in failed.result


def test_a_broken_control_file_never_stops_the_door(tmp_path, caplog):
    rig = Rig(tmp_path, Scene().add([], 30).add([ALICE], 3).add([], 57))  # three seconds
    control = with_control(rig, tmp_path)
    for part in control.path.parent.iterdir():  # the file, its log and index: garbage
        part.write_bytes(b"garbage!" * 2000)
    with caplog.at_level(logging.WARNING, logger="kiosk.door.loop"):
        rig.run()
    assert [o.decision.reason for o in rig.outcomes] == [Reason.SUBSCRIPTION]
    assert rig.relay_states() == [False, True, False]
    warnings = [r for r in caplog.records if "control file" in r.getMessage()]
    # Failing on every poll for 3 s, logged once (at most every 30 s), with the file named.
    assert len(warnings) == 1 and str(control.path) in warnings[0].getMessage()


def test_no_member_data_reaches_the_health_report(tmp_path):
    rig = Rig(tmp_path, Scene().add([ALICE], 3).add([BOB], 3).add([CAROL], 3))
    control = with_control(rig, tmp_path)
    rig.run()
    with sqlite3.connect(control.path) as conn:
        (raw,) = conn.execute("SELECT data FROM health WHERE process = 'scanner'").fetchone()
    secrets = {ALICE, BOB, CAROL}
    for outcome in rig.outcomes:
        secrets |= {outcome.checkin.member_id, outcome.member_name, outcome.checkin.id}
    secrets.discard(None)
    assert len(rig.outcomes) == 3 and len(secrets) > 6
    assert not [s for s in secrets if s in raw]
    assert json.loads(raw)["decisions"] == {"subscription": 1, "class_pack": 1, "member_paused": 1}


# -- the control file: opened lazily, reopened when broken, never waited on for long ---------------


class Opener:
    """``open_control`` for the loop: fails while ``broken``, counts its calls."""

    def __init__(self, path) -> None:
        self.path, self.calls, self.broken = path, 0, True

    def __call__(self) -> ControlStore:
        self.calls += 1
        if self.broken:
            raise ControlError(f"cannot open the control file {self.path}: test")
        return open_control_store(self.path)


def test_a_control_file_missing_at_start_is_opened_later_at_most_every_30_s(tmp_path, caplog):
    rig = Rig(tmp_path, Scene().add([], 30 * 100))  # 100 s of frames
    opener = Opener(tmp_path / "control.sqlite")
    loop = DoorLoop(
        source=rig.camera, reader=rig.loop.reader, store=rig.store, door=rig.door,
        signal=rig.signal, clock=rig.clock, settings=rig.loop.settings, control=None,
        open_control=opener,
    )  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="kiosk.door.loop"):
        for _ in range(30 * 65):  # 65 s: tried at 30 s and at 60 s, both failing
            loop.step()
    assert opener.calls == 2 and loop.control is None
    assert len([r for r in caplog.records if "control file" in r.getMessage()]) == 2
    opener.broken = False
    loop.run(threading.Event())  # the rest: opened at 90 s, then reports
    assert opener.calls == 3 and loop.control is not None
    assert loop.control.health("scanner").data["state"] == "stopped"


def test_a_control_file_that_broke_is_reopened(tmp_path):
    rig = Rig(tmp_path, Scene().add([], 30 * 40).add([ALICE], 3))
    path = tmp_path / "control.sqlite"
    rig.loop.control = open_control_store(path)
    rig.loop.open_control = opener = Opener(path)
    opener.broken = False
    for _ in range(30):
        rig.loop.step()
    broken = rig.loop.control
    broken.close()  # every call now fails: as good as a damaged file
    for _ in range(60):
        rig.loop.step()
    assert rig.loop.control is None and opener.calls == 0  # dropped, not reopened at once
    rig.run()  # 30 s later it is opened again and the loop reports through it
    assert opener.calls == 1 and rig.loop.control is not broken
    assert [o.decision.reason for o in rig.outcomes] == [Reason.SUBSCRIPTION]
    assert rig.loop.control.health("scanner").data["decisions"] == {"subscription": 1}


def test_a_locked_control_file_holds_a_frame_for_milliseconds_and_is_kept(tmp_path):
    rig = Rig(tmp_path, Scene().add([], 30))
    path = tmp_path / "control.sqlite"
    control = rig.loop.control = open_control_store(path)
    rig.loop.open_control = Opener(path)
    rig.loop.step()
    with sqlite3.connect(path, isolation_level=None) as other:
        other.execute("BEGIN EXCLUSIVE")  # another process keeps the file locked
        rig.clock.advance(2.0)
        # Its health report is due and waits for the lock: the step returns while the lock is
        # still held, so it gave up after the control file's busy timeout (no wall-clock
        # figure: on a busy machine any step may take longer than the timeout itself).
        rig.loop.step()
        other.execute("ROLLBACK")
    assert rig.loop.control is control  # busy is not broken: kept
    with sqlite3.connect(path, isolation_level=None) as other:
        other.execute("BEGIN EXCLUSIVE")
        with pytest.raises(ControlError) as caught:
            control.publish_health("scanner", {}, now=rig.clock.wall())
        other.execute("ROLLBACK")
    assert caught.value.busy is True
    # The loop's control file waits milliseconds for a lock, not the control store's default.
    assert CONTROL_BUSY_TIMEOUT_MS <= 50
    assert f"for more than {CONTROL_BUSY_TIMEOUT_MS} ms" in str(caught.value)
