"""The cloud's database: the only cloud module with SQL (migrations.py holds the schema's DDL).

Two dialects behind one small interface:

- **SQLite** (the embedded default): ``sqlite:///path/to/cloud.db`` or a plain file path. WAL mode,
  ``synchronous=FULL``, a busy timeout; write transactions are ``BEGIN IMMEDIATE`` (SQLite
  serialises writers), read transactions a deferred ``BEGIN`` (a consistent snapshot from the
  first read on).
- **PostgreSQL** (production): ``postgresql://user@host:port/dbname`` through psycopg 3. Write
  transactions run at READ COMMITTED, replica reads (snapshot pages, changes with their
  checkpoint, the heartbeat's checksum) at REPEATABLE READ READ ONLY, so the version and the rows
  read agree.

SQL is written once with ``?`` placeholders and translated for psycopg. SQL text is built only
from this module's constant table and column names (hence the ``noqa: S608`` marks); every value
goes through a placeholder. Rows come back as dicts; booleans as whatever the driver returns (use
``bool()``), PostgreSQL sums as ``Decimal`` (use ``int()``).

Connections come from a small thread-safe pool of our own (FastAPI runs sync endpoints in a thread
pool): at most ``pool_size`` connections, opened on demand, a broken one is dropped, a caller
waits up to ``pool_timeout_s`` for a free one.

Every failure that leaves this module is a ``DatabaseError``: ``DatabaseBusy`` when trying again
later may work (locked, serialisation failure, deadlock, pool exhausted, connection lost: the HTTP
layer answers 503 with Retry-After), ``Conflict`` for a unique-key violation. Messages never
contain the database URL's password.

Times are stored as fixed-width UTC text with microseconds (``2026-05-01T17:03:09.120000Z``), so
string order is time order; dates as ``YYYY-MM-DD`` text.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

SQLITE, POSTGRES = "sqlite", "postgres"

DEFAULT_POOL_SIZE = 8
# A writer waits this long for another writer (SQLite) before the request answers 503.
DEFAULT_BUSY_TIMEOUT_S = 10.0
DEFAULT_POOL_TIMEOUT_S = 10.0
# Deadlocks and serialisation failures (PostgreSQL) are rolled back by the server, so the whole
# transaction is safely run again this many times.
TRANSACT_ATTEMPTS = 4

T = TypeVar("T")


class DatabaseError(Exception):
    """A database failure in plain words (no URL password, no row data)."""


class DatabaseBusy(DatabaseError):
    """Trying again later may succeed: locked, pool exhausted, connection lost, a deadlock or a
    serialisation failure. ``retry_now`` is True when the transaction was certainly rolled back by
    the server and can be run again at once (deadlock, serialisation failure)."""

    def __init__(self, message: str, *, retry_now: bool = False) -> None:
        super().__init__(message)
        self.retry_now = retry_now


class Conflict(DatabaseError):
    """A unique key is already taken (an id, a token hash, a card code)."""


class InvalidValue(DatabaseError):
    """A value no column can hold (text with a NUL character, a number out of the column's
    range): the caller's input, not the database, is at fault (the HTTP layer answers 400)."""


class DatabaseUrlError(ValueError):
    """The database URL is not one this service understands (a configuration error)."""


# -- URLs ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DatabaseUrl:
    """A parsed database URL. ``target`` is the SQLite file path or the PostgreSQL conninfo URL."""

    dialect: str
    target: str

    def display(self) -> str:
        """The URL for messages: a PostgreSQL password is replaced by ``***``."""
        if self.dialect == SQLITE:
            return f"sqlite:///{self.target}"
        return mask_password(self.target)


def mask_password(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    netloc = f"{parts.username or ''}:***@{host}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def parse_database_url(url: str) -> DatabaseUrl:
    """``sqlite:///relative.db``, ``sqlite:////abs/path.db``, a plain path, ``postgresql://...``
    or ``postgres://...``. Raises DatabaseUrlError for anything else (an in-memory SQLite database
    included: every pooled connection would see a different, empty database)."""
    if not isinstance(url, str) or not url.strip():
        raise DatabaseUrlError("the database URL is empty")
    url = url.strip()
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in ("postgresql", "postgres"):
        return DatabaseUrl(POSTGRES, url)
    if scheme == "sqlite":
        path = url[len("sqlite://") :]
        if not path.startswith("/"):
            raise DatabaseUrlError(
                "a SQLite URL looks like sqlite:///cloud.db or sqlite:////abs.db"
            )
        path = path[1:]
    elif scheme:
        raise DatabaseUrlError(
            f"unsupported database URL scheme {scheme!r}: use sqlite:///PATH, a file path "
            "or postgresql://USER@HOST/DBNAME"
        )
    else:
        path = url
    if not path or path == ":memory:" or path.startswith("file:"):
        raise DatabaseUrlError("the SQLite database must be a file (in-memory is not supported)")
    return DatabaseUrl(SQLITE, path)


# -- connections -----------------------------------------------------------------------------------


def _dict_row(cursor: sqlite3.Cursor, row: tuple[Any, ...]) -> dict[str, Any]:
    return {col[0]: value for col, value in zip(cursor.description, row, strict=True)}


@lru_cache(maxsize=512)
def _pg_sql(sql: str) -> str:
    # psycopg uses %s placeholders and treats a bare % as the start of one.
    return sql.replace("%", "%%").replace("?", "%s")


def _sqlite_error(exc: sqlite3.Error, where: str) -> DatabaseError:
    name = getattr(exc, "sqlite_errorname", "")
    text = str(exc)
    if name in ("SQLITE_BUSY", "SQLITE_LOCKED") or "locked" in text:
        return DatabaseBusy(f"{where}: the database is busy ({text})")
    if isinstance(exc, sqlite3.IntegrityError) and "UNIQUE" in text:
        return Conflict(f"{where}: {text}")
    return DatabaseError(f"{where}: {text}")


def _pg_error(exc: Exception, where: str) -> DatabaseError:
    import psycopg
    from psycopg import errors

    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, errors.UniqueViolation):
        return Conflict(f"{where}: {text}")
    if isinstance(exc, errors.SerializationFailure | errors.DeadlockDetected):
        return DatabaseBusy(f"{where}: {text}", retry_now=True)
    if isinstance(exc, psycopg.DataError):
        return InvalidValue(f"{where}: {text}")
    if isinstance(exc, errors.LockNotAvailable | errors.QueryCanceled):
        return DatabaseBusy(f"{where}: {text}")
    if isinstance(exc, psycopg.OperationalError):
        return DatabaseBusy(f"{where}: the database is unreachable ({text})")
    return DatabaseError(f"{where}: {text}")


class _Pool:
    """At most ``size`` connections; ``acquire`` reuses an idle one or opens a new one."""

    def __init__(self, connect: Callable[[], Any], size: int, timeout_s: float) -> None:
        self._connect = connect
        self._size = size
        self._timeout_s = timeout_s
        self._idle: list[Any] = []
        self._open = 0
        self._closed = False
        self._cond = threading.Condition()

    def acquire(self) -> Any:
        deadline = time.monotonic() + self._timeout_s
        with self._cond:
            while True:
                if self._closed:
                    raise DatabaseError("the database has been closed")
                if self._idle:
                    return self._idle.pop()
                if self._open < self._size:
                    self._open += 1
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DatabaseBusy("all database connections are in use")
                self._cond.wait(left)
        try:
            return self._connect()
        except BaseException:
            with self._cond:
                self._open -= 1
                self._cond.notify()
            raise

    def release(self, conn: Any, *, broken: bool) -> None:
        with self._cond:
            if broken or self._closed:
                self._open -= 1
                with contextlib.suppress(Exception):
                    conn.close()
            else:
                self._idle.append(conn)
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._open -= len(idle)
            self._cond.notify_all()
        for conn in idle:
            with contextlib.suppress(Exception):
                conn.close()


class BoundedCache:
    """A small thread-safe least-recently-used map: at most ``size`` entries, the oldest
    dropped first. For values derived from immutable keys (a gym's replica totals at a version),
    so an entry is never stale, only evicted."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[Any, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: Any, value: Any) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


# Replica totals per (organisation, gym, version): a few thousand gyms' current and previous
# versions fit (each entry is a key and two integers, a few hundred bytes), so a fleet of that
# many gyms does not evict the entries its heartbeats are about to ask for.
TOTALS_CACHE_SIZE = 16384


class Tx:
    """One open transaction. Methods take SQL with ``?`` placeholders. ``cache`` is the
    database's in-process BoundedCache (shared by every transaction of one ``Database``)."""

    def __init__(self, conn: Any, dialect: str, cache: BoundedCache | None = None) -> None:
        self._conn = conn
        self.dialect = dialect
        self.cache = cache if cache is not None else BoundedCache(TOTALS_CACHE_SIZE)

    def _execute(self, sql: str, params: Sequence[Any]) -> Any:
        _check_values(params)
        try:
            if self.dialect == SQLITE:
                return self._conn.execute(sql, tuple(params))
            return self._conn.execute(_pg_sql(sql), tuple(params))
        except sqlite3.Error as exc:
            raise _sqlite_error(exc, "query failed") from exc
        except DatabaseError:
            raise
        except Exception as exc:
            if self.dialect == POSTGRES and _is_psycopg_error(exc):
                raise _pg_error(exc, "query failed") from exc
            raise

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        cur = self._execute(sql, params)
        try:
            return list(cur.fetchall())
        except sqlite3.Error as exc:
            raise _sqlite_error(exc, "query failed") from exc

    def one(self, sql: str, params: Sequence[Any] = ()) -> dict[str, Any] | None:
        cur = self._execute(sql, params)
        try:
            return cur.fetchone()
        except sqlite3.Error as exc:
            raise _sqlite_error(exc, "query failed") from exc

    def value(self, sql: str, params: Sequence[Any] = ()) -> Any:
        row = self.one(sql, params)
        return None if row is None else next(iter(row.values()))

    def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self._execute(sql, params).rowcount

    def run_many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        rows = [tuple(r) for r in rows]
        if not rows:
            return
        for row in rows:
            _check_values(row)
        try:
            if self.dialect == SQLITE:
                self._conn.executemany(sql, rows)
            else:
                with self._conn.cursor() as cur:
                    cur.executemany(_pg_sql(sql), rows)
        except sqlite3.Error as exc:
            raise _sqlite_error(exc, "query failed") from exc
        except DatabaseError:
            raise
        except Exception as exc:
            if self.dialect == POSTGRES and _is_psycopg_error(exc):
                raise _pg_error(exc, "query failed") from exc
            raise


def _check_values(params: Sequence[Any]) -> None:
    """InvalidValue for text holding NUL: PostgreSQL refuses it outright and SQLite would store
    it, so both refuse it here, alike (no stored text ever contains one)."""
    for value in params:
        if isinstance(value, str) and "\x00" in value:
            raise InvalidValue("a text value contains a NUL character")


def _is_psycopg_error(exc: Exception) -> bool:
    try:
        import psycopg
    except ImportError:  # pragma: no cover - PostgreSQL URLs already need it
        return False
    return isinstance(exc, psycopg.Error)


class Database:
    """A pool of connections to one database. Thread-safe. Use ``read()`` / ``write()`` as
    context managers (commit on success, rollback on any exception) or ``transact(fn)``, which
    also runs the transaction again after a deadlock or serialisation failure."""

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = DEFAULT_POOL_SIZE,
        busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S,
        pool_timeout_s: float = DEFAULT_POOL_TIMEOUT_S,
    ) -> None:
        self.url = parse_database_url(url)
        self.dialect = self.url.dialect
        self._busy_timeout_s = busy_timeout_s
        if self.dialect == POSTGRES:
            try:
                import psycopg  # noqa: F401
            except ImportError:
                raise DatabaseUrlError(
                    "PostgreSQL needs psycopg: pip install 'fitflow-kiosk[postgres]'"
                ) from None
        connect = self._connect_sqlite if self.dialect == SQLITE else self._connect_postgres
        self._pool = _Pool(connect, pool_size, pool_timeout_s)
        # Values derived from (organisation, gym, version), which never change once committed.
        self.cache = BoundedCache(TOTALS_CACHE_SIZE)

    def __repr__(self) -> str:
        return f"Database({self.url.display()!r})"

    # -- connecting --------------------------------------------------------------------------------

    def _connect_sqlite(self) -> sqlite3.Connection:
        path = Path(self.url.target)
        if not path.parent.is_dir():
            raise DatabaseError(f"{self.url.display()}: the directory {path.parent} does not exist")
        try:
            conn = sqlite3.connect(
                path,
                timeout=self._busy_timeout_s,
                isolation_level=None,  # we issue BEGIN/COMMIT ourselves
                check_same_thread=False,  # the pool hands a connection to one thread at a time
            )
            conn.row_factory = _dict_row
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_s * 1000)}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()["journal_mode"]
            if mode.lower() != "wal":
                conn.close()
                raise DatabaseError(f"{self.url.display()}: cannot switch to WAL mode ({mode})")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
        except sqlite3.Error as exc:
            raise _sqlite_error(exc, f"cannot open {self.url.display()}") from exc
        return conn

    def _connect_postgres(self) -> Any:
        import psycopg
        from psycopg.rows import dict_row

        try:
            return psycopg.connect(
                self.url.target, autocommit=True, row_factory=dict_row, connect_timeout=10
            )
        except psycopg.Error as exc:
            raise _pg_error(exc, f"cannot connect to {self.url.display()}") from exc

    # -- transactions ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _transaction(self, begin: str) -> Iterator[Tx]:
        conn = self._pool.acquire()
        broken = False
        tx = Tx(conn, self.dialect, self.cache)
        try:
            tx.run(begin)
            try:
                yield tx
            except BaseException:
                try:
                    tx.run("ROLLBACK")
                except Exception:
                    broken = True
                raise
            tx.run("COMMIT")
        except BaseException:
            if self.dialect == SQLITE and conn.in_transaction:
                # A failed BEGIN or COMMIT (busy, disk full) can leave the connection inside a
                # transaction; roll it back so the pool never hands out a half-open one.
                with contextlib.suppress(Exception):
                    conn.execute("ROLLBACK")
            broken = broken or self._conn_is_broken(conn)
            raise
        finally:
            self._pool.release(conn, broken=broken)

    def _conn_is_broken(self, conn: Any) -> bool:
        if self.dialect == SQLITE:
            return conn.in_transaction
        return bool(conn.closed or conn.broken)

    @contextlib.contextmanager
    def single(self) -> Iterator[Tx]:
        """A connection without an explicit transaction: each statement is its own (autocommit),
        so a lone read costs one round trip instead of three (BEGIN, the statement, COMMIT).
        Only for work that is one statement; anything that must see one consistent state across
        statements takes ``read()``."""
        conn = self._pool.acquire()
        broken = False
        try:
            yield Tx(conn, self.dialect, self.cache)
        except BaseException:
            broken = self._conn_is_broken(conn)
            raise
        finally:
            self._pool.release(conn, broken=broken)

    def write(self) -> contextlib.AbstractContextManager[Tx]:
        """A write transaction: SQLite BEGIN IMMEDIATE, PostgreSQL READ COMMITTED."""
        if self.dialect == SQLITE:
            return self._transaction("BEGIN IMMEDIATE")
        return self._transaction("BEGIN ISOLATION LEVEL READ COMMITTED")

    def read(self) -> contextlib.AbstractContextManager[Tx]:
        """A read-only transaction on one consistent snapshot (PostgreSQL REPEATABLE READ)."""
        if self.dialect == SQLITE:
            return self._transaction("BEGIN")
        return self._transaction("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")

    def transact(self, fn: Callable[[Tx], T], *, write: bool = True) -> T:
        """``fn(tx)`` in one transaction, run again (up to TRANSACT_ATTEMPTS times) when the
        server rolled it back for a deadlock or serialisation failure. ``fn`` must not have side
        effects outside the database."""
        for attempt in range(1, TRANSACT_ATTEMPTS + 1):
            try:
                with self.write() if write else self.read() as tx:
                    return fn(tx)
            except DatabaseBusy as exc:
                if not exc.retry_now or attempt == TRANSACT_ATTEMPTS:
                    raise
                time.sleep(0.01 * attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    def ping(self) -> bool:
        """True when the database answers a trivial query."""
        try:
            with self.read() as tx:
                return tx.value("SELECT 1") == 1
        except DatabaseError:
            return False

    def close(self) -> None:
        self._pool.close()


# == queries ======================================================================================
# Everything below is the cloud's SQL, as small functions over an open ``Tx``. They check nothing
# the caller has not asked for: scoping by organisation (and gym) is in every WHERE clause.

# -- organisations and gyms ------------------------------------------------------------------------


def insert_organization(tx: Tx, org_id: str, name: str, code_salt_hex: str, now: str) -> None:
    tx.run(
        "INSERT INTO organizations (id, name, version, purged_version, code_salt, created_at)"
        " VALUES (?, ?, 0, 0, ?, ?)",
        (org_id, name, code_salt_hex, now),
    )


def organization(tx: Tx, org_id: str) -> dict[str, Any] | None:
    return tx.one(
        "SELECT id, name, version, purged_version, code_salt, created_at FROM organizations"
        " WHERE id = ?",
        (org_id,),
    )


def org_versions(tx: Tx, org_id: str) -> tuple[int, int]:
    """(version, purged_version): the idle poll's only query."""
    row = tx.one("SELECT version, purged_version FROM organizations WHERE id = ?", (org_id,))
    if row is None:
        raise DatabaseError(f"organisation {org_id} is gone")
    return int(row["version"]), int(row["purged_version"])


def bump_version(tx: Tx, org_id: str) -> int:
    """The next organisation version. The row lock (PostgreSQL) or the write lock (SQLite) is
    held until commit, so versions are handed out in commit order."""
    row = tx.one(
        "UPDATE organizations SET version = version + 1 WHERE id = ? RETURNING version", (org_id,)
    )
    if row is None:
        raise DatabaseError(f"organisation {org_id} is gone")
    return int(row["version"])


def lock_version(tx: Tx, org_id: str) -> None:
    """Take the organisation's version lock (the row ``bump_version`` updates) without handing
    out a version: a write that may or may not change replica rows takes it before reading what
    it may change, and bumps only if it does. PostgreSQL: ``FOR UPDATE``; SQLite: nothing to do
    (a write transaction already holds the database's write lock)."""
    if tx.dialect == POSTGRES:
        tx.value("SELECT version FROM organizations WHERE id = ? FOR UPDATE", (org_id,))


def raise_purged_version(tx: Tx, org_id: str, version: int) -> None:
    tx.run(
        "UPDATE organizations SET purged_version = ? WHERE id = ? AND purged_version < ?",
        (version, org_id, version),
    )


def insert_gym(tx: Tx, gym_id: str, org_id: str, name: str, timezone: str, now: str) -> None:
    tx.run(
        "INSERT INTO gyms (id, organization_id, name, timezone, created_at) VALUES (?, ?, ?, ?, ?)",
        (gym_id, org_id, name, timezone, now),
    )


_GYM = "SELECT id, organization_id, name, timezone, created_at FROM gyms"


def gym(tx: Tx, org_id: str, gym_id: str) -> dict[str, Any] | None:
    return tx.one(f"{_GYM} WHERE organization_id = ? AND id = ?", (org_id, gym_id))


def gym_any_org(tx: Tx, gym_id: str) -> dict[str, Any] | None:
    """A gym by id alone: only for operator commands (the CLI), never for an API caller."""
    return tx.one(f"{_GYM} WHERE id = ?", (gym_id,))


def gyms(tx: Tx, org_id: str) -> list[dict[str, Any]]:
    return tx.all(f"{_GYM} WHERE organization_id = ? ORDER BY id", (org_id,))


def update_gym(tx: Tx, org_id: str, gym_id: str, name: str, timezone: str) -> bool:
    return (
        tx.run(
            "UPDATE gyms SET name = ?, timezone = ? WHERE organization_id = ? AND id = ?",
            (name, timezone, org_id, gym_id),
        )
        > 0
    )


# -- replica rows ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReplicaTable:
    """Where one replica kind lives. ``columns`` are the kind's own columns (the wire data comes
    from them); ``extra`` columns are stored but not replicated (a member's printed card code);
    ``per_gym`` tables are scoped by gym (a gym's hours and closures), the others are the whole
    organisation's."""

    kind: str
    table: str
    columns: tuple[str, ...]
    per_gym: bool
    extra: tuple[str, ...] = ()


REPLICA_TABLES: dict[str, ReplicaTable] = {
    t.kind: t
    for t in (
        ReplicaTable("plan", "plans", ("name", "windows", "max_visits_per_day"), False),
        ReplicaTable(
            "member",
            "members",
            ("first_name", "last_name", "status", "is_staff", "code_hash"),
            False,
            ("card_code",),
        ),
        ReplicaTable(
            "membership",
            "memberships",
            ("member_id", "plan_id", "type", "start_date", "end_date", "remaining_classes"),
            False,
        ),
        ReplicaTable(
            "pass",
            "passes",
            ("member_id", "public_key", "period_s", "status"),
            False,
            ("created_at", "revoked_at"),
        ),
        ReplicaTable("hours", "opening_hours", ("weekday", "open_minute", "close_minute"), True),
        ReplicaTable("closure", "closures", ("start_date", "end_date", "reason"), True),
    )
}
_COMMON = ("organization_id", "gym_id", "id", "version", "deleted", "updated_at")


def _select(t: ReplicaTable) -> str:
    cols = ", ".join((*_COMMON, *t.columns, *t.extra))
    return f"SELECT {cols} FROM {t.table}"  # noqa: S608


def _scope(t: ReplicaTable, org_id: str, gym_id: str | None) -> tuple[str, list[Any]]:
    """The WHERE clause putting a table in a gym's replica (or the organisation's rows)."""
    if t.per_gym and gym_id is not None:
        return "organization_id = ? AND gym_id = ?", [org_id, gym_id]
    return "organization_id = ?", [org_id]


def _decode(t: ReplicaTable, row: dict[str, Any]) -> dict[str, Any]:
    row["deleted"] = bool(row["deleted"])
    if t.kind == "plan":
        row["windows"] = json.loads(row["windows"])
    elif t.kind == "member":
        row["is_staff"] = bool(row["is_staff"])
    return row


def replica_row(tx: Tx, kind: str, org_id: str, row_id: str) -> dict[str, Any] | None:
    """One row of a kind in an organisation, live or a tombstone, or None."""
    t = REPLICA_TABLES[kind]
    row = tx.one(f"{_select(t)} WHERE organization_id = ? AND id = ?", (org_id, row_id))
    return None if row is None else _decode(t, row)


def replica_rows_by_id(
    tx: Tx, kind: str, org_id: str, ids: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """Rows (live or tombstones) with these ids, in chunks so a long list stays one query each."""
    t = REPLICA_TABLES[kind]
    out: dict[str, dict[str, Any]] = {}
    unique = sorted(set(ids))
    for start in range(0, len(unique), 500):
        chunk = unique[start : start + 500]
        marks = ", ".join("?" * len(chunk))
        for row in tx.all(
            f"{_select(t)} WHERE organization_id = ? AND id IN ({marks})", (org_id, *chunk)
        ):
            out[row["id"]] = _decode(t, row)
    return out


def live_rows_page(
    tx: Tx, kind: str, org_id: str, gym_id: str | None, after_id: str | None, limit: int
) -> list[dict[str, Any]]:
    """Live rows in id order after ``after_id`` (keyset pagination: no OFFSET, an index range)."""
    t = REPLICA_TABLES[kind]
    where, params = _scope(t, org_id, gym_id)
    if after_id is not None:
        where += " AND id > ?"
        params.append(after_id)
    sql = f"{_select(t)} WHERE {where} AND deleted = FALSE ORDER BY id LIMIT ?"
    return [_decode(t, row) for row in tx.all(sql, (*params, limit))]


def changed_rows(
    tx: Tx,
    kind: str,
    org_id: str,
    gym_id: str,
    since: int,
    cursor: tuple[int, int, str] | None,
    limit: int,
) -> list[dict[str, Any]]:
    """Rows and tombstones of one kind with version > ``since`` and (version, kind order, id)
    after ``cursor``, in (version, id) order, at most ``limit``. The caller merges the kinds."""
    from sync.protocol import KIND_ORDER

    t = REPLICA_TABLES[kind]
    where, params = _scope(t, org_id, gym_id)
    where += " AND version > ?"
    params.append(since)
    if cursor is not None:
        c_version, c_order, c_id = cursor
        own = KIND_ORDER[kind]
        if own > c_order:
            where += " AND version >= ?"
            params.append(c_version)
        elif own < c_order:
            where += " AND version > ?"
            params.append(c_version)
        else:
            where += " AND (version > ? OR (version = ? AND id > ?))"
            params.extend((c_version, c_version, c_id))
    sql = f"{_select(t)} WHERE {where} ORDER BY version, id LIMIT ?"
    return [_decode(t, row) for row in tx.all(sql, (*params, limit))]


def replica_totals(tx: Tx, org_id: str, gym_id: str) -> tuple[int, int]:
    """(count, sum of row hashes modulo 2**64) of a gym's live replica, computed in SQL: each
    hash is split in a high and a low 32-bit half so the sums cannot overflow a 64-bit integer
    (SQLite raises on overflow), and (hi << 32) + lo equals the sum of the hashes."""
    parts = []
    params: list[Any] = []
    for t in REPLICA_TABLES.values():
        where, p = _scope(t, org_id, gym_id)
        sums = "COUNT(*) AS n, COALESCE(SUM(row_hash >> 32), 0) AS hi,"
        sums += " COALESCE(SUM(row_hash & 4294967295), 0) AS lo"
        parts.append(f"SELECT {sums} FROM {t.table} WHERE {where} AND deleted = FALSE")  # noqa: S608
        params.extend(p)
    count = total = 0
    for row in tx.all(" UNION ALL ".join(parts), params):
        count += int(row["n"])
        total += (int(row["hi"]) << 32) + int(row["lo"])
    return count, total % (1 << 64)


def _upsert_sql(t: ReplicaTable) -> str:
    cols = (*t.columns, *t.extra)
    names = ("organization_id", "gym_id", "id", *cols, "version", "deleted", "row_hash")
    names += ("updated_at",)
    marks = ", ".join("?" * len(names))
    # gym_id too: a row is stored where it was last written (admin refuses to revive another
    # gym's id, so this only ever rewrites the same gym, or NULL for organisation-wide kinds).
    updated = ("gym_id", *cols, "version", "deleted", "row_hash")
    updates = ", ".join(f"{c} = excluded.{c}" for c in updated)
    return (
        f"INSERT INTO {t.table} ({', '.join(names)}) VALUES ({marks})"  # noqa: S608
        f" ON CONFLICT (organization_id, id) DO UPDATE SET {updates},"
        " updated_at = excluded.updated_at"
    )


@dataclass(frozen=True, slots=True)
class RowWrite:
    """One replica row to store: ``values`` holds every column of the kind and its extras."""

    gym_id: str | None
    id: str
    values: dict[str, Any]
    row_hash: int


def upsert_replica_rows(
    tx: Tx, kind: str, org_id: str, rows: Sequence[RowWrite], *, version: int, now: str
) -> None:
    """Insert or replace rows of one kind (reviving tombstones with the same ids), stamped with
    ``version``; one prepared statement for the lot."""
    t = REPLICA_TABLES[kind]
    cols = (*t.columns, *t.extra)
    params = []
    for row in rows:
        if set(row.values) != set(cols):
            raise ValueError(f"{kind}: expected columns {cols}, got {sorted(row.values)}")
        stored = dict(row.values)
        if kind == "plan":
            stored["windows"] = json.dumps(row.values["windows"], separators=(",", ":"))
        params.append(
            (
                org_id,
                row.gym_id,
                row.id,
                *(stored[c] for c in cols),
                version,
                False,
                row.row_hash,
                now,
            )
        )
    tx.run_many(_upsert_sql(t), params)


def tombstone(tx: Tx, kind: str, org_id: str, row_id: str, *, version: int, now: str) -> bool:
    """Soft-delete a live row (it stays as a tombstone with this version). False if there was
    no live row."""
    t = REPLICA_TABLES[kind]
    return (
        tx.run(
            f"UPDATE {t.table} SET deleted = TRUE, version = ?, updated_at = ?"  # noqa: S608
            " WHERE organization_id = ? AND id = ? AND deleted = FALSE",
            (version, now, org_id, row_id),
        )
        > 0
    )


def live_ids_where(tx: Tx, kind: str, org_id: str, column: str, value: Any) -> list[str]:
    """Ids of live rows of a kind whose ``column`` equals ``value`` (a member's memberships, a
    plan's memberships, a code hash's member)."""
    t = REPLICA_TABLES[kind]
    if column not in (*t.columns, *t.extra, "gym_id"):
        raise ValueError(f"{kind} has no column {column}")
    rows = tx.all(
        f"SELECT id FROM {t.table} WHERE organization_id = ? AND {column} = ?"  # noqa: S608
        " AND deleted = FALSE ORDER BY id",
        (org_id, value),
    )
    return [row["id"] for row in rows]


def members_by_code_hash(tx: Tx, org_id: str, hashes: Sequence[str]) -> dict[str, str]:
    """{code_hash: member id} for live members holding any of these code hashes."""
    out: dict[str, str] = {}
    unique = sorted(set(hashes))
    for start in range(0, len(unique), 500):
        chunk = unique[start : start + 500]
        marks = ", ".join("?" * len(chunk))
        sql = "SELECT id, code_hash FROM members WHERE organization_id = ? AND deleted = FALSE"
        rows = tx.all(f"{sql} AND code_hash IN ({marks})", (org_id, *chunk))
        out.update({row["code_hash"]: row["id"] for row in rows})
    return out


def set_membership_balance(
    tx: Tx,
    org_id: str,
    membership_id: str,
    remaining: int,
    *,
    version: int,
    row_hash: int,
    now: str,
) -> None:
    tx.run(
        "UPDATE memberships SET remaining_classes = ?, version = ?, row_hash = ?, updated_at = ?"
        " WHERE organization_id = ? AND id = ?",
        (remaining, version, row_hash, now, org_id, membership_id),
    )


def refresh_statistics(tx: Tx, kinds: Sequence[str]) -> None:
    """After a bulk load (PostgreSQL only): fresh planner statistics, so the next lookups by id
    use the primary key instead of a plan made when the table was nearly empty. SQLite plans by
    index heuristics and needs nothing."""
    if tx.dialect == POSTGRES:
        tables = ", ".join(REPLICA_TABLES[k].table for k in kinds)
        tx.run(f"ANALYZE {tables}")


def purge_tombstones(tx: Tx, cutoff: str) -> dict[str, int]:
    """Delete tombstones last changed before ``cutoff``; {organisation: highest version purged}."""
    purged: dict[str, int] = {}
    for t in REPLICA_TABLES.values():
        rows = tx.all(
            f"SELECT organization_id, MAX(version) AS v FROM {t.table}"  # noqa: S608
            " WHERE deleted = TRUE AND updated_at < ? GROUP BY organization_id",
            (cutoff,),
        )
        for row in rows:
            org = row["organization_id"]
            purged[org] = max(purged.get(org, 0), int(row["v"]))
        tx.run(
            f"DELETE FROM {t.table} WHERE deleted = TRUE AND updated_at < ?",  # noqa: S608
            (cutoff,),
        )
    return purged


# -- tokens and enrolment codes --------------------------------------------------------------------


def insert_admin_token(tx: Tx, token_hash: str, org_id: str, now: str) -> None:
    tx.run(
        "INSERT INTO admin_tokens (token_hash, organization_id, created_at) VALUES (?, ?, ?)",
        (token_hash, org_id, now),
    )


def admin_token_org(tx: Tx, token_hash: str) -> str | None:
    return tx.value(
        "SELECT organization_id FROM admin_tokens WHERE token_hash = ? AND revoked_at IS NULL",
        (token_hash,),
    )


def insert_enrolment_code(
    tx: Tx, code_hash: str, org_id: str, gym_id: str, now: str, expires_at: str
) -> None:
    tx.run(
        "INSERT INTO enrolment_codes (code_hash, organization_id, gym_id, created_at, expires_at)"
        " VALUES (?, ?, ?, ?, ?)",
        (code_hash, org_id, gym_id, now, expires_at),
    )


def claim_enrolment_code(
    tx: Tx, code_hash: str, now: str, device_id: str
) -> tuple[str, str] | None:
    """Mark an unused, unexpired code used by ``device_id``; (organisation, gym) or None. One
    conditional UPDATE, so two devices racing for one code cannot both win."""
    row = tx.one(
        "UPDATE enrolment_codes SET used_at = ?, device_id = ?"
        " WHERE code_hash = ? AND used_at IS NULL AND expires_at > ?"
        " RETURNING organization_id, gym_id",
        (now, device_id, code_hash, now),
    )
    return None if row is None else (row["organization_id"], row["gym_id"])


# -- devices ---------------------------------------------------------------------------------------

_DEVICE_COLUMNS = (
    "id, organization_id, gym_id, name, software_version, enrolled_at, revoked_at, last_seen_at,"
    " resnapshot_requested, hb_at, hb_boot_id, hb_device_time, hb_clock_quality, hb_backlog,"
    " hb_oldest_pending_age_s, hb_replica_version, hb_replica_checksum, hb_replica_count,"
    " hb_replica_status, hb_last_seq, hb_synced_through_seq, hb_retained_from_seq, hb_last_error,"
    " occ_at, occ_now, occ_entries_today, occ_exits_today, occ_max_today, occ_capacity"
)
HEARTBEAT_COLUMNS = (
    "hb_at",
    "hb_boot_id",
    "hb_device_time",
    "hb_clock_quality",
    "hb_backlog",
    "hb_oldest_pending_age_s",
    "hb_replica_version",
    "hb_replica_checksum",
    "hb_replica_count",
    "hb_replica_status",
    "hb_last_seq",
    "hb_synced_through_seq",
    "hb_retained_from_seq",
    "hb_last_error",
    "software_version",
)


def _device(row: dict[str, Any] | None) -> dict[str, Any] | None:
    if row is not None:
        row["resnapshot_requested"] = bool(row["resnapshot_requested"])
    return row


def insert_device(
    tx: Tx,
    device_id: str,
    org_id: str,
    gym_id: str,
    name: str,
    token_hash: str,
    software_version: str | None,
    now: str,
) -> None:
    tx.run(
        "INSERT INTO devices (id, organization_id, gym_id, name, token_hash, software_version,"
        " enrolled_at, last_seen_at, resnapshot_requested) VALUES (?, ?, ?, ?, ?, ?, ?, ?, FALSE)",
        (device_id, org_id, gym_id, name, token_hash, software_version, now, now),
    )


def device_by_token(tx: Tx, token_hash: str) -> dict[str, Any] | None:
    """The device holding this token hash, with its organisation's replica ``org_version`` and
    ``org_purged_version`` read by the same statement (one consistent state: the idle poll
    needs nothing else)."""
    columns = ", ".join(f"d.{c.strip()}" for c in _DEVICE_COLUMNS.split(","))
    return _device(
        tx.one(
            f"SELECT {columns}, o.version AS org_version, o.purged_version AS org_purged_version"  # noqa: S608
            " FROM devices d JOIN organizations o ON o.id = d.organization_id"
            " WHERE d.token_hash = ?",
            (token_hash,),
        )
    )


def device(tx: Tx, org_id: str, device_id: str) -> dict[str, Any] | None:
    return _device(
        tx.one(
            f"SELECT {_DEVICE_COLUMNS} FROM devices WHERE organization_id = ? AND id = ?",  # noqa: S608
            (org_id, device_id),
        )
    )


def devices(tx: Tx, org_id: str, gym_id: str | None) -> list[dict[str, Any]]:
    if gym_id is None:
        rows = tx.all(
            f"SELECT {_DEVICE_COLUMNS} FROM devices WHERE organization_id = ? ORDER BY id",  # noqa: S608
            (org_id,),
        )
    else:
        rows = tx.all(
            f"SELECT {_DEVICE_COLUMNS} FROM devices"  # noqa: S608
            " WHERE organization_id = ? AND gym_id = ? ORDER BY id",
            (org_id, gym_id),
        )
    return [r for r in map(_device, rows) if r is not None]


def touch_device(tx: Tx, device_id: str, now: str) -> None:
    tx.run("UPDATE devices SET last_seen_at = ? WHERE id = ?", (now, device_id))


def revoke_device(tx: Tx, org_id: str, device_id: str, now: str) -> bool:
    return (
        tx.run(
            "UPDATE devices SET revoked_at = ? WHERE organization_id = ? AND id = ?"
            " AND revoked_at IS NULL",
            (now, org_id, device_id),
        )
        > 0
        or device(tx, org_id, device_id) is not None
    )


def set_resnapshot(tx: Tx, org_id: str, device_id: str, wanted: bool) -> bool:
    return (
        tx.run(
            "UPDATE devices SET resnapshot_requested = ? WHERE organization_id = ? AND id = ?",
            (wanted, org_id, device_id),
        )
        > 0
    )


def record_heartbeat(tx: Tx, device_id: str, fields: dict[str, Any]) -> bool | None:
    """Store a heartbeat's ``fields`` (exactly HEARTBEAT_COLUMNS) on the device, and its time
    ``hb_at`` as the device's ``last_seen_at``. Returns whether an admin asked the device for a
    fresh snapshot (read by the same statement), or None when there is no such device."""
    if set(fields) != set(HEARTBEAT_COLUMNS):
        raise ValueError(f"heartbeat fields must be exactly {HEARTBEAT_COLUMNS}")
    sets = ", ".join(f"{name} = ?" for name in HEARTBEAT_COLUMNS)
    row = tx.one(
        f"UPDATE devices SET {sets}, last_seen_at = ? WHERE id = ?"  # noqa: S608
        " RETURNING resnapshot_requested",
        (*(fields[name] for name in HEARTBEAT_COLUMNS), fields["hb_at"], device_id),
    )
    return None if row is None else bool(row["resnapshot_requested"])


def record_occupancy(tx: Tx, device_id: str, at: str, occupancy: Sequence[Any]) -> None:
    """Keep the occupancy a heartbeat reported at ``at``: (now, entries today, exits today,
    max today, capacity or None), replacing the device's previous report."""
    tx.run(
        "UPDATE devices SET occ_at = ?, occ_now = ?, occ_entries_today = ?, occ_exits_today = ?,"
        " occ_max_today = ?, occ_capacity = ? WHERE id = ?",
        (at, *occupancy, device_id),
    )


def gym_occupancy_reports(tx: Tx, org_id: str, gym_id: str) -> list[dict[str, Any]]:
    """The last occupancy report of each live (not revoked) device of a gym that ever sent one:
    {device_id, name, occ_at, occ_now, occ_entries_today, occ_exits_today, occ_max_today,
    occ_capacity}, by device id."""
    return tx.all(
        "SELECT id AS device_id, name, occ_at, occ_now, occ_entries_today, occ_exits_today,"
        " occ_max_today, occ_capacity FROM devices WHERE organization_id = ? AND gym_id = ?"
        " AND revoked_at IS NULL AND occ_at IS NOT NULL ORDER BY id",
        (org_id, gym_id),
    )


# -- clock anchors ---------------------------------------------------------------------------------


_INT64_MAX = 2**63 - 1


def has_anchor_near(tx: Tx, device_id: str, boot_id: str, monotonic_ns: int, window: int) -> bool:
    """True when the boot has an anchor within ``window`` ns of ``monotonic_ns``. The bounds are
    clamped to a signed 64-bit integer, so no reading can overflow the query's parameters."""
    low = max(0, monotonic_ns - window)
    high = min(_INT64_MAX, monotonic_ns + window)
    return (
        tx.value(
            "SELECT 1 FROM device_anchors WHERE device_id = ? AND boot_id = ?"
            " AND monotonic_ns BETWEEN ? AND ? LIMIT 1",
            (device_id, boot_id, low, high),
        )
        is not None
    )


def insert_anchor(
    tx: Tx, device_id: str, boot_id: str, monotonic_ns: int, server_time: str
) -> None:
    tx.run(
        "INSERT INTO device_anchors (device_id, boot_id, monotonic_ns, server_time)"
        " VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
        (device_id, boot_id, monotonic_ns, server_time),
    )


def anchors_around(
    tx: Tx, device_id: str, boot_id: str, low_ns: int, high_ns: int
) -> list[tuple[int, str]]:
    """A boot's anchors in [low, high] plus the nearest one on either side, (monotonic, time)."""
    base = (
        "SELECT monotonic_ns, server_time FROM device_anchors WHERE device_id = ? AND boot_id = ?"
    )
    rows = tx.all(
        f"{base} AND monotonic_ns BETWEEN ? AND ? ORDER BY monotonic_ns",
        (device_id, boot_id, low_ns, high_ns),
    )
    below = tx.one(
        f"{base} AND monotonic_ns < ? ORDER BY monotonic_ns DESC LIMIT 1",
        (device_id, boot_id, low_ns),
    )
    above = tx.one(
        f"{base} AND monotonic_ns > ? ORDER BY monotonic_ns LIMIT 1",
        (device_id, boot_id, high_ns),
    )
    found = [r for r in (below, *rows, above) if r is not None]
    return [(int(r["monotonic_ns"]), r["server_time"]) for r in found]


# -- check-ins -------------------------------------------------------------------------------------

CHECKIN_COLUMNS = (
    "id",
    "organization_id",
    "gym_id",
    "device_id",
    "seq",
    "door_id",
    "decision",
    "reason",
    "member_id",
    "membership_id",
    "classes_used",
    "replica_version",
    "wall_time",
    "boot_id",
    "monotonic_ns",
    "clock_quality",
    "occurred_at",
    "time_source",
    "received_at",
    "pass_id",
)
_CHECKIN_CHUNK = 250  # rows per multi-row INSERT (20 columns: well under every parameter limit)


def insert_checkins(tx: Tx, rows: Sequence[Sequence[Any]]) -> set[str]:
    """Insert check-ins (tuples in CHECKIN_COLUMNS order) by id, skipping ids already stored;
    returns the ids actually inserted. Multi-row statements: one round trip per chunk."""
    created: set[str] = set()
    one = "(" + ", ".join("?" * len(CHECKIN_COLUMNS)) + ")"
    for start in range(0, len(rows), _CHECKIN_CHUNK):
        chunk = rows[start : start + _CHECKIN_CHUNK]
        sql = (
            f"INSERT INTO checkins ({', '.join(CHECKIN_COLUMNS)})"  # noqa: S608
            f" VALUES {', '.join([one] * len(chunk))} ON CONFLICT DO NOTHING RETURNING id"
        )
        params = [value for row in chunk for value in row]
        created.update(row["id"] for row in tx.all(sql, params))
    return created


def checkin_holders(tx: Tx, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """{check-in id: stored row} for stored ids: the holder device (``device_id``, whether it is
    ``revoked``), its organisation and gym, the row's identity (``seq``, ``door_id``,
    ``boot_id``, ``monotonic_ns``) and ``effect_version`` (the version carrying its side effect,
    or None)."""
    return _holders(tx, "checkins", ids)


def _holders(tx: Tx, table: str, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    if table not in JOURNAL_TABLES:
        raise ValueError(f"not a journal table: {table}")
    out: dict[str, dict[str, Any]] = {}
    unique = sorted(set(ids))
    for start in range(0, len(unique), 500):
        chunk = unique[start : start + 500]
        marks = ", ".join("?" * len(chunk))
        sql = (
            "SELECT c.id, c.device_id, c.organization_id, c.gym_id, c.seq, c.door_id, c.boot_id,"  # noqa: S608
            f" c.monotonic_ns, c.effect_version, d.revoked_at FROM {table} c"
            " LEFT JOIN devices d ON d.id = c.device_id WHERE c.id IN "
        )
        for row in tx.all(f"{sql}({marks})", chunk):
            row["revoked"] = row.pop("revoked_at") is not None
            out[row["id"]] = row
    return out


def checkin_counts(tx: Tx, device_ids: Sequence[str]) -> dict[str, int]:
    """{device id: check-ins stored under it} for these devices (those holding none are left
    out): the fleet bench counts what the cloud holds against what its doors made."""
    out: dict[str, int] = {}
    unique = sorted(set(device_ids))
    for start in range(0, len(unique), 500):
        chunk = unique[start : start + 500]
        marks = ", ".join("?" * len(chunk))
        rows = tx.all(
            "SELECT device_id, COUNT(*) AS n FROM checkins"  # noqa: S608
            f" WHERE device_id IN ({marks}) GROUP BY device_id",
            chunk,
        )
        out.update({row["device_id"]: int(row["n"]) for row in rows})
    return out


def mark_checkin_effects(tx: Tx, effects: Iterable[tuple[int, bool, str]]) -> None:
    """(effect version, overdraft, check-in id) for check-ins that changed a balance."""
    tx.run_many("UPDATE checkins SET effect_version = ?, overdraft = ? WHERE id = ?", effects)


# The tables of a device's journal rows, each placed in time the same way.
JOURNAL_TABLES = ("checkins", "door_events")


def unanchored_checkins(
    tx: Tx, device_id: str, boot_id: str, table: str = "checkins"
) -> list[tuple[str, int]]:
    """(id, monotonic ns) of a boot's rows placed without an anchor, in ``table`` (one of
    JOURNAL_TABLES: check-ins or passage events)."""
    if table not in JOURNAL_TABLES:
        raise ValueError(f"not a journal table: {table}")
    rows = tx.all(
        f"SELECT id, monotonic_ns FROM {table} WHERE device_id = ? AND boot_id = ?"  # noqa: S608
        " AND time_source <> 'anchored'",
        (device_id, boot_id),
    )
    return [(row["id"], int(row["monotonic_ns"])) for row in rows]


def set_placements(
    tx: Tx, placements: Iterable[tuple[str, str, str]], table: str = "checkins"
) -> None:
    """(occurred_at, time_source, id) for re-placed rows of ``table`` (one of JOURNAL_TABLES)."""
    if table not in JOURNAL_TABLES:
        raise ValueError(f"not a journal table: {table}")
    tx.run_many(
        f"UPDATE {table} SET occurred_at = ?, time_source = ? WHERE id = ?",  # noqa: S608
        placements,
    )


def insert_rejections(tx: Tx, rows: Iterable[tuple[Any, ...]]) -> None:
    """(organisation, device, item id or None, seq or None, code, detail, received at); a second
    rejection of the same (device, seq) is ignored."""
    tx.run_many(
        "INSERT INTO rejections (organization_id, device_id, item_id, seq, code, detail,"
        " received_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        rows,
    )


# -- passage events ----------------------------------------------------------------------------------
# The doors' passage events (entry, annulled, tailgating, exit: sync protocol 3), stored once by id
# like check-ins; an ``entry`` marks its check-in confirmed, an ``annulled`` marks it annulled (and
# cloud.uploads gives the class back).

EVENT_COLUMNS = (
    "id",
    "organization_id",
    "gym_id",
    "device_id",
    "seq",
    "door_id",
    "kind",
    "checkin_id",
    "wall_time",
    "boot_id",
    "monotonic_ns",
    "clock_quality",
    "occurred_at",
    "time_source",
    "received_at",
)


def insert_events(tx: Tx, rows: Sequence[Sequence[Any]]) -> set[str]:
    """Insert passage events (tuples in EVENT_COLUMNS order) by id, skipping ids already stored;
    returns the ids actually inserted."""
    created: set[str] = set()
    one = "(" + ", ".join("?" * len(EVENT_COLUMNS)) + ")"
    for start in range(0, len(rows), _CHECKIN_CHUNK):
        chunk = rows[start : start + _CHECKIN_CHUNK]
        sql = (
            f"INSERT INTO door_events ({', '.join(EVENT_COLUMNS)})"  # noqa: S608
            f" VALUES {', '.join([one] * len(chunk))} ON CONFLICT DO NOTHING RETURNING id"
        )
        params = [value for row in chunk for value in row]
        created.update(row["id"] for row in tx.all(sql, params))
    return created


def event_holders(tx: Tx, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """{event id: stored row} for stored event ids, with the same keys as ``checkin_holders``."""
    return _holders(tx, "door_events", ids)


def set_event_effects(tx: Tx, effects: Iterable[tuple[int, str]]) -> None:
    """(version, event id) for annulments that gave a class back at that version."""
    tx.run_many("UPDATE door_events SET effect_version = ? WHERE id = ?", effects)


def events_naming(tx: Tx, checkin_ids: Sequence[str]) -> list[tuple[str, str, str]]:
    """(check-in id, kind, device id) of the stored ``entry`` and ``annulled`` events naming
    these check-ins: for check-ins that arrive with or after their event. Uses the
    ``door_events_by_checkin`` index; usually finds nothing."""
    out: list[tuple[str, str, str]] = []
    unique = sorted(set(checkin_ids))
    for start in range(0, len(unique), 500):
        chunk = unique[start : start + 500]
        marks = ", ".join("?" * len(chunk))
        rows = tx.all(
            "SELECT checkin_id, kind, device_id FROM door_events"  # noqa: S608
            f" WHERE checkin_id IN ({marks}) AND kind IN ('entry', 'annulled')",
            chunk,
        )
        out.extend((row["checkin_id"], row["kind"], row["device_id"]) for row in rows)
    return out


def annul_checkin(tx: Tx, checkin_id: str, device_ids: Sequence[str]) -> dict[str, Any] | None:
    """Mark a check-in held under one of these devices annulled, if it is not already; its
    overdraft flag goes (an annulled entry spent nothing). Returns {decision, member_id,
    membership_id, classes_used, effect_version} of the row changed, or None when none was (no
    such check-in here, or annulled before): one conditional UPDATE, so an annulment takes effect
    exactly once even when two arrive at once (PostgreSQL: the second waits for the first's row
    lock, then finds it annulled)."""
    owners = sorted(set(device_ids))
    marks = ", ".join("?" * len(owners))
    row = tx.one(
        "UPDATE checkins SET annulled = TRUE, overdraft = FALSE"  # noqa: S608
        f" WHERE id = ? AND annulled = FALSE AND device_id IN ({marks})"
        " RETURNING decision, member_id, membership_id, classes_used, effect_version",
        (checkin_id, *owners),
    )
    return row


def confirm_checkins(tx: Tx, checkin_ids: Sequence[str], device_ids: Sequence[str]) -> None:
    """Mark check-ins held under one of these devices confirmed (the turnstile turned)."""
    owners = sorted(set(device_ids))
    marks = ", ".join("?" * len(owners))
    tx.run_many(
        f"UPDATE checkins SET confirmed = TRUE WHERE id = ? AND device_id IN ({marks})",  # noqa: S608
        [(checkin_id, *owners) for checkin_id in sorted(set(checkin_ids))],
    )


def mark_annulled_on_arrival(tx: Tx, checkin_ids: Iterable[str]) -> None:
    """Check-ins just stored whose annulment arrived before them: annulled from the start."""
    tx.run_many(
        "UPDATE checkins SET annulled = TRUE, overdraft = FALSE WHERE id = ?",
        [(checkin_id,) for checkin_id in sorted(set(checkin_ids))],
    )


def overdrawn_checkins(tx: Tx, org_id: str, membership_id: str) -> list[str]:
    """Ids of a membership's check-ins flagged as overdrafts (annulled ones never are), newest
    first by when they happened."""
    rows = tx.all(
        "SELECT id FROM checkins WHERE organization_id = ? AND membership_id = ?"
        " AND overdraft = TRUE ORDER BY occurred_at DESC, id DESC",
        (org_id, membership_id),
    )
    return [row["id"] for row in rows]


def clear_overdrafts(tx: Tx, checkin_ids: Iterable[str]) -> None:
    tx.run_many(
        "UPDATE checkins SET overdraft = FALSE WHERE id = ?",
        [(checkin_id,) for checkin_id in checkin_ids],
    )


def journal_seqs_held(tx: Tx, device_ids: str | Sequence[str], low: int, high: int) -> int:
    """How many distinct seqs in [low, high] the cloud holds for a device, or for any of several
    (a kiosk and its earlier enrolments), as check-ins, passage events or rejections (one seq
    space on the device): index range counts on (device_id, seq)."""
    ids = [device_ids] if isinstance(device_ids, str) else sorted(set(device_ids))
    marks = ", ".join("?" * len(ids))
    parts = " UNION ".join(
        f"SELECT seq FROM {table} WHERE device_id IN ({marks}) AND seq BETWEEN ? AND ?"  # noqa: S608
        for table in ("checkins", "door_events", "rejections")
    )
    return int(
        tx.value(
            f"SELECT COUNT(*) AS n FROM ({parts}) AS held",  # noqa: S608
            (*ids, low, high) * 3,
        )
    )


# -- earlier enrolments of one kiosk -----------------------------------------------------------------


def predecessors(tx: Tx, device_id: str) -> list[str]:
    """The devices recorded as earlier enrolments of this kiosk (its journal's seqs continue
    theirs)."""
    rows = tx.all(
        "SELECT predecessor_id FROM device_predecessors WHERE device_id = ? ORDER BY predecessor_id",
        (device_id,),
    )
    return [row["predecessor_id"] for row in rows]


def link_predecessors(tx: Tx, device_id: str, earlier: Iterable[str], now: str) -> None:
    """Record ``earlier`` devices as earlier enrolments of ``device_id`` (idempotent)."""
    tx.run_many(
        "INSERT INTO device_predecessors (device_id, predecessor_id, linked_at) VALUES (?, ?, ?)"
        " ON CONFLICT DO NOTHING",
        [(device_id, p, now) for p in sorted(set(earlier)) if p != device_id],
    )


def devices_sharing_boot(
    tx: Tx, org_id: str, gym_id: str, device_id: str, boot_id: str
) -> list[str]:
    """Other devices of the gym that ran in boot ``boot_id`` (their last heartbeat or one of
    their check-ins says so): the same machine, since a boot id is random per kernel boot."""
    rows = tx.all(
        "SELECT d.id FROM devices d WHERE d.organization_id = ? AND d.gym_id = ? AND d.id <> ?"
        " AND (d.hb_boot_id = ? OR EXISTS (SELECT 1 FROM checkins c WHERE c.device_id = d.id"
        " AND c.boot_id = ?)) ORDER BY d.id",
        (org_id, gym_id, device_id, boot_id, boot_id),
    )
    return [row["id"] for row in rows]


_CHECKIN_LIST = (
    "id, gym_id, device_id, seq, door_id, decision, reason, member_id, membership_id,"
    " classes_used, replica_version, wall_time, clock_quality, occurred_at, time_source,"
    " received_at, overdraft, effect_version, pass_id, annulled, confirmed"
)


def _checkin(row: dict[str, Any]) -> dict[str, Any]:
    row["overdraft"] = bool(row["overdraft"])
    row["annulled"] = bool(row["annulled"])
    row["confirmed"] = bool(row["confirmed"])
    return row


def list_checkins(
    tx: Tx,
    org_id: str,
    *,
    gym_id: str | None,
    since: str | None,
    until: str | None,
    after: tuple[str, str] | None,
    limit: int,
    overdrafts_only: bool = False,
) -> list[dict[str, Any]]:
    """Check-ins by (occurred_at, id), keyset-paginated after ``after``; [since, until)."""
    where = ["organization_id = ?"]
    params: list[Any] = [org_id]
    if gym_id is not None:
        where.append("gym_id = ?")
        params.append(gym_id)
    if since is not None:
        where.append("occurred_at >= ?")
        params.append(since)
    if until is not None:
        where.append("occurred_at < ?")
        params.append(until)
    if after is not None:
        where.append("(occurred_at > ? OR (occurred_at = ? AND id > ?))")
        params.extend((after[0], after[0], after[1]))
    if overdrafts_only:
        where.append("overdraft = TRUE")
    sql = (
        f"SELECT {_CHECKIN_LIST} FROM checkins WHERE {' AND '.join(where)}"  # noqa: S608
        " ORDER BY occurred_at, id LIMIT ?"
    )
    return [_checkin(row) for row in tx.all(sql, (*params, limit))]


# -- phone passes ----------------------------------------------------------------------------------
# A pass is a replica row (kind ``pass``, table ``passes``); the generic replica functions above
# store and tombstone it. These are the queries only passes need: the organisation's pass
# settings, activation codes (stored hashed, claimed once) and lookups by member and by pass id.


def pass_settings(tx: Tx, org_id: str) -> dict[str, Any] | None:
    """{name, pass_period_s, max_live_passes} of an organisation, or None."""
    return tx.one(
        "SELECT name, pass_period_s, max_live_passes FROM organizations WHERE id = ?", (org_id,)
    )


def set_pass_settings(tx: Tx, org_id: str, period_s: int, max_live_passes: int) -> bool:
    return (
        tx.run(
            "UPDATE organizations SET pass_period_s = ?, max_live_passes = ? WHERE id = ?",
            (period_s, max_live_passes, org_id),
        )
        > 0
    )


def insert_pass_activation(
    tx: Tx, code_hash: str, org_id: str, member_id: str, now: str, expires_at: str
) -> None:
    tx.run(
        "INSERT INTO pass_activations (code_hash, organization_id, member_id, created_at,"
        " expires_at) VALUES (?, ?, ?, ?, ?)",
        (code_hash, org_id, member_id, now, expires_at),
    )


def claim_pass_activation(tx: Tx, code_hash: str, now: str) -> tuple[str, str] | None:
    """Mark an unused, unexpired activation code used; (organisation, member) or None. One
    conditional UPDATE, so of two phones racing for one code exactly one wins (PostgreSQL: the
    second waits for the first's row lock, then finds ``used_at`` set; SQLite: writers are
    serialised)."""
    row = tx.one(
        "UPDATE pass_activations SET used_at = ?"
        " WHERE code_hash = ? AND used_at IS NULL AND expires_at > ?"
        " RETURNING organization_id, member_id",
        (now, code_hash, now),
    )
    return None if row is None else (row["organization_id"], row["member_id"])


def set_pass_activation_pass(tx: Tx, code_hash: str, pass_id: str) -> None:
    """Record which pass a claimed activation code made."""
    tx.run("UPDATE pass_activations SET pass_id = ? WHERE code_hash = ?", (pass_id, code_hash))


def live_pass_count(tx: Tx, org_id: str, member_id: str) -> int:
    """How many live ACTIVE passes a member holds (revoked and deleted ones do not count)."""
    return int(
        tx.value(
            "SELECT COUNT(*) AS n FROM passes WHERE organization_id = ? AND member_id = ?"
            " AND status = 'ACTIVE' AND deleted = FALSE",
            (org_id, member_id),
        )
    )


def member_passes(tx: Tx, org_id: str, member_id: str) -> list[dict[str, Any]]:
    """A member's live pass rows (active and revoked), oldest first."""
    t = REPLICA_TABLES["pass"]
    sql = f"{_select(t)} WHERE organization_id = ? AND member_id = ? AND deleted = FALSE"
    rows = tx.all(f"{sql} ORDER BY created_at, id", (org_id, member_id))
    return [_decode(t, row) for row in rows]


def passes_by_id(tx: Tx, pass_id: str) -> list[dict[str, Any]]:
    """Pass rows (live or tombstones) with this id in any organisation: a pass id is unique only
    within its organisation, and a member's phone asking about its pass names no organisation
    (the signature, which covers the organisation id, tells which row is the caller's). Uses the
    ``passes_by_id`` index."""
    t = REPLICA_TABLES["pass"]
    rows = tx.all(f"{_select(t)} WHERE id = ? ORDER BY organization_id LIMIT 16", (pass_id,))
    return [_decode(t, row) for row in rows]


def organizations_with_row(tx: Tx, kind: str, row_id: str) -> list[str]:
    """The organisations holding a live row of ``kind`` with this id: for operator commands
    (the CLI) that name a member or pass without its organisation, never for an API caller."""
    t = REPLICA_TABLES[kind]
    rows = tx.all(
        f"SELECT organization_id FROM {t.table} WHERE id = ? AND deleted = FALSE"  # noqa: S608
        " ORDER BY organization_id",
        (row_id,),
    )
    return [row["organization_id"] for row in rows]


def purge_pass_activations(tx: Tx, cutoff: str) -> int:
    """Delete activation codes that expired before ``cutoff`` (spent or not); how many."""
    return tx.run("DELETE FROM pass_activations WHERE expires_at < ?", (cutoff,))
