"""``kiosk bench --console``: the front-desk console's figures, on SQLite and (with ``--postgres``)
PostgreSQL.

**Member search** (``cloud.console.search.search_members``, as the console runs it: one read
transaction per search) over ``members`` members of one organisation (default 100,000, stored
through ``cloud.db``'s replica writes, as the admin API stores them, with names drawn from common
and generated ones, card codes and, for most, a phone number): p50/p95/p99 in ms of
``queries`` searches of each kind, each drawn from the stored members: a name (a prefix of a last
or first name, or of both), a card code (one in ten in another case, one in ten unknown) and a
phone (the last four digits, a longer ending, or the whole number as typed with spaces); and each
kind's query plan, checked to be an index range.

**The live feed under load**: the cloud as a child process (``kiosk cloud serve``'s own server and
the real app, with the feed mounted without sign-in at ``/bench/live/{org}``, since sign-in costs
nothing per event; PostgreSQL with ``workers`` processes, so an upload lands on one worker and
consoles on others), ``consoles`` SSE clients of one organisation connected, then ``doors``
simulated doors of that organisation (``devtools.bench.fleet``'s doors: the device's own client,
the agent's rounds of upload, pull and heartbeat) journaling ``checkins_per_min`` check-ins a
minute each for ``window_s`` seconds. Reported: the delivery latency from the moment a door read
its upload's answer to each console's receipt of the event (p50/p99/max; a negative value means the
event came first), whether every stored check-in reached every console exactly once (no
duplicate, none missing, no console dropped), and the cloud's CPU seconds (all its processes) over
the run, and before it, for ``idle_s`` with the consoles open and no door (the poller's own cost). The doors and the consoles run in this process on the same machine: their CPU competes
with the cloud's, so the figures are an upper bound for the latency.

Failures of the machinery raise ``BenchError``; the figures are the product, never a pass/fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import httpx
from starlette.requests import Request

from devtools.bench.fleet import CloudProcess, Fleet, fleet_settings, percentile
from devtools.bench.run import machine, verdict
from devtools.bench.sync import BenchError, postgres_scratch

BENCH_MEMBERS = 100_000
SEARCH_QUERIES = 300  # per kind
LIVE_CONSOLES = 50
LIVE_DOORS = 20
TARGET_SEARCH_P95_MS = 50.0
TARGET_DELIVERY_P99_MS = 1000.0  # "within about a second"
LIVE_PATH = "/bench/live/{org}"
SEED_CHUNK = 10_000
SETTLE_S = 15.0  # how long the consoles may take to receive the last uploads
CONSOLE_TIMEOUT_S = 30.0

POSTGRES_HINT = (
    "not measured: add --postgres postgresql://USER@HOST:PORT/DBNAME to include it (the bench "
    "creates a scratch database there and drops it afterwards)"
)

ProgressFn = Callable[[str], None]


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


FIRST_NAMES = _words(
    "Ann Anna Annabel Ben Bob Carla Chris Clara Daniel David Elena Emma Eva Felix Finn Grace "
    "Hannah Hugo Ida Isaac Jan Jana Jonas Julia Karl Kim Lara Lea Leon Lina Luca Lukas Maria Marie "
    "Mark Max Mia Nina Noah Olga Omar Oscar Paul Paula Peter Rosa Sam Sara Simon Sofia Tom Vera "
    "Zoe Émile Jürgen Søren"
)
LAST_NAMES = _words(
    "Smith Jones Brown Miller Davis Wilson Taylor Clark Lewis Walker Hall Young King Wright "
    "Green Baker Adams Nelson Hill Campbell Müller Schmidt Schneider Fischer Weber Meyer Wagner "
    "Becker Schulz Hoffmann Koch Richter Klein Wolf Schröder Neumann Schwarz Zimmermann Braun "
    "Krüger Hartmann Lange Werner Krause Lehmann Köhler Maier Rossi Russo Bianchi Garcia Martin "
    "Dubois Moreau Laurent Nowak Kowalski Novak Horvat Jensen Nielsen Hansen Andersen Larsen"
)
SYLLABLES = _words("ka ro mi ta ne lu sa vo ri de po an el is or um ber gen stein mann ski son sen")


@dataclass(frozen=True, slots=True)
class ConsoleSettings:
    """What the run measures; tests shrink it."""

    members: int = BENCH_MEMBERS
    queries: int = SEARCH_QUERIES
    consoles: int = LIVE_CONSOLES
    doors: int = LIVE_DOORS
    checkins_per_min: float = 30.0  # per door: a check-in every two seconds
    window_s: float = 30.0
    gym_members: int = 300
    workers: int = 2  # the cloud's processes on PostgreSQL (SQLite: always one)
    interval_s: float = 10.0  # the doors' idle round (pull and heartbeat)
    idle_s: float = 5.0  # consoles open, no door: what the feed costs by itself
    wake_poll_s: float = 0.25
    seed: int = 1


# -- search ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Person:
    member_id: str
    first: str
    last: str
    code: str
    phone: str | None


def _generated_name(rng: random.Random) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()


def people(count: int, rng: random.Random) -> list[Person]:
    """``count`` members: half with common names, half generated (a long tail of rare ones);
    card codes ``FF-0000000``...; four in five with a German mobile number. Pure."""
    out = []
    for i in range(count):
        common = rng.random() < 0.5
        first = rng.choice(FIRST_NAMES) if common else _generated_name(rng)
        last = rng.choice(LAST_NAMES) if rng.random() < 0.5 else _generated_name(rng)
        phone = f"+4915{rng.randrange(10**9):09d}" if rng.random() < 0.8 else None
        out.append(Person(f"mbr_bench{i:07d}", first, last, f"FF-{i:07d}", phone))
    return out


def seed_members(database: Any, org_id: str, members: list[Person]) -> None:
    """Store the members as the admin API does (validated replica rows with their hashes and
    card codes, one version per chunk), then their phone numbers, then fresh planner
    statistics."""
    from cloud import db
    from sync.credentials import code_hash
    from sync.protocol import make_row, utc_text

    table = db.REPLICA_TABLES["member"]
    now = utc_text(datetime.now(UTC))
    salt = database.transact(lambda tx: db.organization(tx, org_id))["code_salt"]
    key = bytes.fromhex(salt)
    for start in range(0, len(members), SEED_CHUNK):
        chunk = members[start : start + SEED_CHUNK]
        writes = []
        for p in chunk:
            data = {
                "organization_id": org_id,
                "first_name": p.first,
                "last_name": p.last,
                "status": "ACTIVE",
                "is_staff": False,
                "code_hash": code_hash(p.code, key),
            }
            row = make_row("member", p.member_id, data)
            values = {c: (row.data or {}).get(c) for c in table.columns}
            values |= {extra: None for extra in table.extra}
            values |= {"card_code": p.code} | ({"phone": p.phone} if "phone" in table.extra else {})
            writes.append(db.RowWrite(None, row.id, values, row.row_hash()))

        def store(tx: Any, writes: list[Any] = writes, chunk: list[Person] = chunk) -> None:
            version = db.bump_version(tx, org_id)
            db.upsert_replica_rows(tx, "member", org_id, writes, version=version, now=now)
            db.set_member_phones(tx, org_id, {p.member_id: p.phone for p in chunk if p.phone})

        database.transact(store)
    database.transact(lambda tx: db.refresh_statistics(tx, ["member"]))


def search_queries(members: list[Person], count: int, rng: random.Random) -> dict[str, list[str]]:
    """``count`` queries of each kind drawn from the stored members (see the module
    docstring). Pure."""
    names, codes, phones = [], [], []
    with_phone = [p for p in members if p.phone]
    for _ in range(count):
        p = rng.choice(members)
        shape = rng.randrange(3)
        if shape == 0:
            names.append(p.last[: rng.randint(2, 5)])
        elif shape == 1:
            names.append(p.first[: rng.randint(2, 5)])
        else:
            names.append(f"{p.first[:3]} {p.last[:3]}")
        roll = rng.random()
        if roll < 0.1:
            codes.append(f"FF-{len(members) + rng.randrange(10**6):07d}")  # nobody's
        elif roll < 0.2:
            codes.append(p.code.lower())
        else:
            codes.append(p.code)
        q = rng.choice(with_phone).phone or ""
        shape = rng.randrange(3)
        if shape == 0:
            phones.append(q[-4:])
        elif shape == 1:
            phones.append(q[-7:])
        else:
            phones.append(f"{q[:3]} {q[3:6]} {q[6:]}")
    return {"name": names, "code": codes, "phone": phones}


PLAN_INDEXES = {
    "code": ("members_by_card_code",),
    "phone": ("members_by_phone_tail",),
    "name": ("members_by_last_name", "members_by_first_name"),
}


def search_plans(database: Any, org_id: str) -> dict[str, dict[str, Any]]:
    """Each kind's plan on the seeded table and whether it is an index range (the kind's
    indexes named, no scan of ``members``)."""
    from cloud import db

    terms = {"code": ["ff-0000001"], "phone": ["4567"], "name": ["smi"]}
    out = {}
    for by, words in terms.items():
        lines = database.transact(
            lambda tx, by=by, words=words: db.member_search_plan(tx, org_id, by, words, limit=20),
            write=False,
        )
        text = "\n".join(lines)
        scans = ("SCAN members" in text) or ("Seq Scan on members" in text)
        uses = all(index in text for index in PLAN_INDEXES[by])
        out[by] = {"index_range": uses and not scans, "plan": lines}
    return out


def measure_search(
    database: Any, org_id: str, members: list[Person], settings: ConsoleSettings
) -> dict[str, Any]:
    """Time every query (one read transaction each, as a console page runs it)."""
    from cloud.console.search import search_members

    rng = random.Random(settings.seed + 1)
    queries = search_queries(members, settings.queries, rng)
    figures: dict[str, Any] = {}
    for kind, texts in queries.items():
        for text in texts[:10]:  # warm the pool's connections and the database's caches
            with database.read() as tx:
                search_members(tx, org_id, text)
        times, hits = [], []
        for text in texts:
            started = time.perf_counter()
            with database.read() as tx:
                found = search_members(tx, org_id, text)
            times.append((time.perf_counter() - started) * 1e3)
            hits.append(sum(1 for r in found if r["match"] == kind))
        figures[kind] = {
            "queries": len(texts),
            "p50_ms": percentile(times, 0.5),
            "p95_ms": percentile(times, 0.95),
            "p99_ms": percentile(times, 0.99),
            "max_ms": round(max(times), 2),
            "found_share": round(sum(1 for h in hits if h) / len(hits), 3),
            "mean_found": round(sum(hits) / len(hits), 1),
        }
    return figures


def search_backend(
    database_url: str, description: str, settings: ConsoleSettings, say: ProgressFn
) -> dict[str, Any]:
    from cloud import admin
    from cloud.db import Database
    from cloud.migrations import migrate

    database = Database(database_url, pool_size=4)
    try:
        migrate(database)
        org = admin.create_organization(
            database, "Console bench", "Main", "Europe/Berlin", datetime.now(UTC)
        )
        members = people(settings.members, random.Random(settings.seed))
        say(f"search: storing {settings.members:,} members")
        started = time.monotonic()
        seed_members(database, org.organization_id, members)
        seed_s = round(time.monotonic() - started, 1)
        say(f"search: {settings.queries} searches of each kind")
        figures = measure_search(database, org.organization_id, members, settings)
        plans = search_plans(database, org.organization_id)
    finally:
        database.close()
    return {
        "database": description,
        "members": settings.members,
        "seed_s": seed_s,
        **figures,
        "plans": plans,
        "index_ranges": all(p["index_range"] for p in plans.values()),
    }


# -- the live feed: the cloud child and its consoles ------------------------------------------------


def bench_app(database_url: str) -> Any:
    """The real cloud app with the live feed mounted at LIVE_PATH without sign-in."""
    from cloud.app import create_app
    from cloud.console.live import live_stream

    app = create_app(database_url)

    # The annotation is read by FastAPI from this module's globals (postponed annotations).
    async def live(request: Request, org: str) -> Any:
        return await live_stream(request, org)

    app.add_api_route(LIVE_PATH, live, methods=["GET"])
    return app


def _bench_worker(sock: Any, database_url: str, log_level: str, ready: Any) -> None:
    """One worker process of the bench's cloud (``cloud.serve._worker`` with ``bench_app``)."""
    from cloud.serve import _uvicorn_config, uvicorn_server

    app = bench_app(database_url)
    ready.set()
    uvicorn_server(_uvicorn_config(app, log_level)).run(sockets=[sock])


def serve_main(argv: list[str] | None = None) -> int:
    """The bench's cloud: ``kiosk cloud serve``'s socket, supervisor and server around
    ``bench_app``, on the database in ``FITFLOW_CLOUD_DB``, on 127.0.0.1 at a free port, with
    the worker count in ``argv[0]``. Prints ``cloud: serving on URL`` on stderr."""
    from cloud.db import Database
    from cloud.migrations import migrate
    from cloud.serve import Supervisor, _uvicorn_config, check_workers, listen, uvicorn_server

    args = sys.argv[1:] if argv is None else argv
    url, workers = os.environ["FITFLOW_CLOUD_DB"], int(args[0])
    check_workers(url, workers)
    database = Database(url, pool_size=1)
    try:
        migrate(database)
    finally:
        database.close()
    sock = listen("127.0.0.1", 0)
    print(
        f"cloud: serving on http://127.0.0.1:{sock.getsockname()[1]}", file=sys.stderr, flush=True
    )
    if workers == 1:
        uvicorn_server(_uvicorn_config(bench_app(url), "warning")).run(sockets=[sock])
        return 0

    class BenchSupervisor(Supervisor):
        def _start(self) -> tuple[Any, Any]:
            ready = self._context.Event()
            process = self._context.Process(
                target=_bench_worker, args=(sock, url, "warning", ready), name="cloud-worker"
            )
            process.start()
            return process, ready

    return BenchSupervisor(sock, url, workers, "warning").run()


class BenchCloud(CloudProcess):
    """The bench's cloud as a child process (``serve_main``)."""

    def command(self) -> list[str]:
        code = "import sys; from devtools.bench.console import serve_main; sys.exit(serve_main())"
        return [sys.executable, "-c", code, str(self.workers)]


class Consoles:
    """``count`` SSE clients of one organisation in an event loop of their own (a thread). Each
    keeps, per check-in id, the times (``time.monotonic()``) it received it; a stream that ends
    is opened again with ``Last-Event-ID`` and counted."""

    def __init__(self, url: str, org_id: str, count: int) -> None:
        self.url = url
        self.path = LIVE_PATH.format(org=org_id)
        self.count = count
        self.received: list[dict[str, list[float]]] = [{} for _ in range(count)]
        self.reconnects = [0] * count
        self.errors: list[str] = []
        self._ready = [threading.Event() for _ in range(count)]
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="bench-consoles", daemon=True)

    def __enter__(self) -> Consoles:
        self._thread.start()
        deadline = time.monotonic() + CONSOLE_TIMEOUT_S
        for ready in self._ready:
            if not ready.wait(max(0.0, deadline - time.monotonic())):
                self.close()
                raise BenchError(f"the consoles did not connect: {self.errors[:3]}")
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(CONSOLE_TIMEOUT_S)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main())
        self._loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        limits = httpx.Limits(max_connections=self.count + 8, max_keepalive_connections=0)
        timeout = httpx.Timeout(CONSOLE_TIMEOUT_S)
        async with httpx.AsyncClient(base_url=self.url, limits=limits, timeout=timeout) as http:
            tasks = [asyncio.create_task(self._console(n, http)) for n in range(self.count)]
            await self._stop.wait()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _console(self, n: int, http: httpx.AsyncClient) -> None:
        last: str | None = None
        got = self.received[n]
        while True:
            headers = {"Last-Event-ID": last} if last else {}
            try:
                async with http.stream("GET", self.path, headers=headers) as response:
                    if response.status_code != 200:
                        self.errors.append(f"console {n}: HTTP {response.status_code}")
                    else:
                        name, event_id = "", None
                        async for line in response.aiter_lines():
                            if line.startswith("event: "):
                                name = line[7:]
                            elif line.startswith("id: "):
                                event_id = line[4:]
                            elif line.startswith("data: ") and name == "checkin":
                                at = time.monotonic()
                                got.setdefault(json.loads(line[6:])["id"], []).append(at)
                                last = event_id
                            elif line == "":
                                if name == "ready":
                                    self._ready[n].set()
                                name, event_id = "", None
            except httpx.HTTPError as exc:
                self.errors.append(f"console {n}: {type(exc).__name__} {exc}")
            self.reconnects[n] += 1
            await asyncio.sleep(0.5)  # as EventSource's retry: a moment before opening again

    def have_all(self, ids: set[str]) -> bool:
        return all(ids <= set(got) for got in self.received)


def delivery_figures(
    answered: dict[str, float], consoles: Consoles, stored: set[str]
) -> dict[str, Any]:
    """Latencies (ms, from the door's answer to each receipt) and the exactly-once count."""
    latencies, duplicates, missing, strangers = [], 0, 0, 0
    for got in consoles.received:
        for checkin_id in stored:
            times = got.get(checkin_id, [])
            if not times:
                missing += 1
                continue
            duplicates += len(times) - 1
            if checkin_id in answered:
                latencies.append((times[0] - answered[checkin_id]) * 1e3)
        strangers += len(set(got) - stored)
    dropped = sum(consoles.reconnects)
    return {
        "deliveries": sum(sum(len(t) for t in got.values()) for got in consoles.received),
        "latency_ms": {
            "p50": percentile(latencies, 0.5),
            "p99": percentile(latencies, 0.99),
            "max": round(max(latencies), 2) if latencies else None,
            "before_answer": sum(1 for v in latencies if v < 0),
        },
        "duplicates": duplicates,
        "missing": missing,
        "unknown": strangers,
        "reconnects": dropped,
        "exactly_once": bool(stored) and duplicates == missing == strangers == dropped == 0,
    }


def live_backend(
    database_url: str,
    description: str,
    workers: int,
    settings: ConsoleSettings,
    say: ProgressFn,
) -> dict[str, Any]:
    """The live feed under load against a fresh cloud on ``database_url``."""
    from cloud.db import Database
    from cloud.migrations import migrate

    database = Database(database_url, pool_size=8)
    fleet_s = fleet_settings(
        interval_s=settings.interval_s,
        wake_poll_s=settings.wake_poll_s,
        checkins_per_min=settings.checkins_per_min,
        warmup_intervals=0.0,
        window_intervals=settings.window_s / settings.interval_s,
        gym_members=settings.gym_members,
        doors_per_gym=settings.doors,
        seed=settings.seed,
    )
    answered: dict[str, float] = {}
    try:
        migrate(database)
        with BenchCloud(database_url, workers) as cloud:
            assert cloud.url is not None
            fleet = Fleet(cloud.url, database, fleet_s, cloud.cpu_seconds)
            try:
                say(f"live: {settings.doors} doors of one gym enrolled")
                fleet.ensure(settings.doors)
                org_id = fleet.gyms[0].organization_id
                for door in fleet.doors:
                    door.client.upload = _timed(door.client.upload, answered)  # type: ignore[method-assign]
                say(f"live: {settings.consoles} consoles connected")
                with Consoles(cloud.url, org_id, settings.consoles) as consoles:
                    idle_before = cloud.cpu_seconds()
                    time.sleep(settings.idle_s)
                    cpu_before, started = cloud.cpu_seconds(), time.monotonic()
                    say(f"live: the doors upload for {settings.window_s:g} s")
                    step = fleet.run_step(settings.doors)
                    fleet.drain()
                    # Every check-in the doors made (``verify`` below counts them stored once).
                    stored = {j.item.id for d in fleet.doors for j in d.journal.values()}
                    deadline = time.monotonic() + SETTLE_S
                    while not consoles.have_all(stored) and time.monotonic() < deadline:
                        time.sleep(0.05)
                    seconds = time.monotonic() - started
                    cpu_after = cloud.cpu_seconds()
                verified = fleet.verify()
            finally:
                fleet.close()
    finally:
        database.close()
    cpu = None if cpu_before is None or cpu_after is None else round(cpu_after - cpu_before, 2)
    idle = None if idle_before is None or cpu_before is None else cpu_before - idle_before
    delivered = delivery_figures(answered, consoles, stored)
    return {
        "database": description,
        "workers": workers,
        "consoles": settings.consoles,
        "doors": settings.doors,
        "checkins": len(stored),
        "stored_exactly_once": verified["exactly_once"],
        **delivered,
        "exactly_once": delivered["exactly_once"] and verified["exactly_once"],
        "console_errors": consoles.errors[:5],
        "upload_p99_ms": step.by_path_p99_ms.get("/v1/checkins"),
        "seconds": round(seconds, 1),
        "cloud_cpu_seconds": cpu,
        "cloud_cpu_percent": None if cpu is None else round(100 * cpu / seconds, 1),
        "cloud_cpu_ms_per_checkin": None
        if cpu is None or not stored
        else round(1000 * cpu / len(stored), 2),
        # Before the doors started: the poller and the open consoles' heartbeats alone.
        "idle_cloud_cpu_percent": None
        if idle is None or not settings.idle_s
        else round(100 * idle / settings.idle_s, 1),
    }


def _timed(upload: Callable[..., Any], answered: dict[str, float]) -> Callable[..., Any]:
    """The door client's upload, noting when each item's first answer was read."""

    def timed(items: Any, **kw: Any) -> Any:
        answer = upload(items, **kw)
        at = time.monotonic()
        for item in items:
            answered.setdefault(item.id, at)
        return answer

    return timed


# -- the run ---------------------------------------------------------------------------------------


def collect_console(
    *,
    postgres_url: str | None,
    settings: ConsoleSettings | None = None,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Every figure as one JSON-ready dict (see the module docstring). Raises BenchError."""
    say = progress or (lambda _msg: None)
    s = settings or ConsoleSettings()
    results: dict[str, Any] = {
        "machine": machine(),
        "settings": asdict(s),
        "target_search_p95_ms": TARGET_SEARCH_P95_MS,
        "target_delivery_p99_ms": TARGET_DELIVERY_P99_MS,
        "search": {},
        "live": {},
        "postgres": POSTGRES_HINT,
    }
    with contextlib.ExitStack() as stack:
        scratch = stack.enter_context(postgres_scratch(postgres_url)) if postgres_url else None
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="kiosk-bench-console-")))
        backends = [("sqlite", f"sqlite:///{tmp / 'search.db'}", f"sqlite:///{tmp / 'live.db'}",
                     "a SQLite file in a temporary directory", 1)]  # fmt: skip
        if scratch is not None:
            url, description = scratch
            backends.append(("postgres", url, url, description, s.workers))
        for name, search_url, live_url, description, workers in backends:
            say(f"{name}: member search")
            results["search"][name] = search_backend(search_url, description, s, say)
            say(f"{name}: live feed, {workers} cloud process(es)")
            results["live"][name] = live_backend(live_url, description, workers, s, say)
        if scratch is not None:
            results["postgres"] = "measured"
    return results


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def report_console(r: dict[str, Any], out: TextIO) -> None:
    w = out.write
    m, s = r["machine"], r["settings"]
    heads = {"sqlite": "SQLite", "postgres": "PostgreSQL"}
    w(f"machine: {m['cpu']}, {m['cores']} cores, Python {m['python']} (doors and consoles run "
      "on it too)\n\n")  # fmt: skip
    w(f"member search over {s['members']:,} members, {s['queries']} searches of each kind\n")
    w("                     p50 ms    p95 ms    p99 ms    max ms   found  index range\n")
    for name, b in r["search"].items():
        for kind in ("name", "code", "phone"):
            f = b[kind]
            w(f"  {heads[name]:<10} {kind:<6} {_num(f['p50_ms'], 2):>8} {_num(f['p95_ms'], 2):>9} "
              f"{_num(f['p99_ms'], 2):>9} {_num(f['max_ms'], 2):>9} {f['found_share']:>6.0%}  "
              f"{'yes' if b['plans'][kind]['index_range'] else 'NO'}\n")  # fmt: skip
    w(f"\nlive feed: {s['consoles']} consoles, {s['doors']} doors at {s['checkins_per_min']:g} "
      f"check-ins a minute each for {s['window_s']:g} s\n")  # fmt: skip
    w("                 procs  check-ins  deliveries  p50 ms  p99 ms  max ms  cloud CPU s"
      "  exactly once\n")  # fmt: skip
    for name, b in r["live"].items():
        lat = b["latency_ms"]
        w(f"  {heads[name]:<14} {b['workers']:>5} {b['checkins']:>10} {b['deliveries']:>11} "
          f"{_num(lat['p50'], 0):>7} {_num(lat['p99'], 0):>7} {_num(lat['max'], 0):>7} "
          f"{_num(b['cloud_cpu_seconds'], 2):>12}  {'yes' if b['exactly_once'] else 'NO'}\n")  # fmt: skip
    for name, b in r["live"].items():
        w(f"  {heads[name]}: {_num(b['cloud_cpu_ms_per_checkin'], 1)} ms of cloud CPU a check-in "
          f"(its upload, the doors' pulls and heartbeats, {b['consoles']} deliveries); "
          f"{_num(b['idle_cloud_cpu_percent'], 1)}% of a core with the consoles open and no door\n")  # fmt: skip
    if "postgres" not in r["live"]:
        w(f"\nPostgreSQL: {r['postgres']}\n")
    w("\n")
    for name, b in r["search"].items():
        worst = max(b[k]["p95_ms"] or 0.0 for k in ("name", "code", "phone"))
        ok = worst <= r["target_search_p95_ms"] and b["index_ranges"]
        w(f"[{verdict(ok)}] {heads[name]} search: p95 at most {worst:.2f} ms on "
          f"{b['members']:,} members (target <= {r['target_search_p95_ms']:.0f} ms), every kind an "
          "index range\n")  # fmt: skip
    for name, b in r["live"].items():
        p99 = b["latency_ms"]["p99"]
        ok = b["exactly_once"] and p99 is not None and p99 <= r["target_delivery_p99_ms"]
        w(f"[{verdict(ok)}] {heads[name]} live feed: p99 {_num(p99, 0)} ms from the upload's "
          f"answer to each console (target <= {r['target_delivery_p99_ms']:.0f} ms), each of "
          f"{b['checkins']} check-ins to all {b['consoles']} consoles exactly once: "
          f"{'yes' if b['exactly_once'] else 'NO'}\n")  # fmt: skip


def run_console_bench(
    *,
    as_json: bool,
    postgres_url: str | None,
    out: TextIO,
    settings: ConsoleSettings | None = None,
) -> int:
    """Measure and print (progress on stderr). Exit code 0 even when a target is missed."""

    def progress(msg: str) -> None:
        print(f"bench: {msg}", file=sys.stderr, flush=True)

    results = collect_console(postgres_url=postgres_url, settings=settings, progress=progress)
    if as_json:
        out.write(json.dumps(results) + "\n")
    else:
        report_console(results, out)
    return 0


def console_settings(**overrides: Any) -> ConsoleSettings:
    return replace(ConsoleSettings(), **overrides)
