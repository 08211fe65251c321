"""The admin API: CRUD with validation, tenant scoping, the CSV import, devices and attendance.
Every test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import re

from cloud import db, importer
from inthread_client import InThreadClient
from pg import (
    BOOT,
    SEC,
    Harness,
    cloud_db_url_fixture,  # noqa: F401
    cloud_fixture,  # noqa: F401
    make_item,
    pg_server_fixture,  # noqa: F401
)
from sync.protocol import make_row

CSV = {"Content-Type": "text/csv"}


def _fields(response) -> list[str]:
    return [f["field"] for f in response.json()["fields"]]


# -- members, plans, memberships -------------------------------------------------------------------


def test_member_crud_returns_the_card_code_never_its_hash(cloud):
    made = cloud.ok(
        "POST", "/members", json={"first_name": "Alice", "last_name": "A", "code": "ALICE-001"}
    )
    assert made["id"].startswith("mbr_")
    assert made == {
        "id": made["id"],
        "first_name": "Alice",
        "last_name": "A",
        "status": "ACTIVE",
        "is_staff": False,
        "code": "ALICE-001",
        "version": 1,
    }
    assert cloud.ok("GET", f"/members/{made['id']}") == made
    patched = cloud.ok("PATCH", f"/members/{made['id']}", json={"status": "PAUSED", "code": None})
    assert (patched["status"], patched["code"], patched["first_name"]) == ("PAUSED", None, "Alice")
    assert patched["version"] == 2
    assert cloud.admin("DELETE", f"/members/{made['id']}").status_code == 204
    assert cloud.admin("GET", f"/members/{made['id']}").status_code == 404
    assert cloud.admin("DELETE", f"/members/{made['id']}").status_code == 404
    # The id of a deleted member can be used again.
    again = cloud.ok(
        "POST", "/members", json={"id": made["id"], "first_name": "A", "last_name": "B"}
    )
    assert again["version"] == 4


def test_member_lists_are_keyset_paginated(cloud):
    for n in range(7):
        cloud.ok("POST", "/members", json={"id": f"m{n}", "first_name": "F", "last_name": "L"})
    seen, after = [], None
    while True:
        page = cloud.ok(
            "GET", "/members", params={"limit": 3} | ({"after": after} if after else {})
        )
        seen += [m["id"] for m in page["items"]]
        after = page["next"]
        if after is None:
            break
    assert seen == [f"m{n}" for n in range(7)]
    assert cloud.admin("GET", "/members", params={"limit": 0}).status_code == 422


def test_invalid_member_fields_are_422_with_their_paths(cloud):
    cases = [
        ({"first_name": "A" * 201, "last_name": "L"}, "first_name"),
        ({"first_name": "Bad\x07", "last_name": "L"}, "first_name"),
        ({"first_name": "A", "last_name": "L", "status": "GONE"}, "status"),
        ({"first_name": "A", "last_name": "L", "code": "no spaces"}, "code"),
        ({"first_name": "A", "last_name": "L", "code": "abc"}, "code"),
        ({"first_name": "A", "last_name": "L", "id": "bad id"}, "id"),
        ({"first_name": "A"}, "last_name"),
        ({"first_name": "A", "last_name": "L", "shoe_size": 42}, "shoe_size"),
    ]
    for body, field in cases:
        response = cloud.admin("POST", "/members", json=body)
        assert response.status_code == 422, (body, response.text)
        assert response.json()["error"] == "invalid_request"
        assert field in _fields(response), (body, response.json())
    assert cloud.ok("GET", "/members")["items"] == []


def test_ids_and_card_codes_are_unique(cloud):
    cloud.ok(
        "POST", "/members", json={"id": "m1", "first_name": "A", "last_name": "B", "code": "CARD-1"}
    )
    taken_id = cloud.admin(
        "POST", "/members", json={"id": "m1", "first_name": "C", "last_name": "D"}
    )
    assert taken_id.status_code == 409
    taken_code = cloud.admin(
        "POST", "/members", json={"first_name": "C", "last_name": "D", "code": "CARD-1"}
    )
    assert taken_code.status_code == 409
    assert "m1" in taken_code.json()["detail"]
    # Keeping one's own code is fine.
    assert (
        cloud.ok("PATCH", "/members/m1", json={"code": "CARD-1", "last_name": "X"})["code"]
        == "CARD-1"
    )


def test_plans_validate_windows_and_cannot_be_deleted_while_used(cloud):
    bad = cloud.admin("POST", "/plans", json={"name": "Off-peak", "windows": [[0, 600, 500]]})
    assert bad.status_code == 422
    assert _fields(bad) == ["windows[0]"]
    bad_minute = cloud.admin("POST", "/plans", json={"name": "X", "windows": [[0, 600, 2000]]})
    assert _fields(bad_minute) == ["windows[0][2]"]
    plan = cloud.ok(
        "POST",
        "/plans",
        json={"id": "p1", "name": "Off-peak", "windows": [[1, 0, 60], [0, 600, 900]]},
    )
    assert plan["windows"] == [[0, 600, 900], [1, 0, 60]]
    cloud.ok("POST", "/members", json={"id": "m1", "first_name": "A", "last_name": "B"})
    ms = {"member_id": "m1", "plan_id": "p1", "type": "SUBSCRIPTION", "start_date": "2026-01-01"}
    membership = cloud.ok("POST", "/memberships", json=ms)
    in_use = cloud.admin("DELETE", "/plans/p1")
    assert in_use.status_code == 409
    assert cloud.admin("DELETE", f"/memberships/{membership['id']}").status_code == 204
    assert cloud.admin("DELETE", "/plans/p1").status_code == 204


def test_memberships_check_their_member_and_plan_and_go_with_the_member(cloud):
    base = {"type": "CLASS_PACK", "start_date": "2026-01-01", "remaining_classes": 10}
    missing = cloud.admin(
        "POST", "/memberships", json=base | {"member_id": "ghost", "plan_id": "nope"}
    )
    assert missing.status_code == 422
    assert _fields(missing) == ["member_id", "plan_id"]
    cloud.ok("POST", "/members", json={"id": "m1", "first_name": "A", "last_name": "B"})
    bad_dates = cloud.admin(
        "POST", "/memberships", json=base | {"member_id": "m1", "end_date": "2025-01-01"}
    )
    assert _fields(bad_dates) == ["end_date"]
    made = cloud.ok("POST", "/memberships", json=base | {"id": "ms1", "member_id": "m1"})
    assert made["remaining_classes"] == 10 and made["plan_id"] is None
    patched = cloud.ok("PATCH", "/memberships/ms1", json={"remaining_classes": 12})
    assert patched["remaining_classes"] == 12 and patched["type"] == "CLASS_PACK"
    assert [
        m["id"] for m in cloud.ok("GET", "/memberships", params={"member_id": "m1"})["items"]
    ] == ["ms1"]
    assert cloud.admin("DELETE", "/members/m1").status_code == 204
    assert cloud.admin("GET", "/memberships/ms1").status_code == 404


def test_gyms_hours_and_closures(cloud):
    gym = cloud.ok("POST", "/gyms", json={"name": "Second", "timezone": "Europe/Paris"})
    assert gym["timezone"] == "Europe/Paris"
    assert (
        cloud.admin("POST", "/gyms", json={"name": "X", "timezone": "Mars/Olympus"}).status_code
        == 422
    )
    assert [g["name"] for g in cloud.ok("GET", "/gyms")["items"]] == sorted(
        ["Main", "Second"],
        key=lambda n: {g["name"]: g["id"] for g in cloud.ok("GET", "/gyms")["items"]}[n],
    )
    renamed = cloud.ok("PATCH", f"/gyms/{gym['id']}", json={"name": "Second floor"})
    assert renamed["name"] == "Second floor"

    week = [{"weekday": d, "open_minute": 360, "close_minute": 1320} for d in range(5)]
    first = cloud.ok("PUT", f"/gyms/{gym['id']}/hours", json={"hours": week})["items"]
    assert len(first) == 5
    # Replacing keeps matching rows (same ids) and drops the others.
    weekend = [*week[:3], {"weekday": 5, "open_minute": 480, "close_minute": 960}]
    second = cloud.ok("PUT", f"/gyms/{gym['id']}/hours", json={"hours": weekend})["items"]
    assert {h["id"] for h in second} & {h["id"] for h in first} == {h["id"] for h in first[:3]}
    assert [h["weekday"] for h in second] == [0, 1, 2, 5]
    bad = cloud.admin(
        "PUT",
        f"/gyms/{gym['id']}/hours",
        json={"hours": [{"weekday": 7, "open_minute": 0, "close_minute": 5}]},
    )
    assert bad.status_code == 422 and _fields(bad) == ["hours[0].weekday"]

    closure = cloud.ok(
        "POST",
        f"/gyms/{gym['id']}/closures",
        json={"start_date": "2026-12-24", "end_date": "2026-12-26", "reason": "Christmas"},
    )
    assert cloud.ok("GET", f"/gyms/{gym['id']}/closures")["items"] == [closure]
    assert (
        cloud.admin("DELETE", f"/gyms/{cloud.gym_id}/closures/{closure['id']}").status_code == 404
    )
    assert cloud.admin("DELETE", f"/gyms/{gym['id']}/closures/{closure['id']}").status_code == 204
    assert cloud.ok("GET", f"/gyms/{gym['id']}/closures")["items"] == []


# -- scoping ---------------------------------------------------------------------------------------


def test_another_organisations_token_sees_nothing_of_ours(cloud):
    cloud.ok(
        "POST", "/members", json={"id": "m1", "first_name": "A", "last_name": "B", "code": "CARD-A"}
    )
    cloud.ok("POST", "/plans", json={"id": "p1", "name": "Plan"})
    cloud.ok(
        "POST",
        "/memberships",
        json={"id": "ms1", "member_id": "m1", "type": "SUBSCRIPTION", "start_date": "2026-01-01"},
    )
    device = cloud.enrol()
    cloud.upload_ok(device, [make_item(1)], clock=(BOOT, 5 * SEC))
    _org_b, gym_b, token_b = cloud.new_org("Other Corp", "Elsewhere")

    for path in (
        "/members/m1",
        "/plans/p1",
        "/memberships/ms1",
        f"/gyms/{cloud.gym_id}",
        f"/devices/{device.id}",
        f"/gyms/{cloud.gym_id}/hours",
    ):
        response = cloud.admin("GET", path, token=token_b)
        assert response.status_code == 404, path
    for method, path in (
        ("PATCH", "/members/m1"),
        ("DELETE", "/members/m1"),
        ("DELETE", "/plans/p1"),
        ("POST", f"/devices/{device.id}/revoke"),
        ("POST", f"/gyms/{cloud.gym_id}/enrolment-codes"),
    ):
        kw = {"json": {"first_name": "X"}} if method == "PATCH" else {}
        assert cloud.admin(method, path, token=token_b, **kw).status_code == 404, path
    assert cloud.ok("GET", "/members", token=token_b)["items"] == []
    assert cloud.ok("GET", "/devices", token=token_b)["items"] == []
    assert cloud.ok("GET", "/checkins", token=token_b)["items"] == []
    assert [g["id"] for g in cloud.ok("GET", "/gyms", token=token_b)["items"]] == [gym_b]
    foreign = cloud.admin(
        "POST",
        "/memberships",
        token=token_b,
        json={"member_id": "m1", "type": "SUBSCRIPTION", "start_date": "2026-01-01"},
    )
    assert foreign.status_code == 422
    # The same card code may exist in another organisation.
    cloud.ok(
        "POST",
        "/members",
        token=token_b,
        json={"first_name": "Z", "last_name": "Z", "code": "CARD-A"},
    )
    # Our rows are untouched.
    assert cloud.ok("GET", "/members/m1")["first_name"] == "A"
    assert cloud.get(device, "/v1/replica/snapshot").status_code == 200


def test_no_body_may_be_huge(cloud):
    from cloud.app import MAX_BODY_BYTES

    huge = b'{"name": "' + b"x" * MAX_BODY_BYTES + b'"}'
    headers = {"Content-Type": "application/json"}
    response = cloud.admin("POST", "/plans", content=huge, headers=headers)
    assert response.status_code == 413
    assert response.json()["error"] == "too_large"

    def chunks():  # no Content-Length: counted while read
        yield b'{"name": "'
        for _ in range(MAX_BODY_BYTES // 65536 + 1):
            yield b"x" * 65536
        yield b'"}'

    chunked = cloud.admin("POST", "/plans", content=chunks(), headers=headers)
    assert chunked.status_code == 413
    assert cloud.ok("GET", "/plans")["items"] == []


def test_admin_calls_need_an_admin_token(cloud):
    device = cloud.enrol()
    assert cloud.client.get("/admin/v1/members").status_code == 401
    for token in ("ffa_unknown-token-xxxxxxxxxxxxxxxx", device.token):
        response = cloud.client.get(
            "/admin/v1/members", headers={"Authorization": f"Bearer {token}"}
        )
        assert response.status_code == 401
        assert response.json()["error"] == "unauthorized"


# -- CSV import ------------------------------------------------------------------------------------


def _import(cloud: Harness, text: str, **params):
    return cloud.admin("POST", "/members/import", content=text.encode(), headers=CSV, params=params)


def test_csv_import_creates_then_updates(cloud):
    cloud.ok("POST", "/plans", json={"id": "p1", "name": "Full"})
    text = (
        "member_id,first_name,last_name,code,status,plan_id,membership_type,start_date,end_date,"
        "remaining_classes,membership_id\n"
        "m1,Alice,Able,CARD-0001,,p1,SUBSCRIPTION,2026-01-01,2026-12-31,,ms1\n"
        "m2,Bob,Baker,CARD-0002,paused,,CLASS_PACK,2026-02-01,,10,ms2\n"
        ",Carol,Cole,CARD-0003,,,,,,,\n"
    )
    response = _import(cloud, text)
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["applied"] is True
    assert (report["members_created"], report["memberships_created"]) == (3, 2)
    assert [line["line"] for line in report["lines"]] == [2, 3, 4]
    assert all(line["status"] == "ok" for line in report["lines"])
    carol = report["lines"][2]["member_id"]
    assert cloud.ok("GET", f"/members/{carol}")["code"] == "CARD-0003"
    assert cloud.ok("GET", "/members/m2")["status"] == "PAUSED"
    assert cloud.ok("GET", "/memberships/ms2")["remaining_classes"] == 10
    version = cloud.ok("GET", "/organization")["version"]

    # A line without member_id is a new member each time: its card code is now taken.
    clash = _import(cloud, text.replace("Alice", "Alicia"))
    assert clash.status_code == 422
    assert [(ln["line"], e["field"]) for ln in clash.json()["lines"] for e in ln["errors"]] == [
        (4, "code")
    ]
    assert cloud.ok("GET", "/members/m1")["first_name"] == "Alice"
    with_ids = text.replace("Alice", "Alicia").replace(",Carol", f"{carol},Carol")
    again = _import(cloud, with_ids).json()
    assert (again["members_updated"], again["memberships_updated"]) == (3, 2)
    assert cloud.ok("GET", "/members/m1")["first_name"] == "Alicia"
    assert cloud.ok("GET", "/organization")["version"] == version + 1, "one version per import"


def test_csv_import_reports_every_bad_line_and_stores_nothing(cloud):
    cloud.ok(
        "POST",
        "/members",
        json={"id": "old", "first_name": "O", "last_name": "O", "code": "TAKEN-1"},
    )
    text = (
        "first_name,last_name,code,status,membership_type,start_date,remaining_classes,plan_id\n"
        "Good,Line,CARD-0001,,,,,\n"
        ",NoFirst,CARD-0002,,,,,\n"
        "Bad,Code,no way,,,,,\n"
        "Dup,Code,CARD-0001,,,,,\n"
        "Bad,Status,CARD-0005,RETIRED,,,,\n"
        "Bad,Type,CARD-0006,,MONTHLY,2026-01-01,,\n"
        "Bad,Date,CARD-0007,,SUBSCRIPTION,2026-13-01,,\n"
        "No,Start,CARD-0008,,PT,,,\n"
        "Bad,Count,CARD-0009,,PT,2026-01-01,many,\n"
        "Ghost,Plan,CARD-0010,,SUBSCRIPTION,2026-01-01,,nope\n"
        "Taken,Code,TAKEN-1,,,,,\n"
        '"Multi\nline",Name,CARD-0012,,,,,\n'
        "Too,Many,CARD-0013,,,,,,,,extra\n"
    )
    response = _import(cloud, text)
    assert response.status_code == 422
    body = response.json()
    assert body["applied"] is False
    problems = {(line["line"], e["field"]) for line in body["lines"] for e in line["errors"]}
    assert problems == {
        (3, "first_name"),
        (4, "code"),
        (5, "code"),
        (6, "status"),
        (7, "membership_type"),
        (8, "start_date"),
        (9, "start_date"),
        (10, "remaining_classes"),
        (11, "plan_id"),
        (12, "code"),
        (13, "first_name"),  # a line break in a name; the record spans lines 13-14
        (15, "line"),
    }
    assert body["lines"][0]["status"] == "ok"
    assert [m["id"] for m in cloud.ok("GET", "/members")["items"]] == ["old"]


def test_csv_header_size_and_encoding_problems(cloud):
    unknown = _import(cloud, "first_name,last_name,code,shoe_size\nA,B,CARD-0001,42\n")
    assert unknown.status_code == 422
    assert "header.shoe_size" in _fields(unknown)
    missing = _import(cloud, "first_name,code\nA,CARD-0001\n")
    assert "header.last_name" in _fields(missing)
    assert _import(cloud, "").status_code == 422
    latin = cloud.admin(
        "POST",
        "/members/import",
        content="first_name,last_name,code\nJ\xf6rg,B,CARD-0001\n".encode("latin-1"),
        headers=CSV,
    )
    assert latin.status_code == 400
    huge = "first_name,last_name,code\n" + "A,B,CARD-0001\n" * (
        importer.MAX_IMPORT_BYTES // 14 + 10
    )
    assert _import(cloud, huge).status_code == 413
    dry = _import(cloud, "\ufefffirst_name,last_name,code\nA,B,CARD-0001\n", dry_run="true")
    assert dry.status_code == 200 and dry.json()["applied"] is False
    assert cloud.ok("GET", "/members")["items"] == []


# -- attendance ------------------------------------------------------------------------------------


def test_attendance_by_time_gym_and_page(cloud):
    front = cloud.enrol("front")
    other_gym = cloud.ok("POST", "/gyms", json={"name": "Other"})["id"]
    remote = cloud.enrol("remote", gym_id=other_gym)
    t0 = cloud.clock()
    cloud.upload_ok(front, [make_item(n, mono=n * 60 * SEC) for n in range(1, 6)], clock=(BOOT, 0))
    cloud.upload_ok(
        remote,
        [make_item(1, item_id="01900000-0000-7000-8000-0000000000aa", mono=150 * SEC)],
        clock=(BOOT, 0),
    )
    everything = cloud.ok("GET", "/checkins")["items"]
    assert [(c["device_id"], c["seq"]) for c in everything] == [
        (front.id, 1),
        (front.id, 2),
        (remote.id, 1),
        (front.id, 3),
        (front.id, 4),
        (front.id, 5),
    ]
    only_front = cloud.ok("GET", "/checkins", params={"gym_id": cloud.gym_id})["items"]
    assert [c["seq"] for c in only_front] == [1, 2, 3, 4, 5]
    window = cloud.ok(
        "GET",
        "/checkins",
        params={"since": (t0.replace(minute=2)).isoformat(), "until": "2026-05-01T12:04:00Z"},
    )["items"]
    assert [(c["device_id"], c["seq"]) for c in window] == [
        (front.id, 2),
        (remote.id, 1),
        (front.id, 3),
    ]
    first = cloud.ok("GET", "/checkins", params={"limit": 4})
    rest = cloud.ok("GET", "/checkins", params={"limit": 4, "cursor": first["next"]})
    assert [c["id"] for c in first["items"] + rest["items"]] == [c["id"] for c in everything]
    assert rest["next"] is None
    assert cloud.admin("GET", "/checkins", params={"since": "yesterday"}).status_code == 422
    assert cloud.admin("GET", "/checkins", params={"gym_id": "gym_nope"}).status_code == 404


# -- review findings -------------------------------------------------------------------------------


def test_a_closure_id_is_never_revived_in_another_gym(cloud):
    """A tombstoned closure id belongs to its gym: another gym reusing it is refused (409) and the
    first gym's replica is untouched; the same gym may revive it."""
    gym_b = cloud.ok("POST", "/gyms", json={"name": "B", "timezone": "Europe/Berlin"})["id"]
    xmas = {"id": "xmas", "start_date": "2026-12-25", "end_date": "2026-12-25", "reason": "A"}
    cloud.ok("POST", f"/gyms/{cloud.gym_id}/closures", json=xmas)
    assert cloud.admin("DELETE", f"/gyms/{cloud.gym_id}/closures/xmas").status_code == 204

    refurb = xmas | {"start_date": "2026-12-01", "end_date": "2026-12-31", "reason": "B refurb"}
    clash = cloud.admin("POST", f"/gyms/{gym_b}/closures", json=refurb)
    assert clash.status_code == 409 and "another gym" in clash.json()["detail"]
    assert cloud.ok("GET", f"/gyms/{cloud.gym_id}/closures")["items"] == []
    assert cloud.ok("GET", f"/gyms/{gym_b}/closures")["items"] == []

    revived = cloud.ok("POST", f"/gyms/{cloud.gym_id}/closures", json=refurb)
    assert revived["reason"] == "B refurb"
    assert [c["id"] for c in cloud.ok("GET", f"/gyms/{cloud.gym_id}/closures")["items"]] == ["xmas"]


def test_an_upsert_stores_the_gym_it_was_given(cloud):
    """The replica upsert keeps gym_id consistent with the write (it is part of the update)."""
    row = make_row("closure", "c1", {"start_date": "2026-01-01", "end_date": "2026-01-02"} | R)
    values = {"start_date": "2026-01-01", "end_date": "2026-01-02", "reason": ""}
    gym_b = cloud.ok("POST", "/gyms", json={"name": "B", "timezone": "UTC"})["id"]
    for gym in (cloud.gym_id, gym_b):
        with cloud.database.write() as tx:
            write = db.RowWrite(gym, "c1", values, row.row_hash())
            db.upsert_replica_rows(tx, "closure", cloud.org_id, [write], version=1, now=NOW)
        with cloud.database.read() as tx:
            assert db.replica_row(tx, "closure", cloud.org_id, "c1")["gym_id"] == gym


R = {"reason": ""}
NOW = "2026-05-01T12:00:00.000000Z"


def test_attendance_times_out_of_range_are_422(cloud):
    for query in (
        {"since": "9999-12-31T23:00:00-05:00"},
        {"until": "0001-01-01T00:00:00+05:00"},
        {"since": "not a time"},
    ):
        response = cloud.admin("GET", "/checkins", params=query)
        assert response.status_code == 422, (query, response.text)
        assert _fields(response) == list(query)


# Values no client should send: numbers past every integer type, non-finite and huge floats,
# wrong types, deep nesting, control characters, overlong text, times outside UTC's years.
HOSTILE = [
    2**63,
    -(2**63) - 1,
    1e308,
    True,
    None,
    "x" * 20_000,
    "\u0000\u202e",
    "9999-12-31T23:00:00-05:00",
    {"a": [1, {"b": None}]},
]
HOSTILE_RAW = [b"[" * 50_000, b"NaN", b'{"a": Infinity}', b"\xff\xfe", b"", b"1e999999", b"{"]
HOSTILE_QUERY = [
    "9999-12-31T23:00:00-05:00",
    "0001-01-01T00:00:00+05:00",
    "99999999999999999999999",
    "-1",
    "1e309",
    "\u0000",
    "x" * 5000,
    "0:plan:\u0000",
]
HOSTILE_PATH = ["x" * 3000, "%2e%2e", "%00", "\u00e9\u202e"]
# A plausible value per body field, so one hostile field at a time reaches the deeper checks.
PLAUSIBLE = {
    "code": "AAAA-BBBB-CCCC",
    "name": "Front",
    "software_version": "0.1.0",
    "timezone": "UTC",
    "hours": [{"weekday": 0, "open_minute": 0, "close_minute": 60}],
    "start_date": "2026-01-01",
    "end_date": "2026-01-02",
    "reason": "r",
    "ttl_minutes": 60,
    "windows": [[0, 0, 60]],
    "first_name": "A",
    "last_name": "B",
    "status": "ACTIVE",
    "is_staff": False,
    "member_id": "m1",
    "type": "CLASS_PACK",
    "remaining_classes": 3,
    "items": [make_item(1)],
    "anchors": [],
    "boot_id": BOOT,
    "monotonic_ns": SEC,
    "device_time": "2026-05-01T12:00:00.000000Z",
    "clock_quality": "ntp_synced",
    "replica_checksum": "0" * 16,
}


def _operations(app) -> list[tuple[str, str, list[str], list[str]]]:
    """(method, path, query names, body fields) of every operation the API describes."""
    spec = app.openapi()
    schemas = spec.get("components", {}).get("schemas", {})
    out = []
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            query = [p["name"] for p in op.get("parameters", []) if p["in"] == "query"]
            fields: list[str] = []
            for content in op.get("requestBody", {}).get("content", {}).values():
                schema = content.get("schema", {})
                for ref in [schema, *schema.get("anyOf", [])]:
                    if "$ref" in ref:
                        schema = schemas[ref["$ref"].rsplit("/", 1)[-1]]
                fields = list(schema.get("properties", {}))
            out.append((method.upper(), path, query, fields))
    return out


def test_hostile_input_never_gets_a_5xx_from_any_endpoint(cloud):
    """Every device and admin operation, fed hostile path ids, query values, raw bodies and one
    hostile body field at a time, answers 4xx (or 2xx), never 5xx."""
    device = cloud.enrol()
    # Over a thousand requests: the app runs in this thread (inthread_client); a 500 is answered.
    with InThreadClient(cloud.app, raise_app_exceptions=False) as client:
        operations = _operations(cloud.app)
        assert len([op for op in operations if op[1].startswith("/v1/")]) == 5
        assert len([op for op in operations if op[1].startswith("/admin/v1/")]) >= 30
        failures = []
        sent: set[str] = set()

        def send(method: str, path: str, **kw) -> None:
            key = repr((method, path, kw))
            if key in sent:
                return
            sent.add(key)
            device_call = path.startswith("/v1/")
            headers = (
                device.headers if device_call else {"Authorization": f"Bearer {cloud.admin_token}"}
            )
            response = client.request(method, path, headers=headers | kw.pop("headers", {}), **kw)
            if response.status_code >= 500:
                failures.append((method, path, kw, response.status_code, response.text[:200]))

        for method, template, query, fields in operations:
            if not template.startswith(("/v1/", "/admin/v1/")):
                continue
            real = template.replace("{gym_id}", cloud.gym_id)
            for value in HOSTILE_PATH:
                hostile = re.sub(r"\{[a-z_]+\}", value.replace("\\", ""), template)
                send(method, hostile)
                send(method, re.sub(r"\{(?!gym_id)[a-z_]+\}", value, real))
            path = re.sub(r"\{[a-z_]+\}", "x1", real)
            for name in query:
                for value in HOSTILE_QUERY:
                    send(method, path, params={name: value})
            if method in ("POST", "PUT", "PATCH"):
                for raw in HOSTILE_RAW:
                    send(method, path, content=raw, headers={"Content-Type": "application/json"})
                base = {f: PLAUSIBLE[f] for f in fields if f in PLAUSIBLE}
                for field in fields:
                    for value in HOSTILE:
                        send(method, path, json=base | {field: value})
                for value in HOSTILE[:5]:
                    send(method, path, json=value)
        assert not failures, failures[:5]
