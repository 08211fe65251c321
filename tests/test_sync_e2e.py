"""End to end: the real sync agent (``kiosk sync`` as a process, or ``SyncAgent`` in-process over
real HTTP) against the reference cloud on loopback (docs/architecture.md#reliability-promises).

- every pending check-in and door event reaches the cloud exactly once through drops, 5xx,
  stalls, lost acknowledgements, truncated and garbage answers, and SIGKILLs of the agent, a third
  of the check-ins phone-pass check-ins stored with their pass id, many grants confirmed or
  annulled by the turnstile (an annulled class use given back exactly once);
- a SIGKILL while a snapshot is being written leaves the old replica intact and usable;
- a device whose wall clock is wrong has its check-ins placed at the right time, and its door
  does not revive an expired membership;
- an agent fed only broken answers keeps running, keeps its queue and says why, then recovers.

Real time is used only where a process or a socket needs it, and no verdict depends on it: agents
are killed at points chosen by their progress (requests the proxy has seen, rows acknowledged in
the journal), the proxy's faults are a function of the request count, clocks are injected where a
time is asserted, and every wait is for an event, bounded only against a hang (``HANG_S``) and
failing saying what it waited for. The replica's convergence under random admin edits is in
test_sync_convergence.py.
"""

from __future__ import annotations

import contextlib
import itertools
import random
import re
import signal
import socket
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from cloud import admin
from cloud.embedded import EmbeddedCloud
from e2e_helpers import (
    DOOR,
    Journal,
    Kiosk,
    Members,
    Site,
    corrupt_door_ids,
    import_members_csv,
    make_kiosk,
    run_once,
    running_site,
    seed_members,
    start_agent,
    tail,
    wait_until,
)
from fakes import Scene
from faulty_proxy import FAULTS, FaultyProxy
from kiosk.core.clock import AnchoredClock, SimClock
from kiosk.core.model import ClockQuality, Decision, Now, Reason
from kiosk.data.database import ReplicaFiles
from kiosk.data.store import Store
from kiosk.sync.agent import SyncAgent, SyncSettings
from kiosk.sync.client import CloudClient
from pg import FakeClock, drop_pg_database, fresh_pg_database, pg_server_fixture  # noqa: F401
from rig import Rig
from sync.protocol import parse_utc

# The agent's knobs for the fault runs: short timeouts so a stall costs a second, short backoff
# so a fault costs less than that, quick wake-ups for new check-ins.
FAULTY_SYNC = {
    "interval_s": 1.0,
    "batch_size": 100,
    "page_rows": 100,
    "request_timeout_s": 1.0,
    "backoff_max_s": 1.0,
    "wake_poll_s": 0.1,
}
FAULT_RATE = 0.4
# The proxy draws one fault per request from its own seeded generator, so its statistics are a
# function of the request count alone, whatever the timing or the machine's load. With this seed
# the first 12 requests get every fault kind and, from the 20th request on (checked up to the
# 5,000th), at least 41% of all requests so far faulted: the assertions on the proxy's statistics
# cannot flake once the faulty phase has seen MIN_FAULT_REQUESTS requests.
PROXY_SEED = 2311
MIN_FAULT_REQUESTS = 30
# An agent's life ends at a point chosen by progress, never by time: once the proxy has seen up
# to this many requests from it, or once it has marked rows acknowledged in the journal.
MAX_REQUESTS_PER_LIFE = 4
# Bounds every wait in this file, and only ever a hang (an agent that stopped talking, a cloud
# that stopped answering, a killed process stuck in a disk write): on a loaded machine each step
# takes seconds, and no verdict depends on this figure.
HANG_S = 300.0


@contextlib.contextmanager
def cloud_database(request: pytest.FixtureRequest, tmp_path, backend: str) -> Iterator[str]:
    """A fresh cloud database URL on ``backend`` (``sqlite`` or ``postgres``)."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'cloud.db'}"
        return
    server = request.getfixturevalue("pg_server")
    url = fresh_pg_database(server)
    try:
        yield url
    finally:
        drop_pg_database(server, url)


def pending(kiosk: Kiosk) -> int:
    return kiosk.pending()


def drain(kiosk: Kiosk, attempts: int = 5) -> None:
    """``kiosk sync --once`` until a round succeeds with nothing left pending (bounded)."""
    for _ in range(attempts):
        done = run_once(kiosk)
        with (kiosk.root / "agent.log").open("a") as log:
            log.write(done.stdout + done.stderr)
        if done.returncode == 0 and pending(kiosk) == 0:
            return
    raise AssertionError(
        f"{pending(kiosk)} still pending after {attempts} rounds; last exit {done.returncode}:"
        f"\n{done.stdout}{done.stderr}"
    )


# -- 1. every check-in exactly once, through faults and kills --------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("backend", "total", "kills"),
    [("sqlite", 2000, 18), ("postgres", 300, 5)],
)
def test_every_checkin_reaches_the_cloud_exactly_once_through_faults_and_kills(
    request, tmp_path, backend, total, kills
):
    rng = random.Random(20260501)
    with cloud_database(request, tmp_path, backend) as url, running_site(url) as site:
        members = seed_members(site, packs=8, subscriptions=8, balance=5000)
        proxy = FaultyProxy(site.url, fault_rate=0.0, seed=PROXY_SEED, stall_limit_s=3.0)
        proxy_url = proxy.start()
        try:
            kiosk = make_kiosk(tmp_path / "kiosk", site, proxy_url, **FAULTY_SYNC)
            with kiosk.open_store() as store:
                journal = Journal(store, members, rng, passages=True)
                _write_while_killing(kiosk, journal, proxy, rng, total=total, kills=kills)
                journal.resolve_all()
            fault_stats = Counter(proxy.stats)
            proxy.fault_rate = 0.0
            drain(kiosk)
        finally:
            proxy.stop()
        _assert_exactly_once(site, kiosk, journal, members)

    faults = sum(fault_stats[f] for f in FAULTS)
    requests = faults + fault_stats["pass"]
    assert [f for f in FAULTS if fault_stats[f] == 0] == [], (
        f"a fault never happened: {fault_stats}"
    )
    assert faults / requests >= 0.30, f"only {faults} of {requests} requests faulted"


def _write_while_killing(kiosk, journal, proxy, rng, *, total: int, kills: int) -> None:
    """A quarter of the journal before the first agent starts; the rest written while agents run
    and are SIGKILLed at points chosen by their progress (``_one_life``); two corrupt rows slipped
    in between two lives. Lives go on (without new rows) until the proxy has seen enough
    requests; every life makes at least one, so this ends."""
    log = kiosk.root / "agent.log"
    journal.write(total // 4)
    proxy.fault_rate = FAULT_RATE
    during = total - total // 4 - 2
    life = 0
    while life < kills or proxy.requests_seen() < MIN_FAULT_REQUESTS:
        share = during * (life + 1) // kills - during * life // kills if life < kills else 0
        _one_life(kiosk, journal, proxy, rng, log, share=share, life=life)
        if life == kills // 3:
            journal.corrupt = journal.write(2)
            corrupt_door_ids(kiosk, journal.corrupt)
        life += 1


def _one_life(kiosk, journal, proxy, rng, log, *, share: int, life: int) -> None:
    """Start ``kiosk sync``, write ``share`` rows while it runs, SIGKILL it at a point chosen by
    its progress, and wait for it to be gone.

    The kill point, drawn from ``rng``: as the n-th request of this life (1 to
    ``MAX_REQUESTS_PER_LIFE``) reaches the proxy (the agent is then waiting for an answer the
    cloud may commit without it), or, when rows are pending, as soon as the agent has marked some
    acknowledged (it is then between a commit of its journal and its next request). The rows are
    written a portion at the start and a portion after each request the proxy sees, so the agent
    finds new rows while it works (its wake-up on new check-ins). Waiting is by events only;
    ``HANG_S`` bounds a hang and fails saying what never happened."""
    agent = start_agent(kiosk, log)
    try:
        seen = proxy.requests_seen()
        requests = rng.randint(1, MAX_REQUESTS_PER_LIFE)
        portions = [share * (k + 1) // requests - share * k // requests for k in range(requests)]
        by_ack = share > 0 and rng.random() < 0.3

        if by_ack:
            acked = _acknowledged(kiosk)  # before writing: the new rows keep some pending
            journal.write(share)
            wait_until(  # the journal is another process's: looked at every 2 ms
                lambda: agent.poll() is not None or _acknowledged(kiosk) > acked,
                HANG_S,
                f"agent life {life} to mark rows acknowledged ({proxy.requests_seen() - seen}"
                f" requests so far)",
                poll_s=0.002,
            )
        else:
            for n, portion in enumerate(portions, start=1):
                journal.write(portion)
                if not proxy.wait_for_requests(
                    seen + n,
                    HANG_S,
                    f"request {n} of agent life {life} at the proxy",
                    unless=lambda: agent.poll() is not None,
                ):
                    break  # the agent is gone: said below
        alive = agent.poll() is None
    finally:
        agent.send_signal(signal.SIGKILL)
        agent.wait(timeout=HANG_S)
    assert alive, f"the agent exited by itself ({agent.returncode}):\n{tail(log)}"


def _acknowledged(kiosk: Kiosk) -> int:
    """Journal rows (check-ins and door events) the agent has marked as settled by the cloud
    (synced or rejected)."""
    return sum(
        kiosk.query(f"SELECT COUNT(*) FROM {table} WHERE sync_state != 'pending'")[0][0]  # noqa: S608
        for table in ("checkins", "door_events")
    )


def _assert_exactly_once(site: Site, kiosk: Kiosk, journal: Journal, members: Members) -> None:
    states = kiosk.checkin_states()
    assert len(states) == len(journal.written)
    assert Counter(states.values())["pending"] == 0
    rejected = {i for i, state in states.items() if state == "rejected"}
    assert rejected == set(journal.corrupt), "exactly the corrupt rows end rejected"
    assert site.rejected_ids(kiosk.device_id) == rejected

    rows = site.checkins(kiosk.device_id)
    ids = [row["id"] for row in rows]
    seqs = [row["seq"] for row in rows]
    assert len(ids) == len(set(ids)) and len(seqs) == len(set(seqs)), "duplicates in the cloud"
    assert set(ids) == set(states) - rejected
    # Every request carried the agent's monotonic reading: each row is placed by an anchor.
    assert {row["time_source"] for row in rows} == {"anchored"}
    # Each row carries the credential it was made with: its phone pass, or none (a card).
    assert {row["id"]: row["pass_id"] for row in rows} == {i: journal.passes.get(i) for i in ids}
    assert sum(1 for row in rows if row["pass_id"]) > len(journal.written) // 5

    # The turnstile's events: each exactly once, in the journal's one seq space; each grant
    # ended confirmed or annulled as the door said, and an annulled class use was given back.
    event_states = kiosk.event_states()
    assert set(event_states) == set(journal.events)
    assert set(event_states.values()) == {"synced"}
    events = site.events(kiosk.device_id)
    event_ids = [e["id"] for e in events]
    assert len(event_ids) == len(set(event_ids)), "duplicate events in the cloud"
    assert {e["id"]: e["kind"] for e in events} == journal.events
    assert not {e["seq"] for e in events} & set(seqs), "one seq space for the whole journal"
    assert {e["time_source"] for e in events} == {"anchored"}
    held = set(ids)
    assert {row["id"] for row in rows if row["annulled"]} == journal.annulled & held
    assert {row["id"] for row in rows if row["confirmed"]} == journal.confirmed & held
    annulled_uses = [row for row in rows if row["annulled"] and row["classes_used"] > 0]
    assert len(annulled_uses) >= 5, "the run annulled class uses"

    uses = Counter(
        row["membership_id"]
        for row in rows
        if row["decision"] == "granted" and row["classes_used"] > 0 and not row["annulled"]
    )
    assert sum(uses.values()) > len(journal.written) // 5
    balances = site.balances()
    for _member, membership in members.packs:
        # Start minus the uses that stood (confirmed, or with no passage to wait for).
        assert balances[membership] == members.initial_balance - uses[membership], membership
    # The heartbeat's gap check counts the events' seqs: the cloud never asked for a re-send.
    assert "asked for the journal from seq" not in (kiosk.root / "agent.log").read_text()
    with sqlite3.connect(kiosk.db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


# -- 3. a kill while the snapshot is written leaves the old replica in use -------------------------


# Enough for the kill points to fall inside a snapshot of many pages; the cloud's import of them and
# the device's four pulls (three killed) are most of this test's cost.
SNAPSHOT_MEMBERS = 8_000


@pytest.mark.slow
def test_a_kill_during_a_snapshot_leaves_the_old_replica_intact_and_usable(tmp_path):
    with running_site(f"sqlite:///{tmp_path / 'cloud.db'}") as site:
        members = seed_members(site, packs=3, subscriptions=3, balance=10)
        kiosk = make_kiosk(tmp_path / "kiosk", site, page_rows=100)
        first = run_once(kiosk)
        assert first.returncode == 0, first.stderr
        replica_a = _replica(kiosk)
        assert replica_a == _cloud_replica(site)

        # The cloud changes massively (8,000 members with a membership each), and the tombstones
        # the device would need are purged: its next pull gets 410 and takes a fresh snapshot,
        # about 160 pages of 100 rows: the kill points below land between pages.
        import_members_csv(site, 0, SNAPSHOT_MEMBERS)
        gone, gone_membership = members.subscriptions[0]
        site.write(lambda tx: admin.delete_member(tx, site.org_id, gone, site.now()))
        admin.purge(site.database, 0, site.now() + timedelta(seconds=1))
        replica_b = _cloud_replica(site)

        # Killed as soon as the shadow has rows, half way, and once every page is in (the kill
        # then lands in the catch-up or the swap): each time the replica in use is A's, or B's
        # if the swap won the race, never anything in between.
        log = tmp_path / "snapshot.log"
        for n, kill_at in enumerate((1, replica_b[2] // 2, replica_b[2] - 10)):
            agent = start_agent(kiosk, log, once=True)
            try:
                wait_until(
                    lambda p=agent, at=kill_at: p.poll() is not None or _shadow_rows(kiosk) >= at,
                    HANG_S,
                    f"{kill_at} rows in the snapshot's shadow tables",
                    poll_s=0.002,
                )
                agent.send_signal(signal.SIGKILL)
            finally:
                # A SIGKILLed process waiting on its disk (an fsync on a busy machine) ends
                # only once the write returns: seconds, on a loaded disk.
                agent.wait(timeout=HANG_S)
            assert kiosk.query("PRAGMA integrity_check") == [("ok",)]
            now_in_use = _replica(kiosk)
            if n == 0:
                assert agent.returncode == -signal.SIGKILL, f"it finished first:\n{tail(log)}"
                assert now_in_use == replica_a and _shadow_rows(kiosk) > 0
            elif agent.returncode != -signal.SIGKILL:  # a late kill point the swap got ahead of
                assert agent.returncode == 0 and now_in_use == replica_b, tail(log)
            assert now_in_use in (replica_a, replica_b)
            with Store.open(kiosk.db) as store:  # read-write, as the door opens it
                pack_member, pack = members.packs[0]
                facts = store.member_facts(pack_member, DOOR)
                assert facts is not None
                assert [(m.id, m.remaining_classes) for m in facts.memberships] == [(pack, 10)]
                if now_in_use == replica_a:  # the member deleted in the cloud is still here
                    facts = store.member_facts(gone, DOOR)
                    assert facts is not None
                    assert [m.id for m in facts.memberships] == [gone_membership]
        assert "(410)" in log.read_text()

        kiosk.write_config(page_rows=1000)
        again = run_once(kiosk)
        assert again.returncode == 0, again.stderr
        assert _replica(kiosk) == replica_b == _cloud_replica(site)
        with kiosk.open_store(readonly=True) as store:
            assert store.member_facts(gone, DOOR) is None
            assert (
                store.member_count()
                == SNAPSHOT_MEMBERS + len(members.packs) + len(members.subscriptions) - 1
            )
        if "replica snapshot" in again.stdout:  # unless a late kill let B's swap through already
            assert _shadow_rows(kiosk) == 0, "the shadow's space is given back after the swap"


def _replica(kiosk: Kiosk) -> tuple[int, str | None, int]:
    """(version, checksum, count) of the replica the device's door reads."""
    with kiosk.open_store(readonly=True) as store:
        count, checksum = store.replica_checksum()
        return store.replica_info().version, checksum, count


def _cloud_replica(site: Site) -> tuple[int, str, int]:
    checkpoint = site.checkpoint()
    return checkpoint.version, checkpoint.checksum, checkpoint.count


def _shadow_rows(kiosk: Kiosk) -> int:
    """Rows in the replica files being built beside the one in use (read by another connection):
    a snapshot is built in a new file and switched in by the pointer when complete."""
    files = ReplicaFiles(kiosk.db)
    total = 0
    for path in files.leftovers(keep=files.current()):
        if not re.fullmatch(r".*-replica-[0-9a-f]{32}", path.name):
            continue
        with (
            contextlib.suppress(sqlite3.Error),
            contextlib.closing(
                sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
            ) as conn,
        ):
            total += conn.execute(
                "SELECT (SELECT COUNT(*) FROM members) + (SELECT COUNT(*) FROM memberships)"
            ).fetchone()[0]
    return total


# -- 4. clocks -------------------------------------------------------------------------------------

MONOTONIC_BASE_NS = 10**15  # this simulated boot's monotonic clock: far from zero, like a real one


class WrongWallClock:
    """A device clock on the test's timeline (the cloud's injected clock, the true time): its
    monotonic time is right (``MONOTONIC_BASE_NS`` plus the time since the timeline began) and its
    wall time is whatever ``wall_of(true time)`` says; never NTP-synced. Both clocks stand still
    while a request travels, so the placement is exact whatever the machine's load."""

    def __init__(
        self, boot: str, timeline: FakeClock, wall_of: Callable[[datetime], datetime]
    ) -> None:
        self.boot_id = boot
        self._timeline = timeline
        self._origin = timeline.now
        self._wall_of = wall_of

    def wall(self) -> datetime:
        return self._wall_of(self._timeline.now)

    def monotonic_ns(self) -> int:
        since = self._timeline.now - self._origin
        return MONOTONIC_BASE_NS + since // timedelta(microseconds=1) * 1000

    def quality(self) -> ClockQuality:
        return ClockQuality.UNSYNCED

    def sleep(self, seconds: float) -> None:
        raise AssertionError("a single cycle never sleeps")


def wrong_walls(timeline: FakeClock) -> dict[str, Callable[[datetime], datetime]]:
    """Wall clocks a Pi without a battery clock shows, by the true time: counting up from 1970
    since boot, a year ahead, and stepping back an hour at every reading."""
    readings = itertools.count()
    booted = timeline.now
    return {
        "1970": lambda true: datetime(1970, 1, 1, tzinfo=UTC) + (true - booted),
        "a-year-ahead": lambda true: true + timedelta(days=365),
        "stepping-back": lambda true: true - timedelta(hours=next(readings)),
    }


def test_the_cloud_places_checkins_by_monotonic_time_whatever_the_wall_clock_said(tmp_path):
    """Three boots of one device, each with a wrong wall clock; events from up to two minutes
    before each sync are placed within a second of when they really happened."""
    timeline = FakeClock(datetime(2026, 5, 1, 12, 0, tzinfo=UTC))
    with running_site(f"sqlite:///{tmp_path / 'cloud.db'}", clock=timeline) as site:
        members = seed_members(site, packs=2, subscriptions=2, balance=100)
        kiosk = make_kiosk(tmp_path / "kiosk", site)
        expected: dict[str, datetime] = {}
        with kiosk.open_store() as store:
            for boot, wall_of in wrong_walls(timeline).items():
                timeline.advance(600)  # a reboot, ten minutes after the previous sync
                clock = WrongWallClock(f"boot-{boot}", timeline, wall_of)
                timeline.advance(300)  # the door's first check-in is two minutes before the sync
                for ago_s in (120, 90, 60, 30, 5, 0):
                    true_time = timeline.now - timedelta(seconds=ago_s)
                    monotonic = clock.monotonic_ns() - ago_s * 10**9
                    wall = clock.wall() - timedelta(seconds=ago_s)
                    member, membership = members.subscriptions[0]
                    decision = Decision(
                        Reason.SUBSCRIPTION.verdict, Reason.SUBSCRIPTION, member, membership
                    )
                    now = Now(wall, monotonic, clock.boot_id, ClockQuality.UNSYNCED)
                    row = store.append_checkin(decision, door_id=DOOR, replica_version=0, now=now)
                    expected[row.id] = true_time
                # The timeout only bounds a hang: both clocks stand still meanwhile.
                client = CloudClient(site.url, kiosk.identity.token, clock=clock, timeout_s=60)
                with client:
                    agent = SyncAgent(store, client, SyncSettings(), clock, sleep=clock.sleep)
                    report = agent.cycle()
                assert report.ok, report.error
                assert report.pushed == 6
            walls = [c.wall_time for c in store.recent_checkins(100)]
        placed = {row["id"]: row for row in site.checkins(kiosk.device_id)}
    assert set(placed) == set(expected)
    assert min(walls).year <= 1970 and max(walls) > timeline.now + timedelta(days=300)
    for checkin_id, true_time in expected.items():
        row = placed[checkin_id]
        assert row["time_source"] == "anchored"
        error = abs(parse_utc(row["occurred_at"], "occurred_at") - true_time)
        assert error < timedelta(seconds=1), (checkin_id, row["occurred_at"], true_time)


def test_after_a_reboot_with_the_clock_stepped_back_the_first_sync_ends_an_expired_membership(
    tmp_path,
):
    """The cloud's time (an injected clock) moves 40 days while the device's wall clock falls
    back to 1970 on a reboot. Once the agent has synced, the door tells the time from the agent's
    anchor: the membership that ended meanwhile is refused, a valid one admitted, and the cloud
    places the door's check-ins at its own time."""
    cloud_time = FakeClock(datetime(2026, 6, 1, 12, 0, tzinfo=UTC))
    with running_site(f"sqlite:///{tmp_path / 'cloud.db'}", clock=cloud_time) as site:
        codes = {"ends-soon": "CARD-ENDS-SOON", "paid-up": "CARD-PAID-UP"}
        ends = {"ends-soon": "2026-06-10", "paid-up": "2026-08-31"}

        def make(tx) -> None:
            for member_id, code in codes.items():
                fields = {"id": member_id, "first_name": member_id, "last_name": "E2e"}
                admin.save_member(tx, site.org_id, None, {**fields, "code": code}, site.now())
                membership = {
                    "id": f"sub-{member_id}",
                    "member_id": member_id,
                    "type": "SUBSCRIPTION",
                    "start_date": "2026-05-01",
                    "end_date": ends[member_id],
                }
                admin.save_membership(tx, site.org_id, None, membership, site.now())

        site.write(make)
        kiosk = make_kiosk(tmp_path / "kiosk", site)
        with kiosk.open_store() as store:
            first_boot = SimClock(datetime(1970, 1, 1, tzinfo=UTC), quality=ClockQuality.UNSYNCED)
            _sync_like_kiosk_sync(store, site, kiosk, first_boot)
            assert _door(tmp_path / "door1", store, first_boot, codes["ends-soon"]) == [
                Reason.SUBSCRIPTION
            ]
            _sync_like_kiosk_sync(store, site, kiosk, first_boot)  # nothing left to push

            cloud_time.advance(40 * 86400)  # 2026-07-11: "ends-soon" ended a month ago
            rebooted = SimClock(datetime(1970, 1, 1, tzinfo=UTC), quality=ClockQuality.UNSYNCED)
            _sync_like_kiosk_sync(store, site, kiosk, rebooted)
            # Nothing to push, an idle poll (304), then the heartbeat's anchor: the replica's
            # sync time is the cloud's, not the 1970 the wall clock said during the poll.
            synced_at = store.replica_info().synced_at
            assert synced_at is not None and abs(synced_at - cloud_time.now) < timedelta(minutes=1)
            reasons = _door(
                tmp_path / "door2", store, rebooted, codes["ends-soon"], codes["paid-up"]
            )
            assert reasons == [Reason.NO_VALID_MEMBERSHIP, Reason.SUBSCRIPTION]
            door_rows = store.recent_checkins(2)
            assert all(c.clock_quality is ClockQuality.SERVER_ANCHORED for c in door_rows)
            assert all(abs(c.wall_time - cloud_time.now) < timedelta(minutes=5) for c in door_rows)
            _sync_like_kiosk_sync(store, site, kiosk, rebooted)
        placed = {row["id"]: row for row in site.checkins(kiosk.device_id)}
    for row in door_rows:
        occurred = parse_utc(placed[row.id]["occurred_at"], "occurred_at")
        assert placed[row.id]["time_source"] == "anchored"
        assert abs(occurred - row.wall_time) < timedelta(seconds=1)


def _sync_like_kiosk_sync(store: Store, site: Site, kiosk: Kiosk, base: SimClock) -> None:
    """One agent cycle wired as ``kiosk sync`` wires it: an AnchoredClock over the base clock."""
    clock = AnchoredClock(base, store.latest_anchor)
    with CloudClient(site.url, kiosk.identity.token, clock=clock, timeout_s=60) as client:
        agent = SyncAgent(store, client, SyncSettings(), clock, sleep=base.sleep)
        report = agent.cycle()
    assert report.ok, report.error


def _door(folder, store: Store, base: SimClock, *codes: str) -> list[Reason]:
    """Scan ``codes`` at a door on ``base`` (the kiosk's own clock, via the agent's anchors);
    returns the decisions' reasons."""
    scene = Scene()
    for code in codes:
        scene.add([code], 3).add([], 5)
    rig = Rig(folder, scene, store=store, clock=base)
    rig.loop.clock = AnchoredClock(base, store.latest_anchor)
    rig.run()
    return [outcome.decision.reason for outcome in rig.outcomes]


# -- 5. nothing but broken answers -----------------------------------------------------------------


def test_an_agent_fed_only_broken_answers_keeps_running_and_its_queue_then_recovers(tmp_path):
    with running_site(f"sqlite:///{tmp_path / 'cloud.db'}") as site:
        members = seed_members(site, packs=2, subscriptions=2, balance=100)
        proxy = FaultyProxy(site.url, fault_rate=1.0, faults=("garbage", "truncate"), seed=5)
        proxy_url = proxy.start()
        try:
            kiosk = make_kiosk(tmp_path / "kiosk", site, proxy_url, **FAULTY_SYNC)
            with kiosk.open_store() as store:
                written = Journal(store, members, random.Random(5)).write(30)

            once = run_once(kiosk)
            assert once.returncode == 1, once.stderr
            assert "sync incomplete: push:" in once.stderr and proxy_url[7:] in once.stderr
            assert pending(kiosk) == 30

            log = tmp_path / "agent.log"
            agent = start_agent(kiosk, log)
            try:
                proxy.wait_for_requests(
                    proxy.requests_seen() + 8,
                    HANG_S,
                    "eight more broken answers",
                    unless=lambda: agent.poll() is not None,
                )
                assert agent.poll() is None, f"the agent gave up:\n{tail(log)}"
                assert proxy.stats["garbage"] > 0 and proxy.stats["truncate"] > 0
                with kiosk.open_store(readonly=True) as store:
                    status = store.sync_status()
                assert status["state"] == "offline" and status["last_error"]
                assert pending(kiosk) == 30

                proxy.fault_rate = 0.0
                wait_until(lambda: pending(kiosk) == 0, HANG_S, "the queue to drain")
                wait_until(
                    lambda: _status(kiosk).get("last_error", "x") is None,
                    HANG_S,
                    "a clean round",
                )
                assert agent.poll() is None
            finally:
                agent.send_signal(signal.SIGTERM)
                agent.wait(timeout=HANG_S)
            assert agent.returncode == 0, tail(log)
        finally:
            proxy.stop()
        rows = site.checkins(kiosk.device_id)
    # Truncated answers came after the cloud had stored the batch: stored once all the same.
    assert sorted(r["id"] for r in rows) == sorted(written)


def _status(kiosk: Kiosk) -> dict:
    with kiosk.open_store(readonly=True) as store:
        return store.sync_status()


# -- regressions found by these tests --------------------------------------------------------------


def test_the_embedded_cloud_turns_nagle_off_on_its_connections(tmp_path):
    """EmbeddedCloud binds its own socket. Made without naming IPPROTO_TCP, asyncio left Nagle on
    for its connections and every small answer waited ~40 ms for the client's delayed ACK: a
    snapshot in 100-row pages took ten times as long as the work it did."""
    with EmbeddedCloud(f"sqlite:///{tmp_path / 'cloud.db'}") as cloud:
        assert cloud.url is not None
        with httpx.Client(base_url=cloud.url) as client:
            assert client.get("/healthz").status_code == 200  # the connection stays open
            connections = cloud._server.server_state.connections
            sockets = [c.transport.get_extra_info("socket") for c in connections]
            assert sockets
            assert all(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) for s in sockets)
