"""Time for the scanner: wall clock, monotonic clock, boot id and how far the wall clock is trusted.

The Pi has no battery-backed clock, so the wall time can be anything until NTP (or, later, a server
anchor from the sync agent) sets it. Check-ins therefore carry monotonic time and the boot id as well,
and the access policy never lets a wall clock that stepped backwards revive an expired membership.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

from kiosk.ids import boot_id
from kiosk.model import ClockQuality

# systemd-timesyncd touches this file once the clock is synchronised (systemd >= 239).
TIMESYNC_FLAG = Path("/run/systemd/timesync/synchronized")
_TIME_ERROR = 5  # adjtimex() return value: "clock not synchronised" (see adjtimex(2))


class Clock(Protocol):
    """What the scanner loop reads time from; injected so tests and the demo never sleep for real."""

    boot_id: str

    def wall(self) -> datetime:
        """Now, timezone-aware UTC."""
        ...

    def monotonic_ns(self) -> int: ...

    def quality(self) -> ClockQuality: ...

    def sleep(self, seconds: float) -> None: ...


def kernel_clock_synced() -> bool:
    """True when the kernel says the wall clock is NTP-synchronised.

    Reads systemd-timesyncd's flag file, then asks the kernel through adjtimex(2) in read-only mode
    (works for chrony and ntpd too). Any failure (not Linux, no libc) counts as not synchronised.
    """
    if TIMESYNC_FLAG.exists():
        return True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        buf = ctypes.create_string_buffer(512)  # struct timex is 208 bytes on 64-bit; modes=0 reads
        state = libc.adjtimex(buf)
    except (OSError, AttributeError):
        return False
    return state not in (-1, _TIME_ERROR)


class SystemClock:
    """The real clocks. Quality is re-read at most every ``quality_every_s`` seconds (cheap anyway)."""

    def __init__(
        self,
        synced: Callable[[], bool] = kernel_clock_synced,
        quality_every_s: float = 30.0,
    ) -> None:
        self.boot_id = boot_id()
        self._synced = synced
        self._every_ns = int(quality_every_s * 1e9)
        self._checked_ns: int | None = None
        self._quality = ClockQuality.UNSYNCED

    def wall(self) -> datetime:
        return datetime.now(UTC)

    def monotonic_ns(self) -> int:
        return time.monotonic_ns()

    def quality(self) -> ClockQuality:
        now = time.monotonic_ns()
        if self._checked_ns is None or now - self._checked_ns >= self._every_ns:
            self._quality = ClockQuality.NTP_SYNCED if self._synced() else ClockQuality.UNSYNCED
            self._checked_ns = now
        return self._quality

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class SimClock:
    """A clock that only moves when told to: ``sleep`` advances it instantly.

    Used by tests and by ``kiosk demo --once`` so a scenario with cooldowns and passback windows plays
    in a second of real time. Wall and monotonic time advance together.
    """

    def __init__(
        self,
        start: datetime | None = None,
        *,
        quality: ClockQuality = ClockQuality.NTP_SYNCED,
        boot: str | None = None,
    ) -> None:
        self._start = start or datetime.now(UTC)
        self._elapsed_ns = 0
        self._base_ns = 1_000_000_000  # monotonic clocks never start at zero; neither does ours
        # Each simulated clock is its own "boot": monotonic times never compare across instances.
        self.boot_id = boot or f"sim-{uuid.uuid4()}"
        self.fixed_quality = quality

    def wall(self) -> datetime:
        return self._start + timedelta(microseconds=self._elapsed_ns // 1000)

    def monotonic_ns(self) -> int:
        return self._base_ns + self._elapsed_ns

    def quality(self) -> ClockQuality:
        return self.fixed_quality

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)

    def advance(self, seconds: float) -> None:
        self._elapsed_ns += max(0, int(seconds * 1e9))
