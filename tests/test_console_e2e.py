"""End to end, the front-desk console in a real browser: Debian's Chromium (through Playwright)
against the real reference cloud served by uvicorn on 127.0.0.1 (SQLite, an injected clock), its
live feed's poller running by itself, and a door enrolled from the console whose real sync agent
(``SyncAgent`` over real HTTP) pulls the members the desk made and uploads what the real reader
and ``DoorLoop`` decided.

- The first owner comes from the command line's invite (``kiosk cloud invite``, in process) and
  joins in browser A; A invites the front desk on the Staff page; browser B opens the link, sets a
  password and is signed in as staff.
- B adds a member with a class pack of 5 on the Members pages and opens the card's print page;
  the card as Chromium draws it is held up to the door's camera (tests/phone_frames.py, without
  the screen's artefacts: it is paper). The owner enrols the door on the Doors page, the agent
  pulls once, the door admits the card (``class_pack``), the agent uploads, and the check-in
  appears on B's Today page without a reload (server-sent events from ``/console/live``).
- B issues a phone pass on the member's page; its activation link (read from the page, and the
  QR code on the page decoded to the same link) is opened in a third browser (tests/
  pass_capture.py's ``PassPhone``); one pull, and past the anti-passback window the pass's code
  is admitted; uploaded, it appears live on B's Today page marked "phone pass".
- A trainer (made as the test rig makes accounts, signed in through the sign-in form) is assigned
  one other member on the trainer's Staff page: Members and Today show that member only (live
  too), the class-pack member's page answers 404.
- Forged POSTs from pages of other origins (another site, and another port of the same host,
  which the browser counts as the same site and so sends the session cookie to, even holding
  the session's real form token) to the member's edit and pause routes change nothing: the
  member's row and the audit log stay as they were.

No wait depends on real time: the pages are waited for by what they show (the live rows arrive
through the server's own poller), the door by the outcomes of the frames it was shown, the agent
by its cycle's report. The cloud's clock is a ``pg.FakeClock`` set to the door's time at each
sync; the phone's is Playwright's paused fake clock.
"""

from __future__ import annotations

import contextlib
import io
import json
import urllib.parse
from datetime import UTC, datetime, timedelta
from itertools import count

from gpiozero.pins.mock import MockFactory
from playwright.sync_api import expect

from cloud import admin
from cloud import cli as cloud_cli
from cloud.console import accounts, auth
from e2e_helpers import DOOR, DeviceIdentityParts, Kiosk, running_site
from fakes import ManualTimer
from hardware.fakes.signal import RecordingSignal
from hardware.gpio.relay import RelayDoor
from kiosk import __version__
from kiosk.config import default_config
from kiosk.core.clock import AnchoredClock, SimClock
from kiosk.core.model import ClockQuality, Reason, Verdict
from kiosk.data.store import Store
from kiosk.door.loop import PASS, DoorLoop, Outcome, ScannerSettings
from kiosk.door.parts import build_reader
from kiosk.sync.agent import CycleReport, SyncAgent, SyncSettings
from kiosk.sync.client import CloudClient
from pass_capture import PassPhone, decode_png
from pg import FakeClock
from phone_frames import FPS, ScriptedCamera, empty_scene, phone_frame
from webrig import LAPTOP, HostileSite, auto_post_page

# A weekday morning, 4 s into a pass's 15 s step.
T0 = datetime(2026, 5, 6, 9, 0, 4, tzinfo=UTC)
PASSWORD = "seven quiet otters rowing"  # noqa: S105 - meets the console's password rules
DEBOUNCE_S = 3.0
RELAY_PIN = 17
PULSE_MS = 500
PASSBACK = timedelta(minutes=default_config().policy.passback_minutes)
HOLD_FRAMES = 10  # a third of a second in front of the camera
AWAY_FRAMES = int((DEBOUNCE_S + 1) * FPS)  # then away for longer than the debounce window
# Deadlines for events that come much sooner (a page drawn, a live row arriving through the
# poller), never delays relied on: generous for a loaded 2-core machine.
WAIT_MS = 30_000
HTTP_TIMEOUT_S = 60.0


def unix(moment: datetime) -> float:
    return moment.timestamp()


class Door:
    """One door enrolled with a code from the console: its store, its sync agent (as ``kiosk
    sync`` wires it) and its door loop (as ``kiosk door run`` wires it: the configured reader, an
    anchored clock) on mock pins and a scripted camera, all on one simulated clock. ``sync``
    sets the cloud's clock to the door's first."""

    def __init__(self, tmp_path, url: str, code: str, cloud_clock: FakeClock) -> None:
        with CloudClient(url, None, software_version=__version__) as client:
            enrolment = client.enrol(code, "front door", __version__)
        root = tmp_path / "kiosk"
        root.mkdir()
        self.kiosk = Kiosk(root, DeviceIdentityParts(enrolment))
        self.kiosk.point_at(url)
        self.kiosk.write_config()
        self.cloud_clock = cloud_clock
        self.clock = SimClock(cloud_clock(), quality=ClockQuality.NTP_SYNCED, boot="boot-1")
        self.store = Store.open(self.kiosk.db)
        self.client = CloudClient(
            url, self.kiosk.identity.token, clock=self.clock, timeout_s=HTTP_TIMEOUT_S
        )
        self.agent = SyncAgent(
            self.store, self.client, SyncSettings(), self.clock, sleep=self._no_sleep
        )
        self.camera = ScriptedCamera(self.clock)
        self.pins = MockFactory()
        self.relay = RelayDoor(RELAY_PIN, active_high=True, max_pulse_ms=3000,
                               pin_factory=self.pins, timer=ManualTimer(),
                               clock_ns=self.clock.monotonic_ns)  # fmt: skip
        self.outcomes: list[Outcome] = []
        self.loop = DoorLoop(
            source=self.camera,
            reader=build_reader(default_config().decoder),
            store=self.store,
            door=self.relay,
            signal=RecordingSignal(),
            clock=AnchoredClock(self.clock, self.store.latest_anchor),
            settings=ScannerSettings(door_id=DOOR, pulse_ms=PULSE_MS, debounce_s=DEBOUNCE_S),
            on_outcome=self.outcomes.append,
        )
        self._seeds = count(1)
        self._away = [empty_scene(seed) for seed in (0, 1, 2)]

    @staticmethod
    def _no_sleep(seconds: float) -> None:
        raise AssertionError(f"a single sync cycle never sleeps (asked for {seconds} s)")

    def now(self) -> float:
        return unix(self.clock.wall())

    def move_to(self, unix_s: float) -> None:
        ahead = unix_s - self.now()
        assert ahead >= 0, "the door's clock only moves forward in this test"
        self.clock.advance(ahead)

    def sync(self) -> CycleReport:
        """One agent cycle (push, pull, heartbeat), the cloud's clock at the door's time."""
        self.cloud_clock.now = self.clock.wall()
        report = self.agent.cycle()
        assert report.ok, report.error
        return report

    def show(self, png: bytes, *, screen: float) -> Outcome:
        """An image (``png``: a card, ``screen`` 0, or a phone's screen, ``screen`` 1) held up to
        the camera, then taken away: every frame goes through the door loop; exactly one
        decision comes of it, which is returned."""
        seed = next(self._seeds)
        views = [phone_frame(png, screen=screen, seed=100 * seed + n) for n in range(3)]
        self.camera.show(views, HOLD_FRAMES)
        self.camera.show(self._away, AWAY_FRAMES)
        before = len(self.outcomes)
        while self.camera.pending:
            self.loop.step()
        decided = self.outcomes[before:]
        assert len(decided) == 1, [o.decision for o in decided]
        return decided[0]

    def close(self) -> None:
        self.relay.close()
        self.client.close()
        self.store.close()


def cli_invite(db_url: str, org_id: str, email: str, base_url: str) -> str:
    """``kiosk cloud invite --json`` (the command line's own code, in process): the link."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cloud_cli.main(
            ["invite", "--db", db_url, "--org", org_id, "--email", email, "--role", "owner",
             "--base-url", base_url, "--json"]
        )  # fmt: skip
    assert code == 0, out.getvalue()
    return json.loads(out.getvalue())["link"]


def new_browser(browser):
    """A fresh browser context (its own cookies) on a laptop screen, and its first page."""
    context = browser.new_context(viewport=LAPTOP, device_scale_factor=1)
    context.set_default_timeout(WAIT_MS)
    return context, context.new_page()


def join(page, link: str, name: str) -> None:
    """Open an invite link, choose a name and PASSWORD: signed in (the answer is a redirect)."""
    page.goto(link)
    # The page's script moved the token from the address into the form.
    expect(page.locator("input[name=token]")).not_to_have_value("", timeout=WAIT_MS)
    assert "#" not in page.url
    page.fill("input[name=name]", name)
    page.fill("input[name=password]", PASSWORD)
    page.fill("input[name=password2]", PASSWORD)
    page.get_by_role("button", name="Create my account").click()
    expect(page.locator(".me .who")).to_contain_text(name, timeout=WAIT_MS)


def go(page, section: str) -> None:
    """Follow a link of the navigation bar."""
    page.locator("nav.nav").get_by_role("link", name=section, exact=True).click()


def open_today(page, base: str) -> None:
    """Today, waited for until its live stream is open (the server sent ``ready``); marks the
    window so that a reload would show (the mark would be gone)."""
    page.goto(f"{base}/console/")
    expect(page.locator("[data-live-state]")).to_have_text("live", timeout=WAIT_MS)
    page.evaluate("window.__sameDocument = true")


def live_row(page, checkin_id: str):
    return page.locator(f'tbody[data-live] tr[data-id="{checkin_id}"]')


def same_document(page) -> bool:
    return page.evaluate("window.__sameDocument === true")


def member_row(site, member_id: str) -> dict:
    return site.read(lambda tx: tx.one("SELECT * FROM members WHERE id = ?", (member_id,)))


def audit_rows(site) -> list[dict]:
    return site.read(
        lambda tx: tx.all(
            "SELECT * FROM audit_log WHERE organization_id = ? ORDER BY id", (site.org_id,)
        )
    )


def test_the_desk_runs_the_day_in_a_browser(tmp_path, browser):
    db_url = f"sqlite:///{tmp_path / 'cloud.db'}"
    cloud_clock = FakeClock(T0)
    with running_site(db_url, clock=cloud_clock) as site, contextlib.ExitStack() as stack:
        base = site.url
        stack.callback(lambda: [c.close() for c in list(browser.contexts)])

        # -- 1. the owner from the command line, the front desk invited in the console ----------
        owner_link = cli_invite(db_url, site.org_id, "olga.owner@acme.test", base)
        assert owner_link.startswith(f"{base}/console/invite#")
        _owner_ctx, owner = new_browser(browser)
        join(owner, owner_link, "Olga Owner")
        go(owner, "Staff")
        owner.fill("input[name=email]", "sam.desk@acme.test")
        owner.select_option("select[name=role]", "staff")
        owner.get_by_role("button", name="Make an invitation link").click()
        staff_link = owner.locator("input[data-copy-source]").input_value()
        assert staff_link.startswith(f"{base}/console/invite#")

        desk_ctx, desk = new_browser(browser)
        join(desk, staff_link, "Sam Desk")
        assert desk.url == f"{base}/console/"  # the front desk lands on Today
        nav = desk.locator("nav.nav a").all_inner_texts()
        assert nav == ["Today", "Members", "Doors"]

        # -- 2. a member with a class pack of 5, added on the Members pages; the card printed ---
        go(desk, "Members")
        desk.get_by_role("link", name="Add a member").click()
        card_code = desk.locator("input[name=code]").input_value()  # the random code offered
        assert len(card_code) == 14
        desk.fill("input[name=first_name]", "Cara")
        desk.fill("input[name=last_name]", "Pack")
        desk.fill("input[name=phone]", "+44 7700 900123")
        desk.get_by_role("button", name="Add the member").click()
        expect(desk.locator("h1")).to_contain_text("Cara Pack", timeout=WAIT_MS)
        cara = urllib.parse.urlsplit(desk.url).path.rsplit("/", 1)[-1]
        desk.locator('a[href$="/memberships/new?type=CLASS_PACK"]').click()
        desk.fill("input[name=remaining_classes]", "5")
        desk.get_by_role("button", name="Add the class pack").click()
        expect(desk.locator("table.memberships tbody tr")).to_have_count(1, timeout=WAIT_MS)
        expect(desk.locator("table.memberships tbody td").nth(3)).to_have_text("5")
        desk.get_by_role("link", name="Print the card").click()
        card = desk.locator("img.member-card")
        card.wait_for()
        desk.wait_for_function(
            "img => img.complete && img.naturalWidth > 0", arg=card.element_handle()
        )
        card_png = card.screenshot()
        assert decode_png(card_png) == [card_code]  # what the printer gets holds the code

        # Another member, made as an integration would (admin service functions), for the trainer.
        def make_tess(tx):
            now = cloud_clock()
            made = admin.save_member(
                tx, site.org_id, None,
                {"first_name": "Tess", "last_name": "Trained", "code": "TESS-0001"}, now,
            )  # fmt: skip
            admin.save_membership(
                tx, site.org_id, None,
                {"member_id": made["id"], "type": "SUBSCRIPTION", "start_date": "2026-01-01"},
                now,
            )  # fmt: skip
            return made["id"]

        tess = site.write(make_tess)

        # -- the door: enrolled with a code from the Doors page, one pull ---------------------
        go(owner, "Doors")
        owner.get_by_role("button", name="Make an enrolment code").click()
        door_code = owner.locator("input[data-copy-source]").input_value()
        door = Door(tmp_path, base, door_code, cloud_clock)
        stack.callback(door.close)
        assert door.sync().pull == "snapshot"

        # -- 4 (set up). a trainer, made as the rig makes accounts, given Tess on the Staff page
        trainer_user = site.write(
            lambda tx: accounts.add_staff(
                tx, site.org_id, "tia.trainer@acme.test", "Tia Trainer", "trainer",
                auth.hash_password(PASSWORD), cloud_clock(), "rig",
            )
        )  # fmt: skip
        go(owner, "Staff")
        owner.locator(f'a[href="/console/staff/{trainer_user.id}"]').click()
        owner.fill("input[name=member_id]", tess)
        owner.get_by_role("button", name="Assign", exact=True).click()
        expect(owner.locator("[role=status]")).to_have_text(
            "The member was assigned.", timeout=WAIT_MS
        )

        _trainer_ctx, trainer = new_browser(browser)
        trainer.goto(f"{base}/console/login")
        trainer.fill("input[name=email]", "tia.trainer@acme.test")
        trainer.fill("input[name=password]", PASSWORD)
        trainer.get_by_role("button", name="Sign in").click()
        expect(trainer.locator("h1")).to_have_text("Your members", timeout=WAIT_MS)
        names = trainer.locator("table.members tbody tr td:first-child a").all_inner_texts()
        assert names == ["Trained, Tess"]
        assert trainer.locator("nav.nav a").all_inner_texts() == ["Today", "Members"]
        refused = trainer.goto(f"{base}/console/members/{cara}")
        assert refused is not None and refused.status == 404
        assert "Cara" not in trainer.content()

        # Both Today pages open, their live streams ready.
        open_today(desk, base)
        open_today(trainer, base)

        # -- 2 (door). Cara's card and Tess's card at the door; one upload --------------------
        by_card = door.show(card_png, screen=0.0)
        assert by_card.decision.verdict is Verdict.GRANTED, by_card.decision
        assert by_card.decision.reason is Reason.CLASS_PACK
        assert (by_card.decision.member_id, by_card.relay_ms) == (cara, PULSE_MS)
        tess_png = owner.context.request.get(f"{base}/console/members/{tess}/card.png").body()
        by_tess = door.show(tess_png, screen=0.0)
        assert (by_tess.decision.reason, by_tess.decision.member_id) == (
            Reason.SUBSCRIPTION,
            tess,
        )
        assert door.sync().pushed == 2

        # Live on the desk's Today, no reload: both rows.
        cara_row = live_row(desk, by_card.checkin.id)
        expect(cara_row).to_be_visible(timeout=WAIT_MS)
        expect(cara_row).to_contain_text("Cara Pack")
        expect(cara_row.locator(".decision")).to_have_text("Admitted")
        expect(live_row(desk, by_tess.checkin.id)).to_be_visible(timeout=WAIT_MS)
        expect(desk.locator('[data-total="admitted"]')).to_have_text("2")
        assert same_document(desk)
        # Live on the trainer's: Tess only (the two rows were uploaded, and polled, together).
        expect(live_row(trainer, by_tess.checkin.id)).to_be_visible(timeout=WAIT_MS)
        expect(trainer.locator("tbody[data-live] tr[data-id]")).to_have_count(1)
        expect(trainer.locator('[data-total="admitted"]')).to_have_text("1")
        assert same_document(trainer)

        # -- 3. a phone pass issued on the member's page (in another tab of the desk) ---------
        desk_tab = desk_ctx.new_page()
        desk_tab.goto(f"{base}/console/members/{cara}")
        desk_tab.get_by_role("button", name="Issue a phone pass").click()
        link = desk_tab.locator("code.breakall").text_content()
        assert link is not None and link.startswith(f"{base}/pass/#activate=")
        shown_qr = desk_tab.locator("img.activation-qr")
        desk_tab.wait_for_function(
            "img => img.complete && img.naturalWidth > 0", arg=shown_qr.element_handle()
        )
        assert decode_png(shown_qr.screenshot()) == [link]
        activation_code = link.split("#activate=", 1)[1]

        phone = PassPhone.open(browser, base, at=door.now(), activation_code=activation_code)
        phone.page.locator('html[data-status="answered-200"]').wait_for(state="attached")
        pass_id = phone.stored_key_facts()["passId"]
        phone.context.set_offline(True)
        pulled = door.sync()
        assert pulled.pull == "changes"
        assert door.store.find_pass(pass_id) is not None

        # Past the anti-passback window of Cara's card entry.
        later = int(unix(by_card.checkin.wall_time + PASSBACK)) + 60
        shot = phone.capture(later)
        door.move_to(later)
        by_phone = door.show(shot.png, screen=1.0)
        assert by_phone.decision.verdict is Verdict.GRANTED, by_phone.decision
        assert by_phone.decision.reason is Reason.CLASS_PACK
        assert (by_phone.credential, by_phone.pass_id) == (PASS, pass_id)
        assert by_phone.decision.member_id == cara
        assert phone.script_problems == []
        assert door.sync().pushed == 1

        phone_row = live_row(desk, by_phone.checkin.id)
        expect(phone_row).to_be_visible(timeout=WAIT_MS)
        expect(phone_row).to_contain_text("phone pass")
        expect(phone_row).to_contain_text("Cara Pack")
        expect(desk.locator('[data-total="admitted"]')).to_have_text("3")
        assert same_document(desk)
        # The trainer's page, loaded again, still shows Tess's check-in only.
        trainer.reload()
        expect(trainer.locator("tbody[data-live] tr[data-id]")).to_have_count(1, timeout=WAIT_MS)
        expect(live_row(trainer, by_tess.checkin.id)).to_be_visible()

        # Two classes used: the member's page says 3 left, the visits show the pass.
        desk_tab.goto(f"{base}/console/members/{cara}")
        expect(desk_tab.locator("table.memberships tbody td").nth(3)).to_have_text("3")
        visits = desk_tab.locator("table.visits tbody tr")
        expect(visits).to_have_count(2)
        expect(visits.first).to_contain_text("phone pass")

        # -- 5. forged POSTs from other origins, with the desk's cookies in the browser --------
        before_member, before_audit = member_row(site, cara), audit_rows(site)
        csrf = desk_tab.locator("input[name=csrf]").first.input_value()
        edit = {"first_name": "Mallory", "last_name": "Pack", "phone": "", "code": "EVIL-0001",
                "version": str(before_member["version"])}  # fmt: skip
        forgeries = [
            # Another site (localhost is not 127.0.0.1): the SameSite=Strict cookie stays home.
            (f"/console/members/{cara}/pause", {}, "localhost", False),
            # Another port of the same host: the same site, so the cookie goes, and the form
            # even carries the session's own token; the origin check alone refuses it.
            (f"/console/members/{cara}/edit", {**edit, "csrf": csrf}, "127.0.0.1", True),
            (f"/console/members/{cara}/pause", {"csrf": csrf}, "127.0.0.1", True),
        ]
        for path, fields, host, cookie_sent in forgeries:
            with HostileSite(auto_post_page(f"{base}{path}", fields)) as hostile:
                with desk_tab.expect_response(lambda r, p=path: r.url == f"{base}{p}") as got:
                    # Back as soon as the page is on its way: its script submits the form at once.
                    desk_tab.goto(f"http://{host}:{hostile.port}/", wait_until="commit")
                answer = got.value
                assert answer.status == 403, (path, host, answer.status)
                headers = answer.request.all_headers()
                assert headers.get("origin") == f"http://{host}:{hostile.port}"
                assert ("console_session=" in headers.get("cookie", "")) is cookie_sent, headers
                expect(desk_tab.locator("main")).to_contain_text("Nothing was changed")
        assert member_row(site, cara) == before_member
        assert audit_rows(site) == before_audit

        # What the console did is in the audit log, once each.
        actions = [row["action"] for row in audit_rows(site)]
        for action in ("staff.invite", "staff.join", "member.create", "membership.create",
                       "door.enrolment_code", "trainer.assign", "pass.activation"):  # fmt: skip
            assert action in actions, actions
        assert actions.count("staff.invite") == 2  # the command line's and the owner's
