"""Adapters for the physical world, each behind a small protocol (see ``hardware.protocols``).

Vendor libraries (picamera2, OpenCV, pyzbar, zxing-cpp, gpiozero pin backends) are imported only
inside the adapter module that needs them, so the rest of the project imports on any laptop.
"""
