"""Pin factory selection from fake device-tree model files; Pi backends faked at import."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest
from gpiozero import Device
from gpiozero.pins.mock import MockFactory

from hardware.gpio.backends import make_pin_factory
from hardware.gpio.pins import GpioError, is_pi5_family, read_board_model

PI4 = b"Raspberry Pi 4 Model B Rev 1.4\x00"
PI5 = b"Raspberry Pi 5 Model B Rev 1.0\x00"


def model_file(tmp_path: Path, content: bytes) -> Path:
    path = tmp_path / "model"
    path.write_bytes(content)
    return path


class FakeBackendFactory:
    """Stands in for LGPIOFactory / RPiGPIOFactory, which need a real Pi."""

    def close(self) -> None:
        pass


def install_fake_backend(monkeypatch, module_name: str, class_name: str) -> None:
    module = types.ModuleType(module_name)
    setattr(module, class_name, FakeBackendFactory)
    monkeypatch.setitem(sys.modules, module_name, module)


def hide_module(monkeypatch, *module_names: str) -> None:
    # A None entry in sys.modules makes `import` raise ImportError, as if it were not installed.
    for name in module_names:
        monkeypatch.setitem(sys.modules, name, None)


def test_mock_gives_a_fresh_factory_each_time_not_the_global_one():
    first = make_pin_factory("mock")
    second = make_pin_factory("mock")
    assert isinstance(first.factory, MockFactory)
    assert first.factory is not second.factory
    assert Device.pin_factory is None or first.factory is not Device.pin_factory
    assert first.backend == "mock"
    assert "mock" in first.describe()


def test_mock_does_not_need_a_model_file(tmp_path):
    choice = make_pin_factory("mock", model_path=tmp_path / "missing")
    assert choice.backend == "mock"
    assert choice.model is None


def test_auto_refuses_a_machine_that_is_not_a_pi_with_the_mock_hint(tmp_path):
    path = model_file(tmp_path, b"QEMU Virtual Machine\x00")
    with pytest.raises(GpioError) as info:
        make_pin_factory("auto", model_path=path)
    message = str(info.value)
    assert "this is not a Raspberry Pi (model: QEMU Virtual Machine)" in message
    assert 'set gpio.pin_factory = "mock"' in message


def test_auto_refuses_when_there_is_no_model_file(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(GpioError, match="this is not a Raspberry Pi") as info:
        make_pin_factory("auto", model_path=missing)
    assert str(missing) in str(info.value)


def test_auto_on_a_pi_chooses_lgpio(tmp_path, monkeypatch):
    install_fake_backend(monkeypatch, "gpiozero.pins.lgpio", "LGPIOFactory")
    choice = make_pin_factory("auto", model_path=model_file(tmp_path, PI5))
    assert choice.backend == "lgpio"
    assert isinstance(choice.factory, FakeBackendFactory)
    assert choice.model == "Raspberry Pi 5 Model B Rev 1.0"
    assert (
        choice.describe() == "lgpio on Raspberry Pi 5 Model B Rev 1.0 (gpio.pin_factory = 'auto')"
    )


def test_missing_lgpio_names_the_apt_package(tmp_path, monkeypatch):
    hide_module(monkeypatch, "gpiozero.pins.lgpio", "lgpio")
    with pytest.raises(GpioError, match="python3-lgpio"):
        make_pin_factory("auto", model_path=model_file(tmp_path, PI4))


def test_lgpio_that_cannot_open_the_chip_explains_the_gpio_group(tmp_path, monkeypatch):
    module = types.ModuleType("gpiozero.pins.lgpio")

    def no_chip():
        raise OSError("can not open gpiochip")

    module.LGPIOFactory = no_chip
    monkeypatch.setitem(sys.modules, "gpiozero.pins.lgpio", module)
    with pytest.raises(GpioError, match=r"can not open gpiochip.*'gpio' group"):
        make_pin_factory("lgpio", model_path=model_file(tmp_path, PI4))


@pytest.mark.parametrize(
    "model",
    [PI5, b"Raspberry Pi Compute Module 5 Rev 1.0\x00", b"Raspberry Pi 500 Rev 1.0\x00"],
)
def test_rpigpio_is_refused_on_the_pi5_family(tmp_path, monkeypatch, model):
    # Even with RPi.GPIO importable, the Pi 5 check must refuse first.
    install_fake_backend(monkeypatch, "gpiozero.pins.rpigpio", "RPiGPIOFactory")
    with pytest.raises(
        GpioError, match=re.escape("RPi.GPIO does not work on a Raspberry Pi 5; use lgpio")
    ):
        make_pin_factory("rpigpio", model_path=model_file(tmp_path, model))


def test_rpigpio_on_a_pi4_is_used(tmp_path, monkeypatch):
    install_fake_backend(monkeypatch, "gpiozero.pins.rpigpio", "RPiGPIOFactory")
    choice = make_pin_factory("rpigpio", model_path=model_file(tmp_path, PI4))
    assert choice.backend == "rpigpio"
    assert isinstance(choice.factory, FakeBackendFactory)


def test_missing_rpigpio_names_the_apt_package(tmp_path, monkeypatch):
    hide_module(monkeypatch, "gpiozero.pins.rpigpio", "RPi", "RPi.GPIO")
    with pytest.raises(GpioError, match=re.escape("python3-rpi.gpio")):
        make_pin_factory("rpigpio", model_path=model_file(tmp_path, PI4))


def test_unknown_factory_name_lists_the_choices():
    with pytest.raises(ValueError, match=r"gpio\.pin_factory: unknown pin factory 'pigpio'.*mock"):
        make_pin_factory("pigpio")


def test_name_is_case_insensitive():
    assert make_pin_factory(" Mock ").backend == "mock"


def test_model_is_read_without_nul_and_made_printable(tmp_path):
    assert read_board_model(model_file(tmp_path, PI4)) == "Raspberry Pi 4 Model B Rev 1.4"
    hostile = read_board_model(model_file(tmp_path, b"Raspberry\x1b[31m Pi" + b"x" * 500))
    assert hostile is not None
    assert "\x1b" not in hostile
    assert len(hostile) <= 80
    assert read_board_model(tmp_path / "missing") is None
    assert read_board_model(model_file(tmp_path, b"\x00")) is None


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("Raspberry Pi 5 Model B Rev 1.0", True),
        ("Raspberry Pi Compute Module 5 Rev 1.0", True),
        ("Raspberry Pi 500 Rev 1.0", True),
        ("Raspberry Pi 4 Model B Rev 1.4", False),
        ("Raspberry Pi 3 Model B Plus Rev 1.3", False),
        ("Raspberry Pi Compute Module 4 Rev 1.0", False),
        ("Raspberry Pi Zero 2 W Rev 1.0", False),
        (None, False),
    ],
)
def test_pi5_family_detection(model, expected):
    assert is_pi5_family(model) is expected
