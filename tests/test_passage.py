"""The turnstile's passage inputs on gpiozero mock pins, stamped by an injected clock: one passage
per closing of a contact however it bounces, with the pull-up or the pull-down, per direction."""

from __future__ import annotations

import pytest
from gpiozero.pins.mock import MockFactory

from hardware.gpio.passage import MAX_QUEUED, GpioPassageSensor
from hardware.gpio.pins import GpioError
from hardware.protocols import ENTRY, EXIT, PassageEvent, PassageSensor

ENTRY_PIN, EXIT_PIN = 5, 6
MS = 1_000_000


class Clock:
    """A monotonic clock in ns that moves only when the test says so."""

    def __init__(self) -> None:
        self.now_ns = 1_000 * MS

    def __call__(self) -> int:
        return self.now_ns

    def advance_ms(self, ms: float) -> None:
        self.now_ns += int(ms * MS)


@pytest.fixture
def pins():
    return MockFactory()


@pytest.fixture
def clock():
    return Clock()


def sensor(pins, clock, *, entry=ENTRY_PIN, exit=EXIT_PIN, pull_up=True, bounce_ms=50):
    return GpioPassageSensor(
        entry_pin=entry, exit_pin=exit, pull_up=pull_up, bounce_ms=bounce_ms, pin_factory=pins,
        clock_ns=clock,
    )  # fmt: skip


def close_contact(pins, pin, *, pull_up=True):
    """The turnstile's PASS contact closes: to ground with the pull-up, to 3.3 V without."""
    if pull_up:
        pins.pin(pin).drive_low()
    else:
        pins.pin(pin).drive_high()


def open_contact(pins, pin, *, pull_up=True):
    if pull_up:
        pins.pin(pin).drive_high()
    else:
        pins.pin(pin).drive_low()


def test_implements_the_passage_sensor_protocol(pins, clock):
    both = sensor(pins, clock)
    assert isinstance(both, PassageSensor)
    assert both.directions == {ENTRY, EXIT}
    assert sensor(MockFactory(), clock, exit=None).directions == {ENTRY}
    assert sensor(MockFactory(), clock, entry=None).directions == {EXIT}


def test_the_inputs_are_pulled_up_and_read_a_closed_contact_as_a_passage(pins, clock):
    passages = sensor(pins, clock)
    for pin in (ENTRY_PIN, EXIT_PIN):
        assert pins.pin(pin).function == "input" and pins.pin(pin).pull == "up"
        assert pins.pin(pin).state is True  # an open contact reads high
    assert passages.poll() == []
    close_contact(pins, ENTRY_PIN)
    clock.advance_ms(120)  # the turnstile holds its PASS contact closed for a while
    open_contact(pins, ENTRY_PIN)
    assert passages.poll() == [PassageEvent(ENTRY, 1_000 * MS)]
    assert passages.poll() == []  # handed over once


def test_with_the_pull_down_a_contact_to_3v3_is_a_passage(pins, clock):
    passages = sensor(pins, clock, pull_up=False)
    assert pins.pin(ENTRY_PIN).pull == "down" and pins.pin(ENTRY_PIN).state is False
    close_contact(pins, ENTRY_PIN, pull_up=False)
    open_contact(pins, ENTRY_PIN, pull_up=False)
    assert passages.poll() == [PassageEvent(ENTRY, clock())]
    # Going low is the contact opening, not a passage.
    assert passages.poll() == []


def test_each_direction_reports_its_own_passages_in_order(pins, clock):
    passages = sensor(pins, clock)
    close_contact(pins, EXIT_PIN)
    open_contact(pins, EXIT_PIN)
    clock.advance_ms(300)
    close_contact(pins, ENTRY_PIN)
    clock.advance_ms(100)
    close_contact(pins, EXIT_PIN)  # someone leaves while the entry contact is still closed
    open_contact(pins, ENTRY_PIN)
    open_contact(pins, EXIT_PIN)
    assert passages.poll() == [
        PassageEvent(EXIT, 1_000 * MS),
        PassageEvent(ENTRY, 1_300 * MS),
        PassageEvent(EXIT, 1_400 * MS),
    ]


def test_a_bouncing_contact_is_one_passage(pins, clock):
    passages = sensor(pins, clock, bounce_ms=50)
    # Closing: the contact chatters for 3 ms, then stays closed for 100 ms.
    for _ in range(4):
        close_contact(pins, ENTRY_PIN)
        clock.advance_ms(0.5)
        open_contact(pins, ENTRY_PIN)
        clock.advance_ms(0.5)
    close_contact(pins, ENTRY_PIN)
    clock.advance_ms(100)
    # Opening: it chatters again (each reopening shorter than the bounce time).
    for _ in range(3):
        open_contact(pins, ENTRY_PIN)
        clock.advance_ms(1)
        close_contact(pins, ENTRY_PIN)
        clock.advance_ms(1)
    open_contact(pins, ENTRY_PIN)
    assert passages.poll() == [PassageEvent(ENTRY, 1_000 * MS)]


def test_a_closing_after_the_contact_was_open_for_the_bounce_time_is_a_new_passage(pins, clock):
    passages = sensor(pins, clock, bounce_ms=50)
    close_contact(pins, ENTRY_PIN)
    clock.advance_ms(10)
    open_contact(pins, ENTRY_PIN)
    clock.advance_ms(49)
    close_contact(pins, ENTRY_PIN)  # open for 49 ms: still the same closing
    clock.advance_ms(10)
    open_contact(pins, ENTRY_PIN)
    clock.advance_ms(50)
    close_contact(pins, ENTRY_PIN)  # open for 50 ms: the next person
    open_contact(pins, ENTRY_PIN)
    assert [e.monotonic_ns for e in passages.poll()] == [1_000 * MS, 1_119 * MS]


def test_bounce_zero_counts_every_closing(pins, clock):
    passages = sensor(pins, clock, bounce_ms=0)
    for _ in range(3):
        close_contact(pins, EXIT_PIN)
        open_contact(pins, EXIT_PIN)
    assert [e.direction for e in passages.poll()] == [EXIT] * 3


def test_the_queue_is_bounded_and_keeps_the_newest(pins, clock, caplog):
    passages = sensor(pins, clock, bounce_ms=0)
    for _ in range(MAX_QUEUED + 5):
        close_contact(pins, ENTRY_PIN)
        clock.advance_ms(1)
        open_contact(pins, ENTRY_PIN)
    events = passages.poll()
    assert len(events) == MAX_QUEUED
    assert events[-1].monotonic_ns == clock() - MS
    assert "5 passages were dropped" in caplog.text


@pytest.mark.parametrize(
    ("entry", "exit", "bounce", "message"),
    [
        (None, None, 50, "at least one"),
        (5, 5, 50, "share GPIO5"),
        (5, None, -1, "bounce_ms"),
    ],
)
def test_bad_arguments_are_refused(pins, clock, entry, exit, bounce, message):
    with pytest.raises(ValueError, match=message):
        sensor(pins, clock, entry=entry, exit=exit, bounce_ms=bounce)


def test_a_pin_in_use_is_a_gpio_error_and_nothing_is_left_claimed(pins, clock):
    taken = sensor(pins, clock, entry=None, exit=EXIT_PIN)
    with pytest.raises(GpioError, match="exit passage input on GPIO6"):
        sensor(pins, clock, entry=ENTRY_PIN, exit=EXIT_PIN)
    taken.close()
    # The failed sensor released the entry pin it had claimed: both can be set up now.
    again = sensor(pins, clock)
    assert again.directions == {ENTRY, EXIT}


def test_close_frees_the_pins_and_stops_reporting(pins, clock):
    passages = sensor(pins, clock)
    passages.close()
    passages.close()  # twice is harmless
    close_contact(pins, ENTRY_PIN)
    assert passages.poll() == []
    sensor(pins, clock).close()  # the pins can be claimed again
