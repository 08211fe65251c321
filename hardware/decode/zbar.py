"""QR decoding with pyzbar (the zbar library): the configurable alternative decoder and the
decode bench's baseline ("all symbologies" is what most Raspberry Pi projects run).

pyzbar and its native library libzbar0 are optional; both are imported in the constructor so this
module imports anywhere.
"""

from __future__ import annotations

import numpy as np

from hardware.protocols import Decoded, DecoderUnavailable


class PyzbarDecoder:
    """Reads QR codes with zbar. ``all_symbologies`` also searches every 1-D barcode type (slower,
    and a source of false reads at a door): only the bench's baseline sets it.

    Raises ``DecoderUnavailable`` with an install hint when pyzbar or libzbar0 is missing, and
    ``ValueError`` for a frame that is not a 2-D ``uint8`` array; never raises on image content.
    """

    def __init__(self, all_symbologies: bool = False) -> None:
        try:
            from pyzbar import pyzbar
        except ImportError as exc:
            # pyzbar raises ImportError both when the package is missing and when it cannot load
            # the native library; the message tells which.
            raise DecoderUnavailable(
                "pyzbar decoder unavailable: install the zbar library with "
                f"'apt install libzbar0' and the package with 'pip install pyzbar' ({exc})"
            ) from exc
        self._pyzbar = pyzbar
        self._symbols = None if all_symbologies else [pyzbar.ZBarSymbol.QRCODE]
        self.all_symbologies = all_symbologies
        self.name = "pyzbar_all" if all_symbologies else "pyzbar"

    def decode(self, pixels: np.ndarray) -> list[Decoded]:
        """All payloads readable in ``pixels`` (grey, height x width); [] when none."""
        if not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8 or pixels.ndim != 2:
            raise ValueError(
                f"pyzbar decoder: expected a 2-D uint8 grey frame, got "
                f"{getattr(pixels, 'dtype', type(pixels).__name__)} {getattr(pixels, 'shape', '?')}"
            )
        # zbar reads a packed buffer: a strided view (a crop) must be made contiguous first.
        found = self._pyzbar.decode(np.ascontiguousarray(pixels), symbols=self._symbols)
        return [Decoded(payload=bytes(symbol.data), decoder=self.name) for symbol in found]
