"""``kiosk demo``: the real door loop on embedded defaults.

Simulated hardware only at the edges: a synthetic camera renders the seeded members' QR codes, mock
pins stand in for the relay, LEDs and buzzer. Everything between (decoder, parser, policy, journal with
durable commits) is the production code. ``--once`` plays the fixed scenario on a simulated clock, so
it finishes in about a second; without it the scenario repeats in real time until Ctrl-C.
"""

from __future__ import annotations

import json
import logging
import tempfile
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TextIO

from kiosk.clock import Clock, SimClock, SystemClock
from kiosk.config import Config, default_config
from kiosk.model import Verdict
from kiosk.parts import (
    build_door,
    build_reader,
    build_signal,
    make_pin_factory,
    scanner_settings,
)
from kiosk.scanner import DoorLoop, Outcome, stop_on_signals
from kiosk.seed import DEMO_SALT, SCENARIO, demo_snapshot
from kiosk.store import Store

log = logging.getLogger(__name__)

DEMO_FPS = 15
SHOW_CODE_S = 0.6  # how long each card is held in front of the camera
GAP_S = 1.2  # empty scene between cards


def demo_config(db_path: Path) -> Config:
    """The embedded defaults with mock pins and the demo's own database. (The demo's synthetic
    camera is built directly, not from ``camera.backend``: it is not a camera a door may use.)"""
    config = default_config()
    return replace(
        config,
        door=replace(config.door, id="demo-door"),
        store=replace(config.store, path=str(db_path)),
        gpio=replace(config.gpio, pin_factory="mock"),
    )


def scenario_script(fps: int) -> list[tuple[str | None, int]]:
    """The synthetic camera's script: each scenario card shown, then an empty scene."""
    script: list[tuple[str | None, int]] = [(None, int(GAP_S * fps))]
    for scan in SCENARIO:
        script += [(scan.payload, max(1, int(SHOW_CODE_S * fps))), (None, int(GAP_S * fps))]
    return script


@contextmanager
def _database(db: Path | None) -> Iterator[Path]:
    if db is not None:
        yield db
        return
    with tempfile.TemporaryDirectory(prefix="kiosk-demo-") as tmp:
        yield Path(tmp) / "kiosk.db"


class DemoError(Exception):
    """The demo cannot run as asked; the message says why."""


def _refuse_real_database(store: Store) -> None:
    """Demo check-ins must never land in a real device's journal (the sync agent would upload
    them). A database is the demo's when it is new, or holds the demo's replica."""
    if store.member_count() > 0 and store.code_salt() != DEMO_SALT:
        raise DemoError(
            f"{store.path} holds a real member replica, not the demo's: the demo only runs on its "
            "own database (leave out --db, or give a new file)"
        )
    if store.member_count() == 0 and store.checkin_count() > 0:
        raise DemoError(
            f"{store.path} has check-ins but no replica, like a device that has not synced yet: "
            "the demo only runs on its own database (leave out --db, or give a new file)"
        )


class _Printer:
    """Prints each decision as it happens: a line for people, or one JSON object per line."""

    def __init__(self, out: TextIO, as_json: bool, real_time: bool) -> None:
        self.out = out
        self.as_json = as_json
        # On the simulated clock no time passes while deciding: a latency figure would be a lie.
        self.real_time = real_time
        self.outcomes: list[Outcome] = []

    def __call__(self, outcome: Outcome) -> None:
        # Called by the loop only after the journal row is committed.
        self.outcomes.append(outcome)
        c = outcome.checkin
        latency_ms = (
            round((outcome.acted_ns - outcome.captured_ns) / 1e6, 2) if self.real_time else None
        )
        if self.as_json:
            record = {
                "type": "decision",
                "id": c.id,
                "seq": c.seq,
                "at": c.wall_time.isoformat(),
                "door": c.door_id,
                "decision": c.decision.value,
                "reason": c.reason.value,
                "member": c.member_id,
                "name": outcome.member_name,
                "relay_ms": outcome.relay_ms,
                "detail": outcome.decision.detail,
                "latency_ms": latency_ms,
            }
            self.out.write(json.dumps(record) + "\n")
        else:
            verdict = "GRANTED" if c.decision is Verdict.GRANTED else "denied "
            who = outcome.member_name or "-"
            relay = f"relay {outcome.relay_ms} ms" if outcome.relay_ms else "relay closed"
            latency = f"  decided in {latency_ms:.1f} ms" if latency_ms is not None else ""
            self.out.write(
                f"{c.wall_time.astimezone():%H:%M:%S}  #{c.seq:<4} {verdict}  {c.reason.value:<20}"
                f" {who:<12} {relay}{latency}\n"
            )
        self.out.flush()


def run_demo(
    *,
    db: Path | None,
    as_json: bool,
    once: bool,
    out: TextIO,
    clock: Clock | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Run the demo; returns the exit code. Without ``once`` it runs until ``stop`` is set or
    SIGINT/SIGTERM arrives."""
    from hardware.synthetic import SyntheticCamera  # needs the 'vision' extra (OpenCV, segno)

    clock = clock or (SimClock() if once else SystemClock())
    stop = stop or threading.Event()
    with _database(db) as db_path:
        config = demo_config(db_path)
        with Store.open(db_path) as store:
            _refuse_real_database(store)
            seeded = store.member_count() == 0
            if seeded:
                store.replace_replica(demo_snapshot(clock.wall(), config.site.timezone))
            if not as_json:
                out.write(
                    f"FitFlow Kiosk demo: door '{config.door.id}', database {db_path}"
                    f" ({'seeded with demo members' if seeded else 'existing database'})\n"
                    f"simulated camera and pins; {'one pass of the scenario' if once else 'Ctrl-C to stop'}\n"
                )
            camera = SyntheticCamera(
                scenario_script(DEMO_FPS),
                width=config.camera.width,
                height=config.camera.height,
                fps=DEMO_FPS,
                clock=clock.monotonic_ns,
                sleep=clock.sleep,
                loop=not once,
            )
            pins = make_pin_factory("mock")
            door = build_door(config.gpio, pins.factory)
            signal = build_signal(config.gpio, config.feedback, pins.factory)
            printer = _Printer(out, as_json, real_time=not isinstance(clock, SimClock))
            settings = scanner_settings(config)
            loop = DoorLoop(
                source=camera,
                reader=build_reader(config.decoder),
                store=store,
                door=door,
                signal=signal,
                clock=clock,
                settings=settings,
                on_outcome=printer,
            )
            if threading.current_thread() is threading.main_thread() and not once:
                stop_on_signals(stop)
            try:
                loop.run(stop)
            finally:
                camera.close()
                signal.close()
                door.close()
            counts = store.counts_by_state()
            return _summarise(printer, counts, out, as_json, seeded and once)


def _summarise(
    printer: _Printer, counts: dict[str, int], out: TextIO, as_json: bool, check: bool
) -> int:
    reasons = Counter(o.checkin.reason.value for o in printer.outcomes)
    verdicts = Counter(o.checkin.decision.value for o in printer.outcomes)
    got = [o.checkin.reason for o in printer.outcomes]
    expected = [scan.expect for scan in SCENARIO]
    # Only a freshly seeded --once run has a known expected sequence (a reused database remembers
    # earlier entries, so anti-passback legitimately changes the outcome).
    mismatch = check and got != expected
    summary = {
        "type": "summary",
        "decisions": len(printer.outcomes),
        "granted": verdicts.get("granted", 0),
        "denied": verdicts.get("denied", 0),
        "reasons": dict(sorted(reasons.items())),
        "pending": counts.get("pending", 0),
        "synced": counts.get("synced", 0),
        "relay_pulses": sum(1 for o in printer.outcomes if o.relay_ms > 0),
        "scenario_ok": not mismatch if check else None,
    }
    if as_json:
        out.write(json.dumps(summary) + "\n")
    else:
        out.write(
            f"\n{summary['decisions']} decisions: {summary['granted']} granted,"
            f" {summary['denied']} denied; journal: {summary['pending']} pending upload,"
            f" {summary['synced']} synced\n"
        )
        if mismatch:
            out.write(
                "scenario mismatch:\n"
                + "".join(
                    f"  expected {e.value:<20} got {g.value}\n"
                    for e, g in zip(expected, got, strict=False)
                )
            )
    out.flush()
    return 1 if mismatch else 0
