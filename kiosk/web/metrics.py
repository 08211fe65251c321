"""``/metrics``: the device's figures in the Prometheus text exposition format, version 0.0.4.

Counts and gauges only, nothing personal: decisions by reason (the scanner's own counters since it
started, so they reset when it restarts, as Prometheus counters may), the upload backlog, decode
time, camera figures, the replica, disk space, each health check's grade, how many are in the gym
(the scanner's occupancy: now, today's maximum, the capacity) and today's passage events by kind
from the journal (gauges: they fall back to 0 at the gym's local midnight). A figure that is
unknown right now is left out (its HELP and TYPE lines stay), never reported as a made-up zero.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kiosk.core.model import Reason
from kiosk.web.device_health import Check, Grade

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_GRADE_VALUE = {Grade.OK: 0, Grade.WARNING: 1, Grade.PROBLEM: 2}
_MAX_REASONS = 100  # a report is another process's data: bound what it can add here


@dataclass
class MetricFacts:
    """The figures to publish; None means unknown (the sample is left out)."""

    decisions: Mapping[str, Any] = field(default_factory=dict)
    scanner_up: bool = False
    backlog: int | None = None
    oldest_pending_age_s: float | None = None
    online: bool | None = None
    decode_ms_p50: float | None = None
    decode_ms_p95: float | None = None
    frame_age_s: float | None = None
    fps: float | None = None
    replica_version: int | None = None
    replica_members: int | None = None
    disk_free_bytes: int | None = None
    checks: list[Check] = field(default_factory=list)
    occupancy: int | None = None
    occupancy_max_today: int | None = None
    capacity: int | None = None
    events_today: Mapping[str, int] | None = None


def escape_label(value: str) -> str:
    """A label value escaped per the text format: backslash, double quote and newline."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _value(number: float | int | bool) -> str | None:
    if isinstance(number, bool):
        return "1" if number else "0"
    if isinstance(number, int):
        return str(number)
    if isinstance(number, float) and math.isfinite(number):
        return repr(number)
    return None


def _family(
    name: str, kind: str, help_text: str, samples: Iterable[tuple[dict[str, str], Any]]
) -> list[str]:
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    for labels, number in samples:
        if number is None:
            continue
        text = _value(number)
        if text is None:
            continue
        if labels:
            inner = ",".join(f'{k}="{escape_label(v)}"' for k, v in labels.items())
            lines.append(f"{name}{{{inner}}} {text}")
        else:
            lines.append(f"{name} {text}")
    return lines


def _verdict(reason: str) -> str:
    try:
        return Reason(reason).verdict.value
    except ValueError:
        return "unknown"


def render_metrics(facts: MetricFacts) -> str:
    """The exposition text, ending with a newline."""
    decisions = []
    for reason, count in list(facts.decisions.items())[:_MAX_REASONS]:
        if isinstance(count, int) and not isinstance(count, bool) and count >= 0:
            reason = str(reason)[:64]
            decisions.append(({"reason": reason, "verdict": _verdict(reason)}, count))
    decisions.sort(key=lambda item: item[0]["reason"])

    def seconds(ms: float | None) -> float | None:
        return None if ms is None else ms / 1000.0

    lines: list[str] = []
    lines += _family(
        "fitflow_decisions_total",
        "counter",
        "Door decisions since the scanner started, by reason and verdict.",
        decisions,
    )
    lines += _family(
        "fitflow_sync_backlog", "gauge", "Check-ins waiting for upload to the cloud.",
        [({}, facts.backlog)],
    )  # fmt: skip
    lines += _family(
        "fitflow_sync_oldest_pending_age_seconds",
        "gauge",
        "Age of the oldest check-in waiting for upload (0 when none waits).",
        [({}, facts.oldest_pending_age_s)],
    )
    lines += _family(
        "fitflow_sync_online", "gauge", "1 when the sync agent last reached the cloud.",
        [({}, facts.online)],
    )  # fmt: skip
    lines += _family(
        "fitflow_decode_seconds",
        "gauge",
        "QR decode time per frame over the scanner's recent frames, by quantile.",
        [
            ({"quantile": "0.5"}, seconds(facts.decode_ms_p50)),
            ({"quantile": "0.95"}, seconds(facts.decode_ms_p95)),
        ],
    )
    lines += _family(
        "fitflow_camera_frame_age_seconds",
        "gauge",
        "Age of the newest camera frame the scanner reported, up to now (grows while it hangs).",
        [({}, facts.frame_age_s)],
    )
    lines += _family(
        "fitflow_camera_fps", "gauge", "Camera frames per second over the last ~10 s.",
        [({}, facts.fps)],
    )  # fmt: skip
    lines += _family(
        "fitflow_replica_version", "gauge", "Version of the member list the door decides on.",
        [({}, facts.replica_version)],
    )  # fmt: skip
    lines += _family(
        "fitflow_replica_members", "gauge", "Members in the door's member list.",
        [({}, facts.replica_members)],
    )  # fmt: skip
    lines += _family(
        "fitflow_disk_free_bytes", "gauge", "Free space on the data folder's file system.",
        [({}, facts.disk_free_bytes)],
    )  # fmt: skip
    lines += _family(
        "fitflow_health",
        "gauge",
        "Each health check's grade: 0 ok, 1 warning, 2 problem.",
        [({"check": c.name}, _GRADE_VALUE[c.grade]) for c in facts.checks],
    )
    lines += _family(
        "fitflow_scanner_up", "gauge", "1 when the scanner reports and is running.",
        [({}, facts.scanner_up)],
    )  # fmt: skip
    lines += _family(
        "fitflow_occupancy", "gauge", "People in the gym now, as the door counts them.",
        [({}, facts.occupancy)],
    )  # fmt: skip
    lines += _family(
        "fitflow_occupancy_max_today", "gauge", "Most people in the gym at once today.",
        [({}, facts.occupancy_max_today)],
    )  # fmt: skip
    lines += _family(
        "fitflow_occupancy_capacity", "gauge", "The configured capacity (absent: no limit).",
        [({}, facts.capacity)],
    )  # fmt: skip
    events = sorted((facts.events_today or {}).items())[:_MAX_REASONS]
    lines += _family(
        "fitflow_door_events_today",
        "gauge",
        "Passage events recorded today (local day), by kind: entry (confirmed), annulled "
        "(granted but did not go through), tailgating (passage with no check-in), exit.",
        [({"kind": str(kind)[:64]}, count) for kind, count in events],
    )
    return "\n".join(lines) + "\n"
