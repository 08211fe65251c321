"""Frame sources: pacing, the latest-frame grabber, replay of folders and videos, the USB and Pi
cameras up to their vendor boundary (no hardware needed)."""

from __future__ import annotations

import logging
import re
import sys
import threading
import types
from typing import ClassVar

import cv2
import numpy as np
import pytest

from fakes import FakeTime
from hardware.camera.backends import CameraSettings, open_camera
from hardware.camera.grabber import FrameGrabber, Pacer
from hardware.camera.opencv import OpenCVCamera
from hardware.camera.picamera import Picamera2Camera
from hardware.camera.replay import ReplayCamera
from hardware.protocols import CameraError, FrameSource

# Bounds a wait for a capture thread's frame or event: it returns as soon as that happens, and the
# bound only ends a hang (a busy machine may run the thread late; that is not a failure).
WAIT_S = 60.0


def flat(level: int, shape=(48, 64)) -> np.ndarray:
    return np.full(shape, level, np.uint8)


# --- Pacer ----------------------------------------------------------------------------------


def test_pacer_without_fps_never_sleeps():
    fake = FakeTime(5_000_000_000)
    pacer = Pacer(None, clock=fake.clock, sleep=fake.sleep)
    assert all(pacer.wait(0.0) for _ in range(5))
    assert fake.sleeps == []


def test_pacer_keeps_a_fixed_grid_and_does_not_burst_after_falling_behind():
    fake = FakeTime(5_000_000_000)
    pacer = Pacer(20, clock=fake.clock, sleep=fake.sleep)
    assert pacer.wait(1.0)  # first frame at once
    start = fake.now_ns
    assert pacer.wait(1.0)
    assert fake.now_ns - start == 50_000_000
    fake.now_ns += 500_000_000  # the reader stalled for half a second
    late = fake.now_ns
    assert pacer.wait(1.0) and fake.now_ns == late  # one frame immediately...
    assert pacer.wait(1.0) and fake.now_ns == late + 50_000_000  # ...then back to the rate


def test_pacer_times_out_when_the_next_frame_is_not_due():
    fake = FakeTime(5_000_000_000)
    pacer = Pacer(2, clock=fake.clock, sleep=fake.sleep)
    pacer.wait(1.0)
    assert not pacer.wait(0.1)
    assert fake.sleeps == [0.1]
    with pytest.raises(ValueError, match="frame rate"):
        Pacer(0)


# --- FrameGrabber ---------------------------------------------------------------------------


def test_grabber_hands_out_only_the_newest_frame():
    frames = [flat(10), flat(20), flat(30)]
    exhausted = threading.Event()

    def capture():
        if frames:
            return frames.pop(0)
        exhausted.set()
        return None

    grabber = FrameGrabber(capture, name="fake", max_failures=10**9, retry_delay_s=0.001)
    try:
        assert exhausted.wait(WAIT_S)
        frame = grabber.read(timeout_s=WAIT_S)
        assert frame.pixels[0, 0] == 30 and frame.index == 3  # frames 1 and 2 were dropped
        assert grabber.read(timeout_s=0.005) is None  # nothing new yet
    finally:
        grabber.close()


def test_grabber_reports_a_dead_camera_and_releases_it_once():
    released = []

    def broken():
        raise OSError("cable unplugged")

    grabber = FrameGrabber(
        broken,
        name="fake camera",
        release=lambda: released.append(1),
        max_failures=3,
        sleep=lambda _s: None,
    )
    with pytest.raises(CameraError, match=r"fake camera: stopped .* 3 failed .*cable unplugged"):
        grabber.read(timeout_s=WAIT_S)
    grabber.close()
    grabber.close()
    assert released == [1]
    with pytest.raises(CameraError, match="after close"):
        grabber.read(timeout_s=0.001)


class StuckCapture:
    """A capture device whose read() blocks until the test lets it return (like a V4L2 read on a
    wedged driver), recording whether release() ever ran while a read was in progress."""

    def __init__(self) -> None:
        self.in_read = threading.Event()
        self.let_return = threading.Event()
        self.released = threading.Event()
        self.events: list[str] = []
        self.released_during_read = False

    def read(self) -> np.ndarray:
        self.events.append("read")
        self.in_read.set()
        self.let_return.wait()
        self.events.append("returned")
        self.in_read.clear()
        return flat(50)

    def release(self) -> None:
        self.released_during_read |= self.in_read.is_set()
        self.events.append("release")
        self.released.set()


def test_grabber_never_releases_the_device_while_a_capture_is_stuck(caplog):
    device = StuckCapture()
    grabber = FrameGrabber(device.read, name="stuck camera", release=device.release)
    assert device.in_read.wait(WAIT_S)  # the capture thread is now blocked inside read()

    with caplog.at_level(logging.WARNING, logger="hardware.camera.grabber"):
        grabber.close(join_timeout_s=0)
    assert device.events == ["read"]  # close() returned without releasing under the read
    assert "released by that thread when its current capture returns" in caplog.text

    device.let_return.set()
    assert device.released.wait(WAIT_S)  # the thread releases once its read has returned
    assert device.events == ["read", "returned", "release"]
    assert not device.released_during_read
    grabber.close()  # idempotent: no second release
    assert device.events.count("release") == 1


# --- ReplayCamera ---------------------------------------------------------------------------


@pytest.fixture
def image_folder(tmp_path):
    for name, level in [("b.png", 20), ("a.png", 10), ("c.jpg", 30)]:
        cv2.imwrite(str(tmp_path / name), flat(level))
    colour = np.zeros((48, 64, 3), np.uint8)
    colour[...] = (0, 0, 255)  # pure red in BGR
    cv2.imwrite(str(tmp_path / "d.bmp"), colour)
    (tmp_path / "notes.txt").write_text("not a frame")
    return tmp_path


def levels(camera, n):
    return [int(camera.read(1.0).pixels.mean().round()) for _ in range(n)]


def test_replay_folder_in_name_order_as_grey_then_eof(image_folder):
    camera = ReplayCamera(image_folder)
    assert isinstance(camera, FrameSource)
    frame = camera.read(1.0)
    assert frame.pixels.ndim == 2 and frame.pixels.dtype == np.uint8 and frame.index == 0
    assert int(frame.pixels.mean()) == 10
    rest = levels(camera, 3)
    assert rest[:2] == [20, 30]
    assert 70 <= rest[2] <= 80  # red converted to grey (0.299 * 255)
    with pytest.raises(EOFError):
        camera.read(1.0)


def test_replay_folder_loops(image_folder):
    camera = ReplayCamera(image_folder, loop=True)
    assert levels(camera, 6)[4:] == [10, 20]


def test_replay_paces_with_the_injected_clock(image_folder):
    fake = FakeTime(5_000_000_000)
    camera = ReplayCamera(image_folder, fps=4, clock=fake.clock, sleep=fake.sleep)
    stamps = [camera.read(1.0).captured_ns for _ in range(3)]
    assert np.diff(stamps).tolist() == [250_000_000, 250_000_000]
    assert camera.read(0.05) is None and fake.sleeps[-1] == 0.05


def test_replay_skips_an_unreadable_image_with_a_warning(image_folder, caplog):
    (image_folder / "b.png").write_bytes(b"\x89PNG broken")
    with caplog.at_level(logging.WARNING):
        camera = ReplayCamera(image_folder)
        assert levels(camera, 2) == [10, 30]
    assert "b.png" in caplog.text


def test_replay_of_only_unreadable_images_is_a_camera_error(tmp_path):
    (tmp_path / "x.png").write_bytes(b"junk")
    camera = ReplayCamera(tmp_path, loop=True)
    with pytest.raises(CameraError, match=r"no image .* can be read"):
        camera.read(1.0)


def test_replay_of_an_empty_folder_or_missing_path_names_the_path(tmp_path):
    with pytest.raises(CameraError, match=re.escape(f"{tmp_path} holds no images")):
        ReplayCamera(tmp_path)
    with pytest.raises(CameraError, match=r"nowhere does not exist"):
        ReplayCamera(tmp_path / "nowhere")


def write_video(path, levels_):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    if not writer.isOpened():
        pytest.skip("this OpenCV build cannot write MJPG video")
    for level in levels_:
        writer.write(np.full((48, 64, 3), level, np.uint8))
    writer.release()


def test_replay_video_as_grey_then_eof_or_loop(tmp_path):
    video = tmp_path / "door.avi"
    write_video(video, [40, 120, 200])
    camera = ReplayCamera(video)
    got = levels(camera, 3)
    assert [abs(g - want) <= 3 for g, want in zip(got, [40, 120, 200], strict=True)] == [True] * 3
    with pytest.raises(EOFError):
        camera.read(1.0)
    camera.close()
    looping = ReplayCamera(video, loop=True)
    assert abs(levels(looping, 4)[3] - 40) <= 3
    looping.close()


def test_replay_of_an_unreadable_video_names_the_path(tmp_path):
    bogus = tmp_path / "bogus.avi"
    bogus.write_bytes(b"this is not a video")
    with pytest.raises(CameraError, match=r"bogus\.avi"):
        camera = ReplayCamera(bogus)
        camera.read(1.0)


# --- OpenCVCamera ---------------------------------------------------------------------------


def test_usb_camera_that_cannot_open_names_the_device():
    with pytest.raises(CameraError, match=r"/dev/video-none.*cannot open"):
        OpenCVCamera("/dev/video-none")


def test_usb_camera_delivers_grey_frames_from_a_capture_source(tmp_path):
    # A video file through the generic backend stands in for the device at the cv2 boundary.
    video = tmp_path / "usb.avi"
    write_video(video, [90] * 30)
    camera = OpenCVCamera(str(video), api=cv2.CAP_ANY)
    try:
        frame = camera.read(timeout_s=WAIT_S)
        assert frame is not None and frame.pixels.ndim == 2
        assert abs(int(frame.pixels.mean()) - 90) <= 3
    finally:
        camera.close()


# --- Picamera2Camera ------------------------------------------------------------------------


def test_pi_camera_without_picamera2_gives_the_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "picamera2", None)
    with pytest.raises(CameraError, match="install python3-picamera2 from apt"):
        Picamera2Camera()


class FakePicamera2:
    """Stands in for picamera2.Picamera2 at the vendor boundary: YUV420 arrays with row padding."""

    cameras: ClassVar[list] = [{"Model": "imx708"}]
    instances: ClassVar[list] = []

    def __init__(self):
        self.config = None
        self.calls: list[str] = []
        FakePicamera2.instances.append(self)

    @staticmethod
    def global_camera_info():
        return FakePicamera2.cameras

    def create_video_configuration(self, main, controls):
        return {"main": dict(main), "controls": dict(controls)}

    def configure(self, config):
        self.config = config

    def camera_configuration(self):
        width, height = self.config["main"]["size"]
        return {"main": {"size": (width, height), "stride": width + 32}}

    def start(self):
        self.calls.append("start")

    def capture_array(self, stream):
        width, height = self.config["main"]["size"]
        planes = np.full((height * 3 // 2, width + 32), 255, np.uint8)  # padding and chroma: 255
        planes[:height, :width] = np.arange(width, dtype=np.uint8)[None, :] % 200
        return planes

    def stop(self):
        self.calls.append("stop")

    def close(self):
        self.calls.append("close")


@pytest.fixture
def fake_picamera2(monkeypatch):
    module = types.ModuleType("picamera2")
    module.Picamera2 = FakePicamera2
    FakePicamera2.instances = []
    FakePicamera2.cameras = [{"Model": "imx708"}]
    monkeypatch.setitem(sys.modules, "picamera2", module)
    return FakePicamera2


def test_pi_camera_hands_out_the_cropped_luminance_plane(fake_picamera2):
    camera = Picamera2Camera(320, 240, fps=25)
    try:
        fake = fake_picamera2.instances[0]
        assert fake.config["main"]["format"] == "YUV420"
        assert fake.config["controls"]["FrameDurationLimits"] == (40000, 40000)
        frame = camera.read(timeout_s=WAIT_S)
        assert frame.pixels.shape == (240, 320)
        assert frame.pixels.flags["C_CONTIGUOUS"]
        assert (frame.pixels[:, 5] == 5).all() and frame.pixels.max() < 200  # no padding, no chroma
    finally:
        camera.close()
    assert fake.calls[-2:] == ["stop", "close"]


def test_pi_camera_without_a_detected_camera_says_so(fake_picamera2):
    fake_picamera2.cameras = []
    with pytest.raises(CameraError, match="no camera detected"):
        Picamera2Camera()


# --- The backend table ----------------------------------------------------------------------


def test_the_table_opens_a_replay_stamped_with_the_given_clock(image_folder):
    fake = FakeTime(7_000_000_000)
    settings = CameraSettings(width=64, height=48, fps=30, replay_path=str(image_folder))
    camera = open_camera("replay", settings, fake.clock)
    try:
        assert isinstance(camera, ReplayCamera)
        assert camera.read(1.0).captured_ns == 7_000_000_000  # the first frame is due at once
    finally:
        camera.close()


def test_the_table_opens_a_usb_camera_by_its_device():
    with pytest.raises(CameraError, match=r"/dev/video-none.*cannot open"):
        open_camera("opencv", CameraSettings(640, 480, 30, device="/dev/video-none"))


def test_the_table_opens_the_pi_camera_at_the_configured_size_and_rate(fake_picamera2):
    camera = open_camera("picamera2", CameraSettings(320, 240, 25))
    try:
        assert isinstance(camera, Picamera2Camera)
        fake = fake_picamera2.instances[0]
        assert fake.config["main"]["size"] == (320, 240)
        assert fake.config["controls"]["FrameDurationLimits"] == (40000, 40000)
    finally:
        camera.close()
