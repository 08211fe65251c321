"""The device's data: its databases (the only SQL on the Pi) and its own files.

The door's database (``kiosk.db`` and the replica file beside it, see docs/architecture.md, "The
data model"):

- ``store``: ``Store``, the one object the processes open, composed of the parts below;
- ``database``: opening the file (WAL, pragmas, migrations), the replica's files (the pointer, the
  writers' lock, building and switching a replica file, attaching the one in use), the guarded read
  and write transactions, ``StoreError`` and its plain words, times as text;
- ``journal``: the check-ins and the door events (append, the grants waiting for their passage,
  the upload queue of both, settling, pruning, the owner page's decisions, the door's movements);
- ``replica``: the cloud's members, plans, hours and closures (the door's reads, snapshots built in
  a new file, staged changes, checkpoints, checksums), ``ReplicaSnapshot`` and ``snapshot_rows``;
- ``sync_state``: the sync agent's clock anchors, its status and the journal's seq floor;
- ``day_report``: the owner page's day figures (entries per minute, passage events by kind), read
  only;
- ``door_path``: the statements the door runs between a scan and the relay pulse;
- ``dbfile``: whole files without a ``Store``: inspection, online backup, exclusive access;
- ``wal``: switching a file to write-ahead logging while other processes open it too;
- ``migrations``: its numbered schema migrations, and the replica file's schema.

Beside it:

- ``control``: ``control.sqlite``, the owner's requests, the audit log and the door's live health;
- ``files``: the one safe writer for the kiosk's own files (atomic, mode and owner, no links).

May import: ``kiosk.core`` and ``sync``. Never HTTP, GPIO, the owner page or the sync agent.
"""
