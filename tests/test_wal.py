"""Switching to WAL while other processes open the same file (kiosk.data.wal)."""

from __future__ import annotations

import sqlite3

import pytest

from kiosk.data.wal import use_wal


class BusyThenFine:
    """A connection whose journal-mode switch is busy ``busy`` times, then answers ``mode``."""

    def __init__(self, busy: int, mode: str = "wal") -> None:
        self.busy, self.mode, self.calls = busy, mode, 0

    def execute(self, sql: str):
        assert sql == "PRAGMA journal_mode = WAL"
        self.calls += 1
        if self.calls <= self.busy:
            exc = sqlite3.OperationalError("database is locked")
            exc.sqlite_errorcode = sqlite3.SQLITE_BUSY
            raise exc
        return self

    def fetchone(self):
        return (self.mode.upper(),)


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.pauses: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.pauses.append(seconds)
        self.now += seconds


def test_a_busy_switch_is_retried_until_it_goes_through():
    conn, t = BusyThenFine(busy=5), FakeTime()
    assert use_wal(conn, 5000, clock=t.clock, sleep=t.sleep) == "wal"
    assert conn.calls == 6
    assert t.pauses == sorted(t.pauses) and t.pauses[0] == 0.001  # backing off, from 1 ms


def test_a_file_busy_past_the_timeout_raises_the_lock_error():
    conn, t = BusyThenFine(busy=10**6), FakeTime()
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        use_wal(conn, 200, clock=t.clock, sleep=t.sleep)
    assert 0.2 <= t.now <= 0.2 + 0.05  # gave up within one pause of the budget


def test_other_errors_are_raised_at_once():
    class Broken:
        calls = 0

        def execute(self, sql):
            self.calls += 1
            raise sqlite3.OperationalError("disk I/O error")

    conn, t = Broken(), FakeTime()
    with pytest.raises(sqlite3.OperationalError, match="disk I/O"):
        use_wal(conn, 5000, clock=t.clock, sleep=t.sleep)
    assert conn.calls == 1 and t.pauses == []


def test_the_mode_the_file_system_allowed_is_returned():
    assert use_wal(BusyThenFine(busy=0, mode="delete"), 10) == "delete"


def test_a_real_file_opened_by_another_connection_switches(tmp_path):
    path = tmp_path / "x.sqlite"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN")
    holder.execute("SELECT * FROM t").fetchall()  # a shared lock held across the switch
    other = sqlite3.connect(path, isolation_level=None, timeout=0)
    released = []

    def sleep(seconds: float) -> None:
        if not released:  # the other opener finishes its read: the switch can go through
            holder.execute("COMMIT")
            released.append(seconds)

    try:
        assert use_wal(other, 5000, sleep=sleep) == "wal"
        assert released, "the first try met the held lock and was retried"
    finally:
        other.close()
        holder.close()
