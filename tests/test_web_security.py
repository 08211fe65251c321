"""The owner page keeps strangers out (DESIGN §12), over HTTP: login, sessions (fixation, idle and
absolute timeouts, password change), CSRF and origin checks, body limits, login throttling with
its flood figure, security headers, and nothing personal in logs. The browser proof is separate.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
from test_web_app import (
    ALICE,
    FAST,
    PASSWORD,
    ZEBEDEE,
    Site,
    form_token,
    make_site,
)

from kiosk.owner_password import hash_password, save_password_hash
from kiosk.web.app import COOKIE, CSP
from kiosk.web.auth import LoginThrottle, Sessions, same_origin

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def site(tmp_path: Path):
    made = make_site(tmp_path)
    yield made
    made.client.close()
    made.app.state.page.close()


@pytest.fixture
def signed_in(site: Site) -> Site:
    assert site.login().status_code == 303
    return site


def audit_of(site: Site) -> list[tuple[str, str]]:
    return [(a.action, a.outcome) for a in site.audit()]


# -- login and sessions ----------------------------------------------------------------------------


def test_right_password_signs_in_wrong_one_does_not(site: Site):
    wrong = site.login("not the password")
    assert wrong.status_code == 401
    assert 'data-testid="error-message"' in wrong.text and "Wrong password." in wrong.text
    assert 'data-testid="login-form"' in wrong.text
    assert site.client.get("/", follow_redirects=False).status_code == 303
    right = site.login()
    assert (right.status_code, right.headers["location"]) == (303, "/")
    assert site.client.get("/").status_code == 200
    assert audit_of(site)[:2] == [("login", "ok"), ("login", "failed")]
    assert site.verify.calls == 2


def test_the_session_cookie_is_strict_and_renewed_at_login(site: Site):
    form = site.client.get("/login")
    before = site.client.cookies[COOKIE]
    header = form.headers["set-cookie"]
    assert "HttpOnly" in header and "SameSite=strict" in header and "Path=/" in header
    assert "Secure" not in header  # plain http on the LAN; Secure only over https
    assert len(before) >= 43  # 256 bits, URL-safe base64
    answer = site.client.post(
        "/login", data={"csrf": form_token(form.text), "password": PASSWORD}, follow_redirects=False
    )
    after = site.client.cookies[COOKIE]
    assert after != before  # no fixation: a planted id is worth nothing after login
    assert "HttpOnly" in answer.headers["set-cookie"]
    site.client.cookies.set(COOKIE, before, domain="testserver.local")
    assert site.client.get("/", follow_redirects=False).status_code == 303


def test_sessions_end_after_idle_time_and_background_updates_do_not_count(signed_in: Site):
    signed_in.clock.advance(20 * 60)
    assert signed_in.client.get("/").status_code == 200  # a click: activity
    signed_in.clock.advance(20 * 60)
    assert signed_in.client.get("/live").status_code == 200  # the page's own update
    assert signed_in.client.get("/api/overview").status_code == 200
    signed_in.clock.advance(11 * 60)  # 31 min since the last click
    assert signed_in.client.get("/live").status_code == 401
    assert signed_in.client.get("/", follow_redirects=False).headers["location"] == "/login"


def test_sessions_end_after_twelve_hours_whatever_the_activity(signed_in: Site):
    for _ in range(12 * 3):
        assert signed_in.client.get("/", follow_redirects=False).status_code == 200
        signed_in.clock.advance(20 * 60)
    assert signed_in.client.get("/", follow_redirects=False).status_code == 303


def test_changing_the_password_signs_everyone_out(signed_in: Site):
    save_password_hash(signed_in.password_file, hash_password("a brand new password", FAST))
    assert signed_in.client.get("/", follow_redirects=False).status_code == 303
    assert signed_in.login().status_code == 401
    assert signed_in.login("a brand new password").status_code == 303


def test_removing_the_password_file_shows_setup_again(signed_in: Site):
    signed_in.password_file.unlink()
    assert signed_in.client.get("/").status_code == 503
    assert signed_in.client.get("/api/overview").json() == {"error": "setup_needed"}


def test_an_unsafe_password_file_is_not_used(signed_in: Site):
    signed_in.password_file.chmod(0o644)
    answer = signed_in.client.get("/")
    assert answer.status_code == 503 and "chmod 600" in answer.text


def test_logout_ends_the_session(signed_in: Site):
    token = signed_in.csrf()
    answer = signed_in.post("/logout", token)
    assert (answer.status_code, answer.headers["location"]) == (303, "/login")
    assert signed_in.client.get("/", follow_redirects=False).status_code == 303
    assert ("logout", "ok") in audit_of(signed_in)


# -- CSRF, origin, bodies --------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/actions/sync-now", "/actions/test-door"])
def test_posts_without_the_right_token_or_from_another_site_are_refused(signed_in: Site, path):
    token = signed_in.csrf()
    refusals = [
        signed_in.post(path),  # no token
        signed_in.post(path, "not-the-token"),
        signed_in.post(path, token[:-1]),
        signed_in.post(path, token, headers={"Origin": "http://evil.example"}),
        signed_in.post(path, token, headers={"Origin": "null"}),
        signed_in.post(path, token, headers={"Referer": "http://evil.example/page"}),
    ]
    for answer in refusals:
        assert answer.status_code == 403
        assert 'data-testid="error-message"' in answer.text
    assert signed_in.requests() == []  # nothing submitted
    refused = [a for a in signed_in.audit() if a.outcome == "csrf_refused"]
    assert len(refused) == len(refusals)
    assert {a.detail for a in refused} >= {
        "it came from another site",
        "its form token did not match",
    }
    # The same request from this site goes through (own Origin, or the token in a header).
    ok = signed_in.post(path, token, headers={"Origin": "http://testserver"})
    assert ok.status_code == 303
    ok = signed_in.client.post(
        path,
        headers={"X-CSRF-Token": token, "Content-Type": "application/x-www-form-urlencoded"},
        follow_redirects=False,
    )
    assert ok.status_code == 303
    assert len(signed_in.requests()) == 1  # the second was a double click of the first


def test_login_itself_needs_the_pre_login_token(site: Site):
    site.login_csrf()  # a session exists, but the form's token is not sent
    answer = site.client.post("/login", data={"password": PASSWORD}, follow_redirects=False)
    assert answer.status_code == 403
    cross_site = site.client.post(
        "/login",
        data={"password": PASSWORD, "csrf": site.login_csrf()},
        headers={"Origin": "http://evil.example"},
        follow_redirects=False,
    )
    assert cross_site.status_code == 403
    assert site.verify.calls == 0
    assert site.client.get("/", follow_redirects=False).status_code == 303


def test_bodies_must_be_small_forms(signed_in: Site):
    token = signed_in.csrf()
    too_big = signed_in.client.post(
        "/actions/test-door",
        data={"csrf": token, "pad": "x" * 9000},
        follow_redirects=False,
    )
    assert too_big.status_code == 413
    as_json = signed_in.client.post(
        "/actions/test-door", json={"csrf": token}, follow_redirects=False
    )
    assert as_json.status_code == 415
    multipart = signed_in.client.post(
        "/actions/test-door",
        data={"csrf": token},
        files={"f": ("a.txt", b"x")},
        follow_redirects=False,
    )
    assert multipart.status_code == 415
    assert signed_in.requests() == []


# -- throttling ------------------------------------------------------------------------------------


def test_a_flood_of_1000_wrong_passwords_in_60_s_is_at_least_99_percent_refused(site: Site):
    token = site.login_csrf()
    statuses = []
    retry_after = []
    for _ in range(1000):
        answer = site.client.post(
            "/login", data={"csrf": token, "password": "guess-guess-guess"}, follow_redirects=False
        )
        statuses.append(answer.status_code)
        if answer.status_code == 429:
            retry_after.append(int(answer.headers["retry-after"]))
        site.clock.advance(0.060)
    refused = statuses.count(429)
    assert refused >= 990, f"only {refused} of 1000 refused"
    assert statuses.count(401) == 1000 - refused
    assert site.verify.calls == 1000 - refused  # scrypt ran only for the answered ones
    assert statuses[:5] == [401] * 5  # the first five are answered normally
    assert statuses[5] == 429
    assert min(retry_after) >= 1 and max(retry_after) <= 900
    audit = audit_of(site)
    assert audit.count(("login", "failed")) == site.verify.calls
    lockouts = audit.count(("login", "throttled"))
    assert 1 <= lockouts <= 10  # one row per lockout, not one per refused attempt


def test_a_locked_out_client_is_refused_even_with_the_right_password_without_scrypt(site: Site):
    token = site.login_csrf()
    for _ in range(5):
        assert (
            site.client.post(
                "/login", data={"csrf": token, "password": "wrong-wrong-wrong"}
            ).status_code
            == 401
        )
    calls = site.verify.calls
    answer = site.client.post("/login", data={"csrf": token, "password": PASSWORD})
    assert answer.status_code == 429 and answer.headers["retry-after"] == "1"
    assert "Too many wrong passwords" in answer.text
    assert site.verify.calls == calls
    site.clock.advance(1.0)
    assert (
        site.client.post(
            "/login", data={"csrf": token, "password": PASSWORD}, follow_redirects=False
        ).status_code
        == 303
    )


def test_a_successful_login_resets_the_clients_count(site: Site):
    token = site.login_csrf()
    for _ in range(4):
        site.client.post("/login", data={"csrf": token, "password": "wrong-wrong-wrong"})
    assert site.login().status_code == 303
    site.client.cookies.clear()
    token = site.login_csrf()
    answers = [
        site.client.post(
            "/login", data={"csrf": token, "password": "wrong-wrong-wrong"}
        ).status_code
        for _ in range(5)
    ]
    assert answers == [401] * 5


def test_the_throttle_is_per_client_and_capped_globally(site: Site):
    throttle = LoginThrottle()
    now = 0.0
    for n in range(20):  # 20 clients, one failure each: under each client's limit
        assert throttle.retry_after(f"10.0.0.{n}", now) is None
        throttle.failed(f"10.0.0.{n}", now)
        now += 0.5
    # The global cap: a 21st failure within the minute is not even checked, from anyone.
    wait = throttle.retry_after("10.0.1.1", now)
    assert wait is not None and 1 <= wait <= 60
    assert throttle.retry_after("10.0.1.1", 60.0) is None  # the window moved on


# -- headers, and nothing personal in URLs or logs -------------------------------------------------


def test_every_response_carries_the_security_headers(signed_in: Site):
    answers = {
        "/": signed_in.client.get("/"),
        "/live": signed_in.client.get("/live"),
        "/api/overview": signed_in.client.get("/api/overview"),
        "/healthz": signed_in.client.get("/healthz"),
        "/metrics": signed_in.client.get("/metrics"),
        "/static/style.css": signed_in.client.get("/static/style.css"),
        "/nope": signed_in.client.get("/nope"),
        "403": signed_in.post("/actions/test-door", "bad"),
        "/login (redirect)": signed_in.client.get("/login", follow_redirects=False),
    }
    for where, answer in answers.items():
        headers = answer.headers
        assert headers["content-security-policy"] == CSP, where
        assert headers["x-content-type-options"] == "nosniff", where
        assert headers["x-frame-options"] == "DENY", where
        assert headers["referrer-policy"] == "no-referrer", where
        assert headers["cross-origin-opener-policy"] == "same-origin", where
        assert headers["permissions-policy"] == "camera=(), microphone=(), geolocation=()", where
        expected = "public, max-age=3600" if where.startswith("/static") else "no-store"
        assert headers["cache-control"] == expected, where
    assert CSP == (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    )


def test_logs_hold_no_password_session_id_or_member_name(site: Site, caplog):
    caplog.set_level(logging.DEBUG)
    site.login("a wrong password here")
    assert site.login().status_code == 303
    session_id = site.client.cookies[COOKIE]
    token = site.csrf()
    site.post("/actions/test-door", token)
    site.post("/actions/sync-now", "bad-token")
    site.client.get("/")
    text = caplog.text
    assert "wrong owner password" in text and "owner request: test_door" in text
    for secret in (PASSWORD, "a wrong password here", session_id, token):
        assert secret not in text
    for personal in ("Zebedee", "Quux", ALICE.first_name, ZEBEDEE.id):
        assert personal not in text


def test_urls_in_pages_carry_nothing_personal(signed_in: Site):
    page = signed_in.client.get("/").text
    for url in re.findall(r'(?:href|action|src)="([^"]*)"', page):
        assert "?" not in url and ZEBEDEE.id not in url


def test_same_origin_rules():
    own = "http://kiosk.local:8080"
    assert same_origin(own, None, None)  # no header: the token decides
    assert same_origin(own, "http://kiosk.local:8080", None)
    assert same_origin(own, "HTTP://KIOSK.local:8080", None)
    assert not same_origin(own, "http://kiosk.local:8081", None)
    assert not same_origin(own, "null", "http://kiosk.local:8080/")
    assert same_origin(own, None, "http://kiosk.local:8080/login")
    assert not same_origin(own, None, "http://evil.example/http://kiosk.local:8080")
    assert not same_origin(own, None, "not a url")


def test_sessions_are_bounded_and_new_ids_are_random():
    sessions = Sessions(idle_s=60, max_sessions=3)
    made = [sessions.start(0.0) for _ in range(5)]
    assert len(sessions) == 3
    assert sessions.get(made[0].id, 1.0, None, touch=True) is None  # the oldest went
    assert sessions.get(made[-1].id, 1.0, None, touch=True) is made[-1]
    assert len({s.id for s in made} | {s.csrf for s in made}) == 10
