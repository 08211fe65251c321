"""Phone passes in the reference cloud: activation codes, activation, status, revocation, the
organisation's settings, guessing throttled, and printable cards. Every test that touches the
database runs on SQLite and on PostgreSQL (the real app, an injected clock)."""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
import warnings
import xml.etree.ElementTree as ET

import cv2
import numpy as np
import pytest
import zxingcpp
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud import admin, api_pass, cards, db, passes, replica
from pg import (
    Harness,
    cloud_db_url_fixture,  # noqa: F401
    cloud_fixture,  # noqa: F401
    pg_server_fixture,  # noqa: F401
    replica_checksum,
)
from sync.passes import pass_payload, public_key_text, step_at

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # Starlette's note about its httpx fork
    from fastapi.testclient import TestClient

CODE = re.compile(r"[A-Z2-7]{16}")


def new_key() -> tuple[Ed25519PrivateKey, str]:
    key = Ed25519PrivateKey.generate()
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return key, public_key_text(raw)


def member(cloud: Harness, code: str | None = None, **fields) -> str:
    body = {"first_name": "Ann", "last_name": "Lee", "code": code} | fields
    return cloud.ok("POST", "/members", json=body)["id"]


def activation(cloud: Harness, member_id: str, **body) -> dict:
    path = f"/members/{member_id}/pass-activations"
    response = cloud.admin("POST", path, json=body) if body else cloud.admin("POST", path)
    assert response.status_code == 201, response.text
    return response.json()


def activate(cloud: Harness, code: str, public_key: str, client: TestClient | None = None):
    http = client or cloud.client
    return http.post("/pass/v1/activate", json={"code": code, "public_key": public_key})


def status(cloud: Harness, code: str, client: TestClient | None = None):
    return (client or cloud.client).post("/pass/v1/status", json={"code": code})


def current_code(cloud: Harness, key, pass_id: str, *, steps: int = 0, period: int = 15) -> str:
    step = step_at(cloud.clock().timestamp(), period) + steps
    return pass_payload(key, cloud.org_id, pass_id, step)


def new_pass(cloud: Harness, member_id: str) -> tuple[Ed25519PrivateKey, str]:
    key, public = new_key()
    made = activate(cloud, activation(cloud, member_id)["code"], public)
    assert made.status_code == 201, made.text
    return key, made.json()["pass_id"]


# -- activation ------------------------------------------------------------------------------------


def test_an_activated_pass_reaches_the_doors_and_its_code_is_stored_only_hashed(cloud):
    device = cloud.enrol()
    alice = member(cloud, first_name="Alice")
    version_before = cloud.ok("GET", "/organization")["version"]
    made = activation(cloud, alice)
    assert CODE.fullmatch(made["code"])
    assert made == {
        "code": made["code"],
        "expires_at": "2026-05-01T12:15:00.000000Z",
        "member_id": alice,
        "activation_path": f"/pass/#activate={made['code']}",
    }
    with cloud.database.read() as tx:
        stored = tx.all("SELECT * FROM pass_activations")
    assert len(stored) == 1
    assert made["code"] not in repr(stored)
    expected = hashlib.sha256(f"pass-activation:{made['code']}".encode()).hexdigest()
    assert stored[0]["code_hash"] == expected

    _key, public = new_key()
    answer = activate(cloud, made["code"], public)
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert re.fullmatch(r"[A-Z2-7]{8}", body["pass_id"])
    assert body == {
        "pass_id": body["pass_id"],
        "organization_id": cloud.org_id,
        "organization_name": "Acme",
        "first_name": "Alice",
        "period_s": 15,
        "skew_steps": 2,
        "server_time": "2026-05-01T12:00:00.000000Z",
    }
    assert answer.headers["Cache-Control"] == "no-store"
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    assert "access-control-allow-origin" not in answer.headers

    # One new version, and the door's replica holds the pass exactly as the protocol defines it.
    assert cloud.ok("GET", "/organization")["version"] == version_before + 1
    _version, rows = cloud.pull_all(device)
    assert rows[("pass", body["pass_id"])] == {
        "member_id": alice,
        "organization_id": cloud.org_id,
        "public_key": public,
        "period_s": 15,
        "status": "ACTIVE",
    }
    with cloud.database.read() as tx:
        spent = tx.one("SELECT used_at, pass_id FROM pass_activations")
    assert spent == {"used_at": "2026-05-01T12:00:00.000000Z", "pass_id": body["pass_id"]}
    listed = cloud.ok("GET", f"/members/{alice}/passes")
    assert listed == {
        "items": [
            {
                "id": body["pass_id"],
                "member_id": alice,
                "status": "ACTIVE",
                "period_s": 15,
                "created_at": "2026-05-01T12:00:00.000000Z",
                "revoked_at": None,
                "version": version_before + 1,
            }
        ],
        "next": None,
    }


def test_an_activation_code_works_once_and_is_typed_loosely(cloud):
    alice = member(cloud)
    code = activation(cloud, alice)["code"]
    loose = " " + "-".join(code[i : i + 4] for i in range(0, 16, 4)).lower() + " "
    assert activate(cloud, loose, new_key()[1]).status_code == 201
    again = activate(cloud, code, new_key()[1])
    assert again.status_code == 410
    unknown = activate(cloud, "A" * 16, new_key()[1])
    assert unknown.status_code == 410
    # One answer for a used and an unknown code: nothing to learn about which codes exist.
    assert again.json() == unknown.json()
    assert again.json()["error"] == "activation_invalid"
    assert "ask the gym for a new one" in again.json()["detail"]
    assert len(cloud.ok("GET", f"/members/{alice}/passes")["items"]) == 1


def test_an_expired_code_is_refused_like_an_unknown_one(cloud):
    alice = member(cloud)
    code = activation(cloud, alice, ttl_minutes=5)["code"]
    cloud.clock.advance(5 * 60)  # at its expiry time the code is no longer good
    expired = activate(cloud, code, new_key()[1])
    assert expired.status_code == 410
    assert expired.json() == activate(cloud, "B" * 16, new_key()[1]).json()
    assert cloud.ok("GET", f"/members/{alice}/passes")["items"] == []


def test_activation_codes_live_1_minute_to_a_day_and_only_for_live_members(cloud):
    alice = member(cloud)
    path = f"/members/{alice}/pass-activations"
    for ttl in (0, 1441, -5, True, "15"):
        response = cloud.admin("POST", path, json={"ttl_minutes": ttl})
        assert response.status_code == 422, (ttl, response.text)
        assert [f["field"] for f in response.json()["fields"]] == ["ttl_minutes"]
    assert activation(cloud, alice, ttl_minutes=1440)["expires_at"] == (
        "2026-05-02T12:00:00.000000Z"
    )
    assert cloud.admin("POST", "/members/mbr_nobody/pass-activations").status_code == 404
    # A deleted member gets no code, and a code made before the deletion is worth nothing.
    code = activation(cloud, alice)["code"]
    assert cloud.admin("DELETE", f"/members/{alice}").status_code == 204
    assert cloud.admin("POST", path).status_code == 404
    assert activate(cloud, code, new_key()[1]).status_code == 410
    # Another organisation's admin sees no such member.
    _org, _gym, other_token = cloud.new_org("Other", "Gym")
    bob = member(cloud)
    assert cloud.admin(
        "POST", f"/members/{bob}/pass-activations", token=other_token
    ).status_code == (404)


def _race(cloud: Harness, code: str, keys: list[str]) -> list[object]:
    """Two phones spend one code at the same moment: the first holds its transaction open after
    claiming the code until the second is waiting for it (PostgreSQL: seen waiting on the row
    lock; SQLite: its writer waits on the database lock), then commits."""
    request_a = passes.parse_activate_request({"code": code, "public_key": keys[0]})
    request_b = passes.parse_activate_request({"code": code, "public_key": keys[1]})
    now = cloud.clock()
    results: list[object] = [None, None]
    claimed, b_started, release = threading.Event(), threading.Event(), threading.Event()

    def first() -> None:
        def work(tx):
            made = passes.activate(tx, request_a, now)
            claimed.set()
            assert release.wait(30)
            return made

        results[0] = cloud.database.transact(work)

    def second() -> None:
        assert claimed.wait(30)
        b_started.set()
        try:
            results[1] = cloud.database.transact(lambda tx: passes.activate(tx, request_b, now))
        except passes.ActivationInvalid as exc:
            results[1] = exc

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    assert b_started.wait(30)
    if cloud.database.dialect == db.POSTGRES:
        deadline = time.monotonic() + 30
        while not _someone_waits_on_a_lock(cloud):
            assert time.monotonic() < deadline, "the second activation never waited for the first"
            time.sleep(0.01)  # a polling interval: the wait ends on the observed lock wait
    release.set()
    for t in threads:
        t.join(60)
    return results


def _someone_waits_on_a_lock(cloud: Harness) -> bool:
    import psycopg

    with psycopg.connect(cloud.url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            " AND datname = current_database()"
        ).fetchone()
    return bool(row and row[0])


def test_two_phones_racing_for_one_code_exactly_one_wins(cloud):
    alice = member(cloud)
    code = activation(cloud, alice)["code"]
    results = _race(cloud, code, [new_key()[1], new_key()[1]])
    assert isinstance(results[0], dict) and "pass_id" in results[0]
    assert isinstance(results[1], passes.ActivationInvalid)
    items = cloud.ok("GET", f"/members/{alice}/passes")["items"]
    assert [p["id"] for p in items] == [results[0]["pass_id"]]


def test_a_member_holds_at_most_max_live_passes(cloud):
    alice = member(cloud)
    early = activation(cloud, alice)["code"]  # made while she had none
    _key, first = new_pass(cloud, alice)
    new_pass(cloud, alice)
    refused = cloud.admin("POST", f"/members/{alice}/pass-activations")
    assert refused.status_code == 409
    assert refused.json()["error"] == "too_many_passes"
    assert "revoke one first" in refused.json()["detail"]
    # The code made earlier is refused at activation too, and stays unspent.
    late = activate(cloud, early, new_key()[1])
    assert late.status_code == 409, late.text
    assert late.json()["error"] == "too_many_passes"
    cloud.ok("POST", f"/passes/{first}/revoke")
    assert activate(cloud, early, new_key()[1]).status_code == 201
    # Raising the limit allows one more; revoked passes never count.
    cloud.ok("PATCH", "/organization", json={"max_live_passes": 3})
    new_pass(cloud, alice)
    statuses = [p["status"] for p in cloud.ok("GET", f"/members/{alice}/passes")["items"]]
    assert sorted(statuses) == ["ACTIVE", "ACTIVE", "ACTIVE", "REVOKED"]


def test_a_bad_body_or_key_is_400_and_spends_no_code(cloud):
    alice = member(cloud)
    code = activation(cloud, alice)["code"]
    _key, good = new_key()
    flipped = good[:-1] + ("B" if good[-1] != "B" else "C")  # stray bits in the last character
    cases = [
        (b"not json", "not valid JSON"),
        (b"[]", "expected a JSON object"),
        (b'{"code": "%s"}' % code.encode(), "public_key: required"),
        (b'{"code": 7, "public_key": "%s"}' % good.encode(), "code"),
        (b'{"code": "ABC", "public_key": "%s"}' % good.encode(), "code"),
        (b'{"code": "%s", "public_key": "short"}' % code.encode(), "public_key"),
        (b'{"code": "%s", "public_key": "%s="}' % (code.encode(), good.encode()), "public_key"),
        (b'{"code": "%s", "public_key": "%s"}' % (code.encode(), flipped.encode()), "public_key"),
        (
            b'{"code": "%s", "public_key": "%s", "colour": 1}' % (code.encode(), good.encode()),
            "colour",
        ),
    ]
    for raw, words in cases:
        response = cloud.client.post("/pass/v1/activate", content=raw)
        assert response.status_code == 400, (raw, response.text)
        assert response.json()["error"] == "invalid_request"
        assert words in response.json()["detail"], (raw, response.json())
        assert response.headers["Cache-Control"] == "no-store"
    huge = cloud.client.post("/pass/v1/activate", content=b" " * (api_pass.MAX_BODY_BYTES + 1))
    assert huge.status_code == 413
    assert huge.headers["X-Content-Type-Options"] == "nosniff"
    assert activate(cloud, code, good).status_code == 201


# -- revocation ------------------------------------------------------------------------------------


def test_revoking_a_pass_reaches_the_doors_in_the_change_feed(cloud):
    device = cloud.enrol()
    alice = member(cloud)
    _key, pass_id = new_pass(cloud, alice)
    version, rows = cloud.pull_all(device)
    assert rows[("pass", pass_id)]["status"] == "ACTIVE"

    revoked = cloud.ok("POST", f"/passes/{pass_id}/revoke")
    assert revoked["status"] == "REVOKED"
    assert revoked["revoked_at"] == "2026-05-01T12:00:00.000000Z"
    assert revoked["version"] == version + 1

    # The change feed (cloud/replica.py, as the device API serves it) carries the row REVOKED.
    scope = replica.Scope(cloud.org_id, cloud.gym_id)
    with cloud.database.read() as tx:
        page = replica.change_page(tx, scope, version, None, 100)
    assert page["rows"] == [
        {
            "kind": "pass",
            "id": pass_id,
            "version": version + 1,
            "data": {
                "member_id": alice,
                "organization_id": cloud.org_id,
                "public_key": rows[("pass", pass_id)]["public_key"],
                "period_s": 15,
                "status": "REVOKED",
            },
        }
    ]
    checkpoint = cloud.follow(device, version, rows)
    assert rows[("pass", pass_id)]["status"] == "REVOKED"
    assert checkpoint is not None
    assert (checkpoint["checksum"], checkpoint["count"]) == replica_checksum(rows)

    # Revoking again changes nothing: no new version for the doors to pull.
    assert cloud.ok("POST", f"/passes/{pass_id}/revoke") == revoked
    assert cloud.ok("GET", "/organization")["version"] == version + 1
    assert cloud.admin("POST", "/passes/AAAAAAAA/revoke").status_code == 404
    _org, _gym, other_token = cloud.new_org("Other", "Gym")
    assert cloud.admin("POST", f"/passes/{pass_id}/revoke", token=other_token).status_code == 404
    assert cloud.admin("GET", f"/members/{alice}/passes", token=other_token).status_code == 404


def test_deleting_a_member_deletes_their_passes(cloud):
    device = cloud.enrol()
    alice = member(cloud)
    key, pass_id = new_pass(cloud, alice)
    version, rows = cloud.pull_all(device)
    assert cloud.admin("DELETE", f"/members/{alice}").status_code == 204
    cloud.follow(device, version, rows)
    assert ("pass", pass_id) not in rows and ("member", alice) not in rows
    # The phone asking about its pass hears that it no longer works.
    answer = status(cloud, current_code(cloud, key, pass_id))
    assert answer.status_code == 200
    assert answer.json()["status"] == "REVOKED"


# -- status ----------------------------------------------------------------------------------------


def test_status_answers_the_holder_of_a_current_code(cloud):
    alice = member(cloud)
    key, pass_id = new_pass(cloud, alice)
    answer = status(cloud, current_code(cloud, key, pass_id))
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "pass_id": pass_id,
        "status": "ACTIVE",
        "period_s": 15,
        "server_time": "2026-05-01T12:00:00.000000Z",
    }
    assert answer.headers["Cache-Control"] == "no-store"
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    crossed = cloud.client.post(
        "/pass/v1/status",
        json={"code": current_code(cloud, key, pass_id)},
        headers={"Origin": "https://evil.example"},
    )
    assert crossed.status_code == 200
    assert not any(h.startswith("access-control-") for h in crossed.headers)
    # Two steps either side are within the window, like at the door.
    for steps in (-2, -1, 1, 2):
        assert status(cloud, current_code(cloud, key, pass_id, steps=steps)).status_code == 200
    cloud.ok("POST", f"/passes/{pass_id}/revoke")
    revoked = status(cloud, current_code(cloud, key, pass_id))
    assert revoked.status_code == 200
    assert revoked.json()["status"] == "REVOKED"


def test_status_refuses_forged_foreign_stale_and_unknown_codes(cloud):
    alice = member(cloud)
    key, pass_id = new_pass(cloud, alice)
    forger = Ed25519PrivateKey.generate()
    forged = status(cloud, current_code(cloud, forger, pass_id))
    assert forged.status_code == 403
    assert forged.json()["error"] == "bad_signature"
    # The right key, but signed for another organisation: the signature binds the organisation.
    step = step_at(cloud.clock().timestamp(), 15)
    elsewhere = status(cloud, pass_payload(key, "org_other", pass_id, step))
    assert elsewhere.status_code == 403
    assert elsewhere.json()["error"] == "bad_signature"
    for steps in (-3, 3, -1000):
        stale = status(cloud, current_code(cloud, key, pass_id, steps=steps))
        assert stale.status_code == 403, steps
        assert stale.json()["error"] == "code_expired"
        assert stale.json()["server_time"] == "2026-05-01T12:00:00.000000Z"
        assert stale.json()["period_s"] == 15
        assert "phone's clock" in stale.json()["detail"]
    # A code that was current goes stale as the cloud's clock moves on.
    old = current_code(cloud, key, pass_id)
    cloud.clock.advance(3 * 15)
    assert status(cloud, old).json()["error"] == "code_expired"
    unknown_id = next(i for i in ("AAAAAAAA", "BBBBBBBB") if i != pass_id)
    unknown = status(cloud, current_code(cloud, key, unknown_id))
    assert unknown.status_code == 404
    for body in ({"code": "FFP1:AAAA"}, {"code": "ALICE-001"}, {"code": 5}, {}, []):
        response = cloud.client.post("/pass/v1/status", json=body)
        assert response.status_code == 400, (body, response.text)


def test_a_pass_id_shared_with_another_organisation_is_told_apart_by_the_signature(cloud):
    alice = member(cloud)
    key, pass_id = new_pass(cloud, alice)
    other_org, _gym, _token = cloud.new_org("Other", "Gym")
    other_key, other_public = new_key()
    with cloud.database.write() as tx:  # a collision on purpose: the same id in another org
        tx.run(
            "INSERT INTO passes (organization_id, gym_id, id, member_id, public_key, period_s,"
            " status, created_at, revoked_at, version, deleted, row_hash, updated_at)"
            " VALUES (?, NULL, ?, 'm1', ?, 30, 'REVOKED', ?, ?, 1, FALSE, 1, ?)",
            (other_org, pass_id, other_public, "x", "x", "x"),
        )
    ours = status(cloud, current_code(cloud, key, pass_id))
    assert ours.json()["status"] == "ACTIVE"
    step = step_at(cloud.clock().timestamp(), 30)
    theirs = status(cloud, pass_payload(other_key, other_org, pass_id, step))
    assert theirs.json() == {
        "pass_id": pass_id,
        "status": "REVOKED",
        "period_s": 30,
        "server_time": "2026-05-01T12:00:00.000000Z",
    }


# -- the organisation's settings -------------------------------------------------------------------


def test_pass_settings_are_validated_and_apply_to_new_passes(cloud):
    org = cloud.ok("GET", "/organization")
    assert (org["pass_period_s"], org["max_live_passes"]) == (15, 2)
    alice = member(cloud)
    _key, before = new_pass(cloud, alice)
    version = cloud.ok("GET", "/organization")["version"]
    changed = cloud.ok("PATCH", "/organization", json={"pass_period_s": 30})
    assert (changed["pass_period_s"], changed["max_live_passes"]) == (30, 2)
    assert changed["version"] == version  # settings are no replica row: no version for doors
    both = cloud.ok("PATCH", "/organization", json={"pass_period_s": 5, "max_live_passes": 10})
    assert (both["pass_period_s"], both["max_live_passes"]) == (5, 10)
    for body, field in (
        ({"pass_period_s": 4}, "pass_period_s"),
        ({"pass_period_s": 301}, "pass_period_s"),
        ({"pass_period_s": None}, "pass_period_s"),
        ({"pass_period_s": 2.5}, "pass_period_s"),
        ({"max_live_passes": 0}, "max_live_passes"),
        ({"max_live_passes": 11}, "max_live_passes"),
        ({"max_live_passes": "many"}, "max_live_passes"),
        ({"name": "Renamed"}, "name"),
    ):
        response = cloud.admin("PATCH", "/organization", json=body)
        assert response.status_code == 422, (body, response.text)
        assert [f["field"] for f in response.json()["fields"]] == [field]
    assert cloud.ok("GET", "/organization")["pass_period_s"] == 5
    key, after = new_pass(cloud, alice)
    periods = {p["id"]: p["period_s"] for p in cloud.ok("GET", f"/members/{alice}/passes")["items"]}
    assert periods == {before: 15, after: 5}
    answer = status(cloud, current_code(cloud, key, after, period=5))
    assert answer.json()["period_s"] == 5
    _org, _gym, other_token = cloud.new_org("Other", "Gym")
    assert cloud.ok("GET", "/organization", token=other_token)["pass_period_s"] == 15


# -- guessing --------------------------------------------------------------------------------------


def test_failed_attempts_are_throttled_per_client_address(cloud):
    alice = member(cloud)
    mallory = cloud.open_client(client=("203.0.113.9", 40000))
    for n in range(api_pass.ATTEMPT_BUDGET):
        # Unknown codes (410) and bad keys (400) alike spend an attempt.
        wrong = activate(cloud, "A" * 16, new_key()[1] if n % 2 else "x", mallory)
        assert wrong.status_code == (410 if n % 2 else 400)
    blocked = activate(cloud, "A" * 16, new_key()[1], mallory)
    assert blocked.status_code == 429
    assert blocked.json()["error"] == "too_many_attempts"
    assert blocked.headers["Retry-After"] == str(int(api_pass.ATTEMPT_REFILL_S))
    assert blocked.headers["Cache-Control"] == "no-store"
    # Even a valid code waits: the throttle answers before the body is read.
    code = activation(cloud, alice)["code"]
    assert activate(cloud, code, new_key()[1], mallory).status_code == 429
    assert status(cloud, "FFP1:x", mallory).status_code == 429
    # Another address is not affected, and successes never spend.
    assert status(cloud, "FFP1:" + "A" * 117).status_code == 404
    key, pass_id = new_pass(cloud, alice)
    for _ in range(api_pass.ATTEMPT_BUDGET + 5):
        assert status(cloud, current_code(cloud, key, pass_id)).status_code == 200
    # One refill period later one more attempt is allowed, then none again.
    cloud.clock.advance(api_pass.ATTEMPT_REFILL_S)
    assert activate(cloud, code, new_key()[1], mallory).status_code == 201
    assert activate(cloud, code, new_key()[1], mallory).status_code == 410
    assert activate(cloud, code, new_key()[1], mallory).status_code == 429
    mallory.close()


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        # (time, action) with action "spend" or "ask"; expected: what each "ask" answers.
        ([(0, "ask")], [None]),
        ([(0, "spend")] * 3 + [(0, "ask")], [None]),
        ([(0, "spend")] * 4 + [(0, "ask")], [6]),
        ([(0, "spend")] * 4 + [(3, "ask")], [3]),
        ([(0, "spend")] * 4 + [(6, "ask")], [None]),
        ([(0, "spend")] * 4 + [(600, "spend"), (600, "ask")], [None]),
        # A clock stepping back refills nothing.
        ([(100, "spend")] * 4 + [(50, "ask")], [6]),
    ],
)
def test_the_attempt_budget_is_a_token_bucket(events, expected):
    budget = api_pass.AttemptBudget(capacity=4, refill_s=6.0)
    answers = []
    for when, action in events:
        if action == "spend":
            budget.spend("a", when)
        else:
            answers.append(budget.retry_after("a", when))
    assert answers == expected
    assert budget.retry_after("b", 0) is None


def test_the_attempt_budget_forgets_the_least_recent_clients():
    budget = api_pass.AttemptBudget(capacity=1, refill_s=60.0, max_clients=2)
    for client in ("a", "b", "c"):
        budget.spend(client, 0)
    assert budget.retry_after("a", 0) is None  # forgotten: starts full again
    assert budget.retry_after("b", 0) == 60
    assert budget.retry_after("c", 0) == 60


HOSTILE_BODIES = [
    b"[" * 50_000,
    b"NaN",
    b'{"code": Infinity, "public_key": -Infinity}',
    b"\xff\xfe",
    b"",
    b"1e999999",
    b'{"code": {"a": [1]}, "public_key": null}',
    b'{"code": "\\u0000\\u202e", "public_key": "\\u0000"}',
    b'{"code": "FFP1:\\u0000"}',
    b'{"code": "%s"}' % (b"x" * 3000),
    b'{"code": "FFP1:' + b"7" * 117 + b'"}',
    b'{"code": "FFP1:' + b"A" * 116 + b'B"}',
]


def test_hostile_bodies_never_get_a_5xx(cloud):
    client = cloud.open_client(raise_server_exceptions=False)
    for path in ("/pass/v1/activate", "/pass/v1/status"):
        for raw in HOSTILE_BODIES:
            cloud.app.state.pass_attempts = api_pass.AttemptBudget()
            response = client.post(path, content=raw, headers={"Content-Type": "application/json"})
            assert 400 <= response.status_code < 500, (path, raw[:60], response.text)


def test_activation_codes_are_never_logged(cloud, caplog):
    caplog.set_level(logging.DEBUG)
    alice = member(cloud)
    made = activation(cloud, alice)
    activate(cloud, made["code"], new_key()[1])
    activate(cloud, made["code"], new_key()[1])
    request = passes.parse_activate_request({"code": made["code"], "public_key": new_key()[1]})
    assert made["code"] not in repr(request)
    assert made["code"] not in caplog.text


# -- printable cards -------------------------------------------------------------------------------


def _parse_svg(text: str) -> ET.Element:
    return ET.fromstring(text)  # noqa: S314 - the cloud's own card, made by the test


def _decode(image: np.ndarray) -> list[str]:
    return [r.text for r in zxingcpp.read_barcodes(image)]


def _svg_symbol(svg: str) -> np.ndarray:
    """The QR drawn by a card's SVG, rasterised from its path (each ``M x y h w v1 h-w z`` is a
    run of dark modules), 8 pixels a module."""
    root = _parse_svg(svg)
    ns = {"s": "http://www.w3.org/2000/svg"}
    group = root.find("s:g[@id='qr']", ns)
    assert group is not None
    side = int(group.find("s:rect", ns).get("width"))
    path = group.find("s:path", ns).get("d")
    grid = np.full((side, side), 255, np.uint8)
    for x, y, w in re.findall(r"M(\d+) (\d+)h(\d+)v1h-\3z", path):
        grid[int(y), int(x) : int(x) + int(w)] = 0
    assert len(re.findall(r"M", path)) == len(re.findall(r"M(\d+) (\d+)h(\d+)v1h-\3z", path))
    return cv2.resize(grid, (side * 8, side * 8), interpolation=cv2.INTER_NEAREST)


def test_a_members_card_as_svg_and_png_reads_back_its_code(cloud):
    alice = member(cloud, "ALICE-0001", first_name="Zoë <&>", last_name='O"Brien')
    response = cloud.admin("GET", f"/members/{alice}/card.svg", params={"gym_id": cloud.gym_id})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("image/svg+xml")
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "default-src 'none'" in response.headers["Content-Security-Policy"]
    svg = response.text
    root = _parse_svg(svg)  # well-formed, names escaped
    assert (root.get("width"), root.get("height")) == ("85.6mm", "54mm")
    texts = {
        t.get("id") or t.get("class"): t.text for t in root.iter("{http://www.w3.org/2000/svg}text")
    }
    assert texts == {
        "code": "ALICE-0001",
        "organization": "Acme",
        "gym": "Main",
        "first_name": "Zoë <&>",
        "last_name": 'O"Brien',
    }
    assert _decode(_svg_symbol(svg)) == ["ALICE-0001"]

    png = cloud.admin("GET", f"/members/{alice}/card.png")
    assert png.status_code == 200
    assert png.headers["content-type"] == "image/png"
    image = cv2.imdecode(np.frombuffer(png.content, np.uint8), cv2.IMREAD_GRAYSCALE)
    assert image is not None and image.shape[0] == image.shape[1]
    assert _decode(image) == ["ALICE-0001"]

    nocard = member(cloud)
    for suffix in ("svg", "png"):
        missing = cloud.admin("GET", f"/members/{nocard}/card.{suffix}")
        assert missing.status_code == 404
        assert "no card code" in missing.json()["detail"]
        assert cloud.admin("GET", f"/members/mbr_nobody/card.{suffix}").status_code == 404
    assert (
        cloud.admin("GET", f"/members/{alice}/card.svg", params={"gym_id": "gym_nope"}).status_code
        == 404
    )


def test_long_codes_and_names_still_fit_the_card():
    code = "A" * 20 + "-" + "b" * 43  # the longest card code there is: 64 characters
    svg = cards.card_svg(
        code, first_name="Annabelle-Marguerite", last_name="x" * 200, organization_name="Acme"
    )
    root = _parse_svg(svg)
    texts = list(root.iter("{http://www.w3.org/2000/svg}text"))
    assert "".join(t.text for t in texts if t.get("class") == "code") == code
    squeezed = next(t for t in texts if t.get("id") == "last_name")
    assert squeezed.get("textLength") == "376"
    assert _decode(_svg_symbol(svg)) == [code]


def test_purge_drops_activation_codes_long_expired(cloud):
    alice = member(cloud)
    old = activation(cloud, alice, ttl_minutes=60)["code"]
    cloud.clock.advance(2 * 86400)
    recent = activation(cloud, alice, ttl_minutes=60)["code"]
    admin.purge(cloud.database, 1, cloud.clock())
    with cloud.database.read() as tx:
        kept = [r["code_hash"] for r in tx.all("SELECT code_hash FROM pass_activations")]
    assert kept == [passes.activation_code_hash(recent)]
    assert passes.activation_code_hash(old) not in kept
    assert activate(cloud, recent, new_key()[1]).status_code == 201
