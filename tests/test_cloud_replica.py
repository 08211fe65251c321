"""The replica going down: snapshot pages, changes with tombstones, checkpoints, the idle poll,
expired cursors, and versions that follow commit order under concurrent writers. Every test runs
on SQLite and on PostgreSQL."""

from __future__ import annotations

import threading
from datetime import timedelta

from cloud import admin
from pg import (
    Harness,
    cloud_db_url_fixture,  # noqa: F401
    cloud_fixture,  # noqa: F401
    pg_server_fixture,  # noqa: F401
    replica_checksum,
)
from sync.protocol import KIND_ORDER, PROTOCOL_VERSION, parse_change_page, parse_snapshot_page


def seed(cloud: Harness) -> dict:
    """Two plans, seven members, three memberships, hours and a closure for the main gym, and
    rows of a second gym that the main gym's devices must not see."""
    ids: dict = {"members": []}
    ids["plans"] = [
        cloud.ok("POST", "/plans", json={"id": f"p{n}", "name": f"Plan {n}", "windows": []})["id"]
        for n in (1, 2)
    ]
    for n in range(7):
        body = {"id": f"m{n}", "first_name": f"F{n}", "last_name": "L", "code": f"CARD-{n:04d}"}
        ids["members"].append(cloud.ok("POST", "/members", json=body)["id"])
    for n in range(3):
        body = {
            "id": f"ms{n}",
            "member_id": f"m{n}",
            "plan_id": "p1",
            "type": "CLASS_PACK",
            "start_date": "2026-01-01",
            "remaining_classes": 10,
        }
        cloud.ok("POST", "/memberships", json=body)
    hours = [{"weekday": d, "open_minute": 360, "close_minute": 1320} for d in (0, 1)]
    cloud.ok("PUT", f"/gyms/{cloud.gym_id}/hours", json={"hours": hours})
    closure = {"start_date": "2026-12-24", "end_date": "2026-12-26", "reason": "Christmas"}
    ids["closure"] = cloud.ok("POST", f"/gyms/{cloud.gym_id}/closures", json=closure)["id"]
    other = cloud.ok("POST", "/gyms", json={"name": "Other", "timezone": "Europe/Paris"})["id"]
    ids["other_gym"] = other
    cloud.ok("PUT", f"/gyms/{other}/hours", json={"hours": [hours[0]]})
    cloud.ok("POST", f"/gyms/{other}/closures", json=closure)
    return ids


def test_snapshot_pages_walk_every_live_row_in_kind_order(cloud):
    seed(cloud)
    device = cloud.enrol()
    pages, after = [], None
    while True:
        params = {"limit": 3} | ({"after": after} if after else {})
        response = cloud.get(device, "/v1/replica/snapshot", **params)
        assert response.status_code == 200
        page = parse_snapshot_page(response.json(), limit=3)
        assert len(page.rows) <= 3
        pages.append(page)
        after = page.next
        if after is None:
            break
    rows = [r for p in pages for r in p.rows]
    keys = [(KIND_ORDER[r.kind], r.id) for r in rows]
    assert keys == sorted(keys), "rows come in (kind order, id) order across pages"
    assert len(set(keys)) == len(keys)
    kinds = [r.kind for r in rows]
    assert kinds.count("plan") == 2
    assert kinds.count("member") == 7
    assert kinds.count("membership") == 3
    assert kinds.count("hours") == 2, "the other gym's hours are not this gym's replica"
    assert kinds.count("closure") == 1
    assert all(p.code_salt == pages[0].code_salt for p in pages)
    assert all(r.version is None for r in rows)

    # The checkpoint (from the changes feed) vouches for exactly these rows.
    held = {(r.kind, r.id): r.data for r in rows}
    checkpoint = cloud.follow(device, 0, {})
    assert (checkpoint["checksum"], checkpoint["count"]) == replica_checksum(held)
    assert checkpoint["version"] == pages[0].version


def test_member_rows_carry_the_code_hash_never_the_code(cloud):
    seed(cloud)
    device = cloud.enrol()
    page = cloud.get(device, "/v1/replica/snapshot", limit=5000).json()
    members = [r for r in page["rows"] if r["kind"] == "member"]
    assert members
    from sync.credentials import code_hash

    salt = bytes.fromhex(page["code_salt"])
    m0 = next(r for r in members if r["id"] == "m0")
    assert m0["data"]["code_hash"] == code_hash("CARD-0000", salt)
    assert "CARD-0000" not in str(page)
    assert m0["data"]["organization_id"] == cloud.org_id


def test_changes_carry_edits_and_tombstones_and_converge_on_the_checkpoint(cloud):
    ids = seed(cloud)
    device = cloud.enrol()
    version, rows = cloud.pull_all(device)
    cloud.ok("PATCH", "/members/m1", json={"first_name": "Renamed"})
    assert cloud.admin("DELETE", "/memberships/ms2").status_code == 204
    assert (
        cloud.admin("DELETE", f"/gyms/{cloud.gym_id}/closures/{ids['closure']}").status_code == 204
    )
    assert cloud.admin("DELETE", "/members/m6").status_code == 204
    # A change to the other gym bumps the version but is not in this gym's changes.
    other_hours = {"hours": [{"weekday": 5, "open_minute": 0, "close_minute": 60}]}
    cloud.ok("PUT", f"/gyms/{ids['other_gym']}/hours", json=other_hours)

    response = cloud.get(device, "/v1/replica/changes", since=version)
    assert response.status_code == 200
    page = parse_change_page(response.json())
    assert page.since == version
    assert page.next is None and page.checkpoint is not None
    changed = {(r.kind, r.id): r for r in page.rows}
    assert changed[("member", "m1")].data["first_name"] == "Renamed"
    assert changed[("membership", "ms2")].deleted
    assert changed[("closure", ids["closure"])].deleted
    assert changed[("member", "m6")].deleted
    assert not any(r.kind == "hours" for r in page.rows)
    order = [(r.version, KIND_ORDER[r.kind], r.id) for r in page.rows]
    assert order == sorted(order)
    assert response.headers["ETag"] == f'"v{page.checkpoint.version}"'

    cloud.follow(device, version, rows)
    assert (page.checkpoint.checksum, page.checkpoint.count) == replica_checksum(rows)
    assert ("member", "m6") not in rows and ("member", "m1") in rows


def test_change_pages_split_rows_of_one_version_without_losing_any(cloud):
    device = cloud.enrol()
    csv = "member_id,first_name,last_name,code\n" + "".join(
        f"x{n:02d},A,B,CODE-{n:04d}\n" for n in range(23)
    )
    imported = cloud.admin(
        "POST", "/members/import", content=csv, headers={"Content-Type": "text/csv"}
    )
    assert imported.status_code == 200, imported.text
    rows: dict = {}
    pages = 0
    after = None
    while True:
        params = {"since": 0, "limit": 5} | ({"after": after} if after else {})
        body = cloud.get(device, "/v1/replica/changes", **params).json()
        parsed = parse_change_page(body, limit=5)
        pages += 1
        rows.update({(r.kind, r.id): r.data for r in parsed.rows})
        after = parsed.next
        if after is None:
            break
    assert pages == 5
    assert len(rows) == 23
    assert (parsed.checkpoint.checksum, parsed.checkpoint.count) == replica_checksum(rows)


def test_edits_between_snapshot_pages_arrive_as_changes_since_the_first_page(cloud):
    seed(cloud)
    device = cloud.enrol()
    first = cloud.get(device, "/v1/replica/snapshot", limit=4).json()
    rows = {(r["kind"], r["id"]): r["data"] for r in first["rows"]}
    # Edit a row already sent and delete one not yet sent.
    cloud.ok("PATCH", "/plans/p1", json={"name": "Off-peak"})
    assert cloud.admin("DELETE", "/members/m5").status_code == 204
    after = first["next"]
    while after:
        page = cloud.get(device, "/v1/replica/snapshot", limit=4, after=after).json()
        rows.update({(r["kind"], r["id"]): r["data"] for r in page["rows"]})
        after = page["next"]
    checkpoint = cloud.follow(device, first["version"], rows)
    assert rows[("plan", "p1")]["name"] == "Off-peak"
    assert (checkpoint["checksum"], checkpoint["count"]) == replica_checksum(rows)


def test_the_idle_poll_is_a_304_with_an_etag(cloud):
    device = cloud.enrol()
    cloud.ok("POST", "/plans", json={"name": "Any"})
    version = cloud.ok("GET", "/organization")["version"]
    headers = {**device.headers, "If-None-Match": f'"v{version}"'}
    idle = cloud.client.get("/v1/replica/changes", params={"since": version}, headers=headers)
    assert idle.status_code == 304
    assert idle.content == b""
    assert idle.headers["ETag"] == f'"v{version}"'
    assert idle.headers["FitFlow-Protocol"] == str(PROTOCOL_VERSION)
    cloud.ok("POST", "/plans", json={"name": "Another"})
    moved = cloud.client.get("/v1/replica/changes", params={"since": version}, headers=headers)
    assert moved.status_code == 200
    assert moved.headers["ETag"] == f'"v{version + 1}"'


def test_a_fresh_organisation_has_an_empty_consistent_replica(cloud):
    device = cloud.enrol()
    snapshot = cloud.get(device, "/v1/replica/snapshot").json()
    assert snapshot["rows"] == [] and snapshot["next"] is None
    assert snapshot["version"] == 0
    # Asked without If-None-Match (a snapshot's catch-up), nothing changed still has a checkpoint.
    empty = cloud.get(device, "/v1/replica/changes", since=0)
    assert empty.status_code == 200
    assert empty.json()["rows"] == []
    assert empty.json()["checkpoint"] == {"version": 0, "checksum": "0" * 16, "count": 0}


def test_cursor_expired_after_a_purge_and_for_a_version_from_the_future(cloud):
    seed(cloud)
    device = cloud.enrol()
    version, _rows = cloud.pull_all(device)
    assert cloud.admin("DELETE", "/members/m3").status_code == 204
    future = cloud.get(device, "/v1/replica/changes", since=version + 50)
    assert future.status_code == 410
    assert future.json()["error"] == "cursor_expired"

    # Tombstones younger than the age limit stay; older ones go and raise purged_version.
    assert admin.purge(cloud.database, 30, cloud.clock() + timedelta(days=29)) == {}
    purged = admin.purge(cloud.database, 30, cloud.clock() + timedelta(days=31))
    assert purged == {cloud.org_id: version + 1}
    assert cloud.ok("GET", "/organization")["purged_version"] == version + 1
    expired = cloud.get(device, "/v1/replica/changes", since=version)
    assert expired.status_code == 410
    assert expired.json()["error"] == "cursor_expired"
    # A device at the purged version or later is fine; a snapshot is always fine.
    current = cloud.get(device, "/v1/replica/changes", since=version + 1)
    assert current.status_code == 200 and current.json()["rows"] == []
    fresh_version, fresh = cloud.pull_all(device)
    assert ("member", "m3") not in fresh
    assert cloud.get(device, "/v1/replica/changes", since=fresh_version).status_code == 200


def test_bad_replica_parameters_are_400(cloud):
    device = cloud.enrol()
    for path, params, field in (
        ("/v1/replica/snapshot", {"limit": 0}, "limit"),
        ("/v1/replica/snapshot", {"limit": 5001}, "limit"),
        ("/v1/replica/snapshot", {"limit": "ten"}, "limit"),
        ("/v1/replica/snapshot", {"after": "nonsense"}, "after"),
        ("/v1/replica/snapshot", {"after": "member:bad id!"}, "after"),
        ("/v1/replica/changes", {}, "since"),
        ("/v1/replica/changes", {"since": -1}, "since"),
        ("/v1/replica/changes", {"since": 0, "after": "x:member:m1"}, "after"),
    ):
        response = cloud.get(device, path, **params)
        assert response.status_code == 400, (path, params)
        assert response.json()["detail"].startswith(field), response.json()


def test_versions_follow_commit_order_under_concurrent_writers(cloud):
    """Writers in threads edit members as fast as they can while a reader follows the changes
    feed. If a version could become visible before a smaller one committed, the reader would
    step past the smaller one and miss its edit: its checksum would stop matching the
    checkpoint, or its final state would differ from the cloud's."""
    device = cloud.enrol()
    members = [f"c{n}" for n in range(8)]
    for member in members:
        cloud.ok("POST", "/members", json={"id": member, "first_name": "v0", "last_name": "L"})
    since, rows = cloud.pull_all(device)
    now = cloud.clock()
    writers, edits = 4, 40
    errors: list[BaseException] = []

    def write(w: int) -> None:
        try:
            for n in range(edits):
                member = members[(w * 3 + n) % len(members)]
                cloud.database.transact(
                    lambda tx, m=member, n=n: admin.save_member(
                        tx, cloud.org_id, m, {"first_name": f"w{w}-{n}"}, now
                    )
                )
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    checkpoints = 0
    while any(t.is_alive() for t in threads) or checkpoints == 0:
        checkpoint = cloud.follow(device, since, rows, limit=3)
        if checkpoint is not None:
            checkpoints += 1
            assert (checkpoint["checksum"], checkpoint["count"]) == replica_checksum(rows)
            since = checkpoint["version"]
    for t in threads:
        t.join()
    assert not errors, errors
    final = cloud.follow(device, since, rows)
    if final is not None:
        assert (final["checksum"], final["count"]) == replica_checksum(rows)
    _version, truth = cloud.pull_all(device)
    assert rows == truth
    assert cloud.ok("GET", "/organization")["version"] == len(members) + writers * edits


def test_a_worker_never_answers_with_totals_another_worker_has_moved_past(cloud):
    """Each worker process of `kiosk cloud serve --workers N` keeps its own cache of replica
    totals. Keyed by (organisation, gym, version) with the version read in the same transaction,
    an entry can be missing but never stale: a write through another worker moves the version,
    and the next answer looks up the new one."""
    seed(cloud)
    other = Harness(cloud.url, clock=cloud.clock)  # a second worker: its own app, pool, cache
    try:
        device = cloud.enrol()
        since, rows = cloud.pull_all(device)
        assert cloud.follow(device, since, rows)["version"] == since
        old_checksum, old_count = replica_checksum(rows)
        beat = {"replica_version": since, "replica_checksum": old_checksum}
        assert cloud.heartbeat(device, **beat, replica_count=old_count)["resnapshot"] is False
        assert len(cloud.database.cache) > 0  # this worker holds the totals at `since` now

        member = {"id": "late", "first_name": "Late", "last_name": "L"}
        other.ok("POST", "/members", token=cloud.admin_token, json=member)

        checkpoint = cloud.follow(device, since, rows)
        assert checkpoint["version"] == since + 1
        checksum, count = replica_checksum(rows)
        assert (checkpoint["checksum"], checkpoint["count"]) == (checksum, count)
        assert count == old_count + 1
        moved = {"replica_version": since + 1, "replica_count": count}
        for worker in (cloud, other):
            answer = worker.heartbeat(device, **moved, replica_checksum=checksum)
            assert answer["resnapshot"] is False
        # The old totals at the new version are a mismatch on the worker that cached them.
        stale = cloud.heartbeat(device, **moved | {"replica_count": old_count},
                                replica_checksum=old_checksum)  # fmt: skip
        assert stale["resnapshot"] is True
    finally:
        other.close()


def test_the_idle_poll_costs_the_database_one_statement(cloud, monkeypatch):
    """The device's token and its organisation's version are read by one statement outside any
    explicit transaction: no BEGIN and COMMIT round trips, no write (last_seen_at is fresh)."""
    from cloud import db

    device = cloud.enrol()
    cloud.ok("POST", "/plans", json={"name": "Any"})
    version = cloud.ok("GET", "/organization")["version"]
    statements: list[str] = []
    real = db.Tx._execute

    def counted(self, sql, params):
        statements.append(sql.split()[0].upper())
        return real(self, sql, params)

    monkeypatch.setattr(db.Tx, "_execute", counted)
    headers = {**device.headers, "If-None-Match": f'"v{version}"'}
    idle = cloud.client.get("/v1/replica/changes", params={"since": version}, headers=headers)
    assert idle.status_code == 304
    assert statements == ["SELECT"]
