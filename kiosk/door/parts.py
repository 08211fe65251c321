"""Builds the door's hardware from the configuration: the one place that maps config sections to
adapters. Which adapter a backend name means is decided by the backend tables in
``hardware.gpio.backends``, ``hardware.camera.backends`` and ``hardware.decode.backends``; vendor
libraries are imported only when the chosen adapter is built."""

from __future__ import annotations

from hardware.camera.backends import CameraSettings, open_camera
from hardware.decode.backends import make_decoder
from hardware.gpio.backends import PinFactoryChoice, make_pin_factory
from hardware.gpio.passage import GpioPassageSensor
from hardware.gpio.pins import GpioError
from hardware.gpio.relay import RelayDoor, force_off
from hardware.gpio.signal import LedBuzzerSignal
from hardware.protocols import Decoder, FrameSource, PassageSensor
from kiosk.config import Config, policy_settings
from kiosk.core.clock import Clock
from kiosk.door.loop import ScannerSettings
from kiosk.door.reader import QrReader

__all__ = [
    "GpioError",
    "build_camera",
    "build_door",
    "build_passage_sensor",
    "build_reader",
    "build_signal",
    "force_relay_off",
    "make_pin_factory",
    "scanner_settings",
]


def scanner_settings(config: Config) -> ScannerSettings:
    """The door loop's settings from the configuration."""
    return ScannerSettings(
        door_id=config.door.id,
        pulse_ms=config.gpio.pulse_ms,
        debounce_s=config.scanner.debounce_s,
        stale_after_s=config.camera.stale_after_s,
        policy=policy_settings(config),
        direction=config.door.direction,
        passage_timeout_s=config.door.passage_timeout_s,
        max_visit_minutes=config.door.max_visit_minutes,
    )


def build_door(gpio, pin_factory) -> RelayDoor:
    """The turnstile relay, off from the first instant, with the configured hard maximum."""
    return RelayDoor(
        gpio.relay_pin,
        active_high=gpio.relay_active_high,
        max_pulse_ms=gpio.max_pulse_ms,
        pin_factory=pin_factory,
    )


def build_signal(gpio, feedback, pin_factory) -> LedBuzzerSignal:
    return LedBuzzerSignal(
        green_pin=gpio.green_led_pin,
        red_pin=gpio.red_led_pin,
        buzzer_pin=gpio.buzzer_pin,
        buzzer_active_high=gpio.buzzer_active_high,
        patterns={"granted": feedback.granted, "denied": feedback.denied, "fault": feedback.fault},
        pin_factory=pin_factory,
    )


def build_passage_sensor(gpio, pin_factory, clock: Clock) -> PassageSensor | None:
    """The turnstile's passage inputs (``gpio.passage_entry_pin``, ``gpio.passage_exit_pin``),
    stamped with ``clock``'s monotonic time, the door loop's; None when neither is wired (today's
    wiring: grants count as entries). Raises ``GpioError`` when a pin cannot be set up."""
    if gpio.passage_entry_pin is None and gpio.passage_exit_pin is None:
        return None
    return GpioPassageSensor(
        entry_pin=gpio.passage_entry_pin,
        exit_pin=gpio.passage_exit_pin,
        pull_up=gpio.passage_pull_up,
        bounce_ms=gpio.passage_bounce_ms,
        pin_factory=pin_factory,
        clock_ns=clock.monotonic_ns,
    )


def build_reader(decoder) -> Decoder:
    """The production decode pipeline around the configured decoder backend. Raises
    ``hardware.protocols.DecoderUnavailable`` with an install hint when its library is missing."""
    return QrReader(
        make_decoder(decoder.backend),
        motion_gate=decoder.motion_gate,
        retry_on_miss=decoder.retry_on_miss,
    )


def build_camera(camera, clock: Clock) -> FrameSource:
    """The configured frame source, stamping frames with ``clock``. Raises
    ``hardware.protocols.CameraError`` with a hint when the camera cannot be opened."""
    settings = CameraSettings(
        width=camera.width,
        height=camera.height,
        fps=camera.fps,
        device=camera.device,
        replay_path=camera.replay_path,
    )
    return open_camera(camera.backend, settings, clock.monotonic_ns)


def force_relay_off(gpio) -> PinFactoryChoice:
    """Drive the relay output to its inactive level (for systemd's ExecStopPost after a kill)."""
    pins = make_pin_factory(gpio.pin_factory)
    force_off(gpio.relay_pin, gpio.relay_active_high, pins.factory)
    return pins
