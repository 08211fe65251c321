"""Cameras: frames as numpy arrays behind ``hardware.protocols.Camera``.

- ``picamera``: the Raspberry Pi camera (picamera2, Pi only);
- ``opencv``: a USB camera through OpenCV;
- ``replay``: image files, a folder or a video, replayed as a camera;
- ``grabber``: the capture thread every camera shares (latest frame wins, stale frames noticed).
"""
