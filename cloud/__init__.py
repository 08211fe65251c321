"""The reference cloud service: the other end of the sync protocol (docs/sync-protocol.md).

A FastAPI application over SQLite (the embedded default) or PostgreSQL (production) that enrols
devices, serves each gym's replica (paged snapshots, changes since a version with a checksummed
checkpoint), accepts check-in uploads exactly once (idempotent by id, class-pack balance applied
only for newly stored rows), places offline events in time from clock anchors, answers heartbeats
(re-snapshot, re-send after a restore) and offers an admin API for gyms, plans, members,
memberships, devices and attendance.

Modules, from the bottom up:

- ``db``: the only module with SQL (queries, connection pool, transactions, both dialects);
- ``migrations``: numbered schema migrations for both dialects, applied at start-up;
- ``tokens``: secrets (device and admin tokens, enrolment codes) and ids: generation, hashing;
- ``replica``: replica rows, snapshot and change pages, checkpoints, the version counter;
- ``placement``: pure time placement of device events from anchors;
- ``uploads``: enrolment, device authentication, check-in uploads and heartbeats;
- ``admin``: the organisation's data (gyms, plans, members, memberships, hours, closures, tokens,
  devices, attendance) and the tombstone purge;
- ``importer``: members from CSV;
- ``errors``: what service functions raise, and the HTTP status each becomes;
- ``app`` (with ``api_device`` and ``api_admin``): the HTTP surface; ``serve``: serving it, in one
  process or several worker processes on one port; ``embedded``: the app in a background thread on
  a loopback port; ``cli``: the ``cloud`` commands.

Entry points for other code: ``app.create_app(database_url, clock=None)``,
``embedded.EmbeddedCloud(database_url).start()``, ``cli.register(subparsers)`` and the service
functions in ``admin`` (``create_organization``, ``create_enrolment_code``, ``save_member``, ...),
each run inside ``db.Database(url).transact(...)``.
"""
