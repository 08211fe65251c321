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
    BenchError,
    StalledCloud,
    backlog_decision,
    checks,
    collect_sync,
    is_class_pack,
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
    assert full["pages"] == 1 and full["lock_ms"] > 0 and full["swap_ms"] > 0
    assert 0 < full["fetch_s"] <= full["seconds"]
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
                  "idle poll: requests per pull, status", "write lock of the swap",
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
    with StalledCloud() as stalled, pytest.raises(httpx.ReadTimeout):
        httpx.get(stalled.url + "/v1/replica/changes", timeout=0.05)
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
            assert agent.wait(10) == 0
        finally:
            if agent.poll() is None:
                agent.kill()
                agent.wait(10)
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
