"""Fakes for tests, the demo and the bench, kept apart from the real adapters.

- ``synthetic``: a camera that renders QR codes into frames (segno and OpenCV), with distortions.
"""
