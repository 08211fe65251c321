"""``kiosk demo``: the real door loop on embedded defaults.

Simulated hardware only at the edges: a synthetic camera renders the seeded members' QR codes, mock
pins stand in for the relay, LEDs and buzzer. Everything between (decoder, parser, policy, journal with
durable commits) is the production code, and so are the sync agent and the reference cloud it talks
to on 127.0.0.1 (``devtools.demo_cloud``). ``--once`` plays the fixed scenario on a simulated clock and
then the sync story (upload, a change made in the cloud, an outage and the catch-up), so it finishes
in a few seconds; without it the scenario repeats in real time, synced every few seconds, until
Ctrl-C. A control file next to the demo database (``control.sqlite``) carries the owner page's
requests and the scanner's health, so "test the door" and "sync now" work in the demo too.

The owner page (``kiosk.web``) is served by the demo as well, on 127.0.0.1 in a thread of this
process (``web_port``): the real page on the demo's database opened read-only and on its control
file, with a random owner password per run, printed at start-up with the page's address.

An output whose reader has gone (``kiosk demo | head``) ends the demo: the first write that finds
the pipe closed stops the door, the sync and the page, and ``run_demo`` then raises that
BrokenPipeError, which the ``kiosk`` command turns into a quiet exit with code 141.

The embedded cloud (``devtools.demo_cloud``, FastAPI: the ``cloud`` extra) is imported only when
the demo runs with it: ``cloud=False`` (``--no-cloud``) needs nothing of the cloud.
"""

from __future__ import annotations

import json
import logging
import secrets
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from devtools.seed import (
    AFTER_CLOUD_CHANGE,
    CLOUD_CHANGE,
    DEMO_SALT,
    LEAVING,
    OUTAGE_S,
    SCENARIO,
    TAILGATES,
    WALKS_AWAY,
    WHILE_OFFLINE,
    Scan,
    demo_snapshot,
    scenario_with_passes,
)
from kiosk.config import Config, default_config, occupancy_rules
from kiosk.core.clock import Clock, SimClock, SystemClock
from kiosk.core.model import DoorEvent, Verdict
from kiosk.core.occupancy import Occupancy
from kiosk.data.control import (
    ControlError,
    ControlStore,
    OwnerRequest,
    RequestKind,
    RequestState,
    control_path,
)
from kiosk.data.store import Store
from kiosk.door.loop import DoorLoop, Outcome, stop_on_signals
from kiosk.door.parts import (
    build_door,
    build_passage_sensor,
    build_reader,
    build_signal,
    make_pin_factory,
    scanner_settings,
)
from kiosk.sync.agent import CycleReport

if TYPE_CHECKING:
    from devtools.demo_cloud import DemoCloud

log = logging.getLogger(__name__)

DEMO_FPS = 15
SHOW_CODE_S = 0.6  # how long each card is held in front of the camera
GAP_S = 1.2  # empty scene between cards
SYNC_EVERY_S = 2.0  # the continuous demo's sync cycle
SYNC_NOW_POLL_S = 0.25  # how often the continuous demo looks for the owner page's "sync now"
DOOR_TEST_POLL_S = 0.25  # how often it looks for a finished "test the door", to print it
WEB_HOST = "127.0.0.1"  # the demo's page is for this machine only
WEB_START_TIMEOUT_S = 15.0
WEB_STOP_TIMEOUT_S = 5.0
# Bob's class pack: his walked-away entry's class comes back to it in the cloud.
WALKED_AWAY_MEMBERSHIP = "ms-bob"
# BCM pins of the simulated turnstile's PASS contacts (free in the default wiring).
DEMO_ENTRY_PIN, DEMO_EXIT_PIN = 5, 6
# Between two exits through the simulated turnstile: longer than the contacts' bounce time.
EXIT_GAP_S = 2.0


class Turnstile:
    """The demo's simulated tripod turnstile: it closes its entry PASS contact (a mock pin) when a
    granted member goes through, and its exit contact when someone leaves. Closing a contact pulls
    the pin low (the contacts are wired to ground with the Pi's pull-up) and opens it again at
    once; ``clock`` is the demo's, so passages carry the door loop's own time."""

    def __init__(self, pin_factory, clock: Clock) -> None:
        self._entry = pin_factory.pin(DEMO_ENTRY_PIN)
        self._exit = pin_factory.pin(DEMO_EXIT_PIN)
        self._clock = clock

    def after(self, outcome: Outcome) -> None:
        """What the turnstile does after a decision: turns for a grant (unless the member walks
        away: ``WALKS_AWAY``) and for a refused member who pushes through behind someone
        (``TAILGATES``)."""
        member = outcome.checkin.member_id
        granted = outcome.checkin.decision is Verdict.GRANTED
        if (granted and member not in WALKS_AWAY) or (not granted and member in TAILGATES):
            self._turn(self._entry)

    def leave(self, count: int) -> None:
        """``count`` people leave through the exit side, ``EXIT_GAP_S`` apart."""
        for _ in range(count):
            self._clock.sleep(EXIT_GAP_S)
            self._turn(self._exit)

    @staticmethod
    def _turn(pin) -> None:
        pin.drive_low()
        pin.drive_high()


def demo_config(db_path: Path) -> Config:
    """The embedded defaults with mock pins and the demo's own database. (The demo's synthetic
    camera is built directly, not from ``camera.backend``: it is not a camera a door may use;
    ``camera.fps`` says its rate so that the owner page grades it against what it delivers.)"""
    config = default_config()
    return replace(
        config,
        door=replace(config.door, id="demo-door"),
        camera=replace(config.camera, fps=DEMO_FPS),
        store=replace(config.store, path=str(db_path)),
        # The simulated turnstile's passage contacts (mock pins, like everything else here).
        gpio=replace(
            config.gpio,
            pin_factory="mock",
            passage_entry_pin=DEMO_ENTRY_PIN,
            passage_exit_pin=DEMO_EXIT_PIN,
        ),
    )


def scenario_script(fps: int, scans: Sequence[Scan] = SCENARIO) -> list[tuple[str | None, int]]:
    """The synthetic camera's script: each card shown, then an empty scene."""
    script: list[tuple[str | None, int]] = [(None, int(GAP_S * fps))]
    for scan in scans:
        script += [(scan.payload, max(1, int(SHOW_CODE_S * fps))), (None, int(GAP_S * fps))]
    return script


@contextmanager
def _database(db: Path | None) -> Iterator[Path]:
    if db is not None:
        yield db
        return
    with tempfile.TemporaryDirectory(prefix="kiosk-demo-") as tmp:
        yield Path(tmp) / "kiosk.db"


@contextmanager
def _quiet(*logger_names: str) -> Iterator[None]:
    """Only errors from these loggers (and their children) while the demo runs."""
    loggers = [logging.getLogger(name) for name in logger_names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


class DemoError(Exception):
    """The demo cannot run as asked; the message says why."""


class DemoWebError(DemoError):
    """The demo's owner page could not start (e.g. its port is taken); the message says why."""


@dataclass(frozen=True, slots=True)
class DemoRuntime:
    """What a running demo is made of, handed to ``run_demo``'s ``on_start`` (e.g. to serve the
    owner page beside it): its configuration (``config.store.path`` is the demo database), the
    open store, the control file (None if it could not be opened) and the stop event."""

    config: Config
    store: Store
    control: ControlStore | None
    stop: threading.Event


def open_demo_control(db_path: Path) -> ControlStore | None:
    """The control file next to the demo database, or None (logged) when it cannot be opened:
    the demo then runs without the owner page's actions."""
    try:
        return ControlStore.open(control_path(db_path))
    except ControlError as exc:
        log.warning("the owner page's actions will not work in this demo: %s", exc)
        return None


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
    """Prints each decision as it happens, and what the sync agent and the cloud do: a line for
    people, or one JSON object per line. Thread-safe (the continuous demo syncs in a thread).

    When ``out`` turns out to be a pipe whose reader has gone, ``closed`` keeps that
    BrokenPipeError, ``on_closed`` is called (the demo stops) and nothing more is written."""

    def __init__(
        self,
        out: TextIO,
        as_json: bool,
        real_time: bool,
        on_closed: Callable[[], object] = lambda: None,
    ) -> None:
        self.out = out
        self.as_json = as_json
        # On the simulated clock no time passes while deciding: a latency figure would be a lie.
        self.real_time = real_time
        self.outcomes: list[Outcome] = []
        self.events: list[DoorEvent] = []
        self.closed: BrokenPipeError | None = None
        self._on_closed = on_closed
        self._lock = threading.Lock()

    def write(self, text: str) -> None:
        """Write ``text`` and flush it; nothing once the output is closed."""
        with self._lock:
            if self.closed is not None:
                return
            try:
                self.out.write(text)
                self.out.flush()
            except BrokenPipeError as exc:
                # Nobody reads any more (`kiosk demo | head` has what it wanted): the demo ends.
                self.closed = exc
                self._on_closed()

    def _emit(self, record: dict, text: str) -> None:
        self.write(json.dumps(record) + "\n" if self.as_json else text + "\n")

    def __call__(self, outcome: Outcome) -> None:
        # Called by the loop only after the journal row is committed.
        self.outcomes.append(outcome)
        c = outcome.checkin
        latency_ms = (
            round((outcome.acted_ns - outcome.captured_ns) / 1e6, 2) if self.real_time else None
        )
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
            # "card", "pass" (a phone pass) or None (not a credential at all).
            "credential": outcome.credential,
            "latency_ms": latency_ms,
        }
        verdict = "GRANTED" if c.decision is Verdict.GRANTED else "denied "
        who = outcome.member_name or "-"
        relay = f"relay {outcome.relay_ms} ms" if outcome.relay_ms else "relay closed"
        latency = f"  decided in {latency_ms:.1f} ms" if latency_ms is not None else ""
        phone = "  (phone pass)" if outcome.credential == "pass" else ""
        self._emit(
            record,
            f"{c.wall_time.astimezone():%H:%M:%S}  #{c.seq:<4} {verdict}  {c.reason.value:<20}"
            f" {who:<12} {relay}{latency}{phone}",
        )

    def sync(self, report: CycleReport, counts: dict[str, int]) -> None:
        """One sync cycle's outcome and the journal's state after it."""
        record = {
            "type": "sync",
            "ok": report.ok,
            "pushed": report.pushed,
            "pull": report.pull,
            "error": report.error,
            "pending": counts.get("pending", 0),
            "synced": counts.get("synced", 0),
        }
        if report.ok:
            pull = {"snapshot": "replica snapshot taken", "changes": "replica changes pulled"}
            parts = [f"uploaded {report.pushed}"]
            if report.pull in pull:
                parts.append(pull[report.pull])
            text = f"sync:    {', '.join(parts)}"
        else:
            text = f"sync:    FAILED ({report.error})"
        self._emit(
            record, f"{text}; journal {record['pending']} pending, {record['synced']} synced"
        )

    def cloud(self, event: str, words: str, **fields: object) -> None:
        self._emit({"type": "cloud", "event": event, **fields}, f"cloud:   {words}")

    def web(self, url: str, password: str) -> None:
        """Where the owner page is and its password for this run."""
        self._emit(
            {"type": "web", "url": url, "password": password},
            f"owner page: {url}  (password: {password})",
        )

    def console(self, url: str, email: str, password: str) -> None:
        """Where the front-desk console is, and this run's owner login."""
        self._emit(
            {"type": "console", "url": url, "email": email, "password": password},
            f"console: {url}  (owner: {email}, password: {password})",
        )

    def event(self, event: DoorEvent) -> None:
        """One door event (the turnstile's report, or its silence), once it is journaled."""
        self.events.append(event)
        names = {o.checkin.id: o.member_name for o in self.outcomes}
        who = names.get(event.checkin_id or "") or "-"
        record = {
            "type": "event",
            "id": event.id,
            "seq": event.seq,
            "at": event.wall_time.isoformat(),
            "kind": event.kind.value,
            "checkin": event.checkin_id,
            "name": None if who == "-" else who,
        }
        words = {
            "entry": "went through",
            "annulled": "did not go through: entry annulled",
            "tailgating": "passage with no check-in (tailgating)",
            "exit": "left",
        }.get(event.kind.value, event.kind.value)
        self._emit(
            record,
            f"{event.wall_time.astimezone():%H:%M:%S}  #{event.seq:<4} turnstile"
            f" {event.kind.value:<20} {who:<12} {words}",
        )

    def door_test(self, request: OwnerRequest) -> None:
        """A "test the door" from the owner page, answered by the door loop."""
        ok = request.state is RequestState.DONE
        self._emit(
            {"type": "door_test", "id": request.id, "ok": ok, "result": request.result},
            f"door test: {request.result}" if ok else f"door test: FAILED ({request.result})",
        )


def _sync_in_background(demo_cloud: DemoCloud, printer: _Printer, stop: threading.Event) -> None:
    """The continuous demo's sync agent: a cycle every couple of seconds, and at once when the
    owner page asks for one ("sync now", finished with that cycle's outcome). Printed when it
    moved check-ins, failed or was asked for (an idle cycle is one small request and not worth a
    line)."""
    counts_store = Store.open(demo_cloud.db_path)
    try:
        due = time.monotonic() + SYNC_EVERY_S
        while not stop.wait(SYNC_NOW_POLL_S):
            asked = demo_cloud.claim_sync_now()
            if not asked and time.monotonic() < due:
                continue
            report = demo_cloud.sync()
            due = time.monotonic() + SYNC_EVERY_S
            if report.pushed or not report.ok or asked:
                printer.sync(report, _journal_counts(counts_store))
    finally:
        counts_store.close()


class DemoWeb:
    """The owner page served in a thread of the demo: ``url``, and ``password`` for this run.
    Start with ``DemoWeb.start``; ``stop()`` ends it (safe to call twice)."""

    def __init__(self, server, thread: threading.Thread, sock, app, url: str, password: str):
        self._server = server
        self._thread = thread
        self._sock = sock
        self._app = app
        self.url = url
        self.password = password

    @classmethod
    def start(cls, config: Config, db_path: Path, port: int) -> DemoWeb:
        """Set a fresh random owner password (its salted hash in ``<name>-owner-password`` beside
        the demo database, mode 0600), then serve the page on ``WEB_HOST``:``port`` (0: a free
        port) and return once it accepts connections. Raises DemoWebError when the port cannot
        be used, the installed uvicorn cannot carry the page's connection guard, or the page
        does not come up within ``WEB_START_TIMEOUT_S``."""
        import uvicorn

        from kiosk.ops.owner_password import PasswordFileError, hash_password, save_password_hash
        from kiosk.web.app import create_app
        from kiosk.web.serve import UvicornMismatch, bind, listen_url, server_config

        password = secrets.token_urlsafe(12)  # 16 characters, 96 bits
        password_file = db_path.with_name(f"{db_path.stem}-owner-password")
        try:
            save_password_hash(password_file, hash_password(password))
        except PasswordFileError as exc:
            raise DemoWebError(f"the owner page's password: {exc}") from None
        try:
            sock = bind(WEB_HOST, port)
        except OSError as exc:
            raise DemoWebError(
                f"the owner page cannot listen on {WEB_HOST}:{port}: {exc.strerror or exc} "
                "(choose another --web-port, or --no-web)"
            ) from None
        port = sock.getsockname()[1]
        web_config = replace(
            config,
            web=replace(config.web, host=WEB_HOST, port=port, password_file=str(password_file)),
        )
        app = create_app(web_config)
        try:
            settings = server_config(app)  # the same bounds, guard and quiet as ``kiosk web``
        except UvicornMismatch as exc:
            sock.close()
            app.state.page.close()
            raise DemoWebError(f"the owner page: {exc}") from None
        # A browser's open connection must not hold up the demo's exit for long.
        settings.timeout_graceful_shutdown = 1
        server = uvicorn.Server(settings)
        # Outside the main thread uvicorn leaves the signal handlers alone: Ctrl-C stays the
        # demo's (stop_on_signals), which then stops this server.
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="demo-owner-page", daemon=True
        )
        web = cls(server, thread, sock, app, listen_url(WEB_HOST, port), password)
        thread.start()
        deadline = time.monotonic() + WEB_START_TIMEOUT_S
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                web.stop()
                raise DemoWebError(f"the owner page did not start on {WEB_HOST}:{port}")
            time.sleep(0.01)
        return web

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(WEB_STOP_TIMEOUT_S)
        self._sock.close()
        self._app.state.page.close()


def _journal_counts(store: Store) -> dict[str, int]:
    """The journal's rows by sync state: check-ins and door events together (both go up)."""
    checkins, events = store.counts_by_state(), store.event_counts_by_state()
    return {state: checkins.get(state, 0) + events.get(state, 0) for state in checkins | events}


def _newest_request_id(control: ControlStore) -> int | None:
    """The id of the newest owner request in the control file (0: none yet; None: unreadable)."""
    try:
        newest = control.recent_requests(1)
    except ControlError:
        return None
    return newest[0].id if newest else 0


def _report_door_tests(
    control: ControlStore, printer: _Printer, stop: threading.Event, after: int
) -> None:
    """Print each "test the door" the door loop answers while the demo runs: those newer than
    ``after``, the newest request when the demo started (read before anyone is told the demo
    runs, so a request made at once is news however late this thread starts); one last look once
    ``stop`` is set, so none answered is left out."""
    printed: set[int] = set()
    stopping = False
    while not stopping:
        stopping = stop.wait(DOOR_TEST_POLL_S)
        try:
            requests = control.recent_requests(10)
        except ControlError:
            continue  # the door loop logs the control file's trouble; try again
        for request in sorted(requests, key=lambda r: r.id):
            answered = request.state in (RequestState.DONE, RequestState.FAILED)
            if (
                request.kind is RequestKind.TEST_DOOR
                and answered
                and request.id > after
                and request.id not in printed
            ):
                printed.add(request.id)
                printer.door_test(request)


def _story(
    demo_cloud: DemoCloud,
    play,
    clock: Clock,
    printer: _Printer,
    store: Store,
    turnstile: Turnstile,
) -> None:
    """After the scenario, ``--once`` shows the cloud at work: the decisions are uploaded (Bob's
    annulled entry gives his class back), a change made in the cloud reaches the door, and with the
    cloud down some members leave, the door keeps admitting and the agent catches up once it is
    back."""
    printer.sync(demo_cloud.sync(), _journal_counts(store))
    # Bob's grant was annulled (he walked away): the upload gave his class back to the pack.
    left = demo_cloud.remaining_classes(WALKED_AWAY_MEMBERSHIP)
    printer.cloud(
        "class_returned",
        f"Bob's annulled entry gave his class back: {left} left in the pack",
        membership=WALKED_AWAY_MEMBERSHIP,
        remaining_classes=left,
    )
    demo_cloud.set_member_status(CLOUD_CHANGE.member_id, "ACTIVE")
    printer.cloud("member_changed", CLOUD_CHANGE.words, member=CLOUD_CHANGE.member_id)
    printer.sync(demo_cloud.sync(), _journal_counts(store))
    play([AFTER_CLOUD_CHANGE])
    demo_cloud.stop_cloud()
    printer.cloud("stopped", "stopped (the gym's internet is down)")
    turnstile.leave(LEAVING)
    # Past the anti-passback window, so Alice's next entry is a new visit.
    clock.sleep(OUTAGE_S)
    play(WHILE_OFFLINE)
    printer.sync(demo_cloud.sync(), _journal_counts(store))
    url = demo_cloud.start()
    printer.cloud("started", f"back at {url}", url=url)
    printer.sync(demo_cloud.sync(), _journal_counts(store))


def run_demo(
    *,
    db: Path | None,
    as_json: bool,
    once: bool,
    out: TextIO,
    clock: Clock | None = None,
    stop: threading.Event | None = None,
    cloud: bool = True,
    on_start: Callable[[DemoRuntime], None] | None = None,
    web_port: int | None = None,
) -> int:
    """Run the demo; returns the exit code. Without ``once`` it runs until ``stop`` is set or
    SIGINT/SIGTERM arrives. ``cloud=False`` runs the door alone on a locally seeded replica (no
    sync agent, no network at all). ``web_port`` serves the owner page on 127.0.0.1 at that port
    (0: a free one) for as long as the demo runs, its address and password printed first; None:
    no page. ``on_start`` is called once the store, the control file, the page and the cloud are
    up, before the door starts (its exceptions end the demo). Raises DemoError (DemoWebError
    when the page cannot start), StoreError, and the embedded cloud's errors; BrokenPipeError,
    once everything is closed, when ``out`` is a pipe whose reader has gone (the demo ends at the
    first write that finds it so)."""
    from hardware.fakes.synthetic import SyntheticCamera  # needs the 'vision' extra (OpenCV, segno)

    if cloud:
        from devtools.demo_cloud import DemoCloud  # FastAPI: the 'cloud' extra

    clock = clock or (SimClock() if once else SystemClock())
    stop = stop or threading.Event()
    # The demo prints the agent's and the cloud's failures itself; their log warnings would say
    # the same twice.
    with _database(db) as db_path, _quiet("kiosk.sync", "cloud"):
        config = demo_config(db_path)
        with Store.open(db_path) as store:
            _refuse_real_database(store)
            fresh = store.member_count() == 0
            printer = _Printer(
                out, as_json, real_time=not isinstance(clock, SimClock), on_closed=stop.set
            )
            control = open_demo_control(db_path)
            demo_cloud = (
                DemoCloud(db_path, clock, config.site.timezone, control=control) if cloud else None
            )
            pins = make_pin_factory("mock")
            door = build_door(config.gpio, pins.factory)
            signal = build_signal(config.gpio, config.feedback, pins.factory)
            passage = build_passage_sensor(config.gpio, pins.factory, clock)
            turnstile = Turnstile(pins.factory, clock)

            def after_decision(outcome: Outcome) -> None:
                printer(outcome)
                turnstile.after(outcome)

            syncer: threading.Thread | None = None
            door_tests: threading.Thread | None = None
            web: DemoWeb | None = None
            try:
                if web_port is not None:
                    web = DemoWeb.start(config, db_path, web_port)
                    printer.web(web.url, web.password)
                if demo_cloud is not None:
                    url = demo_cloud.start()
                    seeded = "seeded with the demo gym" if demo_cloud.seeded else "existing data"
                    printer.cloud("started", f"reference cloud at {url} ({seeded})", url=url)
                    printer.console(*demo_cloud.console_login())
                    printer.sync(demo_cloud.sync(), _journal_counts(store))
                elif fresh:
                    store.replace_replica(demo_snapshot(clock.wall(), config.site.timezone))
                if not as_json:
                    printer.write(
                        f"FitFlow Kiosk demo: door '{config.door.id}', database {db_path}"
                        f" ({'new' if fresh else 'existing'})\n"
                        f"simulated camera and pins;"
                        f" {'one pass of the scenario' if once else 'Ctrl-C to stop'}\n"
                    )
                settings = scanner_settings(config)

                def play(scans, *, repeat: bool = False) -> None:
                    camera = SyntheticCamera(
                        scenario_script(DEMO_FPS, scans),
                        width=config.camera.width,
                        height=config.camera.height,
                        fps=DEMO_FPS,
                        clock=clock.monotonic_ns,
                        sleep=clock.sleep,
                        loop=repeat,
                    )
                    loop = DoorLoop(
                        source=camera,
                        reader=build_reader(config.decoder),
                        store=store,
                        door=door,
                        signal=signal,
                        clock=clock,
                        settings=settings,
                        on_outcome=after_decision,
                        passage=passage,
                        on_event=printer.event,
                        control=control,
                    )
                    try:
                        loop.run(stop)
                    finally:
                        camera.close()

                if threading.current_thread() is threading.main_thread() and not once:
                    stop_on_signals(stop)
                news_after = _newest_request_id(control) if control is not None else None
                if on_start is not None:
                    on_start(DemoRuntime(config, store, control, stop))
                if demo_cloud is not None and not once:
                    syncer = threading.Thread(
                        target=_sync_in_background, args=(demo_cloud, printer, stop), daemon=True
                    )
                    syncer.start()
                if control is not None and news_after is not None and not once:
                    door_tests = threading.Thread(
                        target=_report_door_tests,
                        args=(control, printer, stop, news_after),
                        daemon=True,
                    )
                    door_tests.start()
                # The first round has Kim's phone pass in it; its codes are made for the time
                # they are shown, so the rounds that follow (without --once) are cards only.
                first_round = scenario_with_passes(clock.wall())
                play(first_round)
                if not once:
                    play(SCENARIO, repeat=True)
                expected = list(first_round)
                if demo_cloud is not None and once:
                    _story(demo_cloud, play, clock, printer, store, turnstile)
                    expected += [AFTER_CLOUD_CHANGE, *WHILE_OFFLINE]
            finally:
                stop.set()
                if syncer is not None:
                    syncer.join(10)
                if door_tests is not None:
                    door_tests.join(10)
                if web is not None:
                    web.stop()
                if demo_cloud is not None:
                    demo_cloud.close()
                signal.close()
                door.close()
                if passage is not None:
                    passage.close()
                if control is not None:
                    control.close()
            counts = _journal_counts(store)
            occupancy = store.occupancy(config.door.id, occupancy_rules(config), clock.wall())
            code = _summarise(printer, counts, as_json, fresh and once, expected, occupancy)
            if printer.closed is not None:
                raise printer.closed
            return code


def _summarise(
    printer: _Printer,
    counts: dict[str, int],
    as_json: bool,
    check: bool,
    expected_scans: list[Scan],
    occupancy: Occupancy,
) -> int:
    reasons = Counter(o.checkin.reason.value for o in printer.outcomes)
    events = Counter(e.kind.value for e in printer.events)
    verdicts = Counter(o.checkin.decision.value for o in printer.outcomes)
    got = [o.checkin.reason for o in printer.outcomes]
    expected = [scan.expect for scan in expected_scans]
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
        # What the turnstile reported: grants it did not turn for, passages with no grant.
        "annulled": events.get("annulled", 0),
        "tailgating": events.get("tailgating", 0),
        "occupancy": occupancy.now,
        "occupancy_max": occupancy.max,
        "scenario_ok": not mismatch if check else None,
    }
    if as_json:
        printer.write(json.dumps(summary) + "\n")
    else:
        printer.write(
            f"\n{summary['decisions']} decisions: {summary['granted']} granted,"
            f" {summary['denied']} denied; journal: {summary['pending']} pending upload,"
            f" {summary['synced']} synced\n"
            f"turnstile: {summary['annulled']} entry annulled, {summary['tailgating']} tailgating;"
            f" in the gym now {summary['occupancy']}, at most {summary['occupancy_max']} today\n"
        )
        if mismatch:
            printer.write(
                "scenario mismatch:\n"
                + "".join(
                    f"  expected {e.value:<20} got {g.value}\n"
                    for e, g in zip(expected, got, strict=False)
                )
            )
    return 1 if mismatch else 0
