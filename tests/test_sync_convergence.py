"""Convergence, end to end: whatever an admin does while a kiosk is offline, the kiosk's replica
equals the cloud's once it syncs again (docs/sync-protocol.md), on SQLite and on PostgreSQL.

A real ``SyncAgent`` (in-process, one ``cycle()`` at a time, nothing sleeps) talks real HTTP to
the reference cloud through a ``FaultyProxy``: at a drop rate of 1.0 the kiosk is offline and its
replica must not move; at 0 it syncs. Meanwhile seeded random admin edits go through the admin
service functions: members added, edited, revived, deleted, cards moved between members;
memberships added, edited, moved, deleted; plans (some with a visit limit) added, edited,
deleted; opening hours replaced; closures added and deleted, for the kiosk's gym and for another
gym whose rows it must not get.
Small pages make every pull span several pages.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from datetime import date, timedelta

from cloud import admin
from e2e_helpers import Site, make_kiosk, running_site, seed_members
from faulty_proxy import FaultyProxy
from kiosk.core.clock import SimClock
from kiosk.data.store import Store
from kiosk.sync.agent import SyncAgent, SyncSettings
from kiosk.sync.client import CloudClient
from pg import cloud_db_url_fixture, pg_server_fixture  # noqa: F401

ROUNDS = 3
EDITS_PER_ROUND = 60
PAGE_ROWS = 7


class AdminEdits:
    """Seeded random admin edits that are always valid: it tracks what is live in the cloud."""

    def __init__(self, site: Site, rng: random.Random) -> None:
        self.site = site
        self.rng = rng
        self.ids = itertools.count(1)
        other = site.write(
            lambda tx: admin.create_gym(tx, site.org_id, "Other St", "UTC", site.now())
        )
        self.gyms = [site.gym_id, other["id"]]
        self.members: dict[str, str | None] = {}  # id -> printed card code
        self.deleted_members: list[str] = []
        self.memberships: dict[str, str] = {}  # id -> member id
        self.deleted_memberships: list[str] = []
        self.plans: set[str] = set()
        self.closures: dict[str, str] = {}  # id -> gym id
        self.applied: list[str] = []

    # -- one edit --------------------------------------------------------------------------------

    def one(self) -> None:
        ops: list[tuple[Callable[[], bool], int]] = [
            (self.add_member, 6),
            (self.edit_member, 5),
            (self.move_card, 2),
            (self.delete_member, 3),
            (self.add_membership, 6),
            (self.edit_membership, 5),
            (self.delete_membership, 3),
            (self.add_plan, 2),
            (self.edit_plan, 2),
            (self.delete_plan, 2),
            (self.replace_hours, 2),
            (self.add_closure, 2),
            (self.delete_closure, 2),
        ]
        while True:
            op = self.rng.choices([o for o, _ in ops], [w for _, w in ops])[0]
            if op():  # False: nothing to act on yet, draw again
                self.applied.append(op.__name__)
                return

    def _write(self, fn: Callable) -> dict:
        return self.site.write(lambda tx: fn(tx, self.site.org_id))

    def _date(self, low: int, high: int) -> str:
        return (date(2026, 5, 1) + timedelta(days=self.rng.randint(low, high))).isoformat()

    def add_member(self) -> bool:
        if self.deleted_members and self.rng.random() < 0.3:
            member_id = self.deleted_members.pop(self.rng.randrange(len(self.deleted_members)))
        else:
            member_id = f"mem{next(self.ids)}"
        code = f"CODE-{next(self.ids):06d}" if self.rng.random() < 0.8 else None
        fields = {
            "id": member_id,
            "first_name": self.rng.choice(["Ada", "Bo", "Cy", "Di"]),
            "last_name": self.rng.choice(["Lee", "Ng", "Ortiz"]),
            "status": self.rng.choice(["ACTIVE", "ACTIVE", "EXPIRED", "PAUSED"]),
            "is_staff": self.rng.random() < 0.1,
            "code": code,
        }
        self._write(lambda tx, org: admin.save_member(tx, org, None, fields, self.site.now()))
        self.members[member_id] = code
        return True

    def edit_member(self) -> bool:
        if not self.members:
            return False
        member_id = self.rng.choice(sorted(self.members))
        fields: dict = self.rng.choice(
            [
                {"first_name": f"Renamed{next(self.ids)}"},
                {"status": self.rng.choice(["ACTIVE", "EXPIRED", "PAUSED"])},
                {"is_staff": self.rng.random() < 0.5},
                {"code": None},
                {"code": f"CODE-{next(self.ids):06d}"},
            ]
        )
        self._write(lambda tx, org: admin.save_member(tx, org, member_id, fields, self.site.now()))
        if "code" in fields:
            self.members[member_id] = fields["code"]
        return True

    def move_card(self) -> bool:
        """Two members swap their cards in one transaction (one goes through "no card")."""
        holders = sorted(m for m, code in self.members.items() if code is not None)
        if len(holders) < 2:
            return False
        a, b = self.rng.sample(holders, 2)
        code_a, code_b = self.members[a], self.members[b]

        def swap(tx, org) -> None:
            now = self.site.now()
            admin.save_member(tx, org, a, {"code": None}, now)
            admin.save_member(tx, org, b, {"code": code_a}, now)
            admin.save_member(tx, org, a, {"code": code_b}, now)

        self._write(swap)
        self.members[a], self.members[b] = code_b, code_a
        return True

    def delete_member(self) -> bool:
        if not self.members:
            return False
        member_id = self.rng.choice(sorted(self.members))
        self._write(lambda tx, org: admin.delete_member(tx, org, member_id, self.site.now()))
        del self.members[member_id]
        self.deleted_members.append(member_id)
        for membership_id, owner in list(self.memberships.items()):
            if owner == member_id:
                del self.memberships[membership_id]
                self.deleted_memberships.append(membership_id)
        return True

    def _membership_fields(self, member_id: str) -> dict:
        kind = self.rng.choice(["SUBSCRIPTION", "CLASS_PACK", "PT"])
        start = self._date(-60, 30)
        end = None if self.rng.random() < 0.4 else self._date(31, 120)
        return {
            "member_id": member_id,
            "plan_id": self.rng.choice([None, *sorted(self.plans)]),
            "type": kind,
            "start_date": start,
            "end_date": end,
            "remaining_classes": None if kind == "SUBSCRIPTION" else self.rng.randint(-2, 20),
        }

    def add_membership(self) -> bool:
        if not self.members:
            return False
        member_id = self.rng.choice(sorted(self.members))
        if self.deleted_memberships and self.rng.random() < 0.3:
            ms_id = self.deleted_memberships.pop(self.rng.randrange(len(self.deleted_memberships)))
        else:
            ms_id = f"msh{next(self.ids)}"
        fields = {"id": ms_id, **self._membership_fields(member_id)}
        self._write(lambda tx, org: admin.save_membership(tx, org, None, fields, self.site.now()))
        self.memberships[ms_id] = member_id
        return True

    def edit_membership(self) -> bool:
        if not self.memberships:
            return False
        ms_id = self.rng.choice(sorted(self.memberships))
        fields = self.rng.choice(
            [
                {"remaining_classes": self.rng.randint(0, 30)},
                {"end_date": self._date(31, 200)},
                {"plan_id": self.rng.choice([None, *sorted(self.plans)])},
                {"member_id": self.rng.choice(sorted(self.members))},  # moved to another member
            ]
        )
        self._write(lambda tx, org: admin.save_membership(tx, org, ms_id, fields, self.site.now()))
        if "member_id" in fields:
            self.memberships[ms_id] = fields["member_id"]
        return True

    def delete_membership(self) -> bool:
        if not self.memberships:
            return False
        ms_id = self.rng.choice(sorted(self.memberships))
        self._write(lambda tx, org: admin.delete_membership(tx, org, ms_id, self.site.now()))
        del self.memberships[ms_id]
        self.deleted_memberships.append(ms_id)
        return True

    def _windows(self) -> list[list[int]]:
        windows = []
        for _ in range(self.rng.randint(0, 4)):
            start = self.rng.randrange(0, 1380)
            windows.append([self.rng.randrange(7), start, self.rng.randint(start + 1, 1440)])
        return windows

    @staticmethod
    def _visits(n: int) -> int | None:
        """A plan's visit limit from its edit's number (not the generator: the edits drawn stay
        those of the seed): none, or 1-3 a day."""
        return (None, 1, 2, 3)[n % 4]

    def add_plan(self) -> bool:
        n = next(self.ids)
        plan_id = f"pln{n}"
        fields = {
            "id": plan_id,
            "name": f"Plan {plan_id}",
            "windows": self._windows(),
            "max_visits_per_day": self._visits(n),
        }
        self._write(lambda tx, org: admin.save_plan(tx, org, None, fields, self.site.now()))
        self.plans.add(plan_id)
        return True

    def edit_plan(self) -> bool:
        if not self.plans:
            return False
        plan_id = self.rng.choice(sorted(self.plans))
        n = next(self.ids)
        fields = {
            "windows": self._windows(),
            "name": f"Edited {n}",
            "max_visits_per_day": self._visits(n),
        }
        self._write(lambda tx, org: admin.save_plan(tx, org, plan_id, fields, self.site.now()))
        return True

    def delete_plan(self) -> bool:
        """Only a plan no live membership uses (the cloud refuses the others): first the
        memberships using it are moved off it."""
        if not self.plans:
            return False
        plan_id = self.rng.choice(sorted(self.plans))

        def delete(tx, org) -> None:
            now = self.site.now()
            for ms_id in sorted(self.memberships):
                if admin.get_membership(tx, org, ms_id)["plan_id"] == plan_id:
                    admin.save_membership(tx, org, ms_id, {"plan_id": None}, now)
            admin.delete_plan(tx, org, plan_id, now)

        self._write(delete)
        self.plans.discard(plan_id)
        return True

    def replace_hours(self) -> bool:
        gym = self.rng.choice(self.gyms)
        hours = [{"weekday": w, "open_minute": s, "close_minute": e} for w, s, e in self._windows()]
        self._write(lambda tx, org: admin.replace_hours(tx, org, gym, hours, self.site.now()))
        return True

    def add_closure(self) -> bool:
        gym = self.rng.choice(self.gyms)
        start = self._date(0, 200)
        fields = {"start_date": start, "end_date": start, "reason": self.rng.choice(["", "Works"])}
        made = self._write(lambda tx, org: admin.add_closure(tx, org, gym, fields, self.site.now()))
        self.closures[made["id"]] = gym
        return True

    def delete_closure(self) -> bool:
        if not self.closures:
            return False
        closure_id = self.rng.choice(sorted(self.closures))
        gym = self.closures.pop(closure_id)
        self._write(lambda tx, org: admin.delete_closure(tx, org, gym, closure_id, self.site.now()))
        return True


def test_the_replica_converges_after_random_offline_admin_edits(cloud_db_url, tmp_path):
    rng = random.Random(4242)
    with running_site(cloud_db_url) as site:
        seed_members(site, packs=4, subscriptions=4, balance=10)
        proxy = FaultyProxy(site.url, fault_rate=0.0, faults=("drop",), seed=1)
        proxy_url = proxy.start()
        kiosk = make_kiosk(tmp_path / "kiosk", site, proxy_url)
        clock = SimClock(site.now(), boot="boot-convergence")
        store = Store.open(kiosk.db)
        # The timeout only bounds a hang: an offline round is a dropped connection, at once.
        client = CloudClient(proxy_url, kiosk.identity.token, clock=clock, timeout_s=60)
        settings = SyncSettings(page_rows=PAGE_ROWS)
        agent = SyncAgent(store, client, settings, clock, sleep=clock.sleep)
        edits = AdminEdits(site, rng)
        try:
            report = agent.cycle()
            assert report.ok and report.pull == "snapshot", report.error
            assert_converged(store, site)
            for _round in range(ROUNDS):
                before = store.replica_info().version, store.replica_checksum()
                proxy.fault_rate = 1.0  # offline: every request dropped
                for _ in range(EDITS_PER_ROUND):
                    edits.one()
                offline = agent.cycle()
                assert not offline.ok and "cannot reach the cloud" in (offline.error or "")
                assert (store.replica_info().version, store.replica_checksum()) == before
                proxy.fault_rate = 0.0
                report = agent.cycle()
                assert report.ok, report.error
                assert report.pull == "changes"  # caught up by changes, never a snapshot
                assert_converged(store, site)
        finally:
            client.close()
            store.close()
            proxy.stop()
    assert {"delete_member", "move_card", "delete_plan", "delete_closure"} <= set(edits.applied)


def assert_converged(store: Store, site: Site) -> None:
    cloud = site.checkpoint()
    assert store.replica_info().version == cloud.version
    assert store.replica_checksum() == (cloud.count, cloud.checksum)
