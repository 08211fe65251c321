"""A door loop on a real store and mock pins, driven by a scripted scene and a simulated clock."""

from __future__ import annotations

import threading

from gpiozero.pins.mock import MockFactory

from devtools.seed import demo_snapshot
from fakes import FakeCamera, FakeDecoder, ManualTimer, Scene
from hardware.fakes.signal import RecordingSignal
from hardware.gpio.relay import RelayDoor
from kiosk.core.clock import SimClock
from kiosk.data.store import Store
from kiosk.door.loop import DoorLoop, ScannerSettings
from kiosk.door.systemd import Notifier

RELAY_PIN = 17
ALICE, BOB, CAROL = "FF-ALICE-1001", "FF-BOB-1002", "FF-CAROL-1003"


class Rig:
    """A door loop on a real store and mock pins, driven by a scripted scene and a simulated clock."""

    def __init__(
        self,
        tmp_path,
        scene: Scene,
        *,
        store=None,
        stall_at=None,
        debounce_s=3.0,
        pins=None,
        clock=None,
        settings: ScannerSettings | None = None,
        passage=None,
    ):
        self.clock = clock or SimClock()
        self.store = store or Store.open(tmp_path / "kiosk.db")
        if self.store.member_count() == 0:
            self.store.replace_replica(demo_snapshot(self.clock.wall(), "UTC"))
        self.pins = pins or MockFactory()
        self.timer = ManualTimer()
        self.door = RelayDoor(RELAY_PIN, active_high=True, max_pulse_ms=3000, pin_factory=self.pins,
                              timer=self.timer, clock_ns=self.clock.monotonic_ns)  # fmt: skip
        self.signal = RecordingSignal()
        self.notifier = Notifier(address="")
        self.outcomes = []
        self.events = []  # door events, as the loop reports them after their commit
        self.camera = FakeCamera(scene, self.clock, stall_at=stall_at)
        self.loop = DoorLoop(
            source=self.camera,
            reader=FakeDecoder(scene),
            store=self.store,
            door=self.door,
            signal=self.signal,
            clock=self.clock,
            settings=settings
            or ScannerSettings(door_id="door-1", pulse_ms=500, debounce_s=debounce_s),
            notifier=self.notifier,
            on_outcome=self.outcomes.append,
            passage=passage,
            on_event=self.events.append,
        )

    def relay_states(self) -> list[bool]:
        return [s.state for s in self.pins.pin(RELAY_PIN).states]

    def run(self) -> None:
        self.loop.run(threading.Event())

    def play(self, payloads=(), frames: int = 1) -> list:
        """Show ``payloads`` for ``frames`` frames (the clock moves a frame each), stepping the
        loop through them; returns the outcomes decided meanwhile."""
        scene = self.camera.scene
        scene.add(list(payloads), frames)
        before = len(self.outcomes)
        while scene.position < len(scene.steps):
            self.loop.step()
        return self.outcomes[before:]
