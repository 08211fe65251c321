"""What a door camera sees of a phone held up to it, for tests: a screenshot of the pass page's QR
code (a PNG from tests/pass_capture.py) turned into a grey 640x480 camera frame, and a scripted
frame source that shows such frames to the real door loop on a simulated clock.

    pixels = phone_frame(capture.png, seed=1)    # uint8, 480 x 640
    camera = ScriptedCamera(clock)
    camera.show([pixels], frames=10)             # the phone in view for 10 frames
    camera.show([empty_scene()], frames=120)     # then nobody, 4 s at 30 frames a second

The transform is the one a phone at the door goes through: the screenshot scaled down into the
frame (a module of the page's 7 device pixels becomes about 5 camera pixels), turned a few degrees
and leaning back a little (keystone), inside a dark phone body, in front of a cluttered entrance;
on the screen the camera's pixel grid beating against the screen's (moire), the backlight lifting
the blacks and a reflected lamp (glare); then lens blur and sensor noise. Deterministic for a given
seed. Measured on pass codes drawn as the page draws them, every frame of 50 random codes was read
by the door's reader at this size, and still at 150 px a side (3 px a module): the test does not
stand on a knife's edge of the decoder, and ``QrReader`` is still the part doing the reading.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence

import cv2
import numpy as np

from hardware.fakes.synthetic import compose_frame
from hardware.protocols import Frame
from kiosk.core.clock import SimClock

WIDTH, HEIGHT = 640, 480
FPS = 30.0


def empty_scene(seed: int = 0) -> np.ndarray:
    """The entrance with nobody in front of the camera (``compose_frame``'s cluttered scene)."""
    return compose_frame(None, width=WIDTH, height=HEIGHT, background="texture", seed=seed)


def phone_frame(
    png: bytes,
    *,
    side_px: float = 250.0,
    rotation_deg: float = 4.0,
    keystone: float = 0.06,
    centre: tuple[float, float] = (0.52, 0.5),
    screen: float = 1.0,
    blur_px: float = 0.7,
    noise: float = 3.0,
    seed: int = 0,
) -> np.ndarray:
    """A grey 640x480 frame (``uint8``) of a phone showing the screenshot ``png``.

    ``side_px``: the screenshot's longer side in the frame, in camera pixels; ``rotation_deg``:
    its in-plane turn in degrees; ``keystone`` 0..0.2: how much narrower its top edge is (the
    phone leans back); ``centre``: where it is, as fractions of the frame's width and height;
    ``screen`` 0..1: strength of the screen's artefacts (moire of up to +-15%, blacks lifted by up
    to 40 grey levels, a glare spot of up to +110); ``blur_px``: Gaussian blur sigma in pixels;
    ``noise``: sensor noise's standard deviation in grey levels. The background and the phone
    body are the same for every seed; moire angle, glare spot and noise come from ``seed``.
    Raises ``ValueError`` for bytes that are not an image.
    """
    shot = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE)
    if shot is None:
        raise ValueError("phone_frame: not a PNG image")
    rng = np.random.default_rng(seed)
    height, width = shot.shape
    scale = side_px / max(height, width)
    cx, cy = centre[0] * WIDTH, centre[1] * HEIGHT
    corners = np.array([[-width, -height], [width, -height], [width, height], [-width, height]])
    corners = corners.astype(np.float64) * (scale / 2)
    corners[:2, 0] *= 1 - keystone  # the top edge is further from the camera
    corners[:2, 1] *= 1 - keystone / 2
    theta = math.radians(rotation_deg)
    turn = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    target = (corners @ turn.T + [cx, cy]).astype(np.float32)
    source = np.array([[0, 0], [width, 0], [width, height], [0, height]], np.float32)
    warp = cv2.getPerspectiveTransform(source, target)

    scene = empty_scene().astype(np.float32)
    body = ((corners * [1.12, 1.25]) @ turn.T + [cx, cy]).astype(np.int32)
    cv2.fillConvexPoly(scene, body, 20.0, lineType=cv2.LINE_AA)
    # A screen's white is not the sensor's full range.
    lit = shot.astype(np.float32) * (225.0 / 255.0) + 5.0
    on_screen = cv2.warpPerspective(lit, warp, (WIDTH, HEIGHT), flags=cv2.INTER_AREA)
    mask = cv2.warpPerspective(np.ones_like(lit), warp, (WIDTH, HEIGHT), flags=cv2.INTER_LINEAR)

    ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    # Moire: a grating of 3 to 5 px at a random angle, beating at a slower period.
    angle = rng.uniform(0, math.pi)
    period = rng.uniform(3.0, 5.0)
    phase = (xs * math.cos(angle) + ys * math.sin(angle)) * (2 * math.pi / period)
    beat = 0.5 + 0.5 * np.sin((xs * math.sin(angle) - ys * math.cos(angle)) * 0.05)
    on_screen = on_screen * (1 + 0.15 * screen * np.sin(phase) * beat)
    on_screen = on_screen + 40.0 * screen * (1 - on_screen / 255.0)  # backlight
    glare_x = cx + rng.uniform(-0.3, 0.3) * side_px
    glare_y = cy + rng.uniform(-0.3, 0.3) * side_px
    radius = rng.uniform(0.08, 0.15) * side_px
    glare = np.exp(-((xs - glare_x) ** 2 + (ys - glare_y) ** 2) / (2 * radius**2))
    on_screen = np.clip(on_screen + 110.0 * screen * glare, 0, 255)

    scene = scene * (1 - mask) + on_screen * mask
    if blur_px > 0:
        scene = cv2.GaussianBlur(scene, (0, 0), sigmaX=blur_px)
    if noise > 0:
        scene = scene + rng.normal(0.0, noise, scene.shape).astype(np.float32)
    return np.clip(scene, 0, 255).astype(np.uint8)


class ScriptedCamera:
    """A ``FrameSource`` for the door loop: delivers queued frames in order, each moving the
    simulated ``clock`` on by one frame interval (``fps``); with nothing queued, ``read`` raises
    ``EOFError`` (the script is over, as a finite camera ends)."""

    def __init__(self, clock: SimClock, fps: float = FPS) -> None:
        self.clock = clock
        self.interval_s = 1.0 / fps
        self._queue: deque[np.ndarray] = deque()
        self._index = 0
        self.closed = False

    @property
    def pending(self) -> int:
        """Frames queued and not yet read."""
        return len(self._queue)

    def show(self, variants: Sequence[np.ndarray], frames: int) -> None:
        """Queue ``frames`` frames cycling through ``variants`` (the same view with different
        sensor noise: consecutive frames of a real camera are never identical)."""
        if not variants or frames < 1:
            raise ValueError("ScriptedCamera.show needs at least one variant and one frame")
        self._queue.extend(variants[n % len(variants)] for n in range(frames))

    def read(self, timeout_s: float) -> Frame:
        if not self._queue:
            raise EOFError("ScriptedCamera: nothing more to show")
        self.clock.advance(self.interval_s)
        self._index += 1
        return Frame(self._queue.popleft(), self.clock.monotonic_ns(), self._index)

    def close(self) -> None:
        self.closed = True
