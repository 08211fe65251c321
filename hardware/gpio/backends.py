"""The pin backends by the names ``gpio.pin_factory`` accepts: the one table that maps a name to
the function building its gpiozero pin factory, and the choice between them.

``BACKENDS`` holds the real backends; ``"auto"`` is not a backend but a choice: lgpio on any
Raspberry Pi, refused anywhere else. Nothing vendor-specific is imported here (see
``hardware.gpio.pins``), so this module imports on any laptop.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

from hardware.gpio.pins import (
    MODEL_PATH,
    GpioError,
    is_raspberry_pi,
    lgpio_factory,
    mock_factory,
    read_board_model,
    rpigpio_factory,
)

if TYPE_CHECKING:
    from gpiozero import Factory

# A backend builds its pin factory from the board model (None when unknown).
PinBackend = Callable[[str | None], "Factory"]

MOCK = "mock"
AUTO = "auto"
AUTO_BACKEND = "lgpio"  # what "auto" means on a Raspberry Pi: the backend that works on every one

BACKENDS: Mapping[str, PinBackend] = MappingProxyType(
    {"lgpio": lgpio_factory, "rpigpio": rpigpio_factory, MOCK: mock_factory}
)
# Every name gpio.pin_factory accepts, in the order error messages list them.
PIN_FACTORY_NAMES = (AUTO, *BACKENDS)


@dataclass(frozen=True, slots=True)
class PinFactoryChoice:
    """The pin factory to hand to gpiozero devices, and how it was chosen (for logs and selftest).

    ``backend`` is a key of ``BACKENDS``; ``requested`` the configured name (possibly ``"auto"``);
    ``model`` is the board model read from the device tree, or None when it was not read (mock
    pins) or not available.
    """

    factory: Factory
    backend: str
    requested: str
    model: str | None

    def describe(self) -> str:
        board = self.model or "unknown board"
        return f"{self.backend} on {board} (gpio.pin_factory = {self.requested!r})"


def make_pin_factory(name: str, *, model_path: Path = MODEL_PATH) -> PinFactoryChoice:
    """Build the gpiozero pin factory named by ``gpio.pin_factory`` (case and spaces ignored).

    - ``"mock"``: a fresh ``MockFactory``, for tests, the demo and headless runs; the board model
      is not read.
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
    if requested == MOCK:
        # Simulated pins work on any board: nothing to read, nothing to report.
        return PinFactoryChoice(BACKENDS[MOCK](None), MOCK, requested, None)
    model = read_board_model(model_path)
    backend = requested
    if requested == AUTO:
        if not is_raspberry_pi(model):
            shown = model if model is not None else f"unknown, {model_path} not readable"
            raise GpioError(
                f"this is not a Raspberry Pi (model: {shown}); "
                'set gpio.pin_factory = "mock" to run with simulated pins'
            )
        backend = AUTO_BACKEND
    return PinFactoryChoice(BACKENDS[backend](model), backend, requested, model)
