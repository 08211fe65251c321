"""The turnstile relay, driven through gpiozero.

Safety rules this module enforces:

- The output is driven to the inactive level as it is set up, never left floating-then-on.
- Every pulse has a hard maximum (``max_pulse_ms``) that no caller can exceed, and a second pulse
  while the relay is on can only extend it up to that maximum from now.
- Two independent ways switch the relay off: a timer per pulse, and ``enforce_deadline()``, which
  the scanner loop calls on every iteration in case the timer thread died.
- ``close()`` releases the relay on every normal exit path and is registered with ``atexit``.

Hardware note for installers: a closed gpiozero device (and a dead process) leaves the pin as a
floating input, and some backends briefly claim the pin as an input before driving it. The relay
board's input therefore needs a pull resistor (pull-down for an active-high input, pull-up for an
active-low one) so that boot, a crash and a kill all read as "off"; the systemd unit's
``ExecStopPost=kiosk relay-off`` (``force_off``) drives the pin off after a kill.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from gpiozero import DigitalOutputDevice

from hardware.gpio.pins import GpioError

if TYPE_CHECKING:
    from gpiozero import Factory

log = logging.getLogger(__name__)

_NS_PER_MS = 1_000_000
# How long past its deadline the relay must have been held before ``enforce_deadline`` warns. The
# backstop switches it off at whatever moment it sees first, warning or not; a timer thread a few
# milliseconds late on a busy machine (the loop got there first) is scheduling, not a fault, and a
# warning for it would bury the ones that matter. A quarter of a second longer is worth a line.
LATE_WARNING_MS = 250.0


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


# timer(seconds, callback) -> handle: calls callback once after `seconds` unless cancelled first.
Timer = Callable[[float, Callable[[], None]], TimerHandle]


def thread_timer(seconds: float, callback: Callable[[], None]) -> TimerHandle:
    """The default ``Timer``: a daemon ``threading.Timer``, so a pending relay-off never keeps the
    interpreter alive (the ``atexit`` close releases the relay instead)."""
    timer = threading.Timer(seconds, callback)
    timer.daemon = True
    timer.name = "relay-off"
    timer.start()
    return timer


class RelayDoor:
    """The door relay on BCM pin ``pin``; implements ``hardware.protocols.Door``.

    ``active_high`` says which level energises the relay. ``max_pulse_ms`` (> 0) is the hard
    maximum for any pulse. ``timer`` schedules the switch-off (default: ``thread_timer``);
    ``clock_ns`` is a monotonic clock in nanoseconds (default ``time.monotonic_ns``).

    After each pulse, ``last_on_ns`` is the clock reading at the instant the pin was driven on (the
    bench measures scan-to-relay from it; a pulse that only extends an open relay leaves it alone),
    and ``pulses`` counts pulses that opened or extended the relay. All methods are thread-safe.

    Raises ``ValueError`` for a bad ``max_pulse_ms`` and ``GpioError`` when the pin cannot be set
    up (invalid pin, pin already in use, backend failure).
    """

    def __init__(
        self,
        pin: int,
        *,
        active_high: bool,
        max_pulse_ms: int,
        pin_factory: Factory,
        timer: Timer | None = None,
        clock_ns: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        if max_pulse_ms <= 0:
            raise ValueError(f"RelayDoor: max_pulse_ms must be > 0 ms, got {max_pulse_ms}")
        self.pin = pin
        self.max_pulse_ms = int(max_pulse_ms)
        self.last_on_ns: int | None = None
        self.pulses = 0
        self._timer = timer or thread_timer
        self._clock_ns = clock_ns
        # Re-entrant: a timer that fires synchronously inside pulse() must not deadlock.
        self._lock = threading.RLock()
        self._handle: TimerHandle | None = None
        # Bumped whenever the pending timer is replaced or cancelled, so a late callback from a
        # timer that could not be cancelled in time recognises itself as stale and does nothing.
        self._generation = 0
        self._deadline_ns: int | None = None
        self._closed = False
        try:
            self._device = DigitalOutputDevice(
                pin, active_high=active_high, initial_value=False, pin_factory=pin_factory
            )
        except Exception as exc:
            raise GpioError(f"cannot set up the door relay on GPIO{pin}: {exc}") from exc
        atexit.register(self.close)

    @property
    def is_open(self) -> bool:
        """True while the relay is energised (the turnstile is released)."""
        with self._lock:
            return not self._closed and bool(self._device.value)

    @property
    def closed(self) -> bool:
        return self._closed

    def pulse(self, ms: int) -> int:
        """Energise the relay for ``ms`` milliseconds, clamped to ``[0, max_pulse_ms]``; returns the
        milliseconds used. Returns at once; a timer switches the relay off. A pulse while the relay
        is on moves the deadline to ``now + ms`` if that is later (never earlier: a short pulse does
        not cut a running one short). ``0`` does nothing.

        Raises ``GpioError`` after ``close()``, or when the switch-off timer cannot be started (the
        relay is switched off again before raising).
        """
        used = max(0, min(int(ms), self.max_pulse_ms))
        with self._lock:
            if self._closed:
                raise GpioError(f"the door relay on GPIO{self.pin} is closed; cannot pulse it")
            if used == 0:
                return 0
            if not self._device.value:
                self._device.on()
                self.last_on_ns = self._clock_ns()
                now_ns = self.last_on_ns
            else:
                now_ns = self._clock_ns()
            deadline_ns = now_ns + used * _NS_PER_MS
            if self._deadline_ns is not None and self._deadline_ns >= deadline_ns:
                return used  # neither opened nor extended: the running pulse outlasts this one
            self.pulses += 1
            self._deadline_ns = deadline_ns
            try:
                self._arm((deadline_ns - now_ns) / 1e9)
            except Exception as exc:
                self._switch_off()
                raise GpioError(
                    f"door relay on GPIO{self.pin}: could not start the switch-off timer "
                    f"({exc}); relay switched off"
                ) from exc
            return used

    def release(self) -> None:
        """Switch the relay off now and cancel the pending timer. No-op after ``close()``."""
        with self._lock:
            if not self._closed:
                self._switch_off()

    def enforce_deadline(self, now_ns: int | None = None) -> bool:
        """Switch the relay off if it is on past its deadline; returns True if it did.

        The second line of defence if a timer thread died: the scanner loop calls this on every
        iteration. ``now_ns`` defaults to the injected clock. Logs a warning when the relay was
        held ``LATE_WARNING_MS`` or more past its deadline, a debug line when less.
        """
        with self._lock:
            if self._closed or self._deadline_ns is None:
                return False
            now = self._clock_ns() if now_ns is None else now_ns
            if now < self._deadline_ns:
                return False
            overdue_ms = (now - self._deadline_ns) / _NS_PER_MS
            self._switch_off()
        log.log(
            logging.WARNING if overdue_ms >= LATE_WARNING_MS else logging.DEBUG,
            "door relay on GPIO%d was still on %.1f ms past its deadline (switched off)",
            self.pin,
            overdue_ms,
        )
        return True

    def close(self) -> None:
        """Switch the relay off, then free the pin (it becomes a floating input: see the module
        docstring). Idempotent; also runs at interpreter exit."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._switch_off()
            finally:
                self._device.close()
        atexit.unregister(self.close)

    def _arm(self, seconds: float) -> None:
        self._disarm()
        generation = self._generation
        self._handle = self._timer(seconds, lambda: self._expire(generation))

    def _disarm(self) -> None:
        self._generation += 1
        handle, self._handle = self._handle, None
        if handle is not None:
            handle.cancel()

    def _expire(self, generation: int) -> None:
        with self._lock:
            if self._closed or generation != self._generation:
                return
            self._switch_off()

    def _switch_off(self) -> None:
        self._disarm()
        self._deadline_ns = None
        self._device.off()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("open" if self.is_open else "shut")
        return f"<RelayDoor GPIO{self.pin} {state} max={self.max_pulse_ms}ms pulses={self.pulses}>"


# Devices opened by force_off(), kept referenced so garbage collection does not close them (gpiozero
# closes a device in __del__, which would turn the pin back into a floating input).
_forced_off: list[DigitalOutputDevice] = []


def force_off(pin: int, active_high: bool, pin_factory: Factory) -> DigitalOutputDevice:
    """Drive the relay pin to its inactive level and leave it driven; for ``kiosk relay-off``, which
    systemd runs as ``ExecStopPost=`` after the scanner stopped or was killed.

    The device is deliberately not closed (closing makes the pin a floating input); it stays driven
    for the rest of this process. After the process exits, the kernel may keep the last level or
    return the line to an input: either way the relay reads "off", the latter thanks to the pull
    resistor the relay input needs anyway. Returns the open device (for tests and diagnostics).
    Raises ``GpioError`` when the pin cannot be claimed (e.g. the scanner still holds it).
    """
    try:
        device = DigitalOutputDevice(
            pin, active_high=active_high, initial_value=False, pin_factory=pin_factory
        )
    except Exception as exc:
        raise GpioError(f"cannot force the door relay on GPIO{pin} off: {exc}") from exc
    _forced_off.append(device)
    return device
