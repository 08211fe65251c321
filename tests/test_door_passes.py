"""Phone passes at the door (docs/passes.md): the real door loop on a real store, a scripted
camera scene and a simulated clock, codes signed with ``sync.passes.pass_payload``.

- a pass admits its member by the member's rules, once per code: the same code shown again after
  the debounce window is ``token_replayed``; an old code is ``token_expired``, a code signed with
  another key (or for another organisation) ``bad_signature``, an unknown or revoked pass
  ``unknown_code``; a door without a trusted clock refuses with ``clock_untrusted``;
- a refusal uses nothing up; a phone held in view while its code changes is one presentation;
- the outcome and the journal row say which credential it was (``card``, ``pass``, none);
- through the sync agent: a pass and then its revocation reach the door in one pull each, and a
  pass check-in is uploaded with its pass id.

The replay memory surviving a SIGKILL is in test_crash.py; passes in the stateful door test in
test_door_properties.py; exactly-once upload of pass check-ins in test_sync_e2e.py.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from devtools.seed import ORG, demo_snapshot
from fakecloud import START, TOKEN, FakeCloud
from fakes import Scene
from kiosk.core.clock import SimClock
from kiosk.core.model import ClockQuality, Reason, Verdict
from kiosk.core.passes import PassRecord
from kiosk.data.store import Store
from kiosk.door.loop import CARD, PASS
from kiosk.sync.agent import SyncAgent, SyncSettings
from kiosk.sync.client import CloudClient
from rig import ALICE, Rig
from sync.passes import pass_payload, public_key_text, step_at

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
OTHER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
PUBLIC = KEY.public_key().public_bytes_raw()
PERIOD = 15
# A step boundary (a whole minute), so a scene's steps are known in advance.
T0 = datetime(2026, 5, 6, 9, 0, tzinfo=UTC)
FPS = 30

ALICE_PHONE = "ALICEPAS"  # Alice: an active subscription
CAROL_PHONE = "CAROLPAS"  # Carol: paused
OLD_PHONE = "REVOKEDA"  # Alice's old phone


def door_store(tmp_path, *, synced_at: datetime | None = T0) -> Store:
    """The demo's replica (``devtools.seed``) with three passes, at ``tmp_path/kiosk.db``."""
    snapshot = demo_snapshot(T0, "UTC")
    passes = [
        PassRecord(ALICE_PHONE, "m-alice", ORG, PUBLIC, PERIOD),
        PassRecord(CAROL_PHONE, "m-carol", ORG, PUBLIC, PERIOD),
        PassRecord(OLD_PHONE, "m-alice", ORG, PUBLIC, PERIOD, revoked=True),
    ]
    store = Store.open(tmp_path / "kiosk.db")
    store.replace_replica(replace(snapshot, passes=passes, synced_at=synced_at))
    return store


class Presenter:
    """Builds a scene one presentation at a time; each code is signed for the step its frames
    fall in (``offset`` steps away), from the simulated clock's start and the frame rate."""

    def __init__(self, start: datetime) -> None:
        self.start = start
        self.scene = Scene()

    def now(self) -> datetime:
        return self.start + timedelta(seconds=(len(self.scene.steps) + 1) / FPS)

    def step(self, offset: int = 0) -> int:
        return step_at(self.now().timestamp(), PERIOD) + offset

    def show(self, payload: str, *, frames: int = 5, away_s: float = 4.0) -> str:
        """``payload`` in view for ``frames`` frames, then nobody for ``away_s`` (longer than
        the 3 s debounce: the next sighting is a new presentation)."""
        self.scene.add([payload], frames)
        self.scene.add([], int(away_s * FPS))
        return payload

    def code(self, pass_id: str = ALICE_PHONE, *, offset: int = 0, key=KEY, org: str = ORG) -> str:
        return pass_payload(key, org, pass_id, self.step(offset))


def run(rig: Rig) -> None:
    rig.loop.run(threading.Event())


def test_a_pass_admits_once_and_the_same_code_again_is_a_replay(tmp_path):
    show = Presenter(T0)
    first = show.show(show.code())
    assert show.step() == step_at(T0.timestamp(), PERIOD)  # still the same step: 4 s later
    show.show(first)
    rig = Rig(tmp_path, show.scene, store=door_store(tmp_path), clock=SimClock(T0))
    run(rig)
    admitted, replayed = rig.outcomes
    assert (admitted.decision.reason, admitted.relay_ms) == (Reason.SUBSCRIPTION, 500)
    assert admitted.credential == PASS and admitted.pass_id == ALICE_PHONE
    assert admitted.member_name == "Alice A." and admitted.checkin.member_id == "m-alice"
    assert replayed.decision.reason is Reason.TOKEN_REPLAYED and replayed.relay_ms == 0
    assert replayed.decision.member_id == "m-alice" and replayed.pass_id == ALICE_PHONE
    assert rig.relay_states() == [False, True, False]  # one pulse
    # Both journal rows name the pass; the code's (pass, step) is remembered.
    assert [c.pass_id for c in rig.store.recent_checkins(5)] == [ALICE_PHONE, ALICE_PHONE]
    assert rig.store.pass_used(ALICE_PHONE, step_at(T0.timestamp(), PERIOD))
    assert rig.store.pass_use_count() == 1


def test_the_replay_memory_outlives_the_door_process(tmp_path):
    show = Presenter(T0)
    code = show.show(show.code())
    rig = Rig(tmp_path, show.scene, store=door_store(tmp_path), clock=SimClock(T0))
    run(rig)
    assert [o.decision.reason for o in rig.outcomes] == [Reason.SUBSCRIPTION]
    rig.door.close()
    rig.store.close()
    # A new process (a restart within the code's window) sees the same code as used.
    again = Scene().add([code], 3)
    later = SimClock(T0 + timedelta(seconds=10))
    rig = Rig(tmp_path, again, clock=later)
    run(rig)
    assert [o.decision.reason for o in rig.outcomes] == [Reason.TOKEN_REPLAYED]


def test_bad_codes_are_refused_for_their_reason_and_use_nothing_up(tmp_path):
    show = Presenter(T0)
    cases = [
        (show.show(show.code(offset=-3)), Reason.TOKEN_EXPIRED, "old"),
        (show.show(show.code(offset=3)), Reason.TOKEN_EXPIRED, "ahead"),
        (show.show(show.code(key=OTHER_KEY)), Reason.BAD_SIGNATURE, "signature"),
        (show.show(show.code(org="org-elsewhere")), Reason.BAD_SIGNATURE, "signature"),
        (show.show(show.code("ZZZZZZZZ")), Reason.UNKNOWN_CODE, "no pass"),
        (show.show(show.code(OLD_PHONE)), Reason.UNKNOWN_CODE, "revoked"),
        (show.show(show.code(CAROL_PHONE)), Reason.MEMBER_PAUSED, ""),
        (show.show(show.code(CAROL_PHONE)), Reason.MEMBER_PAUSED, ""),  # not "replayed"
        # Skew: codes up to two steps either side are accepted.
        (show.show(show.code(offset=-2)), Reason.SUBSCRIPTION, ""),
    ]
    rig = Rig(tmp_path, show.scene, store=door_store(tmp_path), clock=SimClock(T0))
    run(rig)
    got = [(o.decision.reason, o.decision.detail) for o in rig.outcomes]
    assert [reason for reason, _ in got] == [reason for _, reason, _ in cases]
    for (_, detail), (_, _, words) in zip(got, cases, strict=True):
        assert words in detail
    assert [o.relay_ms > 0 for o in rig.outcomes] == [False] * 8 + [True]
    assert {o.credential for o in rig.outcomes} == {PASS}
    assert [o.pass_id for o in rig.outcomes][4:6] == ["ZZZZZZZZ", OLD_PHONE]
    # Nothing but the admission is remembered: a refusal uses no code up.
    assert rig.store.pass_use_count() == 1
    # Who a refusal names: nobody for an unknown or forged pass, the member once it verified.
    assert [o.decision.member_id for o in rig.outcomes][:6] == [
        "m-alice", "m-alice", None, None, None, None
    ]  # fmt: skip


def test_a_phone_held_in_view_while_its_code_changes_is_one_presentation(tmp_path):
    start = T0 + timedelta(seconds=14)  # one second before the code changes
    show = Presenter(start)
    for _ in range(2 * FPS):  # two seconds in view, a new code every frame's step
        show.scene.add([show.code()], 1)
    assert show.scene.steps[0] != show.scene.steps[-1]  # the code did change
    rig = Rig(tmp_path, show.scene, store=door_store(tmp_path), clock=SimClock(start))
    run(rig)
    assert [o.decision.reason for o in rig.outcomes] == [Reason.SUBSCRIPTION]


def test_after_a_refusal_the_phones_next_code_is_decided_at_once(tmp_path):
    """A phone woken at the door shows its last code (stale) before the page catches up: the
    refusal does not hold the phone, so the fresh code in the next frames admits."""
    show = Presenter(T0)
    show.scene.add([show.code(offset=-3)], 10)
    show.scene.add([show.code()], 10)
    show.scene.add([show.code(offset=-3)], 10)  # the stale code again: the phone is held now
    rig = Rig(tmp_path, show.scene, store=door_store(tmp_path), clock=SimClock(T0))
    run(rig)
    reasons = [o.decision.reason for o in rig.outcomes]
    assert reasons == [Reason.TOKEN_EXPIRED, Reason.SUBSCRIPTION]


def test_a_door_that_cannot_tell_the_time_refuses_a_pass_but_not_a_card(tmp_path):
    store = door_store(tmp_path, synced_at=None)  # no replica time, no journal: no clock floor
    never_set = SimClock(datetime(1970, 1, 1, tzinfo=UTC), quality=ClockQuality.UNSYNCED)
    show = Presenter(datetime(1970, 1, 1, tzinfo=UTC))
    show.show(pass_payload(KEY, ORG, ALICE_PHONE, step_at(T0.timestamp(), PERIOD)))
    show.show(ALICE)
    rig = Rig(tmp_path, show.scene, store=store, clock=never_set)
    run(rig)
    by_pass, by_card = rig.outcomes
    assert by_pass.decision.reason is Reason.CLOCK_UNTRUSTED and by_pass.credential == PASS
    assert by_card.decision.verdict is Verdict.DENIED and by_card.credential == CARD
    assert rig.store.pass_use_count() == 0


def test_outcomes_say_which_credential_was_shown(tmp_path):
    show = Presenter(T0)
    show.show(ALICE)
    show.show("https://example.com/<script>")
    rig = Rig(tmp_path, show.scene, store=door_store(tmp_path), clock=SimClock(T0))
    run(rig)
    card, malformed = rig.outcomes
    assert (card.credential, card.pass_id) == (CARD, None)
    assert (malformed.credential, malformed.pass_id) == (None, None)
    assert malformed.decision.reason is Reason.MALFORMED_CODE
    assert [c.pass_id for c in rig.store.recent_checkins(5)] == [None, None]


# -- through the sync agent --------------------------------------------------------------------------

PHONE_ID = "PHONEAAA"


def pass_data(status: str = "ACTIVE") -> dict:
    return {
        "member_id": "m1",
        "organization_id": "org-1",
        "public_key": public_key_text(PUBLIC),
        "period_s": PERIOD,
        "status": status,
    }


def test_a_pass_and_its_revocation_reach_the_door_in_one_pull_each(tmp_path):
    cloud = FakeCloud()
    cloud.put("member", "m1", {
        "organization_id": "org-1", "first_name": "Pat", "last_name": "Phone",
        "status": "ACTIVE", "is_staff": False, "code_hash": "1" * 64,
    })  # fmt: skip
    cloud.put("membership", "ms1", {
        "member_id": "m1", "plan_id": None, "type": "SUBSCRIPTION", "start_date": "2026-01-01",
        "end_date": None, "remaining_classes": None,
    })  # fmt: skip
    clock = SimClock(START, quality=ClockQuality.NTP_SYNCED, boot="boot-1")
    store = Store.open(tmp_path / "kiosk.db")
    client = CloudClient("https://cloud.test", TOKEN, transport=cloud.transport, clock=clock)
    agent = SyncAgent(store, client, SyncSettings(), clock, sleep=clock.sleep)
    assert agent.cycle().ok  # the first snapshot: no pass yet
    scene = Scene()
    rig = Rig(tmp_path, scene, store=store, clock=clock)

    def scan() -> Reason:
        scene.add([pass_payload(KEY, "org-1", PHONE_ID, step_at(clock.wall().timestamp(), PERIOD))])
        scene.add([], 4 * FPS)
        before = len(rig.outcomes)
        while scene.position < len(scene.steps):
            rig.loop.step()
        (outcome,) = rig.outcomes[before:]
        return outcome.decision

    assert scan().reason is Reason.UNKNOWN_CODE
    cloud.put("pass", PHONE_ID, pass_data())
    report = agent.cycle()
    assert report.ok and report.pull == "changes" and report.pushed == 1
    assert store.find_pass(PHONE_ID) == PassRecord(PHONE_ID, "m1", "org-1", PUBLIC, PERIOD)
    assert scan().reason is Reason.SUBSCRIPTION

    cloud.put("pass", PHONE_ID, pass_data("REVOKED"))
    clock.advance(11 * 60)  # past anti-passback: only the revocation can refuse now
    report = agent.cycle()
    assert report.ok and report.pull == "changes"
    refused = scan()
    assert refused.reason is Reason.UNKNOWN_CODE and "revoked" in refused.detail
    # The door's check-ins went up with the pass they were made with.
    assert agent.cycle().ok
    uploaded = [raw for raw, _version in cloud.checkins.values()]
    assert [(u["reason"], u["pass_id"]) for u in uploaded] == [
        ("unknown_code", PHONE_ID), ("subscription", PHONE_ID), ("unknown_code", PHONE_ID),
    ]  # fmt: skip
    assert store.replica_checksum() == (cloud.checkpoint().count, cloud.checkpoint().checksum)
    rig.door.close()
    store.close()
