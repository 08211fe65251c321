"""The owner page over HTTP (Starlette TestClient): views, their JSON twins, the live fragment,
monitoring, actions, the diagnostics bundle, and the door database missing or read-only.

Security (sessions, CSRF, throttling, headers) is in test_web_security.py, which reuses ``Site``.
Every test runs on a temporary database made with ``Store.open``, a control file next to it, a
fake clock and injected system figures; nothing sleeps and nothing listens on a port.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import stat
import tempfile
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from starlette.testclient import TestClient

from kiosk.config import load_config
from kiosk.core.model import ClockQuality, Decision, Member, MemberStatus, Now, Reason, Verdict
from kiosk.data.control import ControlStore, RequestKind, RequestState, control_path
from kiosk.data.dbfile import quick_check_file
from kiosk.data.replica import ReplicaSnapshot
from kiosk.data.store import Store
from kiosk.ops.owner_password import (
    ScryptParams,
    hash_password,
    save_password_hash,
    verify_password,
)
from kiosk.web.app import create_app
from kiosk.web.device_health import SysFacts
from kiosk.web.sources import read_door
from kiosk.web.views import NOT_PICKED_UP
from sync.protocol import Anchor, utc_text

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

T0 = datetime(2026, 5, 4, 9, 0, tzinfo=UTC)  # a Monday, 11:00 in Berlin
PASSWORD = "correct horse battery"  # noqa: S105 (a test password)
FAST = ScryptParams(log2_n=10)  # the real scrypt, cheap enough for hundreds of logins in a test
ZEBEDEE = Member("m-zebedee-7f3a", "org-1", "Zebedee", "Quux", MemberStatus.ACTIVE)
ALICE = Member("m-alice-91c2", "org-1", "Alice", "Smith", MemberStatus.PAUSED)
GOOD_SYS = SysFacts(cpu_temp_c=48.5, throttled=0, uptime_s=86400.0, clock_synced=True)


class FakeClock:
    """The kernel's clock: wall (aware UTC) and monotonic time, moved only by ``advance``. Both
    the page's ``WebClock`` and a ``kiosk.core.clock.Clock`` (boot ``boot-1``, NTP-synced unless
    ``quality`` says otherwise), the base of the door's anchored clock."""

    boot_id = "boot-1"

    def __init__(self, wall: datetime = T0, mono: float = 10_000.0) -> None:
        self._wall, self._mono = wall, mono
        self.synced = ClockQuality.NTP_SYNCED

    def wall(self) -> datetime:
        return self._wall

    def monotonic(self) -> float:
        return self._mono

    def monotonic_ns(self) -> int:
        return round(self._mono * 1e9)

    def quality(self) -> ClockQuality:
        return self.synced

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)

    def advance(self, seconds: float) -> None:
        self._wall += timedelta(seconds=seconds)
        self._mono += seconds


class CountingVerify:
    """The real password check, counted (to prove when scrypt does not run)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, password: str, encoded: str) -> bool:
        self.calls += 1
        return verify_password(password, encoded)


def big_disk(_path: Path) -> SimpleNamespace:
    return SimpleNamespace(total=32 * 2**30, used=2 * 2**30, free=30 * 2**30)


def scanner_data(now: datetime, **changes: Any) -> dict[str, Any]:
    """A healthy scanner's report (the control spec's keys), with ``changes``."""
    data = {
        "door_id": "front",
        "state": "scanning",
        "started_at": utc_text(now - timedelta(hours=1)),
        "last_frame_at": utc_text(now - timedelta(milliseconds=30)),
        "frames": 108_000,
        "fps": 29.6,
        "decode_ms_p50": 2.1,
        "decode_ms_p95": 4.4,
        "decode_errors": 0,
        "clock_quality": "ntp_synced",
        "relay_open": False,
        "pulse_ms": 500,
        "last_pulse_at": utc_text(now - timedelta(minutes=2)),
        "last_decision_at": utc_text(now - timedelta(minutes=1)),
        "last_verdict": "denied",
        "last_reason": "passback",
        "decisions": {"subscription": 3, "unknown_code": 1, "passback": 1},
    }
    data.update(changes)
    return data


def seed_database(db: Path, now: datetime) -> None:
    """A replica with Zebedee and Alice, pulled 10 min ago, and three decisions: Zebedee
    admitted (3 min ago), an unknown code (2 min ago), Zebedee refused for passback (1 min ago,
    with his phone pass)."""
    with Store.open(db) as store:
        store.replace_replica(
            ReplicaSnapshot(
                members=[(ZEBEDEE, "hash-zebedee"), (ALICE, "hash-alice")],
                memberships=(),
                plans=(),
                opening_hours=(),
                closures=(),
                version=42,
                synced_at=now - timedelta(minutes=10),
                code_salt=b"salt",
            )
        )
        for minutes, decision, phone in (
            (3, Decision(Verdict.GRANTED, Reason.SUBSCRIPTION, member_id=ZEBEDEE.id), None),
            (2, Decision(Verdict.DENIED, Reason.UNKNOWN_CODE), None),
            (1, Decision(Verdict.DENIED, Reason.PASSBACK, member_id=ZEBEDEE.id), "ZEBPHONE"),
        ):
            append(store, decision, now - timedelta(minutes=minutes), phone)
        store.set_sync_status(
            {
                "state": "running",
                "online": True,
                "last_pull_at": utc_text(now - timedelta(minutes=10)),
                "last_push_at": utc_text(now - timedelta(minutes=5)),
                "last_error": None,
            }
        )


_MONO = [10**9]


def append(store: Store, decision: Decision, at: datetime, phone: str | None = None) -> None:
    _MONO[0] += 10**6
    store.append_checkin(
        decision,
        door_id="front",
        replica_version=42,
        now=Now(at, _MONO[0], "boot-1", ClockQuality.NTP_SYNCED),
        pass_id=phone,
    )


@dataclass
class Site:
    """One owner page on a temporary data folder, with a client."""

    root: Path
    db: Path
    password_file: Path
    clock: FakeClock
    verify: CountingVerify
    app: Any
    client: TestClient

    def control(self) -> ControlStore:
        return ControlStore.open(control_path(self.db))

    def publish(self, **changes: Any) -> None:
        with self.control() as control:
            control.publish_health(
                "scanner", scanner_data(self.clock.wall(), **changes), now=self.clock.wall()
            )

    def login_csrf(self) -> str:
        page = self.client.get("/login")
        assert page.status_code == 200, page.text
        return form_token(page.text)

    def login(self, password: str = PASSWORD) -> Any:
        return self.client.post(
            "/login",
            data={"csrf": self.login_csrf(), "password": password},
            follow_redirects=False,
        )

    def csrf(self) -> str:
        """The signed-in dashboard's token."""
        page = self.client.get("/", follow_redirects=False)
        assert page.status_code == 200, page.text
        return form_token(page.text)

    def post(self, path: str, token: str | None = None, **kwargs: Any) -> Any:
        data = {"other": "x"} if token is None else {"csrf": token}
        return self.client.post(path, data=data, follow_redirects=False, **kwargs)

    def requests(self) -> list:
        with self.control() as control:
            return control.recent_requests(50)

    def audit(self) -> list:
        with self.control() as control:
            return control.recent_audit(500)


def form_token(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, "no CSRF token in the page"
    return match.group(1)


def write_config(root: Path, db: Path, password_file: Path, extra: str = "") -> Path:
    path = root / "kiosk.toml"
    # TestClient sends "Host: testserver": a name the page answers to only when allowed.
    path.write_text(
        f'[door]\nid = "front"\n[site]\ntimezone = "Europe/Berlin"\n'
        f'[store]\npath = "{db}"\n[web]\npassword_file = "{password_file}"\n'
        f'allowed_hosts = "testserver"\n{extra}',
        encoding="utf-8",
    )
    return path


def make_site(
    root: Path,
    *,
    names: str = "first_name",
    password: bool = True,
    seed: bool = True,
    report: bool = True,
    extra: str = "",
    read_sys: Any = None,
    run_logs: Any = None,
    which: Any = None,
    start: datetime = T0,
    **seams: Any,
) -> Site:
    db = root / "data" / "kiosk.db"
    password_file = root / "owner-password"
    clock = FakeClock(start)
    if seed:
        seed_database(db, clock.wall())
    if password:
        save_password_hash(password_file, hash_password(PASSWORD, FAST))
    config = load_config(
        write_config(root, db, password_file, f'names = "{names}"\n{extra}'), env={}
    )
    verify = CountingVerify()
    app = create_app(
        config,
        clock=clock,
        read_sys=read_sys or (lambda: GOOD_SYS),
        verify=verify,
        disk_usage=big_disk,
        run_logs=run_logs or (lambda argv, timeout: (0, "-- Logs begin --\nscanner started\n")),
        which=which or (lambda name: f"/usr/bin/{name}"),
        version="9.9.9",
        kernel_clock=clock,
        **seams,
    )
    site = Site(root, db, password_file, clock, verify, app, TestClient(app))
    if report and seed:
        site.publish()
    return site


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    made = make_site(tmp_path)
    # Opened for the test: one event loop thread for all its requests, as a served page has
    # (unopened, a TestClient starts a thread and a loop for every request: 3 ms of CPU).
    with made.client:
        yield made
    made.app.state.page.close()


@pytest.fixture
def signed_in(site: Site) -> Site:
    assert site.login().status_code == 303
    return site


# -- every route, three states -------------------------------------------------------------------

HTML_VIEWS = ("/",)
API_VIEWS = ("/api/overview", "/api/decisions", "/api/sync", "/api/health", "/api/audit")
ACTIONS = ("/actions/sync-now", "/actions/test-door", "/actions/diagnostics")


def test_without_a_password_every_page_says_setup_is_needed(tmp_path: Path):
    site = make_site(tmp_path, password=False)
    for path in ("/", "/login", "/live"):
        answer = site.client.get(path, follow_redirects=False)
        assert answer.status_code == 503, path
        if path != "/live":
            assert "sudo kiosk web set-password" in answer.text
            assert 'data-testid="setup-needed"' in answer.text
            assert 'name="password"' not in answer.text  # no login form at all
    for path in API_VIEWS:
        answer = site.client.get(path)
        assert (answer.status_code, answer.json()) == (503, {"error": "setup_needed"}), path
    # Login refuses without checking anything; actions too.
    refused = site.client.post("/login", data={"password": PASSWORD, "csrf": "x"})
    assert refused.status_code == 503 and site.verify.calls == 0
    for path in ACTIONS:
        assert site.client.post(path, data={"csrf": "x"}).status_code == 503
    assert site.requests() == []
    # Monitoring still answers, and the stylesheet for the setup page is served.
    assert site.client.get("/healthz").status_code == 200
    assert site.client.get("/metrics").status_code == 200
    assert site.client.get("/static/style.css").status_code == 200


def test_signed_out_html_redirects_to_login_and_json_is_401(site: Site):
    for path in HTML_VIEWS:
        answer = site.client.get(path, follow_redirects=False)
        assert (answer.status_code, answer.headers["location"]) == (303, "/login")
    # The live fragment is fetched by script: a 401 (the script then goes to /login).
    assert site.client.get("/live").status_code == 401
    for path in API_VIEWS:
        answer = site.client.get(path)
        assert (answer.status_code, answer.json()) == (401, {"error": "login_required"}), path
    # An action without a session is refused and nothing is submitted.
    for path in ACTIONS:
        assert site.client.post(path, data={"csrf": "guess"}).status_code == 403
    assert site.requests() == []


def test_signed_in_every_view_answers(signed_in: Site):
    client = signed_in.client
    page = client.get("/")
    assert page.status_code == 200
    for section in ("summary", "day", "door", "decisions", "sync", "health", "actions", "audit"):
        assert f'data-testid="section-{section}"' in page.text
    for button in ("action-sync-now", "action-test-door", "action-diagnostics", "logout"):
        assert f'data-testid="{button}"' in page.text
    live = client.get("/live")
    assert live.status_code == 200 and "<html" not in live.text
    assert live.text.count("data-live") == 7
    for path in API_VIEWS:
        answer = client.get(path)
        assert answer.status_code == 200, path
        assert answer.headers["content-type"].startswith("application/json")
    assert client.get("/login", follow_redirects=False).status_code == 303  # already signed in


# -- what the dashboard shows ---------------------------------------------------------------------


def test_dashboard_shows_door_decisions_sync_health_and_audit(signed_in: Site):
    page = signed_in.client.get("/").text
    rows = re.findall(r'<tr class="row-(\w+)" data-testid="decision-row"', page)
    assert rows == ["denied", "denied", "granted"]  # newest first
    # What each member showed: the passback was Zebedee's phone pass (its id is not shown).
    codes = re.findall(r"<td>(phone pass|card|—)</td>\s*</tr>", page)
    assert codes == ["phone pass", "card", "card"] and "ZEBPHONE" not in page
    assert "Already entered a moment ago (anti-passback)" in page
    assert "Code not known (no member has it)" in page
    assert "Subscription covers today" in page
    assert "Zebedee Q." in page and "Quux" not in page
    assert ZEBEDEE.id not in page
    assert "60 s ago" in page and "10:59:00" in page  # the age and the gym's local time
    assert "Scanning" in page and "closed" in page  # scanner state, relay
    assert "2 members, version 42" in page
    assert 'data-testid="check-camera_fps"' in page and "29.6 frames/s" in page
    assert "badge-ok" in page and ">OK<" in page
    assert re.search(r'data-testid="audit-row" data-action="login" data-outcome="ok"', page)
    assert "Today: <strong>1</strong> admitted, <strong>2</strong> refused" in page


def test_api_twins_carry_the_same_figures(signed_in: Site):
    client = signed_in.client
    decisions = client.get("/api/decisions").json()
    assert [d["reason"] for d in decisions["decisions"]] == [
        "passback",
        "unknown_code",
        "subscription",
    ]
    first = decisions["decisions"][0]
    assert first["name"] == "Zebedee Q." and first["verdict"] == "denied"
    assert first["time"]["age_s"] == 60.0 and first["time"]["at"].endswith("Z")
    assert decisions["decisions"][1]["name"] == "—"  # an unknown code names nobody
    assert [d["credential"] for d in decisions["decisions"]] == ["phone pass", "card", "card"]
    assert decisions["today"] == {"granted": 1, "denied": 2, "total": 3}
    sync = client.get("/api/sync").json()
    assert sync["online"] is True and sync["backlog"] == 3
    assert sync["oldest_pending"]["age_s"] == 180.0
    assert (sync["replica_version"], sync["replica_members"]) == (42, 2)
    assert sync["last_pull"]["age_s"] == 600.0
    health = client.get("/api/health").json()
    assert health["grade"] == "ok", health
    names = [c["name"] for c in health["checks"]]
    for expected in (
        "database", "scanner", "camera_fps", "frame_age", "decode_time", "scanner_uptime",
        "clock", "disk", "cpu_temp", "throttling", "uptime", "sync", "replica", "version",
    ):  # fmt: skip
        assert expected in names
    overview = client.get("/api/overview").json()
    assert overview["door"]["state"] == "scanning" and overview["door"]["relay_open"] is False
    assert overview["door"]["last_decision"]["reason"] == "passback"
    assert overview["decisions"] == decisions["decisions"]
    audit = client.get("/api/audit").json()
    assert audit["audit"][0]["action"] == "login" and audit["audit"][0]["outcome"] == "ok"
    for body in (decisions, sync, health, overview, audit):
        assert ZEBEDEE.id not in json.dumps(body)


@pytest.mark.parametrize(
    ("mode", "shown"),
    [
        ("first_name", "Zebedee Q."),
        ("full", "Zebedee Quux"),
        ("initials", "Z. Q."),
        ("hidden", "member"),
    ],
)
def test_member_names_are_masked_as_configured(tmp_path: Path, mode: str, shown: str):
    site = make_site(tmp_path, names=mode)
    assert site.login().status_code == 303
    names = [d["name"] for d in site.client.get("/api/decisions").json()["decisions"]]
    assert names == [shown, "—", shown]
    page = site.client.get("/").text
    assert f"<td>{shown}</td>" in page
    if mode != "full":
        assert "Quux" not in page
    if mode == "hidden":
        assert "Zebedee" not in page


def test_a_new_check_in_appears_in_the_live_fragment(signed_in: Site):
    before = signed_in.client.get("/live").text
    assert before.count('data-testid="decision-row"') == 3
    with Store.open(signed_in.db) as store:
        append(
            store,
            Decision(Verdict.GRANTED, Reason.STAFF_OVERRIDE, member_id=ALICE.id),
            signed_in.clock.wall(),
        )
    after = signed_in.client.get("/live").text
    assert after.count('data-testid="decision-row"') == 4
    assert "Staff (always admitted)" in after and "Alice S." in after


def test_a_silent_scanner_is_shown_as_not_reporting(signed_in: Site):
    signed_in.clock.advance(60)  # the report is now a minute old
    overview = signed_in.client.get("/api/overview").json()
    assert overview["door"]["state"] == "not_reporting"
    assert overview["door"]["relay_open"] is None
    checks = {c["name"]: c["grade"] for c in overview["health"]["checks"]}
    assert checks["scanner"] == "problem" and overview["health"]["grade"] == "problem"


# -- monitoring ------------------------------------------------------------------------------------


def test_healthz_is_200_when_nothing_is_a_problem_and_503_otherwise(site: Site):
    answer = site.client.get("/healthz")
    assert answer.status_code == 200, answer.json()
    body = answer.json()
    assert body["ok"] is True and set(body) == {"ok", "checks"}
    assert set(body["checks"].values()) <= {"ok", "warning"}
    site.publish(state="camera_stale")
    assert site.client.get("/healthz").status_code == 200  # the answer is up to 1 s old
    site.clock.advance(1.0)
    answer = site.client.get("/healthz")
    assert answer.status_code == 503
    assert answer.json()["ok"] is False and answer.json()["checks"]["camera_fps"] == "problem"


_SAMPLE = re.compile(
    r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?P<labels>([a-zA-Z_][a-zA-Z0-9_]*="([^"\\\n]|\\\\|\\"|\\n)*",?)*)\})? '
    r"(?P<value>[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?|NaN|[+-]Inf)$"
)


def parse_metrics(text: str) -> dict[str, list[tuple[str, float]]]:
    """The exposition text parsed line by line (format 0.0.4): every line is a HELP, a TYPE or a
    sample; each sample's family has HELP and TYPE lines before it."""
    assert text.endswith("\n")
    declared: dict[str, str] = {}
    samples: dict[str, list[tuple[str, float]]] = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name = line.split(" ")[2]
            declared.setdefault(name, "")
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("counter", "gauge", "summary", "histogram", "untyped")
            declared[name] = kind
        else:
            match = _SAMPLE.match(line)
            assert match, f"not a sample line: {line!r}"
            assert declared.get(match["name"]), f"{match['name']} has no TYPE line"
            samples.setdefault(match["name"], []).append(
                (match["labels"] or "", float(match["value"]))
            )
    return samples


def test_metrics_parse_and_carry_the_figures(site: Site):
    site.publish(decisions={"subscription": 3, "passback": 1, 'odd"reason\\x\n': 2})
    answer = site.client.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = parse_metrics(answer.text)
    decisions = dict(samples["fitflow_decisions_total"])
    assert decisions['reason="subscription",verdict="granted"'] == 3
    assert decisions['reason="passback",verdict="denied"'] == 1
    assert decisions['reason="odd\\"reason\\\\x\\n",verdict="unknown"'] == 2  # escaped
    assert samples["fitflow_sync_backlog"] == [("", 3.0)]
    assert samples["fitflow_sync_oldest_pending_age_seconds"] == [("", 180.0)]
    assert samples["fitflow_sync_online"] == [("", 1.0)]
    assert dict(samples["fitflow_decode_seconds"]) == {
        'quantile="0.5"': pytest.approx(0.0021),
        'quantile="0.95"': pytest.approx(0.0044),
    }
    assert samples["fitflow_camera_frame_age_seconds"] == [("", pytest.approx(0.03))]
    assert samples["fitflow_camera_fps"] == [("", 29.6)]
    assert samples["fitflow_replica_version"] == [("", 42.0)]
    assert samples["fitflow_replica_members"] == [("", 2.0)]
    assert samples["fitflow_disk_free_bytes"] == [("", 30.0 * 2**30)]
    assert samples["fitflow_scanner_up"] == [("", 1.0)]
    health = dict(samples["fitflow_health"])
    assert health['check="scanner"'] == 0 and health['check="database"'] == 0


def test_healthz_and_metrics_hold_nothing_personal(site: Site):
    for path in ("/healthz", "/metrics"):
        text = site.client.get(path).text
        for personal in ("Zebedee", "Quux", "Alice", "Smith", ZEBEDEE.id, ALICE.id):
            assert personal not in text, (path, personal)


# -- actions ---------------------------------------------------------------------------------------


def test_sync_now_and_door_test_submit_requests_and_show_a_notice_once(signed_in: Site):
    token = signed_in.csrf()
    answer = signed_in.post("/actions/sync-now", token)
    assert (answer.status_code, answer.headers["location"]) == (303, "/")
    page = signed_in.client.get("/").text
    assert '<p class="notice" role="status" data-testid="notice">Sync requested</p>' in page
    assert 'data-testid="notice"' not in signed_in.client.get("/").text  # one-time
    assert signed_in.post("/actions/test-door", token).status_code == 303
    assert "Door test requested" in signed_in.client.get("/").text
    assert signed_in.post("/actions/test-door", token).status_code == 303  # a double click
    requests = signed_in.requests()
    kinds = sorted((r.kind, r.state) for r in requests)
    assert kinds == [
        (RequestKind.SYNC_NOW, RequestState.PENDING),
        (RequestKind.TEST_DOOR, RequestState.PENDING),
    ]
    audit = [(a.action, a.outcome, a.client) for a in signed_in.audit()]
    assert ("test_door", "requested", "testclient") in audit
    assert ("sync_now", "requested", "testclient") in audit
    # The outcome, once the scanner finishes the request, shows in the audit log.
    with signed_in.control() as control:
        claimed = control.claim(RequestKind.TEST_DOOR, now=signed_in.clock.wall())
        assert claimed is not None
        control.finish(
            claimed.id, ok=True, result="relay pulsed 500 ms", now=signed_in.clock.wall()
        )
    live = signed_in.client.get("/live").text
    assert 'data-action="test_door" data-outcome="done"' in live
    assert "relay pulsed 500 ms" in live


def test_an_action_the_control_file_cannot_take_says_so(signed_in: Site):
    token = signed_in.csrf()
    page = signed_in.app.state.page
    page.control.close()
    control_file = control_path(signed_in.db)
    control_file.unlink()
    control_file.mkdir()  # now it cannot be opened as a database
    assert signed_in.post("/actions/sync-now", token).status_code == 303
    notice = re.search(r'data-testid="notice">([^<]*)<', signed_in.client.get("/").text)
    assert notice and notice.group(1).startswith("Not requested:")


# -- the diagnostics bundle ------------------------------------------------------------------------


def test_diagnostics_bundle_has_five_files_and_nothing_personal(tmp_path: Path):
    calls = []

    def run_logs(argv, timeout):
        calls.append((list(argv), timeout))
        return 0, (
            "May 04 fitflow-scanner[1]: door front: camera picamera2\n"
            "May 04 fitflow-sync[2]: pull failed: https://dev:s3cret@cloud.example/v1 said 500\n"
        )

    site = make_site(
        tmp_path,
        run_logs=run_logs,
        extra='[camera]\nreplay_path = "rtsp://admin:hunter2@10.0.0.5/stream?token=abc123"\n',
    )
    assert site.login().status_code == 303
    answer = site.post("/actions/diagnostics", site.csrf())
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/zip"
    assert re.fullmatch(
        r'attachment; filename="fitflow-diagnostics-front-20260504T090000Z\.zip"',
        answer.headers["content-disposition"],
    )
    bundle = zipfile.ZipFile(io.BytesIO(answer.content))
    assert sorted(bundle.namelist()) == [
        "audit.json", "config.toml", "integrity.txt", "logs.txt", "status.json",
    ]  # fmt: skip
    everything = "".join(bundle.read(name).decode() for name in bundle.namelist())
    for personal in ("Zebedee", "Quux", "Alice", "Smith", ZEBEDEE.id, ALICE.id):
        assert personal not in everything, personal
    status = json.loads(bundle.read("status.json"))
    assert status["status"]["journal"]["pending"] == 3
    assert all("member_id" not in row for row in status["status"]["recent_checkins"])
    assert status["health"]["grade"] == "ok" and status["sync"]["backlog"] == 3
    config = bundle.read("config.toml").decode()
    assert "hunter2" not in config and "abc123" not in config and "admin" not in config
    assert "rtsp://[redacted]@10.0.0.5/stream?token=[redacted]" in config
    assert '[web]\npassword_file = "' in config  # where the hash lives is not a secret
    assert bundle.read("integrity.txt").decode() == "PRAGMA quick_check: ok\n"
    logs = bundle.read("logs.txt").decode()
    assert "camera picamera2" in logs and "s3cret" not in logs
    assert "https://[redacted]@cloud.example/v1" in logs
    ((argv, timeout),) = calls
    assert argv[0] == "journalctl" and "2000" in argv and timeout == 10.0
    audit = json.loads(bundle.read("audit.json"))
    assert audit[0]["action"] == "login"
    assert ("diagnostics", "downloaded") in [(a.action, a.outcome) for a in site.audit()]


def test_diagnostics_says_when_journalctl_is_missing(tmp_path: Path):
    site = make_site(tmp_path, which=lambda name: None)
    assert site.login().status_code == 303
    answer = site.post("/actions/diagnostics", site.csrf())
    logs = zipfile.ZipFile(io.BytesIO(answer.content)).read("logs.txt").decode()
    assert "journalctl not found" in logs


# -- the door database: missing, appearing later, read-only ------------------------------------------


def test_a_missing_database_is_said_in_plain_words_then_picked_up_when_created(tmp_path: Path):
    site = make_site(tmp_path, seed=False)
    assert site.login().status_code == 303
    page = site.client.get("/")
    assert page.status_code == 200
    problem = re.search(r'data-testid="database-problem">([^<]*)<', page.text)
    assert problem and "does not exist yet" in problem.group(1)
    assert "the scanner creates it on its first start" in problem.group(1)
    answer = site.client.get("/api/overview")
    assert answer.status_code == 503 and answer.json()["error"] == "database_unavailable"
    assert site.client.get("/healthz").json()["checks"]["database"] == "problem"
    # The scanner starts and creates (and migrates) the file: the next request reads it.
    seed_database(site.db, site.clock.wall())
    site.publish()
    assert site.client.get("/api/overview").status_code == 200
    assert 'data-testid="database-problem"' not in site.client.get("/").text


@contextlib.contextmanager
def as_another_user() -> Iterator[None]:
    """Run the block without root's power to ignore file modes (the sandbox runs as root); as
    any other user, the modes already apply."""
    if os.geteuid() != 0:
        yield
        return
    os.setegid(65534)
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


@pytest.fixture
def open_folder() -> Iterator[Path]:
    """A temporary folder another user can reach (pytest's are root-only)."""
    folder = Path(tempfile.mkdtemp(prefix="fitflow-web-ro-"))
    folder.chmod(0o755)
    yield folder
    for path in folder.rglob("*"):
        if path.is_dir():
            path.chmod(0o755)
    shutil.rmtree(folder, ignore_errors=True)


def _readonly_site(folder: Path) -> Site:
    site = make_site(folder)
    site.publish()
    data = site.db.parent
    # The scanner stopped: its last close checkpointed the logs and removed -wal and -shm (of the
    # database and of the replica file beside it, with its pointer and writers' lock).
    names = sorted(p.name for p in data.iterdir())
    replica = [n for n in names if re.fullmatch(r"kiosk\.db-replica-[0-9a-f]{32}", n)]
    expected = ["control.sqlite", "kiosk.db", "kiosk.db-replica", "kiosk.db-replica.lock"]
    assert len(replica) == 1 and names == sorted([*expected, *replica])
    site.db.chmod(0o444)
    if os.geteuid() == 0:
        os.chown(site.password_file, 65534, 65534)  # the page's user reads its password file
    return site


def test_a_read_only_database_file_still_serves_the_dashboard(open_folder: Path):
    site = _readonly_site(open_folder)
    (open_folder / "data").chmod(0o777)  # the folder stays writable: SQLite makes its -shm
    assert site.login().status_code == 303
    with as_another_user():
        assert not os.access(site.db, os.W_OK, effective_ids=True)
        page = site.client.get("/")
        assert page.status_code == 200, page.text
        assert page.text.count('data-testid="decision-row"') == 3
        assert site.client.get("/api/sync").json()["backlog"] == 3
    assert stat.S_IMODE(site.db.stat().st_mode) == 0o444
    # A checkpoint by the scanner meanwhile does not break the cached read-only connection.
    site.db.chmod(0o644)
    with Store.open(site.db) as store:
        append(store, Decision(Verdict.DENIED, Reason.MALFORMED_CODE), site.clock.wall())
        store._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    site.db.chmod(0o444)
    with as_another_user():
        assert site.client.get("/").text.count('data-testid="decision-row"') == 4


def test_a_read_only_folder_without_the_scanner_is_explained(open_folder: Path):
    site = _readonly_site(open_folder)
    (open_folder / "data").chmod(0o555)
    assert site.login().status_code == 303
    with as_another_user():
        page = site.client.get("/")
        assert page.status_code == 200
        problem = re.search(r'data-testid="database-problem">([^<]*)<', page.text)
        assert problem, page.text
        assert "start it" in problem.group(1) and "-shm" in problem.group(1)
    # With the scanner running (it holds the file open, so -wal and -shm exist) it reads again.
    (open_folder / "data").chmod(0o755)
    site.db.chmod(0o644)
    with Store.open(site.db) as scanner:
        scanner.last_seq()
        (open_folder / "data").chmod(0o555)
        with as_another_user():
            page = site.client.get("/")
            assert 'data-testid="database-problem"' not in page.text, page.text
            assert page.text.count('data-testid="decision-row"') == 3
        (open_folder / "data").chmod(0o755)


def test_static_files_are_served_cacheable_and_pages_have_no_inline_code(signed_in: Site):
    for path, kind in (("/static/style.css", "text/css"), ("/static/live.js", "javascript")):
        answer = signed_in.client.get(path)
        assert answer.status_code == 200 and kind in answer.headers["content-type"]
        assert answer.headers["cache-control"] == "public, max-age=3600"
    pages = [signed_in.client.get("/").text, signed_in.client.get("/live").text]
    signed_in.client.cookies.clear()
    pages.append(signed_in.client.get("/login").text)
    for html in pages:
        # The CSP allows only same-origin scripts and styles: no inline code or style attributes.
        assert not re.search(r"<script(?![^>]*\bsrc=)", html)
        assert " style=" not in html and "<style" not in html and " on" + "click=" not in html
        assert "http://" not in html and "https://" not in html  # no CDN, no external font
    # The Referrer-Policy header says same-origin; no page overrides it.
    for html in pages:
        assert '<meta name="referrer"' not in html


# -- review fixes: caching, clocks, a silent sync agent, late requests -----------------------------


def test_polls_without_a_commit_read_the_door_database_once(tmp_path: Path):
    reads = []

    def counting_read_door(door, **kwargs):
        reads.append(kwargs["day_start"])
        return read_door(door, **kwargs)

    site = make_site(tmp_path, read_door=counting_read_door)
    assert site.login().status_code == 303
    first = site.client.get("/api/decisions").json()
    site.clock.advance(2.0)
    for path in ("/live", "/api/overview", "/healthz", "/metrics"):
        assert site.client.get(path).status_code == 200, path
    second = site.client.get("/api/decisions").json()
    assert len(reads) == 1  # one read for six polls: nothing was committed
    # The ages still run against now.
    assert second["decisions"][0]["time"]["age_s"] == first["decisions"][0]["time"]["age_s"] + 2
    # A new check-in is seen on the very next poll.
    with Store.open(site.db) as store:
        append(store, Decision(Verdict.DENIED, Reason.UNKNOWN_CODE), site.clock.wall())
    after = site.client.get("/live").text
    assert after.count('data-testid="decision-row"') == 4 and len(reads) == 2
    site.client.get("/api/sync")
    assert len(reads) == 2
    site.clock.advance(6.0)  # the safety net: facts older than a few seconds are read again
    site.client.get("/api/sync")
    assert len(reads) == 3


def test_healthz_and_metrics_bodies_are_reused_for_a_second(tmp_path: Path):
    computed = []

    def read_sys() -> SysFacts:
        computed.append(1)
        return GOOD_SYS

    site = make_site(tmp_path, read_sys=read_sys)
    for path in ("/healthz", "/metrics"):
        computed.clear()
        first = site.client.get(path)
        site.clock.advance(0.9)
        assert site.client.get(path).content == first.content
        assert len(computed) == 1, path
        site.clock.advance(0.1)
        site.client.get(path)
        assert len(computed) == 2, path


def test_diagnostics_integrity_check_does_not_hold_up_the_page(tmp_path: Path):
    started, release = threading.Event(), threading.Event()

    def slow_quick_check(path: Path) -> list[str]:
        started.set()
        release.wait(600)  # set by the test once /healthz answered; bounds a hang only
        return quick_check_file(path)

    site = make_site(tmp_path, quick_check=slow_quick_check)
    assert site.login().status_code == 303
    token = site.csrf()
    answers: dict[str, Any] = {}
    download = threading.Thread(
        target=lambda: answers.update(zip=site.post("/actions/diagnostics", token))
    )
    download.start()
    try:
        assert started.wait(120), "the integrity check never started"
        # A commit meanwhile: /healthz must read the door's database, not a cached answer.
        with Store.open(site.db) as store:
            append(store, Decision(Verdict.DENIED, Reason.UNKNOWN_CODE), site.clock.wall())
        site.clock.advance(2.0)
        monitor = TestClient(site.app)
        probe = threading.Thread(target=lambda: answers.update(healthz=monitor.get("/healthz")))
        probe.start()
        probe.join(120)  # the check is held meanwhile: waiting longer proves nothing else
        assert "healthz" in answers, "/healthz waited for the integrity check"
        assert answers["healthz"].status_code == 200
    finally:
        release.set()
        download.join(120)
    bundle = zipfile.ZipFile(io.BytesIO(answers["zip"].content))
    assert bundle.read("integrity.txt").decode() == "PRAGMA quick_check: ok\n"


def test_door_times_are_aged_by_the_doors_clock_not_the_kernels(tmp_path: Path):
    """The Pi's kernel clock never synced and is 6 h behind; the scanner and the sync agent date
    everything by the cloud's time (their anchored clock). The page must do the same."""
    kernel_now = datetime(2026, 5, 4, 20, 0, tzinfo=UTC)  # Monday 22:00 in Berlin
    cloud_now = kernel_now + timedelta(hours=6)  # Tuesday 04:00 in Berlin
    site = make_site(tmp_path, seed=False, start=kernel_now)
    site.clock.synced = ClockQuality.UNSYNCED
    with Store.open(site.db) as store:
        # Monday 23:30 in Berlin by the door's clock: yesterday for the door.
        append(
            store, Decision(Verdict.DENIED, Reason.UNKNOWN_CODE), cloud_now - timedelta(hours=4.5)
        )
    seed_database(site.db, cloud_now)  # three decisions 3, 2 and 1 min ago (cloud time)
    with Store.open(site.db) as store:
        store.mark_replica_current(synced_at=cloud_now - timedelta(hours=80))
        store.record_anchor(
            Anchor("boot-1", site.clock.monotonic_ns(), cloud_now), recorded_at=kernel_now
        )
    site.publish()  # the scanner's report is on the kernel's clock (control.shared_wall)
    assert site.login().status_code == 303
    overview = site.client.get("/api/overview").json()
    replica = overview["sync"]["replica_synced"]
    assert replica["age_s"] == 80 * 3600.0
    checks = {c["name"]: c for c in overview["health"]["checks"]}
    assert checks["replica"]["grade"] == "problem" and checks["replica"]["figure"] == (
        "pulled 3.3 days ago"
    )
    assert overview["decisions"][0]["time"]["age_s"] == 60.0
    assert overview["sync"]["last_pull"]["age_s"] == 600.0
    assert overview["today"] == {"granted": 1, "denied": 2, "total": 3}  # Tuesday's only
    assert overview["now"] == utc_text(cloud_now)
    # The control file's times stay on the kernel's clock: the report is fresh.
    assert checks["scanner"]["grade"] == "ok" and overview["door"]["state"] == "scanning"
    assert overview["audit"][0]["time"]["age_s"] == 0.0


def test_a_dead_sync_agent_is_not_shown_online(site: Site):
    def agent_wrote(seconds_ago: float) -> None:
        with Store.open(site.db) as store:
            at = site.clock.wall() - timedelta(seconds=seconds_ago)
            store.set_sync_status({"online": True, "updated_at": utc_text(at)})
        site.clock.advance(1.0)  # past the monitoring bodies' second

    assert site.login().status_code == 303
    agent_wrote(30)
    assert site.client.get("/api/sync").json()["online"] is True
    assert parse_metrics(site.client.get("/metrics").text)["fitflow_sync_online"] == [("", 1.0)]
    # 3 x interval_s (30 s) + backoff_max_s (300 s) = 390 s without a word.
    agent_wrote(400)
    sync = site.client.get("/api/sync").json()
    assert sync["online"] is False and sync["state"] == "not_reporting"
    assert sync["state_words"].startswith("not reporting since 10:53")
    assert parse_metrics(site.client.get("/metrics").text)["fitflow_sync_online"] == [("", 0.0)]
    health = {c["name"]: c for c in site.client.get("/api/health").json()["checks"]}
    assert health["sync"]["grade"] == "warning"
    assert health["sync"]["figure"].startswith("sync agent not reporting for")
    page = site.client.get("/").text
    assert 'data-testid="sync-state">offline, not reporting since' in page
    agent_wrote(3700)
    assert site.client.get("/healthz").json()["checks"]["sync"] == "problem"


def test_a_request_nobody_picks_up_says_so(signed_in: Site):
    token = signed_in.csrf()
    assert signed_in.post("/actions/test-door", token).status_code == 303
    requests = signed_in.client.get("/api/audit").json()["requests"]
    assert requests[0]["state_words"] == "pending"
    signed_in.clock.advance(61)  # no scanner claimed it: the file still says pending
    requests = signed_in.client.get("/api/audit").json()["requests"]
    assert requests[0]["state"] == "pending"
    assert requests[0]["state_words"] == NOT_PICKED_UP
    assert NOT_PICKED_UP in signed_in.client.get("/live").text


def test_a_hung_scanners_frame_age_keeps_growing(site: Site):
    site.clock.advance(30)  # the scanner published 30 s ago and has said nothing since
    samples = parse_metrics(site.client.get("/metrics").text)
    assert samples["fitflow_camera_frame_age_seconds"] == [("", pytest.approx(30.03))]
    assert site.client.get("/healthz").json()["checks"]["frame_age"] == "problem"
