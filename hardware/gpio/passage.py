"""The turnstile's passage outputs as GPIO inputs, through gpiozero; implements
``hardware.protocols.PassageSensor``.

A tripod turnstile closes an isolated relay contact (its PASS output) once per rotation, one per
direction; a plain door has a door contact. Each is wired between a GPIO pin and ground (a dry
contact: never a voltage from the turnstile into the Pi), with the Pi's internal pull-up
(``pull_up`` True: the pin reads high while the contact is open, low while it is closed). With
``pull_up`` False the pin is pulled down and a closed contact must bring it to 3.3 V instead.

**One passage per closing, however the contact bounces.** A mechanical contact chatters for a few
milliseconds when it closes and again when it opens. A closing counts only when the contact had
been open for at least ``bounce_ms`` before it: the chatter of the closing is ignored (it reopened
for microseconds), and so is the chatter of the opening (the contact was open for less than
``bounce_ms`` between its bounces), however long the turnstile holds the contact closed. This is
done here, on the adapter's monotonic clock, rather than with gpiozero's ``bounce_time``, whose
meaning differs by backend (lgpio's waits for the level to be stable for the whole time, so it
would miss a PASS pulse shorter than that) and which its mock pins ignore.

gpiozero calls back from its own thread (a backend's event thread, or the caller driving a mock
pin); the passages are queued under a lock and handed to the door loop by ``poll``, which never
blocks on the pins. The queue is bounded (``MAX_QUEUED``): a contact chattering for minutes while
the loop is stuck cannot eat the memory; the oldest passages are dropped then, and counted.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from gpiozero import DigitalInputDevice

from hardware.gpio.pins import GpioError
from hardware.protocols import ENTRY, EXIT, PassageEvent

if TYPE_CHECKING:
    from gpiozero import Factory

log = logging.getLogger(__name__)

_NS_PER_MS = 1_000_000
# Passages kept between two polls at most (the loop polls every frame, 30 times a second).
MAX_QUEUED = 1024


class _Contact:
    """One direction's input and its debounce state. Its callbacks run on gpiozero's thread."""

    def __init__(
        self,
        direction: str,
        pin: int,
        *,
        pull_up: bool,
        bounce_ns: int,
        pin_factory: Factory,
        clock_ns: Callable[[], int],
        emit: Callable[[PassageEvent], None],
    ) -> None:
        self.direction = direction
        self.pin = pin
        self._bounce_ns = bounce_ns
        self._clock_ns = clock_ns
        self._emit = emit
        self._opened_ns: int | None = None  # when the contact last opened (None: not yet seen)
        self._lock = threading.Lock()
        try:
            self._device = DigitalInputDevice(
                pin, pull_up=pull_up, bounce_time=None, pin_factory=pin_factory
            )
        except Exception as exc:
            raise GpioError(
                f"cannot set up the {direction} passage input on GPIO{pin}: {exc}"
            ) from exc
        self._device.when_activated = self._closed
        self._device.when_deactivated = self._opened

    def _closed(self) -> None:
        now_ns = self._clock_ns()
        with self._lock:
            opened = self._opened_ns
            if opened is not None and now_ns - opened < self._bounce_ns:
                return  # it reopened only for a bounce: the same closing
        self._emit(PassageEvent(self.direction, now_ns))

    def _opened(self) -> None:
        with self._lock:
            self._opened_ns = self._clock_ns()

    def close(self) -> None:
        self._device.close()


class GpioPassageSensor:
    """The passage inputs on BCM pins ``entry_pin`` and ``exit_pin`` (None: not wired; at least
    one must be), with the pull-up (``pull_up``) or pull-down, and ``bounce_ms`` (>= 0) of
    contact bounce ignored (see the module's doc). ``clock_ns`` is the monotonic clock the
    passages are stamped with: the door loop's (default ``time.monotonic_ns``).

    Raises ``ValueError`` for no pin, the same pin twice or a negative ``bounce_ms``, and
    ``GpioError`` when a pin cannot be set up (invalid, in use, backend failure).
    """

    def __init__(
        self,
        *,
        entry_pin: int | None,
        exit_pin: int | None,
        pull_up: bool = True,
        bounce_ms: int = 50,
        pin_factory: Factory,
        clock_ns: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        if entry_pin is None and exit_pin is None:
            raise ValueError("GpioPassageSensor: wire at least one of entry_pin and exit_pin")
        if entry_pin is not None and entry_pin == exit_pin:
            raise ValueError(f"GpioPassageSensor: entry and exit share GPIO{entry_pin}")
        if bounce_ms < 0:
            raise ValueError(f"GpioPassageSensor: bounce_ms must be >= 0, got {bounce_ms}")
        self._queue: deque[PassageEvent] = deque()
        self._queue_lock = threading.Lock()
        self.dropped = 0
        self._contacts: list[_Contact] = []
        try:
            for direction, pin in ((ENTRY, entry_pin), (EXIT, exit_pin)):
                if pin is None:
                    continue
                self._contacts.append(
                    _Contact(
                        direction,
                        pin,
                        pull_up=pull_up,
                        bounce_ns=int(bounce_ms) * _NS_PER_MS,
                        pin_factory=pin_factory,
                        clock_ns=clock_ns,
                        emit=self._queued,
                    )
                )
        except BaseException:
            self.close()
            raise
        self._directions = frozenset(c.direction for c in self._contacts)

    @property
    def directions(self) -> frozenset[str]:
        """The directions wired: ``"entry"``, ``"exit"`` or both."""
        return self._directions

    def _queued(self, event: PassageEvent) -> None:
        with self._queue_lock:
            if len(self._queue) >= MAX_QUEUED:
                self._queue.popleft()
                self.dropped += 1
            self._queue.append(event)

    def poll(self) -> list[PassageEvent]:
        """The passages since the previous call, oldest first. Never blocks on the pins."""
        with self._queue_lock:
            events = list(self._queue)
            self._queue.clear()
            dropped, self.dropped = self.dropped, 0
        if dropped:
            log.warning("%d passages were dropped: the door loop did not collect them", dropped)
        return events

    def close(self) -> None:
        """Free the pins (they stay inputs); safe to call more than once."""
        contacts, self._contacts = self._contacts, []
        for contact in contacts:
            try:
                contact.close()
            except Exception:  # one pin failing to close must not keep the other open
                log.exception("closing the %s passage input failed", contact.direction)
