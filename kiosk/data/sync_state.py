"""The sync agent's own records in the door's database: clock anchors, its status, the seq floor.

``SyncRecords`` is the part of ``kiosk.data.store.Store`` that keeps what the sync agent learns
and reports, apart from the journal's rows and the replica: the clock anchors (a boot's monotonic
time paired with the cloud's time, which ``kiosk.core.clock.AnchoredClock`` tells time from until
NTP syncs; the newest ``sync.protocol.MAX_ANCHORS`` boots are kept), the agent's last status
(key -> JSON value, shown by ``kiosk status`` and the owner page) and the journal's seq floor
(``kiosk db restore`` raises it so a restored backup never hands out a seq twice).

Durability: every write here is durable by default (committed with ``synchronous=FULL``, synced to
the storage before it returns). The sync agent writes its status and anchors with
``durable=False``: committed like any other (atomic, and never lost when a process dies), but not
synced to the storage at once, so a power cut may take back the last few of them, never corrupt
the file, and the next durable commit of the same connection (or a checkpoint) syncs them too.
Neither is worth a sync of the SD card on every sync round: the status is for people and is
written again within a minute, and an anchor lost in a power cut belongs to a boot that just
ended, whose earlier anchors remain.

Failure modes: database failures raise ``StoreError`` (``kiosk.data.database``); a write that
fails changed nothing (one transaction each). ValueError for a naive ``datetime``, TypeError for a
status value JSON cannot hold.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any

from kiosk.data.database import Database, StoreError, utc_text
from sync.protocol import MAX_ANCHORS, Anchor, utc_from_text


class SyncRecords(Database):
    """The sync agent's records, mixed into ``kiosk.data.store.Store`` (one connection, one lock:
    ``Database``). Every method raises ``StoreError`` on database failures."""

    # -- writes that need not reach the storage at once ------------------------------------------

    @contextlib.contextmanager
    def _write_maybe_durable(
        self, durable: bool, action: str, consequence: str
    ) -> Iterator[sqlite3.Connection]:
        """``_write``, committed with ``synchronous=NORMAL`` unless ``durable`` (see the module
        docstring). The connection is back at ``synchronous=FULL`` afterwards, before its lock is
        released: every other write of this store stays durable. If FULL cannot be set again the
        store is closed rather than left writing without syncs (later calls raise StoreError)."""
        if durable:
            with self._write(action, consequence) as conn:
                yield conn
            return
        with self._lock:
            conn = self._live()
            with self._guard(action, consequence):
                conn.execute("PRAGMA synchronous = NORMAL")
            try:
                with self._write(action, consequence) as written:
                    yield written
            finally:
                try:
                    conn.execute("PRAGMA synchronous = FULL")
                except sqlite3.Error as err:
                    self.close()
                    raise StoreError(
                        f"could not make the writes to {self.path} durable again ({err}); this "
                        "process's store was closed so that nothing is written without syncing; "
                        "restart the sync agent",
                        path=self.path,
                    ) from err

    # -- clock anchors ---------------------------------------------------------------------------

    def record_anchor(self, anchor: Anchor, *, recorded_at: datetime, durable: bool = True) -> None:
        """Keep ``anchor`` (boot's monotonic time <-> server time) if it is the newest for its
        boot, then keep only the ``MAX_ANCHORS`` boots with the newest server times.
        ``recorded_at`` is the device's wall time (for diagnostics only); ``durable=False``
        commits without syncing the storage (the module docstring says when that is right).
        Raises StoreError when the write fails, ValueError for a naive time."""
        values = (
            anchor.boot_id,
            int(anchor.monotonic_ns),
            utc_text(anchor.server_time, "anchor.server_time"),
            utc_text(recorded_at, "recorded_at"),
        )
        with self._write_maybe_durable(
            durable, "record a clock anchor", "the anchor was not kept"
        ) as conn:
            conn.execute(
                "INSERT INTO clock_anchors (boot_id, monotonic_ns, server_time, recorded_at)"
                " VALUES (?, ?, ?, ?)"
                " ON CONFLICT (boot_id) DO UPDATE SET monotonic_ns = excluded.monotonic_ns,"
                " server_time = excluded.server_time, recorded_at = excluded.recorded_at"
                " WHERE excluded.monotonic_ns >= clock_anchors.monotonic_ns",
                values,
            )
            conn.execute(
                "DELETE FROM clock_anchors WHERE boot_id NOT IN"
                " (SELECT boot_id FROM clock_anchors ORDER BY server_time DESC LIMIT ?)",
                (MAX_ANCHORS,),
            )

    def latest_anchor(self, boot_id: str) -> Anchor | None:
        """The newest anchor of boot ``boot_id``, or None."""
        with self._read("read a clock anchor") as conn:
            row = conn.execute(
                "SELECT boot_id, monotonic_ns, server_time FROM clock_anchors WHERE boot_id = ?",
                (boot_id,),
            ).fetchone()
        return None if row is None else Anchor(row[0], int(row[1]), utc_from_text(row[2]))

    def anchors(self, limit: int = MAX_ANCHORS) -> list[Anchor]:
        """Up to ``limit`` anchors, one per boot, newest server time first."""
        with self._read("read the clock anchors") as conn:
            rows = conn.execute(
                "SELECT boot_id, monotonic_ns, server_time FROM clock_anchors"
                " ORDER BY server_time DESC LIMIT ?",
                (max(0, int(limit)),),
            ).fetchall()
        return [Anchor(r[0], int(r[1]), utc_from_text(r[2])) for r in rows]

    # -- the sync agent's status and the seq floor ----------------------------------------------

    def sync_status(self) -> dict[str, Any]:
        """The sync agent's last recorded status: key -> JSON value (``state``, ``online``,
        ``last_error``...; see ``kiosk.sync.agent``). Empty when the agent never ran."""
        with self._read("read the sync status") as conn:
            rows = conn.execute("SELECT key, value FROM sync_status ORDER BY key").fetchall()
        return {str(key): json.loads(value) for key, value in rows}

    def set_sync_status(self, values: Mapping[str, Any], *, durable: bool = True) -> None:
        """Merge ``values`` (JSON-serialisable) into the sync status, in one transaction;
        ``durable=False`` commits without syncing the storage (the module docstring says when
        that is right). Raises StoreError when the write fails, TypeError for a value JSON cannot
        hold."""
        encoded = [(str(key), json.dumps(value)) for key, value in values.items()]
        with self._write_maybe_durable(
            durable, "record the sync status", "the status is unchanged"
        ) as conn:
            conn.executemany(
                "INSERT INTO sync_status (key, value) VALUES (?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                encoded,
            )

    def raise_seq_floor(self, floor: int) -> int:
        """Make the journal's next seq at least ``floor + 1`` (``kiosk db restore``: a restored
        backup must not hand out again the seq numbers the replaced database already gave to
        check-ins the cloud may hold). Never lowers the counter. Returns the last seq afterwards.
        Raises StoreError when the write fails (then nothing changed)."""
        with self._write("raise the journal's seq counter", "the counter is unchanged") as conn:
            conn.execute(
                "UPDATE journal_counter SET last_seq = ? WHERE id = 1 AND last_seq < ?",
                (int(floor), int(floor)),
            )
            (last,) = conn.execute("SELECT last_seq FROM journal_counter WHERE id = 1").fetchone()
        return int(last)
