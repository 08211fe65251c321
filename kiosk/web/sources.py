"""Where the owner page's figures come from: the door's database (read-only), the control file
(read-write: requests, audit log, the scanner's health report), the system and the disk.

``DoorDatabase`` keeps one read-only connection and survives the file's life around it: a database
that does not exist yet (the scanner has not started) is reported in plain words and looked for
again on the next request; a file replaced underneath (``kiosk db restore``) or a failed read makes
it reopen. ``DoorFactsCache`` keeps what was read until another process commits (SQLite's
``data_version``, which also moves when the replica changes or the sync agent switches to a new
replica file), so an open page polling every few seconds costs one cheap query per poll instead
of counting a large backlog each time. The replica is read through the same read-only store (it
attaches the replica file in use and follows the sync agent's switches by itself). ``ControlAccess`` opens the control file on first
use and again after a failure.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from kiosk.data.control import ControlError, ControlStore
from kiosk.data.database import StoreError
from kiosk.data.day_report import DayCounts
from kiosk.data.journal import DecisionRow, JournalPosition
from kiosk.data.store import Store
from sync.protocol import Anchor

log = logging.getLogger(__name__)


class DatabaseUnavailable(Exception):
    """The door's database cannot be read now; the message says why in plain words."""


def _readonly_hint(path: Path, exc: StoreError) -> str:
    """``exc`` from a read-only open, explained for the owner where SQLite's words mislead."""
    if exc.code == "SQLITE_READONLY_DIRECTORY":
        return (
            f"The page cannot read the door's database {path}: SQLite needs to create "
            f"{path.name}-shm beside it to read it, and this process may not write in "
            f"{path.parent}. This happens while the scanner is stopped; start it (it keeps those "
            f"files there), or let the page's user write to the folder (the installed service "
            f"may)."
        )
    return str(exc)


class DoorDatabase:
    """The door's database for the page, opened read-only (never created, never migrated)."""

    def __init__(self, path: Path, *, busy_timeout_ms: int = 1000) -> None:
        self.path = Path(path)
        self._busy_timeout_ms = busy_timeout_ms
        self._store: Store | None = None
        self._identity: tuple[int, int] | None = None
        self._lock = threading.Lock()

    def _file_identity(self) -> tuple[int, int] | None:
        try:
            info = os.stat(self.path)
        except OSError:
            return None
        return info.st_dev, info.st_ino

    def store(self) -> Store:
        """The open read-only store. Raises DatabaseUnavailable (with the reason in words) when
        the file is missing, damaged, of an unreadable schema or cannot be opened."""
        with self._lock:
            identity = self._file_identity()
            if identity is None:
                self._close()
                raise DatabaseUnavailable(
                    f"The door's database {self.path} does not exist yet: the scanner creates it "
                    f"on its first start (sudo systemctl start fitflow-scanner), or store.path in "
                    f"the configuration points elsewhere."
                )
            if self._store is not None and identity == self._identity:
                return self._store
            self._close()
            try:
                self._store = Store.open(
                    self.path, readonly=True, busy_timeout_ms=self._busy_timeout_ms
                )
            except StoreError as exc:
                raise DatabaseUnavailable(_readonly_hint(self.path, exc)) from None
            self._identity = identity
            return self._store

    def failed(self) -> None:
        """A read through the store failed: reopen on the next request."""
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self._store is not None:
            store, self._store = self._store, None
            with contextlib.suppress(StoreError):
                store.close()

    def close(self) -> None:
        with self._lock:
            self._close()


class ControlAccess:
    """The control file, opened on first use (the scanner may create its folder later) and again
    after a failure. ``prune_every_s`` of wall time, the audit log and old requests are pruned."""

    def __init__(self, path: Path, wall: Callable[[], datetime]) -> None:
        self.path = Path(path)
        self._wall = wall
        self._store: ControlStore | None = None
        self._pruned_at: datetime | None = None
        self._lock = threading.Lock()

    def store(self) -> ControlStore:
        """The open control store. Raises ControlError in plain words."""
        with self._lock:
            if self._store is None:
                self._store = ControlStore.open(self.path)
            store = self._store
            now = self._wall()
            if self._pruned_at is None or now - self._pruned_at > timedelta(hours=6):
                self._pruned_at = now
                try:
                    store.prune(now=now)
                except ControlError as exc:
                    log.warning("could not prune the control file: %s", exc)
            return store

    def failed(self) -> None:
        with self._lock:
            if self._store is not None:
                store, self._store = self._store, None
                store.close()

    def close(self) -> None:
        self.failed()


@dataclass(frozen=True, slots=True)
class DaySpans:
    """The spans of the page's picture of the day, aware UTC: today (local midnight to the next
    one) and the same weekday a week before. On the door's clock."""

    today_start: datetime
    today_end: datetime
    last_week_start: datetime
    last_week_end: datetime


@dataclass
class DoorFacts:
    """What the page reads from the door's database in one go; ``problem`` set instead when it
    cannot be read. ``day`` and ``last_week``: the journal's entries and passage events today and
    on the same weekday last week (``Store.day_counts``; None when no spans were asked for)."""

    problem: str | None = None
    decisions: list[DecisionRow] = field(default_factory=list)
    position: JournalPosition | None = None
    replica_version: int = 0
    replica_synced_at: datetime | None = None
    members: int | None = None
    sync: dict[str, Any] = field(default_factory=dict)
    today: dict[tuple[str, str], int] = field(default_factory=dict)
    day: DayCounts | None = None
    last_week: DayCounts | None = None


class MemberCountCache:
    """The replica's member count, counted again only when the replica changes: another version,
    or another replica file (a fresh snapshot at the same version is a new file). Counting a large
    replica on every refresh would cost milliseconds each time."""

    def __init__(self) -> None:
        self._key: tuple[object, int] | None = None
        self._count: int | None = None

    def get(self, store: Store, version: int) -> int:
        key = (store.replica_file, version)
        if self._key != key or self._count is None:
            info, count = store.replica_summary()  # the count and its version in one snapshot
            self._count = count
            self._key = (store.replica_file, info.version)
        return self._count


def read_door(
    door: DoorDatabase,
    *,
    recent: int,
    day_start: datetime,
    members: MemberCountCache,
    days: DaySpans | None = None,
) -> DoorFacts:
    """Read the door's figures (with the picture of the day's counts for ``days``); a database
    that cannot be read gives ``DoorFacts(problem=...)`` (and is reopened next time)."""
    try:
        store = door.store()
    except DatabaseUnavailable as exc:
        return DoorFacts(problem=str(exc))
    try:
        replica = store.replica_info()
        return DoorFacts(
            decisions=store.recent_decisions(recent),
            position=store.journal_position(),
            replica_version=replica.version,
            replica_synced_at=replica.synced_at,
            members=members.get(store, replica.version),
            sync=store.sync_status(),
            today=store.decision_counts(day_start),
            day=None if days is None else store.day_counts(days.today_start, days.today_end),
            last_week=None
            if days is None
            else store.day_counts(days.last_week_start, days.last_week_end),
        )
    except (StoreError, sqlite3.Error) as exc:
        door.failed()
        log.warning("reading the door's database failed: %s", exc)
        return DoorFacts(problem=str(exc))


ReadDoor = Callable[..., DoorFacts]


class DoorFactsCache:
    """The door's facts as last read (``read_door``), read again only when another connection
    committed to the database since (``Store.data_version``), the day changed, the database was
    reopened, or the facts are older than ``max_age_s`` (monotonic seconds; a safety net). The
    facts hold times, not ages: callers compute ages against their own now on every request.
    A database that cannot be read is never cached (it is looked at again next time).

    Thread-safe: the page reads from its thread pool; one read at a time, the others wait and
    then share it."""

    def __init__(self, read: ReadDoor = read_door, *, max_age_s: float = 5.0) -> None:
        self._read = read
        self.max_age_s = max_age_s
        self._lock = threading.Lock()
        self._key: tuple | None = None
        self._store: Store | None = None
        self._read_at = 0.0
        self._facts: DoorFacts | None = None

    def get(
        self,
        door: DoorDatabase,
        *,
        recent: int,
        day_start: datetime,
        members: MemberCountCache,
        monotonic: float,
        days: DaySpans | None = None,
    ) -> DoorFacts:
        with self._lock:
            key = None
            try:
                store = door.store()
                key = (store.data_version(), day_start, recent, days)
            except DatabaseUnavailable:
                store = None
            except StoreError as exc:
                log.warning("reading the door database's data version failed: %s", exc)
                door.failed()
                store = None
            fresh = monotonic - self._read_at < self.max_age_s
            if (
                key is not None
                and self._facts is not None
                and store is self._store
                and key == self._key
                and fresh
            ):
                return self._facts
            facts = self._read(door, recent=recent, day_start=day_start, members=members, days=days)
            if facts.problem is None and key is not None:
                self._key, self._store, self._read_at, self._facts = key, store, monotonic, facts
            else:
                self._key, self._store, self._facts = None, None, None
            return facts


def door_anchor(door: DoorDatabase) -> Callable[[str], Anchor | None]:
    """``Store.latest_anchor`` on the page's read-only connection, for ``AnchoredClock``: None
    while the database does not exist or cannot be opened (the page says so elsewhere). A failed
    read raises StoreError (the clock keeps the anchor it had)."""

    def anchor_for(boot_id: str) -> Anchor | None:
        try:
            store = door.store()
        except DatabaseUnavailable:
            return None
        try:
            return store.latest_anchor(boot_id)
        except StoreError:
            door.failed()
            raise

    return anchor_for
