"""Stateful property test: over any sequence of scans (cards and phone passes), repeats,
walk-aways, relay timers and restarts, the relay pulses exactly once per granted journal row,
nobody gets two entries from one scan, and no phone pass code admits twice."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import replace
from datetime import timedelta
from itertools import pairwise
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from devtools.seed import ORG, SCENARIO, demo_snapshot
from fakes import Scene
from kiosk.core.clock import SimClock
from kiosk.core.passes import PassRecord
from kiosk.data.store import Store
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
