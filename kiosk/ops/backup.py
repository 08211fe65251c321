"""Backups of the local database: make one, check one, put one back (``kiosk db``).

The journal of check-ins is the one thing on the device that cannot be rebuilt (the replica can
always be pulled again), so a backup is only counted once it is on disk and verified, and a restore
only swaps a file in after it has been verified and the live one is provably unused.

**What a backup holds**: the journal database (``kiosk.db``: check-ins, the journal's seq counter,
the sync agent's status and clock anchors), which is everything the device alone knows. Not the
replica: since schema 4 it lives in a file of its own beside the database
(``kiosk.db-replica-<id>``, see ``kiosk.data.database``), it is the cloud's data, as large as the
gym's member list (hundreds of MB for a chain's million members), and always pulled again. A
restore leaves the replica beside the database alone: the door goes on admitting with it, offline
too; where there is none (a new SD card), the sync agent's next round takes a fresh snapshot
(logged: "taking a fresh snapshot: no replica yet"), and until then the door refuses unknown codes.
A backup made before schema 4 still holds the replica it had; restored where no replica file is,
it is carried over into one when the database is opened.

- ``make_backup``: an online copy (SQLite's backup API, safe while the scanner and the sync agent
  write) into ``<dir>/kiosk-YYYYmmddTHHMMSSZ.db``: written under a temporary name, fsynced,
  integrity-checked, made mode 0640, renamed into place; only then are the backups beyond the
  newest ``keep`` deleted. It never takes the last ``reserve_bytes`` of free space, which belong to
  the door's journal.
- ``restore_backup``: verifies the file (integrity, a FitFlow database, schema not newer than this
  code), refuses while a kiosk service runs or anything has the database open, keeps the current
  database as ``kiosk.db.before-restore-<time>``, swaps the copy in atomically and opens it with
  ``Store.open`` (which migrates an older schema; the replica file beside the database is left as
  it was and stays in use). Check-ins pending in the backup stay pending:
  the sync agent uploads them and the cloud deduplicates by id. The journal's seq counter then
  continues after the replaced database's last seq, so no seq the cloud may hold is handed out
  again. It refuses (unless forced) when the current database holds pending check-ins the backup
  lacks: they were never uploaded, and after the restore they would only be in the kept file.
- ``check_database``: integrity, schema version and counts of the live file, read-only.

Every failure is a ``DbError`` carrying the message to print and the exit code (see ``kiosk.cli``:
1 runtime, 2 usage, 3 the database cannot be used).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import subprocess
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from kiosk.core.model import SyncState
from kiosk.data.database import StoreError
from kiosk.data.dbfile import (
    DatabaseReport,
    backup_database,
    checkin_ids,
    exclusive_access,
    inspect_database,
)
from kiosk.data.migrations import LATEST_VERSION
from kiosk.data.store import Store

EXIT_RUNTIME, EXIT_USAGE, EXIT_DATABASE = 1, 2, 3
DEFAULT_KEEP = 7
BACKUP_MODE = 0o640
# Free space a backup never takes: the scanner must still be able to record check-ins (MiB-sized
# databases; a check-in is a few hundred bytes).
DEFAULT_RESERVE_BYTES = 64 * 1024 * 1024
# The units whose processes open the database (systemd/ in this repository).
SERVICES = ("fitflow-scanner.service", "fitflow-sync.service", "fitflow-web.service")

_BACKUP_NAME = re.compile(r"kiosk-(\d{8}T\d{6}Z)(?:-(\d+))?\.db")
_STAMP = "%Y%m%dT%H%M%SZ"
_CANNOT_USE = ("SQLITE_NOTADB", "SQLITE_CORRUPT")


class DbError(Exception):
    """A ``kiosk db`` failure: ``str(err)`` is the message for the user, ``exit_code`` the exit
    status (``EXIT_RUNTIME``, ``EXIT_USAGE`` or ``EXIT_DATABASE``)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class BackupResult:
    path: Path
    size_bytes: int
    report: DatabaseReport
    deleted: tuple[Path, ...]


@dataclass(frozen=True)
class RestoreResult:
    database: Path
    kept_as: Path | None  # the previous database, None when there was none
    before: DatabaseReport  # the backup as verified, before any migration
    schema_version: int  # after Store.open (migrated when the backup was older)
    checkins: dict[str, int]
    last_seq: int  # after raising it to the replaced database's last seq
    warnings: tuple[str, ...]
    # The replica the restored database reads (the file beside it, kept as it was; or carried
    # over from an older backup): (version, members); None when there is none yet.
    replica: tuple[int, int] | None = None


# -- pure helpers ----------------------------------------------------------------------------------


def default_backup_dir(database: Path) -> Path:
    """Backups live beside the database: ``/var/lib/fitflow-kiosk/backups`` for the default
    ``store.path``."""
    return Path(database).parent / "backups"


def stamp(now: datetime) -> str:
    """``now`` (timezone-aware) as the UTC stamp in backup names: ``20240506T090000Z``."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now.astimezone(UTC).strftime(_STAMP)


def backup_name(now: datetime, taken: Iterable[str] = ()) -> str:
    """The file name for a backup made at ``now``: ``kiosk-<stamp>.db``, or ``kiosk-<stamp>-2.db``
    (``-3``...) when a name in ``taken`` already has that stamp."""
    base = f"kiosk-{stamp(now)}"
    used = set(taken)
    name, n = f"{base}.db", 1
    while name in used:
        n += 1
        name = f"{base}-{n}.db"
    return name


def _order(name: str) -> tuple[str, int]:
    match = _BACKUP_NAME.fullmatch(name)
    assert match is not None
    return match.group(1), int(match.group(2) or 1)


def rotation(names: Iterable[str], keep: int, *, newest: str) -> list[str]:
    """Which backup files to delete so that ``keep`` remain: ``newest`` (the one just made, kept
    even if a wrong clock gave it an older stamp) and the ``keep - 1`` others with the latest
    stamps. Names that are not ``kiosk-<stamp>[-n].db`` are never touched."""
    if keep < 1:
        raise ValueError("keep must be at least 1")
    others = sorted((n for n in names if _BACKUP_NAME.fullmatch(n) and n != newest), key=_order)
    return others[: max(0, len(others) - (keep - 1))]


def usability_problems(report: DatabaseReport) -> list[str]:
    """Why the database described by ``report`` must not be put in service (empty: it may)."""
    problems: list[str] = []
    if not report.sound:
        findings = "; ".join(report.integrity[:3])
        more = f" (and {len(report.integrity) - 3} more)" if len(report.integrity) > 3 else ""
        problems.append(f"it is damaged: the integrity check found {findings}{more}")
    if report.schema_version > LATEST_VERSION:
        problems.append(
            f"its schema version {report.schema_version} is newer than this kiosk knows "
            f"({LATEST_VERSION}): it was made by a newer release; install that release first"
        )
    elif report.missing_tables or report.schema_version < 1:
        problems.append(
            "it is not a FitFlow kiosk database (missing tables: "
            f"{', '.join(report.missing_tables) or 'none, but no schema version'})"
        )
    return problems


def describe_report(report: DatabaseReport) -> list[str]:
    """Human-readable lines for ``kiosk db check`` and the restore prompt."""
    lines = [
        f"integrity: {'ok' if report.sound else '; '.join(report.integrity[:5])}",
        f"schema version: {report.schema_version} (this kiosk: {LATEST_VERSION})",
    ]
    if report.checkins is not None:
        c = report.checkins
        lines.append(
            f"check-ins: {sum(c.values())} (pending {c.get('pending', 0)}, synced "
            f"{c.get('synced', 0)}, rejected {c.get('rejected', 0)}), last seq {report.last_seq}"
        )
        if report.members is None:
            lines.append(
                "replica: none beside this file (a backup holds the journal only; the sync "
                "agent pulls the replica again)"
            )
        elif report.replica_file is None:
            lines.append(
                f"replica: {report.members} members, version {report.replica_version} (inside "
                f"this file: schema {report.schema_version} kept it there)"
            )
        else:
            lines.append(
                f"replica: {report.members} members, version {report.replica_version} (in "
                f"{report.replica_file.name} beside it; not part of a backup)"
            )
    return lines


# -- files -----------------------------------------------------------------------------------------


def _fsync_path(path: Path, *, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_with_sidecars(path: Path) -> None:
    for suffix in ("", "-journal", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{path}{suffix}")


def _new_private_file(path: Path, mode: int) -> None:
    """Create ``path`` empty with exactly ``mode`` (not widened by the umask, never readable by
    others in between); fails if it exists."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def _verify(path: Path, what: str) -> DatabaseReport:
    try:
        report = inspect_database(path)
    except StoreError as exc:
        if exc.code in _CANNOT_USE:
            raise DbError(
                f"{what} is not a SQLite database or is too damaged to read", EXIT_DATABASE
            ) from exc
        raise DbError(f"cannot read {what}: {exc}", EXIT_DATABASE) from exc
    if problems := usability_problems(report):
        raise DbError(f"{what} cannot be used: {'; '.join(problems)}", EXIT_DATABASE)
    return report


def _backup_error(exc: StoreError) -> DbError:
    if exc.code == "SQLITE_FULL":
        return DbError(f"no backup made, the partial file was removed: {exc}", EXIT_DATABASE)
    return DbError(f"no backup made: {exc}", EXIT_DATABASE)


# -- backup ----------------------------------------------------------------------------------------


def make_backup(
    database: Path,
    directory: Path,
    *,
    now: datetime,
    keep: int = DEFAULT_KEEP,
    reserve_bytes: int = DEFAULT_RESERVE_BYTES,
    free_bytes: Callable[[Path], int] = lambda p: shutil.disk_usage(p).free,
) -> BackupResult:
    """Back ``database`` up into ``directory`` (created mode 0750 if missing) and keep the newest
    ``keep`` backups there; see the module docstring for the steps. ``free_bytes`` reports the free
    space of a folder's file system (bytes); the backup may use all of it but ``reserve_bytes``.

    Raises DbError: ``EXIT_USAGE`` for ``keep`` < 1 or a folder that cannot be created;
    ``EXIT_DATABASE`` when the database is missing, damaged or locked, when the disk is full
    (the partial file is removed, older backups are untouched) or the copy fails its check.
    """
    if keep < 1:
        raise DbError(f"--keep must be at least 1, not {keep}", EXIT_USAGE)
    database, directory = Path(database), Path(directory)
    if not database.is_file():
        raise DbError(
            f"no database at {database}: nothing to back up (check store.path in the config)",
            EXIT_DATABASE,
        )
    try:
        directory.mkdir(mode=0o750, parents=True, exist_ok=True)
        existing = [p.name for p in directory.iterdir()]
    except OSError as exc:
        raise DbError(
            f"cannot use the backup folder {directory}: {exc.strerror}. It must be writable by "
            f"the kiosk's user (pass another one with --dir).",
            EXIT_USAGE,
        ) from exc
    name = backup_name(now, existing)
    final = directory / name
    temp = directory / f".{name}.tmp"
    _remove_with_sidecars(temp)  # a leftover of an interrupted run with the same name
    room = free_bytes(directory) - reserve_bytes
    if room <= 0:
        raise DbError(
            f"disk full: no backup made; {directory} has less than the "
            f"{reserve_bytes // (1024 * 1024)} MiB kept free for the door's journal. Free space "
            f"(old logs, old backups) and try again.",
            EXIT_DATABASE,
        )
    try:
        _new_private_file(temp, BACKUP_MODE)
        backup_database(database, temp, max_bytes=room)
        _fsync_path(temp)
        report = _verify(temp, f"the new backup {temp}")
        os.replace(temp, final)
        _fsync_path(directory, directory=True)
    except StoreError as exc:
        _remove_with_sidecars(temp)
        raise _backup_error(exc) from exc
    except DbError:
        _remove_with_sidecars(temp)
        raise
    except OSError as exc:
        _remove_with_sidecars(temp)
        raise DbError(
            f"no backup made, the partial file was removed: cannot write {temp}: {exc.strerror}",
            EXIT_DATABASE,
        ) from exc
    # Only now that the new backup is on disk and verified may older ones go.
    deleted = []
    for old in rotation([*existing, name], keep, newest=name):
        with contextlib.suppress(FileNotFoundError):
            (directory / old).unlink()
            deleted.append(directory / old)
    return BackupResult(final, final.stat().st_size, report, tuple(deleted))


# -- check -----------------------------------------------------------------------------------------


def check_database(database: Path) -> DatabaseReport:
    """Inspect the live database read-only. Raises DbError (``EXIT_DATABASE``) when it is missing
    or cannot be read at all; a damaged or foreign file is reported, not raised (see
    ``usability_problems``)."""
    database = Path(database)
    if not database.is_file():
        raise DbError(f"no database at {database} (check store.path in the config)", EXIT_DATABASE)
    try:
        return inspect_database(database)
    except StoreError as exc:
        raise DbError(str(exc), EXIT_DATABASE) from exc


# -- restore ---------------------------------------------------------------------------------------


def _capture(argv: Sequence[str]) -> subprocess.CompletedProcess:
    # A fixed command line from this module, no shell.
    return subprocess.run(list(argv), capture_output=True, text=True, check=False)  # noqa: S603


def active_services(
    run: Callable[[Sequence[str]], subprocess.CompletedProcess] | None = None,
    units: Sequence[str] = SERVICES,
) -> list[str] | None:
    """The kiosk units that systemd reports as running (``active``, ``activating``, ``reloading``,
    ``deactivating``); None when ``systemctl`` is not available (not a systemd machine). ``run``
    executes a command and returns its completed process (tests inject it)."""
    if run is None:
        if shutil.which("systemctl") is None:
            return None
        run = _capture
    try:
        done = run(["systemctl", "is-active", *units])
    except FileNotFoundError:
        return None
    states = str(done.stdout).split()
    running = {"active", "activating", "reloading", "deactivating"}
    return [unit for unit, state in zip(units, states, strict=False) if state in running]


def restore_backup(
    database: Path,
    source: Path,
    *,
    now: datetime,
    confirm: Callable[[str], bool],
    services: Callable[[], list[str] | None] = active_services,
    force: bool = False,
) -> RestoreResult:
    """Replace ``database`` with the backup ``source``; see the module docstring for the steps.

    ``confirm`` is asked (with a summary of both files) after every check passed and before
    anything changes; False aborts. ``services`` returns the running kiosk units (None: no
    systemd). ``force`` restores even when the current database holds pending check-ins the
    backup lacks (they stay in the kept file only; a warning says how many). Raises DbError:
    ``EXIT_DATABASE`` when ``source`` is missing, not a SQLite file, damaged, foreign or of a
    newer schema; ``EXIT_RUNTIME`` when a kiosk service runs, another process has the database
    open, pending check-ins would be left behind (without ``force``), or the answer was no. In
    every refusal the live database is untouched; a temporary copy is removed.
    """
    database, source = Path(database), Path(source)
    if not source.is_file():
        raise DbError(f"{source} does not exist or is not a file", EXIT_DATABASE)
    if database.exists() and os.path.samefile(source, database):
        raise DbError(f"{source} is the live database itself, not a backup", EXIT_USAGE)
    try:
        database.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DbError(f"cannot create {database.parent}: {exc.strerror}", EXIT_RUNTIME) from exc
    time_text = stamp(now)
    temp = database.parent / f".{database.name}.restore-{time_text}.tmp"
    _remove_with_sidecars(temp)
    try:
        # Copy first, then verify the copy: what is checked is exactly what goes in. SQLite's
        # backup (not a byte copy) also picks up a -wal left beside the source.
        _new_private_file(temp, BACKUP_MODE)
        try:
            backup_database(source, temp)
        except StoreError as exc:
            if exc.code in _CANNOT_USE:
                raise DbError(
                    f"{source} is not a SQLite database or is too damaged to read; nothing was "
                    f"changed",
                    EXIT_DATABASE,
                ) from exc
            raise DbError(
                f"cannot read {source}: {exc}; nothing was changed", EXIT_DATABASE
            ) from exc
        _fsync_path(temp)
        try:
            report = _verify(temp, str(source))
        except DbError as exc:
            raise DbError(f"{exc}; nothing was changed", exc.exit_code) from exc
        running = services()
        if running:
            raise DbError(
                f"the kiosk services are running ({', '.join(running)}); stop them first: "
                f"sudo systemctl stop {' '.join(SERVICES)} (then start them again after the "
                f"restore). Nothing was changed.",
                EXIT_RUNTIME,
            )
        kept = database.parent / f"{database.name}.before-restore-{time_text}"
        warnings = _left_behind(database, temp, kept, force=force)
        question = "\n".join(
            [
                f"Restore {source} into {database}?",
                *(f"  backup {line}" for line in describe_report(report)),
                f"  the current database will be kept as {kept}"
                if database.exists()
                else "  there is no current database",
                *(f"  warning: {text}" for text in warnings),
            ]
        )
        if not confirm(question):
            raise DbError("restore cancelled; nothing was changed", EXIT_RUNTIME)
        kept_as, swap_warnings = _swap(database, temp, kept)
        warnings += swap_warnings
    finally:
        _remove_with_sidecars(temp)
    previous = _peek(kept_as) if kept_as is not None else None
    try:
        with Store.open(database) as store:
            version = store.schema_version()
            counts = store.counts_by_state()
            last_seq = store.last_seq()
            info, members = store.replica_summary()
            replica = None if store.replica_file is None else (info.version, members)
            if previous is not None and previous.last_seq is not None:
                # New check-ins must not reuse a seq the replaced database handed out: the cloud
                # may hold it already (it would be a different check-in under the same number).
                last_seq = store.raise_seq_floor(previous.last_seq)
    except StoreError as exc:
        raise DbError(
            f"the backup was put in place but cannot be opened: {exc}", EXIT_DATABASE
        ) from exc
    if kept_as is not None and (previous is None or previous.last_seq is None):
        warnings.append(
            f"the last seq of the previous database ({kept_as}) could not be read: new check-ins "
            f"continue after the backup's {last_seq} and may reuse numbers it handed out"
        )
    elif previous is not None and report.last_seq is not None and last_seq > report.last_seq:
        warnings.append(
            f"the previous database had handed out seq numbers up to {last_seq}, the backup only "
            f"up to {report.last_seq}: new check-ins continue after {last_seq}, so none reuses a "
            f"number the cloud may hold"
        )
    return RestoreResult(
        database=database,
        kept_as=kept_as,
        before=report,
        schema_version=version,
        checkins=counts,
        last_seq=last_seq,
        warnings=tuple(warnings),
        replica=replica,
    )


def _left_behind(database: Path, backup: Path, kept: Path, *, force: bool) -> list[str]:
    """Refuse (DbError, ``EXIT_RUNTIME``) unless ``force`` when ``database`` holds pending
    check-ins that ``backup`` lacks: nobody would ever upload them. Returns warnings: how many are
    left behind when forced, or that the current database could not be compared."""
    if not database.exists():
        return []
    try:
        pending = checkin_ids(database, sync_state=SyncState.PENDING)
        missing = len(pending - checkin_ids(backup)) if pending else 0
    except StoreError:
        return [
            f"the check-ins of {database} could not be read to compare them with the backup: any "
            f"it holds that the backup lacks will only be in {kept}"
        ]
    if not missing:
        return []
    if not force:
        raise DbError(
            f"{database} holds {missing} pending check-in(s) that the backup lacks (recorded after "
            f"it was made and not uploaded yet): after the restore they would only be in the kept "
            f"copy and never be uploaded. Let the sync agent upload them first (start "
            f"fitflow-sync until `kiosk db check` shows pending 0), or pass --force to restore "
            f"anyway. Nothing was changed.",
            EXIT_RUNTIME,
        )
    return [
        f"{missing} pending check-in(s) of the current database are not in the backup: they "
        f"will only be in {kept} and will not be uploaded"
    ]


def _swap(database: Path, temp: Path, kept: Path) -> tuple[Path | None, list[str]]:
    """Put ``temp`` in place of ``database``, keeping the old file as ``kept``. Returns where the
    old file was kept (None: there was none) and warnings."""
    if not database.exists():
        # A new file takes the data folder's owner (the kiosk's user), even when restore runs as
        # root: the services could not open a root-owned database.
        if os.geteuid() == 0:
            folder = database.parent.stat()
            os.chown(temp, folder.st_uid, folder.st_gid)
        os.replace(temp, database)
        _fsync_path(database.parent, directory=True)
        return None, []
    warnings: list[str] = []
    old = database.stat()
    # The replacement must belong to whoever owns the live file (the kiosk's user), even when
    # restore runs as root; a non-root caller can only be that user already.
    if os.geteuid() == 0:
        os.chown(temp, old.st_uid, old.st_gid)
    os.chmod(temp, stat.S_IMODE(old.st_mode))
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(exclusive_access(database))
        except StoreError as exc:
            if exc.code not in _CANNOT_USE:
                raise DbError(str(exc), EXIT_RUNTIME) from exc
            # A damaged file cannot be locked; the service check is then all there is.
            warnings.append(
                f"{database} is damaged, so it could not be locked; it was kept as found (with "
                f"its -wal and -journal files, if any) as {kept}"
            )
        try:
            # A hard link: the old file is kept under its new name before the live name
            # changes, so a crash at any point leaves a complete database at the live path.
            os.link(database, kept)
        except OSError as exc:
            raise DbError(
                f"cannot keep the current database as {kept}: {exc.strerror}; nothing was changed",
                EXIT_RUNTIME,
            ) from exc
        # Nothing of the old file may stay beside the new one: SQLite would replay an old -wal or
        # -journal onto it. The lock folded a healthy file's log in; a damaged file's logs go
        # with it, for recovery.
        for suffix in ("-wal", "-journal"):
            with contextlib.suppress(FileNotFoundError):
                os.replace(f"{database}{suffix}", f"{kept}{suffix}")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{database}-shm")  # an index of the log, rebuilt on open
        os.replace(temp, database)
        _fsync_path(database.parent, directory=True)
    return kept, warnings


def _peek(path: Path) -> DatabaseReport | None:
    try:
        return inspect_database(path)
    except StoreError:
        return None
