"""The door process (``kiosk run``): camera frames in, one decision and one relay pulse out.

- ``loop``: the door loop (read, debounce, decide, journal, then act), its health and feedback,
  the turnstile's passages (grants confirmed or annulled, tailgating, exits) and the occupancy;
- ``reader``: the image pipeline from a frame to a code (motion gate, decoder, retries on a miss);
- ``parts``: building the camera, decoder, relay, signal and passage inputs from the configuration;
- ``systemd``: readiness and watchdog notifications.

May import: ``kiosk.core``, ``kiosk.data``, ``kiosk.config``, ``hardware`` and ``sync``. Never the
owner page, the sync agent or the development tools: the door must keep working when those break.
"""
