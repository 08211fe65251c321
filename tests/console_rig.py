"""The staff console's test rig: the real cloud app (in-process, no server), on SQLite and on
PostgreSQL, with two organisations, each with an owner, a front-desk member of staff and a trainer,
and browsers signed in as any of them through the real sign-in form.

    from console_rig import (
        cloud_db_url_fixture,  # noqa: F401
        console_fixture,  # noqa: F401
        pg_server_fixture,  # noqa: F401
    )

    def test_something(console):            # runs once per backend
        desk = console.sign_in("staff")      # a browser signed in as org A's front desk
        page = desk.get("/console/members")
        desk.post("/console/members", {"first_name": "Ann", ...})   # the CSRF token is added
        other = console.sign_in("owner", console.b)                  # org B's owner

- ``console.a`` / ``console.b``: ``Org`` (id, name, gym_id, admin_token, ``people[role]``);
  ``console.clock``: the app's FakeClock (advance it; nothing sleeps).
- ``console.browser()``: a fresh anonymous browser that sends this site's ``Origin`` (as a
  browser does on a POST); ``https=True`` for ``https://testserver``. It runs the app in the
  test's thread (``inthread_client``); ``live=True`` gives a TestClient instead, for the live
  feed's event stream or a WebSocket (``console.sign_in(..., live=True)`` likewise).
- ``console.member(org, ...)``: a member made through the admin service functions;
  ``console.assign(org, member_id)``: give it to the org's trainer; ``console.phone_pass(org,
  member_id)``: an ACTIVE phone pass of it, activated as a phone does.
- ``console.snapshot()``: every row of every table (sessions by token only): compare two to prove
  a refused request changed nothing. ``console.audit(org)``: the org's audit rows, oldest first.
- ``SAMPLE_IDS``: how the route-table tests (test_console_routes.py) get a valid id of org A for
  each path parameter name. **A new route with a new path parameter adds its factory here**, or
  those tests fail naming it.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import pytest

from cloud.admin import create_organization, save_member
from cloud.console import accounts, auth
from inthread_client import InThreadClient
from pg import (
    Device,
    FakeClock,
    cloud_db_url_fixture,  # noqa: F401
    heartbeat_body,
    make_item,
    pg_server_fixture,  # noqa: F401
)
from sync.protocol import PROTOCOL_VERSION

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # Starlette's note about its httpx fork
    from fastapi.testclient import TestClient

PASSWORD = "plain sailing on a blue lake"  # noqa: S105 - meets the console's password rules
ORIGIN = "http://testserver"
HTTPS_ORIGIN = "https://testserver"
ROLES = ("owner", "staff", "trainer")
CSRF_FIELD = re.compile(r'name="csrf" value="([^"]+)"')
# Text only org A's data holds: a 404 page shown to org B must not contain it.
SECRET_MARK = "Zanzibar"  # noqa: S105 - not a password


# scrypt's cost for the rig's accounts: every sign-in of a test verifies one, at a millisecond
# each instead of 50. The console's own cost is tested in tests/test_console_auth.py.
RIG_SCRYPT_N = 2**10


@lru_cache(maxsize=1)
def password_hash() -> str:
    """PASSWORD's scrypt hash, made once per test process (every rig account shares it)."""
    return auth.hash_password(PASSWORD, n=RIG_SCRYPT_N)


@dataclass(frozen=True)
class Person:
    id: str
    organization_id: str
    email: str
    name: str
    role: str


@dataclass
class Org:
    id: str
    name: str
    gym_id: str
    admin_token: str
    people: dict[str, Person] = field(default_factory=dict)
    samples: dict[str, str] = field(default_factory=dict)  # SAMPLE_IDS made so far


@dataclass
class Desk:
    """A browser signed in as ``person``; ``csrf`` is its session's form token."""

    client: InThreadClient | TestClient
    person: Person
    csrf: str

    def get(self, path: str, **kw: Any):
        kw.setdefault("follow_redirects", False)
        return self.client.get(path, **kw)

    def post(self, path: str, data: dict[str, str] | None = None, **kw: Any):
        """POST a form with this session's CSRF token (unless ``data`` names its own)."""
        kw.setdefault("follow_redirects", False)
        return self.client.post(path, data={"csrf": self.csrf, **(data or {})}, **kw)


def checkin_id(door: Device, seq: int) -> str:
    """A check-in id (UUID-shaped) unique to a door and seq across every organisation."""
    digest = hashlib.sha256(f"{door.id}:{seq}".encode()).hexdigest()
    return f"{digest[:8]}-{digest[8:12]}-7{digest[13:16]}-8{digest[17:20]}-{digest[20:32]}"


def form_csrf(html: str) -> str:
    """The CSRF token a page's forms carry."""
    found = CSRF_FIELD.search(html)
    assert found is not None, "no form token on the page"
    return found.group(1)


class ConsoleRig:
    def __init__(self, url: str, clock: FakeClock | None = None) -> None:
        from cloud.app import create_app

        self.url = url
        self.clock = clock or FakeClock()
        self.app = create_app(url, clock=self.clock)
        self.database = self.app.state.cloud.database
        # Browsers run the app in the test's thread (tests/inthread_client.py): 2-3 ms of CPU
        # less per request than a TestClient's thread hand-offs, and nothing to start. A live
        # browser's TestClient is opened (as ``with`` does): one event loop thread for its life;
        # unopened, each request would start its own.
        self._clients = contextlib.ExitStack()
        self.a = self.new_org(f"Acme {SECRET_MARK} Fitness", "Main")
        self.b = self.new_org("Brawn Gym", "Central")

    def close(self) -> None:
        self._clients.close()
        self.database.close()

    # -- organisations and people --------------------------------------------------------------

    def new_org(self, name: str, gym: str) -> Org:
        made = create_organization(self.database, name, gym, "Europe/Berlin", self.clock())
        org = Org(made.organization_id, name, made.gym_id, made.admin_token)
        slug = name.split()[0].lower()
        for role in ROLES:
            org.people[role] = self.add_person(org, role, f"{role}@{slug}.test", f"{role} {slug}")
        return org

    def add_person(
        self, org: Org, role: str, email: str, name: str, hashed: str | None = None
    ) -> Person:
        """Another account of ``org`` (password PASSWORD unless ``hashed`` is another hash)."""
        hashed = hashed or password_hash()
        user = self.database.transact(
            lambda tx: accounts.add_staff(
                tx, org.id, email, name.title(), role, hashed, self.clock(), "rig"
            )
        )
        return Person(user.id, user.organization_id, user.email, user.name, user.role)

    def member(
        self, org: Org, first: str = "Ann", last: str = "Example", code: str | None = None
    ) -> str:
        """A live member of ``org`` (through the admin service functions); its id."""
        fields: dict[str, Any] = {"first_name": first, "last_name": last}
        if code is not None:
            fields["code"] = code
        made = self.database.transact(
            lambda tx: save_member(tx, org.id, None, fields, self.clock())
        )
        return made["id"]

    def assign(self, org: Org, member_id: str) -> None:
        """Give a member of ``org`` to its trainer (as its owner would)."""
        from cloud.console.accounts import assign_member, staff_user

        owner = org.people["owner"]
        me = staff_user(
            {
                "id": owner.id,
                "organization_id": org.id,
                "email": owner.email,
                "name": owner.name,
                "role": "owner",
            }
        )
        trainer = org.people["trainer"].id
        self.database.transact(
            lambda tx: assign_member(tx, me, trainer, member_id, self.clock(), "rig")
        )

    # -- doors (through the real device API) ---------------------------------------------------

    def door(self, org: Org, name: str = "front door", gym_id: str | None = None) -> Device:
        """A door enrolled at ``org``'s gym (default: its first): an enrolment code made by the
        admin service function, spent on ``POST /v1/enrol``."""
        from cloud.admin import create_enrolment_code

        gym = gym_id or org.gym_id
        made = self.database.transact(
            lambda tx: create_enrolment_code(tx, org.id, gym, 60, self.clock())
        )
        answer = self.device_client().post(
            "/v1/enrol",
            json={"code": made["code"], "name": name, "software_version": "0.1.0"},
            headers={"FitFlow-Protocol": str(PROTOCOL_VERSION)},
        )
        assert answer.status_code == 201, answer.text
        body = answer.json()
        return Device(body["device_id"], body["token"], body["gym_id"])

    def device_client(self) -> InThreadClient:
        if not hasattr(self, "_device_client"):
            self._device_client = self.browser(origin=False)
        return self._device_client

    def upload(self, device: Device, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Check-ins (``pg.make_item``) uploaded by ``device`` on ``POST /v1/checkins``; the
        per-item results."""
        answer = self.device_client().post(
            "/v1/checkins", json={"items": items, "anchors": []}, headers=device.headers
        )
        assert answer.status_code == 200, answer.text
        return answer.json()["results"]

    def heartbeat(self, device: Device, **fields: Any) -> dict[str, Any]:
        """A heartbeat (``pg.heartbeat_body`` with ``fields``) from ``device``."""
        answer = self.device_client().post(
            "/v1/heartbeat", json=heartbeat_body(**fields), headers=device.headers
        )
        assert answer.status_code == 200, answer.text
        return answer.json()

    def overdraft(self, org: Org, door: Device, seq: int = 1, first: str = "Olive") -> str:
        """A granted class-pack check-in taking an empty pack below zero (an overdraft), uploaded
        by ``door``; its id."""
        from cloud.admin import save_membership

        member_id = self.member(org, first, "Overdrawn")
        pack = self.database.transact(
            lambda tx: save_membership(
                tx,
                org.id,
                None,
                {
                    "member_id": member_id,
                    "type": "CLASS_PACK",
                    "start_date": "2026-01-01",
                    "remaining_classes": 0,
                },
                self.clock(),
            )
        )
        item = make_item(
            seq,
            item_id=checkin_id(door, seq),
            reason="class_pack",
            member_id=member_id,
            membership_id=pack["id"],
            classes_used=1,
        )
        assert [r["status"] for r in self.upload(door, [item])] == ["created"]
        return item["id"]

    def phone_pass(self, org: Org, member_id: str) -> str:
        """An ACTIVE phone pass of a member of ``org``, made as a phone makes one (an activation
        code spent with a fresh Ed25519 key, through cloud.passes); its id."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        from cloud import passes
        from sync.passes import public_key_text

        key = Ed25519PrivateKey.generate().public_key()
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        now = self.clock()

        def make(tx) -> str:
            made = passes.create_activation(tx, org.id, member_id, 15, now)
            request = passes.ActivateRequest(made["code"], public_key_text(raw))
            return passes.activate(tx, request, now)["pass_id"]

        return self.database.transact(make)

    # -- browsers ------------------------------------------------------------------------------

    def browser(
        self,
        *,
        https: bool = False,
        origin: bool = True,
        address: str = "testclient",
        live: bool = False,
    ) -> InThreadClient | TestClient:
        """A fresh, anonymous browser at client ``address``. It sends this site's Origin on
        every request (browsers send it on every POST) unless ``origin`` is False. ``live``: a
        TestClient, which can hold an event stream or a WebSocket open."""
        base = HTTPS_ORIGIN if https else ORIGIN
        headers = {"Origin": base} if origin else {}
        kind = TestClient if live else InThreadClient
        return self._clients.enter_context(
            kind(self.app, base_url=base, headers=headers, client=(address, 50000))
        )

    def login(
        self,
        client: InThreadClient | TestClient,
        email: str,
        password: str = PASSWORD,
        next_path: str = "",
    ):
        """Fill in and send the sign-in form (the answer, not followed)."""
        page = client.get("/console/login")
        assert page.status_code == 200, page.text
        return client.post(
            "/console/login",
            data={
                "csrf": form_csrf(page.text),
                "email": email,
                "password": password,
                "next": next_path,
            },
            follow_redirects=False,
        )

    def sign_in(
        self,
        role: str = "owner",
        org: Org | None = None,
        *,
        https: bool = False,
        live: bool = False,
    ) -> Desk:
        """A new browser signed in as ``org``'s (default: A's) ``role``, through the form
        (``live``: a TestClient, as ``browser`` says)."""
        person = (org or self.a).people[role]
        client = self.browser(https=https, live=live)
        answer = self.login(client, person.email)
        assert answer.status_code == 303, answer.text
        return Desk(client, person, self.session_csrf(client))

    def session_csrf(self, client: InThreadClient | TestClient) -> str:
        """The CSRF token of the session ``client``'s cookie names (read from the database)."""
        token = client.cookies.get(auth.SESSION_COOKIE) or client.cookies.get(
            auth.SECURE_PREFIX + auth.SESSION_COOKIE
        )
        assert token, "the browser holds no session cookie"
        value = self.database.transact(
            lambda tx: tx.value(
                "SELECT csrf_token FROM staff_sessions WHERE token_hash = ?",
                (auth.token_hash(token),),
            ),
            write=False,
        )
        assert value, "the session is not in the database"
        return value

    # -- what the database holds ---------------------------------------------------------------

    def audit(self, org: Org) -> list[dict[str, Any]]:
        """The organisation's audit rows, oldest first."""
        return self.database.transact(
            lambda tx: tx.all(
                "SELECT staff_id, action, target, detail, at, address FROM audit_log"
                " WHERE organization_id = ? ORDER BY id",
                (org.id,),
            ),
            write=False,
        )

    def tables(self) -> list[str]:
        def names(tx) -> list[str]:
            if tx.dialect == "sqlite":
                rows = tx.all(
                    "SELECT name FROM sqlite_master WHERE type = 'table'"
                    " AND name NOT LIKE 'sqlite_%' ORDER BY name"
                )
            else:
                rows = tx.all(
                    "SELECT tablename AS name FROM pg_tables WHERE schemaname = 'public'"
                    " ORDER BY tablename"
                )
            return [row["name"] for row in rows]

        return self.database.transact(names, write=False)

    def snapshot(self) -> dict[str, list[str]]:
        """Every row of every table, as sorted text; sessions by their token hash only (a
        request may note that a session was used, which changes nothing else)."""

        def read(tx) -> dict[str, list[str]]:
            out = {}
            for table in self.tables():
                if table == "staff_sessions":
                    rows = tx.all("SELECT token_hash FROM staff_sessions")
                else:
                    rows = tx.all(f"SELECT * FROM {table}")  # noqa: S608 - table names from the catalogue
                out[table] = sorted(repr(sorted(row.items())) for row in rows)
            return out

        return self.database.transact(read, write=False)


@pytest.fixture(name="console")
def console_fixture(cloud_db_url):
    """A ConsoleRig on a fresh database, once per backend."""
    rig = ConsoleRig(cloud_db_url)
    try:
        yield rig
    finally:
        rig.close()


# -- sample ids for the route-table tests ------------------------------------------------------------
# {path parameter name: factory(rig, org, ids so far) -> a valid id of that kind in ``org``}.
# Factories run in the order of the path's parameters, so a later one may use an earlier one's id
# (a member's pass, say). The id must be one the route's minimum role may open (a trainer's
# sample member is assigned to them).


def _sample_member(rig: ConsoleRig, org: Org, _ids: dict[str, str]) -> str:
    if "member" not in org.samples:
        member_id = rig.member(
            org, "Quentin", SECRET_MARK if org is rig.a else "Other", "SAMPLE-01"
        )
        rig.assign(org, member_id)
        org.samples["member"] = member_id
    return org.samples["member"]


def _sample_staff(_rig: ConsoleRig, org: Org, _ids: dict[str, str]) -> str:
    return org.people["trainer"].id


def _sample_device(rig: ConsoleRig, org: Org, _ids: dict[str, str]) -> str:
    if "device" not in org.samples:
        org.samples["device"] = rig.door(org, f"sample door {SECRET_MARK}").id
    return org.samples["device"]


def _sample_checkin(rig: ConsoleRig, org: Org, _ids: dict[str, str]) -> str:
    """An open overdraft (a check-in the doors page may settle), by a door of its own."""
    if "checkin" not in org.samples:
        org.samples["checkin"] = rig.overdraft(org, rig.door(org, "sample overdraft door"))
    return org.samples["checkin"]


def _sample_membership(rig: ConsoleRig, org: Org, ids: dict[str, str]) -> str:
    """A subscription of the sample member (the members pages' membership routes)."""
    from cloud.admin import save_membership

    if "membership" not in org.samples:
        member_id = ids.get("member_id") or _sample_member(rig, org, ids)
        fields = {"member_id": member_id, "type": "SUBSCRIPTION", "start_date": "2026-01-01"}
        made = rig.database.transact(
            lambda tx: save_membership(tx, org.id, None, fields, rig.clock())
        )
        org.samples["membership"] = made["id"]
    return org.samples["membership"]


def _sample_pass(rig: ConsoleRig, org: Org, ids: dict[str, str]) -> str:
    """An ACTIVE phone pass of the sample member, activated as a phone does (a fresh key)."""
    if "pass" not in org.samples:
        member_id = ids.get("member_id") or _sample_member(rig, org, ids)
        org.samples["pass"] = rig.phone_pass(org, member_id)
    return org.samples["pass"]


SAMPLE_IDS: dict[str, Callable[[ConsoleRig, Org, dict[str, str]], str]] = {
    "member_id": _sample_member,
    "staff_id": _sample_staff,
    "device_id": _sample_device,
    "checkin_id": _sample_checkin,
    "membership_id": _sample_membership,
    "pass_id": _sample_pass,
}
