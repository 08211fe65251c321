"""``kiosk bench --fleet``: how many doors one reference cloud serves, on loopback.

The cloud runs as ``kiosk cloud serve`` does (``python -m cloud.cli serve``, a child process, with
``--workers N`` on PostgreSQL); this process plays a fleet of doors against it. Each simulated door
speaks the real protocol through the device's own client (``kiosk.sync.client.CloudClient``, one
per door, with its own connection) and the protocol's message shapes (``sync.protocol``), and
follows the sync agent's schedule (``kiosk.sync.agent``) with the configuration's defaults:

- a round every ``sync.interval_s`` (30 s) when nothing happens: the idle pull (changes since the
  door's version with If-None-Match, normally a 304) and a heartbeat (journal position, replica
  version, count and checksum, its clock anchor);
- a check-in, at a busy gym's rate (``CHECKINS_PER_MIN`` per door, at random times), starts a round
  within ``sync.wake_poll_s``: the upload of what is pending, then the pull and the heartbeat. One
  check-in in ten uses a class from a pack, which moves the organisation's version: the gym's
  other door then pulls a page of changes instead of a 304;
- a check-in the cloud did not acknowledge (an error) stays pending and goes again next round;
  ``resend_from_seq`` and ``resnapshot`` in a heartbeat's answer are obeyed as the agent does.

Doors come in gyms of ``DOORS_PER_GYM``, each gym its own organisation with ``GYM_MEMBERS``
members (seeded through the CSV importer). A **step** runs a number of doors: each starts at a
random point of its interval, one interval of warm-up, then one interval measured. Every request
is timed on the door's transport, from sending until its answer's body was read. A step
**serves** its doors when the p99 of the requests started in the measured interval is under
``TARGET_P99_MS``, no round failed, and the generator kept up (rounds started within the target of
when they were due). The door count doubles from ``START_DOORS`` until a step fails, then is
bisected, at most ``MAX_STEPS`` steps and ``MAX_DOORS`` doors: bounded in count and time (about a
minute a step at the default interval), and it stops by itself.

A failed round backs off as the agent does (full jitter, doubling, never sooner than a
``Retry-After``); a step answered 503 (load shed) goes on with the pull and the heartbeat, as the
agent's does. Requests are sorted by outcome: good (2xx, 304), shed (503), timeouts and other.

Three settings change what is measured (``kiosk bench --fleet`` options):

- ``retained_rows`` (``--retained-rows``): each door starts with that many check-ins already in
  the cloud, seqs 1..N over the last ``RETAINED_DAYS``, seeded with set-based SQL
  (``cloud.db.seed_journal_history``) before its first round; its journal continues at N+1 and
  its heartbeats name the whole retained range. The seeding is timed (``seed_s``).
- ``scale_interval`` (``--interval``): rounds every S seconds, each door carrying the load of
  ``interval / S`` doors (``door_load``), reported as ``door_equivalents``; ``--max-doors``
  bounds the search, and with retained rows the disk a SQLite cloud needs is checked first.
- ``saturation`` (``--saturation``): after the search, a step at 1.5x and one at 2x the capacity
  found (``SATURATION_LOADS``), reported with check-ins acknowledged a second, good answers a
  second, 503s, timeouts, other errors and the good answers' p99; **flat** when the 2x step
  still acknowledges ``FLAT_SHARE`` of the check-ins a second the capacity step did, without a
  timeout, else **falls**. Check-ins, not requests, measure the work: past the knee doors' rounds
  start late and carry bigger batches, so fewer requests can carry more check-ins.

At the end every door's pending check-ins are sent until acknowledged (``DRAIN_ROUNDS`` at most),
then the cloud's database is counted: **exactly once** means every check-in a door made is
stored, under that door, once, and nothing else is (a door with seeded history holds each of its
seqs once: the seeded ones are accounted for, not counted as made); and each class use lowered
its pack's balance once.

Figures measured on one machine include the generator's own CPU: on a 2-core machine it competes
with the cloud for the cores, so they are a lower bound for the cloud alone. Failures of the
machinery (a cloud that does not start) raise ``BenchError``; a missed target is a figure.
"""

from __future__ import annotations

import bisect
import contextlib
import heapq
import itertools
import json
import math
import os
import random
import resource
import secrets
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

import httpx

from devtools.bench.run import machine, verdict
from devtools.bench.sync import (
    CLASS_PACK_BALANCE,
    BenchError,
    is_class_pack,
    member_id,
    membership_id,
    postgres_scratch,
    seed_organization,
)
from kiosk import __version__
from kiosk.core.ids import uuid7
from kiosk.sync.client import BadResponse, CloudClient, CloudError, NotModified, RetryableError
from sync.protocol import (
    REJECTED,
    Anchor,
    ChangePage,
    Heartbeat,
    UploadItem,
)

TARGET_P99_MS = 250.0
CHECKINS_PER_MIN = 3.0  # per door: a busy gym's door at its peak hour
DOORS_PER_GYM = 2
GYM_MEMBERS = 300  # every 10th holds a class pack (devtools.bench.sync.members_csv)
START_DOORS = 50
MAX_DOORS = 12_800
MAX_STEPS = 9
# Bisecting stops once the gap between a served and an unserved count is this fraction or less.
RESOLUTION = 0.15
DRAIN_ROUNDS = 5
ROUND_THREADS = 96  # rounds in flight at once; more are late (and the lag says so)
CLOUD_START_TIMEOUT_S = 120.0
CLOUD_STOP_TIMEOUT_S = 30.0
ENROL_TTL_MINUTES = 1440
SETUP_THREADS = 8
RETAINED_DAYS = 90.0  # a door keeps its journal this long (seeded history spans it)
# Disk a seeded check-in takes in a SQLite cloud, row and indexes (measured: about 0.9 KB).
SEEDED_ROW_BYTES = 1000
SATURATION_LOADS = (1.5, 2.0)  # the capacity found, times these
# "flat": the 2x step acknowledges at least this share of the capacity step's check-ins a second.
FLAT_SHARE = 0.9

POSTGRES_HINT = (
    "not measured: add --postgres postgresql://USER@HOST:PORT/DBNAME to include it (the bench "
    "creates a scratch database there and drops it afterwards)"
)

ProgressFn = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class FleetSettings:
    """The doors' behaviour and the search's bounds. Defaults: the configuration's ``[sync]``
    defaults (``fleet_settings()``) and the module's constants; tests shrink them."""

    interval_s: float = 30.0
    wake_poll_s: float = 1.0
    request_timeout_s: float = 10.0
    batch_size: int = 200
    page_rows: int = 1000
    checkins_per_min: float = CHECKINS_PER_MIN
    warmup_intervals: float = 1.0
    window_intervals: float = 1.0
    start_doors: int = START_DOORS
    max_doors: int = MAX_DOORS
    max_steps: int = MAX_STEPS
    gym_members: int = GYM_MEMBERS
    doors_per_gym: int = DOORS_PER_GYM
    target_p99_ms: float = TARGET_P99_MS
    seed: int = 1
    backoff_max_s: float = 300.0
    # Each simulated door's load in doors at the configured interval (``scale_interval``).
    door_load: float = 1.0
    # Check-ins each door already holds in the cloud when it starts (``Fleet.ensure`` seeds them).
    retained_rows: int = 0
    retained_days: float = RETAINED_DAYS
    saturation: bool = False


def fleet_settings(**overrides: Any) -> FleetSettings:
    """The configuration's sync defaults (interval, wake poll, timeout, batch, page size), with
    ``overrides``."""
    from kiosk.config import default_config

    sync = default_config().sync
    base = FleetSettings(
        interval_s=sync.interval_s,
        wake_poll_s=sync.wake_poll_s,
        request_timeout_s=sync.request_timeout_s,
        batch_size=sync.batch_size,
        page_rows=sync.page_rows,
        backoff_max_s=sync.backoff_max_s,
    )
    return replace(base, **overrides)


def scale_interval(settings: FleetSettings, interval_s: float) -> FleetSettings:
    """``settings`` with rounds every ``interval_s`` seconds, each door carrying the load of
    ``settings.interval_s / interval_s`` doors (``door_load``): the check-in rate scaled up and
    the wake poll down by that factor (a door's rounds, requests and uploads a second are then
    those of that many doors: the rounds of a door are a renewal process whose rate scales with
    both), and the warm-up and measured windows scaled in intervals so that they last as many
    seconds as before. The request timeout and the backoff are times the cloud sees: unscaled.
    Raises ValueError for an interval that is not positive. Pure."""
    if not interval_s > 0:
        raise ValueError(f"the interval must be positive, not {interval_s}")
    factor = settings.interval_s / interval_s
    return replace(
        settings,
        interval_s=interval_s,
        wake_poll_s=settings.wake_poll_s / factor,
        checkins_per_min=settings.checkins_per_min * factor,
        warmup_intervals=settings.warmup_intervals * factor,
        window_intervals=settings.window_intervals * factor,
        door_load=settings.door_load * factor,
    )


def door_equivalents(doors: int, settings: FleetSettings) -> int:
    """The doors at the configured interval that ``doors`` simulated ones stand for. Pure."""
    return round(doors * settings.door_load)


# -- the cloud, as `kiosk cloud serve` ----------------------------------------------------------


class CloudProcess:
    """``python -m cloud.cli serve --port 0 --workers N`` in its own session, the database URL in
    its environment (never on a command line). ``start()`` returns once the service printed its
    address and answers ``/healthz``; ``stop()`` sends SIGTERM and waits."""

    def __init__(self, database_url: str, workers: int) -> None:
        self.database_url = database_url
        self.workers = workers
        self.url: str | None = None
        self._process: subprocess.Popen[str] | None = None
        self._lines: deque[str] = deque(maxlen=50)
        self._announced = threading.Event()

    def _read_stderr(self) -> None:
        assert self._process is not None and self._process.stderr is not None
        for line in self._process.stderr:
            self._lines.append(line.rstrip())
            if self.url is None and line.startswith("cloud: serving on "):
                self.url = line.split()[3]
                self._announced.set()
        self._announced.set()  # the process ended: start() stops waiting

    def _failure(self, what: str) -> BenchError:
        tail = "\n".join(self._lines)
        return BenchError(f"the cloud {what}:\n{tail}" if tail else f"the cloud {what}")

    def command(self) -> list[str]:
        """The service's command line (the database URL goes in its environment)."""
        return [sys.executable, "-m", "cloud.cli", "serve", "--host", "127.0.0.1", "--port", "0",
                "--workers", str(self.workers), "--log-level", "warning"]  # fmt: skip

    def start(self) -> str:
        env = {**os.environ, "FITFLOW_CLOUD_DB": self.database_url}
        self._process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            self.command(),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )  # fmt: skip
        threading.Thread(target=self._read_stderr, name="cloud-stderr", daemon=True).start()
        if not self._announced.wait(CLOUD_START_TIMEOUT_S) or self.url is None:
            self.stop()
            raise self._failure("did not start")
        deadline = time.monotonic() + CLOUD_START_TIMEOUT_S
        with httpx.Client(timeout=5.0) as http:
            while True:
                if self._process.poll() is not None:
                    raise self._failure(f"ended with exit code {self._process.returncode}")
                with contextlib.suppress(httpx.HTTPError):
                    if http.get(f"{self.url}/healthz").status_code == 200:
                        return self.url
                if time.monotonic() > deadline:
                    self.stop()
                    raise self._failure("does not answer /healthz")
                time.sleep(0.05)

    def cpu_seconds(self) -> float | None:
        """CPU time (user + system, s) used so far by the service and its workers, from /proc;
        None where /proc is missing or the service has ended."""
        if self._process is None:
            return None
        pids = [self._process.pid]
        try:
            for task in Path(f"/proc/{pids[0]}/task").iterdir():
                pids += [int(p) for p in (task / "children").read_text().split()]
            total = 0
            for pid in pids:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])  # utime, stime (clock ticks)
        except (OSError, ValueError, IndexError):
            return None
        return total / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(CLOUD_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            # Its own session: the group holds only the service and its workers.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, 9)
            process.wait(10)

    def __enter__(self) -> CloudProcess:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


# -- the doors ------------------------------------------------------------------------------------


@dataclass(slots=True)
class Exchange:
    """One request: when it was sent (``time.monotonic()``), how long until its answer's body was
    read (ms), its path and status (None: no answer, then ``failure`` says why: ``timeout`` or
    ``transport``, a refused or broken connection)."""

    started: float
    ms: float
    path: str
    status: int | None
    failure: str | None = None


TIMEOUT, TRANSPORT = "timeout", "transport"


class _TimedBody(httpx.SyncByteStream):
    """An answer's body, passed through; ``done()`` is called once, when it was read or closed."""

    def __init__(self, inner: httpx.SyncByteStream, done: Callable[[], None]) -> None:
        self._inner = inner
        self._done: Callable[[], None] | None = done

    def __iter__(self) -> Iterator[bytes]:
        yield from self._inner
        self._finish()

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            self._finish()

    def _finish(self) -> None:
        done, self._done = self._done, None
        if done is not None:
            done()


class DoorTransport(httpx.HTTPTransport):
    """The real HTTP transport of one door, appending an ``Exchange`` per request to ``sink``
    (shared by the fleet: list.append is atomic). ``inner``: another transport to send through
    instead of the network (a test's fake cloud), timed and recorded the same way."""

    def __init__(
        self,
        sink: list[Exchange],
        ssl_context: ssl.SSLContext,
        inner: httpx.BaseTransport | None = None,
    ) -> None:
        # One SSL context for the fleet: building one per door costs milliseconds and memory.
        super().__init__(verify=ssl_context)
        self._sink = sink
        self._inner = inner

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        started = time.monotonic()
        path = request.url.path

        def record(status: int | None, failure: str | None = None) -> None:
            ms = (time.monotonic() - started) * 1e3
            self._sink.append(Exchange(started, ms, path, status, failure))

        try:
            if self._inner is not None:
                response = self._inner.handle_request(request)
            else:
                response = super().handle_request(request)
        except httpx.TimeoutException:
            record(None, TIMEOUT)
            raise
        except Exception:
            record(None, TRANSPORT)
            raise
        assert isinstance(response.stream, httpx.SyncByteStream)
        response.stream = _TimedBody(response.stream, lambda: record(response.status_code))
        return response

    def end_round(self) -> None:
        """Close the door's idle connection: the cloud would close it after its keep-alive
        timeout (5 s) long before the next round, and closed here the bench holds open sockets
        only for the rounds in flight."""
        self.close()


class _DoorClock:
    """What the client reads time from (``kiosk.sync.client.DeviceClock``): this process's
    monotonic time under the door's own boot id, and the wall time."""

    def __init__(self, boot: str) -> None:
        self.boot_id = boot

    def monotonic_ns(self) -> int:
        return time.monotonic_ns()

    def wall(self) -> datetime:
        return datetime.now(UTC)


@dataclass(slots=True)
class Gym:
    organization_id: str
    gym_id: str
    members: int


@dataclass(slots=True)
class Journaled:
    """A check-in the door made: the item as uploaded, and when it was made (monotonic s)."""

    item: UploadItem
    at: float


class Door:
    """One simulated door: its client, its journal (in memory) and its replica's position.
    ``round()`` is one sync agent round; the schedule is the ``Fleet``'s."""

    def __init__(
        self,
        index: int,
        gym: Gym,
        device_id: str,
        client: CloudClient,
        transport: DoorTransport,
        boot: str,
        settings: FleetSettings,
        rng: random.Random,
    ) -> None:
        self.index = index
        self.gym = gym
        self.device_id = device_id
        self.client = client
        self.transport = transport
        self.settings = settings
        self.rng = rng
        self.boot = boot
        self.anchor: Anchor | None = None
        client.on_anchor = self._keep_anchor
        # The replica as the door holds it: the last checkpoint it reached.
        self.version = 0
        self.checksum = "0" * 16
        self.count = 0
        self.last_seq = 0
        # Seqs 1..seeded: history stored in the cloud before the run (``Fleet.ensure``), retained
        # by the door but not held here (it never needs to send them again).
        self.seeded = 0
        self.journal: dict[int, Journaled] = {}  # seq -> check-in made in this run
        self.pending: dict[int, Journaled] = {}  # seq -> not acknowledged yet
        self.rejected: list[str] = []
        # When the cloud acknowledged each check-in (monotonic s, in order: a door's rounds run
        # one at a time): the work it did, however the doors batched it.
        self.settled_at: list[float] = []
        self.errors: list[tuple[float, str]] = []  # (when, plain words)
        self.resnapshots = 0
        self.resend_requests: list[int] = []  # every resend_from_seq the cloud answered
        self.next_checkin_at = math.inf
        # The agent's backoff: consecutive failed rounds, the largest Retry-After the last one
        # was answered with (s), and when the next try is due (monotonic s).
        self.failures = 0
        self.retry_after: float | None = None
        self.backoff_until = 0.0

    # -- the schedule's inputs -----------------------------------------------------------------

    def draw_next_checkin(self, after: float) -> None:
        rate_per_s = self.settings.checkins_per_min / 60.0
        self.next_checkin_at = (
            after + self.rng.expovariate(rate_per_s) if rate_per_s > 0 else math.inf
        )

    def due_after(self, ended: float) -> float:
        """When the next round starts, as the agent decides after a round that ``ended`` then:
        after a failed round, when its backoff ends (a check-in does not cut it short); else at
        once for a check-in journaled during it (after its push read the queue), else within
        ``wake_poll_s`` of the next check-in, and at the latest ``interval_s`` after it."""
        if self.failures:
            return max(ended, self.backoff_until)
        if self.next_checkin_at <= ended:
            return ended
        woken = self.next_checkin_at + self.rng.uniform(0.0, self.settings.wake_poll_s)
        return min(ended + self.settings.interval_s, woken)

    def journal_until(self, now: float) -> None:
        """Journal every check-in due by ``now`` (they are made between rounds)."""
        while self.next_checkin_at <= now:
            self._journal(self.next_checkin_at)
            self.draw_next_checkin(self.next_checkin_at)

    def _journal(self, at: float) -> None:
        self.last_seq += 1
        who = self.rng.randrange(self.gym.members)
        wall = datetime.now(UTC) - timedelta(seconds=max(0.0, time.monotonic() - at))
        if is_class_pack(who):
            decision, reason, classes = "granted", "class_pack", 1
        elif self.rng.random() < 0.05:
            decision, reason, classes = "denied", "passback", 0
        else:
            decision, reason, classes = "granted", "subscription", 0
        item = UploadItem(
            id=str(uuid7()),
            seq=self.last_seq,
            door_id=f"door-{self.index}",
            decision=decision,
            reason=reason,
            member_id=member_id(who),
            membership_id=membership_id(who),
            classes_used=classes,
            replica_version=self.version,
            wall_time=wall,
            boot_id=self.boot,
            monotonic_ns=int(at * 1e9),
            clock_quality="ntp_synced",
        )
        made = Journaled(item, at)
        self.journal[item.seq] = made
        self.pending[item.seq] = made

    # -- one round: push, pull, heartbeat ------------------------------------------------------

    def round(self) -> bool:
        """One agent round (``kiosk.sync.agent``'s cycle); False when it failed (the first error
        is kept in ``errors``, and the backoff set). As the agent, a step answered with an error
        (a 5xx such as a 503 that sheds load) does not stop the later steps, a request that got
        no answer (a timeout, no connection) or a non-retryable error does."""
        failed: list[CloudError] = []
        try:
            for step in (self._push, self._pull, self._heartbeat):
                try:
                    step()
                except RetryableError as exc:
                    failed.append(exc)
                    if exc.status is None and not isinstance(exc, BadResponse):
                        break  # no answer at all: the later steps would only wait too
                except CloudError as exc:
                    failed.append(exc)
                    break
        finally:
            self.transport.end_round()
        if not failed:
            self.failures, self.retry_after = 0, None
            return True
        self.errors.append((time.monotonic(), str(failed[0])))
        self.failures += 1
        waits = [e.retry_after for e in failed if isinstance(e, RetryableError) and e.retry_after]
        self.retry_after = max(waits, default=None)
        self.backoff_until = time.monotonic() + self.backoff_s()
        return False

    def backoff_s(self) -> float:
        """The agent's wait after ``failures`` failed rounds in a row: full jitter (tenacity's
        ``wait_random_exponential(multiplier=1, max=backoff_max_s)``: uniform up to 2**(n-1) s,
        capped) and never less than the Retry-After the cloud sent (s)."""
        high = min(self.settings.backoff_max_s, 2.0 ** min(self.failures - 1, 30))
        return max(self.rng.uniform(0.0, high), self.retry_after or 0.0)

    def _push(self) -> None:
        while self.pending:
            batch = [self.pending[s] for s in sorted(self.pending)[: self.settings.batch_size]]
            anchors = (self.anchor,) if self.anchor is not None else ()
            answer = self.client.upload([j.item for j in batch], anchors=anchors)
            by_id = {j.item.id: j for j in batch}
            answered = time.monotonic()
            for result in answer.results:
                made = by_id[result.id or ""]
                # Created or duplicate: settled. Rejected: settled too, as the agent keeps it (a
                # rejection here is a defect, counted as an error of the step).
                if result.status == REJECTED:
                    self.rejected.append(f"{made.item.id}: {result.code} {result.detail}")
                if self.pending.pop(made.item.seq, None) is not None:
                    self.settled_at.append(answered)

    def _pull(self) -> None:
        first = self.client.changes(
            self.version, None, self.settings.page_rows, etag=f'"v{self.version}"'
        )
        if isinstance(first, NotModified):
            return
        self._follow(self.version, first)

    def _follow(self, since: int, page: ChangePage) -> None:
        while page.next is not None:
            following = self.client.changes(since, page.next, self.settings.page_rows)
            if isinstance(following, NotModified):
                raise CloudError("the cloud answered a later page of changes with 304")
            page = following
        assert page.checkpoint is not None  # the last page carries it (parse_change_page)
        self.version = page.checkpoint.version
        self.checksum = page.checkpoint.checksum
        self.count = page.checkpoint.count

    def catch_up(self) -> None:
        """The replica's checkpoint at the cloud's version (a first sync, or a resnapshot): the
        changes since the cloud's own version, asked without If-None-Match, carry it."""
        answer = self.client.changes(self.version, None, self.settings.page_rows)
        if isinstance(answer, NotModified):
            raise CloudError("the cloud answered 304 to a request without If-None-Match")
        self._follow(self.version, answer)

    def _heartbeat(self) -> None:
        now = time.monotonic()
        oldest = min((j.at for j in self.pending.values()), default=None)
        settled = min(self.pending, default=self.last_seq + 1) - 1
        beat = Heartbeat(
            software_version=__version__,
            boot_id=self.boot,
            monotonic_ns=time.monotonic_ns(),
            device_time=datetime.now(UTC),
            clock_quality="ntp_synced",
            backlog=len(self.pending),
            oldest_pending_age_s=None if oldest is None else max(0.0, now - oldest),
            replica_version=self.version,
            replica_checksum=self.checksum,
            replica_count=self.count,
            last_seq=self.last_seq,
            synced_through_seq=settled,
            retained_from_seq=1 if self.last_seq else 0,
            anchors=(self.anchor,) if self.anchor is not None else (),
        )
        reply = self.client.heartbeat(beat)
        if reply.resend_from_seq is not None:
            self.resend_requests.append(reply.resend_from_seq)
            if reply.resend_from_seq <= self.seeded:
                # The cloud holds the seeded history: asking for it again is a defect (the
                # door could send it; the bench keeps no copy).
                self.rejected.append(f"resend from seq {reply.resend_from_seq}: seeded history")
            for seq, made in self.journal.items():
                if seq >= reply.resend_from_seq:
                    self.pending[seq] = made
            self._push()
        if reply.resnapshot:
            self.resnapshots += 1
            self.catch_up()

    def _keep_anchor(self, anchor: Anchor) -> None:
        self.anchor = anchor


# -- the fleet: setup, steps, verification --------------------------------------------------------


@dataclass(slots=True)
class StepResult:
    doors: int
    served: bool
    reason: str
    requests: int
    requests_per_s: float
    rounds: int
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    by_path_p99_ms: dict[str, float | None]
    errors: int
    error_samples: list[str]
    lag_p99_ms: float | None
    checkins: int
    seconds: float
    cloud_cpu_percent: float | None = None
    bench_cpu_percent: float | None = None
    # The measured requests by outcome: answered 2xx or 304 (a second, and their p99), 503
    # (shed: the door backs off as asked), no answer in time, and the rest (other statuses, no
    # connection, rejected check-ins); and the doors they stand for (``door_equivalents``).
    good_per_s: float | None = None
    good_p99_ms: float | None = None
    # Check-ins the cloud acknowledged a second in the measured window: its useful work, which
    # good answers a second understate once late doors send bigger batches.
    settled_per_s: float | None = None
    shed: int = 0
    timeouts: int = 0
    other_errors: int = 0
    door_equivalents: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "doors": self.doors,
            "served": self.served,
            "reason": self.reason,
            "requests": self.requests,
            "requests_per_s": self.requests_per_s,
            "rounds": self.rounds,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "max_ms": self.max_ms,
            "by_path_p99_ms": self.by_path_p99_ms,
            "errors": self.errors,
            "error_samples": self.error_samples,
            "lag_p99_ms": self.lag_p99_ms,
            "checkins": self.checkins,
            "seconds": self.seconds,
            "cloud_cpu_percent": self.cloud_cpu_percent,
            "bench_cpu_percent": self.bench_cpu_percent,
            "good_per_s": self.good_per_s,
            "good_p99_ms": self.good_p99_ms,
            "settled_per_s": self.settled_per_s,
            "shed": self.shed,
            "timeouts": self.timeouts,
            "other_errors": self.other_errors,
            "door_equivalents": self.door_equivalents,
        }


@dataclass(frozen=True, slots=True)
class Outcomes:
    """Requests by outcome (see ``StepResult``); ``good_ms`` the answered ones' latencies."""

    good_ms: list[float]
    shed: int
    timeouts: int
    other: int


def outcomes(exchanges: list[Exchange]) -> Outcomes:
    """Sort requests by outcome: 2xx and 304 are good, 503 shed, no answer in time a timeout,
    anything else (another status, no connection) other. Pure."""
    good: list[float] = []
    shed = timeouts = other = 0
    for e in exchanges:
        if e.status is not None and (200 <= e.status < 300 or e.status == 304):
            good.append(e.ms)
        elif e.status == 503:
            shed += 1
        elif e.status is None and e.failure == TIMEOUT:
            timeouts += 1
        else:
            other += 1
    return Outcomes(good, shed, timeouts, other)


def percentile(values: list[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) by the nearest-rank method, rounded to 0.01; None if empty.
    Pure."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return round(ordered[rank - 1], 2)


class Fleet:
    """The doors of one cloud: enrolled as needed, run in steps, verified at the end."""

    def __init__(
        self,
        url: str,
        database: Any,
        settings: FleetSettings,
        cloud_cpu: Callable[[], float | None] = lambda: None,
    ) -> None:
        self.url = url
        self.database = database
        self.settings = settings
        self._cloud_cpu = cloud_cpu
        self.rng = random.Random(settings.seed)
        self.sink: list[Exchange] = []
        self.doors: list[Door] = []
        self.gyms: list[Gym] = []
        self._ssl = ssl.create_default_context()
        self.seed_s = 0.0  # time spent seeding retained history (s)
        self.seeded_rows = 0
        self.progress: ProgressFn = lambda _msg: None
        self.saturation_skipped: str | None = None

    def disk_shortfall(self, count: int) -> str | None:
        """Why seeding the doors needed for ``count`` would not fit a SQLite cloud's disk, or
        None (PostgreSQL: not checked)."""
        if self.database.dialect != "sqlite":
            return None
        directory = Path(self.database.url.target).parent
        return disk_shortfall(self.settings, directory, count - len(self.doors))

    # -- setup ---------------------------------------------------------------------------------

    def ensure(self, count: int) -> None:
        """At least ``count`` doors enrolled, each with its replica's checkpoint."""
        from cloud import admin, db

        missing = count - len(self.doors)
        if missing <= 0:
            return
        now = datetime.now(UTC)
        wanted_gyms = math.ceil(count / self.settings.doors_per_gym)
        while len(self.gyms) < wanted_gyms:
            n = len(self.gyms)
            org, gym = seed_organization(
                self.database, f"Fleet gym {n}", self.settings.gym_members, now
            )
            self.gyms.append(Gym(org, gym, self.settings.gym_members))

        def code_for(gym: Gym) -> str:
            made = self.database.transact(
                lambda tx: admin.create_enrolment_code(
                    tx, gym.organization_id, gym.gym_id, ENROL_TTL_MINUTES, now
                )
            )
            return str(made["code"])

        def enrol(index: int) -> Door:
            gym = self.gyms[index // self.settings.doors_per_gym]
            code = code_for(gym)
            clock = _DoorClock(f"fleet-{secrets.token_hex(8)}")
            with CloudClient(self.url, None, clock=clock, software_version=__version__) as c:
                enrolment = c.enrol(code, f"fleet door {index}", __version__)
            transport = DoorTransport(self.sink, self._ssl)
            client = CloudClient(
                self.url,
                enrolment.token,
                transport=transport,
                timeout_s=self.settings.request_timeout_s,
                clock=clock,
                software_version=__version__,
            )
            door = Door(
                index, gym, enrolment.device_id, client, transport, clock.boot_id,
                self.settings, random.Random(self.rng.random()),
            )  # fmt: skip
            door.version = self.database.transact(
                lambda tx: db.org_versions(tx, gym.organization_id)[0], write=False
            )
            door.catch_up()
            transport.end_round()
            return door

        first = len(self.doors)
        with ThreadPoolExecutor(SETUP_THREADS, thread_name_prefix="fleet-enrol") as pool:
            self.doors.extend(pool.map(enrol, range(first, count)))
        self.sink.clear()  # the enrolments are not part of any step
        if self.settings.retained_rows > 0:
            self._seed_history(self.doors[first:], now)

    def _seed_history(self, doors: list[Door], now: datetime) -> None:
        """Store each door's retained journal in the cloud, seqs 1..retained_rows spread over
        the last ``retained_days`` (``cloud.db.seed_journal_history``), before its first round:
        its journal continues after them and its heartbeats name them all. One transaction a
        door, one door at a time: SQLite has one writer, and on PostgreSQL the cores are busy
        enough with one set-based INSERT."""
        from cloud import db

        rows = self.settings.retained_rows
        span_us = int(self.settings.retained_days * 86400e6)
        last_us = int(now.timestamp() * 1e6) - span_us // rows
        self.progress(f"seeding {rows:,} retained check-ins for each of {len(doors)} doors")
        started = time.perf_counter()
        for door in doors:
            self.database.transact(
                lambda tx, d=door: db.seed_journal_history(
                    tx, d.device_id, d.gym.organization_id, d.gym.gym_id, f"door-{d.index}",
                    1, rows, last_us - span_us + span_us // rows, last_us,
                    replica_version=d.version,
                )
            )  # fmt: skip
            door.seeded = door.last_seq = rows
            self.seeded_rows += rows
        self.seed_s += time.perf_counter() - started

    # -- one step ------------------------------------------------------------------------------

    def run_step(self, count: int) -> StepResult:
        """``count`` doors (the first ones) for one warm-up and one measured window."""
        self.ensure(count)
        s = self.settings
        doors = self.doors[:count]
        warmup = s.interval_s * s.warmup_intervals
        window = s.interval_s * s.window_intervals
        self.sink.clear()
        errors_before = [len(d.errors) for d in doors]
        rejected_before = [len(d.rejected) for d in doors]
        journaled_before = sum(d.last_seq for d in doors)
        start = time.monotonic()
        cloud_cpu, bench_cpu = self._cloud_cpu(), time.process_time()
        measure_from, end = start + warmup, start + warmup + window
        lags: list[tuple[float, float]] = []  # (due, lag s)
        rounds = 0
        heap: list[tuple[float, int, int]] = []
        tie = itertools.count()
        cond = threading.Condition()
        for n, door in enumerate(doors):
            # As if its last round ended at a random point of the interval before this step.
            ended = start - self.rng.uniform(0.0, s.interval_s)
            door.draw_next_checkin(max(start, ended))
            heapq.heappush(heap, (door.due_after(ended), next(tie), n))

        def play(n: int, due: float) -> None:
            nonlocal rounds
            door = doors[n]
            began = time.monotonic()
            lags.append((due, began - due))
            door.journal_until(began)
            door.round()
            ended = time.monotonic()
            with cond:
                rounds += 1
                heapq.heappush(heap, (door.due_after(ended), next(tie), n))
                cond.notify()

        with ThreadPoolExecutor(ROUND_THREADS, thread_name_prefix="fleet-door") as pool:
            while True:
                with cond:
                    while True:
                        now = time.monotonic()
                        if now >= end:
                            break
                        if heap and heap[0][0] <= now:
                            due, _, n = heapq.heappop(heap)
                            break
                        wait = (heap[0][0] if heap else end) - now
                        cond.wait(min(wait, end - now))
                    if now >= end:
                        break
                pool.submit(play, n, due)
            # Leaving the pool waits for the rounds started before the end (each request is
            # bounded by the timeout).
        seconds = time.monotonic() - start
        cloud_cpu_after = self._cloud_cpu()
        cloud_share = None
        if cloud_cpu is not None and cloud_cpu_after is not None and seconds > 0:
            cloud_share = round(100 * (cloud_cpu_after - cloud_cpu) / seconds, 1)
        bench_share = round(100 * (time.process_time() - bench_cpu) / seconds, 1)
        measured = [e for e in self.sink if measure_from <= e.started < end]
        failed = sum(len(d.errors) - before for d, before in zip(doors, errors_before, strict=True))
        rejected = sum(
            len(d.rejected) - before for d, before in zip(doors, rejected_before, strict=True)
        )
        samples = [text for d in doors for _, text in d.errors[-1:]][:3]
        samples += [text for d in doors for text in d.rejected[-1:]][: 3 - len(samples)]
        latencies = [e.ms for e in measured]
        sorted_out = outcomes(measured)
        settled = sum(
            bisect.bisect_left(d.settled_at, end) - bisect.bisect_left(d.settled_at, measure_from)
            for d in doors
        )
        paths: dict[str, list[float]] = {}
        for e in measured:
            paths.setdefault(e.path, []).append(e.ms)
        lag_ms = [lag * 1e3 for due, lag in lags if measure_from <= due < end]
        p99 = percentile(latencies, 0.99)
        lag_p99 = percentile(lag_ms, 0.99)
        errors = failed + rejected
        if errors:
            served, reason = False, f"{errors} failed rounds or rejected check-ins"
            if sorted_out.shed:
                reason += f" ({sorted_out.shed} answers 503)"
        elif p99 is None:
            served, reason = False, "no request was measured"
        elif p99 >= s.target_p99_ms:
            served, reason = False, f"p99 {p99:.1f} ms >= {s.target_p99_ms:.0f} ms"
        elif lag_p99 is not None and lag_p99 >= s.target_p99_ms:
            served, reason = False, f"rounds started late (p99 {lag_p99:.0f} ms): saturated"
        else:
            served, reason = True, "served"
        self.sink.clear()
        return StepResult(
            doors=count,
            served=served,
            reason=reason,
            requests=len(measured),
            requests_per_s=round(len(measured) / window, 1) if window > 0 else 0.0,
            rounds=rounds,
            p50_ms=percentile(latencies, 0.5),
            p99_ms=p99,
            max_ms=round(max(latencies), 2) if latencies else None,
            by_path_p99_ms={p: percentile(v, 0.99) for p, v in sorted(paths.items())},
            errors=errors,
            error_samples=samples,
            lag_p99_ms=lag_p99,
            checkins=sum(d.last_seq for d in doors) - journaled_before,
            seconds=round(seconds, 1),
            cloud_cpu_percent=cloud_share,
            bench_cpu_percent=bench_share,
            good_per_s=round(len(sorted_out.good_ms) / window, 1) if window > 0 else 0.0,
            good_p99_ms=percentile(sorted_out.good_ms, 0.99),
            settled_per_s=round(settled / window, 1) if window > 0 else 0.0,
            shed=sorted_out.shed,
            timeouts=sorted_out.timeouts,
            other_errors=sorted_out.other + rejected,
            door_equivalents=door_equivalents(count, s),
        )

    # -- the end -------------------------------------------------------------------------------

    def drain(self) -> int:
        """Send every door's pending check-ins until acknowledged (``DRAIN_ROUNDS`` tries at
        most); returns how many are still pending. A door whose last round failed waits out
        the Retry-After it was given, not its jitter (nothing is measured here: it would only
        make the end slower)."""

        def settle(door: Door) -> None:
            if door.failures:
                wait = min(door.backoff_until - time.monotonic(), door.retry_after or 0.0)
                time.sleep(max(0.0, wait))
            door.round()

        waiting = [d for d in self.doors if d.pending]
        for _ in range(DRAIN_ROUNDS):
            if not waiting:
                break
            with ThreadPoolExecutor(SETUP_THREADS, thread_name_prefix="fleet-drain") as pool:
                list(pool.map(settle, waiting))
            waiting = [d for d in waiting if d.pending]
        return sum(len(d.pending) for d in self.doors)

    def verify(self) -> dict[str, Any]:
        """Count what the cloud holds against what the doors made (see the module docstring).
        Seeded history is accounted for exactly, not counted as made: every door must hold
        seqs 1..last_seq once, its seeded rows and each check-in it made under its own id."""
        from cloud import db

        made = sum(d.last_seq - d.seeded for d in self.doors)
        seeded = sum(d.seeded for d in self.doors)
        ids = {j.item.id: d.device_id for d in self.doors for j in d.journal.values()}
        uses: dict[tuple[str, str], int] = {}
        for d in self.doors:
            for j in d.journal.values():
                if j.item.classes_used and j.item.membership_id:
                    key = (d.gym.organization_id, j.item.membership_id)
                    uses[key] = uses.get(key, 0) + j.item.classes_used
        device_ids = [d.device_id for d in self.doors]

        def read(tx: Any) -> tuple[dict[str, dict[str, Any]], dict[str, int], int]:
            holders = db.checkin_holders(tx, list(ids))
            counts = db.checkin_counts(tx, device_ids)
            spent = 0
            by_org: dict[str, list[str]] = {}
            for org, mid in uses:
                by_org.setdefault(org, []).append(mid)
            for org, mids in by_org.items():
                rows = db.replica_rows_by_id(tx, "membership", org, mids)
                spent += sum(
                    CLASS_PACK_BALANCE - int(r["remaining_classes"]) for r in rows.values()
                )
            return holders, counts, spent

        holders, counts, spent = self.database.transact(read, write=False)
        misplaced = sum(1 for i, dev in ids.items() if holders.get(i, {}).get("device_id") != dev)
        stored = sum(counts.values()) - seeded
        # Per door: a door short of rows and another with extra ones must not cancel out.
        uneven = sum(1 for d in self.doors if counts.get(d.device_id, 0) != d.last_seq)
        class_uses = sum(uses.values())
        return {
            "checkins_made": made,
            "checkins_stored": stored,
            "checkins_seeded": seeded,
            "doors_miscounted": uneven,
            "missing_or_misplaced": misplaced,
            "class_uses": class_uses,
            "class_uses_in_cloud": spent,
            "pending_after_drain": sum(len(d.pending) for d in self.doors),
            "rejected": sum(len(d.rejected) for d in self.doors),
            "resnapshots": sum(d.resnapshots for d in self.doors),
            "resend_requests": sum(len(d.resend_requests) for d in self.doors),
            "exactly_once": stored == made == len(ids)
            and uneven == 0
            and misplaced == 0
            and spent == class_uses,
        }

    def close(self) -> None:
        for door in self.doors:
            door.client.close()


def search(fleet: Fleet, progress: ProgressFn, label: str) -> list[StepResult]:
    """Steps: double from ``start_doors`` while served, then bisect between the largest served
    and the smallest unserved count, within ``max_steps`` and ``max_doors``."""
    s = fleet.settings
    steps: list[StepResult] = []
    good: int | None = None
    bad: int | None = None
    doors = max(1, min(s.start_doors, s.max_doors))
    while len(steps) < s.max_steps:
        progress(f"{label}: {doors} doors ({len(steps) + 1}/{s.max_steps} steps at most)")
        result = fleet.run_step(doors)
        steps.append(result)
        progress(
            f"{label}: {doors} doors: p99 {result.p99_ms} ms, {result.requests_per_s} requests/s, "
            f"{result.errors} errors: {result.reason}"
        )
        if result.served:
            good = doors
        else:
            bad = doors
        if bad is None:
            if doors >= s.max_doors:
                break
            doors = min(doors * 2, s.max_doors)
        elif good is None:
            if doors <= 1:
                break
            doors = max(1, doors // 2)
        else:
            if bad - good <= max(1, int(good * RESOLUTION)):
                break
            doors = (good + bad) // 2
    return steps


def summary(steps: list[StepResult]) -> dict[str, Any]:
    """The backend's headline from its steps: the largest served door count with its p99 and
    errors, and the smallest unserved one. Pure."""
    served = [r for r in steps if r.served]
    unserved = [r for r in steps if not r.served]
    best = max(served, key=lambda r: r.doors) if served else None
    worst = min(unserved, key=lambda r: r.doors) if unserved else None
    head = best or worst
    return {
        "doors": best.doors if best else 0,
        "p99_ms": head.p99_ms if head else None,
        "errors": head.errors if head else 0,
        "first_unserved": None
        if worst is None
        else {"doors": worst.doors, "p99_ms": worst.p99_ms, "errors": worst.errors,
              "reason": worst.reason},
    }  # fmt: skip


def capacity_step(steps: list[StepResult]) -> StepResult | None:
    """The served step with the most doors (the capacity found), or None. Pure."""
    served = [r for r in steps if r.served]
    return max(served, key=lambda r: r.doors) if served else None


def saturation_doors(capacity: int) -> list[int]:
    """The saturation steps' door counts: ``SATURATION_LOADS`` times ``capacity``, always past
    it. Pure."""
    return [max(capacity + 1, round(capacity * load)) for load in SATURATION_LOADS]


def saturate(fleet: Fleet, capacity: int, progress: ProgressFn, label: str) -> list[StepResult]:
    """One step at each of ``SATURATION_LOADS`` times ``capacity`` doors, past what was served
    (none when nothing was, or when their retained history would not fit on the disk: the
    reason is then in ``fleet.saturation_skipped``): how the cloud answers more than it can
    serve."""
    steps: list[StepResult] = []
    if capacity <= 0:
        return steps
    short = fleet.disk_shortfall(max(saturation_doors(capacity)))
    if short is not None:
        fleet.saturation_skipped = short
        progress(f"{label}: no saturation steps: {short}")
        return steps
    for load, doors in zip(SATURATION_LOADS, saturation_doors(capacity), strict=True):
        progress(f"{label}: saturation, {doors} doors ({load:g}x the capacity found)")
        result = fleet.run_step(doors)
        steps.append(result)
        progress(
            f"{label}: {doors} doors: {result.settled_per_s} check-ins acknowledged/s, "
            f"{result.good_per_s} good requests/s, {result.shed} answers 503, "
            f"{result.timeouts} timeouts, {result.other_errors} other errors"
        )
    return steps


def saturation_report(
    capacity: StepResult | None, steps: list[StepResult], skipped: str | None = None
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The saturation steps as reported, led by the capacity step (load 1, from the search), and
    the verdict: ``flat`` when the last step (2x) acknowledges at least ``FLAT_SHARE`` of the
    capacity step's check-ins a second and no saturation step had a timeout, else ``falls``; ``not
    measured`` without a capacity or steps (``skipped``: why they were not run). Pure."""
    if capacity is None:
        return [], {"verdict": "not measured", "reason": "no step was served: no capacity"}
    if len(steps) < len(SATURATION_LOADS):
        return [], {"verdict": "not measured", "reason": skipped or "the steps did not run"}
    rows = [
        {
            "load": load,
            "doors": r.doors,
            "door_equivalents": r.door_equivalents,
            "settled_per_s": r.settled_per_s,
            "good_per_s": r.good_per_s,
            "shed_503": r.shed,
            "timeouts": r.timeouts,
            "other_errors": r.other_errors,
            "p99_ms": r.good_p99_ms,
            "requests_per_s": r.requests_per_s,
        }
        for load, r in zip((1.0, *SATURATION_LOADS), (capacity, *steps), strict=True)
    ]

    def share(value: Callable[[StepResult], float | None]) -> float:
        base, last = value(capacity) or 0.0, value(steps[-1]) or 0.0
        return last / base if base > 0 else 0.0

    settled, good = share(lambda r: r.settled_per_s), share(lambda r: r.good_per_s)
    timeouts = sum(r.timeouts for r in steps)
    words = (
        f"{SATURATION_LOADS[-1]:g}x the capacity acknowledges {settled:.0%} of its check-ins a "
        f"second in {good:.0%} of its good requests a second, {timeouts} timeouts"
    )
    flat = timeouts == 0 and settled >= FLAT_SHARE
    return rows, {"verdict": "flat" if flat else "falls", "reason": words}


def measure_backend(
    label: str,
    database_url: str,
    description: str,
    workers: int,
    settings: FleetSettings,
    progress: ProgressFn,
) -> dict[str, Any]:
    """The search against a fresh cloud on ``database_url`` with ``workers`` processes, then
    the drain and the exactly-once count."""
    from cloud.db import Database
    from cloud.migrations import migrate

    database = Database(database_url, pool_size=SETUP_THREADS)
    name = f"{label} ({workers} worker(s))"
    saturation: list[StepResult] = []
    try:
        migrate(database)
        with CloudProcess(database_url, workers) as cloud:
            assert cloud.url is not None
            fleet = Fleet(cloud.url, database, settings, cloud.cpu_seconds)
            fleet.progress = lambda msg: progress(f"{label}: {msg}")
            try:
                steps = search(fleet, progress, name)
                if settings.saturation:
                    found = capacity_step(steps)
                    saturation = saturate(fleet, found.doors if found else 0, progress, name)
                progress(f"{label}: sending what is pending, counting the cloud's rows")
                fleet.drain()
                verified = fleet.verify()
            finally:
                fleet.close()
    finally:
        database.close()
    head = summary(steps)
    rows, judged = saturation_report(capacity_step(steps), saturation, fleet.saturation_skipped)
    return {
        "database": description,
        "workers": workers,
        **head,
        "door_equivalents": door_equivalents(head["doors"], settings),
        "interval_s": settings.interval_s,
        "retained_rows": settings.retained_rows,
        "seed_s": round(fleet.seed_s, 1),
        "exactly_once": verified["exactly_once"],
        "verification": verified,
        "doors_enrolled": len(fleet.doors),
        "steps": [r.to_json() for r in steps],
        "saturation": rows,
        "saturation_verdict": judged if settings.saturation else None,
        "saturation_steps": [r.to_json() for r in saturation],
    }


def _raise_open_files() -> None:
    """Each round in flight holds a socket on both ends (the cloud is a child of this process on
    the same machine): lift the soft limit on open files to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def disk_shortfall(settings: FleetSettings, directory: str | Path, doors: int) -> str | None:
    """Why the retained history of ``doors`` more doors would not fit in ``directory``'s free
    space as a SQLite cloud (``SEEDED_ROW_BYTES`` a row), or None when it fits or nothing is
    seeded."""
    if settings.retained_rows <= 0 or doors <= 0:
        return None
    need = doors * settings.retained_rows * SEEDED_ROW_BYTES
    free = shutil.disk_usage(directory).free
    if need <= free:
        return None
    return (
        f"--retained-rows {settings.retained_rows:,} for {doors:,} doors needs about "
        f"{need / 1e9:,.1f} GB for the SQLite cloud and {directory} has {free / 1e9:,.1f} GB free"
    )


def check_disk(settings: FleetSettings, directory: str | Path) -> None:
    """Raise BenchError when the retained history of the most doors the search may enrol
    (``max_doors``) would not fit in ``directory`` as a SQLite cloud: better refused before
    than a full disk after an hour. (The saturation steps check again for their own doors;
    PostgreSQL's disk is the server's, not checked.)"""
    short = disk_shortfall(settings, directory, settings.max_doors)
    if short is not None:
        raise BenchError(
            f"{short}: bound the doors with --max-doors (and --interval, so that fewer doors "
            f"carry the same load)"
        )


def collect_fleet(
    *,
    postgres_url: str | None,
    workers: int = 1,
    settings: FleetSettings | None = None,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Every figure, as one JSON-ready dict: SQLite (one process: SQLite refuses more) and, with
    ``postgres_url``, PostgreSQL with ``workers`` processes. Raises BenchError when a part cannot
    run."""
    say = progress or (lambda _msg: None)
    s = settings or fleet_settings()
    if workers < 1:
        raise BenchError("--workers must be at least 1")
    if s.retained_rows < 0:
        raise BenchError("--retained-rows must be at least 0")
    check_disk(s, tempfile.gettempdir())
    _raise_open_files()
    results: dict[str, Any] = {
        "machine": machine(),
        "target_p99_ms": s.target_p99_ms,
        "interval_s": s.interval_s,
        "wake_poll_s": s.wake_poll_s,
        "checkins_per_door_per_min": s.checkins_per_min,
        "doors_per_gym": DOORS_PER_GYM,
        "gym_members": s.gym_members,
        "warmup_s": s.interval_s * s.warmup_intervals,
        "window_s": s.interval_s * s.window_intervals,
        "door_load": s.door_load,
        "reference_interval_s": s.interval_s * s.door_load,
        "retained_rows": s.retained_rows,
        "retained_days": s.retained_days,
        "max_doors": s.max_doors,
        "saturation_loads": list(SATURATION_LOADS) if s.saturation else [],
        "backends": {},
        "postgres": POSTGRES_HINT,
    }
    with contextlib.ExitStack() as stack:
        scratch = stack.enter_context(postgres_scratch(postgres_url)) if postgres_url else None
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="kiosk-bench-fleet-"))
        url = f"sqlite:///{Path(tmp) / 'cloud.db'}"
        results["backends"]["sqlite"] = measure_backend(
            "SQLite", url, "a SQLite file in a temporary directory", 1, s, say
        )
        if scratch is not None:
            pg_url, description = scratch
            results["backends"]["postgres"] = measure_backend(
                "PostgreSQL", pg_url, description, workers, s, say
            )
            results["postgres"] = "measured"
    return results


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def report_fleet(r: dict[str, Any], out: TextIO) -> None:
    """The figures as a readable table per backend, then the headline."""
    w = out.write
    m = r["machine"]
    w(f"machine: {m['cpu']}, {m['cores']} cores, Python {m['python']} (the doors run on it too)\n")
    w(f"doors: a round every {r['interval_s']:g} s (idle pull + heartbeat), "
      f"{r['checkins_per_door_per_min']:g} check-ins a minute each (upload + pull + heartbeat), "
      f"{r['doors_per_gym']} doors a gym of {r['gym_members']} members; each step "
      f"{r['warmup_s']:g} s warm-up, {r['window_s']:g} s measured\n")  # fmt: skip
    load = r.get("door_load", 1.0)
    if load != 1.0:
        w(f"each simulated door carries the load of {load:g} doors at the "
          f"{r['reference_interval_s']:g} s interval: door equivalents = doors x {load:g}\n")  # fmt: skip
    if r.get("retained_rows"):
        w(f"each door starts with {r['retained_rows']:,} check-ins already in the cloud (seqs "
          f"1..{r['retained_rows']:,} over {r['retained_days']:g} days, seeded, not counted as "
          f"made), its journal continuing after them\n")  # fmt: skip
    heads = {"sqlite": "SQLite", "postgres": "PostgreSQL"}
    for name, b in r["backends"].items():
        w(f"\n{heads.get(name, name)}, {b['workers']} worker process(es): {b['database']}\n")
        w("   doors   req/s    p50 ms    p99 ms    max ms  errors  late p99 ms  cloud CPU %"
          "  bench CPU %  verdict\n")  # fmt: skip
        for step in b["steps"]:
            w(f"  {step['doors']:>6} {step['requests_per_s']:>7} {_num(step['p50_ms'], 2):>9} "
              f"{_num(step['p99_ms'], 2):>9} {_num(step['max_ms'], 2):>9} {step['errors']:>7} "
              f"{_num(step['lag_p99_ms'], 0):>12} {_num(step['cloud_cpu_percent'], 0):>12} "
              f"{_num(step['bench_cpu_percent'], 0):>12}  {step['reason']}\n")  # fmt: skip
        if b.get("saturation"):
            w("  saturation: the capacity step, then past it\n"
              "     load   doors  door eq.  check-ins/s  good req/s  503s  timeouts  other"
              "  p99 ms (good)\n")  # fmt: skip
            for row in b["saturation"]:
                w(f"  {row['load']:>6.1f}x {row['doors']:>6} {row['door_equivalents']:>9,} "
                  f"{_num(row['settled_per_s']):>12} {_num(row['good_per_s']):>11} "
                  f"{row['shed_503']:>5} {row['timeouts']:>9} "
                  f"{row['other_errors']:>6} {_num(row['p99_ms'], 2):>14}\n")  # fmt: skip
        if b.get("saturation_verdict"):
            sv = b["saturation_verdict"]
            w(f"  saturation verdict: {sv['verdict']} ({sv['reason']})\n")
        v = b["verification"]
        seeded = v.get("checkins_seeded", 0)
        w(f"  check-ins: {v['checkins_made']:,} made, {v['checkins_stored']:,} stored"
          + (f" (besides {seeded:,} seeded in {b['seed_s']:g} s)" if seeded else "")
          + f"; class uses {v['class_uses_in_cloud']}/{v['class_uses']} in the cloud\n")  # fmt: skip
    if "postgres" not in r["backends"]:
        w(f"\nPostgreSQL: {r['postgres']}\n")
    w("\n")
    for name, b in r["backends"].items():
        ok = b["doors"] > 0 and b["errors"] == 0 and b["exactly_once"]
        equivalents = (
            f" ({b['door_equivalents']:,} door equivalents at {r['reference_interval_s']:g} s)"
            if load != 1.0 else ""
        )  # fmt: skip
        w(f"[{verdict(ok)}] {heads.get(name, name)} ({b['workers']} worker(s)): {b['doors']:,} "
          f"doors{equivalents} with p99 {_num(b['p99_ms'], 1)} ms (target < "
          f"{r['target_p99_ms']:.0f} ms), {b['errors']} errors, exactly once: "
          f"{'yes' if b['exactly_once'] else 'NO'}\n")  # fmt: skip
        if b.get("saturation_verdict"):
            sv = b["saturation_verdict"]
            w(f"[{verdict(sv['verdict'] == 'flat')}] {heads.get(name, name)} past its capacity: "
              f"{sv['verdict']} ({sv['reason']})\n")  # fmt: skip


def run_fleet_bench(
    *,
    as_json: bool,
    postgres_url: str | None,
    workers: int,
    out: TextIO,
    settings: FleetSettings | None = None,
) -> int:
    """Measure and print (progress on stderr). Exit code 0 even when a target is missed: the
    figures are the product. Raises BenchError when the bench cannot run."""

    def progress(msg: str) -> None:
        print(f"bench: {msg}", file=sys.stderr, flush=True)

    results = collect_fleet(
        postgres_url=postgres_url, workers=workers, settings=settings, progress=progress
    )
    if as_json:
        out.write(json.dumps(results) + "\n")
    else:
        report_fleet(results, out)
    return 0
