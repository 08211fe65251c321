"""`kiosk bench --json`: the figures the issue asks for are all there and hang together.

This checks the measuring machinery on a small run (8 frames per resolution, 60 members at the
door), not the speed: figures come from the bench itself, never from timed tests."""

from __future__ import annotations

import json
import subprocess
import sys

from fakes import clean_env


def test_bench_json_reports_every_figure():
    result = subprocess.run(
        [sys.executable, "-m", "kiosk", "bench", "--json", "--frames", "8", "--scans", "60"],
        capture_output=True, text=True, timeout=300, check=False, env=clean_env(),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    r = json.loads(result.stdout)
    for name in ("pipeline", "baseline", "best_single"):
        figures = r["decode"][name]
        assert figures["median_ms"] > 0
        assert 0.0 <= figures["success"] <= 1.0
    assert r["decode"]["best_single"]["name"] in {"zxing", "pyzbar", "pyzbar_all", "opencv"}
    s2r = r["scan_to_relay_ms"]
    assert 0 < s2r["p50"] <= s2r["p99"]
    assert r["scans"] == r["loop"]["grants"] == 60 and r["loop"]["denied"] == 0
    # A third of the members show a phone pass: each one verified and admitted.
    assert r["loop"]["pass_grants"] == r["passes"]["loop_pass_grants"] == 20
    assert 0 < r["passes"]["pass_scan_to_relay_ms"]["p50"] <= s2r["max"]
    assert 0 < r["idle_frame_ms"] < r["decode"]["pipeline"]["code_median_ms"] * 100
    assert 20 < r["rss_mb"] < 1000  # the child's own peak, not the parent's
    assert r["machine"]["cores"] >= 1
    passes = r["passes"]
    for width in (640, 1280):
        assert 0.0 <= passes[f"success_{width}"] <= 1.0
        assert 0.0 <= passes[f"static_success_{width}"] <= 1.0
    assert passes["payload_chars"] == 122
    assert 0 < passes["verify_us_p50"] <= passes["check_us_p50"] * 2
