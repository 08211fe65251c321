"""The door loop with the turnstile talking back: grants confirmed by a passage or annulled at
their deadline, tailgating, exits, an exit-side scanner, the occupancy in the health report, the
capacity and the visit limit at the door, and grants left waiting by a restart.

A real store and the real passage adapter on gpiozero mock pins, stamped by the loop's simulated
clock; the camera is a scripted scene. Nothing sleeps: the clock moves a frame per frame.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from itertools import pairwise

from gpiozero.pins.mock import MockFactory

from devtools.seed import demo_snapshot
from fakes import Scene
from hardware.gpio.passage import GpioPassageSensor
from kiosk.core.clock import SimClock
from kiosk.core.model import Plan, PolicySettings, Reason, Verdict
from kiosk.data.control import ControlStore
from kiosk.data.database import StoreError
from kiosk.data.store import Store
from kiosk.door.loop import ScannerSettings
from rig import ALICE, BOB, CAROL, RELAY_PIN, Rig

ENTRY_PIN, EXIT_PIN = 5, 6
NOON = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)  # a Tuesday; the demo gym is always open
GRACE = "FF-GRACE-1007"  # staff
FPS = 30


def make(tmp_path, *, entry=True, exit=False, direction="entry", capacity=0, max_visit=0,
         store=None, clock=None, pins=None) -> Rig:  # fmt: skip
    """A door with the turnstile's entry (and exit) contact wired to mock pins."""
    clock = clock or SimClock(NOON, boot="boot-a")
    pins = pins or MockFactory()
    sensor = None
    if entry or exit:
        sensor = GpioPassageSensor(
            entry_pin=ENTRY_PIN if entry else None, exit_pin=EXIT_PIN if exit else None,
            pin_factory=pins, clock_ns=clock.monotonic_ns,
        )  # fmt: skip
    settings = ScannerSettings(
        door_id="door-1", pulse_ms=500, debounce_s=3.0, direction=direction,
        passage_timeout_s=5.0, max_visit_minutes=max_visit,
        policy=PolicySettings(timezone="UTC", capacity=capacity),
    )  # fmt: skip
    return Rig(tmp_path, Scene(), store=store, pins=pins, clock=clock, settings=settings,
               passage=sensor)  # fmt: skip


def turn(rig: Rig, pin: int = ENTRY_PIN) -> None:
    """The turnstile turns once: its PASS contact closes for 100 ms, then opens."""
    rig.pins.pin(pin).drive_low()
    rig.clock.advance(0.1)
    rig.pins.pin(pin).drive_high()


def wait(rig: Rig, seconds: float) -> None:
    """Nobody in front of the camera for ``seconds``."""
    rig.play([], round(seconds * FPS))


def events(rig: Rig) -> list[tuple[str, str | None]]:
    """The journal's door events, oldest first, as (kind, check-in id)."""
    return [(e.kind.value, e.checkin_id) for e in reversed(rig.store.door_events(1000))]


def pulses(rig: Rig) -> int:
    states = [s.state for s in rig.pins.pin(RELAY_PIN).states]
    return sum(1 for a, b in pairwise(states) if not a and b)


def occupancy(rig: Rig) -> dict:
    return rig.loop.occupancy().report()


# -- confirmed, annulled, tailgating ----------------------------------------------------------------


def test_a_passage_within_the_timeout_confirms_the_grant(tmp_path):
    rig = make(tmp_path)
    [alice] = rig.play([ALICE], 3)
    assert alice.decision.verdict is Verdict.GRANTED and alice.relay_ms == 500
    assert rig.loop.awaiting_passage == [alice.checkin.id]
    wait(rig, 1)
    turn(rig)
    wait(rig, 0.1)
    assert events(rig) == [("entry", alice.checkin.id)]
    assert rig.loop.awaiting_passage == [] and rig.store.passage_waits() == []
    [entry] = rig.events
    assert entry.monotonic_ns > alice.acted_ns  # the passage's own time, not the write's
    wait(rig, 10)
    assert events(rig) == [("entry", alice.checkin.id)]  # nothing more when its deadline passes


def test_no_passage_annuls_the_grant_once_and_a_late_passage_is_tailgating(tmp_path):
    rig = make(tmp_path)
    [alice] = rig.play([ALICE], 1)
    wait(rig, 4.9)
    assert events(rig) == []
    wait(rig, 0.5)  # the deadline (5 s) and the settling margin passed
    assert events(rig) == [("annulled", alice.checkin.id)]
    [annulled] = rig.events
    # Dated at its deadline, on both clocks.
    assert annulled.monotonic_ns == alice.checkin.monotonic_ns + 5_000_000_000
    assert annulled.wall_time == alice.checkin.wall_time + timedelta(seconds=5)
    wait(rig, 10)
    assert len(events(rig)) == 1  # annulled exactly once
    turn(rig)  # she comes back and pushes through: a passage with no grant, not her entry
    wait(rig, 0.1)
    assert events(rig) == [("annulled", alice.checkin.id), ("tailgating", None)]
    assert pulses(rig) == 1


def test_a_passage_with_nothing_pending_is_tailgating(tmp_path):
    rig = make(tmp_path)
    wait(rig, 0.5)
    turn(rig)
    wait(rig, 0.5)
    turn(rig)
    wait(rig, 0.5)
    assert events(rig) == [("tailgating", None), ("tailgating", None)]
    assert rig.store.checkin_count() == 0 and pulses(rig) == 0


def test_two_grants_then_one_passage_confirm_the_first_and_annul_the_second(tmp_path):
    rig = make(tmp_path)
    [alice] = rig.play([ALICE], 6)  # 0.2 s in view
    [bob] = rig.play([BOB], 6)
    assert rig.loop.awaiting_passage == [alice.checkin.id, bob.checkin.id]
    turn(rig)
    wait(rig, 0.1)
    assert events(rig) == [("entry", alice.checkin.id)]
    wait(rig, 5)  # Bob's deadline is 5 s after his grant
    assert events(rig) == [("entry", alice.checkin.id), ("annulled", bob.checkin.id)]


def test_the_door_decides_the_next_member_while_a_confirmation_is_pending(tmp_path):
    rig = make(tmp_path)
    [alice] = rig.play([ALICE], 2)
    decided = rig.play([CAROL], 2) + rig.play([BOB], 2)
    # Carol refused, Bob admitted and the relay pulsed for him, Alice still waiting meanwhile.
    assert [(o.decision.reason, o.relay_ms) for o in decided] == [
        (Reason.MEMBER_PAUSED, 0), (Reason.CLASS_PACK, 500),
    ]  # fmt: skip
    assert events(rig) == []
    assert rig.loop.awaiting_passage == [alice.checkin.id, decided[1].checkin.id]
    turn(rig)
    wait(rig, 0.6)
    turn(rig)
    wait(rig, 0.1)
    assert events(rig) == [("entry", alice.checkin.id), ("entry", decided[1].checkin.id)]


def test_a_member_who_walked_away_may_scan_again_and_spends_one_class(tmp_path):
    rig = make(tmp_path)
    [first] = rig.play([BOB], 1)
    wait(rig, 6)  # annulled
    assert events(rig) == [("annulled", first.checkin.id)]
    facts = rig.store.member_facts("m-bob", "door-1")
    assert facts.pending_uses == {} and facts.last_entry is None  # nothing used, no passback
    [again] = rig.play([BOB], 1)
    assert again.decision.reason is Reason.CLASS_PACK and again.relay_ms == 500
    turn(rig)
    wait(rig, 0.1)
    assert rig.store.member_facts("m-bob", "door-1").pending_uses == {
        again.decision.membership_id: 1
    }


def test_a_failing_journal_loses_no_passage_and_writes_it_once(tmp_path):
    class Flaky(Store):
        failures = 3

        def append_event(self, *args, **kwargs):
            if self.failures:
                self.failures -= 1
                raise StoreError("database is locked by another process for more than 5 s")
            return super().append_event(*args, **kwargs)

    rig = make(tmp_path, store=Flaky.open(tmp_path / "kiosk.db"))
    [alice] = rig.play([ALICE], 1)
    turn(rig)
    wait(rig, 0.1)  # three frames: three refusals, then the fourth try writes it
    wait(rig, 6)
    assert events(rig) == [("entry", alice.checkin.id)]


# -- exits and occupancy ----------------------------------------------------------------------------


def test_exit_passages_count_people_out_and_the_health_report_says_so(tmp_path):
    rig = make(tmp_path, exit=True)
    folder = tmp_path / "control"
    folder.mkdir()
    control = ControlStore.open(folder / "control.sqlite")
    rig.loop.control = control
    rig.play([ALICE], 1)
    turn(rig)
    rig.play([BOB], 1)
    wait(rig, 0.2)
    assert rig.loop.health_report()["awaiting_passage"] == 1  # Bob is on his way
    turn(rig)
    wait(rig, 0.2)
    turn(rig, EXIT_PIN)
    wait(rig, 3)  # the health report is published every 2 s
    assert [kind for kind, _ in events(rig)] == ["entry", "entry", "exit"]
    report = control.health("scanner").data
    assert report["occupancy"] == {
        "now": 1, "entries_today": 2, "exits_today": 1, "max_today": 2, "capacity": None,
    }  # fmt: skip
    assert report["events"] == {"entry": 2, "exit": 1} and report["awaiting_passage"] == 0


def test_an_exit_side_scanner_counts_its_grants_as_exits(tmp_path):
    rig = make(tmp_path, entry=False, direction="exit", capacity=1)
    [alice] = rig.play([ALICE], 1)
    wait(rig, 10)
    [bob] = rig.play([BOB], 1)
    assert [o.relay_ms for o in (alice, bob)] == [500, 500]  # the relay lets them out
    assert events(rig) == [("exit", alice.checkin.id), ("exit", bob.checkin.id)]
    assert occupancy(rig) == {
        "now": 0, "entries_today": 0, "exits_today": 2, "max_today": 0, "capacity": None,
    }  # fmt: skip
    assert rig.loop.awaiting_passage == []


def test_without_an_exit_signal_a_visit_ends_after_the_maximum_length(tmp_path):
    rig = make(tmp_path, entry=False, max_visit=60)
    rig.play([ALICE], 1)
    assert occupancy(rig)["now"] == 1  # no passage input: the grant is the entry
    rig.clock.advance(59 * 60)
    assert occupancy(rig)["now"] == 1
    rig.clock.advance(60)
    assert occupancy(rig) == {
        "now": 0, "entries_today": 1, "exits_today": 0, "max_today": 1, "capacity": None,
    }  # fmt: skip
    assert rig.store.door_events() == []  # computed, never journaled


def test_capacity_refuses_members_but_never_staff(tmp_path):
    rig = make(tmp_path, capacity=1)
    [alice] = rig.play([ALICE], 1)
    # Alice has not passed yet, but she is on her way in: the gym is full.
    [bob] = rig.play([BOB], 1)
    assert bob.decision.reason is Reason.AT_CAPACITY and bob.relay_ms == 0
    assert bob.decision.detail == "1 people inside, the limit is 1"
    [grace] = rig.play([GRACE], 1)
    assert grace.decision.reason is Reason.STAFF_OVERRIDE and grace.relay_ms == 500
    wait(rig, 6)  # neither went through: both grants annulled, nobody inside
    assert [kind for kind, _ in events(rig)] == ["annulled", "annulled"]
    [bob] = rig.play([BOB], 1)
    assert bob.decision.reason is Reason.CLASS_PACK
    assert alice.checkin.id not in rig.loop.awaiting_passage


def test_the_visit_limit_counts_todays_entries_and_not_the_annulled_ones(tmp_path):
    clock = SimClock(NOON, boot="boot-a")
    snap = demo_snapshot(clock.wall(), "UTC")
    once = Plan("plan-once", "Once a day", (), 1)
    memberships = [
        replace(m, plan_id="plan-once") if m.member_id == "m-alice" else m for m in snap.memberships
    ]
    store = Store.open(tmp_path / "kiosk.db")
    store.replace_replica(replace(snap, plans=[*snap.plans, once], memberships=memberships))
    rig = make(tmp_path, store=store, clock=clock)
    [walked_away] = rig.play([ALICE], 1)
    wait(rig, 6)  # annulled: not a visit
    [visit] = rig.play([ALICE], 1)
    assert visit.decision.reason is Reason.SUBSCRIPTION
    turn(rig)
    wait(rig, 6)
    rig.clock.advance(3600)  # past anti-passback
    [again] = rig.play([ALICE], 1)
    assert again.decision.reason is Reason.VISIT_LIMIT and again.relay_ms == 0
    assert again.decision.detail == "1 visits today at this door; the plan allows 1 a day"
    assert walked_away.checkin.id != visit.checkin.id


# -- restarts ---------------------------------------------------------------------------------------


def restart(rig: Rig, tmp_path, *, clock=None) -> Rig:
    """The door process restarts on the same database and pins (the old one was killed: its
    memory is gone, the journal is not)."""
    rig.door.close()
    rig.loop.passage.close()
    rig.store.close()
    return make(tmp_path, clock=clock or rig.clock, pins=rig.pins)


def test_a_grant_pending_at_a_restart_is_confirmed_by_the_next_passage(tmp_path):
    rig = make(tmp_path)
    [alice] = rig.play([ALICE], 1)
    rig = restart(rig, tmp_path)
    assert rig.loop.awaiting_passage == [alice.checkin.id]
    turn(rig)
    wait(rig, 6)
    assert events(rig) == [("entry", alice.checkin.id)]


def test_a_grant_whose_deadline_passed_during_a_restart_is_annulled_at_its_deadline(tmp_path):
    rig = make(tmp_path)
    [alice] = rig.play([ALICE], 1)
    rig.clock.advance(30)  # the process was down for half a minute
    rig = restart(rig, tmp_path)
    wait(rig, 0.1)
    assert events(rig) == [("annulled", alice.checkin.id)]
    assert rig.events[0].wall_time == alice.checkin.wall_time + timedelta(seconds=5)


def test_after_a_reboot_the_wall_clock_says_what_is_left_of_the_deadline(tmp_path):
    rig = make(tmp_path)
    [alice] = rig.play([ALICE], 1)
    wait(rig, 3)
    [bob] = rig.play([BOB], 1)  # 3 s after Alice
    # A reboot: a new monotonic clock; the wall clock says 3.5 s passed since Alice's grant.
    rebooted = SimClock(alice.checkin.wall_time + timedelta(seconds=3.5), boot="boot-b")
    rig = restart(rig, tmp_path, clock=rebooted)
    wait(rig, 2)  # Alice's deadline (1.5 s left) passed, Bob's (4.5 s left) did not
    assert events(rig) == [("annulled", alice.checkin.id)]
    turn(rig)
    wait(rig, 0.1)
    assert events(rig) == [("annulled", alice.checkin.id), ("entry", bob.checkin.id)]
