"""QR decoders behind ``hardware.protocols.Decoder``.

- ``backends``: the decoders by name, and building one (``make_decoder``);
- ``zxing``: zxing-cpp, the default (fastest and most robust on our frames; also reports symbols
  it located but could not read, which the door's reader retries);
- ``zbar``: pyzbar (needs libzbar0), the alternative and the benchmark's baseline;
- ``opencv``: OpenCV's QRCodeDetector, for comparison.
"""
