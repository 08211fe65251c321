"""Builds the door's hardware from the configuration: the one place that maps config keys to
adapters. Vendor modules are imported only for the backend actually chosen."""

from __future__ import annotations

from pathlib import Path

from hardware.gpio.pins import GpioError, PinFactoryChoice, make_pin_factory
from hardware.gpio.relay import RelayDoor, force_off
from hardware.gpio.signal import LedBuzzerSignal
from hardware.protocols import Decoder, FrameSource
from kiosk.config import Config, policy_settings
from kiosk.core.clock import Clock
from kiosk.door.loop import ScannerSettings

__all__ = [
    "GpioError",
    "build_camera",
    "build_door",
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


def build_reader(decoder) -> Decoder:
    """The production decode pipeline around the configured decoder backend."""
    from kiosk.door.reader import QrReader, make_decoder

    return QrReader(
        make_decoder(decoder.backend),
        motion_gate=decoder.motion_gate,
        retry_on_miss=decoder.retry_on_miss,
    )


def build_camera(camera, clock: Clock) -> FrameSource:
    """The configured frame source. Raises ``hardware.protocols.CameraError`` with a hint when the
    camera cannot be opened."""
    if camera.backend == "picamera2":
        from hardware.camera.picamera import Picamera2Camera

        return Picamera2Camera(camera.width, camera.height, camera.fps)
    if camera.backend == "opencv":
        from hardware.camera.opencv import OpenCVCamera

        return OpenCVCamera(camera.device, camera.width, camera.height, camera.fps)
    if camera.backend == "replay":
        from hardware.camera.replay import ReplayCamera

        return ReplayCamera(Path(camera.replay_path), fps=camera.fps, clock=clock.monotonic_ns)
    raise ValueError(f"unknown camera backend {camera.backend!r}")  # config validation prevents it


def force_relay_off(gpio) -> PinFactoryChoice:
    """Drive the relay output to its inactive level (for systemd's ExecStopPost after a kill)."""
    pins = make_pin_factory(gpio.pin_factory)
    force_off(gpio.relay_pin, gpio.relay_active_high, pins.factory)
    return pins
