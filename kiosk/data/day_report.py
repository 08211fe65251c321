"""The owner page's day figures, read from the journal: who went through the door, and when.

``DayReport`` is the part of ``kiosk.data.store.Store`` that counts a span of the journal for the
owner page's picture of the day (``Store.day_counts``): the entries (granted check-ins that went
through) per minute, and the door's passage events (``door_events``: entry confirmed, annulled,
tailgating, exit) by kind. Read only; it never writes.

What counts as an entry: a granted check-in with no ``annulled`` event (the member never passed)
and no ``exit`` event naming it (the grant of an exit-side scanner is someone leaving). A grant
still waiting for its passage counts, as the door counts it until it is annulled.

Cost: ranges of the wall-time indexes of ``checkins`` and ``door_events``, one primary-key probe
of ``door_events`` by check-in per granted row; the entries come back per minute, so the answer is
at most 1,440 rows a day however busy the door. Minutes, not hours: the page buckets them into
the gym's local hours, and a time zone's offset is a whole number of minutes.

Times: the door's wall time as recorded on each row (UTC). Failure modes: database failures raise
``StoreError`` (``kiosk.data.database``); ValueError for a naive ``datetime``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from kiosk.core.model import EventKind
from kiosk.data.database import Database, utc_text

# The passage event kinds of the journal's ``door_events`` table (its CHECK), in the order the
# page lists them.
EVENT_KINDS = tuple(kind.value for kind in EventKind)


@dataclass(frozen=True, slots=True)
class DayCounts:
    """A span of the journal counted for the owner page.

    ``entries_by_minute``: granted check-ins that went through (see the module's doc), per UTC
    minute (the key is the minute's start, aware UTC); minutes with none are left out.
    ``events``: the door's passage events by kind, every kind of ``EVENT_KINDS`` present."""

    entries_by_minute: dict[datetime, int] = field(default_factory=dict)
    events: dict[str, int] = field(default_factory=lambda: dict.fromkeys(EVENT_KINDS, 0))

    @property
    def entries(self) -> int:
        return sum(self.entries_by_minute.values())


def _minute(text: str) -> datetime:
    """``YYYY-MM-DDTHH:MM`` (the first 16 characters of a stored UTC time) as aware UTC."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


class DayReport(Database):
    """The owner page's day figures, mixed into ``kiosk.data.store.Store`` (one connection, one
    lock: ``Database``). Every method raises ``StoreError`` on database failures."""

    def day_counts(self, start: datetime, end: datetime) -> DayCounts:
        """The journal's entries and passage events with a wall time in ``[start, end)``
        (``DayCounts``), read in one snapshot. Raises ValueError for a naive ``start`` or
        ``end``."""
        low, high = utc_text(start, "start"), utc_text(end, "end")
        with self._read("count the day's entries") as conn:
            minutes = conn.execute(
                "SELECT substr(c.wall_time, 1, 16), COUNT(*) FROM checkins AS c"
                " WHERE c.wall_time >= ? AND c.wall_time < ? AND c.decision = 'granted'"
                " AND NOT EXISTS (SELECT 1 FROM door_events AS e"
                "  WHERE e.checkin_id = c.id AND e.kind IN ('annulled', 'exit'))"
                " GROUP BY 1",
                (low, high),
            ).fetchall()
            kinds = conn.execute(
                "SELECT kind, COUNT(*) FROM door_events WHERE wall_time >= ? AND wall_time < ?"
                " GROUP BY kind",
                (low, high),
            ).fetchall()
        events = dict.fromkeys(EVENT_KINDS, 0)
        for kind, count in kinds:
            events[str(kind)] = int(count)
        return DayCounts(
            entries_by_minute={_minute(str(text)): int(count) for text, count in minutes},
            events=events,
        )
