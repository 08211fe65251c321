"""Time for the scanner: wall clock, monotonic clock, boot id and how far the wall clock is trusted.

The Pi has no battery-backed clock, so the wall time can be anything until NTP or a server anchor
from the sync agent sets it. Check-ins therefore carry monotonic time and the boot id as well, and
the access policy never lets a wall clock that stepped backwards revive an expired membership.
``AnchoredClock`` tells the time from the newest anchor of this boot (the sync agent records one
on every exchange that carries the cloud's time) while the kernel's clock is not NTP-synced.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from kiosk.core.ids import boot_id
from kiosk.core.model import ClockQuality

if TYPE_CHECKING:
    from sync.protocol import Anchor

log = logging.getLogger(__name__)

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


# A wall clock earlier than this was never set (no NTP yet, no battery clock): the project did not
# exist before, so no real check-in can happen earlier. The access policy refuses to decide by such
# a clock, and no cloud can really be this far behind.
EARLIEST_TRUSTED_TIME = datetime(2026, 1, 1, tzinfo=UTC)

# A cloud time outside these bounds is a broken or hostile answer, not a time to run a door by
# (the upper bound keeps every later computation far from datetime's year 9999 limit).
PLAUSIBLE_SERVER_TIMES = (
    EARLIEST_TRUSTED_TIME,
    datetime(2200, 1, 1, tzinfo=UTC),
)


def plausible_server_time(moment: datetime) -> bool:
    """True when ``moment`` (aware) can be the cloud's real time."""
    low, high = PLAUSIBLE_SERVER_TIMES
    return low <= moment < high


class AnchoredClock:
    """A clock that tells the cloud's time while the base clock is not NTP-synced.

    ``anchor_for(boot_id)`` returns the newest anchor of that boot (``Store.latest_anchor``): the
    sync agent's monotonic reading ``monotonic_ns`` happened at cloud time ``server_time``. The
    kernel's monotonic clock is shared by every process of one boot, so the scanner can use an
    anchor the agent recorded: wall time = ``server_time + (monotonic_now - monotonic_ns)``, with
    quality ``server_anchored``. An NTP-synced base clock always wins; without an anchor for this
    boot the base clock is used as it is (the policy's clock floor still guards it).

    The anchor is cached: read at the first ``wall()``, again on ``refresh()`` (the scanner calls it
    when its replica cache refreshes) and at most every ``refresh_every_s`` seconds of monotonic
    time, so no frame and no decision waits on an extra query. A failing ``anchor_for`` (database
    locked, damaged) keeps the previous anchor and is logged: a clock never stops the door.
    """

    def __init__(
        self,
        base: Clock,
        anchor_for: Callable[[str], Anchor | None],
        *,
        refresh_every_s: float = 60.0,
    ) -> None:
        self.base = base
        self.boot_id = base.boot_id
        self._anchor_for = anchor_for
        self._every_ns = int(refresh_every_s * 1e9)
        self._anchor: Anchor | None = None
        self._read_ns: int | None = None

    def refresh(self) -> None:
        """Read the newest anchor of this boot now."""
        self._read_ns = self.base.monotonic_ns()
        try:
            anchor = self._anchor_for(self.boot_id)
        except Exception as exc:  # the door keeps its last known anchor rather than stopping
            log.warning("could not read the clock anchor, keeping the previous one: %s", exc)
            return
        if anchor is not None and anchor.boot_id == self.boot_id:
            if not plausible_server_time(anchor.server_time):
                log.warning(
                    "ignoring a clock anchor with an implausible cloud time (%s)",
                    anchor.server_time.isoformat(),
                )
                return
            self._anchor = anchor

    @property
    def anchor(self) -> Anchor | None:
        """The anchor in use (None: none for this boot yet)."""
        return self._anchor

    def _current(self) -> Anchor | None:
        now_ns = self.base.monotonic_ns()
        if self._read_ns is None or now_ns - self._read_ns >= self._every_ns:
            self.refresh()
        return self._anchor

    def wall(self) -> datetime:
        if self.base.quality() is ClockQuality.NTP_SYNCED:
            return self.base.wall()
        anchor = self._current()
        if anchor is None:
            return self.base.wall()
        elapsed_ns = self.base.monotonic_ns() - anchor.monotonic_ns
        try:
            return anchor.server_time + timedelta(microseconds=elapsed_ns // 1000)
        except OverflowError:  # cannot happen with a plausible anchor; never stop the door
            return self.base.wall()

    def monotonic_ns(self) -> int:
        return self.base.monotonic_ns()

    def quality(self) -> ClockQuality:
        base = self.base.quality()
        if base is ClockQuality.NTP_SYNCED:
            return base
        return ClockQuality.SERVER_ANCHORED if self._current() is not None else base

    def sleep(self, seconds: float) -> None:
        self.base.sleep(seconds)
