"""Stateful property tests: over any sequence of scans (cards and phone passes), repeats,
walk-aways, relay timers and restarts, the relay pulses exactly once per granted journal row,
nobody gets two entries from one scan, and no phone pass code admits twice; over grants, entry
and exit passages, timeouts and restarts at a turnstile that reports its passages, every grant
ends confirmed or annulled exactly once, occupancy never goes below zero and the classes counted
as used are the grants' not annulled."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from gpiozero.pins.mock import MockFactory
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from devtools.seed import ORG, SCENARIO, demo_snapshot
from fakes import Scene
from hardware.gpio.passage import GpioPassageSensor
from kiosk.core.clock import SimClock
from kiosk.core.model import EventKind
from kiosk.core.passes import PassRecord
from kiosk.data.store import Store
from kiosk.door.loop import ScannerSettings
from rig import RELAY_PIN, Rig
from sync.passes import pass_payload, step_at

CODES = [*sorted({scan.payload for scan in SCENARIO}), "\x00garbage\u202e"]
STAFF = {"m-grace"}
PHONE_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
PERIOD = 15
# Alice's phone (a subscription), Carol's (paused) and Grace's: staff, whom anti-passback lets
# through, so only the replay memory stands between a code shown twice and a second entry.
PHONES = {"ALICEPHN": "m-alice", "CAROLPHN": "m-carol", "GRACEPHN": "m-grace"}


class DoorMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="kiosk-prop-"))
        self.scene = Scene()
        clock = SimClock()
        store = Store.open(self.tmp / "kiosk.db")
        public = PHONE_KEY.public_key().public_bytes_raw()
        passes = [PassRecord(p, m, ORG, public, PERIOD) for p, m in PHONES.items()]
        store.replace_replica(replace(demo_snapshot(clock.wall(), "UTC"), passes=passes))
        self.rig = Rig(self.tmp, self.scene, store=store, clock=clock)
        self.pins = self.rig.pins  # the physical relay pin outlives restarts of the process
        self.admitted_codes: set[tuple[str, int]] = set()

    def _run_scene(self) -> int:
        before = len(self.rig.outcomes)
        while self.scene.position < len(self.scene.steps):
            self.rig.loop.step()
        return len(self.rig.outcomes) - before

    @rule(code=st.sampled_from(CODES), frames=st.integers(1, 60))
    def present(self, code: str, frames: int) -> None:
        """A member holds a card in view: one decision at most, whatever the number of frames."""
        self.scene.add([code], frames)
        assert self._run_scene() <= 1

    @rule(
        phone=st.sampled_from(sorted(PHONES)),
        offset=st.integers(-3, 3),
        frames=st.integers(1, 60),
    )
    def present_phone(self, phone: str, offset: int, frames: int) -> None:
        """A member holds up a phone showing the code of its current step (``offset`` steps
        off, as a skewed or a screenshotted code would be): one decision at most; an admitted
        code never admits again, across restarts too."""
        step = step_at(self.rig.clock.wall().timestamp(), PERIOD) + offset
        self.scene.add([pass_payload(PHONE_KEY, ORG, phone, step)], frames)
        before = len(self.rig.outcomes)
        assert self._run_scene() <= 1
        for outcome in self.rig.outcomes[before:]:
            assert outcome.pass_id == phone
            if outcome.relay_ms > 0:
                assert (phone, step) not in self.admitted_codes, "a pass code admitted twice"
                self.admitted_codes.add((phone, step))

    @rule(frames=st.integers(1, 150))
    def nobody_there(self, frames: int) -> None:
        self.scene.add([], frames)
        self._run_scene()

    @rule(minutes=st.integers(1, 30))
    def time_passes(self, minutes: int) -> None:
        self.rig.clock.advance(minutes * 60)
        self.scene.add([], 1)
        self._run_scene()

    @rule()
    def relay_timers_fire(self) -> None:
        self.rig.timer.fire_all()

    @rule()
    def restart(self) -> None:
        """The scanner process restarts (same database, same pins, time goes on)."""
        outcomes, clock, store = self.rig.outcomes, self.rig.clock, self.rig.store
        self.rig.door.close()
        store.close()
        self.rig = Rig(self.tmp, self.scene, pins=self.pins, clock=clock)
        self.rig.outcomes[:0] = outcomes

    @invariant()
    def one_pulse_per_granted_row(self) -> None:
        granted = {c.id for c in self.rig.store.recent_checkins(10_000) if c.decision == "granted"}
        pulsed = [o.checkin.id for o in self.rig.outcomes if o.relay_ms > 0]
        assert sorted(pulsed) == sorted(granted)  # one pulse each, none without a row
        states = [s.state for s in self.pins.pin(RELAY_PIN).states]
        rising = sum(1 for a, b in pairwise(states) if not a and b)
        # A grant while the relay is still open extends the pulse instead of a new rising edge.
        assert (rising == 0) == (not granted) and rising <= len(granted)

    @invariant()
    def no_double_entry(self) -> None:
        entries: dict[str, list] = {}
        for c in self.rig.store.recent_checkins(10_000):
            if c.decision == "granted" and c.member_id not in STAFF:
                entries.setdefault(c.member_id, []).append(c.wall_time)
        for times in entries.values():
            times.sort()
            for a, b in pairwise(times):
                assert b - a >= timedelta(minutes=10), "two entries inside the passback window"

    def teardown(self) -> None:
        self.rig.door.close()
        self.rig.store.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


DoorMachine.TestCase.settings = settings(max_examples=40, stateful_step_count=25, deadline=None)
TestDoorProperties = DoorMachine.TestCase


# -- the turnstile talks back ---------------------------------------------------------------------

ENTRY_PIN, EXIT_PIN = 5, 6
# A subscriber, a class pack, a PT pack, staff, a paused member and a code nobody has.
PASSAGE_CODES = ["FF-ALICE-1001", "FF-BOB-1002", "FF-IVAN-1009", "FF-GRACE-1007",
                 "FF-CAROL-1003", "FF-NOBODY-0000"]  # fmt: skip


class PassageMachine(RuleBasedStateMachine):
    """Grants, entry and exit passages, time and restarts at a door whose turnstile reports its
    passages: every grant ends confirmed or annulled exactly once (and waits until then), every
    passage is journaled once, occupancy never goes below zero, and the classes counted as used
    are those of the grants not annulled."""

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="kiosk-passage-"))
        self.clock = SimClock(datetime(2026, 3, 10, 9, 0, tzinfo=UTC), boot="boot-a")
        store = Store.open(self.tmp / "kiosk.db")
        store.replace_replica(demo_snapshot(self.clock.wall(), "UTC"))
        self.pins = MockFactory()  # the physical pins outlive restarts of the process
        self.scene = Scene()
        self.rig = self._door(store)
        self.entry_turns = self.exit_turns = 0

    def _door(self, store: Store | None = None) -> Rig:
        sensor = GpioPassageSensor(entry_pin=ENTRY_PIN, exit_pin=EXIT_PIN, pin_factory=self.pins,
                                   clock_ns=self.clock.monotonic_ns)  # fmt: skip
        settings = ScannerSettings(door_id="door-1", pulse_ms=500, passage_timeout_s=5.0)
        return Rig(self.tmp, self.scene, store=store, pins=self.pins, clock=self.clock,
                   settings=settings, passage=sensor)  # fmt: skip

    def _run_scene(self) -> None:
        while self.scene.position < len(self.scene.steps):
            self.rig.loop.step()

    def _turn(self, pin: int) -> None:
        self.pins.pin(pin).drive_low()
        self.clock.advance(0.1)
        self.pins.pin(pin).drive_high()
        self.clock.advance(0.1)  # open longer than the contact's bounce time before the next
        self.scene.add([], 1)
        self._run_scene()

    @rule(code=st.sampled_from(PASSAGE_CODES), frames=st.integers(1, 45))
    def present(self, code: str, frames: int) -> None:
        self.scene.add([code], frames)
        self._run_scene()

    @rule()
    def turn_entry(self) -> None:
        self.entry_turns += 1
        self._turn(ENTRY_PIN)

    @rule()
    def turn_exit(self) -> None:
        self.exit_turns += 1
        self._turn(EXIT_PIN)

    @rule(seconds=st.sampled_from([0.5, 2, 4.9, 5.5, 30, 700]))
    def time_passes(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.scene.add([], 1)
        self._run_scene()

    @rule()
    def restart(self) -> None:
        """The door process restarts (killed: its memory is gone, the journal and pins stay)."""
        self.rig.door.close()
        self.rig.loop.passage.close()
        self.rig.store.close()
        self.rig = self._door()

    @invariant()
    def each_grant_waits_or_has_exactly_one_outcome(self) -> None:
        store = self.rig.store
        granted = {c.id for c in store.recent_checkins(10_000) if c.decision == "granted"}
        waiting = [w.checkin_id for w in store.passage_waits()]
        events = store.door_events(10_000)
        outcomes = [e.checkin_id for e in events if e.kind in (EventKind.ENTRY, EventKind.ANNULLED)]
        assert len(outcomes) == len(set(outcomes)), "a grant settled twice"
        assert not set(waiting) & set(outcomes), "a grant both waiting and settled"
        assert sorted(waiting + outcomes) == sorted(granted), "a grant lost"
        assert self.rig.loop.awaiting_passage == waiting  # memory and journal agree, oldest first
        # A grant waits no longer than its timeout (and the settling margin).
        now_ns = self.clock.monotonic_ns()
        for wait in store.passage_waits():
            if wait.boot_id == self.clock.boot_id:
                assert wait.deadline_ns >= now_ns - 300_000_000

    @invariant()
    def each_passage_is_journaled_once(self) -> None:
        kinds = [e.kind for e in self.rig.store.door_events(10_000)]
        assert kinds.count(EventKind.ENTRY) + kinds.count(EventKind.TAILGATING) == self.entry_turns
        assert kinds.count(EventKind.EXIT) == self.exit_turns

    @invariant()
    def occupancy_is_never_negative(self) -> None:
        counted = self.rig.loop.occupancy()
        assert 0 <= counted.now <= counted.max <= counted.entries

    @invariant()
    def classes_pending_are_the_grants_not_annulled(self) -> None:
        store = self.rig.store
        annulled = {e.checkin_id for e in store.door_events(10_000) if e.kind is EventKind.ANNULLED}
        expected: dict[str, dict[str, int]] = {}
        for c in store.recent_checkins(10_000):
            if c.decision == "granted" and c.classes_used and c.id not in annulled:
                uses = expected.setdefault(c.member_id, {})
                uses[c.membership_id] = uses.get(c.membership_id, 0) + c.classes_used
        for member in ("m-bob", "m-ivan"):
            facts = store.member_facts(member, "door-1")
            assert facts.pending_uses == expected.get(member, {})

    def teardown(self) -> None:
        self.rig.door.close()
        self.rig.loop.passage.close()
        self.rig.store.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


PassageMachine.TestCase.settings = settings(max_examples=30, stateful_step_count=30, deadline=None)
TestPassageProperties = PassageMachine.TestCase
