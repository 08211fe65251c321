"""The device half of ``kiosk bench --sync``: the real sync agent, instrumented, in its own process.

``python -m devtools.bench.sync_child`` reads one job (a JSON object) from stdin, so the device token
never shows in a process list, and prints one JSON object on stdout:

- ``{"mode": "cycles", "db", "url", "token", "cycles": n, ...}``: ``n`` agent rounds (push, pull
  or snapshot, heartbeat), each timed and its requests listed. Run in a child so its peak memory
  (VmHWM) is the agent's alone, not the bench's with its embedded cloud and seeded data, and so
  the agent does not share an interpreter lock with the cloud.
- ``{"mode": "agent", "db", "url", "token", ...}``: run the agent (``SyncAgent.run``, as ``kiosk
  sync`` does) until SIGTERM or SIGINT, then report the requests it made. The bench points it at a
  stalled cloud while the door loop runs on the same database.
- ``{"mode": "door", "db", "frames"}``: the real door loop (``DoorLoop``: replay camera looping
  over the folder ``frames`` at 30 frames/s, the production reader, the real store with durable
  commits, a relay on gpiozero mock pins) until SIGTERM or SIGINT; prints ``ready`` on stderr once
  the first frame is decided on, then reports every decision (when its frame was captured, when
  the door acted, the verdict) and every fault pattern shown, on the monotonic clock all processes
  share, so the bench can pick those that fell while the agent was applying a snapshot.

The instrumentation (``CountingTransport``, ``TimedStore``) only records: requests and writes go
through the real httpx transport and the real store. Optional job keys: ``timeout_s`` (default
10), and ``page_rows``, ``interval_s``, ``backoff_max_s``, ``wake_poll_s`` (default: the
configuration's defaults).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from devtools.bench.loop import peak_rss_mb
from kiosk.data.replica import ApplyResult
from kiosk.data.store import Store


@dataclass(frozen=True, slots=True)
class Exchange:
    """One HTTP request as the device made it. ``status`` is None when no answer came (timeout,
    refused connection); ``ms`` is the time from sending until the answer's body was read to its
    end (or the failure); ``started`` is ``time.perf_counter()`` when it was sent."""

    method: str
    path: str
    status: int | None
    ms: float
    started: float


class _TimedBody(httpx.SyncByteStream):
    """An answer's body, passed through; calls ``done()`` once when it was read or closed."""

    def __init__(self, inner: httpx.SyncByteStream, done: Any) -> None:
        self._inner = inner
        self._done = done

    def __iter__(self) -> Iterator[bytes]:
        yield from self._inner
        self._finish()

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            self._finish()

    def _finish(self) -> None:
        if self._done is not None:
            done, self._done = self._done, None
            done()


class CountingTransport(httpx.HTTPTransport):
    """The real HTTP transport, recording every request in ``exchanges`` (appended when the
    answer's body has been read, or at once when the request failed)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.exchanges: list[Exchange] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        started = time.perf_counter()

        def record(status: int | None) -> None:
            ms = (time.perf_counter() - started) * 1e3
            self.exchanges.append(Exchange(request.method, request.url.path, status, ms, started))

        try:
            response = super().handle_request(request)
        except Exception:
            record(None)
            raise
        assert isinstance(response.stream, httpx.SyncByteStream)
        response.stream = _TimedBody(response.stream, lambda: record(response.status_code))
        return response

    def since(self, mark: int) -> list[Exchange]:
        """The exchanges recorded after ``mark`` (an earlier ``len(self.exchanges)``)."""
        return self.exchanges[mark:]


class TimedStore(Store):
    """The real store, noting when the agent applied a checkpoint and when it marked rows synced
    (``time.perf_counter()`` after each call returned), so the bench can time the steps of one
    cycle without reaching into the agent."""

    applied: list[tuple[float, ApplyResult]]
    synced_marks: list[float]

    def _timed_init(self) -> None:
        self.applied = []
        self.synced_marks = []

    @classmethod
    def open(cls, path: Path, **kwargs: Any) -> TimedStore:  # type: ignore[override]
        store = super().open(path, **kwargs)
        assert isinstance(store, TimedStore)
        store._timed_init()
        return store

    def apply_checkpoint(self, *args: Any, **kwargs: Any) -> ApplyResult:
        result = super().apply_checkpoint(*args, **kwargs)
        self.applied.append((time.perf_counter(), result))
        return result

    def mark_synced(self, *args: Any, **kwargs: Any) -> int:
        marked = super().mark_synced(*args, **kwargs)
        self.synced_marks.append(time.perf_counter())
        return marked


def current_rss_mb() -> float | None:
    """This process's resident memory now, in MB (VmRSS), or None where /proc is missing."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def _settings(job: dict[str, Any]):
    """The agent's settings: the configuration's defaults, with the job's overrides."""
    from dataclasses import replace

    from kiosk.config import default_config
    from kiosk.sync.agent import sync_settings

    settings = sync_settings(default_config())
    overrides = {k: job[k] for k in ("page_rows", "interval_s", "backoff_max_s", "wake_poll_s")}
    return replace(settings, **{k: v for k, v in overrides.items() if v is not None})


def _client(job: dict[str, Any], transport: CountingTransport, clock: Any):
    from kiosk import __version__
    from kiosk.sync.client import CloudClient

    return CloudClient(
        job["url"],
        job["token"],
        transport=transport,
        timeout_s=job["timeout_s"],
        clock=clock,
        software_version=__version__,
    )


def run_cycles(job: dict[str, Any]) -> dict[str, Any]:
    """``job["cycles"]`` agent rounds, one after the other, each described by ``_one_cycle``;
    then the journal's pending count, the replica's member count and this process's memory."""
    from kiosk.core.clock import SystemClock
    from kiosk.sync.agent import SyncAgent

    rss_start = current_rss_mb()
    transport = CountingTransport()
    clock = SystemClock()
    with TimedStore.open(Path(job["db"])) as store, _client(job, transport, clock) as client:
        agent = SyncAgent(store, client, _settings(job), clock, sleep=time.sleep)
        cycles = [_one_cycle(agent, store, transport) for _ in range(int(job["cycles"]))]
        pending = store.counts_by_state().get("pending", 0)
        members = store.member_count()
    return {
        "cycles": cycles,
        "pending": pending,
        "members": members,
        "rss_start_mb": None if rss_start is None else round(rss_start, 1),
        "rss_peak_mb": round(peak_rss_mb(), 1),
    }


def _one_cycle(agent: Any, store: TimedStore, transport: CountingTransport) -> dict[str, Any]:
    """One ``agent.cycle()``: what it reported, every request (method, path, status, ms), and
    when it applies: ``drained_s`` (from the round's start until the last upload was marked
    synced) and ``snapshot`` (from the first snapshot page asked for until the switch: rows,
    pages, the time from the checkpoint to the switch and of the switch itself, and the window
    ``[start_ns, end_ns]`` on the monotonic clock, to match the door's decisions against)."""
    mark, applied_mark, synced_mark = (
        len(transport.exchanges),
        len(store.applied),
        len(store.synced_marks),
    )
    started = time.perf_counter()
    report = agent.cycle()
    seconds = time.perf_counter() - started
    exchanges = transport.since(mark)
    out: dict[str, Any] = {
        "ok": report.ok,
        "error": report.error,
        "pull": report.pull,
        "pushed": report.pushed,
        "rejected": report.rejected,
        "seconds": seconds,
        "exchanges": [[e.method, e.path, e.status, round(e.ms, 3)] for e in exchanges],
    }
    synced = store.synced_marks[synced_mark:]
    if synced:
        out["drained_s"] = synced[-1] - started
    pages = [e for e in exchanges if e.path.endswith("/replica/snapshot")]
    switches = [(at, r) for at, r in store.applied[applied_mark:] if r.switch_ms is not None]
    if pages and switches:
        switched_at, result = switches[-1]
        out["snapshot"] = {
            "rows": result.count,
            "version": result.checkpoint.version,
            "seconds": switched_at - pages[0].started,
            "pages": len(pages),
            # The page requests' time; the next page is asked for while one is written, so this
            # overlaps the device's parsing and writing.
            "fetch_s": sum(e.ms for e in pages) / 1e3,
            "apply_ms": round(result.write_ms, 1),
            "switch_ms": round(result.switch_ms or 0.0, 2),
            "window_ns": [int(pages[0].started * 1e9), int(switched_at * 1e9)],
        }
    return out


def run_agent(job: dict[str, Any]) -> dict[str, Any]:
    """``SyncAgent.run`` until SIGTERM/SIGINT (as ``kiosk sync``); returns the requests made."""
    from kiosk.core.clock import SystemClock
    from kiosk.door.loop import stop_on_signals
    from kiosk.sync.agent import SyncAgent

    stop = threading.Event()
    stop_on_signals(stop)
    transport = CountingTransport()
    clock = SystemClock()
    with Store.open(Path(job["db"])) as store, _client(job, transport, clock) as client:
        agent = SyncAgent(store, client, _settings(job), clock, sleep=stop.wait)
        print("ready", file=sys.stderr, flush=True)
        agent.run(stop)
    answered = [e for e in transport.exchanges if e.status is not None]
    return {
        "requests": len(transport.exchanges),
        "answered": len(answered),
        "rss_peak_mb": round(peak_rss_mb(), 1),
    }


def run_door(job: dict[str, Any]) -> dict[str, Any]:
    """The door loop over the replayed frames until SIGTERM/SIGINT; every decision and fault."""
    from gpiozero.pins.mock import MockFactory

    from hardware.camera.replay import ReplayCamera
    from hardware.decode.backends import make_decoder
    from hardware.fakes.signal import RecordingSignal
    from hardware.gpio.relay import RelayDoor
    from kiosk.core.clock import SystemClock
    from kiosk.core.model import PolicySettings
    from kiosk.door.loop import DoorLoop, Outcome, ScannerSettings, stop_on_signals
    from kiosk.door.reader import QrReader

    stop = threading.Event()
    stop_on_signals(stop)
    door = RelayDoor(17, active_high=True, max_pulse_ms=3000, pin_factory=MockFactory())
    decisions: list[list[Any]] = []
    faults: list[int] = []

    class TimedSignal(RecordingSignal):
        def show(self, pattern: str) -> None:
            if pattern == "fault":
                faults.append(time.monotonic_ns())
            super().show(pattern)

    def record(outcome: Outcome) -> None:
        if not decisions:
            print("ready", file=sys.stderr, flush=True)
        decisions.append([outcome.captured_ns, outcome.acted_ns, outcome.decision.verdict.value])
        door.release()  # frames come faster than pulses end: a fresh edge for the next grant

    # Passback off and a short debounce: the same members come round every few seconds.
    settings = ScannerSettings(
        door_id="bench", pulse_ms=50, debounce_s=1.0, policy=PolicySettings(passback_minutes=0)
    )
    with Store.open(Path(job["db"])) as store:
        loop = DoorLoop(source=ReplayCamera(job["frames"], fps=30, loop=True),
                        reader=QrReader(make_decoder("zxing")), store=store, door=door,
                        signal=TimedSignal(), clock=SystemClock(), settings=settings,
                        on_outcome=record)  # fmt: skip
        loop.run(stop)
    door.close()
    return {
        "decisions": decisions,
        "faults": faults,
        "frames": loop.frames,
        "rss_peak_mb": round(peak_rss_mb(), 1),
    }


def main() -> int:
    import logging

    # The agent's warnings (every failed round against a stalled cloud) are expected here.
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    job = json.loads(sys.stdin.read())
    job.setdefault("timeout_s", 10.0)
    for key in ("page_rows", "interval_s", "backoff_max_s", "wake_poll_s"):
        job.setdefault(key, None)
    modes = {"cycles": run_cycles, "agent": run_agent, "door": run_door}
    if job.get("mode") not in modes:
        print(f"unknown mode {job.get('mode')!r}; expected one of {sorted(modes)}", file=sys.stderr)
        return 2
    print(json.dumps(modes[job["mode"]](job)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
