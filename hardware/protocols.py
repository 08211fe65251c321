"""The small interfaces the door loop talks to. Each has real adapters (``hardware.gpio``,
``hardware.camera``, ``hardware.decode``) and a fake (``hardware.fakes``, gpiozero's mock pins,
or the tests' own).

Frames are 2-D ``numpy.uint8`` arrays (grey, height x width): every camera we support can hand us
its luminance plane directly and every decoder wants grey, so colour never travels through the loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True, slots=True)
class Frame:
    """One grey camera frame. ``captured_ns`` is ``time.monotonic_ns()`` (or the injected clock's
    equivalent) when the frame left the camera; scan-to-relay latency is measured from it."""

    pixels: np.ndarray
    captured_ns: int
    index: int = 0


class CameraError(RuntimeError):
    """The camera could not be opened or stopped delivering frames; the message says which and why."""


@runtime_checkable
class FrameSource(Protocol):
    """A camera or a stand-in for one.

    ``read()`` blocks for at most ``timeout_s`` seconds and returns the next frame, or None when no
    frame arrived in time (the loop then checks for a stale camera). It raises ``CameraError`` when the
    device failed for good, and ``EOFError`` when a finite source (a replay) has no more frames.
    """

    def read(self, timeout_s: float) -> Frame | None: ...

    def close(self) -> None: ...


class DecoderUnavailable(RuntimeError):
    """The configured decoder's library is not installed; the message says what to install."""


@dataclass(frozen=True, slots=True)
class Decoded:
    """A decoded symbol: the raw payload bytes (hostile until parsed) and the decoder that read it."""

    payload: bytes
    decoder: str


@runtime_checkable
class Decoder(Protocol):
    """Finds QR codes in a grey frame. Never raises on image content; returns [] when nothing reads."""

    name: str

    def decode(self, pixels: np.ndarray) -> list[Decoded]: ...


@runtime_checkable
class Door(Protocol):
    """The turnstile relay. ``pulse`` closes the relay for ``ms`` milliseconds (clamped to the
    configured hard maximum) and returns the length actually used; ``release`` opens it now.
    ``close`` releases the relay and frees the pin; it is safe to call more than once."""

    def pulse(self, ms: int) -> int: ...

    def release(self) -> None: ...

    def enforce_deadline(self, now_ns: int | None = None) -> bool:
        """Release the relay if it is on past its deadline (a backstop for a dead timer); returns
        True if it did. ``now_ns`` is monotonic nanoseconds, default the door's own clock."""
        ...

    @property
    def is_open(self) -> bool: ...

    def close(self) -> None: ...


@runtime_checkable
class Signal(Protocol):
    """The member-facing feedback: LEDs and buzzer driven together from a named pattern
    (``granted``, ``denied``, ``fault``, ``idle``). Non-blocking: patterns play in the background."""

    def show(self, pattern: str) -> None: ...

    def close(self) -> None: ...


# The two ways through a turnstile, as ``PassageEvent.direction`` says them.
ENTRY, EXIT = "entry", "exit"


@dataclass(frozen=True, slots=True)
class PassageEvent:
    """The turnstile reported one passage: ``direction`` is ``"entry"`` or ``"exit"``,
    ``monotonic_ns`` the sensor's monotonic clock (the door loop's) when the contact closed."""

    direction: str
    monotonic_ns: int


@runtime_checkable
class PassageSensor(Protocol):
    """The turnstile's passage outputs (its PASS contacts, one per direction) or a plain door's
    contact. ``directions`` says which are wired (``"entry"``, ``"exit"``). ``poll`` never blocks:
    it returns the passages since the previous call, oldest first (collected in the background,
    one per closing of a contact however much it bounces), and forgets them. ``close`` frees the
    pins; safe to call more than once."""

    @property
    def directions(self) -> frozenset[str]: ...

    def poll(self) -> list[PassageEvent]: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Pattern:
    """A feedback pattern: which LED blinks how, and how the buzzer sounds. Times in milliseconds.

    ``led`` is ``"green"``, ``"red"`` or ``"none"``; ``led_blinks`` 1 with ``led_off_ms`` 0 is a solid
    light for ``led_on_ms``. ``beeps`` 0 keeps the buzzer silent.
    """

    led: str = "none"
    led_blinks: int = 1
    led_on_ms: int = 0
    led_off_ms: int = 0
    beeps: int = 0
    beep_on_ms: int = 0
    beep_off_ms: int = 0
