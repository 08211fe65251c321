"""`kiosk bench --fleet`: the generator's figures hang together and every check-in is stored once.

A small, fast run through the real machinery: `kiosk cloud serve` in a child process (on SQLite
with one process, on a scratch PostgreSQL database with two workers), a handful of simulated doors
speaking the protocol through the device's own client, with a compressed interval and a high
check-in rate so a few seconds hold several rounds and uploads. It checks the measuring and the
exactly-once count, never the speed: figures come from the bench itself, never from timed tests.
"""

from __future__ import annotations

import io
import json

import pytest

from devtools.bench import fleet
from devtools.bench.fleet import StepResult, collect_fleet, fleet_settings, percentile, summary
from kiosk.cli import main
from pg import pg_server_fixture  # noqa: F401

BACKENDS = ("sqlite", "postgres")


@pytest.fixture(scope="module")
def figures(pg_server):
    settings = fleet_settings(
        interval_s=0.5,
        wake_poll_s=0.05,
        checkins_per_min=120.0,
        start_doors=3,
        max_doors=6,
        max_steps=2,
        gym_members=20,
    )
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
    # The steps are the search's: it doubled from 3 to the cap of 6 doors (or halved).
    doors = [s["doors"] for s in b["steps"]]
    assert doors[0] == 3 and len(doors) <= 2 and b["doors_enrolled"] == max(doors)
    for step in b["steps"]:
        assert step["requests"] > 0 and step["rounds"] > 0
        assert set(step["by_path_p99_ms"]) <= {
            "/v1/checkins",
            "/v1/heartbeat",
            "/v1/replica/changes",
        }
        assert "/v1/heartbeat" in step["by_path_p99_ms"]
        assert step["p50_ms"] <= step["p99_ms"] <= step["max_ms"]


def test_the_run_says_how_it_was_measured(figures):
    assert figures["postgres"] == "measured"
    assert figures["target_p99_ms"] == 250.0
    assert figures["interval_s"] == 0.5 and figures["doors_per_gym"] == fleet.DOORS_PER_GYM
    assert "scratch database" in figures["backends"]["postgres"]["database"]
    json.dumps(figures)  # JSON-ready as printed by --json
    out = io.StringIO()
    fleet.report_fleet(figures, out)
    assert "SQLite, 1 worker process(es)" in out.getvalue()
    assert "PostgreSQL, 2 worker process(es)" in out.getvalue()
    assert "exactly once: yes" in out.getvalue()


# -- the search and the summary, pure ------------------------------------------------------------


def step(doors: int, served: bool, p99: float = 10.0, errors: int = 0) -> StepResult:
    return StepResult(
        doors=doors, served=served, reason="served" if served else "too slow", requests=10,
        requests_per_s=1.0, rounds=5, p50_ms=1.0, p99_ms=p99, max_ms=p99, by_path_p99_ms={},
        errors=errors, error_samples=[], lag_p99_ms=1.0, checkins=1, seconds=1.0,
    )  # fmt: skip


class CannedFleet:
    """Serves up to ``capacity`` doors; records the door counts asked for."""

    def __init__(self, capacity: int, **settings) -> None:
        self.capacity = capacity
        self.settings = fleet_settings(**settings)
        self.asked: list[int] = []

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
