"""Keeping strangers out of the owner page: sessions, CSRF checks and login throttling.

Pure logic on an injected monotonic clock (seconds, ``time.monotonic`` in production): nothing here
reads the time, the network or a file, so the tests step the clock instead of sleeping.

- ``Sessions``: server-side, in memory. A random 256-bit id names each one (the cookie's value);
  a session carries its CSRF token. A session is created before login (so the login form has a
  token) and replaced by a new one at login (no fixation). Signed-in sessions end after
  ``idle_s`` without activity, after ``absolute_s`` in any case, and when the password changes
  (each carries the password's stamp from when it signed in).
- ``same_origin``/``tokens_match``: the two CSRF conditions every POST must meet.
- ``LoginThrottle``: per client address, the first failures are answered normally, then the
  client is locked out for a doubling wait during which no password is even checked; plus a
  global cap on checked failures across all clients.
"""

from __future__ import annotations

import hmac
import math
import secrets
import urllib.parse
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

SESSION_BYTES = 32  # 256-bit ids and tokens
ABSOLUTE_S = 12 * 3600.0


def new_token() -> str:
    """A fresh random 256-bit value, URL-safe text."""
    return secrets.token_urlsafe(SESSION_BYTES)


@dataclass
class Session:
    """One browser's session. ``stamp`` is the password stamp it signed in with (None before
    login); ``notice`` a one-time message for the next dashboard; times are monotonic seconds."""

    id: str
    csrf: str
    created: float
    last_seen: float
    stamp: str | None = None
    notice: str | None = None

    @property
    def signed_in(self) -> bool:
        return self.stamp is not None


class Sessions:
    """The server's sessions. ``max_sessions`` bounds memory: when full, the least recently used
    session goes (a flood of login-page visits cannot grow the process)."""

    def __init__(
        self,
        *,
        idle_s: float,
        absolute_s: float = ABSOLUTE_S,
        max_sessions: int = 2000,
        token: Callable[[], str] = new_token,
    ) -> None:
        self.idle_s = idle_s
        self.absolute_s = absolute_s
        self.max_sessions = max_sessions
        self._token = token
        self._by_id: OrderedDict[str, Session] = OrderedDict()

    def __len__(self) -> int:
        return len(self._by_id)

    def start(self, now: float, *, stamp: str | None = None) -> Session:
        """A new session (signed in when ``stamp`` is given), with a fresh id and CSRF token."""
        while len(self._by_id) >= self.max_sessions:
            self._by_id.popitem(last=False)
        session = Session(
            id=self._token(), csrf=self._token(), created=now, last_seen=now, stamp=stamp
        )
        self._by_id[session.id] = session
        return session

    def get(
        self, session_id: str | None, now: float, stamp: str | None, *, touch: bool
    ) -> Session | None:
        """The live session ``session_id`` or None. A session past its idle or absolute limit, or
        signed in with another password than ``stamp`` (the current one; None: none is set), is
        ended here. ``touch`` counts this request as activity (the page's own background updates
        do not, so an open tab still times out)."""
        if not session_id:
            return None
        session = self._by_id.get(session_id)
        if session is None:
            return None
        expired = now - session.last_seen >= self.idle_s or now - session.created >= self.absolute_s
        if expired or (session.signed_in and session.stamp != stamp):
            self.end(session_id)
            return None
        if touch:
            session.last_seen = now
            self._by_id.move_to_end(session_id)
        return session

    def sign_in(self, old_id: str | None, now: float, stamp: str) -> Session:
        """Replace the session ``old_id`` (if any) by a new signed-in one with a new id and token:
        an id planted before login is worth nothing after it."""
        if old_id:
            self.end(old_id)
        return self.start(now, stamp=stamp)

    def end(self, session_id: str) -> None:
        self._by_id.pop(session_id, None)


def tokens_match(expected: str, given: str | None) -> bool:
    """The CSRF token check, in constant time."""
    if not given or not isinstance(given, str):
        return False
    return hmac.compare_digest(expected.encode("utf-8"), given.encode("utf-8", "replace"))


def origin_of(url: str) -> str | None:
    """``scheme://host[:port]`` of ``url``, lower case; None when it has none."""
    try:
        parts = urllib.parse.urlsplit(url.strip())
    except ValueError:
        return None
    if not parts.scheme or not parts.netloc:
        return None
    return f"{parts.scheme}://{parts.netloc}".lower()


def same_origin(own_origin: str, origin: str | None, referer: str | None) -> bool:
    """True unless the request says it came from another site: its ``Origin`` header (or, when
    absent, its ``Referer``) must be ``own_origin``. Neither header: allowed (the CSRF token
    still has to match). ``Origin: null`` (sandboxed frames, some redirects) is refused."""
    own = own_origin.lower()
    if origin is not None:
        return origin.strip().lower() == own
    if referer:
        return origin_of(referer) == own
    return True


@dataclass(frozen=True, slots=True)
class Failure:
    """What recording one checked wrong password did: ``lockout_s`` is the wait that started
    because of it (None: no new lockout), ``failures`` the client's count so far,
    ``global_cap`` True when this failure filled the global window (refusing everyone)."""

    failures: int
    lockout_s: float | None
    global_cap: bool


@dataclass
class _Client:
    failures: int = 0
    locked_until: float = 0.0
    last_failure: float = 0.0


class LoginThrottle:
    """Login throttling (pure, monotonic seconds).

    Per client: ``free_failures`` checked failures are answered normally; the last of them locks
    the client out for ``first_wait_s``, and each further checked failure doubles the wait, up to
    ``max_wait_s``. During a lockout every attempt, right or wrong, is refused before the password
    is checked (so a flood costs no scrypt). Across all clients: at most ``global_failures``
    checked failures per ``global_window_s``; beyond that everyone is refused until the window
    frees up. A client's record is forgotten ``forget_s`` after its last failure once unlocked,
    and a successful login clears it. With the defaults, 1,000 wrong passwords at an even pace
    over 60 s get 10 checked (5 free, then waits of 1, 2, 4, 8, 16, 32 s): 99% refused.
    """

    def __init__(
        self,
        *,
        free_failures: int = 5,
        first_wait_s: float = 1.0,
        max_wait_s: float = 900.0,
        global_failures: int = 20,
        global_window_s: float = 60.0,
        forget_s: float = 3600.0,
        max_clients: int = 10_000,
    ) -> None:
        self.free_failures = free_failures
        self.first_wait_s = first_wait_s
        self.max_wait_s = max_wait_s
        self.global_failures = global_failures
        self.global_window_s = global_window_s
        self.forget_s = forget_s
        self.max_clients = max_clients
        self._clients: OrderedDict[str, _Client] = OrderedDict()
        self._recent: deque[float] = deque()

    def _prune_window(self, now: float) -> None:
        while self._recent and now - self._recent[0] >= self.global_window_s:
            self._recent.popleft()

    def retry_after(self, client: str, now: float) -> int | None:
        """Whole seconds ``client`` must wait before a password may be checked, or None when it
        may be checked now."""
        self._prune_window(now)
        waits = []
        record = self._clients.get(client)
        if record is not None:
            if now < record.locked_until:
                waits.append(record.locked_until - now)
            elif now - record.last_failure > self.forget_s:
                del self._clients[client]
        if len(self._recent) >= self.global_failures:
            waits.append(self._recent[0] + self.global_window_s - now)
        if not waits:
            return None
        return max(1, math.ceil(max(waits)))

    def failed(self, client: str, now: float) -> Failure:
        """Record a checked wrong password from ``client``."""
        self._prune_window(now)
        record = self._clients.pop(client, None) or _Client()
        self._clients[client] = record  # most recent last: the oldest are evicted first
        while len(self._clients) > self.max_clients:
            self._clients.popitem(last=False)
        record.failures += 1
        record.last_failure = now
        lockout = None
        if record.failures >= self.free_failures:
            doublings = record.failures - self.free_failures
            lockout = min(self.max_wait_s, self.first_wait_s * 2.0 ** min(doublings, 40))
            record.locked_until = now + lockout
        was_full = len(self._recent) >= self.global_failures
        self._recent.append(now)
        return Failure(
            failures=record.failures,
            lockout_s=lockout,
            global_cap=not was_full and len(self._recent) >= self.global_failures,
        )

    def succeeded(self, client: str) -> None:
        """A correct password from ``client``: its record is cleared."""
        self._clients.pop(client, None)
