"""Whole database files, without a ``Store`` (``kiosk db``, backups, the owner page's check).

Each function opens a connection of its own to the file at a path and closes it before returning,
so none of them holds a ``Store``'s lock or sees its connection:

- ``inspect_database``: integrity, schema version, FitFlow tables (``FITFLOW_TABLES``) and the
  journal's counts, read-only (``DatabaseReport``); and the replica's counts: from the replica
  file beside it (schema 4; ``kiosk.data.database``), or from its own tables (schema 3 and older);
- ``quick_check_file``: SQLite's quick check, read-only (the owner page's diagnostics);
- ``checkin_ids``: the check-in ids in a file of any schema version (a restore's safety check);
- ``backup_database``: SQLite's online backup into a new file, safe while the door writes. Of
  schema 4 that is the journal database alone (check-ins, the sync agent's records): the replica
  is the cloud's data, in its own file, pulled again whenever it is missing;
- ``exclusive_access``: proof that no other process has the file open, held while it is replaced.

Failure modes: every failure is a ``StoreError`` naming the file (``kiosk.data.database``): a
missing file, one that is not a database (``SQLITE_NOTADB``) or too damaged to read
(``SQLITE_CORRUPT``), locked too long, or, for a backup, a target that cannot be written
(``SQLITE_FULL`` when its size cap or the disk is reached); ``exclusive_access`` raises one with
code ``SQLITE_BUSY`` when another process has the file open. Read-only functions never create,
migrate or write the file, and nothing here deletes one.
"""

from __future__ import annotations

import contextlib
import sqlite3
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from kiosk.core.model import SyncState
from kiosk.data.database import (
    DEFAULT_BUSY_TIMEOUT_MS,
    ReplicaFiles,
    StoreError,
    describe_error,
    end_quietly,
    replica_format,
)
from kiosk.data.migrations import (
    LATEST_VERSION,
    LEGACY_REPLICA_VERSION,
    REPLICA_CARRY_OVER_FORMATS,
    REPLICA_FORMAT,
    schema_version,
)

# Tables every FitFlow database has had since schema version 1: a file without them is foreign.
# (The replica's tables were in it too until schema 4 moved them to a file of their own.)
FITFLOW_TABLES = ("checkins", "journal_counter")
_LEGACY_REPLICA_TABLES = (
    "closures",
    "members",
    "memberships",
    "opening_hours",
    "plan_windows",
    "plans",
    "replica_meta",
)
# Errors of a backup step that are the target file's fault (its disk or its folder), by primary code.
_TARGET_ERRORS = frozenset(
    (
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_PERM,
    )
)


@dataclass(frozen=True)
class DatabaseReport:
    """What ``inspect_database`` found in a file, without changing it.

    ``integrity`` is SQLite's full integrity check (``("ok",)`` when sound); ``schema_version`` the
    file's ``PRAGMA user_version`` (0: empty or not a FitFlow file); ``missing_tables`` the FitFlow
    tables it lacks (non-empty: a foreign SQLite file). The counts are None unless the file is a
    FitFlow database this code can read (no missing table, version <= ``LATEST_VERSION``):
    ``checkins`` per sync state (every state present), ``last_seq`` the newest seq handed out,
    ``members`` the replica's members and ``replica_version`` its version (0: never loaded).
    ``replica_file`` is the replica file beside the database the figures come from (schema 4);
    None with figures: the replica is in the database itself (schema 3 and older); None with
    ``members`` None: there is no readable replica beside it (a backup: the sync agent pulls it
    again after a restore).
    """

    path: Path
    integrity: tuple[str, ...]
    schema_version: int
    missing_tables: tuple[str, ...]
    checkins: dict[str, int] | None = None
    last_seq: int | None = None
    members: int | None = None
    replica_version: int | None = None
    replica_file: Path | None = None

    @property
    def sound(self) -> bool:
        return self.integrity == ("ok",)


def _readonly_connection(path: Path, busy_timeout_ms: int) -> sqlite3.Connection:
    uri = f"file:{urllib.parse.quote(str(Path(path).resolve()))}?mode=ro"
    return sqlite3.connect(uri, uri=True, timeout=busy_timeout_ms / 1000, isolation_level=None)


def quick_check_file(path: Path, *, busy_timeout_ms: int = 1000) -> list[str]:
    """SQLite's quick check (``PRAGMA quick_check``) of the database at ``path`` on a connection of
    its own, opened read-only and closed at the end: ``["ok"]`` when the file's structure is
    sound, else its findings. Reads every page (seconds on a large database) without holding any
    ``Store``'s lock, so the owner page's other reads go on meanwhile. Raises StoreError when the
    file is missing or cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"{path} does not exist or is not a file", path=path)
    try:
        conn = _readonly_connection(path, busy_timeout_ms)
        try:
            return [str(row[0]) for row in conn.execute("PRAGMA quick_check")]
        finally:
            conn.close()
    except sqlite3.Error as err:
        raise describe_error(
            err,
            path=path,
            readonly=True,
            busy_timeout_ms=busy_timeout_ms,
            action="check the database's structure",
            consequence="nothing was changed",
        ) from err


def inspect_database(
    path: Path, *, busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS
) -> DatabaseReport:
    """Check the database file at ``path`` read-only (never creates, migrates or writes it): full
    integrity check, schema version, FitFlow tables and, when readable, the journal's counts and
    the replica's (from the replica file its pointer names, or, up to schema 3, from its own
    tables). Reads the whole database file (seconds on a large one); of the replica file only
    its counts.

    Raises StoreError when ``path`` is missing, is not a SQLite database (code
    ``SQLITE_NOTADB``), is too damaged to be read at all (``SQLITE_CORRUPT``), or cannot be opened.
    Damage SQLite can still describe is returned in ``integrity`` instead.
    """
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"{path} does not exist or is not a file", path=path)
    try:
        conn = _readonly_connection(path, busy_timeout_ms)
        try:
            conn.execute("BEGIN")  # one snapshot for every figure below
            version = schema_version(conn)
            integrity = tuple(str(row[0]) for row in conn.execute("PRAGMA integrity_check"))
            present = {
                str(name)
                for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            }
            required = FITFLOW_TABLES
            if 1 <= version <= LEGACY_REPLICA_VERSION:
                required = (*FITFLOW_TABLES, *_LEGACY_REPLICA_TABLES)
            missing = tuple(sorted(t for t in required if t not in present))
            report = DatabaseReport(path, integrity, version, missing)
            if missing or version < 1 or version > LATEST_VERSION:
                return report
            counts = {state.value: 0 for state in SyncState}
            for state, count in conn.execute(
                "SELECT sync_state, COUNT(*) FROM checkins GROUP BY sync_state"
            ):
                counts[str(state)] = int(count)
            row = conn.execute("SELECT last_seq FROM journal_counter WHERE id = 1").fetchone()
            report = replace(report, checkins=counts, last_seq=0 if row is None else int(row[0]))
            if version <= LEGACY_REPLICA_VERSION:
                members, replica_version = _replica_figures(conn, "main")
                return replace(report, members=members, replica_version=replica_version)
        finally:
            conn.close()
    except sqlite3.Error as err:
        raise describe_error(
            err,
            path=path,
            readonly=True,
            busy_timeout_ms=busy_timeout_ms,
            action="inspect the database",
            consequence="nothing was changed",
        ) from err
    return _with_replica_beside(report, busy_timeout_ms)


def _replica_figures(conn: sqlite3.Connection, schema: str) -> tuple[int, int]:
    """Members and version of the replica in ``schema`` of ``conn`` (version 0: never loaded)."""
    (members,) = conn.execute(f"SELECT COUNT(*) FROM {schema}.members").fetchone()  # noqa: S608
    meta = conn.execute(
        f"SELECT value FROM {schema}.replica_meta WHERE key = 'version'"  # noqa: S608
    ).fetchone()
    return int(members), 0 if meta is None else int(meta[0])


def _with_replica_beside(report: DatabaseReport, busy_timeout_ms: int) -> DatabaseReport:
    """``report`` with the figures of the replica file its database's pointer names, when there
    is one this code can read (read-only; nothing is created). Without one, the figures stay
    None: nothing here is an error, the sync agent pulls the replica again."""
    try:
        replica = ReplicaFiles(report.path).current()
    except (OSError, ValueError):
        return report
    if replica is None or not replica.is_file():
        return report
    try:
        conn = _readonly_connection(replica, busy_timeout_ms)
        try:
            # An older format still has these figures (it is carried over when a door opens).
            if replica_format(conn) not in (REPLICA_FORMAT, *REPLICA_CARRY_OVER_FORMATS):
                return report
            conn.execute("BEGIN")
            members, replica_version = _replica_figures(conn, "main")
        finally:
            conn.close()
    except sqlite3.Error:
        return report
    return replace(report, members=members, replica_version=replica_version, replica_file=replica)


def backup_database(
    source: Path,
    target: Path,
    *,
    max_bytes: int | None = None,
    busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
) -> None:
    """Copy the database at ``source`` into the file ``target`` with SQLite's online backup, safe
    while the scanner and the sync agent write (WAL: it copies one consistent snapshot and blocks
    nobody; writers go on appending to the log meanwhile).

    ``source`` is opened read-only, never migrated, so a backup taken before an upgrade works on
    an older schema. ``target`` must be a new, empty file (the caller creates it with the mode it
    wants); it ends up as a self-contained rollback-journal database (no -wal beside it).
    ``max_bytes`` caps ``target``'s size: SQLite then fails with ``SQLITE_FULL`` rather than take
    space the door's journal needs. Not durable by itself: the caller fsyncs and verifies.

    Raises StoreError: on ``source`` when it is missing, damaged or locked too long; on ``target``
    (code ``SQLITE_FULL``: the cap or the disk was reached) when it cannot be written. A partly
    written ``target`` is left for the caller to remove.
    """
    source, target = Path(source), Path(target)
    if not source.is_file():
        raise StoreError(f"{source} does not exist or is not a file", path=source)

    def describe(err: sqlite3.Error, path: Path) -> StoreError:
        return describe_error(
            err,
            path=path,
            readonly=path == source,
            busy_timeout_ms=busy_timeout_ms,
            action=f"back up {source} into {target}",
            consequence="no backup was made",
        )

    try:
        src = _readonly_connection(source, busy_timeout_ms)
    except sqlite3.Error as err:
        raise describe(err, source) from err
    try:
        try:
            # The first read: a file that is not a database fails here, blamed on the source.
            (page_size,) = src.execute("PRAGMA page_size").fetchone()
            schema_version(src)
        except sqlite3.Error as err:
            raise describe(err, source) from err
        try:
            dst = sqlite3.connect(target, timeout=busy_timeout_ms / 1000, isolation_level=None)
        except sqlite3.Error as err:
            raise describe(err, target) from err
        try:
            if max_bytes is not None:
                # PRAGMA takes no placeholders; the value is an int computed here.
                dst.execute(f"PRAGMA max_page_count = {max(1, int(max_bytes) // int(page_size))}")
            # One step (pages=-1): a single read transaction, so the copy is one consistent
            # snapshot even while other processes commit.
            src.backup(dst)
            # A WAL source yields a WAL-mode copy; fold it into one file that stands alone.
            dst.execute("PRAGMA journal_mode = DELETE")
        except sqlite3.Error as err:
            code = getattr(err, "sqlite_errorcode", None)
            on_target = isinstance(code, int) and code & 0xFF in _TARGET_ERRORS
            raise describe(err, target if on_target else source) from err
        finally:
            dst.close()
    finally:
        src.close()


@contextlib.contextmanager
def exclusive_access(path: Path) -> Iterator[None]:
    """Hold the database at ``path`` so that it can be replaced (``kiosk db restore``).

    Proves that no other connection (scanner, sync agent, owner page, a backup) has the file open:
    switching it out of WAL needs every other connection closed, because each one keeps a shared
    lock for as long as it is open. The switch also folds the log into the main file and removes
    the -wal and -shm files, so the file is complete on its own and no stale log is left beside it
    to be replayed onto a replacement. Then holds the write lock until the block ends, so nothing
    can write the file meanwhile. The next ``Store.open`` switches back to WAL.

    Raises StoreError with code ``SQLITE_BUSY`` when another connection has the file open, and the
    SQLite error (``SQLITE_NOTADB``, ``SQLITE_CORRUPT``...) when the file is damaged.
    """
    path = Path(path)
    try:
        conn = sqlite3.connect(path, timeout=0, isolation_level=None)
    except sqlite3.Error as err:
        raise describe_error(
            err,
            path=path,
            readonly=False,
            busy_timeout_ms=0,
            action="open the database to replace it",
            consequence="nothing was changed",
        ) from err
    try:
        try:
            conn.execute("PRAGMA journal_mode = DELETE")
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as err:
            code = getattr(err, "sqlite_errorcode", None)
            if isinstance(code, int) and code & 0xFF in (
                sqlite3.SQLITE_BUSY,
                sqlite3.SQLITE_LOCKED,
            ):
                raise StoreError(
                    f"{path} is open in another process (the scanner, the sync agent, the owner "
                    f"page or a backup); stop the kiosk services first (sudo systemctl stop "
                    f"fitflow-scanner fitflow-sync fitflow-web) and retry. Nothing was changed.",
                    path=path,
                    code="SQLITE_BUSY",
                ) from err
            raise describe_error(
                err,
                path=path,
                readonly=False,
                busy_timeout_ms=0,
                action="lock the database to replace it",
                consequence="nothing was changed",
            ) from err
        yield
    finally:
        end_quietly(conn, "ROLLBACK")
        conn.close()


def checkin_ids(
    path: Path,
    *,
    sync_state: SyncState | None = None,
    busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
) -> set[str]:
    """The ids of the check-ins in the database file at ``path`` (only those in ``sync_state``
    when given), read-only (never creates, migrates or writes it). Works on every schema version,
    older ones included: the ``checkins`` table has had ``id`` and ``sync_state`` since version 1.

    Raises StoreError when ``path`` is missing, not a database, damaged, or has no ``checkins``
    table (a foreign file).
    """
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"{path} does not exist or is not a file", path=path)
    try:
        conn = _readonly_connection(path, busy_timeout_ms)
        try:
            if sync_state is None:
                rows = conn.execute("SELECT id FROM checkins")
            else:
                rows = conn.execute(
                    "SELECT id FROM checkins WHERE sync_state = ?", (sync_state.value,)
                )
            return {str(checkin_id) for (checkin_id,) in rows}
        finally:
            conn.close()
    except sqlite3.Error as err:
        raise describe_error(
            err,
            path=path,
            readonly=True,
            busy_timeout_ms=busy_timeout_ms,
            action="read the check-in ids",
            consequence="nothing was changed",
        ) from err
