"""Replays recorded frames as if they came from a camera: for the demo, the bench, the latency test
and for reproducing a field problem from a folder of saved frames.

OpenCV is imported in the constructor (it is an optional extra), so this module imports anywhere.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from hardware.camera.grabber import Pacer
from hardware.protocols import CameraError, Frame

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".pgm")


def _import_cv2():
    try:
        import cv2
    except ImportError as exc:
        raise CameraError(
            "replay camera needs OpenCV: install python3-opencv (apt) or "
            f"opencv-python-headless (pip) ({exc})"
        ) from exc
    return cv2


class ReplayCamera:
    """A ``FrameSource`` reading a folder of images (sorted by file name; png, jpg, jpeg, bmp, pgm)
    or a video file, converted to grey.

    ``fps`` None replays as fast as the reader asks (the bench); otherwise frames are paced at
    ``fps`` frames per second with the injected ``clock`` (monotonic ns) and ``sleep`` (seconds).
    At the end ``read`` raises ``EOFError``, unless ``loop`` starts over.

    Raises ``CameraError`` naming the path when it does not exist, a folder holds no images, or a
    video cannot be opened or holds no frame. An image inside a folder that cannot be read is
    skipped with a warning naming the file: one corrupt frame must not stop the door.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        fps: float | None = None,
        loop: bool = False,
        clock: Callable[[], int] = time.monotonic_ns,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._cv2 = _import_cv2()
        self.path = Path(path)
        self._loop = loop
        self._clock = clock
        self._pacer = Pacer(fps, clock=clock, sleep=sleep)
        self._index = 0
        self._closed = False
        self._video = None
        self._files: list[Path] = []
        self._position = 0
        if self.path.is_dir():
            self._files = sorted(
                p for p in self.path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
            if not self._files:
                raise CameraError(
                    f"replay camera: folder {self.path} holds no images "
                    f"({', '.join(IMAGE_SUFFIXES)})"
                )
        elif self.path.is_file():
            self._video = self._open_video()
        else:
            raise CameraError(f"replay camera: {self.path} does not exist")

    def _open_video(self):
        video = self._cv2.VideoCapture(str(self.path))
        if not video.isOpened():
            video.release()
            raise CameraError(f"replay camera: cannot open {self.path} as a video")
        return video

    @staticmethod
    def _grey(cv2, image: np.ndarray) -> np.ndarray:
        if image.ndim == 3:
            code = cv2.COLOR_BGRA2GRAY if image.shape[2] == 4 else cv2.COLOR_BGR2GRAY
            image = cv2.cvtColor(image, code)
        if image.dtype != np.uint8:  # 16-bit PNGs: keep the top 8 bits
            image = (image >> 8).astype(np.uint8)
        return image

    def _next_image(self) -> np.ndarray:
        """The next readable image of the folder; EOFError at the end of a non-looping replay."""
        skipped_in_a_row = 0
        while True:
            if self._position >= len(self._files):
                if not self._loop:
                    raise EOFError(f"replay camera: end of {self.path}")
                self._position = 0
            file = self._files[self._position]
            self._position += 1
            image = self._cv2.imread(str(file), self._cv2.IMREAD_UNCHANGED)
            if image is not None and image.ndim in (2, 3) and image.size:
                return self._grey(self._cv2, image)
            log.warning("replay camera: skipping unreadable image %r", str(file))
            skipped_in_a_row += 1
            if skipped_in_a_row >= len(self._files):
                raise CameraError(f"replay camera: no image in {self.path} can be read")

    def _next_video_frame(self) -> np.ndarray:
        ok, image = self._video.read()
        if not ok:
            if self._index == 0:
                raise CameraError(f"replay camera: {self.path} holds no readable frame")
            if not self._loop:
                raise EOFError(f"replay camera: end of {self.path}")
            self._video.release()
            self._video = self._open_video()
            ok, image = self._video.read()
            if not ok:
                raise CameraError(f"replay camera: {self.path} holds no readable frame")
        return self._grey(self._cv2, image)

    def read(self, timeout_s: float) -> Frame | None:
        """The next frame, or None when it is not due within ``timeout_s`` seconds.

        Raises ``EOFError`` at the end (unless looping) and ``CameraError`` after ``close`` or when
        nothing in the source can be read.
        """
        if self._closed:
            raise CameraError(f"replay camera: read() after close() ({self.path})")
        if not self._pacer.wait(timeout_s):
            return None
        pixels = self._next_image() if self._video is None else self._next_video_frame()
        frame = Frame(pixels=pixels, captured_ns=self._clock(), index=self._index)
        self._index += 1
        return frame

    def close(self) -> None:
        """Release the video file; safe to call more than once."""
        self._closed = True
        if self._video is not None:
            self._video.release()
            self._video = None
