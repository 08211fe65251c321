"""The device's data: its databases (the only SQL on the Pi) and its own files.

- ``store``: the door's database (``kiosk.db``): the check-in journal, the member replica and the
  sync state;
- ``migrations``: its numbered schema migrations;
- ``control``: ``control.sqlite``, the owner's requests, the audit log and the door's live health;
- ``files``: the one safe writer for the kiosk's own files (atomic, mode and owner, no links).

May import: ``kiosk.core`` and ``sync``. Never HTTP, GPIO, the owner page or the sync agent.
"""
