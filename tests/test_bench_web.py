"""``kiosk bench --web``: a real (small) run against ``kiosk web`` processes, and its verdicts."""

from __future__ import annotations

import io
import json

from devtools.bench.web import collect_web, report_web, web_checks
from kiosk.cli import main
from kiosk.web.serve import PER_CLIENT_CONNECTIONS


def test_a_small_web_bench_logs_in_and_times_every_route():
    result = collect_web(checkins=30, requests=5, progress=lambda _words: None, idle=40)
    for journal in ("empty", "full"):
        figures = result[journal]
        for route in ("/api/overview", "/live", "/healthz"):
            assert 0 < figures[route]["p50_ms"] <= figures[route]["p95_ms"]
        assert 10 < figures["rss_mb"] <= figures["peak_rss_mb"]
    assert result["overview_ratio"] > 0
    # The status JSON again while a stranger opened 40 idle connections: the page kept at most
    # its per-address allowance of them and still answered every request.
    idle = result["full"]["idle"]
    assert idle["connections"] == 40 and idle["held"] <= PER_CLIENT_CONNECTIONS
    assert 0 < idle["p50_ms"] <= idle["p95_ms"] and result["idle_ratio"] > 0
    assert "idle" not in result["empty"]
    out = io.StringIO()
    report_web(result, out)
    assert "status JSON with 30 check-ins" in out.getvalue()
    assert "while a stranger opened 40 idle connections from 127.0.0.2" in out.getvalue()
    assert len(web_checks(result)) == 3


def _figures(status_ms: float, rss_mb: float) -> dict:
    page = {"/api/overview": {"p50_ms": status_ms}, "peak_rss_mb": rss_mb}
    return {"checkins": 100_000, "full": page, "empty": {**page, "peak_rss_mb": 30.0}}


def test_the_targets_are_judged_on_the_full_journal_and_the_larger_memory():
    assert [ok for _, ok in web_checks(_figures(5.0, 45.0))] == [True, True]
    assert [ok for _, ok in web_checks(_figures(25.0, 45.0))] == [False, True]
    assert [ok for _, ok in web_checks(_figures(5.0, 61.0))] == [True, False]


def test_web_and_sync_are_separate_benches(capsys):
    assert main(["bench", "--web", "--sync"]) == 2
    assert "choose one" in capsys.readouterr().err
    assert main(["bench", "--checkins", "10"]) == 2
    assert "--checkins only applies with --web" in capsys.readouterr().err


def test_json_output_is_one_object(capsys, monkeypatch):
    import devtools.bench.web as bench_web

    monkeypatch.setattr(bench_web, "BENCH_REQUESTS", 3)
    code = main(["bench", "--web", "--checkins", "5", "--json"])
    record = json.loads(capsys.readouterr().out.strip())
    assert record["checkins"] == 5
    assert code == (0 if record["targets_met"] else 1)
