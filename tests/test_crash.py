"""Reliability: an acknowledged check-in survives SIGKILL at any point; the database is never corrupt.

A child process runs the real door loop (real store with durable commits, real relay adapter on mock
pins) and acknowledges each check-in on a pipe only after ``append_checkin`` returned (what the demo's
``--json`` output and the owner page rely on). The parent kills it with SIGKILL at a random moment,
then checks ``PRAGMA integrity_check`` and that every acknowledged id is in the journal. The same
database goes through all the crashes, so recovery after a crash is exercised too.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import select
import signal
import sqlite3
import subprocess
import sys
import threading
import time

from gpiozero.pins.mock import MockFactory

from devtools.seed import SCENARIO, demo_snapshot
from fakes import FakeCamera, FakeDecoder, Scene, clean_env
from hardware.fakes.signal import RecordingSignal
from hardware.gpio.relay import RelayDoor
from kiosk.core.clock import SystemClock
from kiosk.data.store import Store
from kiosk.door.loop import DoorLoop, ScannerSettings

# Not KIOSK_*: that prefix is the configuration's, and strict loading rejects unknown names.
KILLS = int(os.environ.get("FITFLOW_TEST_CRASH_KILLS", "200"))
CODES = [scan.payload for scan in SCENARIO]


def _door_loop_child(db_path: str, ack_fd: int, seed: int) -> None:
    """Child: scan an endless stream of codes, acknowledging each committed check-in."""
    rng = random.Random(seed)
    # A code on every frame (debounce off), so each frame is a decision and a durable commit;
    # far more frames than a child lives to see.
    scene = Scene([[rng.choice(CODES)] for _ in range(5_000)])
    with Store.open(db_path) as store:
        door = RelayDoor(17, active_high=True, max_pulse_ms=3000, pin_factory=MockFactory())

        def ack(outcome) -> None:
            os.write(ack_fd, (outcome.checkin.id + "\n").encode())

        loop = DoorLoop(
            source=FakeCamera(scene, SystemClockAsSim()),
            reader=FakeDecoder(scene),
            store=store,
            door=door,
            signal=RecordingSignal(),
            clock=SystemClock(),
            settings=ScannerSettings(door_id="door-1", debounce_s=0.0, pulse_ms=100),
            on_outcome=ack,
        )
        loop.run(threading.Event())
    os._exit(0)


class SystemClockAsSim:
    """FakeCamera advances its clock per frame; against the real clock that is a no-op."""

    def advance(self, seconds: float) -> None:
        pass

    def monotonic_ns(self) -> int:
        return time.monotonic_ns()


def _read_acks(fd: int, wanted: int) -> bytes:
    """Read the ack pipe until ``wanted`` acknowledgements arrived (or the child died)."""
    data = b""
    while data.count(b"\n") < wanted:
        # The child writes an acknowledgement, or dies (end of file): the bound only ends a
        # hang, so the kill point is chosen by the acknowledgements alone.
        ready, _, _ = select.select([fd], [], [], 120.0)
        chunk = os.read(fd, 65536) if ready else b""
        if not chunk:
            break
        data += chunk
    return data


def _complete_lines(data: bytes) -> list[str]:
    # A line cut by the kill was never fully acknowledged: only complete lines count.
    return [line for line in data.decode().split("\n")[:-1] if line]


def test_acknowledged_checkins_survive_random_sigkill(tmp_path):
    db = tmp_path / "kiosk.db"
    with Store.open(db) as store:
        store.replace_replica(demo_snapshot(SystemClock().wall(), "UTC"))
    rng = random.Random(20261122)
    ctx = multiprocessing.get_context("fork")
    acknowledged: list[str] = []
    for i in range(KILLS):
        read_fd, write_fd = os.pipe()
        child = ctx.Process(target=_door_loop_child, args=(str(db), write_fd, i), daemon=True)
        child.start()
        os.close(write_fd)
        # Kill points: after a random number of acknowledged commits (0 = during start-up), plus
        # a jitter below one commit's duration, so the kill lands anywhere in the commit cycle.
        data = _read_acks(read_fd, rng.randint(0, 20))
        time.sleep(rng.uniform(0.0, 0.002))
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        assert child.exitcode == -signal.SIGKILL
        data += _read_acks(read_fd, 10**9)  # whatever was written before the kill
        acknowledged += _complete_lines(data)
        os.close(read_fd)

    assert len(acknowledged) > KILLS, "the children should have committed check-ins"
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        stored = {row[0] for row in conn.execute("SELECT id FROM checkins")}
        seqs = [row[0] for row in conn.execute("SELECT seq FROM checkins ORDER BY seq")]
    missing = set(acknowledged) - stored
    assert not missing, f"{len(missing)} acknowledged check-ins lost"
    assert seqs == list(range(1, len(seqs) + 1)), "the per-device sequence has a gap"


def test_demo_json_lines_are_durable_when_the_demo_is_killed(tmp_path):
    """End to end through the CLI: every decision line `kiosk demo --json` printed is in the journal
    after a SIGKILL."""
    db = tmp_path / "demo.db"
    proc = subprocess.Popen(
        [sys.executable, "-m", "kiosk", "demo", "--json", "--db", str(db)],
        stdout=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )
    lines = []
    try:
        deadline = time.monotonic() + 300  # bounds a hang only
        while len(lines) < 2 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            record = json.loads(line)
            if record["type"] == "decision":  # the demo also prints sync and cloud lines
                lines.append(record)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert len(lines) == 2
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        stored = {row[0] for row in conn.execute("SELECT id FROM checkins")}
    assert {line["id"] for line in lines} <= stored
