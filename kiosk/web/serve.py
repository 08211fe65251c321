"""How the owner page is served: the listening socket, uvicorn's bounded and quiet settings, the
connection guard, and the address people are told. Used by ``kiosk web`` and by the demo, which
serves the same page.

The guard (``ConnectionLimits``, enforced by ``OwnerPageProtocol``) keeps a stranger on the LAN
from shutting the page with connections that never send a request:

- at most ``PER_CLIENT_CONNECTIONS`` open connections per client address (an IPv6 client by its
  /64, as the sign-in throttle counts it); a connection beyond that is closed as soon as it is
  accepted, before anything is read, so one address cannot take the page's capacity;
- at most ``MAX_CONNECTIONS`` open connections in all (the descriptors, memory); a connection
  beyond that is closed the same way;
- a connection that has not delivered a complete request head ``HEADER_TIMEOUT_S`` after it
  opened, or after the first bytes of its next request arrived, is closed (slowloris);
- an idle keep-alive connection is closed ``KEEP_ALIVE_S`` after its last response (uvicorn's).

``OwnerPageProtocol`` is uvicorn's h11 protocol with those checks around it. It relies on three
things of uvicorn's: ``Config(http=<class>)`` builds one instance per connection with the keywords
``config``, ``server_state``, ``app_state`` (and ``_loop``); ``H11Protocol`` in
``uvicorn.protocols.http.h11_impl``; and an ``H11Protocol`` keeping its ``h11.Connection`` as
``.conn`` (read only, for "is a request head still awaited?"). ``server_config`` checks all three
once, before anything is served, and raises ``UvicornMismatch`` naming what is missing.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import h11
import uvicorn
from uvicorn.server import ServerState

from kiosk.web.audit_limits import LogLimiter, skipped_words
from kiosk.web.auth import client_key

try:
    from uvicorn.protocols.http.h11_impl import H11Protocol
except ImportError as exc:  # a uvicorn that moved or dropped its h11 protocol
    raise ImportError(
        f"kiosk.web.serve: uvicorn {uvicorn.__version__} has no "
        f"uvicorn.protocols.http.h11_impl.H11Protocol ({exc}); the owner page's connection guard "
        f"is built on it: install the uvicorn version pinned in pyproject.toml"
    ) from exc

log = logging.getLogger(__name__)

# A browser opens at most 6 connections to one site; 16 leaves room for a second tab, a monitor on
# the same machine or a reverse proxy on 127.0.0.1 (every client then shares its address).
PER_CLIENT_CONNECTIONS = 16
# All clients together: far below the unit's 1024 descriptors, and 16 full addresses away.
MAX_CONNECTIONS = 256
# A complete request head must arrive within this (s) of the connection opening, or of the first
# bytes of its next request. 10 s matches how long Chromium keeps an unused pre-opened
# connection, so the page never closes one a browser is about to use.
HEADER_TIMEOUT_S = 10.0
# Idle keep-alive connections are closed after this (s) since their last response.
KEEP_ALIVE_S = 5


class UvicornMismatch(RuntimeError):
    """The installed uvicorn lacks what the connection guard is built on; the message names it."""


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """The guard's bounds. ``per_client`` and ``total`` count open connections;
    ``header_timeout_s`` and ``keep_alive_s`` are seconds. The defaults are the page's; tests
    inject short timeouts. Raises ValueError on a bound that cannot work."""

    per_client: int = PER_CLIENT_CONNECTIONS
    total: int = MAX_CONNECTIONS
    header_timeout_s: float = HEADER_TIMEOUT_S
    keep_alive_s: float = KEEP_ALIVE_S

    def __post_init__(self) -> None:
        if self.per_client < 1:
            raise ValueError(f"per_client must be at least 1 connection, not {self.per_client}")
        if self.total < self.per_client:
            raise ValueError(
                f"total ({self.total}) must be at least per_client ({self.per_client}): one "
                "address alone must not be able to fill the page"
            )
        if not (self.header_timeout_s > 0 and self.keep_alive_s > 0):
            raise ValueError(
                f"timeouts must be positive seconds, not header {self.header_timeout_s}, "
                f"keep-alive {self.keep_alive_s}"
            )


class OpenConnections:
    """The page's open connections, counted per client key (``kiosk.web.auth.client_key``) and in
    all. One per server, changed only on its event loop's thread; ``counts`` may be read from
    another thread (a copy)."""

    def __init__(self, per_client: int, total: int) -> None:
        self.per_client = per_client
        self.total = total
        self._by_client: dict[str, int] = {}
        self._open = 0

    def admit(self, key: str) -> str | None:
        """Count a new connection from ``key``; None when admitted, else why not (``"client"``:
        this client holds ``per_client`` already; ``"total"``: the page holds ``total``)."""
        held = self._by_client.get(key, 0)
        if held >= self.per_client:
            return "client"
        if self._open >= self.total:
            return "total"
        self._by_client[key] = held + 1
        self._open += 1
        return None

    def release(self, key: str) -> None:
        """Forget one admitted connection of ``key``. Raises KeyError for a key holding none
        (a bookkeeping bug, never silently absorbed)."""
        held = self._by_client[key]
        if held == 1:
            del self._by_client[key]
        else:
            self._by_client[key] = held - 1
        self._open -= 1

    @property
    def open(self) -> int:
        return self._open

    def counts(self) -> dict[str, int]:
        """Open connections per client key (a copy; safe from another thread)."""
        return self._by_client.copy()


class ConnectionGuard:
    """One server's guard: its ``limits``, its ``OpenConnections`` and the rate-limited warnings
    about refused connections (one line per 30 s per kind, the rest counted)."""

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self.connections = OpenConnections(limits.per_client, limits.total)
        self.refused = {"client": 0, "total": 0}
        self._log_limits = {"client": LogLimiter(), "total": LogLimiter()}

    def note_refused(self, why: str, host: str, now: float) -> None:
        """Count a connection closed at once; warn (rate-limited) with the address."""
        self.refused[why] += 1
        skipped = self._log_limits[why].allow(now)
        if skipped is None:
            return
        if why == "client":
            limit, holder = self.limits.per_client, "that address has"
        else:
            limit, holder = self.limits.total, "the page has"
        log.warning(
            "closed a new connection from %s at once: %s %d open, its limit%s",
            host, holder, limit, skipped_words(skipped),
        )  # fmt: skip


def _peer_host(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return "unknown"  # not an IP socket: every such client shares one allowance


class OwnerPageProtocol(H11Protocol):
    """uvicorn's h11 protocol with the page's connection guard (see the module's docstring).
    Use ``guarded_protocol(guard)``: it binds a subclass to one server's ``ConnectionGuard``."""

    guard: ClassVar[ConnectionGuard]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(getattr(self, "conn", None), h11.Connection):
            raise UvicornMismatch(
                f"uvicorn {uvicorn.__version__}'s H11Protocol keeps no h11.Connection as .conn; "
                "the owner page's header timeout reads it: install the uvicorn version pinned "
                "in pyproject.toml"
            )
        # Names of our own, so they can never collide with uvicorn's attributes.
        self._guard_key: str | None = None  # set while admitted
        self._guard_transport: asyncio.Transport | None = None
        self._guard_head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        loop = asyncio.get_running_loop()
        host = _peer_host(transport)
        key = client_key(host)
        refused = self.guard.connections.admit(key)
        if refused is not None:
            # Before uvicorn sees it: not counted, never read, nothing to shut down.
            transport.close()
            self.guard.note_refused(refused, host, loop.time())
            return
        self._guard_key = key
        self._guard_transport = transport
        try:
            super().connection_made(transport)
        except BaseException:
            self._guard_key = None
            self.guard.connections.release(key)
            raise
        self._arm_head_timer(loop)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # h11 says the client is IDLE until a request's whole head has been parsed: from then
        # on (its body, the response, a keep-alive wait) the head timer has no say.
        if self.conn.their_state is h11.IDLE:
            self._arm_head_timer(asyncio.get_running_loop())
        else:
            self._disarm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        key, self._guard_key = self._guard_key, None
        if key is None:
            return  # closed at connection_made: uvicorn never knew it
        self._disarm_head_timer()
        self.guard.connections.release(key)
        super().connection_lost(exc)

    def _arm_head_timer(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the head timer unless it runs already: the deadline counts from the first
        bytes (or the connection's start), and more bytes never move it."""
        transport = self._guard_transport
        if self._guard_head_timer is None and transport is not None and not transport.is_closing():
            self._guard_head_timer = loop.call_later(
                self.guard.limits.header_timeout_s, self._head_timed_out
            )

    def _disarm_head_timer(self) -> None:
        if self._guard_head_timer is not None:
            self._guard_head_timer.cancel()
            self._guard_head_timer = None

    def _head_timed_out(self) -> None:
        self._guard_head_timer = None
        transport = self._guard_transport
        if transport is not None and not transport.is_closing():
            log.debug("closed a connection that sent no complete request head in time")
            transport.close()


def guarded_protocol(guard: ConnectionGuard) -> type[OwnerPageProtocol]:
    """uvicorn's ``http`` class for one server: ``OwnerPageProtocol`` bound to ``guard`` (each
    server keeps its own counts; the demo runs one beside the tests' own)."""
    return type("OwnerPageProtocol", (OwnerPageProtocol,), {"guard": guard})


def check_protocol(protocol: Callable[..., asyncio.Protocol]) -> None:
    """Build one ``protocol`` the way uvicorn's server does, outside any connection, so that a
    uvicorn lacking what the guard relies on is reported at start, not on each connection.
    Raises UvicornMismatch."""
    # No log_config: the probe must leave logging as it is.
    probe_config = uvicorn.Config(
        _no_app, http=protocol, ws="none", lifespan="off", proxy_headers=False, log_config=None
    )
    loop = asyncio.new_event_loop()
    try:
        protocol(config=probe_config, server_state=ServerState(), app_state={}, _loop=loop)
    except UvicornMismatch:
        raise
    except Exception as exc:  # any failure here is the same mismatch
        raise UvicornMismatch(
            f"uvicorn {uvicorn.__version__} cannot build the owner page's protocol the way "
            f"kiosk.web.serve expects (keywords config, server_state, app_state, _loop): "
            f"{type(exc).__name__}: {exc}; install the uvicorn version pinned in pyproject.toml"
        ) from exc
    finally:
        loop.close()


async def _no_app(scope: Any, receive: Any, send: Any) -> None:
    """The probe's application: never called."""


@functools.cache
def _checked_once() -> None:
    check_protocol(guarded_protocol(ConnectionGuard(ConnectionLimits())))


def listen_url(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


def server_config(app, limits: ConnectionLimits | None = None) -> uvicorn.Config:
    """uvicorn's settings for the page: quiet (no access log: it would put client paths and
    addresses in the journal; no Server header), direct clients only (no proxy headers), no
    WebSocket upgrades (the page has none, and an upgraded connection would leave the guard's
    count), and bounded by ``limits`` (the page's own by default): connections per address and
    in all, the request-head timeout and the keep-alive timeout. uvicorn's own concurrency limit
    sits one above the guard's total, so it never answers 503 to an admitted connection; it
    still bounds the requests left running by clients that went away. The connection guard of
    the returned config is ``connection_guard(config)``. Raises UvicornMismatch when the
    installed uvicorn lacks what the guard relies on."""
    limits = limits or ConnectionLimits()
    _checked_once()
    return uvicorn.Config(
        app,
        http=guarded_protocol(ConnectionGuard(limits)),
        ws="none",
        log_level="warning",
        access_log=False,
        server_header=False,
        proxy_headers=False,
        limit_concurrency=limits.total + 1,
        timeout_keep_alive=limits.keep_alive_s,  # seconds (typed int by uvicorn; a float works)
    )


def connection_guard(config: uvicorn.Config) -> ConnectionGuard:
    """The guard of a config made by ``server_config`` (its counts, for tests and the bench)."""
    protocol = config.http
    if not (isinstance(protocol, type) and issubclass(protocol, OwnerPageProtocol)):
        raise TypeError("this uvicorn config was not made by kiosk.web.serve.server_config")
    return protocol.guard


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host``:``port``, bound here so that a taken port is reported
    before the page says where it listens. Raises OSError."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock
