"""The ``cloud`` commands and the embedded cloud, on SQLite and PostgreSQL."""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from cloud import cli, migrations, serve
from cloud.db import Database
from cloud.embedded import EmbeddedCloud
from pg import (
    cloud_db_url_fixture,  # noqa: F401
    pg_server_fixture,  # noqa: F401
)
from sync.protocol import PROTOCOL_VERSION, is_loopback

ROOT = Path(__file__).resolve().parents[1]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_init_then_enrolment_code_then_a_device_enrols(cloud_db_url, capsys):
    code, out, err = run(
        capsys, "init", "--db", cloud_db_url, "--org", "Acme", "--gym", "Main", "--json"
    )
    assert code == 0, err
    made = json.loads(out)
    assert made["admin_token"].startswith("ffa_")

    code, out, err = run(
        capsys, "enrolment-code", "--db", cloud_db_url, "--gym", made["gym_id"], "--json"
    )
    assert code == 0, err
    enrolment = json.loads(out)
    assert enrolment["gym_id"] == made["gym_id"]

    code, out, _ = run(
        capsys, "admin-token", "--db", cloud_db_url, "--org", made["organization_id"]
    )
    assert code == 0
    second_token = out.split()[1]

    with EmbeddedCloud(cloud_db_url) as cloud:
        assert cloud.url.startswith("http://127.0.0.1:")
        with httpx.Client(base_url=cloud.url, timeout=10) as http:
            assert http.get("/healthz").json() == {"ok": True}
            enrolled = http.post(
                "/v1/enrol",
                json={"code": enrolment["code"]},
                headers={"FitFlow-Protocol": str(PROTOCOL_VERSION)},
            )
            assert enrolled.status_code == 201
            assert enrolled.json()["organization_id"] == made["organization_id"]
            for token in (made["admin_token"], second_token):
                devices = http.get(
                    "/admin/v1/devices", headers={"Authorization": f"Bearer {token}"}
                )
                assert [d["id"] for d in devices.json()["items"]] == [enrolled.json()["device_id"]]
        port = cloud.port
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_init_prints_the_token_once_in_plain_text(cloud_db_url, capsys):
    code, out, _ = run(capsys, "init", "--db", cloud_db_url, "--org", "Acme", "--gym", "Main")
    assert code == 0
    assert "admin_token:" in out and "shown only this once" in out


def test_migrate_is_idempotent(cloud_db_url, capsys):
    code, out, _ = run(capsys, "migrate", "--db", cloud_db_url)
    assert code == 0
    assert f"schema at migration {migrations.LATEST_VERSION}" in out
    code, out, _ = run(capsys, "migrate", "--db", cloud_db_url)
    assert code == 0 and "applied now: none" in out


def test_a_database_newer_than_the_code_is_refused(cloud_db_url, capsys):
    assert run(capsys, "migrate", "--db", cloud_db_url)[0] == 0
    database = Database(cloud_db_url)
    with database.write() as tx:
        tx.run(
            "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
            (99, "from the future", "2030-01-01T00:00:00.000000Z"),
        )
    database.close()
    code, _, err = run(capsys, "migrate", "--db", cloud_db_url)
    assert code == 3
    assert "newer than this service knows" in err


def test_usage_and_configuration_errors_exit_2(cloud_db_url, capsys, monkeypatch):
    monkeypatch.delenv(cli.DB_ENV, raising=False)
    assert run(capsys, "migrate")[0] == 2
    code, _, err = run(capsys, "migrate", "--db", "mysql://localhost/x")
    assert code == 2 and "unsupported database URL scheme" in err
    code, _, err = run(capsys, "admin-token", "--db", cloud_db_url, "--org", "org_nope")
    assert code == 2 and "no organisation org_nope" in err
    code, _, err = run(capsys, "enrolment-code", "--db", cloud_db_url, "--gym", "gym_nope")
    assert code == 2 and "no gym gym_nope" in err
    code, _, err = run(
        capsys,
        "init",
        "--db",
        cloud_db_url,
        "--org",
        "A",
        "--gym",
        "B",
        "--timezone",
        "Nowhere/Town",
    )
    assert code == 2 and "timezone" in err
    with pytest.raises(SystemExit) as usage:
        cli.main(["init", "--db", cloud_db_url])
    assert usage.value.code == 2


def test_the_database_can_come_from_the_environment(cloud_db_url, capsys, monkeypatch):
    monkeypatch.setenv(cli.DB_ENV, cloud_db_url)
    assert run(capsys, "migrate")[0] == 0


def test_an_unreachable_database_exits_3(capsys, tmp_path):
    code, _, err = run(capsys, "migrate", "--db", "postgresql://nobody@127.0.0.1:1/none")
    assert code == 3
    assert "database error" in err
    code, _, err = run(capsys, "migrate", "--db", str(tmp_path / "missing-dir" / "cloud.db"))
    assert code == 3 and "does not exist" in err
    damaged = tmp_path / "damaged.db"
    damaged.write_bytes(b"this is not a database" * 100)
    assert run(capsys, "migrate", "--db", f"sqlite:///{damaged}")[0] == 3


def test_serve_warns_when_bound_beyond_loopback(tmp_path, capsys, monkeypatch):
    served = []
    monkeypatch.setattr(serve, "serve", lambda url, **kw: served.append(kw) or 0)
    url = f"sqlite:///{tmp_path / 'c.db'}"
    assert run(capsys, "serve", "--db", url)[0] == 0
    assert served[-1]["host"] == "127.0.0.1" and served[-1]["port"] == 8080
    assert served[-1]["workers"] == 1
    assert "warning" not in capsys.readouterr().err
    code = cli.main(["serve", "--db", url, "--host", "0.0.0.0", "--port", "9000"])  # noqa: S104
    assert code == 0
    assert "TLS" in capsys.readouterr().err
    assert is_loopback("::1") and is_loopback("localhost") and is_loopback("127.0.0.2")
    assert not (is_loopback("192.168.1.10") or is_loopback(None) or is_loopback("cloud.example"))


def test_register_adds_the_cloud_tree_to_another_cli(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="kiosk")
    cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["cloud", "migrate", "--db", str(tmp_path / "c.db")])
    assert args.func(args) == 0
    assert f"schema at migration {migrations.LATEST_VERSION}" in capsys.readouterr().out
    # A leading "cloud" is accepted by the module's own entry point too.
    assert cli.main(["cloud", "migrate", "--db", str(tmp_path / "c.db")]) == 0


def test_python_dash_m_entry_point(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != cli.DB_ENV}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "cloud.cli",
            "init",
            "--db",
            str(tmp_path / "c.db"),
            "--org",
            "Acme",
            "--gym",
            "Main",
            "--json",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["admin_token"].startswith("ffa_")


def test_embedded_cloud_refuses_a_second_start_and_stops_twice(tmp_path):
    cloud = EmbeddedCloud(f"sqlite:///{tmp_path / 'c.db'}")
    url = cloud.start()
    try:
        assert httpx.get(f"{url}/healthz", timeout=10).json() == {"ok": True}
        with pytest.raises(RuntimeError):
            cloud.start()
    finally:
        cloud.stop()
    cloud.stop()


# -- serving with several workers ------------------------------------------------------------------


def test_serve_refuses_several_workers_on_sqlite_and_says_why(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'c.db'}"
    code, _, err = run(capsys, "serve", "--db", url, "--workers", "2")
    assert code == 2
    assert "--workers 2 needs PostgreSQL" in err and "one writer at a time" in err
    code, _, err = run(capsys, "serve", "--db", url, "--workers", "0")
    assert code == 2 and "at least 1" in err
    assert not (tmp_path / "c.db").exists()  # refused before anything was touched


def test_a_port_that_is_taken_is_a_clear_error(tmp_path, capsys):
    taken = serve.listen("127.0.0.1", 0)
    try:
        port = taken.getsockname()[1]
        url = f"sqlite:///{tmp_path / 'c.db'}"
        code, _, err = run(capsys, "serve", "--db", url, "--port", str(port))
    finally:
        taken.close()
    assert code == 2 and f"cannot listen on 127.0.0.1:{port}" in err


def test_the_listening_socket_names_tcp_so_connections_turn_nagle_off():
    """asyncio sets TCP_NODELAY only on connections of a socket made with IPPROTO_TCP; uvicorn's
    own --workers socket is made without it and every small answer waits ~40 ms for the client's
    delayed ACK. The embedded cloud's connections (tests/test_sync_e2e.py) and every worker's
    share this socket."""
    sock = serve.listen("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP and sock.get_inheritable()
    finally:
        sock.close()


def _children(pid: int) -> dict[int, str]:
    """{pid: command line} of a process's children (Linux /proc)."""
    found = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ")
            found[int(child)] = cmdline.decode(errors="replace")
    return found


def _workers(pid: int) -> set[int]:
    """The worker processes of a `serve --workers N` parent (multiprocessing's resource tracker
    is its child too, and is not a worker)."""
    return {
        child
        for child, cmdline in _children(pid).items()
        if "spawn_main" in cmdline and "resource_tracker" not in cmdline
    }


def _until(condition, what: str, timeout_s: float = 60.0):
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
    return value


def test_several_workers_serve_one_postgresql_database_and_are_kept_running(pg_server, tmp_path):
    from pg import drop_pg_database, fresh_pg_database

    url = fresh_pg_database(pg_server)
    env = {**os.environ, cli.DB_ENV: url}
    service = subprocess.Popen(
        [sys.executable, "-m", "cloud.cli", "serve", "--port", "0", "--workers", "2",
         "--log-level", "warning"],
        cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert service.stderr is not None
        line = service.stderr.readline()
        assert "serving on http://127.0.0.1:" in line and "2 worker processes" in line, line
        base = line.split()[3]
        first = _until(lambda: len(w := _workers(service.pid)) == 2 and w, "two workers")
        with httpx.Client(base_url=base, timeout=10) as http:
            _until(lambda: http.get("/healthz").status_code == 200, "an answer")
            # A worker that dies is replaced; the service goes on answering meanwhile.
            victim = sorted(first)[0]
            os.kill(victim, signal.SIGKILL)
            again = _until(
                lambda: len(w := _workers(service.pid)) == 2 and victim not in w and w,
                "a new worker in place of the one killed",
            )
            assert len(again & first) == 1
            for _ in range(20):
                assert http.get("/healthz").json() == {"ok": True}
        service.send_signal(signal.SIGTERM)
        assert service.wait(60) == 0
        # The workers ended with it (pids are handed out in sequence: not yet reused).
        assert not [w for w in again if Path(f"/proc/{w}").exists()]
    finally:
        if service.poll() is None:
            service.kill()
            service.wait(10)
        drop_pg_database(pg_server, url)


@pytest.mark.parametrize(
    ("served", "exitcode", "replaced"),
    [
        (True, 0, True),  # it was serving, then ended: start another
        (True, 1, True),
        (True, -9, True),
        (False, -9, True),  # killed while starting (SIGKILL): not its own failure
        (False, -15, True),
        (False, serve.WORKER_START_FAILED, False),  # the database refused it: stop the service
        (False, 1, False),  # crashed on its own before serving (an import failed): stop
        (False, 0, False),
    ],
)
def test_a_worker_is_replaced_unless_it_failed_by_its_own_hand_before_serving(
    served, exitcode, replaced
):
    assert serve.replace_worker(served=served, exitcode=exitcode) is replaced


def test_workers_that_cannot_reach_the_database_stop_the_service(capsys):
    unreachable = "postgresql://nobody@127.0.0.1:1/none"
    # The parent migrates first: an unreachable database ends it before any worker starts...
    code, _, err = run(capsys, "serve", "--db", unreachable, "--workers", "2", "--port", "0")
    assert code == 3 and "database error" in err
    # ...and a worker that cannot start (the database went away meanwhile) stops the service
    # rather than being started again and again.
    sock = serve.listen("127.0.0.1", 0)
    try:
        assert serve.Supervisor(sock, unreachable, 2, "warning").run() == serve.EXIT_DATABASE
    finally:
        sock.close()


# -- phone passes and cards ------------------------------------------------------------------------


def _member(url: str, org: str, member_id: str, code: str | None = "CARD-0001") -> None:
    from cloud.admin import save_member

    database = Database(url)
    try:
        fields = {"id": member_id, "first_name": "Ann", "last_name": "Lee", "code": code}
        database.transact(lambda tx: save_member(tx, org, None, fields, cli._now()))
    finally:
        database.close()


def _activate_on(url: str, code: str) -> dict:
    """A phone spends the code on the cloud served over the same database."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from sync.passes import public_key_text

    raw = (
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )
    with EmbeddedCloud(url) as cloud, httpx.Client(base_url=cloud.url, timeout=10) as http:
        answer = http.post(
            "/pass/v1/activate", json={"code": code, "public_key": public_key_text(raw)}
        )
    assert answer.status_code == 201, answer.text
    return answer.json()


def test_pass_activation_passes_and_revoke_pass(cloud_db_url, capsys):
    code, out, err = run(
        capsys, "init", "--db", cloud_db_url, "--org", "Acme", "--gym", "Main", "--json"
    )
    assert code == 0, err
    org = json.loads(out)["organization_id"]
    _member(cloud_db_url, org, "m1")

    code, out, err = run(
        capsys,
        "pass-activation",
        "--db",
        cloud_db_url,
        "--member",
        "m1",
        "--ttl-minutes",
        "30",
        "--base-url",
        "https://cloud.example/",
        "--json",
    )
    assert code == 0, err
    made = json.loads(out)
    assert made["member_id"] == "m1"
    assert made["link"] == f"https://cloud.example/pass/#activate={made['code']}"
    assert made["activation_path"] == f"/pass/#activate={made['code']}"
    assert err == ""
    pass_id = _activate_on(cloud_db_url, made["code"])["pass_id"]

    code, out, err = run(capsys, "pass-activation", "--db", cloud_db_url, "--member", "m1")
    assert code == 0, err
    assert out.startswith("activation code: ") and "valid until" in out
    assert "<cloud address>/pass/#activate=" in out

    code, out, err = run(capsys, "passes", "--db", cloud_db_url, "--member", "m1", "--json")
    assert code == 0, err
    assert [(p["id"], p["status"]) for p in json.loads(out)["items"]] == [(pass_id, "ACTIVE")]

    code, out, err = run(capsys, "revoke-pass", "--db", cloud_db_url, "--pass", pass_id)
    assert code == 0, err
    assert f"pass {pass_id} of member m1: REVOKED" in out
    code, out, _ = run(capsys, "passes", "--db", cloud_db_url, "--member", "m1")
    assert pass_id in out and "REVOKED" in out and "revoked 20" in out

    # Wrong ids and values are usage errors (2), named.
    code, _, err = run(capsys, "pass-activation", "--db", cloud_db_url, "--member", "nobody")
    assert code == 2 and "no member nobody" in err
    code, _, err = run(capsys, "revoke-pass", "--db", cloud_db_url, "--pass", "AAAAAAAA")
    assert code == 2 and "no pass AAAAAAAA" in err
    bad_ttl = ["--member", "m1", "--ttl-minutes", "0"]
    code, _, err = run(capsys, "pass-activation", "--db", cloud_db_url, *bad_ttl)
    assert code == 2 and "ttl_minutes" in err
    bad_url = ["--member", "m1", "--base-url", "cloud.example"]
    code, _, err = run(capsys, "pass-activation", "--db", cloud_db_url, *bad_url)
    assert code == 2 and "--base-url" in err


def test_an_id_held_by_two_organisations_needs_org(cloud_db_url, capsys):
    orgs = []
    for name in ("Acme", "Other"):
        code, out, _ = run(
            capsys, "init", "--db", cloud_db_url, "--org", name, "--gym", "Main", "--json"
        )
        assert code == 0
        orgs.append(json.loads(out)["organization_id"])
        _member(cloud_db_url, orgs[-1], "m1")
    code, _, err = run(capsys, "passes", "--db", cloud_db_url, "--member", "m1")
    assert code == 2 and "pass --org" in err
    code, out, err = run(capsys, "passes", "--db", cloud_db_url, "--member", "m1", "--org", orgs[1])
    assert code == 0, err
    assert "has no phone passes" in out


def test_card_writes_an_svg_card_and_a_png_symbol(cloud_db_url, capsys, tmp_path):
    import cv2
    import numpy as np
    import zxingcpp

    code, out, _ = run(
        capsys, "init", "--db", cloud_db_url, "--org", "Acme", "--gym", "Main", "--json"
    )
    made = json.loads(out)
    _member(cloud_db_url, made["organization_id"], "m1", "CARD-0001")
    _member(cloud_db_url, made["organization_id"], "m2", None)

    svg = tmp_path / "m1.svg"
    code, out, err = run(
        capsys,
        "card",
        "--db",
        cloud_db_url,
        "--member",
        "m1",
        "--gym",
        made["gym_id"],
        "--output",
        str(svg),
    )
    assert code == 0, err
    text = svg.read_text()
    assert 'width="85.6mm"' in text and ">CARD-0001<" in text and ">Main<" in text
    png = tmp_path / "card.bin"
    code, out, err = run(
        capsys,
        "card",
        "--db",
        cloud_db_url,
        "--member",
        "m1",
        "--format",
        "png",
        "--output",
        str(png),
    )
    assert code == 0, err
    image = cv2.imdecode(np.frombuffer(png.read_bytes(), np.uint8), cv2.IMREAD_GRAYSCALE)
    assert [r.text for r in zxingcpp.read_barcodes(image)] == ["CARD-0001"]

    code, _, err = run(capsys, "card", "--db", cloud_db_url, "--member", "m2", "--output", str(svg))
    assert code == 2 and "no card code" in err
    code, _, err = run(capsys, "card", "--db", cloud_db_url, "--member", "m1", "--output", str(png))
    assert code == 2 and "--format" in err
    missing = tmp_path / "no-such-dir" / "c.svg"
    code, _, err = run(
        capsys, "card", "--db", cloud_db_url, "--member", "m1", "--output", str(missing)
    )
    assert code == 2 and "cannot write" in err
