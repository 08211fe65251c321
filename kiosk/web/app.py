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
headers (``SecurityHeaders``); a request naming another host than this machine is refused before
anything else (``HostCheck``, against DNS rebinding). Nothing personal goes into URLs or logs.

Refusals cannot fill the disk: a refused POST without a signed-in session writes no audit row,
the others and wrong passwords are collapsed to about one row per kind per minute, and their
warnings to one log line per 30 s (``audit_limits``).

What each part of the page shows (and the page's writes to the control file) is gathered by
``page_data.PageData``; this module turns it into responses, and owns the handles it reads
through (the door's database, the control file), opening them here and closing them in
``OwnerPage.close``.

Blocking work (SQLite, scrypt, journalctl, the zip) runs in Starlette's thread pool; sessions, the
login throttle and the audit limits are only touched on the event loop, so they need no lock.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import socket
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

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
from kiosk.config import Config
from kiosk.core.clock import Clock, SystemClock
from kiosk.data.control import RequestKind, control_path
from kiosk.data.dbfile import quick_check_file
from kiosk.ops.owner_password import PasswordFileError, load_password_hash
from kiosk.web import charts, diagnostics, metrics
from kiosk.web.audit_limits import AuditLimiter, LogLimiter, skipped_words
from kiosk.web.auth import (
    DEVICE_LIFETIME_S,
    KnownDevices,
    LoginThrottle,
    Session,
    Sessions,
    allowed_host,
    allowed_host_names,
    client_key,
    same_origin,
    tokens_match,
)
from kiosk.web.device_health import SysFacts, read_sys_facts
from kiosk.web.page_data import PageData, WebClock
from kiosk.web.passcheck import verify_in_child
from kiosk.web.sources import ControlAccess, DoorDatabase, ReadDoor, read_door

log = logging.getLogger("kiosk.web")

COOKIE = "fitflow_session"
DEVICE_COOKIE = "fitflow_device"  # a browser the owner signed in from (``KnownDevices``)
MAX_BODY_BYTES = 8 * 1024
FORM_TYPE = "application/x-www-form-urlencoded"
MAX_CONCURRENT_CHECKS = 1  # scrypt takes 32 MiB and ~0.1 s: one login check at a time
# (plus one at a time for known devices, so a flood's checks never make the owner wait)
BODY_CACHE_S = 1.0  # /healthz and /metrics answer from a body this fresh (monotonic s)
HERE = Path(__file__).resolve().parent
# One environment a process: its compiled templates serve every page object (the tests make
# hundreds), and it holds nothing of a page's own.
TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
# The picture of the day's geometry (pure; the templates draw it as inline SVG).
TEMPLATES.globals["hour_chart"] = charts.hour_chart

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    # same-origin, not no-referrer: under no-referrer browsers send "Origin: null" on the page's
    # own form posts, which the origin check must refuse (an attacker's page can send null too).
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
]
_OURS = {name for name, _ in _SECURITY_HEADERS} | {b"cache-control"}
STATIC_CACHE = b"public, max-age=3600"


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


class HostCheck:
    """ASGI middleware: a request whose ``Host`` header names neither an IP address nor this
    machine (``auth.allowed_host``) gets a plain 400, whatever its path (``/healthz`` too). A
    browser tricked by DNS rebinding (an attacker's name pointed at this address) sends the
    attacker's name here, and so learns nothing and reaches no form."""

    def __init__(self, app: ASGIApp, *, names: frozenset[str]) -> None:
        self.app = app
        self.names = names

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            hosts = [v for k, v in scope.get("headers", []) if k == b"host"]
            header = hosts[0].decode("latin-1") if len(hosts) == 1 else None
            if len(hosts) > 1 or not allowed_host(header, self.names):
                await PlainTextResponse(
                    "Unknown host name: this page answers only to this device's addresses and "
                    "names. To reach it by another name, add that name to web.allowed_hosts.",
                    400,
                )(scope, receive, send)
                return
        await self.app(scope, receive, send)


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
    """The page's HTTP state (sessions, throttles, audit limits, cached bodies, the password) and
    its request handlers; what it shows comes from ``data`` (``PageData``)."""

    def __init__(
        self,
        config: Config,
        *,
        clock: WebClock,
        kernel_clock: Clock,
        read_sys: Callable[[], SysFacts],
        verify: Callable[[str, str], bool],
        disk_usage: Callable[[Path], Any],
        run_logs: diagnostics.RunLogs | None,
        which: Callable[[str], str | None],
        version: str,
        read_door: ReadDoor,
        quick_check: Callable[[Path], list[str]],
    ) -> None:
        self.config = config
        self.clock = clock
        self.verify = verify
        self.version = version
        store_path = Path(config.store.path)
        self.door = DoorDatabase(store_path)
        self.control = ControlAccess(control_path(store_path), clock.wall)
        self.data = PageData(
            config,
            door=self.door,
            control=self.control,
            clock=clock,
            kernel_clock=kernel_clock,
            read_sys=read_sys,
            disk_usage=disk_usage,
            run_logs=run_logs,
            which=which,
            version=version,
            read_door=read_door,
            quick_check=quick_check,
        )
        self.sessions = Sessions(idle_s=config.web.session_idle_minutes * 60.0)
        self.throttle = LoginThrottle()
        # Known devices: their own counter per device (same doubling), no global cap.
        self.devices = KnownDevices()
        self.device_throttle = LoginThrottle(global_failures=None)
        self.audit_limits = AuditLimiter()
        self._log_limits = {
            kind: LogLimiter() for kind in ("refused", "wrong", "lockout", "global", "device")
        }
        self._checking: set[str] = set()
        self._device_checking: set[str] = set()
        self._bodies: dict[str, tuple[float, int, bytes, str]] = {}
        self._password_key: tuple[int, ...] | None = None
        self._password_state = PasswordState(None, None, None)

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
        html = TEMPLATES.get_template(name).render(**context)
        return HTMLResponse(html, status_code=status)

    def setup_page(self, state: PasswordState) -> HTMLResponse:
        return self.render("setup.html", 503, problem=state.problem)

    def message_page(self, status: int, title: str, message: str) -> HTMLResponse:
        return self.render("message.html", status, title=title, message=message)

    @staticmethod
    def set_cookie(response: Response, request: Request, session: Session) -> None:
        # Lax: a link to the page from elsewhere (a bookmark app, a chat) keeps the owner signed
        # in; state changes are POSTs, which Lax cookies never accompany cross-site, and which
        # need the CSRF token and a same-origin Origin/Referer anyway.
        response.set_cookie(
            COOKIE,
            session.id,
            path="/",
            httponly=True,
            samesite="lax",
            secure=request.url.scheme == "https",
        )

    @staticmethod
    def set_device_cookie(response: Response, request: Request, value: str) -> None:
        response.set_cookie(
            DEVICE_COOKIE,
            value,
            max_age=int(DEVICE_LIFETIME_S),
            path="/",
            httponly=True,
            samesite="lax",
            secure=request.url.scheme == "https",
        )

    # -- access ----------------------------------------------------------------------------------

    def session(self, request: Request, state: PasswordState, *, touch: bool) -> Session | None:
        return self.sessions.get(
            request.cookies.get(COOKIE), self.clock.monotonic(), state.stamp, touch=touch
        )

    def warn(self, kind: str, message: str, *args: Any) -> None:
        """A warning of ``kind``, at most one line per 30 s (the rest are counted in the next)."""
        skipped = self._log_limits[kind].allow(self.clock.monotonic())
        if skipped is not None:
            log.warning(message + "%s", *args, skipped_words(skipped))

    async def offer_audit(self, kind: str, **row: Any) -> None:
        """A refusal or failed sign-in for the audit log, through its limits."""
        rows = self.audit_limits.offer(kind, self.clock.monotonic(), **row)
        if rows:
            await run_in_threadpool(self.data.write_audit, rows)

    async def flush_audit(self) -> None:
        """Write the summaries of refusal bursts that are over (called on signed-in views)."""
        rows = self.audit_limits.due(self.clock.monotonic())
        if rows:
            await run_in_threadpool(self.data.write_audit, rows)

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
        await self.flush_audit()
        return session

    async def checked_post(
        self, request: Request, action: str
    ) -> tuple[dict[str, str], Session | None, PasswordState] | Response:
        """A POST's form, once it passed every check: the password set, the body a small form,
        the CSRF token equal to the session's and no foreign origin. Refusals are answered here;
        a refusal of a signed-in session's request also goes into the audit log (collapsed per
        minute), one without a signed-in session does not (anyone can send those, endlessly)."""
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
            self.warn("refused", "refused a %s request: %s", action, why)
            if session is not None and session.signed_in:
                await self.offer_audit(
                    f"refused:{action}",
                    action=action,
                    outcome="csrf_refused",
                    detail=why,
                    client=_client(request),
                    authenticated=True,
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
        data = await run_in_threadpool(self.data.overview)
        notice, session.notice = session.notice, None
        return self.render("dashboard.html", page=data, csrf=session.csrf, notice=notice)

    async def live(self, request: Request) -> Response:
        session = await self.signed_in_view(request, "fragment", touch=False)
        if isinstance(session, Response):
            return session
        data = await run_in_threadpool(self.data.overview)
        return self.render("live.html", page=data)

    def api(self, part: str) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            session = await self.signed_in_view(request, "json", touch=False)
            if isinstance(session, Response):
                return session
            data = await run_in_threadpool(self.data.overview)
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

    async def cached_body(
        self, path: str, media_type: str, make: Callable[[], tuple[int, bytes]]
    ) -> Response:
        """``make()``'s (status, body), reused for ``BODY_CACHE_S``: monitoring may poll these
        without login as often as it likes, and pays for one computation per second at most."""
        now = self.clock.monotonic()
        cached = self._bodies.get(path)
        if cached is None or now - cached[0] >= BODY_CACHE_S or now < cached[0]:
            status, body = await run_in_threadpool(make)
            cached = (now, status, body, media_type)
            self._bodies[path] = cached
        _at, status, body, media_type = cached
        return Response(body, status_code=status, media_type=media_type)

    def healthz_body(self) -> tuple[int, bytes]:
        """``/healthz``: 200 when no check is a PROBLEM, else 503, and each check's grade (blocking:
        call in the thread pool)."""
        ok, grades = self.data.health_grades()
        answer = JSONResponse({"ok": ok, "checks": grades})
        return (200 if ok else 503), bytes(answer.body)

    async def healthz(self, _request: Request) -> Response:
        return await self.cached_body("/healthz", "application/json", self.healthz_body)

    async def metrics(self, _request: Request) -> Response:
        def make() -> tuple[int, bytes]:
            return 200, self.data.metrics_text().encode("utf-8")

        return await self.cached_body("/metrics", metrics.CONTENT_TYPE, make)

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
        # A browser the owner signed in from before has its own counter and no global cap: a
        # flood from other addresses (or from its own network) cannot lock the owner out.
        device = self.devices.known(request.cookies.get(DEVICE_COOKIE), now, state.stamp)
        if device is not None:
            throttle, key, checking = self.device_throttle, device, self._device_checking
        else:
            throttle, key, checking = self.throttle, client_key(client), self._checking
        wait = throttle.retry_after(key, now)
        busy = wait is None and (key in checking or len(checking) >= MAX_CONCURRENT_CHECKS)
        if wait is not None or busy:
            error = (
                "Another sign-in is being checked: try again in a moment."
                if busy
                else f"Too many wrong passwords. Wait {wait} s, then try again."
            )
            response = self.render("login.html", 429, csrf=session.csrf, error=error)
            response.headers["Retry-After"] = str(wait or 1)
            return response
        checking.add(key)
        try:
            ok = await run_in_threadpool(self.verify, form.get("password", ""), state.encoded)
        finally:
            checking.discard(key)
        now = self.clock.monotonic()
        if ok:
            throttle.succeeded(key)
            signed_in = self.sessions.sign_in(session.id, now, state.stamp)
            known = self.devices.issue(request.cookies.get(DEVICE_COOKIE), now, state.stamp)
            log.info("the owner signed in")
            await run_in_threadpool(self.data.audit, "login", "ok", client=client)
            response = RedirectResponse("/", status_code=303)
            self.set_cookie(response, request, signed_in)
            self.set_device_cookie(response, request, known)
            return response
        failure = throttle.failed(key, now)
        where = "this device" if device is not None else "this address"
        self.warn("wrong", "wrong owner password (%d from %s)", failure.failures, where)
        await self.offer_audit(
            "login:failed" if device is None else "login:failed-device",
            action="login",
            outcome="failed",
            detail=f"wrong password ({failure.failures} from {where})",
            client=client,
            authenticated=False,
        )
        if failure.lockout_s is not None:
            self.warn(
                "lockout" if device is None else "device",
                "login locked out for %.0f s after %d wrong passwords from %s",
                failure.lockout_s,
                failure.failures,
                where,
            )
            await self.offer_audit(
                "login:lockout",
                action="login",
                outcome="throttled",
                detail=f"{where} locked out for {failure.lockout_s:.0f} s after "
                f"{failure.failures} wrong passwords",
                client=client,
                authenticated=False,
            )
        if failure.global_cap:
            self.warn("global", "login refused for everyone for a minute: too many wrong passwords")
            await self.offer_audit(
                "login:global",
                action="login",
                outcome="throttled",
                detail="too many wrong passwords from all addresses: logins paused for up to "
                "a minute (known devices may still sign in)",
                client=client,
                authenticated=False,
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
            await run_in_threadpool(self.data.audit, "logout", "ok", client=_client(request))
        self.sessions.end(session.id)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="lax")
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
            problem = await run_in_threadpool(self.data.submit, kind, _client(request))
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
        data = await run_in_threadpool(self.data.bundle)
        await run_in_threadpool(
            self.data.audit, "diagnostics", "downloaded", client=_client(request)
        )
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
    kernel_clock: Clock | None = None,
    read_sys: Callable[[], SysFacts] | None = None,
    verify: Callable[[str, str], bool] = verify_in_child,
    disk_usage: Callable[[Path], Any] = shutil.disk_usage,
    run_logs: diagnostics.RunLogs | None = None,
    which: Callable[[str], str | None] = shutil.which,
    version: str = __version__,
    read_door: ReadDoor = read_door,
    quick_check: Callable[[Path], list[str]] = quick_check_file,
    hostname: str | None = None,
) -> Starlette:
    """The owner page as an ASGI app. Tests inject the clock (wall and monotonic), the kernel's
    clock as a ``kiosk.core.clock.Clock`` (wall, monotonic, boot id, NTP state: the base of the door's
    anchored clock; default ``SystemClock()``), the system's figures (``read_sys``, e.g.
    ``read_sys_facts`` on a fake root), the password check (by default in a child process,
    ``passcheck``; tests wrap the real one to count scrypt runs), the disk, how journalctl is
    found and run, how the door database's facts are read (``sources.read_door``; tests count
    the reads), the integrity check (``kiosk.data.dbfile.quick_check_file``) and the machine's host name
    (default ``socket.gethostname()``). ``app.state.page`` is the ``OwnerPage``."""
    page = OwnerPage(
        config,
        clock=clock or SystemWebClock(),
        kernel_clock=kernel_clock or SystemClock(),
        read_sys=read_sys or read_sys_facts,
        verify=verify,
        disk_usage=disk_usage,
        run_logs=run_logs,
        which=which,
        version=version,
        read_door=read_door,
        quick_check=quick_check,
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
    names = allowed_host_names(
        socket.gethostname() if hostname is None else hostname,
        config.web.host,
        config.web.allowed_hosts.split(","),
    )
    app = Starlette(
        routes=routes,
        middleware=[Middleware(SecurityHeaders), Middleware(HostCheck, names=names)],
    )
    app.state.page = page
    return app


__all__ = ["COOKIE", "DEVICE_COOKIE", "create_app"]
