"""Device health grading (a pure function, tested as a table) and reading /sys from a fake root."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from kiosk.web.device_health import (
    Grade,
    HealthInputs,
    SysFacts,
    grade_checks,
    overall,
    read_sys_facts,
    sync_silent,
    sync_silent_after,
)
from sync.protocol import utc_text

NOW = datetime(2026, 5, 4, 9, 0, tzinfo=UTC)


def report(**changes: Any) -> dict[str, Any]:
    data = {
        "state": "scanning",
        "started_at": utc_text(NOW - timedelta(hours=2)),
        "last_frame_at": utc_text(NOW - timedelta(milliseconds=40)),
        "fps": 29.0,
        "decode_ms_p50": 3.0,
        "decode_ms_p95": 6.0,
        "clock_quality": "ntp_synced",
    }
    data.update(changes)
    return data


HEALTHY = HealthInputs(
    now=NOW,
    version="1.2.3",
    expected_fps=30.0,
    stale_after_s=2.0,
    stale_after_hours=72.0,
    scanner=report(),
    scanner_updated_at=NOW - timedelta(seconds=1),
    disk_free_bytes=20 * 2**30,
    disk_total_bytes=32 * 2**30,
    sys=SysFacts(cpu_temp_c=50.0, throttled=0, uptime_s=3 * 86400.0, clock_synced=True),
    sync={"state": "running", "online": True},
    replica_age_s=300.0,
    oldest_pending_age_s=None,
)


def graded(inputs: HealthInputs) -> dict[str, tuple[Grade, str]]:
    return {c.name: (c.grade, c.figure) for c in grade_checks(inputs)}


def test_a_healthy_device_is_ok_everywhere():
    checks = grade_checks(HEALTHY)
    assert {c.name for c in checks} == {
        "database", "scanner", "camera_fps", "frame_age", "decode_time", "scanner_uptime",
        "clock", "disk", "cpu_temp", "throttling", "uptime", "sync", "replica", "version",
    }  # fmt: skip
    assert [c.name for c in checks if c.grade != Grade.OK] == []
    assert overall(checks) == Grade.OK
    assert graded(HEALTHY)["version"] == (Grade.OK, "1.2.3")


def scanner(**changes: Any) -> HealthInputs:
    return replace(HEALTHY, scanner=report(**changes))


def system(**changes: Any) -> HealthInputs:
    return replace(HEALTHY, sys=replace(HEALTHY.sys, **changes))


CASES = [
    # (what, inputs, check, grade, figure contains)
    ("database unreadable", replace(HEALTHY, database_problem="damaged"), "database", Grade.PROBLEM, "unreadable"),
    ("no scanner report", replace(HEALTHY, scanner=None, scanner_updated_at=None), "scanner", Grade.PROBLEM, "no report"),
    ("report 5 s old", replace(HEALTHY, scanner_updated_at=NOW - timedelta(seconds=5)), "scanner", Grade.OK, "5 s"),
    ("report 10 s old", replace(HEALTHY, scanner_updated_at=NOW - timedelta(seconds=10)), "scanner", Grade.WARNING, "10 s"),
    ("report 60 s old", replace(HEALTHY, scanner_updated_at=NOW - timedelta(seconds=60)), "scanner", Grade.PROBLEM, "60 s"),
    ("scanner stopped", scanner(state="stopped"), "scanner", Grade.PROBLEM, "stopped"),
    ("camera stale", scanner(state="camera_stale"), "camera_fps", Grade.PROBLEM, "no frames"),
    ("fps full", scanner(fps=30.0), "camera_fps", Grade.OK, "30.0 frames/s"),
    ("fps half", scanner(fps=15.0), "camera_fps", Grade.OK, "15.0"),
    ("fps low", scanner(fps=8.0), "camera_fps", Grade.WARNING, "8.0"),
    ("fps almost none", scanner(fps=0.5), "camera_fps", Grade.PROBLEM, "0.5"),
    ("fps not a number", scanner(fps="fast"), "camera_fps", Grade.WARNING, "unknown"),
    # The report is 1 s old: the age shown runs to now, the grade is the age at the report.
    ("frame fresh", scanner(last_frame_at=utc_text(NOW - timedelta(seconds=1.1))), "frame_age", Grade.OK, "1.10 s"),
    ("frame late", scanner(last_frame_at=utc_text(NOW - timedelta(seconds=2.5))), "frame_age", Grade.WARNING, "2.50 s"),
    ("frame stale", scanner(last_frame_at=utc_text(NOW - timedelta(seconds=4))), "frame_age", Grade.PROBLEM, "4.00 s"),
    ("scanner hung", replace(HEALTHY, scanner_updated_at=NOW - timedelta(seconds=40), scanner=report(last_frame_at=utc_text(NOW - timedelta(seconds=40.03)))), "frame_age", Grade.PROBLEM, "40.03 s"),
    ("no frame yet", scanner(last_frame_at=None), "frame_age", Grade.PROBLEM, "none yet"),
    ("decode fast", scanner(decode_ms_p50=4.0), "decode_time", Grade.OK, "4.0 ms"),
    ("decode slow", scanner(decode_ms_p50=60.0), "decode_time", Grade.WARNING, "60.0 ms"),
    ("decode far too slow", scanner(decode_ms_p50=200.0), "decode_time", Grade.PROBLEM, "200.0 ms"),
    ("decode no data", scanner(decode_ms_p50=None), "decode_time", Grade.OK, "no frames"),
    ("scanner restarted", scanner(started_at=utc_text(NOW - timedelta(seconds=31))), "scanner_uptime", Grade.WARNING, "30 s"),
    ("clock ntp", scanner(clock_quality="ntp_synced"), "clock", Grade.OK, "NTP"),
    ("clock anchored", scanner(clock_quality="server_anchored"), "clock", Grade.WARNING, "cloud"),
    ("clock unconfirmed", scanner(clock_quality="unsynced"), "clock", Grade.WARNING, "not synchronised"),
    ("clock never set", replace(HEALTHY, now=datetime(1970, 1, 1, 0, 5, tzinfo=UTC), scanner=report(clock_quality="unsynced")), "clock", Grade.PROBLEM, "not set"),
    ("clock from the system", replace(HEALTHY, scanner=None, scanner_updated_at=None, sys=SysFacts(clock_synced=False)), "clock", Grade.WARNING, "not synchronised"),
    ("disk plenty", HEALTHY, "disk", Grade.OK, "20.0 GiB of 32.0 GiB"),
    ("disk low", replace(HEALTHY, disk_free_bytes=600 * 2**20), "disk", Grade.WARNING, "600.0 MiB"),
    ("disk low share", replace(HEALTHY, disk_free_bytes=5 * 2**30, disk_total_bytes=200 * 2**30), "disk", Grade.WARNING, "5.0 GiB"),
    ("disk full", replace(HEALTHY, disk_free_bytes=100 * 2**20), "disk", Grade.PROBLEM, "100.0 MiB"),
    ("disk unknown", replace(HEALTHY, disk_free_bytes=None), "disk", Grade.WARNING, "unknown"),
    ("cool", system(cpu_temp_c=55.0), "cpu_temp", Grade.OK, "55.0 °C"),
    ("warm", system(cpu_temp_c=72.5), "cpu_temp", Grade.WARNING, "72.5 °C"),
    ("hot", system(cpu_temp_c=83.0), "cpu_temp", Grade.PROBLEM, "83.0 °C"),
    ("under-voltage now", system(throttled=0x50005), "throttling", Grade.PROBLEM, "under-voltage now"),
    ("throttled now", system(throttled=0x4), "throttling", Grade.WARNING, "throttled now"),
    ("soft limit now", system(throttled=0x8), "throttling", Grade.WARNING, "throttled now"),
    ("under-voltage since boot", system(throttled=0x50000), "throttling", Grade.WARNING, "since boot"),
    ("throttled since boot", system(throttled=0x20000), "throttling", Grade.WARNING, "throttled since boot"),
    ("never throttled", system(throttled=0), "throttling", Grade.OK, "no under-voltage"),
    ("just booted", system(uptime_s=90.0), "uptime", Grade.WARNING, "90 s"),
    ("up for days", system(uptime_s=5 * 86400.0), "uptime", Grade.OK, "5.0 days"),
    ("sync never ran", replace(HEALTHY, sync={}), "sync", Grade.WARNING, "never ran"),
    ("sync offline", replace(HEALTHY, sync={"state": "offline", "online": False}), "sync", Grade.WARNING, "offline"),
    ("sync stopped for good", replace(HEALTHY, sync={"state": "stopped", "online": False, "last_error": "revoked"}), "sync", Grade.PROBLEM, "stopped"),
    ("sync agent reported 6 min ago", replace(HEALTHY, sync_age_s=360.0), "sync", Grade.OK, "online"),
    ("sync agent silent 7 min", replace(HEALTHY, sync_age_s=420.0), "sync", Grade.WARNING, "sync agent not reporting for 7 min"),
    ("sync agent silent 1 h", replace(HEALTHY, sync_age_s=3600.0), "sync", Grade.PROBLEM, "sync agent not reporting for 60 min"),
    ("sync agent stopped for good and silent", replace(HEALTHY, sync={"state": "stopped", "online": False, "last_error": "revoked"}, sync_age_s=9999.0), "sync", Grade.PROBLEM, "stopped"),
    ("backlog 2 h", replace(HEALTHY, oldest_pending_age_s=7200.0), "sync", Grade.WARNING, "2.0 h"),
    ("backlog 2 days", replace(HEALTHY, oldest_pending_age_s=2 * 86400.0), "sync", Grade.PROBLEM, "2.0 days"),
    ("replica fresh", HEALTHY, "replica", Grade.OK, "5 min"),
    ("replica aging", replace(HEALTHY, replica_age_s=40 * 3600.0), "replica", Grade.WARNING, "40.0 h"),
    ("replica stale", replace(HEALTHY, replica_age_s=80 * 3600.0), "replica", Grade.PROBLEM, "3.3 days"),
    ("replica never", replace(HEALTHY, replica_age_s=None), "replica", Grade.PROBLEM, "never"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("inputs", "name", "grade", "figure"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_grading_table(inputs: HealthInputs, name: str, grade: Grade, figure: str):
    checks = {c.name: c for c in grade_checks(inputs)}
    check = checks[name]
    assert check.grade == grade, check
    assert figure in check.figure, check
    if grade != Grade.OK:
        assert check.hint or name in ("camera_fps", "frame_age", "decode_time")
    assert overall(list(checks.values())) == max(
        (c.grade for c in checks.values()), key=[Grade.OK, Grade.WARNING, Grade.PROBLEM].index
    )


def test_a_dead_sync_agent_is_never_shown_online():
    """The agent wrote "online" and died: after 3 rounds plus its longest retry wait its word is
    no longer believed, in the grade, the view (and so the JSON) alike."""
    from kiosk.web.sources import DoorFacts
    from kiosk.web.views import sync_view

    limit = sync_silent_after(30.0, 300.0)
    assert limit == 390.0
    assert not sync_silent(None, limit) and not sync_silent(390.0, limit)
    assert sync_silent(391.0, limit)
    zone = ZoneInfo("Europe/Berlin")
    for age_s, online, grade in ((60.0, True, Grade.OK), (600.0, False, Grade.WARNING),
                                 (7200.0, False, Grade.PROBLEM)):  # fmt: skip
        status = {"state": "running", "online": True,
                  "updated_at": utc_text(NOW - timedelta(seconds=age_s))}  # fmt: skip
        view = sync_view(DoorFacts(sync=status), now=NOW, zone=zone, silent_after_s=limit)
        assert view["online"] is online, age_s
        assert view["reported"]["age_s"] == age_s
        inputs = replace(HEALTHY, sync=status, sync_age_s=age_s, sync_silent_after_s=limit)
        assert graded(inputs)["sync"][0] == grade, age_s
        if not online:
            assert view["state"] == "not_reporting"
            assert view["state_words"].startswith("not reporting since ")
            assert "is the sync service running?" in view["state_words"]


def test_figures_the_system_does_not_report_give_no_check():
    names = {c.name for c in grade_checks(replace(HEALTHY, sys=SysFacts(clock_synced=True)))}
    assert not names & {"cpu_temp", "throttling", "uptime"}


def test_a_report_with_garbage_values_does_not_raise():
    garbage = report(fps=None, decode_ms_p50="x", started_at=17, last_frame_at="yesterday")
    checks = grade_checks(replace(HEALTHY, scanner=garbage))
    assert {c.name: c.grade for c in checks}["frame_age"] == Grade.PROBLEM


# -- /sys and /proc from a fake root -----------------------------------------------------------------


def fake_root(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_read_sys_facts_on_a_pi(tmp_path: Path):
    root = fake_root(
        tmp_path,
        {
            "sys/class/thermal/thermal_zone0/temp": "61834\n",
            "sys/devices/platform/soc/soc:firmware/get_throttled": "50005\n",
            "proc/uptime": "12345.67 40000.00\n",
            "run/systemd/timesync/synchronized": "",
        },
    )
    facts = read_sys_facts(root)
    assert facts == SysFacts(
        cpu_temp_c=61.834, throttled=0x50005, uptime_s=12345.67, clock_synced=True
    )
    checks = graded(replace(HEALTHY, sys=facts))
    assert checks["cpu_temp"] == (Grade.OK, "61.8 °C")
    assert checks["throttling"][0] == Grade.PROBLEM


def test_read_sys_facts_on_a_pi_5_layout_and_0x_prefix(tmp_path: Path):
    root = fake_root(
        tmp_path,
        {
            "sys/class/thermal/thermal_zone0/temp": "81000",
            "sys/devices/platform/axi/axi:firmware/get_throttled": "0x20000",
        },
    )
    facts = read_sys_facts(root, kernel_synced=lambda: False)
    assert (facts.cpu_temp_c, facts.throttled, facts.uptime_s, facts.clock_synced) == (
        81.0,
        0x20000,
        None,
        False,
    )
    checks = graded(replace(HEALTHY, sys=facts))
    assert checks["cpu_temp"][0] == Grade.PROBLEM
    assert checks["throttling"] == (Grade.WARNING, "throttled since boot (0x20000)")


def test_read_sys_facts_where_nothing_is_reported(tmp_path: Path):
    root = fake_root(tmp_path, {"sys/class/thermal/thermal_zone0/temp": "not a number"})
    assert read_sys_facts(root) == SysFacts(clock_synced=False)
