"""The owner page's HTTP side: Starlette routes over the pure parts (``create_app``).

Routes (HTML views have JSON twins under ``/api/``):

- ``GET /`` the dashboard; ``GET /live`` its live sections as an HTML fragment (the page's script
  swaps them in every ``web.refresh_s``); ``GET /api/overview|decisions|sync|health|audit``;
- ``GET /healthz`` and ``GET /metrics``: no login, nothing personal (monitoring);
- ``GET|POST /login``, ``POST /logout``;
- ``POST /actions/sync-now|test-door`` (a request in the control file, carried out by the sync
  agent or the scanner: this process never touches GPIO) and ``POST /actions/diagnostics`` (a zip);
- ``/static/``: the stylesheet and the script, cacheable.

Every POST carries a form body (``application/x-www-form-urlencoded``, at most 8 KiB) whose CSRF
token must equal the session's, and must not come from another site (``Origin``/``Referer``).
Without a password file the page shows only how to set one. Every response carries the security
headers (``SecurityHeaders``). Nothing personal goes into URLs or logs.

Blocking work (SQLite, scrypt, journalctl, the zip) runs in Starlette's thread pool; sessions and
the login throttle are only touched on the event loop, so they need no lock.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from zoneinfo import ZoneInfo

import jinja2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kiosk import __version__
from kiosk.config import Config, as_dict
from kiosk.control import ControlError, HealthReport, RequestKind, control_path
from kiosk.owner_password import PasswordFileError, load_password_hash
from kiosk.status import collect_status, disk_info
from kiosk.store import StoreError
from kiosk.web import diagnostics, metrics, views
from kiosk.web.auth import LoginThrottle, Session, Sessions, same_origin, tokens_match
from kiosk.web.device_health import (
    HEARTBEAT_PROBLEM_S,
    Grade,
    HealthInputs,
    SysFacts,
    grade_checks,
    read_sys_facts,
)
from kiosk.web.passcheck import verify_in_child
from kiosk.web.sources import (
    ControlAccess,
    DatabaseUnavailable,
    DoorDatabase,
    DoorFacts,
    MemberCountCache,
    read_door,
)
from sync.protocol import utc_text

log = logging.getLogger("kiosk.web")

COOKIE = "fitflow_session"
MAX_BODY_BYTES = 8 * 1024
FORM_TYPE = "application/x-www-form-urlencoded"
AUDIT_ROWS = 20
MAX_CONCURRENT_CHECKS = 1  # scrypt takes 32 MiB and ~0.1 s: one login check at a time
HERE = Path(__file__).resolve().parent

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
]
_OURS = {name for name, _ in _SECURITY_HEADERS} | {b"cache-control"}
STATIC_CACHE = b"public, max-age=3600"


class WebClock(Protocol):
    """The page's time: ``wall()`` aware UTC (the kernel's clock, as ``kiosk.control`` expects
    of the page), ``monotonic()`` seconds for sessions and throttling."""

    def wall(self) -> datetime: ...

    def monotonic(self) -> float: ...


class SystemWebClock:
    def wall(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()


class SecurityHeaders:
    """ASGI middleware: the security headers on every response, ``Cache-Control: no-store`` on
    everything but ``/static/``, and a plain 500 (with the same headers) for an unexpected error
    instead of a traceback page."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cache = STATIC_CACHE if scope["path"].startswith("/static/") else b"no-store"
        started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() not in _OURS]
                headers += [*_SECURITY_HEADERS, (b"cache-control", cache)]
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except Exception:
            log.exception("the owner page failed on a request")
            if started:
                raise
            await PlainTextResponse(
                "Internal error: the page's log says more (kiosk logs --unit web).", 500
            )(scope, receive, send_with_headers)


@dataclass(frozen=True, slots=True)
class PasswordState:
    """The owner password as it stands: ``stamp`` changes whenever the file does (sessions
    signed in with another stamp end); ``problem`` says why there is no usable password."""

    encoded: str | None
    stamp: str | None
    problem: str | None


class FormError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


async def read_form(request: Request) -> dict[str, str]:
    """The request's form fields (first value of each). Raises FormError: 415 for any other
    content type, 413 over ``MAX_BODY_BYTES``, 400 for a body that is not a form."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != FORM_TYPE:
        raise FormError(415, "This form must be sent as an HTML form.")
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
        raise FormError(413, "The form is too large.")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise FormError(413, "The form is too large.")
    try:
        pairs = urllib.parse.parse_qsl(
            body.decode("utf-8"), keep_blank_values=True, max_num_fields=20
        )
    except (UnicodeDecodeError, ValueError):
        raise FormError(400, "The form could not be read.") from None
    form: dict[str, str] = {}
    for key, value in pairs:
        form.setdefault(key, value)
    return form


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _own_origin(request: Request) -> str:
    return f"{request.url.scheme}://{request.headers.get('host', '')}"


class OwnerPage:
    """The page's state (sessions, throttle, database handles) and its request handlers."""

    def __init__(
        self,
        config: Config,
        *,
        clock: WebClock,
        read_sys: Callable[[], SysFacts],
        verify: Callable[[str, str], bool],
        disk_usage: Callable[[Path], Any],
        run_logs: diagnostics.RunLogs | None,
        which: Callable[[str], str | None],
        version: str,
    ) -> None:
        self.config = config
        self.clock = clock
        self.read_sys = read_sys
        self.verify = verify
        self.disk_usage = disk_usage
        self.run_logs = run_logs
        self.which = which
        self.version = version
        self.zone = ZoneInfo(config.site.timezone)
        self.store_path = Path(config.store.path)
        self.door = DoorDatabase(self.store_path)
        self.control = ControlAccess(control_path(self.store_path), clock.wall)
        self.members = MemberCountCache()
        self.sessions = Sessions(idle_s=config.web.session_idle_minutes * 60.0)
        self.throttle = LoginThrottle()
        self._checking: set[str] = set()
        self._password_key: tuple[int, ...] | None = None
        self._password_state = PasswordState(None, None, None)
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )

    def close(self) -> None:
        self.door.close()
        self.control.close()

    # -- the password ----------------------------------------------------------------------------

    def password(self) -> PasswordState:
        """The password file's state, re-read only when the file changed (one stat per request)."""
        path = Path(self.config.web.password_file)
        try:
            info = os.stat(path)
        except FileNotFoundError:
            self._password_key = None
            return PasswordState(
                None,
                None,
                f"No owner password is set yet ({path} does not exist). There is no default "
                f"password.",
            )
        except OSError as exc:
            self._password_key = None
            return PasswordState(None, None, f"Cannot read {path}: {exc.strerror or exc}.")
        key = (info.st_dev, info.st_ino, info.st_mtime_ns, info.st_size, info.st_mode)
        if key == self._password_key:
            return self._password_state
        try:
            encoded = load_password_hash(path)
        except PasswordFileError as exc:
            state = PasswordState(None, None, str(exc))
        else:
            digest = hashlib.sha256(f"{encoded}\0{info.st_mtime_ns}\0{info.st_ino}".encode())
            state = PasswordState(encoded, digest.hexdigest(), None)
        self._password_key, self._password_state = key, state
        return state

    # -- rendering -------------------------------------------------------------------------------

    def render(self, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        context.setdefault("door_id", self.config.door.id)
        context.setdefault("refresh_s", self.config.web.refresh_s)
        context.setdefault("version", self.version)
        html = self.templates.get_template(name).render(**context)
        return HTMLResponse(html, status_code=status)

    def setup_page(self, state: PasswordState) -> HTMLResponse:
        return self.render("setup.html", 503, problem=state.problem)

    def message_page(self, status: int, title: str, message: str) -> HTMLResponse:
        return self.render("message.html", status, title=title, message=message)

    @staticmethod
    def set_cookie(response: Response, request: Request, session: Session) -> None:
        response.set_cookie(
            COOKIE,
            session.id,
            path="/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )

    # -- gathering the figures (blocking: call in the thread pool) -------------------------------

    def _day_start(self, now: datetime) -> datetime:
        local = now.astimezone(self.zone)
        midnight = datetime(local.year, local.month, local.day, tzinfo=self.zone)
        return midnight.astimezone(UTC)

    def door_facts(self, now: datetime) -> DoorFacts:
        return read_door(
            self.door,
            recent=self.config.web.recent,
            day_start=self._day_start(now),
            members=self.members,
        )

    def scanner_report(self) -> tuple[HealthReport | None, str | None]:
        try:
            return self.control.store().health("scanner"), None
        except ControlError as exc:
            self.control.failed()
            return None, str(exc)

    def checks(self, now: datetime, facts: DoorFacts, report: HealthReport | None) -> list:
        disk = disk_info(self.store_path.parent, self.disk_usage)
        position = facts.position
        return grade_checks(
            HealthInputs(
                now=now,
                version=self.version,
                expected_fps=float(self.config.camera.fps),
                stale_after_s=self.config.camera.stale_after_s,
                stale_after_hours=self.config.policy.stale_after_hours,
                scanner=None if report is None else report.data,
                scanner_updated_at=None if report is None else report.updated_at,
                database_problem=facts.problem,
                disk_free_bytes=disk["free_bytes"],
                disk_total_bytes=disk["total_bytes"],
                sys=self.read_sys(),
                sync=facts.sync,
                replica_age_s=None
                if facts.replica_synced_at is None
                else (now - facts.replica_synced_at).total_seconds(),
                oldest_pending_age_s=None
                if position is None or position.oldest_pending_at is None
                else (now - position.oldest_pending_at).total_seconds(),
            )
        )

    def audit_rows(self, now: datetime, limit: int = AUDIT_ROWS) -> tuple[list, list, str | None]:
        try:
            store = self.control.store()
            audit = views.audit_view(store.recent_audit(limit), now=now, zone=self.zone)
            requests = views.requests_view(store.recent_requests(5), now=now, zone=self.zone)
            return audit, requests, None
        except ControlError as exc:
            self.control.failed()
            return [], [], str(exc)

    def page_data(self) -> dict[str, Any]:
        """Everything the dashboard shows (and ``/api/overview`` returns)."""
        now = self.clock.wall()
        facts = self.door_facts(now)
        report, report_problem = self.scanner_report()
        audit, requests, audit_problem = self.audit_rows(now)
        checks = self.checks(now, facts, report)
        newest = facts.decisions[0] if facts.decisions else None
        return {
            "now": utc_text(now),
            "database_problem": facts.problem,
            "control_problem": report_problem or audit_problem,
            "door": views.door_view(
                report, newest, door_id=self.config.door.id, now=now, zone=self.zone
            ),
            "today": views.today_view(facts.today),
            "decisions": views.decisions_view(
                facts.decisions, names=self.config.web.names, now=now, zone=self.zone
            ),
            "sync": views.sync_view(facts, now=now, zone=self.zone),
            "health": views.health_view(checks),
            "audit": audit,
            "requests": requests,
        }

    def health_data(self) -> tuple[list, DoorFacts, HealthReport | None, datetime]:
        now = self.clock.wall()
        facts = self.door_facts(now)
        report, _ = self.scanner_report()
        return self.checks(now, facts, report), facts, report, now

    def metrics_text(self) -> str:
        checks, facts, report, now = self.health_data()
        data = report.data if report is not None else {}
        fresh = (
            report is not None and (now - report.updated_at).total_seconds() <= HEARTBEAT_PROBLEM_S
        )

        def number(key: str) -> float | None:
            value = data.get(key)
            if isinstance(value, bool) or not isinstance(value, int | float):
                return None
            return float(value)

        frame_age = None
        last_frame = views.parse_utc(data.get("last_frame_at"))
        if report is not None and last_frame is not None:
            frame_age = max(0.0, (report.updated_at - last_frame).total_seconds())
        position = facts.position
        oldest = None
        if position is not None:
            oldest = (
                0.0
                if position.oldest_pending_at is None
                else max(0.0, (now - position.oldest_pending_at).total_seconds())
            )
        online = facts.sync.get("online")
        decisions = data.get("decisions")
        disk = disk_info(self.store_path.parent, self.disk_usage)
        return metrics.render_metrics(
            metrics.MetricFacts(
                decisions=decisions if isinstance(decisions, dict) else {},
                scanner_up=fresh and data.get("state") != "stopped",
                backlog=None if position is None else position.backlog,
                oldest_pending_age_s=oldest,
                online=online if isinstance(online, bool) else None,
                decode_ms_p50=number("decode_ms_p50"),
                decode_ms_p95=number("decode_ms_p95"),
                frame_age_s=frame_age,
                fps=number("fps"),
                replica_version=None if facts.problem else facts.replica_version,
                replica_members=facts.members,
                disk_free_bytes=disk["free_bytes"],
                checks=checks,
            )
        )

    def audit(self, action: str, outcome: str, *, detail: str = "", client: str = "") -> None:
        """Write an audit row; a control file that cannot be written is logged, not fatal."""
        try:
            self.control.store().audit(
                action, outcome, now=self.clock.wall(), detail=detail, client=client
            )
        except ControlError as exc:
            self.control.failed()
            log.warning("could not write the audit log: %s", exc)

    def submit(self, kind: RequestKind, client: str) -> str | None:
        """Submit an owner request; the problem in words, or None."""
        try:
            self.control.store().submit(kind, now=self.clock.wall(), client=client)
        except ControlError as exc:
            self.control.failed()
            log.warning("could not submit %s: %s", kind.value, exc)
            return str(exc)
        return None

    def bundle(self) -> bytes:
        now = self.clock.wall()
        from kiosk.clock import SystemClock

        try:
            status = diagnostics.without_member_ids(
                collect_status(
                    self.store_path,
                    door_id=self.config.door.id,
                    software_version=self.version,
                    clock_quality=SystemClock().quality().value,
                    now=now,
                    disk_usage=self.disk_usage,
                )
            )
        except StoreError as exc:
            status = {"error": str(exc)}
        checks, facts, _report, _ = self.health_data()
        status = {
            "status": status,
            "health": views.health_view(checks),
            "sync": views.sync_view(facts, now=now, zone=self.zone),
        }
        try:
            findings = self.door.store().quick_check()
            integrity = "PRAGMA quick_check: " + ("ok" if findings == ["ok"] else "PROBLEMS") + "\n"
            integrity += "".join(f"{line}\n" for line in findings if findings != ["ok"])
        except (DatabaseUnavailable, StoreError) as exc:
            self.door.failed()
            integrity = f"The door's database could not be checked: {exc}\n"
        try:
            entries = self.control.store().recent_audit(500)
            audit = [
                {
                    "at": utc_text(e.at),
                    "action": e.action,
                    "outcome": e.outcome,
                    "detail": e.detail,
                    "client": e.client,
                }
                for e in entries
            ]
        except ControlError as exc:
            self.control.failed()
            audit = [{"error": str(exc)}]
        logs = diagnostics.collect_logs(self.run_logs, self.which)
        return diagnostics.build_bundle(
            status=status,
            logs=logs,
            config=as_dict(self.config),
            integrity=integrity,
            audit=audit,
            now=now,
        )

    # -- access ----------------------------------------------------------------------------------

    def session(self, request: Request, state: PasswordState, *, touch: bool) -> Session | None:
        return self.sessions.get(
            request.cookies.get(COOKIE), self.clock.monotonic(), state.stamp, touch=touch
        )

    async def signed_in_view(
        self, request: Request, kind: str, *, touch: bool
    ) -> Session | Response:
        """The signed-in session for a GET, or the response to send instead: the setup page,
        a redirect to /login (HTML), 401 (JSON and the live fragment)."""
        state = self.password()
        if state.problem is not None:
            if kind == "json":
                return JSONResponse({"error": "setup_needed"}, status_code=503)
            if kind == "fragment":
                return PlainTextResponse("setup needed", status_code=503)
            return self.setup_page(state)
        session = self.session(request, state, touch=touch)
        if session is None or not session.signed_in:
            if kind == "json":
                return JSONResponse({"error": "login_required"}, status_code=401)
            if kind == "fragment":
                return PlainTextResponse("signed out", status_code=401)
            return RedirectResponse("/login", status_code=303)
        return session

    async def checked_post(
        self, request: Request, action: str
    ) -> tuple[dict[str, str], Session | None, PasswordState] | Response:
        """A POST's form, once it passed every check: the password set, the body a small form,
        the CSRF token equal to the session's and no foreign origin. Refusals are answered here
        (a CSRF refusal also goes into the audit log)."""
        state = self.password()
        if state.problem is not None:
            return self.setup_page(state)
        try:
            form = await read_form(request)
        except FormError as exc:
            return self.message_page(exc.status, "Request refused", exc.message)
        session = self.session(request, state, touch=False)
        why = None
        if not same_origin(
            _own_origin(request), request.headers.get("origin"), request.headers.get("referer")
        ):
            why = "it came from another site"
        elif session is None:
            why = "no session (cookies off, or the page was open too long)"
        elif not tokens_match(
            session.csrf, form.get("csrf") or request.headers.get("x-csrf-token")
        ):
            why = "its form token did not match"
        if why is not None:
            log.warning("refused a %s request: %s", action, why)
            await run_in_threadpool(
                self.audit, action, "csrf_refused", detail=why, client=_client(request)
            )
            return self.message_page(
                403,
                "Request refused",
                f"This request was refused because {why}. Reload the page and try again.",
            )
        assert session is not None
        self.sessions.get(session.id, self.clock.monotonic(), state.stamp, touch=True)
        return form, session, state

    # -- routes ----------------------------------------------------------------------------------

    async def dashboard(self, request: Request) -> Response:
        session = await self.signed_in_view(request, "html", touch=True)
        if isinstance(session, Response):
            return session
        data = await run_in_threadpool(self.page_data)
        notice, session.notice = session.notice, None
        return self.render("dashboard.html", page=data, csrf=session.csrf, notice=notice)

    async def live(self, request: Request) -> Response:
        session = await self.signed_in_view(request, "fragment", touch=False)
        if isinstance(session, Response):
            return session
        data = await run_in_threadpool(self.page_data)
        return self.render("live.html", page=data)

    def api(self, part: str) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            session = await self.signed_in_view(request, "json", touch=False)
            if isinstance(session, Response):
                return session
            data = await run_in_threadpool(self.page_data)
            if part in ("overview", "decisions", "sync") and data["database_problem"]:
                return JSONResponse(
                    {"error": "database_unavailable", "message": data["database_problem"]},
                    status_code=503,
                )
            if part == "overview":
                body = data
            elif part == "decisions":
                body = {"now": data["now"], "today": data["today"], "decisions": data["decisions"]}
            elif part == "sync":
                body = {"now": data["now"], **data["sync"]}
            elif part == "health":
                body = {"now": data["now"], **data["health"]}
            else:
                body = {
                    "now": data["now"],
                    "audit": data["audit"],
                    "requests": data["requests"],
                    "problem": data["control_problem"],
                }
            return JSONResponse(body)

        return endpoint

    async def healthz(self, _request: Request) -> Response:
        checks, *_ = await run_in_threadpool(self.health_data)
        ok = all(c.grade != Grade.PROBLEM for c in checks)
        return JSONResponse(
            {"ok": ok, "checks": {c.name: c.grade.value for c in checks}},
            status_code=200 if ok else 503,
        )

    async def metrics(self, _request: Request) -> Response:
        text = await run_in_threadpool(self.metrics_text)
        return Response(text, media_type=metrics.CONTENT_TYPE)

    async def login_form(self, request: Request) -> Response:
        state = self.password()
        if state.problem is not None:
            return self.setup_page(state)
        session = self.session(request, state, touch=True)
        if session is not None and session.signed_in:
            return RedirectResponse("/", status_code=303)
        fresh = session is None
        if session is None:
            session = self.sessions.start(self.clock.monotonic())
        response = self.render("login.html", csrf=session.csrf, error=None)
        if fresh:
            self.set_cookie(response, request, session)
        return response

    async def login(self, request: Request) -> Response:
        checked = await self.checked_post(request, "login")
        if isinstance(checked, Response):
            return checked
        form, session, state = checked
        assert session is not None and state.encoded is not None and state.stamp is not None
        client = _client(request)
        now = self.clock.monotonic()
        wait = self.throttle.retry_after(client, now)
        busy = wait is None and (
            client in self._checking or len(self._checking) >= MAX_CONCURRENT_CHECKS
        )
        if wait is not None or busy:
            error = (
                "Another sign-in is being checked: try again in a moment."
                if busy
                else f"Too many wrong passwords. Wait {wait} s, then try again."
            )
            response = self.render("login.html", 429, csrf=session.csrf, error=error)
            response.headers["Retry-After"] = str(wait or 1)
            return response
        self._checking.add(client)
        try:
            ok = await run_in_threadpool(self.verify, form.get("password", ""), state.encoded)
        finally:
            self._checking.discard(client)
        now = self.clock.monotonic()
        if ok:
            self.throttle.succeeded(client)
            signed_in = self.sessions.sign_in(session.id, now, state.stamp)
            log.info("the owner signed in")
            await run_in_threadpool(self.audit, "login", "ok", client=client)
            response = RedirectResponse("/", status_code=303)
            self.set_cookie(response, request, signed_in)
            return response
        failure = self.throttle.failed(client, now)
        log.warning("wrong owner password (%d from this address)", failure.failures)
        await run_in_threadpool(
            self.audit,
            "login",
            "failed",
            detail=f"wrong password ({failure.failures})",
            client=client,
        )
        if failure.lockout_s is not None:
            log.warning(
                "login locked out for %.0f s after %d wrong passwords",
                failure.lockout_s,
                failure.failures,
            )
            await run_in_threadpool(
                self.audit,
                "login",
                "throttled",
                detail=f"locked out for {failure.lockout_s:.0f} s after {failure.failures} wrong passwords",
                client=client,
            )
        if failure.global_cap:
            log.warning("login refused for everyone for a minute: too many wrong passwords")
            await run_in_threadpool(
                self.audit,
                "login",
                "throttled",
                detail="too many wrong passwords from all addresses: logins paused for up to a minute",
                client=client,
            )
        return self.render("login.html", 401, csrf=session.csrf, error="Wrong password.")

    async def logout(self, request: Request) -> Response:
        checked = await self.checked_post(request, "logout")
        if isinstance(checked, Response):
            return checked
        _form, session, _state = checked
        assert session is not None
        if session.signed_in:
            log.info("the owner signed out")
            await run_in_threadpool(self.audit, "logout", "ok", client=_client(request))
        self.sessions.end(session.id)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return response

    def request_action(
        self, kind: RequestKind, notice: str
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            checked = await self.checked_post(request, kind.value)
            if isinstance(checked, Response):
                return checked
            _form, session, _state = checked
            if session is None or not session.signed_in:
                return RedirectResponse("/login", status_code=303)
            problem = await run_in_threadpool(self.submit, kind, _client(request))
            log.info("owner request: %s", kind.value)
            session.notice = notice if problem is None else f"Not requested: {problem}"
            return RedirectResponse("/", status_code=303)

        return endpoint

    async def diagnostics(self, request: Request) -> Response:
        checked = await self.checked_post(request, "diagnostics")
        if isinstance(checked, Response):
            return checked
        _form, session, _state = checked
        if session is None or not session.signed_in:
            return RedirectResponse("/login", status_code=303)
        data = await run_in_threadpool(self.bundle)
        await run_in_threadpool(self.audit, "diagnostics", "downloaded", client=_client(request))
        log.info("diagnostics bundle downloaded")
        stamp = self.clock.wall().strftime("%Y%m%dT%H%M%SZ")
        name = f"fitflow-diagnostics-{self.config.door.id}-{stamp}.zip"
        return Response(
            data,
            media_type="application/zip",
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )


def create_app(
    config: Config,
    *,
    clock: WebClock | None = None,
    read_sys: Callable[[], SysFacts] | None = None,
    verify: Callable[[str, str], bool] = verify_in_child,
    disk_usage: Callable[[Path], Any] = shutil.disk_usage,
    run_logs: diagnostics.RunLogs | None = None,
    which: Callable[[str], str | None] = shutil.which,
    version: str = __version__,
) -> Starlette:
    """The owner page as an ASGI app. Tests inject the clock (wall and monotonic), the system's
    figures (``read_sys``, e.g. ``read_sys_facts`` on a fake root), the password check (by
    default in a child process, ``passcheck``; tests wrap the real one to count scrypt runs), the
    disk, and how journalctl is found and run. ``app.state.page`` is the
    ``OwnerPage``."""
    page = OwnerPage(
        config,
        clock=clock or SystemWebClock(),
        read_sys=read_sys or read_sys_facts,
        verify=verify,
        disk_usage=disk_usage,
        run_logs=run_logs,
        which=which,
        version=version,
    )
    routes = [
        Route("/", page.dashboard, methods=["GET"]),
        Route("/live", page.live, methods=["GET"]),
        Route("/healthz", page.healthz, methods=["GET"]),
        Route("/metrics", page.metrics, methods=["GET"]),
        Route("/login", page.login_form, methods=["GET"]),
        Route("/login", page.login, methods=["POST"]),
        Route("/logout", page.logout, methods=["POST"]),
        Route(
            "/actions/sync-now",
            page.request_action(RequestKind.SYNC_NOW, "Sync requested"),
            methods=["POST"],
        ),
        Route(
            "/actions/test-door",
            page.request_action(RequestKind.TEST_DOOR, "Door test requested"),
            methods=["POST"],
        ),
        Route("/actions/diagnostics", page.diagnostics, methods=["POST"]),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    for part in ("overview", "decisions", "sync", "health", "audit"):
        routes.append(Route(f"/api/{part}", page.api(part), methods=["GET"]))
    app = Starlette(routes=routes, middleware=[Middleware(SecurityHeaders)])
    app.state.page = page
    return app


__all__ = ["COOKIE", "create_app"]
