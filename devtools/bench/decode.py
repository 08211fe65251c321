"""The decode benchmark of ``kiosk bench`` (docs/performance.md): every available decoder and the
production pipeline on the same synthetic frames, in the same run, interleaved per frame so that
machine noise hits them alike. Figures are medians and ratios, reported with the machine.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence

import numpy as np

from hardware.protocols import Decoder

# Credentials of the lengths the door will see: a short static code, a UUID-style static code
# and a signed rotating phone pass (docs/passes.md; made by devtools.bench.passes' fixed key);
# shorter ones read markedly better.
BENCH_PAYLOADS = (
    "M-000123-7F3A9C2E",
    "3f2b8a4e-1c6d-4e7a-9b2f-5d8c1a0e6f47",
    "FFP1:BENCHAAAA34UOQG45QIC6TR7XJUU64BVP5S22LTJUK3YQ6EUMV73NRXXRA5ZX5CFJUKWFCNV7NXFFJORZIVDXXNUAX"
    "Q7IZPGVTMB6HMWTEZYP23EDNJQU",
)
DEFAULT_SIZES = ((320, 240), (640, 480), (1280, 720))
REFERENCE_SIZE = "640x480"
BASELINE = "pyzbar_all"
PIPELINE = "pipeline"
IDLE_FRAMES = 240  # eight seconds of an empty entrance at 30 frames/s


def _cpuinfo() -> dict[str, str]:
    """The first value of each key in /proc/cpuinfo (Linux only; {} elsewhere)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                key, sep, value = line.partition(":")
                if sep:
                    fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def _machine() -> dict:
    info = _cpuinfo()
    versions = {}
    for package in ("numpy", "zxing-cpp", "pyzbar", "opencv-python-headless", "segno"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": info.get("model name") or platform.processor() or platform.machine(),
        # A Raspberry Pi names the board here ("Raspberry Pi 4 Model B Rev 1.4").
        "board": info.get("Model"),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "packages": versions,
    }


def _decoders() -> tuple[dict[str, Decoder], dict[str, dict]]:
    """The contestants that can run here, and a report entry for each one that cannot."""
    from hardware.decode.zxing import ZxingDecoder
    from kiosk.door.reader import QrReader

    def pyzbar_all() -> Decoder:
        from hardware.decode.zbar import PyzbarDecoder

        return PyzbarDecoder(all_symbologies=True)

    def pyzbar_qr() -> Decoder:
        from hardware.decode.zbar import PyzbarDecoder

        return PyzbarDecoder()

    def opencv() -> Decoder:
        from hardware.decode.opencv import OpenCVDecoder

        return OpenCVDecoder()

    factories: list[tuple[str, Callable[[], Decoder]]] = [
        (BASELINE, pyzbar_all),
        ("pyzbar", pyzbar_qr),
        ("opencv", opencv),
        ("zxing", ZxingDecoder),
        # Motion gate off: the bench's frames are unrelated, so each must be decoded on its own.
        (PIPELINE, lambda: QrReader(ZxingDecoder(), motion_gate=False)),
    ]
    ready: dict[str, Decoder] = {}
    missing: dict[str, dict] = {}
    for name, factory in factories:
        try:
            ready[name] = factory()
        except Exception as exc:  # a missing library must not sink the other contestants
            missing[name] = {"available": False, "error": str(exc)}
    return ready, missing


def _summary(
    code_ms: list[float],
    empty_ms: list[float],
    read: int,
    false_reads: int,
    by_length: dict[int, list[bool]],
) -> dict:
    every = code_ms + empty_ms
    ordered = sorted(every)

    def median(values: list[float]) -> float | None:
        return round(statistics.median(values), 4) if values else None

    return {
        "available": True,
        "median_ms": median(every),
        "p90_ms": round(ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))], 4)
        if ordered
        else None,
        "code_median_ms": median(code_ms),
        "empty_median_ms": median(empty_ms),
        "success": round(read / len(code_ms), 4) if code_ms else None,
        "false_reads": false_reads,
        "success_by_length": {
            str(length): round(sum(hits) / len(hits), 4)
            for length, hits in sorted(by_length.items())
        },
    }


def _bench_size(
    frames: Sequence[tuple[str | None, np.ndarray]],
    decoders: dict[str, Decoder],
    progress: Callable[[str], None] | None,
    label: str,
) -> dict[str, dict]:
    names = list(decoders)
    code_ms: dict[str, list[float]] = {n: [] for n in names}
    empty_ms: dict[str, list[float]] = {n: [] for n in names}
    read = dict.fromkeys(names, 0)
    false_reads = dict.fromkeys(names, 0)
    by_length: dict[str, dict[int, list[bool]]] = {n: {} for n in names}
    if frames:  # first calls pay for lazy initialisation inside the libraries: not measured
        for decoder in decoders.values():
            decoder.decode(frames[0][1])
    for i, (expected, pixels) in enumerate(frames):
        # Rotate the order every frame so no decoder always runs first (cold caches) or last.
        for name in names[i % len(names) :] + names[: i % len(names)]:
            started = time.perf_counter_ns()
            found = decoders[name].decode(pixels)
            elapsed_ms = (time.perf_counter_ns() - started) / 1e6
            payloads = [symbol.payload for symbol in found]
            if expected is None:
                empty_ms[name].append(elapsed_ms)
                false_reads[name] += bool(payloads)
                continue
            code_ms[name].append(elapsed_ms)
            want = expected.encode("utf-8")
            hit = want in payloads
            read[name] += hit
            # A wrong payload is worse than none: the door would act on it.
            false_reads[name] += any(p != want for p in payloads)
            by_length[name].setdefault(len(expected), []).append(hit)
        if progress is not None and (i + 1) % 25 == 0:
            progress(f"{label}: {i + 1}/{len(frames)} frames")
    return {
        n: _summary(code_ms[n], empty_ms[n], read[n], false_reads[n], by_length[n]) for n in names
    }


def _idle_costs(width: int, height: int, seed: int) -> dict:
    """What an empty entrance costs the pipeline per frame, with and without the motion gate."""
    from hardware.decode.zxing import ZxingDecoder
    from hardware.fakes.synthetic import compose_frame
    from kiosk.door.reader import QrReader

    # One cluttered empty scene, seen through a noisy sensor: no two frames are byte-identical.
    scene = compose_frame(None, width=width, height=height, background="texture", seed=seed)
    rng = np.random.default_rng(seed)
    variants = [
        np.clip(scene.astype(np.int16) + rng.normal(0, 2.5, scene.shape), 0, 255).astype(np.uint8)
        for _ in range(4)
    ]
    gated = QrReader(ZxingDecoder(), motion_gate=True)
    ungated = QrReader(ZxingDecoder(), motion_gate=False)
    gated.decode(variants[0])
    ungated.decode(variants[0])
    gated_ms: list[float] = []
    ungated_ms: list[float] = []
    for i in range(IDLE_FRAMES):
        pixels = variants[i % len(variants)]
        for reader, times in ((gated, gated_ms), (ungated, ungated_ms)):
            started = time.perf_counter_ns()
            reader.decode(pixels)
            times.append((time.perf_counter_ns() - started) / 1e6)
    return {
        "frames": IDLE_FRAMES,
        # Mean, not median: the gate's periodic full decodes are part of the idle cost.
        "static_gated": round(statistics.fmean(gated_ms), 4),
        "empty_ungated": round(statistics.median(ungated_ms), 4),
        "skipped_fraction": round(gated.stats.skipped / max(1, gated.stats.frames - 1), 4),
    }


def run_decode_bench(
    *,
    sizes: Sequence[tuple[int, int]] = DEFAULT_SIZES,
    frames_per_size: int = 200,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Run the decode benchmark and return a JSON-able report (targets: docs/performance.md).

    For every size, ``frames_per_size`` synthetic frames (one in five empty; codes 12-45% of the
    frame height under rotation, tilt, blur, noise, low contrast) are decoded by each available
    decoder and by the production pipeline. Success is the fraction of code frames whose expected
    payload was read; a wrong payload counts as a false read. Times are per frame in
    milliseconds. A decoder whose library is missing is reported ``{"available": false,
    "error": ...}``; without the baseline (pyzbar, all symbologies; needs libzbar0) the speed ratio
    is None and ``decode.note`` says why. The default takes about a minute on a development
    machine. Raises ``ValueError`` for a non-positive ``frames_per_size``.
    """
    from hardware.fakes.synthetic import frame_set

    if frames_per_size < 1:
        raise ValueError(f"frames_per_size must be >= 1, got {frames_per_size}")
    decoders, missing = _decoders()
    report: dict = {
        "machine": _machine(),
        "frames_per_size": frames_per_size,
        "seed": seed,
        "payload_lengths": [len(p) for p in BENCH_PAYLOADS],
        "sizes": {},
    }
    zxing = decoders.get("zxing")
    if zxing is not None:
        report["zxing_options"] = zxing.options()  # type: ignore[attr-defined]
    for width, height in sizes:
        label = f"{width}x{height}"
        if progress is not None:
            progress(f"{label}: rendering {frames_per_size} frames")
        frames = frame_set(width, height, BENCH_PAYLOADS, count=frames_per_size, seed=seed)
        results = _bench_size(frames, decoders, progress, label)
        results.update(missing)
        report["sizes"][label] = {
            "decoders": {n: r for n, r in results.items() if n != PIPELINE},
            "pipeline": results[PIPELINE],
        }

    reference = REFERENCE_SIZE if REFERENCE_SIZE in report["sizes"] else next(iter(report["sizes"]))
    ref_width, ref_height = (int(v) for v in reference.split("x"))
    if progress is not None:
        progress(f"{reference}: idle cost with and without the motion gate")
    idle = _idle_costs(ref_width, ref_height, seed)
    report["idle_frame_ms"] = idle
    report["decode"] = _decode_summary(report["sizes"][reference], reference, idle)
    return report


def _decode_summary(at: dict, size: str, idle: dict) -> dict:
    pipeline = at["pipeline"]
    baseline = at["decoders"].get(BASELINE, {"available": False, "error": "not run"})
    singles = {n: r for n, r in at["decoders"].items() if r.get("available")}
    best_name = max(singles, key=lambda n: (singles[n]["success"] or 0.0, -singles[n]["median_ms"]))
    summary: dict = {
        "size": size,
        "pipeline": pipeline,
        "baseline": baseline,
        "best_single": {"name": best_name, **singles[best_name]},
        "speedup_vs_baseline": None,
    }
    if baseline.get("available") and pipeline["median_ms"]:
        speedup = baseline["median_ms"] / pipeline["median_ms"]
        summary["speedup_vs_baseline"] = round(speedup, 2)
        speed_ok: bool | None = speedup >= 20
    else:
        speed_ok = None
        summary["note"] = (
            "baseline (pyzbar, all symbologies) unavailable, so the speed target cannot be "
            "checked: install libzbar0 (apt) and pyzbar (pip)"
        )
    summary["targets"] = {
        "median_at_most_baseline_over_20": speed_ok,
        "success_at_least_best_single": (pipeline["success"] or 0)
        >= (singles[best_name]["success"] or 0),
        "idle_frame_cheaper_than_code_frame": idle["static_gated"]
        < (pipeline["code_median_ms"] or 0),
    }
    return summary
