"""Fakes at the hardware boundary for door-loop tests: a scripted scene seen by a fake camera and a
fake decoder, and a manual relay timer. No image processing, no real sleeping. Also the clean
environment for `kiosk` subprocesses."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import numpy as np

from hardware.protocols import Decoded, Frame
from kiosk.core.clock import SimClock

_PIXELS = np.zeros((4, 4), dtype=np.uint8)


class Scene:
    """What is in front of the camera, frame by frame: each step is a list of payloads (empty list
    = nobody there). ``FakeCamera`` advances it; ``FakeDecoder`` reads the current step."""

    def __init__(self, steps: Iterable[Sequence[bytes | str]] = ()) -> None:
        self.steps: list[list[bytes]] = [self._encode(s) for s in steps]
        self.current: list[bytes] = []
        self.position = 0

    @staticmethod
    def _encode(step: Sequence[bytes | str]) -> list[bytes]:
        return [p.encode() if isinstance(p, str) else p for p in step]

    def add(self, payloads: Sequence[bytes | str], frames: int = 1) -> Scene:
        self.steps += [self._encode(payloads) for _ in range(frames)]
        return self


class FakeCamera:
    """Delivers one frame per scene step, advancing the simulated clock by a frame interval.
    ``None`` in ``gaps`` positions simulates a frame that did not arrive in time (read timeout)."""

    def __init__(
        self, scene: Scene, clock: SimClock, fps: float = 30.0, *, stall_at: set[int] | None = None
    ):
        self.scene = scene
        self.clock = clock
        self.interval = 1.0 / fps
        self.stall_at = stall_at or set()
        self.reads = 0
        self.closed = False

    def read(self, timeout_s: float) -> Frame | None:
        self.reads += 1
        if self.reads in self.stall_at:
            self.clock.advance(timeout_s)
            return None
        if self.scene.position >= len(self.scene.steps):
            raise EOFError
        self.clock.advance(self.interval)
        self.scene.current = self.scene.steps[self.scene.position]
        self.scene.position += 1
        return Frame(_PIXELS, self.clock.monotonic_ns(), self.scene.position)

    def close(self) -> None:
        self.closed = True


class FakeDecoder:
    name = "fake"

    def __init__(self, scene: Scene) -> None:
        self.scene = scene

    def decode(self, pixels: np.ndarray) -> list[Decoded]:
        return [Decoded(p, "fake") for p in self.scene.current]


class ManualTimer:
    """Relay timers that only fire when the test says so."""

    def __init__(self) -> None:
        self.pending: list[_Handle] = []

    def __call__(self, seconds: float, callback) -> _Handle:
        handle = _Handle(seconds, callback)
        self.pending.append(handle)
        return handle

    def fire_all(self) -> None:
        for handle in list(self.pending):
            handle.fire()
        self.pending.clear()


class _Handle:
    def __init__(self, seconds: float, callback) -> None:
        self.seconds = seconds
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def fire(self) -> None:
        if not self.cancelled:
            self.callback()


class FakeTime:
    """A monotonic clock in ns that only moves when the code under test sleeps."""

    def __init__(self, start_ns: int = 1_000_000_000) -> None:
        self.now_ns = start_ns
        self.sleeps: list[float] = []

    def clock(self) -> int:
        return self.now_ns

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now_ns += round(seconds * 1e9)


def damaged_code_frame(payload: str) -> np.ndarray:
    """A 640x480 frame with a code whose data area is half scrambled: finder patterns intact (a
    decoder locates it), data unreadable."""
    from hardware.fakes.synthetic import render_code

    module = 6
    image = render_code(payload, module)
    size = image.shape[0] // module - 8
    rng = np.random.default_rng(0)
    for row in range(4 + 9, 4 + size - 1):
        for col in range(4 + 9, 4 + size - 1):
            if rng.random() < 0.5:
                block = image[row * module : (row + 1) * module, col * module : (col + 1) * module]
                block[...] = 255 - block
    frame = np.full((480, 640), 150, np.uint8)
    frame[40 : 40 + image.shape[0], 100 : 100 + image.shape[1]] = image
    return frame


def clean_env() -> dict[str, str]:
    """The environment for a `kiosk` subprocess: without the developer's KIOSK_* overrides, which
    would otherwise point tests at a real config, database or pins."""
    return {k: v for k, v in os.environ.items() if not k.startswith("KIOSK_")}
