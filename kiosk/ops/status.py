"""``kiosk status``: what the running device is doing, read from its database (read-only).

``collect_status`` opens the database with ``mode=ro`` (it never creates, migrates or writes) and
gathers: the door id, the replica (version, members, last pull and its age, the file it lives in
and its size), the journal (check-ins per sync state, oldest pending and its age), the sync agent's
last recorded status and whether it still runs, the newest check-ins, clock quality, software
version, the journal database's size and free disk space. The replica's figures are read in one
snapshot of the replica file in use (``Store.replica_summary``), so a switch by the sync agent
meanwhile never mixes the version of one replica with the member count of another.
``render_status`` turns that into aligned text for a person; ``--json`` prints the dict itself
(monitoring).

Whether the agent runs is not taken from its last word alone: ``kiosk sync --once`` ends with a
status that says ``running`` (its round went well), and a killed agent says nothing at all. Every
status the agent writes names its process (``pid`` on kernel boot ``boot_id``); a status whose
process is gone (ended, killed, or of an earlier boot) reads as ``not_running``, online unknown.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from kiosk.core.ids import boot_id
from kiosk.data.database import StoreError
from kiosk.data.store import Store
from sync.protocol import utc_text

RECENT_CHECKINS = 5
# The agent's status keys shown, in this order (kiosk.sync.agent writes them; others are ignored).
SYNC_KEYS = (
    "state",
    "online",
    "last_pull_at",
    "last_push_at",
    "last_error",
    "last_error_at",
    "backlog",
    "updated_at",
)

DiskUsage = Callable[[Path], Any]  # shutil.disk_usage's shape: .total, .used, .free (bytes)
# The states of an agent that, by its own word, is at work (kiosk.sync.agent's RUNNING, OFFLINE).
AT_WORK = ("running", "offline")
# kiosk.core.ids.boot_id's answer where the kernel gives no boot id (not Linux): one per process,
# so it says nothing about whether two processes share a boot.
_NO_BOOT_ID = "nonlinux-"


def process_exists(pid: int) -> bool:
    """True when process ``pid`` exists on this machine (another user's counts: the agent runs
    as the kiosk's service user). Sends no signal (signal 0 only checks)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def agent_running(
    sync: dict[str, Any], *, this_boot: str, exists: Callable[[int], bool] = process_exists
) -> bool | None:
    """Whether the sync agent whose last status is ``sync`` (``Store.sync_status``) still runs.
    None: it never ran. False: it said it stopped, or the process that wrote the status
    (``pid`` on ``boot_id``) is gone or of another boot than ``this_boot``. True otherwise,
    including a status without a process (an agent older than this check), taken at its word.

    Limit: a pid the kernel has handed to another process since the agent died reads as running
    (pids come back only after the kernel has gone through its whole range)."""
    state = sync.get("state")
    if state is None:
        return None
    if state not in AT_WORK:
        return False
    pid, boot = sync.get("pid"), sync.get("boot_id")
    if not isinstance(pid, int) or isinstance(pid, bool):
        return True
    comparable = isinstance(boot, str) and not (
        boot.startswith(_NO_BOOT_ID) or this_boot.startswith(_NO_BOOT_ID)
    )
    if comparable and boot != this_boot:
        return False
    return exists(pid)


def sync_view(
    sync: dict[str, Any], *, this_boot: str, exists: Callable[[int], bool] = process_exists
) -> dict[str, Any]:
    """The ``sync`` part of the status: the agent's recorded keys (``SYNC_KEYS``), ``running``
    (``agent_running``) and its ``pid``. An agent that is gone while its last status said it was
    at work shows ``state`` ``not_running`` and ``online`` None (nobody is talking to the cloud)."""
    view: dict[str, Any] = {key: sync.get(key) for key in SYNC_KEYS}
    running = agent_running(sync, this_boot=this_boot, exists=exists)
    pid = sync.get("pid")
    view["running"] = running
    view["pid"] = pid if isinstance(pid, int) and not isinstance(pid, bool) else None
    if running is False and view["state"] in AT_WORK:
        view["state"] = "not_running"
        view["online"] = None
    return view


def existing_folder(path: Path) -> Path:
    """``path`` itself or its nearest existing ancestor (disk space of a folder not made yet)."""
    path = Path(path).absolute()
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path("/")


def disk_info(folder: Path, disk_usage: DiskUsage = shutil.disk_usage) -> dict[str, Any]:
    """Free and total bytes of the file system holding ``folder`` (None when unreadable)."""
    where = existing_folder(folder)
    try:
        usage = disk_usage(where)
    except OSError:
        return {"path": str(where), "free_bytes": None, "total_bytes": None}
    return {"path": str(where), "free_bytes": int(usage.free), "total_bytes": int(usage.total)}


def _age_s(now: datetime, then: datetime | None) -> float | None:
    return None if then is None else round(max(0.0, (now - then).total_seconds()), 3)


def collect_status(
    db_path: Path,
    *,
    door_id: str,
    software_version: str,
    clock_quality: str,
    now: datetime | None = None,
    disk_usage: DiskUsage = shutil.disk_usage,
    this_boot: str | None = None,
    exists: Callable[[int], bool] = process_exists,
) -> dict[str, Any]:
    """The device's status as a JSON-ready dict (see the module docstring for the parts). Times
    are UTC text, ages seconds, sizes bytes. ``this_boot`` (default: the kernel's boot id) and
    ``exists`` (default: ``process_exists``) decide whether the sync agent still runs. Raises
    StoreError when the database cannot be read (missing, damaged, a schema this code does not
    read)."""
    now = now or datetime.now(UTC)
    db_path = Path(db_path)
    with Store.open(db_path, readonly=True) as store:
        schema = store.schema_version()
        replica, members = store.replica_summary()
        replica_file = store.replica_file
        counts = store.counts_by_state()
        position = store.journal_position()
        sync = store.sync_status()
        recent = store.recent_checkins(RECENT_CHECKINS)
    size = _size_with_wal(db_path)
    return {
        "door_id": door_id,
        "software_version": software_version,
        "now": utc_text(now),
        "clock_quality": clock_quality,
        "database": {"path": str(db_path), "schema_version": schema, "size_bytes": size},
        "replica": {
            "version": replica.version,
            "members": members,
            "synced_at": None if replica.synced_at is None else utc_text(replica.synced_at),
            "age_s": _age_s(now, replica.synced_at),
            # The replica's own file beside the database (None: no replica yet, or unreadable).
            "file": None if replica_file is None else str(replica_file),
            "size_bytes": None if replica_file is None else _size_with_wal(replica_file),
        },
        "journal": {
            **counts,
            "total": sum(counts.values()),
            "last_seq": position.last_seq,
            "oldest_pending_at": (
                None if position.oldest_pending_at is None else utc_text(position.oldest_pending_at)
            ),
            "oldest_pending_age_s": _age_s(now, position.oldest_pending_at),
        },
        "sync": sync_view(
            sync, this_boot=this_boot if this_boot is not None else boot_id(), exists=exists
        ),
        "recent_checkins": [
            {
                "seq": c.seq,
                "at": utc_text(c.wall_time),
                "door_id": c.door_id,
                "decision": c.decision.value,
                "reason": c.reason.value,
                "member_id": c.member_id,
                "sync_state": c.sync_state.value,
            }
            for c in recent
        ],
        "disk": disk_info(db_path.parent, disk_usage),
    }


def _size_with_wal(path: Path) -> int:
    """Bytes of the database ``path`` and its -wal (0 for what no longer exists)."""
    total = 0
    for part in (path, path.with_name(path.name + "-wal")):
        try:
            total += part.stat().st_size
        except OSError:
            continue
    return total


def human_age(seconds: float | None) -> str:
    """``"never"``, ``"42 s"``, ``"5 min"``, ``"3.2 h"`` or ``"4.0 days"``."""
    if seconds is None:
        return "never"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def human_bytes(size: int | None) -> str:
    if size is None:
        return "unknown"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"  # unreachable; keeps type checkers calm


def render_status(status: dict[str, Any], out: TextIO) -> None:
    """Write ``status`` (from ``collect_status``) as aligned text."""
    replica, journal, sync = status["replica"], status["journal"], status["sync"]
    online = {True: "online", False: "offline", None: "unknown"}[sync.get("online")]
    if sync.get("state") == "not_running":
        agent = f"not running (its process {sync.get('pid')} has ended), online unknown"
    else:
        agent = f"{sync.get('state') or 'never ran'}, {online}"
    rows = [
        ("door", status["door_id"]),
        ("software", status["software_version"]),
        ("clock", status["clock_quality"]),
        (
            "replica",
            f"version {replica['version']}, {replica['members']} members, "
            f"last pull {human_age(replica['age_s'])}"
            + (" ago" if replica["age_s"] is not None else "")
            + (
                ""
                if replica.get("file") is None
                else f" ({Path(replica['file']).name}, {human_bytes(replica['size_bytes'])})"
            ),
        ),
        (
            "journal",
            f"{journal['pending']} pending, {journal['synced']} synced, "
            f"{journal['rejected']} rejected (last seq {journal['last_seq']})",
        ),
        (
            "oldest pending",
            "none"
            if journal["oldest_pending_age_s"] is None
            else f"{human_age(journal['oldest_pending_age_s'])} old",
        ),
        ("sync", agent),
        ("last pull", sync.get("last_pull_at") or "never"),
        ("last push", sync.get("last_push_at") or "never"),
        ("last error", sync.get("last_error") or "none"),
        (
            "database",
            f"{status['database']['path']} (schema {status['database']['schema_version']}, "
            f"{human_bytes(status['database']['size_bytes'])})",
        ),
        ("disk free", f"{human_bytes(status['disk']['free_bytes'])} on {status['disk']['path']}"),
    ]
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        out.write(f"{label:<{width}}  {value}\n")
    out.write("recent check-ins:\n")
    if not status["recent_checkins"]:
        out.write("  none yet\n")
    for c in status["recent_checkins"]:
        out.write(
            f"  #{c['seq']} {c['at']} {c['door_id']} {c['decision']} ({c['reason']}) "
            f"[{c['sync_state']}]\n"
        )


__all__ = [
    "StoreError",
    "agent_running",
    "collect_status",
    "disk_info",
    "process_exists",
    "render_status",
]
