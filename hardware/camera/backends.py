"""The frame sources by the names ``camera.backend`` accepts: the one table that maps a name to
the function opening that camera.

Every camera is opened from the same ``CameraSettings`` and a monotonic clock; each backend takes
what it needs. The adapter modules import their vendor library (picamera2, OpenCV) only when a
camera is opened, so this table imports on any laptop.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from hardware.camera.opencv import OpenCVCamera
from hardware.camera.picamera import Picamera2Camera
from hardware.camera.replay import ReplayCamera
from hardware.protocols import FrameSource


@dataclass(frozen=True, slots=True)
class CameraSettings:
    """What a camera is opened with: ``width`` x ``height`` pixels at ``fps`` frames per second;
    ``device`` is the OpenCV/V4L2 index or path (opencv only); ``replay_path`` the folder of
    images or the video file (replay only)."""

    width: int
    height: int
    fps: float
    device: int | str = 0
    replay_path: str = ""


# A backend opens its camera from the settings and a clock in monotonic nanoseconds (frames are
# stamped with it). It raises ``CameraError`` with a hint when the camera cannot be opened.
CameraBackend = Callable[[CameraSettings, Callable[[], int]], FrameSource]


def _picamera2(settings: CameraSettings, clock: Callable[[], int]) -> FrameSource:
    return Picamera2Camera(settings.width, settings.height, settings.fps, clock=clock)


def _opencv(settings: CameraSettings, clock: Callable[[], int]) -> FrameSource:
    return OpenCVCamera(settings.device, settings.width, settings.height, settings.fps, clock=clock)


def _replay(settings: CameraSettings, clock: Callable[[], int]) -> FrameSource:
    return ReplayCamera(Path(settings.replay_path), fps=settings.fps, clock=clock)


BACKENDS: Mapping[str, CameraBackend] = MappingProxyType(
    {"picamera2": _picamera2, "opencv": _opencv, "replay": _replay}
)


def open_camera(
    backend: str, settings: CameraSettings, clock: Callable[[], int] = time.monotonic_ns
) -> FrameSource:
    """Open the camera named ``backend`` (a key of ``BACKENDS``).

    Raises ``ValueError`` for an unknown name (listing the known ones) and ``CameraError`` with a
    hint when the camera cannot be opened (library missing, no device, bad path).
    """
    try:
        factory = BACKENDS[backend]
    except KeyError:
        raise ValueError(
            f"unknown camera backend {backend!r}; choose one of: {', '.join(BACKENDS)}"
        ) from None
    return factory(settings, clock)
