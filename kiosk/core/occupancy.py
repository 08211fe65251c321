"""Occupancy: how many people are inside, counted at one door. Pure functions of the journal's
movements since the last reset and the gym's hours; no clock, no state.

Rules (docs/architecture.md#occupancy):

- **What comes in.** With the turnstile's entry input wired (``confirmed`` True) the entries are
  the passages: ``entry`` events (a grant the turnstile turned for) and ``tailgating`` events (a
  passage with no grant: someone went in all the same). Without it they are the granted check-ins
  (``grant``: not annulled, and not the grants of an exit-side scanner, which are exits).
- **What goes out.** ``exit`` events: an exit passage, or a grant at an exit-side scanner.
  Without any exit signal, ``max_visit`` (the owner's maximum visit length) counts an entry as
  gone once it is that old; None counts nobody as gone.
- **Never below zero.** An exit with nobody counted inside (someone who came in before the
  reset, or through another door) changes nothing.
- **Reset at closing.** The count starts at the gym's last closing time (``last_reset``): the end
  of an opening window that is not continued by another (so a late window run past midnight as
  two windows closes at the end of the second); local midnight for a gym open around the clock.

Times are timezone-aware UTC ``datetime`` values; local time exists only inside ``last_reset``.
Failure modes: ValueError for a naive ``datetime`` or an unknown time zone.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from kiosk.core.model import AccessWindow

# The kinds of ``Movement`` (the journal's granted check-ins and door event kinds).
GRANT, ENTRY, TAILGATING, EXIT = "grant", "entry", "tailgating", "exit"
MOVEMENT_KINDS = frozenset({GRANT, ENTRY, TAILGATING, EXIT})

_DAY = 1440
_WEEK = 7 * _DAY


@dataclass(frozen=True, slots=True)
class Movement:
    """One thing the journal says happened at the door: ``kind`` is ``grant`` (a granted check-in,
    not annulled, not an exit-side scanner's), ``entry``, ``tailgating`` or ``exit`` (door
    events); ``at`` its wall time (aware UTC)."""

    at: datetime
    kind: str


@dataclass(frozen=True, slots=True)
class OccupancyRules:
    """How a door counts (``kiosk.config.occupancy_rules`` derives them from the configuration):
    the gym's ``timezone`` (its closing time resets the count); ``confirmed``: the turnstile's
    entry contact is wired at an entry door (entries are passages, else grants);
    ``max_visit_minutes``: without an exit signal, an entry counts as gone after this long (0:
    never); ``capacity``: the owner's limit (0: none)."""

    timezone: str = "UTC"
    confirmed: bool = False
    max_visit_minutes: float = 0.0
    capacity: int = 0

    @property
    def max_visit(self) -> timedelta | None:
        return timedelta(minutes=self.max_visit_minutes) if self.max_visit_minutes > 0 else None


@dataclass(frozen=True, slots=True)
class Occupancy:
    """The door's count since ``since`` (the last reset). ``now``: inside at this moment;
    ``entries`` and ``exits``: movements in and out counted since the reset (entries that timed
    out under the visit length count as neither exits nor entries undone); ``max``: the highest
    ``now`` reached since the reset; ``capacity``: the owner's limit (None: none)."""

    now: int
    entries: int
    exits: int
    max: int
    capacity: int | None
    since: datetime

    def report(self) -> dict[str, int | None]:
        """The heartbeat's and the health report's shape: ``now``, ``entries_today``,
        ``exits_today``, ``max_today``, ``capacity`` (None: no limit)."""
        return {
            "now": self.now,
            "entries_today": self.entries,
            "exits_today": self.exits,
            "max_today": self.max,
            "capacity": self.capacity,
        }


def count(
    movements: Iterable[Movement],
    *,
    since: datetime,
    now: datetime,
    confirmed: bool,
    max_visit: timedelta | None = None,
    capacity: int = 0,
) -> Occupancy:
    """The occupancy at ``now`` from ``movements`` at or after ``since`` (earlier ones are before
    the reset and ignored; the order given does not matter). ``confirmed``: entries are passages
    (``entry``, ``tailgating``), else grants. ``max_visit`` (None or zero: no limit) counts an
    entry as gone when it is that old at ``now``. ``capacity`` 0 means no limit. Raises
    ValueError for a naive time or an unknown movement kind."""
    _aware("since", since)
    _aware("now", now)
    ins = {ENTRY, TAILGATING} if confirmed else {GRANT, TAILGATING}
    limit = max_visit if max_visit is not None and max_visit > timedelta(0) else None
    # (time, order, delta): at one instant entries go first, so an exit at the same instant as an
    # entry is not lost to the floor at zero; a visit that ended goes with the exits.
    steps: list[tuple[datetime, int, int]] = []
    entries = exits = 0
    for movement in movements:
        if movement.kind not in MOVEMENT_KINDS:
            raise ValueError(f"unknown movement kind {movement.kind!r}")
        _aware("Movement.at", movement.at)
        if movement.at < since:
            continue
        if movement.kind in ins:
            entries += 1
            steps.append((movement.at, 0, 1))
            if limit is not None and movement.at + limit <= now:
                steps.append((movement.at + limit, 1, -1))
        elif movement.kind == EXIT:
            exits += 1
            steps.append((movement.at, 1, -1))
    inside = highest = 0
    for _at, _order, delta in sorted(steps):
        inside = max(0, inside + delta)
        highest = max(highest, inside)
    return Occupancy(
        now=inside,
        entries=entries,
        exits=exits,
        max=highest,
        capacity=capacity if capacity > 0 else None,
        since=since,
    )


def last_reset(opening_hours: Iterable[AccessWindow], when: datetime, timezone: str) -> datetime:
    """The gym's latest closing time at or before ``when``, as aware UTC: the end of an opening
    window that no other window continues (windows are weekly, in the gym's local time, and may
    run on into the next day as two windows). Local midnight of ``when``'s date when there are no
    hours at all, or they leave no gap in the week (open around the clock). Raises ValueError for
    a naive ``when`` or an unknown time zone."""
    _aware("when", when)
    zone = _zone(timezone)
    local = when.astimezone(zone)
    closings = _closings(opening_hours)
    if closings:
        for back in range(8):
            day = local.date() - timedelta(days=back)
            found = [
                datetime.combine(day, time(minute // 60, minute % 60), tzinfo=zone)
                for weekday, minute in closings
                if weekday == day.weekday()
            ]
            found = [moment for moment in found if moment <= local]
            if found:
                return max(found).astimezone(UTC)
    return datetime.combine(local.date(), time(0), tzinfo=zone).astimezone(UTC)


def _closings(windows: Iterable[AccessWindow]) -> list[tuple[int, int]]:
    """The week's closing moments as (weekday, minute): the ends of the opening windows merged
    across midnights and the week's end. Empty when there are no windows or no gap."""
    spans = sorted(
        (w.weekday * _DAY + w.start_minute, w.weekday * _DAY + w.end_minute) for w in windows
    )
    if not spans:
        return []
    merged: list[list[int]] = []
    for start, end in spans:
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    if merged[0][0] == 0 and merged[-1][1] >= _WEEK and len(merged) > 1:
        # Open over Sunday night into Monday: one span across the week's end.
        merged[0][0] = merged[-1][0]
        merged.pop()
    if len(merged) == 1 and merged[0][1] - merged[0][0] >= _WEEK:
        return []
    return [divmod(end % _WEEK, _DAY) for _start, end in merged]


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"{name!r} is not a known IANA time zone") from exc


def _aware(name: str, value: datetime) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime (UTC), got a naive one")
