"""The phone-pass part of ``kiosk bench`` (docs/performance.md, "Phone passes").

Two questions, each answered on the same machine in the same run:

- **Does a pass read as well as a card?** Every generated frame recipe (size 12-45% of the frame
  height, rotation, tilt, blur, noise, contrast, exposure, background) is rendered twice: once
  with a signed pass code on a phone screen (moire, glare, lifted blacks: ``compose_frame``'s
  ``screen``), once with a static card code of the same physical size (the same symbol height in
  pixels, printed). Both go through the production pipeline (``QrReader`` over zxing-cpp). The
  success fractions are on the same frames, so their difference is the cost of the pass's denser
  symbol (37 modules against 25) and of the screen.
- **What does a check cost?** ``verify_us_p50``: the median time of one Ed25519 signature check
  (``sync.passes.verify_signature``), in microseconds; ``check_us_p50`` the whole door-side check
  (``kiosk.core.passes.check_pass``: parse already done, signature, window, replay flag).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime

import numpy as np

# A printed card's code as the bench's other figures use (17 characters: a version 2 symbol).
STATIC_CODE = "M-000123-7F3A9C2E"
BENCH_ORG = "org-bench"
BENCH_PASS_ID = "BENCHAAA"  # noqa: S105 - a pass id, not a secret
PERIOD_S = 15
SIZES = ((640, 480), (1280, 720))
VERIFY_ROUNDS = 2000


def bench_key():  # -> Ed25519PrivateKey
    """The bench's fixed pass key (deterministic, so runs are comparable)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.from_private_bytes(bytes(range(100, 132)))


def run_pass_bench(
    *, frames_per_size: int = 120, seed: int = 7, progress: Callable[[str], None] | None = None
) -> dict:
    """Decode success of pass codes on a phone screen against static codes of the same size, and
    the verify cost. Returns a JSON-able dict (keys documented in docs/performance.md). Raises
    ValueError for a non-positive ``frames_per_size``."""
    from hardware.decode.zxing import ZxingDecoder
    from hardware.fakes.synthetic import compose_frame, frame_params
    from kiosk.door.reader import QrReader
    from sync.passes import pass_payload, step_at

    if frames_per_size < 1:
        raise ValueError(f"frames_per_size must be >= 1, got {frames_per_size}")
    key = bench_key()
    first_step = step_at(datetime(2026, 12, 1, tzinfo=UTC).timestamp(), PERIOD_S)
    reader = QrReader(ZxingDecoder(), motion_gate=False)
    rng = np.random.default_rng(seed)
    out: dict = {"frames_per_size": frames_per_size, "payload_chars": None}
    for width, height in SIZES:
        label = f"{width}x{height}"
        recipes = frame_params(
            width, height, ["code"], count=frames_per_size, seed=seed, empty_every=0
        )
        hits = {"pass": 0, "static": 0}
        for n, (_, params) in enumerate(recipes):
            payload = pass_payload(key, BENCH_ORG, BENCH_PASS_ID, first_step + n)
            out["payload_chars"] = len(payload)
            screen = float(rng.uniform(0.3, 1.0))
            shown = {
                "pass": compose_frame(payload, width=width, height=height, screen=screen, **params),
                "static": compose_frame(STATIC_CODE, width=width, height=height, **params),
            }
            wanted = {"pass": payload, "static": STATIC_CODE}
            for kind, pixels in shown.items():
                found = {symbol.payload for symbol in reader.decode(pixels)}
                hits[kind] += wanted[kind].encode("ascii") in found
            if progress is not None and (n + 1) % 40 == 0:
                progress(f"passes {label}: {n + 1}/{frames_per_size} frame pairs")
        out[f"success_{width}"] = round(hits["pass"] / frames_per_size, 4)
        out[f"static_success_{width}"] = round(hits["static"] / frames_per_size, 4)
    out.update(_check_costs(key, first_step))
    return out


def _check_costs(key, step: int) -> dict:
    from kiosk.core.passes import PassAccepted, PassRecord, check_pass
    from sync.credentials import parse_payload
    from sync.passes import PhonePass, pass_payload, signed_message, verify_signature

    public = key.public_key().public_bytes_raw()
    record = PassRecord(BENCH_PASS_ID, "m-bench", BENCH_ORG, public, PERIOD_S)
    when = datetime.fromtimestamp(step * PERIOD_S + 1, UTC)
    codes = []
    for n in range(VERIFY_ROUNDS // 10):
        parsed = parse_payload(pass_payload(key, BENCH_ORG, BENCH_PASS_ID, step - n % 3))
        assert isinstance(parsed, PhonePass)
        codes.append(parsed)
    verify_us: list[float] = []
    check_us: list[float] = []
    for n in range(VERIFY_ROUNDS):
        code = codes[n % len(codes)]
        message = signed_message(BENCH_ORG, code.pass_id, code.step)
        started = time.perf_counter_ns()
        ok = verify_signature(public, message, code.signature)
        verify_us.append((time.perf_counter_ns() - started) / 1e3)
        started = time.perf_counter_ns()
        result = check_pass(code, record, when, used=False)
        check_us.append((time.perf_counter_ns() - started) / 1e3)
        if not ok or not isinstance(result, PassAccepted):
            raise RuntimeError("the bench's own pass codes did not verify")
    return {
        "verify_us_p50": round(statistics.median(verify_us), 1),
        "check_us_p50": round(statistics.median(check_us), 1),
        "verify_rounds": VERIFY_ROUNDS,
    }
