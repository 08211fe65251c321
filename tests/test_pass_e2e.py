"""End to end, a phone pass from the member's browser to the door's relay and back to the cloud:
the real reference cloud on loopback (SQLite, an injected clock), a pass activated in Debian's
Chromium (through Playwright) from a link made with the admin API, its codes captured with the
phone offline, a device enrolled in the cloud whose sync agent (``SyncAgent`` over real HTTP)
pulls the pass into its replica, and the door's real pipeline: the screenshots seen by a camera
(tests/phone_frames.py: scaled into a 640x480 frame, turned, with moire and glare), the reader the
door builds (``QrReader`` over zxing-cpp) and the real ``DoorLoop`` on mock pins.

- the fresh code admits its member (credential ``pass``, the pass's id in the journal row, one
  relay pulse); the same screenshot shown again after the debounce window is ``token_replayed``;
  a screenshot taken two minutes before the door's time is ``token_expired``;
- revoked with the admin API and pulled once, the pass's next code is ``unknown_code`` (revoked);
- uploaded, the cloud holds each of the door's check-ins once, each with the pass's id.

One clock for the cloud, the page and the device: the cloud's is settable (``pg.FakeClock``), the
page's is Playwright's paused fake clock, the device's a ``SimClock`` that the camera moves on by
one frame interval a frame. No wait depends on real time: the page is waited for by what it
draws, the replica by the pull's report, the door by the outcomes of the frames it was shown.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from itertools import count

import httpx
from gpiozero.pins.mock import MockFactory

from cloud import admin
from cloud import db as cloud_db
from e2e_helpers import DOOR, Site, make_kiosk, running_site, seed_members
from fakes import ManualTimer
from hardware.fakes.signal import RecordingSignal
from hardware.gpio.relay import RelayDoor
from kiosk.config import default_config
from kiosk.core.clock import AnchoredClock, SimClock
from kiosk.core.model import ClockQuality, Reason, Verdict
from kiosk.core.passes import PassRecord
from kiosk.data.store import Store
from kiosk.door.loop import PASS, DoorLoop, Outcome, ScannerSettings
from kiosk.door.parts import build_reader
from kiosk.sync.agent import CycleReport, SyncAgent, SyncSettings
from kiosk.sync.client import CloudClient
from pass_capture import Capture, PassPhone
from pg import FakeClock
from phone_frames import FPS, ScriptedCamera, empty_scene, phone_frame
from sync.passes import DEFAULT_SKEW_STEPS, public_key_from_text

# 4 s into a 15 s step (09:00:00 is a step boundary), a weekday morning.
T0 = datetime(2026, 5, 6, 9, 0, 4, tzinfo=UTC)
PERIOD_S = 15
DEBOUNCE_S = 3.0
RELAY_PIN = 17
PULSE_MS = 500
# A phone held up to the camera for a third of a second, then taken away for longer than the
# debounce window, so that the next sighting is a new presentation.
HOLD_FRAMES = 10
AWAY_FRAMES = int((DEBOUNCE_S + 1) * FPS)
# Bounds a hang of an HTTP exchange only; the clocks stand still meanwhile.
HTTP_TIMEOUT_S = 60.0


def unix(moment: datetime) -> float:
    return moment.timestamp()


class Device:
    """One enrolled device: its store, its sync agent (wired as ``kiosk sync`` wires it) and its
    door loop (wired as ``kiosk door run`` wires it: the configured reader, an anchored clock),
    on mock pins and a scripted camera, all on one simulated clock."""

    def __init__(self, tmp_path, site: Site, cloud_clock: FakeClock, start: datetime) -> None:
        self.site = site
        self.cloud_clock = cloud_clock
        self.kiosk = make_kiosk(tmp_path / "kiosk", site)
        self.clock = SimClock(start, quality=ClockQuality.NTP_SYNCED, boot="boot-1")
        self.store = Store.open(self.kiosk.db)
        self.client = CloudClient(
            site.url, self.kiosk.identity.token, clock=self.clock, timeout_s=HTTP_TIMEOUT_S
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
        """The device's clock (and the door's) forward to ``unix_s``."""
        ahead = unix_s - self.now()
        assert ahead >= 0, "the device's clock only moves forward in this test"
        self.clock.advance(ahead)

    def sync(self) -> CycleReport:
        """One agent cycle (push, pull, heartbeat), the cloud's clock at the device's time."""
        self.cloud_clock.now = self.clock.wall()
        report = self.agent.cycle()
        assert report.ok, report.error
        return report

    def show(self, capture: Capture) -> Outcome:
        """The phone showing ``capture`` held up to the camera, then taken away: every frame
        goes through the door loop; exactly one decision comes of it, which is returned."""
        seed = next(self._seeds)
        views = [phone_frame(capture.png, seed=100 * seed + n) for n in range(3)]
        self.camera.show(views, HOLD_FRAMES)
        self.camera.show(self._away, AWAY_FRAMES)
        before = len(self.outcomes)
        while self.camera.pending:
            self.loop.step()
        decided = self.outcomes[before:]
        assert len(decided) == 1, [o.decision for o in decided]
        return decided[0]

    def relay_states(self) -> list[bool]:
        return [state.state for state in self.pins.pin(RELAY_PIN).states]

    def close(self) -> None:
        self.relay.close()
        self.client.close()
        self.store.close()


def cloud_checkins(site: Site, device_id: str) -> list[tuple[str, str, str, str | None]]:
    """(id, decision, reason, pass id) of every check-in the cloud holds from ``device_id``."""
    rows = site.read(
        lambda tx: tx.all(
            "SELECT id, decision, reason, pass_id FROM checkins WHERE device_id = ? ORDER BY seq",
            (device_id,),
        )
    )
    return [(r["id"], r["decision"], r["reason"], r["pass_id"]) for r in rows]


def test_a_pass_made_in_the_browser_opens_the_door_once_and_not_after_its_revocation(
    tmp_path, browser
):
    cloud_clock = FakeClock(T0)
    with running_site(f"sqlite:///{tmp_path / 'cloud.db'}", clock=cloud_clock) as site:
        members = seed_members(site, packs=0, subscriptions=1, balance=0)
        member_id, _membership = members.subscriptions[0]
        token = site.write(lambda tx: admin.create_admin_token(tx, site.org_id, site.now()))
        admin_api = httpx.Client(
            base_url=f"{site.url}/admin/v1",
            headers={"Authorization": f"Bearer {token}"},
            timeout=HTTP_TIMEOUT_S,
        )
        phone = None
        device = None
        try:
            # -- the member's phone: activated online from the link, then offline ----------------
            made = admin_api.post(f"/members/{member_id}/pass-activations")
            assert made.status_code == 201, made.text
            code = made.json()["code"]
            assert made.json()["activation_path"] == f"/pass/#activate={code}"
            phone = PassPhone.open(browser, site.url, at=unix(T0), activation_code=code)
            phone.wait_for_step(int(unix(T0) // PERIOD_S))
            # The page asked the cloud about its new pass and was told it stands.
            phone.page.locator('html[data-status="answered-200"]').wait_for(state="attached")
            pass_id = phone.stored_key_facts()["passId"]
            phone.context.set_offline(True)

            stale_at = unix(T0) + 1
            stale = phone.capture(stale_at)
            fresh = phone.capture(stale_at + 120)  # two minutes later
            assert fresh.step - stale.step == 8 > DEFAULT_SKEW_STEPS
            assert all(c.payload.startswith("FFP1:") for c in (stale, fresh))

            # -- the door: one pull brings the pass --------------------------------------------
            device = Device(tmp_path, site, cloud_clock, T0 + timedelta(seconds=121))
            pulled = device.sync()
            assert pulled.pull == "snapshot"
            row = site.read(lambda tx: cloud_db.replica_row(tx, "pass", site.org_id, pass_id))
            assert row is not None
            public_key = public_key_from_text(row["public_key"])
            assert device.store.find_pass(pass_id) == PassRecord(
                pass_id, member_id, site.org_id, public_key, PERIOD_S
            )

            # -- the fresh code admits, once -----------------------------------------------------
            admitted = device.show(fresh)
            assert admitted.decision.verdict is Verdict.GRANTED
            assert admitted.decision.reason is Reason.SUBSCRIPTION
            assert (admitted.credential, admitted.pass_id) == (PASS, pass_id)
            assert admitted.decision.member_id == member_id
            assert admitted.relay_ms == PULSE_MS
            assert device.store.pass_used(pass_id, fresh.step)

            # The same screenshot again, after the debounce window: a replay.
            replayed = device.show(fresh)
            assert replayed.checkin.wall_time - admitted.checkin.wall_time > timedelta(
                seconds=DEBOUNCE_S
            )
            assert replayed.decision.reason is Reason.TOKEN_REPLAYED
            assert (replayed.credential, replayed.pass_id, replayed.relay_ms) == (PASS, pass_id, 0)

            # A screenshot taken two minutes before the door's time: expired.
            expired = device.show(stale)
            assert device.now() - stale_at > 120
            assert expired.decision.reason is Reason.TOKEN_EXPIRED
            assert (expired.credential, expired.pass_id, expired.relay_ms) == (PASS, pass_id, 0)
            assert device.relay_states() == [False, True, False]  # one pulse in all
            assert device.store.pass_use_count() == 1

            # -- revoked at the front desk; one pull; the phone's next code is refused ----------
            cloud_clock.now = device.clock.wall()
            revoked = admin_api.post(f"/passes/{pass_id}/revoke")
            assert revoked.status_code == 200, revoked.text
            assert revoked.json()["status"] == "REVOKED"
            pulled = device.sync()
            assert (pulled.pull, pulled.pushed) == ("changes", 3)
            assert device.store.find_pass(pass_id).revoked

            later = math.ceil(device.now()) + 1
            after_revocation = phone.capture(later)  # offline, the phone knows nothing of it
            device.move_to(later)
            refused = device.show(after_revocation)
            assert refused.decision.reason is Reason.UNKNOWN_CODE
            assert "revoked" in refused.decision.detail
            assert (refused.credential, refused.pass_id, refused.relay_ms) == (PASS, pass_id, 0)
            assert device.relay_states() == [False, True, False]
            assert phone.script_problems == []

            # -- uploaded: every check-in once, each with the pass's id ------------------------
            assert device.sync().pushed == 1
            assert device.sync().pushed == 0
            journal = [admitted, replayed, expired, refused]
            expected = [
                (o.checkin.id, o.decision.verdict.value, o.decision.reason.value, pass_id)
                for o in journal
            ]
            assert cloud_checkins(site, device.kiosk.device_id) == expected
            assert [c.pass_id for c in reversed(device.store.recent_checkins(10))] == [pass_id] * 4
        finally:
            if device is not None:
                device.close()
            if phone is not None:
                phone.close()
            admin_api.close()
