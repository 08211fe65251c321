"""The console's HTML side: ``router`` (served under ``/console`` by ``cloud.app``),
``render``, the security headers, the error pages, and the pages of the accounts part: sign-in,
sign-out, taking up an invite, staff (owners) and the audit log (owners).

- ``GET|POST /console/login``, ``POST /console/logout``;
- ``GET|POST /console/invite`` (the link is ``/console/invite#<token>``: the script copies the
  token into the form; without the script the person pastes it);
- ``GET /console/staff``, ``POST /console/staff/invite``, ``GET /console/staff/{staff_id}``,
  ``POST /console/staff/{staff_id}/role|disable|members``,
  ``POST /console/staff/{staff_id}/members/{member_id}/remove`` (owners);
- ``GET /console/audit[?before=ID]`` (owners);
- ``GET /console/static/{name}``: the stylesheet and the script (every file of ``static/``, read
  at import), cacheable for an hour (their URLs carry a digest of the content).

Every answer under ``/console`` carries the security headers (``ConsoleHeaders``): the CSP below,
nosniff, ``X-Frame-Options: DENY``, ``Referrer-Policy: same-origin`` and ``Cache-Control:
no-store`` (static files excepted). ``same-origin``, not ``no-referrer``: under ``no-referrer`` a
browser sends ``Origin: null`` with the console's own form posts, which the origin check must
refuse (an attacker's page can send ``null`` too); ``same-origin`` still never tells another site
anything. Refusals and failures are HTML pages with plain words (``ConsoleError``), never a
traceback; an id outside the signed-in organisation is a 404 like an unknown one.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import mimetypes
import urllib.parse
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jinja2
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException

from cloud import db
from cloud.console import accounts, audit
from cloud.console.auth import (
    ABSOLUTE_S,
    FORM_COOKIE,
    MAX_PASSWORD_CHARS,
    ROLE_WORDS,
    ROLES,
    SESSION_COOKIE,
    ChecksBusy,
    ConsoleError,
    FormFields,
    LoginRequired,
    PublicForm,
    SignedIn,
    StaffUser,
    address_of,
    allow,
    check_password,
    clean_name,
    clear_cookie,
    client_key,
    configured_origin,
    current_session,
    form_token,
    make_password_hash,
    new_token,
    normal_email,
    now_of,
    password_problem,
    public_page,
    set_cookie,
    start_session,
    transact,
)
from cloud.errors import Clash, Invalid, ServiceError
from sync.protocol import utc_text

log = logging.getLogger("cloud.console")

PREFIX = "/console"
HERE = Path(__file__).resolve().parent

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=(), payment=(), usb=()"),
]
_OURS = {name for name, _ in SECURITY_HEADERS} | {b"cache-control"}
STATIC_PREFIX = PREFIX + "/static/"
STATIC_CACHE = b"public, max-age=3600"


def is_console_path(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/")


class ConsoleHeaders:
    """ASGI middleware: the security headers on every answer under ``/console`` (errors and
    redirects too, whoever made them), ``Cache-Control: no-store`` on all but static files."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not is_console_path(scope["path"]):
            await self.app(scope, receive, send)
            return
        cache = STATIC_CACHE if scope["path"].startswith(STATIC_PREFIX) else b"no-store"

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() not in _OURS]
                headers += [*SECURITY_HEADERS, (b"cache-control", cache)]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


# -- static files ----------------------------------------------------------------------------------

_STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8"}


def _load_static() -> dict[str, tuple[bytes, str, str]]:
    """{file name: (body, media type, digest)} of every file in ``static/``."""
    files = {}
    for path in sorted((HERE / "static").iterdir()):
        if not path.is_file() or path.name.startswith("."):
            continue
        body = path.read_bytes()
        kind = _STATIC_TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0]
        files[path.name] = (body, kind or "application/octet-stream", "")
        files[path.name] = (*files[path.name][:2], hashlib.sha256(body).hexdigest()[:12])
    return files


STATIC = _load_static()


def static_url(name: str) -> str:
    """The URL of a static file, with a digest of its content (so it can be cached)."""
    if name not in STATIC:
        raise KeyError(f"no static file {name}")
    return f"{STATIC_PREFIX}{name}?v={STATIC[name][2]}"


# -- rendering -------------------------------------------------------------------------------------

NAV: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    ("today", "Today", f"{PREFIX}/", ROLES),
    ("members", "Members", f"{PREFIX}/members", ROLES),
    ("doors", "Doors", f"{PREFIX}/doors", ("owner", "staff")),
    ("staff", "Staff", f"{PREFIX}/staff", ("owner",)),
    ("audit", "Audit", f"{PREFIX}/audit", ("owner",)),
)


def home_for(staff: StaffUser) -> str:
    """Where a role lands after sign-in: trainers on their members, the others on Today."""
    return f"{PREFIX}/members" if staff.role == "trainer" else f"{PREFIX}/"


def nav_for(staff: StaffUser | None, path: str) -> list[dict[str, Any]]:
    """The navigation links ``staff``'s role may follow, the current section marked."""
    if staff is None:
        return []
    items = []
    for key, label, href, roles in NAV:
        if staff.role not in roles:
            continue
        current = path == href if key == "today" else path.startswith(href)
        items.append({"key": key, "label": label, "href": href, "current": current})
    return items


def when(text: str | None, zone: str | None = None) -> str:
    """A stored UTC time as ``2026-05-01 14:03`` in ``zone`` (an IANA name; UTC without one)."""
    if not text:
        return ""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    label = "UTC"
    if zone:
        try:
            moment = moment.astimezone(ZoneInfo(zone))
            label = moment.tzname() or zone
        except ZoneInfoNotFoundError:
            pass
    return f"{moment:%Y-%m-%d %H:%M} {label}"


TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
TEMPLATES.globals.update(static_url=static_url, role_words=ROLE_WORDS, roles=ROLES)
TEMPLATES.filters["when"] = when


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    """``template`` (a file in ``cloud/console/templates/``, extending ``base.html``) as an HTML
    answer. The context always holds ``staff`` (the signed-in ``StaffUser`` or None),
    ``organization_name``, ``csrf`` (the token every POST form sends as the hidden field
    ``csrf``: the session's, or before sign-in the form cookie's, set here when missing),
    ``nav`` (the links the role may follow) and ``path``; ``static_url(name)``, ``role_words``
    and the filter ``when`` (a stored time in words) are globals. Autoescaped: never mark
    user data safe."""
    session = getattr(request.state, "console_session", None)
    new_form_token = None
    if session is not None:
        csrf = session.csrf
    else:
        csrf = form_token(request)
        if csrf is None:
            csrf = new_form_token = new_token()
    context.setdefault("staff", None if session is None else session.staff)
    context.setdefault("organization_name", "" if session is None else session.organization_name)
    context.setdefault("csrf", csrf)
    context.setdefault("nav", nav_for(context["staff"], request.url.path))
    context.setdefault("path", request.url.path)
    context.setdefault("notice", None)
    context.setdefault("error", None)
    html = TEMPLATES.get_template(template).render(**context)
    response = HTMLResponse(html, status_code=status_code)
    if new_form_token is not None:
        set_cookie(response, request, FORM_COOKIE, new_form_token, None)
    return response


def see_other(path: str) -> RedirectResponse:
    """The answer to a successful POST: go and GET ``path`` (303)."""
    return RedirectResponse(path, status_code=303)


def message_page(
    request: Request,
    status: int,
    title: str,
    message: str,
    headers: dict[str, str] | None = None,
) -> HTMLResponse:
    response = render(request, "message.html", status, title=title, message=message)
    response.headers.update(headers or {})
    return response


_TITLES = {
    400: "Not accepted",
    500: "Failed",
    503: "Busy",
    403: "Refused",
    404: "Not found",
    405: "Not allowed",
    409: "Not possible",
    410: "No longer valid",
    413: "Too large",
    415: "Refused",
    422: "Not accepted",
    429: "Too many attempts",
}


def install_handlers(app: FastAPI) -> None:
    """Console refusals and errors become HTML pages: ``ConsoleError``, ``LoginRequired`` (a
    redirect to sign-in), and, for paths under ``/console`` only, the app's ``ServiceError``,
    HTTP errors (an unknown page), request validation errors and database failures (503 with
    Retry-After when busy); the rest of the cloud keeps its JSON answers."""

    async def console_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ConsoleError)
        return message_page(request, exc.status, exc.title, exc.message, exc.headers)

    async def login_required(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, LoginRequired)
        query = urllib.parse.urlencode({"next": exc.next_path})
        return RedirectResponse(f"{PREFIX}/login?{query}", status_code=303)

    app.add_exception_handler(ConsoleError, console_error)
    app.add_exception_handler(LoginRequired, login_required)

    def wrap(
        kind: type[Exception],
        describe: Callable[[Exception], tuple[int, str]],
        *,
        menu: bool = True,
        fixed_headers: dict[str, str] | None = None,
    ) -> None:
        original = app.exception_handlers.get(kind)

        async def handler(request: Request, exc: Exception) -> Response:
            if is_console_path(request.url.path) or original is None:
                status, message = describe(exc)
                if menu:  # the page then shows the staff's menu (not when the database failed)
                    with contextlib.suppress(db.DatabaseError):
                        await current_session(request)
                headers = fixed_headers or getattr(exc, "headers", None) or {}
                return message_page(
                    request, status, _TITLES.get(status, "Error"), message, dict(headers)
                )
            return await original(request, exc)

        app.add_exception_handler(kind, handler)

    def service(exc: Exception) -> tuple[int, str]:
        assert isinstance(exc, ServiceError)
        detail = exc.detail or "The request could not be carried out."
        return exc.status, detail[:1].upper() + detail[1:] + ("" if detail.endswith(".") else ".")

    def http(exc: Exception) -> tuple[int, str]:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 404:
            return 404, "There is no such page here."
        return exc.status_code, str(exc.detail)

    def invalid(_exc: Exception) -> tuple[int, str]:
        return 400, "The address or form holds a value that is not accepted."

    wrap(ServiceError, service)
    wrap(StarletteHTTPException, http)
    wrap(RequestValidationError, invalid)
    wrap(
        db.DatabaseBusy,
        lambda _exc: (503, "The database is busy: try again in a moment."),
        menu=False,
        fixed_headers={"Retry-After": "1"},
    )
    wrap(
        db.InvalidValue,
        lambda _exc: (400, "A value in the form cannot be stored."),
        menu=False,
    )
    wrap(
        db.DatabaseError,
        lambda _exc: (500, "The cloud's database failed on this request."),
        menu=False,
    )


router = APIRouter(prefix=PREFIX, include_in_schema=False)
Owner = Annotated[StaffUser, Depends(allow("owner"))]


# -- static files ----------------------------------------------------------------------------------


@router.get("/static/{name}", dependencies=[Depends(public_page)])
async def static_file(name: str) -> Response:
    found = STATIC.get(name)
    if found is None:
        raise ConsoleError(404, "Not found", "There is no such file here.")
    body, media_type, _digest = found
    return Response(body, media_type=media_type)


# -- sign-in and sign-out --------------------------------------------------------------------------


def safe_next(text: str | None) -> str | None:
    """A path under /console to return to after sign-in, or None: only this site's console
    pages (never another site, ``//host``, a backslash or control characters)."""
    if not text or len(text) > 500 or not is_console_path(text.split("?", 1)[0]):
        return None
    if "//" in text or "\\" in text or any(ord(c) < 32 or ord(c) == 127 for c in text):
        return None
    if text.split("?", 1)[0] in (f"{PREFIX}/login", f"{PREFIX}/logout", f"{PREFIX}/invite"):
        return None
    return text


def _wait_words(seconds: int) -> str:
    if seconds < 90:
        return f"{seconds} seconds"
    return f"{round(seconds / 60)} minutes"


def _login_page(
    request: Request, status: int, *, email: str, next_path: str | None, error: str | None
) -> HTMLResponse:
    return render(
        request, "login.html", status, email=email, next_path=next_path or "", error=error
    )


@router.get("/login", dependencies=[Depends(public_page)])
async def login_form(request: Request) -> Response:
    session = await current_session(request)
    next_path = safe_next(request.query_params.get("next"))
    if session is not None:
        return see_other(next_path or home_for(session.staff))
    return _login_page(request, 200, email="", next_path=next_path, error=None)


@router.post("/login")
async def login(request: Request, form: PublicForm) -> Response:
    typed = form.get("email", "")[:300]
    email = normal_email(typed) or typed.strip().lower()
    password = form.get("password", "")
    next_path = safe_next(form.get("next"))
    throttle = request.app.state.console_throttle
    now = now_of(request)
    address = address_of(request)
    wait = throttle.retry_after(address, email, now.timestamp())
    if wait is not None:
        response = _login_page(
            request,
            429,
            email=typed,
            next_path=next_path,
            error=f"Too many failed sign-ins from this address or for this account. Try again "
            f"in {_wait_words(wait)}.",
        )
        response.headers["Retry-After"] = str(wait)
        return response
    candidates: list[dict[str, Any]] = []
    if normal_email(typed) is not None and len(password) <= MAX_PASSWORD_CHARS:
        candidates = await transact(
            request,
            lambda tx: db.staff_for_login(tx, email, accounts.MAX_ACCOUNTS_PER_EMAIL),
            write=False,
        )
    try:
        index = await check_password(password, [c["password_hash"] for c in candidates])
    except ChecksBusy:
        response = _login_page(
            request,
            429,
            email=typed,
            next_path=next_path,
            error="Many sign-ins are being checked right now: try again in a moment.",
        )
        response.headers["Retry-After"] = "1"
        return response
    if index is None:
        throttle.failed(address, email, now.timestamp())
        response = _login_page(
            request, 401, email=typed, next_path=next_path, error="Wrong email or password."
        )
        if candidates:

            def failed(tx: db.Tx) -> None:
                for row in candidates:
                    audit.record(
                        tx,
                        None,
                        "login.failed",
                        row["id"],
                        "wrong password",
                        address,
                        at=now,
                        organization_id=row["organization_id"],
                    )

            # After the answer is sent: an existing account's failure must not take longer to
            # answer than an unknown email's (the audit row's write would tell them apart).
            response.background = BackgroundTask(transact, request, failed)
        return response
    staff = accounts.staff_user(candidates[index])
    token = await transact(request, lambda tx: _sign_in(tx, staff, now, address))
    response = see_other(next_path or home_for(staff))
    set_cookie(response, request, SESSION_COOKIE, token, ABSOLUTE_S)
    return response


def _sign_in(tx: db.Tx, staff: StaffUser, now: datetime, address: str) -> str:
    token, _csrf = start_session(tx, staff, now, address)
    audit.record(tx, staff, "session.login", staff.id, "signed in", address, at=now)
    return token


@router.post("/logout")
async def logout(request: Request, me: SignedIn) -> Response:
    session = request.state.console_session
    now = now_of(request)
    address = address_of(request)

    def end(tx: db.Tx) -> None:
        db.delete_staff_session(tx, session.token_hash)
        audit.record(tx, me, "session.logout", me.id, "signed out", address, at=now)

    await transact(request, end)
    response = see_other(f"{PREFIX}/login")
    clear_cookie(response, request, SESSION_COOKIE)
    return response


# -- taking up an invite ---------------------------------------------------------------------------


def _invite_page(
    request: Request,
    status: int,
    *,
    token: str = "",
    name: str = "",
    error: str | None = None,
    invite: dict[str, Any] | None = None,
) -> HTMLResponse:
    return render(
        request, "invite.html", status, token=token, name=name, error=error, invite=invite
    )


_INVITE_INVALID = (
    "This invitation is not valid: it was used already, it has expired, or the link is "
    "incomplete. Ask an owner of your gym for a new one."
)


@router.get("/invite", dependencies=[Depends(public_page)])
async def invite_form(request: Request) -> Response:
    return _invite_page(request, 200)


@router.post("/invite")
async def accept_invite(request: Request, form: PublicForm) -> Response:
    token = accounts.invite_token(form.get("token", ""))
    name = form.get("name", "")[:200]
    password = form.get("password", "")
    now = now_of(request)
    address = address_of(request)
    budget = request.app.state.console_throttle.addresses
    wait = budget.retry_after(client_key(address), now.timestamp())
    if wait is not None:
        raise ConsoleError(
            429,
            "Too many attempts",
            f"Too many invalid invitations from this address. Try again in {_wait_words(wait)}.",
            headers={"Retry-After": str(wait)},
        )
    try:
        invite = await transact(
            request, lambda tx: accounts.open_invite(tx, token, now), write=False
        )
    except accounts.InviteInvalid:
        budget.spend(client_key(address), now.timestamp())
        return _invite_page(request, 410, error=_INVITE_INVALID)
    problem = None
    if clean_name(name) is None:
        problem = "Enter your name (at most 100 characters)."
    elif password != form.get("password2", ""):
        problem = "The two passwords are not the same."
    else:
        problem = password_problem(
            password, email=invite["email"], name=name, org_name=invite["organization_name"]
        )
    if problem is not None:
        return _invite_page(request, 400, token=token, name=name, error=problem, invite=invite)
    try:
        hashed = await make_password_hash(password)
    except ChecksBusy:
        raise ConsoleError(
            429,
            "Busy",
            "Many passwords are being checked right now: go back and try again in a moment.",
            headers={"Retry-After": "1"},
        ) from None

    def take(tx: db.Tx) -> tuple[StaffUser, str]:
        user = accounts.accept_invite(tx, token, name, hashed, now, address)
        return user, _sign_in(tx, user, now, address)

    try:
        user, session_token = await transact(request, take)
    except accounts.InviteInvalid:
        return _invite_page(request, 410, error=_INVITE_INVALID)
    except Clash as exc:
        return _invite_page(request, 409, error=f"{exc.detail}.")
    response = see_other(home_for(user))
    set_cookie(response, request, SESSION_COOKIE, session_token, ABSOLUTE_S)
    return response


# -- staff (owners) --------------------------------------------------------------------------------

_NOTICES = {
    "role": "The role was changed.",
    "disabled": "The account was disabled; its sessions have ended.",
    "assigned": "The member was assigned.",
    "already": "The member was already assigned.",
    "removed": "The member was taken from this trainer.",
}


def _problem_words(exc: ServiceError) -> str:
    if isinstance(exc, Invalid):
        return " ".join(f"{problem[:1].upper()}{problem[1:]}." for _field, problem in exc.fields)
    detail = exc.detail or "not possible"
    return detail[:1].upper() + detail[1:] + "."


async def _staff_page(
    request: Request,
    me: StaffUser,
    status: int = 200,
    *,
    error: str | None = None,
    email: str = "",
    role: str = "staff",
) -> HTMLResponse:
    now = now_of(request)

    def load(tx: db.Tx) -> dict[str, Any]:
        org = me.organization_id
        return {
            "people": db.staff_list(tx, org),
            "invites": db.open_staff_invites(tx, org, utc_text(now)),
        }

    data = await transact(request, load, write=False)
    return render(
        request,
        "staff.html",
        status,
        **data,
        error=error,
        invite_email=email,
        invite_role=role,
        notice=_NOTICES.get(request.query_params.get("done", "")),
    )


@router.get("/staff")
async def staff_list(request: Request, me: Owner) -> Response:
    return await _staff_page(request, me)


@router.post("/staff/invite")
async def staff_invite(request: Request, me: Owner, form: FormFields) -> Response:
    email, role = form.get("email", "")[:300], form.get("role", "")
    now = now_of(request)
    address = address_of(request)
    try:
        made = await transact(
            request,
            lambda tx: accounts.create_invite(
                tx, me.organization_id, email, role, me, now, address
            ),
        )
    except (Invalid, Clash) as exc:
        return await _staff_page(
            request, me, exc.status, error=_problem_words(exc), email=email, role=role
        )
    link = (configured_origin(request) or str(request.base_url).rstrip("/")) + made.path
    return render(request, "invite_made.html", invite=made, link=link)


async def _staff_detail(
    request: Request, me: StaffUser, staff_id: str, status: int = 200, error: str | None = None
) -> HTMLResponse:
    def load(tx: db.Tx) -> dict[str, Any]:
        person = accounts.get_staff(tx, me.organization_id, staff_id)
        members = (
            accounts.trainer_members(tx, me.organization_id, staff_id)
            if person["role"] == "trainer"
            else []
        )
        return {"person": person, "members": members}

    data = await transact(request, load, write=False)
    return render(
        request,
        "staff_detail.html",
        status,
        **data,
        error=error,
        notice=_NOTICES.get(request.query_params.get("done", "")),
    )


@router.get("/staff/{staff_id}")
async def staff_detail(request: Request, staff_id: str, me: Owner) -> Response:
    return await _staff_detail(request, me, staff_id)


async def _staff_change(
    request: Request,
    me: StaffUser,
    staff_id: str,
    change: Callable[[db.Tx, datetime, str], Any],
    done: Callable[[Any], str],
) -> Response:
    """Run an owner's change to an account; back to its page (or the list) with a notice, or the
    page again with the problem in words (NotFound stays a 404)."""
    now = now_of(request)
    address = address_of(request)
    try:
        result = await transact(request, lambda tx: change(tx, now, address))
    except (Invalid, Clash) as exc:
        return await _staff_detail(request, me, staff_id, exc.status, _problem_words(exc))
    return see_other(done(result))


@router.post("/staff/{staff_id}/role")
async def staff_role(
    request: Request,
    staff_id: str,
    me: Owner,
    form: FormFields,
) -> Response:
    role = form.get("role", "")
    return await _staff_change(
        request,
        me,
        staff_id,
        lambda tx, now, address: accounts.change_role(tx, me, staff_id, role, now, address),
        lambda _row: f"{PREFIX}/staff/{staff_id}?done=role",
    )


@router.post("/staff/{staff_id}/disable")
async def staff_disable(request: Request, staff_id: str, me: Owner) -> Response:
    return await _staff_change(
        request,
        me,
        staff_id,
        lambda tx, now, address: accounts.disable(tx, me, staff_id, now, address),
        lambda _row: f"{PREFIX}/staff/{staff_id}?done=disabled",
    )


@router.post("/staff/{staff_id}/members")
async def staff_assign(
    request: Request,
    staff_id: str,
    me: Owner,
    form: FormFields,
) -> Response:
    member_id = form.get("member_id", "")[:200]
    return await _staff_change(
        request,
        me,
        staff_id,
        lambda tx, now, address: accounts.assign_member(tx, me, staff_id, member_id, now, address),
        lambda added: f"{PREFIX}/staff/{staff_id}?done={'assigned' if added else 'already'}",
    )


@router.post("/staff/{staff_id}/members/{member_id}/remove")
async def staff_unassign(request: Request, staff_id: str, member_id: str, me: Owner) -> Response:
    return await _staff_change(
        request,
        me,
        staff_id,
        lambda tx, now, address: accounts.unassign_member(
            tx, me, staff_id, member_id, now, address
        ),
        lambda _none: f"{PREFIX}/staff/{staff_id}?done=removed",
    )


# -- the audit log (owners) ------------------------------------------------------------------------


@router.get("/audit")
async def audit_log(request: Request, me: Owner) -> Response:
    text = request.query_params.get("before", "")
    before = int(text) if text.isdigit() and 0 < len(text) <= 18 else None

    def load(tx: db.Tx) -> dict[str, Any]:
        gyms = db.gyms(tx, me.organization_id)
        zone = gyms[0]["timezone"] if gyms else None
        # Staff ids as names (an account's name as it is now; the id stays in the title).
        names = {row["id"]: row["name"] for row in db.staff_list(tx, me.organization_id)}
        return {**audit.page(tx, me.organization_id, before), "zone": zone, "names": names}

    data = await transact(request, load, write=False)
    return render(request, "audit.html", **data, before=before, cli=audit.CLI_ADDRESS)
