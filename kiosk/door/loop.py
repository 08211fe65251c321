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

With a ``ControlStore`` (the owner page's control file) the loop also publishes its health (frame
rate, decode time, decisions per reason; never member data) every ``health_every_s``, and answers
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
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any

from hardware.protocols import CameraError, Decoder, Door, Frame, FrameSource, Signal
from kiosk.core.clock import AnchoredClock, Clock
from kiosk.core.debounce import Debouncer
from kiosk.core.model import (
    Checkin,
    Decision,
    Now,
    PolicySettings,
    Reason,
    ReplicaInfo,
    SiteFacts,
    Verdict,
)
from kiosk.core.passes import PassAccepted, check_pass
from kiosk.core.policy import decide, effective_time
from kiosk.data.control import ControlError, ControlStore, RequestKind, shared_wall
from kiosk.data.database import StoreError
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
        }

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
            checkin = self.store.append_checkin(
                decision,
                door_id=self.settings.door_id,
                replica_version=self._replica_version or 0,
                now=now,
                pass_id=decided.pass_id,
                pass_use=decided.pass_use,
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
        facts = self.store.member_facts(member_id, self.settings.door_id) if member_id else None
        decision = decide(facts, self._site, replica, now, self.settings.policy)
        return _Decided(decision, facts.member.display_name if facts else None, CARD)

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
        facts = self.store.member_facts(checked.member_id, self.settings.door_id)
        decision = decide(facts, self._site, replica, now, self.settings.policy)
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
