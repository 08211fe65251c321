"""Keeping refusals from filling the disk: how many audit rows and log lines they may cause.

Anyone on the LAN can send the page requests it refuses (a wrong password, a form without a
session, a cross-site post). Written down one by one they would fill the audit log and the journal
as fast as they arrive. So (pure, on an injected monotonic clock, seconds):

- ``AuditLimiter``: a refusal of a given kind writes a row at once when none of its kind was
  written in the last ``window_s``; the ones that follow within the window are only counted, and
  written as one row ("N refused in the last minute") once the window is over (``due``), or
  carried by the next refusal's row: one row per kind per window at most. On top of that,
  rows caused by unauthenticated requests (no signed-in session) are capped at
  ``unauthenticated_per_window`` per window whatever their kind; refusals of requests without a
  signed-in session are not audited at all (the caller does not offer them).
- ``LogLimiter``: one warning line per ``every_s`` for a kind of message, saying how many were
  left out since the last one.

Neither is thread-safe: the page calls them on its event loop only.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

WINDOW_S = 60.0
UNAUTHENTICATED_PER_WINDOW = 30
LOG_EVERY_S = 30.0


@dataclass(frozen=True, slots=True)
class AuditRow:
    """One audit row to write: ``kiosk.data.control.ControlStore.audit``'s arguments."""

    action: str
    outcome: str
    detail: str
    client: str


@dataclass
class _Kind:
    action: str
    outcome: str
    authenticated: bool
    opened: float  # when the last row of this kind was written (monotonic s)
    held: int = 0  # refusals counted since, not written
    clients: set[str] = field(default_factory=set)
    last_detail: str = ""


class AuditLimiter:
    """At most one row per kind per ``window_s`` (plus one summing up the rest), and at most
    ``unauthenticated_per_window`` rows from unauthenticated requests in any ``window_s``."""

    def __init__(
        self,
        *,
        window_s: float = WINDOW_S,
        unauthenticated_per_window: int = UNAUTHENTICATED_PER_WINDOW,
        max_kinds: int = 64,
    ) -> None:
        self.window_s = window_s
        self.unauthenticated_per_window = unauthenticated_per_window
        self.max_kinds = max_kinds
        self._kinds: dict[str, _Kind] = {}
        self._unauthenticated: deque[float] = deque()

    def _budget(self, now: float, authenticated: bool) -> bool:
        """True (and the row counted) when a row may be written now."""
        if authenticated:
            return True
        while self._unauthenticated and now - self._unauthenticated[0] >= self.window_s:
            self._unauthenticated.popleft()
        if len(self._unauthenticated) >= self.unauthenticated_per_window:
            return False
        self._unauthenticated.append(now)
        return True

    @staticmethod
    def _held_words(record: _Kind) -> str:
        words = f"{record.held} refused in the last minute"
        if len(record.clients) > 1:
            words += f" from {len(record.clients)} addresses"
        return words

    @staticmethod
    def _hold(record: _Kind, detail: str, client: str) -> None:
        record.held += 1
        if len(record.clients) < 1000:
            record.clients.add(client)
        record.last_detail = detail

    def offer(
        self,
        kind: str,
        now: float,
        *,
        action: str,
        outcome: str,
        detail: str,
        client: str,
        authenticated: bool,
    ) -> list[AuditRow]:
        """One refusal (or failed sign-in) of ``kind``: the rows to write now, none or one. The
        first of a kind in a window is written (carrying the count held from the window before,
        if ``due`` did not write it yet); the rest of the window is only counted."""
        record = self._kinds.get(kind)
        if record is None:
            if len(self._kinds) >= self.max_kinds:
                return []  # a fixed set of kinds in practice; never grow without bound
            record = _Kind(action, outcome, authenticated, opened=now - self.window_s)
            self._kinds[kind] = record
        if now - record.opened < self.window_s or not self._budget(now, authenticated):
            self._hold(record, detail, client)
            return []
        if record.held:
            detail = f"{detail} (after {self._held_words(record)})"
        record.held, record.clients, record.opened = 0, set(), now
        return [AuditRow(action, outcome, detail, client)]

    def due(self, now: float) -> list[AuditRow]:
        """One row for each kind whose window is over with refusals held: call it now and then
        (the page does on each signed-in view) so a burst that stopped still shows in the log."""
        rows = []
        for record in self._kinds.values():
            if not record.held or now - record.opened < self.window_s:
                continue
            if not self._budget(now, record.authenticated):
                break
            detail = self._held_words(record)
            if record.last_detail:
                detail += f" (last: {record.last_detail})"
            client = next(iter(record.clients)) if len(record.clients) == 1 else ""
            rows.append(AuditRow(record.action, record.outcome, detail, client))
            record.held, record.clients, record.opened = 0, set(), now
        return rows


class LogLimiter:
    """One log line per ``every_s`` for one kind of message."""

    def __init__(self, every_s: float = LOG_EVERY_S) -> None:
        self.every_s = every_s
        self._last: float | None = None
        self._skipped = 0

    def allow(self, now: float) -> int | None:
        """None: do not log now (counted). Otherwise log, mentioning the returned number of
        messages left out since the last line (0: none)."""
        if self._last is not None and now - self._last < self.every_s:
            self._skipped += 1
            return None
        skipped, self._skipped, self._last = self._skipped, 0, now
        return skipped


def skipped_words(skipped: int) -> str:
    """`` (N more since the last message)`` or nothing."""
    return f" ({skipped} more since the last message)" if skipped else ""
