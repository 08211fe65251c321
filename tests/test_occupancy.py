"""Occupancy as tables: who counts as inside, and when the count starts again (the gym's closing)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kiosk.core.model import AccessWindow
from kiosk.core.occupancy import (
    ENTRY,
    EXIT,
    GRANT,
    TAILGATING,
    Movement,
    Occupancy,
    count,
    last_reset,
)

RESET = datetime(2026, 3, 10, 0, 0, tzinfo=UTC)  # a Tuesday


def at(minutes: float) -> datetime:
    return RESET + timedelta(minutes=minutes)


def moves(*pairs: tuple[float, str]) -> list[Movement]:
    return [Movement(at(m), kind) for m, kind in pairs]


NOON = at(12 * 60)


@pytest.mark.parametrize(
    ("movements", "confirmed", "max_visit", "expected"),
    [
        # Without the entry input, the grants are the entries.
        (moves((60, GRANT), (61, GRANT), (90, EXIT)), False, None, (1, 2, 1, 2)),
        # With it, only passages count: a grant still waiting (or never confirmed) is not inside,
        # and someone who went in without a grant is.
        (
            moves((60, GRANT), (60.1, ENTRY), (70, GRANT), (80, TAILGATING)),
            True,
            None,
            (2, 2, 0, 2),
        ),
        # Never below zero: exits of people counted before the reset (or at another door).
        (moves((30, EXIT), (31, EXIT), (60, GRANT)), False, None, (1, 1, 2, 1)),
        # An exit at the same instant as an entry is not lost to the floor.
        (moves((60, GRANT), (60, EXIT)), False, None, (0, 1, 1, 1)),
        # Without an exit signal a visit ends after max_visit (60 min): 10:00 and 11:00 are gone
        # at noon (the second exactly an hour old), 11:45 is still inside; the peak was two.
        (moves((600, GRANT), (660, GRANT), (705, GRANT)), False, 60, (1, 3, 0, 2)),
        # ... and an entry exactly max_visit old is gone.
        (moves((630, GRANT)), False, 90, (0, 1, 0, 1)),
        # Movements before the reset are yesterday's.
        (moves((-5, GRANT), (-1, ENTRY), (10, GRANT)), False, None, (1, 1, 0, 1)),
        (moves(), True, None, (0, 0, 0, 0)),
    ],
)
def test_count(movements, confirmed, max_visit, expected):
    visit = None if max_visit is None else timedelta(minutes=max_visit)
    result = count(movements, since=RESET, now=NOON, confirmed=confirmed, max_visit=visit)
    assert (result.now, result.entries, result.exits, result.max) == expected
    assert result.since == RESET and result.capacity is None


def test_the_order_given_does_not_matter_and_the_report_has_the_heartbeat_shape():
    forward = moves((60, GRANT), (61, GRANT), (62, EXIT), (63, GRANT))
    result = count(forward[::-1], since=RESET, now=NOON, confirmed=False, capacity=40)
    assert result == count(forward, since=RESET, now=NOON, confirmed=False, capacity=40)
    assert result.report() == {
        "now": 2, "entries_today": 3, "exits_today": 1, "max_today": 2, "capacity": 40,
    }  # fmt: skip


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="unknown movement kind"):
        count([Movement(NOON, "annulled")], since=RESET, now=NOON, confirmed=True)
    with pytest.raises(ValueError, match="naive"):
        count([], since=RESET.replace(tzinfo=None), now=NOON, confirmed=True)


@given(
    st.lists(
        st.tuples(st.integers(-60, 24 * 60), st.sampled_from([GRANT, ENTRY, TAILGATING, EXIT])),
        max_size=40,
    ),
    st.booleans(),
    st.sampled_from([None, 30, 120]),
)
def test_never_below_zero_and_never_above_the_entries(pairs, confirmed, max_visit):
    visit = None if max_visit is None else timedelta(minutes=max_visit)
    now = at(24 * 60)
    result: Occupancy = count(moves(*pairs), since=RESET, now=now, confirmed=confirmed,
                              max_visit=visit)  # fmt: skip
    assert 0 <= result.now <= result.max <= result.entries


def hours(*spans: tuple[int, str, str]) -> tuple[AccessWindow, ...]:
    def minute(text: str) -> int:
        h, m = text.split(":")
        return int(h) * 60 + int(m)

    return tuple(AccessWindow(day, minute(a), minute(b)) for day, a, b in spans)


WEEKDAYS_6_TO_22 = hours(*((d, "06:00", "22:00") for d in range(7)))
# Open late on Friday: 18:00 to 02:00 on Saturday, written as two windows.
LATE_FRIDAY = hours((4, "08:00", "12:00"), (4, "18:00", "24:00"), (5, "00:00", "02:00"))


def local(text: str) -> datetime:
    return datetime.fromisoformat(text)


@pytest.mark.parametrize(
    ("windows", "zone", "when", "expected"),
    [
        # Open around the clock: local midnight.
        ((), "UTC", "2026-03-10T15:00+00:00", "2026-03-10T00:00+00:00"),
        ((), "Europe/Berlin", "2026-03-10T00:30+01:00", "2026-03-10T00:00+01:00"),
        # Closing at 22:00: the count of the day runs from last night's 22:00 on.
        (WEEKDAYS_6_TO_22, "UTC", "2026-03-10T15:00+00:00", "2026-03-09T22:00+00:00"),
        (WEEKDAYS_6_TO_22, "UTC", "2026-03-10T22:00+00:00", "2026-03-10T22:00+00:00"),
        (WEEKDAYS_6_TO_22, "UTC", "2026-03-10T23:59+00:00", "2026-03-10T22:00+00:00"),
        # In the gym's time zone.
        (WEEKDAYS_6_TO_22, "America/New_York", "2026-03-10T15:00-04:00",
         "2026-03-09T22:00-04:00"),
        # A window run past midnight as two windows closes at the end of the second: at 01:00 on
        # Saturday the count of Friday evening goes on; at 03:00 it has started again.
        (LATE_FRIDAY, "UTC", "2026-03-14T01:00+00:00", "2026-03-13T12:00+00:00"),
        (LATE_FRIDAY, "UTC", "2026-03-14T03:00+00:00", "2026-03-14T02:00+00:00"),
        # Days with no window look back to the last closing (the week before, if need be).
        (LATE_FRIDAY, "UTC", "2026-03-19T10:00+00:00", "2026-03-14T02:00+00:00"),
        # Open all week without a gap: no closing, so midnight.
        (hours(*((d, "00:00", "24:00") for d in range(7))), "UTC", "2026-03-10T15:00+00:00",
         "2026-03-10T00:00+00:00"),
        # Open over Sunday night into Monday: closes Monday 01:00, not at Sunday's midnight.
        (hours((6, "20:00", "24:00"), (0, "00:00", "01:00")), "UTC", "2026-03-16T00:30+00:00",
         "2026-03-09T01:00+00:00"),
    ],
)  # fmt: skip
def test_last_reset(windows, zone, when, expected):
    assert last_reset(windows, local(when), zone) == local(expected).astimezone(UTC)
