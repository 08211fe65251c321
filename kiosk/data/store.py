"""The door's database (``kiosk.db``, with the replica file beside it) as one object: ``Store``.

One SQLite file, shared by the scanner, the sync agent and the owner page (three processes), in
WAL mode so readers never block the door, with the member replica in a file of its own beside it,
attached to every store's connection. They hold things of different worth, each kept by its own
module:

- the **journal** (check-ins, door events, the grants waiting for their passage and the phone
  passes' replay memory, ``kiosk.data.journal``): facts recorded at the door, the one thing that
  cannot be rebuilt; committed with ``synchronous=FULL`` before the door acts;
- the **replica** (members, memberships, phone passes, plans, hours, closures,
  ``kiosk.data.replica``): a copy of the cloud's data in ``kiosk.db-replica-<id>``, rebuildable
  by pulling again; a new one is built in a new file and switched in by a pointer, so replacing it
  never takes the journal's write lock (``kiosk.data.database`` explains the files and why);
- the **sync agent's records** (clock anchors, its status, the seq floor,
  ``kiosk.data.sync_state``).

``kiosk.data.database`` opens the file and runs every transaction (``StoreError`` and its plain
words live there); ``kiosk.data.door_path`` holds the statements the door runs per scan;
``kiosk.data.dbfile`` works on whole files without a ``Store`` (inspection, backup, exclusive
access); ``kiosk.data.migrations`` is the schema's history.

Why mixins: the three parts share one connection, one lock and one transaction discipline (a
``member_facts`` read sees the journal's pending class uses in the same transaction as the
replica, attached to that connection),
and every caller knows a single ``Store`` with one flat set of methods. So each part is a
subclass of ``Database`` holding only its own methods, and ``Store`` is their union; composition
(``store.journal.append_checkin``) would have changed every caller for no gain, and needed either
the connection shared between objects or delegating methods by the dozen.

Failure modes: those of its parts; every database failure is a ``StoreError`` whose message names
the file, what was lost (if anything) and what to do, and nothing deletes or recreates an existing
file.
"""

from __future__ import annotations

from datetime import datetime

from kiosk.core.occupancy import Occupancy, OccupancyRules, count, last_reset
from kiosk.data.day_report import DayReport
from kiosk.data.journal import Journal
from kiosk.data.replica import Replica
from kiosk.data.sync_state import SyncRecords


class Store(Journal, Replica, SyncRecords, DayReport):
    """The kiosk's database. Create with ``Store.open``; close with ``close()`` or ``with``.

    Safe to share between threads of one process (calls are serialised by a lock); each process
    opens its own ``Store``. Every method raises ``StoreError`` (``kiosk.data.database``) on
    database failures, including a call after ``close()``. Its methods live with their tables:
    ``Database`` (opening, closing, checks), ``Journal``, ``Replica``, ``SyncRecords`` and
    ``DayReport`` (the owner page's day figures, read only).
    """

    def occupancy(self, door_id: str, rules: OccupancyRules, now: datetime) -> Occupancy:
        """Who is inside by ``door_id``'s journal at ``now`` (aware; the door's effective time):
        the movements since the gym's last closing before ``now`` (``Store.door_movements``, the
        replica's opening hours), counted by ``kiosk.core.occupancy.count`` under ``rules``. The
        door loop's health report and the sync agent's heartbeat both come from here. Raises
        StoreError; ValueError for a naive ``now``."""
        since = last_reset(self.site_facts().opening_hours, now, rules.timezone)
        return count(
            self.door_movements(since, door_id),
            since=since,
            now=now,
            confirmed=rules.confirmed,
            max_visit=rules.max_visit,
            capacity=rules.capacity,
        )
