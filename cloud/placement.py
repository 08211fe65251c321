"""Placing device events in time (pure; docs/sync-protocol.md, "Time placement").

A Pi has no battery clock: its wall clock may read 1970, a year ahead, or step backwards when NTP
finally answers. Its monotonic clock is right within a boot. So the cloud keeps **anchors**, pairs
(boot, monotonic reading) ↔ cloud time: one for every request's arrival (the device sends its
monotonic reading as ``clock``) and the ones the device recorded from server times. An event of a
boot with an anchor is placed at ``anchor.server_time + (event.monotonic − anchor.monotonic)``,
using the anchor nearest in monotonic time (least drift); an event without one is placed at its
wall time and marked ``device_ntp`` or ``device_unsynced``, and placed again when its boot's first
anchor arrives.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from datetime import datetime

from sync.protocol import Anchor, place_in_time

ANCHORED, DEVICE_NTP, DEVICE_UNSYNCED = "anchored", "device_ntp", "device_unsynced"
TIME_SOURCES = (ANCHORED, DEVICE_NTP, DEVICE_UNSYNCED)

# A new anchor within this monotonic distance of a stored one of the same boot adds nothing (the
# monotonic clock drifts by microseconds per minute), so it is not stored: a device polling every
# few seconds keeps at most one anchor per minute of uptime.
ANCHOR_SPACING_NS = 60 * 1_000_000_000

# Placements outside these years mean a broken anchor; the event keeps its wall time instead.
_SANE_YEARS = range(1000, 10000)


def nearest_anchor(anchors: Sequence[Anchor], monotonic_ns: int) -> Anchor | None:
    """The anchor nearest in monotonic time, from anchors of one boot sorted by monotonic_ns."""
    if not anchors:
        return None
    keys = [a.monotonic_ns for a in anchors]
    n = bisect.bisect_left(keys, monotonic_ns)
    candidates = [anchors[i] for i in (n - 1, n) if 0 <= i < len(anchors)]
    return min(candidates, key=lambda a: abs(a.monotonic_ns - monotonic_ns))


def anchored_time(boot_id: str, monotonic_ns: int, anchors: Sequence[Anchor]) -> datetime | None:
    """The cloud time of an event from the nearest anchor of its boot, or None when the boot has
    no anchor (or the anchor would put it outside years 1000-9999: a broken anchor)."""
    anchor = nearest_anchor([a for a in anchors if a.boot_id == boot_id], monotonic_ns)
    if anchor is None:
        return None
    try:
        placed = place_in_time(boot_id, monotonic_ns, anchor)
    except OverflowError:
        return None
    return placed if placed.year in _SANE_YEARS else None


def place(
    boot_id: str,
    monotonic_ns: int,
    wall_time: datetime,
    clock_quality: str,
    anchors: Sequence[Anchor],
) -> tuple[datetime, str]:
    """(occurred_at, time source) of one event, from its boot's anchors (sorted, maybe empty)."""
    placed = anchored_time(boot_id, monotonic_ns, anchors)
    if placed is not None:
        return placed, ANCHORED
    return wall_time, DEVICE_NTP if clock_quality == "ntp_synced" else DEVICE_UNSYNCED
