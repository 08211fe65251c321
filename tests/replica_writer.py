"""The replica writer of test_replica_switch.py, run as a child process: ``python
replica_writer.py MODE DB`` (MODE ``snapshot``, ``changes`` or ``open``). It imports no more than
the store needs, so each of the many kills costs little. Also the replicas it writes (A in use, B
arriving by snapshot, C by changes), which the tests compare with.

Every replica phase (``kiosk.data.database.REPLICA_PHASES``) is printed as ``phase <name>``, after
which the writer waits for a line ``go`` on its standard input; every check-in it journals is
printed as ``ack <id>`` once committed; ``done`` at the end.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from kiosk.core.model import ClockQuality, Decision, Now, Reason, Verdict
from kiosk.data.store import Store
from sync.protocol import Checkpoint, ReplicaRow, checksum, make_row

T0 = datetime(2026, 5, 6, 9, 0, tzinfo=UTC)
SALT = b"\x05" * 32
PAGES = 3
PAGE_MEMBERS = 40


# -- two replicas: A in use, B arriving ------------------------------------------------------------


def member_row(n: int, *, tag: str) -> ReplicaRow:
    return make_row(
        "member",
        f"m{n:04d}",
        {
            "organization_id": "org-1",
            "first_name": f"{tag}{n}",
            "last_name": "Member",
            "status": "ACTIVE",
            "is_staff": False,
            "code_hash": f"{tag}{n:063x}",  # tags a, b, c: hex digits
        },
    )


def membership_row(n: int) -> ReplicaRow:
    return make_row(
        "membership",
        f"ms{n:04d}",
        {
            "member_id": f"m{n:04d}",
            "plan_id": "p1",
            "type": "SUBSCRIPTION",
            "start_date": "2026-01-01",
            "end_date": None,
            "remaining_classes": None,
        },
    )


PLAN = make_row("plan", "p1", {"name": "Full", "windows": [[0, 360, 1320]]})
HOURS = make_row("hours", "h0", {"weekday": 0, "open_minute": 360, "close_minute": 1320})


def replica_a() -> list[ReplicaRow]:
    """A: members 0-29 (codes tagged a)."""
    return [PLAN, *(member_row(n, tag="a") for n in range(30)), *map(membership_row, range(30)),
            HOURS]  # fmt: skip


def b_pages() -> list[list[ReplicaRow]]:
    """B's snapshot pages, read at different moments: members 0-119 (codes tagged b) with a
    membership each; the last page is read after member 7 was deleted in the cloud."""
    members = [member_row(n, tag="b") for n in range(PAGES * PAGE_MEMBERS)]
    pages = [[PLAN, *members[:PAGE_MEMBERS]]]
    for k in range(1, PAGES):
        pages.append(members[k * PAGE_MEMBERS : (k + 1) * PAGE_MEMBERS])
    pages.append([membership_row(n) for n in range(PAGES * PAGE_MEMBERS) if n != 7])
    return pages


def b_catch_up() -> list[ReplicaRow]:
    """The changes since B's first page: member 7 deleted (its membership went with it)."""
    return [ReplicaRow("member", "m0007", None, deleted=True)]


def b_rows() -> list[ReplicaRow]:
    rows = [r for page in b_pages() for r in page]
    return [r for r in rows if r.id not in ("m0007", "ms0007")]


def checkpoint_of(version: int, rows: list[ReplicaRow]) -> Checkpoint:
    return Checkpoint(version, checksum(r.row_hash() for r in rows), len(rows))


A_VERSION, B_VERSION, C_VERSION = 10, 20, 21


def c_changes() -> list[ReplicaRow]:
    """Changes from A to C: member 3 paused, member 4 deleted (with its membership), 90 new."""
    paused = make_row("member", "m0003", {**member_row(3, tag="a").data, "status": "PAUSED"})
    return [paused, ReplicaRow("member", "m0004", None, deleted=True),
            *(member_row(n, tag="c") for n in range(100, 190))]  # fmt: skip


def c_rows() -> list[ReplicaRow]:
    changed = {r.id: r for r in c_changes() if not r.deleted}
    kept = [changed.pop(r.id, r) for r in replica_a() if r.id not in ("m0004", "ms0004")]
    return kept + list(changed.values())


def load_a(db: Path) -> None:
    with Store.open(db) as store:
        store.begin_snapshot()
        store.add_snapshot_rows(replica_a())
        assert store.apply_checkpoint(
            checkpoint_of(A_VERSION, replica_a()), code_salt=SALT, synced_at=T0,
            into_snapshot=True,
        ).ok  # fmt: skip


# -- the writer ---------------------------------------------------------------------------------------


def now(n: int) -> Now:
    return Now(T0 + timedelta(seconds=n), n + 1, "boot-kill", ClockQuality.NTP_SYNCED)


def main(mode: str, db: str) -> None:
    """The writer: every replica phase is printed and waits for "go" on stdin; every check-in it
    journals is printed ("ack <id>") once committed."""

    def hook(phase: str) -> None:
        print(f"phase {phase}", flush=True)
        if sys.stdin.readline().strip() != "go":
            sys.exit(3)

    if mode == "open":  # the upgrade: carry-over on opening
        Store.open(Path(db), on_replica_phase=hook).close()
        print("done", flush=True)
        return
    with Store.open(Path(db), on_replica_phase=hook) as store:
        n = 0

        def checkin() -> None:
            nonlocal n
            n += 1
            row = store.append_checkin(
                Decision(Verdict.DENIED, Reason.UNKNOWN_CODE), door_id="front",
                replica_version=A_VERSION, now=now(n),
            )  # fmt: skip
            print(f"ack {row.id}", flush=True)

        if mode == "snapshot":
            store.begin_snapshot()
            for page in b_pages():
                store.add_snapshot_rows(page)
                checkin()
            store.stage_changes(b_catch_up(), into_snapshot=True)
            checkin()
            result = store.apply_checkpoint(
                checkpoint_of(B_VERSION, b_rows()), code_salt=SALT, synced_at=T0,
                into_snapshot=True,
            )  # fmt: skip
        else:
            store.stage_changes(c_changes())
            checkin()
            result = store.apply_checkpoint(
                checkpoint_of(C_VERSION, c_rows()), code_salt=SALT, synced_at=T0,
                into_snapshot=False,
            )  # fmt: skip
        assert result.ok, result
        checkin()
    print("done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
