"""The cloud's database layer: URLs, transactions, the pool, error mapping, migrations and the
in-SQL checksum, on SQLite and PostgreSQL."""

from __future__ import annotations

import contextlib
import threading

import pytest

from cloud import db, migrations
from pg import (
    cloud_db_url_fixture,  # noqa: F401
    pg_server_fixture,  # noqa: F401
)
from sync.protocol import checksum


def test_database_urls():
    assert db.parse_database_url("sqlite:///cloud.db") == db.DatabaseUrl(db.SQLITE, "cloud.db")
    assert db.parse_database_url("sqlite:////var/lib/c.db").target == "/var/lib/c.db"
    assert db.parse_database_url("/var/lib/c.db") == db.DatabaseUrl(db.SQLITE, "/var/lib/c.db")
    assert db.parse_database_url("postgresql://u@h/d").dialect == db.POSTGRES
    assert db.parse_database_url("postgres://u@h/d").dialect == db.POSTGRES
    for bad in ("", "mysql://x/y", "sqlite://relative.db", "sqlite:///:memory:", ":memory:"):
        with pytest.raises(db.DatabaseUrlError):
            db.parse_database_url(bad)
    shown = db.parse_database_url("postgresql://fit:s3cret@db.example:5433/cloud").display()
    assert shown == "postgresql://fit:***@db.example:5433/cloud"
    assert "s3cret" not in repr(db.Database("postgresql://fit:s3cret@db.example:5433/cloud"))


def test_a_connection_failure_never_shows_the_password():
    database = db.Database("postgresql://fit:s3cret@127.0.0.1:1/cloud")
    with pytest.raises(db.DatabaseBusy) as failed:
        database.transact(lambda tx: tx.value("SELECT 1"))
    assert "s3cret" not in str(failed.value)
    assert "***" in str(failed.value)


def run_at_once(fn, threads: int) -> list[BaseException]:
    """``fn()`` on ``threads`` threads started together; what they raised."""
    raised: list[BaseException] = []

    def run():
        try:
            fn()
        except BaseException as exc:  # returned to the test
            raised.append(exc)

    started = [threading.Thread(target=run) for _ in range(threads)]
    for t in started:
        t.start()
    for t in started:
        t.join()
    return raised


@pytest.fixture
def database(cloud_db_url):
    database = db.Database(cloud_db_url, pool_size=3, pool_timeout_s=0.2)
    migrations.migrate(database)
    try:
        yield database
    finally:
        database.close()


def test_migrations_are_recorded_and_idempotent(database):
    assert migrations.schema_version(database) == migrations.LATEST_VERSION
    assert migrations.migrate(database) == []
    # Two processes starting at once: both succeed, the schema is applied once.
    assert run_at_once(lambda: migrations.migrate(database), 3) == []
    with database.read() as tx:
        assert tx.value("SELECT COUNT(*) FROM schema_migrations") == len(migrations.MIGRATIONS)


def test_a_failed_transaction_leaves_nothing_behind(database):
    with database.write() as tx:
        db.insert_organization(tx, "org1", "Acme", "00" * 32, "2026-05-01T00:00:00.000000Z")
    with pytest.raises(RuntimeError), database.write() as tx:
        db.bump_version(tx, "org1")
        raise RuntimeError("boom")
    with database.read() as tx:
        assert db.org_versions(tx, "org1") == (0, 0)


def test_unique_violations_are_conflicts_and_the_connection_survives(database):
    with database.write() as tx:
        db.insert_organization(tx, "org1", "Acme", "00" * 32, "2026-05-01T00:00:00.000000Z")
    with pytest.raises(db.Conflict), database.write() as tx:
        db.insert_organization(tx, "org1", "Again", "00" * 32, "2026-05-01T00:00:00.000000Z")
    for _ in range(5):  # every pooled connection is still usable
        assert database.ping()


def test_placeholders_and_percent_signs(database):
    with database.write() as tx:
        db.insert_organization(tx, "org%1", "100% fit", "00" * 32, "2026-05-01T00:00:00.000000Z")
    with database.read() as tx:
        row = tx.one("SELECT name FROM organizations WHERE name LIKE '100%' AND id = ?", ("org%1",))
    assert row == {"name": "100% fit"}


def test_the_pool_is_bounded_and_says_so(database):
    with contextlib.ExitStack() as held:
        for _ in range(3):  # pool_size
            held.enter_context(database.read())
        with pytest.raises(db.DatabaseBusy, match="in use"), database.read():
            pass
    assert database.ping()


def test_transact_runs_again_after_a_retryable_failure(database):
    calls = []

    def flaky(tx):
        calls.append(1)
        if len(calls) < 3:
            raise db.DatabaseBusy("deadlock detected", retry_now=True)
        return tx.value("SELECT 1")

    assert database.transact(flaky) == 1
    assert len(calls) == 3
    with pytest.raises(db.DatabaseBusy):
        database.transact(lambda tx: (_ for _ in ()).throw(db.DatabaseBusy("locked")))


def test_the_checksum_is_computed_in_sql_without_overflow(database):
    """Row hashes at the extremes of a signed 64-bit integer, summed in SQL, give the same
    checksum as sync.protocol.checksum (SQLite raises on a 64-bit overflow, so the sum is split
    into 32-bit halves)."""
    hashes = [2**63 - 1, 2**63 - 2, -(2**63), -1, 12345, 2**62] * 5
    now = "2026-05-01T00:00:00.000000Z"
    with database.write() as tx:
        db.insert_organization(tx, "org1", "Acme", "00" * 32, now)
        db.insert_gym(tx, "gym1", "org1", "Main", "UTC", now)
        for n, value in enumerate(hashes):
            values = {
                "first_name": "A",
                "last_name": "B",
                "status": "ACTIVE",
                "is_staff": False,
                "code_hash": None,
                "card_code": None,
            }
            db.upsert_replica_rows(
                tx,
                "member",
                "org1",
                [db.RowWrite(None, f"m{n}", values, value)],
                version=1,
                now=now,
            )
        db.tombstone(tx, "member", "org1", "m0", version=2, now=now)
    with database.read() as tx:
        count, total = db.replica_totals(tx, "org1", "gym1")
    assert count == len(hashes) - 1
    assert checksum([total]) == checksum(hashes[1:])


def test_sqlite_runs_in_wal_mode_with_a_busy_timeout(tmp_path):
    database = db.Database(f"sqlite:///{tmp_path / 'c.db'}")
    try:
        with database.read() as tx:
            assert tx.value("PRAGMA journal_mode") == "wal"
            assert tx.value("PRAGMA busy_timeout") == int(db.DEFAULT_BUSY_TIMEOUT_S * 1000)
            assert tx.value("PRAGMA synchronous") == 2  # FULL
    finally:
        database.close()


def test_sqlite_writers_of_one_process_take_turns(tmp_path):
    # More writers than connections, all at once, each holding a connection while it waits for
    # its turn: none is refused, no increment is lost, and they never deadlock (the writer whose
    # turn it is already has its connection). That the wait is the process's own queue, not
    # SQLite's busy handler, is the next test's.
    database = db.Database(f"sqlite:///{tmp_path / 'c.db'}", pool_size=3)
    try:
        database.transact(lambda tx: tx.run("CREATE TABLE counter (n INTEGER NOT NULL)"))
        database.transact(lambda tx: tx.run("INSERT INTO counter (n) VALUES (0)"))

        def add(tx):
            n = tx.value("SELECT n FROM counter")
            tx.run("UPDATE counter SET n = ?", (n + 1,))

        def writer():
            for _ in range(40):
                database.transact(add)

        assert run_at_once(writer, 6) == []
        assert database.transact(lambda tx: tx.value("SELECT n FROM counter"), write=False) == 240
    finally:
        database.close()


def test_a_sqlite_writer_that_waits_too_long_is_told_busy_and_gives_its_connection_back(tmp_path):
    database = db.Database(f"sqlite:///{tmp_path / 'c.db'}", pool_size=2, busy_timeout_s=0.05)
    try:
        outcome: list[BaseException | None] = []

        def second_writer():
            try:
                with database.write():
                    outcome.append(None)
            except BaseException as exc:  # checked below
                outcome.append(exc)

        with database.write() as tx:
            tx.run("CREATE TABLE t (x INTEGER)")
            waiting = threading.Thread(target=second_writer)
            waiting.start()
            waiting.join()  # it gives up while this write still holds the turn
        assert len(outcome) == 1 and isinstance(outcome[0], db.DatabaseBusy)
        assert "another write held the database too long" in str(outcome[0])
        # Its connection went back to the pool: both connections can be held again.
        with database.write() as tx, database.read() as other:
            tx.run("INSERT INTO t (x) VALUES (1)")
            assert other.value("SELECT COUNT(*) FROM t") == 0
        assert database.transact(lambda tx: tx.value("SELECT COUNT(*) FROM t"), write=False) == 1
    finally:
        database.close()
