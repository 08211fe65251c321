"""Adapters for the physical world, each behind a small protocol, and the fakes that stand in for
them.

- ``protocols``: the interfaces the door loop talks to (``FrameSource``, ``Decoder``, ``Door``,
  ``Signal``, ``PassageSensor``) and the values they exchange (``Frame``, ``Decoded``,
  ``Pattern``, ``PassageEvent``);
- ``gpio``: the relay, the LEDs, the buzzer and the passage inputs through gpiozero, and the pin
  backends;
- ``camera``: the Pi camera, a USB camera and recorded frames as frame sources;
- ``decode``: the QR decoders;
- ``fakes``: stand-ins for tests, the demo and the bench (a synthetic camera, a recording signal).

Each of ``gpio``, ``camera`` and ``decode`` has one backend table (its ``backends`` module) mapping
the names the config uses to adapters. Vendor libraries (picamera2, OpenCV, pyzbar, zxing-cpp, the
lgpio and RPi.GPIO pin backends) are imported only inside the adapter that needs them, when it is
built, so the tables and every adapter module import on any laptop. (The synthetic camera among
the fakes draws with OpenCV and segno and needs them installed.)
"""
