"""The cloud's database: the only cloud module with SQL (migrations.py holds the schema's DDL).

Two dialects behind one small interface:

- **SQLite** (the embedded default): ``sqlite:///path/to/cloud.db`` or a plain file path. WAL mode,
  ``synchronous=FULL``, a busy timeout; write transactions are ``BEGIN IMMEDIATE`` (SQLite
  serialises writers; a process's own writers queue for their turn in the process, so the lock
  never sits idle while they sleep in SQLite's busy handler), read transactions a deferred
  ``BEGIN`` (a consistent snapshot from the first read on).
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
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

SQLITE, POSTGRES = "sqlite", "postgres"

DEFAULT_POOL_SIZE = 8
# A writer waits this long for another writer (SQLite) before the request answers 503.
DEFAULT_BUSY_TIMEOUT_S = 10.0
DEFAULT_POOL_TIMEOUT_S = 10.0
SQLITE_WRITE = "BEGIN IMMEDIATE"
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
        # SQLite lets one writer in at a time; a writer that finds the lock taken sleeps in
        # SQLite's busy handler for up to 100 ms a try and is not woken when the lock frees, so
        # under contention the lock sits idle while writers sleep, requests age, and at twice the
        # fleet bench's capacity the cloud shed load it could have served. Writers of this
        # process queue here instead and go in the moment the last one commits; the busy
        # timeout still covers other processes.
        self._sqlite_writer = threading.Lock()
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
        # The connection first, then the writer's turn: whoever holds the turn already has its
        # connection, so the two waits cannot deadlock.
        queued = self.dialect == SQLITE and begin == SQLITE_WRITE
        if queued and not self._sqlite_writer.acquire(timeout=self._busy_timeout_s):
            self._pool.release(conn, broken=False)
            raise DatabaseBusy(f"{self.url.display()}: another write held the database too long")
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
            if queued:
                self._sqlite_writer.release()
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

    def write(self, *, snapshot: bool = False) -> contextlib.AbstractContextManager[Tx]:
        """A write transaction: SQLite BEGIN IMMEDIATE, PostgreSQL READ COMMITTED, or with
        ``snapshot`` REPEATABLE READ (every read sees one state, the one of its first statement;
        a row another transaction changed since cannot be updated: DatabaseBusy with
        ``retry_now``, which ``transact`` runs again). SQLite's writer is alone either way."""
        if self.dialect == SQLITE:
            return self._transaction(SQLITE_WRITE)
        if snapshot:
            return self._transaction("BEGIN ISOLATION LEVEL REPEATABLE READ")
        return self._transaction("BEGIN ISOLATION LEVEL READ COMMITTED")

    def read(self) -> contextlib.AbstractContextManager[Tx]:
        """A read-only transaction on one consistent snapshot (PostgreSQL REPEATABLE READ)."""
        if self.dialect == SQLITE:
            return self._transaction("BEGIN")
        return self._transaction("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")

    def transact(self, fn: Callable[[Tx], T], *, write: bool = True, snapshot: bool = False) -> T:
        """``fn(tx)`` in one transaction (``write(snapshot=...)`` or ``read()``), run again (up
        to TRANSACT_ATTEMPTS times) when the server rolled it back for a deadlock or
        serialisation failure. ``fn`` must not have side effects outside the database."""
        for attempt in range(1, TRANSACT_ATTEMPTS + 1):
            try:
                with self.write(snapshot=snapshot) if write else self.read() as tx:
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


# The heartbeat's record of a device's journal (cloud.uploads.check_journal): the span of seqs
# found held, and how many held rows were removed since the device was enrolled (triggers count
# them; migration 6).
_JOURNAL_MARK = ("journal_verified_from", "journal_verified_seq", "journal_losses")


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
    needs nothing else), and the heartbeat's journal bookkeeping (``journal_verified_from``,
    ``journal_verified_seq``, ``journal_losses``: migration 6)."""
    columns = ", ".join(f"d.{c.strip()}" for c in (*_DEVICE_COLUMNS.split(","), *_JOURNAL_MARK))
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


_OCCUPANCY_COLUMNS = (
    "occ_now",
    "occ_entries_today",
    "occ_exits_today",
    "occ_max_today",
    "occ_capacity",
)


def record_heartbeat(
    tx: Tx,
    device_id: str,
    fields: dict[str, Any],
    *,
    occupancy: Sequence[Any] | None = None,
    verified: tuple[int, int] | None = None,
) -> bool | None:
    """Store a heartbeat's ``fields`` (exactly HEARTBEAT_COLUMNS) on the device, and its time
    ``hb_at`` as the device's ``last_seen_at``; with ``occupancy`` (now, entries today, exits
    today, max today, capacity or None) the door's count too, reported at ``hb_at`` (replacing
    the device's previous report); with ``verified`` the span of its journal found held
    (``journal_verified_from``, ``journal_verified_seq``). One statement, which also returns
    whether an admin asked the device for a fresh snapshot; None when there is no such device."""
    if set(fields) != set(HEARTBEAT_COLUMNS):
        raise ValueError(f"heartbeat fields must be exactly {HEARTBEAT_COLUMNS}")
    names = [*HEARTBEAT_COLUMNS, "last_seen_at"]
    values = [*(fields[name] for name in HEARTBEAT_COLUMNS), fields["hb_at"]]
    if occupancy is not None:
        names += ["occ_at", *_OCCUPANCY_COLUMNS]
        values += [fields["hb_at"], *occupancy]
    if verified is not None:
        names += ["journal_verified_from", "journal_verified_seq"]
        values += list(verified)
    sets = ", ".join(f"{name} = ?" for name in names)
    row = tx.one(
        f"UPDATE devices SET {sets} WHERE id = ? RETURNING resnapshot_requested",  # noqa: S608
        (*values, device_id),
    )
    return None if row is None else bool(row["resnapshot_requested"])


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


def anchors_near(
    tx: Tx, device_id: str, readings: Sequence[tuple[str, int]], window: int
) -> list[bool]:
    """For each (boot id, monotonic ns) reading, whether its boot has a stored anchor within
    ``window`` ns of it, all in one statement. The bounds are clamped to a signed 64-bit
    integer, so no reading can overflow the query's parameters."""
    if not readings:
        return []
    parts = []
    params: list[Any] = []
    for n, (boot_id, monotonic_ns) in enumerate(readings):
        parts.append(
            "SELECT CAST(? AS INTEGER) AS n WHERE EXISTS (SELECT 1 FROM device_anchors"
            " WHERE device_id = ? AND boot_id = ? AND monotonic_ns BETWEEN ? AND ?)"
        )
        low = max(0, monotonic_ns - window)
        high = min(_INT64_MAX, monotonic_ns + window)
        params += [n, device_id, boot_id, low, high]
    near = {int(row["n"]) for row in tx.all(" UNION ALL ".join(parts), params)}
    return [n in near for n in range(len(readings))]


def insert_anchors(tx: Tx, device_id: str, anchors: Iterable[tuple[str, int, str]]) -> None:
    """Store (boot id, monotonic ns, server time) anchors; one already stored is left."""
    tx.run_many(
        "INSERT INTO device_anchors (device_id, boot_id, monotonic_ns, server_time)"
        " VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
        [(device_id, *anchor) for anchor in anchors],
    )


def anchors_around(
    tx: Tx, device_id: str, boot_id: str, low_ns: int, high_ns: int
) -> list[tuple[int, str]]:
    """A boot's anchors in [low, high] plus the nearest one on either side, (monotonic, time),
    in monotonic order. One statement."""
    params = (device_id, boot_id, low_ns, device_id, boot_id, low_ns, high_ns)
    rows = tx.all(_ANCHORS_AROUND, (*params, device_id, boot_id, high_ns))
    return [(int(r["monotonic_ns"]), r["server_time"]) for r in rows]


_ANCHORS_AROUND = (
    "SELECT * FROM (SELECT monotonic_ns, server_time FROM device_anchors WHERE device_id = ?"
    " AND boot_id = ? AND monotonic_ns < ? ORDER BY monotonic_ns DESC LIMIT 1) AS below"
    " UNION ALL SELECT monotonic_ns, server_time FROM device_anchors WHERE device_id = ?"
    " AND boot_id = ? AND monotonic_ns BETWEEN ? AND ?"
    " UNION ALL SELECT * FROM (SELECT monotonic_ns, server_time FROM device_anchors WHERE"
    " device_id = ? AND boot_id = ? AND monotonic_ns > ? ORDER BY monotonic_ns LIMIT 1) AS above"
    " ORDER BY monotonic_ns"
)


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
    return _insert_new(tx, "checkins", CHECKIN_COLUMNS, rows)


def _insert_new(
    tx: Tx, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
) -> set[str]:
    """Insert journal rows (tuples in ``columns`` order) into ``table`` by id, skipping ids
    already stored; returns the ids actually inserted. One multi-row INSERT per chunk."""
    created: set[str] = set()
    one = "(" + ", ".join("?" * len(columns)) + ")"
    for start in range(0, len(rows), _CHECKIN_CHUNK):
        chunk = rows[start : start + _CHECKIN_CHUNK]
        sql = (
            f"INSERT INTO {table} ({', '.join(columns)})"  # noqa: S608 - our own names
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


def unanchored_journal(tx: Tx, device_id: str, boot_id: str) -> dict[str, list[tuple[str, int]]]:
    """(id, monotonic ns) of a boot's rows placed without an anchor, in every journal table:
    {table: rows}, every table of JOURNAL_TABLES a key (check-ins and passage events). One
    statement."""
    parts = " UNION ALL ".join(
        f"SELECT CAST(? AS TEXT) AS t, id, monotonic_ns FROM {table}"  # noqa: S608
        " WHERE device_id = ? AND boot_id = ? AND time_source <> 'anchored'"
        for table in JOURNAL_TABLES
    )
    params = [p for table in JOURNAL_TABLES for p in (table, device_id, boot_id)]
    out: dict[str, list[tuple[str, int]]] = {table: [] for table in JOURNAL_TABLES}
    for row in tx.all(parts, params):
        out[row["t"]].append((row["id"], int(row["monotonic_ns"])))
    return out


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
    return _insert_new(tx, "door_events", EVENT_COLUMNS, rows)


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


def kiosk_seqs_held(tx: Tx, device_id: str, low: int, high: int, also: Sequence[str] = ()) -> int:
    """How many distinct seqs in [low, high] the cloud holds as check-ins, passage events or
    rejections under a device, the earlier enrolments recorded for it (read by the same
    statement: no round trip of their own) and the devices ``also`` (about to be linked). Index
    range counts on (device_id, seq), as ``journal_seqs_held``."""
    extra = sorted(set(also) - {device_id})
    ids = "SELECT CAST(? AS TEXT) AS d UNION SELECT predecessor_id FROM device_predecessors"
    ids += " WHERE device_id = ?"
    ids += "".join(" UNION SELECT CAST(? AS TEXT)" for _ in extra)
    parts = " UNION ".join(
        f"SELECT seq FROM {table} WHERE device_id IN ({ids}) AND seq BETWEEN ? AND ?"  # noqa: S608
        for table in ("checkins", "door_events", "rejections")
    )
    return int(
        tx.value(
            f"SELECT COUNT(*) AS n FROM ({parts}) AS held",  # noqa: S608
            (device_id, device_id, *extra, low, high) * 3,
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


# -- console: accounts -----------------------------------------------------------------------------
# The staff console's own tables (docs/console.md): staff, invites, sessions, trainers' members and
# the audit log. Every query names the organisation, except the few a secret alone selects (an
# invite, a session, a sign-in's email), whose callers then work inside the organisation found.

# The search indexes of migration 5 hold lower-case text in byte order; a query compares
# ``lower(column)`` followed by this collation (PostgreSQL; nothing on SQLite) with the bounds of
# ``prefix_range``.
SEARCH_COLLATE = {SQLITE: "", POSTGRES: ' COLLATE "C"'}


def prefix_range(prefix: str) -> tuple[str, str]:
    """(low, high) such that ``low <= text < high`` in byte order holds exactly for the texts
    starting with ``prefix`` (non-empty): an index range instead of a LIKE, on both databases.
    ValueError for an empty prefix."""
    if not prefix:
        raise ValueError("an empty prefix matches everything")
    last = prefix[-1]
    if ord(last) == 0x10FFFF:
        return prefix, prefix + "\U0010ffff"
    nxt = ord(last) + 1
    if 0xD800 <= nxt <= 0xDFFF:  # surrogates cannot be stored; the next storable one
        nxt = 0xE000
    return prefix, prefix[:-1] + chr(nxt)


_STAFF = "SELECT id, organization_id, email, name, role, created_at, disabled_at FROM staff"


def insert_staff(
    tx: Tx,
    staff_id: str,
    org_id: str,
    email: str,
    name: str,
    role: str,
    password_hash: str,
    now: str,
) -> None:
    """A new staff account. Conflict when the organisation already has this email."""
    tx.run(
        "INSERT INTO staff (id, organization_id, email, name, role, password_hash, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (staff_id, org_id, email, name, role, password_hash, now),
    )


def reactivate_staff(
    tx: Tx, org_id: str, staff_id: str, name: str, role: str, password_hash: str
) -> bool:
    """A disabled account taken up again (through a new invite): new name, role and password."""
    return (
        tx.run(
            "UPDATE staff SET name = ?, role = ?, password_hash = ?, disabled_at = NULL"
            " WHERE organization_id = ? AND id = ? AND disabled_at IS NOT NULL",
            (name, role, password_hash, org_id, staff_id),
        )
        > 0
    )


def staff_member(tx: Tx, org_id: str, staff_id: str) -> dict[str, Any] | None:
    """One staff account of the organisation (enabled or not), without its password hash."""
    return tx.one(f"{_STAFF} WHERE organization_id = ? AND id = ?", (org_id, staff_id))


def staff_by_email(tx: Tx, org_id: str, email: str) -> dict[str, Any] | None:
    return tx.one(f"{_STAFF} WHERE organization_id = ? AND email = ?", (org_id, email))


def staff_list(tx: Tx, org_id: str) -> list[dict[str, Any]]:
    """Every account of the organisation, enabled first, then by name."""
    return tx.all(
        f"{_STAFF} WHERE organization_id = ?"
        " ORDER BY CASE WHEN disabled_at IS NULL THEN 0 ELSE 1 END, name, id",
        (org_id,),
    )


def staff_for_login(tx: Tx, email: str, limit: int) -> list[dict[str, Any]]:
    """The enabled accounts with this email, in any organisation (sign-in names no organisation),
    oldest first, at most ``limit``, with their password hashes."""
    return tx.all(
        "SELECT id, organization_id, email, name, role, password_hash FROM staff"
        " WHERE email = ? AND disabled_at IS NULL ORDER BY created_at, id LIMIT ?",
        (email, limit),
    )


def set_staff_role(tx: Tx, org_id: str, staff_id: str, role: str) -> bool:
    return (
        tx.run(
            "UPDATE staff SET role = ? WHERE organization_id = ? AND id = ?",
            (role, org_id, staff_id),
        )
        > 0
    )


def disable_staff(tx: Tx, org_id: str, staff_id: str, now: str) -> bool:
    """Disable an enabled account and end its sessions; False when there was none to disable."""
    changed = tx.run(
        "UPDATE staff SET disabled_at = ? WHERE organization_id = ? AND id = ?"
        " AND disabled_at IS NULL",
        (now, org_id, staff_id),
    )
    tx.run(
        "DELETE FROM staff_sessions WHERE organization_id = ? AND staff_id = ?", (org_id, staff_id)
    )
    return changed > 0


def enabled_owner_ids(tx: Tx, org_id: str) -> list[str]:
    """The enabled owners of an organisation (it must always keep one)."""
    rows = tx.all(
        "SELECT id FROM staff WHERE organization_id = ? AND role = 'owner'"
        " AND disabled_at IS NULL ORDER BY id",
        (org_id,),
    )
    return [row["id"] for row in rows]


def insert_staff_invite(
    tx: Tx,
    token_hash: str,
    org_id: str,
    email: str,
    role: str,
    created_by: str | None,
    now: str,
    expires_at: str,
) -> None:
    tx.run(
        "INSERT INTO staff_invites (token_hash, organization_id, email, role, created_by,"
        " created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (token_hash, org_id, email, role, created_by, now, expires_at),
    )


def claim_staff_invite(tx: Tx, token_hash: str, now: str) -> dict[str, Any] | None:
    """Mark an unused, unexpired invite used; its {organization_id, email, role, created_by}, or
    None. One conditional UPDATE: of two browsers racing for one invite exactly one wins."""
    return tx.one(
        "UPDATE staff_invites SET used_at = ?"
        " WHERE token_hash = ? AND used_at IS NULL AND expires_at > ?"
        " RETURNING organization_id, email, role, created_by",
        (now, token_hash, now),
    )


def staff_invite(tx: Tx, token_hash: str, now: str) -> dict[str, Any] | None:
    """An unused, unexpired invite: {organization_id, organization_name, email, role,
    expires_at}, or None (claim it with ``claim_staff_invite``)."""
    return tx.one(
        "SELECT i.organization_id, o.name AS organization_name, i.email, i.role, i.expires_at"
        " FROM staff_invites i JOIN organizations o ON o.id = i.organization_id"
        " WHERE i.token_hash = ? AND i.used_at IS NULL AND i.expires_at > ?",
        (token_hash, now),
    )


def open_staff_invites(tx: Tx, org_id: str, now: str) -> list[dict[str, Any]]:
    """The organisation's unused, unexpired invites, soonest to expire first (no hashes)."""
    return tx.all(
        "SELECT i.email, i.role, i.created_at, i.expires_at, s.name AS created_by_name"
        " FROM staff_invites i LEFT JOIN staff s ON s.id = i.created_by"
        " WHERE i.organization_id = ? AND i.used_at IS NULL AND i.expires_at > ?"
        " ORDER BY i.expires_at, i.email",
        (org_id, now),
    )


def insert_staff_session(
    tx: Tx,
    token_hash: str,
    staff_id: str,
    org_id: str,
    csrf_token: str,
    now: str,
    expires_at: str,
    address: str,
) -> None:
    tx.run(
        "INSERT INTO staff_sessions (token_hash, staff_id, organization_id, csrf_token,"
        " created_at, last_seen_at, expires_at, address) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (token_hash, staff_id, org_id, csrf_token, now, now, expires_at, address),
    )


def staff_session(tx: Tx, token_hash: str, now: str, created_after: str) -> dict[str, Any] | None:
    """The live session with this token hash and its enabled account: {token_hash, staff_id,
    organization_id, csrf_token, created_at, last_seen_at, expires_at, email, name, role,
    organization_name}, or None (unknown, ended, started at or before ``created_after``, or its
    account disabled)."""
    return tx.one(
        "SELECT s.token_hash, s.staff_id, s.organization_id, s.csrf_token, s.created_at,"
        " s.last_seen_at, s.expires_at, st.email, st.name, st.role, o.name AS organization_name"
        " FROM staff_sessions s"
        " JOIN staff st ON st.id = s.staff_id AND st.organization_id = s.organization_id"
        " JOIN organizations o ON o.id = s.organization_id"
        " WHERE s.token_hash = ? AND s.expires_at > ? AND s.created_at > ?"
        " AND st.disabled_at IS NULL",
        (token_hash, now, created_after),
    )


def touch_staff_session(tx: Tx, token_hash: str, now: str, expires_at: str) -> None:
    tx.run(
        "UPDATE staff_sessions SET last_seen_at = ?, expires_at = ? WHERE token_hash = ?",
        (now, expires_at, token_hash),
    )


def delete_staff_session(tx: Tx, token_hash: str) -> None:
    tx.run("DELETE FROM staff_sessions WHERE token_hash = ?", (token_hash,))


def trim_staff_sessions(tx: Tx, staff_id: str, keep: int) -> int:
    """Delete all but the ``keep`` newest sessions of one account; how many went."""
    return tx.run(
        "DELETE FROM staff_sessions WHERE staff_id = ? AND token_hash NOT IN"
        " (SELECT token_hash FROM staff_sessions WHERE staff_id = ?"
        " ORDER BY created_at DESC, token_hash LIMIT ?)",
        (staff_id, staff_id, keep),
    )


def purge_staff_sessions(tx: Tx, now: str) -> int:
    """Delete every session that has ended (``expires_at`` passed); how many."""
    return tx.run("DELETE FROM staff_sessions WHERE expires_at <= ?", (now,))


def purge_staff_invites(tx: Tx, cutoff: str) -> int:
    """Delete invites that expired before ``cutoff`` (used or not); how many."""
    return tx.run("DELETE FROM staff_invites WHERE expires_at < ?", (cutoff,))


def assign_trainer_member(tx: Tx, staff_id: str, member_id: str) -> bool:
    """Give a trainer a member (idempotent); True when it is new. The caller has checked that
    both belong to its organisation."""
    return (
        tx.run(
            "INSERT INTO trainer_members (staff_id, member_id) VALUES (?, ?)"
            " ON CONFLICT DO NOTHING",
            (staff_id, member_id),
        )
        > 0
    )


def unassign_trainer_member(tx: Tx, org_id: str, staff_id: str, member_id: str) -> bool:
    return (
        tx.run(
            "DELETE FROM trainer_members WHERE staff_id = ? AND member_id = ?"
            " AND staff_id IN (SELECT id FROM staff WHERE organization_id = ?)",
            (staff_id, member_id, org_id),
        )
        > 0
    )


def trainer_member_rows(tx: Tx, org_id: str, staff_id: str) -> list[dict[str, Any]]:
    """The live members assigned to a trainer of the organisation: {id, first_name, last_name,
    status}, by name."""
    return tx.all(
        "SELECT m.id, m.first_name, m.last_name, m.status FROM trainer_members t"
        " JOIN staff s ON s.id = t.staff_id AND s.organization_id = ?"
        " JOIN members m ON m.organization_id = s.organization_id AND m.id = t.member_id"
        " WHERE t.staff_id = ? AND m.deleted = FALSE ORDER BY m.last_name, m.first_name, m.id",
        (org_id, staff_id),
    )


def trainer_has_member(tx: Tx, org_id: str, staff_id: str, member_id: str) -> bool:
    """True when the organisation's trainer ``staff_id`` is assigned the live member."""
    return (
        tx.one(
            "SELECT 1 AS ok FROM trainer_members t"
            " JOIN staff s ON s.id = t.staff_id AND s.organization_id = ?"
            " JOIN members m ON m.organization_id = s.organization_id AND m.id = t.member_id"
            " WHERE t.staff_id = ? AND t.member_id = ? AND m.deleted = FALSE",
            (org_id, staff_id, member_id),
        )
        is not None
    )


def insert_audit(
    tx: Tx,
    org_id: str,
    staff_id: str | None,
    action: str,
    target: str,
    detail: str,
    at: str,
    address: str,
) -> None:
    tx.run(
        "INSERT INTO audit_log (organization_id, staff_id, action, target, detail, at, address)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (org_id, staff_id, action, target, detail, at, address),
    )


def audit_page(tx: Tx, org_id: str, before_id: int | None, limit: int) -> list[dict[str, Any]]:
    """The organisation's audit rows newest first (by id), those with an id below ``before_id``
    when given, at most ``limit``; each with the acting account's name and email (None for the
    command line)."""
    where = "a.organization_id = ?"
    params: list[Any] = [org_id]
    if before_id is not None:
        where += " AND a.id < ?"
        params.append(before_id)
    return tx.all(
        "SELECT a.id, a.staff_id, a.action, a.target, a.detail, a.at, a.address,"  # noqa: S608
        " s.name AS staff_name, s.email AS staff_email FROM audit_log a"
        f" LEFT JOIN staff s ON s.id = a.staff_id WHERE {where} ORDER BY a.id DESC LIMIT ?",
        (*params, limit),
    )


# -- console: search -------------------------------------------------------------------------------
# Member search for the console (cloud.console.search holds the rules, these the queries). Each
# kind of search is one index range of migration 5, scoped to the organisation (and, for a
# trainer, to ``trainer_members``): a name prefix on ``lower(first_name)`` or ``lower(last_name)``
# (byte order, ``SEARCH_COLLATE``), a card code on ``lower(card_code)``, a phone number's last four
# digits on ``substr(phone, length(phone) - 3)``. Every value is a placeholder; the LIKE patterns
# of the name filter escape ``%``, ``_`` and ``\``.

MEMBER_SEARCH_COLUMNS = "id, first_name, last_name, status, is_staff, card_code, phone"
_FOLDS_KEY = ("console", "lower() folds non-ASCII")


def lower_folds_non_ascii(tx: Tx) -> bool:
    """Whether this database's ``lower()`` folds letters beyond ASCII (PostgreSQL with a UTF-8
    ctype does, SQLite and a C-locale PostgreSQL do not): a search folds its words the same way,
    or an index range would miss. Asked once per ``Database`` (cached)."""
    if tx.dialect == SQLITE:
        return False
    cached = tx.cache.get(_FOLDS_KEY)
    if cached is None:
        cached = tx.value("SELECT lower(?) AS folded", ("\u00c4",)) == "\u00e4"
        tx.cache.put(_FOLDS_KEY, cached)
    return bool(cached)


def _trainer_scope(org_id: str, trainer_id: str | None) -> tuple[str, list[Any]]:
    """The clause keeping a trainer's search to the members assigned to them (the staff row's
    organisation is checked too, so another organisation's trainer id finds nothing)."""
    if trainer_id is None:
        return "", []
    return (
        " AND id IN (SELECT t.member_id FROM trainer_members t JOIN staff s ON s.id = t.staff_id"
        " WHERE t.staff_id = ? AND s.organization_id = ?)",
        [trainer_id, org_id],
    )


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _member_search_sql(
    dialect: str,
    org_id: str,
    by: str,
    terms: Sequence[str],
    limit: int,
    trainer_id: str | None,
) -> tuple[str, list[Any]]:
    """(SQL, parameters) of one member search; see ``member_search``."""
    c = SEARCH_COLLATE[dialect]
    scope_sql, scope = _trainer_scope(org_id, trainer_id)
    base = f"SELECT {MEMBER_SEARCH_COLUMNS} FROM members"  # noqa: S608
    base += " WHERE organization_id = ? AND deleted = FALSE"
    if by == "code":
        (code,) = terms
        sql = f"{base} AND lower(card_code){c} = ?{scope_sql} ORDER BY card_code, id LIMIT ?"
        return sql, [org_id, code, *scope, limit]
    if by == "phone":
        (digits,) = terms
        # The index finds the last four digits; the longer ending (or the whole number) filters.
        sql = (
            f"{base} AND phone IS NOT NULL AND substr(phone, length(phone) - 3) = ?"
            f" AND substr(phone, length(phone) - ?) = ?{scope_sql}"
            " ORDER BY last_name, first_name, id LIMIT ?"
        )
        return sql, [org_id, digits[-4:], len(digits) - 1, digits, *scope, limit]
    if by != "name":
        raise ValueError(f"no member search by {by}")
    # Every word starts the first name, the last name or a word within either; the longest word
    # drives an index range on each name column (the others only filter), each branch in index
    # order with its own LIMIT, so a short common prefix still reads at most ``limit`` rows a
    # branch.
    words = list(terms)
    driver = max(words, key=len)
    low, high = prefix_range(driver)
    filters = ""
    filter_params: list[Any] = []
    whole = "(' ' || lower(first_name) || ' ' || lower(last_name))"
    for word in words:
        pattern = _like_escape(word)
        filters += f" AND ({whole} LIKE ? ESCAPE '\\' OR {whole} LIKE ? ESCAPE '\\')"
        filter_params += [f"% {pattern}%", f"%-{pattern}%"]
    branches = []
    params: list[Any] = []
    for column in ("last_name", "first_name"):
        key = f"lower({column}){c}"
        branches.append(
            f"SELECT * FROM ({base} AND {key} >= ? AND {key} < ?{filters}{scope_sql}"  # noqa: S608
            f" ORDER BY {key} LIMIT ?) AS by_{column}"
        )
        params += [org_id, low, high, *filter_params, *scope, limit]
    return " UNION ".join(branches), params


def member_search(
    tx: Tx,
    org_id: str,
    by: str,
    terms: Sequence[str],
    *,
    limit: int,
    trainer_id: str | None = None,
) -> list[dict[str, Any]]:
    """Live members of the organisation matching one search, at most ``limit`` (a name search:
    up to twice that, the union of its two branches; the caller sorts and cuts). ``by``:
    ``code`` (``terms`` = the lower-case code: equal, any case), ``phone`` (the digits: the
    stored number ends with them), ``name`` (folded words, non-empty: each starts a word of the
    name, the longest starts the first or the last name). ``trainer_id``: only that trainer's
    members. Rows: {id, first_name, last_name, status, is_staff, card_code, phone}."""
    sql, params = _member_search_sql(tx.dialect, org_id, by, terms, limit, trainer_id)
    rows = tx.all(sql, params)
    for row in rows:
        row["is_staff"] = bool(row["is_staff"])
    return rows


def member_search_plan(
    tx: Tx,
    org_id: str,
    by: str,
    terms: Sequence[str],
    *,
    limit: int,
    trainer_id: str | None = None,
) -> list[str]:
    """The database's plan for ``member_search`` with these arguments, one line per step
    (SQLite ``EXPLAIN QUERY PLAN``, PostgreSQL ``EXPLAIN``): for the tests and the bench, which
    check that every search is an index range."""
    sql, params = _member_search_sql(tx.dialect, org_id, by, terms, limit, trainer_id)
    if tx.dialect == SQLITE:
        return [row["detail"] for row in tx.all(f"EXPLAIN QUERY PLAN {sql}", params)]
    return [row["QUERY PLAN"] for row in tx.all(f"EXPLAIN {sql}", params)]


def set_member_phones(tx: Tx, org_id: str, phones: Mapping[str, str | None]) -> None:
    """Store live members' phone numbers, {member id: number} (normalised by the caller:
    ``cloud.console.search.normal_phone``; None clears one), one prepared statement for the lot.
    Not replicated: the version does not move. Unknown members are skipped."""
    tx.run_many(
        "UPDATE members SET phone = ? WHERE organization_id = ? AND id = ? AND deleted = FALSE",
        [(phone, org_id, member_id) for member_id, phone in phones.items()],
    )


# -- console: live ---------------------------------------------------------------------------------
# The live attendance feed (cloud.console.live): what arrived since a cursor, by ``received_at``
# (the cloud's clock when the upload arrived), read with the ``*_by_received`` indexes of
# migration 5. Check-ins and passage events are two tables with one cursor: (received_at, table
# order, id), the table order being LIVE_TABLES' (check-ins first).

LIVE_TABLES = ("checkins", "door_events")

_LIVE_SELECT = {
    "checkins": (
        "SELECT x.id, x.organization_id, x.gym_id, x.device_id, x.door_id, x.decision, x.reason,"
        " x.member_id, x.pass_id, x.classes_used, x.overdraft, x.annulled, x.confirmed,"
        " x.occurred_at, x.received_at, m.first_name, m.last_name, d.name AS device_name"
        " FROM checkins x"
        " LEFT JOIN members m ON m.organization_id = x.organization_id AND m.id = x.member_id"
        " LEFT JOIN devices d ON d.id = x.device_id"
    ),
    "door_events": (
        "SELECT x.id, x.organization_id, x.gym_id, x.device_id, x.door_id, x.kind, x.checkin_id,"
        " x.occurred_at, x.received_at, c.member_id, m.first_name, m.last_name,"
        " d.name AS device_name FROM door_events x"
        " LEFT JOIN checkins c ON c.id = x.checkin_id AND c.organization_id = x.organization_id"
        " LEFT JOIN members m ON m.organization_id = x.organization_id AND m.id = c.member_id"
        " LEFT JOIN devices d ON d.id = x.device_id"
    ),
}


def _live_row(table: str, row: dict[str, Any]) -> dict[str, Any]:
    if table == "checkins":
        for flag in ("overdraft", "annulled", "confirmed"):
            row[flag] = bool(row[flag])
    return row


def live_keys(tx: Tx, table: str, org_ids: Sequence[str], since: str) -> list[tuple[str, str, str]]:
    """(organisation, received_at, id) of the rows of ``table`` (one of LIVE_TABLES) these
    organisations received at or after ``since``: read from the index alone (the poll's
    overlap re-reads a window of keys every time, never whole rows)."""
    if table not in LIVE_TABLES:
        raise ValueError(f"not a live table: {table}")
    out: list[tuple[str, str, str]] = []
    unique = sorted(set(org_ids))
    for start in range(0, len(unique), 500):
        chunk = unique[start : start + 500]
        marks = ", ".join("?" * len(chunk))
        rows = tx.all(
            f"SELECT organization_id, received_at, id FROM {table}"  # noqa: S608
            f" WHERE organization_id IN ({marks}) AND received_at >= ?",
            (*chunk, since),
        )
        out.extend((r["organization_id"], r["received_at"], r["id"]) for r in rows)
    return out


def live_rows(tx: Tx, table: str, ids: Sequence[str]) -> list[dict[str, Any]]:
    """The rows of ``table`` (one of LIVE_TABLES) with these ids, each with its member's
    ``first_name`` and ``last_name`` and its door's ``device_name`` (None when unknown); a
    passage event carries its check-in's ``member_id``."""
    if table not in LIVE_TABLES:
        raise ValueError(f"not a live table: {table}")
    out: list[dict[str, Any]] = []
    unique = sorted(set(ids))
    for start in range(0, len(unique), 500):
        chunk = unique[start : start + 500]
        marks = ", ".join("?" * len(chunk))
        rows = tx.all(f"{_LIVE_SELECT[table]} WHERE x.id IN ({marks})", chunk)
        out.extend(_live_row(table, row) for row in rows)
    return out


def live_after(
    tx: Tx,
    table: str,
    org_id: str,
    gym_id: str | None,
    cursor: tuple[str, int, str],
    limit: int,
) -> list[dict[str, Any]]:
    """Rows of ``table`` the organisation (one gym's, with ``gym_id``) received after
    ``cursor`` = (received_at, table order, id) in (received_at, id) order, at most ``limit``, as
    ``live_rows`` has them: a console that reconnects is sent what it missed."""
    if table not in LIVE_TABLES:
        raise ValueError(f"not a live table: {table}")
    at, order, after_id = cursor
    own = LIVE_TABLES.index(table)
    where = "x.organization_id = ?"
    params: list[Any] = [org_id]
    if own > order:
        where += " AND x.received_at >= ?"
        params.append(at)
    elif own < order:
        where += " AND x.received_at > ?"
        params.append(at)
    else:
        where += " AND (x.received_at > ? OR (x.received_at = ? AND x.id > ?))"
        params += [at, at, after_id]
    if gym_id is not None:
        where += " AND x.gym_id = ?"
        params.append(gym_id)
    rows = tx.all(
        f"{_LIVE_SELECT[table]} WHERE {where} ORDER BY x.received_at, x.id LIMIT ?",
        (*params, limit),
    )
    return [_live_row(table, row) for row in rows]


# -- console: members ------------------------------------------------------------------------------
# The members pages (cloud.console.members): the list in name order, a member's stored phone, and a
# member's check-ins newest first. The list reads the ``members_by_last_name`` index of migration 5
# (keyset pages, no OFFSET), a member's check-ins ``checkins_by_member``; ``*_plan`` show the
# database's plans (tests).


def _member_list_sql(
    dialect: str,
    org_id: str,
    after: tuple[str, str] | None,
    limit: int,
    trainer_id: str | None,
) -> tuple[str, list[Any]]:
    c = SEARCH_COLLATE[dialect]
    key = f"lower(last_name){c}"
    scope_sql, scope = _trainer_scope(org_id, trainer_id)
    where = "organization_id = ? AND deleted = FALSE"
    params: list[Any] = [org_id]
    if after is not None:
        # ``key >= ?`` starts the index range; the OR only drops the ties already shown.
        where += f" AND {key} >= ? AND ({key} > ? OR id > ?)"
        params += [after[0], after[0], after[1]]
    sql = f"SELECT {MEMBER_SEARCH_COLUMNS}, {key} AS sort_key FROM members"  # noqa: S608
    sql += f" WHERE {where}{scope_sql} ORDER BY {key}, id LIMIT ?"
    return sql, [*params, *scope, limit]


def member_list_page(
    tx: Tx,
    org_id: str,
    after: tuple[str, str] | None,
    limit: int,
    trainer_id: str | None = None,
) -> list[dict[str, Any]]:
    """Live members of the organisation (only ``trainer_id``'s, when given) ordered by their
    folded last name (``sort_key``, byte order) and id, after the keyset ``after`` = (sort_key,
    id) of the previous page's last row, at most ``limit``. Rows: MEMBER_SEARCH_COLUMNS and
    ``sort_key``."""
    sql, params = _member_list_sql(tx.dialect, org_id, after, limit, trainer_id)
    rows = tx.all(sql, params)
    for row in rows:
        row["is_staff"] = bool(row["is_staff"])
    return rows


def member_phone(tx: Tx, org_id: str, member_id: str) -> str | None:
    """A live member's stored phone number (None: none, or no such member)."""
    return tx.value(
        "SELECT phone FROM members WHERE organization_id = ? AND id = ? AND deleted = FALSE",
        (org_id, member_id),
    )


def _member_checkins_sql(
    org_id: str, member_id: str, before: tuple[str, str] | None, limit: int
) -> tuple[str, list[Any]]:
    where = "c.organization_id = ? AND c.member_id = ?"
    params: list[Any] = [org_id, member_id]
    if before is not None:
        where += " AND c.occurred_at <= ? AND (c.occurred_at < ? OR c.id < ?)"
        params += [before[0], before[0], before[1]]
    sql = (
        "SELECT c.id, c.gym_id, c.device_id, c.door_id, c.decision, c.reason, c.membership_id,"
        " c.classes_used, c.occurred_at, c.received_at, c.overdraft, c.annulled, c.confirmed,"
        " c.pass_id, d.name AS device_name FROM checkins c"
        " LEFT JOIN devices d ON d.id = c.device_id AND d.organization_id = c.organization_id"
    )
    sql += f" WHERE {where} ORDER BY c.occurred_at DESC, c.id DESC LIMIT ?"
    return sql, [*params, limit]


def member_checkins(
    tx: Tx, org_id: str, member_id: str, before: tuple[str, str] | None, limit: int
) -> list[dict[str, Any]]:
    """A member's check-ins (granted and refused), newest first by (occurred_at, id), before the
    keyset ``before`` = (occurred_at, id) of the previous page's last row, at most ``limit``;
    each with its door's ``device_name`` (None when the device is unknown)."""
    sql, params = _member_checkins_sql(org_id, member_id, before, limit)
    return [_checkin(row) for row in tx.all(sql, params)]


def _plan(tx: Tx, sql: str, params: Sequence[Any]) -> list[str]:
    if tx.dialect == SQLITE:
        return [row["detail"] for row in tx.all(f"EXPLAIN QUERY PLAN {sql}", params)]
    return [row["QUERY PLAN"] for row in tx.all(f"EXPLAIN {sql}", params)]


def member_list_plan(
    tx: Tx, org_id: str, after: tuple[str, str] | None, limit: int, trainer_id: str | None = None
) -> list[str]:
    """The database's plan for ``member_list_page`` (one line per step)."""
    return _plan(tx, *_member_list_sql(tx.dialect, org_id, after, limit, trainer_id))


def member_checkins_plan(
    tx: Tx, org_id: str, member_id: str, before: tuple[str, str] | None, limit: int
) -> list[str]:
    """The database's plan for ``member_checkins`` (one line per step)."""
    return _plan(tx, *_member_checkins_sql(org_id, member_id, before, limit))


# -- console: today and doors ----------------------------------------------------------------------
# Today's attendance (cloud.console.today) and the doors' overdrafts (cloud.console.doors). Every
# function takes the organisation; with ``trainer_id`` only check-ins of the members assigned to
# that trainer are read. A day is read per gym, [since, until) on ``occurred_at``: the
# ``checkins_by_gym_time`` index range; open overdrafts are the ``checkins_overdrafts`` partial
# index.

_DAY_CHECKINS = (
    "SELECT c.id, c.gym_id, c.device_id, c.door_id, c.decision, c.reason, c.member_id,"
    " c.membership_id, c.pass_id, c.classes_used, c.overdraft, c.annulled, c.confirmed,"
    " c.occurred_at, c.received_at, m.first_name, m.last_name, d.name AS device_name"
    " FROM checkins c"
    " LEFT JOIN members m ON m.organization_id = c.organization_id AND m.id = c.member_id"
    " LEFT JOIN devices d ON d.id = c.device_id AND d.organization_id = c.organization_id"
)


def _day_scope(
    org_id: str, gym_id: str, since: str, until: str, trainer_id: str | None
) -> tuple[str, list[Any]]:
    where = "c.organization_id = ? AND c.gym_id = ? AND c.occurred_at >= ? AND c.occurred_at < ?"
    params: list[Any] = [org_id, gym_id, since, until]
    if trainer_id is not None:
        # The trainer's own rows only (trainer_members has no organisation: the staff row has).
        where += (
            " AND c.member_id IN (SELECT t.member_id FROM trainer_members t"
            " JOIN staff s ON s.id = t.staff_id AND s.organization_id = ? WHERE t.staff_id = ?)"
        )
        params += [org_id, trainer_id]
    return where, params


def day_checkins(
    tx: Tx,
    org_id: str,
    gym_id: str,
    since: str,
    until: str,
    limit: int,
    trainer_id: str | None = None,
) -> list[dict[str, Any]]:
    """A gym's check-ins that happened in [since, until) (stored UTC texts), newest first by
    (occurred_at, id), at most ``limit``; each with its member's ``first_name``/``last_name``
    and its door's ``device_name`` (None when unknown)."""
    where, params = _day_scope(org_id, gym_id, since, until, trainer_id)
    rows = tx.all(
        f"{_DAY_CHECKINS} WHERE {where} ORDER BY c.occurred_at DESC, c.id DESC LIMIT ?",
        (*params, limit),
    )
    return [_checkin(row) for row in rows]


def day_counts(
    tx: Tx, org_id: str, gym_id: str, since: str, until: str, trainer_id: str | None = None
) -> list[dict[str, Any]]:
    """How many check-ins a gym had in [since, until), by (decision, reason, annulled):
    rows {decision, reason, annulled, n}."""
    where, params = _day_scope(org_id, gym_id, since, until, trainer_id)
    rows = tx.all(
        "SELECT c.decision, c.reason, c.annulled, COUNT(*) AS n FROM checkins c"  # noqa: S608
        f" WHERE {where} GROUP BY c.decision, c.reason, c.annulled",
        params,
    )
    for row in rows:
        row["annulled"] = bool(row["annulled"])
        row["n"] = int(row["n"])
    return rows


_OVERDRAFTS = (
    "SELECT c.id, c.gym_id, c.device_id, c.door_id, c.member_id, c.membership_id,"
    " c.classes_used, c.overdraft, c.occurred_at, c.received_at, m.first_name, m.last_name,"
    " d.name AS device_name, ms.remaining_classes, ms.type AS membership_type,"
    " ms.deleted AS membership_deleted FROM checkins c"
    " LEFT JOIN members m ON m.organization_id = c.organization_id AND m.id = c.member_id"
    " LEFT JOIN devices d ON d.id = c.device_id AND d.organization_id = c.organization_id"
    " LEFT JOIN memberships ms ON ms.organization_id = c.organization_id"
    " AND ms.id = c.membership_id"
)


def _overdraft_row(row: dict[str, Any]) -> dict[str, Any]:
    row["overdraft"] = bool(row["overdraft"])
    if row["membership_deleted"]:
        row["remaining_classes"] = row["membership_type"] = None
    row.pop("membership_deleted")
    return row


def open_overdrafts(tx: Tx, org_id: str, limit: int) -> list[dict[str, Any]]:
    """The organisation's check-ins still flagged as overdrafts (a class pack or PT balance taken
    below zero), newest first, at most ``limit``; each with the member's name, the door's
    ``device_name``, and the membership's current ``remaining_classes`` and ``type`` (None when
    the membership is gone)."""
    rows = tx.all(
        f"{_OVERDRAFTS} WHERE c.organization_id = ? AND c.overdraft = TRUE"
        " ORDER BY c.occurred_at DESC, c.id DESC LIMIT ?",
        (org_id, limit),
    )
    return [_overdraft_row(row) for row in rows]


def count_overdrafts(tx: Tx, org_id: str) -> int:
    """How many of the organisation's check-ins are flagged as overdrafts."""
    return int(
        tx.value(
            "SELECT COUNT(*) AS n FROM checkins WHERE organization_id = ? AND overdraft = TRUE",
            (org_id,),
        )
    )


def overdraft_checkin(tx: Tx, org_id: str, checkin_id: str) -> dict[str, Any] | None:
    """A check-in of the organisation as ``open_overdrafts`` has it, flagged or not (its
    ``overdraft``), or None when the organisation has no such check-in."""
    row = tx.one(
        f"{_OVERDRAFTS} WHERE c.organization_id = ? AND c.id = ?",
        (org_id, checkin_id),
    )
    return None if row is None else _overdraft_row(row)


def settle_overdraft(tx: Tx, org_id: str, checkin_id: str) -> bool:
    """Clear a check-in's overdraft flag (the desk has dealt with it); the balance is left as the
    doors spent it. True when this call cleared it, False when it was not flagged (settled
    before, or cleared by an annulment) or is no check-in of the organisation. One conditional
    UPDATE: two desks settling at once record it once."""
    return (
        tx.run(
            "UPDATE checkins SET overdraft = FALSE WHERE organization_id = ? AND id = ?"
            " AND overdraft = TRUE",
            (org_id, checkin_id),
        )
        > 0
    )


# == bench and test seeding =========================================================================
# Not used by the service: the fleet bench (devtools.bench.fleet) and tests give a door a long
# journal already stored, as a door keeping 90 days would have, without uploading it row by row.

# The seeded rows' decisions by seq: 19 grants in 20, the 20th a refusal (passback, then an
# expired member, in turn): a door's refusals are a few percent. Each row names a live
# membership of the organisation, picked by seq * _SEED_STRIDE + seq / 20 modulo their count (a
# prime stride spreads them, deterministically; the second term keeps a member from always
# landing on the same decision).
_SEED_STRIDE = 7919
_PG_UTC_TEXT = 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'  # to_char's picture of the stored time text


def seed_journal_history(
    tx: Tx,
    device_id: str,
    org_id: str,
    gym_id: str,
    door_id: str,
    first_seq: int,
    count: int,
    first_at_us: int,
    last_at_us: int,
    *,
    replica_version: int = 0,
) -> int:
    """Store ``count`` check-ins of a door's past under ``device_id``, seqs ``first_seq`` ..
    ``first_seq + count - 1``, with one set-based INSERT (PostgreSQL ``generate_series``, SQLite a
    recursive CTE): fast enough for hundreds of thousands of rows a door. **For benches and tests
    only**: nothing in the service calls it.

    The rows look uploaded and placed: times spread evenly from ``first_at_us`` to
    ``last_at_us`` (microseconds since the Unix epoch, UTC) in seq order, ``time_source``
    ``anchored``, received when they occurred, boot ``history-<device id>`` with its monotonic
    time one second a seq; 19 grants in 20 (``subscription``), the rest refusals (``passback``,
    ``member_expired``); members and memberships are the organisation's live memberships. They
    spend no class and carry no effect: balances are left as they are. Ids are lowercase UUIDs
    (version 7, as a door's): 88 bits of the device id's SHA-256, then the seq in hex (8
    digits), so they are unique per device while seqs stay below 2**32 and one door's ids are
    neighbours in the primary key (an append, not inserts all over it).

    Returns the rows inserted (``count``). Raises ValueError for an empty or out-of-range seq
    range or an organisation without live memberships, ``Conflict`` when an id is already
    stored (the seqs were seeded before), ``DatabaseError`` for the database's failures."""
    last_seq = first_seq + count - 1
    if count < 1 or first_seq < 1 or last_seq >= 2**32:
        raise ValueError(f"seqs {first_seq}..{last_seq}: expected 1 <= seq < 2**32, count >= 1")
    live = tx.value(
        "SELECT COUNT(*) AS n FROM memberships WHERE organization_id = ? AND deleted = FALSE",
        (org_id,),
    )
    if not live:
        raise ValueError(f"organisation {org_id} has no live membership to seed check-ins for")
    step_us = (last_at_us - first_at_us) // (count - 1) if count > 1 else 0
    import hashlib  # here: the service never seeds

    h = hashlib.sha256(device_id.encode()).hexdigest()
    id_prefix = f"{h[:8]}-{h[8:12]}-7{h[12:15]}-8{h[15:18]}-{h[18:22]}"  # + 8 hex digits: a UUID
    if tx.dialect == POSTGRES:
        recursive = ""
        seqs = "generate_series(CAST(? AS BIGINT), CAST(? AS BIGINT)) AS s(seq)"
        row_id = "CAST(? AS TEXT) || lpad(to_hex(s.seq), 8, '0')"
        at = "TIMESTAMP '1970-01-01 00:00:00' + x.t * INTERVAL '1 microsecond'"
        stamp = f"to_char({at}, '{_PG_UTC_TEXT}')"
        # A hash join with the memberships.
        member, membership, source = "m.member_id", "m.id", "AS s JOIN m ON m.k = s.k"
    else:
        recursive = "RECURSIVE s(seq) AS (SELECT CAST(? AS INTEGER) UNION ALL"
        recursive += " SELECT seq + 1 FROM s WHERE seq < ?),"
        seqs = "s"
        row_id = "CAST(? AS TEXT) || printf('%08x', s.seq)"
        stamp = "strftime('%Y-%m-%dT%H:%M:%S', x.t / 1000000, 'unixepoch')"
        stamp += " || printf('.%06dZ', x.t % 1000000)"
        # Correlated lookups, on an automatic index SQLite builds once: as a join it scans the
        # memberships for every row.
        member = "(SELECT member_id FROM m WHERE m.k = s.k)"
        membership = "(SELECT id FROM m WHERE m.k = s.k)"
        source = "AS s"
    # Each seq with its membership's rank (k) and its time as stored text (at), formatted once
    # for the three time columns from microseconds (t).
    timed = (
        f"SELECT x.seq, x.k, {stamp} AS at FROM (SELECT seq,"  # noqa: S608
        " CAST(? AS BIGINT) + (seq - CAST(? AS BIGINT)) * CAST(? AS BIGINT) AS t,"
        f" (seq * {_SEED_STRIDE} + seq / 20) % (SELECT COUNT(*) FROM m) AS k FROM {seqs}) AS x"
    )
    sql = (
        # INSERT first: sqlite3 reports no row count for a statement that starts with WITH.
        f"INSERT INTO checkins ({', '.join(CHECKIN_COLUMNS)})"  # noqa: S608
        f" WITH {recursive} m AS (SELECT id, member_id, ROW_NUMBER() OVER (ORDER BY id) - 1 AS k"
        " FROM memberships WHERE organization_id = ? AND deleted = FALSE)"
        f" SELECT {row_id}, ?, ?, ?, s.seq, ?,"
        " CASE WHEN s.seq % 20 < 19 THEN 'granted' ELSE 'denied' END,"
        " CASE WHEN s.seq % 20 < 19 THEN 'subscription' WHEN s.seq % 40 = 19 THEN 'passback'"
        " ELSE 'member_expired' END,"
        f" {member}, {membership}, 0, CAST(? AS BIGINT), s.at, ?,"
        " s.seq * 1000000000, 'ntp_synced', s.at, 'anchored', s.at, NULL"
        f" FROM ({timed}) {source}"
    )
    # The placeholders in the order they appear in the text.
    params: list[Any] = [first_seq, last_seq] if recursive else []
    params += [org_id]  # m
    params += [id_prefix, org_id, gym_id, device_id, door_id, replica_version]
    params += [f"history-{device_id}"]  # boot_id
    params += [first_at_us, first_seq, step_us]  # timed
    if not recursive:
        params += [first_seq, last_seq]  # generate_series
    inserted = tx.run(sql, params)
    if inserted != count:
        raise DatabaseError(f"seeding seqs {first_seq}..{last_seq} stored {inserted} rows")
    return count
