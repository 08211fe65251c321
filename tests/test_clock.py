"""Clocks: the simulated clock moves only when told; clock quality is cached and re-read."""

from datetime import UTC, datetime, timedelta

from kiosk.core import policy
from kiosk.core.clock import (
    EARLIEST_TRUSTED_TIME,
    PLAUSIBLE_SERVER_TIMES,
    SimClock,
    SystemClock,
    plausible_server_time,
)
from kiosk.core.ids import boot_id, uuid7
from kiosk.core.model import ClockQuality


def test_sim_clock_moves_wall_and_monotonic_together():
    start = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
    clock = SimClock(start)
    m0 = clock.monotonic_ns()
    clock.sleep(1.5)
    assert clock.wall() == start + timedelta(seconds=1.5)
    assert clock.monotonic_ns() - m0 == 1_500_000_000


def test_system_clock_quality_follows_the_kernel_and_is_cached():
    answers = iter([False, True])
    clock = SystemClock(synced=lambda: next(answers), quality_every_s=0.0)
    assert clock.quality() is ClockQuality.UNSYNCED
    assert clock.quality() is ClockQuality.NTP_SYNCED
    cached = SystemClock(synced=lambda: True, quality_every_s=3600)
    assert cached.quality() is ClockQuality.NTP_SYNCED
    cached._synced = lambda: False
    assert cached.quality() is ClockQuality.NTP_SYNCED  # not re-read within the hour


def test_uuid7_ids_are_version_7_and_increase_within_a_millisecond(monkeypatch):
    import kiosk.core.ids

    # Keep the module's "last id" state private to this test: later ids use the real clock.
    monkeypatch.setattr(kiosk.core.ids, "_last_ms", 0)
    monkeypatch.setattr(kiosk.core.ids, "_last_rand", 0)
    ids = [uuid7(now_ms=1_800_000_000_000) for _ in range(100)]
    assert all(u.version == 7 and u.variant == "specified in RFC 4122" for u in ids)
    assert ids == sorted(ids) and len(set(ids)) == 100
    assert ids[0].int >> 80 == 1_800_000_000_000


def test_boot_id_falls_back_without_proc(tmp_path):
    assert boot_id(tmp_path / "missing").startswith("nonlinux-")
    (tmp_path / "boot_id").write_text("abc\n")
    assert boot_id(tmp_path / "boot_id") == "abc"


def test_uuid7_ids_are_unique_across_threads():
    import threading

    ids: list = []

    def make() -> None:
        ids.extend(uuid7() for _ in range(5_000))

    threads = [threading.Thread(target=make) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == len(ids) == 20_000


def test_one_cut_off_for_a_clock_never_set_and_a_cloud_time_too_early():
    # The policy's "clock never set" and the agent's "implausible cloud time" are the same date.
    assert datetime(2026, 1, 1, tzinfo=UTC) == EARLIEST_TRUSTED_TIME
    assert policy.EARLIEST_TRUSTED_TIME is EARLIEST_TRUSTED_TIME
    assert PLAUSIBLE_SERVER_TIMES[0] is EARLIEST_TRUSTED_TIME
    assert not plausible_server_time(EARLIEST_TRUSTED_TIME - timedelta(microseconds=1))
    assert plausible_server_time(EARLIEST_TRUSTED_TIME)
    assert not plausible_server_time(PLAUSIBLE_SERVER_TIMES[1])
