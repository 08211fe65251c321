"""``kiosk selftest``: is this door ready? Every part checked, graded, with the fix.

Checks, in order: ``config``, ``database`` (integrity, schema version), ``disk`` (free space of the
data folder), ``clock`` (NTP-synchronised or not), ``cloud`` (reachable and the stored token
accepted, by one read-only poll for replica changes), ``camera`` (a frame arrives), ``decoder``
(the test card from ``kiosk testcard`` decodes in the frames seen), ``relay`` (a short click),
``leds`` and ``buzzer``. Each gives a ``CheckResult``: ``OK``, ``WARNING`` (works, but look at it)
or ``PROBLEM`` (the door will not work right), a one-line summary and, unless OK, a fix hint.

The outputs are driven for real and read back: the relay clicks for ``RELAY_CLICK_MS`` (the
turnstile is released that long: ``--no-relay`` skips it), the green then the red LED light and
the buzzer beeps. On a Pi the installer hears and sees them; the summary says what to look for.

The running scanner holds the camera and the GPIO pins. The self-test never fights it: when a pin
is busy, the GPIO checks say so (WARNING, stop the scanner to test them), and a camera that cannot
be opened names the scanner as a likely holder in its hint.

Every check catches its own failures, so one broken part never hides the others. Time is injected
(``sleep``, ``monotonic``) so tests never wait.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, TextIO

from hardware.protocols import Pattern
from kiosk.config import Config

log = logging.getLogger(__name__)

# The scanner's systemd unit, named in hints (systemd/ in this repository).
SCANNER_UNIT = "fitflow-scanner.service"
RELAY_CLICK_MS = 100
SHOW_S = 0.8  # how long each LED / the buzzer is left on for the installer to notice
READBACK_TIMEOUT_S = 0.5  # gpiozero's pattern threads switch an output on within milliseconds
DEFAULT_CAMERA_SECONDS = 10.0
# Disk thresholds for the data folder (the journal and the replica live there).
DISK_PROBLEM_BYTES = 100 * 2**20
DISK_WARNING_BYTES = 500 * 2**20


class Grade(StrEnum):
    OK = "OK"
    WARNING = "WARNING"
    PROBLEM = "PROBLEM"


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One check's verdict. ``hint`` says how to fix it (empty when OK); ``details`` holds
    figures for ``--json`` (frames seen, bytes free...)."""

    name: str
    grade: Grade
    summary: str
    hint: str = ""
    details: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "grade": self.grade.value,
            "summary": self.summary,
            "hint": self.hint,
            "details": dict(self.details),
        }


@dataclass
class SelftestEnv:
    """What the checks touch besides the configuration, injectable for tests.

    ``transport``: an httpx transport for the cloud (None = the network). ``clock_synced``: the
    kernel's "NTP synchronised" flag. ``sleep``/``monotonic``: seconds. ``environ``: for the
    systemd credentials directory. ``progress``: a line for the person at the door (stderr).
    """

    transport: Any = None
    clock_synced: Callable[[], bool] | None = None
    disk_usage: Callable[[Path], Any] = shutil.disk_usage
    sleep: Callable[[float], None] = time.sleep
    monotonic: Callable[[], float] = time.monotonic
    environ: Mapping[str, str] = field(default_factory=dict)
    progress: Callable[[str], None] = lambda _line: None
    camera_seconds: float = DEFAULT_CAMERA_SECONDS
    relay: bool = True


def _ok(name: str, summary: str, **details: Any) -> CheckResult:
    return CheckResult(name, Grade.OK, summary, "", details)


def _warn(name: str, summary: str, hint: str, **details: Any) -> CheckResult:
    return CheckResult(name, Grade.WARNING, summary, hint, details)


def _problem(name: str, summary: str, hint: str, **details: Any) -> CheckResult:
    return CheckResult(name, Grade.PROBLEM, summary, hint, details)


# -- database, disk, clock ---------------------------------------------------------------------


def check_database(config: Config) -> CheckResult:
    from kiosk.data.database import StoreError
    from kiosk.data.migrations import LATEST_VERSION
    from kiosk.data.store import Store

    path = Path(config.store.path)
    if not path.exists():
        return _warn(
            "database",
            f"{path} does not exist yet",
            f"the scanner creates it on its first start (sudo systemctl start {SCANNER_UNIT}); "
            f"if it should exist, check store.path",
        )
    try:
        with Store.open(path, readonly=True) as store:
            findings = store.integrity_check()
            version = store.schema_version()
    except StoreError as exc:
        return _problem(
            "database",
            f"cannot use {path}: {exc}",
            "keep a copy of the file (its pending check-ins), then restore the newest backup with "
            "`kiosk db restore FILE`",
        )
    if findings != ["ok"]:
        return _problem(
            "database",
            f"integrity check of {path} failed: {'; '.join(findings[:3])}",
            "restore the newest backup with `kiosk db restore FILE`",
            findings=findings[:20],
        )
    return _ok(
        "database",
        f"{path}: integrity ok, schema version {version}",
        schema_version=version,
        latest_schema_version=LATEST_VERSION,
    )


def check_disk(config: Config, env: SelftestEnv) -> CheckResult:
    from kiosk.ops.status import disk_info, human_bytes

    info = disk_info(Path(config.store.path).parent, env.disk_usage)
    free, total = info["free_bytes"], info["total_bytes"]
    if free is None:
        return _warn("disk", f"cannot read free space of {info['path']}", "check the mount", **info)
    words = f"{human_bytes(free)} free of {human_bytes(total)} on {info['path']}"
    hint = (
        "free space: `sudo journalctl --vacuum-size=100M`, remove old files in the data folder; "
        "the journal of check-ins needs room to keep the door working offline"
    )
    if free < DISK_PROBLEM_BYTES:
        return _problem("disk", words, hint, **info)
    if free < DISK_WARNING_BYTES or (total and free < total * 0.05):
        return _warn("disk", words, hint, **info)
    return _ok("disk", words, **info)


def check_clock(env: SelftestEnv) -> CheckResult:
    from kiosk.core.clock import SystemClock, kernel_clock_synced
    from kiosk.core.model import ClockQuality

    quality = SystemClock(synced=env.clock_synced or kernel_clock_synced).quality()
    if quality is ClockQuality.NTP_SYNCED:
        return _ok("clock", "synchronised by NTP", quality=quality.value)
    return _warn(
        "clock",
        "not synchronised (no NTP yet)",
        "the Pi has no battery clock: give it network access to an NTP server (`timedatectl "
        "status`, `sudo systemctl restart systemd-timesyncd`). Until then the door tells time "
        "from the cloud's answers once the sync agent has talked to it",
        quality=quality.value,
    )


# -- cloud -----------------------------------------------------------------------------------


def check_cloud(config: Config, env: SelftestEnv) -> CheckResult:
    from kiosk import __version__
    from kiosk.data.database import StoreError
    from kiosk.data.store import Store
    from kiosk.sync.client import (
        CloudClient,
        CloudError,
        CursorExpired,
        NotModified,
        Unauthorized,
        UnsupportedProtocol,
    )
    from kiosk.sync.identity import IdentityError, load_identity

    path = Path(config.sync.credentials_file)
    if not path.exists() and not env.environ.get("CREDENTIALS_DIRECTORY"):
        return _warn(
            "cloud",
            "this device is not enrolled",
            "enrol it with `sudo kiosk provision --cloud URL --code CODE` (a code from the gym's "
            "admin page); until then the door decides on an empty or old member list",
        )
    try:
        identity = load_identity(path, env.environ)
    except IdentityError as exc:
        return _problem("cloud", str(exc), "fix the credentials file or re-enrol")
    since = 0
    db = Path(config.store.path)
    if db.exists():
        try:
            with Store.open(db, readonly=True) as store:
                since = store.replica_info().version
        except StoreError:
            since = 0  # the database check reports it
    started = env.monotonic()
    try:
        with CloudClient(
            identity.cloud_url,
            identity.token,
            transport=env.transport,
            timeout_s=config.sync.request_timeout_s,
            software_version=__version__,
        ) as client:
            answer = client.changes(since, None, 1)
    except CursorExpired:
        answer = None  # an answer to an authenticated request: the token was accepted
    except Unauthorized:
        return _problem(
            "cloud",
            f"{identity.cloud_url} refused this device's token (revoked or unknown)",
            "enrol again with a new code: `sudo kiosk provision --re-enrol --cloud URL --code CODE`",
        )
    except UnsupportedProtocol as exc:
        return _problem("cloud", str(exc), "update the kiosk software (re-run deploy/install.sh)")
    except CloudError as exc:
        unreachable = exc.status is None
        return _problem(
            "cloud",
            str(exc),
            "check the network cable/Wi-Fi, DNS and firewall (outgoing https), and the cloud "
            f"address {identity.cloud_url}"
            if unreachable
            else "the cloud answered with an error; try again later or ask the cloud's operator",
            status=exc.status,
        )
    elapsed_ms = round((env.monotonic() - started) * 1000)
    state = "up to date" if isinstance(answer, NotModified) else "has changes for this device"
    return _ok(
        "cloud",
        f"{identity.cloud_url} reachable, token accepted ({elapsed_ms} ms; replica {state})",
        device_id=identity.device_id,
        gym=identity.gym_name,
        elapsed_ms=elapsed_ms,
    )


# -- camera and decoder ---------------------------------------------------------------------------


def _camera_hint(config: Config) -> str:
    busy = f"if the scanner is running it holds the camera: `sudo systemctl stop {SCANNER_UNIT}`"
    backend = config.camera.backend
    if backend == "picamera2":
        return (
            "check the ribbon cable (contacts facing the right way, latch closed) and that "
            f"`rpicam-hello --list-cameras` lists the camera; the kiosk's user must be in the "
            f"'video' group; {busy}"
        )
    if backend == "opencv":
        return (
            f"check that the USB camera is plugged in and `ls /dev/video*` shows "
            f"/dev/video{config.camera.device} (camera.device); the kiosk's user must be in the "
            f"'video' group; {busy}"
        )
    return (
        f"check camera.replay_path ({config.camera.replay_path!r}): a folder of images or a video"
    )


def check_camera_and_decoder(config: Config, env: SelftestEnv) -> list[CheckResult]:
    """Open the configured camera, read frames for up to ``env.camera_seconds`` and decode them,
    stopping early once the test card is read. Returns the camera's and the decoder's result."""
    from hardware.protocols import CameraError, DecoderUnavailable
    from kiosk.core.clock import SystemClock
    from kiosk.door.parts import build_camera, build_reader
    from kiosk.ops.testcard import TEST_CODE, is_test_code

    try:
        # Every frame is decoded here: the motion gate would skip a card held still.
        reader = build_reader(dataclasses.replace(config.decoder, motion_gate=False))
        decoder_problem = None
    except DecoderUnavailable as exc:
        reader, decoder_problem = None, str(exc)
    try:
        camera = build_camera(config.camera, SystemClock(synced=lambda: False))
    except (CameraError, OSError) as exc:
        return [
            _problem("camera", f"cannot open the {config.camera.backend} camera: {exc}",
                     _camera_hint(config)),
            _warn("decoder", "not tested: no camera", "fix the camera first"),
        ]  # fmt: skip
    env.progress(
        f"hold the test card (`kiosk testcard`, code {TEST_CODE}) 20-50 cm in front of the "
        f"camera; looking for up to {env.camera_seconds:.0f} s..."
    )
    frames, seen, found, first = 0, set(), False, None
    failure = None
    deadline = env.monotonic() + env.camera_seconds
    try:
        while env.monotonic() < deadline and not found:
            frame = camera.read(timeout_s=min(1.0, max(0.05, deadline - env.monotonic())))
            if frame is None:
                continue
            frames += 1
            if first is None:
                first = frame.pixels.shape
            if reader is None:
                continue
            for decoded in reader.decode(frame.pixels):
                if is_test_code(decoded.payload):
                    found = True
                else:
                    seen.add(len(decoded.payload))
    except EOFError:
        pass  # a replay ran out of frames: judge what was seen
    except CameraError as exc:
        failure = str(exc)
    finally:
        try:
            camera.close()
        except Exception:  # a camera failing to close must not hide the verdict
            log.exception("closing the camera failed")

    if frames == 0:
        camera_result = _problem(
            "camera",
            failure or f"no frame arrived within {env.camera_seconds:.0f} s",
            _camera_hint(config),
            frames=0,
        )
    elif failure is not None:
        camera_result = _problem(
            "camera",
            f"failed after {frames} frames: {failure}",
            _camera_hint(config),
            frames=frames,
        )
    else:
        height, width = first[:2]
        camera_result = _ok(
            "camera", f"{frames} frame(s) of {width}x{height} px", frames=frames, width=width,
            height=height,
        )  # fmt: skip

    if decoder_problem is not None:
        decoder_result = _problem(
            "decoder", decoder_problem, "install the decoder or choose another decoder.backend"
        )
    elif frames == 0:
        decoder_result = _warn("decoder", "not tested: no frames", "fix the camera first")
    elif found:
        decoder_result = _ok("decoder", f"the test card was read ({reader.name})")
    elif seen:
        decoder_result = _warn(
            "decoder",
            f"read {len(seen)} other code(s) but not the test card",
            "show the test card from `kiosk testcard` (code FITFLOW-TESTCARD)",
        )
    else:
        decoder_result = _warn(
            "decoder",
            f"the test card was not seen in {frames} frame(s)",
            "print `kiosk testcard --out card.png` (or show it on a screen) and hold it 20-50 cm "
            "from the camera, flat and well lit; if it still is not read, check focus and glare",
        )
    return [camera_result, decoder_result]


# -- GPIO: relay, LEDs, buzzer ---------------------------------------------------------------------


def _busy(exc: Exception) -> bool:
    text = str(exc).lower()
    return "busy" in text or "already in use" in text


def _gpio_trouble(name: str, exc: Exception) -> CheckResult:
    if _busy(exc):
        return _warn(
            name,
            f"the GPIO pins are busy ({exc})",
            f"the scanner service holds them while it runs; to test this part stop it "
            f"(`sudo systemctl stop {SCANNER_UNIT}`), run the self-test, then start it again",
        )
    return _problem(
        name,
        str(exc),
        "check gpio.pin_factory (lgpio on every Pi, required on a Pi 5) and that the kiosk's "
        "user is in the 'gpio' group",
    )


def _wait_for(condition: Callable[[], bool], timeout_s: float) -> bool:
    # Real time on purpose: gpiozero's pattern threads switch outputs on their own clock.
    deadline = time.monotonic() + timeout_s
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.001)


def check_relay(config: Config, pins: Any, env: SelftestEnv) -> CheckResult:
    from hardware.gpio.pins import GpioError
    from kiosk.door.parts import build_door

    gpio = config.gpio
    if not env.relay:
        return _warn("relay", "skipped (--no-relay)", "run without --no-relay to click the relay")
    try:
        door = build_door(gpio, pins.factory)
    except GpioError as exc:
        return _gpio_trouble("relay", exc)
    pin = pins.factory.pin(gpio.relay_pin)
    active = bool(gpio.relay_active_high)
    try:
        env.progress(f"relay on GPIO{gpio.relay_pin}: one {RELAY_CLICK_MS} ms click")
        door.pulse(RELAY_CLICK_MS)
        went_on = bool(pin.state) == active
        env.sleep(RELAY_CLICK_MS / 1000)
        door.release()
        went_off = bool(pin.state) != active
    except GpioError as exc:
        return _gpio_trouble("relay", exc)
    finally:
        door.close()
    if not (went_on and went_off):
        return _problem(
            "relay",
            f"GPIO{gpio.relay_pin} did not follow (on: {went_on}, off: {went_off})",
            "check gpio.relay_pin and gpio.pin_factory",
        )
    return _ok(
        "relay",
        f"GPIO{gpio.relay_pin} clicked for {RELAY_CLICK_MS} ms (listen for one click; the "
        f"turnstile is released that long)",
        pin=gpio.relay_pin,
    )


@dataclass(frozen=True)
class _Feedback:
    """Patterns for the self-test: each output alone, so each can be seen (or heard) alone."""

    granted: Pattern
    denied: Pattern
    fault: Pattern


_ON_MS = round(SHOW_S * 1000)
_TEST_PATTERNS = _Feedback(
    granted=Pattern(led="green", led_blinks=1, led_on_ms=_ON_MS),
    denied=Pattern(led="red", led_blinks=1, led_on_ms=_ON_MS),
    fault=Pattern(beeps=1, beep_on_ms=_ON_MS // 2),
)


def check_signal(config: Config, pins: Any, env: SelftestEnv) -> list[CheckResult]:
    """The green LED, the red LED, then the buzzer, each driven alone and read back."""
    from hardware.gpio.pins import GpioError
    from kiosk.door.parts import build_signal

    gpio = config.gpio
    try:
        signal = build_signal(gpio, _TEST_PATTERNS, pins.factory)
    except GpioError as exc:
        return [_gpio_trouble("leds", exc), _gpio_trouble("buzzer", exc)]

    def lit(pin_number: int, active_high: bool) -> Callable[[], bool]:
        pin = pins.factory.pin(pin_number)
        return lambda: bool(pin.state) == active_high

    seen: dict[str, bool] = {}
    try:
        for label, pattern, pin_number, active_high in (
            ("green LED", "granted", gpio.green_led_pin, True),
            ("red LED", "denied", gpio.red_led_pin, True),
            ("buzzer", "fault", gpio.buzzer_pin, gpio.buzzer_active_high),
        ):
            env.progress(f"{label} on GPIO{pin_number}")
            signal.show(pattern)
            seen[label] = _wait_for(lit(pin_number, active_high), READBACK_TIMEOUT_S)
            env.sleep(SHOW_S)
            signal.show("idle")
    except GpioError as exc:
        return [_gpio_trouble("leds", exc), _gpio_trouble("buzzer", exc)]
    finally:
        signal.close()

    hint = "check gpio.{0} and the wiring (LED: resistor in series, long leg to the GPIO side)"
    leds = [name for name in ("green LED", "red LED") if not seen[name]]
    if leds:
        led_result = _problem(
            "leds", f"{' and '.join(leds)} did not switch on", hint.format("*_led_pin")
        )
    else:
        led_result = _ok(
            "leds",
            f"green (GPIO{gpio.green_led_pin}) then red (GPIO{gpio.red_led_pin}) driven "
            f"{SHOW_S:g} s each (look for both)",
        )
    if not seen["buzzer"]:
        buzzer_result = _problem(
            "buzzer", "the buzzer output did not switch on", "check gpio.buzzer_pin"
        )
    else:
        buzzer_result = _ok(
            "buzzer", f"GPIO{gpio.buzzer_pin} driven {SHOW_S / 2:g} s (listen for one beep)"
        )
    return [led_result, buzzer_result]


def check_gpio(config: Config, env: SelftestEnv) -> list[CheckResult]:
    from hardware.gpio.backends import make_pin_factory
    from hardware.gpio.pins import GpioError

    try:
        pins = make_pin_factory(config.gpio.pin_factory)
    except (GpioError, ValueError) as exc:
        return [_gpio_trouble(name, exc) for name in ("relay", "leds", "buzzer")]
    try:
        return [check_relay(config, pins, env), *check_signal(config, pins, env)]
    finally:
        try:
            pins.factory.close()
        except Exception:  # releasing the chip; nothing else to do
            log.exception("closing the pin factory failed")


# -- running them all ----------------------------------------------------------------------------


def _guarded(name: str, run: Callable[[], Any]) -> list[CheckResult]:
    try:
        result = run()
    except Exception as exc:  # a bug or an unforeseen failure: report it, run the other checks
        log.exception("self-test check %s crashed", name)
        return [_problem(name, f"the check itself failed: {exc!r}", "report this as a bug")]
    return result if isinstance(result, list) else [result]


def run_selftest(config: Config, env: SelftestEnv) -> list[CheckResult]:
    """Every check after ``config`` (which the caller has loaded), in order."""
    results = [_ok("config", "valid")]
    results += _guarded("database", lambda: check_database(config))
    results += _guarded("disk", lambda: check_disk(config, env))
    results += _guarded("clock", lambda: check_clock(env))
    results += _guarded("cloud", lambda: check_cloud(config, env))
    results += _guarded("camera", lambda: check_camera_and_decoder(config, env))
    results += _guarded("gpio", lambda: check_gpio(config, env))
    return results


def config_problem(where: str, errors: list[str]) -> CheckResult:
    return _problem(
        "config",
        f"{where} is invalid: " + "; ".join(errors[:5]),
        f"fix the listed settings (`kiosk config check {where}` lists them all), or re-run "
        f"`sudo kiosk provision`",
        errors=errors,
    )


def failed(results: list[CheckResult]) -> bool:
    return any(r.grade is Grade.PROBLEM for r in results)


def render(results: list[CheckResult], out: TextIO) -> None:
    """One line per check (grade, name, summary), the fix indented below it, then a verdict."""
    width = max(len(r.name) for r in results)
    for r in results:
        out.write(f"{r.grade.value:<8} {r.name:<{width}}  {r.summary}\n")
        if r.hint:
            out.write(f"{'':<8} {'':<{width}}  fix: {r.hint}\n")
    problems = sum(r.grade is Grade.PROBLEM for r in results)
    warnings = sum(r.grade is Grade.WARNING for r in results)
    verdict = "READY" if not problems else "NOT READY"
    out.write(f"{verdict}: {problems} problem(s), {warnings} warning(s)\n")
