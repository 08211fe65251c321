"""The owner's local page (``kiosk web``): is the door working, is it synced, who came in, why was
someone refused (docs/operations.md#the-owners-page).

Its own process, so a hung page can never stall the door. It reads the door's database read-only
and writes only ``control.sqlite`` (the owner's requests and the audit log, ``kiosk.data.control``).

Modules, from the pure core out:

- ``words``: reasons, states and errors in the owner's words; names masked as configured; ages.
- ``device_health``: grading the device's figures OK / WARNING / PROBLEM (pure), reading ``/sys``.
- ``auth``: sessions, CSRF checks, login throttling, known devices and the ``Host`` check (pure,
  on an injected monotonic clock).
- ``audit_limits``: how many audit rows and log lines refusals may cause (pure).
- ``views``: the data each part of the page shows, as plain dicts (pure).
- ``sources``: the page's handles on the two databases (the door's read-only, reopened when it
  fails or is replaced; the control file) and the door's facts read through them, cached until
  another process commits.
- ``page_data``: what each part of the page shows (``PageData``): the door's facts, the scanner's
  report, the audit log and requests, the graded checks, the metrics and the diagnostics bundle,
  gathered from ``sources``, the system and the disk; and the page's writes to the control file.
- ``metrics``: the Prometheus text; ``diagnostics``: the downloadable bundle.
- ``passcheck``: the owner password checked in a short-lived child process (scrypt's 32 MiB
  never counts against the page's memory).
- ``app``: the HTTP side: the Starlette routes and handlers, sessions and security checks, and
  the app's assembly (``create_app``).
- ``serve``: the listening socket and uvicorn's bounded, quiet settings (``kiosk web`` and the
  demo serve the page with them).

Importing this package imports nothing. The commands ``kiosk web`` and ``kiosk web set-password``
are the command line's (``kiosk.cli.web``).
"""
