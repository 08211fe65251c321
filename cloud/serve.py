"""Serving the cloud over HTTP: one process, or several worker processes on one listening socket.

``serve(database_url, host=..., port=..., workers=N)`` is what ``kiosk cloud serve`` runs. The
socket is bound here, once, before any worker starts, so a taken port fails at once with a clear
message, ``--port 0`` can pick a free port (printed on stderr), and every worker accepts from the
same queue of connections (the kernel hands each connection to one of them).

The socket is created with ``IPPROTO_TCP`` named explicitly: asyncio turns Nagle's algorithm off
(TCP_NODELAY) only on connections of sockets that say so, and with Nagle on every small answer
waits about 40 ms for the client's delayed ACK (uvicorn writes the headers and the body
separately). uvicorn's own ``--workers`` binds its socket without it, which is why this module
supervises the workers itself instead.

With ``workers`` > 1 (PostgreSQL only: see ``check_workers``) the parent process binds the
socket, applies the migrations once, starts the workers (``multiprocessing`` spawn: each imports
the app afresh and builds its own database pool) and then only watches them:

- a worker that exits after it was serving, or that a signal ends at any time (an operator's
  kill, the OOM killer), is started again (logged, with its exit code);
- a worker that fails by its own hand before it serves (the database unreachable at start-up)
  stops the service: every worker is stopped and ``serve`` returns ``EXIT_DATABASE``
  (``replace_worker`` decides);
- SIGTERM or SIGINT stops every worker gracefully (uvicorn finishes the requests in flight),
  then the parent returns 0. A worker still running after ``STOP_TIMEOUT_S`` is killed.

Each process sheds device requests past its own budget (``max_in_flight``, default
``cloud.app.DEFAULT_MAX_IN_FLIGHT``; see ``cloud.app.DeviceLoad``): 503 with ``Retry-After`` at
once rather than a queue the doors time out in. uvicorn runs on uvloop and httptools when they are
installed (the ``cloud`` extra installs them), else on asyncio and h11: both serve the same.

The workers share no memory: all shared state is in the database. What each process keeps for
itself is a cache of replica totals keyed by (organisation, gym, version) and verified against
the version read in the same transaction (``cloud.replica.checkpoint``), so another worker's
write can never make it serve a stale checkpoint.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any

from cloud.db import SQLITE, parse_database_url

log = logging.getLogger("cloud.serve")

EXIT_OK, EXIT_USAGE, EXIT_DATABASE = 0, 2, 3
# A worker that fails before it serves exits with this code (its reason is on stderr).
WORKER_START_FAILED = 3
# How long a stopping worker may take to finish its requests before it is killed.
STOP_TIMEOUT_S = 30.0
LISTEN_BACKLOG = 2048


class ServeError(Exception):
    """The service cannot start as asked (the message says why and what to do)."""


def check_workers(database_url: str, workers: int) -> None:
    """ServeError unless ``workers`` processes may serve this database: at least 1, and exactly
    1 on SQLite. SQLite lets one writer at a time into the file and its lock is a file lock on
    this machine: more processes would only queue on that lock (each wait a busy-timeout retry
    loop, the worst for the tail latency), and a second machine could not share the file at
    all. PostgreSQL takes any number, on any number of machines."""
    if workers < 1:
        raise ServeError(f"--workers must be at least 1, not {workers}")
    if workers > 1 and parse_database_url(database_url).dialect == SQLITE:
        raise ServeError(
            f"--workers {workers} needs PostgreSQL: SQLite admits one writer at a time through a "
            "lock on a file of this machine, so more processes would only queue on it. Serve "
            "SQLite with one worker (the default), or move the cloud to PostgreSQL "
            "(--db postgresql://USER@HOST/DBNAME) to run several workers or machines"
        )


def check_max_in_flight(max_in_flight: int | None) -> None:
    """ServeError unless ``max_in_flight`` is None (the default budget) or at least 1."""
    if max_in_flight is not None and max_in_flight < 1:
        raise ServeError(f"--max-in-flight must be at least 1, not {max_in_flight}")


def _app(database_url: str, max_in_flight: int | None) -> Any:
    """The cloud's app with this process's device API budget."""
    from cloud.app import DeviceLoad, create_app

    load = DeviceLoad() if max_in_flight is None else DeviceLoad(max_in_flight)
    return create_app(database_url, device_load=load)


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: a free one), inheritable by workers.
    Raises ServeError when it cannot be bound (the port is taken, the address is not this
    machine's)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
    except OSError as exc:
        sock.close()
        raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    sock.set_inheritable(True)
    return sock


def _uvicorn_config(app: Any, log_level: str) -> Any:
    import uvicorn

    # proxy_headers off: behind a reverse proxy the client address is the proxy's; trusting
    # X-Forwarded-For from anyone who can reach the port would let them write the log's address.
    return uvicorn.Config(app, log_level=log_level, proxy_headers=False, lifespan="on")


def uvicorn_server(config: Any) -> Any:
    """A uvicorn server for ``config`` that, when it begins to shut down, first calls the app's
    ``state.before_shutdown`` hooks (the console's live feed ends its open streams there).
    uvicorn waits for every request in flight before it stops, and never tells a streaming
    response that it is stopping: without the hooks an open event stream would hold the
    shutdown until the supervisor's kill."""
    import uvicorn

    class Server(uvicorn.Server):
        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            state = getattr(self.config.app, "state", None)
            for hook in list(getattr(state, "before_shutdown", ())):
                try:
                    hook()
                except Exception:
                    log.exception("a shutdown hook failed")
            await super().shutdown(sockets)

    return Server(config)


def serve(
    database_url: str,
    *,
    host: str,
    port: int,
    workers: int = 1,
    log_level: str = "info",
    max_in_flight: int | None = None,
    announce: Callable[[str], None] | None = None,
) -> int:
    """Serve the cloud on ``host:port`` with ``workers`` processes until SIGTERM or SIGINT.
    ``max_in_flight`` caps each process's device requests in flight (None: the default budget).
    ``announce`` receives one line once the socket is bound (default: printed on stderr).
    Returns an exit code: 0 after a signal, ``EXIT_DATABASE`` when a worker could not start.
    Raises ServeError (bad ``workers`` or ``max_in_flight``, a port that cannot be bound) and the
    database's errors (``DatabaseUrlError``, ``DatabaseError``) when the migrations cannot be
    applied."""
    from cloud.db import Database
    from cloud.migrations import migrate

    check_workers(database_url, workers)
    check_max_in_flight(max_in_flight)
    say = announce or (lambda line: print(line, file=sys.stderr, flush=True))
    sock = listen(host, port)
    try:
        bound = sock.getsockname()
        where = (
            f"http://[{bound[0]}]:{bound[1]}" if ":" in bound[0] else f"http://{host}:{bound[1]}"
        )
        if workers == 1:
            app = _app(database_url, max_in_flight)
            say(f"cloud: serving on {where} (1 process)")
            uvicorn_server(_uvicorn_config(app, log_level)).run(sockets=[sock])
            return EXIT_OK
        # Migrate once here, so the workers (each migrates at start-up) find nothing to do and
        # never race a schema change among themselves.
        database = Database(database_url, pool_size=1)
        try:
            migrate(database)
        finally:
            database.close()
        say(f"cloud: serving on {where} ({workers} worker processes)")
        return Supervisor(sock, database_url, workers, log_level, max_in_flight).run()
    finally:
        sock.close()


def _worker(
    sock: socket.socket, database_url: str, log_level: str, max_in_flight: int | None, ready: Any
) -> None:
    """One worker process: its own app, database pool and device API budget, serving on the
    shared socket until SIGTERM or SIGINT (uvicorn's own handlers). Exits with
    WORKER_START_FAILED when the app cannot be built."""
    from cloud.db import DatabaseError, DatabaseUrlError

    try:
        app = _app(database_url, max_in_flight)
    except (DatabaseError, DatabaseUrlError) as exc:
        print(f"cloud: worker {os.getpid()} cannot start: {exc}", file=sys.stderr, flush=True)
        sys.exit(WORKER_START_FAILED)
    ready.set()
    uvicorn_server(_uvicorn_config(app, log_level)).run(sockets=[sock])


def replace_worker(*, served: bool, exitcode: int | None) -> bool:
    """Whether a worker that ended is started again. Yes once it has served. Before that, only
    when a signal ended it (``exitcode`` < 0: killed by an operator or the OOM killer while it
    started), which says nothing about the next one; a worker that ended by its own hand before
    serving (``exitcode`` >= 0: the database refused it, an import failed) would fail the same way
    again, so the service stops instead of starting workers in a loop."""
    return served or (exitcode is not None and exitcode < 0)


class Supervisor:
    """Starts ``workers`` worker processes on ``sock`` and keeps them running (see the module
    docstring). ``run()`` returns the exit code."""

    def __init__(
        self,
        sock: socket.socket,
        database_url: str,
        workers: int,
        log_level: str,
        max_in_flight: int | None = None,
    ):
        self._sock = sock
        self._url = database_url
        self._count = workers
        self._log_level = log_level
        self._max_in_flight = max_in_flight
        self._context = multiprocessing.get_context("spawn")
        self._workers: list[tuple[Any, Any]] = []  # (process, its "serving" event)
        self._wake_r, self._wake_w = os.pipe()
        self._stopping = False

    def _start(self) -> tuple[Any, Any]:
        ready = self._context.Event()
        process = self._context.Process(
            target=_worker,
            args=(self._sock, self._url, self._log_level, self._max_in_flight, ready),
            name="cloud-worker",
        )
        process.start()
        return process, ready

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self._stopping = True
        os.write(self._wake_w, b"\0")  # ends the wait in run()

    def run(self) -> int:
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        code = EXIT_OK
        try:
            self._workers = [self._start() for _ in range(self._count)]
            while not self._stopping:
                sentinels = [process.sentinel for process, _ in self._workers]
                multiprocessing.connection.wait([*sentinels, self._wake_r])
                if self._stopping:
                    break
                for n, (process, ready) in enumerate(self._workers):
                    if process.is_alive():
                        continue
                    process.join()
                    if not replace_worker(served=ready.is_set(), exitcode=process.exitcode):
                        log.error(
                            "a worker could not start (exit code %s): stopping the service",
                            process.exitcode,
                        )
                        self._stopping = True
                        code = EXIT_DATABASE
                        break
                    log.warning(
                        "worker %s ended (exit code %s): starting another",
                        process.pid,
                        process.exitcode,
                    )
                    self._workers[n] = self._start()
        finally:
            self._stop_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            os.close(self._wake_r)
            os.close(self._wake_w)
        return code

    def _stop_all(self) -> None:
        for process, _ in self._workers:
            if process.is_alive():
                process.terminate()  # SIGTERM: uvicorn finishes the requests in flight
        for process, _ in self._workers:
            process.join(STOP_TIMEOUT_S)
            if process.is_alive():
                log.warning("worker %s did not stop in time: killed", process.pid)
                process.kill()
                process.join()
