"""The device's data: the only modules on the Pi that hold SQL.

- ``store``: the door's database (``kiosk.db``): the check-in journal, the member replica and the
  sync state;
- ``migrations``: its numbered schema migrations;
- ``control``: ``control.sqlite``, the owner's requests, the audit log and the door's live health.

May import: ``kiosk.core`` and ``sync``. Never HTTP, GPIO, the owner page or the sync agent.
"""
