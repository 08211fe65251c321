"""Frame timing shared by the frame sources: a background grabber with a one-slot "latest frame"
buffer (real cameras) and a pacer that spaces frames at a frame rate (replay and synthetic cameras).

No vendor imports here: the camera adapters hand in a plain ``capture`` callable.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import numpy as np

from hardware.protocols import CameraError, Frame

log = logging.getLogger(__name__)


class Pacer:
    """Spaces frames ``1 / fps`` seconds apart using an injected clock and sleep.

    ``fps`` None means no pacing (as fast as the reader asks, for the bench). ``clock`` returns
    monotonic nanoseconds, ``sleep`` takes seconds. The first frame is due at once; a reader that
    falls behind gets the next frame immediately but no catch-up burst afterwards.
    Raises ``ValueError`` for a non-positive ``fps``.
    """

    def __init__(
        self,
        fps: float | None,
        *,
        clock: Callable[[], int] = time.monotonic_ns,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if fps is not None and not fps > 0:
            raise ValueError(f"frame rate must be > 0 frames/s (or None for unpaced), got {fps}")
        self._period_ns = None if fps is None else round(1e9 / fps)
        self._clock = clock
        self._sleep = sleep
        self._due_ns: int | None = None

    def wait(self, timeout_s: float) -> bool:
        """Sleep until the next frame is due and return True; if it is not due within
        ``timeout_s`` seconds, sleep ``timeout_s`` and return False (no frame in time)."""
        if self._period_ns is None:
            return True
        now = self._clock()
        due = now if self._due_ns is None else self._due_ns
        remaining_ns = due - now
        if remaining_ns > timeout_s * 1e9:
            self._sleep(max(0.0, timeout_s))
            return False
        if remaining_ns > 0:
            self._sleep(remaining_ns / 1e9)
        delivered = max(now, due)
        # Stay on the original grid when on time (no drift); restart the grid when late (no burst).
        on_time = delivered < due + self._period_ns
        self._due_ns = (due if on_time else delivered) + self._period_ns
        return True


class FrameGrabber:
    """Runs ``capture`` in a background thread and keeps only the newest frame (a one-slot buffer).

    A door wants the freshest picture, not a queue of old ones: when the scanner is slower than the
    camera, intermediate frames are dropped (``Frame.index`` counts every captured frame, so gaps
    show the drops). ``capture`` returns a grey ``uint8`` array that it will not modify afterwards,
    or None for a transient miss; an exception counts as a miss too. After ``max_failures``
    consecutive misses the camera is declared failed and ``read`` raises ``CameraError`` naming
    ``name`` and the last problem.

    ``release`` is called exactly once after ``close``, and never while ``capture`` runs (OpenCV's
    ``VideoCapture.release`` is not safe during a ``read``): by ``close`` itself once the thread
    has stopped, or, when the thread is still stuck in ``capture`` after ``close``'s join timeout,
    by the thread as that ``capture`` finally returns.
    """

    def __init__(
        self,
        capture: Callable[[], np.ndarray | None],
        *,
        name: str,
        release: Callable[[], None] | None = None,
        clock: Callable[[], int] = time.monotonic_ns,
        max_failures: int = 30,
        retry_delay_s: float = 0.01,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._capture = capture
        self._name = name
        self._release = release
        self._clock = clock
        self._max_failures = max_failures
        self._retry_delay_s = retry_delay_s
        self._sleep = sleep
        self._cond = threading.Condition()
        self._latest: Frame | None = None
        self._captured = 0
        self._handed = 0
        self._error: str | None = None
        self._closed = False
        # Who releases the device is decided under self._cond: close() if the capture loop has
        # ended (_capture_done), else the thread when it ends (_release_owed).
        self._capture_done = False
        self._release_owed = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"grabber:{name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._capture_loop()
        finally:
            with self._cond:
                self._capture_done = True
                release_now = self._release_owed
            if release_now:
                try:
                    self._release_device()
                except Exception:  # nobody to raise to on this thread: say it in the log
                    log.exception(
                        "%s: releasing the camera after the capture thread stopped", self._name
                    )
                else:
                    log.info(
                        "%s: camera released by its capture thread after it stopped", self._name
                    )

    def _capture_loop(self) -> None:
        failures = 0
        while not self._stop.is_set():
            problem = "the device returned no frame"
            try:
                pixels = self._capture()
            except Exception as exc:  # a flaky driver must not kill the thread silently
                pixels = None
                problem = f"{type(exc).__name__}: {exc}"
            if pixels is None:
                failures += 1
                if failures == 1:
                    log.warning("%s: frame capture failed (%s); retrying", self._name, problem)
                if failures >= self._max_failures:
                    with self._cond:
                        self._error = (
                            f"{self._name}: stopped delivering frames after {failures} failed "
                            f"captures in a row; last problem: {problem}"
                        )
                        self._cond.notify_all()
                    return
                self._sleep(self._retry_delay_s)
                continue
            failures = 0
            captured_ns = self._clock()
            with self._cond:
                self._captured += 1
                self._latest = Frame(pixels=pixels, captured_ns=captured_ns, index=self._captured)
                self._cond.notify_all()

    def read(self, timeout_s: float) -> Frame | None:
        """The newest frame not handed out before, waiting at most ``timeout_s`` seconds.

        Returns None on timeout. Raises ``CameraError`` when the camera failed for good (after any
        frame still waiting has been handed out) or after ``close``.
        """
        with self._cond:
            self._cond.wait_for(
                lambda: self._captured > self._handed or self._error is not None or self._closed,
                timeout=max(0.0, timeout_s),
            )
            if self._closed:
                raise CameraError(f"{self._name}: read() after close()")
            if self._captured > self._handed and self._latest is not None:
                self._handed = self._captured
                return self._latest
            if self._error is not None:
                raise CameraError(self._error)
            return None

    def close(self, join_timeout_s: float = 2.0) -> None:
        """Stop the capture thread (waiting at most ``join_timeout_s`` seconds), then release the
        device. Safe to call more than once.

        If the thread is still inside ``capture`` after the wait (a driver stuck in a read), the
        device is not released here: the thread releases it when that capture returns, and the log
        says so. Errors from ``release`` propagate when it runs here.
        """
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        self._stop.set()
        self._thread.join(timeout=join_timeout_s)
        with self._cond:
            release_now = self._capture_done
            self._release_owed = not release_now
        if release_now:
            self._release_device()
        else:
            log.warning(
                "%s: capture thread did not stop within %.1f s; the camera will be released by "
                "that thread when its current capture returns",
                self._name,
                join_timeout_s,
            )

    def _release_device(self) -> None:
        if self._release is not None:
            self._release()
