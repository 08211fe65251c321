"""The protocol 3 shapes in sync.protocol: passage events among the upload items, a check-in's
``kind``, the heartbeat's occupancy and a plan's visit limit. Hostile input is a ProtocolError
naming the field, never another exception; what one end writes the other reads back the same."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sync.protocol import (
    EVENT_KINDS,
    MAX_OCCUPANCY,
    MAX_VISITS_PER_DAY,
    PROTOCOL_VERSION,
    EventItem,
    Heartbeat,
    Occupancy,
    ProtocolError,
    UploadItem,
    make_row,
    parse_event_item,
    parse_heartbeat,
    parse_journal_item,
    parse_row,
    parse_upload_item,
    row_hash,
)

CHECKIN_ID = "01900000-0000-7000-8000-000000000001"
WALL = datetime(2026, 5, 1, 11, 0, 5, tzinfo=UTC)


def event(kind: str = "annulled", **changes) -> dict:
    return {
        "kind": kind,
        "id": "01900000-0000-7000-9000-000000000002",
        "seq": 2,
        "door_id": "front",
        "checkin_id": CHECKIN_ID,
        "wall_time": "2026-05-01T11:00:05.000000Z",
        "boot_id": "boot-1",
        "monotonic_ns": 5_000_000_000,
        "clock_quality": "ntp_synced",
    } | changes


def checkin(**changes) -> dict:
    item = UploadItem(
        id=CHECKIN_ID,
        seq=1,
        door_id="front",
        decision="granted",
        reason="class_pack",
        member_id="m1",
        membership_id="pack1",
        classes_used=1,
        replica_version=3,
        wall_time=WALL,
        boot_id="boot-1",
        monotonic_ns=1,
        clock_quality="ntp_synced",
    )
    return item.to_wire() | changes


def test_this_is_protocol_3():
    assert PROTOCOL_VERSION == 3


@pytest.mark.parametrize("kind", EVENT_KINDS)
def test_an_event_goes_over_the_wire_and_back_unchanged(kind):
    checkin_id = None if kind == "tailgating" else CHECKIN_ID
    sent = EventItem(kind, event()["id"], 2, "front", checkin_id, WALL, "boot-1", 5, "unsynced")
    assert parse_journal_item(sent.to_wire(), "items[0]") == sent
    assert parse_event_item(sent.to_wire(), "items[0]") == sent


def test_an_exit_may_name_a_grant_or_nothing():
    assert parse_event_item(event("exit"), "e").checkin_id == CHECKIN_ID
    assert parse_event_item(event("exit", checkin_id=None), "e").checkin_id is None


def test_a_check_in_carries_its_kind_and_reads_back_the_same():
    wire = checkin()
    assert wire["kind"] == "checkin"
    parsed = parse_journal_item(wire, "items[0]")
    assert isinstance(parsed, UploadItem)
    assert parsed.to_wire() == wire


@pytest.mark.parametrize(
    ("item", "where"),
    [
        (checkin(kind="entry"), "items[0].classes_used"),  # a check-in's fields on an event
        ({k: v for k, v in checkin().items() if k != "kind"}, "items[0].kind"),  # protocol 2
        (event(kind="teleported"), "items[0].kind"),
        (event(kind=None), "items[0].kind"),
        (event(kind=["entry"]), "items[0].kind"),
        ({k: v for k, v in event().items() if k != "checkin_id"}, "items[0].checkin_id"),
        (event(checkin_id=None), "items[0].checkin_id"),
        (event("entry", checkin_id=None), "items[0].checkin_id"),
        (event("tailgating"), "items[0].checkin_id"),
        (event(checkin_id="not-a-uuid"), "items[0].checkin_id"),
        (event(checkin_id="01900000-0000-7000-8000-00000000000A"), "items[0].checkin_id"),
        (event(checkin_id=7), "items[0].checkin_id"),
        (event(id="01900000-0000-7000-9000-00000000000G"), "items[0].id"),
        (event(seq=0), "items[0].seq"),
        (event(seq=True), "items[0].seq"),
        (event(door_id="front door"), "items[0].door_id"),
        (event(wall_time="yesterday"), "items[0].wall_time"),
        (event(boot_id="boot 1"), "items[0].boot_id"),
        (event(monotonic_ns=2**63), "items[0].monotonic_ns"),
        (event(clock_quality="sundial"), "items[0].clock_quality"),
        (event(colour="red"), "items[0].colour"),
        (event(decision="granted"), "items[0].decision"),  # a check-in's field on an event
        ("annulled", "items[0]"),
        (None, "items[0]"),
    ],
)
def test_a_bad_item_names_its_field(item, where):
    with pytest.raises(ProtocolError) as caught:
        parse_journal_item(item, "items[0]")
    assert caught.value.where == where, str(caught.value)


def test_the_check_in_parser_refuses_an_event():
    with pytest.raises(ProtocolError) as caught:
        parse_upload_item(event(), "items[3]")
    assert caught.value.where.startswith("items[3].")


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(sorted({*event(), *checkin(), "extra"})),
        st.none()
        | st.booleans()
        | st.integers(min_value=-(2**70), max_value=2**70)
        | st.text(max_size=50)
        | st.sampled_from([*EVENT_KINDS, "checkin", CHECKIN_ID, "2026-05-01T11:00:05.000000Z"])
        | st.lists(st.integers(), max_size=3),
    )
)
def test_any_object_is_an_item_or_a_protocol_error(raw):
    try:
        parsed = parse_journal_item(raw, "items[0]")
    except ProtocolError as exc:
        assert exc.where.startswith("items[0]")
        assert len(str(exc)) < 300
    else:
        assert parse_journal_item(parsed.to_wire(), "items[0]") == parsed


# -- occupancy in the heartbeat ---------------------------------------------------------------------


def beat(**changes) -> dict:
    hb = Heartbeat(
        software_version="0.3.0",
        boot_id="boot-1",
        monotonic_ns=9,
        device_time=WALL,
        clock_quality="ntp_synced",
        backlog=0,
        oldest_pending_age_s=None,
        replica_version=4,
        replica_checksum="0" * 16,
        replica_count=0,
        last_seq=7,
        synced_through_seq=7,
        retained_from_seq=1,
    )
    return hb.to_wire() | changes


OCCUPANCY = {"now": 12, "entries_today": 40, "exits_today": 28, "max_today": 19, "capacity": 60}


def test_a_heartbeat_carries_occupancy_or_leaves_it_out():
    plain = beat()
    assert "occupancy" not in plain
    assert parse_heartbeat(plain).occupancy is None
    assert parse_heartbeat(beat(occupancy=None)).occupancy is None
    parsed = parse_heartbeat(beat(occupancy=OCCUPANCY))
    assert parsed.occupancy == Occupancy(12, 40, 28, 19, 60)
    assert parsed.to_wire()["occupancy"] == OCCUPANCY
    no_limit = parse_heartbeat(beat(occupancy=OCCUPANCY | {"capacity": None}))
    assert no_limit.occupancy is not None and no_limit.occupancy.capacity is None


@pytest.mark.parametrize(
    ("occupancy", "where"),
    [
        ("12", "occupancy"),
        ([12], "occupancy"),
        (OCCUPANCY | {"now": -1}, "occupancy.now"),
        (OCCUPANCY | {"now": 1.5}, "occupancy.now"),
        (OCCUPANCY | {"now": True}, "occupancy.now"),
        (OCCUPANCY | {"entries_today": MAX_OCCUPANCY + 1}, "occupancy.entries_today"),
        (OCCUPANCY | {"exits_today": "28"}, "occupancy.exits_today"),
        (OCCUPANCY | {"max_today": None}, "occupancy.max_today"),
        (OCCUPANCY | {"capacity": 0}, "occupancy.capacity"),
        (OCCUPANCY | {"capacity": 2**64}, "occupancy.capacity"),
        (OCCUPANCY | {"inside": 3}, "occupancy.inside"),
        ({k: v for k, v in OCCUPANCY.items() if k != "capacity"}, "occupancy.capacity"),
    ],
)
def test_bad_occupancy_names_its_field(occupancy, where):
    with pytest.raises(ProtocolError) as caught:
        parse_heartbeat(beat(occupancy=occupancy))
    assert caught.value.where == where, str(caught.value)


# -- a plan's visit limit ---------------------------------------------------------------------------


def test_a_plan_without_a_limit_hashes_as_in_protocol_2():
    """No limit is the key left out, so every stored plan's row hash stays valid."""
    before = {"name": "Off-peak", "windows": [[0, 360, 720]]}
    assert make_row("plan", "p1", before).data == before
    assert make_row("plan", "p1", before | {"max_visits_per_day": None}).data == before
    limited = make_row("plan", "p1", before | {"max_visits_per_day": 2})
    assert limited.data == before | {"max_visits_per_day": 2}
    assert limited.row_hash() != row_hash("plan", "p1", before)
    wire = {"kind": "plan", "id": "p1", "data": limited.data}
    assert parse_row(wire, "rows[0]", tombstones=False) == limited


@pytest.mark.parametrize("limit", [0, -1, MAX_VISITS_PER_DAY + 1, "2", 2.0, True, [2]])
def test_a_bad_visit_limit_names_its_field(limit):
    data = {"name": "Day pass", "windows": [], "max_visits_per_day": limit}
    with pytest.raises(ProtocolError) as caught:
        parse_row({"kind": "plan", "id": "p1", "data": data}, "rows[4]", tombstones=False)
    assert caught.value.where == "rows[4].data.max_visits_per_day"
