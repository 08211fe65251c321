"""The member's pass page (/pass/) in a real browser: Debian's Chromium through Playwright against
the real reference cloud on loopback (SQLite, an injected clock).

A phone activates a pass from ``/pass/#activate=<code>``, keeps a non-extractable Ed25519 key,
and shows codes the door would accept: each test decodes screenshots of the QR code with
zxing-cpp and checks the signature with the public key the cloud stored. The page's clock is
Playwright's fake clock (tests/pass_capture.py), the cloud's a settable one: no test waits for
real time to pass, every wait is for something the page shows.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from html.parser import HTMLParser

import httpx
import pytest
from playwright.sync_api import expect

from cloud import admin, db, pass_web
from cloud import passes as cloud_passes
from cloud.embedded import EmbeddedCloud
from pass_capture import WAIT_MS, PassPhone, decode_png, moment_dt
from sync.passes import (
    SCHEME,
    parse_pass_body,
    public_key_from_text,
    signed_message,
    verify_signature,
)

expect.set_options(timeout=WAIT_MS)

# A moment 4 s into a 15 s step (so the page's countdown reads 11 s), in 2030.
T0 = 1_900_000_009.0
PERIOD_S = 15
ORG_NAME = "Iron Temple"
SHELL = {"", "app.js", "qr.js", "style.css", "manifest.webmanifest", "icon.svg"}


class SettableClock:
    """The cloud's clock: aware UTC datetimes of ``unix_s``, which the test moves."""

    def __init__(self, unix_s: float) -> None:
        self.unix_s = unix_s

    def __call__(self) -> datetime:
        return datetime.fromtimestamp(self.unix_s, UTC)


class Gym:
    """The running cloud, with one organisation and what the tests need to ask of it."""

    def __init__(self, cloud: EmbeddedCloud, clock: SettableClock) -> None:
        self.cloud = cloud
        self.clock = clock
        self.url = cloud.url
        self.database: db.Database = cloud.app.state.cloud.database
        made = admin.create_organization(self.database, ORG_NAME, "Main hall", "UTC", clock())
        self.org_id = made.organization_id

    def member(self, first_name: str) -> str:
        fields = {"first_name": first_name, "last_name": "Tester"}
        made = self.database.transact(
            lambda tx: admin.save_member(tx, self.org_id, None, fields, self.clock())
        )
        return made["id"]

    def activation_code(self, member_id: str) -> str:
        made = self.database.transact(
            lambda tx: cloud_passes.create_activation(tx, self.org_id, member_id, 15, self.clock())
        )
        return made["code"]

    def pass_row(self, pass_id: str) -> dict:
        row = self.database.transact(
            lambda tx: db.replica_row(tx, "pass", self.org_id, pass_id), write=False
        )
        assert row is not None, f"the cloud has no pass {pass_id}"
        return row

    def revoke(self, pass_id: str) -> None:
        self.database.transact(
            lambda tx: cloud_passes.revoke_pass(tx, self.org_id, pass_id, self.clock())
        )


@pytest.fixture(scope="module")
def gym(tmp_path_factory):
    clock = SettableClock(T0)
    folder = tmp_path_factory.mktemp("pass-cloud")
    cloud = EmbeddedCloud(f"sqlite:///{folder / 'cloud.db'}", clock=clock)
    cloud.start()
    try:
        yield Gym(cloud, clock)
    finally:
        cloud.stop()


@pytest.fixture
def phones():
    """Opens phones (``open(...)``, as PassPhone.open) and closes them after the test."""
    opened: list[PassPhone] = []

    def open_phone(*args, **kwargs) -> PassPhone:
        phone = PassPhone.open(*args, **kwargs)
        opened.append(phone)
        return phone

    yield open_phone
    for phone in opened:
        phone.close()
    for phone in opened:
        assert phone.script_problems == []


def assert_genuine(payload: str, gym: Gym, pass_id: str, step: int) -> None:
    """``payload`` is a well-formed code of ``pass_id`` for ``step``, signed by the key whose
    public half the cloud stored at activation."""
    scheme, _, body = payload.partition(":")
    assert scheme == SCHEME
    assert len(payload) == 122
    parsed = parse_pass_body(body)
    assert not isinstance(parsed, str), parsed
    assert (parsed.pass_id, parsed.step) == (pass_id, step)
    public_key = public_key_from_text(gym.pass_row(pass_id)["public_key"])
    message = signed_message(gym.org_id, pass_id, step)
    assert verify_signature(public_key, message, parsed.signature)


def wait_for_the_service_worker(page) -> None:
    """Until the page's service worker controls it (its files are cached). A function, not an
    expression: Playwright evaluates an expression with eval, which the page's CSP forbids."""
    page.wait_for_function("() => navigator.serviceWorker.controller !== null")


def wait_for_status(phone: PassPhone, outcome: str) -> None:
    phone.page.locator(f'html[data-status="{outcome}"]').wait_for(state="attached")


# -- served files --------------------------------------------------------------------------------


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.inline: list[str] = []

    def handle_starttag(self, tag, attrs):
        named = dict(attrs)
        self.refs += [v for k, v in attrs if k in ("src", "href") and v is not None]
        if tag == "script" and "src" not in named:
            self.inline.append("script without src")
        if tag == "style" or "style" in named:
            self.inline.append(f"style on {tag}")
        self.inline += [f"handler {k} on {tag}" for k in named if k.startswith("on")]


def test_the_page_and_its_files_are_served_with_strict_headers(gym):
    with httpx.Client(base_url=gym.url) as client:
        for path, (_, media_type, _) in pass_web.FILES.items():
            answer = client.get(f"/pass/{path}")
            assert answer.status_code == 200, path
            assert answer.headers["content-type"] == media_type
            csp = answer.headers["content-security-policy"]
            for directive in (
                "default-src 'none'",
                "script-src 'self'",
                "style-src 'self'",
                "connect-src 'self'",
                "frame-ancestors 'none'",
                "base-uri 'none'",
            ):
                assert directive in csp
            assert "unsafe" not in csp and "http" not in csp
            assert answer.headers["x-content-type-options"] == "nosniff"
            assert answer.headers["referrer-policy"] == "no-referrer"
            assert answer.headers["x-frame-options"] == "DENY"
            expected_cache = "no-store" if path in ("", "sw.js") else "no-cache"
            assert answer.headers["cache-control"] == expected_cache

        page = client.get("/pass/").text
        links = _Links()
        links.feed(page)
        assert links.inline == []  # the CSP would block them: none are needed
        assert set(links.refs) <= SHELL  # only our own files, all of them cached
        assert not re.search(r"https?://", page)

        worker = client.get("/pass/sw.js").text
        assert f'"{pass_web.SHELL_VERSION}"' in worker and "__SHELL_VERSION__" not in worker

        manifest = json.loads(client.get("/pass/manifest.webmanifest").text)
        assert manifest["start_url"] == manifest["scope"] == "/pass/"
        assert manifest["display"] == "standalone"
        assert manifest["name"] and manifest["short_name"]
        assert manifest["theme_color"] and manifest["background_color"]
        assert [icon["src"] for icon in manifest["icons"]] == ["icon.svg"]

        moved = client.get("/pass")
        assert (moved.status_code, moved.headers["location"]) == (308, "/pass/")
        assert client.get("/pass/missing.js").status_code == 404
        assert client.get("/pass/../cloud/app.py").status_code == 404


# -- the page at work ----------------------------------------------------------------------------


def test_a_member_activates_and_the_phone_shows_signed_codes_offline_too(gym, browser, phones):
    gym.clock.unix_s = T0
    member_id = gym.member("Alice")
    phone = phones(browser, gym.url, at=T0, activation_code=gym.activation_code(member_id))
    page = phone.page
    first = phone.capture(T0)
    # The activation code is gone from the address (history, bookmarks, screenshots).
    assert page.url == phone.url
    expect(page.get_by_test_id("gym-name")).to_have_text(ORG_NAME)
    expect(page.get_by_test_id("member-name")).to_have_text("Alice")
    expect(page.get_by_test_id("countdown")).to_have_text("New code in 11 s")
    assert page.get_by_test_id("qr").get_attribute("data-version") == "5"

    key = phone.stored_key_facts()
    assert key["isCryptoKey"] and key["type"] == "private" and key["algorithm"] == "Ed25519"
    assert key["extractable"] is False
    assert key["exportError"] == "InvalidAccessError"
    assert key["usages"] == ["sign"]
    pass_id = key["passId"]
    row = gym.pass_row(pass_id)
    assert (row["member_id"], row["status"], int(row["period_s"])) == (member_id, "ACTIVE", 15)
    assert_genuine(first.payload, gym, pass_id, int(T0 // PERIOD_S))

    # Online, the page asked the cloud: the pass stands, the clocks agree.
    wait_for_status(phone, "answered-200")
    expect(page.get_by_test_id("revoked")).to_be_hidden()
    expect(page.get_by_test_id("clock-warning")).to_be_hidden()

    # The service worker has the app shell; the network goes away; the page reopens from it.
    wait_for_the_service_worker(page)
    phone.context.set_offline(True)
    answer = page.reload()
    assert answer is not None and answer.ok and answer.from_service_worker
    later = T0 + 3 * PERIOD_S + 7
    gym.clock.unix_s = later
    second = phone.capture(later)
    assert second.step == first.step + 3
    assert second.payload != first.payload
    assert_genuine(second.payload, gym, pass_id, second.step)
    expect(page.get_by_test_id("member-name")).to_have_text("Alice")
    expect(page.get_by_test_id("offline")).to_be_visible()
    wait_for_status(phone, "offline")

    # What the worker keeps is the shell and nothing else: never an API answer.
    cached = page.evaluate(
        """async () => {
            const paths = [];
            for (const name of await caches.keys()) {
                const cache = await caches.open(name);
                for (const request of await cache.keys()) {
                    paths.push(new URL(request.url).pathname);
                }
            }
            return paths;
        }"""
    )
    assert sorted(cached) == sorted(f"/pass/{name}" for name in SHELL)


def test_each_step_has_its_own_code_and_the_countdown_follows(gym, browser, phones):
    gym.clock.unix_s = T0
    phone = phones(browser, gym.url, at=T0, activation_code=gym.activation_code(gym.member("Eve")))
    phone.capture(T0)
    pass_id = phone.stored_key_facts()["passId"]
    codes = {}
    # The first moment of the next step, 5 s later (same step), the next, and far later.
    for offset in (11, 16, 26, 10 * PERIOD_S):
        moment = T0 + offset
        gym.clock.unix_s = moment
        shot = phone.capture(moment)
        assert_genuine(shot.payload, gym, pass_id, int(moment // PERIOD_S))
        left = PERIOD_S - int(moment) % PERIOD_S
        expect(phone.page.get_by_test_id("countdown")).to_have_text(f"New code in {left} s")
        codes.setdefault(shot.step, set()).add(shot.payload)
    # One code per step (Ed25519 signatures are deterministic), a new one every step.
    assert [len(same) for same in codes.values()] == [1, 1, 1]
    assert len(set().union(*codes.values())) == 3


def test_a_spent_activation_link_says_so_plainly(gym, browser, phones):
    gym.clock.unix_s = T0
    code = gym.activation_code(gym.member("Bob"))
    first = phones(browser, gym.url, at=T0, activation_code=code)
    first.capture(T0)

    again = phones(browser, gym.url, at=T0, activation_code=code)
    page = again.page
    expect(page.get_by_test_id("problem")).to_be_visible()
    expect(page.get_by_test_id("problem")).to_contain_text("already been used or has expired")
    expect(page.get_by_test_id("problem-detail")).to_contain_text("front desk")
    expect(page.get_by_test_id("retry")).to_be_hidden()
    expect(page.get_by_test_id("pass")).to_be_hidden()
    assert page.url == again.url  # a spent code is dropped from the address too


def test_a_phone_without_its_pass_says_to_activate_again_and_how_to_keep_it(gym, browser, phones):
    phone = phones(browser, gym.url, at=T0)
    page = phone.page
    missing = page.get_by_test_id("missing")
    expect(missing).to_be_visible()
    expect(missing).to_contain_text("needs activating again at the front desk")
    expect(missing).to_contain_text("7 days")
    help_ = page.get_by_test_id("install-help")
    expect(help_).to_be_visible()
    expect(help_).to_contain_text("Add to Home Screen")
    expect(page.get_by_test_id("pass")).to_be_hidden()

    # Installable: Chromium's own check finds nothing wrong but the private window itself.
    wait_for_the_service_worker(page)
    session = phone.context.new_cdp_session(page)
    errors = session.send("Page.getInstallabilityErrors")["installabilityErrors"]
    assert [e["errorId"] for e in errors] in ([], ["in-incognito"])
    manifest = session.send("Page.getAppManifest")
    assert manifest["errors"] == []


def test_a_revoked_pass_is_shown_as_cancelled_and_stays_so_offline(gym, browser, phones):
    gym.clock.unix_s = T0
    phone = phones(browser, gym.url, at=T0, activation_code=gym.activation_code(gym.member("Rex")))
    phone.capture(T0)
    pass_id = phone.stored_key_facts()["passId"]
    wait_for_status(phone, "answered-200")
    gym.revoke(pass_id)

    page = phone.page
    page.reload()
    wait_for_status(phone, "revoked")
    expect(page.get_by_test_id("revoked")).to_be_visible()
    expect(page.get_by_test_id("revoked")).to_contain_text("cancelled")
    expect(page.get_by_test_id("pass")).to_be_hidden()

    wait_for_the_service_worker(page)
    phone.context.set_offline(True)
    page.reload()
    expect(page.get_by_test_id("revoked")).to_be_visible()
    expect(page.get_by_test_id("pass")).to_be_hidden()


def test_a_phone_clock_far_off_the_clouds_is_pointed_out(gym, browser, phones):
    gym.clock.unix_s = T0
    code = gym.activation_code(gym.member("Carol"))
    # The phone's clock is five minutes ahead of the cloud's.
    phone = phones(browser, gym.url, at=T0 + 300, activation_code=code)
    shot = phone.capture(T0 + 300)
    pass_id = phone.stored_key_facts()["passId"]
    assert_genuine(shot.payload, gym, pass_id, int((T0 + 300) // PERIOD_S))
    wait_for_status(phone, "answered-403")
    warning = phone.page.get_by_test_id("clock-warning")
    expect(warning).to_be_visible()
    expect(phone.page.get_by_test_id("clock-detail")).to_have_text("It is 5 minutes fast.")
    # The code is still shown: a door with the same wrong clock would still take it.
    expect(phone.page.get_by_test_id("pass")).to_be_visible()


def test_a_code_typed_on_the_page_activates_it(gym, browser, phones):
    """The way in for a Home Screen icon, which no link opens: the code typed by hand, in any
    case, with spaces or dashes."""
    gym.clock.unix_s = T0
    code = gym.activation_code(gym.member("Dora"))
    phone = phones(browser, gym.url, at=T0)
    page = phone.page
    expect(page.get_by_test_id("missing")).to_be_visible()
    page.get_by_test_id("code-input").fill("nope")
    page.get_by_test_id("code-submit").click()
    expect(page.get_by_test_id("problem")).to_contain_text("not an activation code")

    typed = "-".join(code[i : i + 4] for i in range(0, 16, 4)).lower()
    page.get_by_test_id("code-input").fill(typed)
    page.get_by_test_id("code-submit").click()
    shot = phone.capture(T0)
    expect(page.get_by_test_id("member-name")).to_have_text("Dora")
    expect(page.get_by_test_id("missing")).to_be_hidden()
    expect(page.get_by_test_id("problem")).to_be_hidden()
    assert_genuine(shot.payload, gym, phone.stored_key_facts()["passId"], int(T0 // PERIOD_S))


def test_on_iphone_safari_the_link_offers_the_home_screen_first(gym, browser, phones):
    gym.clock.unix_s = T0
    code = gym.activation_code(gym.member("Ivy"))
    phone = phones(browser, gym.url, at=T0, activation_code=code, iphone_safari=True)
    page = phone.page
    choice = page.get_by_test_id("ios-choice")
    expect(choice).to_be_visible()
    expect(choice).to_contain_text("Add to Home Screen")
    grouped = " ".join(code[i : i + 4] for i in range(0, 16, 4))
    expect(page.get_by_test_id("ios-code")).to_have_text(grouped)
    assert page.url == phone.url  # the code left the address before anything else
    expect(page.get_by_test_id("pass")).to_be_hidden()

    page.get_by_test_id("activate-here").click()
    shot = phone.capture(T0)
    expect(choice).to_be_hidden()
    assert_genuine(shot.payload, gym, phone.stored_key_facts()["passId"], int(T0 // PERIOD_S))


def test_a_mangled_link_says_so(gym, browser, phones):
    phone = phones(browser, gym.url, at=T0, activation_code="SHORT%ZZ")
    page = phone.page
    expect(page.get_by_test_id("problem")).to_contain_text("does not work")
    expect(page.get_by_test_id("missing")).to_be_visible()
    assert page.url == phone.url


def test_a_phone_clock_set_right_again_shows_the_right_code_at_once(gym, browser, phones):
    gym.clock.unix_s = T0
    code = gym.activation_code(gym.member("Finn"))
    phone = phones(browser, gym.url, at=T0 + 300, activation_code=code)
    fast = phone.capture(T0 + 300)
    pass_id = phone.stored_key_facts()["passId"]
    # The member sets the clock right: it goes back five minutes; a second later the page
    # shows the code of the true time, not the future one it showed before.
    phone.page.clock.set_system_time(moment_dt(T0 + 2))
    phone.page.clock.run_for(1000)
    phone.wait_for_step(int((T0 + 3) // PERIOD_S))
    shot = phone.qr().screenshot()
    (payload,) = decode_png(shot)
    assert payload != fast.payload
    assert_genuine(payload, gym, pass_id, int((T0 + 3) // PERIOD_S))
