"""QR decoding with OpenCV's ``QRCodeDetector``: for the decode bench's comparison and
``kiosk decode`` only (slower and less robust than zxing-cpp on our frames; ``kiosk bench`` shows
it). OpenCV is imported in the constructor."""

from __future__ import annotations

import numpy as np

from hardware.protocols import Decoded, DecoderUnavailable


class OpenCVDecoder:
    """Reads one QR code per frame with ``cv2.QRCodeDetector.detectAndDecode``.

    Raises ``DecoderUnavailable`` with an install hint when OpenCV is missing, ``ValueError`` for a frame
    that is not a 2-D ``uint8`` array; never raises on image content (OpenCV errors on odd images
    count as "nothing read").
    """

    name = "opencv"

    def __init__(self) -> None:
        try:
            import cv2
        except ImportError as exc:
            raise DecoderUnavailable(
                "OpenCV decoder unavailable: install python3-opencv (apt) or "
                f"opencv-python-headless (pip) ({exc})"
            ) from exc
        self._cv2 = cv2
        self._detector = cv2.QRCodeDetector()

    def decode(self, pixels: np.ndarray) -> list[Decoded]:
        """The payload of the QR code OpenCV finds in ``pixels``, or []."""
        if not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8 or pixels.ndim != 2:
            raise ValueError(
                f"OpenCV decoder: expected a 2-D uint8 grey frame, got "
                f"{getattr(pixels, 'dtype', type(pixels).__name__)} {getattr(pixels, 'shape', '?')}"
            )
        try:
            text, _points, _straight = self._detector.detectAndDecode(np.ascontiguousarray(pixels))
        except self._cv2.error:
            return []
        if not text:
            return []
        # OpenCV hands back text, not the symbol's bytes; UTF-8 restores ASCII payloads exactly.
        return [Decoded(payload=text.encode("utf-8", "surrogateescape"), decoder=self.name)]
