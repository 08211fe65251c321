"""The owner page in a real browser: Playwright driving Debian's Chromium against
``kiosk web`` and ``kiosk demo`` running as real processes on loopback.

Each test asserts what the owner sees. One browser for the module, a fresh context (cookies,
storage) per test; one continuous ``kiosk demo`` shared by the tests that need a live door. No
blind sleeps: every wait is for a selector, a response or a line of output, with a deadline.
"""

from __future__ import annotations

import re
import secrets
import time

import pytest
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import expect

from kiosk.data.control import ControlStore, RequestKind, control_path
from kiosk.web.auth import LoginThrottle
from webrig import (
    LAPTOP,
    PHONE,
    HostileSite,
    auto_post_page,
    free_port,
    log_in,
    screenshot_folder,
    start_demo,
    start_web,
)

# A long file: it starts first on a fresh clone (tests/conftest.py orders the files).
pytestmark = pytest.mark.slow

WAIT_MS = 20_000  # generous for a loaded CI machine; a passing run takes a fraction of it
# Wrong passwords the browser sends at once. The volume figure (1,000 in a minute, at least 99%
# refused) is proven in-process by tests/test_web_security.py; here the point is that a real
# browser's flood is refused and the owner then sees the throttle in the form.
FLOOD = 100
A_PASSWORD = secrets.token_urlsafe(16)  # what the owner types (never printed by the page)

expect.set_options(timeout=WAIT_MS)


@pytest.fixture
def context(browser):
    made = browser.new_context(viewport=LAPTOP)
    made.set_default_timeout(WAIT_MS)
    try:
        yield made
    finally:
        made.close()


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """``kiosk demo --web-port P``: the real door loop on simulated camera and pins, its sync agent
    and embedded cloud, and the owner page, in one process (human output)."""
    port = free_port()
    running = start_demo(tmp_path_factory.mktemp("demo"), port)
    assert running.url == f"http://127.0.0.1:{port}/"
    try:
        yield running
    finally:
        code = running.stop()
        # Ctrl-C ends the demo cleanly: its page stopped, its summary printed, nothing crashed.
        assert code == 0, running.stderr()
        assert "Traceback" not in running.stderr(), running.stderr()


@pytest.fixture
def web(tmp_path):
    """``kiosk web --config CFG`` on a database with the demo's replica, no password yet."""
    running = start_web(tmp_path / "web")
    try:
        yield running
    finally:
        running.stop()


def test_set_the_password_then_sign_in(context, web):
    page = context.new_page()
    answer = page.goto(web.url)
    assert answer is not None and answer.status == 503
    expect(page.get_by_test_id("setup-needed")).to_be_visible()
    expect(page.get_by_test_id("setup-needed")).to_contain_text("kiosk web set-password")
    # Only that: no login form, no figures, no actions.
    for hidden in ("login-form", "section-decisions", "section-actions", "logout"):
        expect(page.get_by_test_id(hidden)).to_have_count(0)
    page.goto(web.url + "login")
    expect(page.get_by_test_id("setup-needed")).to_be_visible()

    done = web.set_password(A_PASSWORD)
    assert done.returncode == 0, done.stderr
    assert A_PASSWORD not in done.stdout + done.stderr

    page.goto(web.url)  # the owner reloads the page
    expect(page.get_by_test_id("login-form")).to_be_visible()
    assert page.url == web.url + "login"
    page.get_by_test_id("login-password").fill(A_PASSWORD)
    page.get_by_test_id("login-submit").click()
    expect(page.get_by_test_id("section-decisions")).to_be_visible()
    expect(page.get_by_test_id("section-sync")).to_be_visible()
    expect(page.get_by_test_id("action-test-door")).to_be_visible()
    assert page.url == web.url


def newest_seq(page) -> int:
    seqs = page.get_by_test_id("decision-row").evaluate_all(
        "rows => rows.map(r => Number(r.dataset.seq))"
    )
    return max(seqs, default=0)


def test_a_check_in_appears_without_reloading(context, demo):
    page = context.new_page()
    log_in(page, demo.url, demo.password)
    newest = newest_seq(page)
    page.evaluate("window.__noReload = 1")
    # The demo's scenario shows a card every ~2 s; the page updates itself every few seconds.
    page.wait_for_function(
        """newest => [...document.querySelectorAll('[data-testid="decision-row"]')]
                       .some(row => Number(row.dataset.seq) > newest)""",
        arg=newest,
    )
    assert page.evaluate("window.__noReload") == 1, "the page was reloaded"
    row = page.locator(f'[data-testid="decision-row"][data-seq="{newest_seq(page)}"]')
    expect(row).to_contain_text(re.compile(r"Admitted|Refused"))


def audit_rows(page, action: str, outcome: str):
    return page.locator(
        f'[data-testid="audit-row"][data-action="{action}"][data-outcome="{outcome}"]'
    )


def test_sync_now(context, demo):
    page = context.new_page()
    log_in(page, demo.url, demo.password)
    done_before = audit_rows(page, "sync_now", "done").count()
    page.get_by_test_id("action-sync-now").click()
    expect(page.get_by_test_id("notice")).to_have_text("Sync requested")
    expect(audit_rows(page, "sync_now", "requested").first).to_be_visible()
    page.evaluate("window.__noReload = 1")
    # The demo's sync agent runs a cycle at once and records its outcome: the live update shows it.
    expect(audit_rows(page, "sync_now", "done")).to_have_count(done_before + 1)
    expect(audit_rows(page, "sync_now", "done").first).to_contain_text("synced")
    assert page.evaluate("window.__noReload") == 1


def test_test_the_door(context, demo):
    page = context.new_page()
    log_in(page, demo.url, demo.password)
    done_before = audit_rows(page, "test_door", "done").count()
    printed_before = len(demo.output.lines)
    page.get_by_test_id("action-test-door").click()
    expect(page.get_by_test_id("notice")).to_have_text("Door test requested")
    page.evaluate("window.__noReload = 1")
    expect(audit_rows(page, "test_door", "done")).to_have_count(done_before + 1)
    expect(audit_rows(page, "test_door", "done").first).to_contain_text("relay pulsed")
    assert page.evaluate("window.__noReload") == 1
    # The demo says so on its output too.
    line = demo.output.wait_for(
        lambda text: text.startswith("door test:"), 10, "the door test", start=printed_before
    )
    assert line == "door test: relay pulsed for 500 ms"


def test_a_wrong_password_flood_is_refused(context, web):
    done = web.set_password(A_PASSWORD)
    assert done.returncode == 0, done.stderr
    page = context.new_page()
    page.goto(web.url + "login")
    expect(page.get_by_test_id("login-form")).to_be_visible()
    before = page.request.get(web.url + "healthz")
    started = time.monotonic()
    statuses = page.evaluate(
        """async n => {
            const csrf = document.querySelector('input[name="csrf"]').value;
            const body = new URLSearchParams({csrf, password: "not the owner's password"});
            const one = () => fetch("/login", {method: "POST", body, redirect: "manual"})
                .then(answer => answer.status, () => 0);
            return Promise.all(Array.from({length: n}, one));
        }""",
        FLOOD,
    )
    elapsed = time.monotonic() - started
    assert len(statuses) == FLOOD and set(statuses) <= {401, 429}, sorted(set(statuses))
    # However long the flood took on this machine, only the throttle's schedule got through:
    # the elapsed time measured here can only be longer than the server's, so the bound is safe.
    checked = statuses.count(401)
    allowed = most_checks(LoginThrottle(), elapsed)
    assert checked <= allowed, (
        f"{checked} of {FLOOD} checked in {elapsed:.1f} s (at most {allowed})"
    )

    # The owner (same address) now sees the throttle in the form itself. If the last lockout ran
    # out while the flood's answers were being read, the next wrong password starts a longer one.
    for _ in range(3):
        page.get_by_test_id("login-password").fill("still not the password")
        with page.expect_response(
            lambda r: r.url == web.url + "login" and r.request.method == "POST"
        ) as answer:
            page.get_by_test_id("login-submit").click()
        if answer.value.status == 429:
            break
        assert answer.value.status == 401
    else:
        raise AssertionError("three wrong passwords right after the flood were all checked")
    expect(page.get_by_test_id("error-message")).to_contain_text("Too many wrong passwords")
    expect(page.get_by_test_id("login-form")).to_be_visible()

    after = page.request.get(web.url + "healthz")
    assert after.status == before.status and set(after.json()) == {"ok", "checks"}


def most_checks(throttle: LoginThrottle, seconds: float) -> int:
    """The most wrong passwords one address can have checked within ``seconds`` (>= 0) under
    ``throttle``'s settings: the free ones, then one each time a lockout (doubling from the
    first wait, up to the longest) has run out. The global cap only lowers it further."""
    checks, waited, wait = throttle.free_failures, 0.0, throttle.first_wait_s
    while waited + wait <= seconds:
        waited += wait
        checks += 1
        wait = min(throttle.max_wait_s, wait * 2)
    return checks


def door_test_records(db) -> tuple[int, int]:
    """How many door tests the control file holds: requests, and audit rows saying one was
    requested."""
    with ControlStore.open(control_path(db)) as control:
        requests = sum(1 for r in control.recent_requests(1000) if r.kind is RequestKind.TEST_DOOR)
        audited = sum(
            1
            for a in control.recent_audit(1000)
            if a.action == RequestKind.TEST_DOOR.value and a.outcome == "requested"
        )
    return requests, audited


@pytest.mark.parametrize(
    ("host", "cookie_sent"),
    [("localhost", False), ("127.0.0.1", True)],
    ids=["cross-site", "same-site-other-port"],
)
def test_a_forged_post_from_another_page_is_refused(context, demo, host, cookie_sent):
    """localhost is another site than 127.0.0.1, so the SameSite cookie is not even sent;
    127.0.0.1 on another port is the same site, so it is: both are refused by the origin check.
    Only the second carries the owner's session, and so is worth a line in the audit log (a
    request without a session is anyone's, and auditing those would let anyone fill the log)."""
    owner = context.new_page()
    log_in(owner, demo.url, demo.password)
    refused_before = audit_rows(owner, "test_door", "csrf_refused").count()
    door_tests_before = door_test_records(demo.db)

    target = demo.url + "actions/test-door"
    with HostileSite(auto_post_page(target, {"csrf": "guessed"})) as hostile:
        victim = context.new_page()
        with victim.expect_response(lambda r: r.url == target) as answer:
            victim.goto(f"http://{host}:{hostile.port}/")
        assert answer.value.status == 403
        assert ("cookie" in answer.value.request.all_headers()) is cookie_sent
        expect(victim.get_by_test_id("error-message")).to_contain_text("another site")

    if cookie_sent:  # the owner's open page shows the refusal in its audit log
        expect(audit_rows(owner, "test_door", "csrf_refused")).to_have_count(refused_before + 1)
    # No door test was requested: none in the control file, none in the audit log.
    assert door_test_records(demo.db) == door_tests_before


def layout(page) -> dict:
    return page.evaluate(
        """() => {
            const box = id => document.getElementById(id).getBoundingClientRect();
            return {
                scroll_width: document.documentElement.scrollWidth,
                inner_width: window.innerWidth,
                door: box("door"), sync: box("sync"), decisions: box("decisions"),
            };
        }"""
    )


def screenshot(page, path, *, full_page: bool = False, tries: int = 3) -> None:
    """``page.screenshot``, taken again after the next painted frame when headless Chromium
    answers "Unable to capture screenshot": on a loaded machine its compositor sometimes has no
    frame ready yet. The picture is this test's by-product (the layout is asserted from the
    page's boxes); any other error, or the same one ``tries`` times, fails the test."""
    for attempt in range(1, tries + 1):
        try:
            page.screenshot(path=path, full_page=full_page)
            return
        except PlaywrightError as exc:
            if "Unable to capture screenshot" not in str(exc) or attempt == tries:
                raise
            # Wait for the browser to paint a frame: an event, not a guess at a duration.
            page.evaluate("() => new Promise(done => requestAnimationFrame(() => done()))")


def test_phone_and_laptop_layout(browser, demo, tmp_path):
    shots = screenshot_folder(tmp_path)
    for name, viewport, mobile in (("phone", PHONE, True), ("laptop", LAPTOP, False)):
        context = browser.new_context(
            viewport=viewport, is_mobile=mobile, has_touch=mobile, device_scale_factor=1
        )
        context.set_default_timeout(WAIT_MS)
        try:
            page = context.new_page()
            page.goto(demo.url + "login")
            expect(page.get_by_test_id("login-form")).to_be_visible()
            screenshot(page, shots / f"login-{name}.png")
            log_in(page, demo.url, demo.password)
            expect(page.get_by_test_id("decision-row").first).to_be_visible()
            box = layout(page)
            # Nothing sideways to scroll to: every section fits the screen's width.
            assert box["scroll_width"] <= box["inner_width"] == viewport["width"], box
            if name == "phone":  # one column: the cards stack
                assert box["sync"]["top"] >= box["door"]["bottom"], box
                assert box["door"]["left"] == box["sync"]["left"], box
            else:  # door and sync side by side, the decisions across below them
                assert box["door"]["top"] == box["sync"]["top"], box
                assert box["sync"]["left"] > box["door"]["right"], box
                assert box["decisions"]["width"] > box["door"]["width"] * 2, box
            # The phone's first screen (the whole page is four screens long); all of it on a laptop.
            screenshot(page, shots / f"dashboard-{name}.png", full_page=name == "laptop")
        finally:
            context.close()
    for name in ("login", "dashboard"):
        for size in ("phone", "laptop"):
            assert (shots / f"{name}-{size}.png").stat().st_size > 10_000


def test_setup_needed_layout(browser, web, tmp_path):
    shots = screenshot_folder(tmp_path)
    for name, viewport, mobile in (("phone", PHONE, True), ("laptop", LAPTOP, False)):
        context = browser.new_context(viewport=viewport, is_mobile=mobile, has_touch=mobile)
        context.set_default_timeout(WAIT_MS)
        try:
            page = context.new_page()
            page.goto(web.url)
            expect(page.get_by_test_id("setup-needed")).to_be_visible()
            width = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
            assert width[0] <= width[1] == viewport["width"], width
            screenshot(page, shots / f"setup-needed-{name}.png")
        finally:
            context.close()
