"""The Raspberry Pi camera (CSI ribbon) through picamera2 / libcamera.

picamera2 only exists on a Pi, installed from apt (python3-picamera2), so it is imported inside
the constructor: this module imports on any laptop.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from hardware.camera.grabber import FrameGrabber
from hardware.protocols import CameraError, Frame

INSTALL_HINT = (
    "install python3-picamera2 from apt and create the venv with --system-site-packages; see README"
)


class Picamera2Camera:
    """A ``FrameSource`` for the Pi camera: the luminance (Y) plane of a YUV420 video stream is the
    grey frame, so no colour conversion is ever done.

    ``width`` x ``height`` pixels (libcamera may align them; ``size`` holds what was granted) at
    ``fps`` frames per second, fixed through ``FrameDurationLimits`` so exposure cannot slow the
    stream down in a dim entrance. A background thread keeps only the newest frame.

    Raises ``CameraError`` with a hint when picamera2 is missing, no camera is detected, or the
    camera refuses the configuration; ``read`` raises ``CameraError`` when frames stop for good.
    """

    def __init__(
        self,
        width: int = 640,
        height: int = 480,
        fps: float = 30.0,
        *,
        clock: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        if not fps > 0:
            raise CameraError(f"Raspberry Pi camera: fps must be > 0 frames/s, got {fps}")
        try:
            from picamera2 import Picamera2
        except ImportError as exc:
            raise CameraError(
                f"Raspberry Pi camera: picamera2 is not available ({exc}); {INSTALL_HINT}"
            ) from exc
        try:
            cameras = Picamera2.global_camera_info()
        except Exception as exc:  # libcamera problems surface as assorted exceptions
            raise CameraError(
                f"Raspberry Pi camera: libcamera failed to list cameras: {exc}"
            ) from exc
        if not cameras:
            raise CameraError(
                "Raspberry Pi camera: no camera detected; check the ribbon cable and that "
                "'rpicam-hello --list-cameras' lists it"
            )
        camera = None
        try:
            camera = Picamera2()
            frame_us = round(1e6 / fps)
            config = camera.create_video_configuration(
                main={"size": (width, height), "format": "YUV420"},
                controls={"FrameDurationLimits": (frame_us, frame_us)},
            )
            camera.configure(config)
            granted = camera.camera_configuration()["main"]
            self.size = tuple(granted["size"])
            camera.start()
        except Exception as exc:
            if camera is not None:
                camera.close()
            raise CameraError(
                f"Raspberry Pi camera: cannot start a {width}x{height} YUV420 stream at {fps} "
                f"frames/s: {exc}"
            ) from exc
        self._camera = camera
        grant_width, grant_height = self.size

        def grab_luma() -> np.ndarray:
            # A YUV420 array is (height * 3/2) rows of `stride` bytes: the first `height` rows
            # are the Y plane, and each row may carry padding beyond `width`.
            planes = camera.capture_array("main")
            return np.ascontiguousarray(planes[:grant_height, :grant_width])

        def release() -> None:
            try:
                camera.stop()
            finally:
                camera.close()

        self._grabber = FrameGrabber(
            grab_luma, name="Raspberry Pi camera", release=release, clock=clock
        )

    def read(self, timeout_s: float) -> Frame | None:
        """The newest frame not yet handed out, or None after ``timeout_s`` seconds without one."""
        return self._grabber.read(timeout_s)

    def close(self) -> None:
        """Stop the capture thread and the camera; safe to call more than once."""
        self._grabber.close()
