"""The demo's embedded reference cloud: seeded with the demo gym, enrolled, synced for real.

``kiosk demo`` runs the production sync agent against the production cloud service on 127.0.0.1,
the way a device and its cloud talk in a gym: the replica arrives as a snapshot, the
decisions are uploaded and go from pending to synced, a change made in the cloud reaches the door,
and with the cloud stopped the door keeps admitting and catches up when it returns.

The cloud's database and the device's credentials live next to the demo database
(``<name>-cloud.db``, ``<name>-device.json``), so a demo started again with ``--db`` finds the same
cloud and the same enrolment.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cloud import admin
from cloud import db as cloud_db
from cloud.console.accounts import add_staff
from cloud.console.auth import hash_password, new_password
from cloud.embedded import EmbeddedCloud
from devtools.seed import DEMO_SALT, ORG, demo_members, demo_snapshot
from kiosk import __version__
from kiosk.core.clock import Clock
from kiosk.data.control import ControlStore
from kiosk.data.replica import snapshot_rows
from kiosk.data.store import Store
from kiosk.sync.agent import CycleReport, SyncAgent, SyncSettings
from kiosk.sync.client import CloudClient
from kiosk.sync.identity import DeviceIdentity, load_identity, save_identity
from sync.protocol import utc_text

# The demo organisation's owner in the front-desk console (a new password every run).
CONSOLE_EMAIL = "owner@demo-gym.example"

GYM = "gym-demo"
# The demo's requests go to 127.0.0.1; a stopped cloud answers "connection refused" at once, so a
# short timeout only matters for a wedged one.
REQUEST_TIMEOUT_S = 3.0


@dataclass(frozen=True, slots=True)
class DemoPaths:
    cloud_db: Path
    identity: Path

    @classmethod
    def beside(cls, db_path: Path) -> DemoPaths:
        return cls(
            cloud_db=db_path.with_name(f"{db_path.stem}-cloud.db"),
            identity=db_path.with_name(f"{db_path.stem}-device.json"),
        )


def seed_cloud(database: cloud_db.Database, now: datetime, timezone: str) -> None:
    """The demo organisation, gym, plans, members and memberships, in one transaction. The
    organisation's code salt is the demo's, which marks the replica as the demo's on the device."""
    snapshot = demo_snapshot(now, timezone)

    def seed(tx: cloud_db.Tx) -> None:
        stamp = utc_text(now)
        cloud_db.insert_organization(tx, ORG, "FitFlow demo", DEMO_SALT.hex(), stamp)
        cloud_db.insert_gym(tx, GYM, ORG, "Demo gym", timezone, stamp)
        # The same rows the device's replica holds; members get their card code instead of its
        # hash (the cloud hashes it with the organisation's salt).
        codes = {demo.member.id: demo.code for demo in demo_members(now, timezone)}
        for row in snapshot_rows(snapshot):
            fields = {"id": row.id, **(row.data or {})}
            if row.kind == "plan":
                admin.save_plan(tx, ORG, None, fields, now)
            elif row.kind == "member":
                del fields["code_hash"], fields["organization_id"]
                admin.save_member(tx, ORG, None, {**fields, "code": codes[row.id]}, now)
            elif row.kind == "membership":
                admin.save_membership(tx, ORG, None, fields, now)
            elif row.kind == "pass":
                # Kim's phone pass, as activation would have stored it (docs/passes.md).
                version = cloud_db.bump_version(tx, ORG)
                extra = {"created_at": stamp, "revoked_at": None}
                valid = admin.validated("pass", row.id, row.data or {})
                admin.store_row(
                    tx, ORG, valid, gym_id=None, version=version, now=stamp, extra=extra
                )
            else:  # the demo gym has no hours or closures; nothing else is seeded
                raise ValueError(f"the demo seeds no {row.kind} rows")

    database.transact(seed)


class DemoCloud:
    """The embedded cloud and an enrolled sync agent for the demo's device database.

    ``start()`` serves the cloud (seeding it on first use) and enrols the device once; ``stop()``
    and ``start()`` again simulate an outage (same port, same data). ``sync()`` runs one agent
    cycle. Raises ``EmbeddedCloudError`` or ``kiosk.sync.client.CloudError`` when the cloud cannot be
    started or refuses the enrolment. With ``control`` (the demo's control file), the agent
    answers the owner page's "sync now": ``claim_sync_now()`` says when one waits, and the next
    ``sync()`` finishes it.
    """

    def __init__(
        self, db_path: Path, clock: Clock, timezone: str, control: ControlStore | None = None
    ) -> None:
        self.paths = DemoPaths.beside(db_path)
        self.db_path = db_path
        self.clock = clock
        self.timezone = timezone
        self.control = control
        self.seeded = False
        self._port = 0
        self._cloud: EmbeddedCloud | None = None
        self._store: Store | None = None
        self._client: CloudClient | None = None
        self.agent: SyncAgent | None = None

    @property
    def url(self) -> str | None:
        return None if self._cloud is None else self._cloud.url

    def start(self) -> str:
        fresh = not self.paths.cloud_db.exists()
        cloud = EmbeddedCloud(f"sqlite:///{self.paths.cloud_db}", port=self._port)
        url = cloud.start()
        self._cloud, self._port = cloud, cloud.port
        if fresh:
            seed_cloud(cloud.app.state.cloud.database, self.clock.wall(), self.timezone)
            self.seeded = True
        if self.agent is None:
            self._connect(url, cloud)
        return url

    def console_login(self) -> tuple[str, str, str]:
        """The front-desk console's address and a login for this run: the demo organisation's
        owner account (``CONSOLE_EMAIL``) with a new random password each run, made on first
        use and taken up again with the new password on a reused database. Returns (url, email,
        password); the password is shown once, never stored in clear."""
        if self._cloud is None:
            raise RuntimeError("start the demo cloud first")
        password = new_password()
        hashed = hash_password(password)
        now = self.clock.wall()

        def login(tx: cloud_db.Tx) -> None:
            existing = cloud_db.staff_by_email(tx, ORG, CONSOLE_EMAIL)
            if existing is None:
                add_staff(tx, ORG, CONSOLE_EMAIL, "Demo owner", "owner", hashed, now, "127.0.0.1")
                return
            # The same account, a new password: disabled and taken up again in one transaction.
            cloud_db.disable_staff(tx, ORG, existing["id"], utc_text(now))
            cloud_db.reactivate_staff(tx, ORG, existing["id"], "Demo owner", "owner", hashed)

        self._cloud.app.state.cloud.database.transact(login)
        return f"{self._cloud.url}/console/", CONSOLE_EMAIL, password

    def _connect(self, url: str, cloud: EmbeddedCloud) -> None:
        if self.paths.identity.exists():
            identity = load_identity(self.paths.identity)
        else:
            now = self.clock.wall()
            code = cloud.app.state.cloud.database.transact(
                lambda tx: admin.create_enrolment_code(tx, ORG, GYM, 60, now)
            )["code"]
            with CloudClient(url, None, timeout_s=REQUEST_TIMEOUT_S) as client:
                enrolment = client.enrol(code, "demo door", __version__)
            identity = DeviceIdentity.from_enrolment(url, enrolment)
            save_identity(self.paths.identity, identity)
        # The device talks to the cloud where it runs now (a reused demo gets a new port).
        self._store = Store.open(self.db_path)
        self._client = CloudClient(
            url,
            identity.token,
            timeout_s=REQUEST_TIMEOUT_S,
            clock=self.clock,
            software_version=__version__,
        )
        settings = SyncSettings(interval_s=2.0, backoff_max_s=5.0, wake_poll_s=0.5)
        self.agent = SyncAgent(
            self._store,
            self._client,
            settings,
            self.clock,
            self.clock.sleep,
            control=self.control,
        )

    def sync(self) -> CycleReport:
        """One agent cycle: push, pull, heartbeat."""
        if self.agent is None:
            raise RuntimeError("start the demo cloud first")
        return self.agent.cycle()

    def claim_sync_now(self) -> bool:
        """True when the owner page asked for a sync (claimed now; the next ``sync()`` answers it)."""
        return self.agent is not None and self.agent.claim_sync_now()

    def set_member_status(self, member_id: str, status: str) -> None:
        """An admin's edit in the cloud, as the gym's front desk would make it."""
        if self._cloud is None:
            raise RuntimeError("the demo cloud is stopped")
        now = self.clock.wall()
        self._cloud.app.state.cloud.database.transact(
            lambda tx: admin.save_member(tx, ORG, member_id, {"status": status}, now)
        )

    def remaining_classes(self, membership_id: str) -> int | None:
        """The cloud's class balance of a membership (None: not a pack, or no such membership)."""
        if self._cloud is None:
            raise RuntimeError("the demo cloud is stopped")
        row = self._cloud.app.state.cloud.database.transact(
            lambda tx: admin.get_membership(tx, ORG, membership_id)
        )
        remaining = row.get("remaining_classes")
        return None if remaining is None else int(remaining)

    def stop_cloud(self) -> None:
        """Take the cloud away (the device keeps its agent, as in an outage)."""
        if self._cloud is not None:
            self._cloud.stop()
            self._cloud = None

    def close(self) -> None:
        self.stop_cloud()
        if self._client is not None:
            self._client.close()
        if self._store is not None:
            self._store.close()
