"""The cloud's schema history, as numbered migrations for SQLite and PostgreSQL.

``schema_migrations`` records each migration applied. ``migrate`` runs every missing one in its
own transaction together with its record (DDL is transactional in both databases), so a failure
leaves the schema at the previous migration, never half-applied. Running it again is a no-op, and
two processes starting at once are safe: SQLite serialises the write transactions, PostgreSQL
takes an advisory lock first. A database with a migration newer than this code is refused
(``SchemaTooNew``) rather than used.

Statements are written once with a few dialect words in braces (``{BOOL}``, ``{BIGINT}``, ...).
Once released, a migration is history and never edited: a change is a new migration.

Conventions: times are fixed-width UTC text (``2026-05-01T17:03:09.120000Z``), dates
``YYYY-MM-DD`` text; replica tables share ``organization_id, gym_id, id, version, deleted,
row_hash, updated_at`` (``row_hash`` is the row's sync.protocol hash, a signed 64-bit integer,
kept up to date by every write so the checkpoint is one aggregate query).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cloud import db as dbm
from sync.protocol import utc_text

_WORDS = {
    dbm.SQLITE: {
        "BOOL": "INTEGER",
        "BIGINT": "INTEGER",
        "REAL": "REAL",
        "SERIAL_PK": "INTEGER PRIMARY KEY AUTOINCREMENT",
        "C": "",
    },
    dbm.POSTGRES: {
        "BOOL": "BOOLEAN",
        "BIGINT": "BIGINT",
        "REAL": "DOUBLE PRECISION",
        "SERIAL_PK": "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
        # Byte order for the search indexes: a prefix is then exactly a range (db.prefix_range).
        "C": ' COLLATE "C"',
    },
}
# Any constant; PostgreSQL advisory locks are keyed by a 64-bit integer.
_PG_MIGRATION_LOCK = 7_346_221_901


class SchemaTooNew(dbm.DatabaseError):
    """The database was migrated by a newer version of this service."""


@dataclass(frozen=True, slots=True)
class Migration:
    """``statements`` run on both databases, then ``only`` (by dialect) where the two differ too
    much for a few words (triggers)."""

    version: int
    name: str
    statements: tuple[str, ...]
    only: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def sql(self, dialect: str) -> list[str]:
        return [
            stmt.format(**_WORDS[dialect])
            for stmt in (*self.statements, *self.only.get(dialect, ()))
        ]


def _replica_table(name: str, columns: str, *, per_gym: bool) -> tuple[str, ...]:
    gym = "gym_id TEXT NOT NULL REFERENCES gyms (id)," if per_gym else "gym_id TEXT,"
    return (
        f"""
        CREATE TABLE {name} (
            organization_id TEXT NOT NULL REFERENCES organizations (id),
            {gym}
            id TEXT NOT NULL,
            {columns},
            version {{BIGINT}} NOT NULL,
            deleted {{BOOL}} NOT NULL DEFAULT FALSE,
            row_hash {{BIGINT}} NOT NULL,
            updated_at TEXT NOT NULL,
            PRIMARY KEY (organization_id, id)
        )
        """,
        # The change feed reads (version, id) ranges; per-gym tables are read per gym.
        f"CREATE INDEX {name}_by_version ON {name} (organization_id, version, id)",
        *(
            (
                f"CREATE INDEX {name}_by_gym ON {name} (gym_id, id)",
                f"CREATE INDEX {name}_by_gym_version ON {name} (gym_id, version, id)",
            )
            if per_gym
            else ()
        ),
    )


_V1 = Migration(
    1,
    "organisations, gyms, replica tables, devices, tokens, check-ins, rejections, anchors",
    (
        """
        CREATE TABLE organizations (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            version {BIGINT} NOT NULL DEFAULT 0,
            purged_version {BIGINT} NOT NULL DEFAULT 0,
            code_salt TEXT NOT NULL,
            created_at TEXT NOT NULL
        )
        """,
        """
        CREATE TABLE gyms (
            id TEXT PRIMARY KEY,
            organization_id TEXT NOT NULL REFERENCES organizations (id),
            name TEXT NOT NULL,
            timezone TEXT NOT NULL,
            created_at TEXT NOT NULL
        )
        """,
        "CREATE INDEX gyms_by_org ON gyms (organization_id, id)",
        *_replica_table("plans", "name TEXT NOT NULL, windows TEXT NOT NULL", per_gym=False),
        *_replica_table(
            "members",
            """first_name TEXT NOT NULL,
            last_name TEXT NOT NULL,
            status TEXT NOT NULL,
            is_staff {BOOL} NOT NULL,
            card_code TEXT,
            code_hash TEXT""",
            per_gym=False,
        ),
        # One live member per card code in an organisation, or the door could not tell them apart.
        "CREATE UNIQUE INDEX members_by_code ON members (organization_id, code_hash)"
        " WHERE deleted = FALSE AND code_hash IS NOT NULL",
        *_replica_table(
            "memberships",
            """member_id TEXT NOT NULL,
            plan_id TEXT,
            type TEXT NOT NULL,
            start_date TEXT NOT NULL,
            end_date TEXT,
            remaining_classes {BIGINT}""",
            per_gym=False,
        ),
        "CREATE INDEX memberships_by_member ON memberships (organization_id, member_id)",
        "CREATE INDEX memberships_by_plan ON memberships (organization_id, plan_id)",
        *_replica_table(
            "opening_hours",
            "weekday INTEGER NOT NULL, open_minute INTEGER NOT NULL, close_minute INTEGER NOT NULL",
            per_gym=True,
        ),
        *_replica_table(
            "closures",
            "start_date TEXT NOT NULL, end_date TEXT NOT NULL, reason TEXT NOT NULL",
            per_gym=True,
        ),
        """
        CREATE TABLE devices (
            id TEXT PRIMARY KEY,
            organization_id TEXT NOT NULL REFERENCES organizations (id),
            gym_id TEXT NOT NULL REFERENCES gyms (id),
            name TEXT NOT NULL,
            token_hash TEXT NOT NULL UNIQUE,
            software_version TEXT,
            enrolled_at TEXT NOT NULL,
            revoked_at TEXT,
            last_seen_at TEXT,
            resnapshot_requested {BOOL} NOT NULL DEFAULT FALSE,
            hb_at TEXT,
            hb_boot_id TEXT,
            hb_device_time TEXT,
            hb_clock_quality TEXT,
            hb_backlog {BIGINT},
            hb_oldest_pending_age_s {REAL},
            hb_replica_version {BIGINT},
            hb_replica_checksum TEXT,
            hb_replica_count {BIGINT},
            hb_replica_status TEXT,
            hb_last_seq {BIGINT},
            hb_synced_through_seq {BIGINT},
            hb_retained_from_seq {BIGINT},
            hb_last_error TEXT
        )
        """,
        "CREATE INDEX devices_by_org ON devices (organization_id, gym_id, id)",
        """
        CREATE TABLE enrolment_codes (
            code_hash TEXT PRIMARY KEY,
            organization_id TEXT NOT NULL REFERENCES organizations (id),
            gym_id TEXT NOT NULL REFERENCES gyms (id),
            created_at TEXT NOT NULL,
            expires_at TEXT NOT NULL,
            used_at TEXT,
            device_id TEXT
        )
        """,
        """
        CREATE TABLE admin_tokens (
            token_hash TEXT PRIMARY KEY,
            organization_id TEXT NOT NULL REFERENCES organizations (id),
            created_at TEXT NOT NULL,
            revoked_at TEXT
        )
        """,
        """
        CREATE TABLE checkins (
            id TEXT PRIMARY KEY,
            organization_id TEXT NOT NULL,
            gym_id TEXT NOT NULL,
            device_id TEXT NOT NULL,
            seq {BIGINT} NOT NULL,
            door_id TEXT NOT NULL,
            decision TEXT NOT NULL,
            reason TEXT NOT NULL,
            member_id TEXT,
            membership_id TEXT,
            classes_used INTEGER NOT NULL,
            replica_version {BIGINT} NOT NULL,
            wall_time TEXT NOT NULL,
            boot_id TEXT NOT NULL,
            monotonic_ns {BIGINT} NOT NULL,
            clock_quality TEXT NOT NULL,
            occurred_at TEXT NOT NULL,
            time_source TEXT NOT NULL,
            received_at TEXT NOT NULL,
            overdraft {BOOL} NOT NULL DEFAULT FALSE,
            effect_version {BIGINT}
        )
        """,
        "CREATE INDEX checkins_by_device_seq ON checkins (device_id, seq)",
        "CREATE INDEX checkins_by_time ON checkins (organization_id, occurred_at, id)",
        "CREATE INDEX checkins_by_gym_time ON checkins (gym_id, occurred_at, id)",
        # Only the few check-ins placed without an anchor, waiting for one.
        "CREATE INDEX checkins_unanchored ON checkins (device_id, boot_id)"
        " WHERE time_source <> 'anchored'",
        "CREATE INDEX checkins_overdrafts ON checkins (organization_id, occurred_at, id)"
        " WHERE overdraft = TRUE",
        """
        CREATE TABLE rejections (
            id {SERIAL_PK},
            organization_id TEXT NOT NULL,
            device_id TEXT NOT NULL,
            item_id TEXT,
            seq {BIGINT},
            code TEXT NOT NULL,
            detail TEXT NOT NULL,
            received_at TEXT NOT NULL
        )
        """,
        # NULL seqs (an item too broken to have one) never collide.
        "CREATE UNIQUE INDEX rejections_by_device_seq ON rejections (device_id, seq)",
        """
        CREATE TABLE device_anchors (
            device_id TEXT NOT NULL,
            boot_id TEXT NOT NULL,
            monotonic_ns {BIGINT} NOT NULL,
            server_time TEXT NOT NULL,
            PRIMARY KEY (device_id, boot_id, monotonic_ns)
        )
        """,
    ),
)

# A kiosk enrolled again (after a revoke, or ``kiosk enrol --force``) keeps its journal: its seqs
# continue those it sent as the earlier device. The links let the heartbeat count those rows as
# held (docs/sync-protocol.md, "Heartbeat").
_V2 = Migration(
    2,
    "device predecessors",
    (
        """
        CREATE TABLE device_predecessors (
            device_id TEXT NOT NULL REFERENCES devices (id),
            predecessor_id TEXT NOT NULL REFERENCES devices (id),
            linked_at TEXT NOT NULL,
            PRIMARY KEY (device_id, predecessor_id)
        )
        """,
    ),
)

# Signed phone passes (docs/passes.md). ``passes`` is a replica table like members: a door needs a
# pass's public key, member, period and status to check a code offline. Revoking sets
# ``status = 'REVOKED'`` (the row stays, so the door can say "revoked"). Activation codes are
# single-use and short-lived and stored hashed, like enrolment codes. The organisation chooses the
# period of new passes and how many live passes a member may hold.
_V3 = Migration(
    3,
    "phone passes and their activation codes",
    (
        "ALTER TABLE organizations ADD COLUMN pass_period_s INTEGER NOT NULL DEFAULT 15",
        "ALTER TABLE organizations ADD COLUMN max_live_passes INTEGER NOT NULL DEFAULT 2",
        *_replica_table(
            "passes",
            """member_id TEXT NOT NULL,
            public_key TEXT NOT NULL,
            period_s INTEGER NOT NULL,
            status TEXT NOT NULL,
            created_at TEXT NOT NULL,
            revoked_at TEXT""",
            per_gym=False,
        ),
        "CREATE INDEX passes_by_member ON passes (organization_id, member_id)",
        # A phone asking about its pass (POST /pass/v1/status) names only the pass id.
        "CREATE INDEX passes_by_id ON passes (id)",
        """
        CREATE TABLE pass_activations (
            code_hash TEXT PRIMARY KEY,
            organization_id TEXT NOT NULL REFERENCES organizations (id),
            member_id TEXT NOT NULL,
            created_at TEXT NOT NULL,
            expires_at TEXT NOT NULL,
            used_at TEXT,
            pass_id TEXT
        )
        """,
        "CREATE INDEX pass_activations_by_member ON pass_activations (organization_id, member_id)",
        # The pass a check-in was made with (NULL for a card), as the door reports it.
        "ALTER TABLE checkins ADD COLUMN pass_id TEXT",
    ),
)

# The turnstile talks back (sync protocol 3). ``door_events`` holds the doors' passage events,
# stored once by id like check-ins and in the same seq space (the heartbeat's gap check counts
# both). A check-in is ``annulled`` when its door saw no passage in time (its class went back to
# the membership) and ``confirmed`` when the turnstile turned for it. A plan may limit a member's
# entries per local day. Each device keeps the occupancy its last heartbeat reported.
_V4 = Migration(
    4,
    "door events, annulled and confirmed check-ins, plan visit limits, occupancy",
    (
        """
        CREATE TABLE door_events (
            id TEXT PRIMARY KEY,
            organization_id TEXT NOT NULL,
            gym_id TEXT NOT NULL,
            device_id TEXT NOT NULL,
            seq {BIGINT} NOT NULL,
            door_id TEXT NOT NULL,
            kind TEXT NOT NULL,
            checkin_id TEXT,
            wall_time TEXT NOT NULL,
            boot_id TEXT NOT NULL,
            monotonic_ns {BIGINT} NOT NULL,
            clock_quality TEXT NOT NULL,
            occurred_at TEXT NOT NULL,
            time_source TEXT NOT NULL,
            received_at TEXT NOT NULL,
            effect_version {BIGINT}
        )
        """,
        "CREATE INDEX door_events_by_device_seq ON door_events (device_id, seq)",
        "CREATE INDEX door_events_by_checkin ON door_events (checkin_id)"
        " WHERE checkin_id IS NOT NULL",
        "CREATE INDEX door_events_by_gym_time ON door_events (gym_id, occurred_at, id)",
        "CREATE INDEX door_events_unanchored ON door_events (device_id, boot_id)"
        " WHERE time_source <> 'anchored'",
        "ALTER TABLE checkins ADD COLUMN annulled {BOOL} NOT NULL DEFAULT FALSE",
        "ALTER TABLE checkins ADD COLUMN confirmed {BOOL} NOT NULL DEFAULT FALSE",
        "ALTER TABLE plans ADD COLUMN max_visits_per_day INTEGER",
        "ALTER TABLE devices ADD COLUMN occ_at TEXT",
        "ALTER TABLE devices ADD COLUMN occ_now INTEGER",
        "ALTER TABLE devices ADD COLUMN occ_entries_today INTEGER",
        "ALTER TABLE devices ADD COLUMN occ_exits_today INTEGER",
        "ALTER TABLE devices ADD COLUMN occ_max_today INTEGER",
        "ALTER TABLE devices ADD COLUMN occ_capacity INTEGER",
    ),
)

# The staff console (docs/console.md). Staff accounts belong to one organisation (an email is unique
# per organisation, stored lower case); invites and sessions are stored as the SHA-256 of their
# secret, like every other token here. A session's ``expires_at`` is when it ends unless used
# again (the idle limit, capped by the absolute one), so expired sessions are one range to delete.
# ``trainer_members`` lists the members a trainer may see. ``audit_log`` keeps every staff action.
# ``members.phone`` is a stored extra column like ``card_code`` (not replicated). The search
# indexes hold lower-case names and card codes in byte order (COLLATE "C" on PostgreSQL, SQLite's
# default): a search compares ``lower(column)`` (with ``db.SEARCH_COLLATE``) against
# ``db.prefix_range(text)``, an index range on either database.
_V5 = Migration(
    5,
    "staff console: staff, invites, sessions, trainer members, audit log, member phone and search",
    (
        """
        CREATE TABLE staff (
            id TEXT PRIMARY KEY,
            organization_id TEXT NOT NULL REFERENCES organizations (id),
            email TEXT NOT NULL,
            name TEXT NOT NULL,
            role TEXT NOT NULL,
            password_hash TEXT NOT NULL,
            created_at TEXT NOT NULL,
            disabled_at TEXT
        )
        """,
        "CREATE UNIQUE INDEX staff_by_email ON staff (organization_id, email)",
        # Sign-in names an email, not an organisation.
        "CREATE INDEX staff_by_login ON staff (email)",
        """
        CREATE TABLE staff_invites (
            token_hash TEXT PRIMARY KEY,
            organization_id TEXT NOT NULL REFERENCES organizations (id),
            email TEXT NOT NULL,
            role TEXT NOT NULL,
            created_by TEXT,
            created_at TEXT NOT NULL,
            expires_at TEXT NOT NULL,
            used_at TEXT
        )
        """,
        "CREATE INDEX staff_invites_by_org ON staff_invites (organization_id, expires_at)",
        """
        CREATE TABLE staff_sessions (
            token_hash TEXT PRIMARY KEY,
            staff_id TEXT NOT NULL REFERENCES staff (id),
            organization_id TEXT NOT NULL,
            csrf_token TEXT NOT NULL,
            created_at TEXT NOT NULL,
            last_seen_at TEXT NOT NULL,
            expires_at TEXT NOT NULL,
            address TEXT NOT NULL
        )
        """,
        "CREATE INDEX staff_sessions_by_staff ON staff_sessions (staff_id, created_at)",
        "CREATE INDEX staff_sessions_by_expiry ON staff_sessions (expires_at)",
        """
        CREATE TABLE trainer_members (
            staff_id TEXT NOT NULL REFERENCES staff (id),
            member_id TEXT NOT NULL,
            PRIMARY KEY (staff_id, member_id)
        )
        """,
        "CREATE INDEX trainer_members_by_member ON trainer_members (member_id)",
        """
        CREATE TABLE audit_log (
            id {SERIAL_PK},
            organization_id TEXT NOT NULL,
            staff_id TEXT,
            action TEXT NOT NULL,
            target TEXT NOT NULL,
            detail TEXT NOT NULL,
            at TEXT NOT NULL,
            address TEXT NOT NULL
        )
        """,
        "CREATE INDEX audit_log_by_org ON audit_log (organization_id, id)",
        "ALTER TABLE members ADD COLUMN phone TEXT",
        "CREATE INDEX members_by_first_name ON members (organization_id, lower(first_name){C})",
        "CREATE INDEX members_by_last_name ON members (organization_id, lower(last_name){C})",
        "CREATE INDEX members_by_card_code ON members (organization_id, lower(card_code){C})",
        # A phone search names the last digits (``members.phone`` holds digits, a leading + at
        # most: cloud.console.search.normal_phone): the index holds each number's last four, a
        # full number or any longer ending is that range filtered (cloud.console.search).
        "CREATE INDEX members_by_phone_tail ON members"
        " (organization_id, substr(phone, length(phone) - 3))",
        # The live attendance feed reads what arrived since its cursor (cloud.console.live).
        "CREATE INDEX checkins_by_received ON checkins (organization_id, received_at, id)",
        "CREATE INDEX door_events_by_received ON door_events (organization_id, received_at, id)",
        # A member's last visits and refusals, newest first (cloud.console.members).
        "CREATE INDEX checkins_by_member ON checkins (organization_id, member_id, occurred_at, id)",
    ),
)

# The heartbeat's gap check remembers per device the span of seqs it found held, so it counts only
# what lies outside it (cloud.uploads.check_journal): ``journal_verified_from`` ..
# ``journal_verified_seq`` (empty unless 1 <= from <= seq). The held seqs of a device only grow
# (rows are inserted, never deleted, by the service; predecessor links are only added), so the
# span stays true. Whatever removes one anyway (an operator's DELETE or TRUNCATE, an UPDATE of a
# row's device or seq, an unlinked predecessor) goes through these triggers, which cut the span
# of every device counting that row below the row's seq and add one to ``journal_losses``, so a
# count made before it is never taken for the truth after it.
_JOURNAL_ROW_GONE = """
    UPDATE devices SET journal_losses = journal_losses + 1,
        journal_verified_seq = CASE
            WHEN journal_verified_from <= OLD.seq AND journal_verified_seq >= OLD.seq
            THEN OLD.seq - 1 ELSE journal_verified_seq END
    WHERE id = OLD.device_id OR id IN
        (SELECT device_id FROM device_predecessors WHERE predecessor_id = OLD.device_id)
"""
_PREDECESSOR_GONE = """
    UPDATE devices SET journal_losses = journal_losses + 1, journal_verified_seq = 0
    WHERE id = OLD.device_id
"""
_JOURNAL_TABLES = ("checkins", "door_events", "rejections")


def _sqlite_triggers() -> tuple[str, ...]:
    out = []
    for table in _JOURNAL_TABLES:
        out.append(
            f"CREATE TRIGGER {table}_gone AFTER DELETE ON {table} BEGIN {_JOURNAL_ROW_GONE}; END"
        )
        out.append(
            f"CREATE TRIGGER {table}_moved AFTER UPDATE OF device_id, seq ON {table}"
            f" BEGIN {_JOURNAL_ROW_GONE}; END"
        )
    out.append(
        "CREATE TRIGGER device_predecessors_gone AFTER DELETE ON device_predecessors"
        f" BEGIN {_PREDECESSOR_GONE}; END"
    )
    out.append(
        "CREATE TRIGGER device_predecessors_moved AFTER UPDATE ON device_predecessors"
        f" BEGIN {_PREDECESSOR_GONE}; END"
    )
    return tuple(out)


def _postgres_triggers() -> tuple[str, ...]:
    out = [
        "CREATE FUNCTION journal_row_gone() RETURNS trigger LANGUAGE plpgsql AS $$"
        f" BEGIN {_JOURNAL_ROW_GONE}; RETURN NULL; END $$",
        "CREATE FUNCTION journal_predecessor_gone() RETURNS trigger LANGUAGE plpgsql AS $$"
        f" BEGIN {_PREDECESSOR_GONE}; RETURN NULL; END $$",
        # TRUNCATE fires no row triggers: it forgets every span.
        "CREATE FUNCTION journal_truncated() RETURNS trigger LANGUAGE plpgsql AS $$"
        " BEGIN UPDATE devices SET journal_losses = journal_losses + 1,"
        " journal_verified_seq = 0 WHERE journal_verified_seq <> 0; RETURN NULL; END $$",
    ]
    for table in (*_JOURNAL_TABLES, "device_predecessors"):
        gone = "journal_predecessor_gone" if table == "device_predecessors" else "journal_row_gone"
        columns = "" if table == "device_predecessors" else " OF device_id, seq"
        out.append(
            f"CREATE TRIGGER {table}_gone AFTER DELETE OR UPDATE{columns} ON {table}"
            f" FOR EACH ROW EXECUTE FUNCTION {gone}()"
        )
        out.append(
            f"CREATE TRIGGER {table}_truncated AFTER TRUNCATE ON {table}"
            " FOR EACH STATEMENT EXECUTE FUNCTION journal_truncated()"
        )
    return tuple(out)


_V6 = Migration(
    6,
    "the heartbeat's verified journal span per device, kept honest by triggers",
    (
        "ALTER TABLE devices ADD COLUMN journal_verified_from {BIGINT} NOT NULL DEFAULT 0",
        "ALTER TABLE devices ADD COLUMN journal_verified_seq {BIGINT} NOT NULL DEFAULT 0",
        "ALTER TABLE devices ADD COLUMN journal_losses {BIGINT} NOT NULL DEFAULT 0",
    ),
    only={dbm.SQLITE: _sqlite_triggers(), dbm.POSTGRES: _postgres_triggers()},
)

MIGRATIONS: tuple[Migration, ...] = (_V1, _V2, _V3, _V4, _V5, _V6)
LATEST_VERSION = MIGRATIONS[-1].version

_CREATE_HISTORY = (
    "CREATE TABLE IF NOT EXISTS schema_migrations ("
    " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
)


def _lock(tx: dbm.Tx) -> None:
    if tx.dialect == dbm.POSTGRES:
        tx.value("SELECT pg_advisory_xact_lock(?)", (_PG_MIGRATION_LOCK,))


def _applied(tx: dbm.Tx) -> set[int]:
    return {int(row["version"]) for row in tx.all("SELECT version FROM schema_migrations")}


def migrate(
    database: dbm.Database, *, clock: Callable[[], datetime] | None = None
) -> list[Migration]:
    """Apply every missing migration, each in its own transaction; returns those applied now.
    Raises SchemaTooNew for a database newer than this code, DatabaseError otherwise."""
    now = clock or (lambda: datetime.now(UTC))
    with database.write() as tx:
        _lock(tx)
        tx.run(_CREATE_HISTORY)
        newer = sorted(v for v in _applied(tx) if v > LATEST_VERSION)
    if newer:
        raise SchemaTooNew(
            f"{database.url.display()} has schema migration {newer[-1]}, newer than this "
            f"service knows ({LATEST_VERSION}): upgrade the service, do not downgrade the database"
        )
    done = []
    for migration in MIGRATIONS:
        with database.write() as tx:
            _lock(tx)
            if migration.version in _applied(tx):
                continue
            for statement in migration.sql(database.dialect):
                tx.run(statement)
            tx.run(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                (migration.version, migration.name, utc_text(now())),
            )
        done.append(migration)
    return done


def schema_version(database: dbm.Database) -> int:
    """The newest migration applied (0 for an empty database)."""
    with database.read() as tx:
        try:
            return int(tx.value("SELECT COALESCE(MAX(version), 0) FROM schema_migrations") or 0)
        except dbm.DatabaseError:
            return 0
