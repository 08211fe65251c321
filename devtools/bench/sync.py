"""``kiosk bench --sync``: the sync figures, on loopback against the reference cloud.

For each cloud backend (SQLite in a temporary directory; PostgreSQL when a URL is given) the bench
runs ``EmbeddedCloud`` in this process and the device's real sync agent (``SyncAgent`` over
``CloudClient``, real HTTP on 127.0.0.1, the configuration's default batch and page sizes) in a
child process (``devtools.bench.sync_child``), so the agent's memory is its own and it does not share
an interpreter lock with the cloud. It measures:

1. **Backlog drain**: an enrolled device whose replica is current goes offline and journals N
   check-ins (a mix of grants, class-pack uses and denials); the time from the first upload to no
   check-in pending, the requests made, and that the cloud then holds N check-ins and applied each
   class use exactly once.
2. **Snapshot**: the cloud holds M members with one membership each (seeded through the CSV
   importer, as an admin would); a fresh device takes the full snapshot: seconds (from the first
   page asked for to the switch), rows/s, how long the checkpoint took (indexes, staged changes,
   checks, fsync) and the switch itself, and the agent process's peak memory (VmHWM), also for
   M/10 members to show memory follows the page size, not the member count; then a second
   snapshot of the same device (the admin asked for one). With the door figures (not
   ``door=False``), on the SQLite cloud, **the door during a snapshot**: a real door loop
   (``devtools.bench.sync_child``'s door mode) scans member codes continuously on the same device
   database from before the first snapshot to after the second; its scan-to-relay times and fault
   patterns that fell while either snapshot was taken and switched (``door.during_snapshot``).
3. **Idle poll**: with nothing changed, each pull is one request answered 304 (counted on the
   device's HTTP transport); median latencies over ``IDLE_POLLS`` rounds (pull and heartbeat).

Requests are timed from sending until the answer's body was read (``CountingTransport``).

Then, once: **door unaffected**: the door loop's scan-to-relay latency (``devtools.bench.loop``, a child
process) with no sync agent, and with an agent running on the same database against a cloud that
accepts connections and never answers.

Failures of the machinery (a cloud that does not start, a child that crashes) raise ``BenchError``;
a missed target is a figure, not a failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from devtools.bench.run import verdict
from kiosk.core.model import ClockQuality, Decision, Now, Reason, Verdict

TARGET_DRAIN_S = 10.0  # a week of check-ins at a busy door (10,000) drains in under 10 s
TARGET_SYNC_RSS_MB = 60.0  # the sync process's peak memory
TARGET_P99_MS = 50.0  # scan-to-relay, as in devtools.bench.run
# A snapshot applies in under this many seconds per million members (from 100,000 members on;
# below that the fixed costs of a round dominate).
TARGET_SNAPSHOT_S_PER_MILLION = 60.0
SNAPSHOT_TARGET_FROM = 100_000
# Members whose codes the door is shown during the snapshots: each twice, then an empty frame.
DOOR_MEMBERS = 40
DOOR_READY_TIMEOUT_S = 120.0
# Peak memory at M members may exceed the figure at M/10 by at most this much to count as
# "bounded by the page size": a replica held in memory would grow by tens of MB per 100,000.
BOUNDED_GROWTH_MB = 8.0
IDLE_POLLS = 50
DRAIN_MEMBERS = 1000  # the drain gym's members; every 10th holds a class pack
CLASS_PACK_EVERY = 10
CLASS_PACK_BALANCE = 50
CHILD_TIMEOUT_S = 600.0
ENROL_TTL_MINUTES = 60
STALLED_TIMEOUT_S = 1.0  # the agent's request timeout against the stalled cloud (config minimum)

POSTGRES_HINT = (
    "not measured: add --postgres postgresql://USER@HOST:PORT/DBNAME to include it (the bench "
    "creates a scratch database there and drops it afterwards)"
)

ProgressFn = Callable[[str], None]


class BenchError(RuntimeError):
    """The benchmark could not run (the message says which part and why)."""


# -- seeding the cloud ------------------------------------------------------------------------------


def member_id(i: int) -> str:
    return f"m{i:07d}"


def membership_id(i: int) -> str:
    return f"ms{i:07d}"


def is_class_pack(i: int) -> bool:
    return i % CLASS_PACK_EVERY == 0


def members_csv(start: int, stop: int, now: datetime) -> str:
    """Importer CSV for members ``start..stop-1``, each with one membership: a class pack for
    every ``CLASS_PACK_EVERY``-th member, a subscription for the others. Pure."""
    begin = (now - timedelta(days=30)).date().isoformat()
    end = (now + timedelta(days=335)).date().isoformat()
    lines = [
        "member_id,first_name,last_name,code,membership_id,membership_type,start_date,"
        "end_date,remaining_classes"
    ]
    for i in range(start, stop):
        kind, balance = (
            ("CLASS_PACK", CLASS_PACK_BALANCE) if is_class_pack(i) else ("SUBSCRIPTION", "")
        )
        lines.append(
            f"{member_id(i)},Member{i},Bench,FF-{i:07d},{membership_id(i)},{kind},{begin},{end},"
            f"{balance}"
        )
    return "\n".join(lines) + "\n"


def seed_organization(database: Any, name: str, members: int, now: datetime) -> tuple[str, str]:
    """A new organisation with its gym and ``members`` members, imported in files of at most
    the importer's line limit (one transaction and one version each). Returns (org id, gym id)."""
    from cloud import admin, importer

    org = admin.create_organization(database, name, "Main", "Europe/Berlin", now)
    for start in range(0, members, importer.MAX_IMPORT_LINES):
        text = members_csv(start, min(members, start + importer.MAX_IMPORT_LINES), now)
        database.transact(
            lambda tx, text=text: importer.import_members(tx, org.organization_id, text, now)
        )
    return org.organization_id, org.gym_id


def enrol_device(cloud: Any, org_id: str, gym_id: str, name: str) -> tuple[str, str]:
    """Enrol a device through the real ``POST /v1/enrol``; returns (device id, token)."""
    from cloud import admin
    from kiosk import __version__
    from kiosk.sync.client import CloudClient

    now = datetime.now(UTC)
    code = cloud.app.state.cloud.database.transact(
        lambda tx: admin.create_enrolment_code(tx, org_id, gym_id, ENROL_TTL_MINUTES, now)
    )["code"]
    with CloudClient(cloud.url, None, software_version=__version__) as client:
        enrolment = client.enrol(code, name, __version__)
    return enrolment.device_id, enrolment.token


# -- the backlog --------------------------------------------------------------------------------


def backlog_decision(i: int, members: int) -> Decision:
    """The i-th journaled decision of the backlog: per 20 check-ins, 13 subscription grants, 3
    class-pack uses, 1 passback and 1 expired-member refusal, 2 unknown codes. Pure."""
    slot = i % 20
    who = (i * 7919) % members  # spread over the members, deterministically
    if 13 <= slot <= 15:
        packs = max(1, members // CLASS_PACK_EVERY)
        m = (who % packs) * CLASS_PACK_EVERY
        return Decision(Verdict.GRANTED, Reason.CLASS_PACK, member_id(m), membership_id(m), 1)
    if is_class_pack(who):
        who = (who + 1) % members
    if slot < 13:
        return Decision(Verdict.GRANTED, Reason.SUBSCRIPTION, member_id(who), membership_id(who))
    if slot == 16:
        return Decision(Verdict.DENIED, Reason.PASSBACK, member_id(who), membership_id(who))
    if slot == 17:
        return Decision(Verdict.DENIED, Reason.MEMBER_EXPIRED, member_id(who))
    return Decision(Verdict.DENIED, Reason.UNKNOWN_CODE)


def journal_backlog(db_path: Path, count: int, members: int) -> dict[str, int]:
    """Journal ``count`` check-ins through the door's own ``append_checkin`` (one durable commit
    each), one a minute over the last ``count`` minutes of an offline boot. Returns the class
    uses per membership id."""
    from kiosk.data.store import Store

    start = datetime.now(UTC) - timedelta(minutes=count)
    boot = f"bench-{secrets.token_hex(4)}"
    uses: dict[str, int] = {}
    with Store.open(db_path) as store:
        version = store.replica_info().version
        for i in range(count):
            decision = backlog_decision(i, members)
            now = Now(start + timedelta(minutes=i), (i + 1) * 60 * 10**9, boot,
                      ClockQuality.NTP_SYNCED)  # fmt: skip
            store.append_checkin(decision, door_id="front", replica_version=version, now=now)
            if decision.classes_used and decision.membership_id:
                uses[decision.membership_id] = uses.get(decision.membership_id, 0) + 1
    return uses


# -- the device side, in a child process --------------------------------------------------------


def run_child(job: dict[str, Any], what: str) -> dict[str, Any]:
    """Run ``devtools.bench.sync_child`` with ``job`` on stdin; its JSON answer."""
    result = subprocess.run(
        [sys.executable, "-m", "devtools.bench.sync_child"],
        input=json.dumps(job),
        capture_output=True,
        text=True,
        check=False,
        timeout=CHILD_TIMEOUT_S,
    )
    if result.returncode != 0:
        raise BenchError(f"{what}: the agent's process failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def device_cycles(db_path: Path, url: str, token: str, cycles: int, what: str) -> dict[str, Any]:
    answer = run_child(
        {"mode": "cycles", "db": str(db_path), "url": url, "token": token, "cycles": cycles}, what
    )
    failed = [c for c in answer["cycles"] if not c["ok"]]
    if failed:
        raise BenchError(f"{what}: a sync round failed: {failed[0]['error']}")
    return answer


def _requests_by_path(exchanges: list[list[Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for _method, path, _status, _ms in exchanges:
        counts[path] = counts.get(path, 0) + 1
    return counts


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 2) if values else None


# -- the measurements ---------------------------------------------------------------------------


def measure_drain(cloud: Any, org: tuple[str, str], workdir: Path, backlog: int) -> dict:
    """Figure 1: a backlog of ``backlog`` check-ins drained in one agent round."""
    from cloud import db

    database = cloud.app.state.cloud.database
    device_id, token = enrol_device(cloud, *org, "bench drain")
    path = workdir / "drain.db"
    device_cycles(path, cloud.url, token, 1, "drain: first sync")  # the replica, while online
    uses = journal_backlog(path, backlog, DRAIN_MEMBERS)
    answer = device_cycles(path, cloud.url, token, 1, "drain")
    cycle = answer["cycles"][0]
    drained_s = cycle.get("drained_s")

    def read(tx: Any) -> tuple[int, int]:
        held = db.journal_seqs_held(tx, device_id, 1, backlog)
        rows = db.replica_rows_by_id(tx, "membership", org[0], list(uses))
        spent = sum(CLASS_PACK_BALANCE - int(r["remaining_classes"]) for r in rows.values())
        return held, spent

    held, spent = database.transact(read, write=False)
    paths = _requests_by_path(cycle["exchanges"])
    upload_s = sum(e[3] for e in cycle["exchanges"] if e[1] == "/v1/checkins") / 1e3
    return {
        "backlog": backlog,
        "drained": cycle["pushed"],
        "rejected": cycle["rejected"],
        "pending_after": answer["pending"],
        "seconds": None if drained_s is None else round(drained_s, 3),
        "checkins_per_s": round(backlog / drained_s) if drained_s else None,
        "uploads": paths.get("/v1/checkins", 0),
        # Time spent waiting for the upload answers; the rest is the device's own work.
        "upload_wait_s": round(upload_s, 3),
        "requests": len(cycle["exchanges"]),
        "round_seconds": round(cycle["seconds"], 3),
        "cloud_rows": held,
        "class_uses": sum(uses.values()),
        "class_uses_in_cloud": spent,
        "rss_peak_mb": answer["rss_peak_mb"],
    }


def measure_snapshot(
    cloud: Any,
    org: tuple[str, str],
    workdir: Path,
    members: int,
    *,
    idle_polls: int,
    door: bool = False,
) -> dict:
    """Figure 2: a fresh device's full snapshot of ``members`` members. With ``idle_polls``,
    in the same child process, figure 3 (that many idle rounds); then, in another, a second
    snapshot of the same device (the admin asked for one). With ``door``, a door loop scans on
    the device's database throughout, and ``figures["door"]`` says how it fared while each
    snapshot was taken and switched (``door_during``)."""
    from cloud import admin

    device_id, token = enrol_device(cloud, *org, f"bench snapshot {members}")
    path = workdir / f"snapshot-{members}.db"
    what = f"snapshot of {members} members"
    with contextlib.ExitStack() as stack:
        scanning = None
        if door:
            frames = workdir / f"door-frames-{members}"
            door_frames(frames, members)
            scanning = stack.enter_context(DoorChild(path, frames, workdir))
        answer = device_cycles(path, cloud.url, token, 1 + idle_polls, what)
        figures = _snapshot_figures(answer["cycles"][0], what)
        windows = [figures.pop("window_ns")]
        figures.update(
            members=members,
            replica_members=answer["members"],
            rss_start_mb=answer["rss_start_mb"],
            rss_peak_mb=answer["rss_peak_mb"],
        )
        if idle_polls:
            figures["idle"] = idle_figures(answer["cycles"][1:])
            cloud.app.state.cloud.database.transact(
                lambda tx: admin.request_resnapshot(tx, org[0], device_id)
            )
            again = device_cycles(path, cloud.url, token, 1, f"second {what}")
            figures["resnapshot"] = _snapshot_figures(again["cycles"][0], f"second {what}")
            windows.append(figures["resnapshot"].pop("window_ns"))
        if scanning is not None:
            seen = scanning.finish()
            figures["door"] = door_during(seen, windows)
    return figures


def door_members(members: int) -> list[int]:
    """Which members the door is shown: up to ``DOOR_MEMBERS`` subscribers (no class pack, whose
    balance the scans would spend), spread over the gym. Pure."""
    if members <= 2 * DOOR_MEMBERS:
        return [i for i in range(members) if not is_class_pack(i)][:DOOR_MEMBERS]
    spread = (k * members // DOOR_MEMBERS for k in range(DOOR_MEMBERS))
    return [i + 1 if is_class_pack(i) else i for i in spread]  # picks are >= 2 apart: no repeat


def door_frames(folder: Path, members: int) -> None:
    """The frames the door replays (640x480 PGM, cheap to read): for each of ``door_members``, its
    code in two frames, then an empty one."""
    import cv2

    from hardware.fakes.synthetic import compose_frame

    folder.mkdir(parents=True)
    empty = compose_frame(None, width=640, height=480, background="texture", seed=7)
    n = 0
    for k, i in enumerate(door_members(members)):
        code = compose_frame(f"FF-{i:07d}", width=640, height=480, code_fraction=0.35,
                             rotation_deg=(k * 37) % 360, background="texture", seed=k)  # fmt: skip
        for frame in (code, code, empty):
            cv2.imwrite(str(folder / f"{n:06d}.pgm"), frame)
            n += 1


class DoorChild:
    """``devtools.bench.sync_child``'s door mode on the device database ``db``, from ``__enter__``
    (returns once it has decided on its first code) to ``finish()`` (SIGTERM; its figures).
    Raises BenchError when it does not start or fails."""

    def __init__(self, db: Path, frames: Path, workdir: Path) -> None:
        self._job = {"mode": "door", "db": str(db), "frames": str(frames)}
        self._out = workdir / f"{db.stem}.door.out"
        self._proc: subprocess.Popen | None = None
        self._err: list[str] = []
        self._reader: threading.Thread | None = None

    def __enter__(self) -> DoorChild:
        with self._out.open("w") as out:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "devtools.bench.sync_child"],
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=subprocess.PIPE,
                text=True,
            )
        assert self._proc.stdin is not None and self._proc.stderr is not None
        self._proc.stdin.write(json.dumps(self._job))
        self._proc.stdin.close()
        ready = threading.Event()
        stderr = self._proc.stderr

        def drain() -> None:  # read on, so that a chatty door never blocks on a full pipe
            for line in stderr:
                if line.strip() == "ready":
                    ready.set()
                else:
                    self._err.append(line)

        self._reader = threading.Thread(target=drain, name="door-stderr", daemon=True)
        self._reader.start()
        if not ready.wait(DOOR_READY_TIMEOUT_S) or self._proc.poll() is not None:
            self._stop()
            raise BenchError(f"door: the door loop did not start:\n{''.join(self._err)[-2000:]}")
        return self

    def finish(self) -> dict[str, Any]:
        """Stop the door (SIGTERM, as systemd does) and return its figures."""
        code = self._stop()
        if code != 0:
            raise BenchError(f"door: the door loop failed:\n{''.join(self._err)[-2000:]}")
        return json.loads(self._out.read_text().strip().splitlines()[-1])

    def _stop(self) -> int | None:
        if self._proc is None:
            return None
        proc, self._proc = self._proc, None
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        if self._reader is not None:
            self._reader.join(10)
        return proc.returncode

    def __exit__(self, *_exc: object) -> None:
        self._stop()


def _latencies(decisions: list[list[Any]]) -> dict[str, Any]:
    ms = sorted((acted - captured) / 1e6 for captured, acted, _verdict in decisions)
    if not ms:
        return {"p50": None, "p99": None, "max": None}
    return {
        "p50": round(statistics.median(ms), 3),
        "p99": round(ms[int(0.99 * (len(ms) - 1))], 3),
        "max": round(ms[-1], 3),
    }


def door_during(seen: dict[str, Any], windows: list[list[int]]) -> dict[str, Any]:
    """The door's figures while a snapshot was taken and switched (``windows``: monotonic ns,
    from the first page asked for to the switch): its decisions whose frame was captured then
    (scan-to-relay for a grant, scan-to-feedback for a refusal, in ms: frame captured to door
    acted) and the fault patterns it showed then (a commit or a read that failed, or a stalled
    loop). Pure."""

    def within(ns: int, window: list[int]) -> bool:
        return window[0] <= ns <= window[1]

    parts = []
    for window in windows:
        inside = [d for d in seen["decisions"] if within(d[0], window)]
        parts.append({
            "seconds": round((window[1] - window[0]) / 1e9, 3),
            "decisions": len(inside),
            "granted": sum(1 for d in inside if d[2] == "granted"),
            "faults": sum(1 for f in seen["faults"] if within(f, window)),
            **_latencies(inside),
        })  # fmt: skip
    inside_any = [d for d in seen["decisions"] if any(within(d[0], w) for w in windows)]
    return {
        **_latencies(inside_any),
        "decisions": len(inside_any),
        "faults": sum(p["faults"] for p in parts),
        "snapshots": parts,
        "decisions_total": len(seen["decisions"]),
        "faults_total": len(seen["faults"]),
        "frames": seen["frames"],
        "rss_peak_mb": seen["rss_peak_mb"],
    }


def _snapshot_figures(cycle: dict[str, Any], what: str) -> dict[str, Any]:
    snap = cycle.get("snapshot")
    if cycle["pull"] != "snapshot" or snap is None:
        raise BenchError(f"{what}: the agent did not take a snapshot")
    seconds = snap["seconds"]
    return {
        "rows": snap["rows"],
        "seconds": round(seconds, 3),
        "rows_per_s": round(snap["rows"] / seconds) if seconds > 0 else None,
        "pages": snap["pages"],
        "fetch_s": round(snap["fetch_s"], 3),
        "apply_ms": snap["apply_ms"],
        "switch_ms": snap["switch_ms"],
        "window_ns": snap["window_ns"],
    }


def idle_figures(cycles: list[dict[str, Any]]) -> dict[str, Any]:
    """Figure 3 from the idle rounds: requests and statuses of each pull, latencies. Pure."""
    pulls, heartbeats, statuses = [], [], set()
    pull_requests, round_requests, uploads = [], [], 0
    for cycle in cycles:
        replica = [e for e in cycle["exchanges"] if "/replica/" in e[1]]
        pull_requests.append(len(replica))
        round_requests.append(len(cycle["exchanges"]))
        statuses.update(e[2] for e in replica)
        pulls.extend(e[3] for e in replica)
        heartbeats.extend(e[3] for e in cycle["exchanges"] if e[1] == "/v1/heartbeat")
        uploads += sum(1 for e in cycle["exchanges"] if e[1] == "/v1/checkins")
    return {
        "polls": len(cycles),
        "pull_requests_min": min(pull_requests, default=0),
        "pull_requests_max": max(pull_requests, default=0),
        "pull_statuses": sorted(s for s in statuses if s is not None),
        "not_modified": sum(1 for c in cycles if c["pull"] == "not_modified"),
        "uploads": uploads,
        "round_requests_max": max(round_requests, default=0),
        "pull_ms_p50": _median(pulls),
        "heartbeat_ms_p50": _median(heartbeats),
        "round_ms_p50": _median([c["seconds"] * 1e3 for c in cycles]),
    }


def measure_backend(
    label: str,
    database_url: str,
    description: str,
    *,
    members: int,
    backlog: int,
    idle_polls: int,
    progress: ProgressFn,
    door: bool = False,
) -> dict[str, Any]:
    """Figures 1-3 against one cloud database (fresh organisations, so a shared database works);
    with ``door``, the door during the snapshots too (``snapshot["door"]``)."""
    from cloud.embedded import EmbeddedCloud, EmbeddedCloudError

    small = max(1, members // 10)
    with tempfile.TemporaryDirectory(prefix="kiosk-bench-sync-") as tmp:
        workdir = Path(tmp)
        try:
            cloud = EmbeddedCloud(database_url)
            cloud.start()
        except EmbeddedCloudError as exc:
            raise BenchError(f"{label}: the cloud did not start: {exc}") from exc
        try:
            database = cloud.app.state.cloud.database
            now = datetime.now(UTC)
            progress(f"{label}: seeding {members:,} + {small:,} + {DRAIN_MEMBERS:,} members (CSV)")
            started = time.perf_counter()
            big = seed_organization(database, "Bench big", members, now)
            tenth = seed_organization(database, "Bench tenth", small, now)
            drain_org = seed_organization(database, "Bench drain", DRAIN_MEMBERS, now)
            seed_s = time.perf_counter() - started
            progress(f"{label}: backlog drain of {backlog:,} check-ins")
            drain = measure_drain(cloud, drain_org, workdir, backlog)
            progress(
                f"{label}: snapshot of {members:,} members, {idle_polls} idle polls, a second snapshot"
                + (", a door scanning meanwhile" if door else "")
            )
            full = measure_snapshot(cloud, big, workdir, members, idle_polls=idle_polls, door=door)
            progress(f"{label}: snapshot of {small:,} members (memory comparison)")
            part = measure_snapshot(cloud, tenth, workdir, small, idle_polls=0)
        finally:
            cloud.stop()
    idle = full.pop("idle")
    return {
        "database": description,
        "seed": {"members": members + small + DRAIN_MEMBERS, "seconds": round(seed_s, 2)},
        "drain": drain,
        "snapshot": full,
        "snapshot_tenth": part,
        "idle": idle,
    }


# -- PostgreSQL: a scratch database ---------------------------------------------------------------


@contextlib.contextmanager
def postgres_scratch(url: str) -> Iterator[tuple[str, str]]:
    """A fresh database on the server of ``url`` (created here, dropped afterwards), yielding
    (its URL, a description). When the user may not create databases, the database of ``url``
    itself is used (the bench adds new organisations there each run; nothing is deleted)."""
    import urllib.parse

    try:
        import psycopg
        from psycopg import sql
    except ImportError:
        raise BenchError(
            "PostgreSQL needs psycopg: pip install 'fitflow-kiosk[postgres]'"
        ) from None
    from cloud.db import mask_password

    name = f"fitflow_bench_{os.getpid()}_{secrets.token_hex(3)}"
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except psycopg.errors.InsufficientPrivilege:
        yield url, f"{mask_password(url)} (no CREATEDB: new organisations in that database)"
        return
    except psycopg.Error as exc:
        raise BenchError(f"PostgreSQL at {mask_password(url)}: {exc}".strip()) from exc
    parts = urllib.parse.urlsplit(url)
    scratch = urllib.parse.urlunsplit(parts._replace(path=f"/{name}"))
    try:
        yield scratch, f"{mask_password(scratch)} (scratch database, dropped afterwards)"
    finally:
        with contextlib.suppress(psycopg.Error), psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


# -- the door with the agent against a stalled cloud ----------------------------------------------


class StalledCloud:
    """A TCP server on 127.0.0.1 that accepts connections and never answers (a hung cloud).
    ``connections`` counts the connections accepted."""

    def __init__(self) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.05)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self.connections = 0
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="stalled-cloud", daemon=True)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            self._held.append(conn)  # the request stays unanswered until stop()

    def __enter__(self) -> StalledCloud:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        for conn in self._held:
            conn.close()
        self._sock.close()


def _loop_child(workdir: Path) -> dict[str, Any]:
    result = subprocess.run(  # noqa: S603 - our own interpreter and module, no shell
        [sys.executable, "-m", "devtools.bench.loop", str(workdir)],
        capture_output=True,
        text=True,
        check=False,
        timeout=CHILD_TIMEOUT_S,
    )
    if result.returncode != 0:
        raise BenchError(f"door loop failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _door_with_agent(workdir: Path, stalled: StalledCloud) -> tuple[dict, int, dict]:
    """Run the agent child against ``stalled`` and the door loop meanwhile; returns the agent's
    figures, the connections it made during the loop run, and the loop's figures."""
    job = {"mode": "agent", "db": str(workdir / "kiosk.db"), "url": stalled.url,
           "token": "bench-device-token", "timeout_s": STALLED_TIMEOUT_S,
           "interval_s": 1.0, "backoff_max_s": 1.0, "wake_poll_s": 0.1}  # fmt: skip
    # Output to files, not pipes: nobody reads them while the loop runs, and a full pipe would
    # block the agent.
    out_path, err_path = workdir / "agent.out", workdir / "agent.err"
    with out_path.open("w") as out, err_path.open("w") as err:
        agent = subprocess.Popen(
            [sys.executable, "-m", "devtools.bench.sync_child"],
            stdin=subprocess.PIPE,
            stdout=out,
            stderr=err,
            text=True,
        )
    try:
        assert agent.stdin is not None
        agent.stdin.write(json.dumps(job))
        agent.stdin.close()
        deadline = time.monotonic() + 30
        while stalled.connections == 0:
            if agent.poll() is not None or time.monotonic() > deadline:
                raise BenchError("door: the sync agent did not reach the stalled cloud")
            time.sleep(0.01)
        before = stalled.connections
        with_agent = _loop_child(workdir)
        during = stalled.connections - before
        agent.terminate()  # SIGTERM: the agent stops as under systemd
        agent.wait(30)
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait(10)
    if agent.returncode != 0:
        raise BenchError(f"door: the sync agent failed:\n{err_path.read_text()[-2000:]}")
    figures = json.loads(out_path.read_text().strip().splitlines()[-1])
    return figures, during, with_agent


def measure_door(progress: ProgressFn) -> dict[str, Any]:
    """Figure 4: scan-to-relay with no agent, then with an agent on the same database retrying
    against a stalled cloud (1 s request timeout, retries at most 1 s apart, so it keeps
    reading the journal and writing its status while the door commits)."""
    from devtools.bench.loop import prepare

    with tempfile.TemporaryDirectory(prefix="kiosk-bench-door-") as tmp:
        workdir = Path(tmp)
        prepare(workdir)
        progress("door: scan-to-relay without a sync agent")
        alone = _loop_child(workdir)
        progress("door: scan-to-relay with the sync agent against a stalled cloud")
        with StalledCloud() as stalled:
            agent_figures, during, with_agent = _door_with_agent(workdir, stalled)
    return {
        "without_agent": alone["scan_to_relay_ms"],
        "with_agent_stalled_cloud": with_agent["scan_to_relay_ms"],
        "grants": [alone["grants"], with_agent["grants"]],
        "agent_requests_during_run": during,
        "agent_requests_answered": agent_figures["answered"],
        "agent_rss_peak_mb": agent_figures["rss_peak_mb"],
    }


# -- collecting and reporting ---------------------------------------------------------------------


def collect_sync(
    *,
    members: int,
    backlog: int,
    postgres_url: str | None,
    door: bool = True,
    idle_polls: int = IDLE_POLLS,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Every figure, as one JSON-ready dict (``door=False`` skips figure 4). The PostgreSQL
    server is reached first, so a wrong URL fails before minutes of measuring. Raises
    BenchError when a part cannot run."""
    from devtools.bench.run import machine
    from kiosk.config import default_config

    say = progress or (lambda _msg: None)
    if members < 10 or backlog < 1 or idle_polls < 1:
        raise BenchError("members must be at least 10, backlog and idle polls at least 1")
    sync = default_config().sync
    sizes: dict[str, Any] = {
        "members": members,
        "backlog": backlog,
        "idle_polls": idle_polls,
        "progress": say,
    }
    results: dict[str, Any] = {
        "machine": machine(),
        "members": members,
        "backlog": backlog,
        "batch_size": sync.batch_size,
        "page_rows": sync.page_rows,
        "backends": {},
        "postgres": POSTGRES_HINT,
        "door": None,
    }
    with contextlib.ExitStack() as stack:
        scratch = stack.enter_context(postgres_scratch(postgres_url)) if postgres_url else None
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="kiosk-bench-cloud-"))
        url = f"sqlite:///{Path(tmp) / 'cloud.db'}"
        results["backends"]["sqlite"] = measure_backend(
            "SQLite", url, "a SQLite file in a temporary directory", door=door, **sizes
        )
        if scratch is not None:
            url, description = scratch
            results["backends"]["postgres"] = measure_backend(
                "PostgreSQL", url, description, **sizes
            )
            results["postgres"] = "measured"
    if door:
        results["door"] = measure_door(say)
        results["door"]["during_snapshot"] = results["backends"]["sqlite"]["snapshot"].pop("door")
    return results


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def checks(r: dict[str, Any]) -> list[tuple[str, bool]]:
    """The targets, each as (plain words with the figures, met). Pure."""
    out: list[tuple[str, bool]] = []
    for name, b in r["backends"].items():
        d, s, t, idle = b["drain"], b["snapshot"], b["snapshot_tenth"], b["idle"]
        label = {"sqlite": "SQLite", "postgres": "PostgreSQL"}.get(name, name)
        drained = d["drained"] == d["backlog"] == d["cloud_rows"] and d["pending_after"] == 0
        out.append((
            f"{label}: backlog of {d['backlog']:,} drained in {_num(d['seconds'], 2)} s "
            f"({d['uploads']} uploads, cloud holds {d['cloud_rows']:,}, class uses "
            f"{d['class_uses_in_cloud']}/{d['class_uses']}) (target < {TARGET_DRAIN_S:.0f} s)",
            drained and d["class_uses_in_cloud"] == d["class_uses"]
            and d["seconds"] is not None and d["seconds"] < TARGET_DRAIN_S,
        ))  # fmt: skip
        growth = s["rss_peak_mb"] - t["rss_peak_mb"]
        out.append((
            f"{label}: snapshot of {s['members']:,} members in {_num(s['seconds'], 2)} s, agent "
            f"peak RSS {s['rss_peak_mb']:.1f} MB vs {t['rss_peak_mb']:.1f} MB at "
            f"{t['members']:,} (bounded: growth < {BOUNDED_GROWTH_MB:.0f} MB; target < "
            f"{TARGET_SYNC_RSS_MB:.0f} MB)",
            s["replica_members"] == s["members"] and growth < BOUNDED_GROWTH_MB
            and s["rss_peak_mb"] < TARGET_SYNC_RSS_MB,
        ))  # fmt: skip
        if s["members"] >= SNAPSHOT_TARGET_FROM:
            allowed = TARGET_SNAPSHOT_S_PER_MILLION * s["members"] / 1e6
            out.append((
                f"{label}: snapshot of {s['members']:,} members applied in "
                f"{_num(s['seconds'], 1)} s (target < {allowed:.0f} s: "
                f"{TARGET_SNAPSHOT_S_PER_MILLION:.0f} s per million members)",
                s["seconds"] < allowed,
            ))  # fmt: skip
        out.append((
            f"{label}: idle poll = {idle['pull_requests_max']} request answered "
            f"{'/'.join(map(str, idle['pull_statuses']))} in all {idle['polls']} polls, p50 "
            f"{_num(idle['pull_ms_p50'], 2)} ms",
            idle["pull_requests_min"] == idle["pull_requests_max"] == 1
            and idle["pull_statuses"] == [304] and idle["not_modified"] == idle["polls"],
        ))  # fmt: skip
    door = r.get("door")
    if door:
        alone, stalled = door["without_agent"], door["with_agent_stalled_cloud"]
        out.append((
            f"door with the sync agent against a stalled cloud: p99 {_num(stalled['p99'], 2)} ms"
            f" vs {_num(alone['p99'], 2)} ms without (target p99 <= {TARGET_P99_MS:.0f} ms)",
            stalled["p99"] is not None and stalled["p99"] <= TARGET_P99_MS,
        ))  # fmt: skip
        during = door.get("during_snapshot")
        if during is not None:
            out.append((
                f"door while the agent takes and switches a snapshot of {r['members']:,} members "
                f"(twice): p99 {_num(during['p99'], 2)} ms over {during['decisions']} decisions, "
                f"{during['faults']} fault(s) (target p99 <= {TARGET_P99_MS:.0f} ms, no fault)",
                during["p99"] is not None and during["p99"] <= TARGET_P99_MS
                and during["faults"] == 0 and during["decisions"] > 0,
            ))  # fmt: skip
    return out


def report_sync(r: dict[str, Any], out: TextIO) -> None:
    """The figures as a readable table, then the targets."""
    w = out.write
    m = r["machine"]
    w(f"machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}\n")
    w(f"sync settings: batch {r['batch_size']} check-ins, page {r['page_rows']} rows "
      "(configuration defaults); cloud on 127.0.0.1, agent in its own process\n\n")  # fmt: skip
    names = list(r["backends"])
    heads = {"sqlite": "SQLite", "postgres": "PostgreSQL"}
    w(f"{'':<44}" + "".join(f"{heads.get(n, n):>14}" for n in names) + "\n")

    def row(label: str, get: Callable[[dict], str]) -> None:
        w(f"{label:<44}" + "".join(f"{get(r['backends'][n]):>14}" for n in names) + "\n")

    row("cloud seeding, CSV importer (setup) s", lambda b: _num(b["seed"]["seconds"]))
    row(f"backlog drain: {r['backlog']:,} check-ins, s", lambda b: _num(b["drain"]["seconds"], 2))
    row("  check-ins/s", lambda b: _num(b["drain"]["checkins_per_s"], 0))
    row("  ... of which waiting for answers, s", lambda b: _num(b["drain"]["upload_wait_s"], 2))
    row("  uploads / requests in the round", lambda b: f"{b['drain']['uploads']} / "
        f"{b['drain']['requests']}")  # fmt: skip
    row("  check-ins in the cloud", lambda b: f"{b['drain']['cloud_rows']:,}")
    row(f"snapshot: {r['members']:,} members, s", lambda b: _num(b["snapshot"]["seconds"], 2))
    row("  page requests (overlapping the writes), s", lambda b: _num(b["snapshot"]["fetch_s"], 2))
    row("  rows (members + memberships)", lambda b: f"{b['snapshot']['rows']:,}")
    row("  rows/s", lambda b: _num(b["snapshot"]["rows_per_s"], 0))
    row("  checkpoint to switch (indexes, checks), ms", lambda b: _num(b["snapshot"]["apply_ms"]))
    row("  the switch itself (the pointer), ms", lambda b: _num(b["snapshot"]["switch_ms"], 2))
    row(
        "  second snapshot (same rows), s",
        lambda b: _num(b["snapshot"]["resnapshot"]["seconds"], 2),
    )
    row("  ... its switch, ms", lambda b: _num(b["snapshot"]["resnapshot"]["switch_ms"], 2))
    row("  agent peak RSS, MB", lambda b: _num(b["snapshot"]["rss_peak_mb"]))
    row(f"  ... at {max(1, r['members'] // 10):,} members, MB",
        lambda b: _num(b["snapshot_tenth"]["rss_peak_mb"]))  # fmt: skip
    row("  ... agent at start (imports), MB", lambda b: _num(b["snapshot"]["rss_start_mb"]))
    row("idle poll: requests per pull, status", lambda b: f"{b['idle']['pull_requests_max']}, "
        f"{'/'.join(map(str, b['idle']['pull_statuses']))}")  # fmt: skip
    row("  pull latency p50, ms", lambda b: _num(b["idle"]["pull_ms_p50"], 2))
    row("  heartbeat latency p50, ms", lambda b: _num(b["idle"]["heartbeat_ms_p50"], 2))
    row("  idle round p50 (pull + heartbeat), ms", lambda b: _num(b["idle"]["round_ms_p50"], 2))
    for name in names:
        w(f"{heads.get(name, name)} database: {r['backends'][name]['database']}\n")
    if "postgres" not in r["backends"]:
        w(f"PostgreSQL: {r['postgres']}\n")
    door = r.get("door")
    if door:
        alone, stalled = door["without_agent"], door["with_agent_stalled_cloud"]
        w("\nscan-to-relay, ms                              p50      p99      max\n")
        for label, f in (("no sync agent", alone), ("sync agent, stalled cloud", stalled)):
            w(f"  {label:<42}{_num(f['p50'], 2):>7}  {_num(f['p99'], 2):>7}  "
              f"{_num(f['max'], 2):>7}\n")  # fmt: skip
        w(f"  (the agent made {door['agent_requests_during_run']} requests to the stalled cloud "
          f"during the run; {door['agent_requests_answered']} were answered)\n")  # fmt: skip
        during = door.get("during_snapshot")
        if during is not None:
            w(f"  {'during both snapshots and switches':<42}{_num(during['p50'], 2):>7}  "
              f"{_num(during['p99'], 2):>7}  {_num(during['max'], 2):>7}\n")  # fmt: skip
            for n, part in enumerate(during["snapshots"], 1):
                w(f"    snapshot {n}: {part['seconds']:.1f} s, {part['decisions']} decisions "
                  f"({part['granted']} granted), p99 {_num(part['p99'], 2)} ms, "
                  f"{part['faults']} fault(s)\n")  # fmt: skip
    else:
        w("\ndoor with a stalled cloud: not measured in this run\n")
    w("\n")
    for text, ok in checks(r):
        w(f"[{verdict(ok)}] {text}\n")


def run_sync_bench(
    *,
    as_json: bool,
    members: int,
    backlog: int,
    postgres_url: str | None,
    out: TextIO,
    door: bool = True,
) -> int:
    """Measure and print (progress on stderr). Exit code 0 even when a target is missed: the
    figures are the product. Raises BenchError when the bench cannot run."""

    def progress(msg: str) -> None:
        print(f"bench: {msg}", file=sys.stderr, flush=True)

    results = collect_sync(
        members=members, backlog=backlog, postgres_url=postgres_url, door=door, progress=progress
    )
    if as_json:
        out.write(json.dumps(results) + "\n")
    else:
        report_sync(results, out)
    return 0
