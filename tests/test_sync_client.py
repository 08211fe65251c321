"""The sync client (kiosk.sync.client): every answer parsed through sync.protocol, every failure a typed
error, response sizes capped, anchors taken from answers that carry the cloud's time.

The cloud is ``tests/fakecloud.py`` behind ``httpx.MockTransport``, or a one-off handler."""

from __future__ import annotations

import json
import ssl
from datetime import UTC, datetime

import httpx
import pytest

from fakecloud import TOKEN, FakeCloud
from kiosk.core.clock import SimClock
from kiosk.sync.client import (
    BadResponse,
    BatchTooLarge,
    CloudClient,
    CursorExpired,
    EnrolmentRefused,
    NotModified,
    RequestRefused,
    RetryableError,
    Unauthorized,
    UnsupportedProtocol,
    check_cloud_url,
    parse_retry_after,
    tls_context,
)
from sync.protocol import (
    MAX_RESPONSE_BYTES,
    PROTOCOL_VERSION,
    Anchor,
    ChangePage,
    SnapshotPage,
    UploadItem,
)

URL = "https://cloud.test"


def client_for(handler, *, token: str | None = TOKEN, clock=None, anchors=None) -> CloudClient:
    transport = (
        handler.transport if isinstance(handler, FakeCloud) else httpx.MockTransport(handler)
    )
    return CloudClient(
        URL,
        token,
        transport=transport,
        clock=clock or SimClock(datetime(2026, 5, 1, tzinfo=UTC), boot="boot-1"),
        on_anchor=None if anchors is None else anchors.append,
    )


def answer(
    status: int, body: object = None, *, headers=None, protocol=str(PROTOCOL_VERSION)
) -> httpx.Response:
    h = dict(headers or {})
    if protocol is not None:
        h["FitFlow-Protocol"] = protocol
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.Response(status, content=content, headers=h)


def item(n: int = 1) -> UploadItem:
    return UploadItem(
        id=f"01900000-0000-7000-8000-{n:012d}",
        seq=n,
        door_id="front",
        decision="granted",
        reason="subscription",
        member_id="m0",
        membership_id="ms0",
        classes_used=0,
        replica_version=1,
        wall_time=datetime(2026, 5, 1, 10, tzinfo=UTC),
        boot_id="boot-1",
        monotonic_ns=5,
        clock_quality="ntp_synced",
    )


# -- the happy paths -------------------------------------------------------------------------------


def test_requests_carry_the_protocol_header_and_token_and_answers_are_parsed():
    cloud = FakeCloud()
    cloud.seed_gym(members=2)
    anchors: list[Anchor] = []
    clock = SimClock(datetime(2026, 5, 1, tzinfo=UTC), boot="boot-1")
    client = client_for(cloud, clock=clock, anchors=anchors)
    page = client.snapshot_page(None, 3)
    assert isinstance(page, SnapshotPage) and len(page.rows) == 3 and page.next is not None
    changes = client.changes(0, None, 100)
    assert isinstance(changes, ChangePage) and changes.checkpoint == cloud.checkpoint()
    clock.advance(2)
    answer_ = client.upload([item()])
    assert [r.status for r in answer_.results] == ["created"]
    request = cloud.requests[-1]
    assert request.headers["FitFlow-Protocol"] == str(PROTOCOL_VERSION)
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    sent = json.loads(request.content)
    # The clock reading at sending time lets the cloud anchor this boot.
    assert sent["clock"] == {"boot_id": "boot-1", "monotonic_ns": clock.monotonic_ns()}
    assert anchors == [Anchor("boot-1", clock.monotonic_ns(), cloud.now)]
    assert client.changes(cloud.version, None, 100, etag=f'"v{cloud.version}"') == NotModified(
        f'"v{cloud.version}"'
    )
    assert cloud.requests[-1].headers["If-None-Match"] == f'"v{cloud.version}"'


def test_clients_share_one_tls_context_that_checks_the_certificate_and_the_host():
    """Building a TLS context parses the whole CA bundle (a Pi feels it), so a process builds one;
    sharing it must not loosen what every client checks."""
    context = tls_context()
    assert tls_context() is context
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


def test_enrol_sends_no_token_and_a_used_code_is_refused():
    cloud = FakeCloud()
    client = client_for(cloud, token=None)
    enrolment = client.enrol("7KQ4-M2XD-9HVA", "front door", "0.1.0")
    assert enrolment.device_id == "dev_1" and enrolment.token == TOKEN
    assert "authorization" not in cloud.requests[-1].headers
    assert TOKEN not in repr(enrolment)
    with pytest.raises(EnrolmentRefused, match="unknown, already used or expired"):
        client.enrol("7KQ4-M2XD-9HVA", "front door", "0.1.0")


# -- errors by type --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "error", "words"),
    [
        (answer(401, {"error": "unauthorized"}), Unauthorized, "enrol the device again"),
        (answer(426, {"error": "unsupported_protocol"}), UnsupportedProtocol, "update"),
        # Not the cloud's own answer (a portal, a proxy's page): retried, never fatal.
        (answer(200, {"version": 1}, protocol=None), BadResponse, "without a FitFlow"),
        (answer(404, b"<html>nginx</html>", protocol=None), BadResponse, "not a FitFlow"),
        (
            answer(200, {"version": 1}, protocol=str(PROTOCOL_VERSION + 1)),
            UnsupportedProtocol,
            "speaks sync protocol",
        ),
        (answer(413, {"error": "batch_too_large"}), BatchTooLarge, "too large"),
        (answer(410, {"error": "cursor_expired"}), CursorExpired, "410"),
        (answer(400, {"error": "bad_request", "detail": "x"}), RequestRefused, "bad_request"),
        (answer(500, b"oops", protocol=None), RetryableError, "HTTP 500"),
        (answer(502, b"<html>bad gateway</html>", protocol=None), RetryableError, "HTTP 502"),
    ],
)
def test_each_failure_becomes_its_typed_error(response, error, words):
    client = client_for(lambda request: response)
    with pytest.raises(error, match=words) as caught:
        client.changes(3, None, 100)
    assert caught.type is error
    assert TOKEN not in str(caught.value)
    assert caught.value.retryable == (error not in (Unauthorized, UnsupportedProtocol))


@pytest.mark.parametrize(
    ("body", "words"),
    [
        # A cloud newer than this kiosk (the kiosk must be updated) ...
        (
            {"error": "unsupported_protocol", "supported": [PROTOCOL_VERSION + 1]},
            f"it speaks {PROTOCOL_VERSION + 1}\\): update the door's software",
        ),
        # ... an older one (the cloud must be updated) ...
        (
            {"error": "unsupported_protocol", "supported": [PROTOCOL_VERSION - 1]},
            f"speaks sync protocol {PROTOCOL_VERSION - 1} only.*update the cloud",
        ),
        # ... and one that says nothing usable (the list is hostile input: only small ints).
        ({"error": "unsupported_protocol", "supported": ["9", True, 10**9]}, "kiosk software"),
        (b"<html>" + b"x" * 10_000, "kiosk software"),
    ],
    ids=["cloud-newer", "cloud-older", "garbage-list", "huge-page"],
)
def test_a_426_says_which_side_to_update(body, words):
    client = client_for(lambda request: answer(426, body))
    with pytest.raises(UnsupportedProtocol, match=words) as caught:
        client.upload([item()])
    assert not caught.value.retryable and caught.value.status == 426


def test_retry_after_seconds_and_http_dates_are_honoured():
    client = client_for(lambda r: answer(503, b"", headers={"Retry-After": "7"}, protocol=None))
    with pytest.raises(RetryableError) as caught:
        client.changes(1, None, 10)
    assert caught.value.retry_after == 7.0 and caught.value.status == 503
    # An HTTP date counts from the answer's own Date, not from the device's (maybe unset) clock.
    dated = {
        "Retry-After": "Fri, 01 May 2026 12:01:30 GMT",
        "Date": "Fri, 01 May 2026 12:00:00 GMT",
    }
    client = client_for(lambda r: answer(429, b"", headers=dated))
    with pytest.raises(RetryableError) as caught:
        client.changes(1, None, 10)
    assert caught.value.retry_after == 90.0


def test_parse_retry_after_bounds_and_garbage():
    now = datetime(2026, 5, 1, 12, tzinfo=UTC)
    assert parse_retry_after(None, now=now) is None
    assert parse_retry_after("soon", now=now) is None
    assert parse_retry_after("nan", now=now) is None
    assert parse_retry_after("-5", now=now) == 0.0
    assert parse_retry_after("999999", now=now) == 3600.0
    assert parse_retry_after("Fri, 01 May 2026 11:00:00 GMT", now=now) == 0.0


@pytest.mark.parametrize(
    "error",
    [httpx.ConnectError("refused"), httpx.ReadTimeout("slow"), httpx.RemoteProtocolError("cut")],
)
def test_no_answer_is_retryable_and_says_so(error):
    def fail(request):
        raise error

    with pytest.raises(RetryableError) as caught:
        client_for(fail).changes(1, None, 10)
    assert caught.value.status is None and "cloud.test" in str(caught.value)
    assert type(caught.value) is RetryableError


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"<html>captive portal</html>", "not valid JSON"),
        (b'{"since": 1, "rows": [', "not valid JSON"),  # truncated
        (json.dumps({"since": 1, "rows": "x", "next": None}).encode(), "checkpoint"),
        (json.dumps([1, 2]).encode(), "expected an object"),
    ],
)
def test_garbage_truncated_or_misshapen_answers_are_bad_responses(body, words):
    client = client_for(lambda request: answer(200, body))
    with pytest.raises(BadResponse, match=words) as caught:
        client.changes(1, None, 10)
    assert caught.value.retryable


def test_upload_results_that_do_not_match_the_items_are_bad_responses():
    wrong = {"results": [], "server_time": "2026-05-01T10:00:00.000000Z"}
    with pytest.raises(BadResponse, match="0 results for 1 items"):
        client_for(lambda r: answer(200, wrong)).upload([item()])


def test_oversized_answers_are_refused_declared_or_streamed():
    declared = httpx.Response(
        200,
        content=b"{}",
        headers={
            "FitFlow-Protocol": str(PROTOCOL_VERSION),
            "Content-Length": str(MAX_RESPONSE_BYTES + 1),
        },
    )
    with pytest.raises(BadResponse, match="more than"):
        client_for(lambda r: declared).changes(1, None, 10)
    chunks_sent = []

    def endless():
        for _ in range(MAX_RESPONSE_BYTES // (1 << 20) + 8):
            chunks_sent.append(1)
            yield b" " * (1 << 20)

    streamed = httpx.Response(
        200, content=endless(), headers={"FitFlow-Protocol": str(PROTOCOL_VERSION)}
    )
    with pytest.raises(BadResponse, match="grew past"):
        client_for(lambda r: streamed).changes(1, None, 10)
    # Reading stopped at the cap instead of draining the whole stream.
    assert len(chunks_sent) == MAX_RESPONSE_BYTES // (1 << 20) + 1


def test_a_304_is_only_accepted_for_the_idle_poll():
    client = client_for(lambda r: answer(304, b""))
    with pytest.raises(BadResponse, match="304"):
        client.changes(1, "1:1:m1", 10, etag='"v1"')


def test_cloud_addresses_must_protect_the_token():
    assert check_cloud_url("https://cloud.example/fitflow/") == "https://cloud.example/fitflow"
    assert check_cloud_url("http://127.0.0.1:8080") == "http://127.0.0.1:8080"
    assert check_cloud_url("http://localhost:8080") == "http://localhost:8080"
    for bad in (
        "http://cloud.example",
        "ftp://x",
        "cloud.example",
        "https://u:p@x",
        "https://x?a=1",
    ):
        with pytest.raises(ValueError):
            check_cloud_url(bad)
    client = client_for(FakeCloud())
    assert TOKEN not in repr(client)
