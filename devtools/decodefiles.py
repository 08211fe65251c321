"""``kiosk decode IMAGE...``: read QR codes from image files with the production pipeline.

For installers and support: "does the kiosk read this card?" answered from a photo. Output is one
line per payload, ``path<TAB>payload``, or ``path<TAB>-`` when nothing was read, so it pipes into
``cut`` and ``grep``. Payloads are hostile input: they are escaped before they reach a terminal.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TextIO

from hardware.protocols import Decoder
from kiosk.door.reader import QrReader

_NAMED_ESCAPES = {"\t": "\\t", "\n": "\\n", "\r": "\\r", "\\": "\\\\"}


def terminal_safe(text: str | bytes) -> str:
    """``text`` with everything a terminal could act on escaped, repr-style.

    Bytes are decoded as UTF-8; bytes that are not valid UTF-8 become ``\\xNN``. Backslash, tab,
    newline and carriage return get their usual escapes; any other non-printable character
    (escape sequences, other control characters, bidirectional overrides, unassigned code points)
    becomes ``\\xNN``, ``\\uNNNN`` or ``\\UNNNNNNNN``. Printable text, non-ASCII letters included,
    is kept as it is.
    """
    if isinstance(text, bytes):
        # surrogateescape maps each invalid byte to U+DC80..U+DCFF, escaped back to \xNN below.
        text = text.decode("utf-8", errors="surrogateescape")
    return "".join(_escape(ch) for ch in text)


def _escape(ch: str) -> str:
    if ch in _NAMED_ESCAPES:
        return _NAMED_ESCAPES[ch]
    if ch.isprintable():
        return ch
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def _why_unreadable(path: str) -> str:
    if not os.path.exists(path):
        return "no such file"
    if os.path.isdir(path):
        return "is a directory, not an image"
    if not os.access(path, os.R_OK):
        return "permission denied"
    return "not an image OpenCV can read (or a damaged one)"


def decode_files(paths: Sequence[str], decoder: Decoder, out: TextIO, err: TextIO) -> int:
    """Decode each image file in ``paths`` with ``decoder`` inside the production pipeline
    (``QrReader`` with retries, without the motion gate: the images are unrelated). ``decoder`` may
    be a plain decoder or a ``QrReader``, whose own decoder is then used.

    Writes ``path<TAB>payload`` to ``out`` for every payload read (several codes: one line each) or
    ``path<TAB>-`` when none; a missing, unreadable or non-image file writes a message naming the
    path to ``err`` and ``path<TAB>-`` to ``out``. Video files are out of scope (not images).
    Returns 0: "no code in this picture" is an answer, not a failure. Raises ``RuntimeError`` with
    an install hint when OpenCV (needed to read image files) is missing.
    """
    try:
        import cv2
    except ImportError as exc:
        raise RuntimeError(
            "kiosk decode needs OpenCV to read image files: install python3-opencv (apt) or "
            f"opencv-python-headless (pip) ({exc})"
        ) from exc
    # Callers may hand in a ready pipeline: rebuild it around its decoder, without the gate.
    base = decoder.decoder if isinstance(decoder, QrReader) else decoder
    reader = QrReader(base, motion_gate=False)
    for path in paths:
        shown = terminal_safe(path)
        pixels = None
        if os.path.isfile(path):
            pixels = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
        if pixels is None or pixels.size == 0:
            err.write(f"kiosk decode: {shown}: cannot read image: {_why_unreadable(path)}\n")
            out.write(f"{shown}\t-\n")
            continue
        found = reader.decode(pixels)
        if not found:
            out.write(f"{shown}\t-\n")
        for symbol in found:
            out.write(f"{shown}\t{terminal_safe(symbol.payload)}\n")
    return 0
