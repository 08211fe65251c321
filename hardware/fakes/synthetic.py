"""Synthetic camera frames with QR codes: for the demo, the decode bench and the tests.

Everything here is deterministic for a given seed, so a bench run or a failing test can be replayed
exactly. Frames are grey ``uint8`` arrays (height x width), like every frame in the project.

This module imports OpenCV and segno at the top: it is never on the door path of a real camera, only
used where those optional ``vision`` extras are installed (demo, bench, tests).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import segno

from hardware.camera.grabber import Pacer
from hardware.protocols import CameraError, Frame

# Paper white and ink black of a printed card or a phone screen: never the sensor's full range.
_PAPER = 235.0
_INK = 25.0
_PLAIN_LEVEL = 150.0
_STROKE_CHARS = "ABCDEFGHJKLMNPRSTUVWXYZ0123456789"


def render_code(payload: str, module_px: int, border_modules: int = 4) -> np.ndarray:
    """Render ``payload`` as a QR code image: black modules on a white quiet zone.

    Error correction is exactly level M (segno's automatic boost is off, so what the bench measures is
    what the level says); the smallest QR version that fits is used. ``module_px`` is the size of one
    module in pixels, ``border_modules`` the quiet zone in modules (4 is the standard's minimum).
    Returns a square ``uint8`` grey array of side ``(modules + 2 * border_modules) * module_px``.

    Raises ``ValueError`` for a non-positive module size, a negative border, or a payload too long
    for any QR version.
    """
    if module_px < 1:
        raise ValueError(f"render_code: module_px must be >= 1 pixel, got {module_px}")
    if border_modules < 0:
        raise ValueError(f"render_code: border_modules must be >= 0, got {border_modules}")
    dark = np.pad(_symbol(payload), border_modules, constant_values=False)
    image = np.where(dark, 0, 255).astype(np.uint8)
    return np.repeat(np.repeat(image, module_px, axis=0), module_px, axis=1)


@functools.lru_cache(maxsize=256)
def _symbol(payload: str) -> np.ndarray:
    """The QR symbol of ``payload`` at level M, without quiet zone: True for a dark module.
    Encoding (choosing among eight masks) costs milliseconds, and the simulated camera and the
    benches draw the same few payloads again and again. Read-only (it is shared). ValueError when
    the payload fits no QR version."""
    try:
        qr = segno.make_qr(payload, error="m", boost_error=False)
    except segno.DataOverflowError as exc:
        raise ValueError(
            f"a payload of {len(payload)} characters does not fit in a QR code"
        ) from exc
    dark = np.array([list(row) for row in qr.matrix], dtype=bool)
    dark.flags.writeable = False
    return dark


def _modules(payload: str) -> int:
    return _symbol(payload).shape[0]


def _texture_scene(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """A cluttered, QR-free scene like a gym entrance: lit walls, door frames, posters, bars, text."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    ramp = (xs * math.cos(angle) + ys * math.sin(angle)) / max(width, height)
    # Drawn in uint8: OpenCV's text renderer only draws on 8-bit images.
    scene = np.clip(rng.uniform(90, 170) + rng.uniform(-60, 60) * ramp, 0, 255).astype(np.uint8)
    scale = min(width, height)
    for _ in range(int(rng.integers(4, 9))):  # door frames, posters, lockers
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        w, h = (
            int(rng.integers(scale // 10, scale // 2)),
            int(rng.integers(scale // 10, scale // 2)),
        )
        cv2.rectangle(scene, (x0, y0), (x0 + w, y0 + h), int(rng.integers(30, 230)), -1)
    for _ in range(int(rng.integers(2, 5))):  # round things: clocks, plates, signs
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        radius = int(rng.integers(scale // 20, scale // 6))
        cv2.circle(scene, centre, radius, int(rng.integers(20, 240)), -1, cv2.LINE_AA)
    bar_x = int(rng.integers(0, width))  # turnstile bars: a regular stripe pattern
    for i in range(int(rng.integers(3, 8))):
        x = bar_x + i * max(4, scale // 30)
        cv2.line(scene, (x, 0), (x, height), int(rng.integers(10, 80)), max(1, scale // 120))
    for _ in range(int(rng.integers(5, 12))):  # notices and posters: text-like strokes
        text = "".join(rng.choice(list(_STROKE_CHARS), size=int(rng.integers(3, 12))))
        origin = (int(rng.integers(0, width)), int(rng.integers(10, height)))
        font_scale = float(rng.uniform(0.3, 1.5)) * scale / 480
        thickness = int(rng.integers(1, 4))
        ink = int(rng.integers(0, 256))
        cv2.putText(scene, text, origin, cv2.FONT_HERSHEY_SIMPLEX, font_scale, ink, thickness)
    # Uneven lighting from a ceiling lamp: multiplies walls and card alike.
    cx, cy = rng.uniform(0, width), rng.uniform(0, height)
    falloff = np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * (0.8 * max(width, height)) ** 2))
    return scene.astype(np.float32) * (0.7 + 0.3 * falloff)


def _code_quad(
    side: float, centre: tuple[float, float], rotation_deg: float, tilt: float, tilt_axis: float
) -> np.ndarray:
    """Corners (4x2, float32) of a square of ``side`` pixels, tilted then rotated, around ``centre``.

    Tilt mimics a card held at an angle: the edge away from the camera shrinks, the near one grows,
    and the card foreshortens along the tilt direction.
    """
    local = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64)
    axis = np.array(
        [[math.cos(tilt_axis), -math.sin(tilt_axis)], [math.sin(tilt_axis), math.cos(tilt_axis)]]
    )
    turned = local @ axis.T  # express corners in the tilt's own frame
    along = turned[:, 1]
    turned[:, 0] *= 1 + tilt * along
    turned[:, 1] *= 1 - tilt / 2
    local = turned @ axis  # back to the card's frame
    theta = math.radians(rotation_deg)
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    corners = (local @ rot.T) * (side / 2) + np.asarray(centre)
    return corners.astype(np.float32)


def compose_frame(
    payload: str | None,
    *,
    width: int = 640,
    height: int = 480,
    code_fraction: float = 0.3,
    rotation_deg: float = 0.0,
    tilt: float = 0.0,
    blur_px: float = 0.0,
    noise: float = 0.0,
    contrast: float = 1.0,
    brightness: float = 0.0,
    background: str = "plain",
    center: tuple[float, float] = (0.0, 0.0),
    screen: float = 0.0,
    seed: int = 0,
) -> np.ndarray:
    """A realistic grey camera frame (``height`` x ``width``, ``uint8``) with at most one QR code.

    - ``payload`` None gives the empty scene (the common case at a door).
    - ``code_fraction``: the symbol's height (quiet zone excluded, before tilt) over the frame height.
    - ``rotation_deg``: in-plane rotation in degrees; ``tilt`` 0..0.3: perspective of a card held at
      an angle (the axis direction comes from ``seed``).
    - ``blur_px``: Gaussian blur sigma in pixels (focus, motion); ``noise``: standard deviation of
      Gaussian sensor noise in grey levels.
    - ``contrast``: 1 = full, 0.3 = low (a washed-out phone screen); ``brightness``: grey levels
      added (exposure), both applied around mid-grey after composition.
    - ``background``: ``"plain"`` (uniform grey) or ``"texture"`` (a deterministic cluttered scene:
      gradients, shapes, stripes, text-like strokes; never a QR code).
    - ``center``: offset of the code's centre from the frame centre, as fractions of width and height.
    - ``screen`` 0..1: the code is shown on a phone screen rather than printed, with that strength
      of the screen's artefacts on the code: moire (the camera's pixel grid beating against the
      screen's, a fine grating of up to +-18% brightness), a glare spot of up to +140 grey levels
      that saturates part of the code, and the blacks lifted by the backlight (up to +45).

    Deterministic for a given ``seed``. Raises ``ValueError`` for an unknown background or sizes
    that cannot make a frame.
    """
    if width < 8 or height < 8:
        raise ValueError(f"compose_frame: frame {width}x{height} px is too small")
    if background not in ("plain", "texture"):
        raise ValueError(
            f"compose_frame: background must be 'plain' or 'texture', got {background!r}"
        )
    rng = np.random.default_rng(seed)
    if background == "texture":
        scene = _texture_scene(width, height, rng)
    else:
        scene = np.full((height, width), _PLAIN_LEVEL, dtype=np.float32)
    tilt_axis = rng.uniform(0, 2 * math.pi)  # drawn even without a code: same scene either way

    if payload is not None:
        if not 0 < code_fraction <= 1.5:
            raise ValueError(
                f"compose_frame: code_fraction must be in (0, 1.5], got {code_fraction}"
            )
        border = 4
        modules = _modules(payload)
        symbol_px = code_fraction * height
        total_px = symbol_px * (modules + 2 * border) / modules
        # Render near the target size so the warp never shrinks by much (that would alias).
        module_px = max(1, math.ceil(symbol_px / modules))
        card = render_code(payload, module_px, border).astype(np.float32)
        card = _INK + card * ((_PAPER - _INK) / 255.0)
        size = card.shape[0]
        src = np.array([[0, 0], [size, 0], [size, size], [0, size]], dtype=np.float32)
        centre = (width / 2 + center[0] * width, height / 2 + center[1] * height)
        dst = _code_quad(total_px, centre, rotation_deg, tilt, tilt_axis)
        warp = cv2.getPerspectiveTransform(src, dst)
        code = cv2.warpPerspective(card, warp, (width, height), flags=cv2.INTER_LINEAR)
        mask = cv2.warpPerspective(
            np.ones_like(card), warp, (width, height), flags=cv2.INTER_LINEAR
        )
        if screen > 0:
            code = _screen_artefacts(code, screen, centre, symbol_px, rng)
        scene = scene * (1 - mask) + code * mask

    scene = 128.0 + (scene - 128.0) * contrast + brightness
    if blur_px > 0:
        scene = cv2.GaussianBlur(scene, (0, 0), sigmaX=blur_px)
    if noise > 0:
        scene = scene + rng.normal(0.0, noise, scene.shape).astype(np.float32)
    return np.clip(scene, 0, 255).astype(np.uint8)


def _screen_artefacts(
    code: np.ndarray,
    strength: float,
    centre: tuple[float, float],
    symbol_px: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """``code`` (float32 frame-sized) as a camera sees it on a phone screen (see ``compose_frame``)."""
    if not 0 < strength <= 1:
        raise ValueError(f"compose_frame: screen must be in [0, 1], got {strength}")
    height, width = code.shape
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    # Moire: a grating of 2.5 to 6 px period at a random angle, beating at a slower period.
    angle = rng.uniform(0, math.pi)
    period = rng.uniform(2.5, 6.0)
    phase = (xs * math.cos(angle) + ys * math.sin(angle)) * (2 * math.pi / period)
    beat = 0.5 + 0.5 * np.sin((xs * math.sin(angle) - ys * math.cos(angle)) * 0.05)
    out = code * (1 + 0.18 * strength * np.sin(phase) * beat)
    # Backlight: black is never black on a screen.
    out = out + 45.0 * strength * (1 - out / 255.0)
    # Glare: a reflected lamp somewhere over the code.
    gx = centre[0] + rng.uniform(-0.4, 0.4) * symbol_px
    gy = centre[1] + rng.uniform(-0.4, 0.4) * symbol_px
    radius = rng.uniform(0.1, 0.25) * symbol_px
    glare = np.exp(-((xs - gx) ** 2 + (ys - gy) ** 2) / (2 * radius**2))
    return np.clip(out + 140.0 * strength * glare, 0, 255)


def frame_set(
    width: int,
    height: int,
    payloads: Sequence[str],
    *,
    count: int = 120,
    seed: int = 0,
    empty_every: int = 5,
) -> list[tuple[str | None, np.ndarray]]:
    """A reproducible mix of ``count`` frames: ``(expected payload or None, pixels)``.

    Every ``empty_every``-th frame is an empty scene; the others show ``payloads`` in turn at code
    sizes from 12% to 45% of the frame height, any rotation, tilts up to 0.3, some blur, noise, low
    contrast and exposure shifts, on plain or cluttered backgrounds. The same arguments always give
    the same frames. Raises ``ValueError`` when ``payloads`` is empty or ``count`` negative.
    """
    return [
        (payload, compose_frame(payload, width=width, height=height, **params))
        for payload, params in frame_params(
            width, height, payloads, count=count, seed=seed, empty_every=empty_every
        )
    ]


def frame_params(
    width: int,
    height: int,
    payloads: Sequence[str],
    *,
    count: int = 120,
    seed: int = 0,
    empty_every: int = 5,
) -> list[tuple[str | None, dict]]:
    """The recipe behind ``frame_set``: ``(payload, compose_frame keyword arguments)`` per frame,
    so a bench or a test can tell which distortions a missed frame had. Raises ``ValueError`` when
    ``payloads`` is empty or ``count`` negative."""
    if not payloads:
        raise ValueError("frame_set: payloads must not be empty")
    if count < 0:
        raise ValueError(f"frame_set: count must be >= 0, got {count}")
    rng = np.random.default_rng(seed)
    recipes: list[tuple[str | None, dict]] = []
    shown = 0
    for i in range(count):
        empty = empty_every > 0 and i % empty_every == empty_every - 1
        payload = None if empty else payloads[shown % len(payloads)]
        if not empty:
            shown += 1
        fraction = float(rng.uniform(0.12, 0.45))
        # Keep the whole card in view: the code's half-diagonal must fit around its centre.
        reach = fraction * 0.75
        max_dx = max(0.0, 0.5 - reach * height / width)
        max_dy = max(0.0, 0.5 - reach)
        params = {
            "code_fraction": fraction,
            "rotation_deg": float(rng.uniform(0, 360)),
            "tilt": float(rng.uniform(0, 0.3)),
            "blur_px": float(rng.choice([0.0, 0.0, 0.7, 1.2, 1.8])),
            "noise": float(rng.choice([0.0, 2.0, 5.0, 10.0])),
            "contrast": float(rng.choice([1.0, 1.0, 0.7, 0.45, 0.3])),
            "brightness": float(rng.uniform(-40, 40)),
            "background": "texture" if rng.random() < 0.6 else "plain",
            "center": (float(rng.uniform(-max_dx, max_dx)), float(rng.uniform(-max_dy, max_dy))),
            "seed": int(rng.integers(0, 2**31 - 1)),
        }
        recipes.append((payload, params))
    return recipes


@dataclass(frozen=True, slots=True)
class _Step:
    payload: str | None
    frames: int


class SyntheticCamera:
    """A scripted stand-in camera (implements ``FrameSource``) for the demo and tests.

    ``script`` is a sequence of steps ``(payload or None, n_frames)``: the camera shows each step's
    scene for that many frames, in order, at ``width`` x ``height``. Frames are paced at ``fps``
    (frames per second) with the injected ``clock`` (callable returning monotonic nanoseconds) and
    ``sleep`` (callable taking seconds); ``fps`` None delivers as fast as the reader asks.
    With ``loop`` the script repeats forever; otherwise ``read`` raises ``EOFError`` after the last
    frame. ``read`` after ``close`` raises ``CameraError``.

    Each distinct scene is rendered once (slightly rotated and tilted, on a cluttered background, so
    the real decoder works for its result) in a few variants with different sensor noise, which the
    camera cycles through: consecutive frames are never byte-identical, yet a frame costs nothing to
    make. Frames are read-only arrays.
    """

    _VARIANTS = 3

    def __init__(
        self,
        script: Sequence[tuple[str | None, int]],
        *,
        width: int = 640,
        height: int = 480,
        fps: float | None = 30.0,
        loop: bool = False,
        clock: Callable[[], int] = time.monotonic_ns,
        sleep: Callable[[float], None] = time.sleep,
        seed: int = 0,
    ) -> None:
        steps = []
        for position, (payload, n_frames) in enumerate(script):
            if not isinstance(n_frames, int) or n_frames < 1:
                raise ValueError(
                    f"SyntheticCamera: script step {position} needs n_frames >= 1, got {n_frames!r}"
                )
            steps.append(_Step(payload, n_frames))
        if not steps:
            raise ValueError("SyntheticCamera: the script has no steps")
        self._steps = steps
        self._width, self._height = width, height
        self._loop = loop
        self._clock = clock
        self._pacer = Pacer(fps, clock=clock, sleep=sleep)
        self._seed = seed
        self._scenes: dict[str | None, list[np.ndarray]] = {}
        self._step = 0
        self._frame_in_step = 0
        self._index = 0
        self._closed = False

    def _variants(self, payload: str | None) -> list[np.ndarray]:
        cached = self._scenes.get(payload)
        if cached is None:
            # One scene (a given seed always composes the same pixels); the variants differ from
            # it only by their sensor noise.
            scene = compose_frame(
                payload,
                width=self._width,
                height=self._height,
                code_fraction=0.35,
                rotation_deg=7.0,
                tilt=0.05,
                blur_px=0.6,
                noise=2.0,
                background="texture",
                seed=self._seed,
            )
            cached = []
            for variant in range(self._VARIANTS):
                pixels = scene
                if variant:
                    rng = np.random.default_rng(self._seed + variant)
                    jitter = rng.integers(-2, 3, size=scene.shape, dtype=np.int16)
                    pixels = np.clip(scene.astype(np.int16) + jitter, 0, 255).astype(np.uint8)
                pixels.flags.writeable = False
                cached.append(pixels)
            self._scenes[payload] = cached
        return cached

    def read(self, timeout_s: float) -> Frame | None:
        """The next scripted frame, or None when it is not due within ``timeout_s`` seconds.

        Raises ``EOFError`` at the end of a non-looping script, ``CameraError`` once closed.
        """
        if self._closed:
            raise CameraError("SyntheticCamera: read() after close()")
        if self._step >= len(self._steps):
            raise EOFError("SyntheticCamera: end of script")
        if not self._pacer.wait(timeout_s):
            return None
        step = self._steps[self._step]
        variants = self._variants(step.payload)
        frame = Frame(
            pixels=variants[self._index % len(variants)],
            captured_ns=self._clock(),
            index=self._index,
        )
        self._index += 1
        self._frame_in_step += 1
        if self._frame_in_step >= step.frames:
            self._frame_in_step = 0
            self._step += 1
            if self._loop and self._step >= len(self._steps):
                self._step = 0
        return frame

    def close(self) -> None:
        """Stop the camera; safe to call more than once."""
        self._closed = True
