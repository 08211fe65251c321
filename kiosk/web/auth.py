"""Keeping strangers out of the owner page: sessions, CSRF checks and login throttling.

Pure logic on an injected monotonic clock (seconds, ``time.monotonic`` in production): nothing here
reads the time, the network or a file, so the tests step the clock instead of sleeping.

- ``Sessions``: server-side, in memory. A random 256-bit id names each one (the cookie's value);
  a session carries its CSRF token. A session is created before login (so the login form has a
  token) and replaced by a new one at login (no fixation). Signed-in sessions end after
  ``idle_s`` without activity, after ``absolute_s`` in any case, and when the password changes
  (each carries the password's stamp from when it signed in).
- ``same_origin``/``tokens_match``: the two CSRF conditions every POST must meet.
- ``LoginThrottle``: per client address (an IPv6 client by its /64, ``client_key``), the first
  failures are answered normally, then the client is locked out for a doubling wait during which
  no password is even checked; plus a global cap on checked failures across all clients.
- ``KnownDevices``: browsers the owner signed in from (a random cookie); a flood from elsewhere
  cannot lock them out (they have their own failure counter instead).
- ``allowed_host``: the ``Host`` header check against DNS rebinding.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import math
import secrets
import urllib.parse
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
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
    """The server's sessions, in two pools so that strangers cannot push the owner out.

    Anonymous (pre-login) sessions are capped at ``max_anonymous``: when full, the least recently
    used anonymous one goes (a flood of login-page visits cannot grow the process, and evicts
    only other anonymous sessions). Signed-in sessions are capped at ``max_signed_in`` among
    themselves (only a sign-in can evict one, and signing in takes the password)."""

    def __init__(
        self,
        *,
        idle_s: float,
        absolute_s: float = ABSOLUTE_S,
        max_anonymous: int = 500,
        max_signed_in: int = 50,
        token: Callable[[], str] = new_token,
    ) -> None:
        self.idle_s = idle_s
        self.absolute_s = absolute_s
        self.max_anonymous = max_anonymous
        self.max_signed_in = max_signed_in
        self._token = token
        self._anonymous: OrderedDict[str, Session] = OrderedDict()
        self._signed_in: OrderedDict[str, Session] = OrderedDict()

    def __len__(self) -> int:
        return len(self._anonymous) + len(self._signed_in)

    def _pool(self, session: Session) -> OrderedDict[str, Session]:
        return self._signed_in if session.signed_in else self._anonymous

    def start(self, now: float, *, stamp: str | None = None) -> Session:
        """A new session (signed in when ``stamp`` is given), with a fresh id and CSRF token."""
        session = Session(
            id=self._token(), csrf=self._token(), created=now, last_seen=now, stamp=stamp
        )
        pool = self._pool(session)
        cap = self.max_signed_in if session.signed_in else self.max_anonymous
        while len(pool) >= max(1, cap):
            pool.popitem(last=False)
        pool[session.id] = session
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
        session = self._signed_in.get(session_id) or self._anonymous.get(session_id)
        if session is None:
            return None
        expired = now - session.last_seen >= self.idle_s or now - session.created >= self.absolute_s
        if expired or (session.signed_in and session.stamp != stamp):
            self.end(session_id)
            return None
        if touch:
            session.last_seen = now
            self._pool(session).move_to_end(session_id)
        return session

    def sign_in(self, old_id: str | None, now: float, stamp: str) -> Session:
        """Replace the session ``old_id`` (if any) by a new signed-in one with a new id and token:
        an id planted before login is worth nothing after it."""
        if old_id:
            self.end(old_id)
        return self.start(now, stamp=stamp)

    def end(self, session_id: str) -> None:
        self._anonymous.pop(session_id, None)
        self._signed_in.pop(session_id, None)


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


def client_key(address: str) -> str:
    """The throttle's key for a client address: an IPv4 address as it is, an IPv6 address by its
    /64 (one household or one cloud machine gets a whole /64 and can rotate through it freely),
    an IPv4-mapped IPv6 address as the IPv4 one; anything else (a Unix socket, "unknown") as it
    is."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


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

    Per client (``client_key``): ``free_failures`` checked failures are answered normally; the
    last of them locks the client out for ``first_wait_s``, and each further checked failure
    doubles the wait, up to ``max_wait_s``. During a lockout every attempt, right or wrong, is
    refused before the password is checked (so a flood costs no scrypt). Across all clients: at
    most ``global_failures`` checked failures in any sliding ``global_window_s`` (None: no global
    cap); beyond that everyone is refused until the window frees up. A client's record is
    forgotten ``forget_s`` after its last failure once unlocked, and a successful login clears it.

    With the defaults one address gets at most 8 passwords checked in any 60 s (3 free, then
    waits of 1, 2, 4, 8, 16, 32 s), and all addresses together at most 9: a flood of 1,000 wrong
    passwords in 60 s, from one address or from hundreds, is more than 99% refused.
    """

    def __init__(
        self,
        *,
        free_failures: int = 3,
        first_wait_s: float = 1.0,
        max_wait_s: float = 900.0,
        global_failures: int | None = 9,
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

    def _full(self) -> bool:
        return self.global_failures is not None and len(self._recent) >= self.global_failures

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
        if self._full():
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
        was_full = self._full()
        if self.global_failures is not None:
            self._recent.append(now)
        return Failure(
            failures=record.failures,
            lockout_s=lockout,
            global_cap=not was_full and self._full(),
        )

    def succeeded(self, client: str) -> None:
        """A correct password from ``client``: its record is cleared."""
        self._clients.pop(client, None)


DEVICE_LIFETIME_S = 30 * 86400.0


@dataclass
class _Device:
    stamp: str
    issued: float


class KnownDevices:
    """Browsers the owner signed in from: a random value in a long-lived cookie, remembered here
    (in memory, as a digest) for ``lifetime_s`` and for the password it signed in with. At most
    ``max_devices`` are kept (the least recently used goes). A sign-in attempt from a known
    device is throttled on its own (``LoginThrottle`` keyed by device, no global cap), so a flood
    from other addresses cannot lock the owner out. Restarting the page forgets every device:
    they are then ordinary clients until their next sign-in."""

    def __init__(
        self,
        *,
        max_devices: int = 20,
        lifetime_s: float = DEVICE_LIFETIME_S,
        token: Callable[[], str] = new_token,
    ) -> None:
        self.max_devices = max_devices
        self.lifetime_s = lifetime_s
        self._token = token
        self._by_digest: OrderedDict[str, _Device] = OrderedDict()

    def __len__(self) -> int:
        return len(self._by_digest)

    @staticmethod
    def _digest(value: str) -> str:
        return hashlib.sha256(value.encode("utf-8", "replace")).hexdigest()

    def known(self, cookie: str | None, now: float, stamp: str | None) -> str | None:
        """The device's key (for its throttle) when ``cookie`` names a known device signed in
        with the current password ``stamp``, else None."""
        if not cookie or stamp is None or len(cookie) > 128:
            return None
        digest = self._digest(cookie)
        device = self._by_digest.get(digest)
        if device is None:
            return None
        if device.stamp != stamp or now - device.issued >= self.lifetime_s:
            del self._by_digest[digest]
            return None
        return digest

    def issue(self, cookie: str | None, now: float, stamp: str) -> str:
        """After a successful sign-in: the cookie value to set. A known device keeps its value
        (its lifetime starts again); any other browser gets a new one."""
        known = cookie is not None and self.known(cookie, now, stamp) is not None
        value = cookie if known and cookie is not None else self._token()
        digest = self._digest(value)
        self._by_digest.pop(digest, None)
        while len(self._by_digest) >= max(1, self.max_devices):
            self._by_digest.popitem(last=False)
        self._by_digest[digest] = _Device(stamp=stamp, issued=now)
        return value


# -- the Host header ---------------------------------------------------------------------------------


def host_name(header: str) -> str | None:
    """The name or address in a ``Host`` header value, lower case, without port or trailing dot
    (``[::1]:8080`` -> ``::1``); None when it cannot be a host."""
    value = header.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        rest = value[end + 1 :] if end >= 0 else ""
        if end < 0 or (rest and not (rest.startswith(":") and rest[1:].isdigit())):
            return None
        return value[1:end] or None
    if value.count(":") == 1:
        value, _, port = value.partition(":")
        if port and not port.isdigit():
            return None
    elif ":" in value:
        return None  # an IPv6 address must be in brackets in a Host header
    value = value.rstrip(".")
    return value or None


def is_ip_literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name.split("%", 1)[0])
    except ValueError:
        return False
    return True


def allowed_host_names(hostname: str, configured_host: str, extra: Iterable[str]) -> frozenset[str]:
    """The names the page answers to besides IP literals: ``localhost``, the machine's host name
    (short and full) with and without ``.local`` (mDNS), ``web.host`` when it is a name, and
    ``web.allowed_hosts``."""
    names = {"localhost"}
    full = hostname.strip().lower().rstrip(".")
    for name in {full, full.split(".", 1)[0]}:
        if name:
            names |= {name, f"{name}.local"}
    configured = configured_host.strip().lower().rstrip(".")
    if configured and not is_ip_literal(configured):
        names.add(configured)
    names |= {n.strip().lower().rstrip(".") for n in extra if n.strip()}
    return frozenset(names)


def allowed_host(header: str | None, names: frozenset[str]) -> bool:
    """True when a request's ``Host`` header names this machine: an IP literal or one of
    ``names``. A page reached through another name is a DNS-rebinding attack (an attacker's
    domain pointed at this address) or a misconfiguration; either way it is refused. A request
    without a ``Host`` header (HTTP/1.0 tools) cannot come through a browser's DNS lookup and is
    allowed."""
    if header is None:
        return True
    name = host_name(header)
    if name is None:
        return False
    return is_ip_literal(name) or name in names
