"""What the owner page shows, gathered from the databases, the system and the disk (``PageData``).

Each part of the page has one method here: the dashboard and ``/api/overview`` (``overview``), the
graded checks behind ``/healthz`` (``health_grades``), the Prometheus text (``metrics_text``) and
the diagnostics zip (``bundle``); plus the page's two writes to the control file, audit rows
(``audit``, ``write_audit``) and owner requests (``submit``). ``kiosk.web.app`` turns their results
into HTTP responses; nothing here knows about requests, sessions or status codes.

Blocking (SQLite, ``/sys``, the disk, journalctl, the zip): call from the thread pool.

Times: the control file (requests, audit log, the scanner's report) is dated by the kernel's clock
(``WebClock.wall``); the door's database (check-ins, the sync agent's status, and the replica in
the file beside it, read through the same store) by the door's clock, which follows the cloud's time until NTP syncs, so its times are aged against
``AnchoredClock(kernel clock, the door's newest anchor)``.

Failure modes: none of the reads raises for a database that cannot be read. A door database that
is missing, damaged or failing gives ``database_problem`` in words (``sources.read_door``) and is
reopened next time; a control file that cannot be read or written gives ``control_problem`` (or,
for a write, a logged warning and the problem in words from ``submit``) and is reopened next time
(``sources.ControlAccess.failed``). Only a bug raises.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from kiosk.config import Config, as_dict
from kiosk.core.clock import AnchoredClock, Clock
from kiosk.data.control import ControlError, HealthReport, RequestKind
from kiosk.data.database import StoreError
from kiosk.ops.status import collect_status, disk_info
from kiosk.web import diagnostics, metrics, views
from kiosk.web.audit_limits import AuditRow
from kiosk.web.device_health import (
    HEARTBEAT_PROBLEM_S,
    Grade,
    HealthInputs,
    SysFacts,
    grade_checks,
    sync_silent,
    sync_silent_after,
)
from kiosk.web.sources import (
    ControlAccess,
    DaySpans,
    DoorDatabase,
    DoorFacts,
    DoorFactsCache,
    MemberCountCache,
    ReadDoor,
    door_anchor,
)
from sync.protocol import utc_text

# The page's one logger (``kiosk.web.app`` logs to it too), so ``kiosk logs --unit web`` shows it.
log = logging.getLogger("kiosk.web")

AUDIT_ROWS = 20


class WebClock(Protocol):
    """The page's time: ``wall()`` aware UTC (the kernel's clock, as ``kiosk.data.control`` expects
    of the page), ``monotonic()`` seconds for sessions, throttling and caches."""

    def wall(self) -> datetime: ...

    def monotonic(self) -> float: ...


class PageData:
    """The page's figures, read through the handles it is given: ``door`` (the door's database,
    read-only) and ``control`` (the control file); their owner opens and closes them. Caches what
    is costly to read again (``DoorFactsCache``, ``MemberCountCache``). Thread-safe as far as its
    handles and caches are (they take locks); holds no other state between calls."""

    def __init__(
        self,
        config: Config,
        *,
        door: DoorDatabase,
        control: ControlAccess,
        clock: WebClock,
        kernel_clock: Clock,
        read_sys: Callable[[], SysFacts],
        disk_usage: Callable[[Path], Any],
        run_logs: diagnostics.RunLogs | None,
        which: Callable[[str], str | None],
        version: str,
        read_door: ReadDoor,
        quick_check: Callable[[Path], list[str]],
    ) -> None:
        self.config = config
        self.door = door
        self.control = control
        self.clock = clock
        self.read_sys = read_sys
        self.disk_usage = disk_usage
        self.run_logs = run_logs
        self.which = which
        self.version = version
        self.quick_check = quick_check
        self.zone = ZoneInfo(config.site.timezone)
        self.store_path = Path(config.store.path)
        # The door's notion of now, for times read from its database (see the module's doc).
        self.door_clock = AnchoredClock(kernel_clock, door_anchor(door))
        self.facts = DoorFactsCache(read_door)
        self.members = MemberCountCache()
        self.sync_silent_after_s = sync_silent_after(
            config.sync.interval_s, config.sync.backoff_max_s
        )

    # -- the parts of the page -------------------------------------------------------------------

    def _midnight(self, now: datetime, days_back: int = 0) -> datetime:
        """Local midnight ``days_back`` days before ``now``'s local date, as aware UTC."""
        day = now.astimezone(self.zone).date() - timedelta(days=days_back)
        return datetime(day.year, day.month, day.day, tzinfo=self.zone).astimezone(UTC)

    def _day_start(self, now: datetime) -> datetime:
        return self._midnight(now)

    def day_spans(self, now: datetime) -> DaySpans:
        """Today (local midnight to the next) and the same weekday a week before, as aware UTC:
        whole local days, so a change of summer time in between moves neither."""
        return DaySpans(
            today_start=self._midnight(now),
            today_end=self._midnight(now, -1),
            last_week_start=self._midnight(now, 7),
            last_week_end=self._midnight(now, 6),
        )

    def door_state(self) -> tuple[DoorFacts, datetime]:
        """The door database's facts (cached until another process commits) and the door's
        notion of now to age them with."""
        door_now = self.door_clock.wall()
        facts = self.facts.get(
            self.door,
            recent=self.config.web.recent,
            day_start=self._day_start(door_now),
            members=self.members,
            monotonic=self.clock.monotonic(),
            days=self.day_spans(door_now),
        )
        return facts, door_now

    def scanner_report(self) -> tuple[HealthReport | None, str | None]:
        """The scanner's latest health report (None: none yet, or unreadable) and the control
        file's problem in words (None: it was read)."""
        try:
            return self.control.store().health("scanner"), None
        except ControlError as exc:
            self.control.failed()
            return None, str(exc)

    def sync_age_s(self, facts: DoorFacts, door_now: datetime) -> float | None:
        """Seconds since the sync agent last wrote its status (None: unknown)."""
        updated = views.parse_utc(facts.sync.get("updated_at"))
        return None if updated is None else (door_now - updated).total_seconds()

    def checks(
        self, now: datetime, door_now: datetime, facts: DoorFacts, report: HealthReport | None
    ) -> list:
        """The graded checks (``device_health.grade_checks``) of the device as it stands."""
        disk = disk_info(self.store_path.parent, self.disk_usage)
        position = facts.position
        return grade_checks(
            HealthInputs(
                now=now,
                version=self.version,
                expected_fps=float(self.config.camera.fps),
                stale_after_s=self.config.camera.stale_after_s,
                stale_after_hours=self.config.policy.stale_after_hours,
                scanner=None if report is None else report.data,
                scanner_updated_at=None if report is None else report.updated_at,
                database_problem=facts.problem,
                disk_free_bytes=disk["free_bytes"],
                disk_total_bytes=disk["total_bytes"],
                sys=self.read_sys(),
                sync=facts.sync,
                sync_age_s=self.sync_age_s(facts, door_now),
                sync_silent_after_s=self.sync_silent_after_s,
                replica_age_s=None
                if facts.replica_synced_at is None
                else (door_now - facts.replica_synced_at).total_seconds(),
                oldest_pending_age_s=None
                if position is None or position.oldest_pending_at is None
                else (door_now - position.oldest_pending_at).total_seconds(),
            )
        )

    def audit_rows(self, now: datetime, limit: int = AUDIT_ROWS) -> tuple[list, list, str | None]:
        """The newest audit rows and owner requests as the page shows them, and the control
        file's problem in words (None: it was read)."""
        try:
            store = self.control.store()
            audit = views.audit_view(store.recent_audit(limit), now=now, zone=self.zone)
            requests = views.requests_view(store.recent_requests(5), now=now, zone=self.zone)
            return audit, requests, None
        except ControlError as exc:
            self.control.failed()
            return [], [], str(exc)

    def sync_view(self, facts: DoorFacts, door_now: datetime) -> dict[str, Any]:
        return views.sync_view(
            facts, now=door_now, zone=self.zone, silent_after_s=self.sync_silent_after_s
        )

    def overview(self) -> dict[str, Any]:
        """Everything the dashboard shows (and ``/api/overview`` returns). ``now`` in it is the
        door's notion of now; every time also carries its age."""
        now = self.clock.wall()
        facts, door_now = self.door_state()
        report, report_problem = self.scanner_report()
        audit, requests, audit_problem = self.audit_rows(now)
        checks = self.checks(now, door_now, facts, report)
        newest = facts.decisions[0] if facts.decisions else None
        return {
            "now": utc_text(door_now),
            "database_problem": facts.problem,
            "control_problem": report_problem or audit_problem,
            "door": views.door_view(
                report,
                newest,
                door_id=self.config.door.id,
                now=now,
                zone=self.zone,
                door_now=door_now,
            ),
            "today": views.today_view(facts.today),
            "day": None
            if facts.problem
            else views.day_view(facts, self.day_spans(door_now), now=door_now, zone=self.zone),
            "occupancy": views.occupancy_view(report, now=now),
            "decisions": views.decisions_view(
                facts.decisions, names=self.config.web.names, now=door_now, zone=self.zone
            ),
            "sync": self.sync_view(facts, door_now),
            "health": views.health_view(checks),
            "audit": audit,
            "requests": requests,
        }

    def health_data(self) -> tuple[list, DoorFacts, HealthReport | None, datetime, datetime]:
        """(checks, facts, the scanner's report, the kernel's now, the door's now)."""
        now = self.clock.wall()
        facts, door_now = self.door_state()
        report, _ = self.scanner_report()
        return self.checks(now, door_now, facts, report), facts, report, now, door_now

    def health_grades(self) -> tuple[bool, dict[str, str]]:
        """What ``/healthz`` says: True when no check is a PROBLEM, and each check's grade."""
        checks, *_ = self.health_data()
        ok = all(c.grade != Grade.PROBLEM for c in checks)
        return ok, {c.name: c.grade.value for c in checks}

    def metrics_text(self) -> str:
        """The Prometheus text ``/metrics`` serves (``metrics.render_metrics``)."""
        checks, facts, report, now, door_now = self.health_data()
        data = report.data if report is not None else {}
        fresh = (
            report is not None and (now - report.updated_at).total_seconds() <= HEARTBEAT_PROBLEM_S
        )

        def number(key: str) -> float | None:
            value = data.get(key)
            if isinstance(value, bool) or not isinstance(value, int | float):
                return None
            return float(value)

        # Up to now, not to the report: a hung scanner's frame age keeps growing.
        frame_age = None
        last_frame = views.parse_utc(data.get("last_frame_at"))
        if report is not None and last_frame is not None:
            frame_age = max(0.0, (now - last_frame).total_seconds())
        position = facts.position
        oldest = None
        if position is not None:
            oldest = (
                0.0
                if position.oldest_pending_at is None
                else max(0.0, (door_now - position.oldest_pending_at).total_seconds())
            )
        online = facts.sync.get("online")
        if sync_silent(self.sync_age_s(facts, door_now), self.sync_silent_after_s):
            online = False  # a dead agent's last "online" is no longer true
        decisions = data.get("decisions")
        disk = disk_info(self.store_path.parent, self.disk_usage)
        occupancy = views.occupancy_view(report, now=now)
        events = None if facts.problem or facts.day is None else facts.day.events
        return metrics.render_metrics(
            metrics.MetricFacts(
                decisions=decisions if isinstance(decisions, dict) else {},
                scanner_up=fresh and data.get("state") != "stopped",
                backlog=None if position is None else position.backlog,
                oldest_pending_age_s=oldest,
                online=online if isinstance(online, bool) else None,
                decode_ms_p50=number("decode_ms_p50"),
                decode_ms_p95=number("decode_ms_p95"),
                frame_age_s=frame_age,
                fps=number("fps"),
                replica_version=None if facts.problem else facts.replica_version,
                replica_members=facts.members,
                disk_free_bytes=disk["free_bytes"],
                checks=checks,
                occupancy=occupancy["now"],
                occupancy_max_today=occupancy["max_today"],
                capacity=occupancy["capacity"],
                events_today=events,
            )
        )

    def bundle(self) -> bytes:
        """The diagnostics zip (``diagnostics.build_bundle``): status, health, sync, logs, the
        configuration, the integrity check and the audit log. A part that cannot be read says
        why inside the zip instead."""
        now = self.clock.wall()
        checks, facts, _report, _, door_now = self.health_data()
        try:
            status = diagnostics.without_member_ids(
                collect_status(
                    self.store_path,
                    door_id=self.config.door.id,
                    software_version=self.version,
                    clock_quality=self.door_clock.quality().value,
                    now=door_now,
                    disk_usage=self.disk_usage,
                )
            )
        except StoreError as exc:
            status = {"error": str(exc)}
        status = {
            "status": status,
            "health": views.health_view(checks),
            "sync": self.sync_view(facts, door_now),
        }
        # On a connection of its own: the check reads the whole file (seconds on a large one),
        # and the page's shared connection must keep answering meanwhile.
        try:
            findings = self.quick_check(self.store_path)
            integrity = "PRAGMA quick_check: " + ("ok" if findings == ["ok"] else "PROBLEMS") + "\n"
            integrity += "".join(f"{line}\n" for line in findings if findings != ["ok"])
        except StoreError as exc:
            integrity = f"The door's database could not be checked: {exc}\n"
        try:
            entries = self.control.store().recent_audit(500)
            audit = [
                {
                    "at": utc_text(e.at),
                    "action": e.action,
                    "outcome": e.outcome,
                    "detail": e.detail,
                    "client": e.client,
                }
                for e in entries
            ]
        except ControlError as exc:
            self.control.failed()
            audit = [{"error": str(exc)}]
        logs = diagnostics.collect_logs(self.run_logs, self.which)
        return diagnostics.build_bundle(
            status=status,
            logs=logs,
            config=as_dict(self.config),
            integrity=integrity,
            audit=audit,
            now=now,
        )

    # -- the page's writes to the control file ---------------------------------------------------

    def audit(self, action: str, outcome: str, *, detail: str = "", client: str = "") -> None:
        """Write an audit row; a control file that cannot be written is logged, not fatal."""
        try:
            self.control.store().audit(
                action, outcome, now=self.clock.wall(), detail=detail, client=client
            )
        except ControlError as exc:
            self.control.failed()
            log.warning("could not write the audit log: %s", exc)

    def write_audit(self, rows: list[AuditRow]) -> None:
        for row in rows:
            self.audit(row.action, row.outcome, detail=row.detail, client=row.client)

    def submit(self, kind: RequestKind, client: str) -> str | None:
        """Submit an owner request; the problem in words, or None."""
        try:
            self.control.store().submit(kind, now=self.clock.wall(), client=client)
        except ControlError as exc:
            self.control.failed()
            log.warning("could not submit %s: %s", kind.value, exc)
            return str(exc)
        return None
