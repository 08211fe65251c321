"""The door relay on gpiozero mock pins, with a manual timer and a fake clock (no real waiting).

Pin timelines are compared exactly (``[s.state for s in pin.states]``): gpiozero's
``assert_states`` accepts lists of the wrong length.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory

from hardware.gpio.pins import GpioError
from hardware.gpio.relay import LATE_WARNING_MS, RelayDoor, force_off
from hardware.protocols import Door

PIN = 17
MS = 1_000_000  # nanoseconds


class ManualTimer:
    """Records scheduled callbacks; the test fires them."""

    def __init__(self) -> None:
        self.handles: list[Handle] = []

    def __call__(self, seconds, callback):
        handle = Handle(seconds, callback)
        self.handles.append(handle)
        return handle

    @property
    def pending(self) -> list[Handle]:
        return [h for h in self.handles if not h.cancelled and not h.fired]


class Handle:
    def __init__(self, seconds, callback) -> None:
        self.seconds = seconds
        self.callback = callback
        self.cancelled = False
        self.fired = False

    def cancel(self) -> None:
        self.cancelled = True

    def fire(self) -> None:
        # Like threading.Timer racing with cancel(): the callback may run even after cancel().
        self.fired = True
        self.callback()


class FakeClock:
    def __init__(self, start_ns: int = 1_000 * MS) -> None:
        self.now_ns = start_ns

    def __call__(self) -> int:
        return self.now_ns

    def advance_ms(self, ms: float) -> None:
        self.now_ns += int(ms * MS)


@pytest.fixture
def factory():
    return MockFactory()


@pytest.fixture
def timer():
    return ManualTimer()


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def door(factory, timer, clock):
    door = RelayDoor(
        PIN, active_high=True, max_pulse_ms=3000, pin_factory=factory, timer=timer, clock_ns=clock
    )
    yield door
    door.close()


def levels(factory, pin=PIN) -> list[bool]:
    return [s.state for s in factory.pin(pin).states]


def test_implements_the_door_protocol(door):
    assert isinstance(door, Door)


def test_active_high_relay_starts_off(door, factory):
    assert levels(factory) == [False]
    assert factory.pin(PIN).function == "output"
    assert not door.is_open


def test_active_low_relay_starts_off_with_the_pin_high(factory, timer, clock):
    door = RelayDoor(
        PIN, active_high=False, max_pulse_ms=3000, pin_factory=factory, timer=timer, clock_ns=clock
    )
    # The first entry is the mock pin read as an input before it is claimed; then it is driven
    # high (off) and never low on the way.
    assert levels(factory) == [False, True]
    assert not door.is_open
    door.pulse(500)
    timer.handles[0].fire()
    assert levels(factory) == [False, True, False, True]
    door.close()
    assert levels(factory) == [False, True, False, True]


def test_pulse_switches_on_then_off_when_the_timer_fires(door, factory, timer, clock):
    assert door.pulse(500) == 500
    assert levels(factory) == [False, True]
    assert door.is_open
    assert door.last_on_ns == clock.now_ns
    assert door.pulses == 1
    assert [h.seconds for h in timer.handles] == [pytest.approx(0.5)]

    timer.handles[0].fire()
    assert levels(factory) == [False, True, False]
    assert not door.is_open


def test_pulse_is_clamped_to_the_hard_maximum(door, factory, timer):
    assert door.pulse(60_000) == 3000
    assert timer.handles[0].seconds == pytest.approx(3.0)
    timer.handles[0].fire()
    assert levels(factory) == [False, True, False]


def test_zero_or_negative_pulse_does_nothing(door, factory, timer):
    assert door.pulse(0) == 0
    assert door.pulse(-250) == 0
    assert levels(factory) == [False]
    assert timer.handles == []
    assert door.pulses == 0


def test_second_pulse_extends_without_a_blip(door, factory, timer, clock):
    door.pulse(1000)
    first_on = door.last_on_ns
    clock.advance_ms(800)
    assert door.pulse(1000) == 1000

    first, second = timer.handles
    assert first.cancelled
    assert second.seconds == pytest.approx(1.0)  # new deadline: 800 + 1000 ms after the first
    first.fire()  # a late callback from the replaced timer must not switch off
    assert levels(factory) == [False, True]
    assert door.last_on_ns == first_on  # the pin was driven on once
    assert door.pulses == 2

    second.fire()
    assert levels(factory) == [False, True, False]


def test_pulses_counts_only_pulses_that_opened_or_extended_the_relay(door, timer, clock):
    door.pulse(1000)  # opens: deadline 1000 ms
    assert door.pulses == 1
    clock.advance_ms(100)
    door.pulse(500)  # would end at 600 ms: neither opens nor extends
    assert door.pulses == 1
    assert len(timer.pending) == 1
    clock.advance_ms(400)
    door.pulse(500)  # ends at 1000 ms, the same deadline: still not an extension
    assert door.pulses == 1
    clock.advance_ms(100)
    door.pulse(500)  # ends at 1100 ms: extends
    assert door.pulses == 2
    timer.pending[0].fire()
    door.pulse(200)  # opens again
    assert door.pulses == 3


def test_extension_never_reaches_beyond_max_from_now(door, factory, clock):
    door.pulse(3000)
    clock.advance_ms(1000)
    assert door.pulse(10_000) == 3000  # deadline now 4000 ms after the first pulse, not 11000
    assert door.enforce_deadline(door.last_on_ns + 3999 * MS) is False
    assert door.enforce_deadline(door.last_on_ns + 4000 * MS) is True
    assert levels(factory) == [False, True, False]


def test_shorter_second_pulse_does_not_cut_the_first_short(door, factory, timer, clock):
    door.pulse(3000)
    clock.advance_ms(100)
    assert door.pulse(200) == 200
    assert len(timer.pending) == 1  # the original timer still governs
    assert door.enforce_deadline() is False
    clock.advance_ms(2900)
    assert door.enforce_deadline() is True
    assert levels(factory) == [False, True, False]


def test_release_switches_off_now_and_cancels_the_timer(door, factory, timer):
    door.pulse(2000)
    door.release()
    assert levels(factory) == [False, True, False]
    assert timer.handles[0].cancelled
    timer.handles[0].fire()  # racing callback after cancel: harmless
    door.release()  # already off: no new edge
    assert levels(factory) == [False, True, False]


def test_enforce_deadline_switches_off_when_the_timer_never_fires(door, factory, clock):
    door.pulse(500)
    clock.advance_ms(499)
    assert door.enforce_deadline() is False
    assert door.is_open
    clock.advance_ms(1)
    assert door.enforce_deadline() is True
    assert levels(factory) == [False, True, False]
    assert door.enforce_deadline() is False  # nothing more to do


def test_a_relay_held_a_little_late_is_no_warning_but_a_quarter_second_is(door, clock, caplog):
    caplog.set_level(logging.DEBUG, logger="hardware.gpio.relay")
    door.pulse(500)
    clock.advance_ms(501)  # the timer thread is a millisecond late: the loop got there first
    assert door.enforce_deadline() is True
    door.pulse(500)
    clock.advance_ms(500 + LATE_WARNING_MS)
    assert door.enforce_deadline() is True
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.DEBUG, "door relay on GPIO17 was still on 1.0 ms past its deadline (switched off)"),
        (logging.WARNING, "door relay on GPIO17 was still on 250.0 ms past its deadline (switched off)"),
    ]  # fmt: skip


def test_enforce_deadline_when_idle_does_nothing(door, factory):
    assert door.enforce_deadline() is False
    assert levels(factory) == [False]


def test_pulse_after_timer_fired_starts_a_new_pulse(door, factory, timer, clock):
    door.pulse(500)
    timer.handles[0].fire()
    clock.advance_ms(2000)
    door.pulse(500)
    assert door.last_on_ns == clock.now_ns
    timer.handles[0].fire()  # the old, already-used timer must not cut the new pulse
    assert levels(factory) == [False, True, False, True]
    timer.handles[1].fire()
    assert levels(factory) == [False, True, False, True, False]


def test_close_while_on_switches_off_and_frees_the_pin(door, factory, timer):
    door.pulse(3000)
    door.close()
    assert levels(factory) == [False, True, False]
    assert factory.pin(PIN).function == "input"
    assert door.closed
    assert not door.is_open
    door.close()  # idempotent
    timer.handles[0].fire()  # late timer after close: harmless
    assert levels(factory) == [False, True, False]
    with pytest.raises(GpioError, match="GPIO17 is closed"):
        door.pulse(100)
    door.release()  # no-op when closed
    assert door.enforce_deadline() is False


def test_pin_can_be_reused_after_close(factory, timer):
    RelayDoor(PIN, active_high=True, max_pulse_ms=100, pin_factory=factory, timer=timer).close()
    again = RelayDoor(PIN, active_high=True, max_pulse_ms=100, pin_factory=factory, timer=timer)
    again.close()


def test_a_timer_that_cannot_start_leaves_the_relay_off(factory, clock):
    def broken_timer(seconds, callback):
        raise RuntimeError("can't start new thread")

    door = RelayDoor(
        PIN,
        active_high=True,
        max_pulse_ms=1000,
        pin_factory=factory,
        timer=broken_timer,
        clock_ns=clock,
    )
    with pytest.raises(GpioError, match=r"switch-off timer.*relay switched off"):
        door.pulse(500)
    assert levels(factory) == [False, True, False]
    door.close()


def test_a_timer_that_fires_at_once_does_not_deadlock(factory, clock):
    def immediate(seconds, callback):
        callback()
        return Handle(seconds, callback)

    door = RelayDoor(
        PIN,
        active_high=True,
        max_pulse_ms=1000,
        pin_factory=factory,
        timer=immediate,
        clock_ns=clock,
    )
    assert door.pulse(500) == 500
    assert levels(factory) == [False, True, False]
    door.close()


def test_default_thread_timer_switches_off(factory):
    door = RelayDoor(PIN, active_high=True, max_pulse_ms=1000, pin_factory=factory)
    try:
        door.pulse(2)
        # Waits for the timer thread's event; the bound only ends a hang (a busy machine may
        # start the thread late, and that is not a failure).
        deadline = time.monotonic() + 60.0
        while door.is_open and time.monotonic() < deadline:
            time.sleep(0.001)
        assert levels(factory) == [False, True, False]
    finally:
        door.close()


@pytest.mark.parametrize("bad", [0, -1])
def test_max_pulse_must_be_positive(factory, bad):
    with pytest.raises(ValueError, match="max_pulse_ms must be > 0"):
        RelayDoor(PIN, active_high=True, max_pulse_ms=bad, pin_factory=factory)


def test_pin_in_use_is_a_clear_error(door, factory):
    with pytest.raises(GpioError, match="door relay on GPIO17"):
        RelayDoor(PIN, active_high=True, max_pulse_ms=100, pin_factory=factory)


def test_interpreter_exit_releases_the_relay(tmp_path):
    # A real interpreter exits with the relay on and a pending (daemon) timer: atexit must switch
    # it off. The printer is registered first, so it runs last (atexit is LIFO).
    script = textwrap.dedent(
        """
        import atexit
        from gpiozero.pins.mock import MockFactory
        from hardware.gpio.relay import RelayDoor

        factory = MockFactory()
        atexit.register(lambda: print([s.state for s in factory.pin(17).states]))
        door = RelayDoor(17, active_high=True, max_pulse_ms=10_000, pin_factory=factory)
        door.pulse(10_000)
        raise SystemExit(3)
        """
    )
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=30,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 3, result.stderr
    assert result.stdout.strip() == "[False, True, False]"


def test_force_off_drives_a_stuck_pin_to_the_inactive_level(factory):
    stuck = factory.pin(PIN)
    stuck.function = "output"
    stuck.state = True  # what a killed scanner may leave behind
    device = force_off(PIN, True, factory)
    assert [s.state for s in stuck.states][-1] is False
    assert stuck.function == "output"  # left driven, not floating
    assert not device.closed


def test_force_off_active_low_drives_the_pin_high(factory):
    force_off(PIN, False, factory)
    assert levels(factory) == [False, True]
    assert factory.pin(PIN).function == "output"


def test_force_off_on_a_pin_in_use_is_a_clear_error(door, factory):
    with pytest.raises(GpioError, match="cannot force the door relay on GPIO17 off"):
        force_off(PIN, True, factory)
