"""The console's Today page and its live feed: today's check-ins with their words, annulled entries
marked, occupancy and refusals, scoped to the signed-in organisation (and to a trainer's members);
the live stream behind sign-in, delivering a check-in uploaded through the real device API to a
signed-in console once. Every test runs on SQLite and on PostgreSQL; the live feed's poller is
driven by hand (``poll_once``), nothing sleeps."""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterator

import pytest

from cloud.admin import create_gym
from cloud.console import words
from cloud.console.live import install_live_feed
from console_rig import (
    ConsoleRig,
    checkin_id,
    cloud_db_url_fixture,  # noqa: F401
    console_fixture,  # noqa: F401
    pg_server_fixture,  # noqa: F401
)
from kiosk.core.model import EventKind, Reason
from pg import Device, make_event, make_item

TODAY = "2026-05-01T{}.000000Z"  # the rig's clock: 2026-05-01 12:00 UTC, 14:00 in Berlin
YESTERDAY = "2026-04-30T11:00:00.000000Z"


def checkin(door: Device, seq: int, *, at: str = "11:00:00", **kw) -> dict:
    """A check-in item of ``door`` (unique id), happening today at ``at`` UTC by default."""
    kw.setdefault("wall", TODAY.format(at))
    return make_item(seq, item_id=checkin_id(door, seq), **kw)


def annulment(door: Device, seq: int, item: dict) -> dict:
    return make_event(seq, "annulled", item["id"], item_id=checkin_id(door, 10_000 + seq))


def rows(page: str) -> list[str]:
    """The check-in rows of the Today page, as text (tags stripped, spaces collapsed)."""
    body = page.split('class="list checkins"', 1)[1].split("</table>", 1)[0]
    found = re.findall(r'<tr data-id="[^"]*"[^>]*>(.*?)</tr>', body, re.S)
    return [" ".join(html.unescape(re.sub(r"<[^>]+>", " ", r)).split()) for r in found]


# -- the words -------------------------------------------------------------------------------------


def test_every_reason_and_passage_the_doors_send_has_words():
    assert set(words.REASON_WORDS) == {r.value for r in Reason}
    assert set(words.EVENT_WORDS) == {k.value for k in EventKind}
    assert words.reason_words("brand_new") == "Other reason (brand_new)"
    assert words.member_name(None, None, None) == "—"
    assert words.member_name("m1", "Ann", "Smith") == "Ann Smith"


# -- the page --------------------------------------------------------------------------------------


def test_today_lists_todays_checkins_newest_first_in_words(console: ConsoleRig):
    a = console.a
    ann = console.member(a, "Ann", "Archer")
    bob = console.member(a, "Bob", "Baker")
    door = console.door(a, "Front turnstile")
    admitted = checkin(door, 1, at="09:00:00", member_id=ann)
    paused = checkin(
        door, 2, at="09:30:00", decision="denied", reason="member_paused", member_id=bob
    )
    unknown = checkin(
        door, 3, at="10:00:00", decision="denied", reason="unknown_code", member_id=None
    )
    gone = checkin(door, 4, at="10:30:00", member_id=bob)
    old = checkin(door, 5, member_id=ann, wall=YESTERDAY)
    by_phone = checkin(door, 6, at="11:30:00", member_id=ann, pass_id="ABCDEFG2")  # noqa: S106 - a pass id
    console.upload(door, [admitted, paused, unknown, gone, old, by_phone])
    console.upload(door, [annulment(door, 7, gone)])
    # Org B's check-in, at the same time, with a name only B has.
    other = console.member(console.b, "Bertha", "Brawnsworth")
    b_door = console.door(console.b, "Brawn door")
    console.upload(b_door, [checkin(b_door, 1, at="10:45:00", member_id=other)])

    page = console.sign_in("staff").get("/console/")
    assert page.status_code == 200, page.text
    assert rows(page.text) == [
        f"13:30:00 Ann Archer phone pass Front turnstile Admitted {words.reason_words('subscription')}",
        f"12:30:00 Bob Baker Front turnstile Admitted annulled "
        f"{words.reason_words('subscription')} · {words.ANNULLED_WORDS}",
        f"12:00:00 — Front turnstile Refused {words.reason_words('unknown_code')}",
        f"11:30:00 Bob Baker Front turnstile Refused {words.reason_words('member_paused')}",
        f"11:00:00 Ann Archer Front turnstile Admitted {words.reason_words('subscription')}",
    ]  # Berlin time (UTC+2); yesterday's check-in is not today's
    assert 'class="granted annulled"' in page.text
    assert f'href="/console/members/{ann}"' in page.text
    assert "Bertha" not in page.text and "Brawn" not in page.text
    totals = dict(re.findall(r'data-total="(\w+)">(\d+)<', page.text))
    assert totals == {"admitted": "2", "refused": "2", "annulled": "1"}
    refusals = re.findall(r'<tr data-reason="(\w+)"><td>[^<]*</td><td data-count>(\d+)<', page.text)
    assert sorted(refusals) == [("member_paused", "1"), ("unknown_code", "1")]

    # Org B sees its own and nothing of A's.
    theirs = console.sign_in("owner", console.b).get("/console/")
    assert [r.split(" Brawn door")[0] for r in rows(theirs.text)] == ["12:45:00 Bertha Brawnsworth"]
    assert "Archer" not in theirs.text and "Front turnstile" not in theirs.text


def test_a_trainer_sees_only_their_members_checkins(console: ConsoleRig):
    a = console.a
    ann = console.member(a, "Ann", "Archer")
    bob = console.member(a, "Bob", "Baker")
    console.assign(a, ann)
    door = console.door(a)
    console.upload(
        door,
        [
            checkin(door, 1, member_id=ann),
            checkin(door, 2, member_id=bob),
            checkin(door, 3, decision="denied", reason="pack_empty", member_id=bob),
            checkin(door, 4, decision="denied", reason="unknown_code", member_id=None),
            checkin(door, 5, decision="denied", reason="member_expired", member_id=ann),
        ],
    )
    page = console.sign_in("trainer").get("/console/")
    assert page.status_code == 200
    assert [r.split(" front door")[0] for r in rows(page.text)] == [
        "13:00:00 Ann Archer",
        "13:00:00 Ann Archer",
    ]
    assert "Baker" not in page.text
    assert "Only the members assigned to you are shown." in page.text
    refusals = re.findall(r'<tr data-reason="(\w+)">', page.text)
    assert refusals == ["member_expired"]
    # The trainer's navigation has Today but not Doors.
    assert 'href="/console/"' in page.text and 'href="/console/doors"' not in page.text
    everyone = console.sign_in("owner").get("/console/")
    assert len(rows(everyone.text)) == 5


def test_one_gym_can_be_chosen_and_another_organisations_gym_is_not_found(console: ConsoleRig):
    a = console.a
    second = console.database.transact(
        lambda tx: create_gym(tx, a.id, "Annex", "Europe/London", console.clock())
    )
    main_door, annex_door = (
        console.door(a, "Main door"),
        console.door(a, "Annex door", second["id"]),
    )
    main = checkin(main_door, 1, member_id=None, reason="unknown_code", decision="denied")
    console.upload(main_door, [main])  # 11:00 UTC: 13:00 in Berlin
    console.upload(annex_door, [checkin(annex_door, 1, at="11:30:00", member_id=None)])
    desk = console.sign_in("staff")
    both = rows(desk.get("/console/").text)
    # Newest first by when it happened; each shown in its gym's time (the annex's is London).
    assert [r.split(" — ")[0] for r in both] == ["12:30:00", "13:00:00"]
    assert "Annex door Annex" in both[0] and "Main door Main" in both[1]
    annex = desk.get(f"/console/?gym={second['id']}")
    assert rows(annex.text) == [
        f"12:30:00 — Annex door Admitted {words.reason_words('subscription')}"
    ]
    assert desk.get(f"/console/?gym={console.b.gym_id}").status_code == 404
    assert desk.get("/console/live?gym=" + console.b.gym_id).status_code == 404


def test_occupancy_now_per_gym_and_per_door(console: ConsoleRig):
    a = console.a
    entry, exit_side = console.door(a, "Entry gate"), console.door(a, "Exit gate")
    occupancy = {"now": 9, "entries_today": 12, "exits_today": 3, "max_today": 10, "capacity": 40}
    console.heartbeat(entry, occupancy=occupancy, boot_id="boot-hb")
    console.heartbeat(
        exit_side,
        occupancy={**occupancy, "now": 0, "entries_today": 0, "exits_today": 2, "capacity": None},
        boot_id="boot-hb",
    )
    page = console.sign_in("staff").get("/console/").text
    section = page.split("In the gym now", 1)[1].split("</section>", 1)[0]
    assert "<strong>7</strong> of 40" in section  # 12 in - 3 - 2 out
    text = " ".join(re.sub(r"<[^>]+>", " ", section).split())
    assert "Entry gate 9 of 40 12 / 3 14:00" in text
    assert "Exit gate 0 0 / 2 14:00" in text
    assert "Entry gate" not in console.sign_in("staff", console.b).get("/console/").text


# -- the live feed ---------------------------------------------------------------------------------


class Stream:
    """An open ``/console/live`` stream: its events read one at a time."""

    def __init__(self, lines: Iterator[str]) -> None:
        self.lines = lines

    def next(self) -> tuple[str, str, str]:
        """The next event or comment: (event name or ":" for a comment, id, data)."""
        name, ident, data = "", "", ""
        for line in self.lines:
            if line.startswith(":"):
                return ":", "", line
            if line == "":
                if name or data:
                    return name or "message", ident, data
                continue
            field, _, value = line.partition(": ")
            if field == "event":
                name = value
            elif field == "id":
                ident = value
            elif field == "data":
                data = value
        raise AssertionError("the stream ended")

    def until(self, wanted: str) -> tuple[str, str, str]:
        while True:
            event = self.next()
            if event[0] == wanted:
                return event


@pytest.fixture(name="feed")
def feed_fixture(console: ConsoleRig):
    """The app's live feed without its background poller (the test polls), with a short
    keep-alive so "nothing more came" is a keep-alive read, not a wait."""
    return install_live_feed(console.app, autostart=False, heartbeat_s=0.05)


def test_the_live_feed_is_behind_sign_in(console: ConsoleRig, feed):
    answer = console.browser().get("/console/live", follow_redirects=False)
    assert answer.status_code == 303
    assert answer.headers["location"] == "/console/login?next=%2Fconsole%2Flive"
    assert feed.subscriber_count() == 0


def test_an_uploaded_checkin_reaches_a_signed_in_console_once(console: ConsoleRig, feed):
    a = console.a
    ann = console.member(a, "Ann", "Archer")
    door = console.door(a, "Front turnstile")
    b_door = console.door(console.b, "Brawn door")
    desk, theirs = (
        console.sign_in("staff", live=True),
        console.sign_in("owner", console.b, live=True),
    )
    with (
        desk.client.stream("GET", "/console/live") as answer,
        theirs.client.stream("GET", "/console/live") as b_answer,
    ):
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/event-stream")
        assert answer.headers["cache-control"] == "no-store"
        stream, b_stream = Stream(answer.iter_lines()), Stream(b_answer.iter_lines())
        stream.until("ready")
        b_stream.until("ready")

        item = checkin(door, 1, member_id=ann, reason="subscription")
        console.upload(door, [item])
        b_item = checkin(b_door, 1, member_id=None)
        console.upload(b_door, [b_item])
        assert sorted(e.data["id"] for e in feed.poll_once()) == sorted([item["id"], b_item["id"]])
        _name, ident, data = stream.until("checkin")
        event = json.loads(data)
        assert (event["id"], event["first_name"], event["device_name"]) == (
            item["id"],
            "Ann",
            "Front turnstile",
        )
        assert (event["decision"], event["reason"], event["annulled"]) == (
            "granted",
            "subscription",
            False,
        )
        assert item["id"] in ident
        assert stream.next()[0] == ":", "B's check-in is not sent to A's console"
        assert json.loads(b_stream.until("checkin")[2])["id"] == b_item["id"]
        assert b_stream.next()[0] == ":", "A's check-in is not sent to B's console"

        # Sent again by the door (a lost acknowledgement): stored once, delivered once.
        assert console.upload(door, [item])[0]["status"] == "duplicate"
        assert feed.poll_once() == []
        assert stream.next()[0] == ":", "a keep-alive, no second event"

        # The annulment follows as a passage event naming the check-in.
        console.upload(door, [annulment(door, 2, item)])
        feed.poll_once()
        _name, _ident, data = stream.until("passage")
        assert json.loads(data)["kind"] == "annulled"
        assert json.loads(data)["checkin_id"] == item["id"]


def test_a_trainers_live_feed_carries_only_their_members(console: ConsoleRig, feed):
    a = console.a
    ann, bob = console.member(a, "Ann", "Archer"), console.member(a, "Bob", "Baker")
    console.assign(a, ann)
    door = console.door(a)
    trainer = console.sign_in("trainer", live=True)
    with trainer.client.stream("GET", "/console/live") as answer:
        stream = Stream(answer.iter_lines())
        stream.until("ready")
        console.upload(door, [checkin(door, 1, member_id=bob), checkin(door, 2, member_id=ann)])
        assert len(feed.poll_once()) == 2
        _name, _ident, data = stream.until("checkin")
        assert json.loads(data)["member_id"] == ann
        assert stream.next()[0] == ":", "Bob's check-in is not sent to Ann's trainer"


def test_a_console_that_reconnects_gets_what_it_missed(console: ConsoleRig, feed):
    a = console.a
    door = console.door(a)
    desk = console.sign_in("owner", live=True)
    first = checkin(door, 1, member_id=None)
    with desk.client.stream("GET", "/console/live") as answer:
        stream = Stream(answer.iter_lines())
        stream.until("ready")
        console.upload(door, [first])
        feed.poll_once()
        _name, last_id, _data = stream.until("checkin")
    missed = checkin(door, 2, member_id=None)
    console.clock.advance(1)
    console.upload(door, [missed])
    headers = {"Last-Event-ID": last_id}
    with desk.client.stream("GET", "/console/live", headers=headers) as answer:
        stream = Stream(answer.iter_lines())
        _name, _ident, data = stream.until("checkin")
        assert json.loads(data)["id"] == missed["id"]
        assert json.loads(stream.until("ready")[2]) == {"replayed": 1}


def test_the_page_tells_its_script_where_to_listen(console: ConsoleRig):
    page = console.sign_in("staff").get("/console/").text
    live = html.unescape(re.search(r'data-live="([^"]+)"', page).group(1))
    assert live.startswith("/console/live?after=2026-05-01T11%3A59%3A45")
    gyms = json.loads(html.unescape(re.search(r'data-gyms="([^"]+)"', page).group(1)))
    assert gyms == {
        console.a.gym_id: {"name": "Main", "zone": "Europe/Berlin", "date": "2026-05-01"}
    }
    said = json.loads(html.unescape(re.search(r'data-words="([^"]+)"', page).group(1)))
    assert said["reasons"] == words.REASON_WORDS
