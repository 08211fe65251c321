"""The door-loop half of ``kiosk bench``: scan-to-relay latency, idle cost and the scanner's memory.

``prepare(workdir)`` (in the bench process) renders frames to files and seeds a database;
``python -m devtools.bench.loop WORKDIR`` (a child process, so its memory and CPU are the scanner's
alone) runs the real door loop over those frames: the replay camera, the production reader, the real
store with durable commits, a relay on gpiozero mock pins. It prints one JSON object.
"""

from __future__ import annotations

import json
import resource
import statistics
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

BENCH_MEMBERS = 10_000  # replica size for the latency run: lookups must not depend on it
GRANTS = 300  # members presented during the latency run
# Every PASS_EVERY-th member shows a phone pass instead of a card (docs/passes.md), so the latency
# figures include the signature check. The bench's passes rotate every 300 s (the longest allowed
# period): the codes are made before the run and must still be in their window when shown on a
# slow machine; the period changes nothing in the work a check does.
PASS_EVERY = 3
BENCH_PASS_PERIOD_S = 300
IDLE_SECONDS = 3.0
IDLE_FPS = 30


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB. VmHWM is reset by exec; ru_maxrss is not (it
    would report the bench parent's memory, inherited through fork)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def bench_pass_id(i: int) -> str:
    """Member ``i``'s pass id: 8 base32 characters."""
    from sync.passes import pass_id_text

    return pass_id_text(i.to_bytes(5, "big"))


def _members_snapshot(now: datetime, count: int, passes: int):
    import hashlib

    from devtools.bench.passes import bench_key
    from kiosk.core.model import Member, Membership, MembershipType, MemberStatus
    from kiosk.core.passes import PassRecord
    from kiosk.data.replica import ReplicaSnapshot
    from sync.credentials import code_hash

    public = bench_key().public_key().public_bytes_raw()

    salt = hashlib.sha256(b"bench").digest()
    today = now.date()
    members, memberships = [], []
    for i in range(count):
        mid = f"m{i:07d}"
        members.append((Member(mid, "org-bench", f"Member{i}", "Bench", MemberStatus.ACTIVE),
                        code_hash(f"FF-{i:07d}", salt)))  # fmt: skip
        memberships.append(Membership(f"ms{i:07d}", mid, MembershipType.SUBSCRIPTION,
                                      today - timedelta(days=10), today + timedelta(days=10)))  # fmt: skip
    return ReplicaSnapshot(
        members=members,
        memberships=memberships,
        plans=(),
        opening_hours=(),
        closures=(),
        version=1,
        synced_at=now,
        code_salt=salt,
        # One key for every bench pass: the cost of a check does not depend on whose key it is.
        passes=[
            PassRecord(bench_pass_id(i), f"m{i:07d}", "org-bench", public, BENCH_PASS_PERIOD_S)
            for i in range(0, passes, PASS_EVERY)
        ],
    )


def prepare(workdir: Path, *, grants: int = GRANTS, members: int = BENCH_MEMBERS) -> None:
    """Write the latency frames (empty, code, code, empty per member), one idle frame, and the
    seeded database into ``workdir``. Frames are PGM: uncompressed, so replay costs little."""
    import cv2

    from devtools.bench.passes import bench_key
    from hardware.fakes.synthetic import compose_frame
    from kiosk.data.store import Store
    from sync.passes import pass_payload, step_at

    latency, idle = workdir / "latency", workdir / "idle"
    latency.mkdir(parents=True)
    idle.mkdir()
    empty = compose_frame(None, width=640, height=480, background="texture", seed=7)
    cv2.imwrite(str(idle / "empty.pgm"), empty)
    n = 0
    key = bench_key()
    step = step_at(time.time(), BENCH_PASS_PERIOD_S)
    for i in range(grants):
        if i % PASS_EVERY == 0:  # a phone pass, shown full-width on a screen held up close
            payload = pass_payload(key, "org-bench", bench_pass_id(i), step)
            screen, fraction = 0.5, 0.45
        else:
            payload, screen, fraction = f"FF-{i:07d}", 0.0, 0.35
        code = compose_frame(payload, width=640, height=480, code_fraction=fraction, screen=screen,
                             rotation_deg=(i * 37) % 360, background="texture", seed=i)  # fmt: skip
        for frame in (empty, code, code, empty):
            cv2.imwrite(str(latency / f"{n:06d}.pgm"), frame)
            n += 1
    with Store.open(workdir / "kiosk.db") as store:
        store.replace_replica(_members_snapshot(datetime.now(UTC), members, grants))


def _run(workdir: Path) -> dict:
    from gpiozero.pins.mock import MockFactory

    from hardware.camera.replay import ReplayCamera
    from hardware.decode.backends import make_decoder
    from hardware.fakes.signal import RecordingSignal
    from hardware.gpio.relay import RelayDoor
    from kiosk.core.clock import SystemClock
    from kiosk.core.model import PolicySettings, Verdict
    from kiosk.data.store import Store
    from kiosk.door.loop import DoorLoop, Outcome, ScannerSettings
    from kiosk.door.reader import QrReader

    pins = MockFactory()
    door = RelayDoor(17, active_high=True, max_pulse_ms=3000, pin_factory=pins)
    latencies_ms: list[float] = []
    pass_ms: list[float] = []
    denied = 0

    def measure(outcome: Outcome) -> None:
        nonlocal denied
        if outcome.decision.verdict is Verdict.GRANTED:
            # From the frame leaving the camera to the instant the relay pin was driven on.
            latencies_ms.append((door.last_on_ns - outcome.captured_ns) / 1e6)
            if outcome.credential == "pass":
                pass_ms.append(latencies_ms[-1])
            # Frames are replayed faster than real time: release now so the next grant makes a
            # fresh rising edge to time, instead of extending this pulse.
            door.release()
        else:
            denied += 1

    # Passback off: a rerun on the same database measures the same grants, not refusals.
    settings = ScannerSettings(
        door_id="bench", pulse_ms=50, debounce_s=3.0, policy=PolicySettings(passback_minutes=0)
    )
    with Store.open(workdir / "kiosk.db") as store:
        reader = QrReader(make_decoder("zxing"))
        loop = DoorLoop(source=ReplayCamera(workdir / "latency"), reader=reader, store=store,
                        door=door, signal=RecordingSignal(), clock=SystemClock(),
                        settings=settings, on_outcome=measure)  # fmt: skip
        loop.run(threading.Event())

        # Idle: one empty scene at the camera's frame rate; the loop's own CPU share.
        idle_source = ReplayCamera(workdir / "idle", fps=IDLE_FPS, loop=True)
        stop = threading.Event()
        idle = DoorLoop(source=idle_source, reader=QrReader(make_decoder("zxing")), store=store,
                        door=door, signal=RecordingSignal(), clock=SystemClock(),
                        settings=settings)  # fmt: skip
        timer = threading.Timer(IDLE_SECONDS, stop.set)
        cpu0, wall0 = time.process_time(), time.monotonic()
        timer.start()
        idle.run(stop)
        cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    door.close()
    return {
        "grants": len(latencies_ms),
        "pass_grants": len(pass_ms),
        "denied": denied,
        # Every grant, cards and passes together; the passes' own figures beside them.
        "scan_to_relay_ms": _percentiles(latencies_ms),
        "pass_scan_to_relay_ms": _percentiles(pass_ms),
        "idle": {
            "frames": idle.frames,
            "fps": round(idle.frames / wall, 1),
            "cpu_percent_of_one_core": round(100 * cpu / wall, 1),
        },
        "rss_mb": round(peak_rss_mb(), 1),
        "replica_members": BENCH_MEMBERS,
    }


def _percentiles(values_ms: list[float]) -> dict[str, float | None]:
    """p50, p99 (nearest rank) and max of ``values_ms``, in ms; None for no values."""
    ordered = sorted(values_ms)
    if not ordered:
        return {"p50": None, "p99": None, "max": None}
    return {
        "p50": round(statistics.median(ordered), 3),
        "p99": round(ordered[int(0.99 * (len(ordered) - 1))], 3),
        "max": round(ordered[-1], 3),
    }


if __name__ == "__main__":
    print(json.dumps(_run(Path(sys.argv[1]))))
