"""Switching a database to write-ahead logging when other processes may open it at the same time.

SQLite answers ``PRAGMA journal_mode = WAL`` with SQLITE_BUSY at once, without calling the busy
handler, while another connection holds a lock on a file still in rollback mode (the scanner, the
sync agent and the owner page start together at boot, and each opens the same new file). So the
switch is retried here, within the same budget as the busy timeout, instead of failing the open.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable

# Pauses between tries (s): short at first (the other opener holds its lock for milliseconds),
# doubling up to this.
_MAX_PAUSE_S = 0.05


def use_wal(
    conn: sqlite3.Connection,
    timeout_ms: int,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """Ask for WAL on ``conn`` and return the journal mode now in force, in lower case ("wal", or
    what the file system allowed instead). Retries while the file is busy, for at most
    ``timeout_ms`` milliseconds of ``clock`` (seconds); then raises the last
    ``sqlite3.OperationalError`` ("database is locked"). Any other error is raised at once."""
    deadline = clock() + timeout_ms / 1000
    pause = 0.001
    while True:
        try:
            (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
        except sqlite3.OperationalError as exc:
            busy = (getattr(exc, "sqlite_errorcode", 0) & 0xFF) == sqlite3.SQLITE_BUSY
            if not busy or clock() >= deadline:
                raise
            sleep(pause)
            pause = min(pause * 2, _MAX_PAUSE_S)
            continue
        return str(mode).lower()
