"""`kiosk demo`: the real door loop on embedded defaults, as the README's first command runs it."""

from __future__ import annotations

import io
import json
import re
import socket
import sqlite3
import stat
import subprocess
import sys
import threading
from datetime import UTC, datetime

import httpx
import pytest

from devtools.demo import DemoWebError, run_demo
from devtools.seed import AFTER_CLOUD_CHANGE, WHILE_OFFLINE, scenario_with_passes
from e2e_helpers import wait_until
from fakes import clean_env
from kiosk.cli import build_parser
from kiosk.data.control import (
    ControlStore,
    OwnerRequest,
    RequestKind,
    RequestState,
    control_path,
)
from kiosk.ops.owner_password import load_password_hash, verify_password

# --once plays the scenario, then the sync story: Carol admitted after a change made in the cloud,
# Alice admitted while the cloud is down.
# The first round's payloads depend on the time (phone passes); its reasons and length do not.
# A long file: it starts first on a fresh clone (tests/conftest.py orders the files).
pytestmark = pytest.mark.slow

FIRST_ROUND = scenario_with_passes(datetime.now(UTC))
PLAYED = [*FIRST_ROUND, AFTER_CLOUD_CHANGE, *WHILE_OFFLINE]

REQUIRED = {
    "subscription", "class_pack", "unknown_code", "malformed_code", "member_paused",
    "no_valid_membership", "pack_empty", "outside_hours", "passback", "token_replayed",
    "token_expired", "visit_limit",
}  # fmt: skip


class CommitCheckingOut(io.StringIO):
    """Checks, at the moment each decision line is written, that its row is already committed."""

    def __init__(self, db):
        super().__init__()
        self.db = db
        self.checked = 0

    def write(self, text: str) -> int:
        record = json.loads(text)
        if record.get("type") == "decision":
            with sqlite3.connect(self.db) as other:
                row = other.execute("SELECT reason FROM checkins WHERE id = ?", (record["id"],))
                assert row.fetchone() == (record["reason"],)
            self.checked += 1
        return super().write(text)


def test_once_json_plays_the_scenario_and_prints_only_committed_decisions(tmp_path):
    db = tmp_path / "demo.db"
    out = CommitCheckingOut(db)
    assert run_demo(db=db, as_json=True, once=True, out=out) == 0
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    decisions = [r for r in records if r["type"] == "decision"]
    summary = records[-1]
    assert out.checked == len(decisions) == len(PLAYED)
    assert [d["reason"] for d in decisions] == [scan.expect.value for scan in PLAYED]
    assert {d["reason"] for d in decisions} >= REQUIRED
    for d in decisions:
        assert {"id", "decision", "reason", "member", "relay_ms", "credential"} <= d.keys()
        assert (d["relay_ms"] > 0) == (d["decision"] == "granted")
    # Kim's phone pass is admitted; its copies are refused; every card says so.
    by_pass = [d for d in decisions if d["credential"] == "pass"]
    assert [d["reason"] for d in by_pass] == ["subscription", "token_expired", "token_replayed"]
    assert by_pass[0]["member"] == "m-kim" and by_pass[0]["relay_ms"] > 0
    assert {d["credential"] for d in decisions if d["reason"] == "malformed_code"} == {None}
    assert all(
        d["credential"] == "card"
        for d in decisions
        if d not in by_pass and d["reason"] != "malformed_code"
    )
    assert "decision" not in summary
    assert summary["decisions"] == len(PLAYED)
    # Every decision and turnstile event reached the embedded cloud, including those made while
    # it was down.
    events = [r for r in records if r["type"] == "event"]
    assert summary["pending"] == 0 and summary["synced"] == len(PLAYED) + len(events)
    assert summary["scenario_ok"] is True


def test_once_tells_the_sync_story(tmp_path):
    """Pending then synced; a change made in the cloud reaches the door; with the cloud stopped
    the door keeps admitting and the agent catches up when it returns."""
    db = tmp_path / "demo.db"
    out = io.StringIO()
    assert run_demo(db=db, as_json=True, once=True, out=out) == 0
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    kinds = [(r["type"], r.get("event") or r.get("reason")) for r in records]
    syncs = [r for r in records if r["type"] == "sync"]
    assert syncs[0]["ok"] and syncs[0]["pull"] == "snapshot"  # the replica came from the cloud
    first_sync = records.index(syncs[1])
    first_round_rows = [r for r in records[:first_sync] if r["type"] in ("decision", "event")]
    assert len([r for r in first_round_rows if r["type"] == "decision"]) == len(FIRST_ROUND)
    assert syncs[1]["ok"] and syncs[1]["pushed"] == len(first_round_rows)
    assert syncs[1]["pending"] == 0
    change = kinds.index(("cloud", "member_changed"))
    carol = kinds.index(("decision", "subscription"), change)
    assert records[carol]["member"] == "m-carol"
    stopped = kinds.index(("cloud", "stopped"))
    alice = kinds.index(("decision", "subscription"), stopped)
    assert records[alice]["member"] == "m-alice" and records[alice]["relay_ms"] > 0
    offline = next(r for r in records[alice:] if r["type"] == "sync")
    # Alice's grant, its turn of the turnstile and Liam's refusal wait for the cloud (with the
    # exits and Carol's turn made after the last upload).
    assert not offline["ok"] and offline["pending"] >= 3 and "cannot reach" in offline["error"]
    assert syncs[-1]["ok"] and syncs[-1]["pushed"] == offline["pending"]
    assert syncs[-1]["pending"] == 0
    # The cloud holds every decision exactly once.
    with sqlite3.connect(tmp_path / "demo-cloud.db") as cloud:
        cloud_ids = {row[0] for row in cloud.execute("SELECT id FROM checkins")}
    with sqlite3.connect(db) as device:
        device_ids = {row[0] for row in device.execute("SELECT id FROM checkins")}
    assert cloud_ids == device_ids and len(device_ids) == len(PLAYED)


def test_once_plays_the_turnstile(tmp_path):
    """The simulated turnstile turns for every grant but Bob's (annulled; his class goes back to
    the pack in the cloud), Dave tailgates, four people leave, Liam meets his plan's visit limit;
    the cloud holds every event once."""
    db = tmp_path / "demo.db"
    out = io.StringIO()
    assert run_demo(db=db, as_json=True, once=True, out=out) == 0
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    decisions = {r["id"]: r for r in records if r["type"] == "decision"}
    events = [r for r in records if r["type"] == "event"]
    granted = [d for d in decisions.values() if d["decision"] == "granted"]
    by_kind: dict[str, list[dict]] = {}
    for event in events:
        by_kind.setdefault(event["kind"], []).append(event)
    (annulled,) = by_kind["annulled"]
    assert decisions[annulled["checkin"]]["member"] == "m-bob"
    # Every other grant was confirmed by its turn, each once.
    confirmed = [e["checkin"] for e in by_kind["entry"]]
    assert sorted(confirmed) == sorted(d["id"] for d in granted if d["member"] != "m-bob")
    assert len(by_kind["tailgating"]) == 1 and by_kind["tailgating"][0]["checkin"] is None
    assert len(by_kind["exit"]) == 4
    returned = next(r for r in records if r.get("event") == "class_returned")
    assert returned["membership"] == "ms-bob" and returned["remaining_classes"] == 5
    assert [d["member"] for d in decisions.values() if d["reason"] == "visit_limit"] == ["m-liam"]
    summary = records[-1]
    assert summary["annulled"] == 1 and summary["tailgating"] == 1
    # Inside: the confirmed entries and the tailgater, minus the four who left; the peak came
    # before they left.
    assert summary["occupancy"] == len(confirmed) + 1 - 4
    assert summary["occupancy_max"] == summary["occupancy"] + 4 - 1
    with sqlite3.connect(tmp_path / "demo-cloud.db") as cloud:
        cloud_events = sorted(row[0] for row in cloud.execute("SELECT id FROM door_events"))
    assert cloud_events == sorted(e["id"] for e in events)


def test_existing_database_is_reused_not_reseeded(tmp_path):
    db = tmp_path / "demo.db"
    assert run_demo(db=db, as_json=True, once=True, out=io.StringIO()) == 0
    out = io.StringIO()
    assert run_demo(db=db, as_json=True, once=True, out=out) == 0
    summary = json.loads(out.getvalue().splitlines()[-1])
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM checkins").fetchone() == (2 * len(PLAYED),)
    # Everyone who got in minutes ago is now refused by anti-passback: the journal was kept.
    assert summary["reasons"].get("passback", 0) > 1
    assert summary["scenario_ok"] is None


def test_a_real_device_database_is_refused(tmp_path):
    """Demo check-ins must never reach a real journal (they would be uploaded to the cloud)."""
    from datetime import UTC, datetime

    from devtools.demo import DemoError
    from kiosk.core.model import Decision, Now, Reason, Verdict
    from kiosk.data.store import Store

    device = tmp_path / "device.db"
    with Store.open(device) as store:  # a device before its first sync: a journal, no replica
        now = Now(datetime.now(UTC), 1, "boot", "ntp_synced")
        store.append_checkin(Decision(Verdict.DENIED, Reason.UNKNOWN_CODE), door_id="d",
                             replica_version=0, now=now)  # fmt: skip
    synced = tmp_path / "synced.db"
    with Store.open(synced) as store:  # a device with a real replica
        store.replace_replica(demo_snapshot_with_salt(b"real-salt"))
    for db in (device, synced):
        with pytest.raises(DemoError, match="only runs on its own database"):
            run_demo(db=db, as_json=True, once=True, out=io.StringIO())
    with sqlite3.connect(device) as conn:
        assert conn.execute("SELECT COUNT(*) FROM checkins").fetchone() == (1,)


def demo_snapshot_with_salt(salt: bytes):
    from dataclasses import replace
    from datetime import UTC, datetime

    from devtools.seed import demo_snapshot

    return replace(demo_snapshot(datetime.now(UTC), "UTC"), code_salt=salt)


def test_human_output_names_decisions_and_reasons(tmp_path):
    out = io.StringIO()
    assert run_demo(db=None, as_json=False, once=True, out=out) == 0
    text = out.getvalue()
    assert "GRANTED" in text and "subscription" in text and "passback" in text
    assert f"{len(PLAYED)} decisions" in text
    assert "replica snapshot taken" in text and "0 pending upload" in text


def test_cli_demo_once_json_exits_zero():
    result = subprocess.run(
        [sys.executable, "-m", "kiosk", "demo", "--once", "--json"],
        capture_output=True, text=True, timeout=120, check=False, env=clean_env(),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    # First where the owner page is (served for as long as the demo runs), last the summary.
    assert lines[0]["type"] == "web" and set(lines[0]) == {"type", "url", "password"}
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", lines[0]["url"])
    assert lines[-1]["type"] == "summary" and lines[-1]["pending"] == 0
    events = [line for line in lines if line["type"] == "event"]
    assert lines[-1]["synced"] == len(PLAYED) + len(events) and lines[-1]["scenario_ok"] is True
    kinds = {line["type"] for line in lines[1:-1]}
    assert kinds == {"console", "decision", "event", "sync", "cloud"}
    # The front-desk console's address and this run's owner login, among the first lines.
    console = next(line for line in lines[:5] if line["type"] == "console")
    assert set(console) == {"type", "url", "email", "password"}
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/console/", console["url"])
    assert console["email"] == "owner@demo-gym.example" and len(console["password"]) >= 16
    # The outage is told once, by the demo's own sync line: no log warning repeats it.
    assert "WARNING" not in result.stderr, result.stderr


def test_the_door_loop_never_touches_the_network(monkeypatch):
    """The whole door path (decode, decide, journal, relay) runs with IP networking forbidden."""
    import socket

    attempts = []
    real_connect, real_sendto = socket.socket.connect, socket.socket.sendto

    def no_ip(method):
        def guarded(self, *args):
            if self.family in (socket.AF_INET, socket.AF_INET6):
                attempts.append(args)
                raise OSError("network access from the door loop")
            return method(self, *args)

        return guarded

    def no_dns(*args, **kwargs):
        attempts.append(args)
        raise OSError("name lookup from the door loop")

    monkeypatch.setattr(socket.socket, "connect", no_ip(real_connect))
    monkeypatch.setattr(socket.socket, "sendto", no_ip(real_sendto))
    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    out = io.StringIO()
    # The door alone (no embedded cloud, whose agent does talk to 127.0.0.1).
    assert run_demo(db=None, as_json=True, once=True, out=out, cloud=False) == 0
    assert json.loads(out.getvalue().splitlines()[-1])["scenario_ok"] is True
    assert attempts == []


def test_once_leaves_the_scanner_health_in_the_control_file(tmp_path):
    db = tmp_path / "demo.db"
    assert run_demo(db=db, as_json=True, once=True, out=io.StringIO()) == 0
    with ControlStore.open(control_path(db)) as control:
        health = control.health("scanner")
    assert health.data["door_id"] == "demo-door" and health.data["state"] == "stopped"
    assert health.data["frames"] > 0 and health.data["decode_ms_p50"] is not None


def request_by_id(control: ControlStore, request_id: int) -> OwnerRequest | None:
    """Request ``request_id`` as ``recent_requests`` lists it, or None."""
    return next((r for r in control.recent_requests(10_000) if r.id == request_id), None)


def test_the_running_demo_answers_test_the_door_and_sync_now(tmp_path):
    """What the owner page does in the demo: click "test the door" and "sync now" from another
    connection to the control file, and see both answered."""
    db = tmp_path / "demo.db"
    stop = threading.Event()
    started: list = []
    out = io.StringIO()
    demo = threading.Thread(
        target=run_demo,
        kwargs={"db": db, "as_json": True, "once": False, "out": out, "stop": stop,
                "on_start": started.append},
    )  # fmt: skip
    demo.start()
    try:
        wait_until(lambda: started, 60, "the demo to start")
        assert started[0].control is not None
        assert started[0].config.store.path == str(db)
        with ControlStore.open(control_path(db)) as page:
            now = datetime.now(UTC)
            door_test = page.submit(RequestKind.TEST_DOOR, now=now, client="127.0.0.1")
            sync_now = page.submit(RequestKind.SYNC_NOW, now=now, client="127.0.0.1")

            def finished():
                got = [request_by_id(page, r.id) for r in (door_test, sync_now)]
                return got if all(r.finished_at for r in got) else None

            door_done, sync_done = wait_until(finished, 120, "both requests to be answered")
            assert door_done.state is RequestState.DONE
            assert door_done.result.startswith("relay pulsed for")
            assert sync_done.state is RequestState.DONE
            assert sync_done.result.startswith("synced: uploaded")
            assert page.health("scanner").data["state"] in ("scanning", "camera_stale")
    finally:
        stop.set()
        demo.join(120)
    assert not demo.is_alive()
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    syncs = [r for r in records if r["type"] == "sync"]
    assert syncs and all(s["ok"] for s in syncs)  # the asked-for cycle was printed too
    # The door test was printed once, when the door loop had answered it.
    assert [r for r in records if r["type"] == "door_test"] == [
        {"type": "door_test", "id": door_test.id, "ok": True, "result": door_done.result}
    ]


WEB_LINE = re.compile(r"owner page: (http://127\.0\.0\.1:\d+/)  \(password: (\S+)\)")


def test_the_demo_serves_the_owner_page_with_a_password_of_its_own(tmp_path):
    """The first line says where the page is and its password for this run; the page answers
    while the demo runs (that password signs in) and is gone when it ends."""
    db = tmp_path / "demo.db"
    out = io.StringIO()
    seen: dict = {}

    def visit(runtime) -> None:
        match = WEB_LINE.fullmatch(out.getvalue().splitlines()[0])
        assert match is not None, out.getvalue()
        url, password = match.groups()
        with httpx.Client(base_url=url, timeout=30) as browser:
            login = browser.get("/login")
            csrf = re.search(r'name="csrf" value="([^"]+)"', login.text).group(1)
            signed_in = browser.post(
                "/login", data={"csrf": csrf, "password": password}, headers={"Origin": url[:-1]}
            )
            seen["login"] = (login.status_code, signed_in.status_code, signed_in.headers)
            seen["overview"] = browser.get("/api/overview").json()
        seen["url"], seen["password"] = url, password

    assert run_demo(db=db, as_json=False, once=True, out=out, web_port=0, on_start=visit) == 0
    assert seen["login"][:2] == (200, 303) and seen["login"][2]["location"] == "/"
    assert seen["overview"]["door"]["door_id"] == "demo-door"
    # The salted hash, not the password, is kept beside the demo database, readable by us only.
    password_file = tmp_path / "demo-owner-password"
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
    assert seen["password"] not in password_file.read_text()
    assert verify_password(seen["password"], load_password_hash(password_file))
    # The rest of the output keeps its shape: the usual lines, then the summary.
    assert out.getvalue().splitlines()[1].startswith("cloud:   reference cloud at")
    assert f"{len(PLAYED)} decisions" in out.getvalue()
    with pytest.raises(httpx.TransportError):  # stopped with the demo
        httpx.get(seen["url"] + "healthz", timeout=5)
    # Another run, another password; the old one no longer signs in.
    again = io.StringIO()
    assert run_demo(db=db, as_json=True, once=True, out=again, web_port=0, cloud=False) == 0
    first = json.loads(again.getvalue().splitlines()[0])
    assert first["type"] == "web" and first["password"] != seen["password"]
    assert not verify_password(seen["password"], load_password_hash(password_file))


def test_a_taken_web_port_is_reported_before_the_door_starts(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = io.StringIO()
        with pytest.raises(DemoWebError, match=f"cannot listen on 127.0.0.1:{port}.*--web-port"):
            run_demo(db=tmp_path / "demo.db", as_json=True, once=True, out=out, web_port=port)
        assert out.getvalue() == ""  # nothing ran
        result = subprocess.run(
            [sys.executable, "-m", "kiosk", "demo", "--once", "--no-cloud", "--web-port",
             str(port)],
            capture_output=True, text=True, timeout=120, check=False, env=clean_env(),
        )  # fmt: skip
    assert result.returncode == 1 and result.stdout == ""
    assert f"demo: the owner page cannot listen on 127.0.0.1:{port}" in result.stderr


def test_web_options_parse():
    parse = build_parser().parse_args
    assert parse(["demo"]).web_port is None and not parse(["demo"]).no_web
    assert parse(["demo", "--web-port", "8081"]).web_port == 8081
    assert parse(["demo", "--no-web"]).no_web
    for wrong in (["--web-port", "0"], ["--web-port", "http"], ["--no-web", "--web-port", "1"]):
        with pytest.raises(SystemExit):
            parse(["demo", *wrong])


def test_a_demo_piped_into_head_ends_quietly_when_the_pipe_closes():
    """`kiosk demo | head -1`: the reader takes one line and goes; the demo (door, sync thread,
    embedded cloud) ends at its next write, without a traceback, with 141 (128 + SIGPIPE)."""
    demo = subprocess.Popen([sys.executable, "-m", "kiosk", "demo", "--no-web"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=clean_env())  # fmt: skip
    try:
        assert demo.stdout.readline().startswith("cloud:")
        demo.stdout.close()
        _, err = demo.communicate(timeout=120)
        assert demo.returncode == 141
    finally:
        demo.kill()
        demo.wait()
    assert "Traceback" not in err and "BrokenPipeError" not in err, err


def test_the_console_login_signs_in_and_a_second_run_gets_a_new_password(tmp_path):
    """The printed owner login works in the console, and a reused database's owner gets this
    run's password (the previous one no longer signs in)."""
    import httpx

    from devtools.demo_cloud import DemoCloud
    from kiosk.core.clock import SimClock

    def signs_in(base: str, email: str, password: str) -> bool:
        with httpx.Client(base_url=base) as client:
            page = client.get("/console/login")
            token = re.search(r'name="csrf" value="([^"]+)"', page.text)
            form = {"email": email, "password": password}
            if token:
                form["csrf"] = token.group(1)
            client.post("/console/login", data=form, headers={"Origin": base})
            return client.get("/console/").status_code == 200

    db = tmp_path / "demo.db"
    logins = []
    for _ in range(2):
        demo_cloud = DemoCloud(db, SimClock(), "UTC")
        try:
            demo_cloud.start()
            url, email, password = demo_cloud.console_login()
            base = url.removesuffix("/console/")
            logins.append(password)
            assert signs_in(base, email, password)
            if len(logins) == 2:
                assert not signs_in(base, email, logins[0])
        finally:
            demo_cloud.close()
    assert logins[0] != logins[1]
