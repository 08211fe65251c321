"""A USB (UVC) camera through OpenCV's V4L2 backend. OpenCV is imported in the constructor."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import numpy as np

from hardware.camera.grabber import FrameGrabber
from hardware.protocols import CameraError, Frame


class OpenCVCamera:
    """A ``FrameSource`` for a USB camera: ``device`` is an index (0 = ``/dev/video0``) or a path.

    Asks the camera for ``width`` x ``height`` pixels at ``fps`` frames per second (drivers may
    round to a mode they support) and converts each frame to grey in a background thread that
    keeps only the newest frame (``hardware.camera.grabber.FrameGrabber``). ``api`` overrides the OpenCV
    backend (default V4L2 on Linux, whatever OpenCV picks elsewhere).

    Raises ``CameraError`` naming the device when OpenCV is missing or the camera cannot be opened;
    ``read`` raises ``CameraError`` when the camera stops delivering frames for good.
    """

    def __init__(
        self,
        device: int | str = 0,
        width: int = 640,
        height: int = 480,
        fps: float = 30.0,
        *,
        api: int | None = None,
        clock: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        try:
            import cv2
        except ImportError as exc:
            raise CameraError(
                "USB camera needs OpenCV: install python3-opencv (apt) or "
                f"opencv-python-headless (pip) ({exc})"
            ) from exc
        if api is None:
            api = cv2.CAP_V4L2 if sys.platform.startswith("linux") else cv2.CAP_ANY
        self.device = device
        capture = cv2.VideoCapture(device, api)
        if not capture.isOpened():
            capture.release()
            raise CameraError(
                f"USB camera {device!r}: cannot open it (is it plugged in, is another program "
                "using it, is this user in the 'video' group?)"
            )
        capture.set(cv2.CAP_PROP_FRAME_WIDTH, width)
        capture.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
        capture.set(cv2.CAP_PROP_FPS, fps)
        # A deep driver queue would hand us stale frames: keep one buffer where supported.
        capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        self._capture = capture

        def grab_grey() -> np.ndarray | None:
            ok, image = capture.read()
            if not ok or image is None:
                return None
            if image.ndim == 3:
                return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
            return image

        self._grabber = FrameGrabber(
            grab_grey, name=f"USB camera {device!r}", release=capture.release, clock=clock
        )

    def read(self, timeout_s: float) -> Frame | None:
        """The newest frame not yet handed out, or None after ``timeout_s`` seconds without one."""
        return self._grabber.read(timeout_s)

    def close(self) -> None:
        """Stop the capture thread and release the device; safe to call more than once."""
        self._grabber.close()
