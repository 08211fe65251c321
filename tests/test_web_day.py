"""The owner page's picture of the day: the chart geometry (pure), the local hours, occupancy and
the day's figures as views, and the page and ``/metrics`` over a real journal (check-ins and door
events written through the ``Store``, the scanner's report through the control file).

The HTTP rig (``make_site``, the fake clock, the metrics parser) is test_web_app.py's.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from test_web_app import ZEBEDEE, make_site, parse_metrics

from kiosk.core.model import ClockQuality, Decision, EventKind, Now, Reason, Verdict
from kiosk.data.control import HealthReport
from kiosk.data.day_report import EVENT_KINDS, DayCounts
from kiosk.data.store import Store
from kiosk.web.charts import (
    BOTTOM,
    HOURS,
    LEFT,
    RIGHT,
    TOP,
    gauge,
    hour_chart,
    nice_scale,
    refusal_rows,
)
from kiosk.web.sources import DaySpans, DoorFacts
from kiosk.web.views import day_view, hourly, occupancy_view

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

BERLIN = ZoneInfo("Europe/Berlin")
NOW = datetime(2026, 5, 4, 9, 30, tzinfo=UTC)  # a Monday, 11:30 in Berlin


def hours(**at: int) -> list[int]:
    """24 counts, zero but for ``h7=3``-style keywords."""
    counts = [0] * HOURS
    for key, value in at.items():
        counts[int(key[1:])] = value
    return counts


# -- the hour chart --------------------------------------------------------------------------------


def test_bars_are_as_high_as_their_count_on_a_round_scale():
    chart = hour_chart(
        hours(h7=3, h8=7, h9=5), hours(h8=10, h9=2), current_hour=9, compare_words="last Monday"
    )
    assert chart.top == 10 and [t.value for t in chart.ticks] == [0, 5, 10]
    assert chart.ticks[0].y == BOTTOM and chart.ticks[-1].y == TOP
    plot = BOTTOM - TOP
    got = {(b.series, b.hour): b for b in chart.bars}
    # No bar for a zero.
    assert set(got) == {
        ("today", 7), ("today", 8), ("today", 9), ("last_week", 8), ("last_week", 9),
    }  # fmt: skip
    for bar in chart.bars:
        assert bar.height == pytest.approx(plot * bar.value / 10, abs=0.01)
        assert bar.y + bar.height == pytest.approx(BOTTOM, abs=0.01)  # standing on the axis
    assert got[("last_week", 8)].y == TOP  # the largest count reaches the top
    # Last week's bar on the left of each hour, today's on the right, both inside the hour.
    slot = (RIGHT - LEFT) / HOURS
    for hour in (8, 9):
        before, today = got[("last_week", hour)], got[("today", hour)]
        assert LEFT + hour * slot <= before.x < today.x
        assert today.x + today.width <= LEFT + (hour + 1) * slot + 0.01
    assert got[("today", 8)].title == "08:00–09:00: 7 entries today"
    assert got[("last_week", 9)].title == "09:00–10:00: 2 entries last Monday"
    assert chart.now_x == pytest.approx(LEFT + 9.5 * slot, abs=0.01)
    assert [label.text for label in chart.labels] == [
        "00", "03", "06", "09", "12", "15", "18", "21",
    ]  # fmt: skip
    assert not chart.empty
    assert chart.summary == (
        "15 entries today, 12 entries last Monday. Busiest hour today: 08:00 (7 entries)."
    )


def test_an_empty_day_draws_no_bars_and_says_so():
    chart = hour_chart([0] * HOURS, [], current_hour=None)
    assert chart.empty and chart.bars == []
    assert chart.top == 1 and [t.value for t in chart.ticks] == [0, 1]
    assert chart.now_x is None
    assert chart.summary == "No entries today, none same day last week."
    assert len(chart.labels) == 8


def test_a_quiet_day_beside_a_busy_one_shares_the_scale():
    chart = hour_chart(hours(h10=1), hours(h10=120))
    assert chart.top == 150 and [t.value for t in chart.ticks] == [0, 50, 100, 150]
    today = next(b for b in chart.bars if b.series == "today")
    assert today.height == pytest.approx((BOTTOM - TOP) / 150, abs=0.01)
    assert chart.summary.startswith("1 entry today, 120 entries same day last week.")


def test_garbage_counts_count_as_zero_and_extra_hours_are_cut():
    chart = hour_chart([-3, True, "7", 2.5, None, 4] + [1] * 30, [])
    values = [(b.hour, b.value) for b in chart.bars]
    assert values[:2] == [(5, 4), (6, 1)] and max(h for h, _ in values) == 23


@pytest.mark.parametrize(
    ("largest", "step", "top"),
    [(0, 1, 1), (1, 1, 1), (2, 1, 2), (3, 1, 3), (4, 1, 4), (5, 2, 6), (7, 2, 8), (9, 5, 10),
     (10, 5, 10), (40, 10, 40), (41, 20, 60), (120, 50, 150), (999, 500, 1000)],
)  # fmt: skip
def test_nice_scale_has_at_most_five_round_steps(largest, step, top):
    assert nice_scale(largest) == (step, top)
    assert top >= largest and top // step <= 5 and top % step == 0


# -- refusals and the occupancy bar ----------------------------------------------------------------


def test_refusal_bars_most_first_in_words():
    rows = refusal_rows({"passback": 2, "unknown_code": 4, "at_capacity": 2, "pack_empty": 0})
    assert [(r.reason, r.count, r.width) for r in rows] == [
        ("unknown_code", 4, 100.0),
        ("at_capacity", 2, 50.0),
        ("passback", 2, 50.0),
    ]
    assert rows[1].words == "Gym full (as many inside as the capacity allows)"
    assert refusal_rows({}) == [] and refusal_rows({"passback": 0}) == []
    assert refusal_rows({"face_mismatch": 1})[0].words == "Other reason (face_mismatch)"


def test_gauge():
    assert gauge(12, 50) == 24.0 and gauge(60, 50) == 100.0 and gauge(0, 10) == 0.0
    assert gauge(None, 5) is None and gauge(3, None) is None and gauge(3, 0) is None


# -- local hours, the day's view and occupancy ---------------------------------------------------


def test_minutes_fall_into_the_gyms_local_hours():
    at = {
        datetime(2026, 5, 4, 5, 59, tzinfo=UTC): 2,  # 07:59 in Berlin (summer time)
        datetime(2026, 5, 4, 6, 0, tzinfo=UTC): 3,  # 08:00
        datetime(2026, 5, 4, 21, 45, tzinfo=UTC): 1,  # 23:45
    }
    counts = hourly(at, BERLIN)
    assert counts[7] == 2 and counts[8] == 3 and counts[23] == 1 and sum(counts) == 6
    # Kathmandu is UTC+05:45: a whole number of minutes, so minutes bucket exactly.
    kathmandu = ZoneInfo("Asia/Kathmandu")
    assert hourly({datetime(2026, 5, 4, 0, 14, tzinfo=UTC): 1}, kathmandu)[5:7] == [1, 0]  # 05:59
    assert hourly({datetime(2026, 5, 4, 0, 15, tzinfo=UTC): 1}, kathmandu)[5:7] == [0, 1]  # 06:00


def test_the_day_the_clocks_go_back_shares_the_repeated_hour():
    # 25 October 2026: 03:00 summer time becomes 02:00 winter time in Berlin.
    first = datetime(2026, 10, 25, 0, 30, tzinfo=UTC)  # 02:30 summer time
    second = datetime(2026, 10, 25, 1, 30, tzinfo=UTC)  # 02:30 winter time
    counts = hourly({first: 1, second: 2}, BERLIN)
    assert counts[2] == 3 and sum(counts) == 3


def spans() -> DaySpans:
    today = datetime(2026, 5, 3, 22, 0, tzinfo=UTC)  # Monday 4 May, 00:00 in Berlin
    return DaySpans(today, today + timedelta(days=1), today - timedelta(days=7),
                    today - timedelta(days=6))  # fmt: skip


def test_day_view_counts_today_beside_last_week():
    facts = DoorFacts(
        today={("granted", "subscription"): 5, ("denied", "passback"): 2,
               ("denied", "visit_limit"): 3},
        day=DayCounts(
            {datetime(2026, 5, 4, 7, 5, tzinfo=UTC): 4, datetime(2026, 5, 4, 9, 1, tzinfo=UTC): 1},
            {"entry": 4, "annulled": 1, "tailgating": 2, "exit": 0},
        ),
        last_week=DayCounts({datetime(2026, 4, 27, 7, 40, tzinfo=UTC): 6}),
    )  # fmt: skip
    view = day_view(facts, spans(), now=NOW, zone=BERLIN)
    assert view["date"] == "2026-05-04" and view["compare_date"] == "2026-04-27"
    assert view["compare_words"] == "last Monday" and view["current_hour"] == 11
    assert view["entries_by_hour"]["today"][9] == 4 and view["entries_by_hour"]["today"][11] == 1
    assert view["entries_by_hour"]["last_week"][9] == 6
    assert (view["entries_today"], view["entries_last_week"]) == (5, 6)
    assert view["refused_today"] == 5
    assert [(r["reason"], r["count"]) for r in view["refusals"]] == [
        ("visit_limit", 3),
        ("passback", 2),
    ]
    assert view["refusals"][0]["words"] == "Visits for today used up (the plan's limit per day)"
    assert [(e["kind"], e["count"]) for e in view["events"]] == [
        ("entry", 4), ("annulled", 1), ("tailgating", 2), ("exit", 0),
    ]  # fmt: skip
    assert view["events"][1]["words"] == "Granted but did not go through"
    assert (view["annulled_today"], view["tailgating_today"]) == (1, 2)


def test_a_day_with_only_refusals():
    facts = DoorFacts(today={("denied", "unknown_code"): 4}, day=DayCounts(), last_week=DayCounts())
    view = day_view(facts, spans(), now=NOW, zone=BERLIN)
    assert view["entries_today"] == 0 and view["refused_today"] == 4
    assert [r["reason"] for r in view["refusals"]] == ["unknown_code"]
    assert [e["count"] for e in view["events"]] == [0] * len(EVENT_KINDS)
    chart = hour_chart(
        view["entries_by_hour"]["today"],
        view["entries_by_hour"]["last_week"],
        current_hour=view["current_hour"],
    )
    assert chart.empty and chart.bars == [] and chart.now_x is not None


def report(data: dict[str, Any], age_s: float = 1.0) -> HealthReport:
    return HealthReport("scanner", 1, NOW - timedelta(seconds=age_s), {"state": "scanning", **data})


def occupancy(**changes: Any) -> dict[str, Any]:
    figures = {"now": 12, "entries_today": 40, "exits_today": 28, "max_today": 19, "capacity": None}
    return {**figures, **changes}


def test_occupancy_from_the_scanners_report():
    view = occupancy_view(report({"occupancy": occupancy()}), now=NOW)
    assert view["known"] and (view["now"], view["max_today"], view["capacity"]) == (12, 19, None)
    assert (view["entries_today"], view["exits_today"]) == (40, 28)
    assert view["words"] == "12 in the gym now" and view["fill"] == pytest.approx(63.16)
    full = occupancy_view(report({"occupancy": occupancy(now=50, capacity=50, max_today=50)}),
                          now=NOW)  # fmt: skip
    assert full["words"] == "50 of 50 allowed (full)" and full["fill"] == 100.0
    some = occupancy_view(report({"occupancy": occupancy(capacity=40)}), now=NOW)
    assert some["words"] == "12 of 40 allowed" and some["fill"] == 30.0
    # A capacity of 0 means no limit.
    assert occupancy_view(report({"occupancy": occupancy(capacity=0)}), now=NOW)["capacity"] is None


@pytest.mark.parametrize(
    ("the_report", "words"),
    [
        (None, "unknown: the scanner is not reporting"),
        (report({"occupancy": occupancy()}, age_s=60), "unknown: the scanner is not reporting"),
        (report({"occupancy": occupancy(), "state": "stopped"}),
         "unknown: the scanner is not reporting"),
        (report({}), "unknown: the scanner does not count it"),
        (report({"occupancy": occupancy(now=-1)}), "unknown: the scanner does not count it"),
        (report({"occupancy": "12"}), "unknown: the scanner does not count it"),
    ],
)  # fmt: skip
def test_occupancy_unknown(the_report, words):
    view = occupancy_view(the_report, now=NOW)
    assert not view["known"] and view["now"] is None and view["words"] == words


def test_a_max_below_now_is_raised_to_now():
    view = occupancy_view(report({"occupancy": occupancy(now=7, max_today=None)}), now=NOW)
    assert view["max_today"] == 7


# -- the page over a real journal ------------------------------------------------------------------

_MONO = [5 * 10**9]


def now_at(at: datetime) -> Now:
    _MONO[0] += 10**6
    return Now(at, _MONO[0], "boot-1", ClockQuality.NTP_SYNCED)


def grant(store: Store, at: datetime, **kwargs: Any) -> str:
    """A granted check-in of Zebedee at ``at``; its id."""
    decision = Decision(Verdict.GRANTED, Reason.SUBSCRIPTION, member_id=ZEBEDEE.id)
    return store.append_checkin(
        decision, door_id="front", replica_version=42, now=now_at(at), **kwargs
    ).id


def refuse(store: Store, at: datetime, reason: Reason) -> None:
    store.append_checkin(
        Decision(Verdict.DENIED, reason), door_id="front", replica_version=42, now=now_at(at)
    )


def event(store: Store, kind: EventKind, at: datetime, checkin_id: str | None = None) -> None:
    assert store.append_event(kind, door_id="front", at=now_at(at), checkin_id=checkin_id)


def busy_day(db: Path, now: datetime) -> None:
    """On top of ``seed_database`` (Zebedee admitted at 10:57, an unknown code, a passback): today
    (Monday 4 May, Berlin) a grant at 09:10 the turnstile never turned for (annulled), one at
    10:20 it did (entry), a passage with no check-in, an exit-side scanner's grant at 10:40 (an
    exit, not an entry), two refusals for a full gym; on Monday 27 April two entries at 10:05 and
    one at 17:30, and on Sunday 3 May one (neither today nor last Monday)."""
    local = now.astimezone(BERLIN)

    def at(hour: int, minute: int, days_back: int = 0) -> datetime:
        day = local - timedelta(days=days_back)
        return day.replace(hour=hour, minute=minute, second=0, microsecond=0).astimezone(UTC)

    with Store.open(db) as store:
        walked_away = grant(store, at(9, 10), await_passage_s=5.0)
        event(store, EventKind.ANNULLED, at(9, 10) + timedelta(seconds=5), walked_away)
        went_in = grant(store, at(10, 20), await_passage_s=5.0)
        event(store, EventKind.ENTRY, at(10, 20) + timedelta(seconds=2), went_in)
        event(store, EventKind.TAILGATING, at(10, 30))
        grant(store, at(10, 40), exit_event=True)
        refuse(store, at(10, 50), Reason.AT_CAPACITY)
        refuse(store, at(10, 51), Reason.AT_CAPACITY)
        grant(store, at(10, 5, days_back=7))
        grant(store, at(10, 6, days_back=7))
        grant(store, at(17, 30, days_back=7))
        grant(store, at(12, 0, days_back=1))


def bars(html: str) -> dict[tuple[str, int], int]:
    return {
        (series, int(hour)): int(value)
        for series, hour, value in re.findall(
            r'data-testid="hour-bar" data-series="(\w+)" data-hour="(\d+)" data-value="(\d+)"',
            html,
        )
    }


def figure(html: str, testid: str) -> str:
    match = re.search(rf'data-testid="{testid}">([^<]*)<', html)
    assert match, f"no {testid} on the page"
    return match.group(1)


OCCUPANCY = {"now": 7, "entries_today": 9, "exits_today": 2, "max_today": 8, "capacity": 30}


@pytest.fixture
def opened(tmp_path: Path):
    """``make_site(tmp_path, **options)``, closed after the test."""
    made = []

    def open_site(**options: Any):
        made.append(make_site(tmp_path, **options))
        return made[-1]

    yield open_site
    for site in made:
        site.client.close()
        site.app.state.page.close()


@pytest.fixture
def day_site(opened):
    site = opened()
    busy_day(site.db, site.clock.wall())
    site.publish(occupancy=OCCUPANCY)
    assert site.login().status_code == 303
    return site


def test_the_dashboard_draws_the_day_from_the_journal(day_site):
    html = day_site.client.get("/").text
    day = html[html.index('id="day"') : html.index('id="door"')]
    # 10:00-11:00 today: the 10:20 entry and the seed's 10:57; not the annulled grant at 09:10,
    # not the exit-side grant. Last Monday: two at 10:00, one at 17:00; Sunday's is nowhere.
    assert bars(day) == {("today", 10): 2, ("last_week", 10): 2, ("last_week", 17): 1}
    assert 'data-testid="hour-chart-now"' in day  # 11:00 in Berlin is marked
    assert "Last Monday" in day and "10:00–11:00: 2 entries today" in day
    assert figure(day, "entries-today") == "2"
    assert "(3 last Monday)" in day
    counts = {kind: figure(day, f"event-{kind}") for kind in ("entry", "annulled", "tailgating",
                                                              "exit")}  # fmt: skip
    assert counts == {"entry": "1", "annulled": "1", "tailgating": "1", "exit": "1"}
    assert "Granted but did not go through" in day and "Passage with no check-in" in day
    # Refusals by reason, most first, in words.
    rows = re.findall(r'data-testid="refusal-row" data-reason="(\w+)" data-count="(\d+)"', day)
    assert rows == [("at_capacity", "2"), ("passback", "1"), ("unknown_code", "1")]
    assert "Gym full (as many inside as the capacity allows)" in day
    assert "Refused today: 4" in day
    # Occupancy from the scanner's report.
    assert figure(day, "occupancy-now") == "7" and figure(day, "occupancy-max") == "8"
    assert "7 of 30 allowed" in day
    # Nothing personal in the picture.
    assert "Zebedee" not in day and ZEBEDEE.id not in day


def test_the_overview_carries_the_days_figures(day_site):
    overview = day_site.client.get("/api/overview").json()
    day = overview["day"]
    assert day["date"] == "2026-05-04" and day["compare_date"] == "2026-04-27"
    assert day["entries_by_hour"]["today"][10] == 2 and sum(day["entries_by_hour"]["today"]) == 2
    assert day["entries_by_hour"]["last_week"][10] == 2
    assert (day["annulled_today"], day["tailgating_today"]) == (1, 1)
    assert overview["occupancy"]["now"] == 7 and overview["occupancy"]["capacity"] == 30


def test_new_rows_and_a_new_occupancy_reach_the_live_fragment(day_site):
    before = day_site.client.get("/live").text
    assert bars(before)[("today", 10)] == 2
    with Store.open(day_site.db) as store:
        grant(store, day_site.clock.wall())  # 11:00
        grant(store, day_site.clock.wall() + timedelta(seconds=1))
        event(store, EventKind.TAILGATING, day_site.clock.wall())
    day_site.publish(occupancy={**OCCUPANCY, "now": 10, "max_today": 10})
    after = day_site.client.get("/live").text
    assert bars(after)[("today", 11)] == 2 and bars(after)[("today", 10)] == 2
    assert figure(after, "event-tailgating") == "2" and figure(after, "entries-today") == "4"
    assert figure(after, "occupancy-now") == "10" and figure(after, "occupancy-max") == "10"


def test_a_silent_scanner_leaves_occupancy_unknown(day_site):
    day_site.clock.advance(60)  # the report is a minute old
    html = day_site.client.get("/").text
    assert figure(html, "occupancy-now") == "?"
    assert "unknown: the scanner is not reporting" in html
    assert figure(html, "entries-today") == "2"  # the journal's figures stay


def test_an_empty_day_says_so(opened):
    site = opened(seed=False)
    with Store.open(site.db):
        pass  # a new, empty journal
    assert site.login().status_code == 303
    html = site.client.get("/").text
    assert 'data-testid="hour-chart-empty"' in html and "hour-bar" not in html
    assert "Nobody refused today." in html
    assert figure(html, "occupancy-now") == "?"
    assert "unknown: the scanner is not reporting" in html


def test_metrics_carry_occupancy_and_todays_events(day_site):
    samples = parse_metrics(day_site.client.get("/metrics").text)
    assert samples["fitflow_occupancy"] == [("", 7.0)]
    assert samples["fitflow_occupancy_max_today"] == [("", 8.0)]
    assert samples["fitflow_occupancy_capacity"] == [("", 30.0)]
    assert dict(samples["fitflow_door_events_today"]) == {
        'kind="annulled"': 1.0, 'kind="entry"': 1.0, 'kind="exit"': 1.0,
        'kind="tailgating"': 1.0,
    }  # fmt: skip
    # A silent scanner's occupancy is left out, never reported as a made-up figure; the
    # journal's counts stay.
    day_site.clock.advance(60)
    samples = parse_metrics(day_site.client.get("/metrics").text)
    for name in ("fitflow_occupancy", "fitflow_occupancy_max_today", "fitflow_occupancy_capacity"):
        assert name not in samples
    assert dict(samples["fitflow_door_events_today"])['kind="tailgating"'] == 1.0


def test_no_capacity_no_capacity_metric(opened):
    site = opened()
    site.publish(occupancy={**OCCUPANCY, "capacity": None})
    samples = parse_metrics(site.client.get("/metrics").text)
    assert samples["fitflow_occupancy"] == [("", 7.0)]
    assert "fitflow_occupancy_capacity" not in samples
    assert dict(samples["fitflow_door_events_today"]) == {
        'kind="annulled"': 0.0, 'kind="entry"': 0.0, 'kind="exit"': 0.0,
        'kind="tailgating"': 0.0,
    }  # fmt: skip
