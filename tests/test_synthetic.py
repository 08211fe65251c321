"""Synthetic frames and the scripted camera: deterministic, realistic enough to exercise decoders."""

from __future__ import annotations

import numpy as np
import pytest

from fakes import FakeTime
from hardware.decode.zxing import ZxingDecoder
from hardware.fakes.synthetic import (
    SyntheticCamera,
    compose_frame,
    frame_params,
    frame_set,
    render_code,
)
from hardware.protocols import CameraError, FrameSource

PAYLOAD = "M-000123-7F3A9C2E"


def payloads_in(pixels: np.ndarray) -> list[bytes]:
    return [d.payload for d in ZxingDecoder().decode(pixels)]


def test_render_code_is_black_on_white_with_quiet_zone_and_reads_back():
    image = render_code(PAYLOAD, module_px=5, border_modules=4)
    assert image.dtype == np.uint8 and image.ndim == 2
    assert image.shape[0] == image.shape[1] and image.shape[0] % 5 == 0
    assert set(np.unique(image)) == {0, 255}
    quiet = 4 * 5
    assert (image[:quiet] == 255).all() and (image[:, -quiet:] == 255).all()
    assert payloads_in(image) == [PAYLOAD.encode()]


def test_render_code_rejects_bad_arguments():
    with pytest.raises(ValueError, match="module_px"):
        render_code(PAYLOAD, module_px=0)
    with pytest.raises(ValueError, match="border_modules"):
        render_code(PAYLOAD, module_px=2, border_modules=-1)
    with pytest.raises(ValueError, match="does not fit"):
        render_code("x" * 5000, module_px=1)


def test_compose_frame_is_deterministic_per_seed():
    kwargs = {"rotation_deg": 33, "tilt": 0.2, "blur_px": 1.0, "noise": 5, "background": "texture"}
    first = compose_frame(PAYLOAD, seed=7, **kwargs)
    again = compose_frame(PAYLOAD, seed=7, **kwargs)
    other = compose_frame(PAYLOAD, seed=8, **kwargs)
    assert first.shape == (480, 640) and first.dtype == np.uint8
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_compose_frame_places_a_readable_code_and_empty_scenes_have_none():
    with_code = compose_frame(PAYLOAD, width=320, height=240, code_fraction=0.6, rotation_deg=20)
    assert payloads_in(with_code) == [PAYLOAD.encode()]
    for seed in range(6):
        assert payloads_in(compose_frame(None, background="texture", seed=seed)) == []


def test_compose_frame_distortions_change_the_picture():
    plain = compose_frame(PAYLOAD, seed=1)
    assert compose_frame(PAYLOAD, seed=1, contrast=0.3).std() < plain.std()
    assert compose_frame(PAYLOAD, seed=1, brightness=30).mean() > plain.mean()
    textured = compose_frame(None, background="texture", seed=1)
    assert textured.std() > compose_frame(None, seed=1).std()


def test_compose_frame_rejects_unknown_background():
    with pytest.raises(ValueError, match="background"):
        compose_frame(PAYLOAD, background="beach")


def test_frame_set_is_reproducible_and_mixes_sizes_and_empty_frames():
    payloads = ["A-1", "B-22"]
    frames = frame_set(160, 120, payloads, count=10, seed=3)
    again = frame_set(160, 120, payloads, count=10, seed=3)
    assert [p for p, _ in frames] == ["A-1", "B-22", "A-1", "B-22", None] * 2
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(frames, again, strict=True))
    assert all(px.shape == (120, 160) for _, px in frames)
    recipes = frame_params(640, 480, payloads, count=200, seed=0)
    fractions = [r["code_fraction"] for _, r in recipes]
    assert 0.12 <= min(fractions) < 0.2 and 0.4 < max(fractions) <= 0.45
    assert {r["background"] for _, r in recipes} == {"plain", "texture"}
    assert min(r["contrast"] for _, r in recipes) == 0.3


def test_frame_set_rejects_no_payloads():
    with pytest.raises(ValueError, match="payloads"):
        frame_set(64, 48, [], count=1)


def test_synthetic_camera_plays_its_script_in_order_then_ends():
    camera = SyntheticCamera([("A-1", 2), (None, 1), ("B-2", 2)], fps=None)
    assert isinstance(camera, FrameSource)
    seen = []
    for _ in range(5):
        frame = camera.read(timeout_s=0.1)
        assert frame is not None
        seen.append(payloads_in(frame.pixels))
    assert seen == [[b"A-1"], [b"A-1"], [], [b"B-2"], [b"B-2"]]
    with pytest.raises(EOFError):
        camera.read(timeout_s=0.1)


def test_synthetic_camera_loops_and_varies_noise_between_frames():
    camera = SyntheticCamera([("A-1", 1), (None, 2)], fps=None, loop=True)
    frames = [camera.read(0.1) for _ in range(7)]
    assert [f.index for f in frames] == list(range(7))
    assert payloads_in(frames[3].pixels) == [b"A-1"]  # the script started over
    assert payloads_in(frames[6].pixels) == [b"A-1"]
    # Same scene, different sensor noise: never byte-identical, never more than a little apart.
    a, b = frames[1].pixels, frames[2].pixels
    assert not np.array_equal(a, b)
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 4  # two jitters of +-2
    assert not frames[1].pixels.flags.writeable


def test_synthetic_camera_paces_with_the_injected_clock():
    fake = FakeTime()
    camera = SyntheticCamera([(None, 5)], fps=10, clock=fake.clock, sleep=fake.sleep)
    first = camera.read(1.0)
    second = camera.read(1.0)
    assert second.captured_ns - first.captured_ns == 100_000_000
    # The next frame is 100 ms away: a 10 ms timeout returns None after sleeping 10 ms.
    before = fake.now_ns
    assert camera.read(0.01) is None
    assert fake.now_ns - before == 10_000_000
    third = camera.read(1.0)
    assert third.captured_ns - second.captured_ns == 100_000_000


def test_synthetic_camera_validates_script_and_close():
    with pytest.raises(ValueError, match="no steps"):
        SyntheticCamera([])
    with pytest.raises(ValueError, match="step 1"):
        SyntheticCamera([("A", 1), ("B", 0)])
    camera = SyntheticCamera([("A", 1)], fps=None)
    camera.close()
    with pytest.raises(CameraError):
        camera.read(0.1)


def test_a_phone_screen_adds_moire_glare_and_lifted_blacks_but_stays_readable():
    payload = "FFP1:" + "A" * 116 + "Q"  # a pass-sized payload (122 characters)
    printed = compose_frame(payload, code_fraction=0.6, seed=4)
    shown = compose_frame(payload, code_fraction=0.6, screen=1.0, seed=4)
    assert not np.array_equal(printed, shown)
    # Glare and backlight only brighten: the darkest pixels of the code are lifted.
    assert np.percentile(shown, 1) > np.percentile(printed, 1)
    assert [s.payload for s in ZxingDecoder().decode(shown)] == [payload.encode()]
    with pytest.raises(ValueError, match="screen"):
        compose_frame(payload, screen=1.5)
