"""The owner page keeps strangers out, over HTTP: login, sessions (fixation, idle and
absolute timeouts, password change), CSRF and origin checks, body limits, login throttling with
its flood figure, security headers, and nothing personal in logs. The browser proof is separate.
"""

from __future__ import annotations

import logging
import re
import socket
from pathlib import Path

import pytest
from starlette.testclient import TestClient
from test_web_app import (
    ALICE,
    FAST,
    PASSWORD,
    ZEBEDEE,
    Site,
    form_token,
    make_site,
)

from inthread_client import InThreadClient
from kiosk.ops.owner_password import hash_password, save_password_hash
from kiosk.web.app import COOKIE, CSP, DEVICE_COOKIE
from kiosk.web.audit_limits import AuditLimiter
from kiosk.web.auth import (
    LoginThrottle,
    Sessions,
    allowed_host,
    allowed_host_names,
    client_key,
    same_origin,
)

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.slow,  # a long file: it starts first on a fresh clone (tests/conftest.py)
]


@pytest.fixture
def site(tmp_path: Path):
    made = make_site(tmp_path)
    # Opened for the test: one event loop thread for all its requests, as a served page has
    # (unopened, a TestClient starts a thread and a loop for every request: 3 ms of CPU).
    with made.client:
        yield made
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


def test_the_session_cookie_is_lax_and_renewed_at_login(site: Site):
    form = site.client.get("/login")
    before = site.client.cookies[COOKIE]
    header = form.headers["set-cookie"]
    # Lax: a link from elsewhere keeps the owner signed in; cross-site POSTs carry no cookie.
    assert "HttpOnly" in header and "SameSite=lax" in header and "Path=/" in header
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
    # A signed-in session's refusals are audited, collapsed: the first at once, the rest summed
    # up once the minute is over (the next view writes it).
    refused = [a for a in signed_in.audit() if a.outcome == "csrf_refused"]
    assert [a.detail for a in refused] == ["its form token did not match"]
    signed_in.clock.advance(60)
    assert signed_in.client.get("/live").status_code == 200
    refused = [a for a in signed_in.audit() if a.outcome == "csrf_refused"]
    assert len(refused) == 2
    assert refused[0].detail == (
        f"{len(refusals) - 1} refused in the last minute (last: it came from another site)"
    )
    assert refused[0].client == "testclient"
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


class FromAddress:
    """The page as reached from ``address`` (TestClient always says "testclient")."""

    def __init__(self, app, address: str = "192.0.2.10") -> None:
        self.app, self.address = app, address

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            # The page's own lifespan is the site fixture's client's: a client opened on this
            # wrapper (one event loop for a flood) must not start the page a second time.
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] == "http":
            scope = {**scope, "client": (self.address, 50000)}
        await self.app(scope, receive, send)


def test_a_flood_of_1000_wrong_passwords_in_60_s_is_at_least_99_percent_refused(site: Site, caplog):
    caplog.set_level(logging.INFO, logger="kiosk.web")
    statuses = []
    retry_after = []
    with InThreadClient(site.app) as client:  # a flood: the app in this thread (inthread_client)
        token = form_token(client.get("/login").text)
        for _ in range(1000):
            answer = client.post(
                "/login",
                data={"csrf": token, "password": "guess-guess-guess"},
                follow_redirects=False,
            )
            statuses.append(answer.status_code)
            if answer.status_code == 429:
                retry_after.append(int(answer.headers["retry-after"]))
            site.clock.advance(0.060)
    refused = statuses.count(429)
    assert refused >= 990, f"only {refused} of 1000 refused"
    assert statuses.count(401) == 1000 - refused
    # One address: 3 free failures, then waits of 1, 2, 4, 8, 16, 32 s: 8 checked in 60 s.
    assert site.verify.calls == 1000 - refused == 8  # scrypt ran only for the answered ones
    assert statuses[:3] == [401] * 3  # the first three are answered normally
    assert statuses[3] == 429
    assert min(retry_after) >= 1 and max(retry_after) <= 900
    # The audit log and the journal get a few lines, not one per attempt.
    audit = audit_of(site)
    assert audit.count(("login", "failed")) == 1
    assert audit.count(("login", "throttled")) == 1
    assert len(caplog.records) <= 8


def _owner_signs_in(client: TestClient):
    """The owner's sign-in from ``client``: the login form, then the right password; the answer
    (303 when signed in), not followed."""
    page = client.get("/login")
    return client.post(
        "/login", data={"csrf": form_token(page.text), "password": PASSWORD}, follow_redirects=False
    )


def test_a_flood_from_200_rotating_addresses_is_refused_and_the_owners_device_still_signs_in(
    site: Site,
):
    wrapped = FromAddress(site.app)
    owner = TestClient(wrapped)
    # The owner signed in from this phone before: it now carries a known-device cookie.
    answer = _owner_signs_in(owner)
    assert answer.status_code == 303
    device = owner.cookies[DEVICE_COOKIE]
    header = next(h for h in answer.headers.get_list("set-cookie") if h.startswith(DEVICE_COOKIE))
    assert "HttpOnly" in header and "SameSite=lax" in header and "Max-Age=2592000" in header
    owner.cookies.delete(COOKIE)  # signed out since (the session is gone, the device cookie not)

    # The flood runs the app in this thread (inthread_client); the stranger's browser is opened:
    # one event loop thread for its requests (unopened, each request starts its own).
    with InThreadClient(wrapped) as attacker, TestClient(wrapped) as stranger:
        token = form_token(attacker.get("/login").text)
        stranger_token = form_token(stranger.get("/login").text)
        addresses = [f"198.51.100.{n}" for n in range(100)]
        addresses += [f"2001:db8:{n:x}::{n + 1:x}" for n in range(100)]  # 100 different /64s
        statuses = []
        checked_before = site.verify.calls
        for n in range(1000):
            wrapped.address = addresses[n % len(addresses)]
            answer = attacker.post(
                "/login",
                data={"csrf": token, "password": "guess-guess-guess"},
                follow_redirects=False,
            )
            statuses.append(answer.status_code)
            site.clock.advance(0.060)
            if n == 500:
                # Mid-flood, from one of the flooding addresses (its own network was taken over):
                # a browser the page does not know is refused, the owner's known device signs in.
                wrapped.address = addresses[0]
                refused = stranger.post(
                    "/login",
                    data={"csrf": stranger_token, "password": PASSWORD},
                    follow_redirects=False,
                )
                assert refused.status_code == 429
                calls = site.verify.calls
                assert _owner_signs_in(owner).status_code == 303
                assert owner.get("/", follow_redirects=False).status_code == 200
                assert owner.cookies[DEVICE_COOKIE] == device  # the same device, renewed
                checked_before += site.verify.calls - calls
    refused = statuses.count(429)
    assert refused >= 990, f"only {refused} of 1000 refused"
    assert site.verify.calls - checked_before == 1000 - refused <= 9


def test_a_known_device_has_its_own_doubling_counter(site: Site):
    wrapped = FromAddress(site.app)
    owner = TestClient(wrapped)
    owner.post(
        "/login",
        data={"csrf": form_token(owner.get("/login").text), "password": PASSWORD},
    )
    owner.cookies.delete(COOKIE)
    token = form_token(owner.get("/login").text)
    answers = [
        owner.post("/login", data={"csrf": token, "password": "wrong-wrong-wrong"}).status_code
        for _ in range(4)
    ]
    assert answers == [401, 401, 401, 429]
    # Another browser at the same address is not affected by the device's count.
    other = TestClient(wrapped)
    other_token = form_token(other.get("/login").text)
    assert other.post("/login", data={"csrf": other_token, "password": "x" * 12}).status_code == 401


def test_ipv6_clients_are_throttled_by_their_64():
    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:db8:1:2:ffff:1:2:3")
    assert client_key("2001:db8:1:2::1") == "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("::ffff:192.0.2.7") == client_key("192.0.2.7") == "192.0.2.7"
    assert client_key("testclient") == "testclient"


def test_rotating_ipv6_addresses_in_one_64_share_a_lockout(site: Site):
    wrapped = FromAddress(site.app)
    client = TestClient(wrapped)
    token = form_token(client.get("/login").text)
    answers = []
    for n in range(4):
        wrapped.address = f"2001:db8:5:6::{n + 1:x}"
        answers.append(
            client.post("/login", data={"csrf": token, "password": "wrong-wrong"}).status_code
        )
    assert answers == [401, 401, 401, 429]


def test_a_locked_out_client_is_refused_even_with_the_right_password_without_scrypt(site: Site):
    token = site.login_csrf()
    for _ in range(3):
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
    for _ in range(2):
        site.client.post("/login", data={"csrf": token, "password": "wrong-wrong-wrong"})
    assert site.login().status_code == 303
    site.client.cookies.clear()  # the device cookie too: an ordinary client again
    token = site.login_csrf()
    answers = [
        site.client.post(
            "/login", data={"csrf": token, "password": "wrong-wrong-wrong"}
        ).status_code
        for _ in range(3)
    ]
    assert answers == [401] * 3


def test_the_throttle_is_per_client_and_capped_globally():
    throttle = LoginThrottle()
    now = 0.0
    for n in range(9):  # 9 clients, one failure each: under each client's limit
        assert throttle.retry_after(f"10.0.0.{n}", now) is None
        throttle.failed(f"10.0.0.{n}", now)
        now += 0.5
    # The global cap: a 10th failure within the minute is not even checked, from anyone.
    wait = throttle.retry_after("10.0.1.1", now)
    assert wait is not None and 1 <= wait <= 60
    assert throttle.retry_after("10.0.1.1", 60.0) is None  # the window moved on


def test_no_60_s_window_holds_more_than_9_checked_failures_or_8_from_one_address():
    """Everyone tries as often as they may, every 10 ms, for 5 minutes: a sliding window."""
    throttle = LoginThrottle()
    checked: list[tuple[float, str]] = []
    clients = ["10.0.0.1"] + [f"10.1.{n // 250}.{n % 250}" for n in range(2000)]
    for tick in range(30_000):
        now = tick * 0.01
        client = clients[0] if tick % 2 else clients[1 + (tick // 2) % 2000]
        if throttle.retry_after(client, now) is None:
            throttle.failed(client, now)
            checked.append((now, client))
    for start, _ in checked:
        window = [c for t, c in checked if start <= t < start + 60]
        assert len(window) <= 9
    lone = LoginThrottle(global_failures=None)
    times = []
    for tick in range(6000):
        if lone.retry_after("10.0.0.1", tick * 0.01) is None:
            lone.failed("10.0.0.1", tick * 0.01)
            times.append(tick * 0.01)
    assert len(times) == 8 and times[-1] < 60


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
        assert headers["referrer-policy"] == "same-origin", where
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


def test_sessions_are_bounded_per_pool_and_new_ids_are_random():
    sessions = Sessions(idle_s=60, max_anonymous=3, max_signed_in=2)
    owner = sessions.start(0.0, stamp="pw")
    made = [sessions.start(0.0) for _ in range(5)]
    assert len(sessions) == 4  # 3 anonymous + the owner
    assert sessions.get(made[0].id, 1.0, "pw", touch=True) is None  # the oldest anonymous went
    assert sessions.get(made[-1].id, 1.0, "pw", touch=True) is made[-1]
    assert sessions.get(owner.id, 1.0, "pw", touch=True) is owner  # never evicted by those
    assert len({s.id for s in made} | {s.csrf for s in made}) == 10
    # Signed-in sessions only make room among themselves, least recently used first.
    second = sessions.sign_in(made[-1].id, 2.0, "pw")
    sessions.get(owner.id, 3.0, "pw", touch=True)
    third = sessions.sign_in(None, 4.0, "pw")
    assert sessions.get(second.id, 5.0, "pw", touch=False) is None
    assert sessions.get(owner.id, 5.0, "pw", touch=False) is owner
    assert sessions.get(third.id, 5.0, "pw", touch=False) is third


def test_a_flood_of_login_page_visits_does_not_sign_the_owner_out(signed_in: Site):
    with InThreadClient(signed_in.app) as stranger:  # a flood: the app in this thread
        for _ in range(1000):  # twice the page's cap on unsigned sessions (500)
            stranger.cookies.clear()
            assert stranger.get("/login").status_code == 200
    assert len(signed_in.app.state.page.sessions) <= 501
    assert signed_in.client.get("/", follow_redirects=False).status_code == 200


# -- refusals cannot fill the disk -----------------------------------------------------------------

POST_ROUTES = (
    "/login",
    "/logout",
    "/actions/sync-now",
    "/actions/test-door",
    "/actions/diagnostics",
)


def test_cookieless_posts_leave_no_audit_rows_and_a_bounded_log(site: Site, caplog):
    caplog.set_level(logging.DEBUG, logger="kiosk")
    before = len(site.audit())
    with InThreadClient(site.app) as client:  # a flood: the app in this thread (inthread_client)
        for path in POST_ROUTES:
            for n in range(200):
                client.cookies.clear()
                headers = {"Origin": "http://evil.example"} if n % 2 else {}
                answer = client.post(
                    path,
                    data={"csrf": "guessed", "password": PASSWORD},
                    headers=headers,
                    follow_redirects=False,
                )
                assert answer.status_code == 403
                # 1,000 requests over 60 s: the log's limit is by time (a warning per 30 s),
                # so more requests in the same minute would prove nothing more.
                site.clock.advance(0.060)
    assert len(site.audit()) == before
    assert site.verify.calls == 0
    assert 1 <= len(caplog.records) <= 3  # one warning per 30 s, saying how many it left out
    assert "more since the last message" in caplog.records[-1].getMessage()


def test_a_signed_in_sessions_refusals_are_collapsed_per_minute(signed_in: Site, caplog):
    caplog.set_level(logging.DEBUG, logger="kiosk")
    before = len(signed_in.audit())
    with InThreadClient(signed_in.app, cookies=signed_in.client.cookies) as client:  # a flood
        for path in POST_ROUTES[1:]:
            for _ in range(250):
                answer = client.post(path, data={"csrf": "not-the-token"}, follow_redirects=False)
                assert answer.status_code == 403
                signed_in.clock.advance(0.12)  # 1,000 refusals in 2 minutes
    signed_in.clock.advance(60)
    assert signed_in.client.get("/live").status_code == 200  # writes the summaries now due
    rows = signed_in.audit()[: len(signed_in.audit()) - before]
    assert all(r.outcome == "csrf_refused" for r in rows)
    assert len(rows) <= 2 * len(POST_ROUTES[1:])  # per kind: the first, then one summary
    summaries = [r for r in rows if "refused in the last minute" in r.detail]
    assert sum(int(r.detail.split()[0]) for r in summaries) + len(rows) - len(summaries) == 1000
    assert len(caplog.records) <= 5


def test_one_audit_row_per_kind_per_minute_and_none_lost():
    limits = AuditLimiter()
    rows = []
    for tick in range(300):  # a wrong password every second for 5 minutes, from two addresses
        for row in limits.offer(
            "login:failed", float(tick), action="login", outcome="failed",
            detail="wrong password", client=f"10.0.0.{tick % 2}", authenticated=False,
        ):  # fmt: skip
            rows.append((tick, row))
    rows += [(300, row) for row in limits.due(300.0)]
    assert [tick for tick, _ in rows] == [0, 60, 120, 180, 240, 300]
    assert (
        rows[1][1].detail == "wrong password (after 59 refused in the last minute from 2 addresses)"
    )
    assert (
        rows[-1][1].detail
        == "59 refused in the last minute from 2 addresses (last: wrong password)"
    )
    counted = [int(row.detail.split("after ")[-1].split()[0]) if "after" in row.detail else 0
               for _, row in rows[:-1]]  # fmt: skip
    assert len(rows) - 1 + sum(counted) + 59 == 300


def test_audit_rows_from_unauthenticated_sources_are_capped_per_minute():
    limits = AuditLimiter()
    written = []
    for n in range(200):  # 200 kinds at once (the page has a handful): at most 30 rows a minute
        written += limits.offer(
            f"kind-{n}", 0.0, action="login", outcome="failed", detail="", client="x",
            authenticated=False,
        )  # fmt: skip
    assert len(written) == 30
    assert limits.due(30.0) == []
    later = limits.due(60.0)
    assert 0 < len(later) <= 30


# -- the Host header (DNS rebinding) ----------------------------------------------------------------


@pytest.mark.parametrize(
    "host", ["evil.example", "evil.example:8080", "rebind.attacker.test.", "a b", "[::1", "::1"]
)
@pytest.mark.parametrize("path", ["/healthz", "/login", "/", "/static/style.css"])
def test_another_host_name_is_refused_before_anything_else(site: Site, host: str, path: str):
    answer = site.client.get(path, headers={"Host": host}, follow_redirects=False)
    assert answer.status_code == 400
    assert answer.headers["content-type"].startswith("text/plain")
    assert "web.allowed_hosts" in answer.text and "<form" not in answer.text
    assert answer.headers["x-frame-options"] == "DENY"
    posted = site.client.post(
        "/login", data={"csrf": "x", "password": PASSWORD}, headers={"Host": host}
    )
    assert posted.status_code == 400 and site.verify.calls == 0


def test_ip_literals_localhost_and_this_machines_names_are_answered(tmp_path: Path):
    site = make_site(tmp_path, extra='host = "door.gym.example"\n')
    hostname = socket.gethostname()
    for host in (
        "127.0.0.1:8080", "192.168.1.20", "[::1]:8080", "[fe80::1]", "localhost",
        "LOCALHOST:8080", "localhost.", hostname, f"{hostname}.local:8080", "door.gym.example",
        "testserver",
    ):  # fmt: skip
        answer = site.client.get("/healthz", headers={"Host": host})
        assert answer.status_code == 200, host


def test_the_allowed_names():
    names = allowed_host_names("Pi-Door.lan", "::", ["Gym.Example.", " other.test ", ""])
    assert names == {
        "localhost", "pi-door.lan", "pi-door.lan.local", "pi-door", "pi-door.local",
        "gym.example", "other.test",
    }  # fmt: skip
    assert allowed_host("[2001:db8::1]:80", names) and allowed_host("10.0.0.1", names)
    assert allowed_host("PI-DOOR.local:8080", names)
    assert not allowed_host("pi-door.evil.test", names)
    assert not allowed_host("10.0.0.1:http", names)
    assert allowed_host(None, names)  # HTTP/1.0 without a Host: no browser, no rebinding
