"""QR decoders behind ``hardware.protocols.Decoder``.

- ``zxing``: zxing-cpp, the default (fastest and most robust on our frames);
- ``zbar``: pyzbar (needs libzbar0), the alternative and the benchmark's baseline;
- ``opencv``: OpenCV's QRCodeDetector.
"""
