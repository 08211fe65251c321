"""The QR decoders by name: the one table that maps a name to the decoder class building it.

The config's ``decoder.backend`` accepts ``zxing`` and ``pyzbar``; ``kiosk decode`` and the bench
may also pick ``opencv``. The adapter modules import their library (zxing-cpp, pyzbar, OpenCV)
only when a decoder is built, so this table imports on any laptop.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

from hardware.decode.opencv import OpenCVDecoder
from hardware.decode.zbar import PyzbarDecoder
from hardware.decode.zxing import ZxingDecoder
from hardware.protocols import Decoder

# Listed best first: error messages show them in this order.
BACKENDS: Mapping[str, Callable[[], Decoder]] = MappingProxyType(
    {"zxing": ZxingDecoder, "pyzbar": PyzbarDecoder, "opencv": OpenCVDecoder}
)


def make_decoder(name: str) -> Decoder:
    """A plain decoder by name: ``"zxing"`` (default, fast, robust), ``"pyzbar"`` (needs libzbar0)
    or ``"opencv"`` (bench comparison only).

    Raises ``ValueError`` for an unknown name; the decoder's constructor raises
    ``DecoderUnavailable`` with an install hint when its library is missing.
    """
    try:
        factory = BACKENDS[name]
    except KeyError:
        raise ValueError(
            f"unknown decoder {name!r}; choose one of: {', '.join(BACKENDS)}"
        ) from None
    return factory()
