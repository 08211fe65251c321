"""The door path's SQL: every statement the scanner runs between reading a code and pulsing the
relay, in one table (``DOOR_PATH_QUERIES``) so their cost can be checked in one place.

Each is an index lookup (``tests/test_store.py`` checks the query plans), so the door's latency
does not grow with the gym. ``kiosk.data.replica`` runs the reads (``Replica.find_member_id``,
``Replica.pass_lookup``, ``Replica.member_facts``), ``kiosk.data.journal`` the writes
(``Journal.append_checkin``: the sequence, the row and, for a phone pass, its use and the prune of
old uses; for a grant, its passage wait or its exit event; ``Journal.append_event``: a door
event and the end of its wait).
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
# The door events' columns in ``DoorEvent`` field order (``kiosk.data.journal`` reads them in it).
EVENT_COLUMNS = (
    "id, seq, door_id, kind, checkin_id, wall_time, boot_id, monotonic_ns, clock_quality, "
    "sync_state"
)
# A granted check-in ``c`` the turnstile did not turn for (its ``annulled`` event), by the
# door_events_by_checkin index.
_NOT_ANNULLED = (
    "NOT EXISTS (SELECT 1 FROM door_events AS e WHERE e.checkin_id = c.id AND e.kind = 'annulled')"
)

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
    "plan": "SELECT name, max_visits_per_day FROM replica.plans WHERE id = ?",
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
    # An annulled grant (the turnstile never turned) used no class: the cloud gives it back when
    # the event arrives, so it is never counted here.
    "pending_uses": (
        "SELECT membership_id, SUM(classes_used) FROM checkins AS c"  # noqa: S608
        " WHERE member_id = ? AND classes_used > 0 AND membership_id IS NOT NULL"
        " AND (sync_state = 'pending' OR cloud_version >"
        " (SELECT CAST(value AS INTEGER) FROM replica.replica_meta WHERE key = 'version'))"
        f" AND {_NOT_ANNULLED}"
        " GROUP BY membership_id"
    ),
    # Anti-passback: the newest grant the member did not walk away from.
    "last_entry": (
        "SELECT wall_time, boot_id, monotonic_ns FROM checkins AS c"  # noqa: S608
        " WHERE member_id = ? AND door_id = ? AND decision = 'granted'"
        f" AND {_NOT_ANNULLED}"
        " ORDER BY seq DESC LIMIT 1"
    ),
    # A plan's visit limit: the member's grants at this door, newest first, read until one is
    # older than today (Replica.member_facts stops the walk).
    "recent_entries": (
        "SELECT wall_time FROM checkins AS c"  # noqa: S608
        " WHERE member_id = ? AND door_id = ? AND decision = 'granted'"
        f" AND {_NOT_ANNULLED}"
        " ORDER BY seq DESC"
    ),
    "next_seq": (
        "UPDATE journal_counter SET last_seq = last_seq + 1 WHERE id = 1 RETURNING last_seq"
    ),
    "insert_checkin": (
        f"INSERT INTO checkins ({CHECKIN_COLUMNS})"  # noqa: S608
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    ),
    # A grant's passage to wait for (the entry input is wired), in the transaction of its
    # check-in; an exit-side scanner's grant is an exit event in that transaction instead.
    "insert_passage_wait": (
        "INSERT INTO passage_waits (checkin_id, seq, door_id, boot_id, deadline_ns, deadline_wall)"
        " VALUES (?, ?, ?, ?, ?, ?)"
    ),
    "insert_event": (
        f"INSERT INTO door_events ({EVENT_COLUMNS})"  # noqa: S608
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    ),
    # The outcome of a wait (entry or annulled) is written only when this deletes its row.
    "delete_passage_wait": "DELETE FROM passage_waits WHERE checkin_id = ?",
    # An accepted pass code, in the transaction of its check-in; a pair already there fails the
    # transaction (nothing recorded, no pulse) rather than admitting a code twice.
    "insert_pass_use": "INSERT INTO pass_uses (pass_id, step, keep_until) VALUES (?, ?, ?)",
    # Pairs whose step left every window long ago: from the oldest end of the keep_until index.
    "prune_pass_uses": "DELETE FROM pass_uses WHERE keep_until < ?",
}
