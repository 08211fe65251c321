"""The tests' private PostgreSQL server hands a finished test's database to the next one
(tests/pg.py): what the next test gets is empty and its own, whatever the last one left."""

from __future__ import annotations

import psycopg

from pg import drop_pg_database, fresh_pg_database, pg_server_fixture  # noqa: F401

ORG = (
    "INSERT INTO organizations (id, name, code_salt, created_at)"
    " VALUES ('o1', 'Left over', 'salt', '2026-01-01T00:00:00Z')"
)


def _count(url: str, sql: str) -> int:
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        return conn.execute(sql).fetchone()[0]


def test_a_reused_database_is_empty_and_a_leaked_connection_ended(pg_server):
    url = fresh_pg_database(pg_server)
    leaked = psycopg.connect(url, autocommit=True, connect_timeout=10)
    leaked.execute(ORG)
    leaked.execute("BEGIN")
    leaked.execute("LOCK TABLE organizations IN ACCESS EXCLUSIVE MODE")  # never committed
    drop_pg_database(pg_server, url)

    again = fresh_pg_database(pg_server)
    if pg_server.data_dir is not None:  # a server of FITFLOW_TEST_PG_URL's drops them instead
        assert again == url  # the same database, handed on
    assert _count(again, "SELECT COUNT(*) FROM organizations") == 0
    assert _gone(leaked)
    leaked.close()
    drop_pg_database(pg_server, again)


def test_a_database_whose_schema_a_test_changed_is_never_handed_on(pg_server):
    url = fresh_pg_database(pg_server)
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        conn.execute("ALTER TABLE organizations ADD COLUMN extra TEXT")
    drop_pg_database(pg_server, url)
    other = fresh_pg_database(pg_server)
    assert other != url
    assert _count(other, "SELECT COUNT(*) FROM information_schema.columns"
                  " WHERE table_name = 'organizations' AND column_name = 'extra'") == 0  # fmt: skip
    drop_pg_database(pg_server, other)


def _gone(conn: psycopg.Connection) -> bool:
    """True when the server has ended ``conn`` (the next statement on it fails)."""
    try:
        conn.execute("SELECT 1")
    except psycopg.OperationalError:
        return True
    return False
