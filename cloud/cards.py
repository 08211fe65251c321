"""Printable member cards for static codes: the QR code of a member's card code with their name,
the organisation's (and optionally a gym's) name, and the code in text under the symbol.

- ``card_svg``: the whole card as SVG at the ID-1 (credit card) size, 85.6 x 54 mm, drawn in
  tenths of a millimetre. The symbol is a path of the QR's dark modules (``shape-rendering:
  crispEdges``), so it prints sharp at any resolution; text is SVG text in the printer's fonts,
  squeezed to fit (``textLength``) when a name is long. Every text is XML-escaped.
- ``card_png``: the symbol alone (with its 4-module quiet zone) as a black-on-white PNG, for
  card-printing software that lays out the text itself: segno writes PNG without a drawing library,
  and text needs one (Pillow or Cairo), which the cloud does not carry;
- ``symbol_svg``: any text's symbol alone as a small SVG in module units (the console shows a phone
  pass activation link with it).

segno (pure Python, a core dependency) makes the symbol: error correction level M, raised when it
fits in the same version. A sheet of several cards as PDF is not offered: segno does not compose
pages, and a PDF writer would be a new dependency; printing several SVG cards from a browser or
a layout program does the same.
"""

from __future__ import annotations

import io
from xml.sax.saxutils import escape

import segno

CARD_WIDTH_MM = 85.6
CARD_HEIGHT_MM = 54.0
BORDER_MODULES = 4  # the quiet zone the standard asks for
PNG_MODULE_PX = 10  # a 45-module symbol is 450 px: about 38 mm at 300 dpi

# Layout in tenths of a millimetre (the SVG's user units).
_W, _H = 856, 540
_MARGIN = 30
_QR_SIDE = 380  # the symbol with its quiet zone: 38 mm
_TEXT_X, _TEXT_RIGHT = 450, _W - _MARGIN
_SANS = "DejaVu Sans, Helvetica, Arial, sans-serif"
_MONO = "DejaVu Sans Mono, Menlo, Consolas, monospace"
# Average advance of a character as a share of the font size (sans-serif and monospace): used to
# decide when a text needs squeezing into its box.
_SANS_ADVANCE, _MONO_ADVANCE = 0.6, 0.6


def symbol(code: str) -> segno.QRCode:
    """The QR symbol of a card code (level M or better)."""
    return segno.make_qr(code, error="m")


def qr_modules(code: str) -> list[list[bool]]:
    """The symbol's modules without quiet zone, row by row (True = dark)."""
    return [[bool(m) for m in row] for row in symbol(code).matrix_iter(border=0)]


def _qr_path(modules: list[list[bool]]) -> str:
    """An SVG path of the dark modules, in module units, offset by the quiet zone: one rectangle
    per horizontal run of dark modules."""
    parts = []
    for y, row in enumerate(modules):
        x = 0
        while x < len(row):
            if not row[x]:
                x += 1
                continue
            start = x
            while x < len(row) and row[x]:
                x += 1
            width = x - start
            parts.append(f"M{start + BORDER_MODULES} {y + BORDER_MODULES}h{width}v1h-{width}z")
    return "".join(parts)


def _text(
    value: str, x: float, y: float, size: float, *, room: float, font: str, advance: float, **attrs
) -> str:
    """One line of SVG text, squeezed into ``room`` units when it would not fit."""
    # font_weight → font-weight; class_ → class.
    names = {k: k.rstrip("_").replace("_", "-") for k in attrs}
    extra = "".join(f' {names[k]}="{escape(str(v))}"' for k, v in attrs.items())
    if len(value) * size * advance > room:
        extra += f' textLength="{room:g}" lengthAdjust="spacingAndGlyphs"'
    return (
        f'<text x="{x:g}" y="{y:g}" font-family="{font}" font-size="{size:g}"{extra}>'
        f"{escape(value)}</text>"
    )


def card_svg(
    code: str,
    *,
    first_name: str,
    last_name: str,
    organization_name: str,
    gym_name: str | None = None,
) -> str:
    """The member's card as an SVG document (85.6 x 54 mm): the symbol on the left with the code
    under it, the organisation (and gym) name and the member's name on the right."""
    modules = qr_modules(code)
    side = len(modules) + 2 * BORDER_MODULES
    scale = _QR_SIDE / side
    room = _TEXT_RIGHT - _TEXT_X
    # A long code goes on two lines under the symbol, so its characters stay readable.
    code_lines = (
        [code] if len(code) <= 24 else [code[: (len(code) + 1) // 2], code[(len(code) + 1) // 2 :]]
    )
    code_size = min(34.0, _QR_SIDE / (len(code_lines[0]) * _MONO_ADVANCE))
    lines = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{CARD_WIDTH_MM:g}mm" '
        f'height="{CARD_HEIGHT_MM:g}mm" viewBox="0 0 {_W} {_H}">',
        f"<title>{escape(f'{first_name} {last_name}')}: {escape(organization_name)}</title>",
        # The cut line, just inside the card's edge, with the ID-1 corner radius (3.18 mm).
        f'<rect x="1" y="1" width="{_W - 2}" height="{_H - 2}" rx="32" ry="32" fill="#fff" '
        'stroke="#999" stroke-width="2"/>',
        f'<g id="qr" transform="translate({_MARGIN} {_MARGIN}) scale({scale:.6f})">',
        f'<rect width="{side}" height="{side}" fill="#fff"/>',
        f'<path d="{_qr_path(modules)}" fill="#000" shape-rendering="crispEdges"/>',
        "</g>",
        *(
            _text(
                line,
                _MARGIN + _QR_SIDE / 2,
                _MARGIN + _QR_SIDE + 30 + code_size * (0.8 + 1.2 * n),
                code_size,
                room=_QR_SIDE,
                font=_MONO,
                advance=_MONO_ADVANCE,
                text_anchor="middle",
                class_="code",
            )
            for n, line in enumerate(code_lines)
        ),
        _text(
            organization_name,
            _TEXT_X,
            90,
            42,
            room=room,
            font=_SANS,
            advance=_SANS_ADVANCE,
            font_weight="bold",
            id="organization",
        ),
    ]
    if gym_name:
        lines.append(
            _text(
                gym_name,
                _TEXT_X,
                140,
                30,
                room=room,
                font=_SANS,
                advance=_SANS_ADVANCE,
                fill="#444",
                id="gym",
            )
        )
    for n, (name, field) in enumerate(((first_name, "first_name"), (last_name, "last_name"))):
        lines.append(
            _text(
                name,
                _TEXT_X,
                330 + n * 64,
                52,
                room=room,
                font=_SANS,
                advance=_SANS_ADVANCE,
                font_weight="bold",
                id=field,
            )
        )
    lines.append("</svg>")
    return "\n".join(lines) + "\n"


def symbol_svg(text: str) -> str:
    """The QR symbol of ``text`` (level M or better) with its quiet zone as an SVG document
    without an XML declaration, one unit a module (scale it with CSS or width/height): a white
    square and one path of the dark modules, drawn like the card's (``M x y h w v1 h-w z`` per
    run)."""
    modules = qr_modules(text)
    side = len(modules) + 2 * BORDER_MODULES
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {side} {side}" '
        f'width="{side * 8}" height="{side * 8}">'
        f'<rect width="{side}" height="{side}" fill="#fff"/>'
        f'<path d="{_qr_path(modules)}" fill="#000" shape-rendering="crispEdges"/></svg>'
    )


def card_png(code: str, *, module_px: int = PNG_MODULE_PX) -> bytes:
    """The symbol of a card code with its quiet zone as a PNG, ``module_px`` pixels a module."""
    out = io.BytesIO()
    symbol(code).save(out, kind="png", scale=module_px, border=BORDER_MODULES)
    return out.getvalue()
