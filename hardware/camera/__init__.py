"""Cameras: grey frames as numpy arrays behind ``hardware.protocols.FrameSource``.

- ``backends``: the cameras by their ``camera.backend`` names, and opening one (``open_camera``);
- ``picamera``: the Raspberry Pi camera (picamera2, Pi only);
- ``opencv``: a USB camera through OpenCV;
- ``replay``: image files, a folder or a video, replayed as a camera;
- ``grabber``: the capture thread the live cameras share (latest frame wins, a dead camera
  noticed, the device released only once capture stopped) and the pacer for replayed frames.
"""
