"""Identifiers: UUIDv7 check-in ids (RFC 9562) and the kernel's boot id.

A UUIDv7 starts with the Unix time in milliseconds, so ids sort by creation time and index well;
the remaining 74 bits are random, which makes them safe idempotency keys across devices.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from pathlib import Path

_lock = threading.Lock()
_last_ms = 0
_last_rand = 0


def uuid7(now_ms: int | None = None) -> uuid.UUID:
    """A new UUIDv7. Ids made in the same millisecond by this process still increase: the random
    tail is incremented instead of redrawn (RFC 9562 §6.2 method 2)."""
    global _last_ms, _last_rand
    with _lock:
        ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
        if ms <= _last_ms:
            ms = _last_ms
            rand = _last_rand + 1
        else:
            rand = int.from_bytes(os.urandom(10), "big") >> 6  # 74 random bits
        rand &= (1 << 74) - 1
        _last_ms, _last_rand = ms, rand
    # Built from the locals taken under the lock: another thread may already have moved on.
    rand_a = (rand >> 62) & 0xFFF
    rand_b = rand & ((1 << 62) - 1)
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b
    return uuid.UUID(int=value)


def boot_id(path: Path = Path("/proc/sys/kernel/random/boot_id")) -> str:
    """The kernel's id for this boot; monotonic times are only comparable within one boot. Falls back
    to a per-process random id where /proc is unavailable (not Linux), which is the safe direction:
    two processes never treat each other's monotonic times as comparable."""
    try:
        return path.read_text().strip()
    except OSError:
        return f"nonlinux-{uuid.uuid4()}"
