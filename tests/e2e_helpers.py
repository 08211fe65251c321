"""Shared pieces of the end-to-end sync tests (tests/test_sync_e2e.py, test_sync_convergence.py).

- ``Site``: the reference cloud (``EmbeddedCloud``) on a real loopback socket, with one
  organisation and gym, driven through the admin service functions (``cloud.admin``) and read
  back through its own database.
- ``Kiosk``: one device's folder: configuration file, credentials (enrolled through the real cloud,
  then pointed at whatever address the test wants the device to use, e.g. a ``FaultyProxy``) and
  the device database.
- ``Journal``: writes check-ins into the device journal the way the door does
  (``Store.append_checkin``), with the turnstile's passage events if asked
  (``Store.append_event``), remembering what it wrote.
- ``start_agent`` / ``run_once``: ``kiosk sync`` as a real subprocess.

Nothing here sleeps except ``wait_until``, which polls a condition for a bounded time.
"""

from __future__ import annotations

import contextlib
import json
import random
import sqlite3
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cloud import admin
from cloud import db as cloud_db
from cloud.embedded import EmbeddedCloud
from cloud.importer import import_members
from cloud.replica import Scope, checkpoint
from fakes import clean_env
from kiosk import __version__
from kiosk.core.ids import boot_id
from kiosk.core.model import ClockQuality, Decision, EventKind, Now, Reason
from kiosk.core.passes import PassAccepted
from kiosk.data.store import Store
from kiosk.sync.client import CloudClient
from kiosk.sync.identity import DeviceIdentity, save_identity
from sync.protocol import Checkpoint

REPO = Path(__file__).resolve().parents[1]
TIMEZONE = "UTC"
DOOR = "front"
PASSAGE_TIMEOUT_S = 5.0


def utc_now() -> datetime:
    return datetime.now(UTC)


def wait_until(condition: Callable[[], Any], timeout_s: float, what: str, poll_s: float = 0.02):
    """Poll ``condition`` until it returns something truthy (returned), at most ``timeout_s``;
    fails the test naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(poll_s)


# -- the cloud -------------------------------------------------------------------------------------


@dataclass
class Site:
    """A running reference cloud with one organisation and gym (time zone UTC). ``now`` is the
    cloud's clock (the real one unless the test injected its own)."""

    cloud: EmbeddedCloud
    org_id: str
    gym_id: str
    now: Callable[[], datetime] = utc_now

    @property
    def url(self) -> str:
        assert self.cloud.url is not None
        return self.cloud.url

    @property
    def database(self) -> cloud_db.Database:
        return self.cloud.app.state.cloud.database

    def write(self, fn: Callable[[cloud_db.Tx], Any]) -> Any:
        """``fn(tx)`` in one write transaction of the cloud's database."""
        return self.database.transact(fn)

    def read(self, fn: Callable[[cloud_db.Tx], Any]) -> Any:
        return self.database.transact(fn, write=False)

    # -- reading the cloud back ------------------------------------------------------------------

    def checkpoint(self) -> Checkpoint:
        """Version, checksum and count of the gym's replica as the cloud holds it now."""

        def read(tx: cloud_db.Tx) -> Checkpoint:
            version, _purged = cloud_db.org_versions(tx, self.org_id)
            return checkpoint(tx, Scope(self.org_id, self.gym_id), version)

        return self.read(read)

    def checkins(self, device_id: str) -> list[dict[str, Any]]:
        """Every check-in the cloud holds from ``device_id`` (one dict per stored row)."""
        return self.read(
            lambda tx: tx.all(
                "SELECT id, seq, decision, membership_id, classes_used, occurred_at, time_source,"
                " pass_id, annulled, confirmed FROM checkins WHERE device_id = ? ORDER BY seq",
                (device_id,),
            )
        )

    def events(self, device_id: str) -> list[dict[str, Any]]:
        """Every door event the cloud holds from ``device_id``."""
        return self.read(
            lambda tx: tx.all(
                "SELECT id, seq, kind, checkin_id, time_source, effect_version FROM door_events"
                " WHERE device_id = ? ORDER BY seq",
                (device_id,),
            )
        )

    def rejected_ids(self, device_id: str) -> set[str]:
        rows = self.read(
            lambda tx: tx.all("SELECT item_id FROM rejections WHERE device_id = ?", (device_id,))
        )
        return {row["item_id"] for row in rows}

    def balances(self) -> dict[str, int | None]:
        """Live memberships' ``remaining_classes`` by id."""
        rows = self.read(
            lambda tx: tx.all(
                "SELECT id, remaining_classes FROM memberships"
                " WHERE organization_id = ? AND deleted = FALSE",
                (self.org_id,),
            )
        )
        return {row["id"]: row["remaining_classes"] for row in rows}

    # -- enrolling a device ----------------------------------------------------------------------

    def enrol(self, name: str = "e2e door") -> DeviceIdentityParts:
        """Enrol a device through the real device API with a fresh single-use code."""
        made = self.write(
            lambda tx: admin.create_enrolment_code(tx, self.org_id, self.gym_id, 60, self.now())
        )
        with CloudClient(self.url, None, software_version=__version__) as client:
            enrolment = client.enrol(made["code"], name, __version__)
        return DeviceIdentityParts(enrolment)


@dataclass(frozen=True)
class DeviceIdentityParts:
    """An enrolment, to be saved with whichever cloud address the device should use."""

    enrolment: Any

    @property
    def device_id(self) -> str:
        return self.enrolment.device_id

    @property
    def token(self) -> str:
        return self.enrolment.token

    def identity(self, cloud_url: str) -> DeviceIdentity:
        return DeviceIdentity.from_enrolment(cloud_url, self.enrolment)


@contextlib.contextmanager
def running_site(database_url: str, clock: Callable[[], datetime] | None = None) -> Iterator[Site]:
    """A reference cloud on 127.0.0.1 over ``database_url``, with a fresh organisation; ``clock``
    replaces the cloud's clock (e.g. ``pg.FakeClock``)."""
    now = clock or utc_now
    cloud = EmbeddedCloud(database_url, clock=clock)
    cloud.start()
    try:
        database = cloud.app.state.cloud.database
        made = admin.create_organization(database, "Acme Fitness", "Main St", TIMEZONE, now())
        yield Site(cloud, made.organization_id, made.gym_id, now)
    finally:
        cloud.stop()


@dataclass
class Members:
    """Seeded members: ``packs`` and ``subscriptions`` are (member id, membership id) pairs."""

    packs: list[tuple[str, str]] = field(default_factory=list)
    subscriptions: list[tuple[str, str]] = field(default_factory=list)
    initial_balance: int = 0


def seed_members(site: Site, *, packs: int, subscriptions: int, balance: int) -> Members:
    """A plan, ``packs`` members with a CLASS_PACK of ``balance`` classes and ``subscriptions``
    members with an open-ended subscription, through the admin service functions."""
    seeded = Members(initial_balance=balance)
    start = (site.now() - timedelta(days=30)).date().isoformat()

    def make(tx: cloud_db.Tx) -> None:
        now = site.now()
        org = site.org_id
        admin.save_plan(tx, org, None, {"id": "plan-any", "name": "Any time"}, now)
        for n in range(packs + subscriptions):
            member_id, membership_id, code = f"m{n:04d}", f"ms{n:04d}", f"CARD-{n:06d}"
            fields = {"id": member_id, "first_name": f"Member{n}", "last_name": "E2e"}
            admin.save_member(tx, org, None, {**fields, "code": code}, now)
            membership: dict[str, Any] = {
                "id": membership_id,
                "member_id": member_id,
                "plan_id": "plan-any",
                "start_date": start,
            }
            if n < packs:
                membership |= {"type": "CLASS_PACK", "remaining_classes": balance}
                seeded.packs.append((member_id, membership_id))
            else:
                membership |= {"type": "SUBSCRIPTION"}
                seeded.subscriptions.append((member_id, membership_id))
            admin.save_membership(tx, org, None, membership, now)

    site.write(make)
    return seeded


def import_members_csv(site: Site, first: int, count: int, *, prefix: str = "bulk") -> None:
    """``count`` members (with a subscription each) in one import transaction, as an admin's CSV
    upload would add them: one new replica version."""
    lines = ["member_id,first_name,last_name,code,membership_type,start_date"]
    lines += [
        f"{prefix}{n:06d},Bulk{n},Member,{prefix.upper()}-{n:08d},SUBSCRIPTION,2026-01-01"
        for n in range(first, first + count)
    ]
    text = "\n".join(lines) + "\n"
    site.write(lambda tx: import_members(tx, site.org_id, text, site.now()))


# -- the device ------------------------------------------------------------------------------------


@dataclass
class Kiosk:
    """One device's files and its enrolment (``device_id`` is its id in the cloud)."""

    root: Path
    identity: DeviceIdentityParts

    @property
    def device_id(self) -> str:
        return self.identity.device_id

    @property
    def config(self) -> Path:
        return self.root / "kiosk.toml"

    @property
    def db(self) -> Path:
        return self.root / "kiosk.db"

    @property
    def credentials(self) -> Path:
        return self.root / "device.json"

    def write_config(self, **sync: Any) -> None:
        """The configuration file, with ``[sync]`` keys from ``sync`` (TOML literals via JSON)."""
        lines = [
            "[site]",
            f'timezone = "{TIMEZONE}"',
            "[store]",
            f"path = {json.dumps(str(self.db))}",
            "[sync]",
            f"credentials_file = {json.dumps(str(self.credentials))}",
            *(f"{key} = {json.dumps(value)}" for key, value in sync.items()),
            "[logging]",
            'level = "INFO"',
        ]
        self.config.write_text("\n".join(lines) + "\n")

    def point_at(self, cloud_url: str) -> None:
        """(Re)write the credentials so the device talks to ``cloud_url``."""
        save_identity(self.credentials, self.identity.identity(cloud_url), overwrite=True)

    def open_store(self, *, readonly: bool = False) -> Store:
        return Store.open(self.db, readonly=readonly)

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        """A read-only query on the device database (a separate connection, like another
        process)."""
        uri = f"file:{urllib.parse.quote(str(self.db))}?mode=ro"
        conn = sqlite3.connect(uri, uri=True, timeout=5.0)
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()

    def checkin_states(self) -> dict[str, str]:
        """{check-in id: sync state} of every journal row."""
        return dict(self.query("SELECT id, sync_state FROM checkins"))

    def event_states(self) -> dict[str, str]:
        """{door event id: sync state} of every door event in the journal."""
        return dict(self.query("SELECT id, sync_state FROM door_events"))

    def pending(self) -> int:
        """Journal rows (check-ins and door events) still waiting for upload."""
        return sum(
            self.query(f"SELECT COUNT(*) FROM {table} WHERE sync_state = 'pending'")[0][0]  # noqa: S608
            for table in ("checkins", "door_events")
        )


def make_kiosk(root: Path, site: Site, cloud_url: str | None = None, **sync: Any) -> Kiosk:
    """Enrol a device through the real cloud and write its files under ``root``; its credentials
    name ``cloud_url`` (default: the cloud itself)."""
    root.mkdir(parents=True, exist_ok=True)
    kiosk = Kiosk(root, site.enrol())
    kiosk.point_at(cloud_url or site.url)
    kiosk.write_config(**sync)
    return kiosk


# -- the journal -----------------------------------------------------------------------------------


# Pass ids (8 base32 characters) the journal's phone-pass check-ins are made with.
PHONES = ("PHONEAAA", "PHONEBBB", "PHONECCC")


class Journal:
    """Writes check-ins the way the door does, on this machine's real boot and clocks (so the
    agent's anchors place them), with a seeded mix of class-pack uses, subscription entries and
    denials; about a third of them made with a phone pass (``passes``: check-in id to pass id;
    an admission with a pass also remembers its code, as the door does).

    With ``passages`` the door has a turnstile that talks back: most grants wait for their
    passage (``Store.append_checkin(await_passage_s=...)``) and are resolved a few rows later
    with an ``entry`` or, for about a third, an ``annulled`` event (``Store.append_event``, as
    the door loop does), and tailgaters and exit passages are journaled in between; ``events``
    maps each event's id to its kind, ``annulled`` and ``confirmed`` hold the check-ins
    resolved either way."""

    def __init__(
        self, store: Store, members: Members, rng: random.Random, *, passages: bool = False
    ) -> None:
        self.store = store
        self.members = members
        self.rng = rng
        # Its own generator: the card/pass choice leaves ``rng``'s sequence (kill points) as is.
        self.pass_rng = random.Random(11)
        self.boot = boot_id()
        self.written: list[str] = []
        self.corrupt: list[str] = []  # ids the test damaged on purpose
        self.passes: dict[str, str] = {}
        self._steps = 0  # a fresh time step for every admission's code
        self.passages = passages
        self.passage_rng = random.Random(13)  # its own too, for the same reason
        self.waiting: list[str] = []  # grants waiting for their passage, oldest first
        self.events: dict[str, str] = {}
        self.annulled: set[str] = set()
        self.confirmed: set[str] = set()

    def _now(self) -> Now:
        return Now(utc_now(), time.monotonic_ns(), self.boot, ClockQuality.NTP_SYNCED)

    def _event(self, kind: EventKind, checkin_id: str | None = None) -> None:
        event = self.store.append_event(kind, door_id=DOOR, at=self._now(), checkin_id=checkin_id)
        assert event is not None, "a grant is resolved once"
        self.events[event.id] = kind.value

    def _turnstile(self) -> None:
        """What the turnstile reports after a row: a few waiting grants resolved, oldest first,
        and now and then a tailgater or someone leaving."""
        rng = self.passage_rng
        while self.waiting and rng.random() < 0.5:
            grant = self.waiting.pop(0)
            if rng.random() < 0.35:
                self._event(EventKind.ANNULLED, grant)
                self.annulled.add(grant)
            else:
                self._event(EventKind.ENTRY, grant)
                self.confirmed.add(grant)
        roll = rng.random()
        if roll < 0.05:
            self._event(EventKind.TAILGATING)
        elif roll < 0.15:
            self._event(EventKind.EXIT)

    def resolve_all(self) -> None:
        """Every grant still waiting passes (an ``entry`` each)."""
        while self.waiting:
            grant = self.waiting.pop(0)
            self._event(EventKind.ENTRY, grant)
            self.confirmed.add(grant)

    def decision(self) -> Decision:
        roll = self.rng.random()
        if roll < 0.45 and self.members.packs:
            member, membership = self.rng.choice(self.members.packs)
            return Decision(Reason.CLASS_PACK.verdict, Reason.CLASS_PACK, member, membership, 1)
        if roll < 0.85 and self.members.subscriptions:
            member, membership = self.rng.choice(self.members.subscriptions)
            return Decision(Reason.SUBSCRIPTION.verdict, Reason.SUBSCRIPTION, member, membership)
        reason = self.rng.choice([Reason.UNKNOWN_CODE, Reason.PASSBACK, Reason.OUTSIDE_HOURS])
        member = None if reason is Reason.UNKNOWN_CODE else self.rng.choice(self.members.packs)[0]
        return Decision(reason.verdict, reason, member)

    def write(self, count: int = 1) -> list[str]:
        ids = []
        for _ in range(count):
            now = Now(utc_now(), time.monotonic_ns(), self.boot, ClockQuality.NTP_SYNCED)
            decision = self.decision()
            pass_id = use = None
            if self.pass_rng.random() < 0.35:
                pass_id = self.pass_rng.choice(PHONES)
                if decision.member_id is not None and decision.verdict == "granted":
                    self._steps += 1
                    keep = now.wall + timedelta(hours=1)
                    use = PassAccepted(pass_id, decision.member_id, self._steps, keep)
            wait = (
                self.passages and decision.verdict == "granted" and self.passage_rng.random() < 0.6
            )
            row = self.store.append_checkin(
                decision,
                door_id=DOOR,
                replica_version=0,
                now=now,
                pass_id=pass_id,
                pass_use=use,
                await_passage_s=PASSAGE_TIMEOUT_S if wait else None,
            )
            if pass_id is not None:
                self.passes[row.id] = pass_id
            ids.append(row.id)
            if wait:
                self.waiting.append(row.id)
            if self.passages:
                self._turnstile()
        self.written += ids
        return ids


def corrupt_door_ids(kiosk: Kiosk, checkin_ids: list[str]) -> None:
    """Damage journal rows behind the store's back (a bug, a bad migration): a door id with a
    space, which the protocol refuses."""
    conn = sqlite3.connect(kiosk.db, timeout=5.0)
    try:
        with conn:
            conn.executemany(
                "UPDATE checkins SET door_id = 'front door' WHERE id = ?",
                [(i,) for i in checkin_ids],
            )
    finally:
        conn.close()


# -- the agent as a process ------------------------------------------------------------------------


def agent_command(kiosk: Kiosk, *, once: bool) -> list[str]:
    command = [sys.executable, "-m", "kiosk", "sync", "--config", str(kiosk.config)]
    return [*command, "--once"] if once else command


def start_agent(kiosk: Kiosk, log: Path, *, once: bool = False) -> subprocess.Popen:
    """``kiosk sync`` (``--once``) as a child process; its output is appended to ``log``."""
    with log.open("ab") as out:
        return subprocess.Popen(
            agent_command(kiosk, once=once),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=clean_env(),
            cwd=REPO,
        )


def run_once(kiosk: Kiosk, timeout_s: float = 300.0) -> subprocess.CompletedProcess:
    """One ``kiosk sync --once`` round; returns the finished process with its output.
    ``timeout_s`` only bounds a hang (a round on a loaded machine may take tens of seconds)."""
    return subprocess.run(
        agent_command(kiosk, once=True),
        capture_output=True,
        text=True,
        env=clean_env(),
        cwd=REPO,
        timeout=timeout_s,
        check=False,
    )


def tail(path: Path, lines: int = 30) -> str:
    """The end of a log file, for failure messages."""
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
