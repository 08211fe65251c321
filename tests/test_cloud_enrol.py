"""The cloud's front door: enrolment, device tokens, the protocol header, health and OpenAPI.
Every test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest

from pg import (  # noqa: F401
    Device,
    Harness,
    cloud_db_url_fixture,
    cloud_fixture,
    heartbeat_body,
    pg_server_fixture,
)
from sync.protocol import PROTOCOL_VERSION, parse_enrolment


def _enrol(cloud, code: str):
    return cloud.client.post(
        "/v1/enrol",
        json={"code": code, "name": "door"},
        headers={"FitFlow-Protocol": str(PROTOCOL_VERSION)},
    )


def test_an_enrolment_code_enrols_one_device_once(cloud):
    code = cloud.enrolment_code()
    first = _enrol(cloud, code)
    assert first.status_code == 201
    enrolment = parse_enrolment(first.json())  # what the device's agent accepts
    assert enrolment.organization_id == cloud.org_id
    assert enrolment.gym_id == cloud.gym_id
    assert enrolment.gym_name == "Main"
    assert enrolment.timezone == "Europe/Berlin"
    assert enrolment.server_time == cloud.clock()
    assert first.headers["FitFlow-Protocol"] == str(PROTOCOL_VERSION)

    again = _enrol(cloud, code)
    assert again.status_code == 403
    assert again.json()["error"] == "enrolment_refused"


def test_codes_are_typed_loosely_but_unknown_and_expired_codes_are_refused(cloud):
    code = cloud.enrolment_code(ttl=5)
    assert _enrol(cloud, "7KQ4-M2XD-9HVA").json()["error"] == "enrolment_refused"
    cloud.clock.advance(5 * 60 + 1)
    expired = _enrol(cloud, code)
    assert expired.status_code == 403
    assert expired.json() == {
        "error": "enrolment_refused",
        "detail": "unknown, used or expired enrolment code",
    }
    fresh = cloud.enrolment_code()
    assert _enrol(cloud, " " + fresh.lower().replace("-", "") + " ").status_code == 201


def test_enrolment_codes_live_at_most_a_day(cloud):
    too_long = cloud.admin(
        "POST", f"/gyms/{cloud.gym_id}/enrolment-codes", json={"ttl_minutes": 24 * 60 + 1}
    )
    assert too_long.status_code == 422
    assert too_long.json()["fields"][0]["field"] == "ttl_minutes"
    made = cloud.ok("POST", f"/gyms/{cloud.gym_id}/enrolment-codes", json={"ttl_minutes": 1440})
    assert made["expires_at"] == "2026-05-02T12:00:00.000000Z"


def test_a_bad_enrolment_body_is_a_400_naming_the_field(cloud):
    for body, field in (
        (b"not json", "not valid JSON"),
        (b"[]", "expected an object"),
        (b'{"code": 7}', "code"),
        (b'{"code": "ABCD", "colour": "red"}', "colour"),
    ):
        response = cloud.client.post("/v1/enrol", content=body)
        assert response.status_code == 400, body
        assert response.json()["error"] == "invalid_request"
        assert field in response.json()["detail"]


def test_revoking_a_device_locks_out_only_that_device(cloud):
    front, back = cloud.enrol("front"), cloud.enrol("back")
    assert cloud.get(front, "/v1/replica/snapshot").status_code == 200
    revoked = cloud.ok("POST", f"/devices/{front.id}/revoke")
    assert revoked["revoked_at"] == "2026-05-01T12:00:00.000000Z"

    refused = cloud.get(front, "/v1/replica/snapshot")
    assert refused.status_code == 401
    assert refused.json()["error"] == "unauthorized"
    assert refused.headers["FitFlow-Protocol"] == str(PROTOCOL_VERSION)
    assert cloud.upload(front, []).status_code == 401
    assert cloud.get(back, "/v1/replica/snapshot").status_code == 200


def test_missing_or_unknown_tokens_are_401(cloud):
    nobody = Device("dev_x", "ffd_" + "x" * 40, cloud.gym_id)
    assert cloud.get(nobody, "/v1/replica/changes", since=0).status_code == 401
    bare = cloud.client.get("/v1/replica/snapshot")
    assert bare.status_code == 401
    basic = cloud.client.get("/v1/replica/snapshot", headers={"Authorization": "Basic eDp5"})
    assert basic.status_code == 401


@pytest.mark.parametrize("spoken", ["1", "2", str(PROTOCOL_VERSION + 1)], ids=["v1", "v2", "newer"])
def test_another_protocol_version_is_426_on_device_calls(cloud, spoken):
    device = cloud.enrol()
    headers = {**device.headers, "FitFlow-Protocol": spoken}
    for path, body in (("/v1/replica/snapshot", None), ("/v1/checkins", {"items": []})):
        if body is None:
            response = cloud.client.get(path, headers=headers)
        else:
            response = cloud.client.post(path, headers=headers, json=body)
        assert response.status_code == 426
        assert response.json()["error"] == "unsupported_protocol"
        assert response.json()["supported"] == [PROTOCOL_VERSION]
        assert "update the door's software" in response.json()["detail"]
        assert response.headers["FitFlow-Protocol"] == str(PROTOCOL_VERSION)
    # A call without the header (curl, a health probe) is not refused; every kiosk sends it.
    plain = {"Authorization": device.headers["Authorization"]}
    assert cloud.client.get("/v1/replica/snapshot", headers=plain).status_code == 200


def test_last_seen_is_kept_without_a_write_per_request(cloud):
    device = cloud.enrol()
    seen = lambda: cloud.ok("GET", f"/devices/{device.id}")["last_seen_at"]  # noqa: E731
    assert seen() == "2026-05-01T12:00:00.000000Z"
    cloud.clock.advance(100)
    cloud.get(device, "/v1/replica/changes", since=0)
    assert seen() == "2026-05-01T12:00:00.000000Z"  # within 120 s: not rewritten
    cloud.clock.advance(21)
    cloud.get(device, "/v1/replica/changes", since=0)
    assert seen() == "2026-05-01T12:02:01.000000Z"
    # A heartbeat, a write anyway, keeps it current every round: the idle poll of the next
    # round (30 s later) then finds it fresh and stays a read.
    cloud.clock.advance(5)
    cloud.heartbeat(device)
    assert seen() == "2026-05-01T12:02:06.000000Z"


def test_health_and_openapi(cloud):
    health = cloud.client.get("/healthz")
    assert health.status_code == 200
    assert health.json() == {"ok": True}
    spec = cloud.client.get("/openapi.json").json()
    for path in (
        "/v1/enrol",
        "/v1/replica/snapshot",
        "/v1/replica/changes",
        "/v1/checkins",
        "/v1/heartbeat",
        "/admin/v1/members",
        "/admin/v1/members/import",
        "/admin/v1/devices",
        "/admin/v1/checkins",
        "/admin/v1/overdrafts",
        "/admin/v1/gyms/{gym_id}/occupancy",
    ):
        assert path in spec["paths"], path
    upload = spec["paths"]["/v1/checkins"]["post"]
    assert upload["summary"] == "Upload check-ins and passage events"
    assert "exactly once" in upload["description"]
    assert "413" in upload["responses"]


def test_unknown_routes_answer_json_errors(cloud):
    response = cloud.client.get("/v1/nothing-here")
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


def test_the_clock_is_used_for_expiry_not_the_machine_time(cloud):
    cloud.clock.now -= timedelta(days=365)
    code = cloud.enrolment_code(ttl=1)
    cloud.clock.advance(30)
    assert _enrol(cloud, code).status_code == 201


def test_apps_in_one_process_share_routes_but_never_state(tmp_path):
    """The routes are assembled once per process (``cloud.app``); each app still answers from its
    own database and budgets: a device or an admin token of one cloud is unknown to the other."""
    one, other = Harness(f"sqlite:///{tmp_path}/one.db"), Harness(f"sqlite:///{tmp_path}/other.db")
    try:
        device = one.enrol()
        one.heartbeat(device)  # asserts a 200
        answer = other.client.post("/v1/heartbeat", json=heartbeat_body(), headers=device.headers)
        assert answer.status_code == 401
        assert other.admin("GET", "/devices", token=one.admin_token).status_code == 401
        assert device.id in one.admin("GET", "/devices").text
        assert device.id not in other.admin("GET", "/devices").text
        assert one.client.get("/openapi.json").json() == other.client.get("/openapi.json").json()
        assert other.app.state.pass_attempts is not one.app.state.pass_attempts
        assert other.app.state.console_throttle is not one.app.state.console_throttle
    finally:
        one.close()
        other.close()
