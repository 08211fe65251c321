"""The console's live attendance feed: the poller delivers each uploaded check-in and passage event
once to every subscribed console of its organisation (and only there), late commits inside the
overlap included, a slow console is dropped, a reconnect resumes after its cursor; and the SSE
endpoint end to end on a real server on 127.0.0.1, read with httpx streaming: the events, the
heartbeat, a reconnect with Last-Event-ID, the client going away and the server shutting down.

The poller is driven by hand (``poll_once``) and the clocks are injected: no test sleeps. Every
test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest
import uvicorn
from fastapi import Request

from cloud import admin, db
from cloud.app import create_app
from cloud.console import live
from cloud.console.live import LiveFeed, install_live_feed, live_stream, parse_cursor
from cloud.serve import listen, uvicorn_server
from pg import (
    FakeClock,
    Harness,
    cloud_db_url_fixture,  # noqa: F401
    cloud_fixture,  # noqa: F401
    make_event,
    make_item,
    pg_server_fixture,  # noqa: F401
)
from sync.protocol import PROTOCOL_VERSION, utc_text

WAIT_S = 10.0  # the most any wait for progress may take before the test fails


def _member(cloud: Harness, member_id: str, first: str, last: str, token: str | None = None):
    cloud.ok(
        "POST",
        "/members",
        json={"id": member_id, "first_name": first, "last_name": last},
        token=token,
    )


def _feed(cloud: Harness, **kw) -> LiveFeed:
    return install_live_feed(cloud.app, autostart=False, **kw)


def _ids(events) -> list[str]:
    return [e.data["id"] for e in events]


@pytest.fixture(name="gym")
def gym_fixture(cloud):
    """The harness's organisation with two members and a door."""
    _member(cloud, "m1", "Ann", "Smith")
    _member(cloud, "m2", "Bob", "Jones")
    return cloud.enrol("front door")


# -- the poller --------------------------------------------------------------------------------------


def test_each_check_in_reaches_every_console_of_its_organisation_once(cloud, gym):
    feed = _feed(cloud)
    consoles = [feed.subscribe(cloud.org_id) for _ in range(3)]
    rival_org, _rival_gym, _token = cloud.new_org("Rival", "Main")
    rival = feed.subscribe(rival_org)
    for org in (cloud.org_id, rival_org):
        feed.prime(org)
    cloud.upload_ok(gym, [make_item(1, member_id="m1"), make_item(2, member_id="m2")])
    found = feed.poll_once()
    assert [e.data["last_name"] for e in found] == ["Smith", "Jones"]
    for console in consoles:
        events = console.take()
        assert _ids(events) == _ids(found)
        first = events[0]
        assert first.name == "checkin" and first.organization_id == cloud.org_id
        assert first.data["kind"] == "checkin" and first.data["first_name"] == "Ann"
        assert first.data["device_name"] == "front door" and first.data["decision"] == "granted"
        assert first.cursor == f"{first.data['received_at']}~0~{first.data['id']}"
    assert rival.take() == []
    # Polled again, nothing is new: nothing is sent twice.
    cloud.clock.advance(1)
    assert feed.poll_once() == []
    cloud.upload_ok(gym, [make_item(3, member_id="m1"), make_item(1, member_id="m1")])  # 1 again
    assert [e.data["id"] for e in feed.poll_once()] == [make_item(3)["id"]]
    assert all(len(c.take()) == 1 for c in consoles)


def test_what_arrived_before_the_console_opened_is_history(cloud, gym):
    cloud.upload_ok(gym, [make_item(1)])
    feed = _feed(cloud)
    console = feed.subscribe(cloud.org_id)
    feed.prime(cloud.org_id)
    assert feed.poll_once() == [] and console.take() == []
    cloud.upload_ok(gym, [make_item(2)])
    assert _ids(feed.poll_once()) == [make_item(2)["id"]]


def test_a_late_commit_inside_the_overlap_is_sent_once_and_one_older_is_not(cloud, gym):
    feed = _feed(cloud, overlap_s=15.0)
    console = feed.subscribe(cloud.org_id)
    feed.prime(cloud.org_id)
    cloud.clock.advance(10)
    cloud.upload_ok(gym, [make_item(1)])
    feed.poll_once()
    # An upload that arrived 5 s before the one just seen commits only now (its received_at is
    # older than the newest seen): the overlap still reads it.
    cloud.clock.advance(-5)
    cloud.upload_ok(gym, [make_item(2)])
    cloud.clock.advance(5)
    assert _ids(feed.poll_once()) == [make_item(2)["id"]]
    # One stamped 20 s before the newest seen is outside the overlap: lost to the live feed (the
    # page shows it when loaded), never sent twice either.
    cloud.clock.advance(-20)
    cloud.upload_ok(gym, [make_item(3)])
    cloud.clock.advance(20)
    assert feed.poll_once() == []
    assert _ids(console.take()) == [make_item(1)["id"], make_item(2)["id"]]


def test_seen_ids_are_kept_only_for_the_overlap(cloud, gym):
    feed = _feed(cloud, overlap_s=15.0)
    feed.subscribe(cloud.org_id)
    feed.prime(cloud.org_id)
    cloud.upload_ok(gym, [make_item(n) for n in range(1, 6)])
    assert len(feed.poll_once()) == 5
    cloud.clock.advance(16)
    cloud.upload_ok(gym, [make_item(6)])
    assert len(feed.poll_once()) == 1
    assert list(feed._seen[cloud.org_id]) == [(0, make_item(6)["id"])]


def test_a_console_may_watch_one_gym_or_only_some_members(cloud, gym):
    second_gym = cloud.ok("POST", "/gyms", json={"name": "North", "timezone": "Europe/Berlin"})
    north = cloud.enrol("north door", gym_id=second_gym["id"])
    feed = _feed(cloud)
    everything = feed.subscribe(cloud.org_id)
    main_only = feed.subscribe(cloud.org_id, gym_id=cloud.gym_id)
    trainer = feed.subscribe(cloud.org_id, member_ids={"m2"})
    feed.prime(cloud.org_id)
    cloud.upload_ok(gym, [make_item(1, member_id="m1"), make_item(2, member_id="m2")])
    north_item = make_item(
        1, member_id="m2", door="north", item_id="01900000-0000-7000-8000-00000000a001"
    )
    cloud.upload_ok(north, [north_item])
    feed.poll_once()
    assert len(everything.take()) == 3
    assert [e.data["device_name"] for e in main_only.take()] == ["front door", "front door"]
    assert sorted((e.data["member_id"], e.gym_id) for e in trainer.take()) == sorted(
        [("m2", cloud.gym_id), ("m2", second_gym["id"])]
    )


def test_passage_events_follow_their_check_ins_with_the_member(cloud, gym):
    feed = _feed(cloud)
    console = feed.subscribe(cloud.org_id)
    feed.prime(cloud.org_id)
    checkin = make_item(1, member_id="m1")
    cloud.upload_ok(gym, [checkin, make_event(2, "annulled", checkin["id"])])
    cloud.upload_ok(gym, [make_event(3, "exit", None)])
    events = feed.poll_once()
    assert [(e.name, e.data["kind"]) for e in events] == [
        ("checkin", "checkin"),
        ("passage", "annulled"),
        ("passage", "exit"),
    ]
    annulled = events[1]
    assert annulled.data["checkin_id"] == checkin["id"]
    assert (annulled.member_id, annulled.data["last_name"]) == ("m1", "Smith")
    assert annulled.key[1] == 1 and annulled.cursor.endswith(f"~1~{annulled.data['id']}")
    assert len(console.take()) == 3


def test_a_console_that_does_not_read_is_dropped(cloud, gym):
    feed = _feed(cloud, queue_events=3)
    slow = feed.subscribe(cloud.org_id)
    fast = feed.subscribe(cloud.org_id)
    feed.prime(cloud.org_id)
    cloud.upload_ok(gym, [make_item(1), make_item(2)])
    feed.poll_once()
    assert len(fast.take()) == 2
    cloud.upload_ok(gym, [make_item(3), make_item(4)])
    feed.poll_once()
    assert slow.dropped and slow.take() is None  # 4 > 3 waiting: dropped, its stream ends
    assert len(fast.take()) == 2 and not fast.dropped


def test_the_last_console_of_an_organisation_leaving_stops_its_polling(cloud, gym):
    feed = _feed(cloud)
    console = feed.subscribe(cloud.org_id)
    feed.prime(cloud.org_id)
    feed.unsubscribe(console)
    feed.poll_once()
    assert feed._seen == {} and feed.subscriber_count() == 0
    cloud.upload_ok(gym, [make_item(1)])
    assert feed.poll_once() == []


def test_a_replay_sends_what_came_after_the_cursor_and_says_when_there_is_too_much(cloud, gym):
    feed = _feed(cloud, replay_limit=3)
    console = feed.subscribe(cloud.org_id)
    first = make_item(1)
    cloud.upload_ok(gym, [first])
    cursor = parse_cursor(f"{utc_text(cloud.clock())}~0~{first['id']}")  # what a console got
    cloud.clock.advance(1)
    cloud.upload_ok(gym, [make_item(2), make_event(3, "entry", first["id"])])
    events, complete = feed.replay(console, cursor)
    assert complete and _ids(events) == [make_item(2)["id"], make_event(3, "entry", None)["id"]]
    cloud.upload_ok(gym, [make_item(n) for n in range(4, 8)])
    events, complete = feed.replay(console, cursor)
    assert not complete and len(events) == 3
    # A bare time replays everything received at or after it.
    events, complete = feed.replay(console, parse_cursor(utc_text(cloud.clock())))
    assert len(events) == 3 and not complete


@pytest.mark.parametrize(
    "text",
    [None, "", "x", "2026-05-01T12:00:00Z", "2026-05-01T12:00:00.000000Z~2~a", "a" * 500,
     "2026-05-01T12:00:00.000000Z~0~a b", "2026-05-01T12:00:00.000000Z~0~\n"],
)  # fmt: skip
def test_a_cursor_that_is_not_one_is_ignored(text):
    assert parse_cursor(text) is None


def test_cursors_round_trip():
    assert parse_cursor("2026-05-01T12:00:00.000000Z~1~ev-1") == (
        "2026-05-01T12:00:00.000000Z",
        1,
        "ev-1",
    )
    assert parse_cursor("2026-05-01T12:00:00.000000Z") == ("2026-05-01T12:00:00.000000Z", -1, "")


def test_a_full_or_closed_feed_takes_no_console(cloud):
    feed = _feed(cloud, max_subscribers=1)
    feed.subscribe(cloud.org_id)
    assert not feed.available()
    with pytest.raises(live.FeedUnavailable):
        feed.subscribe(cloud.org_id)
    feed.close()
    with pytest.raises(live.FeedUnavailable):
        feed.subscribe(cloud.org_id)


# -- the endpoint, end to end over HTTP --------------------------------------------------------------


@dataclass
class Served:
    url: str
    feed: LiveFeed
    server: uvicorn.Server
    thread: threading.Thread
    org_id: str
    gym_id: str
    admin_token: str
    clock: FakeClock
    device_headers: dict[str, str] = field(default_factory=dict)

    def upload(self, items: list[dict]) -> None:
        with httpx.Client(base_url=self.url, timeout=WAIT_S) as http:
            answer = http.post("/v1/checkins", json={"items": items}, headers=self.device_headers)
        assert answer.status_code == 200, answer.text

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(WAIT_S)


@pytest.fixture(name="served")
def served_fixture(cloud_db_url) -> Iterator[Served]:
    """The real app on 127.0.0.1 (uvicorn in a thread, the server ``cloud.serve`` runs) with the
    feed mounted at /live/{org_id} (the console mounts it behind sign-in), a member and a door."""
    clock = FakeClock()
    app = create_app(cloud_db_url, clock=clock)
    feed = install_live_feed(app, autostart=False, heartbeat_s=0.05)

    async def endpoint(request: Request, org_id: str, gym_id: str | None = None):
        return await live_stream(request, org_id, gym_id=gym_id)

    app.add_api_route("/live/{org_id}", endpoint)
    made = admin.create_organization(
        app.state.cloud.database, "Acme", "Main", "Europe/Berlin", clock()
    )
    org_id, gym_id, token = made.organization_id, made.gym_id, made.admin_token
    sock = listen("127.0.0.1", 0)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    server = uvicorn_server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + WAIT_S
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.005)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    served = Served(url, feed, server, thread, org_id, gym_id, token, clock)
    auth = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=url, timeout=WAIT_S) as http:
        made = http.post(
            "/admin/v1/members", json={"id": "m1", "first_name": "Ann", "last_name": "Smith"},
            headers=auth,
        )  # fmt: skip
        assert made.status_code == 201, made.text
        code = http.post(f"/admin/v1/gyms/{gym_id}/enrolment-codes", json={}, headers=auth)
        protocol = {"FitFlow-Protocol": str(PROTOCOL_VERSION)}
        enrolled = http.post(
            "/v1/enrol",
            json={"code": code.json()["code"], "name": "front door", "software_version": "0.1.0"},
            headers=protocol,
        ).json()
    served.device_headers = {"Authorization": f"Bearer {enrolled['token']}", **protocol}
    try:
        yield served
    finally:
        served.stop()
        sock.close()
        app.state.cloud.database.close()


class Stream:
    """One console's event stream, read event by event (blocking reads, bounded by WAIT_S)."""

    def __init__(self, served: Served, headers: dict[str, str] | None = None, path: str = ""):
        self._client = httpx.Client(base_url=served.url, timeout=WAIT_S)
        self._context = self._client.stream(
            "GET", path or f"/live/{served.org_id}", headers=headers or {}
        )
        self.response = self._context.__enter__()
        self._lines = self.response.iter_lines()

    def next(self, *, comments: bool = False) -> dict | None:
        """The next event as {event, id, data}, or with ``comments`` a comment as {comment};
        None at the end."""
        event: dict = {}
        for line in self._lines:
            if line == "":
                if event:
                    return event
                continue
            if line.startswith(":"):
                if comments and not event:
                    return {"comment": line[1:].strip()}
                continue
            name, _, value = line.partition(": ")
            event[name] = json.loads(value) if name == "data" else value
        return event or None

    def until(self, name: str) -> list[dict]:
        """The events before the next one named ``name`` (which is consumed)."""
        seen = []
        while (event := self.next()) is not None:
            if event.get("event") == name:
                return seen
            if "event" in event:  # not the stream's opening ``retry:``
                seen.append(event)
        raise AssertionError(f"the stream ended before {name}: {seen}")

    def close(self) -> None:
        self._context.__exit__(None, None, None)
        self._client.close()


def _wait(condition, what: str) -> None:
    """Wait for progress made by the server's thread (bounded, never a fixed sleep)."""
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.002)


def test_a_console_receives_each_upload_once_as_server_sent_events(served):
    stream = Stream(served)
    try:
        assert stream.response.headers["content-type"].startswith("text/event-stream")
        assert stream.response.headers["cache-control"] == "no-store"
        assert stream.next() == {"retry": str(live.RETRY_MS)}
        assert stream.until("ready") == []
        served.upload([make_item(1, member_id="m1"), make_item(2, member_id=None)])
        served.upload([make_item(1, member_id="m1")])  # sent again: stored once
        served.feed.poll_once()
        first, second = stream.next(), stream.next()
        assert first["event"] == "checkin" and first["data"]["first_name"] == "Ann"
        assert first["id"] == f"{first['data']['received_at']}~0~{make_item(1)['id']}"
        assert second["data"]["id"] == make_item(2)["id"] and second["data"]["member_id"] is None
        assert served.feed.poll_once() == []
        # Nothing more but the heartbeat, a comment every heartbeat_s (0.05 s here).
        assert stream.next(comments=True) == {"comment": "keep-alive"}
        served.upload([make_item(3)])
        served.feed.poll_once()
        assert stream.next()["data"]["id"] == make_item(3)["id"]
    finally:
        stream.close()


def test_a_console_reconnecting_with_last_event_id_gets_only_what_it_missed(served):
    stream = Stream(served)
    stream.until("ready")
    served.upload([make_item(1)])
    served.feed.poll_once()
    last = stream.next()["id"]
    stream.close()
    _wait(lambda: served.feed.subscriber_count() == 0, "the server noticing the client left")
    served.clock.advance(1)
    served.upload([make_item(2), make_item(3)])
    again = Stream(served, headers={"Last-Event-ID": last})
    try:
        replayed = again.until("ready")
        assert [e["data"]["id"] for e in replayed] == [make_item(2)["id"], make_item(3)["id"]]
        served.feed.poll_once()  # the poller sees 2 and 3 now: not sent again
        served.upload([make_item(4)])
        served.feed.poll_once()
        assert again.next()["data"]["id"] == make_item(4)["id"]
    finally:
        again.close()


def test_too_much_to_replay_resets_a_reconnecting_console_not_a_page_that_just_loaded(served):
    served.feed.replay_limit = 2
    start = utc_text(served.clock())
    served.upload([make_item(1)])
    cursor = f"{start}~0~{make_item(1)['id']}"
    served.clock.advance(1)
    served.upload([make_item(n) for n in range(2, 6)])
    again = Stream(served, headers={"Last-Event-ID": cursor})
    try:
        replayed = again.until("ready")
        assert [e["event"] for e in replayed] == ["reset", "checkin", "checkin"]
    finally:
        again.close()
    fresh = Stream(served, path=f"/live/{served.org_id}?after={start}")
    try:
        assert [e["event"] for e in fresh.until("ready")] == ["checkin", "checkin"]
    finally:
        fresh.close()


def test_the_process_poller_runs_while_a_console_is_open(served):
    served.feed.autostart, served.feed.interval_s = True, 0.01
    stream = Stream(served)
    try:
        stream.until("ready")
        served.upload([make_item(1, member_id="m1")])
        assert stream.next()["data"]["last_name"] == "Smith"  # no poll_once by hand
    finally:
        stream.close()
    _wait(lambda: served.feed._task is not None and served.feed._task.done(), "the poller ending")
    assert served.feed.subscriber_count() == 0


def test_the_stream_ends_when_the_server_shuts_down(served):
    stream = Stream(served)
    stream.until("ready")
    assert served.feed.subscriber_count() == 1
    served.stop()  # uvicorn waits for requests in flight, without a limit here
    assert not served.thread.is_alive(), "the open stream held the shutdown"
    assert stream.next() is None  # the stream ended cleanly
    stream.close()


def test_a_full_server_answers_503(served):
    served.feed.max_subscribers = 1
    stream = Stream(served)
    try:
        stream.until("ready")
        with httpx.Client(base_url=served.url, timeout=WAIT_S) as http:
            answer = http.get(f"/live/{served.org_id}")
        assert answer.status_code == 503 and answer.headers["retry-after"] == "5"
    finally:
        stream.close()


def test_the_database_functions_refuse_other_tables(cloud):
    with cloud.database.read() as tx:
        for call in (
            lambda: db.live_keys(tx, "members", [cloud.org_id], "x"),
            lambda: db.live_rows(tx, "members", ["x"]),
            lambda: db.live_after(tx, "members", cloud.org_id, None, ("x", 0, "x"), 1),
        ):
            with pytest.raises(ValueError, match="not a live table"):
                call()
