"""The doors' passage events in the cloud (sync protocol 3): stored exactly once by id beside the
check-ins, an ``annulled`` event giving a spent class back exactly once (re-sent, in the same
batch as its check-in, in a later one, before it, or twice at once), ``entry`` confirming, the
heartbeat's gap check counting events' seqs, overdrafts kept right, occupancy per door and per
gym, and a plan's visit limit in the admin API and the replica. Every test runs on SQLite and on
PostgreSQL."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from cloud import uploads
from pg import (
    BOOT,
    SEC,
    Harness,
    cloud_db_url_fixture,  # noqa: F401
    cloud_fixture,  # noqa: F401
    heartbeat_body,
    make_event,
    make_item,
    pg_server_fixture,  # noqa: F401
    replica_checksum,
)
from sync.protocol import parse_upload_envelope, row_hash


def _checkins(cloud: Harness, **params) -> dict[str, dict]:
    page = cloud.ok("GET", "/checkins", params=params | {"limit": 1000})
    assert page["next"] is None
    return {c["id"]: c for c in page["items"]}


def _class_pack(cloud: Harness, remaining: int, member: str = "m1", pack: str = "pack1") -> None:
    cloud.ok("POST", "/members", json={"id": member, "first_name": "Bob", "last_name": "B"})
    cloud.ok(
        "POST",
        "/memberships",
        json={
            "id": pack,
            "member_id": member,
            "type": "CLASS_PACK",
            "start_date": "2026-01-01",
            "remaining_classes": remaining,
        },
    )


def _class_use(seq: int, **kw) -> dict:
    return make_item(
        seq, **({"reason": "class_pack", "membership_id": "pack1", "classes_used": 1} | kw)
    )


def _balance(cloud: Harness, pack: str = "pack1") -> int:
    return cloud.ok("GET", f"/memberships/{pack}")["remaining_classes"]


def _version(cloud: Harness) -> int:
    return cloud.ok("GET", "/organization")["version"]


# -- annulments give a class back exactly once ------------------------------------------------------


def test_an_annulment_in_a_later_batch_gives_the_class_back_once(cloud):
    _class_pack(cloud, remaining=5)
    device = cloud.enrol()
    use = _class_use(1)
    charged = cloud.upload_ok(device, [use, make_item(2)])[0]["version"]
    assert _balance(cloud) == 4
    version, rows = cloud.pull_all(device)

    annul = make_event(3, "annulled", use["id"])
    [first] = cloud.upload_ok(device, [annul])
    assert first["status"] == "created"
    assert first["version"] == charged + 1 == _version(cloud), "the class comes back at a version"
    assert _balance(cloud) == 5
    for _ in range(2):  # a lost acknowledgement, the agent killed and restarted...
        again = cloud.upload_ok(device, [use, annul])
        assert [(r["status"], r["version"]) for r in again] == [
            ("duplicate", charged),
            ("duplicate", first["version"]),
        ]
    assert _balance(cloud) == 5
    assert _version(cloud) == first["version"]

    listed = _checkins(cloud)
    assert (listed[use["id"]]["annulled"], listed[use["id"]]["confirmed"]) == (True, False)
    assert listed[use["id"]]["overdraft"] is False
    assert listed[make_item(2)["id"]]["annulled"] is False
    # The balance travels down to the doors like any change, and the checkpoint agrees.
    checkpoint = cloud.follow(device, version, rows)
    assert rows[("membership", "pack1")]["remaining_classes"] == 5
    assert (checkpoint["checksum"], checkpoint["count"]) == replica_checksum(rows)


def test_an_annulment_in_the_same_batch_as_its_check_in_spends_nothing(cloud):
    _class_pack(cloud, remaining=5)
    device = cloud.enrol()
    before = _version(cloud)
    use = _class_use(1)
    batch = [use, make_event(2, "annulled", use["id"])]
    for _ in range(3):
        results = cloud.upload_ok(device, batch)
        assert {r["version"] for r in results} == {None}, "nothing changed: no version"
    assert _balance(cloud) == 5
    assert _version(cloud) == before
    assert _checkins(cloud)[use["id"]]["annulled"] is True


def test_an_annulment_that_arrives_before_its_check_in_still_counts_once(cloud):
    """The journal sends an event after its check-in; should one ever arrive first (a rejected
    batch fixed and sent again, a restore), the check-in is annulled when it arrives."""
    _class_pack(cloud, remaining=5)
    device = cloud.enrol()
    use = _class_use(1)
    assert cloud.upload_ok(device, [make_event(2, "annulled", use["id"])])[0]["version"] is None
    assert cloud.upload_ok(device, [use])[0]["version"] is None
    assert _balance(cloud) == 5
    assert _checkins(cloud)[use["id"]]["annulled"] is True


def test_two_annulments_of_one_check_in_at_once_give_one_class_back(cloud):
    """The same event sent twice at once (an agent killed with its request in flight) and a
    second annulment of the same check-in under another id: one class back (PostgreSQL: the
    conditional UPDATE waits for the first's row lock)."""
    _class_pack(cloud, remaining=3)
    device = cloud.enrol()
    use = _class_use(1)
    cloud.upload_ok(device, [use])
    auth = uploads.authenticate_device(cloud.database, device.token, cloud.clock())
    annul = make_event(2, "annulled", use["id"])
    other = make_event(3, "annulled", use["id"])
    batches = [[annul], [annul], [other], [annul, other]]
    start = threading.Barrier(len(batches))
    errors: list[BaseException] = []
    answers: list[list] = []

    def send(items: list) -> None:
        try:
            envelope = parse_upload_envelope({"items": items})
            start.wait(120)  # bounds a hang only
            answers.append(
                cloud.database.transact(
                    lambda tx: uploads.receive_checkins(tx, auth, envelope, cloud.clock())
                )
            )
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(b,)) for b in batches]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)  # bounds a hang only
    assert not errors, errors
    assert _balance(cloud) == 3
    created = [r for answer in answers for r in answer if r.status == "created"]
    assert sorted(r.id for r in created) == sorted([annul["id"], other["id"]])
    assert len({r.version for r in created if r.version is not None}) == 1


def test_a_class_use_and_an_annulment_of_the_same_pack_in_one_batch(cloud):
    """One batch spends a class and gives another back: one new version carries both."""
    _class_pack(cloud, remaining=5)
    device = cloud.enrol()
    first = _class_use(1)
    cloud.upload_ok(device, [first])
    results = cloud.upload_ok(device, [make_event(2, "annulled", first["id"]), _class_use(3)])
    assert results[0]["version"] == results[1]["version"] == _version(cloud)
    assert _balance(cloud) == 4  # start 5, two uses, one annulled


def test_subscriptions_denials_and_foreign_check_ins_give_nothing_back(cloud):
    _class_pack(cloud, remaining=5)
    front, back = cloud.enrol("front"), cloud.enrol("back")
    subscription = make_item(1)
    denied = _class_use(2, decision="denied", reason="pack_empty")
    use = _class_use(3)
    cloud.upload_ok(front, [subscription, denied, use])
    assert _balance(cloud) == 4
    before = _version(cloud)
    results = cloud.upload_ok(
        front,
        [make_event(4, "annulled", subscription["id"]), make_event(5, "annulled", denied["id"])],
    )
    assert [r["version"] for r in results] == [None, None]
    # Another door cannot annul this door's check-in: its event is stored, with no effect.
    foreign = make_event(1, "annulled", use["id"], item_id="01900000-0000-7000-9000-0000000000ff")
    assert cloud.upload_ok(back, [foreign])[0]["status"] == "created"
    assert _balance(cloud) == 4
    assert _version(cloud) == before
    listed = _checkins(cloud)
    assert listed[subscription["id"]]["annulled"] is True
    assert listed[use["id"]]["annulled"] is False


def test_a_reenrolled_kiosk_annuls_what_it_sent_as_its_earlier_enrolment(cloud):
    _class_pack(cloud, remaining=5)
    first = cloud.enrol()
    use = _class_use(1)
    cloud.upload_ok(first, [use])
    cloud.ok("POST", f"/devices/{first.id}/revoke")
    second = cloud.enrol("front door again")
    # The queue after re-enrolment: the check-in again (duplicate, linking the earlier
    # enrolment) and its annulment.
    results = cloud.upload_ok(second, [use, make_event(2, "annulled", use["id"])])
    assert [r["status"] for r in results] == ["duplicate", "created"]
    assert _balance(cloud) == 5


@pytest.mark.parametrize("annulled", ["first", "overdraft"])
def test_an_annulment_keeps_overdrafts_right(cloud, annulled):
    """Two doors spend the last class offline: an overdraft. Whichever of the two entries is
    annulled, the pack is back at 0 and no overdraft is left."""
    _class_pack(cloud, remaining=1)
    front, back = cloud.enrol("front"), cloud.enrol("back")
    early = _class_use(1)
    cloud.upload_ok(front, [early])
    cloud.clock.advance(60)
    late = _class_use(1, item_id="01900000-0000-7000-8000-00000000beef", mono=70 * SEC)
    cloud.upload_ok(back, [late])
    assert _balance(cloud) == -1
    assert [o["id"] for o in cloud.ok("GET", "/overdrafts")["items"]] == [late["id"]]

    device, use = (front, early) if annulled == "first" else (back, late)
    cloud.upload_ok(device, [make_event(2, "annulled", use["id"])])
    assert _balance(cloud) == 0
    assert cloud.ok("GET", "/overdrafts")["items"] == []
    stored = _checkins(cloud)
    assert [c["annulled"] for c in (stored[early["id"]], stored[late["id"]])] == [
        annulled == "first",
        annulled == "overdraft",
    ]


def test_an_annulment_of_one_of_three_overdrafts_clears_the_newest(cloud):
    _class_pack(cloud, remaining=0)
    doors = [cloud.enrol(f"door{n}") for n in range(3)]
    uses = []
    for n, door in enumerate(doors):
        use = _class_use(1, item_id=f"01900000-0000-7000-8000-{n + 1:012x}", mono=(n + 1) * SEC)
        cloud.upload_ok(door, [use], clock=(BOOT, 100 * SEC))
        uses.append(use)
    assert _balance(cloud) == -3
    cloud.upload_ok(doors[0], [make_event(2, "annulled", uses[0]["id"])])
    assert _balance(cloud) == -2
    left = [o["id"] for o in cloud.ok("GET", "/overdrafts")["items"]]
    assert left == [uses[1]["id"], uses[2]["id"]], "the annulled one is no overdraft"
    last = make_event(2, "annulled", uses[2]["id"], item_id="01900000-0000-7000-9000-0000000000a3")
    assert cloud.upload_ok(doors[2], [last])[0]["status"] == "created"
    assert [o["id"] for o in cloud.ok("GET", "/overdrafts")["items"]] == [uses[1]["id"]]


# -- entries, tailgating, exits ---------------------------------------------------------------------


def test_entries_confirm_and_other_events_are_stored_once(cloud):
    device = cloud.enrol()
    grant, exit_grant = make_item(1), make_item(2, door="exit-side")
    events = [
        make_event(3, "entry", grant["id"]),
        make_event(4, "tailgating", None),
        make_event(5, "exit", None),
        make_event(6, "exit", exit_grant["id"], door="exit-side"),
    ]
    first = cloud.upload_ok(device, [grant, exit_grant, *events])
    assert [r["status"] for r in first] == ["created"] * 6
    assert {r["version"] for r in first} == {None}
    again = cloud.upload_ok(device, events)
    assert [r["status"] for r in again] == ["duplicate"] * 4
    listed = _checkins(cloud)
    assert (listed[grant["id"]]["confirmed"], listed[grant["id"]]["annulled"]) == (True, False)
    assert listed[exit_grant["id"]]["confirmed"] is False
    with cloud.database.read() as tx:
        stored = tx.all("SELECT kind, seq, checkin_id FROM door_events ORDER BY seq")
    assert [(r["kind"], r["seq"]) for r in stored] == [
        ("entry", 3),
        ("tailgating", 4),
        ("exit", 5),
        ("exit", 6),
    ]


def test_events_are_placed_in_time_like_check_ins(cloud):
    device = cloud.enrol()
    arrival = cloud.clock()
    sent = 500 * SEC
    tailgate = make_event(
        1, "tailgating", None, mono=sent - 40 * SEC, wall="1970-01-01T00:00:00.000000Z"
    )
    cloud.upload_ok(device, [tailgate], clock=(BOOT, sent))
    with cloud.database.read() as tx:
        row = tx.one("SELECT occurred_at, time_source FROM door_events")
    assert row["time_source"] == "anchored"
    assert row["occurred_at"] == (arrival - timedelta(seconds=40)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_bad_events_are_rejected_alone_naming_their_field(cloud):
    device = cloud.enrol()
    grant = make_item(1)
    v2_item = make_item(6)
    del v2_item["kind"]
    items = [
        grant,
        make_event(2, "entry", grant["id"]),
        make_event(3, "annulled", None),
        make_event(4, "tailgating", grant["id"]),
        make_event(5, "left", None),
        v2_item,
    ]
    results = cloud.upload_ok(device, items)
    assert [r["status"] for r in results] == ["created", "created"] + ["rejected"] * 4
    assert [r["detail"].split(":")[0] for r in results[2:]] == [
        "items[2].checkin_id", "items[3].checkin_id", "items[4].kind", "items[5].kind",
    ]  # fmt: skip
    # The rejected seqs count as held: nothing to re-send.
    beat = {"retained_from_seq": 1, "synced_through_seq": 6, "last_seq": 6}
    assert cloud.heartbeat(device, **beat)["resend_from_seq"] is None


def test_an_event_id_held_by_another_device_is_an_id_conflict(cloud):
    front, back = cloud.enrol("front"), cloud.enrol("back")
    tailgate = make_event(1, "tailgating", None)
    cloud.upload_ok(front, [tailgate])
    clash = cloud.upload_ok(back, [tailgate | {"seq": 9}])[0]
    assert (clash["status"], clash["code"]) == ("rejected", "id_conflict")
    assert "event" in clash["detail"]


def test_the_gap_check_counts_events_in_the_journal_s_seq_space(cloud):
    device = cloud.enrol()
    items = []
    for seq in range(1, 31):
        if seq % 3 == 0:
            items.append(make_event(seq, "entry", make_item(seq - 1)["id"]))
        elif seq % 5 == 0:
            items.append(make_event(seq, "tailgating", None))
        else:
            items.append(make_item(seq))
    cloud.upload_ok(device, items)
    beat = {"retained_from_seq": 1, "synced_through_seq": 30, "last_seq": 30}
    assert cloud.heartbeat(device, **beat)["resend_from_seq"] is None
    # A restore lost some events and a check-in: the first lost seq, event or not, is asked for.
    with cloud.database.write() as tx:
        tx.run("DELETE FROM door_events WHERE seq IN (10, 21) AND device_id = ?", (device.id,))
        tx.run("DELETE FROM checkins WHERE seq = 16 AND device_id = ?", (device.id,))
    assert cloud.heartbeat(device, **beat)["resend_from_seq"] == 10
    assert cloud.heartbeat(device, **(beat | {"retained_from_seq": 11}))["resend_from_seq"] == 16
    cloud.upload_ok(device, [items[9], items[15], items[20]])
    assert cloud.heartbeat(device, **beat)["resend_from_seq"] is None


# -- occupancy --------------------------------------------------------------------------------------


def _occupancy(now: int, entries: int, exits: int, peak: int, capacity: int | None = None):
    return {
        "now": now,
        "entries_today": entries,
        "exits_today": exits,
        "max_today": peak,
        "capacity": capacity,
    }


def test_the_device_view_shows_the_last_occupancy_reported(cloud):
    device = cloud.enrol()
    assert cloud.ok("GET", f"/devices/{device.id}")["occupancy"] is None
    cloud.heartbeat(device, occupancy=_occupancy(7, 20, 13, 11, 40))
    shown = cloud.ok("GET", f"/devices/{device.id}")["occupancy"]
    assert shown == _occupancy(7, 20, 13, 11, 40) | {"reported_at": "2026-05-01T12:00:00.000000Z"}
    cloud.clock.advance(30)
    cloud.heartbeat(device)  # a heartbeat without occupancy keeps the last report
    assert cloud.ok("GET", "/devices")["items"][0]["occupancy"]["now"] == 7
    cloud.heartbeat(device, occupancy=_occupancy(8, 21, 13, 11, 40))
    assert cloud.ok("GET", f"/devices/{device.id}")["occupancy"]["reported_at"] == (
        "2026-05-01T12:00:30.000000Z"
    )


def test_gym_occupancy_combines_its_doors(cloud):
    """An entry door without an exit signal (entries expire after the visit length), an entry
    door with an exit contact, and an exit-side scanner: the gym's count is every entry minus
    every exit minus the entries that expired."""
    entry, turnstile, exit_side = (cloud.enrol(n) for n in ("entry", "turnstile", "exit"))
    cloud.heartbeat(entry, occupancy=_occupancy(12, 30, 0, 15, 50))  # 18 expired
    cloud.heartbeat(turnstile, occupancy=_occupancy(5, 25, 20, 9, 80))
    cloud.heartbeat(exit_side, occupancy=_occupancy(0, 0, 10, 0))
    gym = cloud.ok("GET", f"/gyms/{cloud.gym_id}/occupancy")
    assert (gym["now"], gym["entries_today"], gym["exits_today"]) == (12 + 5 - 10, 55, 30)
    assert gym["capacity"] == 80
    assert sorted(d["name"] for d in gym["doors"]) == ["entry", "exit", "turnstile"]
    assert all(d["counted"] for d in gym["doors"])
    # A revoked door no longer counts; an exit-only door never drives the count below zero.
    cloud.ok("POST", f"/devices/{entry.id}/revoke")
    cloud.ok("POST", f"/devices/{turnstile.id}/revoke")
    gym = cloud.ok("GET", f"/gyms/{cloud.gym_id}/occupancy")
    assert (gym["now"], gym["capacity"], len(gym["doors"])) == (0, None, 1)


def test_gym_occupancy_counts_only_todays_reports(cloud):
    """Europe/Berlin: a report from 23:50 local yesterday says nothing about today."""
    quiet, live = cloud.enrol("quiet"), cloud.enrol("live")
    cloud.clock.now = cloud.clock.now.replace(hour=21, minute=50)  # 23:50 in Berlin (CEST)
    cloud.heartbeat(quiet, occupancy=_occupancy(9, 9, 0, 9))
    cloud.clock.advance(20 * 60)  # 00:10 local, the next day
    cloud.heartbeat(live, occupancy=_occupancy(2, 2, 0, 2))
    gym = cloud.ok("GET", f"/gyms/{cloud.gym_id}/occupancy")
    assert gym["now"] == 2
    assert {d["name"]: d["counted"] for d in gym["doors"]} == {"quiet": False, "live": True}


def test_gym_occupancy_is_scoped_to_the_organisation(cloud):
    _org, other_gym, other_token = cloud.new_org("Other", "Elsewhere")
    assert cloud.admin("GET", f"/gyms/{other_gym}/occupancy").status_code == 404
    empty = cloud.ok("GET", f"/gyms/{other_gym}/occupancy", token=other_token)
    assert (empty["now"], empty["doors"]) == (0, [])
    assert cloud.admin("GET", "/gyms/nope/occupancy").status_code == 404


def test_a_bad_occupancy_is_400_naming_the_field(cloud):
    device = cloud.enrol()
    response = cloud.client.post(
        "/v1/heartbeat",
        json=heartbeat_body(occupancy=_occupancy(-1, 0, 0, 0)),
        headers=device.headers,
    )
    assert response.status_code == 400
    assert "occupancy.now" in response.json()["detail"]


# -- plans' visit limits ----------------------------------------------------------------------------


def test_a_plans_visit_limit_is_kept_and_replicated(cloud):
    device = cloud.enrol()
    plain = cloud.ok("POST", "/plans", json={"id": "p1", "name": "Any time"})
    assert plain["max_visits_per_day"] is None
    limited = cloud.ok(
        "POST", "/plans", json={"id": "p2", "name": "Twice a day", "max_visits_per_day": 2}
    )
    assert limited["max_visits_per_day"] == 2
    _at, rows = cloud.pull_all(device)
    assert rows[("plan", "p1")] == {"name": "Any time", "windows": []}, "no key: no limit"
    assert rows[("plan", "p2")]["max_visits_per_day"] == 2
    with cloud.database.read() as tx:
        stored = tx.value("SELECT row_hash FROM plans WHERE id = 'p1'")
    assert int(stored) == row_hash("plan", "p1", {"name": "Any time", "windows": []})

    before = _version(cloud)
    cloud.ok("PATCH", "/plans/p2", json={"max_visits_per_day": None})
    assert cloud.ok("GET", "/plans/p2")["max_visits_per_day"] is None
    cloud.ok("PATCH", "/plans/p1", json={"max_visits_per_day": 1})
    assert [p["max_visits_per_day"] for p in cloud.ok("GET", "/plans")["items"]] == [1, None]
    version, rows = cloud.pull_all(device)
    assert version == before + 2
    assert rows[("plan", "p1")]["max_visits_per_day"] == 1
    assert "max_visits_per_day" not in rows[("plan", "p2")]
    checkpoint = cloud.follow(device, version, rows)
    assert (checkpoint["checksum"], checkpoint["count"]) == replica_checksum(rows)


@pytest.mark.parametrize("limit", [0, 101, "2", 1.5, True])
def test_a_bad_visit_limit_is_422_naming_the_field(cloud, limit):
    response = cloud.admin("POST", "/plans", json={"name": "Bad", "max_visits_per_day": limit})
    assert response.status_code == 422, response.text
    fields = [f["field"] for f in response.json().get("fields", [])]
    assert any("max_visits_per_day" in f for f in fields), response.json()
