"""The device's sync agent (``kiosk sync``, ``kiosk enrol``).

- ``agent``: pushes the journal, pulls the replica, sends heartbeats, backs off;
- ``client``: the device's HTTP client, the only module on the Pi that imports httpx;
- ``identity``: the credentials file written at enrolment.

May import: ``kiosk.core``, ``kiosk.data`` and ``sync``. Never the door loop, the owner page or the
development tools.
"""
