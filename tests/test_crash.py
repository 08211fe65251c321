"""Reliability: an acknowledged check-in survives SIGKILL at any point; the database is never corrupt;
a phone pass code admitted just before a SIGKILL is refused as replayed after the restart.

A child process runs the real door loop (real store with durable commits, real relay adapter on mock
pins) and acknowledges each check-in on a pipe only after ``append_checkin`` returned (what the demo's
``--json`` output and the owner page rely on). The parent kills it with SIGKILL at a random moment,
then checks ``PRAGMA integrity_check`` and that every acknowledged id is in the journal. The same
database goes through all the crashes, so recovery after a crash is exercised too.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import select
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from gpiozero.pins.mock import MockFactory

from devtools.seed import SCENARIO, demo_snapshot
from fakes import FakeCamera, FakeDecoder, Scene, clean_env
from hardware.fakes.signal import RecordingSignal
from hardware.gpio.passage import GpioPassageSensor
from hardware.gpio.relay import RelayDoor
from kiosk.core.clock import SystemClock
from kiosk.core.model import Member, Membership, MembershipType, MemberStatus
from kiosk.core.passes import PassRecord
from kiosk.data.replica import ReplicaSnapshot
from kiosk.data.store import Store
from kiosk.door.loop import DoorLoop, ScannerSettings
from sync.credentials import code_hash
from sync.passes import pass_id_text, pass_payload, step_at

# A long file: it starts first on a fresh clone (tests/conftest.py orders the files).
pytestmark = pytest.mark.slow

# Not KIOSK_*: that prefix is the configuration's, and strict loading rejects unknown names.
KILLS = int(os.environ.get("FITFLOW_TEST_CRASH_KILLS", "200"))
CODES = [scan.payload for scan in SCENARIO]


def _door_loop_child(db_path: str, ack_fd: int, seed: int) -> None:
    """Child: scan an endless stream of codes, acknowledging each committed check-in."""
    rng = random.Random(seed)
    # A code on every frame (debounce off), so each frame is a decision and a durable commit;
    # far more frames than a child lives to see.
    scene = Scene([[rng.choice(CODES)] for _ in range(5_000)])
    with Store.open(db_path) as store:
        door = RelayDoor(17, active_high=True, max_pulse_ms=3000, pin_factory=MockFactory())

        def ack(outcome) -> None:
            os.write(ack_fd, (outcome.checkin.id + "\n").encode())

        loop = DoorLoop(
            source=FakeCamera(scene, SystemClockAsSim()),
            reader=FakeDecoder(scene),
            store=store,
            door=door,
            signal=RecordingSignal(),
            clock=SystemClock(),
            settings=ScannerSettings(door_id="door-1", debounce_s=0.0, pulse_ms=100),
            on_outcome=ack,
        )
        loop.run(threading.Event())
    os._exit(0)


class SystemClockAsSim:
    """FakeCamera advances its clock per frame; against the real clock that is a no-op."""

    def advance(self, seconds: float) -> None:
        pass

    def monotonic_ns(self) -> int:
        return time.monotonic_ns()


def _read_acks(fd: int, wanted: int) -> bytes:
    """Read the ack pipe until ``wanted`` acknowledgements arrived (or the child died)."""
    data = b""
    while data.count(b"\n") < wanted:
        # The child writes an acknowledgement, or dies (end of file): the bound only ends a
        # hang, so the kill point is chosen by the acknowledgements alone.
        ready, _, _ = select.select([fd], [], [], 120.0)
        chunk = os.read(fd, 65536) if ready else b""
        if not chunk:
            break
        data += chunk
    return data


def _complete_lines(data: bytes) -> list[str]:
    # A line cut by the kill was never fully acknowledged: only complete lines count.
    return [line for line in data.decode().split("\n")[:-1] if line]


def test_acknowledged_checkins_survive_random_sigkill(tmp_path):
    db = tmp_path / "kiosk.db"
    with Store.open(db) as store:
        store.replace_replica(demo_snapshot(SystemClock().wall(), "UTC"))
    rng = random.Random(20261122)
    ctx = multiprocessing.get_context("fork")
    acknowledged: list[str] = []
    for i in range(KILLS):
        read_fd, write_fd = os.pipe()
        child = ctx.Process(target=_door_loop_child, args=(str(db), write_fd, i), daemon=True)
        child.start()
        os.close(write_fd)
        # Kill points: after a random number of acknowledged commits (0 = during start-up), plus
        # a jitter below one commit's duration, so the kill lands anywhere in the commit cycle.
        data = _read_acks(read_fd, rng.randint(0, 20))
        time.sleep(rng.uniform(0.0, 0.002))
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        assert child.exitcode == -signal.SIGKILL
        data += _read_acks(read_fd, 10**9)  # whatever was written before the kill
        acknowledged += _complete_lines(data)
        os.close(read_fd)

    assert len(acknowledged) > KILLS, "the children should have committed check-ins"
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        stored = {row[0] for row in conn.execute("SELECT id FROM checkins")}
        seqs = [row[0] for row in conn.execute("SELECT seq FROM checkins ORDER BY seq")]
    missing = set(acknowledged) - stored
    assert not missing, f"{len(missing)} acknowledged check-ins lost"
    assert seqs == list(range(1, len(seqs) + 1)), "the per-device sequence has a gap"


def test_demo_json_lines_are_durable_when_the_demo_is_killed(tmp_path):
    """End to end through the CLI: every decision line `kiosk demo --json` printed is in the journal
    after a SIGKILL."""
    db = tmp_path / "demo.db"
    proc = subprocess.Popen(
        [sys.executable, "-m", "kiosk", "demo", "--json", "--db", str(db)],
        stdout=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )
    lines = []
    try:
        deadline = time.monotonic() + 300  # bounds a hang only
        while len(lines) < 2 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            record = json.loads(line)
            if record["type"] == "decision":  # the demo also prints sync and cloud lines
                lines.append(record)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert len(lines) == 2
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        stored = {row[0] for row in conn.execute("SELECT id FROM checkins")}
    assert {line["id"] for line in lines} <= stored


# -- phone passes: the replay memory survives a SIGKILL ---------------------------------------------

PASS_KILLS = int(os.environ.get("FITFLOW_TEST_CRASH_PASS_KILLS", "25"))
PASSES_PER_LIFE = 40
PHONE_ORG = "org-crash"
PHONE_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
# The longest period: a code stays inside its window (two steps either side, at least 10 min)
# for the whole test, so every verdict below is the replay memory's, never the clock's.
PHONE_PERIOD = 300


def _phone(n: int) -> str:
    return pass_id_text(n.to_bytes(5, "big"))


def _pass_replica(now: datetime, count: int) -> ReplicaSnapshot:
    """``count`` members, each with an open-ended subscription and a phone pass of its own (one
    member per pass, so anti-passback never answers for the replay memory)."""
    members = [
        Member(f"m-{n}", PHONE_ORG, f"Member{n}", "Crash", MemberStatus.ACTIVE)
        for n in range(count)
    ]
    start = (now - timedelta(days=1)).date()
    public = PHONE_KEY.public_key().public_bytes_raw()
    return ReplicaSnapshot(
        members=[(m, f"{n:064x}") for n, m in enumerate(members)],
        memberships=[
            Membership(f"ms-{n}", m.id, MembershipType.SUBSCRIPTION, start, None)
            for n, m in enumerate(members)
        ],
        plans=[],
        opening_hours=[],
        closures=[],
        version=1,
        synced_at=now,
        code_salt=b"\x07" * 32,
        passes=[
            PassRecord(_phone(n), m.id, PHONE_ORG, public, PHONE_PERIOD)
            for n, m in enumerate(members)
        ],
    )


def _pass_loop(store: Store, scene: Scene, on_outcome) -> DoorLoop:
    return DoorLoop(
        source=FakeCamera(scene, SystemClockAsSim()),
        reader=FakeDecoder(scene),
        store=store,
        door=RelayDoor(17, active_high=True, max_pulse_ms=3000, pin_factory=MockFactory()),
        signal=RecordingSignal(),
        clock=SystemClock(),
        settings=ScannerSettings(door_id="door-1", debounce_s=0.0, pulse_ms=100),
        on_outcome=on_outcome,
    )


def _pass_door_child(db_path: str, ack_fd: int, first: int, step: int) -> None:
    """Child: show the phones ``first`` .. ``first + PASSES_PER_LIFE - 1``, one code a frame,
    acknowledging each committed decision as ``<pass id> <step> <reason>``."""
    phones = range(first, first + PASSES_PER_LIFE)
    codes = [pass_payload(PHONE_KEY, PHONE_ORG, _phone(n), step) for n in phones]
    scene = Scene([[code] for code in codes])
    scene.steps += [[]] * 200_000  # then nobody: the child lives until it is killed
    with Store.open(db_path) as store:

        def ack(outcome) -> None:
            line = f"{outcome.pass_id} {step} {outcome.decision.reason.value}\n"
            os.write(ack_fd, line.encode())

        _pass_loop(store, scene, ack).run(threading.Event())
    os._exit(0)


def test_a_pass_admitted_just_before_a_sigkill_is_a_replay_after_the_restart(tmp_path):
    db = tmp_path / "kiosk.db"
    with Store.open(db) as store:
        store.replace_replica(_pass_replica(SystemClock().wall(), PASS_KILLS * PASSES_PER_LIFE))
    rng = random.Random(20261205)
    ctx = multiprocessing.get_context("fork")
    admitted: list[tuple[str, int]] = []
    for life in range(PASS_KILLS):
        step = step_at(time.time(), PHONE_PERIOD)
        read_fd, write_fd = os.pipe()
        first = life * PASSES_PER_LIFE
        child = ctx.Process(target=_pass_door_child, args=(str(db), write_fd, first, step),
                            daemon=True)  # fmt: skip
        child.start()
        os.close(write_fd)
        # The kill lands anywhere in the commit cycle of an admission (see the test above).
        data = _read_acks(read_fd, rng.randint(1, PASSES_PER_LIFE - 5))
        time.sleep(rng.uniform(0.0, 0.002))
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        assert child.exitcode == -signal.SIGKILL
        data += _read_acks(read_fd, 10**9)
        os.close(read_fd)
        acked = [line.split() for line in _complete_lines(data)]
        assert all(reason == "subscription" for _p, _s, reason in acked), acked
        admitted += [(pass_id, int(s)) for pass_id, s, _reason in acked]
        # The restarted door: every code acknowledged before the kill is now a replay.
        recheck = [(p, s) for p, s in admitted if p in {a[0] for a in acked}]
        scene = Scene([[pass_payload(PHONE_KEY, PHONE_ORG, p, s)] for p, s in recheck])
        outcomes = []
        with Store.open(db) as store:
            assert all(store.pass_used(p, s) for p, s in recheck)
            _pass_loop(store, scene, outcomes.append).run(threading.Event())
        assert [o.decision.reason.value for o in outcomes] == ["token_replayed"] * len(recheck)
        assert all(o.relay_ms == 0 for o in outcomes)

    assert len(admitted) >= PASS_KILLS
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        used = set(conn.execute("SELECT pass_id FROM pass_uses"))
        granted = list(conn.execute("SELECT pass_id FROM checkins WHERE decision = 'granted'"))
    # A use is remembered exactly when its admission was committed (one transaction), and the
    # admissions acknowledged are among them.
    assert sorted(used) == sorted(granted) and len(granted) == len(set(granted))
    assert {(p,) for p, _s in admitted} <= used


# -- the turnstile talks back: a grant pending at a SIGKILL is resolved after the restart ---------

CONFIRM_KILLS = int(os.environ.get("FITFLOW_TEST_CRASH_CONFIRM_KILLS", "15"))
GRANTS_PER_LIFE = 80
ENTRY_PIN = 5
# Long enough that the grants of a life are still waiting when the child is killed and the door
# restarted (the restarted door's clock is moved past it instead of waiting).
CONFIRM_TIMEOUT_S = 30.0


class OffsetClock:
    """The system's clocks (the same boot, so the journal's monotonic deadlines apply), plus an
    offset a test moves instead of sleeping; ``FakeCamera`` moves it a frame per frame."""

    def __init__(self) -> None:
        self._base = SystemClock()
        self.boot_id = self._base.boot_id
        self.offset_ns = 0

    def wall(self) -> datetime:
        return self._base.wall() + timedelta(microseconds=self.offset_ns // 1000)

    def monotonic_ns(self) -> int:
        return self._base.monotonic_ns() + self.offset_ns

    def quality(self):
        return self._base.quality()

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)

    def advance(self, seconds: float) -> None:
        self.offset_ns += int(seconds * 1e9)


def _confirm_loop(store: Store, scene: Scene, clock, pins, on_outcome=None, *, frames=None):
    """A door loop with the turnstile's entry contact on ``pins``; its camera moves ``frames``
    (default ``clock``) a frame per frame."""
    sensor = GpioPassageSensor(entry_pin=ENTRY_PIN, exit_pin=None, bounce_ms=0, pin_factory=pins,
                               clock_ns=clock.monotonic_ns)  # fmt: skip
    return DoorLoop(
        source=FakeCamera(scene, frames or clock),
        reader=FakeDecoder(scene),
        store=store,
        door=RelayDoor(17, active_high=True, max_pulse_ms=3000, pin_factory=pins),
        signal=RecordingSignal(),
        clock=clock,
        settings=ScannerSettings(
            door_id="door-1", debounce_s=0.0, pulse_ms=100, passage_timeout_s=CONFIRM_TIMEOUT_S
        ),
        on_outcome=on_outcome,
        passage=sensor,
    )


def _confirm_door_child(db_path: str, ack_fd: int, first: int) -> None:
    """Child: admit the members ``first`` .. ``first + GRANTS_PER_LIFE - 1``, one a frame, with
    the turnstile's entry contact wired; the turnstile turns after every other grant. Each
    committed grant is acknowledged as its check-in id."""
    codes = [f"{n:064x}" for n in range(first, first + GRANTS_PER_LIFE)]
    scene = Scene([[code] for code in codes])
    scene.steps += [[]] * 200_000  # then nobody: the child lives until it is killed
    pins = MockFactory()
    turned = [0]
    with Store.open(db_path) as store:

        def ack(outcome) -> None:
            os.write(ack_fd, (outcome.checkin.id + "\n").encode())
            turned[0] += 1
            if turned[0] % 2 == 0:
                pins.pin(ENTRY_PIN).drive_low()
                pins.pin(ENTRY_PIN).drive_high()

        # The system's clock as it runs: the deadlines journaled are real ones.
        loop = _confirm_loop(store, scene, SystemClock(), pins, ack, frames=SystemClockAsSim())
        loop.run(threading.Event())
    os._exit(0)


def _card_replica(now: datetime, count: int) -> ReplicaSnapshot:
    """``count`` members with open-ended subscriptions, member ``n`` showing the card
    ``f"{n:064x}"`` (one member per card, so anti-passback never answers)."""
    members = [
        Member(f"m-{n}", "org-crash", f"Member{n}", "Crash", MemberStatus.ACTIVE)
        for n in range(count)
    ]
    salt = b"\x07" * 32
    return ReplicaSnapshot(
        members=[(m, code_hash(f"{n:064x}", salt)) for n, m in enumerate(members)],
        memberships=[
            Membership(f"ms-{n}", m.id, MembershipType.SUBSCRIPTION, now.date(), None)
            for n, m in enumerate(members)
        ],
        plans=[],
        opening_hours=[],
        closures=[],
        version=1,
        synced_at=now,
        code_salt=salt,
    )


def test_a_grant_pending_at_a_sigkill_is_resolved_after_the_restart_never_lost_or_doubled(
    tmp_path,
):
    db = tmp_path / "kiosk.db"
    with Store.open(db) as store:
        store.replace_replica(_card_replica(SystemClock().wall() - timedelta(days=1),
                                            CONFIRM_KILLS * GRANTS_PER_LIFE))  # fmt: skip
    rng = random.Random(20261301)
    ctx = multiprocessing.get_context("fork")
    acknowledged: list[str] = []
    recovered = confirmed_after = 0
    for life in range(CONFIRM_KILLS):
        read_fd, write_fd = os.pipe()
        child = ctx.Process(target=_confirm_door_child,
                            args=(str(db), write_fd, life * GRANTS_PER_LIFE), daemon=True)  # fmt: skip
        child.start()
        os.close(write_fd)
        # Killed with grants waiting for their passage (the timeout is far away), anywhere in
        # the cycle of a grant's commit, its pulse, a passage and its entry's commit.
        data = _read_acks(read_fd, rng.randint(1, GRANTS_PER_LIFE - 10))
        time.sleep(rng.uniform(0.0, 0.002))
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        assert child.exitcode == -signal.SIGKILL
        data += _read_acks(read_fd, 10**9)
        os.close(read_fd)
        acknowledged += _complete_lines(data)

        # The restarted door: the turnstile turns a random number of times (some grants go in,
        # a surplus would be tailgating), then their deadline passes.
        with Store.open(db) as store:
            waiting = store.passage_waits()
            clock, pins, scene = OffsetClock(), MockFactory(), Scene([[]] * 3)
            loop = _confirm_loop(store, scene, clock, pins)
            assert loop.awaiting_passage == [w.checkin_id for w in waiting]
            turns = rng.randint(0, len(waiting) + 1)
            for _ in range(turns):
                pins.pin(ENTRY_PIN).drive_low()
                pins.pin(ENTRY_PIN).drive_high()
            loop.step()
            clock.advance(CONFIRM_TIMEOUT_S + 1)
            loop.step()
            loop.step()
            assert loop.awaiting_passage == [] and store.passage_waits() == []
            outcomes = dict(
                sqlite3.connect(db).execute(
                    "SELECT checkin_id, kind FROM door_events WHERE kind IN ('entry', 'annulled')"
                )
            )
            # The oldest waiting grants went in, one per turn; the others were annulled.
            went_in = min(turns, len(waiting))
            assert [outcomes[w.checkin_id] for w in waiting] == (
                ["entry"] * went_in + ["annulled"] * (len(waiting) - went_in)
            )
            recovered += len(waiting)
            confirmed_after += went_in

    assert recovered > CONFIRM_KILLS, "some grants should have been waiting at the kills"
    assert 0 < confirmed_after < recovered
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        granted = [r[0] for r in conn.execute("SELECT id FROM checkins WHERE decision = 'granted'")]
        settled = [
            r[0]
            for r in conn.execute(
                "SELECT checkin_id FROM door_events WHERE kind IN ('entry', 'annulled')"
            )
        ]
        seqs = sorted(
            r[0]
            for r in conn.execute("SELECT seq FROM checkins UNION ALL SELECT seq FROM door_events")
        )
    assert set(acknowledged) <= set(granted), "an acknowledged grant was lost"
    # Every grant ended confirmed or annulled exactly once; the journal's one sequence has no gap.
    assert sorted(settled) == sorted(granted)
    assert seqs == list(range(1, len(seqs) + 1))
