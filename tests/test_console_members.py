"""The console's members pages through the real app (tests/console_rig.py), on SQLite and PostgreSQL:
adding, editing, pausing and resuming members through the forms (CSRF included), validation shown
next to the field with nothing saved, memberships, the card's print page and downloads, a phone
pass activation shown as a QR code that a phone can really use, revocation, the member's visits
and refusals in words, a trainer's narrow view, another organisation's 404s, and the audit rows
every change leaves. The list's and the visits' queries are index ranges (their plans are read).
"""

from __future__ import annotations

import base64
import re
import threading
import time
import xml.etree.ElementTree as ET
from typing import Any

import cv2
import numpy as np
import uvicorn
import zxingcpp
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.routing import APIRoute

from cloud import admin, db
from cloud.console import members as members_pages
from cloud.console.auth import roles_of
from cloud.console.words import REASON_WORDS, reason_words
from cloud.serve import listen, uvicorn_server
from console_rig import (
    PASSWORD,
    SECRET_MARK,
    ConsoleRig,
    Desk,
    checkin_id,
    cloud_db_url_fixture,  # noqa: F401
    console_fixture,  # noqa: F401
    pg_server_fixture,  # noqa: F401
)
from kiosk.core.model import Reason
from pg import make_event, make_item
from sync.passes import public_key_text

OFFERED_CODE = re.compile(r'name="code" value="([^"]*)"')
VERSION = re.compile(r'name="version" value="(\d+)"')
MEMBER_LINK = re.compile(r'href="/console/members/(mbr_[0-9a-z_]+)"')


# -- helpers ---------------------------------------------------------------------------------------


def stored(console: ConsoleRig, member_id: str) -> dict[str, Any]:
    """The member as the database holds it, with its phone."""

    def read(tx: db.Tx) -> dict[str, Any]:
        member = admin.get_member(tx, console.a.id, member_id)
        return {**member, "phone": db.member_phone(tx, console.a.id, member_id)}

    return console.database.transact(read, write=False)


def memberships(console: ConsoleRig, member_id: str) -> list[dict[str, Any]]:
    return console.database.transact(
        lambda tx: admin.list_memberships(tx, console.a.id, member_id, None, 100)["items"],
        write=False,
    )


def problem(html: str, field: str) -> str:
    """The problem the page shows next to ``field`` ("" when none)."""
    found = re.search(rf'id="{field}-problem">([^<]*)<', html)
    return found.group(1) if found else ""


def actions(console: ConsoleRig) -> list[str]:
    return [row["action"] for row in console.audit(console.a)]


def since(rows: list[dict[str, Any]], action: str) -> list[dict[str, Any]]:
    return [row for row in rows if row["action"] == action]


def new_key() -> str:
    raw = (
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )
    return public_key_text(raw)


def read_qr(svg: str) -> list[str]:
    """The texts of the QR symbol an SVG of ``cards.symbol_svg`` draws, rasterised from its path
    (each ``M x y h w v1 h-w z`` is a run of dark modules), 8 pixels a module, read by zxing-cpp
    (the door's decoder)."""
    root = ET.fromstring(svg)  # noqa: S314 - the cloud's own output, made by the test
    ns = {"s": "http://www.w3.org/2000/svg"}
    side = int(root.find("s:rect", ns).get("width"))
    path = root.find("s:path", ns).get("d")
    runs = re.findall(r"M(\d+) (\d+)h(\d+)v1h-\3z", path)
    assert len(runs) == path.count("M")
    grid = np.full((side, side), 255, np.uint8)
    for x, y, w in runs:
        grid[int(y), int(x) : int(x) + int(w)] = 0
    image = cv2.resize(grid, (side * 8, side * 8), interpolation=cv2.INTER_NEAREST)
    return [found.text for found in zxingcpp.read_barcodes(image)]


# -- words -----------------------------------------------------------------------------------------


def test_every_reason_a_door_sends_has_words():
    """The cloud cannot import the door's vocabulary, so its own table must cover it: every reason
    the protocol carries from a door of this release, and a plain fallback for a newer one."""
    assert set(REASON_WORDS) == {reason.value for reason in Reason}
    for reason in Reason:
        assert reason_words(reason.value) == REASON_WORDS[reason.value]
        assert reason_words(reason.value)[0].isupper()
    assert reason_words("teleported") == "Other reason (teleported)"


# -- adding and editing ----------------------------------------------------------------------------


def test_the_desk_adds_a_member_with_a_phone_and_the_offered_card_code(console):
    desk = console.sign_in("staff")
    form = desk.get("/console/members/new")
    assert form.status_code == 200
    code = OFFERED_CODE.search(form.text).group(1)
    assert re.fullmatch(
        r"[234679ACDEFGHJKMNPQRTUVWXYZ]{4}(-[234679ACDEFGHJKMNPQRTUVWXYZ]{4}){2}", code
    )
    assert OFFERED_CODE.search(desk.get("/console/members/new").text).group(1) != code

    answer = desk.post(
        "/console/members",
        {"first_name": " Ann ", "last_name": "Smith", "phone": "+44 (0)7700 900-123", "code": code},
    )
    assert answer.status_code == 303, answer.text
    found = re.fullmatch(r"/console/members/([^?]+)\?done=created", answer.headers["location"])
    member_id = found.group(1)
    member = stored(console, member_id)
    assert (member["first_name"], member["last_name"], member["status"]) == (
        "Ann",
        "Smith",
        "ACTIVE",
    )
    assert member["code"] == code and member["phone"] == "+4407700900123"

    page = desk.get(answer.headers["location"])
    assert page.status_code == 200
    assert "Ann Smith" in page.text and code in page.text and "+4407700900123" in page.text
    assert "The member was added" in page.text

    (row,) = since(console.audit(console.a), "member.create")
    assert row["target"] == member_id and row["staff_id"] == desk.person.id
    assert row["detail"] == "Ann Smith added (with card code and phone)"
    # The one search box finds the member by the phone's last digits, the code and the name.
    for query in ("900123", code.lower(), "smi"):
        assert member_id in desk.get("/console/members", params={"q": query}).text, query


def test_a_refused_form_shows_the_problem_next_to_the_field_and_saves_nothing(console):
    desk = console.sign_in("owner")
    console.member(console.a, "Tina", "Taken", "TAKEN-01")
    before = console.snapshot()
    cases = [
        ({"first_name": "", "last_name": "Smith"}, 422, "first_name", "Enter the first name."),
        ({"first_name": "Ann", "last_name": "  "}, 422, "last_name", "Enter the last name."),
        (
            {"first_name": "Ann", "last_name": "Smith", "phone": "call me"},
            422,
            "phone",
            "A phone number holds digits, spaces and + ( ) - . / only.",
        ),
        ({"first_name": "Ann", "last_name": "Smith", "phone": "123"}, 422, "phone", "4 to 20"),
        (
            {"first_name": "Ann", "last_name": "Smith", "code": "ab"},
            422,
            "code",
            "Expected 4 to 64 characters from A-Z a-z 0-9 . _ -.",
        ),
        ({"first_name": "A" * 201, "last_name": "Smith"}, 422, "first_name", "200 characters"),
        ({"first_name": "Ann\x07", "last_name": "Smith"}, 422, "first_name", "control"),
        (
            {"first_name": "Ann", "last_name": "Smith", "code": "TAKEN-01"},
            409,
            "code",
            "Already the card of member",
        ),
    ]
    for form, status, field, words in cases:
        answer = desk.post("/console/members", form)
        assert answer.status_code == status, (form, answer.text)
        assert words in problem(answer.text, field), (form, problem(answer.text, field))
        assert f'name="{field}"' in answer.text and 'aria-invalid="true"' in answer.text
        # What was typed comes back, so nothing has to be typed again.
        assert 'value="Smith"' in answer.text or form["last_name"].strip() == ""
    assert console.snapshot() == before


def test_the_desk_edits_a_member_and_a_stale_form_saves_nothing(console):
    member_id = console.member(console.a, "Ann", "Old", "OLD-CODE-1")
    console.member(console.a, "Other", "Holder", "HELD-0001")
    desk = console.sign_in("staff")
    form = desk.get(f"/console/members/{member_id}/edit")
    assert form.status_code == 200 and 'value="OLD-CODE-1"' in form.text
    version = VERSION.search(form.text).group(1)
    fields = {"first_name": "Anna", "last_name": "Old", "phone": "020 1234", "code": "NEW-CODE-2"}
    answer = desk.post(f"/console/members/{member_id}/edit", {**fields, "version": version})
    assert answer.status_code == 303, answer.text
    assert answer.headers["location"] == f"/console/members/{member_id}?done=saved"
    member = stored(console, member_id)
    assert (member["first_name"], member["code"], member["phone"]) == (
        "Anna",
        "NEW-CODE-2",
        "0201234",
    )
    (row,) = since(console.audit(console.a), "member.edit")
    assert row["detail"] == "Ann Old: first name Ann → Anna; card code changed; phone changed"
    assert "NEW-CODE-2" not in repr(console.audit(console.a))

    fresh = VERSION.search(desk.get(f"/console/members/{member_id}/edit").text).group(1)
    same = desk.post(f"/console/members/{member_id}/edit", {**fields, "version": fresh})
    assert same.headers["location"].endswith("?done=unchanged")
    assert len(since(console.audit(console.a), "member.edit")) == 1

    before = console.snapshot()
    stale = desk.post(
        f"/console/members/{member_id}/edit", {**fields, "first_name": "Annie", "version": version}
    )
    assert stale.status_code == 409 and "changed by someone else" in stale.text
    assert 'value="Anna"' in stale.text  # the member as it is now
    taken = desk.post(
        f"/console/members/{member_id}/edit", {**fields, "code": "HELD-0001", "version": fresh}
    )
    assert taken.status_code == 409
    assert "Already the card of member" in problem(taken.text, "code")
    bad = desk.post(
        f"/console/members/{member_id}/edit", {**fields, "phone": "x", "version": fresh}
    )
    assert bad.status_code == 422 and problem(bad.text, "phone")
    assert console.snapshot() == before


def test_pause_and_resume_ask_first_and_are_audited(console):
    member_id = console.member(console.a, "Paul", "Pause")
    desk = console.sign_in("staff")
    confirm = desk.get(f"/console/members/{member_id}/pause")
    assert confirm.status_code == 200 and "Pause Paul Pause?" in confirm.text
    assert f'action="/console/members/{member_id}/pause"' in confirm.text
    assert stored(console, member_id)["status"] == "ACTIVE"  # asking changed nothing

    answer = desk.post(f"/console/members/{member_id}/pause")
    assert answer.headers["location"] == f"/console/members/{member_id}?done=paused"
    assert stored(console, member_id)["status"] == "PAUSED"
    page = desk.get(answer.headers["location"]).text
    assert "Paused" in page and f"/console/members/{member_id}/resume" in page
    again = desk.post(f"/console/members/{member_id}/pause")
    assert again.headers["location"].endswith("?done=unchanged")

    assert "Resume Paul Pause?" in desk.get(f"/console/members/{member_id}/resume").text
    answer = desk.post(f"/console/members/{member_id}/resume")
    assert answer.headers["location"] == f"/console/members/{member_id}?done=resumed"
    assert stored(console, member_id)["status"] == "ACTIVE"
    rows = console.audit(console.a)
    assert [r["detail"] for r in rows if r["action"] in ("member.pause", "member.resume")] == [
        "Paul Pause paused",
        "Paul Pause resumed",
    ]
    # Without the form token nothing happens.
    refused = desk.client.post(f"/console/members/{member_id}/pause", data={})
    assert refused.status_code == 403 and stored(console, member_id)["status"] == "ACTIVE"


# -- memberships -----------------------------------------------------------------------------------


def test_memberships_are_added_edited_and_ended(console):
    member_id = console.member(console.a, "Mel", "Member")
    plan = console.database.transact(
        lambda tx: admin.save_plan(
            tx,
            console.a.id,
            None,
            {"name": "Mornings", "windows": [[0, 360, 720]]},
            console.clock(),
        )
    )
    desk = console.sign_in("staff")
    base = f"/console/members/{member_id}/memberships"
    form = desk.get(f"{base}/new?type=SUBSCRIPTION")
    assert form.status_code == 200 and "Mornings" in form.text
    assert 'value="2026-05-01"' in form.text  # today in the gym's zone is offered as the start
    pack_form = desk.get(f"{base}/new?type=CLASS_PACK").text
    assert 'name="remaining_classes"' in pack_form

    made = [
        {"type": "SUBSCRIPTION", "plan_id": plan["id"], "start_date": "2026-05-01", "end_date": "2026-05-31"},
        {"type": "CLASS_PACK", "start_date": "2026-05-01", "end_date": "", "remaining_classes": "10"},
        {"type": "PT", "start_date": "2026-05-01", "end_date": "2026-12-31", "remaining_classes": "5"},
    ]  # fmt: skip
    for fields in made:
        answer = desk.post(base, fields)
        assert answer.status_code == 303, answer.text
        assert answer.headers["location"] == f"/console/members/{member_id}?done=membership"
    held = {m["type"]: m for m in memberships(console, member_id)}
    assert held["SUBSCRIPTION"]["plan_id"] == plan["id"]
    assert held["SUBSCRIPTION"]["end_date"] == "2026-05-31"
    assert held["CLASS_PACK"]["remaining_classes"] == 10 and held["CLASS_PACK"]["end_date"] is None
    assert held["PT"]["remaining_classes"] == 5
    page = desk.get(f"/console/members/{member_id}").text
    assert "Class pack" in page and "Personal training" in page and "Mornings" in page

    before = console.snapshot()
    refused = [
        ({"type": "SUBSCRIPTION", "start_date": "2026-05-10", "end_date": "2026-05-01"}, "end_date", "Before start_date."),
        ({"type": "SUBSCRIPTION", "start_date": "2026-13-01"}, "start_date", "date"),
        ({"type": "CLASS_PACK", "start_date": "2026-05-01", "remaining_classes": ""}, "remaining_classes", "how many classes"),
        ({"type": "CLASS_PACK", "start_date": "2026-05-01", "remaining_classes": "ten"}, "remaining_classes", "whole number"),
        ({"type": "PT", "start_date": "2026-05-01", "remaining_classes": "-3"}, "remaining_classes", "0 to"),
        ({"type": "SUBSCRIPTION", "start_date": "2026-05-01", "plan_id": "pln_nope"}, "plan_id", "No plan pln_nope."),
    ]  # fmt: skip
    for fields, field, words in refused:
        answer = desk.post(base, fields)
        assert answer.status_code == 422, (fields, answer.status_code)
        assert words in problem(answer.text, field), (fields, answer.text[-2000:])
    assert console.snapshot() == before

    pack = held["CLASS_PACK"]["id"]
    form = desk.get(f"{base}/{pack}")
    assert form.status_code == 200 and 'value="10"' in form.text
    version = VERSION.search(form.text).group(1)
    edit = {"type": "CLASS_PACK", "plan_id": "", "start_date": "2026-05-01", "end_date": "",
            "remaining_classes": "8", "version": version}  # fmt: skip
    answer = desk.post(f"{base}/{pack}", edit)
    assert answer.status_code == 303, answer.text
    assert {m["id"]: m for m in memberships(console, member_id)}[pack]["remaining_classes"] == 8
    before = console.snapshot()
    stale = desk.post(f"{base}/{pack}", {**edit, "remaining_classes": "20"})
    assert stale.status_code == 409 and "changed meanwhile" in stale.text
    assert console.snapshot() == before

    subscription = held["SUBSCRIPTION"]["id"]
    end_page = desk.get(f"{base}/{subscription}/end")
    assert end_page.status_code == 200 and 'value="2026-05-01"' in end_page.text
    later = desk.post(f"{base}/{subscription}/end", {"last_day": "2026-06-30"})
    assert later.status_code == 422 and "already ends on 2026-05-31" in problem(
        later.text, "last_day"
    )
    early = desk.post(f"{base}/{subscription}/end", {"last_day": "2026-04-01"})
    assert early.status_code == 422 and "starts on 2026-05-01" in problem(early.text, "last_day")
    assert console.snapshot() == before
    answer = desk.post(f"{base}/{subscription}/end", {"last_day": "2026-05-20"})
    assert answer.headers["location"] == f"/console/members/{member_id}?done=ended"
    assert {m["id"]: m for m in memberships(console, member_id)}[subscription][
        "end_date"
    ] == "2026-05-20"

    rows = console.audit(console.a)
    assert [r["action"] for r in rows if r["action"].startswith("membership.")] == [
        "membership.create",
        "membership.create",
        "membership.create",
        "membership.edit",
        "membership.end",
    ]
    assert since(rows, "membership.edit")[0]["detail"] == "Mel Member: remaining_classes 10 → 8"
    assert since(rows, "membership.end")[0]["detail"] == (
        "Mel Member: subscription ends 2026-05-20 (was 2026-05-31)"
    )


def test_a_membership_of_another_member_is_not_found_under_this_one(console):
    ann = console.member(console.a, "Ann", "One")
    bob = console.member(console.a, "Bob", "Two")
    pack = console.database.transact(
        lambda tx: admin.save_membership(
            tx,
            console.a.id,
            None,
            {
                "member_id": bob,
                "type": "CLASS_PACK",
                "start_date": "2026-05-01",
                "remaining_classes": 3,
            },
            console.clock(),
        )
    )
    desk = console.sign_in("staff")
    assert desk.get(f"/console/members/{ann}/memberships/{pack['id']}").status_code == 404
    before = console.snapshot()
    answer = desk.post(
        f"/console/members/{ann}/memberships/{pack['id']}/end", {"last_day": "2026-05-01"}
    )
    assert answer.status_code == 404
    assert console.snapshot() == before


# -- the card --------------------------------------------------------------------------------------


def test_the_card_has_a_print_page_and_downloads(console):
    member_id = console.member(console.a, "Cara", "Card", "CARD-0042")
    desk = console.sign_in("staff")
    page = desk.get(f"/console/members/{member_id}/card")
    assert page.status_code == 200
    assert f'src="/console/members/{member_id}/card.svg"' in page.text
    assert f'href="/console/members/{member_id}/card.svg?download=1"' in page.text
    assert f'href="/console/members/{member_id}/card.png?download=1"' in page.text
    assert "default-src 'none'" in page.headers["content-security-policy"]
    sheet = re.search(r'href="(/console/static/console\.css[^"]*)"', page.text).group(1)
    css = desk.get(sheet).text
    assert "@media print" in css and "85.6mm" in css

    svg = desk.get(f"/console/members/{member_id}/card.svg")
    assert svg.status_code == 200 and svg.headers["content-type"].startswith("image/svg+xml")
    assert (
        ">CARD-0042<" in svg.text
        and ">Cara<" in svg.text
        and "content-disposition" not in svg.headers
    )
    download = desk.get(f"/console/members/{member_id}/card.svg?download=1")
    assert download.headers["content-disposition"] == f'attachment; filename="card-{member_id}.svg"'
    png = desk.get(f"/console/members/{member_id}/card.png?download=1")
    assert png.headers["content-type"] == "image/png"
    image = cv2.imdecode(np.frombuffer(png.content, np.uint8), cv2.IMREAD_GRAYSCALE)
    assert [r.text for r in zxingcpp.read_barcodes(image)] == ["CARD-0042"]

    plain = console.member(console.a, "No", "Card")
    assert "has no card code" in desk.get(f"/console/members/{plain}/card").text
    assert desk.get(f"/console/members/{plain}/card.svg").status_code == 404
    assert desk.get(f"/console/members/{plain}/card.png").status_code == 404


# -- phone passes ----------------------------------------------------------------------------------


def test_a_pass_activation_qr_code_activates_a_phone_and_the_pass_can_be_revoked(console):
    member_id = console.member(console.a, "Pia", "Phone")
    desk = console.sign_in("staff")
    shown = desk.post(f"/console/members/{member_id}/passes", {"ttl_minutes": "60"})
    assert shown.status_code == 200, shown.text
    assert shown.headers["cache-control"] == "no-store"
    uri = re.search(r'src="data:image/svg\+xml;base64,([^"]+)"', shown.text).group(1)
    (link,) = read_qr(base64.b64decode(uri).decode("utf-8"))
    found = re.fullmatch(r"http://testserver/pass/#activate=([A-Z2-7]{16})", link)
    assert found, link
    code = found.group(1)
    # 12:00 UTC plus an hour, in Berlin's summer time.
    assert "2026-05-01 15:00 CEST" in shown.text
    (row,) = since(console.audit(console.a), "pass.activation")
    assert row["target"] == member_id and code not in repr(console.audit(console.a))

    phone = console.browser(origin=False)
    activated = phone.post("/pass/v1/activate", json={"code": code, "public_key": new_key()})
    assert activated.status_code == 201, activated.text
    pass_id = activated.json()["pass_id"]
    assert activated.json()["first_name"] == "Pia"
    page = desk.get(f"/console/members/{member_id}").text
    assert pass_id in page and f"/passes/{pass_id}/revoke" in page

    confirm = desk.get(f"/console/members/{member_id}/passes/{pass_id}/revoke")
    assert confirm.status_code == 200 and "Revoke the pass" in confirm.text
    answer = desk.post(f"/console/members/{member_id}/passes/{pass_id}/revoke")
    assert answer.headers["location"] == f"/console/members/{member_id}?done=revoked"
    row = console.database.transact(
        lambda tx: db.replica_row(tx, "pass", console.a.id, pass_id), write=False
    )
    assert row["status"] == "REVOKED" and row["revoked_at"] is not None
    (revoked,) = since(console.audit(console.a), "pass.revoke")
    assert revoked["target"] == pass_id
    again = desk.post(f"/console/members/{member_id}/passes/{pass_id}/revoke")
    assert again.headers["location"].endswith("?done=unchanged")
    assert len(since(console.audit(console.a), "pass.revoke")) == 1


def test_no_activation_beyond_the_organisations_limit_of_passes(console):
    member_id = console.member(console.a, "Max", "Passes")
    console.database.transact(
        lambda tx: admin.update_organization(tx, console.a.id, {"max_live_passes": 1})
    )
    console.phone_pass(console.a, member_id)
    desk = console.sign_in("staff")
    page = desk.get(f"/console/members/{member_id}").text
    assert "the most allowed" in page and "Issue a phone pass" not in page
    before = console.snapshot()
    answer = desk.post(f"/console/members/{member_id}/passes", {"ttl_minutes": "15"})
    assert answer.status_code == 409 and "revoke one first" in answer.text
    assert console.snapshot() == before


# -- visits ----------------------------------------------------------------------------------------


def test_the_members_visits_and_refusals_in_words_newest_first(console):
    member_id = console.member(console.a, "Vic", "Visitor", "VIC-0001")
    other = console.member(console.a, "Olga", "Other")
    door = console.door(console.a, "Front door")
    items = [
        make_item(1, item_id=checkin_id(door, 1), member_id=member_id, wall="2026-05-01T07:00:00.000000Z"),
        make_item(2, item_id=checkin_id(door, 2), member_id=member_id, decision="denied",
                  reason="member_paused", wall="2026-05-01T08:00:00.000000Z"),
        make_item(3, item_id=checkin_id(door, 3), member_id=member_id,
                  wall="2026-05-01T09:00:00.000000Z"),
        make_item(4, item_id=checkin_id(door, 4), member_id=member_id, decision="denied",
                  reason="levitation", wall="2026-05-01T10:00:00.000000Z"),
        make_item(5, item_id=checkin_id(door, 5), member_id=other, decision="denied",
                  reason="pack_empty", wall="2026-05-01T10:30:00.000000Z"),
        make_event(6, "annulled", checkin_id(door, 3), wall="2026-05-01T09:00:20.000000Z"),
    ]  # fmt: skip
    results = console.upload(door, items)
    assert all(r["status"] == "created" for r in results), results
    desk = console.sign_in("staff")
    page = desk.get(f"/console/members/{member_id}").text
    table = page[page.index("Last visits and refusals") :]
    order = [
        table.index("Other reason (levitation)"),  # 12:00 local
        table.index("annulled"),  # the 11:00 entry: admitted, but the turnstile did not turn
        table.index("Membership paused"),  # 10:00
        table.index("2026-05-01 09:00 CEST"),  # the first visit
    ]
    assert order == sorted(order), order
    assert "Front door" in table and "Refused" in table and "Admitted" in table
    assert "Class pack used up" not in page  # another member's refusal
    assert table.count("<tr class=") == 4
    assert 'class="granted annulled"' in table


def test_the_visits_page_goes_back_in_pages(console):
    member_id = console.member(console.a, "Reg", "Regular")
    door = console.door(console.a)
    count = members_pages.VISITS_PAGE + 3
    items = [
        make_item(n, item_id=checkin_id(door, n), member_id=member_id,
                  wall=f"2026-04-{1 + n // 24:02d}T{n % 24:02d}:00:00.000000Z")
        for n in range(1, count + 1)
    ]  # fmt: skip
    console.upload(door, items)
    desk = console.sign_in("trainer")
    console.assign(console.a, member_id)
    member_page = desk.get(f"/console/members/{member_id}").text
    assert member_page.count("<tr class=") == members_pages.VISITS_ON_MEMBER
    assert f"/console/members/{member_id}/visits" in member_page
    first = desk.get(f"/console/members/{member_id}/visits")
    assert first.status_code == 200 and first.text.count("<tr class=") == members_pages.VISITS_PAGE
    older = re.search(r'href="(/console/members/[^"]+/visits\?before=[^"]+)"', first.text).group(1)
    second = desk.get(older.replace("&amp;", "&"))
    assert second.text.count("<tr class=") == 3
    assert "2026-04-01 03:00 CEST" in second.text  # the oldest: 01:00 UTC on 1 April
    assert "?before=" not in second.text  # the last page


# -- the list --------------------------------------------------------------------------------------


def test_the_list_pages_through_everyone_in_name_order_and_searches_without_script(console):
    count = members_pages.LIST_PAGE + 2

    def add(tx: db.Tx) -> None:
        for n in range(count):
            fields = {"first_name": f"P{n:03d}", "last_name": f"Zed{count - n:03d}"}
            admin.save_member(tx, console.a.id, None, fields, console.clock())

    console.database.transact(add)
    desk = console.sign_in("staff")
    first = desk.get("/console/members")
    assert first.status_code == 200
    assert 'data-live-search="member-results"' in first.text and 'id="member-results"' in first.text
    names = re.findall(r">(Zed\d{3}), P\d{3}<", first.text)
    assert len(names) == members_pages.LIST_PAGE and names == sorted(names)
    following = re.search(r'href="(/console/members\?after=[^"]+)"', first.text).group(1)
    second = desk.get(following.replace("&amp;", "&"))
    rest = re.findall(r">(Zed\d{3}), P\d{3}<", second.text)
    assert rest == [f"Zed{n:03d}" for n in range(members_pages.LIST_PAGE + 1, count + 1)]
    assert "?after=" not in second.text and "First page" in second.text

    found = desk.get("/console/members", params={"q": "zed001"})
    assert re.findall(r">(Zed\d{3}), P\d{3}<", found.text) == ["Zed001"]
    assert "1 found" in found.text
    nobody = desk.get("/console/members", params={"q": "nobody"})
    assert "Nobody found" in nobody.text
    # Odd cursors are the first page, never an error.
    for cursor in ("%00", "~", "x" * 400, "a~b c"):
        assert desk.get(f"/console/members?after={cursor}").status_code == 200


def test_the_list_and_a_members_visits_are_index_ranges(console):
    from test_console_search import add_filler

    add_filler(console.database, console.a.id, 3000)
    member_id = "mbr_filler00042"
    door = console.door(console.a)
    items = [
        make_item(n, item_id=checkin_id(door, n), member_id=f"mbr_filler{n % 100:05d}",
                  wall=f"2026-04-{1 + n // 24:02d}T{n % 24:02d}:00:00.000000Z")
        for n in range(1, 501)
    ]  # fmt: skip
    console.upload(door, items)
    if console.database.dialect == db.POSTGRES:
        console.database.transact(lambda tx: tx.run("ANALYZE"))

    def plans(tx: db.Tx) -> list[str]:
        lines = db.member_list_plan(tx, console.a.id, None, 51)
        lines += db.member_list_plan(tx, console.a.id, ("person1", "mbr_filler00001"), 51)
        lines += db.member_checkins_plan(tx, console.a.id, member_id, None, 11)
        return lines

    text = "\n".join(console.database.transact(plans, write=False))
    assert "members_by_last_name" in text and "checkins_by_member" in text, text
    if console.database.dialect == db.SQLITE:
        assert "SCAN members" not in text and "SCAN c " not in text, text
    else:
        assert "Seq Scan on members" not in text and "Seq Scan on checkins" not in text, text


# -- trainers --------------------------------------------------------------------------------------


def test_a_trainer_sees_only_assigned_members_read_only(console):
    mine = console.member(console.a, "Mia", "Mine", "MINE-0001")
    console.assign(console.a, mine)
    other = console.member(console.a, "Otto", "Other", "OTHR-0001")
    trainer = console.sign_in("trainer")
    listing = trainer.get("/console/members")
    assert listing.status_code == 200 and "Your members" in listing.text
    assert set(MEMBER_LINK.findall(listing.text)) == {mine}
    assert "MINE-0001" not in listing.text  # card codes are for the desk
    for query in ("Otto", "oth", "OTHR-0001", "mi"):
        assert other not in trainer.get("/console/members", params={"q": query}).text
    assert mine in trainer.get("/console/members", params={"q": "mi"}).text

    page = trainer.get(f"/console/members/{mine}")
    assert page.status_code == 200 and "Mia Mine" in page.text
    assert "MINE-0001" not in page.text and "/edit" not in page.text and "/pause" not in page.text
    assert "Issue a phone pass" not in page.text and "/memberships/new" not in page.text
    assert trainer.get(f"/console/members/{mine}/visits").status_code == 200
    for path in (f"/console/members/{other}", f"/console/members/{other}/visits"):
        answer = trainer.get(path)
        assert answer.status_code == 404 and "Otto" not in answer.text

    before = console.snapshot()
    for path in ("/edit", "/pause", "/resume", "/card", "/card.svg", "/memberships/new"):
        assert trainer.get(f"/console/members/{mine}{path}").status_code == 403, path
    assert trainer.get("/console/members/new").status_code == 403
    for path in ("/edit", "/pause", "/passes", "/memberships"):
        answer = trainer.post(
            f"/console/members/{mine}{path}", {"first_name": "X", "last_name": "Y"}
        )
        assert answer.status_code == 403, path
    assert (
        trainer.post("/console/members", {"first_name": "X", "last_name": "Y"}).status_code == 403
    )
    assert console.snapshot() == before


# -- another organisation --------------------------------------------------------------------------

# A form every members POST would accept if the ids were the caller's: a refusal is then the id's.
EVERY_FIELD = {
    "first_name": "Mallory",
    "last_name": "Intruder",
    "type": "SUBSCRIPTION",
    "start_date": "2026-05-01",
    "last_day": "2026-05-01",
    "version": "1",
    "ttl_minutes": "15",
}


def _member_routes() -> list[tuple[str, str, frozenset[str]]]:
    """(method, path, roles) of every members route taking an id."""
    out = []
    for route in members_pages.router.routes:
        assert isinstance(route, APIRoute)
        if "{" not in route.path:
            continue
        roles = frozenset()
        for dependency in route.dependant.dependencies:
            roles |= roles_of(dependency.call) or frozenset()
        out.extend((method, route.path, roles) for method in sorted(route.methods - {"HEAD"}))
    return out


def test_staff_of_another_organisation_get_404_for_every_member_route(console):
    member_id = console.member(console.a, "Quentin", SECRET_MARK, "SECRET-01")
    membership = console.database.transact(
        lambda tx: admin.save_membership(
            tx,
            console.a.id,
            None,
            {"member_id": member_id, "type": "SUBSCRIPTION", "start_date": "2026-05-01"},
            console.clock(),
        )
    )
    ids = {
        "member_id": member_id,
        "membership_id": membership["id"],
        "pass_id": console.phone_pass(console.a, member_id),
    }
    desks: dict[str, Desk] = {
        role: console.sign_in(role, console.b) for role in ("owner", "staff", "trainer")
    }
    routes = _member_routes()
    assert len(routes) >= 20
    before = console.snapshot()
    for method, template, roles in routes:
        path = re.sub(r"{(\w+)}", lambda m: ids[m.group(1)], template)
        for role, desk in desks.items():
            answer = desk.get(path) if method == "GET" else desk.post(path, EVERY_FIELD)
            expected = 404 if role in roles else 403
            assert answer.status_code == expected, (method, template, role, answer.status_code)
            assert SECRET_MARK not in answer.text and "SECRET-01" not in answer.text
    assert console.snapshot() == before


# -- in a real browser -----------------------------------------------------------------------------

WAIT_MS = 10_000


def test_in_a_browser_the_search_follows_the_typing_and_the_card_prints(tmp_path, browser):
    """Debian's Chromium against the app served on 127.0.0.1: the script (under the console's
    CSP) fills in the results as one types and moves the address along; the card page's print
    button appears only with the script."""
    rig = ConsoleRig(f"sqlite:///{tmp_path / 'cloud.db'}")
    for first, last, code in (("Ann", "Smith", "ANN-0001"), ("Bob", "Jones", "BOB-0002")):
        rig.member(rig.a, first, last, code)
    sock = listen("127.0.0.1", 0)
    config = uvicorn.Config(rig.app, log_level="warning", access_log=False, lifespan="on")
    server = uvicorn_server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + WAIT_MS / 1000
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.005)
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    problems: list[str] = []
    page = browser.new_page()
    try:
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.goto(f"{base}/console/login?next=/console/members")
        page.fill("input[name=email]", rig.a.people["staff"].email)
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(f"{base}/console/members", timeout=WAIT_MS)
        assert page.locator("#member-results tbody tr").count() == 2
        page.locator("input[name=q]").press_sequentially("smi")
        page.wait_for_url(f"{base}/console/members?q=smi", timeout=WAIT_MS)
        page.wait_for_function(
            "() => document.querySelectorAll('#member-results tbody tr').length === 1",
            timeout=WAIT_MS,
        )
        assert page.locator("#member-results").inner_text().count("Smith, Ann") == 1
        page.click("text=Smith, Ann")
        page.click("text=Print the card")
        page.wait_for_selector("button[data-print]:not([hidden])", timeout=WAIT_MS)
        assert page.locator("img.member-card").evaluate("img => img.naturalWidth") > 0
    finally:
        page.close()
        server.should_exit = True
        thread.join(WAIT_MS / 1000)
        rig.close()
    assert problems == []
