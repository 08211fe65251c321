"""Choosing the gpiozero pin backend (the "pin factory") for the relay, LEDs and buzzer.

One config key, ``gpio.pin_factory`` (env ``KIOSK_GPIO_PIN_FACTORY``, read by the config module),
names the backend: ``auto`` | ``lgpio`` | ``rpigpio`` | ``mock``. The factory built here is passed
explicitly to every device, so gpiozero's own ``GPIOZERO_PIN_FACTORY`` variable and its global
``Device.pin_factory`` play no part: one setting decides, and the logs say which backend won.

Platform facts (DESIGN §10): lgpio works on every Pi under Bookworm, including the Pi 5; RPi.GPIO
does not work on a Pi 5 (its GPIO lives on the RP1 chip), so it is refused there. The backend
modules are imported only in their branch, so this module imports on any laptop.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gpiozero import Factory

MODEL_PATH = Path("/proc/device-tree/model")
PIN_FACTORY_NAMES = ("auto", "lgpio", "rpigpio", "mock")

# Pi 5 family boards: "Raspberry Pi 5 Model B", "Raspberry Pi Compute Module 5", "Raspberry Pi 500".
_PI5_FAMILY = re.compile(r"^Raspberry Pi (?:Compute Module )?5\d{0,2}\b")
# The model string goes into error messages and logs: keep it short and printable.
_MAX_MODEL_CHARS = 80


class GpioError(RuntimeError):
    """A GPIO backend or device could not be set up or used; the message says which and why."""


@dataclass(frozen=True, slots=True)
class PinFactoryChoice:
    """The pin factory to hand to gpiozero devices, and how it was chosen (for logs and selftest).

    ``backend`` is ``"lgpio"``, ``"rpigpio"`` or ``"mock"``; ``model`` is the board model read from
    the device tree, or None when it was not read or not available.
    """

    factory: Factory
    backend: str
    requested: str
    model: str | None

    def describe(self) -> str:
        board = self.model or "unknown board"
        return f"{self.backend} on {board} (gpio.pin_factory = {self.requested!r})"


def read_board_model(model_path: Path = MODEL_PATH) -> str | None:
    """The board model from the device tree (e.g. ``"Raspberry Pi 4 Model B Rev 1.4"``), or None
    when the file is missing or unreadable (not a Pi, a container without /proc/device-tree)."""
    try:
        raw = model_path.read_bytes()
    except OSError:
        return None
    # The device tree stores a NUL-terminated string.
    text = raw.split(b"\0", 1)[0].decode("ascii", errors="replace").strip()
    text = "".join(ch if ch.isprintable() else "?" for ch in text)[:_MAX_MODEL_CHARS]
    return text or None


def is_raspberry_pi(model: str | None) -> bool:
    return model is not None and model.startswith("Raspberry Pi")


def is_pi5_family(model: str | None) -> bool:
    """True for boards whose GPIO sits on the RP1 chip (Pi 5, CM5, Pi 500), where RPi.GPIO fails."""
    return model is not None and _PI5_FAMILY.match(model) is not None


def make_pin_factory(name: str, *, model_path: Path = MODEL_PATH) -> PinFactoryChoice:
    """Build the gpiozero pin factory named by ``gpio.pin_factory``.

    - ``"mock"``: a fresh ``MockFactory`` (never the global ``Device.pin_factory``), for tests, the
      demo and headless runs.
    - ``"auto"``: lgpio on a Raspberry Pi (read from ``model_path``); anything else is refused.
    - ``"lgpio"`` / ``"rpigpio"``: that backend; ``rpigpio`` is refused on a Pi 5.

    Raises ``ValueError`` for a name outside ``PIN_FACTORY_NAMES`` and ``GpioError`` when the board
    is not a Pi (auto), the backend cannot work on this board, its Python module is missing (the
    message names the apt package), or it cannot open the GPIO chip (permissions, busy).
    """
    requested = name.strip().lower()
    if requested not in PIN_FACTORY_NAMES:
        raise ValueError(
            f"gpio.pin_factory: unknown pin factory {name!r}; "
            f"expected one of {', '.join(PIN_FACTORY_NAMES)}"
        )
    if requested == "mock":
        from gpiozero.pins.mock import MockFactory

        return PinFactoryChoice(MockFactory(), "mock", requested, None)

    model = read_board_model(model_path)
    if requested == "auto":
        if not is_raspberry_pi(model):
            shown = model if model is not None else f"unknown, {model_path} not readable"
            raise GpioError(
                f"this is not a Raspberry Pi (model: {shown}); "
                'set gpio.pin_factory = "mock" to run with simulated pins'
            )
        return PinFactoryChoice(_lgpio_factory(), "lgpio", requested, model)
    if requested == "lgpio":
        return PinFactoryChoice(_lgpio_factory(), "lgpio", requested, model)
    if is_pi5_family(model):
        raise GpioError(
            "RPi.GPIO does not work on a Raspberry Pi 5; use lgpio "
            f'(gpio.pin_factory = "lgpio" or "auto"; model: {model})'
        )
    return PinFactoryChoice(_rpigpio_factory(), "rpigpio", requested, model)


def _lgpio_factory() -> Factory:
    try:
        from gpiozero.pins.lgpio import LGPIOFactory
    except ImportError as exc:
        raise GpioError(
            f"the lgpio GPIO backend is not installed ({exc}); "
            "install it with: sudo apt install python3-lgpio "
            "(the venv must be created with --system-site-packages to see it)"
        ) from exc
    try:
        return LGPIOFactory()
    except Exception as exc:  # lgpio.error, PinUnknownPi, OSError: all mean "no usable GPIO chip"
        raise GpioError(
            f"lgpio could not open the GPIO chip: {exc}; "
            "check that /dev/gpiochip* exists and the service user is in the 'gpio' group"
        ) from exc


def _rpigpio_factory() -> Factory:
    try:
        from gpiozero.pins.rpigpio import RPiGPIOFactory
    except (ImportError, RuntimeError) as exc:
        # RPi.GPIO raises RuntimeError at import when it does not recognise the board.
        raise GpioError(
            f"the RPi.GPIO backend is not usable ({exc}); "
            "install it with: sudo apt install python3-rpi.gpio, "
            'or use gpio.pin_factory = "lgpio"'
        ) from exc
    try:
        return RPiGPIOFactory()
    except Exception as exc:  # RuntimeError from RPi.GPIO: no /dev/gpiomem access, unknown board
        raise GpioError(
            f"RPi.GPIO could not open the GPIO: {exc}; "
            "check that the service user is in the 'gpio' group"
        ) from exc
