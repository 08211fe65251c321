"""The installer's test card: a QR code the door reads but never opens for.

``TEST_CODE`` is a valid static code (so the whole decode-and-decide path runs) that no member is
ever given: the door answers it with ``unknown_code`` (a red light, the door stays shut), and
``kiosk selftest`` recognises it as proof that camera and decoder work. ``kiosk testcard`` writes it
as a printable PNG and draws it in the terminal, so it can also be shown to the camera on a
laptop or phone screen.

segno (pure Python) renders the symbol; it is imported only inside the functions that need it.
"""

from __future__ import annotations

from pathlib import Path

from sync.credentials import StaticCode, parse_payload

# In docs/install-pi.md: never issue this code to a member. It is a valid static code, so the
# scanner decides it like any card (unknown_code) instead of calling it malformed.
TEST_CODE = "FITFLOW-TESTCARD"

# Modules of quiet zone around the symbol: 4 is the standard's minimum.
BORDER_MODULES = 4

_ANSI_RESET = "\x1b[0m"
# Upper half block: the foreground colour paints the top module, the background the bottom one.
_UPPER_HALF = "\u2580"


class TestCardError(Exception):
    """The card cannot be made (bad code, segno missing, file not writable)."""

    __test__ = False  # not a pytest test class


def check_code(code: str) -> str:
    """``code`` if it is a valid static code (what a printed card holds), else TestCardError."""
    if not isinstance(parse_payload(code), StaticCode) or parse_payload(code).code != code:
        raise TestCardError(
            "a test card code must be 4 to 64 characters from A-Z, a-z, 0-9, '.', '_' and '-'"
        )
    return code


def is_test_code(payload: bytes | str, code: str = TEST_CODE) -> bool:
    """True when a decoded payload is the test card (scanner padding around it ignored)."""
    credential = parse_payload(payload)
    return isinstance(credential, StaticCode) and credential.code == code


def _symbol(code: str):
    try:
        import segno
    except ImportError as exc:
        raise TestCardError(
            f"the test card needs segno ({exc}); install it into the kiosk's venv with "
            f"`pip install segno` (pure Python, it pulls nothing else in)"
        ) from exc
    # Level M like the synthetic frames and most printed cards; boosted if it fits for free.
    return segno.make_qr(check_code(code), error="m")


def matrix(code: str = TEST_CODE) -> list[list[bool]]:
    """The symbol's modules (True = dark), quiet zone included, row by row."""
    symbol = _symbol(code)
    return [[bool(m) for m in row] for row in symbol.matrix_iter(border=BORDER_MODULES)]


def write_png(path: Path, code: str = TEST_CODE, *, module_px: int = 16) -> Path:
    """Write the test card as a black-on-white PNG, ``module_px`` pixels per module (the default
    code is 29 modules with its quiet zone: 464 px, about 4 cm printed at 300 dpi, comfortable at
    20-50 cm from the camera). Returns the path. Raises TestCardError when the file cannot be
    written."""
    if module_px < 1:
        raise TestCardError(f"module size must be at least 1 pixel, got {module_px}")
    symbol = _symbol(code)
    path = Path(path)
    try:
        symbol.save(str(path), kind="png", scale=module_px, border=BORDER_MODULES)
    except OSError as exc:
        raise TestCardError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path


def terminal_art(code: str = TEST_CODE, *, ansi: bool = True) -> str:
    """The symbol drawn with half blocks, two module rows per text line.

    ``ansi`` True paints black and white explicitly with ANSI colours, so the code reads the same
    on dark and light terminals. ``ansi`` False draws light modules as ink (``█``, ``▀``, ``▄``)
    and dark ones as blanks: right for the usual light-on-dark terminal, and plain text for files.
    """
    rows = matrix(code)
    if len(rows) % 2:
        rows.append([False] * len(rows[0]))
    lines = []
    for top, bottom in zip(rows[0::2], rows[1::2], strict=True):
        if ansi:
            cells = []
            for upper, lower in zip(top, bottom, strict=True):
                fg = "30" if upper else "97"  # black or bright white
                bg = "40" if lower else "107"
                cells.append(f"\x1b[{fg};{bg}m{_UPPER_HALF}")
            lines.append("".join(cells) + _ANSI_RESET)
        else:
            glyphs = {
                (False, False): "\u2588",
                (False, True): "\u2580",
                (True, False): "\u2584",
                (True, True): " ",
            }
            lines.append("".join(glyphs[(u, lo)] for u, lo in zip(top, bottom, strict=True)))
    return "\n".join(lines) + "\n"
