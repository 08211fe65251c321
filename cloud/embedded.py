"""The cloud in a background thread on a real loopback socket: for ``kiosk demo``, the bench and
end-to-end tests.

    with EmbeddedCloud("sqlite:///tmp/cloud.db") as cloud:
        base_url = cloud.url          # e.g. http://127.0.0.1:41237
        ...

``start()`` binds the socket itself (port 0 picks a free port, so the URL is known and no other
process can take the port in between), runs uvicorn in a daemon thread and returns only once the
server accepts connections. ``stop()`` asks uvicorn to finish, waits for the thread and closes the
database pool.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

from cloud.app import Clock, create_app
from cloud.serve import ServeError, listen, uvicorn_server

START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 10.0


class EmbeddedCloudError(RuntimeError):
    """The embedded cloud could not start (the message says why)."""


class EmbeddedCloud:
    """A running reference cloud on ``host:port`` (127.0.0.1 and a free port by default)."""

    def __init__(
        self,
        database_url: str,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        clock: Clock | None = None,
        log_level: str = "warning",
    ) -> None:
        self.database_url = database_url
        self.host = host
        self.port = port
        self.clock = clock
        self.log_level = log_level
        self.app: Any = None
        self.url: str | None = None
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> str:
        """Start serving; returns the base URL (``http://127.0.0.1:PORT``). Raises
        EmbeddedCloudError if the server does not come up, DatabaseError/DatabaseUrlError for
        the database."""
        import uvicorn

        if self._thread is not None:
            raise EmbeddedCloudError("already started")
        self.app = create_app(self.database_url, clock=self.clock)
        # cloud.serve.listen names IPPROTO_TCP, so asyncio turns Nagle off on every connection
        # (with it on, each small answer waits ~40 ms for the client's delayed ACK).
        try:
            sock = listen(self.host, self.port)
        except ServeError as exc:
            self.app.state.cloud.database.close()
            raise EmbeddedCloudError(str(exc)) from exc
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            log_level=self.log_level,
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=2,
        )
        self._server = uvicorn_server(config)
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [sock]},
            name=f"embedded-cloud-{self.port}",
            daemon=True,
        )
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise EmbeddedCloudError("the embedded cloud did not start")
            time.sleep(0.005)
        self._wait_accepting(deadline)
        self.url = f"http://{self.host}:{self.port}"
        return self.url

    def _wait_accepting(self, deadline: float) -> None:
        while True:
            try:
                with socket.create_connection((self.host, self.port), timeout=1.0):
                    return
            except OSError as exc:
                if time.monotonic() > deadline:
                    self.stop()
                    raise EmbeddedCloudError(f"the embedded cloud does not accept: {exc}") from exc
                time.sleep(0.005)

    def stop(self) -> None:
        """Stop serving and close the database pool. Safe to call twice."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(STOP_TIMEOUT_S)
        if self.app is not None:
            self.app.state.cloud.database.close()
        self._thread = None
        self._server = None

    def __enter__(self) -> EmbeddedCloud:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()
