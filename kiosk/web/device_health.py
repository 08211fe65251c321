"""Device health for the owner page: each figure graded OK / WARNING / PROBLEM with a hint.

``grade_checks`` is a pure function of ``HealthInputs`` (the scanner's published report, the
system's figures, the disk, the sync status), so its thresholds are tested as a table.
``read_sys_facts`` reads the figures Linux and the Raspberry Pi firmware publish under ``/sys`` and
``/proc``, from a root folder tests replace with a fake one. A figure the system does not report
(no thermal zone, not a Pi) gives no check rather than a false alarm.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from kiosk.core.policy import EARLIEST_TRUSTED_TIME
from kiosk.web.words import age_words, bytes_words, duration_words


class Grade(StrEnum):
    OK = "ok"
    WARNING = "warning"
    PROBLEM = "problem"


_RANK = {Grade.OK: 0, Grade.WARNING: 1, Grade.PROBLEM: 2}


@dataclass(frozen=True, slots=True)
class Check:
    """One graded figure: ``name`` is stable (``/healthz``, ``/metrics``), ``label`` and ``hint``
    are for people, ``figure`` is the value as shown."""

    name: str
    label: str
    grade: Grade
    figure: str
    hint: str = ""

    def to_json(self) -> dict[str, str]:
        return {
            "name": self.name,
            "label": self.label,
            "grade": self.grade.value,
            "figure": self.figure,
            "hint": self.hint,
        }


@dataclass(frozen=True, slots=True)
class SysFacts:
    """What the system reports; None where it does not. ``cpu_temp_c`` in °C; ``throttled`` the
    Raspberry Pi firmware's bit field (``vcgencmd get_throttled``); ``uptime_s`` seconds since
    boot; ``clock_synced`` whether the kernel's clock is NTP-synchronised."""

    cpu_temp_c: float | None = None
    throttled: int | None = None
    uptime_s: float | None = None
    clock_synced: bool | None = None


@dataclass(frozen=True, slots=True)
class HealthInputs:
    """Everything the grading looks at. ``scanner`` is the scanner's health report data
    (``kiosk.data.control``; None when it never published) and ``scanner_updated_at`` when it was
    published. ``database_problem`` is None when the door's database is readable, else why not.
    ``sync`` is the sync agent's recorded status (empty: it never ran); ``sync_age_s`` how long
    ago the agent last wrote it (its ``updated_at``; None: unknown) and ``sync_silent_after_s``
    after how long that means the agent is dead or hung (``sync_silent_after``);
    ``replica_age_s`` the age of the last successful pull (None: never); ``oldest_pending_age_s``
    the age of the oldest check-in waiting for upload (None: none waiting). Times from the door's
    database are aged against the door's notion of now, the scanner's report against the
    kernel's clock (the caller does both)."""

    now: datetime
    version: str
    expected_fps: float
    stale_after_s: float
    stale_after_hours: float
    scanner: dict[str, Any] | None = None
    scanner_updated_at: datetime | None = None
    database_problem: str | None = None
    disk_free_bytes: int | None = None
    disk_total_bytes: int | None = None
    sys: SysFacts = field(default_factory=SysFacts)
    sync: dict[str, Any] = field(default_factory=dict)
    sync_age_s: float | None = None
    sync_silent_after_s: float = 390.0
    replica_age_s: float | None = None
    oldest_pending_age_s: float | None = None


# Thresholds. The scanner publishes every 2 s: three missed reports is a warning, seven a problem.
HEARTBEAT_WARN_S, HEARTBEAT_PROBLEM_S = 6.0, 15.0
DECODE_WARN_MS, DECODE_PROBLEM_MS = 40.0, 150.0  # a Pi 4 decodes a 640x480 frame in ~3-5 ms
DISK_PROBLEM_BYTES, DISK_WARN_BYTES = 256 * 2**20, 2**30
DISK_WARN_FRACTION = 0.05
TEMP_WARN_C, TEMP_PROBLEM_C = 70.0, 80.0  # the Pi's firmware starts throttling at 80-85 °C
UPTIME_WARN_S = 600.0
SCANNER_UPTIME_WARN_S = 120.0
BACKLOG_WARN_S, BACKLOG_PROBLEM_S = 3600.0, 24 * 3600.0
# A sync agent silent for longer than sync_silent_after (minutes) is a warning, for an hour a
# problem: nothing uploads and the member list ages.
SYNC_SILENT_PROBLEM_S = 3600.0

# get_throttled bits (Raspberry Pi firmware): now (low bits) and since boot (bits 16-19).
UNDER_VOLTAGE_NOW, CAPPED_NOW, THROTTLED_NOW, SOFT_LIMIT_NOW = 0x1, 0x2, 0x4, 0x8
UNDER_VOLTAGE_SINCE_BOOT = 0x10000
THROTTLING_SINCE_BOOT = 0x20000 | 0x40000 | 0x80000

_NO_REPORT = "unknown: the scanner is not reporting"


def sync_silent_after(interval_s: float, backoff_max_s: float) -> float:
    """Seconds after which a sync agent that has not written its status is taken for dead or hung:
    three rounds (``sync.interval_s``) plus its longest retry wait (``sync.backoff_max_s``)."""
    return 3 * interval_s + backoff_max_s


def sync_silent(age_s: float | None, silent_after_s: float) -> bool:
    """True when the agent's status is older than ``silent_after_s`` (an unknown age is not)."""
    return age_s is not None and age_s > silent_after_s


def worst(grades: list[Grade]) -> Grade:
    """The most serious grade of ``grades`` (OK for none)."""
    return max(grades, key=_RANK.__getitem__, default=Grade.OK)


def overall(checks: list[Check]) -> Grade:
    return worst([c.grade for c in checks])


def _parse_time(text: Any) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def grade_checks(inputs: HealthInputs) -> list[Check]:
    """Every check, in the order the page shows them. Never raises for odd report values: a
    figure that is missing or of the wrong type reads as unknown."""
    checks = [_database(inputs), *_scanner_checks(inputs), _clock(inputs), _disk(inputs)]
    checks += _system_checks(inputs.sys)
    checks += [_sync(inputs), _replica(inputs)]
    checks.append(Check("version", "Software version", Grade.OK, inputs.version))
    return checks


def _database(inputs: HealthInputs) -> Check:
    if inputs.database_problem is None:
        return Check("database", "Door database", Grade.OK, "readable")
    return Check("database", "Door database", Grade.PROBLEM, "unreadable", inputs.database_problem)


def _scanner_checks(inputs: HealthInputs) -> list[Check]:
    report, now = inputs.scanner, inputs.now
    if report is None or inputs.scanner_updated_at is None:
        return [
            Check(
                "scanner",
                "Scanner heartbeat",
                Grade.PROBLEM,
                "no report",
                "The scanner has never reported: is it running? "
                "(sudo systemctl status fitflow-scanner)",
            ),
            Check("camera_fps", "Camera frame rate", Grade.WARNING, _NO_REPORT),
            Check("frame_age", "Last camera frame", Grade.WARNING, _NO_REPORT),
            Check("decode_time", "Decode time (median)", Grade.WARNING, _NO_REPORT),
        ]
    age = (now - inputs.scanner_updated_at).total_seconds()
    state = report.get("state")
    if state == "stopped":
        heartbeat = Check(
            "scanner",
            "Scanner heartbeat",
            Grade.PROBLEM,
            f"stopped {duration_words(age)} ago",
            "The scanner stopped: the door admits nobody. Check its log (kiosk logs --unit "
            "scanner) and start it (sudo systemctl start fitflow-scanner).",
        )
    elif age > HEARTBEAT_PROBLEM_S:
        heartbeat = Check(
            "scanner",
            "Scanner heartbeat",
            Grade.PROBLEM,
            f"last report {duration_words(age)} ago",
            "The scanner has stopped reporting: it may be hung or stopped. Check its log "
            "(kiosk logs --unit scanner).",
        )
    elif age > HEARTBEAT_WARN_S:
        heartbeat = Check(
            "scanner",
            "Scanner heartbeat",
            Grade.WARNING,
            f"last report {duration_words(age)} ago",
            "The scanner reports late: the device may be overloaded.",
        )
    else:
        heartbeat = Check("scanner", "Scanner heartbeat", Grade.OK, f"reported {age_words(age)}")
    checks = [heartbeat, _fps(inputs, report), _frame_age(inputs, report), _decode(report)]
    started = _parse_time(report.get("started_at"))
    if started is not None:
        up = (inputs.scanner_updated_at - started).total_seconds()
        if up < SCANNER_UPTIME_WARN_S:
            checks.append(
                Check(
                    "scanner_uptime",
                    "Scanner uptime",
                    Grade.WARNING,
                    duration_words(up),
                    "The scanner restarted recently; if this repeats, check its log.",
                )
            )
        else:
            checks.append(Check("scanner_uptime", "Scanner uptime", Grade.OK, duration_words(up)))
    return checks


def _fps(inputs: HealthInputs, report: dict[str, Any]) -> Check:
    fps = _number(report.get("fps"))
    if report.get("state") == "camera_stale":
        return Check(
            "camera_fps",
            "Camera frame rate",
            Grade.PROBLEM,
            "no frames",
            "The camera stopped delivering frames: check its cable and `kiosk selftest`.",
        )
    if fps is None:
        return Check("camera_fps", "Camera frame rate", Grade.WARNING, "unknown")
    figure = f"{fps:.1f} frames/s (asked {inputs.expected_fps:.0f})"
    if fps >= 0.5 * inputs.expected_fps:
        return Check("camera_fps", "Camera frame rate", Grade.OK, figure)
    if fps >= min(2.0, 0.5 * inputs.expected_fps):
        return Check(
            "camera_fps",
            "Camera frame rate",
            Grade.WARNING,
            figure,
            "Fewer frames than asked: codes take longer to read. Is the CPU busy or hot?",
        )
    return Check(
        "camera_fps",
        "Camera frame rate",
        Grade.PROBLEM,
        figure,
        "Almost no frames: members wait at the door. Check the camera and the CPU load.",
    )


def _frame_age(inputs: HealthInputs, report: dict[str, Any]) -> Check:
    last = _parse_time(report.get("last_frame_at"))
    if last is None or inputs.scanner_updated_at is None:
        return Check(
            "frame_age",
            "Last camera frame",
            Grade.PROBLEM,
            "none yet",
            "No frame since the scanner started: check the camera (kiosk selftest).",
        )
    # Shown up to now, so a hung scanner shows a growing age. Graded on the age when the scanner
    # reported, unless the report itself is late by more than a few missed reports: the scanner
    # reports every 2 s, and a healthy camera must not read as stale between two reports.
    age = max(0.0, (inputs.now - last).total_seconds())
    at_report = max(0.0, (inputs.scanner_updated_at - last).total_seconds())
    graded = max(at_report, age - HEARTBEAT_WARN_S)
    figure = f"{age:.2f} s old"
    if graded >= inputs.stale_after_s:
        return Check(
            "frame_age",
            "Last camera frame",
            Grade.PROBLEM,
            figure,
            f"Older than camera.stale_after_s ({inputs.stale_after_s:g} s): the camera stalled.",
        )
    if graded >= inputs.stale_after_s / 2:
        return Check(
            "frame_age",
            "Last camera frame",
            Grade.WARNING,
            figure,
            "Frames arrive late: the camera or the CPU is struggling.",
        )
    return Check("frame_age", "Last camera frame", Grade.OK, figure)


def _decode(report: dict[str, Any]) -> Check:
    p50 = _number(report.get("decode_ms_p50"))
    if p50 is None:
        return Check("decode_time", "Decode time (median)", Grade.OK, "no frames decoded yet")
    p95 = _number(report.get("decode_ms_p95"))
    figure = f"{p50:.1f} ms" + (f" (95%: {p95:.1f} ms)" if p95 is not None else "")
    if p50 >= DECODE_PROBLEM_MS:
        return Check(
            "decode_time",
            "Decode time (median)",
            Grade.PROBLEM,
            figure,
            "Reading a frame takes far too long: the door feels slow. Is the zxing decoder "
            "installed (decoder.backend)? Is the CPU throttled?",
        )
    if p50 >= DECODE_WARN_MS:
        return Check(
            "decode_time",
            "Decode time (median)",
            Grade.WARNING,
            figure,
            "Slower than usual: check decoder.backend and the CPU temperature.",
        )
    return Check("decode_time", "Decode time (median)", Grade.OK, figure)


def _clock(inputs: HealthInputs) -> Check:
    quality = None
    if inputs.scanner is not None:
        quality = inputs.scanner.get("clock_quality")
    if quality is None and inputs.sys.clock_synced is not None:
        quality = "ntp_synced" if inputs.sys.clock_synced else "unsynced"
    if quality == "ntp_synced":
        return Check("clock", "Clock", Grade.OK, "synchronised (NTP)")
    if quality == "server_anchored":
        return Check(
            "clock",
            "Clock",
            Grade.WARNING,
            "set from the cloud's time",
            "NTP is not synchronised; the door uses the cloud's time. Let the Pi reach an NTP "
            "server (UDP port 123).",
        )
    if quality == "unsynced" and inputs.now < EARLIEST_TRUSTED_TIME:
        return Check(
            "clock",
            "Clock",
            Grade.PROBLEM,
            "not set",
            "The clock was never set since start-up: the door refuses members (clock not "
            "trusted) until NTP or the sync agent sets it. Check the network.",
        )
    if quality == "unsynced":
        # The policy still decides on this time (it only refuses a clock that was never set),
        # but nothing confirms it: entry times and opening hours may be off.
        return Check(
            "clock",
            "Clock",
            Grade.WARNING,
            "not synchronised",
            "Neither NTP nor the cloud has confirmed the time yet: check-in times and opening "
            "hours rely on the Pi's own clock. Let the Pi reach an NTP server (UDP port 123) or "
            "the cloud.",
        )
    return Check("clock", "Clock", Grade.WARNING, "unknown")


def _disk(inputs: HealthInputs) -> Check:
    free, total = inputs.disk_free_bytes, inputs.disk_total_bytes
    if free is None:
        return Check(
            "disk", "Disk free", Grade.WARNING, "unknown", "The data folder's disk cannot be read."
        )
    figure = bytes_words(free) + (f" of {bytes_words(total)}" if total else "")
    if free < DISK_PROBLEM_BYTES:
        return Check(
            "disk",
            "Disk free",
            Grade.PROBLEM,
            figure,
            "Almost full: the door stops admitting when it cannot record. Remove old backups "
            "and logs (journalctl --vacuum-size=100M).",
        )
    if free < DISK_WARN_BYTES or (total and free < DISK_WARN_FRACTION * total):
        return Check(
            "disk", "Disk free", Grade.WARNING, figure, "Getting full: remove old backups and logs."
        )
    return Check("disk", "Disk free", Grade.OK, figure)


def _system_checks(facts: SysFacts) -> list[Check]:
    checks: list[Check] = []
    if facts.cpu_temp_c is not None:
        temp = facts.cpu_temp_c
        figure = f"{temp:.1f} °C"
        if temp >= TEMP_PROBLEM_C:
            checks.append(
                Check(
                    "cpu_temp",
                    "CPU temperature",
                    Grade.PROBLEM,
                    figure,
                    "Too hot: the Pi slows itself down. Give it a heatsink or a fan and air.",
                )
            )
        elif temp >= TEMP_WARN_C:
            checks.append(
                Check(
                    "cpu_temp",
                    "CPU temperature",
                    Grade.WARNING,
                    figure,
                    "Warm: check the case's ventilation.",
                )
            )
        else:
            checks.append(Check("cpu_temp", "CPU temperature", Grade.OK, figure))
    if facts.throttled is not None:
        checks.append(_throttling(facts.throttled))
    if facts.uptime_s is not None:
        up = facts.uptime_s
        if up < UPTIME_WARN_S:
            checks.append(
                Check(
                    "uptime",
                    "System uptime",
                    Grade.WARNING,
                    duration_words(up),
                    "The device restarted recently: a power cut or a crash?",
                )
            )
        else:
            checks.append(Check("uptime", "System uptime", Grade.OK, duration_words(up)))
    return checks


def _throttling(bits: int) -> Check:
    figure = f"0x{bits:x}"
    if bits & UNDER_VOLTAGE_NOW:
        return Check(
            "throttling",
            "Power and throttling",
            Grade.PROBLEM,
            f"under-voltage now ({figure})",
            "The power supply is too weak: use the official 5 V supply and a short, thick cable.",
        )
    if bits & (CAPPED_NOW | THROTTLED_NOW | SOFT_LIMIT_NOW):
        return Check(
            "throttling",
            "Power and throttling",
            Grade.WARNING,
            f"throttled now ({figure})",
            "The Pi is slowing itself down (heat or power): cool it, check the supply.",
        )
    if bits & UNDER_VOLTAGE_SINCE_BOOT:
        return Check(
            "throttling",
            "Power and throttling",
            Grade.WARNING,
            f"under-voltage since boot ({figure})",
            "The supply dipped since start-up: use the official 5 V supply.",
        )
    if bits & THROTTLING_SINCE_BOOT:
        return Check(
            "throttling",
            "Power and throttling",
            Grade.WARNING,
            f"throttled since boot ({figure})",
            "The Pi slowed down at some point since start-up (heat): check its cooling.",
        )
    return Check("throttling", "Power and throttling", Grade.OK, "no under-voltage or throttling")


def _sync(inputs: HealthInputs) -> Check:
    status = inputs.sync
    pending = inputs.oldest_pending_age_s
    if not status:
        return Check(
            "sync",
            "Sync with the cloud",
            Grade.WARNING,
            "never ran",
            "The sync agent has not run yet: is the device enrolled and the sync service "
            "started? (sudo systemctl status fitflow-sync)",
        )
    if status.get("state") == "stopped" and status.get("last_error"):
        return Check(
            "sync",
            "Sync with the cloud",
            Grade.PROBLEM,
            "stopped",
            "The sync agent stopped for good (see the last error); it may need enrolling again.",
        )
    if sync_silent(inputs.sync_age_s, inputs.sync_silent_after_s):
        silent_s = inputs.sync_age_s or 0.0
        return Check(
            "sync",
            "Sync with the cloud",
            Grade.PROBLEM if silent_s >= SYNC_SILENT_PROBLEM_S else Grade.WARNING,
            f"sync agent not reporting for {duration_words(silent_s)}",
            "The sync agent has stopped writing its status: it may be stopped or hung. Check it "
            "(sudo systemctl status fitflow-sync; kiosk logs --unit sync).",
        )
    figure = "online" if status.get("online") else "offline"
    if pending is not None:
        figure += f", oldest check-in waiting {duration_words(pending)}"
    if pending is not None and pending >= BACKLOG_PROBLEM_S:
        return Check(
            "sync",
            "Sync with the cloud",
            Grade.PROBLEM,
            figure,
            "Check-ins have waited over a day for upload: check the internet connection.",
        )
    if (pending is not None and pending >= BACKLOG_WARN_S) or not status.get("online"):
        return Check(
            "sync",
            "Sync with the cloud",
            Grade.WARNING,
            figure,
            "The door keeps working offline; check-ins upload when the connection returns.",
        )
    return Check("sync", "Sync with the cloud", Grade.OK, figure)


def _replica(inputs: HealthInputs) -> Check:
    age = inputs.replica_age_s
    limit_s = inputs.stale_after_hours * 3600
    if age is None:
        return Check(
            "replica",
            "Member list",
            Grade.PROBLEM,
            "never pulled",
            "The door has no member list from the cloud yet: it refuses everyone. Enrol the "
            "device and start the sync service.",
        )
    figure = f"pulled {duration_words(age)} ago"
    if age >= limit_s:
        return Check(
            "replica",
            "Member list",
            Grade.PROBLEM,
            figure,
            f"Older than policy.stale_after_hours ({inputs.stale_after_hours:g} h): the door "
            "applies its stale-list policy. Restore the internet connection.",
        )
    if age >= limit_s / 2:
        return Check(
            "replica",
            "Member list",
            Grade.WARNING,
            figure,
            "No fresh member list for a while: check the internet connection.",
        )
    return Check("replica", "Member list", Grade.OK, figure)


# -- reading the system ---------------------------------------------------------------------------

THERMAL_ZONE = "sys/class/thermal/thermal_zone0/temp"
# The Raspberry Pi firmware driver's attribute (Pi 4 and older under soc, Pi 5 under axi).
THROTTLED_FILES = (
    "sys/devices/platform/soc/soc:firmware/get_throttled",
    "sys/devices/platform/axi/axi:firmware/get_throttled",
)
THROTTLED_GLOB = "sys/devices/platform/*/*firmware*/get_throttled"
UPTIME_FILE = "proc/uptime"
TIMESYNC_FLAG = "run/systemd/timesync/synchronized"


def _read_small(path: Path) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            return handle.read(256)
    except OSError:
        return None


def read_sys_facts(
    root: Path = Path("/"), *, kernel_synced: Callable[[], bool] | None = None
) -> SysFacts:
    """The system's figures, read under ``root`` (tests pass a fake folder). Anything missing or
    unreadable is None. ``kernel_synced`` asks the kernel whether the clock is synchronised; by
    default it is asked only when ``root`` is the real root (``kiosk.core.clock.kernel_clock_synced``),
    otherwise only systemd-timesyncd's flag file under ``root`` counts."""
    root = Path(root)
    temp = None
    text = _read_small(root / THERMAL_ZONE)
    if text is not None:
        try:
            temp = int(text.strip()) / 1000.0  # millidegrees Celsius
        except ValueError:
            temp = None
    throttled = None
    candidates = [root / name for name in THROTTLED_FILES]
    candidates += [Path(p) for p in sorted(glob.glob(os.fspath(root / THROTTLED_GLOB)))]
    for candidate in candidates:
        text = _read_small(candidate)
        if text is None:
            continue
        try:
            throttled = int(text.strip(), 16)  # the driver prints hex, with or without 0x
        except ValueError:
            continue
        break
    uptime = None
    text = _read_small(root / UPTIME_FILE)
    if text is not None:
        try:
            uptime = float(text.split()[0])
        except (ValueError, IndexError):
            uptime = None
    synced: bool | None
    if (root / TIMESYNC_FLAG).exists():
        synced = True
    elif kernel_synced is not None:
        synced = kernel_synced()
    elif root == Path("/"):
        from kiosk.core.clock import kernel_clock_synced

        synced = kernel_clock_synced()
    else:
        synced = False
    return SysFacts(cpu_temp_c=temp, throttled=throttled, uptime_s=uptime, clock_synced=synced)
