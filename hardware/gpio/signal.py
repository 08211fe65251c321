"""Member-facing feedback: a green LED, a red LED and a buzzer playing named patterns.

``LedBuzzerSignal`` drives the real parts through gpiozero and implements
``hardware.protocols.Signal``; its stand-in for tests and the bench is
``hardware.fakes.signal.RecordingSignal``, which checks patterns with the same rules (below).

Patterns come from the config (``[feedback.granted]`` etc.). ``idle`` (everything off) is always
available, so the scanner can silence the door without the config having to define it.
"""

from __future__ import annotations

import atexit
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING

from gpiozero import LED, Buzzer

from hardware.gpio.pins import GpioError
from hardware.protocols import Pattern

if TYPE_CHECKING:
    from gpiozero import DigitalOutputDevice, Factory

IDLE = "idle"
STANDARD_PATTERN_NAMES = ("granted", "denied", "fault", IDLE)
LED_COLOURS = ("green", "red", "none")


def check_patterns(patterns: Mapping[str, Pattern]) -> dict[str, Pattern]:
    """Validate the patterns and return them with ``idle`` (all off) added if missing.

    Raises ``ValueError`` naming the pattern and field when a colour is unknown or a count or
    duration is negative.
    """
    checked: dict[str, Pattern] = {}
    for name, pattern in patterns.items():
        if pattern.led not in LED_COLOURS:
            raise ValueError(
                f"feedback pattern {name!r}: led must be one of {', '.join(LED_COLOURS)}, "
                f"got {pattern.led!r}"
            )
        for field in (
            "led_blinks",
            "led_on_ms",
            "led_off_ms",
            "beeps",
            "beep_on_ms",
            "beep_off_ms",
        ):
            value = getattr(pattern, field)
            if value < 0:
                unit = "" if field in ("led_blinks", "beeps") else " ms"
                raise ValueError(
                    f"feedback pattern {name!r}: {field} must be >= 0, got {value}{unit}"
                )
        checked[name] = pattern
    checked.setdefault(IDLE, Pattern())
    return checked


def unknown_pattern(name: str, known: Mapping[str, Pattern]) -> ValueError:
    """The error for showing a pattern name that is not among ``known``."""
    return ValueError(f"unknown feedback pattern {name!r}; known: {', '.join(sorted(known))}")


class LedBuzzerSignal:
    """Green and red LEDs (active high) and a buzzer on BCM pins; all start off.

    ``show(name)`` returns at once and plays the pattern on gpiozero's background threads; a new
    pattern interrupts the one playing. Raises ``ValueError`` for an unknown pattern name and
    ``GpioError`` after ``close()`` or when a pin cannot be set up.
    """

    def __init__(
        self,
        *,
        green_pin: int,
        red_pin: int,
        buzzer_pin: int,
        buzzer_active_high: bool,
        patterns: Mapping[str, Pattern],
        pin_factory: Factory,
    ) -> None:
        self._patterns = check_patterns(patterns)
        self._lock = threading.Lock()
        self._closed = False
        self._devices: list[DigitalOutputDevice] = []
        try:
            self._green = self._open(LED, "green LED", green_pin, True, pin_factory)
            self._red = self._open(LED, "red LED", red_pin, True, pin_factory)
            self._buzzer = self._open(Buzzer, "buzzer", buzzer_pin, buzzer_active_high, pin_factory)
        except GpioError:
            self._close_devices()
            raise
        atexit.register(self.close)

    def _open(
        self,
        kind: type[DigitalOutputDevice],
        label: str,
        pin: int,
        active_high: bool,
        pin_factory: Factory,
    ) -> DigitalOutputDevice:
        try:
            device = kind(
                pin, active_high=active_high, initial_value=False, pin_factory=pin_factory
            )
        except Exception as exc:
            raise GpioError(f"cannot set up the {label} on GPIO{pin}: {exc}") from exc
        self._devices.append(device)
        return device

    @property
    def patterns(self) -> Mapping[str, Pattern]:
        return dict(self._patterns)

    def show(self, pattern: str) -> None:
        """Start playing the named pattern, interrupting the previous one (non-blocking)."""
        chosen = self._patterns.get(pattern)
        if chosen is None:
            raise unknown_pattern(pattern, self._patterns)
        with self._lock:
            if self._closed:
                raise GpioError(f"the feedback LEDs and buzzer are closed; cannot show {pattern!r}")
            lit = {"green": self._green, "red": self._red}.get(chosen.led)
            for led in (self._green, self._red):
                if led is not lit:
                    led.off()
            if lit is not None:
                _play(lit, chosen.led_blinks, chosen.led_on_ms, chosen.led_off_ms)
            _play(self._buzzer, chosen.beeps, chosen.beep_on_ms, chosen.beep_off_ms)

    def close(self) -> None:
        """Stop any pattern, switch everything off and free the pins. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._close_devices()
        atexit.unregister(self.close)

    def _close_devices(self) -> None:
        errors = []
        for device in self._devices:
            try:
                device.off()
            except Exception as exc:  # keep going: every other part must still be switched off
                errors.append(exc)
            finally:
                device.close()
        self._devices = []
        if errors:
            raise GpioError(f"switching the feedback LEDs/buzzer off failed: {errors[0]}")


def _play(device: DigitalOutputDevice, times: int, on_ms: int, off_ms: int) -> None:
    # blink() stops the device's previous blink thread first, so patterns never overlap.
    if times > 0 and on_ms > 0:
        device.blink(on_time=on_ms / 1000, off_time=off_ms / 1000, n=times, background=True)
    else:
        device.off()
