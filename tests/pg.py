"""A private PostgreSQL server for the cloud tests, and the ``cloud_db_url`` fixture that runs a
test once on SQLite and once on PostgreSQL.

The server is started once per test process, when a test first needs it: ``initdb`` into a
temporary directory (as the ``postgres`` system user when the tests run as root, as in CI),
listening on 127.0.0.1 at a free port with its unix socket in that directory, ``fsync=off`` for
speed, stopped at the end of the session. Under pytest-xdist (``./dev test`` runs the suite on
parallel workers) each worker is its own process with its own server, so workers share nothing.
Each test gets a database of its own that is exactly a migrated template: a new one copied from
the template (``CREATE DATABASE ... TEMPLATE``), or one an earlier test of the same process gave
back, emptied (see ``drop_pg_database``).

``FITFLOW_TEST_PG_URL=postgresql://user@host:port/dbname`` uses that server instead (the user
needs CREATEDB), shared by every worker and by any other test run pointed at it: the template and
every test database carry the test process's id in their names, so none of them collide. Without
either, the PostgreSQL tests **fail** with the reason: they are never skipped. ``./dev test``
installs PostgreSQL when it is missing.

Import the fixtures into a test module with ``from pg import cloud_db_url_fixture, cloud_fixture,
pg_server_fixture  # noqa: F401`` (pytest registers them as ``cloud_db_url``, ``cloud`` and
``pg_server``); the server is shared by every module that does (one cluster per process). The
second half of this module is the cloud tests' harness: an in-process cloud (``Harness``, fixture
``cloud``) with an organisation, an admin token and helpers to enrol devices, upload check-ins,
heartbeat and follow the replica like a device.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import urllib.parse
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

with warnings.catch_warnings():
    # Starlette asks for its httpx fork; the TestClient works the same on httpx.
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from inthread_client import InThreadClient
from sync.protocol import PROTOCOL_VERSION

PG_URL_ENV = "FITFLOW_TEST_PG_URL"
BACKENDS = ("sqlite", "postgres")
# Per process: parallel workers, or two test runs on one FITFLOW_TEST_PG_URL server, each build and
# drop their own template.
_TEMPLATE = f"fitflow_template_{os.getpid()}"


class PostgresUnavailable(RuntimeError):
    pass


def find_pg_bin(name: str) -> str:
    """Path of a PostgreSQL server program: PATH first, then /usr/lib/postgresql/*/bin (newest)."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0,
    )
    if candidates:
        return candidates[-1]
    raise PostgresUnavailable(
        f"PostgreSQL's {name} was not found on PATH or under /usr/lib/postgresql/*/bin: "
        f"run ./dev test (it installs postgresql) or apt-get install postgresql, "
        f"or set {PG_URL_ENV}"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PgServer:
    """A PostgreSQL server the tests may create databases on. ``admin_url`` points at its
    maintenance database."""

    admin_url: str
    data_dir: Path | None = None
    _run_as: list[str] | None = None
    _pg_ctl: str | None = None

    def url_for(self, dbname: str) -> str:
        parts = urllib.parse.urlsplit(self.admin_url)
        return urllib.parse.urlunsplit(parts._replace(path=f"/{dbname}"))

    def execute(self, sql: str, params: tuple[object, ...] = ()) -> None:
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql, params or None)

    def stop(self) -> None:
        if self.data_dir is None or self._pg_ctl is None:
            return
        subprocess.run(
            [
                *(self._run_as or []),
                self._pg_ctl,
                "stop",
                "-D",
                str(self.data_dir),
                "-m",
                "immediate",
            ],
            capture_output=True,
            timeout=60,
            check=False,
        )
        shutil.rmtree(self.data_dir.parent, ignore_errors=True)


def start_private_server() -> PgServer:
    """initdb + pg_ctl start on a free loopback port; PostgresUnavailable with the reason."""
    initdb, pg_ctl = find_pg_bin("initdb"), find_pg_bin("pg_ctl")
    run_as: list[str] = []
    base = Path(tempfile.mkdtemp(prefix="fitflow-pg-"))
    data = base / "data"
    if os.geteuid() == 0:
        # PostgreSQL refuses to run as root: run it as the postgres system user.
        runuser = shutil.which("runuser")
        if not runuser:
            shutil.rmtree(base, ignore_errors=True)
            raise PostgresUnavailable("running as root needs runuser (util-linux) for PostgreSQL")
        run_as = [runuser, "-u", "postgres", "--"]
        try:
            shutil.chown(base, "postgres", "postgres")
        except (LookupError, OSError) as exc:
            shutil.rmtree(base, ignore_errors=True)
            raise PostgresUnavailable(f"no usable postgres system user: {exc}") from exc
        base.chmod(0o700)
    init = subprocess.run(
        [
            *run_as,
            initdb,
            "-D",
            str(data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
            "--locale=C",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if init.returncode != 0:
        shutil.rmtree(base, ignore_errors=True)
        raise PostgresUnavailable(f"initdb failed: {init.stderr.strip()[-800:]}")
    last_error = ""
    for _attempt in range(5):
        port = _free_port()
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={base}"
            " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            " -c max_connections=200 -c shared_buffers=32MB"
        )
        started = subprocess.run(
            [
                *run_as,
                pg_ctl,
                "start",
                "-w",
                "-t",
                "60",
                "-D",
                str(data),
                "-o",
                options,
                "-l",
                str(base / "server.log"),
            ],
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
        if started.returncode == 0:
            return PgServer(
                f"postgresql://postgres@127.0.0.1:{port}/postgres", data, run_as, pg_ctl
            )
        log = (
            (base / "server.log").read_text(errors="replace")
            if (base / "server.log").exists()
            else ""
        )
        last_error = (started.stderr + log).strip()[-800:]
    shutil.rmtree(base, ignore_errors=True)
    raise PostgresUnavailable(f"PostgreSQL did not start: {last_error}")


# -- one server per test process, shared by every module that imports the fixtures ----------------

_lock = threading.Lock()
_server: PgServer | None = None
_users = 0
_counter = itertools.count(1)
# Databases finished tests gave back to the private server, emptied: the next test takes one
# instead of a CREATE DATABASE. ``_template_shape`` is the template's SHAPE_SQL answer.
_spare: list[str] = []
_template_shape: tuple[str, str] | None = None

# What a database must still match to be handed out again: its schema (every column of every
# table, index, view and sequence, the triggers and functions) and the migrations recorded.
SHAPE_SQL = """
SELECT
  (SELECT md5(string_agg(part, ',' ORDER BY part)) FROM (
     SELECT c.relkind::text || ' ' || c.relname || '.' || a.attname || ':' || a.atttypid::text
            || ':' || a.attnotnull::text AS part
       FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
      WHERE c.relnamespace = 'public'::regnamespace AND a.attnum > 0 AND NOT a.attisdropped
     UNION ALL
     SELECT 'trigger ' || tgname || ' ' || tgrelid::regclass::text || ' ' || tgenabled::text
       FROM pg_trigger WHERE NOT tgisinternal
     UNION ALL
     SELECT 'function ' || proname || ' ' || md5(prosrc)
       FROM pg_proc WHERE pronamespace = 'public'::regnamespace) AS parts),
  (SELECT string_agg(version::text || ' ' || name, ',' ORDER BY version) FROM schema_migrations)
"""

# Empties every table but the migrations' record and restarts every sequence, so the database is
# again what the template is. Triggers and foreign keys are off for it (``replica`` role, the
# server's superuser): they guard a live cloud's rows, and here every row goes.
EMPTY_SQL = """
DO $$ DECLARE r record; BEGIN
  SET LOCAL session_replication_role = replica;
  FOR r IN SELECT c.oid::regclass AS t FROM pg_class c
            WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p')
              AND c.relname <> 'schema_migrations' LOOP
    EXECUTE format('DELETE FROM %s', r.t);
  END LOOP;
  FOR r IN SELECT c.oid::regclass AS q FROM pg_class c
            WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'S' LOOP
    PERFORM setval(r.q, 1, false);
  END LOOP;
END $$
"""


def _acquire() -> PgServer:
    global _server, _users
    with _lock:
        if _server is None:
            url = os.environ.get(PG_URL_ENV)
            server = PgServer(url) if url else start_private_server()
            try:
                _make_template(server)
            except Exception:
                server.stop()
                raise
            _server = server
        _users += 1
        return _server


def _release() -> None:
    global _server, _users
    with _lock:
        _users -= 1
        if _users == 0 and _server is not None:
            with contextlib.suppress(Exception):
                _server.execute(f"DROP DATABASE IF EXISTS {_TEMPLATE}")
            _server.stop()
            _server = None
            _spare.clear()


def _make_template(server: PgServer) -> None:
    from cloud.db import Database
    from cloud.migrations import migrate

    server.execute(f"DROP DATABASE IF EXISTS {_TEMPLATE}")
    server.execute(f"CREATE DATABASE {_TEMPLATE}")
    database = Database(server.url_for(_TEMPLATE), pool_size=1)
    try:
        migrate(database)
    finally:
        database.close()
    global _template_shape
    _template_shape = _shape(server.url_for(_TEMPLATE))


def _shape(url: str) -> tuple[str, str]:
    import psycopg

    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        return _shape_on(conn)


def _shape_on(conn) -> tuple[str, str]:
    row = conn.execute(SHAPE_SQL).fetchone()
    return (row[0], row[1])


@pytest.fixture(scope="session", name="pg_server")
def pg_server_fixture():
    """The session's PostgreSQL server (fails the test with the reason if there is none)."""
    try:
        server = _acquire()
    except PostgresUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server
    finally:
        _release()


def fresh_pg_database(server: PgServer) -> str:
    """A migrated database on the server, the test's alone until ``drop_pg_database``; its URL."""
    with _lock:
        if _spare and server is _server:
            return server.url_for(_spare.pop())
    name = f"fitflow_t{os.getpid()}_{next(_counter)}"
    server.execute(f"CREATE DATABASE {name} TEMPLATE {_TEMPLATE}")
    return server.url_for(name)


def drop_pg_database(server: PgServer, url: str) -> None:
    """Done with a test's database. On a shared server (``FITFLOW_TEST_PG_URL``) it is dropped.

    On the private one it is disconnected (a connection the test leaked ends), emptied
    (``EMPTY_SQL``, about 20 ms) and, when its schema and migrations still match the template's,
    kept for the next test: a ``CREATE DATABASE`` costs the server 0.1-0.4 s of CPU, growing with
    the databases it holds, and the suite needs hundreds. All three on one connection (each new
    one costs the server 5 ms of CPU). One whose schema a test changed, or that could not be
    emptied, is left unused until the cluster is removed at the end."""
    name = urllib.parse.urlsplit(url).path.lstrip("/")
    with contextlib.suppress(Exception):
        if server.data_dir is None:
            server.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            return
        import psycopg

        with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
            # A leaked connection still holding a lock makes EMPTY_SQL wait until it has ended
            # (the bound only ends a hang: the database is then not reused).
            conn.execute("SET lock_timeout = '60s'")
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            conn.execute(EMPTY_SQL)
            shape = _shape_on(conn)
        if shape == _template_shape:
            with _lock:
                if server is _server:
                    _spare.append(name)


@pytest.fixture(params=BACKENDS, name="cloud_db_url")
def cloud_db_url_fixture(request, tmp_path):
    """A fresh, empty cloud database URL: a SQLite file, or a PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'cloud.db'}"
        return
    server = request.getfixturevalue("pg_server")
    url = fresh_pg_database(server)
    try:
        yield url
    finally:
        drop_pg_database(server, url)


# -- the cloud test harness (shared by tests/test_cloud_*.py) ------------------------------------


class FakeClock:
    """An injectable clock: aware UTC datetimes that move only when told."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


@dataclass
class Device:
    id: str
    token: str
    gym_id: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", "FitFlow-Protocol": str(PROTOCOL_VERSION)}


BOOT = "boot-1"
SEC = 1_000_000_000


def make_item(
    seq: int,
    *,
    item_id: str | None = None,
    boot: str = BOOT,
    mono: int | None = None,
    wall: str = "2026-05-01T11:00:00.000000Z",
    quality: str = "ntp_synced",
    decision: str = "granted",
    reason: str = "subscription",
    member_id: str | None = "m1",
    membership_id: str | None = None,
    classes_used: int = 0,
    door: str = "front",
    pass_id: str | None = None,
) -> dict:
    """An upload item as the device's journal sends it."""
    return {
        "kind": "checkin",
        "id": item_id or f"01900000-0000-7000-8000-{seq:012x}",  # a UUIDv7 shape
        "seq": seq,
        "door_id": door,
        "decision": decision,
        "reason": reason,
        "member_id": member_id,
        "membership_id": membership_id,
        "classes_used": classes_used,
        "replica_version": 1,
        "wall_time": wall,
        "boot_id": boot,
        "monotonic_ns": seq * SEC if mono is None else mono,
        "clock_quality": quality,
        "pass_id": pass_id,
    }


def make_event(
    seq: int,
    kind: str,
    checkin_id: str | None,
    *,
    item_id: str | None = None,
    boot: str = BOOT,
    mono: int | None = None,
    wall: str = "2026-05-01T11:00:05.000000Z",
    quality: str = "ntp_synced",
    door: str = "front",
) -> dict:
    """A passage event upload item (protocol 3) as the device's journal sends it; ids share
    ``make_item``'s shape with another prefix, so an event and a check-in of one seq differ."""
    return {
        "kind": kind,
        "id": item_id or f"01900000-0000-7000-9000-{seq:012x}",
        "seq": seq,
        "door_id": door,
        "checkin_id": checkin_id,
        "wall_time": wall,
        "boot_id": boot,
        "monotonic_ns": seq * SEC if mono is None else mono,
        "clock_quality": quality,
    }


class Harness:
    """An in-process cloud with one organisation, gym and admin token."""

    def __init__(self, url: str, clock: FakeClock | None = None) -> None:
        from cloud.app import create_app

        self.url = url
        self.clock = clock or FakeClock()
        self.app = create_app(url, clock=self.clock)
        self.database = self.app.state.cloud.database
        # The app runs in the test's thread (tests/inthread_client.py): a test sends it hundreds
        # of requests, each 2-3 ms of CPU less than through a TestClient's thread hand-offs. The
        # app's lifespan only sizes a served process's thread pool (and closes the database,
        # which ``close`` does). ``open_client`` gives a TestClient where one is needed.
        self._opened = contextlib.ExitStack()
        self.client = self._opened.enter_context(InThreadClient(self.app))
        org = self.new_org("Acme", "Main")
        self.org_id, self.gym_id, self.admin_token = org

    def new_org(self, name: str, gym: str) -> tuple[str, str, str]:
        from cloud.admin import create_organization

        made = create_organization(self.database, name, gym, "Europe/Berlin", self.clock())
        return made.organization_id, made.gym_id, made.admin_token

    def open_client(self, **options) -> TestClient:
        """A TestClient of this cloud (with ``options``), opened (one event loop thread for its
        life; unopened, each request starts its own) and closed with the harness."""
        return self._opened.enter_context(TestClient(self.app, **options))

    def close(self) -> None:
        self._opened.close()
        self.database.close()

    # admin API
    def admin(self, method: str, path: str, *, token: str | None = None, **kw):
        headers = {"Authorization": f"Bearer {token or self.admin_token}", **kw.pop("headers", {})}
        return self.client.request(method, f"/admin/v1{path}", headers=headers, **kw)

    def ok(self, method: str, path: str, **kw) -> dict:
        response = self.admin(method, path, **kw)
        assert response.status_code in (200, 201), (response.status_code, response.text)
        return response.json()

    def enrolment_code(self, gym_id: str | None = None, *, token: str | None = None, ttl: int = 60):
        gym = gym_id or self.gym_id
        body = self.ok(
            "POST", f"/gyms/{gym}/enrolment-codes", json={"ttl_minutes": ttl}, token=token
        )
        return body["code"]

    def enrol(
        self, name: str = "front door", *, gym_id: str | None = None, token: str | None = None
    ):
        code = self.enrolment_code(gym_id, token=token)
        response = self.client.post(
            "/v1/enrol",
            json={"code": code, "name": name, "software_version": "0.1.0"},
            headers={"FitFlow-Protocol": str(PROTOCOL_VERSION)},
        )
        assert response.status_code == 201, response.text
        body = response.json()
        return Device(body["device_id"], body["token"], body["gym_id"])

    # device API
    def get(self, device: Device, path: str, **params):
        return self.client.get(path, params=params, headers=device.headers)

    def upload(self, device: Device, items: list, *, clock=None, anchors=()):
        body: dict = {"items": items, "anchors": list(anchors)}
        if clock is not None:
            body["clock"] = {"boot_id": clock[0], "monotonic_ns": clock[1]}
        return self.client.post("/v1/checkins", json=body, headers=device.headers)

    def upload_ok(self, device: Device, items: list, **kw) -> list[dict]:
        response = self.upload(device, items, **kw)
        assert response.status_code == 200, response.text
        return response.json()["results"]

    def heartbeat(self, device: Device, **fields):
        body = heartbeat_body(**fields)
        response = self.client.post("/v1/heartbeat", json=body, headers=device.headers)
        assert response.status_code == 200, response.text
        return response.json()

    # replica helpers
    def pull_all(self, device: Device, *, limit: int = 1000) -> tuple[int, dict]:
        """A full snapshot: (first page's version, {(kind, id): data})."""
        rows: dict = {}
        after = None
        first_version = None
        while True:
            params = {"limit": limit} | ({"after": after} if after else {})
            page = self.get(device, "/v1/replica/snapshot", **params)
            assert page.status_code == 200, page.text
            body = page.json()
            first_version = body["version"] if first_version is None else first_version
            rows.update({(r["kind"], r["id"]): r["data"] for r in body["rows"]})
            after = body["next"]
            if after is None:
                return first_version, rows

    def follow(self, device: Device, since: int, rows: dict, *, limit: int = 1000):
        """Apply changes since ``since`` to ``rows``; returns the checkpoint (None on 304)."""
        after = None
        while True:
            params = {"since": since, "limit": limit} | ({"after": after} if after else {})
            page = self.get(device, "/v1/replica/changes", **params)
            if page.status_code == 304:
                return None
            assert page.status_code == 200, page.text
            body = page.json()
            for r in body["rows"]:
                if r.get("deleted"):
                    rows.pop((r["kind"], r["id"]), None)
                else:
                    rows[(r["kind"], r["id"])] = r["data"]
            after = body["next"]
            if after is None:
                return body["checkpoint"]


def replica_checksum(rows: dict) -> tuple[str, int]:
    """(checksum, count) of rows held as {(kind, id): data}, computed like the device does."""
    from sync.protocol import checksum, row_hash

    return checksum(row_hash(k, i, d) for (k, i), d in rows.items()), len(rows)


@pytest.fixture(name="cloud")
def cloud_fixture(cloud_db_url):
    """A Harness on a fresh database, once per backend."""
    harness = Harness(cloud_db_url)
    try:
        yield harness
    finally:
        harness.close()


def heartbeat_body(**fields) -> dict:
    """A valid heartbeat from a device at boot BOOT, overridden by ``fields``."""
    body = {
        "software_version": "0.1.0",
        "boot_id": BOOT,
        "monotonic_ns": 1000 * SEC,
        "device_time": "2026-05-01T12:00:00.000000Z",
        "clock_quality": "ntp_synced",
        "backlog": 0,
        "oldest_pending_age_s": None,
        "replica_version": 0,
        "replica_checksum": "0" * 16,
        "replica_count": 0,
        "last_seq": 0,
        "synced_through_seq": 0,
        "retained_from_seq": 0,
        "last_error": None,
        "anchors": [],
    }
    return body | fields
