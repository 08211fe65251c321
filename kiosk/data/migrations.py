"""The schemas of the door's two kinds of file: the journal database's history, as numbered
migrations (it changes only this way), and the replica file's layout.

**The journal database** (``kiosk.db``). ``PRAGMA user_version`` holds the number of the last
migration applied. Each migration runs in its own ``BEGIN IMMEDIATE`` transaction together with the
version bump, so a crash or a full disk in the middle leaves the database at the previous version,
never half-migrated. Migrations are history: once released, one is never edited; a change is a new
migration that preserves the journal (check-ins are the one thing that cannot be rebuilt; the
replica can always be re-pulled). Up to version 3 the replica lived in this file too; version 4
moves it out (``kiosk.data.database`` carries an existing replica over into a replica file first,
then this migration drops the old tables). Version 5 adds phone passes: the pass a check-in was
made with, and the pass codes this door accepted (``pass_uses``, its replay memory). Version 6
adds the door events (``door_events``: entry confirmed, annulled, tailgating, exit, in the
journal's one sequence) and the grants waiting for their passage (``passage_waits``).

**A replica file** (``kiosk.db-replica-<id>``, see ``kiosk.data.database``). Not migrated in
place: a replica file is built whole, used, and replaced by a newer one; its ``PRAGMA
user_version`` is ``REPLICA_FORMAT``, and a file of another format is not used as it is. A file
of an older format this code can read (``REPLICA_CARRY_OVER_FORMATS``) is copied into a new file
of this format when a read-write store opens, and switched in like a snapshot; any other is left
aside, and the sync agent takes a fresh snapshot. ``REPLICA_SCHEMA`` creates it;
``REPLICA_INDEXES`` come after the rows are in (an index built from sorted rows at the end is many
times cheaper than one kept up row by row), the unique code index last (``REPLICA_CODE_INDEX``): a
snapshot's pages are read at different moments, so a code may sit on two members until the changes
since the first page are applied.

The door database's other SQL lives in ``kiosk.data.database`` (opening, the replica files),
``journal``, ``replica``, ``sync_state``, ``door_path`` and ``dbfile`` (whole files);
``kiosk.data.store`` composes ``Store`` from them.
"""

from __future__ import annotations

import contextlib
import sqlite3
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    summary: str
    statements: tuple[str, ...]


# Shared text of the CHECKs below; dates and times are stored as fixed-width ISO text so that
# string order is time order (the journal's indexes and the prune rely on that).
_ISO_DATE = "'[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]'"
_ISO_UTC = (
    "'[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9]"
    ".[0-9][0-9][0-9][0-9][0-9][0-9]Z'"
)

_V1_INITIAL = Migration(
    version=1,
    summary="replica tables, check-in journal with a gap-free sequence counter",
    statements=(
        # -- replica: a copy of the cloud's data, replaced whole by the sync agent --------------
        """
        CREATE TABLE plans (
            id   TEXT PRIMARY KEY,
            name TEXT NOT NULL
        )
        """,
        """
        CREATE TABLE plan_windows (
            plan_id      TEXT NOT NULL REFERENCES plans (id) ON DELETE CASCADE,
            weekday      INTEGER NOT NULL CHECK (weekday BETWEEN 0 AND 6),
            start_minute INTEGER NOT NULL CHECK (start_minute BETWEEN 0 AND 1439),
            end_minute   INTEGER NOT NULL CHECK (end_minute BETWEEN 1 AND 1440),
            CHECK (start_minute < end_minute)
        )
        """,
        # (weekday, start_minute) in the key lets the door path read a plan's windows in order
        # straight from the index, without a sort.
        "CREATE INDEX plan_windows_by_plan ON plan_windows (plan_id, weekday, start_minute)",
        """
        CREATE TABLE members (
            id              TEXT PRIMARY KEY,
            organization_id TEXT NOT NULL,
            first_name      TEXT NOT NULL,
            last_name       TEXT NOT NULL,
            status          TEXT NOT NULL CHECK (status IN ('ACTIVE', 'EXPIRED', 'PAUSED')),
            is_staff        INTEGER NOT NULL DEFAULT 0 CHECK (is_staff IN (0, 1)),
            code_hash       TEXT
        )
        """,
        # The replica holds a keyed hash of the member's QR code, never the code (docs/architecture.md).
        "CREATE UNIQUE INDEX members_by_code_hash ON members (code_hash)",
        f"""
        CREATE TABLE memberships (
            id                TEXT PRIMARY KEY,
            member_id         TEXT NOT NULL REFERENCES members (id) ON DELETE CASCADE,
            plan_id           TEXT REFERENCES plans (id) ON DELETE SET NULL,
            type              TEXT NOT NULL CHECK (type IN ('SUBSCRIPTION', 'CLASS_PACK', 'PT')),
            start_date        TEXT NOT NULL CHECK (start_date GLOB {_ISO_DATE}),
            end_date          TEXT CHECK (end_date GLOB {_ISO_DATE}),
            remaining_classes INTEGER
        )
        """,
        "CREATE INDEX memberships_by_member ON memberships (member_id)",
        # Foreign-key checks on deleting a plan look memberships up by plan_id; without this
        # index every plan deleted would scan all memberships.
        "CREATE INDEX memberships_by_plan ON memberships (plan_id)",
        """
        CREATE TABLE opening_hours (
            weekday      INTEGER NOT NULL CHECK (weekday BETWEEN 0 AND 6),
            open_minute  INTEGER NOT NULL CHECK (open_minute BETWEEN 0 AND 1439),
            close_minute INTEGER NOT NULL CHECK (close_minute BETWEEN 1 AND 1440),
            CHECK (open_minute < close_minute)
        )
        """,
        f"""
        CREATE TABLE closures (
            start_date TEXT NOT NULL CHECK (start_date GLOB {_ISO_DATE}),
            end_date   TEXT NOT NULL CHECK (end_date GLOB {_ISO_DATE}),
            reason     TEXT NOT NULL DEFAULT '',
            CHECK (start_date <= end_date)
        )
        """,
        """
        CREATE TABLE replica_meta (
            key   TEXT PRIMARY KEY,
            value TEXT NOT NULL
        )
        """,
        # -- journal: facts recorded at the door; pending rows are never deleted ----------------
        # The sequence comes from this counter row, updated in the same transaction as the
        # insert: MAX(seq)+1 would reuse numbers once synced rows are pruned.
        """
        CREATE TABLE journal_counter (
            id       INTEGER PRIMARY KEY CHECK (id = 1),
            last_seq INTEGER NOT NULL CHECK (last_seq >= 0)
        )
        """,
        "INSERT INTO journal_counter (id, last_seq) VALUES (1, 0)",
        # reason has no CHECK on purpose: the vocabulary grows, and widening a CHECK in SQLite
        # means rebuilding the table that holds the journal.
        f"""
        CREATE TABLE checkins (
            id              TEXT PRIMARY KEY,
            seq             INTEGER NOT NULL UNIQUE,
            member_id       TEXT,
            membership_id   TEXT,
            door_id         TEXT NOT NULL,
            decision        TEXT NOT NULL CHECK (decision IN ('granted', 'denied')),
            reason          TEXT NOT NULL,
            classes_used    INTEGER NOT NULL DEFAULT 0 CHECK (classes_used >= 0),
            replica_version INTEGER NOT NULL,
            wall_time       TEXT NOT NULL CHECK (wall_time GLOB {_ISO_UTC}),
            sync_state      TEXT NOT NULL DEFAULT 'pending'
                            CHECK (sync_state IN ('pending', 'synced', 'rejected')),
            synced_at       TEXT CHECK (synced_at GLOB {_ISO_UTC})
        )
        """,
        # Anti-passback: the newest granted entry of a member at a door, straight from the index.
        "CREATE INDEX checkins_for_passback ON checkins (member_id, door_id, decision, seq)",
        # Class uses not yet acknowledged by the cloud; partial, so it stays as small as the
        # upload backlog rather than growing with the whole journal.
        """
        CREATE INDEX checkins_pending_by_member ON checkins (member_id, membership_id)
        WHERE sync_state = 'pending'
        """,
        # The upload queue, oldest first.
        "CREATE INDEX checkins_upload_queue ON checkins (sync_state, seq)",
    ),
)

_V2_CLOCK_PROVENANCE = Migration(
    version=2,
    summary="clock provenance on check-ins (boot id, monotonic time, clock quality)",
    statements=(
        # Rows written before this migration did not record where their wall time came from, so
        # they honestly say 'unsynced', an empty boot id and no monotonic time.
        "ALTER TABLE checkins ADD COLUMN boot_id TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE checkins ADD COLUMN monotonic_ns INTEGER NOT NULL DEFAULT 0",
        """
        ALTER TABLE checkins ADD COLUMN clock_quality TEXT NOT NULL DEFAULT 'unsynced'
            CHECK (clock_quality IN ('ntp_synced', 'server_anchored', 'unsynced'))
        """,
        # The clock floor (newest wall time on record) is read from the top of this index.
        "CREATE INDEX checkins_by_wall_time ON checkins (wall_time)",
    ),
)

# The replica tables a row of each protocol kind lives in (plan windows belong to their plan row).
_REPLICA_TABLES = ("plans", "members", "memberships", "opening_hours", "closures")

_V3_SYNC = Migration(
    version=3,
    summary="sync protocol v1: row hashes and ids, shadow replica, staged changes, sync status, "
    "clock anchors, cloud versions of class uses",
    statements=(
        # -- replica rows become protocol rows ----------------------------------------------------
        # row_hash is computed by the device from the row (sync.protocol.row_hash), never taken from
        # the wire. Rows written before this migration have none: the replica's checksum is then
        # unknown and the sync agent takes a fresh snapshot instead of trusting them.
        *(f"ALTER TABLE {table} ADD COLUMN row_hash INTEGER" for table in _REPLICA_TABLES),
        # The protocol gives hours and closures ids, so a change or a tombstone can name one.
        "ALTER TABLE opening_hours ADD COLUMN id TEXT",
        "ALTER TABLE closures ADD COLUMN id TEXT",
        "CREATE UNIQUE INDEX opening_hours_by_id ON opening_hours (id)",
        "CREATE UNIQUE INDEX closures_by_id ON closures (id)",
        # -- shadow replica: a snapshot is built here page by page, then swapped in at once -------
        # Same columns as the live tables, no foreign keys and no unique code hash: pages and the
        # changes applied on top arrive in an order that may be inconsistent until the checkpoint.
        # The swap into the live tables (which keep every rule) checks the result.
        "CREATE TABLE shadow_plans (id TEXT PRIMARY KEY, name TEXT NOT NULL, row_hash INTEGER) WITHOUT ROWID",
        """
        CREATE TABLE shadow_plan_windows (
            plan_id      TEXT NOT NULL,
            weekday      INTEGER NOT NULL,
            start_minute INTEGER NOT NULL,
            end_minute   INTEGER NOT NULL
        )
        """,
        "CREATE INDEX shadow_plan_windows_by_plan ON shadow_plan_windows (plan_id)",
        """
        CREATE TABLE shadow_members (
            id              TEXT PRIMARY KEY,
            organization_id TEXT NOT NULL,
            first_name      TEXT NOT NULL,
            last_name       TEXT NOT NULL,
            status          TEXT NOT NULL,
            is_staff        INTEGER NOT NULL,
            code_hash       TEXT,
            row_hash        INTEGER
        ) WITHOUT ROWID
        """,
        """
        CREATE TABLE shadow_memberships (
            id                TEXT PRIMARY KEY,
            member_id         TEXT NOT NULL,
            plan_id           TEXT,
            type              TEXT NOT NULL,
            start_date        TEXT NOT NULL,
            end_date          TEXT,
            remaining_classes INTEGER,
            row_hash          INTEGER
        ) WITHOUT ROWID
        """,
        """
        CREATE TABLE shadow_opening_hours (
            id           TEXT PRIMARY KEY,
            weekday      INTEGER NOT NULL,
            open_minute  INTEGER NOT NULL,
            close_minute INTEGER NOT NULL,
            row_hash     INTEGER
        ) WITHOUT ROWID
        """,
        """
        CREATE TABLE shadow_closures (
            id         TEXT PRIMARY KEY,
            start_date TEXT NOT NULL,
            end_date   TEXT NOT NULL,
            reason     TEXT NOT NULL,
            row_hash   INTEGER
        ) WITHOUT ROWID
        """,
        # -- change pages waiting for their checkpoint ------------------------------------------
        # One row per replica row (the latest change wins); applied in kind order at the
        # checkpoint so parents always come before their children.
        """
        CREATE TABLE staged_changes (
            kind      TEXT NOT NULL,
            id        TEXT NOT NULL,
            ord       INTEGER NOT NULL,
            kind_rank INTEGER NOT NULL,
            deleted   INTEGER NOT NULL CHECK (deleted IN (0, 1)),
            data      TEXT,
            row_hash  INTEGER,
            PRIMARY KEY (kind, id)
        )
        """,
        # -- class uses between upload and the next pull ------------------------------------------
        # The cloud version that carries an uploaded check-in's side effect (a class-pack balance);
        # the door keeps counting the class as used until the replica reaches that version.
        "ALTER TABLE checkins ADD COLUMN cloud_version INTEGER",
        # Class uses of a member, pending or awaiting their cloud version. Partial on
        # classes_used > 0, so it holds only class-spending rows (a few per member), and keyed by
        # (member_id, membership_id) so the door's GROUP BY reads it in order without a sort.
        """
        CREATE INDEX checkins_uses_by_member ON checkins (member_id, membership_id)
        WHERE classes_used > 0
        """,
        # Replaced by the index above; dropping it saves a write on every check-in.
        "DROP INDEX checkins_pending_by_member",
        # -- the sync agent's state --------------------------------------------------------------
        # key -> JSON value: state, online, last pull/push, last error, backlog... (owner page).
        """
        CREATE TABLE sync_status (
            key   TEXT PRIMARY KEY,
            value TEXT NOT NULL
        )
        """,
        # (boot, monotonic time) <-> server time, newest per boot: lets the scanner tell the time
        # on a Pi whose clock never got NTP, and the cloud place offline check-ins in time.
        f"""
        CREATE TABLE clock_anchors (
            boot_id      TEXT PRIMARY KEY,
            monotonic_ns INTEGER NOT NULL,
            server_time  TEXT NOT NULL CHECK (server_time GLOB {_ISO_UTC}),
            recorded_at  TEXT NOT NULL CHECK (recorded_at GLOB {_ISO_UTC})
        )
        """,
        "CREATE INDEX clock_anchors_by_server_time ON clock_anchors (server_time)",
    ),
)

# The last version that kept the replica in the journal database (kiosk.data.database carries
# such a replica over into a replica file before version 4 drops its tables).
LEGACY_REPLICA_VERSION = 3

_V4_REPLICA_OWN_FILE = Migration(
    version=4,
    summary="the replica moves to a file of its own (kiosk.db-replica-<id>): its tables, the "
    "shadow tables and the staged changes leave the journal database",
    statements=(
        # Children before parents: with foreign keys on, dropping a parent first would check (and
        # cascade into) every child row.
        "DROP TABLE staged_changes",
        *(
            f"DROP TABLE shadow_{table}"
            for table in (
                "memberships",
                "plan_windows",
                "members",
                "plans",
                "opening_hours",
                "closures",
            )
        ),
        "DROP TABLE memberships",
        "DROP TABLE plan_windows",
        "DROP TABLE members",
        "DROP TABLE plans",
        "DROP TABLE opening_hours",
        "DROP TABLE closures",
        "DROP TABLE replica_meta",
    ),
)

_V5_PHONE_PASSES = Migration(
    version=5,
    summary="phone passes: the pass a check-in was made with, and the door's memory of the pass "
    "codes it accepted (replay protection)",
    statements=(
        # NULL for a card (and for every row written before this migration). A pass id is 8
        # base32 characters (sync.passes); the CHECK keeps anything else out of the journal.
        """
        ALTER TABLE checkins ADD COLUMN pass_id TEXT
            CHECK (pass_id IS NULL OR (length(pass_id) = 8 AND pass_id NOT GLOB '*[^A-Z2-7]*'))
        """,
        # The (pass, time step) pairs this door accepted, each kept until its step has left every
        # window a code is accepted in (keep_until, UTC) plus kiosk.core.passes.PRUNE_MARGIN.
        # Written in the same transaction as the check-in it belongs to, in this file
        # (synchronous=FULL), so a code shown again after a power cut is still refused: the
        # replica file's synchronous=NORMAL could lose the last pair, and a replica is replaced.
        f"""
        CREATE TABLE pass_uses (
            pass_id    TEXT NOT NULL,
            step       INTEGER NOT NULL CHECK (step >= 0),
            keep_until TEXT NOT NULL CHECK (keep_until GLOB {_ISO_UTC}),
            PRIMARY KEY (pass_id, step)
        ) WITHOUT ROWID
        """,
        # The prune deletes from the oldest end of this index.
        "CREATE INDEX pass_uses_by_keep_until ON pass_uses (keep_until)",
    ),
)

_V6_DOOR_EVENTS = Migration(
    version=6,
    summary="door events (entry confirmed, annulled, tailgating, exit) in the journal's one "
    "sequence, and the grants waiting for their passage",
    statements=(
        # What the turnstile reported about the door (docs/architecture.md#door-events).
        # Append-only like the check-ins, uploaded like them in the one seq order (the counter is
        # journal_counter's: one sequence for the whole journal, so the cloud's gap check covers
        # both). No foreign key to checkins: a synced check-in may be pruned before or after the
        # event that names it. entry and annulled always name their grant, tailgating never does,
        # an exit does when it is a grant at an exit-side scanner.
        f"""
        CREATE TABLE door_events (
            id            TEXT PRIMARY KEY,
            seq           INTEGER NOT NULL UNIQUE,
            door_id       TEXT NOT NULL,
            kind          TEXT NOT NULL
                          CHECK (kind IN ('entry', 'annulled', 'tailgating', 'exit')),
            checkin_id    TEXT,
            wall_time     TEXT NOT NULL CHECK (wall_time GLOB {_ISO_UTC}),
            boot_id       TEXT NOT NULL,
            monotonic_ns  INTEGER NOT NULL,
            clock_quality TEXT NOT NULL
                          CHECK (clock_quality IN ('ntp_synced', 'server_anchored', 'unsynced')),
            sync_state    TEXT NOT NULL DEFAULT 'pending'
                          CHECK (sync_state IN ('pending', 'synced', 'rejected')),
            synced_at     TEXT CHECK (synced_at GLOB {_ISO_UTC}),
            CHECK (kind NOT IN ('entry', 'annulled') OR checkin_id IS NOT NULL),
            CHECK (kind != 'tailgating' OR checkin_id IS NULL)
        )
        """,
        # A grant is confirmed or annulled once, never both and never twice.
        """
        CREATE UNIQUE INDEX door_events_one_outcome ON door_events (checkin_id)
        WHERE kind IN ('entry', 'annulled')
        """,
        # "Was this grant annulled, or an exit?": the door path's passback, visit and class-use
        # reads, and the occupancy's; partial, so tailgating and exit passages take no room.
        """
        CREATE INDEX door_events_by_checkin ON door_events (checkin_id, kind)
        WHERE checkin_id IS NOT NULL
        """,
        # The day's movements (occupancy, the owner page), the prune and the clock floor.
        "CREATE INDEX door_events_by_wall_time ON door_events (wall_time)",
        # The upload queue, oldest first.
        "CREATE INDEX door_events_upload_queue ON door_events (sync_state, seq)",
        # A grant waiting for its passage, written in the transaction of the check-in and deleted
        # in the one of its outcome (entry or annulled), so a door restarted between the two
        # finds it and resolves it: never lost, never twice. Device-local, never uploaded. The
        # deadline is kept on both clocks: the monotonic one within the boot that granted, the
        # wall time after a reboot.
        f"""
        CREATE TABLE passage_waits (
            checkin_id    TEXT PRIMARY KEY,
            seq           INTEGER NOT NULL,
            door_id       TEXT NOT NULL,
            boot_id       TEXT NOT NULL,
            deadline_ns   INTEGER NOT NULL,
            deadline_wall TEXT NOT NULL CHECK (deadline_wall GLOB {_ISO_UTC})
        ) WITHOUT ROWID
        """,
    ),
)

MIGRATIONS: tuple[Migration, ...] = (
    _V1_INITIAL,
    _V2_CLOCK_PROVENANCE,
    _V3_SYNC,
    _V4_REPLICA_OWN_FILE,
    _V5_PHONE_PASSES,
    _V6_DOOR_EVENTS,
)
LATEST_VERSION = MIGRATIONS[-1].version

# -- a replica file ------------------------------------------------------------------------------

# A replica file's PRAGMA user_version; a file of another format is never read as it is.
# 1: plans, members, memberships, hours, closures. 2: phone passes (the table ``passes``).
# 3: a plan's visit limit (``plans.max_visits_per_day``).
REPLICA_FORMAT = 3
# Older formats whose rows carry over into a new file of this format by table and column name
# (kiosk.data.database does it when a read-write store opens): every column of format 1 and 2
# is in format 3 under the same name; format 1 holds no passes, and neither holds a visit limit
# (NULL: none, which is also how the protocol's normal form hashes a plan without one, so the
# row hashes carried over stay right).
REPLICA_CARRY_OVER_FORMATS = frozenset({1, 2})
# The table each kind of replica row lives in (sync.protocol's kinds, in their order); every one
# has ``id`` and ``row_hash``. A plan's windows live in plan_windows, under its row hash.
REPLICA_KIND_TABLES: dict[str, str] = {
    "plan": "plans",
    "member": "members",
    "membership": "memberships",
    "pass": "passes",
    "hours": "opening_hours",
    "closure": "closures",
}

# The tables of a replica file: the cloud's rows, each with its id and the row hash the device
# computed (sync.protocol.row_hash), plus the replica's facts and the changes staged for the next
# checkpoint. Same columns as the replica tables of schema 3, so a replica carries over by name.
REPLICA_SCHEMA: tuple[str, ...] = (
    # max_visits_per_day: the most entries a member of the plan makes in one local day at a
    # door (NULL: no limit; the protocol's row leaves the key out then).
    """
    CREATE TABLE plans (
        id                 TEXT PRIMARY KEY,
        name               TEXT NOT NULL,
        row_hash           INTEGER,
        max_visits_per_day INTEGER CHECK (max_visits_per_day IS NULL OR max_visits_per_day > 0)
    )
    """,
    """
    CREATE TABLE plan_windows (
        plan_id      TEXT NOT NULL REFERENCES plans (id) ON DELETE CASCADE,
        weekday      INTEGER NOT NULL CHECK (weekday BETWEEN 0 AND 6),
        start_minute INTEGER NOT NULL CHECK (start_minute BETWEEN 0 AND 1439),
        end_minute   INTEGER NOT NULL CHECK (end_minute BETWEEN 1 AND 1440),
        CHECK (start_minute < end_minute)
    )
    """,
    """
    CREATE TABLE members (
        id              TEXT PRIMARY KEY,
        organization_id TEXT NOT NULL,
        first_name      TEXT NOT NULL,
        last_name       TEXT NOT NULL,
        status          TEXT NOT NULL CHECK (status IN ('ACTIVE', 'EXPIRED', 'PAUSED')),
        is_staff        INTEGER NOT NULL DEFAULT 0 CHECK (is_staff IN (0, 1)),
        code_hash       TEXT,
        row_hash        INTEGER
    )
    """,
    # rowid order is the cloud's order (the door reads a member's memberships in it).
    f"""
    CREATE TABLE memberships (
        id                TEXT PRIMARY KEY,
        member_id         TEXT NOT NULL REFERENCES members (id) ON DELETE CASCADE,
        plan_id           TEXT REFERENCES plans (id) ON DELETE SET NULL,
        type              TEXT NOT NULL CHECK (type IN ('SUBSCRIPTION', 'CLASS_PACK', 'PT')),
        start_date        TEXT NOT NULL CHECK (start_date GLOB {_ISO_DATE}),
        end_date          TEXT CHECK (end_date GLOB {_ISO_DATE}),
        remaining_classes INTEGER,
        row_hash          INTEGER
    )
    """,
    # A phone pass (docs/passes.md): its id is the 8-character pass id the code carries, so the
    # door finds it by primary key. No foreign key to members, unlike memberships: the door holds
    # exactly the cloud's rows (a pass whose member is gone is refused as unknown at the door,
    # and the checksum never depends on what the device would have cascaded). public_key is the
    # wire's 43 characters of base64url; status REVOKED keeps the row so the door can say so.
    """
    CREATE TABLE passes (
        id              TEXT PRIMARY KEY,
        member_id       TEXT NOT NULL,
        organization_id TEXT NOT NULL,
        public_key      TEXT NOT NULL,
        period_s        INTEGER NOT NULL CHECK (period_s BETWEEN 5 AND 300),
        status          TEXT NOT NULL CHECK (status IN ('ACTIVE', 'REVOKED')),
        row_hash        INTEGER
    )
    """,
    # id is nullable (hours and closures loaded before schema 3 had none): SQLite lets a
    # non-integer primary key hold NULLs.
    """
    CREATE TABLE opening_hours (
        id           TEXT PRIMARY KEY,
        weekday      INTEGER NOT NULL CHECK (weekday BETWEEN 0 AND 6),
        open_minute  INTEGER NOT NULL CHECK (open_minute BETWEEN 0 AND 1439),
        close_minute INTEGER NOT NULL CHECK (close_minute BETWEEN 1 AND 1440),
        row_hash     INTEGER,
        CHECK (open_minute < close_minute)
    )
    """,
    f"""
    CREATE TABLE closures (
        id         TEXT PRIMARY KEY,
        start_date TEXT NOT NULL CHECK (start_date GLOB {_ISO_DATE}),
        end_date   TEXT NOT NULL CHECK (end_date GLOB {_ISO_DATE}),
        reason     TEXT NOT NULL DEFAULT '',
        row_hash   INTEGER,
        CHECK (start_date <= end_date)
    )
    """,
    # version, synced_at, code_salt, and the replica's own record of its count and checksum
    # (kept up to date by every change applied, so a checkpoint is verified without a full scan).
    "CREATE TABLE replica_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    # One row per replica row (the latest change wins), applied in kind order at the checkpoint.
    """
    CREATE TABLE staged_changes (
        kind      TEXT NOT NULL,
        id        TEXT NOT NULL,
        ord       INTEGER NOT NULL,
        kind_rank INTEGER NOT NULL,
        deleted   INTEGER NOT NULL CHECK (deleted IN (0, 1)),
        data      TEXT,
        row_hash  INTEGER,
        PRIMARY KEY (kind, id)
    )
    """,
)

# Built once the rows are in. (weekday, start_minute) in the plan windows' key lets the door read
# a plan's windows in order straight from the index; memberships_by_plan spares a scan of every
# membership when a plan is deleted (its foreign key action looks them up).
REPLICA_INDEXES: tuple[str, ...] = (
    "CREATE INDEX plan_windows_by_plan ON plan_windows (plan_id, weekday, start_minute)",
    "CREATE INDEX memberships_by_member ON memberships (member_id)",
    "CREATE INDEX memberships_by_plan ON memberships (plan_id)",
)
# The replica holds a keyed hash of the member's QR code, never the code (docs/architecture.md).
REPLICA_CODE_INDEX = "CREATE UNIQUE INDEX members_by_code_hash ON members (code_hash)"


def schema_version(conn: sqlite3.Connection) -> int:
    """The number of the last migration applied (0 for an empty database). Raises
    ``sqlite3.DatabaseError`` if the file is not a database."""
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    return int(version)


def apply_migrations(conn: sqlite3.Connection, *, target: int = LATEST_VERSION) -> list[int]:
    """Bring ``conn`` up to schema ``target``, one transaction per migration; returns the
    versions applied (empty when already there).

    ``conn`` must be in autocommit mode (``isolation_level=None``) with no open transaction.
    Safe when several processes open the same file at once: the version is re-read under the
    write lock, so each migration is applied exactly once. A database newer than ``target`` is
    left alone (the caller decides whether that is an error). Raises ``sqlite3.Error`` on any
    database failure, after rolling the failed migration back; ``ValueError`` for an unknown
    ``target``.
    """
    if target < 0 or target > LATEST_VERSION:
        raise ValueError(f"unknown schema version {target}: this code knows 0..{LATEST_VERSION}")
    applied: list[int] = []
    if schema_version(conn) >= target:
        return applied
    for migration in MIGRATIONS:
        if migration.version > target:
            break
        conn.execute("BEGIN IMMEDIATE")
        try:
            if schema_version(conn) >= migration.version:
                conn.execute("COMMIT")
                continue
            for statement in migration.statements:
                conn.execute(statement)
            # PRAGMA takes no placeholders; the value is an int from the table above.
            conn.execute(f"PRAGMA user_version = {int(migration.version)}")
            conn.execute("COMMIT")
        except BaseException:
            # The original error is the one worth reporting; a failed rollback adds nothing.
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise
        applied.append(migration.version)
    return applied
