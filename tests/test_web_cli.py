"""``kiosk web`` and ``kiosk web set-password``: the command line, a light import, and the real
server on loopback."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from fakes import clean_env
from kiosk.cli import build_parser, main
from kiosk.data.store import Store
from kiosk.ops.owner_password import load_password_hash, verify_password

HEAVY = ("numpy", "cv2", "zxingcpp", "fastapi", "pydantic", "httpx")


def test_the_page_imports_nothing_heavy():
    code = (
        "import json, sys\n"
        "import kiosk.web.app, kiosk.cli.web, kiosk.cli\n"
        "kiosk.cli.build_parser()\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=clean_env(), check=True
    )
    assert json.loads(done.stdout) == []


def config_file(tmp_path: Path, **web: object) -> Path:
    lines = [f'[store]\npath = "{tmp_path / "data" / "kiosk.db"}"', "[web]"]
    lines.append(f'password_file = "{tmp_path / "data" / "owner-password"}"')
    lines += [f"{key} = {json.dumps(value)}" for key, value in web.items()]
    path = tmp_path / "kiosk.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_set_password_from_a_file(tmp_path: Path, capsys):
    config = config_file(tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_text("a long enough password\n")
    assert (
        main(["web", "set-password", "--config", str(config), "--password-file", str(secret)]) == 0
    )
    target = tmp_path / "data" / "owner-password"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert verify_password("a long enough password", load_password_hash(target))
    out = capsys.readouterr().out
    assert str(target) in out and "signed out" in out
    assert "a long enough password" not in out


def test_set_password_asks_twice(tmp_path: Path, capsys):
    config = config_file(tmp_path)
    answers = iter(
        [
            "short",
            "a long enough password",
            "a different password!",
            "a long enough password",
            "a long enough password",
        ]
    )
    args = build_parser().parse_args(["web", "--config", str(config), "set-password"])
    args.ask_secret = lambda prompt: next(answers)
    assert args.func(args) == 0
    err = capsys.readouterr().err
    assert "use at least 10" in err and "the two passwords differ" in err
    target = tmp_path / "data" / "owner-password"
    assert verify_password("a long enough password", load_password_hash(target))


def test_set_password_refuses_a_bad_one_and_a_symlink(tmp_path: Path, capsys):
    config = config_file(tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_text("short\n")
    code = main(["web", "set-password", "--config", str(config), "--password-file", str(secret)])
    assert code == 2 and "use at least 10" in capsys.readouterr().err
    target = tmp_path / "data" / "owner-password"
    assert not target.exists()
    target.parent.mkdir()
    target.symlink_to(tmp_path / "elsewhere")
    secret.write_text("a long enough password\n")
    code = main(["web", "set-password", "--config", str(config), "--password-file", str(secret)])
    assert code == 2 and "symbolic link" in capsys.readouterr().err
    assert not (tmp_path / "elsewhere").exists()


def test_port_and_config_errors_are_usage_errors(tmp_path: Path, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["web", "--port", "70000"])
    assert "a port is 1..65535" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text('[web]\nport = 0\nnames = "everything"\n')
    assert main(["web", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "web.port" in err and "web.names" in err


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_kiosk_web_serves_on_loopback_and_says_where(tmp_path: Path):
    config = config_file(tmp_path)
    with Store.open(tmp_path / "data" / "kiosk.db"):
        pass
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "kiosk", "web", "--config", str(config), "--host", "127.0.0.1",
         "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )  # fmt: skip
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line == f"kiosk web: the owner page listens on http://127.0.0.1:{port}/\n"
        deadline = time.monotonic() + 120  # bounds a hang only
        while True:
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the page never answered"
                time.sleep(0.05)
        assert set(answer.json()) == {"ok", "checks"}
        assert answer.headers["x-frame-options"] == "DENY"
        assert "server" not in answer.headers
        setup = httpx.get(f"http://127.0.0.1:{port}/", timeout=60)
        assert setup.status_code == 503 and "set-password" in setup.text
        for _ in range(20):
            httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=60)
        # The web process stays under 60 MB (docs/performance.md).
        assert rss_kib(process.pid) < 60 * 1024
    finally:
        process.terminate()
        out, err = process.communicate(timeout=120)
    # uvicorn re-raises the SIGTERM it handled once shut down: systemd counts that as a clean stop.
    assert process.returncode in (0, -signal.SIGTERM), err
    assert out == "" and "/healthz" not in err  # one line at start, no access log


def test_kiosk_web_says_when_the_port_is_taken(tmp_path: Path):
    config = config_file(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "kiosk", "web", "--config", str(config), "--host", "127.0.0.1",
             "--port", str(port)],
            capture_output=True, text=True, env=clean_env(), timeout=30, check=False,
        )  # fmt: skip
    assert done.returncode == 1
    assert done.stdout == ""
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr


def test_the_units_command_line_now_parses():
    args = build_parser().parse_args(["web"])
    assert args.func.__name__ == "cmd_web" and args.host is None and args.port is None
    assert os.environ.get("KIOSK_CONFIG") is None


def _no_check_here(password: str, encoded: str) -> bool:
    raise AssertionError("the password was checked in the parent, not in the child")


def test_the_password_is_checked_in_a_child_process(monkeypatch):
    from kiosk.ops.owner_password import ScryptParams, hash_password, verify_password
    from kiosk.web import passcheck

    encoded = hash_password("a long enough password", ScryptParams(log2_n=10))
    # The parent's own check raises meanwhile: these answers can only come from the child.
    monkeypatch.setattr(passcheck, "verify_password", _no_check_here)
    assert passcheck.verify_in_child("a long enough password", encoded) is True
    assert passcheck.verify_in_child("not the password!", encoded) is False
    assert passcheck.verify_in_child("x" * 5000, "garbage") is False
    # No child possible: checked in this process rather than refused.
    monkeypatch.setattr(passcheck, "verify_password", verify_password)
    monkeypatch.setattr(passcheck.sys, "executable", "/nonexistent/python")
    assert passcheck.verify_in_child("a long enough password", encoded) is True


def test_the_child_ignores_modules_planted_in_its_folder_or_pythonpath(tmp_path, monkeypatch):
    """``python -I``: neither the current folder nor PYTHONPATH can replace the check."""
    from kiosk.ops.owner_password import ScryptParams, hash_password
    from kiosk.web import passcheck

    planted = tmp_path / "kiosk"
    planted.mkdir()
    (planted / "__init__.py").write_text("")
    (planted / "owner_password.py").write_text("def verify_password(p, e):\n    return True\n")
    encoded = hash_password("a long enough password", ScryptParams(log2_n=10))
    monkeypatch.setattr(passcheck, "verify_password", _no_check_here)
    monkeypatch.chdir(tmp_path)
    assert passcheck.verify_in_child("not the password!", encoded) is False
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    assert passcheck.verify_in_child("not the password!", encoded) is False


def test_the_server_is_bounded_and_quiet():
    from kiosk.web.serve import server_config

    config = server_config(object())
    # Connections are bounded per address and in all by the page's guard (test_web_connections);
    # uvicorn's own limit sits above it.
    assert (config.limit_concurrency, config.timeout_keep_alive) == (257, 5)
    assert config.access_log is False and config.server_header is False
    assert config.proxy_headers is False
