"""Who is at the desk: staff accounts' passwords, sessions, CSRF and origin checks, sign-in throttling,
and the FastAPI dependencies every console route declares (docs/console.md).

- **Passwords**: scrypt (``hashlib.scrypt``, n=2**14, r=8, p=1, a 16-byte salt: 16 MiB and some
  50 ms per check, memory-hard, no new dependency), encoded ``scrypt$16384$8$1$<salt>$<key>``.
  ``verify_password`` is blocking: call it through ``check_password`` (the thread pool, at most
  ``MAX_CONCURRENT_CHECKS`` at once per process). ``password_problem`` holds the rules.
- **Sessions**: a random 256-bit token in the cookie ``console_session`` (``__Host-console_session``
  over HTTPS: HttpOnly, SameSite=Strict, Path=/, Secure; behind a TLS proxy the public address in
  ``$FITFLOW_CLOUD_PUBLIC_URL`` says that browsers use HTTPS and which origin they send), stored as its SHA-256 in
  ``staff_sessions`` with the session's CSRF token. A session ends after ``IDLE_S`` without a
  request, after ``ABSOLUTE_S`` in any case, at sign-out, and when its account is disabled; the
  account's role is read afresh on every request, so a role change takes effect at once.
- **CSRF**: every POST carries the session's token in the form field ``csrf`` and an ``Origin``
  (or, without one, a ``Referer``) of this very origin; a request with neither is refused too
  (browsers always send ``Origin`` on a POST). Before sign-in (the sign-in and invite forms) the
  token is a random value in a second cookie, ``console_form``, echoed by the form
  (double-submit), under the same origin check.
- **Throttling**: failed sign-ins spend tokens from two buckets, one per client address (an IPv6
  client by its /64) and one per email; with either empty the answer is 429 with ``Retry-After``
  before any password is checked. The buckets live in each process (N workers allow N times as
  much) and are keyed by the address the server sees: behind a proxy, that is the proxy's.

The dependencies (``signed_in``, ``allow``, ``role_at_least``, ``public_page``, ``public_form``)
carry the attributes ``console_roles`` / ``console_public`` that tests/test_console_routes.py reads
from the app's route table: a console route without one of them fails that test.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import logging
import math
import secrets
import threading
import unicodedata
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any, TypeVar

from fastapi import Depends
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import WebSocketException
from starlette.requests import HTTPConnection, Request

from cloud import db, tokens
from sync.protocol import utc_text

log = logging.getLogger("cloud.console")

T = TypeVar("T")

# -- roles -----------------------------------------------------------------------------------------

ROLES = ("trainer", "staff", "owner")  # ascending: each may do what the ones before it may
ROLE_WORDS = {
    "owner": "Owner",
    "staff": "Front desk",
    "trainer": "Trainer",
}


@dataclass(frozen=True, slots=True)
class StaffUser:
    """The signed-in staff member: ``id`` (``stf_...``), ``organization_id``, ``email`` (lower
    case), ``name`` and ``role`` (one of ROLES). Every query a console route makes takes
    ``organization_id`` from here."""

    id: str
    organization_id: str
    email: str
    name: str
    role: str

    def at_least(self, role: str) -> bool:
        """True when this member's role is ``role`` or above it (owner > staff > trainer)."""
        return ROLES.index(self.role) >= ROLES.index(role)


@dataclass(frozen=True, slots=True)
class ConsoleSession:
    """A live session as a request sees it (``request.state.console_session``)."""

    staff: StaffUser
    csrf: str
    organization_name: str
    token_hash: str


# -- passwords -------------------------------------------------------------------------------------

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
SCRYPT_SALT_BYTES = 16
SCRYPT_KEY_BYTES = 32
SCRYPT_MAXMEM = 64 << 20  # n * r * 128 = 16 MiB is needed; hashlib's default cap is 32 MiB
MIN_PASSWORD_CHARS = 12
MAX_PASSWORD_CHARS = 256  # scrypt takes any length; this only bounds what a form may send
MIN_OWN_CHARS = 8  # characters left once the email, names and obvious words are taken out
MIN_DISTINCT_CHARS = 5
OBVIOUS_WORDS = (
    "password",
    "passwort",
    "letmein",
    "welcome",
    "qwerty",
    "azerty",
    "123456",
    "abcdef",
    "fitflow",
    "console",
    "admin",
    "gym",
    "fitness",
)
MAX_CONCURRENT_CHECKS = 4  # scrypt checks at once per process (16 MiB each)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _normal(password: str) -> bytes:
    # The same password typed on a tablet and on a laptop may arrive in either Unicode form.
    return unicodedata.normalize("NFC", password).encode("utf-8")


def hash_password(password: str, n: int = SCRYPT_N) -> str:
    """The stored form of a password (blocking, about 50 ms and 16 MiB: call it off the event
    loop). ``n`` is scrypt's cost, a power of two recorded in the stored form (``verify_password``
    reads it from there); the console always uses ``SCRYPT_N``, and only tests pass a smaller one
    for accounts they sign in to hundreds of times. ValueError when ``n`` is not a power of two."""
    salt = secrets.token_bytes(SCRYPT_SALT_BYTES)
    key = hashlib.scrypt(
        _normal(password),
        salt=salt,
        n=n,
        r=SCRYPT_R,
        p=SCRYPT_P,
        maxmem=SCRYPT_MAXMEM,
        dklen=SCRYPT_KEY_BYTES,
    )
    return f"scrypt${n}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(key)}"


def verify_password(password: str, encoded: str) -> bool:
    """True when ``password`` matches ``encoded`` (blocking, like ``hash_password``). A stored
    value this code cannot read, or with parameters beyond its limits, never matches."""
    try:
        scheme, n, r, p, salt, key = encoded.split("$")
        n_i, r_i, p_i = int(n), int(r), int(p)
        expected = _unb64(key)
        salt_b = _unb64(salt)
    except ValueError:
        return False
    if scheme != "scrypt" or n_i > 2**20 or r_i > 16 or p_i > 4 or not 16 <= len(expected) <= 64:
        return False
    try:
        got = hashlib.scrypt(
            _normal(password),
            salt=salt_b,
            n=n_i,
            r=r_i,
            p=p_i,
            maxmem=max(SCRYPT_MAXMEM, 130 * n_i * r_i),
            dklen=len(expected),
        )
    except (ValueError, MemoryError):
        return False
    return hmac.compare_digest(got, expected)


_DUMMY_HASH: list[str] = []
_checks = threading.BoundedSemaphore(MAX_CONCURRENT_CHECKS)


def _dummy_hash() -> str:
    if not _DUMMY_HASH:
        _DUMMY_HASH.append(hash_password(secrets.token_urlsafe(16)))
    return _DUMMY_HASH[0]


class ChecksBusy(Exception):
    """Every password-check slot of this process is taken (answer 429, try again shortly)."""


def check_passwords(password: str, encoded: list[str]) -> int | None:
    """Blocking: the index of the first stored hash ``password`` matches, or None. With no hash
    to check, one check against a throwaway hash still runs, so an unknown email takes as long as
    a wrong password. Raises ChecksBusy when MAX_CONCURRENT_CHECKS are already running."""
    if not _checks.acquire(blocking=False):
        raise ChecksBusy()
    try:
        if not encoded:
            verify_password(password, _dummy_hash())
            return None
        for index, stored in enumerate(encoded):
            if verify_password(password, stored):
                return index
        return None
    finally:
        _checks.release()


def password_problem(
    password: str, *, email: str, name: str = "", org_name: str = ""
) -> str | None:
    """Why ``password`` is not good enough, in plain words, or None. The rules: at least
    MIN_PASSWORD_CHARS characters (at most MAX_PASSWORD_CHARS), at least MIN_DISTINCT_CHARS
    different ones, and at least MIN_OWN_CHARS left once the email address, its parts, the
    person's and organisation's names and a few obvious words (``password``, ``qwerty``, ...)
    are taken out, ignoring case."""
    if len(password) < MIN_PASSWORD_CHARS:
        return f"The password must have at least {MIN_PASSWORD_CHARS} characters."
    if len(password) > MAX_PASSWORD_CHARS:
        return f"The password may have at most {MAX_PASSWORD_CHARS} characters."
    if len(set(password)) < MIN_DISTINCT_CHARS:
        return f"The password must use at least {MIN_DISTINCT_CHARS} different characters."
    local, _, domain = email.lower().partition("@")
    words = {email.lower(), local, *domain.split(".")[:-1], *OBVIOUS_WORDS}
    for text in (name, org_name):
        words |= {w for w in "".join(c if c.isalnum() else " " for c in text.lower()).split()}
    rest = password.lower()
    # Longest first, so "password" goes before a shorter word inside it could break it up.
    for word in sorted((w for w in words if len(w) >= 3), key=len, reverse=True):
        rest = rest.replace(word, "")
    if len(rest) < MIN_OWN_CHARS:
        return (
            "The password is too close to your email address, your name, the gym's name or a "
            f"common word: it needs at least {MIN_OWN_CHARS} characters of its own."
        )
    return None


def new_password() -> str:
    """A random password that meets the rules (for a one-run demo login)."""
    return secrets.token_urlsafe(15)


async def check_password(password: str, encoded: list[str]) -> int | None:
    """``check_passwords`` in the thread pool (the event loop never runs scrypt)."""
    return await run_in_threadpool(check_passwords, password, encoded)


def _hash_in_slot(password: str) -> str:
    if not _checks.acquire(blocking=False):
        raise ChecksBusy()
    try:
        return hash_password(password)
    finally:
        _checks.release()


async def make_password_hash(password: str) -> str:
    """``hash_password`` in the thread pool, through the same slots as the checks (scrypt's
    memory stays bounded under a flood); ChecksBusy when they are all taken."""
    return await run_in_threadpool(_hash_in_slot, password)


# -- emails and names ------------------------------------------------------------------------------

MAX_EMAIL_CHARS = 254
MAX_NAME_CHARS = 100


def normal_email(text: str) -> str | None:
    """The stored form of an email address (trimmed, lower case), or None when it is not one: a
    local part and a domain with a dot, no spaces or control characters, at most
    MAX_EMAIL_CHARS."""
    email = text.strip().lower()
    if not email or len(email) > MAX_EMAIL_CHARS or email.count("@") != 1:
        return None
    local, domain = email.split("@")
    if not local or "." not in domain or domain.startswith(".") or domain.endswith("."):
        return None
    if any(c.isspace() or not c.isprintable() or c in "<>\"'," for c in email):
        return None
    return email


def clean_name(text: str) -> str | None:
    """A person's name as stored (trimmed, inner spaces collapsed), or None when empty, longer
    than MAX_NAME_CHARS or holding control characters."""
    name = " ".join(text.split())
    if not name or len(name) > MAX_NAME_CHARS or not name.isprintable():
        return None
    return name


# -- throttling ------------------------------------------------------------------------------------

ADDRESS_BUDGET, ADDRESS_REFILL_S = 20, 30.0  # failed sign-ins per address: 20, then 2 a minute
ACCOUNT_BUDGET, ACCOUNT_REFILL_S = 10, 60.0  # failed sign-ins per email: 10, then 1 a minute
MAX_TRACKED = 10_000


class AttemptBudget:
    """Token buckets of failed attempts, one per key (like ``cloud.api_pass.AttemptBudget``).
    Time is passed in (seconds; a clock stepping back refills nothing). At most ``max_keys``
    buckets are kept, the least recently used forgotten first. Thread-safe."""

    def __init__(self, capacity: int, refill_s: float, max_keys: int = MAX_TRACKED) -> None:
        self.capacity = capacity
        self.refill_s = refill_s
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def _level(self, key: str, now_s: float) -> float:
        level, since = self._buckets.get(key, (float(self.capacity), now_s))
        return min(float(self.capacity), level + max(0.0, now_s - since) / self.refill_s)

    def retry_after(self, key: str, now_s: float) -> int | None:
        """None when ``key`` may try now, else the whole seconds until it may."""
        with self._lock:
            level = self._level(key, now_s)
        if level >= 1.0:
            return None
        return max(1, math.ceil((1.0 - level) * self.refill_s))

    def spend(self, key: str, now_s: float) -> None:
        with self._lock:
            level = self._level(key, now_s)
            self._buckets[key] = (max(0.0, level - 1.0), now_s)
            self._buckets.move_to_end(key)
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)


class LoginThrottle:
    """The sign-in form's two budgets: per client address and per email."""

    def __init__(self) -> None:
        self.addresses = AttemptBudget(ADDRESS_BUDGET, ADDRESS_REFILL_S)
        self.accounts = AttemptBudget(ACCOUNT_BUDGET, ACCOUNT_REFILL_S)

    def retry_after(self, address: str, email: str, now_s: float) -> int | None:
        waits = [
            w
            for w in (
                self.addresses.retry_after(client_key(address), now_s),
                self.accounts.retry_after(email, now_s),
            )
            if w is not None
        ]
        return max(waits) if waits else None

    def failed(self, address: str, email: str, now_s: float) -> None:
        self.addresses.spend(client_key(address), now_s)
        self.accounts.spend(email, now_s)


def client_key(address: str) -> str:
    """An IPv4 address as it is, an IPv6 address by its /64 (one household or machine gets a whole
    /64), an IPv4-mapped address as the IPv4 one, anything else as it is."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


# -- sessions --------------------------------------------------------------------------------------

IDLE_S = 12 * 3600
ABSOLUTE_S = 7 * 86400
TOUCH_EVERY_S = 60  # last_seen_at is written at most this often (the idle limit is that coarse)
MAX_SESSIONS_PER_STAFF = 20  # a new sign-in ends the oldest beyond this
SESSION_COOKIE = "console_session"
FORM_COOKIE = "console_form"
SECURE_PREFIX = "__Host-"


PUBLIC_URL_ENV = "FITFLOW_CLOUD_PUBLIC_URL"


def public_origin(text: str | None) -> str | None:
    """The console's public origin (``https://cloud.example.com``) from a URL, or None for none
    (empty). ValueError for anything but an http(s) address without a path, query or fragment
    beyond ``/``."""
    if text is None or not text.strip():
        return None
    parts = urllib.parse.urlsplit(text.strip())
    if (
        parts.scheme not in ("https", "http")
        or not parts.netloc
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or "@" in parts.netloc
    ):
        raise ValueError(
            f"{text!r}: expected the cloud's public address, like https://cloud.example.com"
        )
    return f"{parts.scheme}://{parts.netloc}".lower()


def configured_origin(conn: HTTPConnection) -> str | None:
    """The public origin the console was installed with (``$FITFLOW_CLOUD_PUBLIC_URL``), if any."""
    return getattr(conn.app.state, "console_origin", None)


def is_https(conn: HTTPConnection) -> bool:
    """True when browsers reach the console over HTTPS: the configured public origin says so
    (a TLS proxy in front, the hop to this process plain HTTP), or the request itself is."""
    configured = configured_origin(conn)
    if configured is not None:
        return configured.startswith("https://")
    return conn.url.scheme in ("https", "wss")


def cookie_name(conn: HTTPConnection, base: str) -> str:
    """``base`` over plain HTTP, ``__Host-base`` over HTTPS (Secure, Path=/, no Domain: the
    cookie cannot be set or overwritten by another host or an insecure page)."""
    return SECURE_PREFIX + base if is_https(conn) else base


def set_cookie(response: Any, conn: HTTPConnection, base: str, value: str, max_age: int | None):
    """Set one of the console's cookies with its flags: HttpOnly, SameSite=Strict, Path=/,
    Secure over HTTPS."""
    response.set_cookie(
        cookie_name(conn, base),
        value,
        max_age=max_age,
        path="/",
        httponly=True,
        samesite="strict",
        secure=is_https(conn),
    )


def clear_cookie(response: Any, conn: HTTPConnection, base: str) -> None:
    response.delete_cookie(
        cookie_name(conn, base),
        path="/",
        httponly=True,
        samesite="strict",
        secure=is_https(conn),
    )


def new_token() -> str:
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return tokens.sha256_hex("console:" + token)


def address_of(conn: HTTPConnection) -> str:
    """The client's address as the server sees it ("unknown" without one)."""
    return conn.client.host if conn.client is not None else "unknown"


def cloud_of(conn: HTTPConnection) -> Any:
    return conn.app.state.cloud


def now_of(conn: HTTPConnection) -> datetime:
    """The cloud's clock (aware UTC; tests inject it)."""
    return cloud_of(conn).now()


async def transact(conn: HTTPConnection, fn: Callable[[db.Tx], T], *, write: bool = True) -> T:
    """``fn(tx)`` in one database transaction, in the thread pool (write by default)."""
    return await run_in_threadpool(cloud_of(conn).database.transact, fn, write=write)


def start_session(tx: db.Tx, staff: StaffUser, now: datetime, address: str) -> tuple[str, str]:
    """A new session for ``staff`` (inside the caller's transaction); (cookie token, CSRF
    token). Ended sessions are purged and the account keeps at most MAX_SESSIONS_PER_STAFF."""
    stamp = utc_text(now)
    db.purge_staff_sessions(tx, stamp)
    token, csrf = new_token(), new_token()
    expires = utc_text(now + timedelta(seconds=min(IDLE_S, ABSOLUTE_S)))
    db.insert_staff_session(
        tx, token_hash(token), staff.id, staff.organization_id, csrf, stamp, expires, address
    )
    db.trim_staff_sessions(tx, staff.id, MAX_SESSIONS_PER_STAFF)
    return token, csrf


async def current_session(conn: HTTPConnection) -> ConsoleSession | None:
    """The request's live session, or None; cached on ``conn.state``. Counts the request as
    activity (at most one write per TOUCH_EVERY_S)."""
    if hasattr(conn.state, "console_session"):
        return conn.state.console_session
    conn.state.console_session = None
    token = conn.cookies.get(cookie_name(conn, SESSION_COOKIE))
    if not token or len(token) > 128:
        return None
    hashed = token_hash(token)
    now = now_of(conn)
    stamp = utc_text(now)
    absolute_cut = utc_text(now - timedelta(seconds=ABSOLUTE_S))

    def look(tx: db.Tx) -> dict[str, Any] | None:
        return db.staff_session(tx, hashed, stamp, absolute_cut)

    row = await transact(conn, look, write=False)
    if row is None or row["role"] not in ROLES:
        return None
    seen = datetime.fromisoformat(row["last_seen_at"].replace("Z", "+00:00"))
    if (now - seen).total_seconds() >= TOUCH_EVERY_S:
        created = datetime.fromisoformat(row["created_at"].replace("Z", "+00:00"))
        ends = min(now + timedelta(seconds=IDLE_S), created + timedelta(seconds=ABSOLUTE_S))
        await transact(conn, lambda tx: db.touch_staff_session(tx, hashed, stamp, utc_text(ends)))
    staff = StaffUser(
        id=row["staff_id"],
        organization_id=row["organization_id"],
        email=row["email"],
        name=row["name"],
        role=row["role"],
    )
    session = ConsoleSession(staff, row["csrf_token"], row["organization_name"], hashed)
    conn.state.console_session = session
    return session


# -- refusals --------------------------------------------------------------------------------------


class ConsoleError(Exception):
    """A console request refused or failed: answered as an HTML page with ``status``, a title and
    a message in plain words (``pages`` renders it; ``headers`` are added, e.g. Retry-After)."""

    def __init__(
        self, status: int, title: str, message: str, *, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.title = title
        self.message = message
        self.headers = headers or {}


class LoginRequired(Exception):
    """A page asked for without a session: answered with a redirect to the sign-in page (which
    comes back to ``next`` afterwards)."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


def not_found(what: str = "page") -> ConsoleError:
    """The one answer for an id that is not in the signed-in organisation (or not visible to the
    role): the same whether it exists elsewhere or nowhere."""
    return ConsoleError(404, "Not found", f"There is no such {what} here.")


# -- CSRF and origin -------------------------------------------------------------------------------

FORM_TYPE = "application/x-www-form-urlencoded"
MAX_FORM_BYTES = 64 << 10
MAX_FORM_FIELDS = 200


def own_origin(conn: HTTPConnection) -> str:
    """This site's origin as a browser names it: the configured public origin, or the request's
    scheme and ``Host``."""
    configured = configured_origin(conn)
    if configured is not None:
        return configured
    scheme = {"wss": "https", "ws": "http"}.get(conn.url.scheme, conn.url.scheme)
    return f"{scheme}://{conn.headers.get('host', '')}".lower()


def _origin_of(url: str) -> str | None:
    try:
        parts = urllib.parse.urlsplit(url.strip())
    except ValueError:
        return None
    if not parts.scheme or not parts.netloc:
        return None
    return f"{parts.scheme}://{parts.netloc}".lower()


def same_origin(conn: HTTPConnection) -> bool:
    """True when the request's ``Origin`` (or, without one, its ``Referer``) is this origin. A
    request with neither, or with ``Origin: null``, is not."""
    origin = conn.headers.get("origin")
    if origin is not None:
        return origin.strip().lower() == own_origin(conn)
    referer = conn.headers.get("referer")
    return bool(referer) and _origin_of(referer) == own_origin(conn)


def tokens_match(expected: str, given: object) -> bool:
    """The CSRF comparison, in constant time."""
    if not expected or not isinstance(given, str) or not given:
        return False
    return hmac.compare_digest(expected.encode(), given.encode("utf-8", "replace"))


async def read_form(request: Request) -> dict[str, str]:
    """The request's form fields (first value of each), cached on ``request.state.console_form``.
    A request without a body is an empty form. ConsoleError 415 for another content type, 413
    over MAX_FORM_BYTES, 400 for a body that is not a form."""
    if hasattr(request.state, "console_form"):
        return request.state.console_form
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    declared = request.headers.get("content-length")
    if not kind and declared in (None, "0"):
        kind = FORM_TYPE  # no body at all: an empty form (its missing token is refused next)
    if kind != FORM_TYPE:
        raise ConsoleError(415, "Request refused", "This form must be sent as an HTML form.")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_FORM_BYTES):
        raise ConsoleError(413, "Request refused", "The form is too large.")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise ConsoleError(413, "Request refused", "The form is too large.")
    try:
        pairs = urllib.parse.parse_qsl(
            body.decode("utf-8"), keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS
        )
    except (UnicodeDecodeError, ValueError):
        raise ConsoleError(400, "Request refused", "The form could not be read.") from None
    form: dict[str, str] = {}
    for key, value in pairs:
        form.setdefault(key, value)
    request.state.console_form = form
    return form


def _refused(why: str) -> ConsoleError:
    log.warning("console: refused a form: %s", why)
    return ConsoleError(
        403,
        "Request refused",
        f"This request was refused because {why}. Nothing was changed. Reload the page and try "
        "again.",
    )


def check_csrf(request: Request, form: dict[str, str]) -> None:
    """Refuse (ConsoleError 403) a signed-in POST unless it comes from this origin (``Origin`` or
    ``Referer``) and its ``csrf`` field equals the session's token. ``allow``/``signed_in`` call
    it for every request that is not a GET or HEAD, so a route never has to; it is here for
    code that reads a form some other way."""
    session: ConsoleSession | None = getattr(request.state, "console_session", None)
    if not same_origin(request):
        raise _refused("it did not come from this site")
    if session is None:
        raise _refused("you are not signed in (or your session ended)")
    if not tokens_match(session.csrf, form.get("csrf")):
        raise _refused("its form token did not match")


def form_token(conn: HTTPConnection) -> str | None:
    """The pre-sign-in form token from its cookie (None when there is none yet)."""
    value = conn.cookies.get(cookie_name(conn, FORM_COOKIE))
    return value if value and len(value) <= 128 else None


# -- the dependencies ------------------------------------------------------------------------------

_READS = ("GET", "HEAD")


def _next_path(conn: HTTPConnection) -> str:
    path = conn.url.path
    if conn.url.query:
        path += "?" + conn.url.query
    return path


def _tag(fn: Any, *, roles: tuple[str, ...] | None = None, public: bool = False) -> Any:
    fn.console_roles = frozenset(roles) if roles is not None else None
    fn.console_public = public
    return fn


def allow(*roles: str) -> Callable[..., Any]:
    """A FastAPI dependency admitting signed-in staff whose role is one of ``roles``; it returns
    the ``StaffUser``. Without a session: a GET redirects to the sign-in page, anything else is
    refused (403). For every method but GET and HEAD it reads the form and runs ``check_csrf``
    first (the form is then ``await form_of(request)``). Over a WebSocket: refused (close 1008)
    without a session, from another origin, or for another role. A role not in ``roles``: 403."""
    unknown = [r for r in roles if r not in ROLES]
    if unknown or not roles:
        raise ValueError(f"roles must be some of {ROLES}, got {roles}")
    allowed = frozenset(roles)

    async def dependency(conn: HTTPConnection) -> StaffUser:
        session = await current_session(conn)
        if conn.scope["type"] == "websocket":
            if session is None or not same_origin(conn) or session.staff.role not in allowed:
                raise WebSocketException(code=1008, reason="sign in first")
            return session.staff
        request = conn  # an HTTP request
        assert isinstance(request, Request)
        if request.method not in _READS:
            form = await read_form(request)
            check_csrf(request, form)
        elif session is None:
            raise LoginRequired(_next_path(request))
        assert session is not None
        if session.staff.role not in allowed:
            raise ConsoleError(
                403,
                "Not for your role",
                f"This page is not open to the {ROLE_WORDS[session.staff.role].lower()} role. "
                "Ask an owner if you need it.",
            )
        return session.staff

    dependency.__name__ = "allow_" + "_".join(sorted(allowed))
    return _tag(dependency, roles=tuple(allowed))


def role_at_least(role: str) -> Callable[..., Any]:
    """``allow`` for ``role`` and every role above it."""
    return allow(*ROLES[ROLES.index(role) :])


_any_role = allow(*ROLES)


async def signed_in(conn: HTTPConnection) -> StaffUser:
    """The dependency for any signed-in staff member (every role); see ``allow``."""
    return await _any_role(conn)


_tag(signed_in, roles=ROLES)


async def public_page(conn: HTTPConnection) -> None:
    """Declares a GET route open without a session (sign-in, invite acceptance, static files)."""


_tag(public_page, public=True)


async def public_form(request: Request) -> dict[str, str]:
    """The dependency of a POST open without a session (sign-in, invite acceptance): the form,
    once it came from this origin and its ``csrf`` field equals the ``console_form`` cookie
    (double-submit; ConsoleError 403 otherwise)."""
    form = await read_form(request)
    if not same_origin(request):
        raise _refused("it did not come from this site")
    expected = form_token(request)
    if expected is None or not tokens_match(expected, form.get("csrf")):
        raise _refused(
            "its form token did not match (cookies must be on for this site; reload the page)"
        )
    return form


_tag(public_form, public=True)


async def form_of(request: Request) -> dict[str, str]:
    """The POST's form fields, already read and checked by ``allow``/``signed_in`` (declare it
    after the role dependency: ``form: dict[str, str] = Depends(form_of)``). Never declare
    FastAPI ``Form()`` parameters on console routes: the body is read once, here."""
    if not hasattr(request.state, "console_form"):
        raise RuntimeError("form_of needs a role dependency (allow/signed_in) declared before it")
    return request.state.console_form


# Parameter types for routes (FastAPI reads the dependency from the annotation):
#     async def page(request: Request, me: SignedIn) -> Response
#     async def change(request: Request, me: Annotated[StaffUser, Depends(allow("owner"))],
#                      form: FormFields) -> Response
SignedIn = Annotated[StaffUser, Depends(signed_in)]
FormFields = Annotated[dict[str, str], Depends(form_of)]
PublicForm = Annotated[dict[str, str], Depends(public_form)]


def long_lived(endpoint: T) -> T:
    """Mark a GET endpoint whose answer does not end by itself (a server-sent event stream): the
    route-table tests then check its refusals but do not open it as an allowed role (the test
    client would wait for its end). Use it above the router's decorator::

        @router.get("/live")
        @long_lived
        async def live(...): ...
    """
    endpoint.console_long_lived = True  # type: ignore[attr-defined]
    return endpoint


def roles_of(dependency: Any) -> frozenset[str] | None:
    """The roles a console dependency admits (None for none or a public one)."""
    return getattr(dependency, "console_roles", None)


__all__ = [
    "ROLES",
    "ConsoleError",
    "ConsoleSession",
    "FormFields",
    "LoginRequired",
    "SignedIn",
    "StaffUser",
    "allow",
    "check_csrf",
    "form_of",
    "public_form",
    "public_page",
    "role_at_least",
    "signed_in",
]
