"""Fakes for tests, the demo and the bench, kept apart from the real adapters (nothing here is
ever chosen by a backend table).

- ``synthetic``: a camera that renders QR codes into frames (segno and OpenCV), with distortions;
- ``signal``: a member-feedback signal that records the patterns shown instead of lighting LEDs.
"""
