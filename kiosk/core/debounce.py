"""One decision per presentation of a code, not one per frame.

A member holds a card in view for a second or two; the camera sees it in dozens of frames. A code is
decided when it appears and then ignored for as long as it stays in view, plus ``cooldown_s`` after it
was last seen. A different code is decided immediately.
"""

from __future__ import annotations


class Debouncer:
    """Tracks when each code key was last seen (monotonic ns). Memory stays bounded: entries older
    than the cooldown are dropped as new codes arrive."""

    def __init__(self, cooldown_s: float) -> None:
        self._cooldown_ns = int(cooldown_s * 1e9)
        self._last_seen: dict[bytes, int] = {}

    def admit(self, key: bytes, now_ns: int) -> bool:
        """True when this sighting of ``key`` should be decided; records the sighting either way."""
        last = self._last_seen.get(key)
        self._last_seen[key] = now_ns
        if last is not None and now_ns - last < self._cooldown_ns:
            return False
        if len(self._last_seen) > 64:
            self._forget_older_than(now_ns - self._cooldown_ns)
        return True

    def forget(self, key: bytes) -> None:
        """Drop ``key``, so its next sighting is decided (used when a decision could not be
        recorded)."""
        self._last_seen.pop(key, None)

    def _forget_older_than(self, cutoff_ns: int) -> None:
        self._last_seen = {k: t for k, t in self._last_seen.items() if t >= cutoff_ns}
