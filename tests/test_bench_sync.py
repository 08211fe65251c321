"""`kiosk bench --sync`: the figures are all there and hang together, on both cloud backends.

A small run (hundreds of members, a backlog of 150) through the real machinery: the embedded cloud
on SQLite and on a scratch PostgreSQL database, the real agent in its child process. This checks
the measuring, not the speed: figures come from the bench itself, never from timed tests."""

from __future__ import annotations

import copy
import io
import json
import subprocess
import sys
import time
from datetime import UTC, datetime

import httpx
import pytest

from devtools.bench import sync as bench_sync
from devtools.bench.sync import (
    CLASS_PACK_BALANCE,
    DOOR_MEMBERS,
    BenchError,
    StalledCloud,
    backlog_decision,
    checks,
    collect_sync,
    door_during,
    door_members,
    is_class_pack,
    measure_backend,
    members_csv,
    report_sync,
)
from kiosk.cli import main
from kiosk.core.model import Reason, Verdict
from pg import _free_port, pg_server_fixture  # noqa: F401

MEMBERS, BACKLOG, POLLS = 200, 150, 3
BACKENDS = ("sqlite", "postgres")


@pytest.fixture(scope="module")
def figures(pg_server):
    return collect_sync(
        members=MEMBERS,
        backlog=BACKLOG,
        postgres_url=pg_server.admin_url,
        door=False,
        idle_polls=POLLS,
    )


# -- the figures ---------------------------------------------------------------------------------


def test_both_backends_are_measured_and_the_scratch_database_is_gone(figures, pg_server):
    assert set(figures["backends"]) == set(BACKENDS)
    assert figures["postgres"] == "measured"
    assert "scratch database" in figures["backends"]["postgres"]["database"]
    assert figures["batch_size"] == 200 and figures["page_rows"] == 1000  # config defaults
    import psycopg

    with psycopg.connect(pg_server.admin_url, autocommit=True) as conn:
        left = conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s", ("fitflow_bench_%",)
        ).fetchall()
    assert left == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_backlog_drains_completely_once(figures, backend):
    d = figures["backends"][backend]["drain"]
    assert d["backlog"] == d["drained"] == d["cloud_rows"] == BACKLOG
    assert d["pending_after"] == 0 and d["rejected"] == 0
    assert d["uploads"] == 1  # 150 check-ins fit one batch of 200
    # Each class use lowered its pack's balance once, in the cloud.
    assert d["class_uses"] > 0 and d["class_uses_in_cloud"] == d["class_uses"]
    assert 0 < d["upload_wait_s"] <= d["seconds"] <= d["round_seconds"]
    assert d["checkins_per_s"] > 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_snapshot_brings_every_member(figures, backend):
    b = figures["backends"][backend]
    full, tenth = b["snapshot"], b["snapshot_tenth"]
    assert full["members"] == full["replica_members"] == MEMBERS
    assert full["rows"] == 2 * MEMBERS  # a membership each
    assert tenth["members"] == tenth["replica_members"] == MEMBERS // 10
    assert full["pages"] == 1 and full["apply_ms"] > 0 and full["switch_ms"] > 0
    assert full["switch_ms"] <= full["apply_ms"] <= full["seconds"] * 1e3
    assert 0 < full["fetch_s"] <= full["seconds"]
    assert "window_ns" not in full and "door" not in full  # no door in this run
    assert full["resnapshot"]["rows"] == full["rows"]
    # The agent's own process: its peak is above what it held after imports, and far below a
    # figure that would include the bench's cloud.
    assert 20 < full["rss_start_mb"] <= full["rss_peak_mb"] < 200


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_idle_poll_is_one_request_answered_304(figures, backend):
    idle = figures["backends"][backend]["idle"]
    assert idle["polls"] == idle["not_modified"] == POLLS
    assert idle["pull_requests_min"] == idle["pull_requests_max"] == 1
    assert idle["pull_statuses"] == [304]
    assert idle["uploads"] == 0
    assert idle["round_requests_max"] == 2  # the pull and the heartbeat
    assert idle["pull_ms_p50"] > 0 and idle["heartbeat_ms_p50"] > 0


def test_the_report_names_every_figure_and_target(figures):
    out = io.StringIO()
    report_sync(figures, out)
    text = out.getvalue()
    for words in ("SQLite", "PostgreSQL", "backlog drain: 150 check-ins", "snapshot: 200 members",
                  "idle poll: requests per pull, status", "the switch itself (the pointer)",
                  "door with a stalled cloud: not measured"):  # fmt: skip
        assert words in text, words
    verdicts = checks(figures)
    assert len(verdicts) == 3 * len(BACKENDS)
    idle = [ok for words, ok in verdicts if "idle poll" in words]
    assert idle == [True, True]
    assert json.loads(json.dumps(figures)) == figures  # --json prints exactly this


def test_each_check_is_reported_with_its_mark_as_in_kiosk_bench(figures):
    broken = copy.deepcopy(figures)
    broken["backends"]["sqlite"]["drain"]["cloud_rows"] = BACKLOG - 1
    out = io.StringIO()
    report_sync(broken, out)
    lines = out.getvalue().splitlines()
    verdicts = checks(broken)
    assert any(not ok for _, ok in verdicts) and any(ok for _, ok in verdicts)
    for words, ok in verdicts:
        # The same marks, of the same width, as the main bench's report (devtools.bench.run).
        assert f"[{'ok  ' if ok else 'MISS'}] {words}" in lines


def test_checks_miss_what_does_not_add_up(figures):
    broken = copy.deepcopy(figures)
    broken["backends"]["sqlite"]["drain"]["cloud_rows"] = BACKLOG - 1
    broken["backends"]["sqlite"]["idle"]["pull_requests_max"] = 2
    broken["backends"]["sqlite"]["snapshot"]["replica_members"] = MEMBERS - 1
    verdicts = dict(checks(broken))
    missed = [words for words, ok in verdicts.items() if not ok and words.startswith("SQLite")]
    assert len(missed) == 3


def test_without_postgres_the_report_says_how_to_include_it(figures):
    sqlite_only = copy.deepcopy(figures)
    del sqlite_only["backends"]["postgres"]
    sqlite_only["postgres"] = bench_sync.POSTGRES_HINT
    out = io.StringIO()
    report_sync(sqlite_only, out)
    assert "PostgreSQL: not measured: add --postgres postgresql://" in out.getvalue()
    assert len(checks(sqlite_only)) == 3


# -- the door while a snapshot is taken and switched ---------------------------------------------


@pytest.fixture(scope="module")
def with_door(tmp_path_factory):
    """The SQLite figures with a door loop scanning on the device throughout the snapshots."""
    url = f"sqlite:///{tmp_path_factory.mktemp('cloud') / 'cloud.db'}"
    return measure_backend("SQLite", url, "test", members=MEMBERS, backlog=10, idle_polls=1,
                           progress=lambda _msg: None, door=True)  # fmt: skip


def test_a_door_scans_on_the_device_throughout_the_snapshots(with_door):
    door = with_door["snapshot"]["door"]
    assert door["frames"] > 0 and door["decisions_total"] > 0
    assert door["faults_total"] == 0  # not a commit failed, the loop never stalled
    assert len(door["snapshots"]) == 2  # the first snapshot and the one the admin asked for
    assert all(part["seconds"] > 0 for part in door["snapshots"])
    assert door["decisions"] == sum(part["decisions"] for part in door["snapshots"])
    assert door["faults"] == 0 and 0 < door["rss_peak_mb"] < 200
    assert with_door["snapshot"]["replica_members"] == MEMBERS


def test_door_figures_count_what_fell_within_the_snapshots():
    ms = 1_000_000
    seen = {
        "decisions": [[10 * ms, 12 * ms, "denied"], [20 * ms, 21 * ms, "granted"],
                      [50 * ms, 90 * ms, "granted"], [95 * ms, 96 * ms, "granted"]],
        "faults": [15 * ms, 60 * ms],
        "frames": 30,
        "rss_peak_mb": 60.0,
    }  # fmt: skip
    figures = door_during(seen, [[5 * ms, 25 * ms], [40 * ms, 80 * ms]])
    assert figures["decisions"] == 3 and figures["faults"] == 2
    assert [p["decisions"] for p in figures["snapshots"]] == [2, 1]
    assert [p["granted"] for p in figures["snapshots"]] == [1, 1]
    assert figures["snapshots"][1]["p99"] == 40.0  # captured within, acted after: it counts
    assert (figures["p50"], figures["max"]) == (2.0, 40.0)
    assert figures["decisions_total"] == 4 and figures["faults_total"] == 2
    empty = door_during(seen, [[100 * ms, 200 * ms]])
    assert empty["decisions"] == 0 and empty["p99"] is None


def test_the_door_is_shown_subscribers_spread_over_the_gym():
    picks = door_members(1_000_000)
    assert len(picks) == len(set(picks)) == DOOR_MEMBERS
    assert not any(is_class_pack(i) for i in picks) and max(picks) > 900_000
    assert door_members(12) == sorted(set(door_members(12)))


def test_the_door_check_needs_decisions_a_low_p99_and_no_fault(figures):
    during = {"p50": 3.0, "p99": 12.0, "max": 20.0, "decisions": 40, "faults": 0, "snapshots": []}
    results = copy.deepcopy(figures)
    results["door"] = {
        "without_agent": {"p50": 1.0, "p99": 2.0, "max": 3.0},
        "with_agent_stalled_cloud": {"p50": 1.0, "p99": 2.0, "max": 3.0},
        "during_snapshot": during,
        "agent_requests_during_run": 3,
        "agent_requests_answered": 0,
    }
    verdict = [ok for words, ok in checks(results) if "takes and switches" in words]
    assert verdict == [True]
    for spoiled in ({"faults": 1}, {"p99": 51.0}, {"decisions": 0, "p99": None}):
        results["door"]["during_snapshot"] = {**during, **spoiled}
        assert [ok for words, ok in checks(results) if "takes and switches" in words] == [False]
    out = io.StringIO()
    report_sync(results, out)
    assert "during both snapshots and switches" in out.getvalue()


def test_the_snapshot_time_target_applies_from_a_hundred_thousand_members(figures):
    big = copy.deepcopy(figures)
    snap = big["backends"]["sqlite"]["snapshot"]
    snap.update(members=1_000_000, replica_members=1_000_000, seconds=59.0)
    words = [(w, ok) for w, ok in checks(big) if "applied in" in w]
    assert words == [("SQLite: snapshot of 1,000,000 members applied in 59.0 s (target < 60 s: "
                      "60 s per million members)", True)]  # fmt: skip
    snap["seconds"] = 61.0
    assert [ok for w, ok in checks(big) if "applied in" in w] == [False]
    assert not [w for w, _ in checks(figures) if "applied in" in w]  # 200 members: no target


# -- the pieces ----------------------------------------------------------------------------------


def test_the_backlog_mixes_grants_class_uses_and_denials():
    decisions = [backlog_decision(i, 1000) for i in range(200)]
    reasons = [d.reason for d in decisions]
    assert reasons.count(Reason.SUBSCRIPTION) == 130
    assert reasons.count(Reason.CLASS_PACK) == 30
    assert reasons.count(Reason.PASSBACK) == reasons.count(Reason.MEMBER_EXPIRED) == 10
    assert reasons.count(Reason.UNKNOWN_CODE) == 20
    for d in decisions:
        assert d.verdict is d.reason.verdict
        if d.reason is Reason.CLASS_PACK:
            assert d.classes_used == 1 and is_class_pack(int(d.member_id[1:]))
        elif d.member_id is not None:
            assert not is_class_pack(int(d.member_id[1:])), d  # subscribers only
        else:
            assert d.verdict is Verdict.DENIED


def test_the_members_csv_is_a_clean_import():
    from cloud.importer import parse_lines

    lines, problems = parse_lines(members_csv(0, 20, datetime(2026, 5, 1, tzinfo=UTC)))
    assert problems == [] and [ln.errors for ln in lines] == [[]] * 20
    packs = [ln.membership for ln in lines if ln.membership["type"] == "CLASS_PACK"]
    assert len(packs) == 2 and {p["remaining_classes"] for p in packs} == {CLASS_PACK_BALANCE}


def test_the_stalled_cloud_accepts_and_never_answers():
    with StalledCloud() as stalled:
        with pytest.raises(httpx.ReadTimeout):  # only the wait for an answer is short
            httpx.get(stalled.url + "/v1/replica/changes", timeout=httpx.Timeout(60.0, read=0.05))
        # Its thread counts the connection when it runs (late, on a busy machine).
        for _ in range(60_000):
            if stalled.connections:
                break
            time.sleep(0.001)
        assert stalled.connections == 1


def test_the_agent_child_keeps_trying_a_stalled_cloud_and_stops_on_sigterm(tmp_path):
    job = {"mode": "agent", "db": str(tmp_path / "kiosk.db"), "token": "t", "timeout_s": 1.0,
           "interval_s": 1.0, "backoff_max_s": 1.0, "wake_poll_s": 0.1}  # fmt: skip
    with StalledCloud() as stalled:
        job["url"] = stalled.url
        agent = subprocess.Popen(
            [sys.executable, "-m", "devtools.bench.sync_child"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert agent.stdin is not None and agent.stderr is not None
            agent.stdin.write(json.dumps(job))
            agent.stdin.close()
            assert agent.stderr.readline().strip() == "ready"
            while stalled.connections == 0 and agent.poll() is None:
                time.sleep(0.01)  # the agent's first round starts at once
            agent.terminate()
            out = agent.stdout.read() if agent.stdout else ""
            assert agent.wait(120) == 0  # the bound only ends a hang
        finally:
            if agent.poll() is None:
                agent.kill()
                agent.wait(120)
    answer = json.loads(out.strip().splitlines()[-1])
    assert answer["requests"] >= 1 and answer["answered"] == 0


def test_the_child_refuses_an_unknown_mode():
    result = subprocess.run(
        [sys.executable, "-m", "devtools.bench.sync_child"],
        input=json.dumps({"mode": "fly"}), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2 and "unknown mode 'fly'" in result.stderr


# -- the command -----------------------------------------------------------------------------------


def test_sync_options_need_sync(capsys):
    assert main(["bench", "--backlog", "5", "--postgres", "postgresql://x@127.0.0.1/db"]) == 2
    assert "--postgres, --backlog only apply with --sync" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--members", "9"], ["--backlog", "0"], ["--members", "many"]])
def test_sizes_are_checked(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "--sync", *argv])
    assert exit_.value.code == 2
    assert "bench: error: argument" in capsys.readouterr().err


def test_an_unreachable_postgres_fails_before_measuring(capsys):
    url = f"postgresql://postgres:secret@127.0.0.1:{_free_port()}/nothing"
    assert main(["bench", "--sync", "--postgres", url]) == 1
    err = capsys.readouterr().err
    assert "bench: PostgreSQL at postgresql://postgres:***@127.0.0.1" in err
    assert "secret" not in err


def test_collect_refuses_sizes_it_cannot_measure():
    with pytest.raises(BenchError):
        collect_sync(members=5, backlog=10, postgres_url=None, door=False)
