"""The door loop: frames → decode → debounce → parse → look up → decide → commit → act.

This is the imperative shell around the pure core (``kiosk.credentials``, ``kiosk.policy``). It owns
time, the camera, the relay and the feedback, and it never touches the network. Two rules shape it:

* **Commit, then act.** The journal row is committed (``synchronous=FULL``) before the relay is
  pulsed. A crash between the two loses a pulse, never a record; a failed commit means no pulse.
* **The relay is released on every exit path**: normal end, an exception inside the loop, SIGTERM.
"""

from __future__ import annotations

import hashlib
import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from types import FrameType

from hardware.protocols import CameraError, Decoder, Door, Frame, FrameSource, Signal
from kiosk.clock import AnchoredClock, Clock
from kiosk.credentials import Malformed, StaticCode, code_hash, parse_payload
from kiosk.debounce import Debouncer
from kiosk.model import (
    Checkin,
    Decision,
    Now,
    PolicySettings,
    Reason,
    ReplicaInfo,
    SiteFacts,
    Verdict,
)
from kiosk.policy import decide
from kiosk.store import Store, StoreError
from kiosk.systemd import Notifier

log = logging.getLogger(__name__)


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
    policy: PolicySettings = field(default_factory=PolicySettings)


@dataclass(frozen=True, slots=True)
class Outcome:
    """One decided scan, reported after its journal row is committed and the door acted.

    ``captured_ns`` is when the frame that carried the code left the camera; ``acted_ns`` when the
    relay was driven (granted) or the feedback started (denied), on the loop's monotonic clock.
    """

    checkin: Checkin
    decision: Decision
    relay_ms: int
    captured_ns: int
    acted_ns: int
    member_name: str | None = None


class DoorLoop:
    """Runs the door. Construct with its parts; call ``run(stop)`` or ``step()``.

    ``on_outcome`` is called for every decision after the commit (the demo prints from it, the bench
    measures from it); an exception in it is logged and does not stop the door.
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

    def step(self) -> list[Outcome]:
        """Read one frame (or time out) and decide every new code in it."""
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
            symbols = self.reader.decode(frame.pixels)
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
        if self._camera_stale:
            log.info("camera delivering frames again")
            self._camera_stale = False
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

    # -- one code ---------------------------------------------------------------------------------

    def _handle_payload(self, payload: bytes, frame: Frame) -> Outcome | None:
        now_ns = self.clock.monotonic_ns()
        if self._store_blocked_until_ns is not None and now_ns < self._store_blocked_until_ns:
            return None
        # The debounce key is a digest, so a hostile payload is never kept around verbatim.
        key = hashlib.blake2b(payload, digest_size=16).digest()
        if not self._debouncer.admit(key, now_ns):
            return None
        try:
            # Before reading the time: a new replica means the sync agent talked to the cloud,
            # and the anchored clock should use the anchor it brought for this very decision.
            replica = self._refresh_replica()
            now = self._now()
            decision, member_name = self._decide(payload, now, replica)
            checkin = self.store.append_checkin(
                decision,
                door_id=self.settings.door_id,
                replica_version=self._replica_version or 0,
                now=now,
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
        if self._clock_floor is None or checkin.wall_time > self._clock_floor:
            self._clock_floor = checkin.wall_time
        relay_ms = 0
        if decision.verdict is Verdict.GRANTED:
            relay_ms = self.door.pulse(self.settings.pulse_ms)
            self.signal.show("granted")
        else:
            self.signal.show("denied")
        outcome = Outcome(
            checkin=checkin,
            decision=decision,
            relay_ms=relay_ms,
            captured_ns=frame.captured_ns,
            acted_ns=self.clock.monotonic_ns(),
            member_name=member_name,
        )
        if self.on_outcome is not None:
            try:
                self.on_outcome(outcome)
            except Exception:
                log.exception("outcome callback failed (the check-in is recorded)")
        return outcome

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
        self, payload: bytes, now: Now, replica: ReplicaInfo
    ) -> tuple[Decision, str | None]:
        credential = parse_payload(payload)
        if isinstance(credential, Malformed):
            return Decision(Verdict.DENIED, Reason.MALFORMED_CODE, detail=credential.why), None
        assert isinstance(credential, StaticCode)  # the only credential type so far
        member_id = self.store.find_member_id(code_hash(credential.code, self._salt))
        facts = self.store.member_facts(member_id, self.settings.door_id) if member_id else None
        decision = decide(facts, self._site, replica, now, self.settings.policy)
        return decision, facts.member.display_name if facts else None

    def _now(self) -> Now:
        return Now(
            wall=self.clock.wall(),
            monotonic_ns=self.clock.monotonic_ns(),
            boot_id=self.clock.boot_id,
            quality=self.clock.quality(),
            clock_floor=self._clock_floor,
        )


def stop_on_signals(stop: threading.Event) -> None:
    """Make SIGTERM (systemd stop) and SIGINT (Ctrl-C) end the loop cleanly, releasing the relay.

    Must be called from the main thread. The loop notices within one ``read_timeout_s``.
    """

    def _handler(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, _handler)
    signal.signal(signal.SIGINT, _handler)
