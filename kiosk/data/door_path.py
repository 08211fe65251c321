"""The door path's SQL: every statement the scanner runs between reading a code and pulsing the
relay, in one table (``DOOR_PATH_QUERIES``) so their cost can be checked in one place.

Each is an index lookup (``tests/test_store.py`` checks the query plans), so the door's latency
does not grow with the gym. ``kiosk.data.replica`` runs the reads (``Replica.find_member_id``,
``Replica.pass_lookup``, ``Replica.member_facts``), ``kiosk.data.journal`` the writes
(``Journal.append_checkin``: the sequence, the row and, for a phone pass, its use and the prune of
old uses).
The replica's tables are named with the schema they are attached as (``replica.``, see
``kiosk.data.database``): the journal's are the connection's own file.
SQL text is built only from the constant column lists below (hence the ``noqa: S608`` marks);
every value, and above all anything derived from a scanned code, goes through a placeholder.

Plain text only: nothing here touches a database, so nothing here fails at import; a statement
that no longer fits the schema fails where it runs, as a ``StoreError``.
"""

from __future__ import annotations

_MEMBER_COLUMNS = "id, organization_id, first_name, last_name, status, is_staff"
_MEMBERSHIP_COLUMNS = "id, member_id, type, start_date, end_date, remaining_classes, plan_id"
# The journal's columns in ``Checkin`` field order (``kiosk.data.journal`` reads rows in it too).
CHECKIN_COLUMNS = (
    "id, seq, door_id, decision, reason, member_id, membership_id, classes_used, "
    "replica_version, wall_time, boot_id, monotonic_ns, clock_quality, sync_state, pass_id"
)
_PASS_COLUMNS = "id, member_id, organization_id, public_key, period_s, status"  # noqa: S105

# Everything the scanner runs between reading a code and pulsing the relay. Each is an index
# lookup (tests check the query plans), so the door's latency does not grow with the gym.
DOOR_PATH_QUERIES: dict[str, str] = {
    "find_member_id": "SELECT id FROM replica.members WHERE code_hash = ?",
    # A phone pass by its id (the replica's primary key), and whether this door already accepted
    # the same (pass, step): read together, in one transaction (Replica.pass_lookup).
    "find_pass": f"SELECT {_PASS_COLUMNS} FROM replica.passes WHERE id = ?",  # noqa: S608
    "pass_used": "SELECT 1 FROM pass_uses WHERE pass_id = ? AND step = ?",
    "member": f"SELECT {_MEMBER_COLUMNS} FROM replica.members WHERE id = ?",  # noqa: S608
    # rowid order is the cloud's order, and it comes free with the member_id index.
    "memberships": (
        f"SELECT {_MEMBERSHIP_COLUMNS} FROM replica.memberships"  # noqa: S608
        " WHERE member_id = ? ORDER BY rowid"
    ),
    "plan": "SELECT name FROM replica.plans WHERE id = ?",
    "plan_windows": (
        "SELECT weekday, start_minute, end_minute FROM replica.plan_windows"
        " WHERE plan_id = ? ORDER BY weekday, start_minute"
    ),
    # Classes used that the replica's balances do not include yet: rows still pending upload, and
    # uploaded rows whose side effect lives in a cloud version newer than the replica's (between
    # the upload and the next pull). The literal ``classes_used > 0`` is what lets SQLite use the
    # partial index. The replica's version is read in the same statement, and the replica's
    # snapshot was taken first (member_facts reads the member before this): the journal read now
    # is at least as new, so a use is counted before the replica includes it or after, once.
    "pending_uses": (
        "SELECT membership_id, SUM(classes_used) FROM checkins"
        " WHERE member_id = ? AND classes_used > 0 AND membership_id IS NOT NULL"
        " AND (sync_state = 'pending' OR cloud_version >"
        " (SELECT CAST(value AS INTEGER) FROM replica.replica_meta WHERE key = 'version'))"
        " GROUP BY membership_id"
    ),
    "last_entry": (
        "SELECT wall_time, boot_id, monotonic_ns FROM checkins"
        " WHERE member_id = ? AND door_id = ? AND decision = 'granted'"
        " ORDER BY seq DESC LIMIT 1"
    ),
    "next_seq": (
        "UPDATE journal_counter SET last_seq = last_seq + 1 WHERE id = 1 RETURNING last_seq"
    ),
    "insert_checkin": (
        f"INSERT INTO checkins ({CHECKIN_COLUMNS})"  # noqa: S608
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    ),
    # An accepted pass code, in the transaction of its check-in; a pair already there fails the
    # transaction (nothing recorded, no pulse) rather than admitting a code twice.
    "insert_pass_use": "INSERT INTO pass_uses (pass_id, step, keep_until) VALUES (?, ?, ?)",
    # Pairs whose step left every window long ago: from the oldest end of the keep_until index.
    "prune_pass_uses": "DELETE FROM pass_uses WHERE keep_until < ?",
}
