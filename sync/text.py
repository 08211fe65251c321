"""Text made safe to store, log or show, for the device and the cloud alike.

Pure code, no I/O, imports nothing of ours: the device's packages and the reference cloud may both
use it.
"""

from __future__ import annotations

ONE_LINE_CHARS = 200


def one_line(text: object, limit: int = ONE_LINE_CHARS) -> str:
    """``str(text)`` as one printable line of at most ``limit`` characters (``limit`` >= 1):
    control characters (NUL, newlines, escapes, bidi overrides) become spaces, runs of spaces
    collapse, leading and trailing spaces go, and an overlong value is cut with an ellipsis (the
    ellipsis counts in the limit). Raises only what ``str(text)`` raises; bounded work even for
    a megabyte of input (only the first ``4 * limit`` characters are looked at)."""
    raw = str(text)[: limit * 4]
    flat = " ".join("".join(ch if ch.isprintable() else " " for ch in raw).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
