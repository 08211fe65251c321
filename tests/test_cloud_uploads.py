"""Check-ins going up and heartbeats: exactly-once storage, per-item answers, hostile bodies,
class-pack balances and overdrafts, time placement from anchors, re-send after a restore and
re-snapshot requests. Every test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import threading
from datetime import datetime, timedelta

from cloud import db, uploads
from pg import (
    BOOT,
    SEC,
    FakeClock,
    Harness,
    cloud_db_url_fixture,  # noqa: F401
    cloud_fixture,  # noqa: F401
    heartbeat_body,
    make_item,
    pg_server_fixture,  # noqa: F401
    replica_checksum,
)
from sync.protocol import (
    MAX_BATCH_ITEMS,
    MAX_MONOTONIC_NS,
    MAX_REQUEST_BYTES,
    PROTOCOL_VERSION,
    parse_heartbeat_reply,
    parse_upload_envelope,
    parse_upload_results,
    parse_utc,
    utc_text,
)


def _checkins(cloud: Harness, **params) -> list[dict]:
    items, cursor = [], None
    while True:
        page = cloud.ok(
            "GET",
            "/checkins",
            params=params | {"limit": 1000} | ({"cursor": cursor} if cursor else {}),
        )
        items += page["items"]
        cursor = page["next"]
        if cursor is None:
            return items


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


# -- storing ---------------------------------------------------------------------------------------


def test_items_are_created_once_then_answered_duplicate(cloud):
    device = cloud.enrol()
    items = [make_item(n) for n in (1, 2, 3)]
    response = cloud.upload(device, items, clock=(BOOT, 10 * SEC))
    assert response.status_code == 200
    assert response.headers["FitFlow-Protocol"] == str(PROTOCOL_VERSION)
    results, server_time = parse_upload_results(response.json(), [i["id"] for i in items])
    assert [r.status for r in results] == ["created"] * 3
    assert all(r.version is None for r in results), "no side effect, no version"
    assert server_time == cloud.clock()

    again = cloud.upload_ok(device, items)
    assert [r["status"] for r in again] == ["duplicate"] * 3
    stored = _checkins(cloud)
    assert sorted(c["seq"] for c in stored) == [1, 2, 3]
    assert {c["device_id"] for c in stored} == {device.id}


def test_the_phone_pass_of_a_check_in_is_stored_and_listed(cloud):
    device = cloud.enrol()
    phone = "ABCDEFG2"
    no_field = make_item(5)
    del no_field["pass_id"]  # protocol 2 items always say, null for a card
    items = [
        make_item(1, pass_id=phone),
        make_item(2),
        make_item(3, pass_id=phone.lower()),
        make_item(4, pass_id=phone[:7]),
        no_field,
        make_item(6, pass_id=7),
    ]
    results = cloud.upload_ok(device, items)
    assert [r["status"] for r in results] == ["created", "created"] + ["rejected"] * 4
    assert [r["detail"].split(":")[0] for r in results[2:]] == [
        "items[2].pass_id", "items[3].pass_id", "items[4].pass_id", "items[5].pass_id",
    ]  # fmt: skip
    assert {c["seq"]: c["pass_id"] for c in _checkins(cloud)} == {1: phone, 2: None}
    # Sent again: a duplicate, its pass id unchanged.
    assert [r["status"] for r in cloud.upload_ok(device, items[:2])] == ["duplicate"] * 2
    assert {c["seq"]: c["pass_id"] for c in _checkins(cloud)} == {1: phone, 2: None}


def test_one_bad_item_is_rejected_alone_naming_its_field(cloud):
    device = cloud.enrol()
    bad_seq = make_item(2) | {"seq": "two"}
    unknown_field = make_item(3) | {"colour": "red"}
    no_id = make_item(4)
    del no_id["id"]
    items = [make_item(1), bad_seq, unknown_field, no_id, make_item(5)]
    results = cloud.upload_ok(device, items)
    assert [r["status"] for r in results] == [
        "created",
        "rejected",
        "rejected",
        "rejected",
        "created",
    ]
    assert results[1]["code"] == "invalid_item"
    assert results[1]["detail"].startswith("items[1].seq")
    assert results[1]["id"] == bad_seq["id"]
    assert results[2]["detail"].startswith("items[2].colour")
    assert results[3]["id"] is None and "items[3].id" in results[3]["detail"]
    assert [c["seq"] for c in _checkins(cloud)] == [1, 5]


def test_an_id_taken_by_another_device_is_an_id_conflict(cloud):
    front, back = cloud.enrol("front"), cloud.enrol("back")
    item = make_item(1)
    assert cloud.upload_ok(front, [item])[0]["status"] == "created"
    clash = cloud.upload_ok(back, [item | {"seq": 7}])[0]
    assert clash["status"] == "rejected"
    assert clash["code"] == "id_conflict"
    assert [c["device_id"] for c in _checkins(cloud)] == [front.id]


def test_the_same_id_twice_in_one_batch_is_stored_once(cloud):
    device = cloud.enrol()
    item = make_item(1)
    results = cloud.upload_ok(device, [item, item])
    assert [r["status"] for r in results] == ["created", "duplicate"]
    assert len(_checkins(cloud)) == 1


def test_an_empty_batch_is_fine(cloud):
    device = cloud.enrol()
    assert cloud.upload_ok(device, []) == []


def test_malformed_bodies_are_400_never_500(cloud):
    device = cloud.enrol()
    bodies = [
        b"\x00\xff\xfe garbage",
        b"",
        b"[1, 2, 3]",
        b'{"items": "all of them"}',
        b'{"items": [], "clock": {"boot_id": 5, "monotonic_ns": 1}}',
        b'{"items": [], "clock": {"boot_id": "b", "monotonic_ns": -1}}',
        b'{"items": [], "anchors": [{"boot_id": "b"}]}',
        b'{"items": [], "extra": true}',
        b"[" * 100_000 + b"]" * 100_000,
        b'{"items": [], "clock": {"boot_id": "b", "monotonic_ns": 1' + b"0" * 5000 + b"}}",
        '{"items": [], "anchors": "ö"}'.encode("latin-1"),
    ]
    for body in bodies:
        response = cloud.client.post("/v1/checkins", content=body, headers=device.headers)
        assert response.status_code == 400, (body[:40], response.status_code, response.text)
        assert response.json()["error"] == "invalid_request"
    # Items that are the wrong type are rejected one by one, not the batch.
    results = cloud.upload_ok(device, [None, 5, "x", [], {"id": "not-a-uuid"}])
    assert {r["status"] for r in results} == {"rejected"}


def test_too_many_items_or_bytes_is_413(cloud):
    device = cloud.enrol()
    many = cloud.upload(device, [make_item(n) for n in range(1, MAX_BATCH_ITEMS + 2)])
    assert many.status_code == 413
    assert many.json()["error"] == "batch_too_large"
    assert many.json()["max_items"] == MAX_BATCH_ITEMS

    padding = {"items": [], "anchors": [], "pad": "x" * MAX_REQUEST_BYTES}
    big = cloud.client.post("/v1/checkins", content=json.dumps(padding), headers=device.headers)
    assert big.status_code == 413
    assert big.json()["max_items"] == MAX_BATCH_ITEMS

    def chunks():  # no Content-Length: the size is checked while reading
        for _ in range(MAX_REQUEST_BYTES // 65536 + 2):
            yield b" " * 65536

    chunked = cloud.client.post("/v1/checkins", content=chunks(), headers=device.headers)
    assert chunked.status_code == 413
    assert _checkins(cloud) == []


def test_a_full_batch_of_500_items_is_accepted(cloud):
    device = cloud.enrol()
    for start in range(1, 2001, 500):
        results = cloud.upload_ok(device, [make_item(n) for n in range(start, start + 500)])
        assert {r["status"] for r in results} == {"created"}
    assert len(_checkins(cloud)) == 2000


# -- balances --------------------------------------------------------------------------------------


def test_a_class_pack_is_charged_once_per_check_in_however_often_it_is_sent(cloud):
    _class_pack(cloud, remaining=5)
    device = cloud.enrol()
    before = cloud.ok("GET", "/organization")["version"]
    batch = [_class_use(n) for n in (1, 2, 3)] + [
        make_item(4, decision="denied", reason="pack_empty")
    ]
    first = cloud.upload_ok(device, batch)
    version = first[0]["version"]
    assert version == before + 1, "one new version for the batch"
    assert [r["version"] for r in first] == [version, version, version, None]
    for _ in range(2):
        again = cloud.upload_ok(device, batch)
        assert [r["status"] for r in again] == ["duplicate"] * 4
        assert [r["version"] for r in again] == [version, version, version, None]
    assert cloud.ok("GET", "/memberships/pack1")["remaining_classes"] == 2
    assert cloud.ok("GET", "/organization")["version"] == version

    # The balance travels down as a change at that version.
    changes = cloud.get(device, "/v1/replica/changes", since=before).json()
    assert changes["rows"] == [
        {
            "kind": "membership",
            "id": "pack1",
            "version": version,
            "data": {
                "member_id": "m1",
                "plan_id": None,
                "type": "CLASS_PACK",
                "start_date": "2026-01-01",
                "end_date": None,
                "remaining_classes": 2,
            },
        }
    ]
    _v, rows = cloud.pull_all(device)
    assert (changes["checkpoint"]["checksum"], changes["checkpoint"]["count"]) == replica_checksum(
        rows
    )


def test_two_doors_spending_the_last_class_make_an_overdraft(cloud):
    _class_pack(cloud, remaining=1)
    front, back = cloud.enrol("front"), cloud.enrol("back")
    assert cloud.upload_ok(front, [_class_use(1)])[0]["status"] == "created"
    cloud.clock.advance(60)
    late = _class_use(1, item_id="01900000-0000-7000-8000-00000000beef")
    assert cloud.upload_ok(back, [late])[0]["status"] == "created"
    assert cloud.ok("GET", "/memberships/pack1")["remaining_classes"] == -1
    stored = _checkins(cloud)
    assert len(stored) == 2, "both check-ins stand"
    assert [c["overdraft"] for c in stored if c["device_id"] == front.id] == [False]
    overdrafts = cloud.ok("GET", "/overdrafts")["items"]
    assert [(o["device_id"], o["remaining_classes"]) for o in overdrafts] == [(back.id, -1)]


def test_no_balance_change_for_subscriptions_denials_or_foreign_memberships(cloud):
    _class_pack(cloud, remaining=3)
    cloud.ok("POST", "/members", json={"id": "m2", "first_name": "Eve", "last_name": "E"})
    device = cloud.enrol()
    before = cloud.ok("GET", "/organization")["version"]
    results = cloud.upload_ok(
        device,
        [
            make_item(1, membership_id="pack1", classes_used=0),
            _class_use(2, decision="denied"),
            _class_use(3, member_id="m2"),  # not the pack's member
            _class_use(4, membership_id="nope"),
        ],
    )
    assert [r["status"] for r in results] == ["created"] * 4
    assert all(r["version"] is None for r in results)
    assert cloud.ok("GET", "/memberships/pack1")["remaining_classes"] == 3
    assert cloud.ok("GET", "/organization")["version"] == before


# -- time placement --------------------------------------------------------------------------------


def _placed(cloud: Harness) -> dict[int, tuple[str, str]]:
    return {c["seq"]: (c["occurred_at"], c["time_source"]) for c in _checkins(cloud)}


def test_check_ins_are_placed_by_monotonic_time_whatever_the_wall_clock_says(cloud):
    device = cloud.enrol()
    arrival = cloud.clock()
    sent_at = 5000 * SEC
    items = [
        # A Pi that booted without NTP: its wall clock reads 1970.
        make_item(
            1, mono=sent_at - 300 * SEC, wall="1970-01-01T00:10:00.000000Z", quality="unsynced"
        ),
        # A clock a year ahead.
        make_item(
            2, mono=sent_at - 200 * SEC, wall="2027-05-01T11:56:40.000000Z", quality="unsynced"
        ),
        # A clock that stepped back: wall time earlier than the previous event's.
        make_item(
            3, mono=sent_at - 100 * SEC, wall="2026-04-01T00:00:00.000000Z", quality="ntp_synced"
        ),
    ]
    cloud.upload_ok(device, items, clock=(BOOT, sent_at))
    placed = _placed(cloud)
    for seq, ago in ((1, 300), (2, 200), (3, 100)):
        assert placed[seq] == (utc_text(arrival - timedelta(seconds=ago)), "anchored")
    # Attendance is ordered by when things happened, not by what the wall clock said.
    assert [c["seq"] for c in _checkins(cloud)] == [1, 2, 3]


def test_unanchored_check_ins_keep_their_wall_time_until_an_anchor_arrives(cloud):
    device = cloud.enrol()
    items = [
        make_item(
            1, boot="boot-a", mono=100 * SEC, wall="1970-01-01T00:01:40.000000Z", quality="unsynced"
        ),
        make_item(
            2,
            boot="boot-a",
            mono=160 * SEC,
            wall="2026-05-01T11:00:00.000000Z",
            quality="ntp_synced",
        ),
    ]
    cloud.upload_ok(device, items)  # no clock, no anchors
    assert _placed(cloud) == {
        1: ("1970-01-01T00:01:40.000000Z", "device_unsynced"),
        2: ("2026-05-01T11:00:00.000000Z", "device_ntp"),
    }
    cloud.clock.advance(3600)
    cloud.heartbeat(device, boot_id="boot-a", monotonic_ns=1000 * SEC)
    now = cloud.clock()
    assert _placed(cloud) == {
        1: (utc_text(now - timedelta(seconds=900)), "anchored"),
        2: (utc_text(now - timedelta(seconds=840)), "anchored"),
    }


def test_absurd_wall_clocks_keep_the_stored_times_in_order(cloud):
    device = cloud.enrol()
    cloud.upload_ok(
        device,
        [
            make_item(1, boot="b", wall="0999-01-01T00:00:00.000000Z", quality="unsynced"),
            make_item(2, boot="b", wall="1970-01-01T00:00:00.000000Z", quality="unsynced"),
        ],
    )
    assert [(c["seq"], c["occurred_at"]) for c in _checkins(cloud)] == [
        (1, "0999-01-01T00:00:00.000000Z"),
        (2, "1970-01-01T00:00:00.000000Z"),
    ]


def test_anchors_recorded_by_the_device_place_events_of_an_earlier_boot(cloud):
    device = cloud.enrol()
    server_time = datetime(2026, 4, 30, 8, 0, tzinfo=cloud.clock().tzinfo)
    anchor = {"boot_id": "boot-old", "monotonic_ns": 50 * SEC, "server_time": utc_text(server_time)}
    item = make_item(
        1, boot="boot-old", mono=80 * SEC, wall="1970-01-01T00:00:00.000000Z", quality="unsynced"
    )
    cloud.upload_ok(device, [item], clock=("boot-new", 7 * SEC), anchors=[anchor])
    assert _placed(cloud)[1] == (utc_text(server_time + timedelta(seconds=30)), "anchored")


def test_the_nearest_anchor_places_an_event(cloud):
    device = cloud.enrol()
    t0 = cloud.clock()
    early = {"boot_id": BOOT, "monotonic_ns": 0, "server_time": utc_text(t0)}
    # A second anchor an hour later by the monotonic clock but 2 s "late" by the server: drift.
    late = {
        "boot_id": BOOT,
        "monotonic_ns": 3600 * SEC,
        "server_time": utc_text(t0 + timedelta(seconds=3602)),
    }
    cloud.upload_ok(device, [], anchors=[early, late])
    cloud.upload_ok(device, [make_item(1, mono=3500 * SEC), make_item(2, mono=10 * SEC)])
    placed = _placed(cloud)
    assert placed[1][0] == utc_text(t0 + timedelta(seconds=3502))
    assert placed[2][0] == utc_text(t0 + timedelta(seconds=10))


# -- heartbeats ------------------------------------------------------------------------------------


def test_heartbeat_asks_for_what_a_restored_cloud_lost(cloud):
    device = cloud.enrol()
    cloud.upload_ok(
        device, [make_item(n) for n in range(1, 51)] + [make_item(51) | {"door_id": "bad door"}]
    )
    beat = {"retained_from_seq": 1, "synced_through_seq": 51, "last_seq": 51}
    reply = parse_heartbeat_reply(cloud.heartbeat(device, **beat))
    assert reply.resend_from_seq is None, "rejected items count as held"
    assert reply.server_time == cloud.clock()

    # A restore from an older backup lost seqs 20-25 and 40.
    with cloud.database.write() as tx:
        tx.run(
            "DELETE FROM checkins WHERE device_id = ? AND (seq BETWEEN 20 AND 25 OR seq = 40)",
            (device.id,),
        )
    assert cloud.heartbeat(device, **beat)["resend_from_seq"] == 20
    # The device only keeps rows from 30 on: the first gap it can fill is 40.
    assert cloud.heartbeat(device, **(beat | {"retained_from_seq": 30}))["resend_from_seq"] == 40
    cloud.upload_ok(device, [make_item(n) for n in range(20, 26)] + [make_item(40)])
    assert cloud.heartbeat(device, **beat)["resend_from_seq"] is None
    # An empty journal asks for nothing.
    empty = {"retained_from_seq": 0, "synced_through_seq": 0, "last_seq": 0}
    assert cloud.heartbeat(device, **empty)["resend_from_seq"] is None


def test_heartbeat_resnapshot_on_request_and_on_checksum_mismatch(cloud):
    cloud.ok("POST", "/plans", json={"id": "p1", "name": "Any"})
    device = cloud.enrol()
    version, rows = cloud.pull_all(device)
    checksum, count = replica_checksum(rows)
    good = {"replica_version": version, "replica_checksum": checksum, "replica_count": count}
    assert cloud.heartbeat(device, **good)["resnapshot"] is False
    health = cloud.ok("GET", f"/devices/{device.id}")["health"]
    assert health["replica_status"] == "match" and health["replica_matches"] is True

    assert cloud.heartbeat(device, **(good | {"replica_count": count + 1}))["resnapshot"] is True
    assert cloud.heartbeat(device, **(good | {"replica_checksum": "f" * 16}))["resnapshot"] is True
    assert cloud.ok("GET", f"/devices/{device.id}")["health"]["replica_matches"] is False
    # Behind the cloud: nothing to compare yet.
    cloud.ok("PATCH", "/plans/p1", json={"name": "Renamed"})
    assert cloud.heartbeat(device, **good)["resnapshot"] is False
    assert cloud.ok("GET", f"/devices/{device.id}")["health"]["replica_status"] == "behind"

    requested = cloud.ok("POST", f"/devices/{device.id}/resnapshot")
    assert requested["resnapshot_requested"] is True
    assert cloud.heartbeat(device, **good)["resnapshot"] is True
    assert cloud.heartbeat(device, **good)["resnapshot"] is True, "until the device acts on it"
    cloud.pull_all(device)
    assert cloud.heartbeat(device, **good)["resnapshot"] is False
    assert cloud.ok("GET", f"/devices/{device.id}")["resnapshot_requested"] is False


def test_heartbeat_records_the_devices_sync_health(cloud):
    device = cloud.enrol()
    cloud.heartbeat(
        device,
        software_version="0.2.0",
        backlog=17,
        oldest_pending_age_s=42.5,
        clock_quality="server_anchored",
        last_error="cloud unreachable: timeout",
        last_seq=99,
        synced_through_seq=82,
        retained_from_seq=1,
    )
    listed = cloud.ok("GET", "/devices")["items"]
    assert [d["id"] for d in listed] == [device.id]
    health = listed[0]["health"]
    assert health["backlog"] == 17
    assert health["oldest_pending_age_s"] == 42.5
    assert health["clock_quality"] == "server_anchored"
    assert health["last_error"] == "cloud unreachable: timeout"
    assert (health["last_seq"], health["synced_through_seq"]) == (99, 82)
    assert health["last_heartbeat_at"] == utc_text(cloud.clock())
    assert listed[0]["software_version"] == "0.2.0"


def test_a_malformed_heartbeat_is_400_naming_the_field(cloud):
    device = cloud.enrol()
    response = cloud.client.post(
        "/v1/heartbeat", json={"software_version": "0.1.0"}, headers=device.headers
    )
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"
    bad = cloud.client.post("/v1/heartbeat", content=b"{nope", headers=device.headers)
    assert bad.status_code == 400


# -- review findings -------------------------------------------------------------------------------


def test_concurrent_uploads_from_many_doors_lose_no_class(cloud):
    """Doors uploading at the same moment, each spending a class of one pack: every decrement
    lands (the balance is read under the organisation's version lock) and the stored row hash
    matches the row as stored."""
    doors = 6
    _class_pack(cloud, remaining=1)
    devices = [cloud.enrol(f"door{n}") for n in range(doors)]
    auths = [uploads.authenticate_device(cloud.database, d.token, cloud.clock()) for d in devices]
    start = threading.Barrier(doors)
    errors: list[BaseException] = []

    def send(n: int) -> None:
        try:
            item = _class_use(n + 1, item_id=f"01900000-0000-7000-8000-{n + 1:012x}")
            envelope = parse_upload_envelope({"items": [item]})
            start.wait(120)  # bounds a hang only: threads start late on a busy machine
            cloud.database.transact(
                lambda tx: uploads.receive_checkins(tx, auths[n], envelope, cloud.clock())
            )
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(n,)) for n in range(doors)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)  # bounds a hang only
    assert not errors, errors
    assert cloud.ok("GET", "/memberships/pack1")["remaining_classes"] == 1 - doors
    overdrafts = [c for c in _checkins(cloud) if c["overdraft"]]
    assert len(overdrafts) == doors - 1
    # The replica a device pulls now matches the cloud's checkpoint (row hashes are current).
    version, rows = cloud.pull_all(devices[0])
    checkpoint = cloud.follow(devices[0], version, rows)
    assert (checkpoint["checksum"], checkpoint["count"]) == replica_checksum(rows)
    assert rows[("membership", "pack1")]["remaining_classes"] == 1 - doors


def _revoke_and_enrol_again(cloud: Harness, old) -> object:
    cloud.ok("POST", f"/devices/{old.id}/revoke")
    return cloud.enrol("front door again")


def test_a_reenrolled_kiosk_resends_nothing_it_already_delivered(cloud):
    """Revoke + re-enrol in the same boot: the heartbeat recognises the earlier enrolment by the
    shared boot id and asks for nothing; re-sent rows answer duplicate with their effect."""
    _class_pack(cloud, remaining=5)
    first = cloud.enrol()
    items = [make_item(1), _class_use(2), make_item(3)]
    sent = cloud.upload_ok(first, items)
    cloud.heartbeat(first, retained_from_seq=1, synced_through_seq=3, last_seq=3)
    second = _revoke_and_enrol_again(cloud, first)

    reply = cloud.heartbeat(second, retained_from_seq=1, synced_through_seq=3, last_seq=3)
    assert reply["resend_from_seq"] is None
    again = cloud.upload_ok(second, items)
    assert [r["status"] for r in again] == ["duplicate"] * 3
    assert again[1]["version"] == sent[1]["version"] is not None
    assert cloud.ok("GET", "/memberships/pack1")["remaining_classes"] == 4, "charged once"
    assert len(_checkins(cloud)) == 3


def test_a_reenrolled_kiosk_after_a_reboot_is_linked_by_its_resent_rows(cloud):
    """Re-enrolled after a reboot (no shared boot id): the first heartbeat asks for the retained
    rows, they answer duplicate (same seq, door, boot, monotonic time), and from then on the
    earlier device's seqs count as held: no endless re-send, no id_conflict."""
    first = cloud.enrol()
    items = [make_item(n) for n in (1, 2, 3)]
    cloud.upload_ok(first, items)
    cloud.heartbeat(first, retained_from_seq=1, synced_through_seq=3, last_seq=3)
    second = cloud.enrol("front door again")  # kiosk enrol --force: the old one is not revoked
    beat = {"boot_id": "boot-2", "retained_from_seq": 1, "synced_through_seq": 4, "last_seq": 4}

    assert cloud.heartbeat(second, **beat)["resend_from_seq"] == 1
    new = make_item(4, boot="boot-2")
    results = cloud.upload_ok(second, [*items, new])
    assert [r["status"] for r in results] == ["duplicate"] * 3 + ["created"]
    assert cloud.heartbeat(second, **beat)["resend_from_seq"] is None
    # A seq the cloud really lost is still asked for.
    beat["synced_through_seq"] = beat["last_seq"] = 5
    assert cloud.heartbeat(second, **beat)["resend_from_seq"] == 5


def test_an_id_held_elsewhere_is_still_an_id_conflict(cloud):
    """Only the same organisation and gym, with a revoked holder or the very same journal row,
    counts as an earlier enrolment: another gym's device, or another row, is a conflict."""
    gym_b = cloud.ok("POST", "/gyms", json={"name": "B", "timezone": "Europe/Berlin"})["id"]
    front = cloud.enrol()
    other_gym = cloud.enrol("B door", gym_id=gym_b)
    cloud.upload_ok(front, [make_item(1)])
    assert cloud.upload_ok(other_gym, [make_item(1)])[0]["code"] == "id_conflict"
    live_neighbour = cloud.enrol("side door")
    different_row = make_item(7, item_id=make_item(1)["id"], door="side")
    assert cloud.upload_ok(live_neighbour, [different_row])[0]["code"] == "id_conflict"


def test_server_time_is_stamped_when_answering_and_the_anchor_at_arrival(cloud_db_url):
    """The device pairs ``server_time`` with the moment it receives the answer: it is read after
    the database work. The anchor from ``clock`` keeps the request's arrival time."""

    class TickingClock(FakeClock):
        def __call__(self) -> datetime:
            return self.advance(1)

    cloud = Harness(cloud_db_url, clock=TickingClock())
    try:
        device = cloud.enrol()
        before = cloud.clock.now
        response = cloud.upload(device, [make_item(1)], clock=(BOOT, 10 * SEC))
        answered = parse_utc(response.json()["server_time"], "server_time")
        with cloud.database.read() as tx:
            anchors = db.anchors_around(tx, device.id, BOOT, 0, 20 * SEC)
        arrived = parse_utc(anchors[0][1], "anchor")
        assert before < arrived < answered == cloud.clock.now
        beat = cloud.client.post(
            "/v1/heartbeat",
            json=heartbeat_body(monotonic_ns=500 * SEC),
            headers=device.headers,
        ).json()
        assert parse_utc(beat["server_time"], "server_time") == cloud.clock.now
    finally:
        cloud.close()


def test_monotonic_readings_are_bounded_and_the_bound_is_safe(cloud):
    """Readings above MAX_MONOTONIC_NS are refused naming the field (never a 500); readings at
    the bound, next to anchors at the ends of time, are stored and placed without overflow."""
    device = cloud.enrol()
    huge = 2**63 - 1
    bad = cloud.upload(device, [], clock=(BOOT, huge))
    assert bad.status_code == 400 and "clock.monotonic_ns" in bad.json()["detail"]
    anchor = {"boot_id": BOOT, "monotonic_ns": huge, "server_time": "2026-05-01T12:00:00.000000Z"}
    assert cloud.upload(device, [], anchors=[anchor]).status_code == 400
    [item] = cloud.upload_ok(device, [make_item(1, mono=huge)])
    assert (item["status"], item["code"]) == ("rejected", "invalid_item")
    assert "monotonic_ns" in item["detail"]
    response = cloud.client.post(
        "/v1/heartbeat", json=heartbeat_body(monotonic_ns=huge), headers=device.headers
    )
    assert response.status_code == 400 and "monotonic_ns" in response.json()["detail"]

    top = MAX_MONOTONIC_NS
    ends = [
        {"boot_id": "b2", "monotonic_ns": 0, "server_time": "9999-12-31T00:00:00.000000Z"},
        {"boot_id": "b2", "monotonic_ns": top, "server_time": "0001-01-01T00:00:00.000000Z"},
    ]
    results = cloud.upload_ok(
        device, [make_item(2, boot="b2", mono=top // 2)], clock=("b2", top), anchors=ends
    )
    assert results[0]["status"] == "created"
    assert cloud.heartbeat(device, boot_id="b2", monotonic_ns=top)["resend_from_seq"] is None


def test_replica_totals_are_computed_once_per_version(cloud, monkeypatch):
    """Heartbeats and last change pages at one version share one totals query; a version bump
    makes the next answer fresh."""
    device = cloud.enrol()
    _class_pack(cloud, remaining=3)
    version, rows = cloud.pull_all(device)
    checksum, count = replica_checksum(rows)
    calls = []
    real = db.replica_totals
    monkeypatch.setattr(db, "replica_totals", lambda *a: calls.append(a) or real(*a))
    beat = {"replica_version": version, "replica_checksum": checksum, "replica_count": count}
    for _ in range(3):
        assert cloud.heartbeat(device, **beat)["resnapshot"] is False
        assert cloud.follow(device, version, dict(rows))["checksum"] == checksum
    assert len(calls) == 1

    cloud.ok("PATCH", "/memberships/pack1", json={"remaining_classes": 9})
    assert cloud.heartbeat(device, **(beat | {"replica_version": version + 1}))["resnapshot"]
    assert len(calls) == 2


def test_the_totals_cache_is_bounded_and_least_recently_used_goes_first():
    cache = db.BoundedCache(3)
    for n in range(3):
        cache.put(n, (n, n))
    assert cache.get(0) == (0, 0)  # 0 is now the most recent
    cache.put(3, (3, 3))
    assert len(cache) == 3 and cache.get(1) is None and cache.get(0) == (0, 0)

    def hammer(offset: int) -> None:
        for n in range(2000):
            cache.put((offset, n % 50), n)
            cache.get((offset, (n * 7) % 50))

    threads = [threading.Thread(target=hammer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(cache) == 3
