"""QR decoding with zxing-cpp: the project's default decoder (on the bench's 640x480 frames, 20x
faster than pyzbar with all symbologies and 35 points more robust; see docs/performance.md).

zxing-cpp is a core dependency, but like every vendor library it is imported when a decoder is
built, not when this module is: the decoder table (``hardware.decode.backends``) imports anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hardware.protocols import Decoded, DecoderUnavailable

# A located symbol's corners in image pixels: top-left, top-right, bottom-right, bottom-left.
Quad = tuple[tuple[int, int], tuple[int, int], tuple[int, int], tuple[int, int]]

# ``look``'s binarizers by name -> zxing-cpp's ``Binarizer`` member.
_BINARIZERS = {"local": "LocalAverage", "histogram": "GlobalHistogram", "fixed": "FixedThreshold"}


@dataclass(frozen=True, slots=True)
class Look:
    """What one zxing pass saw: the symbols it read, and the corners of QR symbols it located but
    could not read (a damaged, blurred or low-contrast code: evidence that a retry may pay off)."""

    decoded: list[Decoded]
    located: list[Quad]


def _check_pixels(pixels: np.ndarray) -> None:
    if not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8 or pixels.ndim != 2:
        kind = getattr(pixels, "dtype", type(pixels).__name__)
        shape = getattr(pixels, "shape", "?")
        raise ValueError(f"zxing decoder: expected a 2-D uint8 grey frame, got {kind} {shape}")


class ZxingDecoder:
    """Reads QR codes (the common Model 2 kind; never 1-D barcodes) with zxing-cpp.

    ``try_downscale`` lets ``decode`` also search zxing's own downscaled copies (library default;
    ``look`` never does, the production reader handles scale itself). ``try_invert`` also searches
    for light-on-dark codes (phones in dark mode); off by default because our credentials are
    printed and displayed dark-on-light and the extra search nearly doubles the cost of a frame
    without a code. Rotation search is off: it only matters for 1-D barcodes.

    Raises ``DecoderUnavailable`` when zxing-cpp is not installed, and ``ValueError`` for a frame
    that is not a 2-D ``uint8`` array (a programming error, not image content); never raises
    because of what the image shows.
    """

    name = "zxing"

    def __init__(self, *, try_downscale: bool = True, try_invert: bool = False) -> None:
        try:
            import zxingcpp
        except ImportError as exc:
            raise DecoderUnavailable(
                f"zxing decoder unavailable: install the zxing-cpp package ({exc})"
            ) from exc
        self._zxing = zxingcpp
        # Plain (Model 2) QR codes only: zxing-cpp 3 widened ``QRCode`` to a family that includes
        # Micro QR and rMQR, whose readers mistake a lone finder pattern for a tiny symbol (false
        # "located" hints) and cost time. zxing-cpp 2.x has no separate Model 2 format; its
        # ``QRCode`` is the plain kind.
        formats = zxingcpp.BarcodeFormat
        self._format = getattr(formats, "QRCodeModel2", formats.QRCode)
        self._binarizers = {
            name: getattr(zxingcpp.Binarizer, member) for name, member in _BINARIZERS.items()
        }
        self.try_downscale = try_downscale
        self.try_invert = try_invert

    def options(self) -> dict[str, object]:
        """The settings in effect, for the bench report and the owner page."""
        return {
            "formats": str(self._format),
            "try_downscale": self.try_downscale,
            "try_invert": self.try_invert,
        }

    def decode(self, pixels: np.ndarray) -> list[Decoded]:
        """All QR payloads readable in ``pixels`` (grey, height x width); [] when none."""
        _check_pixels(pixels)
        found = self._zxing.read_barcodes(
            pixels,
            formats=self._format,
            try_rotate=False,
            try_downscale=self.try_downscale,
            try_invert=self.try_invert,
        )
        return [
            Decoded(payload=bytes(code.bytes), decoder=self.name) for code in found if code.valid
        ]

    def look(self, pixels: np.ndarray, *, binarizer: str = "local") -> Look:
        """One pass at exactly this resolution (no internal downscaling), reporting located but
        unreadable symbols too. ``binarizer`` is ``"local"`` (zxing's default, adaptive),
        ``"histogram"`` (one global threshold from the histogram) or ``"fixed"`` (threshold 127).
        Raises ``ValueError`` for an unknown binarizer or a frame that is not 2-D ``uint8``."""
        _check_pixels(pixels)
        try:
            mode = self._binarizers[binarizer]
        except KeyError:
            known = ", ".join(_BINARIZERS)
            raise ValueError(
                f"zxing decoder: unknown binarizer {binarizer!r} (known: {known})"
            ) from None
        found = self._zxing.read_barcodes(
            pixels,
            formats=self._format,
            try_rotate=False,
            try_downscale=False,
            try_invert=self.try_invert,
            binarizer=mode,
            return_errors=True,
        )
        decoded: list[Decoded] = []
        located: list[Quad] = []
        for code in found:
            if code.valid:
                decoded.append(Decoded(payload=bytes(code.bytes), decoder=self.name))
            else:
                p = code.position
                located.append(
                    (
                        (p.top_left.x, p.top_left.y),
                        (p.top_right.x, p.top_right.y),
                        (p.bottom_right.x, p.bottom_right.y),
                        (p.bottom_left.x, p.bottom_left.y),
                    )
                )
        return Look(decoded=decoded, located=located)
