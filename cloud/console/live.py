"""The live attendance feed: every check-in and passage event a door uploads, sent to each open
console of its organisation within about a second, as server-sent events.

**One poller per process.** The cloud may run as several worker processes on one PostgreSQL
database, and a door's upload lands on any of them, so nothing is pushed from the upload: each
process runs one task (``LiveFeed.run``, started with its first console) that asks the database
every ``interval_s`` what arrived, and fans it out in memory to that process's consoles. The
question is two index ranges (``cloud.db`` "console: live"): the keys (organisation,
``received_at``, id) of the check-ins and passage events of the organisations with a console open
here, received since ``overlap_s`` before the newest seen. ``received_at`` is the cloud's clock
when the upload arrived, stamped before its transaction commits, so a row can become visible
after a later-stamped one: the overlap reads such a late row still, and the ids already seen
(kept for the overlap's length) are skipped, so each row is sent once. Only the new keys' rows
are read whole (with the member's name and the door's). The cost per process is one small query
pair per interval while a console is open, nothing otherwise, whatever the number of consoles.

**Each console** is a ``Subscription``: its organisation, optionally one gym and a set of members
(a trainer's), and a bounded queue (``queue_events``). A console that does not read (a slow
network, a sleeping tablet) fills its queue and is dropped: its stream ends, and the browser's
``EventSource`` reconnects by itself with ``Last-Event-ID``, the cursor of the last event it got.

**Cursors** are ``<received_at>~<table>~<id>`` (``received_at`` fixed-width, table 0 for
check-ins, 1 for passage events): every event's SSE ``id``. A stream opened with a cursor (the
``Last-Event-ID`` header, or ``?after=`` with a cursor or a bare ``received_at`` time) is first
sent what was received after it (``replay_limit`` at most; after a cursor with more than that, a
``reset`` event says: reload the page), then the live events, none twice. A row that commits
after a reconnect's replay with a ``received_at`` older than the cursor is not sent on that
stream (the page shows it when loaded again); a page opening its stream at a bare time a little
before it was made may be sent rows it shows already: the page ignores an event whose
``data.id`` it shows.

**The stream** (``live_stream``, ``text/event-stream``): ``retry:`` first, then the replay, then
``event: ready`` (the subscription is live), then ``event: checkin`` and ``event: passage`` with
one JSON object each, and a ``:`` comment every ``heartbeat_s`` of silence, so proxies keep the
connection and a dead one is noticed. It ends when the client goes (Starlette cancels it), when
the console is dropped, and when the server shuts down (``LiveFeed.close``, called by
``cloud.serve``'s server before it waits for requests in flight: uvicorn never tells a streaming
response it is stopping).

Tests and benches configure the feed with ``install_live_feed`` (``autostart=False``: no task,
``poll_once()`` by hand) and never sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from cloud import db
from sync.protocol import utc_from_text, utc_text

log = logging.getLogger("cloud.console.live")

POLL_INTERVAL_S = 0.25
OVERLAP_S = 15.0  # longer than an upload waits for SQLite's write lock (10 s) before answering
HEARTBEAT_S = 15.0
QUEUE_EVENTS = 512
REPLAY_LIMIT = 500
MAX_SUBSCRIBERS = 2000  # per process: each holds a connection and a small queue
RETRY_MS = 2000  # how soon a browser reconnects after the stream ended
MAX_BACKOFF_S = 5.0  # between polls while the database fails

TABLES = db.LIVE_TABLES  # ("checkins", "door_events"): index = the cursor's table number
EVENT_NAMES = {"checkins": "checkin", "door_events": "passage"}

_CURSOR = re.compile(
    r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z)(?:~([01])~([A-Za-z0-9._:-]{1,128}))?"
)
SSE_HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}

Cursor = tuple[str, int, str]  # (received_at, table number, id)
Clock = Callable[[], datetime]


class FeedUnavailable(Exception):
    """No stream now: the process has ``MAX_SUBSCRIBERS`` open, or the feed was closed."""


@dataclass(frozen=True, slots=True)
class LiveEvent:
    """One row as consoles receive it. ``key`` orders events: (received_at, table number, id).
    ``text`` is its SSE form, made once for every console (ids are UUIDs and the data compact
    JSON, so no line break can end a field early)."""

    key: Cursor
    organization_id: str
    gym_id: str
    member_id: str | None
    name: str  # the SSE event name: checkin or passage
    data: dict[str, Any]
    text: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        payload = json.dumps(self.data, separators=(",", ":"))
        text = f"id: {self.cursor}\nevent: {self.name}\ndata: {payload}\n\n"
        object.__setattr__(self, "text", text)

    @property
    def cursor(self) -> str:
        return format_cursor(self.key)

    def sse(self) -> str:
        return self.text


def format_cursor(key: Cursor) -> str:
    return f"{key[0]}~{key[1]}~{key[2]}"


def parse_cursor(text: str | None) -> Cursor | None:
    """A cursor from ``Last-Event-ID`` or ``?after=``: ``<received_at>~<table>~<id>``, or a bare
    ``received_at`` time (everything received at or after it). None for anything else."""
    if not text or len(text) > 200:
        return None
    match = _CURSOR.fullmatch(text.strip())
    if match is None:
        return None
    at, table, row_id = match.groups()
    if table is None:
        return (at, -1, "")
    return (at, int(table), row_id)


def event_from_row(table: str, row: dict[str, Any]) -> LiveEvent:
    """The event of a ``db.live_rows`` row of ``table``."""
    common = {
        "id": row["id"],
        "gym_id": row["gym_id"],
        "device_id": row["device_id"],
        "device_name": row["device_name"],
        "door_id": row["door_id"],
        "member_id": row["member_id"],
        "first_name": row["first_name"],
        "last_name": row["last_name"],
        "occurred_at": row["occurred_at"],
        "received_at": row["received_at"],
    }
    if table == "checkins":
        data = {
            "kind": "checkin",
            **common,
            "decision": row["decision"],
            "reason": row["reason"],
            "pass_id": row["pass_id"],
            "classes_used": int(row["classes_used"]),
            "overdraft": row["overdraft"],
            "annulled": row["annulled"],
            "confirmed": row["confirmed"],
        }
    else:
        data = {"kind": row["kind"], **common, "checkin_id": row["checkin_id"]}
    return LiveEvent(
        key=(row["received_at"], TABLES.index(table), row["id"]),
        organization_id=row["organization_id"],
        gym_id=row["gym_id"],
        member_id=row["member_id"],
        name=EVENT_NAMES[table],
        data=data,
    )


class Subscription:
    """One open console: what it wants and its bounded queue. ``offer`` may be called from any
    thread; ``next_batch`` is awaited on the event loop given at creation."""

    def __init__(
        self,
        org_id: str,
        *,
        gym_id: str | None,
        member_ids: Collection[str] | None,
        limit: int,
        loop: asyncio.AbstractEventLoop | None,
    ) -> None:
        self.org_id = org_id
        self.gym_id = gym_id
        self.member_ids = None if member_ids is None else frozenset(member_ids)
        self._limit = limit
        self._loop = loop
        self._items: deque[LiveEvent] = deque()
        self._lock = threading.Lock()
        self._wake = asyncio.Event()
        self.dropped = False
        self.closed = False
        self.delivered = 0

    def wants(self, event: LiveEvent) -> bool:
        if event.organization_id != self.org_id:
            return False
        if self.gym_id is not None and event.gym_id != self.gym_id:
            return False
        return self.member_ids is None or event.member_id in self.member_ids

    def offer(self, event: LiveEvent) -> None:
        """Queue an event; a full queue drops the subscription (its stream ends)."""
        with self._lock:
            if self.dropped or self.closed:
                return
            if len(self._items) >= self._limit:
                self.dropped = True
                self._items.clear()
            else:
                self._items.append(event)
        self._notify()

    def close(self) -> None:
        """End the stream (the server is stopping)."""
        with self._lock:
            self.closed = True
        self._notify()

    def _notify(self) -> None:
        if self._loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
            self._loop.call_soon_threadsafe(self._wake.set)

    def take(self) -> list[LiveEvent] | None:
        """The queued events (emptied), or None once the subscription is dropped or closed."""
        with self._lock:
            if self.dropped or self.closed:
                return None
            items = list(self._items)
            self._items.clear()
            if not items:
                self._wake.clear()
            self.delivered += len(items)
            return items

    async def next_batch(self, timeout_s: float) -> list[LiveEvent] | None:
        """The next events, waiting up to ``timeout_s``: [] when none came, None once the
        subscription ended (dropped or closed)."""
        items = self.take()
        if items is None or items:
            return items
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout_s)
        return self.take()


class LiveFeed:
    """The process's feed: its subscriptions and the poller (see the module docstring).
    Thread-safe: ``poll_once``, ``prime`` and ``replay`` do database work (call them off the
    event loop); ``subscribe``, ``unsubscribe`` and ``close`` do none."""

    def __init__(
        self,
        database: db.Database,
        *,
        clock: Clock | None = None,
        interval_s: float = POLL_INTERVAL_S,
        overlap_s: float = OVERLAP_S,
        heartbeat_s: float = HEARTBEAT_S,
        queue_events: int = QUEUE_EVENTS,
        replay_limit: int = REPLAY_LIMIT,
        max_subscribers: int = MAX_SUBSCRIBERS,
        autostart: bool = True,
    ) -> None:
        self.database = database
        self.clock = clock or (lambda: datetime.now(UTC))
        self.interval_s = interval_s
        self.overlap = timedelta(seconds=overlap_s)
        self.heartbeat_s = heartbeat_s
        self.queue_events = queue_events
        self.replay_limit = replay_limit
        self.max_subscribers = max_subscribers
        self.autostart = autostart
        self.polls = 0
        # Lock order: _poll_lock, then _subs_lock (the latter is never held across I/O).
        self._subs_lock = threading.Lock()
        self._subs: dict[str, list[Subscription]] = {}
        self._poll_lock = threading.Lock()
        self._seen: dict[str, dict[tuple[int, str], str]] = {}  # org -> {(table, id): received}
        self._high = ""  # the newest received_at seen
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None

    # -- subscriptions -------------------------------------------------------------------------

    def subscribe(
        self,
        org_id: str,
        *,
        gym_id: str | None = None,
        member_ids: Collection[str] | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> Subscription:
        """Register a console; it receives what the poller finds once ``prime(org_id)`` ran.
        FeedUnavailable when the feed is closed or full."""
        sub = Subscription(
            org_id, gym_id=gym_id, member_ids=member_ids, limit=self.queue_events, loop=loop
        )
        with self._subs_lock:
            if self._closed:
                raise FeedUnavailable("the server is stopping")
            if self._count() >= self.max_subscribers:
                raise FeedUnavailable("too many live consoles on this server")
            self._subs.setdefault(org_id, []).append(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._subs_lock:
            subs = self._subs.get(sub.org_id, [])
            with contextlib.suppress(ValueError):
                subs.remove(sub)
            if not subs:
                self._subs.pop(sub.org_id, None)

    def available(self) -> bool:
        """Whether a subscription would be taken now (open, and below ``max_subscribers``)."""
        with self._subs_lock:
            return not self._closed and self._count() < self.max_subscribers

    def _count(self) -> int:
        return sum(len(s) for s in self._subs.values())

    def subscriber_count(self) -> int:
        with self._subs_lock:
            return self._count()

    def _subscribers(self, org_id: str) -> list[Subscription]:
        with self._subs_lock:
            return list(self._subs.get(org_id, ()))

    # -- the poller ----------------------------------------------------------------------------

    def _floor(self) -> str:
        """Where the next read starts: ``overlap`` before the newest received_at seen or now,
        whichever is later."""
        newest = utc_text(self.clock())
        if self._high > newest:
            newest = self._high
        return utc_text(utc_from_text(newest) - self.overlap)

    def prime(self, org_id: str) -> None:
        """Start polling an organisation: what it received in the overlap window counts as seen
        (it is history: the page shows it, a cursor replays it). Idempotent; call it after
        ``subscribe`` and before ``replay``, so nothing falls between the two."""
        with self._poll_lock:
            if org_id in self._seen or not self._subscribers(org_id):
                return
            floor = self._floor()
            seen: dict[tuple[int, str], str] = {}
            with self.database.read() as tx:
                for number, table in enumerate(TABLES):
                    for _org, at, row_id in db.live_keys(tx, table, [org_id], floor):
                        seen[(number, row_id)] = at
            self._seen[org_id] = seen
            self._high = max([self._high, *seen.values()])

    def poll_once(self) -> list[LiveEvent]:
        """One look at the database: the rows received since the last look, each sent once to
        every subscription that wants it; returns them in cursor order. Organisations without a
        subscription any more are forgotten. Raises DatabaseError (the poller logs it and tries
        again)."""
        with self._poll_lock:
            with self._subs_lock:
                active = {org for org, subs in self._subs.items() if subs}
            for org in list(self._seen):
                if org not in active:
                    del self._seen[org]
            self.polls += 1
            if not self._seen:
                return []
            floor = self._floor()
            fresh: list[LiveEvent] = []
            with self.database.read() as tx:
                for number, table in enumerate(TABLES):
                    new_ids = []
                    for org, at, row_id in db.live_keys(tx, table, list(self._seen), floor):
                        seen = self._seen[org]
                        if (number, row_id) not in seen:
                            seen[(number, row_id)] = at
                            new_ids.append(row_id)
                            self._high = max(self._high, at)
                    if new_ids:
                        rows = db.live_rows(tx, table, new_ids)
                        fresh.extend(event_from_row(table, row) for row in rows)
            floor = self._floor()
            for seen in self._seen.values():
                for key in [k for k, at in seen.items() if at < floor]:
                    del seen[key]
            fresh.sort(key=lambda e: e.key)
            for event in fresh:
                for sub in self._subscribers(event.organization_id):
                    if sub.wants(event):
                        sub.offer(event)
            return fresh

    def replay(self, sub: Subscription, cursor: Cursor) -> tuple[list[LiveEvent], bool]:
        """What ``sub`` wants that was received after ``cursor``, in cursor order, and whether
        that is all of it (False: more than ``replay_limit``)."""
        events: list[LiveEvent] = []
        with self.database.read() as tx:
            for table in TABLES:
                rows = db.live_after(
                    tx, table, sub.org_id, sub.gym_id, cursor, self.replay_limit + 1
                )
                events.extend(event_from_row(table, row) for row in rows)
        events.sort(key=lambda e: e.key)
        complete = len(events) <= self.replay_limit
        return [e for e in events[: self.replay_limit] if sub.wants(e)], complete

    async def run(self) -> None:
        """Poll every ``interval_s`` while a subscription is open and the feed is not closed;
        a failing database is logged and tried again after a growing pause."""
        failures = 0
        assert self._stop is not None
        while not self._closed and self.subscriber_count():
            try:
                await asyncio.to_thread(self.poll_once)
                failures = 0
            except db.DatabaseError as exc:
                failures += 1
                log.warning("live feed: cannot read what arrived: %s", exc)
            delay = self.interval_s if not failures else min(MAX_BACKOFF_S, 2.0**failures / 4)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)

    def ensure_running(self) -> None:
        """Start the poller on the running loop unless it runs (or ``autostart`` is off)."""
        if not self.autostart or self._closed:
            return
        if self._task is not None and not self._task.done():
            return
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._task = self._loop.create_task(self.run(), name="console-live-poller")

    def close(self) -> None:
        """End every stream and the poller; later subscriptions are refused. Any thread."""
        with self._subs_lock:
            self._closed = True
            subs = [sub for group in self._subs.values() for sub in group]
        for sub in subs:
            sub.close()
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stop.set)


# -- the app's feed and its endpoint ---------------------------------------------------------------


def install_live_feed(app: Any, **options: Any) -> LiveFeed:
    """The app's feed, made now with ``options`` (``LiveFeed``'s keywords) on the app's
    database and clock, and closed by the server before it shuts down (``app.state.
    before_shutdown``). Replaces a feed made before (closing it)."""
    cloud = app.state.cloud
    previous = getattr(app.state, "console_live", None)
    if previous is not None:
        previous.close()
    options.setdefault("clock", cloud.now)
    feed = LiveFeed(cloud.database, **options)
    app.state.console_live = feed
    hooks = getattr(app.state, "before_shutdown", None)
    if hooks is None:
        hooks = app.state.before_shutdown = []
    hooks.append(feed.close)
    return feed


def live_feed(app: Any) -> LiveFeed:
    """The app's feed, made with the defaults on first use."""
    feed = getattr(app.state, "console_live", None)
    return feed if feed is not None else install_live_feed(app)


async def _events(
    feed: LiveFeed,
    org_id: str,
    gym_id: str | None,
    member_ids: Collection[str] | None,
    cursor: Cursor | None,
) -> AsyncIterator[str]:
    # Subscribed here, not before the response: a generator that never starts (the client went
    # before the first byte) never runs its ``finally``, and would leave its subscription behind.
    try:
        sub = feed.subscribe(
            org_id, gym_id=gym_id, member_ids=member_ids, loop=asyncio.get_running_loop()
        )
    except FeedUnavailable:
        yield f"retry: {RETRY_MS * 5}\n\n"  # full since the check, or stopping: come back later
        return
    try:
        yield f"retry: {RETRY_MS}\n\n"
        feed.ensure_running()
        sent: set[Cursor] = set()
        try:
            await asyncio.to_thread(feed.prime, org_id)
            events, complete = (
                ([], True) if cursor is None else await asyncio.to_thread(feed.replay, sub, cursor)
            )
        except db.DatabaseError as exc:
            # Ended at once: the browser comes back after ``retry`` and finds the database again.
            log.warning("live feed: cannot open a stream: %s", exc)
            return
        if not complete and cursor is not None and cursor[1] >= 0:
            # A console that missed too much reloads; a page that just loaded (a bare ``after``
            # time) shows the newest rows already and would only reload again.
            yield 'event: reset\ndata: {"reason":"too_many"}\n\n'
        if events:
            sent = {e.key for e in events}
            yield "".join(e.sse() for e in events)
        yield f'event: ready\ndata: {{"replayed":{len(sent)}}}\n\n'
        while True:
            batch = await sub.next_batch(feed.heartbeat_s)
            if batch is None:
                return
            if not batch:
                yield ": keep-alive\n\n"
                continue
            text = "".join(e.sse() for e in batch if e.key not in sent)
            if text:
                yield text
    finally:
        feed.unsubscribe(sub)


async def live_stream(
    request: Request,
    org_id: str,
    *,
    gym_id: str | None = None,
    member_ids: Collection[str] | None = None,
) -> Response:
    """The organisation's live feed as ``text/event-stream`` (one gym's with ``gym_id``; only
    these members' with ``member_ids``, for a trainer). The caller has checked who asks: mount
    it behind sign-in and pass the signed-in staff's organisation. Resumes after the cursor in
    ``Last-Event-ID`` or ``?after=``. 503 with Retry-After when the process holds
    ``max_subscribers`` streams or is stopping."""
    feed = live_feed(request.app)
    if not feed.available():
        body = {"error": "unavailable", "detail": "no room for another live console: try later"}
        return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})
    cursor = parse_cursor(request.headers.get("last-event-id") or request.query_params.get("after"))
    return StreamingResponse(
        _events(feed, org_id, gym_id, member_ids, cursor),
        media_type="text/event-stream",
        headers=SSE_HEADERS,
    )
