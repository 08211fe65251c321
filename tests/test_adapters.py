"""The hardware boundary as a whole: every real adapter and every fake has exactly its protocol's
method signatures, and the backend tables name what the config accepts and import without any
vendor library."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys

import pytest

from fakes import FakeCamera, FakeDecoder, clean_env
from hardware.camera import backends as camera_backends
from hardware.camera.opencv import OpenCVCamera
from hardware.camera.picamera import Picamera2Camera
from hardware.camera.replay import ReplayCamera
from hardware.decode import backends as decode_backends
from hardware.decode.opencv import OpenCVDecoder
from hardware.decode.zbar import PyzbarDecoder
from hardware.decode.zxing import ZxingDecoder
from hardware.fakes.signal import RecordingSignal
from hardware.fakes.synthetic import SyntheticCamera
from hardware.gpio import backends as gpio_backends
from hardware.gpio.relay import RelayDoor
from hardware.gpio.signal import LedBuzzerSignal
from hardware.protocols import Decoder, Door, FrameSource, Signal
from kiosk.config import SCHEMA
from kiosk.door.reader import QrReader

IMPLEMENTATIONS = [
    (FrameSource, Picamera2Camera),
    (FrameSource, OpenCVCamera),
    (FrameSource, ReplayCamera),
    (FrameSource, SyntheticCamera),
    (FrameSource, FakeCamera),
    (Decoder, ZxingDecoder),
    (Decoder, PyzbarDecoder),
    (Decoder, OpenCVDecoder),
    (Decoder, QrReader),
    (Decoder, FakeDecoder),
    (Door, RelayDoor),
    (Signal, LedBuzzerSignal),
    (Signal, RecordingSignal),
]

VENDOR_MODULES = (
    "picamera2",
    "cv2",
    "pyzbar",
    "pyzbar.pyzbar",
    "zxingcpp",
    "lgpio",
    "RPi",
    "RPi.GPIO",
    "gpiozero.pins.lgpio",
    "gpiozero.pins.rpigpio",
)


def protocol_methods(protocol: type) -> dict[str, object]:
    """The protocol's public methods and properties (data members like ``Decoder.name`` are
    annotations only and are checked by ``isinstance`` in each adapter's own tests)."""
    return {
        name: member
        for name, member in vars(protocol).items()
        if not name.startswith("_") and (inspect.isfunction(member) or isinstance(member, property))
    }


@pytest.mark.parametrize(
    ("protocol", "implementation"),
    IMPLEMENTATIONS,
    ids=[f"{p.__name__}-{i.__name__}" for p, i in IMPLEMENTATIONS],
)
def test_implementation_has_the_protocols_exact_method_signatures(protocol, implementation):
    methods = protocol_methods(protocol)
    assert methods, f"{protocol.__name__} declares no methods"
    for name, expected in methods.items():
        actual = inspect.getattr_static(implementation, name, None)
        assert actual is not None, f"{implementation.__name__} lacks {protocol.__name__}.{name}"
        if isinstance(expected, property):
            assert isinstance(actual, property), f"{implementation.__name__}.{name} is no property"
            expected, actual = expected.fget, actual.fget
        assert inspect.signature(actual) == inspect.signature(expected), (
            f"{implementation.__name__}.{name}{inspect.signature(actual)} differs from "
            f"{protocol.__name__}.{name}{inspect.signature(expected)}"
        )


def test_the_door_protocol_declares_the_deadline_backstop_the_loop_calls():
    signature = inspect.signature(Door.enforce_deadline)
    assert list(signature.parameters) == ["self", "now_ns"]
    assert signature.parameters["now_ns"].default is None
    assert signature.return_annotation == "bool"


def config_choices(table: str, key: str) -> tuple[str, ...]:
    return next(k.choices for t in SCHEMA if t.name == table for k in t.keys if k.name == key)


def test_the_backend_tables_hold_every_name_the_config_accepts():
    assert tuple(camera_backends.BACKENDS) == config_choices("camera", "backend")
    assert config_choices("gpio", "pin_factory") == gpio_backends.PIN_FACTORY_NAMES
    # The config offers the door's decoders; opencv is there for kiosk decode and the bench.
    assert set(config_choices("decoder", "backend")) <= set(decode_backends.BACKENDS)


def test_unknown_backend_names_list_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown camera backend 'webcam'.*picamera2, opencv"):
        camera_backends.open_camera("webcam", camera_backends.CameraSettings(640, 480, 30))
    with pytest.raises(ValueError, match=r"unknown decoder 'zbar'.*zxing, pyzbar, opencv"):
        decode_backends.make_decoder("zbar")
    with pytest.raises(ValueError, match=r"unknown pin factory 'pigpio'.*auto, lgpio"):
        gpio_backends.make_pin_factory("pigpio")


def test_the_tables_and_the_door_parts_import_without_any_vendor_library():
    """As on a laptop: every vendor module is unimportable, yet the tables, the adapters they name
    and the door's parts import, and mock pins can still be built."""
    code = (
        "import json, sys\n"
        f"for name in {VENDOR_MODULES!r}:\n"
        "    sys.modules[name] = None  # import now raises ImportError, as if not installed\n"
        "import hardware.camera.backends, hardware.decode.backends, hardware.gpio.backends\n"
        "import kiosk.door.parts\n"
        "hardware.gpio.backends.make_pin_factory('mock')\n"
        f"print(json.dumps([n for n in {VENDOR_MODULES!r} if sys.modules.get(n) is not None]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=clean_env(), check=False
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []
