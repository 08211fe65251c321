"""The sync agent (``kiosk sync``): pushes the journal, pulls the replica, heartbeats.

One ``cycle()`` is: **push** the pending journal rows (check-ins and door events, in their one seq
order), oldest first, in batches (each item marked by its own answer: ``created`` / ``duplicate`` → synced, ``rejected`` → kept as rejected and never
sent again; a 413 halves the batch); **pull** the changes since the replica's version (a 304 to the
idle poll changes nothing but the sync time; pages are staged and applied at their checkpoint, in
one transaction that verifies count and checksum; a mismatch, a 410 or a resnapshot request leads
to a **snapshot** built in a replica file of its own, its next page asked for while one is written,
verified the same way and switched in: ``kiosk.data.replica``; the door is never locked out by
any of it); **heartbeat** (journal position, replica checksum, clock anchors, and the scanner's
occupancy from its fresh health report in the control file; the answer may ask for a re-send from
a seq or a resnapshot, done at once). The full checksum computed for the
heartbeat is also compared with the replica's own record of itself, against which changes are
verified: rows that drifted from it mean a fresh snapshot.

``run()`` repeats cycles every ``interval_s``, and sooner when the scanner journals a check-in (a
cheap poll of the journal's last seq every ``wake_poll_s``). A failed cycle is retried with full
jitter (tenacity's ``wait_random_exponential``, capped at ``backoff_max_s``), never sooner than a
``Retry-After`` the cloud sent. A revoked token (401) or a cloud that does not speak the protocol
(426) stops the agent with the reason recorded; every other failure (no network, 5xx, garbage
answers, a busy database) is recorded and retried. Nothing in here sleeps or reads the time
except through the injected ``sleep`` and ``clock``.

The status (``state`` running / offline / stopped, ``online``, ``last_pull_at``,
``last_push_at``, ``last_error``, ``backlog``, ...) is recorded after every step, for the owner
page and ``kiosk status``, and written to the store without syncing the storage
(``durable=False``: it is for people; a power cut may take back the last one). It is written at
once when anything but a time in it changes (``state``, ``online``, ``last_error``, ``backlog``,
the replica version, ...), and otherwise at the end of a round at most every
``STATUS_REFRESH_S``: an idle round, whose only news is its times, writes nothing most of the
time; a round that served a "sync now" writes its times too. Every write also names the process
that made it (``pid`` on kernel boot ``boot_id``), so that ``kiosk status`` can tell a running
agent from one that has ended without a word: ``kiosk sync --once`` after its round, or an agent
that crashed or was killed (SIGKILL) while its last status still said ``running``. Clock anchors
are kept without syncing the storage too (``kiosk.data.sync_state`` says why that is safe).

With a ``ControlStore`` (the owner page's control file), a "sync now" request ends the wait
between cycles, and the backoff wait after a failure, within ``wake_poll_s``; the agent claims it
and finishes it with the next cycle's outcome in plain words. A failing control file is logged
(at most every 30 s) and never stops the sync.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import tenacity

from kiosk import __version__
from kiosk.core.clock import AnchoredClock, Clock, plausible_server_time
from kiosk.core.ids import boot_id
from kiosk.core.model import Checkin, ClockQuality, DoorEvent
from kiosk.data.control import ControlError, ControlStore, OwnerRequest, RequestKind, shared_wall
from kiosk.data.database import StoreError
from kiosk.data.journal import UNKNOWN_CLOUD_VERSION
from kiosk.data.store import Store
from kiosk.sync.client import (
    BadResponse,
    BatchTooLarge,
    CloudClient,
    CloudError,
    CursorExpired,
    NotModified,
    RetryableError,
)
from sync.protocol import (
    DUPLICATE,
    MAX_ANCHORS,
    REJECTED,
    Anchor,
    ChangePage,
    Checkpoint,
    EventItem,
    Heartbeat,
    Occupancy,
    ProtocolError,
    SnapshotPage,
    UploadItem,
    parse_occupancy,
    utc_text,
)

log = logging.getLogger(__name__)

# Status states (``sync_status.state``).
RUNNING, OFFLINE, STOPPED = "running", "offline", "stopped"
_EMPTY_CHECKSUM = "0" * 16
_LAST_ERROR_CHARS = 500
# The heartbeat's replica checksum is recomputed at least this often even when the version has
# not moved, so a replica damaged on the device is still noticed by the cloud.
TOTALS_MAX_AGE_S = 600.0
# The scanner's occupancy goes up in the heartbeat only from a health report at most this old
# (the scanner publishes one every 2 s): a count from a scanner that went quiet is not news.
OCCUPANCY_FRESH_S = 30.0
# A failing control file is logged at most this often (it fails on every poll while broken).
CONTROL_LOG_EVERY_S = 30.0
# A status whose only news is its times (last pull, last heartbeat, updated_at) is written at most
# this often. Far below what the owner page takes for a silent agent (3 intervals plus the longest
# retry wait, 390 s by default), so a running agent never looks silent.
STATUS_REFRESH_S = 60.0
# Status keys that change every round without telling anyone anything new (see _record).
VOLATILE_STATUS = frozenset(
    {
        "updated_at",
        "last_pull_at",
        "last_push_at",
        "last_heartbeat_at",
        "last_error_at",
        "oldest_pending_age_s",
    }
)


@dataclass(frozen=True, slots=True)
class SyncSettings:
    """The agent's knobs (config ``[sync]``); times in seconds."""

    interval_s: float = 30.0
    batch_size: int = 200
    page_rows: int = 1000
    backoff_max_s: float = 300.0
    wake_poll_s: float = 1.0
    # Synced check-ins older than this are pruned (config ``store.checkin_retention_days``).
    retention_days: int = 90
    prune_every_s: float = 6 * 3600.0
    software_version: str = __version__


def sync_settings(config: Any) -> SyncSettings:
    """The agent's settings from a ``kiosk.config.Config``."""
    return SyncSettings(
        interval_s=config.sync.interval_s,
        batch_size=config.sync.batch_size,
        page_rows=config.sync.page_rows,
        backoff_max_s=config.sync.backoff_max_s,
        wake_poll_s=config.sync.wake_poll_s,
        retention_days=config.store.checkin_retention_days,
    )


@dataclass(slots=True)
class CycleReport:
    """What one cycle did. ``ok``: every step went. ``fatal``: the agent must stop (401, 426).
    ``error``: the first failure in plain words. ``retry_after``: seconds the cloud asked to wait.
    ``pull``: ``"not_modified"``, ``"changes"``, ``"snapshot"`` or None (not reached)."""

    ok: bool = True
    fatal: bool = False
    error: str | None = None
    retry_after: float | None = None
    pushed: int = 0
    rejected: int = 0
    pull: str | None = None
    requeued: int = 0
    steps: list[str] = field(default_factory=list)

    def fail(self, error: str, *, retry_after: float | None = None) -> None:
        if self.ok:
            self.error = error
        self.ok = False
        if retry_after is not None:
            self.retry_after = max(self.retry_after or 0.0, retry_after)


class SnapshotMismatch(Exception):
    """A snapshot's shadow did not match the cloud's checkpoint (the live replica is unchanged)."""


def upload_item(row: Checkin | DoorEvent) -> UploadItem | EventItem:
    """A journal row (a check-in or a door event) as the protocol uploads it."""
    if isinstance(row, DoorEvent):
        return EventItem(
            kind=row.kind.value,
            id=row.id,
            seq=row.seq,
            door_id=row.door_id,
            checkin_id=row.checkin_id,
            wall_time=row.wall_time,
            boot_id=row.boot_id,
            monotonic_ns=row.monotonic_ns,
            clock_quality=row.clock_quality.value,
        )
    checkin = row
    return UploadItem(
        id=checkin.id,
        seq=checkin.seq,
        door_id=checkin.door_id,
        decision=checkin.decision.value,
        reason=checkin.reason.value,
        member_id=checkin.member_id,
        membership_id=checkin.membership_id,
        classes_used=checkin.classes_used,
        replica_version=checkin.replica_version,
        wall_time=checkin.wall_time,
        boot_id=checkin.boot_id,
        monotonic_ns=checkin.monotonic_ns,
        clock_quality=checkin.clock_quality.value,
        pass_id=checkin.pass_id,
    )


class SyncAgent:
    """Keeps one store in sync with one cloud. See the module docstring.

    ``clock`` gives wall time for the status and the heartbeat (an ``AnchoredClock`` on the
    device), monotonic time for the schedule and the boot id. ``sleep(seconds)`` waits (the CLI
    passes ``stop.wait`` so a signal cuts a wait short; tests record). ``wake()`` returns the
    journal's last seq (default ``store.last_seq``); a change ends the wait between cycles.
    ``control`` (None: no owner page) supplies "sync now" requests.
    """

    def __init__(
        self,
        store: Store,
        client: CloudClient,
        settings: SyncSettings,
        clock: Clock,
        sleep: Callable[[float], Any],
        wake: Callable[[], int] | None = None,
        control: ControlStore | None = None,
    ) -> None:
        self.store = store
        self.control = control
        # A "sync now" claimed and not finished yet: the next cycle's outcome finishes it.
        self._sync_now: OwnerRequest | None = None
        self._control_logged_ns: int | None = None
        self._control_pruned_ns: int | None = None
        self.client = client
        self.settings = settings
        self.clock = clock
        self._sleep = sleep
        self._wake = wake or store.last_seq
        self._jitter = tenacity.wait_random_exponential(multiplier=1, max=settings.backoff_max_s)
        stored = self._status()
        # A snapshot the cloud asked for and we still owe; kept in the status across restarts.
        self._resnapshot = bool(stored.get("resnapshot_due", False))
        # The status as stored, what was recorded since and not written yet, and when this
        # process last wrote it (monotonic ns; None: not yet). See _record.
        self._status_stored: dict[str, Any] = stored
        self._status_due: dict[str, Any] = {}
        self._status_written_ns: int | None = None
        # Rows acknowledged with an unknown side-effect version may exist (after a restart we
        # cannot know): settled after the next successful pull.
        self._unsettled = True
        self._hashes_checked = False
        self._last_prune_ns: int | None = None
        self._online = False
        self._seq_at_cycle_start: int | None = None
        # (replica version, monotonic ns when computed, count, checksum): the heartbeat's replica
        # checksum, recomputed when the version moves or every TOTALS_MAX_AGE_S (a full scan of
        # the replica costs tens of ms at 100,000 members, every round otherwise).
        self._totals: tuple[int, int, int, str | None] | None = None
        # The replica was stamped this cycle while the device knew no time (no NTP, no anchor of
        # this boot yet): stamped again once the heartbeat's answer gives an anchor.
        self._stamped_untimed = False
        if client.on_anchor is None:
            client.on_anchor = self._record_anchor
        # Who writes the status (``kiosk status`` checks that this process still exists).
        self._writer = {"pid": os.getpid(), "boot_id": boot_id()}

    # -- the loop --------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> CycleReport:
        """Cycle until ``stop`` is set or the cloud refuses the device for good. Returns the last
        report: ``fatal`` set means stopped by the cloud (the status says why)."""
        self._record(state=RUNNING)
        last = CycleReport()

        def attempt() -> CycleReport:
            # A signal may arrive while waiting to retry: do not start another round then.
            return CycleReport(steps=["skipped"]) if stop.is_set() else self.cycle()

        def backoff_sleep(seconds: float) -> None:
            # Without a control file nothing can cut the wait short: one sleep, as it always was.
            if self.control is None:
                self._sleep(seconds)
            else:
                self._wait(stop, seconds, wake_on_checkin=False)

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_result(lambda r: not r.ok and not r.fatal),
            wait=self._backoff,
            stop=lambda _state: stop.is_set(),
            sleep=backoff_sleep,
            retry_error_callback=lambda state: state.outcome.result(),
        )
        try:
            while not stop.is_set():
                last = retrying(attempt)
                if last.fatal:
                    return last
                if stop.is_set():
                    break
                self._wait_for_work(stop)
            self._record(state=STOPPED, online=False)
            return last
        finally:
            # A "sync now" claimed as the agent stops is answered, not left running.
            self._finish_sync_now(None)
            # The last word is written, whatever it is.
            self._refresh_status(force=True)

    def _backoff(self, state: tenacity.RetryCallState) -> float:
        """Full jitter, capped, and never less than a Retry-After the cloud sent."""
        jitter = self._jitter(state)
        report = state.outcome.result() if state.outcome is not None else None
        retry_after = report.retry_after if report is not None else None
        return max(jitter, retry_after or 0.0)

    def _wait_for_work(self, stop: threading.Event) -> None:
        """Wait up to ``interval_s``, ending early when a new check-in is journaled or the owner
        asks for a sync. A check-in journaled during the last round (after its push read the
        queue) ends it at once: the journal's last seq is compared with what it was when that
        round began."""
        self._wait(stop, self.settings.interval_s, wake_on_checkin=True)

    def _wait(self, stop: threading.Event, seconds: float, *, wake_on_checkin: bool) -> None:
        """Sleep up to ``seconds`` in ``wake_poll_s`` slices; end early on a claimed "sync now"
        (checked before the first slice too) or, with ``wake_on_checkin``, a new check-in."""
        seen = self._seq_at_cycle_start
        poll_ns = int(self.settings.wake_poll_s * 1e9)
        deadline = self.clock.monotonic_ns() + int(seconds * 1e9)
        if self.claim_sync_now():
            return
        while not stop.is_set():
            remaining = deadline - self.clock.monotonic_ns()
            if remaining <= 0:
                return
            self._sleep(min(poll_ns, remaining) / 1e9)
            if wake_on_checkin and self._last_seq() != seen:
                return
            if self.claim_sync_now():
                return

    # -- "sync now" from the owner page ----------------------------------------------------------

    def claim_sync_now(self) -> bool:
        """Claim a pending "sync now" request, if there is one and none is held already; True
        when the next ``cycle()`` should run at once (it finishes the request). Never raises."""
        if self.control is None:
            return False
        if self._sync_now is not None:
            return True
        try:
            if not self.control.has_pending(RequestKind.SYNC_NOW):
                return False
            self._sync_now = self.control.claim(RequestKind.SYNC_NOW, now=shared_wall(self.clock))
        except Exception as exc:
            self._control_failed("look for a sync-now request", exc)
            return False
        if self._sync_now is not None:
            log.info("sync now, as asked on the owner page (request #%d)", self._sync_now.id)
        return self._sync_now is not None

    def _finish_sync_now(self, report: CycleReport | None) -> None:
        """Finish the held "sync now" with ``report`` (None: the agent stopped first)."""
        request, self._sync_now = self._sync_now, None
        if request is None or self.control is None:
            return
        if report is None:
            ok, result = False, "the sync agent stopped before it could sync"
        elif report.ok:
            ok, result = True, self._synced_words(report)
        else:
            ok, result = False, f"sync failed: {_plain(report.error) or 'unknown error'}"
        try:
            self.control.finish(request.id, ok=ok, result=result, now=shared_wall(self.clock))
        except Exception as exc:
            self._control_failed(f"record the end of sync-now request #{request.id}", exc)

    def _synced_words(self, report: CycleReport) -> str:
        words = f"synced: uploaded {report.pushed}"
        if report.rejected:
            words += f", {report.rejected} rejected by the cloud"
        # The sync went; if only the version cannot be read back, the words go without it.
        with contextlib.suppress(StoreError):
            words += f", replica version {self.store.replica_info().version}"
        return words

    def _maybe_prune_control(self) -> None:
        """Trim the control file's audit log and old requests every ``prune_every_s``."""
        if self.control is None:
            return
        now_ns = self.clock.monotonic_ns()
        every_ns = int(self.settings.prune_every_s * 1e9)
        if self._control_pruned_ns is not None and now_ns - self._control_pruned_ns < every_ns:
            return
        self._control_pruned_ns = now_ns
        try:
            self.control.prune(now=shared_wall(self.clock))
        except Exception as exc:
            self._control_failed("prune the audit log", exc)

    def _control_failed(self, what: str, exc: Exception) -> None:
        """Log a control-file failure at most every ``CONTROL_LOG_EVERY_S``; the sync goes on."""
        now_ns = self.clock.monotonic_ns()
        every_ns = CONTROL_LOG_EVERY_S * 1e9
        if self._control_logged_ns is not None and now_ns - self._control_logged_ns < every_ns:
            return
        self._control_logged_ns = now_ns
        log.warning(
            "owner-page control file: could not %s; the sync goes on: %s",
            what,
            exc,
            exc_info=not isinstance(exc, ControlError),
        )

    def _last_seq(self) -> int | None:
        try:
            return self._wake()
        except StoreError as exc:
            log.warning("cannot read the journal's last seq: %s", exc)
            return None

    # -- one cycle -------------------------------------------------------------------------------

    def cycle(self) -> CycleReport:
        """Push, pull, heartbeat; never raises for the cloud's or the database's failures (they
        are in the report and the status). After a failure that means "no network", the later
        steps are skipped: they would only wait for their own timeouts. A claimed "sync now" is
        finished with the outcome; its round writes the status's times too (the owner is
        looking)."""
        asked = self._sync_now is not None
        try:
            report = self._cycle()
        except BaseException:
            self._finish_sync_now(CycleReport(ok=False, error="unexpected error in the agent"))
            raise
        self._finish_sync_now(report)
        self._maybe_prune_control()
        self._refresh_status(force=asked)
        return report

    def _cycle(self) -> CycleReport:
        report = CycleReport()
        self._seq_at_cycle_start = self._last_seq()
        steps = (("push", self._push), ("pull", self._pull), ("heartbeat", self._heartbeat))
        for name, step in steps:
            try:
                step(report)
                report.steps.append(name)
            except CloudError as exc:
                self._online = not _unreachable(exc)
                if not exc.retryable:
                    report.fatal = True
                    report.fail(str(exc))
                    log.error("sync stopped: %s", exc)
                    self._record(state=STOPPED, online=self._online, **self._error(str(exc)))
                    return report
                retry_after = exc.retry_after if isinstance(exc, RetryableError) else None
                report.fail(f"{name}: {exc}", retry_after=retry_after)
                log.warning("sync %s failed: %s", name, exc)
                if _unreachable(exc):
                    break
            except (StoreError, SnapshotMismatch) as exc:
                report.fail(f"{name}: {exc}")
                log.error("sync %s failed: %s", name, exc)
                break
            except Exception as exc:  # a bug must not end the agent: report, back off, go on
                report.fail(f"{name}: unexpected error ({type(exc).__name__})")
                log.exception("sync %s failed unexpectedly", name)
                break
        if report.ok:
            self._record(state=RUNNING, online=True, last_error=None)
        else:
            self._record(state=OFFLINE, online=self._online, **self._error(report.error))
        self._record_backlog()
        return report

    # -- push ------------------------------------------------------------------------------------

    def _push(self, report: CycleReport) -> None:
        batch = self.settings.batch_size
        after = 0
        while True:
            # Check-ins and door events in one seq order: an event reaches the cloud with or
            # after the check-in it names, never before.
            rows = self.store.pending_uploads(batch, after_seq=after)
            if not rows:
                break
            try:
                answer = self.client.upload(
                    [upload_item(r) for r in rows], anchors=self.store.anchors(MAX_ANCHORS)
                )
            except BatchTooLarge:
                if batch == 1:
                    raise BadResponse(
                        "the cloud refuses even a single journal row as too large (HTTP 413)"
                    ) from None
                batch = max(1, batch // 2)
                log.info("the cloud found the batch too large; sending %d at a time", batch)
                continue
            self._online = True
            # Only a check-in's class use is counted on the door until the replica has it; a
            # door event's effect (a class given back) simply arrives with the replica.
            used = {r.id: r.classes_used if isinstance(r, Checkin) else 0 for r in rows}
            synced: dict[str, int | None] = {}
            rejected: list[str] = []
            for result in answer.results:
                assert result.id is not None  # parse_upload_results ties each to an item sent
                if result.status == REJECTED:
                    rejected.append(result.id)
                    log.warning(
                        "the cloud rejected journal row %s (%s): %s",
                        result.id,
                        result.code,
                        result.detail,
                    )
                    continue
                version = result.version
                if version is None and result.status == DUPLICATE and used[result.id] > 0:
                    # Its side effect is in some version we were not told: count the class until
                    # the next pull, which certainly includes it.
                    version = UNKNOWN_CLOUD_VERSION
                    self._unsettled = True
                synced[result.id] = version
            if synced:
                self.store.mark_synced(list(synced), at=answer.server_time, cloud_versions=synced)
            if rejected:
                self.store.mark_rejected(rejected, at=answer.server_time)
            report.pushed += len(synced)
            report.rejected += len(rejected)
            after = rows[-1].seq
            self._record(last_push_at=utc_text(self.clock.wall()), online=True)
            self._record_backlog()

    # -- pull ------------------------------------------------------------------------------------

    def _pull(self, report: CycleReport) -> None:
        untimed = self.clock.quality() is ClockQuality.UNSYNCED
        info = self.store.replica_info()
        reason = None
        if info.synced_at is None:
            reason = "no replica yet"
        elif self._legacy_replica():
            reason = "the replica predates row checksums"
        elif self._resnapshot:
            reason = "the cloud asked for a fresh snapshot"
        if reason is None:
            try:
                outcome = self._pull_changes(info.version)
            except CursorExpired:
                reason = "the cloud no longer has the changes since our version (410)"
            else:
                if outcome is not None:
                    report.pull = outcome
                    self._stamped_untimed = untimed
                    self._record(last_pull_at=utc_text(self.clock.wall()), **self._replica())
                    return
                reason = "the replica did not match the cloud's checkpoint"
        log.info("taking a fresh snapshot: %s", reason)
        self._snapshot()
        report.pull = "snapshot"
        self._stamped_untimed = untimed
        self._record(last_pull_at=utc_text(self.clock.wall()), **self._replica())

    def _legacy_replica(self) -> bool:
        """True when replica rows carry no hash (loaded before schema v3). Checked once per
        process: every replica written since carries hashes."""
        if self._hashes_checked:
            return False
        legacy = self.store.replica_checksum()[1] is None
        self._hashes_checked = not legacy
        return legacy

    def _pull_changes(self, since: int) -> str | None:
        """Changes since ``since`` applied to the live replica: ``"not_modified"``,
        ``"changes"``, or None when the checkpoint did not match (rolled back)."""
        first = self.client.changes(since, None, self.settings.page_rows, etag=f'"v{since}"')
        self._online = True
        if isinstance(first, NotModified):
            self.store.mark_replica_current(synced_at=self.clock.wall())
            self._settle(since)
            return "not_modified"
        # Changes an interrupted pull staged are dropped before these are staged: after the idle
        # poll's 304, not before it (a write transaction every idle round for nothing; a
        # snapshot empties the staging area itself).
        self.store.discard_staged()
        last = self._stage_pages(since, first)
        assert last.checkpoint is not None  # parse_change_page: the last page carries it
        result = self.store.apply_checkpoint(
            last.checkpoint,
            code_salt=last.code_salt,
            synced_at=self.clock.wall(),
            into_snapshot=False,
        )
        if not result.ok:
            log.warning(
                "replica changes since v%d did not match the checkpoint (count %d, checksum %s; "
                "cloud: %s)",
                since,
                result.count,
                result.checksum,
                result.checkpoint,
            )
            return None
        self._settle(result.checkpoint.version)
        self._owe_snapshot(False)
        return "changes"

    def _stage_pages(
        self, since: int, page: ChangePage, *, into_snapshot: bool = False
    ) -> ChangePage:
        """Stage ``page`` and the pages after it (in the replica in use, or with
        ``into_snapshot`` in the snapshot being built); returns the last (with the checkpoint)."""
        while True:
            self.store.stage_changes(page.rows, into_snapshot=into_snapshot)
            if page.next is None:
                return page
            cursor = page.next
            following = self.client.changes(since, cursor, self.settings.page_rows)
            if isinstance(following, NotModified):  # the client refuses a 304 with a cursor
                raise BadResponse("the cloud answered a page of changes with 304")
            if following.next == cursor:
                raise BadResponse("the cloud's change pages do not advance (same cursor twice)")
            page = following

    def _snapshot(self) -> None:
        """Pages into a new replica file, then the changes since the first page's version on
        top, then checkpoint and switch (``Store.begin_snapshot`` ... ``apply_checkpoint``; the
        door keeps the replica in use until the switch). A snapshot that fails half way is
        abandoned (its file deleted). Raises SnapshotMismatch when the result does not match."""
        started = self.clock.monotonic_ns()
        self.store.begin_snapshot()
        try:
            first_version: int | None = None
            with contextlib.closing(self._snapshot_pages()) as pages:
                for page in pages:
                    if first_version is None:
                        first_version = page.version
                        self._online = True
                    self.store.add_snapshot_rows(page.rows)
            assert first_version is not None  # there is always a first page
            checkpoint, salt = self._snapshot_checkpoint(first_version, page.code_salt)
            result = self.store.apply_checkpoint(
                checkpoint, code_salt=salt, synced_at=self.clock.wall(), into_snapshot=True
            )
        except BaseException:
            self.store.abandon_snapshot()
            raise
        if not result.ok:
            raise SnapshotMismatch(
                f"the snapshot does not match the cloud's checkpoint (v{checkpoint.version}: "
                f"{checkpoint.count} rows, checksum {checkpoint.checksum}; here: {result.count} "
                f"rows, checksum {result.checksum}); the replica in use is unchanged"
            )
        log.info(
            "replica v%d switched in: %d rows in %.1f s (checks and indexes %.0f ms, switch "
            "%.1f ms; the door was never locked out)",
            checkpoint.version,
            result.count,
            (self.clock.monotonic_ns() - started) / 1e9,
            result.write_ms,
            result.switch_ms or 0.0,
        )
        self._settle(checkpoint.version)
        self._owe_snapshot(False)

    def _snapshot_pages(self) -> Iterator[SnapshotPage]:
        """The snapshot's pages, in order. The next page is asked for while the caller writes
        this one (a thread of its own, one request at a time): the cloud prepares a page while the
        device hashes and writes the previous one, which nearly halves a large snapshot. Memory:
        two pages. A page the caller no longer wants (it failed) is dropped when it arrives."""
        rows = self.settings.page_rows
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="snapshot-pages") as pool:
            upcoming: Future[SnapshotPage] | None = None
            try:
                page = self.client.snapshot_page(None, rows)
                while True:
                    cursor = page.next
                    if cursor is not None:
                        upcoming = pool.submit(self.client.snapshot_page, cursor, rows)
                    yield page
                    if upcoming is None:
                        return
                    page, upcoming = upcoming.result(), None
                    if page.next == cursor:
                        raise BadResponse(
                            "the cloud's snapshot pages do not advance (same cursor twice)"
                        )
            finally:
                if upcoming is not None:
                    upcoming.cancel()  # not started yet: never sent; running: its answer dropped

    def _snapshot_checkpoint(self, first_version: int, salt: bytes) -> tuple[Checkpoint, bytes]:
        """Stage the changes since the snapshot's first page; returns the checkpoint to verify
        the shadow against, and the code salt to keep."""
        answer = self.client.changes(first_version, None, self.settings.page_rows)
        if isinstance(answer, NotModified):
            # Asked without If-None-Match, a cloud that follows the protocol answers 200 with the
            # checkpoint even when nothing changed.
            raise BadResponse("the cloud answered 304 to a request without If-None-Match")
        since = first_version
        last = self._stage_pages(since, answer, into_snapshot=True)
        assert last.checkpoint is not None
        return last.checkpoint, last.code_salt

    # -- heartbeat -------------------------------------------------------------------------------

    def _heartbeat(self, report: CycleReport) -> None:
        position = self.store.journal_position()
        info = self.store.replica_info()
        count, checksum = self._replica_totals(info.version)
        now = self.clock.wall()
        age = None
        if position.oldest_pending_at is not None:
            age = max(0.0, (now - position.oldest_pending_at).total_seconds())
        beat = Heartbeat(
            software_version=self.settings.software_version[:40],
            boot_id=self.clock.boot_id,
            monotonic_ns=self.clock.monotonic_ns(),
            device_time=now,
            clock_quality=self.clock.quality().value,
            backlog=position.backlog,
            oldest_pending_age_s=age,
            replica_version=info.version,
            replica_checksum=checksum or _EMPTY_CHECKSUM,
            replica_count=count,
            last_seq=position.last_seq,
            synced_through_seq=position.synced_through_seq,
            retained_from_seq=position.retained_from_seq,
            # This round's failure so far (a failed push does not stop the heartbeat).
            last_error=_plain(report.error),
            anchors=tuple(self.store.anchors(MAX_ANCHORS)),
            occupancy=self._occupancy(),
        )
        reply = self.client.heartbeat(beat)
        self._online = True
        self._record(last_heartbeat_at=utc_text(self.clock.wall()))
        if reply.resend_from_seq is not None:
            report.requeued = self.store.requeue_from(reply.resend_from_seq)
            log.warning(
                "the cloud asked for the journal from seq %d again: %d rows queued",
                reply.resend_from_seq,
                report.requeued,
            )
            if report.requeued:
                self._push(report)
        if reply.resnapshot:
            log.warning("the cloud asked for a fresh snapshot")
            self._owe_snapshot(True)
            self._snapshot()
            report.pull = "snapshot"
            self._record(last_pull_at=utc_text(self.clock.wall()), **self._replica())
        self._restamp_pull()
        self._maybe_prune()

    def _occupancy(self) -> Occupancy | None:
        """The door's count of people in the gym, for the heartbeat: the ``occupancy`` of the
        scanner's health report in the control file, when that report is fresh (at most
        OCCUPANCY_FRESH_S old on the kernel's clock, from a scanner not stopped) and well formed;
        None otherwise, or without a control file. Never raises: a control file that cannot be
        read is logged like any other, and the heartbeat goes without."""
        if self.control is None:
            return None
        try:
            report = self.control.health("scanner")
        except Exception as exc:
            self._control_failed("read the scanner's occupancy", exc)
            return None
        if report is None or report.data.get("state") == "stopped":
            return None
        age = (shared_wall(self.clock) - report.updated_at).total_seconds()
        raw = report.data.get("occupancy")
        if raw is None or abs(age) > OCCUPANCY_FRESH_S:
            return None
        try:
            return parse_occupancy(raw, "occupancy")
        except ProtocolError as exc:
            log.warning("the scanner's occupancy is not sent: %s", exc)
            return None

    # -- housekeeping ----------------------------------------------------------------------------

    def _replica_totals(self, version: int) -> tuple[int, str | None]:
        now_ns = self.clock.monotonic_ns()
        cached = self._totals
        if (
            cached is not None
            and cached[0] == version
            and now_ns - cached[1] < TOTALS_MAX_AGE_S * 1e9
        ):
            return cached[2], cached[3]
        count, checksum = self.store.replica_checksum()
        self._totals = (version, now_ns, count, checksum)
        self._check_replica_record(count, checksum)
        return count, checksum

    def _check_replica_record(self, count: int, checksum: str | None) -> None:
        """Changes are verified against the replica's own record of its count and checksum (not
        a full read, see ``kiosk.data.replica``); the full read just made says whether the rows
        still agree with it. If not (a damaged or edited file), a fresh snapshot is due."""
        recorded = self.store.stored_replica_totals()
        if recorded is None or recorded == (count, checksum):
            return
        log.warning(
            "the replica's rows (%d, checksum %s) differ from its own record (%d, checksum %s): "
            "taking a fresh snapshot",
            count,
            checksum,
            recorded[0],
            recorded[1],
        )
        self._owe_snapshot(True)

    def _maybe_prune(self) -> None:
        """Delete synced check-ins past their retention, every ``prune_every_s``. Skipped while
        the clock is not trusted: a clock that jumped ahead must not prune early."""
        now_ns = self.clock.monotonic_ns()
        every_ns = int(self.settings.prune_every_s * 1e9)
        if self._last_prune_ns is not None and now_ns - self._last_prune_ns < every_ns:
            return
        if self.clock.quality() is ClockQuality.UNSYNCED:
            return
        self._last_prune_ns = now_ns
        cutoff = self.clock.wall() - timedelta(days=self.settings.retention_days)
        pruned = self.store.prune_synced(cutoff)
        if pruned:
            log.info("pruned %d synced check-ins recorded before %s", pruned, utc_text(cutoff))

    def _restamp_pull(self) -> None:
        """Stamp the replica again with the time this heartbeat's answer gave, if this cycle's
        pull was stamped with a wall clock nobody had set (1970, or the last shutdown's time):
        left as it was, the door would count the replica as stale and its clock floor would drop
        back to that time."""
        if self._stamped_untimed and self.clock.quality() is not ClockQuality.UNSYNCED:
            now = self.clock.wall()
            self.store.mark_replica_current(synced_at=now)
            self._record(last_pull_at=utc_text(now))
        self._stamped_untimed = False

    def _settle(self, version: int) -> None:
        """After a successful pull at ``version``: class uses acknowledged with an unknown
        version are in it now. Skipped (no write) when none can exist."""
        if self._unsettled:
            self.store.settle_unknown_versions(version)
            self._unsettled = False

    def _owe_snapshot(self, due: bool) -> None:
        if due != self._resnapshot:
            self._resnapshot = due
            self._record(resnapshot_due=due)

    def _status(self) -> dict[str, Any]:
        try:
            return self.store.sync_status()
        except StoreError as exc:
            log.warning("cannot read the sync status: %s", exc)
            return {}

    def _record_anchor(self, anchor: Anchor) -> None:
        if not plausible_server_time(anchor.server_time):
            # A broken or hostile answer; kept, it would replace this boot's good anchor.
            log.warning("ignoring an implausible cloud time %s", anchor.server_time.isoformat())
            return
        try:
            self.store.record_anchor(anchor, recorded_at=self.clock.wall(), durable=False)
        except StoreError as exc:
            log.warning("could not keep a clock anchor: %s", exc)
            return
        if isinstance(self.clock, AnchoredClock):
            # Tell the time from this anchor at once rather than at the clock's next periodic
            # read: the replica's sync time is stamped with it.
            self.clock.refresh()

    def _replica(self) -> dict[str, Any]:
        info = self.store.replica_info()
        return {"replica_version": info.version}

    def _error(self, error: str | None) -> dict[str, Any]:
        return {"last_error": _plain(error), "last_error_at": utc_text(self.clock.wall())}

    def _record_backlog(self) -> None:
        try:
            position = self.store.journal_position()
        except StoreError as exc:
            log.warning("cannot read the journal's position: %s", exc)
            return
        age = None
        if position.oldest_pending_at is not None:
            age = max(0.0, (self.clock.wall() - position.oldest_pending_at).total_seconds())
        self._record(backlog=position.backlog, oldest_pending_age_s=age)

    def _record(self, **values: Any) -> None:
        """Record ``values`` in the status: written at once (with whatever else is due) when one
        of them, or of those due, is news, that is a key outside VOLATILE_STATUS whose value
        differs from the stored one; otherwise left for ``_refresh_status``."""
        values["updated_at"] = utc_text(self.clock.wall())
        values.update(self._writer)
        self._status_due.update(values)
        stored = self._status_stored
        if any(
            key not in VOLATILE_STATUS and (key not in stored or stored[key] != value)
            for key, value in self._status_due.items()
        ):
            self._write_status()

    def _refresh_status(self, *, force: bool = False) -> None:
        """Write what is due if ``force``, or if this process has not written the status for
        ``STATUS_REFRESH_S`` (or never)."""
        if not self._status_due:
            return
        last = self._status_written_ns
        if force or last is None or self.clock.monotonic_ns() - last >= STATUS_REFRESH_S * 1e9:
            self._write_status()

    def _write_status(self) -> None:
        """Merge what is due into the stored status, without syncing the storage; a database
        failure is logged, not raised (the status is for people, the sync itself goes on), and
        what was due stays due."""
        try:
            self.store.set_sync_status(self._status_due, durable=False)
        except StoreError as exc:
            log.warning("cannot record the sync status: %s", exc)
            return
        self._status_stored.update(self._status_due)
        self._status_due = {}
        self._status_written_ns = self.clock.monotonic_ns()


def _unreachable(exc: CloudError) -> bool:
    """True when no answer came back at all (no network, timeout): later steps would only wait."""
    return (
        isinstance(exc, RetryableError) and exc.status is None and not isinstance(exc, BadResponse)
    )


def _plain(text: str | None) -> str | None:
    """One line of at most 500 printable characters (the heartbeat's and the owner page's
    ``last_error``)."""
    if text is None:
        return None
    flat = "".join(ch if ch.isprintable() else " " for ch in text)
    return flat[:_LAST_ERROR_CHARS]
