"""Every console route, from the app's own route table: who may use it, CSRF on every POST, and tenant
isolation. The cases are generated at collection time from ``create_app(...).routes`` under
``/console``, so a route added later is covered without anyone writing a test for it:

- each route declares who may use it, through its dependency (``allow(...)``, ``signed_in``,
  ``role_at_least(...)``; ``public_page``/``public_form`` for the sign-in and invite pages and
  static files only): a route without one fails here;
- each path parameter has a sample id factory in ``console_rig.SAMPLE_IDS``: one without fails;
- anonymous: a GET redirects to the sign-in page, a POST (or a WebSocket) is refused, nothing
  changes;
- every POST without the session's CSRF token, with a wrong one, or from another origin is
  refused, nothing changes;
- a role below the route's is refused (403), nothing changes; each allowed role opens a GET page
  (with ids of its own organisation), with the security headers;
- every route taking an id answers 404, never data, to every role of another organisation, and
  changes nothing.

The rig is shared by a module per backend (the tests here only read or get refused).
"""

from __future__ import annotations

import re
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from fastapi import WebSocket
from fastapi.routing import APIRoute, APIWebSocketRoute

from cloud.app import create_app
from cloud.console.auth import ROLES
from cloud.console.pages import CSP
from console_rig import (
    SAMPLE_IDS,
    SECRET_MARK,
    ConsoleRig,
    Desk,
    Org,
    cloud_db_url_fixture,  # noqa: F401
    console_fixture,  # noqa: F401
    pg_server_fixture,  # noqa: F401
)
from pg import BACKENDS, drop_pg_database, fresh_pg_database

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.websockets import WebSocketDisconnect

# The only routes open without a session.
PUBLIC = {
    ("GET", "/console/login"),
    ("POST", "/console/login"),
    ("GET", "/console/invite"),
    ("POST", "/console/invite"),
    ("GET", "/console/static/{name}"),
}
PARAM = re.compile(r"{([^}:]+)(?::[^}]*)?}")


@dataclass(frozen=True)
class Case:
    method: str  # GET, POST, ... or WS
    path: str
    roles: frozenset[str] | None  # None: none declared
    public: bool
    long_lived: bool

    @property
    def params(self) -> list[str]:
        return PARAM.findall(self.path)

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


def _declarations(dependant) -> tuple[frozenset[str] | None, bool]:
    """The roles a route's dependencies admit (the intersection when several declare) and
    whether one declares it public."""
    roles: frozenset[str] | None = None
    public = False
    stack = list(dependant.dependencies)
    while stack:
        dep = stack.pop()
        call = dep.call
        declared = getattr(call, "console_roles", None)
        if declared is not None:
            roles = declared if roles is None else roles & declared
        public = public or bool(getattr(call, "console_public", False))
        stack.extend(dep.dependencies)
    return roles, public


def app_routes(app) -> list:
    """Every route the app serves, routers included: FastAPI from 0.16x keeps included routers
    as such in ``app.routes`` (``iter_route_contexts`` flattens them, with their prefixes and
    router-level dependencies); earlier versions list the routes themselves."""
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # pragma: no cover - an older FastAPI
        return list(app.routes)
    return list(iter_route_contexts(app.routes))


def console_cases() -> list[Case]:
    """The console's routes as the app serves them (built on a throwaway SQLite database)."""
    with tempfile.TemporaryDirectory() as folder:
        app = create_app(f"sqlite:///{folder}/routes.db")
        try:
            routes = [r for r in app_routes(app) if (r.path or "").startswith("/console")]
        finally:
            app.state.cloud.database.close()
    cases = []
    for route in routes:
        original = getattr(route, "original_route", route)
        if isinstance(original, APIWebSocketRoute):
            methods = ["WS"]
        elif isinstance(original, APIRoute):
            methods = sorted(set(route.methods) - {"HEAD"})
        else:
            # A mount or a plain Starlette route has no declarations: it fails below.
            methods = sorted(getattr(route, "methods", None) or {"GET"})
        dependant = getattr(route, "dependant", None)
        roles, public = _declarations(dependant) if dependant is not None else (None, False)
        long_lived = bool(getattr(route.endpoint, "console_long_lived", False))
        cases.extend(Case(m, route.path, roles, public, long_lived) for m in methods)
    return cases


CASES = console_cases()
PRIVATE = [c for c in CASES if (c.method, c.path) not in PUBLIC]
POSTS = [c for c in PRIVATE if c.method not in ("GET", "WS")]
GETS = [c for c in PRIVATE if c.method == "GET"]
WITH_IDS = [c for c in PRIVATE if c.params]


def _ids(cases: list[Case]) -> list[str]:
    return [str(c) for c in cases]


def test_the_route_table_holds_the_console():
    paths = {c.path for c in CASES}
    assert {"/console/login", "/console/staff", "/console/audit"} <= paths
    assert {(c.method, c.path) for c in CASES if (c.method, c.path) in PUBLIC} == PUBLIC


@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_every_route_declares_who_may_use_it(case: Case):
    if (case.method, case.path) in PUBLIC:
        assert case.public, f"{case} is public but does not declare public_page/public_form"
        return
    assert not case.public, f"{case} declares itself public: only {sorted(PUBLIC)} may"
    assert case.roles is not None, (
        f"{case} declares no roles: give it a dependency such as "
        "Depends(allow('owner', 'staff')) or Depends(signed_in) (cloud.console.auth)"
    )
    assert case.roles and case.roles <= set(ROLES), f"{case} admits no role: {case.roles}"


@pytest.mark.parametrize("case", WITH_IDS, ids=_ids(WITH_IDS))
def test_every_path_parameter_has_a_sample_id(case: Case):
    missing = [p for p in case.params if p not in SAMPLE_IDS]
    assert not missing, (
        f"{case}: add a factory for {missing} to SAMPLE_IDS in tests/console_rig.py "
        "(a valid id of that kind in the given organisation)"
    )


# -- the shared rig --------------------------------------------------------------------------------


class SharedRig(ConsoleRig):
    """A ConsoleRig whose signed-in browsers are made once and kept."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._desks: dict[tuple[str, str, bool], Desk] = {}

    def desk(self, role: str, org: Org | None = None, *, live: bool = False) -> Desk:
        """``live``: a TestClient's, for a WebSocket (``ConsoleRig.browser``)."""
        org = org or self.a
        key = (org.id, role, live)
        if key not in self._desks:
            self._desks[key] = self.sign_in(role, org, live=live)
        return self._desks[key]

    def path_for(self, case: Case, org: Org) -> str:
        """The case's path with sample ids of ``org``."""
        ids: dict[str, str] = {}
        for name in case.params:
            ids[name] = SAMPLE_IDS[name](self, org, ids)
        return PARAM.sub(lambda m: ids[m.group(1)], case.path)


@pytest.fixture(scope="module", params=BACKENDS, name="rig")
def rig_fixture(request, tmp_path_factory) -> Iterator[SharedRig]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('routes') / 'cloud.db'}"
        rig = SharedRig(url)
        try:
            yield rig
        finally:
            rig.close()
        return
    server = request.getfixturevalue("pg_server")
    url = fresh_pg_database(server)
    rig = SharedRig(url)
    try:
        yield rig
    finally:
        rig.close()
        drop_pg_database(server, url)


def _usable(case: Case) -> None:
    """Skip nothing silently: a case the declaration tests already fail is not run again."""
    if case.roles is None or any(p not in SAMPLE_IDS for p in case.params):
        pytest.fail(f"{case} lacks its declaration or sample id (see the tests above)")


def _send(desk_or_client, case: Case, path: str, data: dict[str, str] | None = None, **kw):
    client = desk_or_client.client if isinstance(desk_or_client, Desk) else desk_or_client
    if case.method == "GET":
        return client.get(path, follow_redirects=False, **kw)
    return client.request(case.method, path, data=data or {}, follow_redirects=False, **kw)


def _refused_socket(client, path: str) -> None:
    """The socket is closed by the role dependency (1008), not by anything else."""
    with pytest.raises(WebSocketDisconnect) as closed, client.websocket_connect(path) as ws:
        ws.receive()
    assert closed.value.code == 1008, (path, closed.value.code, closed.value.reason)


def _most_able(case: Case) -> str:
    assert case.roles is not None
    return max(case.roles, key=ROLES.index)


# -- anonymous -------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", PRIVATE, ids=_ids(PRIVATE))
def test_anonymous_requests_are_refused(rig: SharedRig, case: Case):
    _usable(case)
    path = rig.path_for(case, rig.a)
    browser = rig.browser(live=case.method == "WS")
    if case.method == "WS":
        _refused_socket(browser, path)
        return
    before = rig.snapshot()
    answer = _send(browser, case, path, {"csrf": "x"})
    if case.method == "GET":
        assert answer.status_code == 303, (case, answer.status_code)
        assert answer.headers["location"].startswith("/console/login?next=")
    else:
        assert answer.status_code == 403, (case, answer.status_code)
    assert SECRET_MARK not in answer.text
    assert rig.snapshot() == before


# -- CSRF ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", POSTS, ids=_ids(POSTS))
def test_posts_without_a_valid_csrf_token_or_from_elsewhere_are_refused(rig: SharedRig, case: Case):
    _usable(case)
    desk = rig.desk(_most_able(case))
    path = rig.path_for(case, rig.a)
    before = rig.snapshot()
    attempts = [
        ({}, {}),
        ({"csrf": "not-the-token"}, {}),
        ({"csrf": desk.csrf + "x"}, {}),
        ({"csrf": desk.csrf}, {"Origin": "https://evil.example"}),
        ({"csrf": desk.csrf}, {"Origin": "null"}),
        ({"csrf": desk.csrf}, {"Origin": "http://testserver.evil.example"}),
    ]
    for data, headers in attempts:
        answer = _send(desk, case, path, data, headers=headers)
        assert answer.status_code == 403, (case, data, headers, answer.status_code)
        assert "Nothing was changed" in answer.text
    # Neither Origin nor Referer: refused too (browsers send Origin on every POST).
    bare = rig.browser(origin=False)
    bare.cookies = desk.client.cookies
    answer = _send(bare, case, path, {"csrf": desk.csrf})
    assert answer.status_code == 403, (case, answer.status_code)
    assert rig.snapshot() == before


# -- roles -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", PRIVATE, ids=_ids(PRIVATE))
def test_roles_below_the_route_are_refused(rig: SharedRig, case: Case):
    _usable(case)
    path = rig.path_for(case, rig.a)
    for role in ROLES:
        if case.roles is not None and role in case.roles:
            continue
        desk = rig.desk(role, live=case.method == "WS")
        if case.method == "WS":
            _refused_socket(desk.client, path)
            continue
        before = rig.snapshot()
        answer = _send(desk, case, path, {"csrf": desk.csrf})
        assert answer.status_code == 403, (case, role, answer.status_code)
        assert rig.snapshot() == before


# A stream that does not end by itself (the live feed) is opened by its own tests
# (tests/test_console_live.py, tests/test_console_today.py); every other check above covers it.
PAGES = [case for case in GETS if not case.long_lived]


@pytest.mark.parametrize("case", PAGES, ids=_ids(PAGES))
def test_each_allowed_role_opens_the_page(rig: SharedRig, case: Case):
    _usable(case)
    path = rig.path_for(case, rig.a)
    for role in sorted(case.roles or ()):
        answer = rig.desk(role).get(path)
        assert answer.status_code < 400, (case, role, answer.status_code, answer.text[:300])
        assert answer.headers["content-security-policy"] == CSP, case
        assert answer.headers["x-frame-options"] == "DENY", case
        assert answer.headers["cache-control"] == "no-store", case


# -- tenant isolation ------------------------------------------------------------------------------


@pytest.mark.parametrize("case", WITH_IDS, ids=_ids(WITH_IDS))
def test_ids_of_another_organisation_are_not_found(rig: SharedRig, case: Case):
    _usable(case)
    path = rig.path_for(case, rig.a)  # org A's ids ...
    for role in sorted(case.roles or ()):
        desk = rig.desk(role, rig.b, live=case.method == "WS")  # ... asked by org B's staff
        if case.method == "WS":
            _refused_socket(desk.client, path)
            continue
        before = rig.snapshot()
        answer = _send(desk, case, path, {"csrf": desk.csrf})
        assert answer.status_code == 404, (case, role, answer.status_code)
        assert SECRET_MARK not in answer.text, (case, role)
        assert rig.snapshot() == before


def test_the_sample_ids_are_valid_in_their_own_organisation(rig: SharedRig):
    """So a 404 above means "another organisation's", not "no such id"."""
    member = SAMPLE_IDS["member_id"](rig, rig.a, {})
    trainer = SAMPLE_IDS["staff_id"](rig, rig.a, {})
    page = rig.desk("owner").get(f"/console/staff/{trainer}")
    assert page.status_code == 200
    assert member in page.text and SECRET_MARK in page.text


def test_a_page_shows_only_its_own_organisation(rig: SharedRig):
    page = rig.desk("owner", rig.b).get("/console/staff")
    assert page.status_code == 200
    assert rig.b.people["trainer"].email in page.text
    assert rig.a.people["trainer"].email not in page.text
    assert SECRET_MARK not in page.text


# -- the checks themselves -------------------------------------------------------------------------


def _extra_router():
    """Routes as another part of the console might add them: declared, undeclared, a socket."""
    from fastapi import APIRouter, Depends

    from cloud.console.auth import allow, signed_in

    router = APIRouter(prefix="/console/extra", include_in_schema=False)

    @router.get("/undeclared")
    async def undeclared() -> dict:
        return {}

    @router.get("/declared/{member_id}", dependencies=[Depends(allow("owner", "staff"))])
    async def declared(member_id: str) -> dict:
        return {"id": member_id}

    @router.websocket("/feed")
    async def feed(websocket: WebSocket, me=Depends(signed_in)) -> None:  # noqa: B008
        await websocket.accept()
        await websocket.send_text(me.name)
        await websocket.close()

    return router


def test_the_route_checks_see_what_a_new_router_declares(tmp_path):
    app = create_app(f"sqlite:///{tmp_path}/extra.db")
    try:
        app.include_router(_extra_router())
        found = {}
        for route in app_routes(app):
            if (route.path or "").startswith("/console/extra"):
                found[route.path] = _declarations(route.dependant)
    finally:
        app.state.cloud.database.close()
    assert found["/console/extra/undeclared"] == (None, False)
    assert found["/console/extra/declared/{member_id}"] == (frozenset({"owner", "staff"}), False)
    assert found["/console/extra/feed"] == (frozenset(ROLES), False)


def test_a_websocket_needs_a_session_of_this_origin(console):
    console.app.include_router(_extra_router())
    with (
        pytest.raises(WebSocketDisconnect),
        console.browser(live=True).websocket_connect("/console/extra/feed") as ws,
    ):
        ws.receive_text()
    desk = console.sign_in("trainer", live=True)
    with desk.client.websocket_connect("/console/extra/feed") as ws:
        assert ws.receive_text() == desk.person.name
    with (
        pytest.raises(WebSocketDisconnect),
        desk.client.websocket_connect(
            "/console/extra/feed", headers={"Origin": "https://evil.example"}
        ) as ws,
    ):
        ws.receive_text()
