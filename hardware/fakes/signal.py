"""A member-feedback stand-in that only records what was shown: for tests and the bench.

It checks pattern names with the same rules as the real LEDs and buzzer
(``hardware.gpio.signal.LedBuzzerSignal``), so a test that shows a name the config lacks fails here
as it would at the door.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

from hardware.gpio.pins import GpioError
from hardware.gpio.signal import STANDARD_PATTERN_NAMES, check_patterns, unknown_pattern
from hardware.protocols import Pattern


class RecordingSignal:
    """A ``Signal`` that only records what was shown.

    With ``patterns`` it accepts exactly those names (plus ``idle``), like ``LedBuzzerSignal``;
    without, the standard names. ``shown`` lists the names in order. ``show`` raises ``ValueError``
    for an unknown name and ``GpioError`` after ``close()``, as the real signal does.
    """

    def __init__(self, patterns: Mapping[str, Pattern] | None = None) -> None:
        if patterns is None:
            patterns = {name: Pattern() for name in STANDARD_PATTERN_NAMES}
        self._patterns = check_patterns(patterns)
        self._lock = threading.Lock()
        self.shown: list[str] = []
        self.closed = False

    @property
    def last(self) -> str | None:
        with self._lock:
            return self.shown[-1] if self.shown else None

    def show(self, pattern: str) -> None:
        if pattern not in self._patterns:
            raise unknown_pattern(pattern, self._patterns)
        with self._lock:
            if self.closed:
                raise GpioError(f"the recording signal is closed; cannot show {pattern!r}")
            self.shown.append(pattern)

    def close(self) -> None:
        self.closed = True
