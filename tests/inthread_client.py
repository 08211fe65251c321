"""A synchronous HTTP client that runs an ASGI app in the test's own thread: the cloud tests'
harness (``pg.Harness``), the console's browsers (``console_rig``) and the tests that send an app
a thousand requests (the owner page's floods, the cloud's hostile-input sweep) use it.

Starlette's ``TestClient`` runs the app on a second thread (an anyio portal) and hands every ASGI
message across: eight hand-offs for a small POST, 3-4 ms of CPU per request on the 2-core CI
machine, and on a busy machine each hand-off also waits for a core. ``InThreadClient`` drives
httpx's ``ASGITransport`` on an event loop of its own in the caller's thread: the same app, request
and cookies, about a fifth of the CPU (1,000 cookieless posts to the owner page: 3.9 CPU-s through
an opened TestClient, 0.7 through this).

It is not a TestClient: it never runs the app's lifespan (the app must need none, or be started
already, as the fixtures' own TestClients do), reads each answer whole (no streaming, no
WebSocket) and, like TestClient's ``raise_server_exceptions``, raises what the app raised unless
``raise_app_exceptions=False`` (then the answer is a 500). For a lifespan, an event stream or a
WebSocket, use a TestClient.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterable
from functools import partialmethod
from typing import Any

import httpx

# What TestClient sends and claims by default, so an app (its allowed hosts, its per-address
# throttles) cannot tell the two clients apart.
BASE_URL = "http://testserver"
CLIENT_ADDRESS = ("testclient", 50000)
USER_AGENT = "testclient"


class InThreadClient:
    """``request`` and its verbs (``get``, ``post``, ...) as on httpx.Client, redirects followed
    unless told (as TestClient does); ``cookies`` is the jar. ``base_url``, ``headers`` (sent on
    every request) and ``client`` (the address the app sees) as TestClient takes them. Close it,
    or use it in a ``with`` block.

    Each thread that sends through it gets an event loop and an httpx client of its own (its own
    jar too, starting from ``cookies``), so test threads can send at once as TestClient allows;
    the app must be thread-safe for that, as a served app is under its thread pool."""

    def __init__(
        self,
        app: Any,
        *,
        base_url: str = BASE_URL,
        headers: dict[str, str] | None = None,
        client: tuple[str, int] = CLIENT_ADDRESS,
        cookies: httpx.Cookies | dict[str, str] | None = None,
        raise_app_exceptions: bool = True,
    ) -> None:
        self._app = app
        self._base_url = base_url
        self._headers = {"user-agent": USER_AGENT, **(headers or {})}
        self._address = client
        self._cookies = httpx.Cookies(cookies)
        self._raise = raise_app_exceptions
        self._mine = threading.local()
        self._lock = threading.Lock()
        self._made: list[tuple[asyncio.AbstractEventLoop, httpx.AsyncClient]] = []

    def _own(self) -> tuple[asyncio.AbstractEventLoop, httpx.AsyncClient]:
        """The calling thread's loop and client, made on its first request."""
        own = getattr(self._mine, "own", None)
        if own is None:
            transport = httpx.ASGITransport(
                app=self._app, raise_app_exceptions=self._raise, client=self._address
            )
            client = httpx.AsyncClient(
                transport=transport,
                base_url=self._base_url,
                cookies=self._cookies,
                headers=self._headers,
                follow_redirects=True,
            )
            own = self._mine.own = (asyncio.new_event_loop(), client)
            with self._lock:
                self._made.append(own)
        return own

    @property
    def cookies(self) -> httpx.Cookies:
        return self._own()[1].cookies

    @cookies.setter
    def cookies(self, cookies: httpx.Cookies | dict[str, str]) -> None:
        self._own()[1].cookies = cookies

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        content = kwargs.get("content")
        if isinstance(content, Iterable) and not isinstance(content, str | bytes):
            kwargs["content"] = _chunks(content)  # a body in chunks, as TestClient takes it
        loop, client = self._own()
        return loop.run_until_complete(client.request(method, url, **kwargs))

    # The verbs, as on httpx.Client: get(url, **kwargs) is request("GET", url, **kwargs).
    get = partialmethod(request, "GET")
    post = partialmethod(request, "POST")
    put = partialmethod(request, "PUT")
    patch = partialmethod(request, "PATCH")
    delete = partialmethod(request, "DELETE")
    head = partialmethod(request, "HEAD")
    options = partialmethod(request, "OPTIONS")

    def close(self) -> None:
        """Closes every thread's client and loop (the threads must be done sending)."""
        with self._lock:
            made, self._made = self._made, []
            self._mine = threading.local()  # a request after this starts afresh
        for loop, client in made:
            try:
                loop.run_until_complete(client.aclose())
            finally:
                loop.close()

    def __enter__(self) -> InThreadClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


async def _chunks(chunks: Iterable[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk
