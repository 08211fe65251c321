"""The production QR pipeline between a grey frame and decoded payloads.

``QrReader`` wraps a decoder with two cost controls and one robustness lever:

1. **Motion gate.** A door camera mostly films an empty, unchanging entrance. A grid of about
   40x30 cells (about 0.03 ms of numpy with the comparison) is compared with the grid of the last
   decoded frame; when nothing moved and the last decode saw no code, the frame is skipped. Every
   ``every_nth`` frame is decoded anyway, so a card held perfectly still is still read, and the
   ``settle_frames`` frames after a change are always decoded (a card that just stopped moving is
   sharpest then).
2. **First pass at full resolution** (zxing-cpp, QR only, no internal downscale pyramid): a global
   histogram threshold first, which reads a reasonably lit code in a fraction of the time of
   zxing's adaptive binarizer, then the adaptive binarizer for uneven light and low contrast.
3. **Retries on a miss, cheapest first.** A half-resolution look (2x2 block means: a quarter of the
   pixels, and the averaging halves sensor noise) replaces zxing's own pyramid: it reads more of
   our frames than the pyramid did, for less. Only when some look *located* a QR symbol it could
   not read does a crop around that symbol get a 2x upscale. The first success wins, so a frame
   where nothing was located never pays for crop strategies.

Only numpy and the decoder are needed: no OpenCV on the door path. Each step is there because it
measurably earned its cost on ``hardware.fakes.synthetic.frame_set`` frames (see ``kiosk bench``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from hardware.protocols import Decoded, Decoder

if TYPE_CHECKING:
    from hardware.decode.zxing import Look


class LocatingDecoder(Decoder, Protocol):
    """A decoder that can also report symbols it located but could not read (zxing-cpp)."""

    def look(self, pixels: np.ndarray, *, binarizer: str = "local") -> Look: ...


# The smallest QR code is 21 modules wide; a frame narrower than that in pixels cannot hold one.
MIN_SIDE_PX = 21


# ---------------------------------------------------------------------------------------------
# Pure image helpers (numpy only).


def signature(pixels: np.ndarray) -> np.ndarray:
    """A coarse picture of the frame: about 30 rows of cells, each the mean of 2x2 point samples
    spaced 1/60 of the shorter side apart, as float32 grey levels. About 0.01 ms at 640x480:
    cheap enough to run on every frame."""
    height, width = pixels.shape
    step = max(1, min(height, width) // 60)
    sample = pixels[step // 2 :: step, step // 2 :: step].astype(np.float32)
    rows, cols = sample.shape[0] - sample.shape[0] % 2, sample.shape[1] - sample.shape[1] % 2
    if rows == 0 or cols == 0:
        return sample
    sample = sample[:rows, :cols]
    return (
        sample[0::2, 0::2] + sample[1::2, 0::2] + sample[0::2, 1::2] + sample[1::2, 1::2]
    ) * 0.25


def scene_changed(current: np.ndarray, reference: np.ndarray, threshold: float) -> bool:
    """True when some cell moved by more than ``threshold`` grey levels beyond the frame-wide
    shift (auto-exposure and lamp flicker move every cell alike and are not motion)."""
    if current.shape != reference.shape:
        return True
    difference = current - reference
    shift = float(difference.mean())
    # max and min instead of abs().max(): no temporary array, this runs on every frame.
    return bool(difference.max() - shift > threshold or shift - difference.min() > threshold)


def halve(pixels: np.ndarray) -> np.ndarray:
    """Half the size, each pixel the mean of a 2x2 block (averaging also halves sensor noise).
    About 0.13 ms at 640x480."""
    height, width = pixels.shape
    even = pixels[: height - height % 2, : width - width % 2]
    total = even[0::2, 0::2].astype(np.uint16)
    total += even[1::2, 0::2]
    total += even[0::2, 1::2]
    total += even[1::2, 1::2]
    return (total >> 2).astype(np.uint8)


def upscale2(pixels: np.ndarray) -> np.ndarray:
    """Twice the size with linear interpolation: gives the binarizer more pixels per module."""
    wide = pixels.astype(np.uint16)
    height, width = wide.shape
    out = np.empty((2 * height, 2 * width), dtype=np.uint16)
    out[0::2, 0::2] = wide
    out[0::2, 1:-1:2] = (wide[:, :-1] + wide[:, 1:]) >> 1
    out[0::2, -1] = wide[:, -1]
    out[1:-1:2] = (out[0:-2:2] + out[2::2]) >> 1
    out[-1] = out[-2]
    return out.astype(np.uint8)


def crop_around(pixels: np.ndarray, quad, margin: float = 0.3) -> np.ndarray:
    """The region around a located symbol's corners, widened by ``margin`` of its size on every
    side (the quiet zone and a corner zxing may have misplaced), clipped to the frame. A view."""
    xs = [x for x, _ in quad]
    ys = [y for _, y in quad]
    pad = margin * max(max(xs) - min(xs), max(ys) - min(ys)) + 8
    height, width = pixels.shape
    x0, x1 = max(0, int(min(xs) - pad)), min(width, int(max(xs) + pad) + 1)
    y0, y1 = max(0, int(min(ys) - pad)), min(height, int(max(ys) + pad) + 1)
    return pixels[y0:y1, x0:x1]


def _same_symbol(a, b) -> bool:
    """Whether two located quads are the same symbol (centres closer than half its size)."""
    ax, ay = sum(x for x, _ in a) / 4, sum(y for _, y in a) / 4
    bx, by = sum(x for x, _ in b) / 4, sum(y for _, y in b) / 4
    size = max(
        max(x for x, _ in a) - min(x for x, _ in a), max(y for _, y in a) - min(y for _, y in a)
    )
    return (ax - bx) ** 2 + (ay - by) ** 2 < (size / 2) ** 2


# A retry strategy reads a crop around a located symbol (cheapest first when there are several).
Strategy = Callable[["LocatingDecoder", np.ndarray], "Look"]

# Measured on frame_set() frames at 640x480 and 1280x720 (800 + 300 frames), after the first pass
# and the half look: a 2x upscale of the crop recovered all that any strategy did but one frame in
# 800. A fixed or global-histogram threshold, a 3x3 smoothing, a contrast stretch, a sharpen and
# combinations of these with the upscale were tried and dropped: they did not earn their cost.
STRATEGIES: tuple[tuple[str, Strategy], ...] = (
    ("upscale", lambda d, crop: d.look(upscale2(crop))),
)


# ---------------------------------------------------------------------------------------------
# The stateful shell.


@dataclass(slots=True)
class ReaderStats:
    """Counters for the owner page. ``frames`` offered, ``decoded`` frames with at least one
    payload, ``skipped`` by the motion gate, ``half_looks`` and ``retries`` (crop strategies tried),
    ``last_decode_ms`` wall time of the latest frame that was actually decoded, in milliseconds."""

    frames: int = 0
    decoded: int = 0
    skipped: int = 0
    half_looks: int = 0
    retries: int = 0
    last_decode_ms: float = 0.0


class MotionGate:
    """Decides per frame whether decoding is needed (see the module docstring).

    ``every_nth``: decode at least every Nth frame of a static scene; ``settle_frames``: frames
    always decoded after a change; ``threshold``: grey levels a cell must move to count as change.
    """

    def __init__(self, *, every_nth: int = 10, settle_frames: int = 3, threshold: float = 14.0):
        if every_nth < 1:
            raise ValueError(f"motion gate: every_nth must be >= 1 frame, got {every_nth}")
        self.every_nth = every_nth
        self.settle_frames = settle_frames
        self.threshold = threshold
        self._reference: np.ndarray | None = None
        self._since_decode = 0
        self._settle_left = 0
        self._code_seen = False

    def should_decode(self, pixels: np.ndarray) -> bool:
        current = signature(pixels)
        if self._reference is None or scene_changed(current, self._reference, self.threshold):
            self._settle_left = self.settle_frames
            decode = True
        elif self._code_seen or self._since_decode + 1 >= self.every_nth:
            decode = True
        elif self._settle_left > 0:
            self._settle_left -= 1
            decode = True
        else:
            decode = False
        if decode:
            # Compare later frames with the last decoded one, so a slow drift adds up to a change.
            self._reference = current
            self._since_decode = 0
        else:
            self._since_decode += 1
        return decode

    def record(self, code_seen: bool) -> None:
        """Tell the gate whether the decoded frame showed a code (read or only located)."""
        self._code_seen = code_seen


class QrReader:
    """The production pipeline; implements ``Decoder`` (name e.g. ``"zxing+retry"``).

    ``decoder``: any ``Decoder``; retries need one with ``look`` (zxing), others get one pass.
    ``motion_gate``: skip unchanged frames without a code (off for independent images, e.g.
    ``kiosk decode`` or the per-frame bench). ``retry_on_miss``: the half look and crop strategies.
    Never raises on image content; a frame that is not 2-D ``uint8`` raises ``ValueError``.
    """

    def __init__(
        self,
        decoder: Decoder,
        *,
        motion_gate: bool = True,
        retry_on_miss: bool = True,
        every_nth: int = 10,
        strategies: tuple[tuple[str, Strategy], ...] = STRATEGIES,
        max_located: int = 2,
    ) -> None:
        self.decoder = decoder
        self._locating = callable(getattr(decoder, "look", None))
        self.retry_on_miss = retry_on_miss and self._locating
        self.gate = MotionGate(every_nth=every_nth) if motion_gate else None
        self.strategies = strategies
        self.max_located = max_located
        self.stats = ReaderStats()
        self.name = decoder.name + ("+retry" if self.retry_on_miss else "")

    def decode(self, pixels: np.ndarray) -> list[Decoded]:
        """Payloads readable in ``pixels`` (grey, height x width); [] when none or skipped."""
        if not isinstance(pixels, np.ndarray) or pixels.ndim != 2 or pixels.dtype != np.uint8:
            kind = getattr(pixels, "dtype", type(pixels).__name__)
            raise ValueError(
                f"QrReader: expected a 2-D uint8 grey frame, got {kind} "
                f"{getattr(pixels, 'shape', '')}"
            )
        self.stats.frames += 1
        if min(pixels.shape) < MIN_SIDE_PX:
            # A glitched or truncated frame: too small to hold a QR code, and too small for the
            # decoder's own image checks. A miss, never an error.
            return []
        if self.gate is not None and not self.gate.should_decode(pixels):
            self.stats.skipped += 1
            return []
        started = time.perf_counter_ns()
        decoded, located = self._read(pixels)
        self.stats.last_decode_ms = (time.perf_counter_ns() - started) / 1e6
        if decoded:
            self.stats.decoded += 1
        if self.gate is not None:
            self.gate.record(bool(decoded) or located)
        return decoded

    def _read(self, pixels: np.ndarray) -> tuple[list[Decoded], bool]:
        """(payloads, whether a symbol was located without being read)."""
        if not self._locating:
            return self.decoder.decode(pixels), False
        look = self.decoder.look  # type: ignore[attr-defined]
        located: list = []

        def seen(result: Look, scale: int = 1) -> list[Decoded]:
            for quad in result.located:
                at_full_scale = tuple((scale * x, scale * y) for x, y in quad)
                if not any(_same_symbol(at_full_scale, known) for known in located):
                    located.append(at_full_scale)
            return result.decoded

        # First pass, full resolution: a global threshold reads a well-lit code for a fraction
        # of the adaptive binarizer's cost; the adaptive one handles uneven light and low contrast.
        decoded = seen(look(pixels, binarizer="histogram")) or seen(look(pixels))
        if decoded or not self.retry_on_miss:
            return decoded, bool(located)
        if min(pixels.shape) < 2 * MIN_SIDE_PX:
            return [], bool(located)  # half of it could not hold a code either
        self.stats.half_looks += 1
        decoded = seen(look(halve(pixels)), scale=2)
        if decoded:
            return decoded, False
        for quad in located[: self.max_located]:
            crop = crop_around(pixels, quad)
            for _name, strategy in self.strategies:
                self.stats.retries += 1
                result = strategy(self.decoder, crop)  # type: ignore[arg-type]
                if result.decoded:
                    return result.decoded, False
        return [], bool(located)
