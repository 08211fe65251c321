"""The contract between a door and the cloud, shared by both ends (see docs/sync-protocol.md).

- ``protocol``: the message shapes, their validation, canonical row hashes and checksums, and the
  UTC time text both ends write;
- ``credentials``: what a member's code looks like (the parser and its scheme registry) and the
  salted hash under which the replica stores it.

Imports nothing of ours: the device (``kiosk``) and the reference cloud (``cloud``) both build on it,
so neither ever has to import the other.
"""
