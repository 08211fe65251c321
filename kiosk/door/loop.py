"""The door loop: frames → decode → debounce → parse → look up → decide → commit → act.

A code is a printed card (looked up by its keyed hash) or a signed phone pass (``FFP1:``, looked
up by its pass id; signature, time step and replay checked by ``kiosk.core.passes.check_pass``
before the member's rules apply as for a card; docs/passes.md). An admitted pass code's (pass,
step) is committed with its check-in, in the journal's file, so the same code is refused as
replayed from then on, across restarts and power cuts.

This is the imperative shell around the pure core (``sync.credentials``, ``kiosk.core.policy``). It owns
time, the camera, the relay and the feedback, and it never touches the network. Two rules shape it:

* **Commit, then act.** The journal row is committed (``synchronous=FULL``) before the relay is
  pulsed. A crash between the two loses a pulse, never a record; a failed commit means no pulse.
* **The relay is released on every exit path**: normal end, an exception inside the loop, SIGTERM.

The replica is read from the store (``kiosk.data.store``), which has the replica file in use
attached beside the journal. The sync agent builds a new replica in a file of its own and switches
a pointer to it; every frame (``step``) the loop asks the store to follow that pointer (one
``stat``), so a switch costs the door the frame in which it re-attaches the new file (about a
millisecond) and re-reads the code salt and the site's hours, never a scan's wait: the journal's
write lock, which each check-in needs, is never held for a replica.

**The turnstile talks back** (``passage``: the turnstile's PASS contacts through a
``PassageSensor``, optional). With the entry contact wired, each grant opens a pending
confirmation, kept in memory and in the journal (``passage_waits``, written with the check-in):
the next entry passage within ``passage_timeout_s`` confirms the oldest pending grant (an
``entry`` event), the deadline annuls it (``annulled``: no class used, no anti-passback, no visit
counted); an entry passage with nothing pending is ``tailgating``, an exit passage an ``exit``.
The loop never waits for a passage to decide the next code: passages are collected every
``step`` and matched by their own timestamps, and a grant left pending by a restart is resolved by
the next process (annulled once its deadline passed, else waited for). At an exit-side scanner
(``direction = "exit"``) every grant is an ``exit`` event, written with its check-in. The door's
occupancy (``kiosk.core.occupancy``: the journal's movements since the gym's last closing) is in
the health report, and refuses members as ``at_capacity`` when the owner set a capacity.

With a ``ControlStore`` (the owner page's control file) the loop also publishes its health (frame
rate, decode time, decisions per reason, occupancy; never member data) every ``health_every_s``,
and answers
the page's "test the door" requests. Neither may ever stall or stop the door: every call to the
control file is guarded, its failures logged at most every 30 s, and the file is opened with a
busy timeout of ``CONTROL_BUSY_TIMEOUT_MS`` (``open_control_store``), so a file another process
keeps locked costs a frame at most a few milliseconds. Given an ``open_control`` function, the
loop opens the file itself when it could not be opened at start-up, or again when it broke (not
merely busy), at most every ``CONTROL_REOPEN_S``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import signal
import threading
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any

from hardware.protocols import (
    ENTRY,
    EXIT,
    CameraError,
    Decoder,
    Door,
    Frame,
    FrameSource,
    PassageEvent,
    PassageSensor,
    Signal,
)
from kiosk.core.clock import AnchoredClock, Clock
from kiosk.core.debounce import Debouncer
from kiosk.core.model import (
    Checkin,
    Decision,
    DoorEvent,
    EventKind,
    MemberFacts,
    Now,
    PolicySettings,
    Reason,
    ReplicaInfo,
    SiteFacts,
    Verdict,
)
from kiosk.core.occupancy import Occupancy, OccupancyRules
from kiosk.core.passes import PassAccepted, check_pass
from kiosk.core.policy import decide, effective_time
from kiosk.data.control import ControlError, ControlStore, RequestKind, shared_wall
from kiosk.data.database import StoreError
from kiosk.data.journal import PassageWait
from kiosk.data.store import Store
from kiosk.door.systemd import Notifier
from sync.credentials import (
    Credential,
    Malformed,
    PhonePass,
    StaticCode,
    code_hash,
    parse_payload,
)
from sync.protocol import utc_text

log = logging.getLogger(__name__)

# Decode times kept for the health report's percentiles, and the window of its frame rate.
DECODE_SAMPLES = 300
FPS_WINDOW_S = 10.0
# A failing control file is logged at most this often (it fails on every poll while broken).
CONTROL_LOG_EVERY_S = 30.0
# A control file that could not be opened, or broke, is opened again at most this often (s).
CONTROL_REOPEN_S = 30.0
# How long a control-file call may wait for another process's lock (the frame thread makes it).
CONTROL_BUSY_TIMEOUT_MS = 20
# A failing journal write of a door event is logged at most this often (it is retried each frame).
EVENT_LOG_EVERY_S = 30.0
# Passages not yet journaled (the journal failing) kept at most; the oldest are dropped beyond.
MAX_UNWRITTEN_PASSAGES = 10_000
# A plan's visit limit counts the member's entries of today's local date: these are read from the
# journal (a local day starts at most a day ago, plus time-zone and daylight-saving shifts).
VISITS_LOOKBACK = timedelta(days=2)
# A grant's deadline is settled this long after it ran out, not at once: a passage just before it
# may still be on its way from the pin's event thread (milliseconds), and must confirm the grant,
# not arrive after its annulment as tailgating.
PASSAGE_SETTLE_S = 0.25
# The directions a door scanner can face (config door.direction).
DOOR_DIRECTIONS = (ENTRY, EXIT)


def open_control_store(path: Path) -> ControlStore:
    """The control file for the door loop: its calls wait at most ``CONTROL_BUSY_TIMEOUT_MS`` for
    a lock another process holds (a late health report is better than a late door). Raises
    ControlError."""
    return ControlStore.open(path, busy_timeout_ms=CONTROL_BUSY_TIMEOUT_MS)


@dataclass(frozen=True, slots=True)
class ScannerSettings:
    """The scanner's knobs, taken from the config. Times in seconds unless the name says ms."""

    door_id: str
    pulse_ms: int = 500
    debounce_s: float = 3.0
    stale_after_s: float = 2.0
    # How long ``read`` may block: bounds how late a SIGTERM or a stale camera is noticed.
    read_timeout_s: float = 0.1
    # The fault pattern is repeated this often while a fault lasts.
    fault_repeat_s: float = 2.0
    # After the database failed a scan, wait this long before trying the next one.
    store_retry_s: float = 1.0
    # The health report for the owner page is published this often (monotonic).
    health_every_s: float = 2.0
    # The control file is asked for a pending "test the door" this often.
    control_poll_s: float = 0.5
    policy: PolicySettings = field(default_factory=PolicySettings)
    # "entry", or "exit": an exit-side scanner, whose grants are exits (door events).
    direction: str = ENTRY
    # With the entry passage input: a grant not passed within this long is annulled.
    passage_timeout_s: float = 5.0
    # Without an exit signal: an entry counts as gone from the occupancy after this long (0: never).
    max_visit_minutes: float = 0.0

    def __post_init__(self) -> None:
        if self.direction not in DOOR_DIRECTIONS:
            raise ValueError(
                f"ScannerSettings.direction must be entry or exit, not {self.direction!r}"
            )
        if self.passage_timeout_s <= 0:
            raise ValueError("ScannerSettings.passage_timeout_s must be above 0 s")


# What a scanned code was, as ``Outcome.credential`` says it (None: not a credential at all).
CARD, PASS = "card", "pass"


@dataclass(frozen=True, slots=True)
class Outcome:
    """One decided scan, reported after its journal row is committed and the door acted.

    ``captured_ns`` is when the frame that carried the code left the camera; ``acted_ns`` when the
    relay was driven (granted) or the feedback started (denied), on the loop's monotonic clock.
    ``credential`` is what the code was: ``"card"`` (a printed code), ``"pass"`` (a phone pass,
    whose id is ``pass_id``) or None (malformed: not a credential).
    """

    checkin: Checkin
    decision: Decision
    relay_ms: int
    captured_ns: int
    acted_ns: int
    member_name: str | None = None
    credential: str | None = None

    @property
    def pass_id(self) -> str | None:
        """The phone pass the code named (None for a card or a malformed code)."""
        return self.checkin.pass_id


@dataclass(slots=True)
class _Waiting:
    """A grant waiting for its passage, as the loop tracks it: since ``grant_ns`` (0: granted
    before this process started, in another boot) until ``deadline_ns``, on the loop's clock."""

    checkin_id: str
    grant_ns: int
    deadline_ns: int


@dataclass(frozen=True, slots=True)
class _Decided:
    """A decision before it is journaled: what to record with it and what to report."""

    decision: Decision
    member_name: str | None = None
    credential: str | None = None
    pass_id: str | None = None
    pass_use: PassAccepted | None = None


class DoorLoop:
    """Runs the door. Construct with its parts; call ``run(stop)`` or ``step()``.

    ``on_outcome`` is called for every decision after the commit (the demo prints from it, the bench
    measures from it); an exception in it is logged and does not stop the door. ``control`` (None:
    none open) receives the health report and supplies "test the door" requests;
    ``open_control`` (None: never reopen) opens it again, lazily, when it is missing or broke.
    ``passage`` (None: not wired) is the turnstile's passage inputs; ``on_event`` is called for
    every door event after its commit, like ``on_outcome``.

    Raises StoreError when the journal cannot be read at start (its clock floor, the grants a
    previous process left waiting for their passage).
    """

    def __init__(
        self,
        *,
        source: FrameSource,
        reader: Decoder,
        store: Store,
        door: Door,
        signal: Signal,
        clock: Clock,
        settings: ScannerSettings,
        notifier: Notifier | None = None,
        on_outcome: Callable[[Outcome], None] | None = None,
        control: ControlStore | None = None,
        open_control: Callable[[], ControlStore] | None = None,
        passage: PassageSensor | None = None,
        on_event: Callable[[DoorEvent], None] | None = None,
    ) -> None:
        self.source = source
        self.reader = reader
        self.store = store
        self.door = door
        self.signal = signal
        self.clock = clock
        self.settings = settings
        self.notifier = notifier or Notifier(address="")
        self.on_outcome = on_outcome
        self._debouncer = Debouncer(settings.debounce_s)
        # Phone passes just admitted, by pass id, while they stay in view (``_pass_key``).
        self._admitted_passes = Debouncer(settings.debounce_s)
        # After a database failure, scans wait this long before the next attempt, so a full
        # disk is not hammered 30 times a second while a member holds up a card.
        self._store_retry_ns = int(settings.store_retry_s * 1e9)
        self._store_blocked_until_ns: int | None = None
        self._replica_key: tuple | None = None
        self._replica_version: int | None = None
        self._salt = b""
        self._site = SiteFacts()
        self._clock_floor: datetime | None = store.clock_floor()
        self._last_frame_ns = clock.monotonic_ns()
        self._camera_stale = False
        self._last_fault_shown_ns: int | None = None
        self.frames = 0
        self.decisions = 0
        self.decode_errors = 0
        self._decode_error_logged_ns: int | None = None
        # -- for the health report and the owner's requests --
        self.control = control
        self.open_control = open_control
        # A missing control file is opened again CONTROL_REOPEN_S after the caller's attempt.
        self._control_retry_ns: int | None = (
            None if control is not None else self._last_frame_ns + int(CONTROL_REOPEN_S * 1e9)
        )
        self._started_ns = self._last_frame_ns
        self._started_at = shared_wall(clock)
        self._decode_ns: deque[int] = deque(maxlen=DECODE_SAMPLES)
        self._frame_times_ns: deque[int] = deque()  # arrivals within the last FPS_WINDOW_S
        self._decision_counts: Counter[str] = Counter()
        self._last_decision: tuple[int, Decision] | None = None  # (monotonic ns, decision)
        self._last_pulse_ns: int | None = None
        self._health_due_ns: int | None = None  # None: publish at the next chance
        self._control_poll_ns: int | None = None
        self._control_logged_ns: int | None = None
        # -- the turnstile's passages --
        self.passage = passage
        self.on_event = on_event
        # Grants wait for their passage when the entry contact is wired at an entry door.
        self.confirming = (
            passage is not None and ENTRY in passage.directions and settings.direction == ENTRY
        )
        self._timeout_ns = int(settings.passage_timeout_s * 1e9)
        self._waiting: deque[_Waiting] = deque()  # oldest grant first
        self._passages: deque[PassageEvent] = deque()  # collected, not journaled yet
        self._event_counts: Counter[str] = Counter()
        self._event_logged_ns: int | None = None
        self._recover_waits(store.passage_waits(settings.door_id))

    # -- the loop ---------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Process frames until ``stop`` is set or a finite source ends (EOFError).

        The relay is released however this returns or raises. A camera that fails for good raises
        ``CameraError`` after the fault is shown: systemd restarts the service.
        """
        try:
            while not stop.is_set():
                try:
                    self.step()
                except EOFError:
                    log.info("frame source ended after %d frames", self.frames)
                    return
        finally:
            self.door.release()  # the safety action first
            self.notifier.stopping()
            self._publish_health(stopped=True)

    def step(self) -> list[Outcome]:
        """Follow a replica switch, if any; read one frame (or time out) and decide every new
        code in it; then, when due, publish the health report and answer a pending "test the
        door" request."""
        self._follow_replica()
        self._tend_passages()
        outcomes = self._scan()
        # Not after an exception: a loop on its way out must not pulse for a door test.
        if self.control is not None or self.open_control is not None:
            self._tend_control()
        return outcomes

    def _scan(self) -> list[Outcome]:
        self.door.enforce_deadline()  # second line of defence if a relay timer thread died
        try:
            frame = self.source.read(self.settings.read_timeout_s)
        except CameraError:
            self._show_fault(force=True)
            raise
        if frame is None:
            self._check_stale()
            return []
        self._frame_arrived(frame)
        try:
            started_ns = self.clock.monotonic_ns()
            symbols = self.reader.decode(frame.pixels)
            self._decode_ns.append(self.clock.monotonic_ns() - started_ns)
        except Exception:
            # A decoder must not raise on image content, but a camera glitch must never stop the
            # door: the frame counts as a miss. Logged with its traceback, at most every 10 s.
            self.decode_errors += 1
            now_ns = self.clock.monotonic_ns()
            if self._decode_error_logged_ns is None or now_ns - self._decode_error_logged_ns > 10e9:
                self._decode_error_logged_ns = now_ns
                log.exception(
                    "decoding a frame failed (%d so far); frame skipped", self.decode_errors
                )
            return []
        outcomes = []
        for symbol in symbols:
            outcome = self._handle_payload(symbol.payload, frame)
            if outcome is not None:
                outcomes.append(outcome)
        return outcomes

    # -- frames and faults ------------------------------------------------------------------------

    def _frame_arrived(self, frame: Frame) -> None:
        self.frames += 1
        now_ns = self.clock.monotonic_ns()
        self._last_frame_ns = now_ns
        times = self._frame_times_ns
        times.append(now_ns)
        while now_ns - times[0] > FPS_WINDOW_S * 1e9:
            times.popleft()
        if self._camera_stale:
            log.info("camera delivering frames again")
            self._camera_stale = False
            self._health_due_ns = None  # the page learns at once
            self.signal.show("idle")
            self.notifier.status(f"door {self.settings.door_id} scanning")
        # Fed only while frames arrive: a dead camera lets systemd's watchdog restart us.
        self.notifier.ready(status=f"door {self.settings.door_id} scanning")
        self.notifier.watchdog(now_ns)

    def _check_stale(self) -> None:
        age_s = (self.clock.monotonic_ns() - self._last_frame_ns) / 1e9
        if age_s < self.settings.stale_after_s:
            return
        if not self._camera_stale:
            log.warning("camera stale: no frame for %.1f s", age_s)
            self._camera_stale = True
            self._health_due_ns = None  # the page learns at once
            self.notifier.status(f"camera stale: no frame for {age_s:.0f} s")
        self._show_fault()

    def _show_fault(self, *, force: bool = False) -> None:
        now_ns = self.clock.monotonic_ns()
        repeat_ns = int(self.settings.fault_repeat_s * 1e9)
        if (
            force
            or self._last_fault_shown_ns is None
            or now_ns - self._last_fault_shown_ns >= repeat_ns
        ):
            self._last_fault_shown_ns = now_ns
            self.signal.show("fault")

    # -- the owner page: health report and door tests ---------------------------------------------

    def _tend_control(self) -> None:
        now_ns = self.clock.monotonic_ns()
        if self.control is None and not self._reopen_control(now_ns):
            return
        if self._health_due_ns is None or now_ns >= self._health_due_ns:
            self._health_due_ns = now_ns + int(self.settings.health_every_s * 1e9)
            self._publish_health()
        if self._control_poll_ns is None or now_ns >= self._control_poll_ns:
            self._control_poll_ns = now_ns + int(self.settings.control_poll_s * 1e9)
            self._answer_door_test()

    def health_report(self, *, stopped: bool = False) -> dict[str, Any]:
        """The figures the owner page shows (the keys of the control spec's health table): frame
        rate over the last ``FPS_WINDOW_S``, decode time percentiles over the last
        ``DECODE_SAMPLES`` frames in ms, decisions per reason. Never member data. Times are the
        kernel's wall clock (``shared_wall``), as the page reads it."""
        now_ns = self.clock.monotonic_ns()
        wall = shared_wall(self.clock)

        def wall_at(ns: int | None) -> str | None:
            if ns is None:
                return None
            return utc_text(wall - timedelta(microseconds=(now_ns - ns) // 1000))

        times = self._frame_times_ns
        while times and now_ns - times[0] > FPS_WINDOW_S * 1e9:
            times.popleft()
        window_s = min(FPS_WINDOW_S, (now_ns - self._started_ns) / 1e9)
        fps = round(len(times) / window_s, 2) if window_s > 0 else 0.0
        decode = sorted(self._decode_ns)
        last = self._last_decision
        state = "camera_stale" if self._camera_stale else "scanning"
        return {
            "door_id": self.settings.door_id,
            "state": "stopped" if stopped else state,
            "started_at": utc_text(self._started_at),
            "last_frame_at": wall_at(self._last_frame_ns) if self.frames else None,
            "frames": self.frames,
            "fps": fps,
            "decode_ms_p50": _percentile_ms(decode, 0.50),
            "decode_ms_p95": _percentile_ms(decode, 0.95),
            "decode_errors": self.decode_errors,
            "clock_quality": self.clock.quality().value,
            "relay_open": bool(self.door.is_open),
            "pulse_ms": self.settings.pulse_ms,
            "last_pulse_at": wall_at(self._last_pulse_ns),
            "last_decision_at": wall_at(last[0]) if last else None,
            "last_verdict": last[1].verdict.value if last else None,
            "last_reason": last[1].reason.value if last else None,
            "decisions": dict(self._decision_counts),
            # Door events written by this process, by kind; grants waiting for their passage.
            "events": dict(self._event_counts),
            "awaiting_passage": len(self._waiting),
            "occupancy": self._occupancy_report(),
        }

    def occupancy(self) -> Occupancy:
        """The door's occupancy now (``kiosk.core.occupancy.count``) from the journal's
        movements since the gym's last closing (``last_reset``, in the gym's time zone): entries
        confirmed by the turnstile when its entry contact is wired, else the grants; exits; the
        visit length rule when the door has no exit signal. Raises StoreError."""
        now = self._now()
        return self.store.occupancy(
            self.settings.door_id, self.occupancy_rules, effective_time(now) or now.wall
        )

    @property
    def occupancy_rules(self) -> OccupancyRules:
        """How this loop counts (``kiosk.config.occupancy_rules`` says the same from the
        configuration)."""
        entry = self.settings.direction == ENTRY
        return OccupancyRules(
            timezone=self.settings.policy.timezone,
            confirmed=self.confirming,
            max_visit_minutes=self.settings.max_visit_minutes,
            capacity=self.settings.policy.capacity if entry else 0,
        )

    def _occupancy_report(self) -> dict[str, int | None] | None:
        """``occupancy().report()`` for the health report; None when the journal cannot be read
        now (the health report must never fail for it)."""
        try:
            return self.occupancy().report()
        except StoreError as exc:
            log.debug("occupancy not reported: %s", exc)
            return None

    def _publish_health(self, *, stopped: bool = False) -> None:
        if self.control is None:
            return
        try:
            report = self.health_report(stopped=stopped)
            self.control.publish_health(
                "scanner", report, now=shared_wall(self.clock), pid=os.getpid()
            )
        except Exception as exc:
            self._control_failed("publish the health report", exc)

    def _answer_door_test(self) -> None:
        """Pulse the relay once for the oldest fresh "test the door" request, if one waits. Not a
        check-in: nothing is journaled (the control file's audit log records it)."""
        control = self.control
        assert control is not None
        try:
            if not control.has_pending(RequestKind.TEST_DOOR):
                return
            request = control.claim(RequestKind.TEST_DOOR, now=shared_wall(self.clock))
        except Exception as exc:
            self._control_failed("look for a door test", exc)
            return
        if request is None:  # expired, or another process took it
            return
        try:
            used = self.door.pulse(self.settings.pulse_ms)
        except Exception as exc:
            log.error("door test #%d: the relay could not be pulsed: %s", request.id, exc)
            ok, result = False, f"the relay could not be pulsed: {exc}"
        else:
            self._last_pulse_ns = self.clock.monotonic_ns()
            log.info("door test #%d from the owner page: relay pulsed for %d ms", request.id, used)
            ok, result = True, f"relay pulsed for {used} ms"
            try:
                self.signal.show("granted")
            except Exception:
                log.exception("door test #%d: the feedback pattern failed", request.id)
        try:
            control.finish(request.id, ok=ok, result=result, now=shared_wall(self.clock))
        except Exception as exc:
            self._control_failed(f"record the end of door test #{request.id}", exc)

    def _reopen_control(self, now_ns: int) -> bool:
        """Open the control file when it is due (at most every ``CONTROL_REOPEN_S``); True when
        it is open now."""
        if self.open_control is None:
            return False
        if self._control_retry_ns is not None and now_ns < self._control_retry_ns:
            return False
        self._control_retry_ns = now_ns + int(CONTROL_REOPEN_S * 1e9)
        try:
            self.control = self.open_control()
        except Exception as exc:
            self._control_failed("open the control file", exc)
            return False
        log.info("owner-page control file open: live health and door tests work again")
        self._health_due_ns = None  # the page learns at once
        return True

    def _control_failed(self, what: str, exc: Exception) -> None:
        """Log a control-file failure at most every ``CONTROL_LOG_EVERY_S``; the door goes on. A
        file that broke (not merely busy) is closed, to be opened again later when the loop knows
        how (``open_control``)."""
        now_ns = self.clock.monotonic_ns()
        busy = isinstance(exc, ControlError) and exc.busy
        if self.control is not None and self.open_control is not None and not busy:
            broken, self.control = self.control, None
            self._control_retry_ns = now_ns + int(CONTROL_REOPEN_S * 1e9)
            try:
                broken.close()
            except Exception:  # closing a broken file must not stop the door either
                log.debug("closing the broken control file failed", exc_info=True)
        every_ns = CONTROL_LOG_EVERY_S * 1e9
        if self._control_logged_ns is not None and now_ns - self._control_logged_ns < every_ns:
            return
        self._control_logged_ns = now_ns
        log.warning(
            "owner-page control file: could not %s; the door keeps running: %s",
            what,
            exc,
            exc_info=not isinstance(exc, ControlError),
        )

    # -- one code ---------------------------------------------------------------------------------

    def _handle_payload(self, payload: bytes, frame: Frame) -> Outcome | None:
        now_ns = self.clock.monotonic_ns()
        if self._store_blocked_until_ns is not None and now_ns < self._store_blocked_until_ns:
            return None
        credential = parse_payload(payload)
        held = _pass_key(credential)
        if held is not None:
            if not self._admitted_passes.admit(held, now_ns):
                return None  # an admitted phone still in view, though its code may have changed
            self._admitted_passes.forget(held)  # only an admission holds a phone
        # The debounce key is a digest, so a hostile payload is never kept around verbatim.
        key = hashlib.blake2b(payload, digest_size=16).digest()
        if not self._debouncer.admit(key, now_ns):
            return None
        try:
            # Before reading the time: a new replica means the sync agent talked to the cloud,
            # and the anchored clock should use the anchor it brought for this very decision.
            replica = self._refresh_replica()
            now = self._now()
            decided = self._decide(credential, now, replica)
            decision = decided.decision
            granted = decision.verdict is Verdict.GRANTED
            checkin = self.store.append_checkin(
                decision,
                door_id=self.settings.door_id,
                replica_version=self._replica_version or 0,
                now=now,
                pass_id=decided.pass_id,
                pass_use=decided.pass_use,
                await_passage_s=(
                    self.settings.passage_timeout_s if granted and self.confirming else None
                ),
                exit_event=granted and self.settings.direction == EXIT,
            )
        except StoreError as exc:
            # The replica could not be read or the row not committed (locked too long, disk
            # full, damaged file). No durable record means no pulse (commit, then act): the member
            # sees the fault pattern, the log says what is wrong, and the next scan tries again.
            log.error("check-in not recorded, door not opened: %s", exc)
            self._show_fault(force=True)
            # Not decided, so not debounced: the card still in view is tried again once the
            # retry pause is over.
            self._debouncer.forget(key)
            self._store_blocked_until_ns = now_ns + self._store_retry_ns
            return None
        self._store_blocked_until_ns = None
        self.decisions += 1
        self._decision_counts[decision.reason.value] += 1
        self._last_decision = (now_ns, decision)
        if self._clock_floor is None or checkin.wall_time > self._clock_floor:
            self._clock_floor = checkin.wall_time
        relay_ms = 0
        if decision.verdict is Verdict.GRANTED:
            if self.confirming:
                self._waiting.append(
                    _Waiting(checkin.id, now.monotonic_ns, now.monotonic_ns + self._timeout_ns)
                )
            elif self.settings.direction == EXIT:
                self._event_counts[EventKind.EXIT.value] += 1
            if held is not None:
                self._admitted_passes.admit(held, now_ns)
            relay_ms = self.door.pulse(self.settings.pulse_ms)
            self._last_pulse_ns = self.clock.monotonic_ns()
            self.signal.show("granted")
        else:
            self.signal.show("denied")
        outcome = Outcome(
            checkin=checkin,
            decision=decision,
            relay_ms=relay_ms,
            captured_ns=frame.captured_ns,
            acted_ns=self.clock.monotonic_ns(),
            member_name=decided.member_name,
            credential=decided.credential,
        )
        if self.on_outcome is not None:
            try:
                self.on_outcome(outcome)
            except Exception:
                log.exception("outcome callback failed (the check-in is recorded)")
        return outcome

    # -- the turnstile's passages -----------------------------------------------------------------

    def _recover_waits(self, waits: list[PassageWait]) -> None:
        """Take up the grants a previous process left waiting for their passage: within the boot
        that granted them their deadline stands on the monotonic clock; after a reboot the wall
        clock says what is left of it (never more than the timeout, in case the clock jumped).
        Those past their deadline are annulled by the next ``step``."""
        if not waits:
            return
        now = self._now()
        for wait in waits:
            if wait.boot_id == now.boot_id:
                deadline_ns = wait.deadline_ns
            else:
                left = (wait.deadline_wall - now.wall).total_seconds()
                left_ns = int(min(max(left, 0.0), self.settings.passage_timeout_s) * 1e9)
                deadline_ns = now.monotonic_ns + left_ns
            self._waiting.append(_Waiting(wait.checkin_id, 0, deadline_ns))
        log.info(
            "%d grant(s) from before the restart wait for their passage (annulled at their "
            "deadline)",
            len(waits),
        )

    def _tend_passages(self) -> None:
        """Collect the sensor's passages and settle everything due, in time order: a deadline
        that ran out before a passage annuls its grant first, then the passage confirms the
        oldest grant still waiting (an entry passage), or is tailgating, or an exit. A write that
        fails stops the round; what is left is tried again in the next frame."""
        if self.passage is not None:
            try:
                self._passages.extend(self.passage.poll())
            except Exception:  # a sensor glitch must never stop the door
                self._event_failed("collect the turnstile's passages", None)
            while len(self._passages) > MAX_UNWRITTEN_PASSAGES:
                self._passages.popleft()
                log.error("a passage was dropped: the journal has refused door events for long")
        while self._passages:
            event = self._passages[0]
            if not self._annul_due(event.monotonic_ns):
                return
            if not self._write_passage(event):
                return
            self._passages.popleft()
        self._annul_due(self.clock.monotonic_ns() - int(PASSAGE_SETTLE_S * 1e9) + 1)

    def _annul_due(self, before_ns: int) -> bool:
        """Annul, oldest first, the grants whose deadline is before ``before_ns``; False when a
        write failed (the rest stay for the next frame)."""
        while self._waiting and self._waiting[0].deadline_ns < before_ns:
            waiting = self._waiting[0]
            if not self._record(EventKind.ANNULLED, waiting.deadline_ns, waiting.checkin_id):
                return False
            self._waiting.popleft()
        return True

    def _write_passage(self, event: PassageEvent) -> bool:
        if event.direction == EXIT:
            return self._record(EventKind.EXIT, event.monotonic_ns, None)
        # The oldest grant that was waiting when the turnstile turned (deadlines before it were
        # annulled just now); a passage older than every grant is someone without one.
        for waiting in self._waiting:
            if waiting.grant_ns <= event.monotonic_ns:
                if not self._record(EventKind.ENTRY, event.monotonic_ns, waiting.checkin_id):
                    return False
                self._waiting.remove(waiting)
                return True
        return self._record(EventKind.TAILGATING, event.monotonic_ns, None)

    def _record(self, kind: EventKind, at_ns: int, checkin_id: str | None) -> bool:
        """Journal one door event that happened at ``at_ns`` (the loop's monotonic clock); False
        when the journal refused it (logged at most every ``EVENT_LOG_EVERY_S``). A grant's
        outcome that the journal already holds (``append_event`` answers None) counts as written."""
        try:
            written = self.store.append_event(
                kind, door_id=self.settings.door_id, at=self._now_at(at_ns), checkin_id=checkin_id
            )
        except StoreError as exc:
            self._event_failed(f"record a door event ({kind.value})", exc)
            return False
        if written is None:
            log.info("grant %s was settled already; nothing recorded", checkin_id)
            return True
        self._event_counts[kind.value] += 1
        if kind is EventKind.TAILGATING:
            # INFO, not WARNING: it is the owner's news (journaled, on the page), not a fault.
            log.info("a passage with no grant waiting: tailgating (or a forced turnstile)")
        if self.on_event is not None:
            try:
                self.on_event(written)
            except Exception:
                log.exception("event callback failed (the event is recorded)")
        return True

    def _event_failed(self, what: str, exc: StoreError | None) -> None:
        now_ns = self.clock.monotonic_ns()
        every_ns = EVENT_LOG_EVERY_S * 1e9
        if self._event_logged_ns is not None and now_ns - self._event_logged_ns < every_ns:
            return
        self._event_logged_ns = now_ns
        if exc is None:
            log.exception("could not %s; tried again in the next frame", what)
        else:
            log.error("could not %s; tried again in the next frame: %s", what, exc)

    def _now_at(self, at_ns: int) -> Now:
        """The door's view of time at ``at_ns`` on its monotonic clock (a moment just past):
        the wall time now, less the time since."""
        now = self._now()
        since = timedelta(microseconds=(now.monotonic_ns - at_ns) // 1000)
        return replace(now, wall=now.wall - since, monotonic_ns=at_ns)

    @property
    def awaiting_passage(self) -> list[str]:
        """The check-in ids of the grants waiting for their passage, oldest first."""
        return [waiting.checkin_id for waiting in self._waiting]

    def _follow_replica(self) -> None:
        """Attach the new replica file if the sync agent switched it (``Store.follow_replica``),
        and read its salt and site facts now, in this frame, rather than in the next scan. A
        failure is left to the next scan, which reports it (fault pattern, no pulse)."""
        try:
            switched = self.store.follow_replica()
        except StoreError as exc:
            log.debug("following the replica failed (the next scan reports it): %s", exc)
            return
        if switched:
            self._replica_key = None
            try:
                replica = self._refresh_replica()
            except StoreError as exc:
                log.debug("reading the new replica failed (the next scan reports it): %s", exc)
                return
            log.info("replica v%d in use (switched by the sync agent)", replica.version)

    def _refresh_replica(self) -> ReplicaInfo:
        replica = self.store.replica_info()
        if (replica.version, replica.synced_at) != self._replica_key:
            # Cached per replica: the sync agent swaps it from another process, and a fresh
            # snapshot at the same version (a repair) still gets a new sync time.
            self._replica_key = (replica.version, replica.synced_at)
            self._replica_version = replica.version
            self._salt = self.store.code_salt()
            self._site = self.store.site_facts()
            # The sync agent records a clock anchor with every exchange; a new replica means it
            # talked to the cloud, so the anchored clock reads its anchor again now.
            if isinstance(self.clock, AnchoredClock):
                self.clock.refresh()
        return replica

    def _decide(
        self, credential: Credential | Malformed, now: Now, replica: ReplicaInfo
    ) -> _Decided:
        """Look up and decide one parsed code: two read transactions for a known card or an
        accepted pass (the lookup, then the member's facts), one for anything refused before the
        member's rules. Raises StoreError."""
        if isinstance(credential, Malformed):
            return _Decided(Decision(Verdict.DENIED, Reason.MALFORMED_CODE, detail=credential.why))
        if isinstance(credential, PhonePass):
            return self._decide_pass(credential, now, replica)
        assert isinstance(credential, StaticCode)
        member_id = self.store.find_member_id(code_hash(credential.code, self._salt))
        facts = self._member_facts(member_id, now) if member_id else None
        decision = self._policy(facts, replica, now)
        return _Decided(decision, facts.member.display_name if facts else None, CARD)

    def _member_facts(self, member_id: str, now: Now) -> MemberFacts | None:
        """The member's facts, with the entries of the last days for a plan's visit limit (none
        at an exit-side scanner: leaving is not a visit). Raises StoreError."""
        when = effective_time(now)
        since = None
        if when is not None and self.settings.direction == ENTRY:
            since = when - VISITS_LOOKBACK
        return self.store.member_facts(member_id, self.settings.door_id, entries_since=since)

    def _policy(self, facts: MemberFacts | None, replica: ReplicaInfo, now: Now) -> Decision:
        """``decide``, with the door's occupancy when a capacity is set (a known, active member:
        it costs a read of the day's movements). Grants still waiting for their passage count as
        inside: they are on their way in. Raises StoreError."""
        occupancy = 0
        policy = self.settings.policy
        if policy.capacity > 0 and facts is not None and self.settings.direction == ENTRY:
            occupancy = self.occupancy().now + len(self._waiting)
        return decide(facts, self._site, replica, now, policy, occupancy=occupancy)

    def _decide_pass(self, scanned: PhonePass, now: Now, replica: ReplicaInfo) -> _Decided:
        """A phone pass: its record and whether this door already accepted the same code (one
        read), the signature, time and replay checks (``check_pass``, about 0.1 ms for the
        signature), then the member's rules exactly as for a card. The code's (pass, step) is
        remembered with the check-in only when the member is admitted: a refusal uses nothing
        up, so a member refused for another reason who shows the code again hears that reason
        again, not "replayed"."""
        record, used = self.store.pass_lookup(scanned.pass_id, scanned.step)
        checked = check_pass(scanned, record, effective_time(now), used=used)
        if isinstance(checked, Decision):
            return _Decided(checked, None, PASS, scanned.pass_id)
        facts = self._member_facts(checked.member_id, now)
        decision = self._policy(facts, replica, now)
        granted = decision.verdict is Verdict.GRANTED
        return _Decided(
            decision,
            facts.member.display_name if facts else None,
            PASS,
            scanned.pass_id,
            checked if granted else None,
        )

    def _now(self) -> Now:
        return Now(
            wall=self.clock.wall(),
            monotonic_ns=self.clock.monotonic_ns(),
            boot_id=self.clock.boot_id,
            quality=self.clock.quality(),
            clock_floor=self._clock_floor,
        )


def _pass_key(credential: Credential | Malformed) -> bytes | None:
    """The key a phone pass is held by after an admission (None: not a phone pass). Its code
    changes every period, so a phone held in view across a change shows a new payload: held by
    its pass id, it stays one presentation, instead of a second decision that would refuse the
    member just admitted (passback). Only an admission holds it: after a refusal the phone's
    next code (a screen that caught up with the time) is decided at once."""
    if not isinstance(credential, PhonePass):
        return None
    return hashlib.blake2b(credential.pass_id.encode("ascii"), digest_size=16).digest()


def _percentile_ms(sorted_ns: list[int], q: float) -> float | None:
    """The nearest-rank ``q`` percentile of ``sorted_ns`` (nanoseconds) in milliseconds."""
    if not sorted_ns:
        return None
    rank = min(len(sorted_ns), max(1, math.ceil(len(sorted_ns) * q)))
    return round(sorted_ns[rank - 1] / 1e6, 3)


def stop_on_signals(stop: threading.Event) -> None:
    """Make SIGTERM (systemd stop) and SIGINT (Ctrl-C) end the loop cleanly, releasing the relay.

    Must be called from the main thread. The loop notices within one ``read_timeout_s``.
    """

    def _handler(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, _handler)
    signal.signal(signal.SIGINT, _handler)
