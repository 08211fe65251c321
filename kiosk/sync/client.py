"""The device's HTTP client for the sync protocol (docs/sync-protocol.md; the version it speaks
is ``sync.protocol.PROTOCOL_VERSION``). The only module that imports httpx.

Every answer goes through ``sync.protocol`` before anyone sees it, and every failure becomes one
of the typed errors below, so the agent decides what to do from the type alone:

- stop and report: ``Unauthorized`` (401: token unknown or revoked, re-enrol) and
  ``UnsupportedProtocol`` (426, or an answer whose ``FitFlow-Protocol`` header names another
  version: the cloud speaks another protocol; the message says which side to update when the
  426 lists the versions the cloud speaks);
- handle: ``BatchTooLarge`` (413: halve the batch), ``CursorExpired`` (410: take a snapshot),
  ``EnrolmentRefused`` (403 to an enrolment);
- retry later: ``RetryableError`` (no connection, timeouts, 5xx, 429; ``retry_after`` in seconds
  when the cloud said), its subclass ``BadResponse`` (an answer without the protocol header, not
  JSON, truncated, too large or of the wrong shape), and ``RequestRefused`` (any other 4xx).

Answers that carry the cloud's time (enrolment, upload, heartbeat) also yield a clock anchor:
``(boot id, monotonic time when the answer arrived, server time)``, handed to ``on_anchor``.
Error messages are plain words for the owner page: they name the host, never the token.
"""

from __future__ import annotations

import email.utils
import functools
import logging
import ssl
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import httpx

from sync import protocol
from sync.protocol import (
    MAX_RESPONSE_BYTES,
    PROTOCOL_HEADER,
    PROTOCOL_VERSION,
    Anchor,
    ChangePage,
    Enrolment,
    EventItem,
    Heartbeat,
    HeartbeatReply,
    ProtocolError,
    SnapshotPage,
    UploadItem,
    UploadResult,
)

# The longest Retry-After honoured; a larger one (a broken proxy) is cut to this.
MAX_RETRY_AFTER_S = 3600.0

# httpx logs every request at INFO: two lines in the journal every 30 s say nothing the agent's
# own status does not. Its warnings still come through.
logging.getLogger("httpx").setLevel(logging.WARNING)


class CloudError(Exception):
    """A request to the cloud did not give a usable answer. ``status`` is the HTTP status (None
    when there was no answer at all). ``str(err)`` is plain words without secrets."""

    #: False for errors that a later retry cannot fix (the agent stops and reports).
    retryable = True

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class Unauthorized(CloudError):
    """401: the device token is unknown or revoked. Re-enrol the device."""

    retryable = False


class UnsupportedProtocol(CloudError):
    """426, or an answer naming another protocol version: the cloud does not speak this one."""

    retryable = False


class EnrolmentRefused(CloudError):
    """403 to an enrolment: the code is unknown, used or expired (one answer for all three)."""

    retryable = False


class BatchTooLarge(CloudError):
    """413: the upload was too large; send fewer items."""


class CursorExpired(CloudError):
    """410: the replica version asked about is no longer (or not yet) known; take a snapshot."""


class RequestRefused(CloudError):
    """Another 4xx: the cloud refused the request as sent (a bug on one side)."""


class RetryableError(CloudError):
    """Try again later: no connection, a timeout, 5xx or 429. ``retry_after`` is the wait the
    cloud asked for, in seconds, or None."""

    def __init__(
        self, message: str, *, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, status=status)
        self.retry_after = retry_after


class BadResponse(RetryableError):
    """An answer that is not what the protocol says: without the protocol header, not JSON,
    truncated, too large or of the wrong shape. Retried like a 5xx, reported as such."""


@dataclass(frozen=True, slots=True)
class NotModified:
    """304 to the idle poll: the replica is current. ``etag`` is the cloud's ETag, if any."""

    etag: str | None = None


@dataclass(frozen=True, slots=True)
class UploadAnswer:
    """The cloud's answer to an upload: one result per item, in the order sent, and its time."""

    results: tuple[UploadResult, ...]
    server_time: datetime


class DeviceClock(Protocol):
    """What the client reads time from (``kiosk.core.clock.Clock`` fits)."""

    boot_id: str

    def monotonic_ns(self) -> int: ...

    def wall(self) -> datetime: ...


class _SystemTime:
    def __init__(self) -> None:
        from kiosk.core.ids import boot_id

        self.boot_id = boot_id()

    def monotonic_ns(self) -> int:
        return time.monotonic_ns()

    def wall(self) -> datetime:
        return datetime.now(UTC)


def check_cloud_url(url: str) -> str:
    """``url`` without a trailing slash, if it can carry a device token: https, or plain http to
    this machine only (a token sent in clear over a network is a token given away). Raises
    ValueError saying what is wrong."""
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError(f"{url!r} is not a cloud address; expected https://host[:port][/path]")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"{url!r}: a cloud address has no user, query or fragment")
    if parts.scheme == "http" and not protocol.is_loopback(parts.hostname):
        raise ValueError(
            f"{url!r} uses plain http to another machine, which would send the device token in "
            f"clear; use https (plain http is accepted for localhost only)"
        )
    return url.strip().rstrip("/")


def parse_retry_after(value: str | None, *, now: datetime) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: a number of seconds or an HTTP date
    (counted from ``now``, ideally the answer's own ``Date``). None when absent or unreadable;
    never negative, at most ``MAX_RETRY_AFTER_S``."""
    if value is None:
        return None
    text = value.strip()
    seconds: float | None
    try:
        seconds = float(text)
        if seconds != seconds:  # NaN
            return None
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - now).total_seconds()
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The TLS settings every client of this process verifies the cloud with: the system's
    defaults and certifi's certificate authorities, as httpx builds them. Made once a process:
    building one parses the whole CA bundle (about 25 ms of CPU, more on a Pi), and one context
    is safe to share between clients and threads. Raises ``ssl.SSLError`` or ``OSError`` for an
    unreadable bundle (``SSL_CERT_FILE``)."""
    return httpx.create_ssl_context()


class CloudClient:
    """Talks to one cloud for one device. ``token`` is None only for ``enrol``.

    ``transport`` replaces the network (``httpx.MockTransport`` in tests); ``timeout_s`` bounds
    each phase of a request (connect, send, each read); ``clock`` gives the boot id and monotonic
    time for anchors; ``on_anchor`` receives each anchor (an exception in it propagates).
    Raises ValueError for an unusable ``base_url`` (see ``check_cloud_url``).
    """

    def __init__(
        self,
        base_url: str,
        token: str | None,
        *,
        transport: httpx.BaseTransport | None = None,
        timeout_s: float = 10.0,
        clock: DeviceClock | None = None,
        on_anchor: Callable[[Anchor], None] | None = None,
        software_version: str = "",
    ) -> None:
        self.base_url = check_cloud_url(base_url)
        self._token = token
        self._clock = clock or _SystemTime()
        self.on_anchor = on_anchor
        self._host = urllib.parse.urlsplit(self.base_url).netloc
        headers = {
            PROTOCOL_HEADER: str(PROTOCOL_VERSION),
            "Accept": "application/json",
            "User-Agent": f"fitflow-kiosk/{software_version or 'dev'}",
        }
        self._http = httpx.Client(
            base_url=self.base_url + "/",
            headers=headers,
            timeout=httpx.Timeout(timeout_s),
            transport=transport,
            verify=tls_context(),
            follow_redirects=False,
        )

    def __repr__(self) -> str:
        return f"CloudClient({self.base_url!r})"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> CloudClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- endpoints -------------------------------------------------------------------------------

    def enrol(self, code: str, name: str, software_version: str) -> Enrolment:
        """``POST /v1/enrol`` with a single-use enrolment code. Raises EnrolmentRefused for a
        code that is unknown, used or expired, and the other CloudErrors."""
        body = {"code": code, "name": name, "software_version": software_version}
        answer = self._call("POST", "v1/enrol", "the enrolment", json_body=body, ok=(200, 201))
        enrolment = self._parse(protocol.parse_enrolment, answer.body, "the enrolment")
        self._anchor(enrolment.server_time, answer.received_ns)
        return enrolment

    def snapshot_page(self, after: str | None, limit: int) -> SnapshotPage:
        """``GET /v1/replica/snapshot``: live rows after cursor ``after`` (None: from the start)."""
        params: dict[str, Any] = {"limit": limit}
        if after is not None:
            params["after"] = after
        answer = self._call("GET", "v1/replica/snapshot", "a snapshot page", params=params)
        return self._parse(
            lambda v: protocol.parse_snapshot_page(v, limit=limit), answer.body, "a snapshot page"
        )

    def changes(
        self, since: int, after: str | None, limit: int, etag: str | None = None
    ) -> ChangePage | NotModified:
        """``GET /v1/replica/changes?since=``: one page of changes, or NotModified when the
        first page is asked for (``after`` None) and the cloud is still at ``since``; ``etag``
        is sent as If-None-Match. Raises CursorExpired (410) when ``since`` is too old or newer
        than the cloud."""
        params: dict[str, Any] = {"since": since, "limit": limit}
        if after is not None:
            params["after"] = after
        headers = {"If-None-Match": etag} if etag else None
        answer = self._call(
            "GET",
            "v1/replica/changes",
            "a page of changes",
            params=params,
            headers=headers,
            ok=(200, 304),
        )
        if answer.status == 304:
            # The contract answers 304 for "since" = the cloud's version without a cursor (with
            # or without If-None-Match); a later page always exists once a first one did.
            if after is not None:
                raise BadResponse(
                    f"{self._host} answered 304 to a request for a later page of changes",
                    status=304,
                )
            return NotModified(answer.headers.get("etag"))
        return self._parse(
            lambda v: protocol.parse_change_page(v, limit=limit), answer.body, "a page of changes"
        )

    def upload(
        self,
        items: Sequence[UploadItem | EventItem],
        clock: tuple[str, int] | None = None,
        anchors: Sequence[Anchor] = (),
    ) -> UploadAnswer:
        """``POST /v1/checkins``: check-ins and door events, one result per item, in order. ``clock`` is (boot id, monotonic
        ns) at sending; None reads it now. Raises BatchTooLarge (413) and the other CloudErrors;
        BadResponse when the results do not match the items sent."""
        boot, mono = clock if clock is not None else (self._clock.boot_id, None)
        body = {
            "items": [item.to_wire() for item in items],
            "clock": {
                "boot_id": boot,
                "monotonic_ns": self._clock.monotonic_ns() if mono is None else mono,
            },
            "anchors": [anchor.to_wire() for anchor in anchors],
        }
        answer = self._call("POST", "v1/checkins", "the upload", json_body=body)
        sent = [item.id for item in items]
        results, server_time = self._parse(
            lambda v: protocol.parse_upload_results(v, sent), answer.body, "the upload"
        )
        self._anchor(server_time, answer.received_ns)
        return UploadAnswer(tuple(results), server_time)

    def heartbeat(self, beat: Heartbeat) -> HeartbeatReply:
        """``POST /v1/heartbeat``: report health; the reply may ask for a resnapshot or a
        re-send."""
        answer = self._call("POST", "v1/heartbeat", "the heartbeat", json_body=beat.to_wire())
        reply = self._parse(protocol.parse_heartbeat_reply, answer.body, "the heartbeat")
        self._anchor(reply.server_time, answer.received_ns)
        return reply

    # -- plumbing --------------------------------------------------------------------------------

    def _anchor(self, server_time: datetime, received_ns: int) -> None:
        if self.on_anchor is not None and self._clock.boot_id:
            self.on_anchor(Anchor(self._clock.boot_id, received_ns, server_time))

    def _parse(self, parser: Callable[[Any], Any], body: bytes, what: str) -> Any:
        try:
            return parser(protocol.parse_json(body, f"the answer to {what}"))
        except ProtocolError as exc:
            raise BadResponse(f"{self._host} sent an invalid answer to {what}: {exc}") from None

    def _call(
        self,
        method: str,
        path: str,
        what: str,
        *,
        params: dict[str, Any] | None = None,
        json_body: Any = None,
        headers: dict[str, str] | None = None,
        ok: tuple[int, ...] = (200,),
    ) -> _Answer:
        request_headers = dict(headers or {})
        if self._token is not None:
            request_headers["Authorization"] = f"Bearer {self._token}"
        try:
            with self._http.stream(
                method, path, params=params, json=json_body, headers=request_headers
            ) as response:
                status = response.status_code
                self._check_status(response, what, ok)
                body = self._read_capped(response, what)
                received_ns = self._clock.monotonic_ns()
        except httpx.TimeoutException:
            raise RetryableError(f"{self._host} did not answer {what} in time") from None
        except httpx.DecodingError:
            raise BadResponse(f"{self._host} sent an undecodable answer to {what}") from None
        except httpx.TransportError as exc:
            raise RetryableError(
                f"cannot reach the cloud at {self._host} ({_transport_words(exc)})"
            ) from None
        return _Answer(status, body, response.headers, received_ns)

    def _check_status(self, response: httpx.Response, what: str, ok: tuple[int, ...]) -> None:
        status = response.status_code
        if status >= 500 or status == 429:
            # Checked before the protocol header: a proxy in front of the cloud answers these too.
            retry_after = parse_retry_after(
                response.headers.get("retry-after"), now=self._answer_time(response)
            )
            raise RetryableError(
                f"{self._host} answered {what} with HTTP {status}"
                + (f" (retry after {retry_after:.0f} s)" if retry_after is not None else ""),
                status=status,
                retry_after=retry_after,
            )
        if status == 426:
            raise UnsupportedProtocol(
                _unsupported_words(self._host, _supported_versions(response)), status=status
            )
        if status == 401:
            raise Unauthorized(
                f"{self._host} refused this device's token (HTTP 401): it was revoked or the "
                f"cloud does not know it; enrol the device again",
                status=status,
            )
        spoken = response.headers.get(PROTOCOL_HEADER)
        if spoken is None:
            # Not the cloud's own answer (a captive portal, a proxy's page, garbage on the line):
            # retried, because stopping for good would leave the queue stuck after the network
            # heals. Only the cloud itself (426, or another version named) stops the agent.
            raise BadResponse(
                f"{self._host} answered {what} without a {PROTOCOL_HEADER} header (HTTP "
                f"{status}): it is not a FitFlow cloud, or something in between rewrites answers",
                status=status,
            )
        if spoken.strip() != str(PROTOCOL_VERSION):
            raise UnsupportedProtocol(
                f"{self._host} speaks sync protocol {spoken.strip()[:20]!r}, this kiosk "
                f"{PROTOCOL_VERSION}; update the kiosk software",
                status=status,
            )
        if status in ok:
            return
        if status == 413:
            raise BatchTooLarge(f"{self._host} found {what} too large (HTTP 413)", status=status)
        if status == 410:
            raise CursorExpired(
                f"{self._host} no longer has the changes asked for (HTTP 410)", status=status
            )
        if status == 403 and what == "the enrolment":
            raise EnrolmentRefused(
                "the enrolment code was refused: it is unknown, already used or expired; ask "
                "the gym's admin for a new one",
                status=status,
            )
        raise RequestRefused(
            f"{self._host} refused {what} (HTTP {status}{_error_words(response)})", status=status
        )

    def _answer_time(self, response: httpx.Response) -> datetime:
        # The device's own wall clock may be anything (no NTP yet): the answer's Date is better.
        try:
            when = email.utils.parsedate_to_datetime(response.headers.get("date", ""))
            return when if when.tzinfo is not None else when.replace(tzinfo=UTC)
        except (TypeError, ValueError, IndexError):
            return self._clock.wall()

    def _read_capped(self, response: httpx.Response, what: str) -> bytes:
        declared = response.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_RESPONSE_BYTES:
            raise BadResponse(
                f"{self._host} sent {int(declared)} bytes in answer to {what}, more than the "
                f"{MAX_RESPONSE_BYTES} accepted"
            )
        chunks: list[bytes] = []
        size = 0
        for chunk in _chunks(response):
            size += len(chunk)
            if size > MAX_RESPONSE_BYTES:
                raise BadResponse(
                    f"{self._host}'s answer to {what} grew past the {MAX_RESPONSE_BYTES} bytes "
                    f"accepted"
                )
            chunks.append(chunk)
        return b"".join(chunks)


def _chunks(response: httpx.Response) -> Iterator[bytes]:
    yield from response.iter_bytes()


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    body: bytes
    headers: httpx.Headers
    received_ns: int


def _transport_words(exc: httpx.TransportError) -> str:
    if isinstance(exc, httpx.ConnectError):
        return "connection failed"
    if isinstance(exc, httpx.RemoteProtocolError):
        return "the connection broke off mid-answer"
    if isinstance(exc, httpx.ReadError):
        return "the answer could not be read"
    if isinstance(exc, httpx.WriteError):
        return "the request could not be sent"
    return type(exc).__name__


def _small_json(response: httpx.Response) -> Any:
    """A small JSON error body, parsed; None when it is larger than 4 KiB, not JSON or cannot be
    read (a hostile error page can be any size, so at most a little past the limit is read)."""
    try:
        body = b""
        for chunk in _chunks(response):
            body += chunk
            if len(body) > 4096:
                return None
        return protocol.parse_json(body, "an error")
    except (ProtocolError, httpx.HTTPError):
        return None


def _supported_versions(response: httpx.Response) -> list[int]:
    """The protocol versions a 426 answer says the cloud speaks (``"supported": [2]``): small
    whole numbers only, anything else ignored."""
    parsed = _small_json(response)
    listed = parsed.get("supported") if isinstance(parsed, dict) else None
    if not isinstance(listed, list):
        return []
    return sorted(
        {v for v in listed[:8] if isinstance(v, int) and not isinstance(v, bool) and 0 < v < 1000}
    )


def _unsupported_words(host: str, supported: list[int]) -> str:
    """What a 426 means for the person reading the status: which side is older and must be
    updated, when the cloud said which versions it speaks."""
    ours = PROTOCOL_VERSION
    if supported and max(supported) > ours:
        spoken = ", ".join(str(v) for v in supported)
        return (
            f"{host} does not speak sync protocol {ours} any more (HTTP 426; it speaks "
            f"{spoken}): update the door's software (the kiosk) to a release that speaks "
            f"protocol {max(supported)}"
        )
    if supported:
        spoken = ", ".join(str(v) for v in supported)
        return (
            f"{host} speaks sync protocol {spoken} only, older than this kiosk's {ours} (HTTP "
            f"426): update the cloud to a release that speaks protocol {ours}"
        )
    return (
        f"{host} does not speak sync protocol {ours} (HTTP 426); update the kiosk software, or "
        f"the cloud if it is the older of the two"
    )


def _error_words(response: httpx.Response) -> str:
    """``: <error code>`` from a small JSON error body, escaped and short; empty otherwise."""
    parsed = _small_json(response)
    code = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(code, str) and code.replace("_", "").isalnum() and len(code) <= 40:
        return f": {code}"
    return ""
