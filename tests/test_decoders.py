"""Each decoder reads a clean code, finds nothing in an empty scene, and fails helpfully."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from fakes import damaged_code_frame
from hardware.decode.backends import make_decoder
from hardware.decode.zxing import ZxingDecoder
from hardware.fakes.synthetic import compose_frame
from hardware.protocols import Decoder, DecoderUnavailable

PAYLOAD = "3f2b8a4e-1c6d-4e7a-9b2f-5d8c1a0e6f47"


def pyzbar_decoder():
    """pyzbar needs libzbar0, which `./dev test` and `.ci/run` install: its absence is a failure."""
    from hardware.decode.zbar import PyzbarDecoder

    return PyzbarDecoder()


@pytest.fixture(scope="module")
def clean_frame() -> np.ndarray:
    return compose_frame(PAYLOAD, code_fraction=0.4, rotation_deg=12, noise=2, seed=5)


@pytest.fixture(scope="module")
def empty_frame() -> np.ndarray:
    return compose_frame(None, background="texture", noise=2, seed=5)


@pytest.mark.parametrize("name", ["zxing", "pyzbar", "opencv"])
def test_decoder_reads_a_clean_code_and_nothing_in_an_empty_scene(name, clean_frame, empty_frame):
    decoder = pyzbar_decoder() if name == "pyzbar" else make_decoder(name)
    assert isinstance(decoder, Decoder)
    assert [d.payload for d in decoder.decode(clean_frame)] == [PAYLOAD.encode()]
    assert decoder.decode(clean_frame)[0].decoder == decoder.name
    assert decoder.decode(empty_frame) == []


@pytest.mark.parametrize("name", ["zxing", "pyzbar", "opencv"])
def test_decoder_rejects_a_colour_frame_with_a_clear_message(name):
    decoder = pyzbar_decoder() if name == "pyzbar" else make_decoder(name)
    with pytest.raises(ValueError, match="2-D uint8"):
        decoder.decode(np.zeros((48, 64, 3), np.uint8))


def test_pyzbar_all_symbologies_reads_qr_too(clean_frame):
    from hardware.decode.zbar import PyzbarDecoder

    pyzbar_decoder()
    decoder = PyzbarDecoder(all_symbologies=True)
    assert decoder.name == "pyzbar_all"
    assert [d.payload for d in decoder.decode(clean_frame)] == [PAYLOAD.encode()]


def test_zxing_keeps_hostile_bytes_exactly():
    hostile = "\x1b[31mred\x07"
    frame = compose_frame(hostile, code_fraction=0.4)
    assert [d.payload for d in ZxingDecoder().decode(frame)] == [hostile.encode()]


def test_zxing_look_reports_a_located_but_unreadable_symbol():
    look = ZxingDecoder().look(damaged_code_frame(PAYLOAD))
    assert look.decoded == []
    assert len(look.located) == 1
    xs = [x for x, _ in look.located[0]]
    assert 100 < min(xs) < max(xs) < 100 + 37 * 6  # inside where the symbol was drawn


def test_zxing_look_on_an_empty_scene_locates_nothing(empty_frame):
    assert ZxingDecoder().look(empty_frame).located == []


def test_zxing_look_rejects_unknown_binarizer(clean_frame):
    with pytest.raises(ValueError, match="unknown binarizer 'otsu'"):
        ZxingDecoder().look(clean_frame, binarizer="otsu")


def test_make_decoder_rejects_unknown_names():
    with pytest.raises(ValueError, match=r"unknown decoder 'zbar'.*zxing, pyzbar, opencv"):
        make_decoder("zbar")


def test_missing_pyzbar_gives_an_install_hint(monkeypatch):
    from hardware.decode.zbar import PyzbarDecoder

    monkeypatch.setitem(sys.modules, "pyzbar", None)
    monkeypatch.setitem(sys.modules, "pyzbar.pyzbar", None)
    with pytest.raises(DecoderUnavailable, match="apt install libzbar0"):
        PyzbarDecoder()


def test_missing_zxing_gives_an_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "zxingcpp", None)
    with pytest.raises(DecoderUnavailable, match="zxing-cpp"):
        make_decoder("zxing")


def test_missing_opencv_gives_an_install_hint(monkeypatch):
    from hardware.decode.opencv import OpenCVDecoder

    monkeypatch.setitem(sys.modules, "cv2", None)
    with pytest.raises(RuntimeError, match="python3-opencv"):
        OpenCVDecoder()


def test_decode_bench_reports_every_decoder_side_by_side():
    from devtools.bench.decode import run_decode_bench

    messages: list[str] = []
    report = run_decode_bench(
        sizes=((320, 240),), frames_per_size=5, seed=2, progress=messages.append
    )
    at = report["sizes"]["320x240"]
    assert set(at["decoders"]) == {"pyzbar_all", "pyzbar", "opencv", "zxing"}
    for result in [*at["decoders"].values(), at["pipeline"]]:
        if result["available"]:
            assert 0 <= result["success"] <= 1 and result["median_ms"] > 0
            assert result["false_reads"] == 0
    decode = report["decode"]
    assert decode["size"] == "320x240"  # the only size run stands in for 640x480
    assert decode["best_single"]["name"] in at["decoders"]
    assert report["idle_frame_ms"]["skipped_fraction"] > 0.5
    assert messages and report["machine"]["python"]


def test_decode_bench_without_the_baseline_says_why(monkeypatch):
    from devtools.bench.decode import run_decode_bench

    monkeypatch.setitem(sys.modules, "pyzbar", None)
    monkeypatch.setitem(sys.modules, "pyzbar.pyzbar", None)
    report = run_decode_bench(sizes=((160, 120),), frames_per_size=2, seed=0)
    baseline = report["decode"]["baseline"]
    assert baseline["available"] is False and "libzbar0" in baseline["error"]
    assert report["decode"]["speedup_vs_baseline"] is None
    assert "baseline" in report["decode"]["note"]
    assert report["decode"]["targets"]["median_at_most_baseline_over_20"] is None
