"""systemd readiness and watchdog notifications (sd_notify), without a dependency.

The protocol is one datagram of ``KEY=VALUE`` lines to the socket named by ``$NOTIFY_SOCKET``. When the
variable is unset (a laptop, the demo, tests) every call is a no-op.
"""

from __future__ import annotations

import os
import socket
import time
from collections import deque


class Notifier:
    """Sends READY, WATCHDOG, STATUS and STOPPING to systemd.

    ``watchdog()`` is rate-limited to once per ``min_interval_s``: the scanner calls it for every
    frame, and it must only be called while frames really arrive, so a dead camera makes systemd
    restart the service.
    """

    def __init__(self, address: str | None = None, min_interval_s: float = 1.0) -> None:
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):  # abstract namespace socket
            address = "\0" + address[1:]
        self._address = address or None
        self._min_ns = int(min_interval_s * 1e9)
        self._last_watchdog_ns: int | None = None
        self._ready = False
        # The latest messages, for tests and diagnostics; bounded because the watchdog is fed
        # once a second for as long as the daemon runs.
        self.sent: deque[str] = deque(maxlen=64)

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def _send(self, message: str) -> None:
        self.sent.append(message)
        if self._address is None:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.connect(self._address)
                sock.sendall(message.encode())
        except OSError:
            # A failed notification must never stop the door; systemd will notice on its own.
            pass

    def ready(self, status: str = "") -> None:
        if not self._ready:
            self._ready = True
            self._send("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def watchdog(self, now_ns: int | None = None) -> None:
        now_ns = time.monotonic_ns() if now_ns is None else now_ns
        if self._last_watchdog_ns is None or now_ns - self._last_watchdog_ns >= self._min_ns:
            self._last_watchdog_ns = now_ns
            self._send("WATCHDOG=1")

    def status(self, text: str) -> None:
        self._send(f"STATUS={text}")

    def stopping(self) -> None:
        self._send("STOPPING=1")
