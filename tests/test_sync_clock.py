"""AnchoredClock (kiosk.core.clock): the door tells the cloud's time from the sync agent's anchors while
the Pi's clock is not NTP-synced, reads the anchor rarely, and never lets a wrong wall clock revive
an expired membership."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from devtools.seed import demo_snapshot
from fakes import Scene
from kiosk.core.clock import AnchoredClock, SimClock
from kiosk.core.model import ClockQuality, PolicySettings, Reason
from kiosk.data.store import Store
from kiosk.door.loop import ScannerSettings
from rig import ALICE, Rig
from sync.protocol import Anchor

TRUE_NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def unsynced(start: datetime = EPOCH) -> SimClock:
    return SimClock(start, quality=ClockQuality.UNSYNCED, boot="boot-1")


def test_wall_time_runs_from_the_anchor_of_this_boot():
    base = unsynced()
    anchors = {"boot-1": Anchor("boot-1", base.monotonic_ns(), TRUE_NOW)}
    clock = AnchoredClock(base, anchors.get)
    base.advance(90)
    assert clock.wall() == TRUE_NOW + timedelta(seconds=90)
    assert clock.quality() is ClockQuality.SERVER_ANCHORED
    assert (clock.boot_id, clock.monotonic_ns()) == ("boot-1", base.monotonic_ns())
    # Once NTP syncs, the kernel's clock wins.
    base.fixed_quality = ClockQuality.NTP_SYNCED
    assert clock.wall() == base.wall() and clock.quality() is ClockQuality.NTP_SYNCED


def test_without_an_anchor_of_this_boot_the_base_clock_is_used():
    base = unsynced()
    other_boot = {"boot-1": Anchor("boot-0", 5, TRUE_NOW)}  # a store would never return it
    for source in ({}.get, other_boot.get):
        clock = AnchoredClock(base, source)
        assert clock.wall() == base.wall() and clock.quality() is ClockQuality.UNSYNCED


def test_the_anchor_is_read_rarely_and_a_failed_read_keeps_the_last_one():
    base = unsynced()
    reads: list[str] = []
    answers = [Anchor("boot-1", base.monotonic_ns(), TRUE_NOW), RuntimeError("database locked")]

    def anchor_for(boot: str) -> Anchor:
        reads.append(boot)
        answer = answers[min(len(reads), len(answers)) - 1]
        if isinstance(answer, Exception):
            raise answer
        return answer

    clock = AnchoredClock(base, anchor_for, refresh_every_s=60)
    for _ in range(100):  # a hundred decisions within a minute: one read
        clock.wall()
        clock.quality()
        base.advance(0.5)
    assert reads == ["boot-1"]
    base.advance(11)
    assert clock.wall() == TRUE_NOW + timedelta(seconds=61)  # re-read failed, anchor kept
    assert len(reads) == 2 and clock.quality() is ClockQuality.SERVER_ANCHORED
    clock.refresh()
    assert len(reads) == 3


def _door(tmp_path, clock: SimClock, snapshot, *, anchored_at: datetime | None, scene: Scene):
    store = Store.open(tmp_path / "kiosk.db")
    store.replace_replica(snapshot)
    if anchored_at is not None:
        anchor = Anchor(clock.boot_id, clock.monotonic_ns(), anchored_at)
        store.record_anchor(anchor, recorded_at=clock.wall())
    rig = Rig(tmp_path, scene, store=store, clock=clock)
    rig.loop.clock = AnchoredClock(clock, store.latest_anchor)
    # A replica weeks old must not be what decides here: only the time is under test.
    rig.loop.settings = replace(rig.loop.settings, policy=PolicySettings(stale_after_hours=8760))
    return rig


def test_a_door_whose_clock_says_1970_decides_on_the_anchored_time(tmp_path):
    snapshot = replace(demo_snapshot(TRUE_NOW, "UTC"), synced_at=None)
    for anchored in (False, True):
        folder = tmp_path / str(anchored)
        clock = unsynced()
        rig = _door(folder, clock, snapshot, anchored_at=TRUE_NOW if anchored else None,
                    scene=Scene().add([ALICE], 3))  # fmt: skip
        rig.run()
        (outcome,) = rig.outcomes
        if not anchored:
            assert outcome.decision.reason is Reason.CLOCK_UNTRUSTED
            continue
        assert outcome.decision.reason is Reason.SUBSCRIPTION
        checkin = outcome.checkin
        assert checkin.clock_quality is ClockQuality.SERVER_ANCHORED
        assert abs(checkin.wall_time - TRUE_NOW) < timedelta(seconds=1)
        rig.store.close()


def test_a_clock_that_stepped_back_never_revives_an_expired_membership(tmp_path):
    # Alice's subscription runs 30 days either side of TRUE_NOW. The last sync was 20 days after
    # TRUE_NOW (the floor); it is now 40 days after, her subscription has ended, and the Pi's
    # clock has fallen back to 1970.
    snapshot = replace(demo_snapshot(TRUE_NOW, "UTC"), synced_at=TRUE_NOW + timedelta(days=20))
    reasons = {}
    for anchored in (False, True):
        clock = unsynced()
        rig = _door(tmp_path / str(anchored), clock, snapshot,
                    anchored_at=TRUE_NOW + timedelta(days=40) if anchored else None,
                    scene=Scene().add([ALICE], 3))  # fmt: skip
        rig.run()
        reasons[anchored] = rig.outcomes[0].decision.reason
        rig.store.close()
    # The floor alone stops at the last known time, where she was still paid up; the anchor
    # knows better.
    assert reasons == {False: Reason.SUBSCRIPTION, True: Reason.NO_VALID_MEMBERSHIP}


def test_the_door_reads_a_new_anchor_when_its_replica_changes(tmp_path):
    clock = unsynced()
    snapshot = replace(demo_snapshot(TRUE_NOW, "UTC"), synced_at=None)
    rig = _door(tmp_path, clock, snapshot, anchored_at=None,
                scene=Scene().add([ALICE], 3).add([], 200).add([ALICE], 3))  # fmt: skip
    settings: ScannerSettings = rig.loop.settings
    rig.loop.settings = replace(settings, policy=replace(settings.policy, passback_minutes=0))
    first = rig.loop
    outcomes = []
    while not outcomes:
        outcomes = first.step()
    assert outcomes[0].decision.reason is Reason.CLOCK_UNTRUSTED
    # The agent syncs: an anchor, and a replica with a new sync time.
    rig.store.record_anchor(
        Anchor(clock.boot_id, clock.monotonic_ns(), TRUE_NOW), recorded_at=EPOCH
    )
    rig.store.replace_replica(replace(snapshot, synced_at=TRUE_NOW))
    rig.run()
    assert [o.decision.reason for o in rig.outcomes] == [
        Reason.CLOCK_UNTRUSTED,
        Reason.SUBSCRIPTION,
    ]
    rig.store.close()


def test_an_implausible_cloud_time_is_ignored_and_never_crashes_the_clock():
    """A broken or hostile answer (year 9999, year 1) must not become the door's time."""
    base = unsynced(TRUE_NOW)
    for absurd in (datetime(9999, 12, 31, 23, 59, tzinfo=UTC), datetime(1, 1, 1, tzinfo=UTC)):
        anchors = {"boot-1": Anchor("boot-1", base.monotonic_ns(), absurd)}
        clock = AnchoredClock(base, anchors.get)
        base.advance(3600)
        assert clock.wall() == base.wall()
        assert clock.quality() is ClockQuality.UNSYNCED


def test_a_good_anchor_survives_a_later_absurd_one():
    base = unsynced()
    answers = [Anchor("boot-1", base.monotonic_ns(), TRUE_NOW)]
    clock = AnchoredClock(base, lambda boot: answers[-1], refresh_every_s=1)
    assert clock.wall() == TRUE_NOW
    answers.append(Anchor("boot-1", base.monotonic_ns(), datetime(9999, 12, 31, tzinfo=UTC)))
    base.advance(5)
    assert clock.wall() == TRUE_NOW + timedelta(seconds=5)


def test_a_floor_from_a_clock_that_ran_a_year_ahead_does_not_outrank_the_cloud_time(tmp_path):
    """Rows journaled while the unsynced clock ran a year ahead put the clock floor a year ahead.
    Unanchored, the door fails safe at the floor (Alice is refused); anchored, it
    decides at the cloud's time and admits her."""
    from kiosk.core.model import Decision, Now, Verdict

    snapshot = replace(demo_snapshot(TRUE_NOW, "UTC"), synced_at=None)
    reasons = {}
    for anchored in (False, True):
        folder = tmp_path / str(anchored)
        folder.mkdir()
        with Store.open(folder / "kiosk.db") as store:
            ahead = Now(TRUE_NOW + timedelta(days=365), 1, "boot-0", ClockQuality.UNSYNCED)
            store.append_checkin(Decision(Verdict.DENIED, Reason.UNKNOWN_CODE), door_id="front",
                                 replica_version=1, now=ahead)  # fmt: skip
        clock = unsynced(TRUE_NOW)
        rig = _door(folder, clock, snapshot, anchored_at=TRUE_NOW if anchored else None,
                    scene=Scene().add([ALICE], 3))  # fmt: skip
        rig.run()
        reasons[anchored] = rig.outcomes[0].decision.reason
        rig.store.close()
    assert reasons[False].verdict is Verdict.DENIED  # at the floor: ended, or a stale replica
    assert reasons[True] is Reason.SUBSCRIPTION
