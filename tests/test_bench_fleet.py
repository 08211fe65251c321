"""`kiosk bench --fleet`: the generator's figures hang together and every check-in is stored once.

A small, fast run through the real machinery: `kiosk cloud serve` in a child process (on SQLite
with one process, on a scratch PostgreSQL database with two workers), a handful of simulated doors
speaking the protocol through the device's own client, with a compressed interval and a high
check-in rate so a few seconds hold several rounds and uploads; each door starts with a retained
history seeded in the cloud, each carries two doors' load (the interval halved), and two
saturation steps follow the search. It checks the measuring and the exactly-once count, never the
speed: figures come from the bench itself, never from timed tests. The doors' backoff after a 503
is checked against a fake cloud (an httpx.MockTransport behind the door's own transport).
"""

from __future__ import annotations

import io
import json
import ssl
import time
import uuid

import httpx
import pytest

from cloud import db, importer
from devtools.bench import fleet
from devtools.bench.fleet import (
    StepResult,
    collect_fleet,
    fleet_settings,
    percentile,
    scale_interval,
    summary,
)
from devtools.bench.sync import BenchError, members_csv
from kiosk.cli import main
from kiosk.sync.client import CloudClient
from pg import cloud_db_url_fixture, cloud_fixture, pg_server_fixture  # noqa: F401

BACKENDS = ("sqlite", "postgres")
RETAINED = 25


@pytest.fixture(scope="module")
def figures(pg_server):
    # At a 1 s interval, then halved: rounds every 0.5 s, 120 check-ins a minute, each door two
    # doors' load, 1 s of warm-up and 1 s measured.
    base = fleet_settings(
        interval_s=1.0,
        wake_poll_s=0.1,
        checkins_per_min=60.0,
        start_doors=3,
        max_doors=6,
        max_steps=2,
        gym_members=20,
        retained_rows=RETAINED,
        saturation=True,
    )
    settings = scale_interval(base, 0.5)
    return collect_fleet(postgres_url=pg_server.admin_url, workers=2, settings=settings)


@pytest.mark.parametrize("backend", BACKENDS)
def test_each_backend_reports_doors_p99_errors_and_exactly_once(figures, backend):
    b = figures["backends"][backend]
    assert {"doors", "p99_ms", "errors", "exactly_once", "steps", "workers"} <= set(b)
    assert isinstance(b["doors"], int) and isinstance(b["errors"], int)
    assert b["workers"] == (1 if backend == "sqlite" else 2)
    assert b["exactly_once"] is True
    v = b["verification"]
    assert v["checkins_made"] > 0 and v["checkins_stored"] == v["checkins_made"]
    assert v["missing_or_misplaced"] == 0 and v["pending_after_drain"] == 0
    assert v["rejected"] == 0 and v["resnapshots"] == 0
    assert v["class_uses_in_cloud"] == v["class_uses"]
    # The steps are the search's: it doubled from 3 to the cap of 6 doors (or halved); the
    # saturation steps follow it.
    doors = [s["doors"] for s in b["steps"]]
    assert doors[0] == 3 and len(doors) <= 2
    past = [s["doors"] for s in b["saturation_steps"]]
    assert b["doors_enrolled"] == max(doors + past)
    for step in b["steps"]:
        assert step["requests"] > 0 and step["rounds"] > 0
        assert set(step["by_path_p99_ms"]) <= {
            "/v1/checkins",
            "/v1/heartbeat",
            "/v1/replica/changes",
        }
        assert "/v1/heartbeat" in step["by_path_p99_ms"]
        assert step["p50_ms"] <= step["p99_ms"] <= step["max_ms"]
    # Check-ins acknowledged in the measured windows: some, and never more than were made.
    every = b["steps"] + b["saturation_steps"]
    acknowledged = [s["settled_per_s"] * figures["window_s"] for s in every]
    assert min(acknowledged) >= 0 and sum(acknowledged) > 0
    rounding = 0.05 * figures["window_s"] * len(every)  # each rate is rounded to 0.1 a second
    assert sum(acknowledged) <= v["checkins_made"] + rounding


@pytest.mark.parametrize("backend", BACKENDS)
def test_retained_history_is_seeded_not_counted_as_made_and_never_asked_again(figures, backend):
    b = figures["backends"][backend]
    v = b["verification"]
    assert b["retained_rows"] == RETAINED and b["seed_s"] >= 0
    # Every door enrolled got its history; what the doors made is counted apart from it, and
    # every door holds seqs 1..its last once.
    assert v["checkins_seeded"] == RETAINED * b["doors_enrolled"]
    assert v["checkins_stored"] == v["checkins_made"] > 0
    assert v["doors_miscounted"] == 0 and v["exactly_once"] is True
    # The heartbeats name the whole retained range: the cloud found nothing missing in it.
    assert v["resend_requests"] == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_each_door_counts_as_the_doors_whose_load_it_carries(figures, backend):
    b = figures["backends"][backend]
    assert figures["door_load"] == 2.0 and figures["reference_interval_s"] == 1.0
    assert b["interval_s"] == 0.5
    assert b["door_equivalents"] == 2 * b["doors"]
    for step in b["steps"] + b["saturation_steps"]:
        assert step["door_equivalents"] == 2 * step["doors"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_saturation_steps_follow_the_capacity_found(figures, backend):
    b = figures["backends"][backend]
    cap = b["doors"]
    if cap == 0:  # nothing served on a busy machine: no capacity to go past
        assert b["saturation"] == [] and b["saturation_verdict"]["verdict"] == "not measured"
        return
    rows = b["saturation"]
    assert [r["load"] for r in rows] == [1.0, 1.5, 2.0]
    assert [r["doors"] for r in rows] == [cap, max(cap + 1, round(cap * 1.5)), 2 * cap]
    for row in rows:
        assert {"good_per_s", "shed_503", "timeouts", "other_errors", "p99_ms"} <= set(row)
        assert row["door_equivalents"] == 2 * row["doors"]
    assert b["saturation_verdict"]["verdict"] in ("flat", "falls")
    assert [s["doors"] for s in b["saturation_steps"]] == [r["doors"] for r in rows[1:]]


def test_the_run_says_how_it_was_measured(figures):
    assert figures["postgres"] == "measured"
    assert figures["target_p99_ms"] == 250.0
    assert figures["interval_s"] == 0.5 and figures["doors_per_gym"] == fleet.DOORS_PER_GYM
    assert figures["warmup_s"] == 1.0 and figures["window_s"] == 1.0
    assert figures["retained_rows"] == RETAINED
    assert "scratch database" in figures["backends"]["postgres"]["database"]
    json.dumps(figures)  # JSON-ready as printed by --json
    out = io.StringIO()
    fleet.report_fleet(figures, out)
    assert "SQLite, 1 worker process(es)" in out.getvalue()
    assert "PostgreSQL, 2 worker process(es)" in out.getvalue()
    assert "exactly once: yes" in out.getvalue()
    assert "each simulated door carries the load of 2 doors" in out.getvalue()
    assert f"each door starts with {RETAINED} check-ins already in the cloud" in out.getvalue()
    assert "door equivalents at 1 s" in out.getvalue()
    if figures["backends"]["sqlite"]["doors"]:
        assert "SQLite past its capacity:" in out.getvalue()


# -- the search and the summary, pure ------------------------------------------------------------


def step(doors: int, served: bool, p99: float = 10.0, errors: int = 0) -> StepResult:
    return StepResult(
        doors=doors, served=served, reason="served" if served else "too slow", requests=10,
        requests_per_s=1.0, rounds=5, p50_ms=1.0, p99_ms=p99, max_ms=p99, by_path_p99_ms={},
        errors=errors, error_samples=[], lag_p99_ms=1.0, checkins=1, seconds=1.0,
    )  # fmt: skip


class CannedFleet:
    """Serves up to ``capacity`` doors; records the door counts asked for."""

    def __init__(self, capacity: int, short: str | None = None, **settings) -> None:
        self.capacity = capacity
        self.settings = fleet_settings(**settings)
        self.asked: list[int] = []
        self.short = short
        self.saturation_skipped: str | None = None

    def disk_shortfall(self, doors: int) -> str | None:
        return self.short

    def run_step(self, doors: int) -> StepResult:
        self.asked.append(doors)
        return step(doors, doors <= self.capacity)


def test_the_search_doubles_then_bisects_within_its_bounds():
    canned = CannedFleet(700, start_doors=50, max_steps=9)
    steps = fleet.search(canned, lambda _m: None, "test")  # type: ignore[arg-type]
    assert canned.asked[:6] == [50, 100, 200, 400, 800, 600]
    assert len(steps) <= 9
    assert summary(steps)["doors"] == max(d for d in canned.asked if d <= 700) >= 600
    capped = CannedFleet(10**6, start_doors=50, max_doors=300, max_steps=9)
    fleet.search(capped, lambda _m: None, "test")  # type: ignore[arg-type]
    assert capped.asked == [50, 100, 200, 300]
    none = CannedFleet(0, start_doors=8, max_steps=3)
    steps = fleet.search(none, lambda _m: None, "test")  # type: ignore[arg-type]
    assert none.asked == [8, 4, 2] and summary(steps)["doors"] == 0


def test_the_summary_is_the_largest_served_step_and_the_first_that_was_not():
    steps = [step(50, True, 20.0), step(100, True, 80.0), step(200, False, 400.0, errors=3)]
    assert summary(steps) == {
        "doors": 100,
        "p99_ms": 80.0,
        "errors": 0,
        "first_unserved": {"doors": 200, "p99_ms": 400.0, "errors": 3, "reason": "too slow"},
    }


def test_percentiles_by_nearest_rank():
    assert percentile([], 0.99) is None
    assert percentile([5.0], 0.99) == 5.0
    values = [float(n) for n in range(1, 101)]
    assert percentile(values, 0.5) == 50.0 and percentile(values, 0.99) == 99.0


# -- the command line ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--fleet", "--sync"], "choose one of --sync, --web, --fleet and --console"),
        (["--workers", "2"], "--workers only applies with --fleet"),
        (["--fleet", "--members", "100"], "--members only apply with --sync"),
    ],
)
def test_bench_options_that_do_not_go_together_are_refused(argv, words, capsys):
    assert main(["bench", *argv]) == 2
    assert words in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [["--retained-rows", "10"], ["--interval", "1"], ["--max-doors", "90"], ["--saturation"]],
)
def test_the_fleet_options_only_go_with_fleet(argv, capsys):
    assert main(["bench", *argv]) == 2
    assert "only apply with --fleet" in capsys.readouterr().err


@pytest.mark.parametrize("interval", ["0", "-1", "nan", "inf", "soon"])
def test_an_interval_that_is_no_usable_time_is_refused(interval, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["bench", "--fleet", "--interval", interval])
    assert exited.value.code == 2
    assert "--interval" in capsys.readouterr().err


# -- a shorter interval: fewer doors, each carrying more -----------------------------------------


def test_a_shorter_interval_scales_rate_windows_and_door_equivalents():
    base = fleet_settings()
    assert base.interval_s == 30.0 and base.door_load == 1.0
    s = scale_interval(base, 1.0)
    assert s.interval_s == 1.0 and s.door_load == 30.0
    assert s.checkins_per_min == 30 * fleet.CHECKINS_PER_MIN
    assert s.wake_poll_s == pytest.approx(base.wake_poll_s / 30)
    # The windows last as many seconds as at the default interval.
    assert s.interval_s * s.warmup_intervals == pytest.approx(30.0)
    assert s.interval_s * s.window_intervals == pytest.approx(30.0)
    assert s.request_timeout_s == base.request_timeout_s
    assert fleet.door_equivalents(90, s) == 2700
    assert fleet.door_equivalents(90, base) == 90
    assert scale_interval(base, 30.0) == base
    with pytest.raises(ValueError, match="positive"):
        scale_interval(base, 0.0)


def test_retained_history_that_cannot_fit_on_disk_is_refused_before_the_run(tmp_path):
    fleet.check_disk(fleet_settings(retained_rows=0, max_doors=10**9), str(tmp_path))
    fleet.check_disk(fleet_settings(retained_rows=10, max_doors=10), str(tmp_path))
    huge = fleet_settings(retained_rows=250_000, max_doors=10**7, saturation=True)
    with pytest.raises(BenchError, match="--max-doors") as refused:
        fleet.check_disk(huge, str(tmp_path))
    assert "10,000,000 doors" in str(refused.value)


# -- the seeded history in the cloud ---------------------------------------------------------------


def test_seeded_history_is_held_whole_and_the_journal_continues_after_it(cloud):
    now = cloud.clock()
    with cloud.database.write() as tx:
        importer.import_members(tx, cloud.org_id, members_csv(0, 20, now), now)
    device = cloud.enrol()
    until = int(now.timestamp() * 1e6)
    since = until - 90 * 86400 * 10**6

    def seed(tx):
        return db.seed_journal_history(
            tx, device.id, cloud.org_id, cloud.gym_id, "front", 1, 500, since, until
        )

    assert cloud.database.transact(seed) == 500
    rows = cloud.database.transact(
        lambda tx: tx.all(
            "SELECT id, seq, decision, member_id, membership_id, occurred_at, time_source"
            " FROM checkins WHERE device_id = ? ORDER BY seq",
            (device.id,),
        ),
        write=False,
    )
    assert [r["seq"] for r in rows] == list(range(1, 501))
    assert len({r["id"] for r in rows}) == 500
    assert all(str(uuid.UUID(r["id"])) == r["id"] for r in rows)  # as a door's ids
    # Spread over the 90 days in seq order, as the stored time text.
    times = [r["occurred_at"] for r in rows]
    assert times == sorted(times) and len(set(times)) == 500
    assert times[0] == "2026-01-31T12:00:00.000000Z" and times[-1] <= "2026-05-01T12:00:00.000000Z"
    assert {r["time_source"] for r in rows} == {"anchored"}
    # Members of the organisation, refusals among the grants.
    assert {r["member_id"] for r in rows} <= {f"m{i:07d}" for i in range(20)}
    assert len({r["member_id"] for r in rows}) == 20
    assert sum(r["decision"] == "denied" for r in rows) == 25  # one in 20
    # The heartbeat names the whole range: nothing is missing in it, and after it the cloud
    # asks for what it does not hold yet.
    beat = {"retained_from_seq": 1, "synced_through_seq": 500, "last_seq": 500}
    assert cloud.heartbeat(device, **beat)["resend_from_seq"] is None
    beat = {"retained_from_seq": 1, "synced_through_seq": 503, "last_seq": 503}
    assert cloud.heartbeat(device, **beat)["resend_from_seq"] == 501
    # Seeded twice: refused, not doubled.
    with pytest.raises(db.Conflict):
        cloud.database.transact(seed)


# -- a door facing a cloud that sheds load -----------------------------------------------------------


class FakeCloud:
    """Answers every request with ``status`` (and ``Retry-After``), or raises ``error``;
    records the paths asked."""

    def __init__(self, status: int = 503, retry_after: str | None = "7", error=None) -> None:
        self.status = status
        self.retry_after = retry_after
        self.error = error
        self.paths: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        if self.error is not None:
            raise self.error
        headers = {"Content-Type": "application/json"}
        if self.retry_after:
            headers["Retry-After"] = self.retry_after
        # A stream, as a transport hands it on: its end is when the door's transport records it.
        body = httpx.ByteStream(json.dumps({"error": "unavailable"}).encode())
        return httpx.Response(self.status, headers=headers, stream=body)


def door_facing(fake: FakeCloud, **settings) -> tuple[fleet.Door, list[fleet.Exchange]]:
    sink: list[fleet.Exchange] = []
    transport = fleet.DoorTransport(sink, ssl.create_default_context(), httpx.MockTransport(fake))
    clock = fleet._DoorClock("fleet-test")
    client = CloudClient(
        "https://cloud.test", "token", transport=transport, clock=clock, software_version="0.1.0"
    )
    gym = fleet.Gym("org", "gym", 20)
    door = fleet.Door(
        0, gym, "dev", client, transport, clock.boot_id, fleet_settings(**settings),
        fleet.random.Random(1),
    )  # fmt: skip
    return door, sink


def test_a_door_answered_503_waits_at_least_retry_after_and_counts_it_as_shed():
    fake = FakeCloud(503, "7")
    door, sink = door_facing(fake, checkins_per_min=60.0)
    door.draw_next_checkin(time.monotonic() - 60)
    door.journal_until(time.monotonic())
    made = len(door.pending)
    assert made > 0
    before = time.monotonic()
    assert door.round() is False
    ended = time.monotonic()
    # As the agent: the 503 on the upload does not stop the pull and the heartbeat.
    assert fake.paths == ["/v1/checkins", "/v1/replica/changes", "/v1/heartbeat"]
    assert door.failures == 1 and door.retry_after == 7.0 and len(door.errors) == 1
    assert len(door.pending) == made  # kept for the next round
    # Never earlier than Retry-After, and a check-in does not cut the backoff short.
    door.next_checkin_at = ended - 1.0
    assert door.backoff_until >= before + 7.0
    assert door.due_after(ended) == door.backoff_until
    assert door.backoff_until <= ended + 7.0  # first failure: jitter up to 1 s, under the 7 s
    sorted_out = fleet.outcomes(sink)
    assert (len(sorted_out.good_ms), sorted_out.shed, sorted_out.timeouts) == (0, 3, 0)
    assert sorted_out.other == 0
    # Again: the jitter's cap doubles, the Retry-After still holds.
    assert door.round() is False
    assert door.failures == 2 and door.backoff_s() >= 7.0


def test_a_door_whose_request_times_out_stops_its_round_and_backs_off():
    fake = FakeCloud(error=httpx.ReadTimeout("no answer"))
    door, sink = door_facing(fake, checkins_per_min=60.0, backoff_max_s=4.0)
    door.draw_next_checkin(time.monotonic() - 60)
    door.journal_until(time.monotonic())
    assert door.round() is False
    assert fake.paths == ["/v1/checkins"]  # no answer at all: the later steps would only wait
    assert door.retry_after is None
    sorted_out = fleet.outcomes(sink)
    assert (sorted_out.shed, sorted_out.timeouts, sorted_out.other) == (0, 1, 0)
    door.failures = 10
    assert all(0.0 <= door.backoff_s() <= 4.0 for _ in range(50))  # capped at backoff_max_s


def test_outcomes_sort_answers_from_failures():
    ex = [
        fleet.Exchange(0.0, 5.0, "/v1/heartbeat", 200),
        fleet.Exchange(0.0, 1.0, "/v1/replica/changes", 304),
        fleet.Exchange(0.0, 2.0, "/v1/checkins", 503),
        fleet.Exchange(0.0, 10_000.0, "/v1/checkins", None, fleet.TIMEOUT),
        fleet.Exchange(0.0, 3.0, "/v1/checkins", None, fleet.TRANSPORT),
        fleet.Exchange(0.0, 3.0, "/v1/checkins", 500),
    ]
    sorted_out = fleet.outcomes(ex)
    assert sorted_out.good_ms == [5.0, 1.0]
    assert (sorted_out.shed, sorted_out.timeouts, sorted_out.other) == (1, 1, 2)


# -- the saturation steps and their verdict, pure --------------------------------------------------


def loaded(
    doors: int, good: float, *, settled: float | None = None, shed: int = 0, timeouts: int = 0
) -> StepResult:
    """A step past the knee: ``good`` answers a second carrying ``settled`` check-ins a second
    (by default ten a request)."""
    r = step(doors, served=False)
    r.good_per_s, r.good_p99_ms, r.shed, r.timeouts, r.door_equivalents = (
        good,
        90.0,
        shed,
        timeouts,
        doors,
    )
    r.settled_per_s = 10 * good if settled is None else settled
    return r


def test_saturation_runs_past_the_capacity_found():
    canned = CannedFleet(100)
    assert fleet.saturate(canned, 100, lambda _m: None, "test")  # type: ignore[arg-type]
    assert canned.asked == [150, 200]
    canned = CannedFleet(1)
    fleet.saturate(canned, 1, lambda _m: None, "test")  # type: ignore[arg-type]
    assert canned.asked == [2, 2]  # always past the capacity
    none = CannedFleet(0)
    assert fleet.saturate(none, 0, lambda _m: None, "test") == []  # type: ignore[arg-type]
    assert none.asked == []
    # Doors whose history would not fit on the disk are not enrolled: the steps are skipped.
    full = CannedFleet(100, short="needs about 80 GB")
    assert fleet.saturate(full, 100, lambda _m: None, "test") == []  # type: ignore[arg-type]
    assert full.asked == [] and full.saturation_skipped == "needs about 80 GB"
    rows, judged = fleet.saturation_report(step(100, True), [], full.saturation_skipped)
    assert rows == [] and judged == {"verdict": "not measured", "reason": "needs about 80 GB"}


def test_saturation_is_flat_when_twice_the_load_keeps_its_check_ins_without_timeouts():
    cap = loaded(100, 200.0)
    rows, judged = fleet.saturation_report(
        cap, [loaded(150, 205.0, shed=40), loaded(200, 190.0, shed=90)]
    )
    assert judged["verdict"] == "flat" and "acknowledges 95% of its check-ins" in judged["reason"]
    assert [r["load"] for r in rows] == [1.0, 1.5, 2.0]
    assert rows[2] == {
        "load": 2.0, "doors": 200, "door_equivalents": 200, "settled_per_s": 1900.0,
        "good_per_s": 190.0, "shed_503": 90, "timeouts": 0, "other_errors": 0, "p99_ms": 90.0,
        "requests_per_s": 1.0,
    }  # fmt: skip
    # Late doors send bigger batches: fewer good answers carrying as many check-ins is flat.
    _, judged = fleet.saturation_report(
        cap, [loaded(150, 180.0, settled=2000.0), loaded(200, 150.0, settled=1950.0)]
    )
    assert judged["verdict"] == "flat"
    assert (
        "acknowledges 98% of its check-ins a second in 75% of its good requests"
        in (judged["reason"])
    )
    # Fewer check-ins acknowledged, or any timeout, and it falls.
    _, judged = fleet.saturation_report(cap, [loaded(150, 200.0), loaded(200, 170.0)])
    assert judged["verdict"] == "falls" and "acknowledges 85%" in judged["reason"]
    _, judged = fleet.saturation_report(cap, [loaded(150, 200.0, timeouts=1), loaded(200, 200.0)])
    assert judged["verdict"] == "falls" and "1 timeouts" in judged["reason"]
    rows, judged = fleet.saturation_report(None, [])
    assert rows == [] and judged["verdict"] == "not measured"
