"""`kiosk bench --console`: the figures' shape and the live feed's exactly-once count.

A small, fast run through the real machinery: member search over a few thousand stored members,
then the bench's cloud as a child process (the real app and server, the feed mounted without
sign-in) on SQLite with one process and on a scratch PostgreSQL database with two workers, a few
SSE consoles connected while a few simulated doors upload through the device API. It checks the
measuring and the exactly-once count, never the speed: figures come from the bench itself.
"""

from __future__ import annotations

import io
import json
import random

import pytest

from devtools.bench import console
from devtools.bench.console import collect_console, console_settings, delivery_figures
from kiosk.cli import main
from pg import pg_server_fixture  # noqa: F401

BACKENDS = ("sqlite", "postgres")


@pytest.fixture(scope="module")
def figures(pg_server):
    settings = console_settings(
        members=3000,
        queries=40,
        consoles=4,
        doors=3,
        checkins_per_min=120.0,
        window_s=3.0,
        interval_s=1.5,
        gym_members=30,
        workers=2,
        idle_s=0.2,
    )
    return collect_console(postgres_url=pg_server.admin_url, settings=settings)


@pytest.mark.parametrize("backend", BACKENDS)
def test_search_reports_percentiles_per_kind_and_index_ranges(figures, backend):
    b = figures["search"][backend]
    assert b["members"] == 3000 and b["index_ranges"] is True
    for kind in ("name", "code", "phone"):
        f = b[kind]
        assert f["queries"] == 40
        assert 0 < f["p50_ms"] <= f["p95_ms"] <= f["p99_ms"] <= f["max_ms"]
        assert b["plans"][kind]["index_range"] is True and b["plans"][kind]["plan"]
    # The queries are drawn from stored members: names and phones are found; one code in ten is
    # nobody's.
    assert b["name"]["found_share"] == 1.0 and b["phone"]["found_share"] == 1.0
    assert 0.7 <= b["code"]["found_share"] < 1.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_live_feed_delivers_each_check_in_to_every_console_exactly_once(figures, backend):
    b = figures["live"][backend]
    assert {"consoles", "doors", "checkins", "deliveries", "latency_ms", "exactly_once",
            "cloud_cpu_seconds", "idle_cloud_cpu_percent", "workers", "reconnects"} <= set(b)  # fmt: skip
    assert b["workers"] == (1 if backend == "sqlite" else 2)
    assert b["exactly_once"] is True and b["stored_exactly_once"] is True
    assert (
        b["checkins"] > 0 and b["deliveries"] == b["checkins"] * b["consoles"] == b["checkins"] * 4
    )
    assert b["duplicates"] == b["missing"] == b["unknown"] == b["reconnects"] == 0
    lat = b["latency_ms"]
    assert lat["p50"] <= lat["p99"] <= lat["max"]
    assert b["cloud_cpu_seconds"] is not None and b["cloud_cpu_seconds"] > 0


def test_the_run_says_how_it_was_measured(figures):
    assert figures["postgres"] == "measured"
    assert figures["settings"]["consoles"] == 4 and figures["settings"]["members"] == 3000
    assert "scratch database" in figures["live"]["postgres"]["database"]
    json.dumps(figures)  # JSON-ready as printed by --json
    out = io.StringIO()
    console.report_console(figures, out)
    text = out.getvalue()
    assert "member search over 3,000 members" in text
    assert text.count("exactly once: yes") == 2


# -- the parts, pure ---------------------------------------------------------------------------------


def test_members_and_queries_are_drawn_reproducibly():
    members = console.people(200, random.Random(7))
    assert members == console.people(200, random.Random(7))
    assert len({p.code for p in members}) == 200
    assert all(p.phone is None or (p.phone.startswith("+4915") and len(p.phone) == 14)
               for p in members)  # fmt: skip
    queries = console.search_queries(members, 30, random.Random(1))
    assert {k: len(v) for k, v in queries.items()} == {"name": 30, "code": 30, "phone": 30}


class _Consoles:
    def __init__(self, received, reconnects):
        self.received, self.reconnects = received, reconnects


def test_delivery_figures_count_duplicates_missing_and_strangers():
    answered = {"a": 10.0, "b": 11.0}
    good = _Consoles([{"a": [10.1], "b": [11.2]}, {"a": [10.3], "b": [11.1]}], [0, 0])
    f = delivery_figures(answered, good, {"a", "b"})
    assert f["exactly_once"] and f["deliveries"] == 4 and f["latency_ms"]["max"] == 300.0
    bad = _Consoles([{"a": [10.1, 10.2], "x": [1.0]}, {"a": [9.9], "b": [11.1]}], [0, 1])
    f = delivery_figures(answered, bad, {"a", "b"})
    assert (f["duplicates"], f["missing"], f["unknown"], f["reconnects"]) == (1, 1, 1, 1)
    assert not f["exactly_once"] and f["latency_ms"]["before_answer"] == 1


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--console", "--fleet"], "choose one of --sync, --web, --fleet and --console"),
        (["--console", "--backlog", "10"], "--backlog only applies with --sync"),
        (["--console", "--checkins", "10"], "--checkins only applies with --web"),
        (["--workers", "2"], "--workers only applies with --fleet or --console"),
        (["--sync", "--scans", "10"], "--scans only applies to the door bench"),
    ],
)
def test_bench_options_that_do_not_go_together_are_refused(argv, words, capsys):
    assert main(["bench", *argv]) == 2
    assert words in capsys.readouterr().err
