"""The gpiozero pin backends ("pin factories") this project can drive, and the board facts that
decide which of them can work.

Each backend is a function ``(model) -> Factory`` taking the board model read from the device tree
(None when unknown); ``hardware.gpio.backends`` names them and chooses between them. The factory
built here is passed explicitly to every device, so gpiozero's own ``GPIOZERO_PIN_FACTORY``
variable and its global ``Device.pin_factory`` play no part.

Platform facts: lgpio works on every Pi under Bookworm, including the Pi 5; RPi.GPIO does not work
on a Pi 5 (its GPIO lives on the RP1 chip), so it is refused there. Each backend's module (and the
C library behind it) is imported inside its function, so this module imports on any laptop.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gpiozero import Factory

MODEL_PATH = Path("/proc/device-tree/model")

# Pi 5 family boards: "Raspberry Pi 5 Model B", "Raspberry Pi Compute Module 5", "Raspberry Pi 500".
_PI5_FAMILY = re.compile(r"^Raspberry Pi (?:Compute Module )?5\d{0,2}\b")
# The model string goes into error messages and logs: keep it short and printable.
_MAX_MODEL_CHARS = 80


class GpioError(RuntimeError):
    """A GPIO backend or device could not be set up or used; the message says which and why."""


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


def mock_factory(model: str | None) -> Factory:
    """A fresh ``MockFactory`` (never the global ``Device.pin_factory``): simulated pins for tests,
    the demo and headless runs, on any board (``model`` is not consulted)."""
    from gpiozero.pins.mock import MockFactory

    return MockFactory()


def lgpio_factory(model: str | None) -> Factory:
    """gpiozero's lgpio backend, which works on every Raspberry Pi (``model`` is not consulted).

    Raises ``GpioError`` naming the apt package when lgpio is not installed, and explaining the
    permissions when it cannot open the GPIO chip.
    """
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


def rpigpio_factory(model: str | None) -> Factory:
    """gpiozero's RPi.GPIO backend, for a Pi 4 or older.

    Raises ``GpioError`` on a Pi 5 family ``model`` (checked before RPi.GPIO is even imported),
    naming the apt package when RPi.GPIO is not usable, and explaining the permissions when it
    cannot open the GPIO.
    """
    if is_pi5_family(model):
        raise GpioError(
            "RPi.GPIO does not work on a Raspberry Pi 5; use lgpio "
            f'(gpio.pin_factory = "lgpio" or "auto"; model: {model})'
        )
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
