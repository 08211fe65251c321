"""The console's Doors page: each door's health from its last heartbeat, enrolment codes, revoking a
door, asking for a fresh snapshot and settling class-pack overdrafts, through the forms (CSRF) with
an audit row for each change; owners act, the front desk sees the doors and settles overdrafts,
trainers get nothing. Every door here enrols and reports through the real device API; every test
runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import html
import re

from cloud import db
from cloud.console import words
from cloud.console.doors import ONLINE_WITHIN_S
from console_rig import (
    SECRET_MARK,
    ConsoleRig,
    cloud_db_url_fixture,  # noqa: F401
    console_fixture,  # noqa: F401
    pg_server_fixture,  # noqa: F401
)
from pg import heartbeat_body
from sync.protocol import PROTOCOL_VERSION


def text_of(page: str) -> str:
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", page)).split())


def door_card(page: str, device_id: str) -> str:
    """The text of one door's card on the doors page."""
    card = page.split(f'data-door="{device_id}"', 1)[1].split("</article>", 1)[0]
    return text_of("<x " + card)


def heartbeat_status(console: ConsoleRig, device_id: str) -> int:
    """What the device API answers a heartbeat of this device now (200, or 401 once revoked)."""
    token = console.device_tokens[device_id]
    answer = console.device_client().post(
        "/v1/heartbeat",
        json=heartbeat_body(boot_id="boot-hb"),
        headers={"Authorization": f"Bearer {token}", "FitFlow-Protocol": str(PROTOCOL_VERSION)},
    )
    return answer.status_code


def enrol(console: ConsoleRig, org, name: str, gym_id: str | None = None):
    door = console.door(org, name, gym_id)
    if not hasattr(console, "device_tokens"):
        console.device_tokens = {}
    console.device_tokens[door.id] = door.token
    return door


# -- health ----------------------------------------------------------------------------------------


def test_the_doors_page_shows_each_doors_health(console: ConsoleRig):
    a = console.a
    quiet = enrol(console, a, "Side door")
    console.clock.advance(3600)  # the side door has not been heard of for an hour
    busy = enrol(console, a, "Front turnstile")
    console.heartbeat(
        busy,
        boot_id="boot-hb",
        software_version="1.4.2",
        backlog=3,
        oldest_pending_age_s=125.0,
        clock_quality="server_anchored",
        last_error="push: connection refused",
        occupancy={"now": 6, "entries_today": 9, "exits_today": 3, "max_today": 7, "capacity": 30},
    )
    enrol(console, console.b, f"Brawn door {SECRET_MARK}x")
    status = console.database.transact(
        lambda tx: db.device(tx, a.id, busy.id)["hb_replica_status"], write=False
    )

    page = console.sign_in("staff").get("/console/doors")
    assert page.status_code == 200, page.text
    card = door_card(page.text, busy.id)
    assert card.startswith("Front turnstile Online Last seen just now (15:00)")
    assert "Waiting to upload 3 check-ins, the oldest for 2 min" in card
    assert f"Member list {words.replica_words(status)}" in card
    assert f"Clock {words.clock_words('server_anchored')}" in card
    assert "Software 1.4.2" in card
    assert "Counts inside 6 of 30 · 9 in, 3 out today (15:00)" in card
    assert "Last problem push: connection refused" in card
    side = door_card(page.text, quiet.id)
    assert side.startswith("Side door Offline Last seen 60 min ago (14:00)")
    assert "Not reported yet" in side and "Software 0.1.0" in side
    assert f"within the last {int(ONLINE_WITHIN_S)} seconds" in page.text
    assert "Brawn door" not in page.text
    # The front desk sees the doors, not the owner's actions.
    assert "/resnapshot" not in page.text and "/revoke" not in page.text
    assert "Make an enrolment code" not in page.text

    # A door is offline once two sync rounds pass without a word from it.
    console.clock.advance(ONLINE_WITHIN_S + 1)
    later = console.sign_in("owner").get("/console/doors")
    assert door_card(later.text, busy.id).startswith("Front turnstile Offline Last seen 61 s ago")


# -- owners' actions -------------------------------------------------------------------------------


def test_an_owner_makes_an_enrolment_code_shown_once_and_audited(console: ConsoleRig):
    owner = console.sign_in("owner")
    page = owner.get("/console/doors")
    assert 'action="/console/doors/enrolment-code"' in page.text
    before = console.snapshot()
    refused = owner.post(
        "/console/doors/enrolment-code",
        {"csrf": "forged", "gym_id": console.a.gym_id, "ttl_minutes": "15"},
    )
    assert refused.status_code == 403
    assert console.snapshot() == before

    made = owner.post(
        "/console/doors/enrolment-code", {"gym_id": console.a.gym_id, "ttl_minutes": "15"}
    )
    assert made.status_code == 200, made.text
    assert made.headers["cache-control"] == "no-store"
    code = re.search(r'readonly value="([^"]+)"', made.text).group(1)
    assert "valid until 14:15 (15 minutes)" in text_of(made.text)
    [row] = [r for r in console.audit(console.a) if r["action"] == "door.enrolment_code"]
    assert (row["staff_id"], row["target"]) == (console.a.people["owner"].id, console.a.gym_id)
    assert "valid 15 min" in row["detail"] and code not in row["detail"]
    # The code enrols a door, once, at that gym.
    enrolled = console.device_client().post(
        "/v1/enrol",
        json={"code": code, "name": "New door", "software_version": "0.1.0"},
        headers={"FitFlow-Protocol": str(PROTOCOL_VERSION)},
    )
    assert enrolled.status_code == 201 and enrolled.json()["gym_id"] == console.a.gym_id
    assert "New door" in owner.get("/console/doors").text
    # Not shown again anywhere.
    assert code not in owner.get("/console/doors").text
    assert code not in owner.get("/console/audit").text


def test_an_enrolment_code_for_another_organisations_gym_is_not_found(console: ConsoleRig):
    owner = console.sign_in("owner")
    before = console.snapshot()
    for gym in (console.b.gym_id, "gym_nothing"):
        answer = owner.post("/console/doors/enrolment-code", {"gym_id": gym, "ttl_minutes": "60"})
        assert answer.status_code == 404
        assert "Brawn" not in answer.text
    bad_ttl = owner.post(
        "/console/doors/enrolment-code", {"gym_id": console.a.gym_id, "ttl_minutes": "99999"}
    )
    assert bad_ttl.status_code == 400
    assert "1 minute to 24 hours" in bad_ttl.text
    assert console.snapshot() == before


def test_an_owner_revokes_a_door_after_confirming(console: ConsoleRig):
    door = enrol(console, console.a, "Back door")
    other = enrol(console, console.a, "Front door")
    owner = console.sign_in("owner")
    confirm = owner.get(f"/console/doors/{door.id}/revoke")
    assert confirm.status_code == 200
    assert "Revoke Back door?" in text_of(confirm.text)
    assert f'action="/console/doors/{door.id}/revoke"' in confirm.text
    assert heartbeat_status(console, door.id) == 200

    done = owner.post(f"/console/doors/{door.id}/revoke")
    assert (done.status_code, done.headers["location"]) == (303, "/console/doors?done=revoked")
    assert heartbeat_status(console, door.id) == 401
    assert heartbeat_status(console, other.id) == 200, "other doors are unaffected"
    [row] = [r for r in console.audit(console.a) if r["action"] == "door.revoke"]
    assert (row["target"], row["detail"]) == (door.id, "revoked Back door")
    page = owner.get("/console/doors?done=revoked").text
    assert "The door was revoked" in page
    assert f'data-door="{door.id}"' not in page and "1 revoked door" in page

    # Again: nothing more to do, nothing more recorded.
    again = owner.post(f"/console/doors/{door.id}/revoke")
    assert again.headers["location"] == "/console/doors?done=already_revoked"
    assert len([r for r in console.audit(console.a) if r["action"] == "door.revoke"]) == 1
    assert owner.post(f"/console/doors/{door.id}/resnapshot").status_code == 409


def test_an_owner_asks_a_door_for_a_fresh_snapshot(console: ConsoleRig):
    door = enrol(console, console.a, "Front door")
    assert console.heartbeat(door, boot_id="boot-hb")["resnapshot"] is False
    owner = console.sign_in("owner")
    done = owner.post(f"/console/doors/{door.id}/resnapshot")
    assert (done.status_code, done.headers["location"]) == (303, "/console/doors?done=resnapshot")
    assert console.heartbeat(door, boot_id="boot-hb")["resnapshot"] is True
    [row] = [r for r in console.audit(console.a) if r["action"] == "door.resnapshot"]
    assert row["target"] == door.id and row["address"] == "testclient"
    assert "A fresh copy of the member list was requested" in owner.get("/console/doors").text


def test_the_front_desk_cannot_enrol_revoke_or_resnapshot(console: ConsoleRig):
    door = enrol(console, console.a, "Front door")
    desk = console.sign_in("staff")
    before = console.snapshot()
    for path, form in (
        ("/console/doors/enrolment-code", {"gym_id": console.a.gym_id, "ttl_minutes": "60"}),
        (f"/console/doors/{door.id}/revoke", {}),
        (f"/console/doors/{door.id}/resnapshot", {}),
    ):
        assert desk.post(path, form).status_code == 403, path
    assert desk.get(f"/console/doors/{door.id}/revoke").status_code == 403
    assert console.snapshot() == before
    assert heartbeat_status(console, door.id) == 200


def test_trainers_get_no_doors(console: ConsoleRig):
    door = enrol(console, console.a, "Front door")
    trainer = console.sign_in("trainer")
    before = console.snapshot()
    assert trainer.get("/console/doors").status_code == 403
    assert trainer.get(f"/console/doors/{door.id}/revoke").status_code == 403
    for path in (f"/console/doors/{door.id}/revoke", f"/console/doors/{door.id}/resnapshot"):
        assert trainer.post(path).status_code == 403
    checkin = console.overdraft(console.a, enrol(console, console.a, "Pack door"))
    before = console.snapshot()
    assert trainer.post(f"/console/doors/overdrafts/{checkin}/settle").status_code == 403
    assert console.snapshot() == before
    assert "Front door" not in trainer.get("/console/").text


def test_another_organisations_door_is_not_found(console: ConsoleRig):
    theirs = enrol(console, console.b, "Brawn door")
    owner = console.sign_in("owner")
    before = console.snapshot()
    assert owner.get(f"/console/doors/{theirs.id}/revoke").status_code == 404
    for action in ("revoke", "resnapshot"):
        answer = owner.post(f"/console/doors/{theirs.id}/{action}")
        assert answer.status_code == 404 and "Brawn door" not in answer.text
    assert console.snapshot() == before
    assert heartbeat_status(console, theirs.id) == 200


# -- overdrafts ------------------------------------------------------------------------------------


def overdrafts_api(console: ConsoleRig, org) -> list[dict]:
    answer = console.device_client().get(
        "/admin/v1/overdrafts", headers={"Authorization": f"Bearer {org.admin_token}"}
    )
    assert answer.status_code == 200, answer.text
    return answer.json()["items"]


def test_the_front_desk_settles_an_overdraft_once_and_the_balance_stays(console: ConsoleRig):
    a = console.a
    door = enrol(console, a, "Pack door")
    checkin = console.overdraft(a, door, first="Olive")
    [listed] = overdrafts_api(console, a)
    assert (listed["id"], listed["remaining_classes"]) == (checkin, -1)
    theirs = console.overdraft(console.b, enrol(console, console.b, "Brawn door"), first="Brenda")

    desk = console.sign_in("staff")
    page = desk.get("/console/doors").text
    row = text_of(page.split(f'data-overdraft="{checkin}"', 1)[1].split("</tr>", 1)[0])
    assert row.startswith("> 13:00 Olive Overdrawn Class pack -1 Pack door Settle")
    assert "Brenda" not in page and theirs not in page
    membership = re.search(r'href="(/console/members/[^"]+/memberships/[^"]+)"', page).group(1)
    assert desk.get(membership).status_code == 200, "where the desk sets a new balance"

    # Another organisation's overdraft: not found, unchanged.
    before = console.snapshot()
    assert desk.post(f"/console/doors/overdrafts/{theirs}/settle").status_code == 404
    assert console.snapshot() == before

    done = desk.post(f"/console/doors/overdrafts/{checkin}/settle")
    assert (done.status_code, done.headers["location"]) == (303, "/console/doors?done=settled")
    assert overdrafts_api(console, a) == []
    assert len(overdrafts_api(console, console.b)) == 1
    [row] = [r for r in console.audit(a) if r["action"] == "overdraft.settle"]
    assert (row["staff_id"], row["target"]) == (a.people["staff"].id, checkin)
    assert "Olive Overdrawn" in row["detail"] and "balance -1, left unchanged" in row["detail"]
    balance = console.database.transact(
        lambda tx: tx.value(
            "SELECT remaining_classes FROM memberships WHERE organization_id = ?"
            " AND member_id IN (SELECT id FROM members WHERE first_name = 'Olive')",
            (a.id,),
        ),
        write=False,
    )
    assert balance == -1, "settling changes no balance"
    assert "Olive" not in desk.get("/console/doors").text.split('id="overdrafts"', 1)[1]

    again = desk.post(f"/console/doors/overdrafts/{checkin}/settle")
    assert again.headers["location"] == "/console/doors?done=already_settled"
    assert len([r for r in console.audit(a) if r["action"] == "overdraft.settle"]) == 1
