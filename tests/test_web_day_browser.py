"""The owner page's picture of the day in a real browser: Playwright driving Debian's Chromium
against ``kiosk web`` running as a real process on loopback, with the journal and the scanner's
health report written by the test (as the door would).

The chart and the occupancy appear; rows the door writes afterwards and a new occupancy in the
scanner's report reach the open page through its live update, without a reload; the browser
refuses nothing under the page's Content-Security-Policy. No blind sleeps: every wait is for
what the page shows, with a deadline.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from kiosk.core.model import ClockQuality, Decision, EventKind, Now, Reason, Verdict
from kiosk.data.control import ControlStore, control_path
from kiosk.data.store import Store
from sync.protocol import utc_text
from webrig import LAPTOP, PHONE, log_in, start_web

WAIT_MS = 20_000  # generous for a loaded machine; a passing run takes a fraction of it
A_PASSWORD = secrets.token_urlsafe(16)

expect.set_options(timeout=WAIT_MS)

# Whatever the Content-Security-Policy refuses is reported to the page as an event; collected
# from the first byte of every page (an init script runs before the page's own).
CSP_WATCH = (
    "window.__refused = [];"
    "document.addEventListener('securitypolicyviolation',"
    " e => window.__refused.push(e.violatedDirective + ' ' + e.blockedURI));"
)


@pytest.fixture
def web(tmp_path: Path):
    """``kiosk web`` updating its open pages every second, with an owner password."""
    running = start_web(tmp_path / "web", web_extra="refresh_s = 1\n")
    try:
        done = running.set_password(A_PASSWORD)
        assert done.returncode == 0, done.stderr
        yield running
    finally:
        running.stop()


class Door:
    """What the door writes, done by the test: check-ins and door events in the journal, its
    health report (with the occupancy) in the control file."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self.mono = 10**9

    def now(self, at: datetime) -> Now:
        self.mono += 10**6
        return Now(at, self.mono, "boot-browser", ClockQuality.NTP_SYNCED)

    def grant(self, at: datetime, **kwargs: Any) -> str:
        with Store.open(self.db) as store:
            return store.append_checkin(
                Decision(Verdict.GRANTED, Reason.SUBSCRIPTION, member_id="m-browser"),
                door_id="front",
                replica_version=1,
                now=self.now(at),
                **kwargs,
            ).id

    def refuse(self, at: datetime, reason: Reason) -> None:
        with Store.open(self.db) as store:
            store.append_checkin(
                Decision(Verdict.DENIED, reason), door_id="front", replica_version=1,
                now=self.now(at),
            )  # fmt: skip

    def event(self, kind: EventKind, at: datetime, checkin_id: str | None = None) -> None:
        with Store.open(self.db) as store:
            assert store.append_event(kind, door_id="front", at=self.now(at), checkin_id=checkin_id)

    def report(self, inside: int, most: int) -> None:
        """The scanner's health report, fresh now (the page ignores one older than 15 s)."""
        now = datetime.now(UTC)
        data = {
            "door_id": "front",
            "state": "scanning",
            "started_at": utc_text(now - timedelta(minutes=5)),
            "last_frame_at": utc_text(now),
            "fps": 30.0,
            "relay_open": False,
            "pulse_ms": 500,
            "decisions": {},
            "occupancy": {
                "now": inside,
                "entries_today": most,
                "exits_today": most - inside,
                "max_today": most,
                "capacity": 40,
            },
        }
        with ControlStore.open(control_path(self.db)) as control:
            control.publish_health("scanner", data, now=now)


def hour_bar(page, series: str, hour: int):
    return page.locator(f'[data-testid="hour-bar"][data-series="{series}"][data-hour="{hour}"]')


def test_the_day_appears_and_follows_the_door_without_a_reload(browser, web):
    door = Door(web.config.parent / "data" / "kiosk.db")
    # Every row at one moment: one bar of this hour (UTC, the page's default zone), however long
    # the test takes.
    at = datetime.now(UTC).replace(microsecond=0)
    hour = at.hour
    door.grant(at)
    door.grant(at)
    door.refuse(at, Reason.VISIT_LIMIT)
    door.report(inside=2, most=2)

    context = browser.new_context(viewport=LAPTOP)
    context.set_default_timeout(WAIT_MS)
    context.add_init_script(CSP_WATCH)
    problems: list[str] = []
    try:
        page = context.new_page()
        page.on("pageerror", lambda error: problems.append(str(error)))
        page.on(
            "console",
            lambda message: problems.append(message.text) if message.type == "error" else None,
        )
        log_in(page, web.url, A_PASSWORD)
        expect(page.get_by_test_id("hour-chart")).to_be_visible()
        expect(hour_bar(page, "today", hour)).to_have_attribute("data-value", "2")
        expect(page.get_by_test_id("occupancy-now")).to_have_text("2")
        expect(page.get_by_test_id("occupancy-words")).to_contain_text("2 of 40 allowed")
        expect(page.get_by_test_id("event-annulled")).to_have_text("0")
        expect(page.get_by_test_id("event-tailgating")).to_have_text("0")
        refusal = page.locator('[data-testid="refusal-row"][data-reason="visit_limit"]')
        expect(refusal).to_contain_text("Visits for today used up")
        # The bar is drawn: it has a height on the screen, not just in the markup.
        box = hour_bar(page, "today", hour).bounding_box()
        assert box is not None and box["height"] > 10, box

        page.evaluate("window.__noReload = 1")
        # The door carries on: one more member goes in, one walks away, one tailgates.
        went_in = door.grant(at, await_passage_s=5.0)
        door.event(EventKind.ENTRY, at, went_in)
        walked_away = door.grant(at, await_passage_s=5.0)
        door.event(EventKind.ANNULLED, at, walked_away)
        door.event(EventKind.TAILGATING, at)
        door.report(inside=4, most=4)

        expect(hour_bar(page, "today", hour)).to_have_attribute("data-value", "3")
        expect(page.get_by_test_id("occupancy-now")).to_have_text("4")
        expect(page.get_by_test_id("occupancy-max")).to_have_text("4")
        expect(page.get_by_test_id("event-annulled")).to_have_text("1")
        expect(page.get_by_test_id("event-tailgating")).to_have_text("1")
        expect(page.get_by_test_id("event-entry")).to_have_text("1")
        expect(page.get_by_test_id("entries-today")).to_have_text("3")
        assert page.evaluate("window.__noReload") == 1, "the page was reloaded"
        assert page.evaluate("window.__refused") == []
        assert problems == []
    finally:
        context.close()


def test_the_day_fits_a_phone(browser, web):
    door = Door(web.config.parent / "data" / "kiosk.db")
    at = datetime.now(UTC).replace(microsecond=0)
    for _ in range(5):
        door.grant(at)
    door.refuse(at, Reason.MALFORMED_CODE)  # the longest reason's words
    door.report(inside=5, most=5)
    context = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True)
    context.set_default_timeout(WAIT_MS)
    context.add_init_script(CSP_WATCH)
    try:
        page = context.new_page()
        log_in(page, web.url, A_PASSWORD)
        chart = page.get_by_test_id("hour-chart")
        expect(chart).to_be_visible()
        expect(page.get_by_test_id("occupancy-now")).to_have_text("5")
        sizes = page.evaluate(
            """() => {
                const chart = document.querySelector('[data-testid="hour-chart"]');
                const label = chart.querySelector('text.axis').getBoundingClientRect();
                return {
                    scroll_width: document.documentElement.scrollWidth,
                    inner_width: window.innerWidth,
                    chart: chart.getBoundingClientRect().width,
                    label_height: label.height,
                };
            }"""
        )
        # Nothing to scroll sideways; the chart takes the card's width, its labels stay legible.
        assert sizes["scroll_width"] <= sizes["inner_width"] == PHONE["width"], sizes
        assert PHONE["width"] * 0.8 <= sizes["chart"] <= PHONE["width"], sizes
        assert sizes["label_height"] >= 11, sizes
        assert page.evaluate("window.__refused") == []
    finally:
        context.close()
