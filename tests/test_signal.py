"""Feedback LEDs and buzzer on gpiozero mock pins.

gpiozero's background blink runs on real time, so patterns that must stay lit use long on-times
(interrupted by the next pattern or close()), and the one full-timeline test uses 1 ms steps.
"""

from __future__ import annotations

import time

import pytest
from gpiozero.pins.mock import MockFactory

from hardware.fakes.signal import RecordingSignal
from hardware.gpio.pins import GpioError
from hardware.gpio.signal import LedBuzzerSignal
from hardware.protocols import Pattern, Signal

GREEN, RED, BUZZER = 27, 22, 23
# ms: longer than any test on any machine, however loaded, so a pattern is still playing when it
# is interrupted (close() and a new pattern end it at once).
LONG = 3_600_000

PATTERNS = {
    "granted": Pattern(led="green", led_blinks=1, led_on_ms=LONG, beeps=1, beep_on_ms=LONG),
    "denied": Pattern(led="red", led_blinks=3, led_on_ms=LONG, led_off_ms=LONG),
    "fault": Pattern(led="red", led_blinks=2, led_on_ms=LONG, led_off_ms=LONG),
    "dark": Pattern(led="none", beeps=0),
}


def levels(factory, pin) -> list[bool]:
    return [s.state for s in factory.pin(pin).states]


def wait_until(condition, timeout_s: float = 60.0) -> None:
    """Poll in 1 ms steps for a gpiozero background thread to act; fails after ``timeout_s``, a
    bound on a hang only (a busy machine may run the thread late)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.001)


@pytest.fixture
def factory():
    return MockFactory()


def make_signal(factory, patterns=PATTERNS, buzzer_active_high=True) -> LedBuzzerSignal:
    return LedBuzzerSignal(
        green_pin=GREEN,
        red_pin=RED,
        buzzer_pin=BUZZER,
        buzzer_active_high=buzzer_active_high,
        patterns=patterns,
        pin_factory=factory,
    )


@pytest.fixture
def signal(factory):
    signal = make_signal(factory)
    yield signal
    signal.close()


def test_implements_the_signal_protocol(signal):
    assert isinstance(signal, Signal)
    assert isinstance(RecordingSignal(), Signal)


def test_everything_starts_off(signal, factory):
    for pin in (GREEN, RED, BUZZER):
        assert levels(factory, pin) == [False]
        assert factory.pin(pin).function == "output"


def test_granted_lights_green_and_sounds_the_buzzer(signal, factory):
    signal.show("granted")
    wait_until(lambda: levels(factory, GREEN) == [False, True])
    wait_until(lambda: levels(factory, BUZZER) == [False, True])
    assert levels(factory, RED) == [False]


def test_a_new_pattern_interrupts_the_previous_one(signal, factory):
    signal.show("granted")
    wait_until(lambda: levels(factory, GREEN) == [False, True])
    wait_until(lambda: levels(factory, BUZZER) == [False, True])

    signal.show("denied")
    # Switched off synchronously by show(), before the red pattern starts.
    assert levels(factory, GREEN) == [False, True, False]
    assert levels(factory, BUZZER) == [False, True, False]
    wait_until(lambda: levels(factory, RED) == [False, True])


def test_led_none_pattern_turns_everything_off(signal, factory):
    signal.show("granted")
    wait_until(lambda: levels(factory, GREEN) == [False, True])
    signal.show("dark")
    for pin in (GREEN, BUZZER):
        assert levels(factory, pin) == [False, True, False]
    assert levels(factory, RED) == [False]


def test_idle_is_always_available_and_silences_everything(signal, factory):
    signal.show("fault")
    wait_until(lambda: levels(factory, RED) == [False, True])
    signal.show("idle")
    assert levels(factory, RED) == [False, True, False]
    assert levels(factory, GREEN) == [False]
    assert levels(factory, BUZZER) == [False]


def test_a_short_pattern_plays_its_full_timeline(factory):
    quick = {
        "denied": Pattern(
            led="red", led_blinks=3, led_on_ms=1, led_off_ms=1, beeps=2, beep_on_ms=1, beep_off_ms=1
        )
    }
    signal = make_signal(factory, quick)
    try:
        signal.show("denied")
        wait_until(lambda: len(levels(factory, RED)) == 7)
        wait_until(lambda: len(levels(factory, BUZZER)) == 5)
        assert levels(factory, RED) == [False, True, False, True, False, True, False]
        assert levels(factory, BUZZER) == [False, True, False, True, False]
        assert levels(factory, GREEN) == [False]
    finally:
        signal.close()


def test_close_leaves_every_pin_off_even_mid_pattern(factory):
    signal = make_signal(factory)
    signal.show("granted")
    wait_until(lambda: levels(factory, GREEN) == [False, True])
    wait_until(lambda: levels(factory, BUZZER) == [False, True])
    signal.close()
    for pin in (GREEN, RED, BUZZER):
        assert levels(factory, pin)[-1] is False
        assert factory.pin(pin).function == "input"
    signal.close()  # idempotent
    with pytest.raises(GpioError, match="closed"):
        signal.show("granted")


def test_active_low_buzzer_is_high_when_silent(factory):
    signal = make_signal(factory, buzzer_active_high=False)
    # First entry: the mock pin read as an input before it was claimed; then driven high (off).
    assert levels(factory, BUZZER) == [False, True]
    signal.show("granted")
    wait_until(lambda: levels(factory, BUZZER) == [False, True, False])
    signal.close()
    assert levels(factory, BUZZER) == [False, True, False, True]


def test_unknown_pattern_is_a_value_error(signal, factory):
    with pytest.raises(ValueError, match=r"unknown feedback pattern 'party'.*granted"):
        signal.show("party")
    for pin in (GREEN, RED, BUZZER):
        assert levels(factory, pin) == [False]


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        (Pattern(led="blue"), "'granted': led must be one of green, red, none, got 'blue'"),
        (Pattern(led="red", led_on_ms=-1), "'granted': led_on_ms must be >= 0, got -1 ms"),
        (Pattern(beeps=-2), "'granted': beeps must be >= 0, got -2"),
    ],
)
def test_bad_patterns_are_refused_before_any_pin_is_claimed(factory, pattern, message):
    with pytest.raises(ValueError, match=message):
        make_signal(factory, {"granted": pattern})
    assert factory.pins == {}


def test_a_pin_in_use_is_a_clear_error_and_frees_the_others(factory):
    with pytest.raises(GpioError, match="buzzer on GPIO27"):
        LedBuzzerSignal(
            green_pin=GREEN,
            red_pin=RED,
            buzzer_pin=GREEN,
            buzzer_active_high=True,
            patterns=PATTERNS,
            pin_factory=factory,
        )
    # The LEDs opened before the failure were closed again, so the pins can be claimed anew.
    make_signal(factory).close()


def test_recording_signal_records_names_in_order():
    signal = RecordingSignal()
    signal.show("granted")
    signal.show("denied")
    signal.show("idle")
    assert signal.shown == ["granted", "denied", "idle"]
    assert signal.last == "idle"
    with pytest.raises(ValueError, match="unknown feedback pattern"):
        signal.show("party")
    signal.close()
    assert signal.closed
    with pytest.raises(GpioError):
        signal.show("granted")


def test_recording_signal_accepts_exactly_the_configured_patterns():
    signal = RecordingSignal({"granted": PATTERNS["granted"]})
    signal.show("granted")
    signal.show("idle")
    with pytest.raises(ValueError):
        signal.show("denied")
