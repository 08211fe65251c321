"""The sync protocol between the kiosk and the cloud (DESIGN §8, docs/sync-protocol.md).

- ``sync.protocol``: the message shapes both ends share, their validation, row hashes and checksums;
- ``sync.client``: the device's HTTP client (the only module that imports httpx);
- ``sync.agent``: the device's sync agent (``kiosk sync``): pushes the journal, pulls the replica,
  heartbeats, backs off;
- ``sync.identity``: the device's credentials file written at enrolment;
- ``sync.cloud``: the reference cloud service (``kiosk cloud serve``), on SQLite or PostgreSQL.
"""
