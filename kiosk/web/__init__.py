"""The owner's local page (``kiosk web``): is the door working, is it synced, who came in, why was
someone refused (DESIGN §9).

Its own process, so a hung page can never stall the door. It reads the door's database read-only
and writes only ``control.sqlite`` (the owner's requests and the audit log, ``kiosk.data.control``).

Modules, from the pure core out:

- ``words``: reasons, states and errors in the owner's words; names masked as configured; ages.
- ``device_health``: grading the device's figures OK / WARNING / PROBLEM (pure), reading ``/sys``.
- ``auth``: sessions, CSRF checks, login throttling, known devices and the ``Host`` check (pure,
  on an injected monotonic clock).
- ``audit_limits``: how many audit rows and log lines refusals may cause (pure).
- ``views``: the data each part of the page shows, as plain dicts (pure).
- ``sources``: reading those figures from the two databases, the system and the disk.
- ``metrics``: the Prometheus text; ``diagnostics``: the downloadable bundle.
- ``passcheck``: the owner password checked in a short-lived child process (scrypt's 32 MiB
  never counts against the page's memory).
- ``app``: the Starlette routes (``create_app``); ``commands``: ``kiosk web`` and
  ``kiosk web set-password``.

Importing this package imports nothing: ``kiosk`` builds its command line from ``commands``.
"""
